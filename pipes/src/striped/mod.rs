//! `StripedPipe`: N framed TCP stripes presented as one ordered byte stream.
//!
//! This is the IO half of a session: it owns the stripe sockets, drives
//! their connects and handshakes, feeds arriving frames to the sans-IO
//! [`Session`], writes the frames the session hands out, and tells the
//! session what the kernel reports about each stripe (queued bytes, drain
//! progress, round trip) so its scheduler can pick the stripe that delivers
//! soonest. Each stripe socket has `TCP_NOTSENT_LOWAT` set, so the kernel
//! only reports a stripe writable when it can send soon: bytes wait in the
//! application's socket rather than behind a slow stripe.
//!
//! Failure policy:
//! - a stripe that cannot connect, is refused, resets, closes early or stays
//!   silent past the stripe timeout (keepalive PINGs unanswered) is dropped
//!   with a warning; its unacknowledged bytes go out again on the others;
//! - the client re-dials lost stripes in the background, with exponential
//!   backoff and jitter, joining the same session;
//! - when every stripe is gone, both ends keep the session (and the
//!   applications' connections) for the resume timeout while the client
//!   re-dials; the first stripe that gets through resumes it where the
//!   data-level acknowledgements say;
//! - the session fails at once on anything that means the byte stream cannot
//!   be trusted (a corrupt frame, a protocol violation, the peer's RST), and
//!   a client that never reached the server fails as soon as its first
//!   stripes have all failed: there is no session to resume.

mod client;
mod paths;
mod upkeep;

use std::net::SocketAddr;
use std::time::Instant;

use log::{debug, warn};
use mio::{Registry, Token};
use striper_core::{Ctx, ErrorKind, Pipe, PipeError, Readable, Ready, TokenSpan};

pub use crate::config::{StripedConfig, UnsentLimit};
use crate::framed::{FramedError, Next};
use crate::proto::frame::{FrameType, ResetReason};
use crate::proto::handshake::{ClientHello, Secret, SessionId, TargetName, same_secret, short_id};
use crate::proto::noise::Keys;
use crate::proto::session::{Session, SessionError};
use crate::stripe::{Stripe, StripeState};
use crate::tcp::TcpPipe;
use paths::Paths;

pub use client::new_session_id;
pub use paths::PathReading;

/// Bytes read from one stripe per drive before others get a turn.
const READ_BUDGET: usize = 1 << 20;
/// Bytes written per drive before the pipe yields.
const WRITE_BUDGET: usize = 4 << 20;

/// Client re-dial state of one stripe index.
#[derive(Clone, Copy, Default)]
struct Redial {
    at: Option<Instant>,
    attempts: u32,
}

enum Role {
    Client {
        /// The server as the user named it (several: comma-separated).
        server_name: String,
        /// The server's target this session asks for.
        target: TargetName,
    },
    Server,
}

pub struct StripedPipe {
    role: Role,
    id: SessionId,
    /// Proven by every stripe in its confirmation: only the session's two
    /// ends know it.
    secret: Secret,
    cfg: StripedConfig,
    session: Session,
    stripes: Vec<Option<Stripe>>,
    /// The client's paths (none on the server).
    paths: Paths,
    redial: Vec<Redial>,
    span: Option<TokenSpan>,
    failed: Option<PipeError>,
    /// The peer reset the session: nothing to tell it when aborting.
    peer_reset: bool,
    /// Last reason a stripe was lost, for the message if all are.
    last_stripe_error: Option<PipeError>,
    /// The server knows this session: the client got an accepting answer
    /// (always true on the server). Only then is there something to resume.
    established: bool,
    peer_known: bool,
    /// Since when no stripe has been up (an outage in progress).
    orphaned_since: Option<Instant>,
    closing_since: Option<Instant>,
    last_activity: Option<Instant>,
    last_stats: Option<Instant>,
    label: String,
}

impl StripedPipe {
    /// A server session, created by its first stripe (handshake done),
    /// which brought the session's `secret`.
    pub fn server(
        cfg: StripedConfig,
        id: SessionId,
        secret: Secret,
        count: u8,
        peer: &ClientHello,
    ) -> StripedPipe {
        let mut pipe = StripedPipe::new(Role::Server, cfg, id, secret, count as usize);
        pipe.session
            .set_stripe_backup(peer.index as usize, peer.backup);
        pipe.session.set_peer_params(peer.window, peer.max_payload);
        pipe.peer_known = true;
        pipe.established = true;
        pipe
    }

