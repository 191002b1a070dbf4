//! The outgoing stream: application bytes kept until the peer acknowledges
//! them, the ranges to send again, and what each stripe carried.
//!
//! Every byte stays here until the peer's data-level ACK says its
//! application took it. Each stripe has a ledger of the ranges it carried
//! that are not acknowledged yet; when a stripe dies, its ledger moves to
//! the re-send set and those bytes go out on the others (the receiver drops
//! what it already has). A stripe's half-written frame pins its payload:
//! those bytes must follow byte for byte even if a copy sent on another
//! stripe was acknowledged meanwhile.

use std::collections::VecDeque;

use super::range_set::RangeSet;
use super::ring::ByteRing;

/// Acknowledged bytes the buffer may keep beyond the window for frames
/// still being written: a few frames' worth.
const PIN_ALLOWANCE: u64 = 1 << 20;

/// What one stripe carries of the stream.
#[derive(Debug, Default)]
struct Ledger {
    /// Ranges sent on the stripe and not yet known to be acknowledged.
    ranges: VecDeque<(u64, u64)>,
    /// Offset of a DATA frame handed to the stripe and not yet reported
    /// written: its bytes must stay in the buffer until then.
    pin: Option<u64>,
}

/// The next bytes to hand to a stripe: `offset..offset + len`, and whether
/// they were sent before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub offset: u64,
    pub len: u64,
    pub resend: bool,
}

pub struct SendBuffer {
    ring: ByteRing,
    /// Everything below this offset is acknowledged by the peer.
    acked: u64,
    /// Stream offset of ring position 0. Equal to `acked` unless a frame
    /// still being written holds older bytes (see `Ledger::pin`).
    base: u64,
    /// First offset never handed to a stripe.
    next_new: u64,
    /// Ranges to send again (their stripe died, or stalled, before they
    /// were acknowledged).
    resend: RangeSet,
    peer_window: u64,
    /// Application bytes taken ahead of the stripes.
    unsent_limit: u64,
    ledgers: Vec<Ledger>,
}

impl SendBuffer {
    pub fn new(peer_window: u64, unsent_limit: usize) -> SendBuffer {
        SendBuffer {
            ring: ByteRing::new(),
            acked: 0,
            base: 0,
            next_new: 0,
            resend: RangeSet::new(),
            peer_window,
            unsent_limit: unsent_limit as u64,
            ledgers: Vec::new(),
        }
    }

    pub fn set_peer_window(&mut self, window: u64) {
        self.peer_window = window;
    }

