//! Frames on the stripes, both ways: what the simulated peer sends the
//! session (encoded and decoded as the framed pipe does), and draining
//! `poll_transmit` into what reaches the peer.

use super::{Input, MAX_TRANSMITS_PER_POLL, Partial, Sim, peer_byte};
use crate::fuzzing::frame::fix_crcs;
use crate::proto::frame::{ACK_FIN, FrameType, HEADER_LEN, MAX_RST_PAYLOAD, decode};

impl Sim {
    // ---- frames from the peer ----

    pub(super) fn peer_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|k| peer_byte(offset.wrapping_add(k)))
            .collect()
    }

    /// The peer cuts its next frame, within the window we gave it.
    pub(super) fn peer_new_data(&mut self, len: usize) {
        if self.peer_fin.is_some() {
            return;
        }
        let room = (self.peer_acked_by_us + self.window).saturating_sub(self.peer_next);
        let len = (len as u64).min(room).min(self.recv_cap as u64);
        if len == 0 {
            return;
        }
        self.in_flight.push((self.peer_next, len as usize));
        self.peer_next += len;
    }

    /// DATA the protocol allows (a duplicate, a re-sent range) or not (past
    /// the window, past the FIN, beyond the cap, anywhere).
    pub(super) fn odd_data(&mut self, i: usize, kind: u8, input: &mut Input<'_>) -> Option<()> {
        let len = input.u16()? as usize % (self.recv_cap + 2) + 1;
        let delta = input.u16()? as u64;
        let offset = match kind % 6 {
            // A range the peer sent before (a re-send after a stripe loss):
            // within the protocol.
            0 => {
                let off = self.peer_next.saturating_sub(delta);
                let len = (len as u64)
                    .min(self.peer_next - off)
                    .min(self.recv_cap as u64);
                if len > 0 {
                    self.deliver_data(i, off, len as usize, false);
                }
                return Some(());
            }
            // Around what we have delivered or have ready.
            1 => self.consumed + delta % (self.window + 64),
            2 => self.ready().saturating_sub(delta % 64),
            // At the window's edge, give or take a few bytes.
            3 => {
                let edge = self.consumed + self.window;
                (edge + delta % 5).saturating_sub(len as u64 + 2)
            }
            // Anywhere.
            4 => input.u64()?,
            // Just past the FIN (or the peer's end).
            _ => self
                .fin_in
                .unwrap_or(self.peer_next)
                .saturating_add(delta % 4),
        };
        self.deliver_data(i, offset, len, true);
        Some(())
    }

    pub(super) fn deliver_data(&mut self, i: usize, offset: u64, len: usize, hostile: bool) {
        let payload = self.peer_bytes(offset, len);
        self.hostile |= hostile;
        self.deliver(i, FrameType::Data as u8, 0, 0, offset, &payload);
    }

    /// An ACK of what reached the peer, as the peer would send it.
    pub(super) fn peer_ack(&mut self, i: usize) {
        let v = self.peer_got.contiguous_from(0);
        let flags = if self.peer_got_fin == Some(v) {
            ACK_FIN
        } else {
            0
        };
        self.deliver(i, FrameType::Ack as u8, flags, 0, v, &[]);
    }

    pub(super) fn hostile_ack(&mut self, i: usize, kind: u8, input: &mut Input<'_>) -> Option<()> {
        let d = input.u16()? as u64;
        let v = match kind % 5 {
            0 => self.sent_end.saturating_add(d % 4),
            1 => self.sent_end.saturating_sub(d),
            2 => self.acked.saturating_sub(d),
            3 => self.fin_out.unwrap_or(self.sent_end),
            _ => input.u64()?,
        };
        let flags = input.u8()?;
        // An ACK is within the protocol if the peer really has the bytes.
        if v > self.peer_got.contiguous_from(0)
            || (flags & ACK_FIN != 0 && self.peer_got_fin != Some(v))
        {
            self.hostile = true;
        }
        self.deliver(i, FrameType::Ack as u8, flags, 0, v, &[]);
        Some(())
    }

    pub(super) fn peer_fin(&mut self, i: usize, kind: u8, input: &mut Input<'_>) -> Option<()> {
        let value = match kind % 4 {
            // The peer closes its stream where it is.
            0 | 1 => {
                let f = *self.peer_fin.get_or_insert(self.peer_next);
                self.deliver(i, FrameType::Fin as u8, 0, 0, f, &[]);
                return Some(());
            }
            2 => {
                let seen = self.got.max_end().max(self.consumed);
                (seen + input.u8()? as u64 % 3).saturating_sub(1)
            }
            _ => input.u64()?,
        };
        self.hostile = true;
        self.deliver(i, FrameType::Fin as u8, 0, 0, value, &[]);
        Some(())
    }

    /// Puts a frame on the wire of stripe `i` (with a correct CRC), decodes
    /// it as the framed pipe would with our receive cap, hands it to the
    /// session and compares the verdict with the model's.
    pub(super) fn deliver(
        &mut self,
        i: usize,
        ty: u8,
        flags: u8,
        reserved: u16,
        value: u64,
        payload: &[u8],
    ) {
        let mut wire = vec![0u8; HEADER_LEN];
        wire[0] = ty;
        wire[1] = flags;
        wire[2..4].copy_from_slice(&reserved.to_be_bytes());
        wire[4..8].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        wire[8..16].copy_from_slice(&value.to_be_bytes());
        wire.extend_from_slice(payload);
        fix_crcs(&mut wire);

        let f = match decode(&wire, self.recv_cap) {
            Ok(Some((f, n))) => {
                assert_eq!(n, wire.len());
                f
            }
            Ok(None) => panic!("a whole frame decoded as incomplete"),
            Err(e) => {
                // The codec refuses it: the real pipe fails the session
                // before the session sees anything.
                let valid_ty = (1..=6).contains(&ty);
                assert!(
                    !valid_ty
                        || reserved != 0
                        || (ty == FrameType::Data as u8 && payload.len() > self.recv_cap)
                        || (ty == FrameType::Data as u8 && payload.is_empty())
                        || (ty == FrameType::Rst as u8
                            && !(2..=MAX_RST_PAYLOAD).contains(&payload.len()))
                        || (ty != FrameType::Data as u8
                            && ty != FrameType::Rst as u8
                            && !payload.is_empty()),
                    "codec refused a good frame: {e}"
                );
                self.hostile = true;
                return;
            }
        };
        let expect = self.expect(i, f.header, f.payload);
        if i < self.n {
            self.last_heard[i] = self.now;
        }
        let got = self.s.handle_frame(i, f, self.now);
        assert_eq!(
            got, expect,
            "session verdict on {:?} at {value} on stripe {i}",
            f.header.ty
        );
        if got.is_err() {
            self.hostile = true;
            return;
        }
        match f.header.ty {
            FrameType::Data => {
                let end = value + payload.len() as u64;
                self.got.add(value, end);
            }
            FrameType::Ack => {
                self.acked = self.acked.max(value);
                if flags & ACK_FIN != 0 {
                    self.fin_acked = true;
                }
            }
            FrameType::Fin => self.fin_in = Some(value),
            FrameType::Ping => {
                if i < self.n {
                    self.pong_due[i] = Some(value);
                }
            }
            FrameType::Pong => {
                if i < self.n && self.up[i] && value == self.last_ping && value != 0 {
                    // Might be an old PING's value on another stripe: only
                    // check that an RTT, when there is one, is sane.
                    if let Some(rtt) = self.s.stripe_ping_rtt(i) {
                        assert!(rtt <= self.now - self.base);
                    }
                }
            }
            FrameType::Rst => unreachable!("an RST is always an error"),
        }
    }

    // ---- frames to the peer ----

    /// As the striped pipe does before it transmits: a half-written frame
    /// whose bytes the peer acknowledged (through another stripe) gets its
    /// payload copied out, so the send buffer can let go of them.
    fn detach_stale_pins(&mut self) {
        let stale: Vec<usize> = self.s.stale_pins().collect();
        for i in stale {
            let p = self
                .partial
                .get_mut(i)
                .and_then(|p| p.as_mut())
                .filter(|p| p.detached.is_none())
                .unwrap_or_else(|| {
                    panic!("stale pin on stripe {i}, which has no frame in progress")
                });
            let (offset, len) = (p.offset, p.len);
            assert!(
                offset < self.acked,
                "pin at {offset} is not stale (acked {})",
                self.acked
            );
            self.check_payload(offset, len);
            let (a, b) = self.s.send_slices(offset, len);
            let copy = [a, b].concat();
            self.partial[i].as_mut().expect("checked").detached = Some(copy);
            self.s.frame_written(i);
        }
    }

    /// Drains `poll_transmit`. Bit k of `mode` (cycling) says whether the
    /// k-th transmit reaches the peer (1) or is lost (0). TCP loses nothing
    /// on a connection that lives, so a loss is the stripe dying: it goes
    /// down at once, and the session must make up for whatever it carried.
    ///
    /// Bit k of `partial` leaves the k-th DATA frame (of the first 7) that
    /// reaches its stripe half written: the socket took part of it and
    /// reported WouldBlock; the rest goes with [`Sim::flush`]. Its top bit
    /// makes the IO side late: it does not copy out stale pinned frames
    /// first ([`Sim::detach_stale_pins`]), so the session's own allowance
    /// must bound the buffer. The top bit of `mode` makes the peer
    /// acknowledge what it got at the end.
    pub(super) fn poll(&mut self, mode: u16, partial: u8) {
        if partial & 0x80 == 0 {
            self.detach_stale_pins();
        }
        let (mut k, mut d) = (0, 0);
        while let Some(t) = self.s.poll_transmit() {
            let reach = mode == 0 || (mode >> (k % 15)) & 1 == 1;
            let half = reach && t.data.is_some() && {
                d += 1;
                d <= 7 && (partial >> (d - 1)) & 1 == 1
            };
            self.check_transmit(&t, reach && !half);
            if half {
                let (offset, len) = t.data.expect("DATA");
                self.partial[t.stripe] = Some(Partial {
                    offset,
                    len,
                    detached: None,
                });
                self.s.set_stripe_writable(t.stripe, false);
                self.writable[t.stripe] = false;
            } else if reach {
                // The whole frame went into the stripe's socket.
                self.s.frame_written(t.stripe);
            } else {
                self.stripe_down(t.stripe);
            }
            k += 1;
            assert!(
                k < MAX_TRANSMITS_PER_POLL,
                "poll_transmit never returns None"
            );
        }
        if mode & 0x8000 != 0 {
            self.peer_ack(self.first_up());
        }
    }
}
