//! One striped session, both directions, without any IO.
//!
//! The session turns application bytes into frames for stripes and frames from
//! stripes back into application bytes. The caller (the striped pipe, or a
//! simulation) owns the sockets and the clock:
//!
//! - application side: [`Session::write`], [`Session::shutdown_write`],
//!   [`Session::readable`] / [`Session::consume`], [`Session::read_eof`];
//! - stripe side: [`Session::handle_frame`] for every frame that arrives,
//!   [`Session::poll_transmit`] for the next frame to write and the stripe to
//!   write it on, [`Session::send_slices`] for the payload bytes of a DATA
//!   transmit, and `stripe_*` calls for what the sockets report;
//! - time: [`Session::handle_timeout`] and [`Session::poll_timeout`].
//!
//! It composes the [`SendBuffer`] (bytes kept until acknowledged, re-sends,
//! what each stripe carried), the [`RecvStream`] (reassembly, FIN, ACKs),
//! the [`Keepalive`] and the [`scheduler`]. The sender never has more than
//! the peer's window unacknowledged, which bounds the peer's reassembly
//! memory and means the peer never has to stop reading a stripe:
//! reassembly cannot deadlock.

mod choose;
mod stall;
mod types;

use std::time::{Duration, Instant};

use super::frame::{ACK_FIN, Frame, FrameType, HEADER_LEN, Header, ResetReason, rst_payload};
use super::handshake::{MIN_MAX_PAYLOAD, MIN_WINDOW};
use super::keepalive::Keepalive;
use super::receive::RecvStream;
use super::scheduler::{RateEstimator, StripeView};
use super::send_buffer::{Chunk, SendBuffer};

pub use stall::STALL_RESEND_MAX;
pub use types::{MAX_WINDOW, SessionConfig, SessionError, SessionStats, Transmit};

/// What the scheduler knows of one stripe.
struct Stripe {
    up: bool,
    writable: bool,
    /// Kernel bytes unsent or unacknowledged, as last measured.
    kernel_queued: u64,
    /// Of those, the bytes not sent yet.
    kernel_unsent: u64,
    /// Bytes handed to this stripe since that measurement.
    queued_since: u64,
    /// Bytes the peer's kernel acknowledged on it, as last measured, and
    /// when that last grew or the stripe had nothing to deliver.
    delivered: u64,
    progress_at: Option<Instant>,
    rate: RateEstimator,
    /// Smoothed round trip as the kernel last reported it (`TCP_INFO`).
    rtt: Option<Duration>,
    /// The smallest round trip the kernel has seen: the path without queues.
    min_rtt: Option<Duration>,
    rst_sent: bool,
    /// On a backup path: carries data only while no primary stripe is up.
    backup: bool,
}

pub struct Session {
    cfg: SessionConfig,
    send: SendBuffer,
    peer_max_payload: usize,
    fin_out: Option<u64>,
    fin_sent_on: Option<usize>,
    fin_acked: bool,
    recv: RecvStream,
    stripes: Vec<Stripe>,
    keepalive: Keepalive,
    rst_out: Option<(ResetReason, String)>,
    /// Since when data has been in flight (`None`: idle). Silence counts
    /// from here at the earliest, so an idle stripe that was rightly quiet
    /// for minutes is not declared dead the moment data starts to flow.
    busy_since: Option<Instant>,
    /// When the peer's data last arrived. A receiving session waits for a
    /// dead stripe's bytes as much as a sending one: it probes quickly too,
    /// for a stripe timeout after the last data.
    data_in_at: Option<Instant>,
    /// When the peer's ACK last moved (or there was nothing to acknowledge).
    ack_progress_at: Option<Instant>,
    /// Stalls were bypassed up to here; until the ACK passes it, only a
    /// stuck stripe not bypassed yet gets another.
    stall_bypassed_until: u64,
    /// The stripes stalls were bypassed around since the ACK last passed
    /// `stall_bypassed_until` (bit i: stripe i); re-sends avoid them.
    suspects: u64,
    views: Vec<StripeView>,
    /// Backup stripes wait even with no primary stripe up (the client's
    /// primaries are still connecting at the start).
    hold_backups: bool,
    /// The peer's last DATA or ACK came on a backup stripe: it has given up
    /// on the primaries (it may see them dead before this end does), so
    /// this end follows it rather than send into a path that may be gone,
    /// until the peer's data comes on a primary again or a primary stripe
    /// (re)joins.
    peer_on_backup: bool,
    stats: SessionStats,
}

