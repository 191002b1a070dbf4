//! Warnings about what peers do, rate-limited overall.
//!
//! A flood of garbage connections must not flood the log (or the disk): at
//! most `burst` such warnings are logged per window; the rest are counted by
//! class and summed up in one line when the window is over ("… 4,210 more
//! in the last 10 s: 4,000 sent bytes that are not a striper handshake, …").

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub struct WarnLimiter {
    burst: u32,
    window: Duration,
    start: Option<Instant>,
    logged: u32,
    suppressed: BTreeMap<&'static str, u64>,
}

impl WarnLimiter {
    pub fn new(burst: u32, window: Duration) -> WarnLimiter {
        WarnLimiter {
            burst,
            window,
            start: None,
            logged: 0,
            suppressed: BTreeMap::new(),
        }
    }

    /// Whether a warning of `class` may be logged now. If not, it is
    /// counted for the summary (the caller may still log it at debug level).
    /// A summary that is due comes back in `summary`.
    pub fn allow(
        &mut self,
        class: &'static str,
        now: Instant,
        summary: &mut Option<String>,
    ) -> bool {
        *summary = self.flush(now);
        let start = *self.start.get_or_insert(now);
        if now.saturating_duration_since(start) >= self.window {
            self.start = Some(now);
            self.logged = 0;
        }
        if self.logged < self.burst {
            self.logged += 1;
            return true;
        }
        *self.suppressed.entry(class).or_default() += 1;
        false
    }

    /// The summary of the warnings held back, once their window is over.
    pub fn flush(&mut self, now: Instant) -> Option<String> {
        let start = self.start?;
        if self.suppressed.is_empty() || now.saturating_duration_since(start) < self.window {
            return None;
        }
        let total: u64 = self.suppressed.values().sum();
        let kinds: Vec<String> = self
            .suppressed
            .iter()
            .map(|(class, n)| format!("{n} {class}"))
            .collect();
        self.suppressed.clear();
        self.start = Some(now);
        self.logged = 0;
        Some(format!(
            "{total} more warning(s) about connections held back in the last {:.0} s: {}",
            self.window.as_secs_f64(),
            kinds.join(", ")
        ))
    }

    /// When [`WarnLimiter::flush`] will have a summary to give.
    pub fn next_flush(&self) -> Option<Instant> {
        (!self.suppressed.is_empty())
            .then(|| self.start.map(|s| s + self.window))
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_logs_a_burst_then_one_summary_with_counts() {
        let mut l = WarnLimiter::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let mut summary = None;
        let allowed = (0..1000)
            .filter(|i| {
                let class = if i % 2 == 0 {
                    "sent garbage"
                } else {
                    "timed out"
                };
                l.allow(class, t0 + Duration::from_millis(*i), &mut summary)
            })
            .count();
        assert_eq!(allowed, 3);
        assert_eq!(summary, None);
        assert_eq!(l.next_flush(), Some(t0 + Duration::from_secs(10)));
        assert_eq!(l.flush(t0 + Duration::from_secs(9)), None);
        let s = l.flush(t0 + Duration::from_secs(10)).expect("a summary");
        assert!(s.starts_with("997 more warning(s)"), "{s}");
        assert!(
            s.contains("498 sent garbage") && s.contains("499 timed out"),
            "{s}"
        );
        assert_eq!(l.next_flush(), None);
        // A new window allows a new burst.
        let t1 = t0 + Duration::from_secs(10);
        assert!(l.allow("sent garbage", t1, &mut summary));
    }
}
