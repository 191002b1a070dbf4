//! The [`Engine`]: the `mio` poll loop, accepting connections, applying
//! commands and publishing the snapshot. Separate from the per-connection
//! relaying ([`super::relay`]) it drives once per wake-up.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::relay::{check_connect, process};
use super::{Conn, Ctx, DOWN, Flow, Ready, UP, UPSTREAM, earliest};
use crate::linkemu::{Cmd, ConnState, Dir, LinkConfig, LinkEmuError, Reply, Shape, Shared};

const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);

const READ_CHUNK: usize = 64 * 1024;
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

pub(in crate::linkemu) struct Engine {
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
    pub(in crate::linkemu) fn new(
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

    pub(in crate::linkemu) fn run(mut self) {
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
