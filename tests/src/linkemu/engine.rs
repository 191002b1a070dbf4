//! The link emulator's event loop: one `mio` poll for the listener, every
//! relayed socket and the command waker. Each wake-up applies pending
//! commands, then pumps every live connection (read into the per-direction
//! queue, write what the delay and the token bucket allow), publishes what
//! changed to the shared snapshot, and sleeps until the next readiness event
//! or the earliest time a queued byte or a token becomes due.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};

use super::{Cmd, ConnInfo, ConnState, Dir, LinkConfig, LinkEmuError, Reply, Shape, Shared};

const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);

const READ_CHUNK: usize = 64 * 1024;
/// Queue room beyond `rate × delay`, so that neither a full read nor timer
/// jitter ever makes the queue limit, rather than the rate, the bottleneck.
const QUEUE_SLACK_BYTES: usize = 64 * 1024;
const QUEUE_SLACK_TIME: f64 = 0.020;
/// Without a rate the delay queue cannot be sized from `rate × delay`.
const UNCAPPED_DELAY_QUEUE: usize = 16 * 1024 * 1024;
/// Tokens an idle flow may save up: the largest burst above the rate.
const IDLE_BURST: f64 = 0.005;
/// Tokens a backlogged flow may save up, so a late wake-up (a busy machine)
/// is made good instead of lost.
const BACKLOG_BURST: f64 = 0.050;
/// Read/write rounds per connection per wake-up before moving on to the
/// others, for fairness between connections.
const ROUNDS: usize = 8;
/// After a close-after, how long the relay keeps reading (and discarding)
/// so its close does not turn into an RST because of unread data.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

const CLIENT: usize = 0;
const UPSTREAM: usize = 1;
const UP: usize = 0;
const DOWN: usize = 1;

fn bytes_per_sec(mbit: f64) -> f64 {
    mbit * 125_000.0
}

/// Smallest write while rate-limited: fewer, larger writes cost less CPU and
/// 1 ms of data keeps the rate smooth at the loop's timer granularity.
fn quantum(rate: f64) -> f64 {
    (rate * 0.001).clamp(1460.0, 16384.0)
}

fn idle_burst(rate: f64) -> f64 {
    (rate * IDLE_BURST).max(2.0 * quantum(rate))
}