impl Session {
    pub fn new(cfg: SessionConfig, stripes: usize) -> Session {
        Session {
            send: SendBuffer::new(MIN_WINDOW as u64, cfg.unsent_limit),
            peer_max_payload: MIN_MAX_PAYLOAD as usize,
            fin_out: None,
            fin_sent_on: None,
            fin_acked: false,
            recv: RecvStream::new(cfg.window as u64, cfg.max_pieces),
            stripes: (0..stripes)
                .map(|_| Stripe::new(cfg.rate_interval))
                .collect(),
            keepalive: Keepalive::new(cfg.keepalive, cfg.idle_keepalive, cfg.stripe_timeout),
            rst_out: None,
            busy_since: None,
            data_in_at: None,
            ack_progress_at: None,
            stall_bypassed_until: 0,
            suspects: 0,
            views: Vec::new(),
            hold_backups: false,
            peer_on_backup: false,
            stats: SessionStats::default(),
            cfg,
        }
    }

    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// Counters the IO side keeps (re-dials, outages).
    pub fn stats_mut(&mut self) -> &mut SessionStats {
        &mut self.stats
    }

    /// The peer's window and frame cap, learned in the handshake. Until then
    /// the protocol minimums apply.
    pub fn set_peer_params(&mut self, window: u32, max_payload: u32) {
        // The peer's window is what it lets us keep unacknowledged, and so
        // what our send buffer may hold: this end's memory is bounded by its
        // own --window, whatever the peer announces.
        let own = self.cfg.window.clamp(MIN_WINDOW, MAX_WINDOW);
        self.send
            .set_peer_window(window.clamp(MIN_WINDOW, own) as u64);
        self.peer_max_payload = max_payload.max(MIN_MAX_PAYLOAD) as usize;
    }

    // ---- application side ----

    /// Takes application bytes to send; returns how many (0 = come back
    /// when the peer has acknowledged more or a stripe has taken more).
    pub fn write(&mut self, data: &[u8]) -> usize {
        if self.fin_out.is_some() || self.rst_out.is_some() {
            return 0;
        }
        let n = self.send.write(data);
        self.stats.bytes_out += n as u64;
        n
    }

    /// True when [`Session::write`] would take at least one byte.
    pub fn can_write(&self) -> bool {
        self.fin_out.is_none() && self.rst_out.is_none() && self.send.can_write()
    }

    /// No more application bytes will follow: a FIN goes out at the current end.
    pub fn shutdown_write(&mut self) {
        if self.fin_out.is_none() {
            self.fin_out = Some(self.send.end());
        }
    }

    /// In-order bytes ready for the application.
    pub fn readable(&self) -> &[u8] {
        self.recv.readable()
    }

    /// The application took `n` bytes of [`Session::readable`].
    pub fn consume(&mut self, n: usize) {
        if n > 0 {
            self.recv.consume(n);
            self.stats.bytes_in += n as u64;
        }
    }

    /// The peer's FIN has been reached: the application has read everything.
    pub fn read_eof(&self) -> bool {
        self.recv.read_eof()
    }

    /// Both directions are closed and acknowledged: nothing is left to send
    /// or to wait for.
    pub fn is_finished(&self) -> bool {
        self.fin_acked && self.recv.finished()
    }

    /// Our FIN was acknowledged: the peer's application got every byte.
    pub fn write_finished(&self) -> bool {
        self.fin_acked
    }

    /// Bytes between the two applications in this direction: taken from
    /// ours, not yet delivered to the peer's.
    pub fn send_backlog(&self) -> u64 {
        self.send.backlog()
    }

    /// Application bytes taken in but not yet handed to any stripe.
    pub fn unsent(&self) -> u64 {
        self.send.unsent()
    }

