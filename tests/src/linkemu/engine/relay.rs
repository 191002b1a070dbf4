//! Relaying one connection: connecting upstream, pumping each direction
//! through its delay queue and token bucket, passing on FINs, and draining
//! after a close-after. What the [`Engine`](super::Engine) runs for every
//! live connection on each wake-up, apart from the loop itself.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Token};

use super::{CLIENT, Chunk, Conn, Ctx, DOWN, UP, UPSTREAM, earliest, quantum};
use crate::linkemu::ConnState;

/// Read/write rounds per connection per wake-up before moving on to the
/// others, for fairness between connections.
const ROUNDS: usize = 8;

pub(super) fn check_connect(c: &mut Conn, upstream: SocketAddr) {
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
pub(super) fn process(c: &mut Conn, ctx: &mut Ctx) -> Option<Instant> {
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
