//! One stripe: a framed TCP connection and what the striped pipe keeps about
//! it (its handshake, its state, its unsent limit). The striped pipe
//! composes stripes and never reaches into their sockets.

use std::time::{Duration, Instant};

use log::debug;
use mio::{Registry, Token};
use striper_core::{ErrorKind, Pipe, PipeError, Readable, Ready};

use crate::framed::{FramedError, FramedPipe, Next};
use crate::path::PathSpec;
use crate::proto::auth::Key;
use crate::proto::handshake::{ClientHandshake, ClientHello, ClientStep, Kind, Secret};
use crate::proto::noise::Keys;
use crate::proto::queue::{PathSample, QueueBounds, QueueLimit};
use crate::proto::session::Transmit;
use crate::striped::{StripedConfig, UnsentLimit};
use crate::sys;
use crate::tcp::TcpPipe;

/// Interval between round-trip readings of a stripe.
const RTT_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StripeState {
    /// Client: TCP connect in progress.
    Connecting,
    /// Client: hello sent; the server's answer is next to read. Without a
    /// key, frames already go out.
    AwaitAnswer,
    Up,
    /// The peer closed its side at the end of the session; we only write.
    PeerClosed,
    /// Closing: our FIN is out, reading until the peer's.
    Draining,
}

/// What the kernel says about a stripe, for the session's scheduler.
pub struct KernelSample {
    /// Bytes unsent or unacknowledged, and of those the unsent ones.
    pub queued: (u64, u64),
    /// Bytes the peer's kernel acknowledged, cumulative.
    pub delivered: u64,
    /// Smoothed round trip, when it was read this time.
    pub rtt: Option<Duration>,
    /// The smallest round trip the kernel has seen, when it was read and
    /// the kernel says.
    pub min_rtt: Option<Duration>,
}

pub struct Stripe {
    framed: FramedPipe,
    state: StripeState,
    /// When the stripe entered its state (for the handshake timeout).
    since: Option<Instant>,
    last_rtt: Option<Instant>,
    /// The unsent limit this stripe's socket has, and how it moves.
    queue: QueueLimit,
    /// `bytes_written` when the kernel last said the send queue was empty.
    drained_at: Option<u64>,
    /// The kernel's smoothed RTT at its last reading.
    path_rtt: Option<Duration>,
    /// Client: the handshake in progress. Boxed, like the first flight:
    /// Noise's state is ~900 bytes, which every stripe of every idle
    /// session would otherwise carry inline long after its handshake.
    handshake: Option<Box<ClientHandshake>>,
    /// Client, while connecting: the handshake and its first message.
    first_flight: Option<Box<(ClientHandshake, Vec<u8>)>>,
    /// Client: whether this connection replaces a lost stripe.
    join: bool,
}

impl Stripe {
    /// Client: a new connection to the server along `path`.
    ///
    /// The first flight (the handshake's first message) is computed before
    /// dialling: the server starts counting a connection's silence when it
    /// accepts it, and a client opening many sessions at once would
    /// otherwise make the last of them wait for the key generation of all
    /// the others between connect and hello.
    pub fn connect(
        cfg: &StripedConfig,
        path: &PathSpec,
        hello: &ClientHello,
        secret: &Secret,
    ) -> Result<Stripe, PipeError> {
        let key = cfg.key.clone().unwrap_or_else(Key::none);
        let first = ClientHandshake::start(hello, &key, *secret);
        let tcp = TcpPipe::connect_via(
            &path.servers,
            &path.via,
            format!("server {}", path.server_name),
            cfg.connect_timeout,
        )?;
        let mut s = Stripe::new(cfg, tcp, StripeState::Connecting);
        s.join = hello.kind == Kind::Join;
        s.first_flight = Some(Box::new(first));
        // A connect that completed in the call (loopback, often a LAN) takes
        // the first flight at once, before this client dials its other
        // stripes: a burst of sessions then leaves no connection silent at
        // the server for the time the rest of the burst takes.
        let now = Instant::now();
        if s.framed.inner_mut().connected_at_once(now) {
            s.since = Some(now);
            s.send_first_flight(cfg, now);
            // An error stays with the connection and shows at its next use.
            let _ = s.flush();
        }
        Ok(s)
    }

    /// Server: a connection whose handshake is done, with its keys.
    pub fn accepted(cfg: &StripedConfig, tcp: TcpPipe, keys: Keys, now: Instant) -> Stripe {
        let mut s = Stripe::new(cfg, tcp, StripeState::Up);
        s.framed.set_keys(keys);
        s.since = Some(now);
        s.tune(cfg);
        s
    }

