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

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::{Registry, Token};
use rand::RngExt;
use striper_core::{Ctx, ErrorKind, Pipe, PipeError, Readable, Ready, TokenSpan};

pub use crate::config::{StripedConfig, UnsentLimit};
use crate::framed::{FramedError, FramedPipe, Next};
use crate::proto::handshake::{
    CLIENT_AUTH_LEN, CLIENT_HELLO_LEN, ClientHello, Kind, SERVER_HELLO_LEN, ServerHello, SessionId,
    Status, short_id,
};
use crate::proto::queue::{QueueBounds, QueueLimit};
use crate::proto::session::{Session, SessionError, reset};
use crate::sys;
use crate::tcp::TcpPipe;

/// Bytes read from one stripe per drive before others get a turn.
const READ_BUDGET: usize = 1 << 20;
/// Bytes written per drive before the pipe yields.
const WRITE_BUDGET: usize = 4 << 20;
/// Interval between round-trip readings of a stripe.
const RTT_INTERVAL: Duration = Duration::from_millis(100);
/// First re-dial delay; doubles per failed attempt up to the maximum.
const REDIAL_BASE: Duration = Duration::from_millis(200);
const REDIAL_MAX: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StripeState {
    /// Client: TCP connect in progress.
    Connecting,
    /// Client: hello sent; the server's answer is next to read. Without a
    /// key, frames already go out.
    AwaitServerHello,
    Up,
    /// The peer closed its side at the end of the session; we only write.
    PeerClosed,
    /// Closing: our FIN is out, reading until the peer's.
    Draining,
}

struct Stripe {
    framed: FramedPipe<TcpPipe>,
    state: StripeState,
    /// When the stripe entered its state (for the handshake timeout).
    since: Option<Instant>,
    last_rtt: Option<Instant>,
    /// The unsent limit this stripe's socket has, and how it moves.
    queue: QueueLimit,
    /// Client: the hello this stripe sent, for the proofs' transcript.
    hello: Option<[u8; CLIENT_HELLO_LEN]>,
    /// Client: whether the hello was a JOIN (a refusal then ends the session).
    join: bool,
}

/// Client re-dial state of one stripe index.
#[derive(Clone, Copy, Default)]
struct Redial {
    at: Option<Instant>,
    attempts: u32,
}

enum Role {
    Client {
        /// The server's addresses (a name may resolve to several).
        servers: Vec<SocketAddr>,
        server_name: String,
    },
    Server,
}

pub struct StripedPipe {
    role: Role,
    id: SessionId,
    cfg: StripedConfig,
    session: Session,
    stripes: Vec<Option<Stripe>>,
    redial: Vec<Redial>,
    span: Option<TokenSpan>,
    failed: Option<PipeError>,
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
    /// A client session: starts connecting `count` stripes to `server`.
    pub fn client(
        cfg: StripedConfig,
        servers: &[SocketAddr],
        server_name: &str,
        count: u8,
        id: SessionId,
    ) -> Result<StripedPipe, PipeError> {
        let mut pipe = StripedPipe::new(
            Role::Client {
                servers: servers.to_vec(),
                server_name: server_name.to_string(),
            },
            cfg,
            id,
            count as usize,
        );
        let mut first_err = None;
        for i in 0..count as usize {
            match pipe.connect_stripe(false) {
                Ok(s) => pipe.stripes[i] = Some(s),
                Err(e) => {
                    warn!("{}: stripe {i} could not start connecting: {e}", pipe.label);
                    first_err.get_or_insert(e);
                }
            }
        }
        if pipe.stripes.iter().all(|s| s.is_none()) {
            return Err(first_err.expect("count >= 1"));
        }
        Ok(pipe)
    }

    /// A server session, created by its first stripe (handshake done).
    pub fn server(cfg: StripedConfig, id: SessionId, count: u8, peer: &ClientHello) -> StripedPipe {
        let mut pipe = StripedPipe::new(Role::Server, cfg, id, count as usize);
        pipe.session.set_peer_params(peer.window, peer.max_payload);
        pipe.peer_known = true;
        pipe.established = true;
        pipe
    }

    fn new(role: Role, cfg: StripedConfig, id: SessionId, count: usize) -> StripedPipe {
        StripedPipe {
            role,
            id,
            session: Session::new(cfg.session.clone(), count),
            stripes: (0..count).map(|_| None).collect(),
            redial: vec![Redial::default(); count],
            cfg,
            span: None,
            failed: None,
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
            Role::Client { servers, .. } => servers.first().copied(),
            Role::Server => None,
        }
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
                .map(|s| s.framed.inner().read_buffer_capacity())
                .sum::<usize>()
    }

