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
//! Failure policy: a stripe that cannot connect, is refused, resets or
//! closes early is dropped with a warning and its unacknowledged bytes go
//! out again on the others; the session fails only when no stripe is left,
//! or at once on anything that means the byte stream cannot be trusted (a
//! corrupt frame, a protocol violation, the peer's RST).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::{Registry, Token};
use striper_core::{Ctx, ErrorKind, Pipe, PipeError, Readable, Ready, TokenSpan};

use crate::framed::{FramedError, FramedPipe, Next};
use crate::proto::auth::Key;
use crate::proto::handshake::{
    CLIENT_AUTH_LEN, CLIENT_HELLO_LEN, ClientHello, Kind, SERVER_HELLO_LEN, ServerHello, SessionId,
    Status, short_id,
};
use crate::proto::session::{Session, SessionConfig, SessionError, reset};
use crate::sys;
use crate::tcp::TcpPipe;

/// Bytes read from one stripe per drive before others get a turn.
const READ_BUDGET: usize = 1 << 20;
/// Bytes written per drive before the pipe yields.
const WRITE_BUDGET: usize = 4 << 20;
/// Interval between round-trip readings of a stripe.
const RTT_INTERVAL: Duration = Duration::from_millis(100);

/// Settings of the IO side of a session.
#[derive(Clone, Debug)]
pub struct StripedConfig {
    pub session: SessionConfig,
    /// TCP_NOTSENT_LOWAT of every stripe socket.
    pub notsent_lowat: u32,
    /// How long a stripe may take to connect.
    pub connect_timeout: Duration,
    /// How long a finished or aborted session waits for the peer to close.
    pub close_linger: Duration,
    /// Buffers of a session idle this long are freed.
    pub idle_release: Duration,
    /// The pre-shared key; `None` runs without authentication.
    pub key: Option<Key>,
}

