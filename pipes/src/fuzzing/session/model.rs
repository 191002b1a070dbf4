//! The model's side of the session harness: the oracle it checks the
//! session against.

use super::{PIN_ALLOWANCE, Sim, app_byte, peer_byte};
use crate::proto::frame::{self, ACK_FIN, FrameType, Header, decode};
use crate::proto::reassembly::ReassemblyError;
use crate::proto::session::{SessionError, Transmit};

/// A set of byte ranges `[start, end)`, merged when they overlap or touch.
///
/// This is the model that checks the session, whose own range sets are
/// ordered maps merged in place; a bug in a shared merge would agree with
/// itself, so the model does not reuse that code, nor that algorithm. It is
/// written the plain way instead: a list of ranges that every [`add`]
/// brings back to normal form by sorting it and sweeping it once, merging
/// each range into the previous one when they overlap or touch. Slower,
/// and obviously right.
///
/// Normal form: sorted by start, every range non-empty, and each range
/// starts after the previous one ends (with a gap of at least one byte).
///
/// [`add`]: Ranges::add
#[derive(Default, Debug)]
pub(super) struct Ranges(Vec<(u64, u64)>);

impl Ranges {
    pub(super) fn add(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        self.0.push((start, end));
        self.0.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.0.len());
        for &(s, e) in &self.0 {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.0 = merged;
    }

    /// End of the range that covers `from` (or ends at it), or `from`.
    pub(super) fn contiguous_from(&self, from: u64) -> u64 {
        self.0
            .iter()
            .find(|&&(s, e)| s <= from && from <= e)
            .map_or(from, |&(_, e)| e)
    }

    /// Ranges that start after `from` (out-of-order pieces beyond it), in
    /// order.
    fn after(&self, from: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().copied().filter(move |&(s, _)| s > from)
    }

    /// End of the last range, or 0 when there is none.
    pub(super) fn max_end(&self) -> u64 {
        self.0.iter().map(|&(_, e)| e).max().unwrap_or(0)
    }
}

impl Sim {
    /// What the session must answer to a decoded frame.
    pub(super) fn expect(&self, i: usize, h: Header, payload: &[u8]) -> Result<(), SessionError> {
        match h.ty {
            FrameType::Data => {
                let (offset, len) = (h.value, payload.len());
                let end = offset.saturating_add(len as u64);
                let limit = self.consumed + self.window;
                let ready = self.ready();
                let err = |err| Err(SessionError::Data { stripe: i, err });
                if end > limit {
                    return err(ReassemblyError::BeyondWindow { offset, len, limit });
                }
                if let Some(fin) = self.fin_in
                    && end > fin
                {
                    return err(ReassemblyError::BeyondFin { offset, len, fin });
                }
                if end <= ready {
                    return Ok(());
                }
                let start = offset.max(ready);
                let pieces: Vec<(u64, u64)> = self.got.after(ready).collect();
                let touches = pieces.iter().any(|&(s, e)| s <= end && e >= start);
                if !touches && start > ready && pieces.len() >= self.max_pieces {
                    return err(ReassemblyError::TooFragmented {
                        ranges: pieces.len() + 1,
                    });
                }
                Ok(())
            }
            FrameType::Ack => {
                let ack = h.value;
                if ack > self.sent_end {
                    return Err(SessionError::AckBeyondSent {
                        stripe: i,
                        ack,
                        sent: self.sent_end,
                    });
                }
                if h.flags & ACK_FIN != 0 && self.fin_out != Some(ack) {
                    return Err(SessionError::BadFinAck { stripe: i, ack });
                }
                Ok(())
            }
            FrameType::Fin => {
                let seen = self.got.max_end().max(self.consumed);
                if self.fin_in.is_some_and(|f| f != h.value) || h.value < seen {
                    return Err(SessionError::FinMismatch {
                        stripe: i,
                        fin: h.value,
                        seen,
                    });
                }
                Ok(())
            }
            FrameType::Rst => {
                let (code, reason) = frame::parse_rst(payload);
                Err(SessionError::PeerReset { code, reason })
            }
            FrameType::Ping | FrameType::Pong => Ok(()),
        }
    }