    fn new(cfg: &StripedConfig, tcp: TcpPipe, state: StripeState) -> Stripe {
        let queue = QueueLimit::new(match cfg.unsent {
            UnsentLimit::Auto(b) => b,
            UnsentLimit::Fixed(n) => QueueBounds {
                floor: n,
                ceiling: n,
                gain: 0.0,
            },
        });
        Stripe {
            framed: FramedPipe::new(tcp, cfg.session.max_payload as usize),
            state,
            since: None,
            last_rtt: None,
            queue,
            drained_at: None,
            path_rtt: None,
            handshake: None,
            first_flight: None,
            join: false,
        }
    }

    /// The socket's options: the first unsent limit and the congestion
    /// control. Failures only cost speed, and the algorithm was checked at
    /// start, so they are logged at debug level.
    fn tune(&self, cfg: &StripedConfig) {
        let fd = self.framed.inner().raw_fd();
        if let Err(e) = sys::set_notsent_lowat(fd, self.queue.get()) {
            debug!("TCP_NOTSENT_LOWAT: {e}");
        }
        if let Some(cc) = &cfg.congestion
            && let Err(e) = sys::set_congestion(fd, cc)
        {
            debug!("TCP_CONGESTION {cc}: {e}");
        }
    }

    pub fn state(&self) -> StripeState {
        self.state
    }

    pub fn set_state(&mut self, state: StripeState, now: Instant) {
        self.state = state;
        self.since = Some(now);
    }

    pub fn is_join(&self) -> bool {
        self.join
    }

    /// Frames may be read from it (its handshake is over).
    pub fn carries_frames(&self) -> bool {
        matches!(self.state, StripeState::Up | StripeState::PeerClosed)
    }

    pub fn register(&mut self, registry: &Registry, token: Token) -> std::io::Result<()> {
        self.framed.inner_mut().register_token(registry, token)
    }

    /// Takes over a socket another task registered: one `epoll` entry for
    /// the connection's whole life, only its token changes.
    pub fn adopt(&mut self, registry: &Registry, token: Token) -> std::io::Result<()> {
        self.framed.inner_mut().reregister(registry, token)
    }

    pub fn deregister(&mut self, registry: &Registry) {
        self.framed.inner_mut().deregister(registry);
    }

    pub fn on_ready(&mut self, token: Token, ready: Ready) {
        self.framed.inner_mut().on_ready(token, ready);
    }

    /// Client: drives the connect; once connected, sends the hello (made
    /// at [`Stripe::connect`]).
    pub fn poll_connect(
        &mut self,
        cfg: &StripedConfig,
        registry: &Registry,
        now: Instant,
    ) -> Result<(), PipeError> {
        self.since.get_or_insert(now);
        self.framed.inner_mut().poll_connect(registry, now)?;
        if !self.framed.inner().is_connected() {
            return Ok(());
        }
        self.send_first_flight(cfg, now);
        Ok(())
    }

    fn send_first_flight(&mut self, cfg: &StripedConfig, now: Instant) {
        self.tune(cfg);
        let (hs, bytes) = *self.first_flight.take().expect("made when dialling");
        self.framed.queue_raw(&bytes);
        self.handshake = Some(Box::new(hs));
        self.set_state(StripeState::AwaitAnswer, now);
    }

    /// Client: reads the server's answer. `Ok(None)` while it is not all
    /// in; errors say why the stripe cannot go on (`peer` names the server).
    pub fn read_answer(
        &mut self,
        peer: &str,
        now: Instant,
        timeout: Duration,
    ) -> Result<Option<ClientStep>, PipeError> {
        let closed = || {
            PipeError::new(
                ErrorKind::Reset,
                format!(
                    "{peer} closed the stripe during the handshake (a server with another \
                     key, or none, does this)"
                ),
            )
        };
        let hs = self.handshake.as_mut().expect("awaiting an answer");
        let step = match self.framed.inner_mut().fill_buf()? {
            Readable::Eof => return Err(closed()),
            Readable::Pending => ClientStep::Pending,
            Readable::Bytes(b) => hs.handle(b),
        };
        if !matches!(step, ClientStep::Pending) {
            self.framed.inner_mut().consume(ClientHandshake::ANSWER_LEN);
            self.handshake = None;
            // The handshake's state (a few KiB of Noise) is free now.
            striper_core::mem::note_released();
            return Ok(Some(step));
        }
        if self.framed.inner().at_eof() {
            return Err(closed());
        }
        let since = self.since.unwrap_or(now);
        if now.saturating_duration_since(since) >= timeout {
            return Err(PipeError::new(
                ErrorKind::Timeout,
                format!(
                    "no answer from {peer} within {:.0} s",
                    timeout.as_secs_f64()
                ),
            ));
        }
        Ok(None)
    }

