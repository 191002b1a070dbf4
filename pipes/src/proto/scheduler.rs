//! Which stripe carries the next frame: "earliest completion first".
//!
//! For every live stripe we estimate when a frame given to it now would have
//! left the sender: the bytes already queued on it (in our queue and in the
//! kernel, unsent or unacknowledged) plus the frame, over the rate the stripe
//! has been draining at, plus half its round trip. The frame goes to the
//! stripe with the earliest estimate, but only if that stripe can take it
//! now. When the best stripe is full, waiting for it beats handing the frame
//! to a slower stripe that happens to be free: that slower stripe would
//! deliver it later than the wait, and the receiver would hold everything
//! behind it. This is what keeps a stripe 10x slower than the others from
//! dragging the session down to its speed.

use std::time::{Duration, Instant};

/// What the scheduler knows about one stripe.
#[derive(Clone, Copy, Debug)]
pub struct StripeView {
    /// Can carry frames at all (connected, handshaken, not dead).
    pub up: bool,
    /// Will take a frame right now (no WouldBlock since the last writable).
    pub writable: bool,
    /// Bytes ahead of a new frame on this stripe: ours plus the kernel's.
    pub queued: u64,
    /// Measured drain rate in bytes per second, if measured yet.
    pub rate: Option<f64>,
    /// Smoothed round trip, if known.
    pub rtt: Option<Duration>,
    /// The largest frame (header included) this stripe is given: a longer
    /// one is cut to this, so its completion is judged for this length.
    pub max_len: u64,
}

/// Rate assumed for stripes that have not been measured yet, when no stripe
/// has: optimistic, so every stripe gets tried and measured.
const DEFAULT_RATE: f64 = 1e9;

/// Picks the stripe for a frame of `len` bytes, `backlog` being the bytes
/// waiting for a stripe (this frame included); `None` means wait.
///
/// The stripe with the earliest estimated completion gets the frame if it can
/// take it now. If it cannot, the best stripe that can is used only if it
/// would complete the frame before the stripes as a whole could have drained
/// the backlog by waiting (the rule of the ECF scheduler for MPTCP, Lim et
/// al. 2017): a slow stripe is worth using when there is enough data waiting
/// that the fast ones cannot carry all of it sooner.
pub fn choose(stripes: &[StripeView], len: u64, backlog: u64) -> Option<usize> {
    let (mut sum, mut n) = (0.0, 0);
    for r in stripes.iter().filter(|s| s.up).filter_map(|s| s.rate) {
        sum += r;
        n += 1;
    }
    let fallback = if n == 0 { DEFAULT_RATE } else { sum / n as f64 };
    let rate = |s: &StripeView| s.rate.unwrap_or(fallback).max(1.0);
    let est = |s: &StripeView| {
        (s.queued + len.min(s.max_len)) as f64 / rate(s)
            + s.rtt.map_or(0.0, |r| r.as_secs_f64() / 2.0)
    };
    let mut best: Option<(usize, f64)> = None;
    let mut best_free: Option<(usize, f64)> = None;
    let mut total_rate = 0.0;
    for (i, s) in stripes.iter().enumerate() {
        if !s.up {
            continue;
        }
        total_rate += rate(s);
        let e = est(s);
        if best.is_none_or(|(_, b)| e < b) {
            best = Some((i, e));
        }
        if s.writable && best_free.is_none_or(|(_, b)| e < b) {
            best_free = Some((i, e));
        }
    }
    let (_, best_est) = best?;
    let (free, free_est) = best_free?;
    let wait_until = best_est + backlog as f64 / total_rate;
    (free_est <= best_est || free_est <= wait_until).then_some(free)
}

/// A rate estimate no busy window has confirmed for this long is dropped.
const FORGET: Duration = Duration::from_secs(5);

/// Measures how fast a stripe drains, from the cumulative bytes the peer's
/// kernel has acknowledged on it.
///
/// A measurement window only counts as a rate sample if the stripe had a
/// backlog all along; otherwise the stripe was idle part of the time and the
/// sample is only a lower bound, which may raise the estimate but never lower
/// it. A stripe that stops draining while it has a backlog (a black hole, a
/// cap that just dropped) sees its estimate fall by half every window.
#[derive(Clone, Debug)]
pub struct RateEstimator {
    rate: Option<f64>,
    window_start: Option<(Instant, u64)>,
    busy_throughout: bool,
    /// End of the last window in which the stripe had a backlog throughout:
    /// when the estimate was last confirmed.
    confirmed: Option<Instant>,
    interval: Duration,
}