fn backlog_burst(rate: f64) -> f64 {
    (rate * BACKLOG_BURST).max(idle_burst(rate))
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

struct Chunk {
    due: Instant,
    data: Vec<u8>,
    off: usize,
}

/// One direction of a connection.
struct Flow {
    shape: Shape,
    /// Bytes per second, from `shape.rate_mbit`.
    rate: Option<f64>,
    tokens: f64,
    last_refill: Instant,
    backlogged: bool,
    queue: VecDeque<Chunk>,
    queued: usize,
    /// The source sent FIN.
    eof: bool,
    /// The FIN was passed on to the destination.
    fin_sent: bool,
    forwarded: u64,
}

impl Flow {
    fn new(shape: Shape, now: Instant) -> Flow {
        let rate = shape.rate_mbit.map(bytes_per_sec);
        Flow {
            shape,
            rate,
            tokens: rate.map_or(0.0, idle_burst),
            last_refill: now,
            backlogged: false,
            queue: VecDeque::new(),
            queued: 0,
            eof: false,
            fin_sent: false,
            forwarded: 0,
        }
    }

    fn limit(&self) -> usize {
        let delay = self.shape.delay_ms as f64 / 1000.0;
        let base = match self.rate {
            Some(r) => (r * (delay + QUEUE_SLACK_TIME)) as usize,
            None if self.shape.delay_ms > 0 => UNCAPPED_DELAY_QUEUE,
            None => 0,
        };
        base + QUEUE_SLACK_BYTES
    }

    fn refill(&mut self, now: Instant) {
        if let Some(rate) = self.rate {
            let elapsed = now
                .saturating_duration_since(self.last_refill)
                .as_secs_f64();
            let cap = if self.backlogged {
                backlog_burst(rate)
            } else {
                idle_burst(rate)
            };
            self.tokens = (self.tokens + elapsed * rate).min(cap);
        }
        self.last_refill = now;
    }

    fn set_rate(&mut self, mbit: Option<f64>, now: Instant) {
        self.refill(now);
        self.shape.rate_mbit = mbit;
        self.rate = mbit.map(bytes_per_sec);
        self.tokens = match self.rate {
            Some(r) => self.tokens.min(idle_burst(r)),
            None => 0.0,
        };
        self.backlogged = false;
    }

    fn discard(&mut self) {
        self.queue.clear();
        self.queued = 0;
    }
}

#[derive(Clone, Copy, Default)]
struct Ready {
    read: bool,
    write: bool,
}

struct Conn {
    id: usize,
    client: TcpStream,
    client_addr: SocketAddr,
    upstream: Option<TcpStream>,
    upstream_local: Option<SocketAddr>,
    connected: bool,
    /// Edge-triggered readiness, indexed by `CLIENT`/`UPSTREAM`; cleared on
    /// `WouldBlock`.
    ready: [Ready; 2],
    /// Indexed by `UP`/`DOWN`.
    flows: [Flow; 2],
    blackholed: bool,
    close_after: Option<(Dir, u64)>,
    /// Set once a close-after fired: FIN sent both ways, discarding input
    /// until both peers close or the deadline passes.
    draining: Option<Instant>,
    drain_eof: [bool; 2],
    state: ConnState,
    /// Set when the connection is over; it is published, then dropped.
    ended: bool,
    opened: Instant,
    dirty: bool,
}

impl Conn {
    fn info(&self) -> ConnInfo {
        ConnInfo {
            id: self.id,
            client: self.client_addr,
            upstream_local: self.upstream_local,
            bytes_up: self.flows[UP].forwarded,
            bytes_down: self.flows[DOWN].forwarded,
            queued_up: self.flows[UP].queued as u64,
            queued_down: self.flows[DOWN].queued as u64,
            state: self.state,
            up: self.flows[UP].shape,
            down: self.flows[DOWN].shape,
        }
    }

    fn set_state(&mut self, st: ConnState) {
        if self.state != st {
            self.state = st;
            self.dirty = true;
        }
    }

    /// Live and not closing: the target of fault and shaping commands.
    fn commandable(&self) -> bool {
        !self.ended && self.draining.is_none()
    }

    fn socket(&self, side: usize) -> Option<&TcpStream> {
        if side == CLIENT {
            Some(&self.client)
        } else {
            self.upstream.as_ref()
        }
    }

    fn finish(&mut self, st: ConnState, why: &str) {
        if self.ended {
            return;
        }
        if st == ConnState::Reset {
            for side in [CLIENT, UPSTREAM] {
                if let Some(s) = self.socket(side) {
                    // SO_LINGER 0 makes the close below send RST, not FIN.
                    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
                }
            }
        }
        for f in &mut self.flows {
            f.discard();
        }
        self.ended = true;
        self.set_state(st);
        log::info!(
            "conn {} {} {st} ({why}): up {} B, down {} B, {:.2} s",
            self.id,
            self.client_addr,
            self.flows[UP].forwarded,
            self.flows[DOWN].forwarded,
            self.opened.elapsed().as_secs_f64()
        );
    }

    /// Sends FIN both ways now, then drains both sockets before closing.
    fn begin_close(&mut self, why: &str) {
        let now = Instant::now();
        for f in &mut self.flows {
            f.discard();
        }
        let _ = self.client.shutdown(Shutdown::Write);
        if self.connected {
            if let Some(u) = &self.upstream {
                let _ = u.shutdown(Shutdown::Write);
            }
        } else {
            // An unfinished connect has nothing to drain.
            self.upstream = None;
            self.drain_eof[UPSTREAM] = true;
        }
        self.draining = Some(now + DRAIN_TIMEOUT);
        self.set_state(ConnState::Closed);
        log::info!(
            "conn {} {} closing with FIN ({why}): up {} B, down {} B, {:.2} s",
            self.id,
            self.client_addr,
            self.flows[UP].forwarded,
            self.flows[DOWN].forwarded,
            self.opened.elapsed().as_secs_f64()
        );
    }

    /// A socket failed (peer RST, or a write to a peer that is gone): the
    /// other peer is reset too, as it would be end to end.
    fn peer_failed(&mut self, side: usize, e: &io::Error) {
        let who = if side == CLIENT { "client" } else { "upstream" };
        self.finish(ConnState::Reset, &format!("{who} socket: {e}"));
    }

    fn count_close_after(&mut self, d: usize, n: usize) -> bool {
        if let Some((dir, left)) = &mut self.close_after {
            let counts = if d == UP {
                dir.includes_up()
            } else {
                dir.includes_down()
            };
            if counts {
                *left = left.saturating_sub(n as u64);
                return *left == 0;
            }
        }
        false
    }

    fn close_after_left(&self, d: usize) -> Option<u64> {
        let (dir, left) = self.close_after?;
        let counts = if d == UP {
            dir.includes_up()
        } else {
            dir.includes_down()
        };
        counts.then_some(left)
    }
}

/// What `process` needs from the engine besides the connection itself.
struct Ctx<'a> {
    outage: bool,
    upstream: SocketAddr,
    sock_buf: Option<usize>,
    registry: &'a Registry,
    scratch: &'a mut [u8],
}