    /// Bytes received that our application has not taken.
    pub fn recv_backlog(&self) -> u64 {
        self.recv.buffered()
    }

    /// Storage held by the two buffers.
    pub fn buffer_capacity(&self) -> usize {
        self.send.capacity() + self.recv.capacity()
    }

    /// Frees buffers that hold nothing (called when the session goes idle).
    pub fn release_idle_buffers(&mut self) {
        self.send.release_if_empty();
        self.recv.release_if_empty();
    }

    /// Aborts: every live stripe will carry an RST, then nothing more.
    pub fn abort(&mut self, reason: ResetReason, message: &str) {
        if self.rst_out.is_none() {
            self.rst_out = Some((reason, message.to_string()));
        }
    }

    /// True once every live stripe has been given its RST.
    pub fn abort_sent(&self) -> bool {
        self.rst_out.is_some() && self.stripes.iter().all(|s| !s.up || s.rst_sent)
    }

    // ---- stripe side ----

    pub fn stripe_count(&self) -> usize {
        self.stripes.len()
    }

    pub fn stripes_up(&self) -> usize {
        self.stripes.iter().filter(|s| s.up).count()
    }

    pub fn is_stripe_up(&self, i: usize) -> bool {
        self.stripes.get(i).is_some_and(|s| s.up)
    }

    /// Stripe `i` can carry frames (it is connected and handshaken).
    pub fn stripe_up(&mut self, i: usize, now: Instant) {
        if i >= self.stripes.len() {
            self.stripes
                .resize_with(i + 1, || Stripe::new(self.cfg.rate_interval));
        }
        if self.stripes[i].up {
            // A new connection in place of a live one: what the old one
            // carried may be gone with it.
            self.send.stripe_lost(i);
        }
        self.send.frame_written(i);
        let backup = self.stripes[i].backup;
        if !backup {
            // A primary (re)joined: the peer is going back to it.
            self.peer_on_backup = false;
        }
        self.stripes[i] = Stripe::new(self.cfg.rate_interval);
        self.stripes[i].backup = backup;
        self.stripes[i].up = true;
        self.stripes[i].writable = true;
        self.keepalive.up(i, now);
        // A new stripe after a loss: tell the peer where we are.
        self.recv.repeat_ack();
    }

    /// Stripe `i` is gone. Whatever it carried that is not acknowledged will
    /// be sent again on the others.
    pub fn stripe_down(&mut self, i: usize) {
        if i >= self.stripes.len() {
            return;
        }
        self.suspects &= !stall::bit(i);
        // Its socket is gone: nothing of a half-written frame will follow.
        self.send.frame_written(i);
        let s = &mut self.stripes[i];
        if !s.up {
            return;
        }
        s.up = false;
        s.writable = false;
        self.stats.stripes_lost += 1;
        self.send.stripe_lost(i);
        self.keepalive.down(i);
        if self.fin_sent_on == Some(i) && !self.fin_acked {
            self.fin_sent_on = None;
        }
        // Our latest ACK may have been lost with the stripe: send it again,
        // or a peer waiting for its window to open would wait for good.
        self.recv.repeat_ack();
    }

    /// Stripe `i` returned WouldBlock (false) or reported writable (true).
    pub fn set_stripe_writable(&mut self, i: usize, writable: bool) {
        if let Some(s) = self.stripes.get_mut(i) {
            s.writable = writable && s.up;
        }
    }

