//! Bypassing a stalled stripe: when the peer's ACK stops at bytes that one
//! stripe holds, those bytes go out again on the others.

use std::time::{Duration, Instant};

use super::{Session, Stripe};

/// The shortest ACK stall that counts as a stripe holding the line.
const STALL_MIN: Duration = Duration::from_millis(200);
/// The most bytes sent again around one stalled stripe.
pub const STALL_RESEND_MAX: u64 = 1 << 20;

/// Stripe `i`'s bit in a set of stripes (sessions have at most 64).
pub(super) fn bit(i: usize) -> u64 {
    1u64.checked_shl(i as u32).unwrap_or(0)
}

impl Session {
    /// Stripe `i` shares a path with a stripe that was just reset: what it
    /// carries goes out again on the others now, once. Its own reset, if
    /// it comes, waits for its next segment to cross the path and back:
    /// on bench-bond.sh the second stripe of a reset link learnt it 82 ms
    /// after the first, and the receiver waited for its bytes all along.
    pub fn suspect_stripe(&mut self, i: usize) {
        if !self.is_stripe_up(i) || self.suspects & bit(i) != 0 || self.stripes_up() < 2 {
            return;
        }
        self.resend_around(i);
    }

    /// What stripe `i` carries goes out again on the others (at most
    /// [`STALL_RESEND_MAX`] bytes), and re-sends avoid it until the ACK
    /// passes what was re-sent.
    fn resend_around(&mut self, i: usize) {
        let until = self.send.resend_from(i, STALL_RESEND_MAX);
        self.stall_bypassed_until = self.stall_bypassed_until.max(until);
        self.suspects |= bit(i);
    }

    /// When the peer's acknowledgements stop while the oldest unacknowledged
    /// bytes sit on one stripe (its cap just dropped, it went silent), the
    /// receiver is waiting for that stripe and holds everything behind it.
    /// Rather than wait for it to drain, or for the stripe timeout, send
    /// what that stripe still carries again on the others, once; the
    /// receiver keeps whichever copy comes first. Costs at most
    /// [`STALL_RESEND_MAX`] bytes per stall (a stall is also what a peer
    /// application that stopped reading looks like).
    pub(super) fn bypass_stall(&mut self, now: Instant) {
        if self.send.backlog() == 0 || self.ack_progress_at.is_none() {
            self.ack_progress_at = Some(now);
            return;
        }
        if self.stripes_up() < 2 {
            return;
        }
        let Some(i) = self.send.head_of_line().filter(|&i| self.is_stripe_up(i)) else {
            return;
        };
        let rtt = self
            .stripes
            .iter()
            .filter(|s| s.up)
            .filter_map(|s| s.rtt)
            .min()
            .unwrap_or(Duration::from_millis(10));
        let stall = STALL_MIN.max(rtt * 4);
        // One bypass per stalled stripe until the ACK passes what was
        // re-sent. Another stripe that holds the line after that gets its
        // own only if it is stuck itself, its kernel delivering nothing of
        // what it holds: the stripes of a dead path carried interleaved
        // ranges, and the ACK stopped at the second one's hole, below the
        // first bypass's end, until the stripe timeout (4.5 s without a
        // byte delivered on bench-bond.sh's black hole). A stripe that
        // still drains is only behind the re-sent copy, or the peer's
        // application stopped reading; neither is helped by more copies.
        if self.send.acked() < self.stall_bypassed_until {
            let s = &self.stripes[i];
            let stuck = s.kernel_queued > 0
                && s.progress_at
                    .is_some_and(|t| now.saturating_duration_since(t) >= stall);
            if self.suspects & bit(i) != 0 || !stuck {
                return;
            }
        }
        // Two signs that stripe `i` holds the line: no ACK for a while, or
        // its queue will take far longer to drain than anyone else's (its
        // rate just collapsed under a full queue).
        let since = self.ack_progress_at.expect("set above");
        let ack_stalled = now.saturating_duration_since(since) >= stall;
        let drain = |s: &Stripe| match s.rate.rate() {
            Some(r) if r > 0.0 => (s.kernel_queued + s.queued_since) as f64 / r,
            _ => 0.0,
        };
        let hol_drain = drain(&self.stripes[i]);
        let others = self
            .stripes
            .iter()
            .enumerate()
            .filter(|&(k, s)| k != i && s.up)
            .map(|(_, s)| drain(s))
            .fold(0.0, f64::max);
        let hol_slow = hol_drain >= STALL_MIN.as_secs_f64() && hol_drain >= 4.0 * others;
        if !ack_stalled && !hol_slow {
            return;
        }
        self.resend_around(i);
        // The next stripe's stall counts from here: the re-sent copy needs
        // its round trip.
        self.ack_progress_at = Some(now);
    }
}
