//! A userspace TCP link emulator: a relay that shapes each connection on its
//! own, so end-to-end tests can give every stripe of the tunnel its own
//! "link" with a rate, a delay and faults on command.
//!
//! # Model
//!
//! [`LinkEmu::start`] listens on [`LinkConfig::listen`]; for every accepted
//! connection it opens a connection to [`LinkConfig::upstream`] and relays
//! bytes both ways. *Up* is client → upstream, *down* is upstream → client.
//! Each connection and each direction has its own [`Shape`] (the cap is per
//! flow, like a per-flow shaper, not shared by all connections):
//!
//! * **Delay**: a byte read from the source at time `t` is written to the
//!   destination no earlier than `t + delay`.
//! * **Rate**: a token bucket on the write side, counted in payload bytes
//!   (`rate_mbit × 125 000` bytes/s, decimal megabits). The bucket holds at
//!   most 5 ms of tokens while the flow is idle, so over any window longer
//!   than a few milliseconds the rate is not exceeded by more than that
//!   burst. While the flow is backlogged (data due, destination writable,
//!   only tokens missing) the bucket may fill to 50 ms, so a relay thread
//!   that the scheduler leaves waiting on a busy machine catches up instead
//!   of losing link time; the long-run rate stays exact.
//! * **Queue**: each direction reads from its source only while it holds
//!   less than `rate × (delay + 20 ms) + 64 KiB` (16 MiB + 64 KiB for an
//!   unlimited rate with a delay, 64 KiB for an unlimited rate without one),
//!   so it holds at most one 64 KiB read more than that. Beyond that TCP
//!   backpressure reaches the sender and memory stays bounded. The kernel
//!   socket buffers come on top of this queue (the relay does not shrink
//!   them), and since loopback never drops a packet the sender's send buffer
//!   grows to its maximum: with a 5 Mbit/s link whose receiving application
//!   does not read, a sender could write 6.2 MB in 3 s (1.9 MB forwarded,
//!   0.1 MB in this queue, the rest in kernel buffers). A tunnel that wants
//!   less in flight per stripe must cap its own `SO_SNDBUF`.
//!
//! The defaults of a [`LinkConfig`] apply to new connections; the `set_*`
//! calls change one connection or all of them (and then the defaults too).
//! With no rate and no delay the emulator is a plain relay.
//!
//! # Faults
//!
//! * [`LinkEmu::reset`]: both peers get a TCP RST (`SO_LINGER` 0, then close).
//! * [`LinkEmu::blackhole`]: nothing is forwarded either way and nothing is
//!   read; both sockets stay open. [`LinkEmu::restore`] resumes forwarding
//!   and nothing held is lost.
//! * [`LinkEmu::close_after`]: forward `K` more bytes of the given direction
//!   ([`Dir::Both`] counts both directions together), then send FIN to both
//!   peers; whatever else is queued is discarded.
//! * [`LinkEmu::set_outage`]: while on, every connection, existing or new, is
//!   black-holed. New connections are accepted but their upstream connection
//!   is only opened once the outage ends, as the upstream would not have seen
//!   the SYN either. Switching it off puts every connection back to its own
//!   state: one black-holed by [`LinkEmu::blackhole`] stays black-holed.
//! * A peer's FIN is passed on as a FIN (half-close): the other direction
//!   keeps flowing. A peer's RST, or a write that fails because a peer went
//!   away, resets the other peer.
//! * If the upstream refuses the connection, the client gets a reset, the
//!   cause is logged and the emulator keeps serving other connections.
//!
//! # Accuracy
//!
//! Rate, as goodput at the receiving application from its first to its last
//! byte over a 2.5 s transfer (`cargo test -p striper-tests --test linkemu
//! -- --nocapture` prints each one), on the 2-core development machine:
//!
//! | configured | connections | measured (release) | measured (debug, 2 CPU hogs running) |
//! |---|---|---|---|
//! | 5 Mbit/s | 1 | 5.000 | within 0.5% |
//! | 20 Mbit/s (down) | 1 | 19.995 | within 0.5% |
//! | 100 Mbit/s | 1 | 99.977 | within 0.5% |
//! | 25 Mbit/s | 8 at once | 24.999 – 25.020 | within 0.5% |
//! | 100 Mbit/s | 8 at once | 99.85 – 100.13 | 98.5 – 101.2 |
//! | 40 Mbit/s, 50 ms delay | 1 | 39.986 | within 0.5% |
//!
//! The small excess over the rate under CPU contention is the backlogged
//! bucket catching up after the relay thread was scheduled late. Relaying
//! 8 × 100 Mbit/s costs the relay thread about 10% of one core. An added
//! delay is held to +0.2–0.4 ms (RTT with 25 ms each way: 50.2–50.4 ms),
//! with rare outliers of a few ms when the machine is busy: the event loop's
//! timer has millisecond granularity (rounded up, so never early).
//!
//! # Threads and blocking
//!
//! One thread runs a `mio` event loop for all connections. [`LinkEmu::start`]
//! binds and returns at once. The fault and shaping calls send a command to
//! that thread and block until it has been applied (microseconds; at most
//! [`COMMAND_TIMEOUT`]), so when one returns its effect holds.
//! [`LinkEmu::connections`] reads a snapshot and does not wait for the loop.
//! The loop publishes that snapshot after each round of socket calls, so it
//! can trail what a peer has already observed (bytes received, an EOF) by
//! one loop iteration: to check the emulator's view after observing the
//! sockets, wait for it with [`LinkEmu::wait_until`].
//! [`LinkEmu::wait_for_connections`] and [`LinkEmu::wait_until`] block on a
//! condition variable up to their timeout. Dropping the emulator (or
//! [`LinkEmu::shutdown`]) stops the loop, closes every socket and joins the
//! thread.