    /// One past the last byte taken from the application.
    pub fn end(&self) -> u64 {
        self.base + self.ring.extent() as u64
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// One past the highest offset ever handed to a stripe.
    pub fn highest_sent(&self) -> u64 {
        self.next_new
    }

    /// Bytes taken and not yet acknowledged.
    pub fn backlog(&self) -> u64 {
        self.end() - self.acked
    }

    /// Bytes taken and never handed to a stripe.
    pub fn unsent(&self) -> u64 {
        self.end() - self.next_new
    }

    /// Bytes waiting for a stripe: new ones and those to send again.
    pub fn waiting(&self) -> u64 {
        self.unsent() + self.resend.total()
    }

    /// Whether the application is held back by the unsent limit: more is
    /// waiting than [`SendBuffer::waiting`] shows.
    pub fn at_unsent_limit(&self) -> bool {
        self.unsent() >= self.unsent_limit
    }

    /// Bytes the stripes may still hand out before the peer's window stops
    /// them: the most the receiver can hold behind a frame still on its way.
    pub fn window_room(&self) -> u64 {
        (self.acked + self.peer_window).saturating_sub(self.next_new)
    }

    /// Nothing new and nothing to send again: every byte taken went out.
    pub fn all_handed_out(&self) -> bool {
        self.next_new == self.end() && self.resend.is_empty()
    }

    /// Takes application bytes; returns how many (0 = come back when the
    /// peer has acknowledged more or a stripe has taken more).
    pub fn write(&mut self, data: &[u8]) -> usize {
        let end = self.end();
        let window_room = (self.acked + self.peer_window).saturating_sub(end);
        let unsent_room = self.unsent_limit.saturating_sub(end - self.next_new);
        // Acknowledged bytes still held for a half-written frame count
        // against a small allowance, so the buffer stays bounded by the
        // window whatever a stripe or the peer does.
        let held = self.acked - self.base;
        let pin_room = (self.peer_window + PIN_ALLOWANCE).saturating_sub(end - self.base);
        let n = (data.len() as u64)
            .min(window_room)
            .min(unsent_room)
            .min(pin_room) as usize;
        self.ring.push(
            &data[..n],
            (self.peer_window + held.min(PIN_ALLOWANCE)) as usize,
        )
    }

    /// True when [`SendBuffer::write`] would take at least one byte.
    pub fn can_write(&self) -> bool {
        let end = self.end();
        let held = self.acked - self.base;
        end < self.acked + self.peer_window
            && end - self.next_new < self.unsent_limit
            && end - self.base < self.peer_window + held.min(PIN_ALLOWANCE)
    }

    /// The next bytes to send, at most `max`: ranges to send again first.
    pub fn peek(&self, max: u64) -> Option<Chunk> {
        if let Some((s, e)) = self.resend.first() {
            return Some(Chunk {
                offset: s,
                len: (e - s).min(max),
                resend: true,
            });
        }
        let unsent = self.unsent();
        (unsent > 0).then(|| Chunk {
            offset: self.next_new,
            len: unsent.min(max),
            resend: false,
        })
    }

    /// Stripe `i` takes `chunk` (as [`SendBuffer::peek`] returned it): it
    /// enters the stripe's ledger and pins its bytes until written.
    pub fn hand_out(&mut self, i: usize, chunk: Chunk) {
        if chunk.resend {
            self.resend.pop_front(chunk.len);
        } else {
            self.next_new += chunk.len;
        }
        let l = self.ledger_mut(i);
        // The IO layer gives a stripe a new frame only once the previous
        // one is out, so its pin moves to this frame.
        l.pin = Some(chunk.offset);
        let end = chunk.offset + chunk.len;
        match l.ranges.back_mut() {
            Some(last) if last.1 == chunk.offset => last.1 = end,
            _ => l.ranges.push_back((chunk.offset, end)),
        }
    }

    fn ledger_mut(&mut self, i: usize) -> &mut Ledger {
        if i >= self.ledgers.len() {
            self.ledgers.resize_with(i + 1, Ledger::default);
        }
        &mut self.ledgers[i]
    }

    /// The peer acknowledged everything below `ack` (not beyond what was
    /// sent: the session checks). Returns true if that is news.
    pub fn on_ack(&mut self, ack: u64) -> bool {
        if ack <= self.acked {
            return false;
        }
        self.acked = ack;
        self.release_acked();
        for l in &mut self.ledgers {
            while l.ranges.front().is_some_and(|&(_, end)| end <= ack) {
                l.ranges.pop_front();
            }
        }
        self.resend.remove_below(ack);
        true
    }

    /// Stripe `i` is gone: what it carried that is not acknowledged will
    /// be sent again, and nothing more of its half-written frame follows.
    pub fn stripe_lost(&mut self, i: usize) {
        let l = std::mem::take(self.ledger_mut(i));
        for (start, end) in l.ranges {
            let start = start.max(self.acked);
            if start < end {
                self.resend.insert(start, end);
            }
        }
        self.release_acked();
    }

    /// The stripe whose ledger holds the oldest unacknowledged byte: the
    /// one the receiver waits for.
    pub fn head_of_line(&self) -> Option<usize> {
        let acked = self.acked;
        self.ledgers
            .iter()
            .position(|l| l.ranges.iter().any(|&(a, b)| a <= acked && acked < b))
    }

    /// Sends what stripe `i` carries again on the others, at most `budget`
    /// bytes from the oldest; returns the end of what was scheduled.
    pub fn resend_from(&mut self, i: usize, budget: u64) -> u64 {
        let mut budget = budget;
        let mut until = self.acked;
        let Some(l) = self.ledgers.get(i) else {
            return until;
        };
        for &(a, b) in &l.ranges {
            let a = a.max(self.acked);
            if a >= b || budget == 0 {
                continue;
            }
            let b = b.min(a + budget);
            self.resend.insert(a, b);
            budget -= b - a;
            until = until.max(b);
        }
        until
    }

    /// Stripe `i` has written all of the last frame it was given; its
    /// payload may be freed once acknowledged.
    pub fn frame_written(&mut self, i: usize) {
        if let Some(l) = self.ledgers.get_mut(i)
            && l.pin.take().is_some()
        {
            self.release_acked();
        }
    }

    /// Stripes whose half-written frame holds bytes the peer has already
    /// acknowledged.
    pub fn stale_pins(&self) -> impl Iterator<Item = usize> + '_ {
        self.ledgers
            .iter()
            .enumerate()
            .filter(|(_, l)| l.pin.is_some_and(|p| p < self.acked))
            .map(|(i, _)| i)
    }