    /// The payload of a DATA frame still in the send buffer, unchanged.
    pub(super) fn check_payload(&self, offset: u64, len: usize) {
        let (a, b) = self.s.send_slices(offset, len);
        assert_eq!(a.len() + b.len(), len);
        for (k, &x) in a.iter().chain(b).enumerate() {
            let o = offset + k as u64;
            assert_eq!(x, app_byte(o), "half-written frame: byte {o} changed");
        }
    }

    pub(super) fn check_transmit(&mut self, t: &Transmit, reach: bool) {
        let i = t.stripe;
        assert!(
            i < self.n && self.up[i],
            "transmit on stripe {i}, which is not up"
        );
        assert!(
            self.writable[i],
            "transmit on stripe {i}, which is not writable"
        );
        let mut payload = t.inline.clone();
        if let Some((offset, len)) = t.data {
            let (a, b) = self.s.send_slices(offset, len);
            assert_eq!(a.len() + b.len(), len);
            payload.extend_from_slice(a);
            payload.extend_from_slice(b);
        }
        let mut wire = t.header.encode(&[&payload]).to_vec();
        wire.extend_from_slice(&payload);
        assert_eq!(t.len(), wire.len());
        let (f, n) = match decode(&wire, self.peer_max_payload) {
            Ok(Some(x)) => x,
            other => panic!("the session built a frame its peer refuses: {other:?}"),
        };
        assert_eq!(n, wire.len());
        let v = f.header.value;
        if self.aborted.is_some() {
            assert_eq!(f.header.ty, FrameType::Rst, "{:?} after abort", f.header.ty);
        }
        match f.header.ty {
            FrameType::Data => {
                let (offset, len) = t.data.expect("DATA has a range");
                assert_eq!(v, offset);
                let end = offset + len as u64;
                assert!(
                    len <= self.frame_size.min(self.peer_max_payload),
                    "DATA of {len}"
                );
                assert!(
                    offset >= self.acked,
                    "re-sent acknowledged data at {offset}"
                );
                assert!(end <= self.written, "sent bytes never written");
                assert!(
                    end <= self.acked + self.peer_window,
                    "DATA up to {end} beyond the peer's window ({} + {})",
                    self.acked,
                    self.peer_window
                );
                if let Some(fin) = self.fin_out {
                    assert!(end <= fin);
                }
                if offset >= self.sent_end {
                    assert_eq!(offset, self.sent_end, "a gap in new data");
                }
                for (k, &b) in f.payload.iter().enumerate() {
                    assert_eq!(
                        b,
                        app_byte(offset + k as u64),
                        "wrong byte at {}",
                        offset + k as u64
                    );
                }
                self.sent_end = self.sent_end.max(end);
                if reach {
                    self.peer_got.add(offset, end);
                }
            }
            FrameType::Ack => {
                assert_eq!(
                    v, self.consumed,
                    "ACK of {v}, the application took {}",
                    self.consumed
                );
                assert!(v >= self.ack_out, "ACK went backwards");
                let fin_ack = self.fin_in == Some(self.consumed);
                assert_eq!(f.header.flags, if fin_ack { ACK_FIN } else { 0 });
                self.ack_out = v;
                if reach {
                    self.peer_acked_by_us = self.peer_acked_by_us.max(v);
                }
            }
            FrameType::Fin => {
                assert_eq!(Some(v), self.fin_out, "FIN at {v}");
                assert_eq!(self.sent_end, v, "FIN before all data was handed out");
                if reach {
                    self.peer_got_fin = Some(v);
                }
            }
            FrameType::Rst => {
                let (code, _) = frame::parse_rst(f.payload);
                assert_eq!(Some(code.code()), self.aborted, "RST without abort");
                assert!(!self.rst_sent[i], "second RST on stripe {i}");
                self.rst_sent[i] = true;
            }
            FrameType::Ping => {
                assert!(self.pings.insert(v), "PING value {v} used twice");
                self.last_ping = v;
            }
            FrameType::Pong => {
                assert_eq!(Some(v), self.pong_due[i], "PONG without its PING");
                self.pong_due[i] = None;
            }
        }
    }

