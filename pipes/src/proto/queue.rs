//! How many unsent bytes each stripe's kernel queue may hold.
//!
//! `TCP_NOTSENT_LOWAT` caps the bytes a stripe socket holds that it has not
//! sent yet. Too small, and a stripe on a long path runs dry between two
//! wake-ups of the process: its congestion control sees an application that
//! has nothing to send and stops growing (a fixed 64 KiB kept 20 Mbit/s
//! stripes on a 100 ms path at 0.76–0.82 of their cap). Too large, and bytes
//! are committed to one stripe long before it can send them: the scheduler's
//! choice goes stale, and everything behind those bytes waits for them in
//! reassembly (the latency of one stream under load).
//!
//! So the limit follows the path: one bandwidth-delay product of the
//! stripe (its rate times its round trip), within a floor (a short path
//! still needs a few frames queued to keep a fast link busy between
//! wake-ups) and a ceiling (memory, and a stripe that must not swallow the
//! session's window). The kernel wakes a writer only when the unsent bytes
//! fall below half the limit, so a stripe holds between half a BDP and one
//! BDP unsent. Measured on scripts/bench-wan.sh (20 Mbit/s drop policer per
//! flow; 4 / 8 stripes against as many plain bbr flows), with the scheduler
//! counting only unsent bytes ahead of a frame: at 100 ms a fixed 64 KiB
//! already keeps 0.99 / 1.00, but at 200 ms it falls to 0.95 / 0.80, where
//! one BDP keeps 0.96 / 0.98 and two BDPs 0.99 / 0.99. Each BDP of queue
//! costs latency inside one stream (4 stripes, 40 ms: +28 ms over plain TCP
//! with one BDP, +56 ms with 1.5), so the gain is one.

use std::time::Duration;

/// Bounds and gain of the unsent-bytes limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QueueBounds {
    pub floor: u32,
    pub ceiling: u32,
    /// Limit = gain x rate x round trip.
    pub gain: f64,
}

impl Default for QueueBounds {
    fn default() -> Self {
        QueueBounds {
            floor: 64 << 10,
            ceiling: 8 << 20,
            gain: 1.0,
        }
    }
}

/// What the kernel reports about one stripe socket (`TCP_INFO`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PathSample {
    /// Smoothed round trip.
    pub rtt: Duration,
    /// The smallest round trip seen (the path without queues); zero if
    /// the kernel does not say.
    pub min_rtt: Duration,
    /// The kernel's most recent delivery-rate sample, bytes per second.
    pub delivery_rate: f64,
    /// The rate the kernel paces at, bytes per second: its own estimate of
    /// what the path carries (BBR: the bottleneck bandwidth times a gain;
    /// other algorithms: the congestion window over the round trip).
    pub pacing_rate: f64,
}

/// The limit of one stripe, kept between samples so that the socket is only
/// told when the value really changes.
#[derive(Clone, Debug)]
pub struct QueueLimit {
    bounds: QueueBounds,
    current: u32,
    /// Largest delivery rate seen recently; decays so a rate drop shows.
    peak_rate: f64,
}

/// The fraction a new limit must differ by before the socket is told.
const HYSTERESIS: f64 = 0.125;
/// Per sample, the remembered peak delivery rate loses this fraction: with
/// samples every 100 ms a rate that fell to a quarter shows within 0.7 s.
const PEAK_DECAY: f64 = 0.2;

impl QueueLimit {
    pub fn new(bounds: QueueBounds) -> QueueLimit {
        QueueLimit {
            bounds,
            current: bounds.floor,
            peak_rate: 0.0,
        }
    }

    /// The limit in force.
    pub fn get(&self) -> u32 {
        self.current
    }

    /// Takes a fresh sample; returns the new limit when the socket should be
    /// changed, `None` when the current one is close enough.
    ///
    /// The rate is the larger of the recent delivery peak and the pacing
    /// rate. The delivery rate alone can lock a starved stripe in: a queue
    /// too short makes the stripe application-limited, which lowers the
    /// delivery samples, which keeps the queue short. The pacing rate is the
    /// congestion control's view of what the path could carry, so it leads.
    pub fn on_sample(&mut self, s: PathSample) -> Option<u32> {
        self.peak_rate = (self.peak_rate * (1.0 - PEAK_DECAY)).max(s.delivery_rate);
        let rate = self.peak_rate.max(s.pacing_rate);
        // The path's own round trip: a queue that builds up on the way is
        // no reason to commit more bytes to this stripe.
        let rtt = if s.min_rtt.is_zero() {
            s.rtt
        } else {
            s.min_rtt.min(s.rtt)
        };
        let want = limit_for(self.bounds, rate, rtt);
        let cur = self.current as f64;
        if (want as f64 - cur).abs() <= cur * HYSTERESIS {
            return None;
        }
        self.current = want;
        Some(want)
    }
}