mod control;
mod engine;

pub use control::{execute as execute_command, serve as serve_control};

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a command waits for the event loop before giving up; only
/// reached if the loop is wedged, which would be a bug.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Shaping of one direction of a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Shape {
    /// Payload rate cap in Mbit/s (10^6 bits); `None` for no cap.
    pub rate_mbit: Option<f64>,
    /// Added one-way delay in milliseconds.
    pub delay_ms: u64,
}

impl Shape {
    /// No cap and no delay.
    pub const UNLIMITED: Shape = Shape {
        rate_mbit: None,
        delay_ms: 0,
    };

    /// A rate cap with no added delay.
    pub fn rate(mbit: f64) -> Shape {
        Shape {
            rate_mbit: Some(mbit),
            delay_ms: 0,
        }
    }

    /// An added delay with no rate cap.
    pub fn delay(ms: u64) -> Shape {
        Shape {
            rate_mbit: None,
            delay_ms: ms,
        }
    }

    /// This shape with the given delay.
    pub fn with_delay_ms(self, ms: u64) -> Shape {
        Shape {
            delay_ms: ms,
            ..self
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rate_mbit {
            Some(r) => write!(f, "{r} Mbit/s")?,
            None => write!(f, "unlimited")?,
        }
        write!(f, ", delay {} ms", self.delay_ms)
    }
}

/// Where to listen, where to relay to, and the default shapes.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// Address to accept client connections on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Address every accepted connection is relayed to.
    pub upstream: SocketAddr,
    /// Default shape of client → upstream.
    pub up: Shape,
    /// Default shape of upstream → client.
    pub down: Shape,
    /// Kernel receive buffer of the relay's sockets, in bytes. A userspace
    /// relay on loopback never drops a packet, so without a bound a sender
    /// could park megabytes in the relay's socket buffer, acknowledged and
    /// invisible to it, far more than any real bottleneck queue holds. This
    /// plays the part of the bottleneck's buffer. `None`: the kernel default.
    pub sock_buf: Option<usize>,
}

/// Default [`LinkConfig::sock_buf`]: about 100 ms at 20 Mbit/s, the order of
/// a router's per-flow queue.
pub const DEFAULT_SOCK_BUF: usize = 256 * 1024;

impl LinkConfig {
    /// A plain relay (no cap, no delay) from `listen` to `upstream`.
    pub fn new(listen: SocketAddr, upstream: SocketAddr) -> LinkConfig {
        LinkConfig {
            listen,
            upstream,
            up: Shape::UNLIMITED,
            down: Shape::UNLIMITED,
            sock_buf: Some(DEFAULT_SOCK_BUF),
        }
    }