    fn new(
        role: Role,
        cfg: StripedConfig,
        id: SessionId,
        secret: Secret,
        count: usize,
    ) -> StripedPipe {
        StripedPipe {
            role,
            id,
            secret,
            session: Session::new(cfg.session.clone(), count),
            stripes: (0..count).map(|_| None).collect(),
            paths: Paths::default(),
            redial: vec![Redial::default(); count],
            cfg,
            span: None,
            failed: None,
            peer_reset: false,
            last_stripe_error: None,
            established: false,
            peer_known: false,
            orphaned_since: None,
            closing_since: None,
            last_activity: None,
            last_stats: None,
            label: format!("session {}", short_id(&id)),
        }
    }

    pub fn id(&self) -> &SessionId {
        &self.id
    }

    /// The server address a client session connects its stripes to.
    pub fn server_addr(&self) -> Option<SocketAddr> {
        match &self.role {
            Role::Client { .. } => self.paths.of(0)?.spec.servers.first().copied(),
            Role::Server => None,
        }
    }

    /// Each path's data each way, for the close line; empty with one path.
    pub fn path_summary(&self) -> String {
        self.paths.summary()
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn stripe_count(&self) -> usize {
        self.stripes.len()
    }

    pub fn stripes_up(&self) -> usize {
        self.session.stripes_up()
    }

    /// Memory held by this session's buffers (send, reassembly, stripe reads).
    pub fn buffer_bytes(&self) -> usize {
        self.session.buffer_capacity()
            + self
                .stripes
                .iter()
                .flatten()
                .map(Stripe::read_buffer_capacity)
                .sum::<usize>()
    }

    /// Server: adds a handshaken stripe (it may replace one that died or
    /// that the client gave up on), if it proved the session's secret. The
    /// connection stays registered with the event loop as it was during
    /// its handshake; only its token changes.
    pub fn add_stripe(
        &mut self,
        registry: &Registry,
        index: u8,
        backup: bool,
        tcp: TcpPipe,
        (keys, secret): (Keys, &Secret),
        now: Instant,
    ) -> Result<(), PipeError> {
        if !same_secret(&self.secret, secret) {
            return Err(PipeError::new(
                ErrorKind::Protocol,
                "it does not hold the session's secret (another key holder, \
                 or a client that lost its session)",
            ));
        }
        let i = index as usize;
        if i >= self.stripes.len() {
            return Err(PipeError::new(
                ErrorKind::Protocol,
                format!(
                    "stripe index {i} beyond the session's {}",
                    self.stripes.len()
                ),
            ));
        }
        let span = self.span.expect("registered before stripes join");
        let mut stripe = Stripe::accepted(&self.cfg, tcp, keys, now);
        stripe
            .adopt(registry, span.token(i))
            .map_err(|e| PipeError::io("stripe", &e))?;
        let replaced = self.stripes[i].replace(stripe).is_some();
        if replaced {
            warn!(
                "{}: stripe {i} replaced by a new connection while it was still open",
                self.label
            );
            self.session.stripe_down(i);
        }
        self.session.set_stripe_backup(i, backup);
        self.session.stripe_up(i, now);
        if replaced || self.session.stats().stripes_lost > 0 {
            self.note_rejoined(i);
        } else {
            debug!(
                "{}: stripe {i} joined ({} up)",
                self.label,
                self.session.stripes_up()
            );
        }
        Ok(())
    }

    fn note_rejoined(&mut self, i: usize) {
        self.session.stats_mut().stripes_redialed += 1;
        // With several paths the path's own line says it is back.
        let level = if self.paths.several() {
            log::Level::Debug
        } else {
            log::Level::Info
        };
        log::log!(
            level,
            "{}: {} re-joined ({} of {} up)",
            self.label,
            self.paths.name_stripe(i),
            self.session.stripes_up(),
            self.stripes.len()
        );
    }

    fn peer_name(&self) -> String {
        match &self.role {
            Role::Client { server_name, .. } => format!("server {server_name}"),
            Role::Server => "client".to_string(),
        }
    }

    fn fail(&mut self, e: PipeError) -> PipeError {
        if self.failed.is_none() {
            self.failed = Some(e.clone());
        }
        e
    }

    /// Drops stripe `i` after `err`; the session goes on with the others,
    /// and a client schedules a re-dial.
    fn lose_stripe(&mut self, i: usize, err: PipeError, now: Instant) {
        let Some(mut s) = self.stripes[i].take() else {
            return;
        };
        s.abort(&err);
        let was_up = self.session.is_stripe_up(i);
        self.session.stripe_down(i);
        if was_up {
            self.suspect_path_of(i, &err);
        }
        let left = self.stripes.iter().flatten().count();
        let what = if was_up { "lost" } else { "failed" };
        // With several paths, a path that dies loses all its stripes at
        // once: one line for the path, the stripes' at debug level.
        let level = if self.paths.several() {
            log::Level::Debug
        } else {
            log::Level::Warn
        };
        let name = self.paths.name_stripe(i);
        match self.schedule_redial(i, now) {
            Some(delay) => log::log!(
                level,
                "{}: {name} {what}: {err}; {left} stripe(s) left, re-dialing in {} ms",
                self.label,
                delay.as_millis()
            ),
            None => log::log!(
                level,
                "{}: {name} {what}: {err}; {left} stripe(s) left",
                self.label
            ),
        }
        if was_up {
            self.note_path_down(i, &err, now);
        }
        self.last_stripe_error = Some(err);
    }

    /// Reads frames from stripe `i`. Returns true if its budget ran out.
    fn read_stripe(&mut self, i: usize, now: Instant) -> Result<bool, PipeError> {
        let mut budget = READ_BUDGET;
        loop {
            let Some(s) = self.stripes[i].as_mut() else {
                return Ok(false);
            };
            // Frames only follow the server's answer.
            if !s.carries_frames() {
                return Ok(false);
            }
            match s.next_frame() {
                Ok(Next::Frame(f, n)) => {
                    if f.header.ty == FrameType::Data {
                        self.paths.count_in(i, f.payload.len() as u64);
                    }
                    let r = self.session.handle_frame(i, f, now);
                    s.consume_frame(n);
                    if let Err(e) = r {
                        return Err(self.session_error(e));
                    }
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        return Ok(true);
                    }
                }
                Ok(Next::Pending) => return Ok(false),
                Ok(Next::Eof) => {
                    if self.session.read_eof() || self.closing_since.is_some() {
                        // The peer is closing at the end of the session.
                        debug!("{}: stripe {i} closed by the peer", self.label);
                        s.set_state(StripeState::PeerClosed, now);
                        return Ok(false);
                    }
                    let e = PipeError::new(
                        ErrorKind::Reset,
                        format!("{} closed the stripe", self.peer_name()),
                    );
                    self.lose_stripe(i, e, now);
                    return Ok(false);
                }
                Err(e @ FramedError::Sealed { .. }) => {
                    // Altered, injected, replayed or cut on the way (the
                    // record's length is in clear): only this stripe is
                    // suspect. Its bytes go out again on the others.
                    let e = PipeError::new(ErrorKind::Protocol, format!("{e}"));
                    self.lose_stripe(i, e, now);
                    return Ok(false);
                }
                Err(e @ FramedError::Corrupt { .. }) => {
                    let e = PipeError::new(ErrorKind::Protocol, format!("stripe {i} {e}"));
                    return Err(self.fail(e));
                }
                Err(FramedError::Truncated { offset }) => {
                    let e = PipeError::new(
                        ErrorKind::Reset,
                        format!(
                            "{} closed the stripe inside a frame (stream offset {offset})",
                            self.peer_name()
                        ),
                    );
                    self.lose_stripe(i, e, now);
                    return Ok(false);
                }
                Err(FramedError::Pipe(e)) => {
                    self.lose_stripe(i, e, now);
                    return Ok(false);
                }
            }
        }
    }