impl RateEstimator {
    pub fn new(interval: Duration) -> RateEstimator {
        RateEstimator {
            rate: None,
            window_start: None,
            busy_throughout: true,
            confirmed: None,
            interval,
        }
    }

    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// `delivered`: cumulative bytes acknowledged by the peer's kernel.
    /// `backlogged`: bytes were waiting in the kernel at this instant.
    pub fn on_sample(&mut self, now: Instant, delivered: u64, backlogged: bool) {
        let Some((t0, d0)) = self.window_start else {
            self.window_start = Some((now, delivered));
            self.busy_throughout = backlogged;
            return;
        };
        self.busy_throughout &= backlogged;
        let dt = now.saturating_duration_since(t0);
        if dt < self.interval {
            return;
        }
        let sample = delivered.saturating_sub(d0) as f64 / dt.as_secs_f64();
        self.rate = match self.rate {
            // A first estimate only from a busy window: a stripe that only
            // carried keepalives would otherwise be "measured" at a few
            // bytes a second and never be given data again.
            None if self.busy_throughout => Some(sample.max(1.0)),
            None => None,
            Some(r) if self.busy_throughout => Some((r + sample) / 2.0),
            // Not confirmed for a long while: forgotten, so the stripe is
            // tried (and measured) again. A stripe measured low in a dip
            // is given less, is then never busy, and its estimate would
            // otherwise never move again.
            Some(_)
                if self
                    .confirmed
                    .is_none_or(|c| now.duration_since(c) >= FORGET) =>
            {
                None
            }
            Some(r) => Some(r.max(sample)),
        };
        if self.busy_throughout {
            self.confirmed = Some(now);
        }
        self.window_start = Some((now, delivered));
        self.busy_throughout = backlogged;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(writable: bool, queued: u64, rate: f64) -> StripeView {
        StripeView {
            up: true,
            writable,
            queued,
            rate: Some(rate),
            rtt: None,
            max_len: u64::MAX,
        }
    }

    #[test]
    fn prefers_the_draining_stripe() {
        // Same backlog, stripe 1 drains ten times faster.
        let s = [view(true, 100_000, 1e6), view(true, 100_000, 1e7)];
        assert_eq!(choose(&s, 16_384, 16_384), Some(1));
        // Stripe 1 has ten times the backlog: a tie in time, and then the
        // shorter queue of a slower stripe is not better.
        let s = [view(true, 10_000, 1e6), view(true, 1_000_000, 1e7)];
        assert_eq!(choose(&s, 0, 0), Some(0));
    }

    #[test]
    fn waits_for_a_full_fast_stripe_rather_than_use_a_slow_one() {
        let s = [view(true, 0, 1e5), view(false, 64_000, 1e7)];
        // Slow: 16 KiB / 100 kB/s = 164 ms. Fast: 80 KB / 10 MB/s = 8 ms.
        assert_eq!(choose(&s, 16_384, 16_384), None);
        // With 1 MB waiting, the fast stripe needs about 100 ms for all of
        // it: still better to wait than to take 164 ms for one frame.
        assert_eq!(choose(&s, 16_384, 1_000_000), None);
        // With 4 MB waiting, the slow stripe delivers its frame long before
        // the fast one could have worked through the backlog.
        assert_eq!(choose(&s, 16_384, 4_000_000), Some(0));
        // Once the fast stripe is badly backed up the slow one is best anyway.
        let s = [view(true, 0, 1e5), view(false, 10_000_000, 1e7)];
        assert_eq!(choose(&s, 16_384, 16_384), Some(0));
    }

    #[test]
    fn unmeasured_stripes_get_tried_and_dead_ones_never() {
        let mut s = [view(true, 50_000, 1e6), view(true, 0, 1e6)];
        s[1].rate = None;
        assert_eq!(choose(&s, 1000, 1000), Some(1));
        s[1].up = false;
        assert_eq!(choose(&s, 1000, 1000), Some(0));
        s[0].up = false;
        assert_eq!(choose(&s, 1000, 1000), None);
    }

    #[test]
    fn an_estimate_left_unconfirmed_is_forgotten() {
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        let mut e = RateEstimator::new(Duration::from_millis(100));
        // Busy at 1 MB/s, then only a trickle and no backlog.
        for k in 0..3u64 {
            e.on_sample(ms(100 * k), 100_000 * k, true);
        }
        assert_eq!(e.rate(), Some(1e6));
        let mut k = 3;
        while k * 100 < 200 + 4_900 {
            e.on_sample(ms(100 * k), 200_000 + k, false);
            k += 1;
        }
        assert_eq!(e.rate(), Some(1e6), "kept for 5 s");
        e.on_sample(ms(100 * k + 100), 200_000 + k, false);
        assert_eq!(e.rate(), None, "then tried again as unmeasured");
    }

    #[test]
    fn an_idle_stripe_is_not_measured_as_slow() {
        // Keepalives only: a trickle, never a backlog.
        let t = Instant::now();
        let mut e = RateEstimator::new(Duration::from_millis(100));
        for k in 0..10u64 {
            e.on_sample(t + Duration::from_millis(100 * k), 40 * k, false);
        }
        assert_eq!(e.rate(), None, "unmeasured, so it gets the others' rate");
        let mut v = [view(true, 100_000, 1e6), view(true, 0, 1e6)];
        v[1].rate = e.rate();
        assert_eq!(choose(&v, 16_384, 16_384), Some(1));
    }

    #[test]
    fn estimator_follows_a_backlogged_stripe_and_ignores_idle_time() {
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        let mut e = RateEstimator::new(Duration::from_millis(100));
        e.on_sample(ms(0), 0, true);
        e.on_sample(ms(100), 1_000_000, true);
        assert_eq!(e.rate(), Some(10_000_000.0));
        // Idle (no backlog): a lower sample does not lower the estimate.
        e.on_sample(ms(200), 1_100_000, false);
        assert_eq!(e.rate(), Some(10_000_000.0));
        // Backlogged but stuck: the estimate halves each window.
        e.on_sample(ms(300), 1_100_000, true);
        e.on_sample(ms(400), 1_100_000, true);
        assert_eq!(e.rate(), Some(5_000_000.0));
        e.on_sample(ms(500), 1_100_000, true);
        assert_eq!(e.rate(), Some(2_500_000.0));
    }
}