    // ---- invariants ----

    pub(super) fn check_readable(&self) {
        let r = self.s.readable();
        let ready = self.ready();
        assert!(
            self.consumed + r.len() as u64 <= ready,
            "readable bytes that never arrived"
        );
        assert_eq!(
            r.is_empty(),
            ready == self.consumed,
            "in-order bytes not readable"
        );
        // Every byte is checked when the application takes it; here only
        // the ends, which is cheap enough to do after every operation.
        let ends = r.len().min(16);
        for k in (0..ends).chain(r.len() - ends..r.len()) {
            let o = self.consumed + k as u64;
            assert_eq!(r[k], peer_byte(o), "readable: a wrong byte at offset {o}");
        }
    }

    pub(super) fn check_state(&mut self) {
        self.check_readable();
        let buffered = self.got.max_end().saturating_sub(self.consumed);
        assert_eq!(self.s.recv_backlog(), buffered);
        assert!(buffered <= self.window);
        assert_eq!(self.s.send_backlog(), self.written - self.acked);
        assert!(self.s.send_backlog() <= self.peer_window);
        // Memory: each ring is at most the next power of two of what it may
        // hold (at least 4 KiB): the reassembly ring our window; the send
        // ring the peer's window, plus acknowledged bytes a half-written
        // frame keeps until the IO side copies it out (`held`), of which
        // the session allows at most PIN_ALLOWANCE. So whatever the peer
        // and the stripes do, under 2 x (window + 1 MiB) each.
        self.max_held = self.max_held.max(self.held());
        let bound = |w: u64| (w.next_power_of_two()).max(4096) as usize;
        let cap = self.s.buffer_capacity();
        let extra = self.max_held.min(PIN_ALLOWANCE);
        assert!(
            cap <= bound(self.window) + bound(self.peer_window + extra),
            "buffers hold {cap} bytes with windows {} and {} (+{} held, {} allowed)",
            self.window,
            self.peer_window,
            self.max_held,
            extra
        );
        assert_eq!(self.s.read_eof(), self.fin_in == Some(self.consumed));
        assert_eq!(self.s.write_finished(), self.fin_acked);
        assert_eq!(self.s.stats().bytes_in, self.consumed);
        assert_eq!(self.s.stats().bytes_out, self.written);
        for i in 0..self.n {
            assert_eq!(self.s.is_stripe_up(i), self.up[i]);
        }
        assert_eq!(self.s.stripes_up(), self.up.iter().filter(|&&u| u).count());
        if self.aborted.is_some() {
            assert!(!self.s.can_write());
        }
    }