/// gain x rate x rtt within the bounds.
pub fn limit_for(b: QueueBounds, rate: f64, rtt: Duration) -> u32 {
    let bdp = b.gain * rate.max(0.0) * rtt.as_secs_f64();
    (bdp.min(b.ceiling as f64) as u32).clamp(b.floor, b.ceiling.max(b.floor))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MBIT: f64 = 1e6 / 8.0;

    fn sample(mbit: f64, rtt_ms: u64) -> PathSample {
        PathSample {
            rtt: Duration::from_millis(rtt_ms),
            min_rtt: Duration::from_millis(rtt_ms),
            delivery_rate: mbit * MBIT,
            pacing_rate: mbit * MBIT,
        }
    }

    #[test]
    fn a_fast_short_stripe_keeps_the_floor() {
        let mut q = QueueLimit::new(QueueBounds::default());
        // 1 Gbit/s on loopback, 50 µs: 6 KB in flight.
        let s = PathSample {
            rtt: Duration::from_micros(50),
            ..sample(1000.0, 0)
        };
        assert_eq!(q.on_sample(s), None);
        assert_eq!(q.get(), 64 << 10);
        // 20 Mbit/s with 2 ms of queueing on the way: 5 KB.
        let mut q = QueueLimit::new(QueueBounds::default());
        assert_eq!(q.on_sample(sample(20.0, 2)), None);
        assert_eq!(q.get(), 64 << 10);
    }

    #[test]
    fn a_slow_long_stripe_gets_its_bandwidth_delay_product() {
        let mut q = QueueLimit::new(QueueBounds::default());
        // 20 Mbit/s x 100 ms = 250 KB.
        assert_eq!(q.on_sample(sample(20.0, 100)), Some(250_000));
        // 20 Mbit/s x 200 ms = 500 KB.
        assert_eq!(q.on_sample(sample(20.0, 200)), Some(500_000));
        // A fat, long path stops at the ceiling.
        assert_eq!(q.on_sample(sample(10_000.0, 200)), Some(8 << 20));
    }

    #[test]
    fn the_limit_follows_a_rate_change_and_ignores_jitter() {
        let mut q = QueueLimit::new(QueueBounds::default());
        q.on_sample(sample(20.0, 100));
        assert_eq!(q.get(), 250_000);
        // A few percent either way: the socket is left alone.
        assert_eq!(q.on_sample(sample(21.0, 100)), None);
        assert_eq!(q.on_sample(sample(19.5, 100)), None);
        // The cap drops to 5 Mbit/s (62.5 KB per 100 ms, under the floor):
        // the pacing rate follows at once, the delivery peak decays, and
        // within 0.7 s of samples every 100 ms the limit is the floor.
        let mut changed = 0;
        for _ in 0..7 {
            if q.on_sample(sample(5.0, 100)).is_some() {
                changed += 1;
            }
        }
        assert_eq!(q.get(), 64 << 10);
        assert!(changed <= 7, "told the socket {changed} times");
        // And back up: the pacing rate leads the way at once.
        assert_eq!(q.on_sample(sample(20.0, 100)), Some(250_000));
    }

    #[test]
    fn a_starved_stripe_is_not_locked_in_by_its_own_delivery_rate() {
        let mut q = QueueLimit::new(QueueBounds::default());
        // Application-limited: delivery samples low, but the congestion
        // control paces for 20 Mbit/s at 100 ms.
        let s = PathSample {
            delivery_rate: 4.0 * MBIT,
            ..sample(20.0, 100)
        };
        assert_eq!(q.on_sample(s), Some(250_000));
    }

    #[test]
    fn bounds_hold_for_odd_inputs() {
        let b = QueueBounds::default();
        assert_eq!(limit_for(b, f64::NAN, Duration::from_secs(1)), b.floor);
        assert_eq!(limit_for(b, -5.0, Duration::from_secs(1)), b.floor);
        assert_eq!(
            limit_for(b, f64::INFINITY, Duration::from_secs(1)),
            b.ceiling
        );
        assert_eq!(limit_for(b, 1e9, Duration::ZERO), b.floor);
    }
}