    /// Frees acknowledged bytes, except those a frame still being written
    /// needs.
    fn release_acked(&mut self) {
        let keep = self
            .ledgers
            .iter()
            .filter_map(|l| l.pin)
            .fold(self.acked, u64::min);
        if keep > self.base {
            self.ring.advance((keep - self.base) as usize);
            self.base = keep;
        }
    }

    /// The bytes `offset..offset + len` (two slices when the ring wraps);
    /// valid until the stripe carrying them reports the frame written.
    pub fn slices(&self, offset: u64, len: usize) -> (&[u8], &[u8]) {
        assert!(
            offset >= self.base,
            "payload of a transmit was freed before it was written"
        );
        self.ring.slices((offset - self.base) as usize, len)
    }

    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    pub fn release_if_empty(&mut self) {
        self.ring.release_if_empty();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_stripes_unacked_ranges_come_back_first() {
        let mut b = SendBuffer::new(1 << 20, 1 << 16);
        assert_eq!(b.write(&[1u8; 3000]), 3000);
        let c = b.peek(1000).unwrap();
        assert_eq!(
            c,
            Chunk {
                offset: 0,
                len: 1000,
                resend: false
            }
        );
        b.hand_out(0, c);
        let c = b.peek(1000).unwrap();
        b.hand_out(1, c);
        b.frame_written(0);
        b.frame_written(1);
        assert!(b.on_ack(500));
        b.stripe_lost(0);
        assert_eq!(b.head_of_line(), None, "its ledger went to the re-send set");
        assert_eq!(
            b.peek(10_000),
            Some(Chunk {
                offset: 500,
                len: 500,
                resend: true
            })
        );
        assert_eq!(b.waiting(), 500 + 1000);
        b.hand_out(1, b.peek(10_000).unwrap());
        assert_eq!(b.peek(10_000).unwrap().offset, 2000);
    }

    #[test]
    fn the_window_and_the_unsent_limit_bound_writes() {
        let mut b = SendBuffer::new(4096, 1024);
        assert_eq!(b.write(&[0u8; 5000]), 1024, "unsent limit");
        assert!(!b.can_write());
        b.hand_out(0, b.peek(1024).unwrap());
        assert_eq!(b.write(&[0u8; 5000]), 1024);
        b.hand_out(0, b.peek(1024).unwrap());
        b.hand_out(
            0,
            Chunk {
                offset: 2048,
                len: 0,
                resend: false,
            },
        );
        assert_eq!(b.write(&[0u8; 5000]), 1024);
        b.hand_out(0, b.peek(1024).unwrap());
        assert_eq!(b.write(&[0u8; 5000]), 1024);
        b.hand_out(0, b.peek(1024).unwrap());
        assert_eq!(b.write(&[0u8; 5000]), 0, "window full");
        b.frame_written(0);
        b.on_ack(1000);
        assert_eq!(b.write(&[0u8; 5000]), 1000);
    }
}