    /// Server: adds a handshaken stripe (it may replace one that died or
    /// that the client gave up on).
    pub fn add_stripe(
        &mut self,
        registry: &Registry,
        index: u8,
        mut tcp: TcpPipe,
        now: Instant,
    ) -> Result<(), PipeError> {
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
        let replaced = self.stripes[i].take().is_some();
        if replaced {
            self.session.stripe_down(i);
        }
        tcp.register_token(registry, span.token(i))
            .map_err(|e| PipeError::io("stripe", &e))?;
        tune_socket(&self.cfg, &self.label, tcp.raw_fd());
        self.stripes[i] = Some(Stripe {
            framed: FramedPipe::new(tcp, self.cfg.session.max_payload as usize),
            state: StripeState::Up,
            since: Some(now),
            last_rtt: None,
            queue: self.new_queue_limit(),
            hello: None,
            join: false,
        });
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
        info!(
            "{}: stripe {i} re-joined ({} of {} up)",
            self.label,
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

    /// Client: a new connection for stripe `i`.
    fn connect_stripe(&self, join: bool) -> Result<Stripe, PipeError> {
        let Role::Client {
            servers,
            server_name,
        } = &self.role
        else {
            unreachable!("only clients dial");
        };
        let tcp = TcpPipe::connect(
            servers,
            format!("server {server_name}"),
            self.cfg.connect_timeout,
        )?;
        Ok(Stripe {
            framed: FramedPipe::new(tcp, self.cfg.session.max_payload as usize),
            state: StripeState::Connecting,
            since: None,
            last_rtt: None,
            queue: self.new_queue_limit(),
            hello: None,
            join,
        })
    }

    fn new_queue_limit(&self) -> QueueLimit {
        match self.cfg.unsent {
            UnsentLimit::Auto(b) => QueueLimit::new(b),
            UnsentLimit::Fixed(n) => QueueLimit::new(QueueBounds {
                floor: n,
                ceiling: n,
                gain: 0.0,
            }),
        }
    }

    /// Drops stripe `i` after `err`; the session goes on with the others,
    /// and a client schedules a re-dial.
    fn lose_stripe(&mut self, i: usize, err: PipeError, now: Instant) {
        let Some(mut s) = self.stripes[i].take() else {
            return;
        };
        s.framed.inner_mut().abort(&err);
        let was_up = self.session.is_stripe_up(i);
        self.session.stripe_down(i);
        let left = self.stripes.iter().flatten().count();
        let what = if was_up { "lost" } else { "failed" };
        let next = self.schedule_redial(i, now);
        match next {
            Some(delay) => warn!(
                "{}: stripe {i} {what}: {err}; {left} stripe(s) left, re-dialing in {} ms",
                self.label,
                delay.as_millis()
            ),
            None => warn!(
                "{}: stripe {i} {what}: {err}; {left} stripe(s) left",
                self.label
            ),
        }
        self.last_stripe_error = Some(err);
    }

    /// Client: plans the next connection for stripe `i`, with exponential
    /// backoff and jitter so many clients do not come back in lockstep.
    fn schedule_redial(&mut self, i: usize, now: Instant) -> Option<Duration> {
        if !matches!(self.role, Role::Client { .. })
            || !self.established
            || self.closing_since.is_some()
            || self.failed.is_some()
            || self.redial[i].at.is_some()
        {
            return None;
        }
        let r = &mut self.redial[i];
        let exp = REDIAL_BASE
            .saturating_mul(1 << r.attempts.min(8))
            .min(REDIAL_MAX);
        let delay = exp.mul_f64(rand::rng().random_range(0.5..1.5));
        r.attempts += 1;
        r.at = Some(now + delay);
        Some(delay)
    }

    /// Client: starts the re-dials that are due.
    fn start_redials(&mut self, registry: &Registry, now: Instant) {
        for i in 0..self.stripes.len() {
            if self.stripes[i].is_some() || self.redial[i].at.is_none_or(|t| t > now) {
                continue;
            }
            self.redial[i].at = None;
            let span = self.span.expect("registered");
            match self.connect_stripe(true) {
                Ok(mut s) => match s.framed.inner_mut().register_token(registry, span.token(i)) {
                    Ok(()) => {
                        debug!("{}: re-dialing stripe {i}", self.label);
                        self.stripes[i] = Some(s);
                    }
                    Err(e) => {
                        let e = PipeError::io("stripe", &e);
                        self.last_stripe_error = Some(e);
                        self.schedule_redial(i, now);
                    }
                },
                Err(e) => {
                    debug!("{}: re-dial of stripe {i} failed: {e}", self.label);
                    self.last_stripe_error = Some(e);
                    self.schedule_redial(i, now);
                }
            }
        }
    }

    fn client_hello(&self, i: usize, join: bool) -> ClientHello {
        ClientHello {
            kind: if join { Kind::Join } else { Kind::Open },
            index: i as u8,
            count: self.stripes.len() as u8,
            session: self.id,
            nonce: random_nonce(),
            window: self.cfg.session.window,
            max_payload: self.cfg.session.max_payload,
        }
    }

    /// Connect completion and the client side of the handshake.
    fn advance_handshake(
        &mut self,
        i: usize,
        registry: &Registry,
        now: Instant,
    ) -> Result<(), PipeError> {
        let Some(s) = self.stripes[i].as_mut() else {
            return Ok(());
        };
        let since = *s.since.get_or_insert(now);
        match s.state {
            StripeState::Connecting => {
                s.framed.inner_mut().poll_connect(registry, now)?;
                if !s.framed.inner().is_connected() {
                    return Ok(());
                }
                let fd = s.framed.inner().raw_fd();
                tune_socket(&self.cfg, &self.label, fd);
                let join = s.join && self.established;
                let hello = self.client_hello(i, join).encode();
                let s = self.stripes[i].as_mut().expect("present");
                s.framed.queue_raw(&hello);
                s.hello = Some(hello);
                s.join = join;
                s.state = StripeState::AwaitServerHello;
                s.since = Some(now);
                debug!("{}: stripe {i} connected", self.label);
                if self.cfg.key.is_none() {
                    // No key: the (empty) proof and the first frames follow
                    // the hello at once, without waiting for the answer.
                    s.framed.queue_raw(&[0u8; CLIENT_AUTH_LEN]);
                    self.session.stripe_up(i, now);
                }
            }
            StripeState::AwaitServerHello => {
                let parsed = match s.framed.inner_mut().fill_buf()? {
                    Readable::Pending => None,
                    Readable::Eof => {
                        return Err(PipeError::new(
                            ErrorKind::Reset,
                            format!(
                                "{} closed the stripe during the handshake",
                                self.peer_name()
                            ),
                        ));
                    }
                    Readable::Bytes(b) => Some(ServerHello::parse(b)),
                };
                let hello = match parsed {
                    Some(Ok(Some(h))) => h,
                    Some(Err(e)) => {
                        return Err(PipeError::new(
                            ErrorKind::Protocol,
                            format!("{} answered with a bad handshake: {e}", self.peer_name()),
                        ));
                    }
                    None | Some(Ok(None)) => {
                        if s.framed.inner().at_eof() {
                            return Err(PipeError::new(
                                ErrorKind::Reset,
                                format!(
                                    "{} closed the stripe during the handshake",
                                    self.peer_name()
                                ),
                            ));
                        }
                        let timeout = self.cfg.session.stripe_timeout;
                        if now.saturating_duration_since(since) >= timeout {
                            return Err(PipeError::new(
                                ErrorKind::Timeout,
                                format!(
                                    "no answer from {} within {:.0} s",
                                    self.peer_name(),
                                    timeout.as_secs_f64()
                                ),
                            ));
                        }
                        return Ok(());
                    }
                };
                s.framed.inner_mut().consume(SERVER_HELLO_LEN);
                if hello.status != Status::Ok {
                    let joined = s.join;
                    let e = PipeError::new(
                        ErrorKind::Protocol,
                        format!("{} refused the stripe: {}", self.peer_name(), hello.status),
                    );
                    if joined && hello.status == Status::UnknownSession {
                        // The server has forgotten the session (it timed
                        // out or restarted): nothing to resume.
                        return Err(self.fail(PipeError::new(
                            ErrorKind::Reset,
                            format!("{} no longer has this session", self.peer_name()),
                        )));
                    }
                    return Err(e);
                }
                if let Some(key) = &self.cfg.key {
                    let sent = s.hello.expect("sent before the answer");
                    if !key.verify_server(&sent, &hello.transcript(), &hello.proof) {
                        return Err(PipeError::new(
                            ErrorKind::Protocol,
                            format!(
                                "{} did not prove it holds our key: wrong key on one side, \
                                 or the server runs without one",
                                self.peer_name()
                            ),
                        ));
                    }
                    s.framed
                        .queue_raw(&key.client_proof(&sent, &hello.transcript()));
                    self.session.stripe_up(i, now);
                }
                s.state = StripeState::Up;
                s.since = Some(now);
                self.redial[i].attempts = 0;
                if !self.peer_known {
                    self.session
                        .set_peer_params(hello.window, hello.max_payload);
                    self.peer_known = true;
                }
                if s.join {
                    self.note_rejoined(i);
                }
                if !self.established {
                    self.established = true;
                    // Stripes that failed before the server knew the
                    // session can now be re-dialed as members of it.
                    for j in 0..self.stripes.len() {
                        if self.stripes[j].is_none() {
                            self.schedule_redial(j, now);
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Reads frames from stripe `i`. Returns true if its budget ran out.
    fn read_stripe(&mut self, i: usize, now: Instant) -> Result<bool, PipeError> {
        let mut budget = READ_BUDGET;
        loop {
            let Some(s) = self.stripes[i].as_mut() else {
                return Ok(false);
            };
            // Frames only follow the server's answer.
            if !matches!(s.state, StripeState::Up | StripeState::PeerClosed) {
                return Ok(false);
            }
            match s.framed.next_frame() {
                Ok(Next::Frame(f, n)) => {
                    let r = self.session.handle_frame(i, f, now);
                    s.framed.consume_frame(n);
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
                        s.state = StripeState::PeerClosed;
                        return Ok(false);
                    }
                    let e = PipeError::new(
                        ErrorKind::Reset,
                        format!("{} closed the stripe", self.peer_name()),
                    );
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
            SessionError::PeerReset { reason, .. } => PipeError::new(
                ErrorKind::PeerAbort,
                format!("{} aborted: {reason}", self.peer_name()),
            ),
            other => PipeError::new(
                ErrorKind::Protocol,
                format!("protocol violation by {}: {other}", self.peer_name()),
            ),
        };
        self.fail(pe)
    }

    /// Tells the session what the kernel knows about each stripe.
    fn update_metrics(&mut self, now: Instant) {
        for i in 0..self.stripes.len() {
            let Some(s) = self.stripes[i].as_mut() else {
                continue;
            };
            if !self.session.is_stripe_up(i) {
                continue;
            }
            let tcp = s.framed.inner();
            let fd = tcp.raw_fd();
            let Ok(q) = sys::outq(fd) else { continue };
            let unsent = sys::outq_unsent(fd).unwrap_or(q);
            let delivered = tcp.bytes_written().saturating_sub(q);
            let mut rtt = None;
            if s.last_rtt
                .is_none_or(|t| now.duration_since(t) >= RTT_INTERVAL)
            {
                s.last_rtt = Some(now);
                if let Ok(path) = sys::tcp_path(fd) {
                    rtt = Some(path.rtt);
                    if matches!(self.cfg.unsent, UnsentLimit::Auto(_))
                        && let Some(limit) = s.queue.on_sample(path)
                    {
                        let _ = sys::set_notsent_lowat(fd, limit);
                    }
                }
            }
            self.session
                .update_stripe(i, now, (q, unsent), delivered, rtt);
        }
    }

    /// Writes frames until the stripes are full, the session has nothing
    /// more, or the budget is spent. Returns true if the budget ran out.
    fn transmit(&mut self, now: Instant) -> bool {
        let stale: Vec<usize> = self.session.stale_pins().collect();
        for i in stale {
            if let Some(s) = self.stripes[i].as_mut() {
                let session = &self.session;
                s.framed.detach_payload(|o, l| session.send_slices(o, l));
            }
            self.session.frame_written(i);
        }
        for i in 0..self.stripes.len() {
            let Some(s) = self.stripes[i].as_mut() else {
                continue;
            };
            if !s.framed.is_idle() && s.framed.inner().is_writable() {
                let session = &self.session;
                match s.framed.flush(|o, l| session.send_slices(o, l)) {
                    Ok(true) => self.session.frame_written(i),
                    Ok(false) => {}
                    Err(e) => {
                        self.lose_stripe(i, e, now);
                        continue;
                    }
                }
            }
            let Some(s) = self.stripes[i].as_ref() else {
                continue;
            };
            let can = s.framed.is_idle()
                && s.framed.inner().is_writable()
                && s.state != StripeState::Draining;
            self.session.set_stripe_writable(i, can);
        }
        let mut sent = 0;
        while let Some(t) = self.session.poll_transmit() {
            let i = t.stripe;
            sent += t.len();
            let Some(s) = self.stripes[i].as_mut() else {
                self.session.stripe_down(i);
                continue;
            };
            let session = &self.session;
            match s.framed.send(t, |o, l| session.send_slices(o, l)) {
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

    /// Keepalive: stripes silent past the timeout are dropped.
    fn check_silence(&mut self, now: Instant) {
        while let Some(i) = self.session.handle_timeout(now) {
            let timeout = self.cfg.session.stripe_timeout.as_secs_f64();
            let e = PipeError::new(
                ErrorKind::Timeout,
                format!("nothing heard on it for {timeout:.0} s"),
            );
            if self.stripes[i].is_some() {
                self.lose_stripe(i, e, now);
            } else {
                self.session.stripe_down(i);
            }
        }
    }

    /// Fails the session when no stripe is left and none can come back;
    /// tracks outages otherwise.
    fn check_alive(&mut self, now: Instant) -> Result<(), PipeError> {
        if self.session.stripes_up() > 0 {
            if let Some(since) = self.orphaned_since.take() {
                self.session.stats_mut().outages_survived += 1;
                info!(
                    "{}: resumed after {:.1} s without any stripe",
                    self.label,
                    now.saturating_duration_since(since).as_secs_f64()
                );
            }
            return Ok(());
        }
        if !self.established {
            // Nothing to resume: wait only for the first stripes in progress.
            if self.stripes.iter().any(|s| s.is_some()) {
                return Ok(());
            }
            return Err(self.fail(self.unreachable_error()));
        }
        let resume = self.cfg.resume_timeout;
        let since = match self.orphaned_since {
            Some(t) => t,
            None if resume.is_zero() => return Err(self.fail(self.all_lost_error())),
            None => {
                warn!(
                    "{}: every stripe is gone; keeping the session for {:.0} s{}",
                    self.label,
                    resume.as_secs_f64(),
                    if matches!(self.role, Role::Client { .. }) {
                        " while re-dialing"
                    } else {
                        " for the client to come back"
                    }
                );
                self.orphaned_since = Some(now);
                now
            }
        };
        if now.saturating_duration_since(since) >= resume {
            let last = self
                .last_stripe_error
                .as_ref()
                .map_or(String::new(), |e| format!(" (last: {e})"));
            return Err(self.fail(PipeError::new(
                ErrorKind::Timeout,
                format!(
                    "no stripe came back within {:.0} s{last}",
                    resume.as_secs_f64()
                ),
            )));
        }
        Ok(())
    }

    fn unreachable_error(&self) -> PipeError {
        match (&self.role, &self.last_stripe_error) {
            (Role::Client { server_name, .. }, Some(last)) if last.kind == ErrorKind::Connect => {
                PipeError::new(
                    ErrorKind::Connect,
                    format!(
                        "server {server_name} unreachable: {}",
                        strip_name(&last.message, server_name)
                    ),
                )
            }
            _ => self.all_lost_error(),
        }
    }

    fn all_lost_error(&self) -> PipeError {
        match &self.last_stripe_error {
            Some(last) => PipeError::new(
                last.kind,
                format!("all {} stripes lost (last: {last})", self.stripes.len()),
            ),
            None => PipeError::new(ErrorKind::Reset, "all stripes lost"),
        }
    }

    /// Once a second at debug level: where the session's bytes are.
    fn log_stats(&mut self, now: Instant) {
        if !log::log_enabled!(log::Level::Debug)
            || self
                .last_stats
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_stats = Some(now);
        let s = &self.session;
        debug!(
            "{}: in {} KiB / out {} KiB; unacked {} KiB (unsent {} KiB), reassembly {} KiB",
            self.label,
            s.stats().bytes_in >> 10,
            s.stats().bytes_out >> 10,
            s.send_backlog() >> 10,
            s.unsent() >> 10,
            s.recv_backlog() >> 10,
        );
        for (i, st) in self.stripes.iter().enumerate() {
            let limit = st.as_ref().map_or(0, |st| st.queue.get() >> 10);
            debug!(
                "{}:   stripe {i}: {}, unsent limit {limit} KiB",
                self.label,
                s.describe_stripe(i)
            );
        }
    }

    fn release_if_idle(&mut self, now: Instant) {
        let last = *self.last_activity.get_or_insert(now);
        if now.duration_since(last) >= self.cfg.idle_release {
            if self.session.buffer_capacity() > 0 {
                striper_core::mem::note_freed();
            }
            self.session.release_idle_buffers();
            for s in self.stripes.iter_mut().flatten() {
                s.framed.inner_mut().release_idle();
            }
        }
    }
}

/// A new stripe socket's options: the first unsent limit and the congestion
/// control. Failures only cost speed, and the algorithm was checked at
/// start, so they are logged at debug level.
fn tune_socket(cfg: &StripedConfig, label: &str, fd: std::os::fd::RawFd) {
    if let Err(e) = sys::set_notsent_lowat(fd, cfg.unsent.initial()) {
        debug!("{label}: TCP_NOTSENT_LOWAT: {e}");
    }
    if let Some(cc) = &cfg.congestion
        && let Err(e) = sys::set_congestion(fd, cc)
    {
        debug!("{label}: TCP_CONGESTION {cc}: {e}");
    }
}

/// "server x:7900 refused the connection" -> "refused the connection".
fn strip_name(msg: &str, server_name: &str) -> String {
    let prefix = format!("server {server_name} ");
    msg.strip_prefix(&prefix).unwrap_or(msg).to_string()
}

fn random_nonce() -> [u8; 16] {
    let mut n = [0u8; 16];
    rand::fill(&mut n);
    n
}

/// A fresh session id from the operating system's RNG.
pub fn new_session_id() -> SessionId {
    use rand::TryRng;
    let mut id = [0u8; 16];
    rand::rngs::SysRng
        .try_fill_bytes(&mut id)
        .expect("the OS random number generator failed");
    id
}

impl Pipe for StripedPipe {
    fn register(&mut self, registry: &Registry, span: TokenSpan) -> std::io::Result<()> {
        self.span = Some(span);
        for (i, s) in self.stripes.iter_mut().enumerate() {
            if let Some(s) = s {
                s.framed
                    .inner_mut()
                    .register_token(registry, span.token(i))?;
            }
        }
        Ok(())
    }

    fn deregister(&mut self, registry: &Registry) {
        for s in self.stripes.iter_mut().flatten() {
            s.framed.inner_mut().deregister(registry);
        }
    }

    fn on_ready(&mut self, token: Token, ready: Ready) {
        if let Some(i) = self.span.and_then(|s| s.index(token))
            && let Some(Some(s)) = self.stripes.get_mut(i)
        {
            s.framed.inner_mut().on_ready(token, ready);
        }
    }

    fn drive(&mut self, cx: &mut Ctx<'_>) -> Result<bool, PipeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let now = cx.now;
        let mut again = false;
        let before = (
            self.session.stats().bytes_in,
            self.session.recv_backlog(),
            self.session.send_backlog(),
        );
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
        again |= self.transmit(now);
        self.check_alive(now)?;
        let after = (
            self.session.stats().bytes_in,
            self.session.recv_backlog(),
            self.session.send_backlog(),
        );
        if before != after {
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
                    .is_some_and(|s| s.state == StripeState::Up && s.framed.is_idle())
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
        if reason.kind == ErrorKind::PeerAbort && self.failed.as_ref() == Some(reason) {
            // The peer reset the session: nothing to tell it.
            return;
        }
        let code = match reason.kind {
            ErrorKind::Connect => reset::TARGET_UNREACHABLE,
            ErrorKind::Protocol => reset::PROTOCOL,
            ErrorKind::Shutdown => reset::SHUTDOWN,
            ErrorKind::Timeout => reset::TIMEOUT,
            _ => reset::APP_RESET,
        };
        self.session.abort(code, &reason.message);
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
                .is_some_and(|s| s.state == StripeState::Draining);
            if draining {
                let s = self.stripes[i].as_mut().expect("present");
                if s.framed.inner_mut().drain_until_eof() {
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
            if !flushed || !s.framed.is_idle() || s.state == StripeState::Draining {
                continue;
            }
            if matches!(
                s.state,
                StripeState::Connecting | StripeState::AwaitServerHello
            ) {
                // Never joined: nothing to say goodbye to.
                *slot = None;
                continue;
            }
            let _ = s.framed.inner_mut().shutdown_write();
            s.state = StripeState::Draining;
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
