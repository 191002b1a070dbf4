//! The link emulator's event loop: one `mio` poll for the listener, every
//! relayed socket and the command waker. Each wake-up applies pending
//! commands, then pumps every live connection (read into the per-direction
//! queue, write what the delay and the token bucket allow), publishes what
//! changed to the shared snapshot, and sleeps until the next readiness event
//! or the earliest time a queued byte or a token becomes due.
//!
//! This file holds the state the loop works on (a connection's two flows,
//! their token buckets and delay queues, its close transitions);
//! [`event_loop`] holds the [`Engine`] itself (polling, accepting,
//! commands, publishing) and [`relay`] the moving of one connection's
//! bytes. The state sits here, in the parent, so both can use its fields
//! and methods without widening their visibility.

mod event_loop;
mod relay;

pub(super) use event_loop::Engine;

use std::collections::VecDeque;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::Registry;
use mio::net::TcpStream;

use super::{ConnInfo, ConnState, Dir, Shape};

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
/// After a close-after, how long the relay keeps reading (and discarding)
/// so its close does not turn into an RST because of unread data.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

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