    /// Fresh numbers from the kernel for stripe `i`: bytes it holds unsent or
    /// unacknowledged, and of those the unsent ones, and cumulative bytes the
    /// peer's kernel acknowledged.
    pub fn update_stripe(
        &mut self,
        i: usize,
        now: Instant,
        (kernel_queued, kernel_unsent): (u64, u64),
        delivered: u64,
        rtt: Option<Duration>,
    ) {
        if let Some(s) = self.stripes.get_mut(i) {
            s.kernel_queued = kernel_queued;
            s.kernel_unsent = kernel_unsent.min(kernel_queued);
            s.queued_since = 0;
            if delivered > s.delivered || kernel_queued == 0 || s.progress_at.is_none() {
                s.progress_at = Some(now);
            }
            s.delivered = delivered;
            // Busy means the kernel held bytes it could not send yet; bytes
            // merely in flight are not a backlog: on a long path a stripe
            // given one frame a round trip has them all the time, and its
            // app-limited samples dragged its rate down to nothing. A first
            // estimate still counts bytes in flight: in slow start a
            // stripe's unsent queue runs empty now and then, stripes went
            // unmeasured for seconds, and the session fed only the one with
            // the lowest round trip (bench-caps: 33 of 76 Mbit/s over the
            // first 4 s in one run of four).
            let first = s.rate.rate().is_none();
            s.rate.on_sample(
                now,
                delivered,
                kernel_unsent > 0 || (first && kernel_queued > 0),
            );
            if rtt.is_some() {
                s.rtt = rtt;
            }
        }
    }

    /// The smallest round trip the kernel has seen on stripe `i`: what a
    /// frame on it takes once its own queue has drained.
    pub fn set_stripe_min_rtt(&mut self, i: usize, min_rtt: Duration) {
        if let Some(s) = self.stripes.get_mut(i) {
            s.min_rtt = Some(min_rtt);
        }
    }

    /// The drain rate measured on stripe `i`, bytes per second.
    pub fn stripe_rate(&self, i: usize) -> Option<f64> {
        self.stripes.get(i).and_then(|s| s.rate.rate())
    }

    /// Stripe `i`'s readings while it is up, for the metrics: smoothed
    /// round trip (TCP_INFO), bytes queued on it, drain rate (bytes/s).
    pub fn stripe_reading(&self, i: usize) -> Option<(Option<Duration>, u64, Option<f64>)> {
        let s = self.stripes.get(i).filter(|s| s.up)?;
        Some((s.rtt, s.kernel_queued + s.queued_since, s.rate.rate()))
    }

    /// Round trip measured by stripe `i`'s last PING.
    pub fn stripe_ping_rtt(&self, i: usize) -> Option<Duration> {
        self.keepalive.rtt(i)
    }

    /// One line per stripe for debug logs: state, drain rate, queue, RTT.
    pub fn describe_stripe(&self, i: usize) -> String {
        let Some(s) = self.stripes.get(i) else {
            return "none".into();
        };
        if !s.up {
            return "down".into();
        }
        let ms = |d: Option<Duration>| {
            d.map_or("?".to_string(), |d| {
                format!("{:.1} ms", d.as_secs_f64() * 1e3)
            })
        };
        format!(
            "{}, rate {}, queued {} KiB, rtt {} (now {}), ping {}",
            if s.writable { "writable" } else { "full" },
            s.rate.rate().map_or("unmeasured".to_string(), |r| format!(
                "{:.1} Mbit/s",
                r * 8.0 / 1e6
            )),
            (s.kernel_queued + s.queued_since) >> 10,
            ms(s.rtt),
            ms(s.rtt_now()),
            ms(self.keepalive.rtt(i)),
        )
    }

    /// A frame arrived on stripe `i`.
    pub fn handle_frame(
        &mut self,
        i: usize,
        frame: Frame<'_>,
        now: Instant,
    ) -> Result<(), SessionError> {
        let h = frame.header;
        self.keepalive.heard(i, now);
        if matches!(h.ty, FrameType::Data | FrameType::Ack)
            && let Some(s) = self.stripes.get(i)
        {
            self.peer_on_backup = s.backup;
        }
        match h.ty {
            FrameType::Data => {
                self.data_in_at = Some(now);
                self.recv
                    .on_data(h.value, frame.payload)
                    .map_err(|err| SessionError::Data { stripe: i, err })?;
            }
            FrameType::Ack => {
                if self.handle_ack(i, h.value, h.flags & ACK_FIN != 0)? {
                    self.ack_progress_at = Some(now);
                }
            }
            FrameType::Fin => {
                self.recv
                    .on_fin(h.value)
                    .map_err(|e| SessionError::FinMismatch {
                        stripe: i,
                        fin: h.value,
                        seen: e.seen,
                    })?;
            }
            FrameType::Rst => {
                let (code, reason) = super::frame::parse_rst(frame.payload);
                return Err(SessionError::PeerReset { code, reason });
            }
            FrameType::Ping => self.keepalive.on_ping(i, h.value),
            FrameType::Pong => self.keepalive.on_pong(i, h.value, now),
        }
        Ok(())
    }