    /// The same shape both ways.
    pub fn with_shape(self, shape: Shape) -> LinkConfig {
        LinkConfig {
            up: shape,
            down: shape,
            ..self
        }
    }
}

/// A direction selector. `Up` is client → upstream, `Down` is upstream →
/// client; `Both` applies a setting to both, or for
/// [`LinkEmu::close_after`] counts the bytes of both directions together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Up,
    Down,
    Both,
}

impl Dir {
    fn includes_up(self) -> bool {
        matches!(self, Dir::Up | Dir::Both)
    }

    fn includes_down(self) -> bool {
        matches!(self, Dir::Down | Dir::Both)
    }
}

impl std::str::FromStr for Dir {
    type Err = String;
    fn from_str(s: &str) -> Result<Dir, String> {
        match s {
            "up" => Ok(Dir::Up),
            "down" => Ok(Dir::Down),
            "both" => Ok(Dir::Both),
            _ => Err(format!("direction must be up, down or both, not {s:?}")),
        }
    }
}

/// State of one relayed connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Accepted; the upstream connection is being opened.
    Connecting,
    /// Relaying (possibly half-closed in one direction).
    Open,
    /// Black-holed, by [`LinkEmu::blackhole`] or by the outage switch.
    Blackholed,
    /// Ended by FIN in both directions, by [`LinkEmu::close_after`], or by
    /// the emulator shutting down.
    Closed,
    /// Ended by a reset: by [`LinkEmu::reset`], by a peer's RST (passed on
    /// to the other peer), or because the upstream refused the connection.
    Reset,
}

impl ConnState {
    /// Whether the connection still exists (neither closed nor reset).
    pub fn is_live(self) -> bool {
        !matches!(self, ConnState::Closed | ConnState::Reset)
    }

    /// Lower-case name, as the control protocol prints it.
    pub fn name(self) -> &'static str {
        match self {
            ConnState::Connecting => "connecting",
            ConnState::Open => "open",
            ConnState::Blackholed => "blackholed",
            ConnState::Closed => "closed",
            ConnState::Reset => "reset",
        }
    }
}

impl fmt::Display for ConnState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the emulator knows about one connection. Closed and reset
/// connections stay listed, so ids keep matching accept order.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnInfo {
    /// Position in accept order, from 0.
    pub id: usize,
    /// The client's address (the peer of the accepted socket).
    pub client: SocketAddr,
    /// Local address of the relay's upstream socket, i.e. the peer address
    /// the upstream server sees; `None` until the upstream connect starts.
    pub upstream_local: Option<SocketAddr>,
    /// Bytes written to the upstream so far.
    pub bytes_up: u64,
    /// Bytes written to the client so far.
    pub bytes_down: u64,
    /// Bytes read but not yet forwarded, client → upstream.
    pub queued_up: u64,
    /// Bytes read but not yet forwarded, upstream → client.
    pub queued_down: u64,
    pub state: ConnState,
    /// Shape of client → upstream now.
    pub up: Shape,
    /// Shape of upstream → client now.
    pub down: Shape,
}

/// Totals over all connections.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    pub accepted: usize,
    /// Connections neither closed nor reset.
    pub live: usize,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub outage: bool,
    /// Shapes new connections get.
    pub default_up: Shape,
    pub default_down: Shape,
}

/// Why a command failed.
#[derive(Clone, Debug, PartialEq)]
pub enum LinkEmuError {
    /// No connection with this id was ever accepted.
    NoSuchConnection(usize),
    /// The connection has already ended.
    Ended(usize, ConnState),
    /// A rate must be a positive, finite number of Mbit/s.
    InvalidRate(f64),
    /// The event loop has stopped (shut down, or it panicked).
    Stopped,
    /// The event loop did not answer within [`COMMAND_TIMEOUT`].
    Timeout,
}