    /// The handshake is over: `confirm` goes out first, then frames sealed
    /// with `keys`.
    pub fn confirm(&mut self, keys: Keys, confirm: &[u8]) {
        self.framed.queue_raw(confirm);
        self.framed.set_keys(keys);
    }

    pub fn next_frame(&mut self) -> Result<Next<'_>, FramedError> {
        self.framed.next_frame()
    }

    pub fn consume_frame(&mut self, n: usize) {
        self.framed.consume_frame(n);
    }

    /// Reads what the kernel knows: queued bytes always, the path (RTT,
    /// rates) every [`RTT_INTERVAL`]; with an automatic unsent limit the
    /// socket's is moved to follow the path.
    ///
    /// A socket whose send queue was empty at the last reading and that has
    /// been given nothing since cannot have changed (only our writes fill
    /// it; only acknowledgements of data move its RTT), so it is not asked
    /// again: the readings are repeated. An idle session's keepalive wake
    /// then costs no ioctl or getsockopt per stripe; before, these were 4
    /// of every 5 system calls of 2,000 idle sessions.
    pub fn sample(&mut self, now: Instant, auto_limit: bool) -> Option<KernelSample> {
        let tcp = self.framed.inner();
        let fd = tcp.raw_fd();
        let written = tcp.bytes_written();
        let rtt_due = self
            .last_rtt
            .is_none_or(|t| now.duration_since(t) >= RTT_INTERVAL);
        if self.drained_at == Some(written) {
            if rtt_due {
                self.last_rtt = Some(now);
            }
            return Some(KernelSample {
                queued: (0, 0),
                delivered: written,
                rtt: self.path_rtt.filter(|_| rtt_due),
                min_rtt: None,
            });
        }
        let q = sys::outq(fd).ok()?;
        let unsent = sys::outq_unsent(fd).unwrap_or(q);
        let delivered = written.saturating_sub(q);
        let (mut rtt, mut min_rtt) = (None, None);
        if rtt_due {
            self.last_rtt = Some(now);
            if let Ok(path) = sys::tcp_path(fd) {
                rtt = Some(path.rtt);
                min_rtt = Some(path.min_rtt).filter(|d| !d.is_zero());
                self.path_rtt = rtt;
                self.follow_path(fd, path, auto_limit);
            }
        }
        // Only once the RTT is known: the first reading must reach the kernel.
        self.drained_at = (q == 0 && self.path_rtt.is_some()).then_some(written);
        Some(KernelSample {
            queued: (q, unsent),
            delivered,
            rtt,
            min_rtt,
        })
    }

    fn follow_path(&mut self, fd: i32, path: PathSample, auto_limit: bool) {
        if auto_limit && let Some(limit) = self.queue.on_sample(path) {
            let _ = sys::set_notsent_lowat(fd, limit);
        }
    }

    /// The unsent limit the socket has now.
    pub fn unsent_limit(&self) -> u32 {
        self.queue.get()
    }

    /// A new frame may be handed over now.
    pub fn can_send(&self) -> bool {
        self.framed.is_idle()
            && self.framed.inner().is_writable()
            && self.state != StripeState::Draining
    }

    /// Part of a frame (or handshake bytes) waits and the socket has room.
    pub fn wants_flush(&self) -> bool {
        !self.framed.is_idle() && self.framed.inner().is_writable()
    }

    /// Nothing partly written.
    pub fn is_idle(&self) -> bool {
        self.framed.is_idle()
    }

    pub fn send<'s>(
        &mut self,
        t: Transmit,
        payload: impl Fn(u64, usize) -> (&'s [u8], &'s [u8]),
    ) -> Result<bool, PipeError> {
        self.framed.send(t, payload)
    }

    pub fn flush(&mut self) -> Result<bool, PipeError> {
        self.framed.flush()
    }

    /// Resets the connection (the stripe is given up).
    pub fn abort(&mut self, err: &PipeError) {
        self.framed.inner_mut().abort(err);
    }

    /// Closing: our side is done; read until the peer's EOF.
    pub fn start_draining(&mut self, now: Instant) {
        let _ = self.framed.inner_mut().shutdown_write();
        self.set_state(StripeState::Draining, now);
    }

    /// True once the peer closed its side (or the socket failed).
    pub fn drain_until_eof(&mut self) -> bool {
        self.framed.inner_mut().drain_until_eof()
    }

    pub fn read_buffer_capacity(&self) -> usize {
        self.framed.inner().read_buffer_capacity()
    }

    pub fn release_idle(&mut self) {
        self.framed.release_idle();
    }
}