    /// Returns true if the ACK moved.
    fn handle_ack(&mut self, i: usize, ack: u64, fin: bool) -> Result<bool, SessionError> {
        let sent = self.send.highest_sent();
        if ack > sent {
            return Err(SessionError::AckBeyondSent {
                stripe: i,
                ack,
                sent,
            });
        }
        if fin {
            if self.fin_out != Some(ack) {
                return Err(SessionError::BadFinAck { stripe: i, ack });
            }
            self.fin_acked = true;
        }
        let moved = self.send.on_ack(ack);
        if moved && ack >= self.stall_bypassed_until {
            self.suspects = 0;
        }
        Ok(moved)
    }

    /// Keepalive: PINGs stripes that have been silent, and returns a stripe
    /// that has been silent past the timeout (the caller closes it and calls
    /// [`Session::stripe_down`]). Also sends the head of the line around a
    /// stalled stripe: when the peer's ACKs stop, or the stripe holding the
    /// oldest unacknowledged bytes would take far longer than the others to
    /// drain, those bytes go out again on the others, once.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<usize> {
        self.bypass_stall(now);
        self.note_busy(now);
        self.keepalive.check(now, self.busy_since)
    }

    /// When [`Session::handle_timeout`] next has something to do for the
    /// stripes' keepalive: a PING to send or a silent stripe to declare dead.
    /// `None` when no stripe is up. While data is in flight the caller also
    /// runs the session on its own rate-measurement clock.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.keepalive.next_deadline(self.busy_since)
    }

    /// Nothing to send and nothing awaited: no data or FIN in flight either
    /// way that this end knows of, nothing buffered, no control frame due.
    /// Only the keepalive then needs a timer ([`Session::poll_timeout`]).
    pub fn is_quiet(&self) -> bool {
        !self.is_busy()
            && self.recv.buffered() == 0
            && !self.recv.ack_due()
            && self.rst_out.is_none()
            && self.keepalive.nothing_due()
    }

    /// Data is in flight: ours unacknowledged, or our FIN, or the peer's
    /// data arrived within the last stripe timeout.
    pub fn is_busy(&self) -> bool {
        self.sending() || self.data_in_at.is_some()
    }

    /// Our data or FIN is unacknowledged.
    fn sending(&self) -> bool {
        self.send.backlog() > 0 || (self.fin_out.is_some() && !self.fin_acked)
    }

    /// [`Session::is_busy`] as of `now`: the peer's data counts for a
    /// stripe timeout after it arrived.
    pub fn is_busy_at(&self, now: Instant) -> bool {
        self.sending()
            || self
                .data_in_at
                .is_some_and(|t| now.saturating_duration_since(t) < self.cfg.stripe_timeout)
    }

    fn note_busy(&mut self, now: Instant) {
        let busy = self.is_busy_at(now);
        if !busy {
            self.data_in_at = None;
        }
        match (busy, self.busy_since) {
            (true, None) => self.busy_since = Some(now),
            (false, Some(_)) => self.busy_since = None,
            _ => {}
        }
    }

    /// Stripe `i` has written all of the last frame it was given; its
    /// payload may be freed once acknowledged.
    pub fn frame_written(&mut self, i: usize) {
        self.send.frame_written(i);
    }

    /// Stripes whose half-written frame holds bytes the peer has already
    /// acknowledged (it got them from a copy on another stripe). Once the
    /// IO side holds its own copy of that frame (a sealed record does), it
    /// calls [`Session::frame_written`], so the buffer can let go of them.
    pub fn stale_pins(&self) -> impl Iterator<Item = usize> + '_ {
        self.send.stale_pins()
    }

    /// The payload bytes of a DATA transmit; valid until the stripe's
    /// [`Session::frame_written`].
    pub fn send_slices(&self, offset: u64, len: usize) -> (&[u8], &[u8]) {
        self.send.slices(offset, len)
    }

    /// The next frame to write, or `None` until something changes (a stripe
    /// becomes writable, the application writes, a frame arrives).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some((reason, message)) = &self.rst_out {
            let i = self
                .stripes
                .iter()
                .position(|s| s.up && s.writable && !s.rst_sent)?;
            self.stripes[i].rst_sent = true;
            let payload = rst_payload(*reason, message);
            return Some(self.control(i, FrameType::Rst, 0, 0, payload));
        }
        let ready = |s: &Stripe| s.up && s.writable;
        if let Some(i) =
            (0..self.stripes.len()).find(|&i| ready(&self.stripes[i]) && self.keepalive.pong_due(i))
        {
            let v = self.keepalive.take_pong(i).expect("checked");
            return Some(self.control(i, FrameType::Pong, 0, v, Vec::new()));
        }
        if let Some(i) =
            (0..self.stripes.len()).find(|&i| ready(&self.stripes[i]) && self.keepalive.ping_due(i))
        {
            let v = self.keepalive.take_ping(i).expect("checked");
            return Some(self.control(i, FrameType::Ping, 0, v, Vec::new()));
        }
        if self.recv.ack_due() {
            let i = self.choose(HEADER_LEN as u64, 0)?;
            let (delivered, fin) = self.recv.take_ack();
            let flags = if fin { ACK_FIN } else { 0 };
            return Some(self.control(i, FrameType::Ack, flags, delivered, Vec::new()));
        }
        if let Some(t) = self.poll_data() {
            return Some(t);
        }
        // The FIN goes after the last data has been handed out, so a stripe
        // that is up never sees the FIN before data it could have carried.
        if let Some(fin) = self.fin_out
            && self.fin_sent_on.is_none()
            && !self.fin_acked
            && self.send.all_handed_out()
        {
            let i = self.choose(HEADER_LEN as u64, 0)?;
            self.fin_sent_on = Some(i);
            return Some(self.control(i, FrameType::Fin, 0, fin, Vec::new()));
        }
        None
    }

    fn poll_data(&mut self) -> Option<Transmit> {
        let max = self.max_payload();
        let mut chunk = self.send.peek(max)?;
        // Bytes sent around a stalled stripe must not go back onto it.
        let avoid = if chunk.resend { self.suspects } else { 0 };
        let i = self.choose(HEADER_LEN as u64 + chunk.len, avoid)?;
        chunk.len = chunk.len.min(self.stripes[i].frame_cap(max));
        self.send.hand_out(i, chunk);
        if chunk.resend {
            self.stats.bytes_resent += chunk.len;
        }
        let Chunk { offset, len, .. } = chunk;
        self.stripes[i].queued_since += HEADER_LEN as u64 + len;
        Some(Transmit {
            stripe: i,
            header: Header {
                ty: FrameType::Data,
                flags: 0,
                len: len as u32,
                value: offset,
            },
            data: Some((offset, len as usize)),
            inline: Vec::new(),
        })
    }

    fn control(
        &mut self,
        i: usize,
        ty: FrameType,
        flags: u8,
        value: u64,
        inline: Vec<u8>,
    ) -> Transmit {
        self.stripes[i].queued_since += (HEADER_LEN + inline.len()) as u64;
        Transmit {
            stripe: i,
            header: Header {
                ty,
                flags,
                len: inline.len() as u32,
                value,
            },
            data: None,
            inline,
        }
    }
}

impl Stripe {
    fn new(rate_interval: Duration) -> Stripe {
        Stripe {
            up: false,
            writable: false,
            kernel_queued: 0,
            kernel_unsent: 0,
            queued_since: 0,
            delivered: 0,
            progress_at: None,
            rate: RateEstimator::new(rate_interval),
            rtt: None,
            min_rtt: None,
            rst_sent: false,
            backup: false,
        }
    }
}

#[cfg(test)]
mod tests;