pub(super) struct Engine {
    poll: Poll,
    listener: TcpListener,
    cfg: LinkConfig,
    rx: Receiver<(Cmd, Reply)>,
    shared: Arc<Shared>,
    defaults: [Shape; 2],
    outage: bool,
    conns: BTreeMap<usize, Conn>,
    next_id: usize,
    scratch: Vec<u8>,
    accept_retry: Option<Instant>,
}

impl Engine {
    pub(super) fn new(
        mut listener: TcpListener,
        cfg: LinkConfig,
        rx: Receiver<(Cmd, Reply)>,
        shared: Arc<Shared>,
    ) -> io::Result<(Engine, Waker)> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let defaults = [cfg.up, cfg.down];
        Ok((
            Engine {
                poll,
                listener,
                cfg,
                rx,
                shared,
                defaults,
                outage: false,
                conns: BTreeMap::new(),
                next_id: 0,
                scratch: vec![0; READ_CHUNK],
                accept_retry: None,
            },
            waker,
        ))
    }

    pub(super) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut deadline: Option<Instant> = None;
        let mut shutdown_reply = None;
        while shutdown_reply.is_none() {
            let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("linkemu {}: poll failed, stopping: {e}", self.cfg.listen);
                break;
            }
            let mut accept = false;
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => accept = true,
                    WAKER => {}
                    Token(t) => self.on_event(t / 2, t % 2, ev),
                }
            }
            if accept || self.accept_retry.is_some_and(|t| t <= Instant::now()) {
                self.accept();
            }
            let mut replies = Vec::new();
            while let Ok((cmd, reply)) = self.rx.try_recv() {
                if let Cmd::Shutdown = cmd {
                    shutdown_reply = Some(reply);
                    break;
                }
                replies.push((reply, self.apply(cmd)));
            }
            deadline = earliest(self.process_all(), self.accept_retry);
            self.publish();
            // Replies go out after the effect is published, so a caller sees
            // the new state as soon as its command returns.
            for (reply, r) in replies {
                let _ = reply.try_send(r);
            }
        }
        for c in self.conns.values_mut() {
            if !c.ended {
                let why = "emulator shutting down";
                if c.draining.is_some() {
                    c.ended = true;
                } else {
                    c.finish(ConnState::Closed, why);
                }
            }
        }
        self.publish();
        self.shared.lock().running = false;
        self.shared.changed.notify_all();
        if let Some(reply) = shutdown_reply {
            let _ = reply.try_send(Ok(()));
        }
    }

    fn on_event(&mut self, id: usize, side: usize, ev: &mio::event::Event) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let r = &mut c.ready[side];
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            r.read = true;
        }
        if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
            r.write = true;
        }
        if side == UPSTREAM && !c.connected && !c.ended {
            check_connect(c, self.cfg.upstream);
        }
    }

    fn accept(&mut self) {
        self.accept_retry = None;
        loop {
            match self.listener.accept() {
                Ok((stream, addr)) => self.add_conn(stream, addr),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // E.g. out of file descriptors: the pending connection
                    // stays queued and no new edge may come, so poll again.
                    log::warn!("linkemu {}: accept failed: {e}", self.cfg.listen);
                    self.accept_retry = Some(Instant::now() + ACCEPT_RETRY);
                    break;
                }
            }
        }
    }

    fn add_conn(&mut self, mut stream: TcpStream, addr: SocketAddr) {
        let id = self.next_id;
        self.next_id += 1;
        let now = Instant::now();
        // The relay must not add Nagle delays of its own.
        let _ = stream.set_nodelay(true);
        let reg = self.poll.registry().register(
            &mut stream,
            Token(2 * id),
            Interest::READABLE | Interest::WRITABLE,
        );
        let mut c = Conn {
            id,
            client: stream,
            client_addr: addr,
            upstream: None,
            upstream_local: None,
            connected: false,
            ready: [Ready::default(); 2],
            flows: [
                Flow::new(self.defaults[UP], now),
                Flow::new(self.defaults[DOWN], now),
            ],
            blackholed: false,
            close_after: None,
            draining: None,
            drain_eof: [false; 2],
            state: ConnState::Connecting,
            ended: false,
            opened: now,
            dirty: true,
        };
        log::info!("conn {id} {addr} accepted");
        if let Err(e) = reg {
            c.finish(ConnState::Reset, &format!("cannot register socket: {e}"));
        }
        self.conns.insert(id, c);
    }

    fn apply(&mut self, cmd: Cmd) -> Result<(), LinkEmuError> {
        let now = Instant::now();
        match cmd {
            Cmd::Reset(id) => {
                self.target(id)?
                    .finish(ConnState::Reset, "reset by command");
            }
            Cmd::Blackhole(id) => {
                let c = self.target(id)?;
                c.blackholed = true;
                log::info!("conn {id} black-holed");
            }
            Cmd::Restore(id) => {
                let c = self.target(id)?;
                c.blackholed = false;
                log::info!("conn {id} restored");
            }
            Cmd::CloseAfter(id, dir, n) => {
                let c = self.target(id)?;
                if n == 0 {
                    c.begin_close("close-after 0");
                } else {
                    c.close_after = Some((dir, n));
                }
            }
            Cmd::SetRate(target, dir, mbit) => {
                self.for_flows(
                    target,
                    dir,
                    |f| f.set_rate(mbit, now),
                    |s| s.rate_mbit = mbit,
                )?;
            }
            Cmd::SetDelay(target, dir, ms) => {
                self.for_flows(target, dir, |f| f.shape.delay_ms = ms, |s| s.delay_ms = ms)?;
            }
            Cmd::Outage(on) => {
                if on != self.outage {
                    log::info!("outage {}", if on { "on" } else { "off" });
                }
                self.outage = on;
            }
            Cmd::Shutdown => {}
        }
        Ok(())
    }

    fn target(&mut self, id: usize) -> Result<&mut Conn, LinkEmuError> {
        if id >= self.next_id {
            return Err(LinkEmuError::NoSuchConnection(id));
        }
        match self.conns.get_mut(&id) {
            Some(c) if c.commandable() => Ok(c),
            Some(c) => Err(LinkEmuError::Ended(id, c.state)),
            None => {
                let st = self
                    .shared
                    .lock()
                    .conns
                    .get(id)
                    .map_or(ConnState::Closed, |c| c.state);
                Err(LinkEmuError::Ended(id, st))
            }
        }
    }

    /// Applies a shaping change to one connection, or to all live ones and
    /// the defaults for new ones.
    fn for_flows(
        &mut self,
        target: Option<usize>,
        dir: Dir,
        mut flow: impl FnMut(&mut Flow),
        mut default: impl FnMut(&mut Shape),
    ) -> Result<(), LinkEmuError> {
        let mut one = |c: &mut Conn| {
            if dir.includes_up() {
                flow(&mut c.flows[UP]);
            }
            if dir.includes_down() {
                flow(&mut c.flows[DOWN]);
            }
            c.dirty = true;
        };
        match target {
            Some(id) => one(self.target(id)?),
            None => {
                for c in self.conns.values_mut().filter(|c| c.commandable()) {
                    one(c);
                }
                if dir.includes_up() {
                    default(&mut self.defaults[UP]);
                }
                if dir.includes_down() {
                    default(&mut self.defaults[DOWN]);
                }
            }
        }
        Ok(())
    }

    fn process_all(&mut self) -> Option<Instant> {
        let mut ctx = Ctx {
            outage: self.outage,
            upstream: self.cfg.upstream,
            sock_buf: self.cfg.sock_buf,
            registry: self.poll.registry(),
            scratch: &mut self.scratch,
        };
        let mut next = None;
        for c in self.conns.values_mut() {
            next = earliest(next, process(c, &mut ctx));
        }
        next
    }

    /// Copies what changed into the shared snapshot, wakes waiters, and
    /// drops connections that have ended (closing their sockets).
    fn publish(&mut self) {
        let mut snap = self.shared.lock();
        let mut changed = false;
        if snap.outage != self.outage
            || snap.default_up != self.defaults[UP]
            || snap.default_down != self.defaults[DOWN]
        {
            snap.outage = self.outage;
            snap.default_up = self.defaults[UP];
            snap.default_down = self.defaults[DOWN];
            changed = true;
        }
        for c in self.conns.values_mut().filter(|c| c.dirty) {
            c.dirty = false;
            changed = true;
            let info = c.info();
            // Ids are handed out in order and every connection is published
            // in the iteration that accepted it, so `id` is at most `len`.
            if c.id < snap.conns.len() {
                snap.conns[c.id] = info;
            } else {
                snap.conns.push(info);
            }
        }
        drop(snap);
        if changed {
            self.shared.changed.notify_all();
        }
        self.conns.retain(|_, c| !c.ended);
    }
}

