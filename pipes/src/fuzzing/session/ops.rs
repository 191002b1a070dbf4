//! The op interpreter of the session harness, and the operations on
//! stripes, the application and time.

use std::time::Duration;

use super::{
    IDLE_KEEPALIVE, Input, KEEPALIVE, MAX_WRITE, PIN_ALLOWANCE, Partial, STRIPE_TIMEOUT, Sim,
    app_byte, peer_byte,
};
use crate::proto::frame::FrameType;
use crate::proto::handshake::{MIN_MAX_PAYLOAD, MIN_WINDOW};

impl Sim {
    /// One operation. `None` when the input ran out.
    pub(super) fn step(&mut self, op: u8, input: &mut Input<'_>) -> Option<()> {
        match op % 21 {
            0 => {
                let i = input.u8()? as usize % self.n;
                self.stripe_up(i);
            }
            1 => {
                let i = self.stripe_arg(input.u8()?);
                self.stripe_down(i);
            }
            2 => {
                // The socket reports writable (not while a frame is half
                // written: the pipe first finishes it) or WouldBlock.
                let b = input.u8()?;
                let i = self.stripe_arg(b >> 1);
                let w = b & 1 == 1 && self.partial.get(i).is_none_or(|p| p.is_none());
                self.s.set_stripe_writable(i, w);
                if i < self.n {
                    self.writable[i] = w && self.up[i];
                }
            }
            3 => {
                let i = self.stripe_arg(input.u8()?);
                let queued = input.u16()? as u64 * 64;
                let step = input.u16()? as u64 * 16;
                let rtt = input.u8()?;
                let delivered = match self.kernel_delivered.get_mut(i) {
                    Some(d) => {
                        *d += step;
                        *d
                    }
                    None => step,
                };
                let rtt = (rtt > 0).then(|| Duration::from_millis(rtt as u64));
                self.s
                    .update_stripe(i, self.now, (queued, queued / 2), delivered, rtt);
            }
            4 => {
                let a = input.u8()? as usize;
                let b = input.u8()?;
                let len = ((a + 1) << (b % 12)).min(MAX_WRITE);
                self.app_write(len);
            }
            5 => {
                let b = input.u16()?;
                self.app_consume(b as usize * 16 + 1);
            }
            6 => self.app_consume(usize::MAX),
            7 => {
                self.fin_out.get_or_insert(self.written);
                self.s.shutdown_write();
            }
            8 => {
                let mode = input.u16()?;
                let partial = input.u8()?;
                self.poll(mode, partial);
            }
            9 => {
                let i = self.stripe_arg(input.u8()?);
                self.peer_ack(i);
            }
            10 => {
                let kind = input.u8()?;
                let i = self.stripe_arg(input.u8()?);
                self.hostile_ack(i, kind, input)?;
            }
            11 => {
                // The peer cuts a new frame of its stream (sent later).
                let len = input.u16()? as usize + 1;
                self.peer_new_data(len);
            }
            12 => {
                // One of the peer's frames arrives, in any order.
                let k = input.u8()? as usize;
                let i = self.stripe_arg(input.u8()?);
                if !self.in_flight.is_empty() {
                    let (off, len) = self.in_flight.remove(k % self.in_flight.len());
                    self.deliver_data(i, off, len, false);
                }
            }
            13 => {
                let kind = input.u8()?;
                let i = self.stripe_arg(input.u8()?);
                self.odd_data(i, kind, input)?;
            }
            14 => {
                let kind = input.u8()?;
                let i = self.stripe_arg(input.u8()?);
                self.peer_fin(i, kind, input)?;
            }
            15 => {
                let i = self.stripe_arg(input.u8()?);
                let value = match input.u8()? {
                    0..=127 => self.last_ping,
                    _ => input.u64()?,
                };
                let ty = if input.u8()? & 1 == 0 {
                    FrameType::Ping
                } else {
                    FrameType::Pong
                };
                self.deliver(i, ty as u8, 0, 0, value, &[]);
            }
            16 => {
                let ms = input.u8()? as u64;
                let ms = if ms >= 200 {
                    (ms - 199) * 1000
                } else {
                    ms * 10
                };
                self.now += Duration::from_millis(ms);
                self.timeout();
            }
            17 => {
                // A raw frame with a correct CRC: any type byte, flags,
                // reserved bits, value; DATA payloads are the peer's bytes.
                let i = self.stripe_arg(input.u8()?);
                let ty = input.u8()?;
                let flags = input.u8()?;
                let reserved = if input.u8()? < 240 { 0 } else { input.u16()? };
                let value = input.u64()?;
                let len = input.u16()? as usize;
                let payload = if ty == FrameType::Data as u8 {
                    self.peer_bytes(value, len)
                } else {
                    input.bytes(len.min(input.data.len() - input.at))?.to_vec()
                };
                self.hostile = true;
                self.deliver(i, ty, flags, reserved, value, &payload);
            }
            18 => {
                if !self.peer_params_set {
                    let w = input.u32()?;
                    let m = input.u32()?;
                    self.s.set_peer_params(w, m);
                    // The session never holds more for the peer than its own window.
                    self.peer_window =
                        (w.max(MIN_WINDOW) as u64).min(self.window.max(MIN_WINDOW as u64));
                    self.peer_max_payload = m.max(MIN_MAX_PAYLOAD) as usize;
                    self.peer_params_set = true;
                }
            }
            19 => {
                // The rest of a half-written frame goes out, or the stripe
                // dies with it.
                let b = input.u8()?;
                let i = b as usize % self.n;
                if b & 0x80 == 0 {
                    self.flush(i);
                } else if self.partial[i].is_some() {
                    self.stripe_down(i);
                }
            }
            _ => match input.u8()? {
                0..=7 => {
                    let code = input.u16()?;
                    self.hostile = true;
                    self.s.abort(
                        crate::proto::frame::ResetReason::from_code(code),
                        "fuzz abort",
                    );
                    self.aborted.get_or_insert(code);
                }
                _ => self.s.release_idle_buffers(),
            },
        }
        Some(())
    }