impl Default for StripedConfig {
    fn default() -> Self {
        StripedConfig {
            session: SessionConfig::default(),
            notsent_lowat: 64 * 1024,
            connect_timeout: Duration::from_secs(10),
            close_linger: Duration::from_secs(5),
            idle_release: Duration::from_secs(2),
            key: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StripeState {
    /// Client: TCP connect in progress.
    Connecting,
    /// Client: hello sent, frames may follow; the server's answer is next to read.
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
    last_rtt: Option<Instant>,
    /// Client: the hello this stripe sent, for the proofs' transcript.
    hello: Option<[u8; CLIENT_HELLO_LEN]>,
}

enum Role {
    Client {
        server: SocketAddr,
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
    span: Option<TokenSpan>,
    failed: Option<PipeError>,
    /// Last reason a stripe was lost, for the message if all are.
    last_stripe_error: Option<PipeError>,
    ever_up: bool,
    peer_known: bool,
    closing_since: Option<Instant>,
    last_activity: Option<Instant>,
    label: String,
}

impl StripedPipe {
    /// A client session: starts connecting `count` stripes to `server`.
    pub fn client(
        cfg: StripedConfig,
        server: SocketAddr,
        server_name: &str,
        count: u8,
        id: SessionId,
    ) -> Result<StripedPipe, PipeError> {
        let mut pipe = StripedPipe::new(
            Role::Client {
                server,
                server_name: server_name.to_string(),
            },
            cfg,
            id,
            count as usize,
        );
        let mut first_err = None;
        for i in 0..count as usize {
            let name = format!("server {server_name}");
            match TcpPipe::connect(server, name, pipe.cfg.connect_timeout) {
                Ok(tcp) => {
                    pipe.stripes[i] = Some(Stripe {
                        framed: FramedPipe::new(tcp, pipe.cfg.session.max_payload as usize),
                        state: StripeState::Connecting,
                        last_rtt: None,
                        hello: None,
                    });
                }
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
        pipe
    }

    fn new(role: Role, cfg: StripedConfig, id: SessionId, count: usize) -> StripedPipe {
        StripedPipe {
            role,
            id,
            session: Session::new(cfg.session.clone(), count),
            stripes: (0..count).map(|_| None).collect(),
            cfg,
            span: None,
            failed: None,
            last_stripe_error: None,
            ever_up: false,
            peer_known: false,
            closing_since: None,
            last_activity: None,
            label: format!("session {}", short_id(&id)),
        }
    }

    pub fn id(&self) -> &SessionId {
        &self.id
    }

    /// The server address a client session connects its stripes to.
    pub fn server_addr(&self) -> Option<SocketAddr> {
        match &self.role {
            Role::Client { server, .. } => Some(*server),
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

    /// Server: adds a handshaken stripe (it may replace a dead one).
    pub fn add_stripe(
        &mut self,
        registry: &Registry,
        index: u8,
        mut tcp: TcpPipe,
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
        if let Some(mut old) = self.stripes[i].take() {
            debug!("{}: stripe {i} replaced by a new connection", self.label);
            old.framed.inner_mut().deregister(registry);
            self.session.stripe_down(i);
        }
        tcp.register_token(registry, span.token(i))
            .map_err(|e| PipeError::io("stripe", &e))?;
        let _ = sys::set_notsent_lowat(tcp.raw_fd(), self.cfg.notsent_lowat);
        self.stripes[i] = Some(Stripe {
            framed: FramedPipe::new(tcp, self.cfg.session.max_payload as usize),
            state: StripeState::Up,
            last_rtt: None,
            hello: None,
        });
        self.session.stripe_up(i);
        self.ever_up = true;
        debug!(
            "{}: stripe {i} joined ({} up)",
            self.label,
            self.session.stripes_up()
        );
        Ok(())
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

    /// Drops stripe `i` after `err`; the session goes on with the others.
    fn lose_stripe(&mut self, i: usize, err: PipeError) {
        let Some(mut s) = self.stripes[i].take() else {
            return;
        };
        s.framed.inner_mut().abort(&err);
        let was_up = self.session.is_stripe_up(i);
        self.session.stripe_down(i);
        let left = self.stripes.iter().flatten().count();
        if was_up {
            warn!(
                "{}: stripe {i} lost: {err}; {left} stripe(s) left",
                self.label
            );
        } else {
            warn!(
                "{}: stripe {i} failed: {err}; {left} stripe(s) left",
                self.label
            );
        }
        self.last_stripe_error = Some(err);
    }

    fn client_hello(&self, i: usize) -> ClientHello {
        ClientHello {
            kind: Kind::Open,
            index: i as u8,
            count: self.stripes.len() as u8,
            session: self.id,
            nonce: random_nonce(),
            window: self.cfg.session.window,
            max_payload: self.cfg.session.max_payload,
        }
    }

    /// Connect completion and the client side of the handshake.
    fn advance_handshake(&mut self, i: usize, now: Instant) -> Result<(), PipeError> {
        let Some(s) = self.stripes[i].as_mut() else {
            return Ok(());
        };
        match s.state {
            StripeState::Connecting => {
                s.framed.inner_mut().poll_connect(now)?;
                if !s.framed.inner().is_connected() {
                    return Ok(());
                }
                let fd = s.framed.inner().raw_fd();
                let _ = sys::set_notsent_lowat(fd, self.cfg.notsent_lowat);
                let hello = self.client_hello(i).encode();
                let s = self.stripes[i].as_mut().expect("present");
                s.framed.queue_raw(&hello);
                s.hello = Some(hello);
                s.state = StripeState::AwaitServerHello;
                debug!("{}: stripe {i} connected", self.label);
                if self.cfg.key.is_none() {
                    // No key: the (empty) proof and the first frames follow
                    // the hello at once, without waiting for the answer.
                    s.framed.queue_raw(&[0u8; CLIENT_AUTH_LEN]);
                    self.session.stripe_up(i);
                    self.ever_up = true;
                }
            }
            StripeState::AwaitServerHello => {
                let parsed = match s.framed.inner_mut().fill_buf()? {
                    Readable::Pending => return Ok(()),
                    Readable::Eof => {
                        return Err(PipeError::new(
                            ErrorKind::Reset,
                            format!(
                                "{} closed the stripe during the handshake",
                                self.peer_name()
                            ),
                        ));
                    }
                    Readable::Bytes(b) => ServerHello::parse(b),
                };
                let hello = match parsed {
                    Ok(None) => {
                        if s.framed.inner().at_eof() {
                            return Err(PipeError::new(
                                ErrorKind::Reset,
                                format!(
                                    "{} closed the stripe during the handshake",
                                    self.peer_name()
                                ),
                            ));
                        }
                        return Ok(());
                    }
                    Ok(Some(h)) => h,
                    Err(e) => {
                        return Err(PipeError::new(
                            ErrorKind::Protocol,
                            format!("{} answered with a bad handshake: {e}", self.peer_name()),
                        ));
                    }
                };
                s.framed.inner_mut().consume(SERVER_HELLO_LEN);
                if hello.status != Status::Ok {
                    return Err(PipeError::new(
                        ErrorKind::Protocol,
                        format!("{} refused the stripe: {}", self.peer_name(), hello.status),
                    ));
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
                    self.session.stripe_up(i);
                    self.ever_up = true;
                }
                s.state = StripeState::Up;
                if !self.peer_known {
                    self.session
                        .set_peer_params(hello.window, hello.max_payload);
                    self.peer_known = true;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Reads frames from stripe `i`. Returns true if its budget ran out.
    fn read_stripe(&mut self, i: usize) -> Result<bool, PipeError> {
        let mut budget = READ_BUDGET;
        loop {
            let Some(s) = self.stripes[i].as_mut() else {
                return Ok(false);
            };
            if !matches!(
                s.state,
                StripeState::Up | StripeState::PeerClosed | StripeState::AwaitServerHello
            ) {
                return Ok(false);
            }
            if s.state == StripeState::AwaitServerHello {
                // Frames only follow the server's answer.
                return Ok(false);
            }
            match s.framed.next_frame() {
                Ok(Next::Frame(f, n)) => {
                    let r = self.session.handle_frame(i, f);
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
                    self.lose_stripe(i, e);
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
                    self.lose_stripe(i, e);
                    return Ok(false);
                }
                Err(FramedError::Pipe(e)) => {
                    self.lose_stripe(i, e);
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
            let delivered = tcp.bytes_written().saturating_sub(q);
            let rtt = if s
                .last_rtt
                .is_none_or(|t| now.duration_since(t) >= RTT_INTERVAL)
            {
                s.last_rtt = Some(now);
                sys::tcp_rtt(fd).ok()
            } else {
                None
            };
            self.session.update_stripe(i, now, q, delivered, rtt);
        }
    }

    /// Writes frames until the stripes are full, the session has nothing
    /// more, or the budget is spent. Returns true if the budget ran out.
    fn transmit(&mut self) -> bool {
        for i in 0..self.stripes.len() {
            let Some(s) = self.stripes[i].as_mut() else {
                continue;
            };
            if !s.framed.is_idle() && s.framed.inner().is_writable() {
                let session = &self.session;
                if let Err(e) = s.framed.flush(|o, l| session.send_slices(o, l)) {
                    self.lose_stripe(i, e);
                    continue;
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
                Ok(true) => {}
                Ok(false) => self.session.set_stripe_writable(i, false),
                Err(e) => self.lose_stripe(i, e),
            }
            if sent >= WRITE_BUDGET {
                return true;
            }
        }
        false
    }

    fn check_alive(&mut self) -> Result<(), PipeError> {
        if self.stripes.iter().any(|s| s.is_some()) {
            return Ok(());
        }
        let last = self.last_stripe_error.clone();
        let e = match (&self.role, self.ever_up, last) {
            (Role::Client { server_name, .. }, false, Some(last))
                if last.kind == ErrorKind::Connect =>
            {
                PipeError::new(
                    ErrorKind::Connect,
                    format!(
                        "server {server_name} unreachable: {}",
                        strip_name(&last.message, server_name)
                    ),
                )
            }
            (_, _, Some(last)) => PipeError::new(
                last.kind,
                format!("all {} stripes lost (last: {last})", self.stripes.len()),
            ),
            (_, _, None) => PipeError::new(ErrorKind::Reset, "all stripes lost"),
        };
        Err(self.fail(e))
    }

    fn release_if_idle(&mut self, now: Instant) {
        let last = *self.last_activity.get_or_insert(now);
        if now.duration_since(last) >= self.cfg.idle_release {
            self.session.release_idle_buffers();
            for s in self.stripes.iter_mut().flatten() {
                s.framed.inner_mut().release_idle();
            }
        }
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
        let mut again = false;
        let before = (
            self.session.stats().bytes_in,
            self.session.recv_backlog(),
            self.session.send_backlog(),
        );
        for i in 0..self.stripes.len() {
            if let Err(e) = self.advance_handshake(i, cx.now) {
                self.lose_stripe(i, e);
                continue;
            }
            again |= self.read_stripe(i)?;
        }
        self.update_metrics(cx.now);
        again |= self.transmit();
        self.check_alive()?;
        let after = (
            self.session.stats().bytes_in,
            self.session.recv_backlog(),
            self.session.send_backlog(),
        );
        if before != after {
            self.last_activity = Some(cx.now);
        }
        self.release_if_idle(cx.now);
        Ok(again)
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
        let since = *self.closing_since.get_or_insert(cx.now);
        if cx.now.duration_since(since) >= self.cfg.close_linger {
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
            } else if self.failed.is_none() && self.read_stripe(i).is_err() {
                // A late error changes nothing now.
            }
        }
        self.transmit();
        let aborting = self.session.abort_sent() || self.failed.is_some();
        let flushed = self.session.is_finished() || aborting;
        for s in self.stripes.iter_mut().flatten() {
            let connecting = s.state == StripeState::Connecting;
            if flushed && s.framed.is_idle() && s.state != StripeState::Draining {
                if connecting {
                    s.state = StripeState::Draining;
                    s.framed
                        .inner_mut()
                        .abort(&PipeError::new(ErrorKind::Shutdown, "session over"));
                    continue;
                }
                let _ = s.framed.inner_mut().shutdown_write();
                s.state = StripeState::Draining;
            }
        }
        // Connecting stripes were aborted above; nothing to drain there.
        for slot in self.stripes.iter_mut() {
            if slot.as_ref().is_some_and(|s| {
                s.state == StripeState::Draining && !s.framed.inner().is_connected()
            }) {
                *slot = None;
            }
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