fn check_connect(c: &mut Conn, upstream: SocketAddr) {
    let Some(s) = &c.upstream else { return };
    let err = match s.take_error() {
        Ok(Some(e)) | Err(e) => Some(e),
        Ok(None) => match s.peer_addr() {
            Ok(_) => None,
            // Not connected yet: a later event will tell.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
            Err(e) => Some(e),
        },
    };
    match err {
        None => {
            c.connected = true;
            c.upstream_local = s.local_addr().ok().or(c.upstream_local);
            c.dirty = true;
            log::debug!(
                "conn {} {} connected to upstream {upstream} from {:?}",
                c.id,
                c.client_addr,
                c.upstream_local
            );
        }
        Some(e) => connect_failed(c, upstream, &e),
    }
}

fn connect_failed(c: &mut Conn, upstream: SocketAddr, e: &io::Error) {
    let msg = if e.kind() == io::ErrorKind::ConnectionRefused {
        format!("upstream {upstream} refused the connection")
    } else {
        format!("cannot connect to upstream {upstream}: {e}")
    };
    log::error!(
        "conn {} {}: {msg}; resetting the client",
        c.id,
        c.client_addr
    );
    c.finish(ConnState::Reset, &msg);
}

fn start_upstream(c: &mut Conn, ctx: &mut Ctx) {
    let mut s = match connect(ctx.upstream, ctx.sock_buf) {
        Ok(s) => s,
        Err(e) => return connect_failed(c, ctx.upstream, &e),
    };
    let _ = s.set_nodelay(true);
    if let Err(e) = ctx.registry.register(
        &mut s,
        Token(2 * c.id + 1),
        Interest::READABLE | Interest::WRITABLE,
    ) {
        c.finish(ConnState::Reset, &format!("cannot register socket: {e}"));
        return;
    }
    c.upstream_local = s.local_addr().ok();
    c.upstream = Some(s);
    c.dirty = true;
}