    // ---- stripes ----

    pub(super) fn stripe_up(&mut self, i: usize) {
        // As the striped pipe does when a stripe replaces a live one.
        if self.up[i] {
            self.stripe_down(i);
        }
        self.s.stripe_up(i, self.now);
        self.up[i] = true;
        self.writable[i] = true;
        self.last_heard[i] = self.now;
        self.pong_due[i] = None;
        self.kernel_delivered[i] = 0;
        self.rst_sent[i] = false;
        self.partial[i] = None;
    }

    pub(super) fn stripe_down(&mut self, i: usize) {
        self.s.stripe_down(i);
        if i < self.n {
            self.up[i] = false;
            self.writable[i] = false;
            // Whatever was half written is lost with the connection.
            self.partial[i] = None;
        }
    }

    /// Stripe `i`'s socket takes the rest of its half-written frame: the
    /// bytes must still be there, unchanged, whatever was acknowledged
    /// meanwhile (the peer may have had them from another stripe).
    pub(super) fn flush(&mut self, i: usize) {
        let Some(Partial {
            offset,
            len,
            detached,
        }) = self.partial[i].take()
        else {
            return;
        };
        if detached.is_none() {
            self.check_payload(offset, len);
        }
        self.s.frame_written(i);
        self.peer_got.add(offset, offset + len as u64);
        self.s.set_stripe_writable(i, true);
        self.writable[i] = self.up[i];
    }

    fn timeout(&mut self) {
        // Busy (data or a FIN in flight) is the session's own call; the
        // model checks what follows from it.
        let busy = self.s.is_busy_at(self.now);
        self.busy_since = match (busy, self.busy_since) {
            (true, None) => Some(self.now),
            (true, since) => since,
            (false, _) => None,
        };
        // Silence before the PING (quick when busy, rare when idle), then
        // the same grace either way.
        let probe = if busy { KEEPALIVE } else { IDLE_KEEPALIVE };
        let limit = probe + (STRIPE_TIMEOUT - KEEPALIVE);
        for _ in 0..=self.n {
            let dead = self.s.handle_timeout(self.now);
            let expect = (0..self.n).find(|&i| {
                let from = self
                    .busy_since
                    .map_or(self.last_heard[i], |b| b.max(self.last_heard[i]));
                self.up[i] && self.now.saturating_duration_since(from) >= limit
            });
            assert_eq!(dead, expect, "handle_timeout named the wrong stripe");
            match dead {
                Some(i) => self.stripe_down(i),
                None => return,
            }
        }
        panic!("handle_timeout kept naming stripes");
    }

    // ---- application ----

    /// Acknowledged bytes that half-written frames (not yet copied out)
    /// still keep in the send buffer.
    pub(super) fn held(&self) -> u64 {
        self.partial
            .iter()
            .flatten()
            .filter(|p| p.detached.is_none())
            .map(|p| self.acked.saturating_sub(p.offset))
            .max()
            .unwrap_or(0)
    }

    fn app_write(&mut self, len: usize) {
        let window_room = (self.acked + self.peer_window).saturating_sub(self.written);
        let unsent_room = self
            .unsent_limit
            .saturating_sub(self.written - self.sent_end);
        // Acknowledged bytes a half-written frame still pins count against
        // the session's allowance beyond the window.
        let held = self.held();
        let send_base = self.acked - held;
        let pin_room =
            (self.peer_window + held.min(PIN_ALLOWANCE)).saturating_sub(self.written - send_base);
        let expect = if self.fin_out.is_some() || self.aborted.is_some() {
            0
        } else {
            (len as u64).min(window_room).min(unsent_room).min(pin_room)
        };
        let can_expect = self.fin_out.is_none()
            && self.aborted.is_none()
            && window_room > 0
            && unsent_room > 0
            && pin_room > 0;
        assert_eq!(
            self.s.can_write(),
            can_expect,
            "can_write() must say whether write() takes a byte"
        );
        // One byte more than the session should take is enough to see
        // that it stops at the right place (and is much cheaper than `len`).
        let offer = len.min(expect as usize + 1);
        self.scratch.clear();
        let w = self.written;
        self.scratch
            .extend((0..offer as u64).map(|k| app_byte(w + k)));
        let n = self.s.write(&self.scratch);
        assert_eq!(n as u64, expect, "write took {n}, expected {expect}");
        self.written += n as u64;
    }

    /// The application takes up to `want` bytes; every byte it takes is
    /// checked against the peer's stream.
    pub(super) fn app_consume(&mut self, want: usize) {
        self.check_readable();
        let r = self.s.readable();
        let n = r.len().min(want);
        for (k, &b) in r[..n].iter().enumerate() {
            let o = self.consumed + k as u64;
            assert_eq!(b, peer_byte(o), "delivered a wrong byte at offset {o}");
        }
        self.s.consume(n);
        self.consumed += n as u64;
    }
}