    fn session_error(&mut self, e: SessionError) -> PipeError {
        let pe = match &e {
            SessionError::PeerReset { reason, .. } => {
                self.peer_reset = true;
                PipeError::new(
                    ErrorKind::PeerAbort,
                    format!("{} aborted: {reason}", self.peer_name()),
                )
            }
            other => PipeError::new(
                ErrorKind::Protocol,
                format!("protocol violation by {}: {other}", self.peer_name()),
            ),
        };
        self.fail(pe)
    }

    /// Tells the session what the kernel knows about each stripe.
    fn update_metrics(&mut self, now: Instant) {
        let auto = matches!(self.cfg.unsent, UnsentLimit::Auto(_));
        for i in 0..self.stripes.len() {
            if !self.session.is_stripe_up(i) {
                continue;
            }
            let Some(k) = self.stripes[i].as_mut().and_then(|s| s.sample(now, auto)) else {
                continue;
            };
            self.session
                .update_stripe(i, now, k.queued, k.delivered, k.rtt);
            if let Some(min_rtt) = k.min_rtt {
                self.session.set_stripe_min_rtt(i, min_rtt);
            }
        }
    }

    /// Writes frames until the stripes are full, the session has nothing
    /// more, or the budget is spent. Returns true if the budget ran out.
    fn transmit(&mut self, now: Instant) -> bool {
        let stale: Vec<usize> = self.session.stale_pins().collect();
        // A sealed record holds its own copy of the payload: a frame still
        // being written needs nothing from the send buffer.
        for i in stale {
            self.session.frame_written(i);
        }
        for i in 0..self.stripes.len() {
            let Some(s) = self.stripes[i].as_mut() else {
                continue;
            };
            if s.wants_flush() {
                match s.flush() {
                    Ok(true) => self.session.frame_written(i),
                    Ok(false) => {}
                    Err(e) => {
                        self.lose_stripe(i, e, now);
                        continue;
                    }
                }
            }
            let can = self.stripes[i].as_ref().is_some_and(Stripe::can_send);
            self.session.set_stripe_writable(i, can);
        }
        let mut sent = 0;
        while let Some(t) = self.session.poll_transmit() {
            let i = t.stripe;
            sent += t.len();
            if let Some((_, len)) = t.data {
                self.paths.count_out(i, len as u64);
            }
            let Some(s) = self.stripes[i].as_mut() else {
                self.session.stripe_down(i);
                continue;
            };
            let session = &self.session;
            match s.send(t, |o, l| session.send_slices(o, l)) {
                Ok(true) => self.session.frame_written(i),
                Ok(false) => self.session.set_stripe_writable(i, false),
                Err(e) => self.lose_stripe(i, e, now),
            }
            if sent >= WRITE_BUDGET {
                return true;
            }
        }
        false
    }