/// Advances one connection as far as it can go now; returns when it next
/// needs attention without a readiness event.
fn process(c: &mut Conn, ctx: &mut Ctx) -> Option<Instant> {
    if c.ended {
        return None;
    }
    if let Some(deadline) = c.draining {
        return drain(c, ctx, deadline);
    }
    if c.blackholed || ctx.outage {
        c.set_state(ConnState::Blackholed);
        for f in &mut c.flows {
            f.backlogged = false;
        }
        return None;
    }
    if c.upstream.is_none() {
        start_upstream(c, ctx);
        if c.ended {
            return None;
        }
    }
    if !c.connected {
        c.set_state(ConnState::Connecting);
        return None;
    }
    c.set_state(ConnState::Open);
    let mut next = None;
    for d in [UP, DOWN] {
        next = earliest(next, pump(c, d, ctx));
        if c.ended || c.draining.is_some() {
            return c.draining;
        }
    }
    if c.flows[UP].fin_sent && c.flows[DOWN].fin_sent {
        c.finish(ConnState::Closed, "FIN both ways");
        return None;
    }
    next
}

/// Moves one direction: reads while the queue has room, writes what is due
/// and paid for, passes on a FIN once the queue is empty.
fn pump(c: &mut Conn, d: usize, ctx: &mut Ctx) -> Option<Instant> {
    let (src, dst) = if d == UP {
        (CLIENT, UPSTREAM)
    } else {
        (UPSTREAM, CLIENT)
    };
    for _ in 0..ROUNDS {
        let mut progress = false;
        let f = &c.flows[d];
        if c.ready[src].read && !f.eof && f.queued < f.limit() {
            let sock = c.socket(src).expect("connected");
            match (&*sock).read(ctx.scratch) {
                Ok(0) => {
                    c.flows[d].eof = true;
                    progress = true;
                }
                Ok(n) => {
                    let f = &mut c.flows[d];
                    let due = Instant::now() + Duration::from_millis(f.shape.delay_ms);
                    f.queue.push_back(Chunk {
                        due,
                        data: ctx.scratch[..n].to_vec(),
                        off: 0,
                    });
                    f.queued += n;
                    c.dirty = true;
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.ready[src].read = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                Err(e) => {
                    c.peer_failed(src, &e);
                    return None;
                }
            }
        }

        let now = Instant::now();
        c.flows[d].refill(now);
        let mut wait = None;
        let mut short_of_tokens = false;
        while c.ready[dst].write {
            let left = c.close_after_left(d);
            let f = &mut c.flows[d];
            let Some(head) = f.queue.front_mut() else {
                break;
            };
            if head.due > now {
                wait = Some(head.due);
                break;
            }
            let rem = head.data.len() - head.off;
            let mut n = rem;
            if let Some(rate) = f.rate {
                let want = (rem as f64).min(quantum(rate));
                if f.tokens < want {
                    short_of_tokens = true;
                    let secs = (want - f.tokens) / rate;
                    wait = Some(now + Duration::from_secs_f64(secs));
                    break;
                }
                n = n.min(f.tokens as usize);
            }
            if let Some(left) = left {
                n = n.min(usize::try_from(left).unwrap_or(usize::MAX));
            }
            let sock = if dst == CLIENT {
                &c.client
            } else {
                c.upstream.as_ref().expect("connected")
            };
            match (&*sock).write(&head.data[head.off..head.off + n]) {
                Ok(0) => {
                    let e = io::Error::new(io::ErrorKind::WriteZero, "write returned 0");
                    c.peer_failed(dst, &e);
                    return None;
                }
                Ok(w) => {
                    head.off += w;
                    if head.off == head.data.len() {
                        f.queue.pop_front();
                    }
                    f.queued -= w;
                    f.forwarded += w as u64;
                    if f.rate.is_some() {
                        f.tokens -= w as f64;
                    }
                    c.dirty = true;
                    progress = true;
                    if c.count_close_after(d, w) {
                        c.begin_close("close-after reached");
                        return c.draining;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.ready[dst].write = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    c.peer_failed(dst, &e);
                    return None;
                }
            }
        }
        // Only waiting for tokens (not for the peer, not for data) counts as
        // backlogged, which lets the bucket make good a late wake-up.
        c.flows[d].backlogged = short_of_tokens;

        let f = &mut c.flows[d];
        if f.eof && f.queue.is_empty() && !f.fin_sent {
            f.fin_sent = true;
            progress = true;
            let sock = c.socket(dst).expect("connected");
            if let Err(e) = sock.shutdown(Shutdown::Write) {
                log::debug!("conn {}: passing on FIN failed: {e}", c.id);
            }
        }
        if !progress {
            return wait;
        }
    }
    // Still making progress after the round budget: others get a turn, and
    // this connection continues in the very next iteration.
    Some(Instant::now())
}

fn drain(c: &mut Conn, ctx: &mut Ctx, deadline: Instant) -> Option<Instant> {
    for side in [CLIENT, UPSTREAM] {
        while !c.drain_eof[side] && c.ready[side].read {
            let Some(sock) = c.socket(side) else {
                c.drain_eof[side] = true;
                break;
            };
            match (&*sock).read(ctx.scratch) {
                Ok(0) => c.drain_eof[side] = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.ready[side].read = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => c.drain_eof[side] = true,
            }
        }
    }
    if c.drain_eof == [true, true] || Instant::now() >= deadline {
        // The close was logged when the FINs went out.
        c.ended = true;
        c.dirty = true;
        return None;
    }
    Some(deadline)
}

/// A non-blocking connect with the receive buffer set first (for the window
/// scale), so the upstream's sender is bounded like the client's.
fn connect(addr: SocketAddr, rcvbuf: Option<usize>) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n)?;
    }
    sock.set_nonblocking(true)?;
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(sock.into()))
}
