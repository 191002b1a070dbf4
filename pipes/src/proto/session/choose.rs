//! Which stripe the session hands its next frame to: the view of each
//! stripe the scheduler ([`crate::proto::scheduler`]) judges, and which stripes
//! may carry data at all (backup paths stand by while a primary lives).

use std::time::Duration;

use super::{Session, Stripe};
use crate::proto::frame::HEADER_LEN;
use crate::proto::scheduler::{self, StripeView};

impl Session {
    /// Marks stripe `i` as one of a backup path (or not): the scheduler
    /// leaves it out while a stripe of a primary path is up. It still
    /// carries keepalives, so it is known alive when it is needed.
    pub fn set_stripe_backup(&mut self, i: usize, backup: bool) {
        if i >= self.stripes.len() {
            self.stripes
                .resize_with(i + 1, || Stripe::new(self.cfg.rate_interval));
        }
        self.stripes[i].backup = backup;
    }

    /// Keeps backup stripes out of the schedule even with no primary up:
    /// while the first primaries are still connecting, a backup that got
    /// there first should not take the session's first megabytes.
    pub fn hold_backups(&mut self, hold: bool) {
        self.hold_backups = hold;
    }

    /// The largest DATA payload this end sends.
    pub(super) fn max_payload(&self) -> u64 {
        self.cfg.frame_size.min(self.peer_max_payload) as u64
    }

    /// Whether a stripe of a primary path is up (backups then stand by).
    pub fn primary_up(&self) -> bool {
        self.stripes.iter().any(|s| s.up && !s.backup)
    }

    /// The stripe for a frame of `len` bytes, not one in `avoid` (bit k:
    /// stripe k) unless they are all that is left.
    pub(super) fn choose(&mut self, len: u64, avoid: u64) -> Option<usize> {
        // Backup stripes stand by while a primary one lives; they take
        // everything, ACKs included, once none does, or once the peer has
        // moved to them (its primaries may be dead before ours know it).
        let backup_up = self.stripes.iter().any(|s| s.up && s.backup);
        let on_backup =
            backup_up && !self.hold_backups && (self.peer_on_backup || !self.primary_up());
        let usable = |s: &Stripe| s.up && s.backup == on_backup;
        // Never avoid the last stripes standing.
        let avoid = if self
            .stripes
            .iter()
            .enumerate()
            .any(|(k, s)| usable(s) && avoid & super::stall::bit(k) == 0)
        {
            avoid
        } else {
            0
        };
        let max_payload = self.max_payload();
        self.views.clear();
        self.views
            .extend(self.stripes.iter().enumerate().map(|(k, s)| StripeView {
                up: usable(s) && avoid & super::stall::bit(k) == 0,
                writable: s.writable,
                // Bytes in flight do not delay a new frame's departure;
                // only the unsent ones ahead of it do. Counting the flight
                // made a stripe with a larger congestion window look slower
                // than it is on a long path, and the wait rule then let
                // it run dry (app-limited) while it could have sent.
                queued: s.kernel_unsent + s.queued_since,
                rate: s.rate.rate(),
                rtt: s.rtt_now(),
                max_len: HEADER_LEN as u64 + s.frame_cap(max_payload),
            }));
        // The backlog decides whether a slower free stripe is worth it. An
        // application held back by our small unsent limit has more than we
        // see: a bulk stream's backlog is what the stripes carry together
        // in one round trip of the longest path, so a slower stripe is used
        // while its frame arrives within that round trip of the best one's
        // (never beyond half the peer's window). Counting only the 64 KiB
        // we hold, a path 30 ms longer than the fast one was never used (a
        // 30 + 10 Mbit/s bond with 20 and 80 ms round trips carried 30
        // Mbit/s); counting half the window, the long path's frames were
        // queued up to its unsent limit, 180 ms, and the receiver got the
        // stream in lumps (a 100 ms bin in three under half the mean).
        let waiting = self.send.waiting();
        let backlog = if self.send.at_unsent_limit() {
            // The paths' own round trips (min RTT), not their queues: a
            // stripe whose cap just dropped has a deep queue, and counting
            // it let that stripe keep taking frames (bench-caps: recovery
            // from a cap drop 0.5-3.5 s instead of 0.05).
            let (mut rate, mut rtt) = (0.0, 0.0f64);
            for (v, s) in self.views.iter().zip(&self.stripes).filter(|(v, _)| v.up) {
                rate += v.rate.unwrap_or(0.0);
                rtt = rtt.max(s.min_rtt.map_or(0.0, |r| r.as_secs_f64()));
            }
            let round = (rate * rtt) as u64;
            waiting.max(round.min(self.send.window_room() / 2))
        } else {
            waiting
        };
        scheduler::choose(&self.views, len, backlog.max(len))
    }
}

/// A DATA frame carries at most what its stripe drains in this long. The
/// receiver can release nothing behind a frame until all of it is there (it
/// is one sealed record), so a slow stripe's frame time is a pause in the
/// stream: a 32 KiB frame on a 5 Mbit/s stripe is 52 ms, and a bond of 30
/// and 10 Mbit/s links delivered in lumps every 58 ms where one link alone
/// delivered every 16. Fast stripes are not affected (32 KiB in 10 ms is
/// 26 Mbit/s).
const FRAME_TIME: f64 = 0.010;
/// The smallest frame a slow stripe is given: per-frame overhead (header,
/// record length and tag, 40 bytes) stays under 0.5%.
const MIN_FRAME: u64 = 8 << 10;

impl Stripe {
    /// The largest DATA payload for this stripe, `max` being the session's.
    pub(super) fn frame_cap(&self, max: u64) -> u64 {
        match self.rate.rate() {
            Some(r) => ((r * FRAME_TIME) as u64).clamp(MIN_FRAME.min(max), max),
            None => max,
        }
    }

    /// The round trip a frame given to this stripe now would see.
    ///
    /// The kernel's smoothed RTT only moves when data is acknowledged, so
    /// on a stripe that carries little it keeps the queue of its last busy
    /// spell: stripes whose first second filled a sender-side HTB queue
    /// (bbr's start-up) kept 200 ms while their path was idle at 0.1 ms
    /// (PING), the scheduler never chose them again, and a 30 + 10 Mbit/s
    /// bond ran at 0.73 of its sum with the slow link carrying 3% of the
    /// bytes. By Little's law the bytes this stripe has in flight, over
    /// its drain rate, are its round trip now (queues on the way
    /// included); never less than the path's own, never more than the
    /// kernel's figure.
    pub(super) fn rtt_now(&self) -> Option<Duration> {
        let srtt = self.rtt?;
        let Some(rate) = self.rate.rate().filter(|&r| r > 0.0) else {
            return Some(srtt);
        };
        let in_flight = self.kernel_queued.saturating_sub(self.kernel_unsent);
        let drain = Duration::from_secs_f64(in_flight as f64 / rate);
        Some(srtt.min(drain.max(self.min_rtt.unwrap_or_default())))
    }
}
