//! Keepalive of a session's stripes: PINGs to silent stripes, and the
//! verdict on a stripe that stays silent.
//!
//! With data in flight a stripe silent for `keepalive` is pinged and one
//! silent for `stripe_timeout` is dead: a dead stripe holds data up. With
//! nothing in flight the PING waits for `idle_keepalive` and death comes
//! the same grace after it; the stripes are then probed together once one is
//! due, so an idle session wakes the process once per interval. Silence
//! counts from when data started to flow at the earliest, so a stripe
//! rightly quiet for an hour is not declared dead the moment it is needed.

use std::time::{Duration, Instant};

/// What the keepalive knows of one stripe. A stripe that is down has no
/// `last_heard`.
#[derive(Clone, Debug, Default)]
struct Probe {
    last_heard: Option<Instant>,
    /// The outstanding PING: its value and when it was decided.
    ping: Option<(u64, Instant)>,
    ping_due: bool,
    pong_due: Option<u64>,
    /// Round trip of the last PING/PONG, including our own queues.
    rtt: Option<Duration>,
}

pub struct Keepalive {
    keepalive: Duration,
    idle_keepalive: Duration,
    stripe_timeout: Duration,
    seq: u64,
    probes: Vec<Probe>,
}

impl Keepalive {
    pub fn new(keepalive: Duration, idle_keepalive: Duration, stripe_timeout: Duration) -> Self {
        Keepalive {
            keepalive,
            idle_keepalive: idle_keepalive.max(keepalive),
            stripe_timeout,
            seq: 0,
            probes: Vec::new(),
        }
    }

    fn probe(&mut self, i: usize) -> &mut Probe {
        if i >= self.probes.len() {
            self.probes.resize_with(i + 1, Probe::default);
        }
        &mut self.probes[i]
    }

    /// Stripe `i` came up (afresh) at `now`.
    pub fn up(&mut self, i: usize, now: Instant) {
        *self.probe(i) = Probe {
            last_heard: Some(now),
            ..Probe::default()
        };
    }

    pub fn down(&mut self, i: usize) {
        *self.probe(i) = Probe::default();
    }

    /// A frame arrived on stripe `i` (which is up).
    pub fn heard(&mut self, i: usize, now: Instant) {
        let p = self.probe(i);
        if p.last_heard.is_some() {
            p.last_heard = Some(now);
        }
    }

    pub fn on_ping(&mut self, i: usize, value: u64) {
        self.probe(i).pong_due = Some(value);
    }

    pub fn on_pong(&mut self, i: usize, value: u64, now: Instant) {
        let p = self.probe(i);
        if let Some((v, sent)) = p.ping
            && v == value
        {
            p.ping = None;
            p.rtt = Some(now.saturating_duration_since(sent));
        }
    }

    /// The PONG stripe `i` owes, if any (taken: it is being sent).
    pub fn take_pong(&mut self, i: usize) -> Option<u64> {
        self.probes.get_mut(i)?.pong_due.take()
    }

    /// The PING due on stripe `i`, if any (taken: it is being sent).
    pub fn take_ping(&mut self, i: usize) -> Option<u64> {
        let p = self.probes.get_mut(i)?;
        std::mem::take(&mut p.ping_due).then(|| p.ping.map_or(0, |p| p.0))
    }

    pub fn pong_due(&self, i: usize) -> bool {
        self.probes.get(i).is_some_and(|p| p.pong_due.is_some())
    }

    pub fn ping_due(&self, i: usize) -> bool {
        self.probes.get(i).is_some_and(|p| p.ping_due)
    }

    /// No PING or PONG waits to be sent.
    pub fn nothing_due(&self) -> bool {
        self.probes
            .iter()
            .all(|p| p.pong_due.is_none() && !p.ping_due)
    }

    pub fn rtt(&self, i: usize) -> Option<Duration> {
        self.probes.get(i).and_then(|p| p.rtt)
    }

    /// Silence before a PING, and the grace after it before a stripe is
    /// dead: quick while data is in flight (a dead stripe holds it up),
    /// rare when idle (probing costs wake-ups, and an idle stripe that died
    /// holds nothing up; its loss shows at the latest when data flows).
    fn times(&self, busy: bool) -> (Duration, Duration) {
        let grace = self.stripe_timeout.saturating_sub(self.keepalive);
        if busy {
            (self.keepalive, grace)
        } else {
            (self.idle_keepalive, grace)
        }
    }

    /// Marks PINGs due on stripes that have been silent, and returns a
    /// stripe silent past the timeout. `busy_since`: since when data has
    /// been in flight (`None`: idle).
    pub fn check(&mut self, now: Instant, busy_since: Option<Instant>) -> Option<usize> {
        let (probe, grace) = self.times(busy_since.is_some());
        let ka = self.keepalive;
        let silence = |p: &Probe| {
            let heard = p.last_heard?;
            Some(now.saturating_duration_since(heard.max(busy_since.unwrap_or(heard))))
        };
        // Idle, the stripes are probed together once one is due (those
        // silent for half the interval or more): one wake-up of the process
        // per session and interval, not one per stripe.
        let threshold = if busy_since.is_none()
            && self
                .probes
                .iter()
                .any(|p| silence(p).is_some_and(|d| d >= probe))
        {
            probe / 2
        } else {
            probe
        };
        for (i, p) in self.probes.iter_mut().enumerate() {
            let Some(silent) = silence(p) else {
                continue;
            };
            if silent >= probe + grace {
                return Some(i);
            }
            let ping_old = p
                .ping
                .is_none_or(|(_, t)| now.saturating_duration_since(t) >= ka);
            if silent >= threshold && ping_old && !p.ping_due {
                self.seq += 1;
                p.ping = Some((self.seq, now));
                p.ping_due = true;
            }
        }
        None
    }

    /// When [`Keepalive::check`] next has something to do: a PING to send
    /// or a silent stripe to declare dead. `None` when no stripe is up.
    pub fn next_deadline(&self, busy_since: Option<Instant>) -> Option<Instant> {
        let (probe, grace) = self.times(busy_since.is_some());
        let ka = self.keepalive;
        self.probes
            .iter()
            .filter_map(|p| {
                let heard = p.last_heard?;
                let from = heard.max(busy_since.unwrap_or(heard));
                let dead = from + probe + grace;
                let ping = match p.ping {
                    // Pinged this silence already: the next PING after `ka`.
                    Some((_, t)) if t >= from + probe => t + ka,
                    _ => from + probe,
                };
                Some(ping.min(dead))
            })
            .min()
    }
}