    /// After the program: if everything stayed within the protocol, the
    /// stripes that are up (or one re-dialed stripe if none is), a peer that
    /// re-sends what we have not acknowledged and acknowledges what it
    /// gets, and an application that reads everything must bring both
    /// streams to their ends, and the peer must hear our last ACK.
    pub(super) fn settle(&mut self) {
        self.check_state();
        if self.hostile || self.aborted.is_some() {
            // Still check every byte that was deliverable (twice: the ring
            // may hand them out in two pieces).
            self.app_consume(usize::MAX);
            self.app_consume(usize::MAX);
            self.check_state();
            return;
        }
        for i in 0..self.n {
            self.flush(i);
        }
        if !self.up.iter().any(|&u| u) {
            self.stripe_up(0);
        }
        // Kernel buffers drain; every live stripe takes frames again.
        for i in 0..self.n {
            if self.up[i] {
                self.s.set_stripe_writable(i, true);
                self.writable[i] = true;
                self.s
                    .update_stripe(i, self.now, (0, 0), self.kernel_delivered[i], None);
            }
        }
        for _round in 0..10_000 {
            let before = (
                self.consumed,
                self.peer_got.contiguous_from(0),
                self.peer_got_fin,
                self.fin_acked,
            );
            // The peer re-sends everything we have not acknowledged to it.
            self.in_flight.clear();
            let mut off = self.peer_acked_by_us;
            let mut stripe = 0;
            while off < self.peer_next {
                let len = (self.peer_next - off).min(self.recv_cap as u64) as usize;
                let live: Vec<usize> = (0..self.n).filter(|&i| self.up[i]).collect();
                self.deliver_data(live[stripe % live.len()], off, len, false);
                off += len as u64;
                stripe += 1;
            }
            if let Some(f) = self.peer_fin {
                let i = self.first_up();
                self.deliver(i, FrameType::Fin as u8, 0, 0, f, &[]);
            }
            self.app_consume(usize::MAX);
            self.app_consume(usize::MAX);
            self.poll(0, 0);
            self.peer_ack(self.first_up());
            self.check_state();
            assert!(!self.hostile, "a frame within the protocol was refused");
            let after = (
                self.consumed,
                self.peer_got.contiguous_from(0),
                self.peer_got_fin,
                self.fin_acked,
            );
            if after == before {
                break;
            }
        }
        assert_eq!(
            self.consumed, self.peer_next,
            "the peer's stream did not all arrive"
        );
        assert_eq!(
            self.peer_got.contiguous_from(0),
            self.written,
            "our stream did not all arrive"
        );
        assert_eq!(self.peer_got_fin, self.fin_out, "our FIN did not arrive");
        if self.peer_fin.is_some() {
            assert!(self.s.read_eof());
        }
        if self.fin_out.is_some() {
            assert!(self.s.write_finished(), "our FIN was never acknowledged");
        }
        if self.fin_out.is_some() && self.peer_fin.is_some() {
            assert!(self.s.is_finished());
        }
        assert_eq!(
            self.peer_acked_by_us, self.consumed,
            "the peer never heard our last ACK: its window stays closed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::Ranges;

    fn ranges(adds: &[(u64, u64)]) -> Ranges {
        let mut r = Ranges::default();
        for &(s, e) in adds {
            r.add(s, e);
        }
        r
    }

    #[test]
    fn merges_overlapping_and_touching_ranges() {
        let r = ranges(&[(10, 20), (30, 40), (5, 5), (20, 25), (50, 60), (35, 52)]);
        assert_eq!(r.0, [(10, 25), (30, 60)]);
        let r = ranges(&[(30, 40), (0, 1), (1, 30)]);
        assert_eq!(r.0, [(0, 40)]);
        let r = ranges(&[(0, 100), (10, 20), (99, 100)]);
        assert_eq!(r.0, [(0, 100)]);
        assert_eq!(ranges(&[(7, 3)]).0, []);
    }

    #[test]
    fn queries() {
        let r = ranges(&[(0, 10), (20, 30), (40, 50)]);
        assert_eq!(r.contiguous_from(0), 10);
        assert_eq!(r.contiguous_from(5), 10);
        assert_eq!(r.contiguous_from(10), 10);
        assert_eq!(r.contiguous_from(15), 15);
        assert_eq!(r.contiguous_from(20), 30);
        assert_eq!(r.after(0).collect::<Vec<_>>(), [(20, 30), (40, 50)]);
        assert_eq!(r.after(20).collect::<Vec<_>>(), [(40, 50)]);
        assert_eq!(r.after(50).count(), 0);
        assert_eq!(r.max_end(), 50);
        assert_eq!(Ranges::default().max_end(), 0);
        assert_eq!(Ranges::default().contiguous_from(7), 7);
    }
}