impl fmt::Display for LinkEmuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkEmuError::NoSuchConnection(id) => write!(f, "no connection with id {id}"),
            LinkEmuError::Ended(id, st) => write!(f, "connection {id} has already ended ({st})"),
            LinkEmuError::InvalidRate(r) => {
                write!(f, "rate {r} Mbit/s is invalid: use a positive number")
            }
            LinkEmuError::Stopped => write!(f, "the link emulator has stopped"),
            LinkEmuError::Timeout => write!(
                f,
                "the link emulator's event loop did not answer within {COMMAND_TIMEOUT:?}"
            ),
        }
    }
}

impl std::error::Error for LinkEmuError {}

/// Commands the event loop applies; each carries its reply channel.
enum Cmd {
    Reset(usize),
    Blackhole(usize),
    Restore(usize),
    CloseAfter(usize, Dir, u64),
    SetRate(Option<usize>, Dir, Option<f64>),
    SetDelay(Option<usize>, Dir, u64),
    Outage(bool),
    Shutdown,
}

type Reply = mpsc::SyncSender<Result<(), LinkEmuError>>;

/// What the event loop publishes for callers: read without a round trip to
/// the loop, and waited on with the condition variable.
struct Snapshot {
    conns: Vec<ConnInfo>,
    outage: bool,
    default_up: Shape,
    default_down: Shape,
    running: bool,
}