    fn progress_marks(&self) -> (u64, u64, u64) {
        (
            self.session.stats().bytes_in,
            self.session.recv_backlog(),
            self.session.send_backlog(),
        )
    }
}

impl Pipe for StripedPipe {
    fn register(&mut self, registry: &Registry, span: TokenSpan) -> std::io::Result<()> {
        self.span = Some(span);
        for (i, s) in self.stripes.iter_mut().enumerate() {
            if let Some(s) = s {
                s.register(registry, span.token(i))?;
            }
        }
        Ok(())
    }

    fn deregister(&mut self, registry: &Registry) {
        for s in self.stripes.iter_mut().flatten() {
            s.deregister(registry);
        }
    }

    fn on_ready(&mut self, token: Token, ready: Ready) {
        if let Some(i) = self.span.and_then(|s| s.index(token))
            && let Some(Some(s)) = self.stripes.get_mut(i)
        {
            s.on_ready(token, ready);
        }
    }

    fn drive(&mut self, cx: &mut Ctx<'_>) -> Result<bool, PipeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let now = cx.now;
        let mut again = false;
        let before = self.progress_marks();
        self.start_redials(cx.registry, now);
        for i in 0..self.stripes.len() {
            if let Err(e) = self.advance_handshake(i, cx.registry, now) {
                self.lose_stripe(i, e, now);
                continue;
            }
            again |= self.read_stripe(i, now)?;
        }
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.check_silence(now);
        self.update_metrics(now);
        self.update_backup_hold();
        again |= self.transmit(now);
        self.check_alive(now)?;
        if before != self.progress_marks() {
            self.last_activity = Some(now);
        }
        self.release_if_idle(now);
        self.log_stats(now);
        Ok(again)
    }