struct Shared {
    snap: Mutex<Snapshot>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Snapshot> {
        // A panic in the loop while holding the lock leaves data that is
        // still a valid (if stale) snapshot, so poisoning is not fatal here.
        self.snap.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running link emulator. See the [module documentation](self).
pub struct LinkEmu {
    local: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    cmds: mpsc::Sender<(Cmd, Reply)>,
    waker: mio::Waker,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl LinkEmu {
    /// Binds the listening socket and starts the event loop thread.
    /// Fails if the address cannot be bound or a rate is invalid.
    pub fn start(cfg: LinkConfig) -> io::Result<LinkEmu> {
        for r in [cfg.up.rate_mbit, cfg.down.rate_mbit].into_iter().flatten() {
            if !(r > 0.0 && r.is_finite()) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    LinkEmuError::InvalidRate(r),
                ));
            }
        }
        let listener = listen(cfg.listen, cfg.sock_buf).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen on {}: {e}", cfg.listen))
        })?;
        let local = listener.local_addr()?;
        let shared = Arc::new(Shared {
            snap: Mutex::new(Snapshot {
                conns: Vec::new(),
                outage: false,
                default_up: cfg.up,
                default_down: cfg.down,
                running: true,
            }),
            changed: Condvar::new(),
        });
        let (tx, rx) = mpsc::channel();
        let (engine, waker) = engine::Engine::new(listener, cfg.clone(), rx, shared.clone())?;
        let thread = std::thread::Builder::new()
            .name(format!("linkemu-{}", local.port()))
            .spawn(move || engine.run())?;
        log::debug!("linkemu listening on {local}, relaying to {}", cfg.upstream);
        Ok(LinkEmu {
            local,
            upstream: cfg.upstream,
            shared,
            cmds: tx,
            waker,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The address connections are relayed to.
    pub fn upstream_addr(&self) -> SocketAddr {
        self.upstream
    }

    /// All connections accepted so far, in accept order (index = id).
    pub fn connections(&self) -> Vec<ConnInfo> {
        self.shared.lock().conns.clone()
    }

    /// One connection, if that id was accepted.
    pub fn connection(&self, id: usize) -> Option<ConnInfo> {
        self.shared.lock().conns.get(id).cloned()
    }

    /// Number of connections neither closed nor reset.
    pub fn live_count(&self) -> usize {
        let snap = self.shared.lock();
        snap.conns.iter().filter(|c| c.state.is_live()).count()
    }

    /// Totals over all connections.
    pub fn stats(&self) -> Stats {
        let s = self.shared.lock();
        Stats {
            accepted: s.conns.len(),
            live: s.conns.iter().filter(|c| c.state.is_live()).count(),
            bytes_up: s.conns.iter().map(|c| c.bytes_up).sum(),
            bytes_down: s.conns.iter().map(|c| c.bytes_down).sum(),
            outage: s.outage,
            default_up: s.default_up,
            default_down: s.default_down,
        }
    }

    /// Whether the outage switch is on.
    pub fn outage(&self) -> bool {
        self.shared.lock().outage
    }

    /// Resets both peers of connection `id` (RST each way).
    pub fn reset(&self, id: usize) -> Result<(), LinkEmuError> {
        self.command(Cmd::Reset(id))
    }

    /// Stops forwarding and reading both ways on connection `id`, keeping
    /// both sockets open.
    pub fn blackhole(&self, id: usize) -> Result<(), LinkEmuError> {
        self.command(Cmd::Blackhole(id))
    }

    /// Undoes [`blackhole`](Self::blackhole); held bytes are then forwarded.
    /// While the outage switch is on the connection stays black-holed until
    /// it goes off.
    pub fn restore(&self, id: usize) -> Result<(), LinkEmuError> {
        self.command(Cmd::Restore(id))
    }

    /// Forwards `bytes` more bytes in `dir` (both directions summed for
    /// [`Dir::Both`]), then closes both sides with FIN. `0` closes now.
    pub fn close_after(&self, id: usize, dir: Dir, bytes: u64) -> Result<(), LinkEmuError> {
        self.command(Cmd::CloseAfter(id, dir, bytes))
    }

    /// Sets the rate cap (`None`: no cap) of connection `id`, or with
    /// `None` of every live connection and of new ones.
    pub fn set_rate(
        &self,
        id: Option<usize>,
        dir: Dir,
        mbit: Option<f64>,
    ) -> Result<(), LinkEmuError> {
        if let Some(r) = mbit
            && !(r > 0.0 && r.is_finite())
        {
            return Err(LinkEmuError::InvalidRate(r));
        }
        self.command(Cmd::SetRate(id, dir, mbit))
    }

    /// Sets the added delay of connection `id`, or with `None` of every live
    /// connection and of new ones. Bytes already read keep the release time
    /// they were given.
    pub fn set_delay(&self, id: Option<usize>, dir: Dir, ms: u64) -> Result<(), LinkEmuError> {
        self.command(Cmd::SetDelay(id, dir, ms))
    }

    /// Turns the global outage on or off.
    pub fn set_outage(&self, on: bool) -> Result<(), LinkEmuError> {
        self.command(Cmd::Outage(on))
    }

    /// Waits until at least `n` connections have been accepted (in total,
    /// whatever their state). Returns whether that happened in time.
    pub fn wait_for_connections(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |c| c.len() >= n)
    }

    /// Waits until `pred` holds for the connection list. The predicate is
    /// re-checked whenever the event loop publishes a change (a new
    /// connection, a state change, or bytes forwarded). Returns whether it
    /// held before `timeout` ran out.
    pub fn wait_until(&self, timeout: Duration, mut pred: impl FnMut(&[ConnInfo]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut snap = self.shared.lock();
        loop {
            if pred(&snap.conns) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || !snap.running {
                return false;
            }
            snap = self
                .shared
                .changed
                .wait_timeout(snap, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Stops the event loop, closes every socket (FIN, or RST where unread
    /// data is pending) and joins the thread. Idempotent; also done by drop.
    pub fn shutdown(&self) {
        let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        // If the loop already died the send fails; joining is still right.
        let _ = self.command(Cmd::Shutdown);
        if thread.join().is_err() {
            log::error!("linkemu {}: the event loop thread panicked", self.local);
        }
    }

    fn command(&self, cmd: Cmd) -> Result<(), LinkEmuError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.cmds
            .send((cmd, tx))
            .map_err(|_| LinkEmuError::Stopped)?;
        self.waker.wake().map_err(|_| LinkEmuError::Stopped)?;
        match rx.recv_timeout(COMMAND_TIMEOUT) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(LinkEmuError::Timeout),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(LinkEmuError::Stopped),
        }
    }
}

impl Drop for LinkEmu {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl fmt::Debug for LinkEmu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkEmu")
            .field("local", &self.local)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

/// A listener whose accepted sockets inherit `rcvbuf` (it must be set before
/// listen() for the window scale of accepted connections to match it).
fn listen(addr: SocketAddr, rcvbuf: Option<usize>) -> io::Result<mio::net::TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    sock.set_reuse_address(true)?;
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n)?;
    }
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    sock.set_nonblocking(true)?;
    Ok(mio::net::TcpListener::from_std(sock.into()))
}