    /// While anything moves or is being set up, the tick: rates are sampled,
    /// stalls and timeouts checked every 100 ms. A quiet session with every
    /// stripe up needs only its keepalive and the release of its buffers.
    fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let tick = Some(now + striper_core::reactor::TICK);
        let settled = self.failed.is_none()
            && self.closing_since.is_none()
            && self.orphaned_since.is_none()
            && self.session.stripes_up() == self.stripes.len()
            && self.redial.iter().all(|r| r.at.is_none())
            && self.stripes.iter().all(|s| {
                s.as_ref()
                    .is_some_and(|s| s.state() == StripeState::Up && s.is_idle())
            });
        if !settled || !self.session.is_quiet() {
            return tick;
        }
        // Not before the next tick: buffers that could not be freed (not
        // empty after all) must not make the loop spin.
        let release = (self.buffer_bytes() > 0).then(|| {
            let at = self
                .last_activity
                .map_or(now, |t| t + self.cfg.idle_release);
            at.max(now + striper_core::reactor::TICK)
        });
        match (self.session.poll_timeout(), release) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn fill_buf(&mut self) -> Result<Readable<'_>, PipeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.session.readable();
        if !r.is_empty() {
            Ok(Readable::Bytes(r))
        } else if self.session.read_eof() {
            Ok(Readable::Eof)
        } else {
            Ok(Readable::Pending)
        }
    }

    fn consume(&mut self, n: usize) {
        self.session.consume(n);
    }

    fn write(&mut self, data: &[u8]) -> Result<usize, PipeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        Ok(self.session.write(data))
    }

    fn shutdown_write(&mut self) -> Result<(), PipeError> {
        self.session.shutdown_write();
        Ok(())
    }

    fn write_done(&self) -> bool {
        self.session.write_finished()
    }

    fn abort(&mut self, reason: &PipeError) {
        if self.peer_reset {
            // The peer reset the session: nothing to tell it.
            return;
        }
        let code = match reason.kind {
            ErrorKind::Connect => ResetReason::TargetUnreachable,
            ErrorKind::Protocol => ResetReason::Protocol,
            ErrorKind::Shutdown => ResetReason::Shutdown,
            ErrorKind::Timeout => ResetReason::Timeout,
            _ => ResetReason::AppReset,
        };
        self.session.abort(code, &reason.to_string());
    }

    fn poll_close(&mut self, cx: &mut Ctx<'_>) -> bool {
        let now = cx.now;
        let since = *self.closing_since.get_or_insert(now);
        if now.duration_since(since) >= self.cfg.close_linger {
            if self.stripes.iter().any(|s| s.is_some()) {
                debug!(
                    "{}: peer did not close within {:?}; closing anyway",
                    self.label, self.cfg.close_linger
                );
            }
            self.stripes.iter_mut().for_each(|s| *s = None);
            return true;
        }
        // Read what still comes (the peer's last ACK, its RST) and write
        // what is left (our last ACK, our RST).
        for i in 0..self.stripes.len() {
            let draining = self.stripes[i]
                .as_ref()
                .is_some_and(|s| s.state() == StripeState::Draining);
            if draining {
                let s = self.stripes[i].as_mut().expect("present");
                if s.drain_until_eof() {
                    debug!("{}: stripe {i} closed", self.label);
                    self.stripes[i] = None;
                }
            } else if self.failed.is_none() {
                // A late error changes nothing now.
                let _ = self.read_stripe(i, now);
            }
        }
        self.transmit(now);
        let aborting = self.session.abort_sent() || self.failed.is_some();
        let flushed = self.session.is_finished() || aborting;
        for slot in self.stripes.iter_mut() {
            let Some(s) = slot else { continue };
            if !flushed || !s.is_idle() || s.state() == StripeState::Draining {
                continue;
            }
            if matches!(
                s.state(),
                StripeState::Connecting | StripeState::AwaitAnswer
            ) {
                // Never joined: nothing to say goodbye to.
                *slot = None;
                continue;
            }
            s.start_draining(now);
        }
        self.stripes.iter().all(|s| s.is_none())
    }

    fn describe(&self) -> String {
        match &self.role {
            Role::Client { server_name, .. } => format!(
                "{} via {} stripes to {server_name}",
                self.label,
                self.stripes.len()
            ),
            Role::Server => format!("{} ({} stripes)", self.label, self.stripes.len()),
        }
    }
}
