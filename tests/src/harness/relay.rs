//! A TCP relay on the path between stripe-client and stripe-server: what an
//! attacker there sees (it records the bytes of every connection, each
//! way) and what it can do (flip one byte). Separate from the tunnel
//! helpers: only the tests about the path use it.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::spawn_small;

/// The bytes of one relayed connection, each way (up to the relay's
/// `keep`).
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    /// Client to server.
    pub up: Vec<u8>,
    /// Server to client.
    pub down: Vec<u8>,
}

type Conns = Arc<Mutex<Vec<Recorded>>>;

pub struct Relay {
    addr: SocketAddr,
    conns: Conns,
    stop: Arc<AtomicBool>,
}

impl Relay {
    /// Relays to `upstream`, keeping the first `keep` bytes of each
    /// connection each way. With `flip`, one byte is flipped on the way: at
    /// that offset of the client-to-server bytes of the first connection
    /// that carries that far (which stripe carries how much is the
    /// scheduler's choice, so no one connection is sure to).
    pub fn start(upstream: SocketAddr, keep: usize, flip: Option<u64>) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let addr = l.local_addr().unwrap();
        let conns: Conns = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (c, st) = (conns.clone(), stop.clone());
        let flipped = Arc::new(AtomicBool::new(false));
        spawn_small("relay-accept", move || {
            for conn in l.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let (Ok(down), Ok(up)) = (conn, TcpStream::connect(upstream)) else {
                    continue;
                };
                let _ = (down.set_nodelay(true), up.set_nodelay(true));
                let i = {
                    let mut g = c.lock().unwrap();
                    g.push(Recorded::default());
                    g.len() - 1
                };
                let at = flip.map(|off| (off, flipped.clone()));
                let (d2, u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
                let (c1, c2) = (c.clone(), c.clone());
                spawn_small("relay-up", move || {
                    pump(down, up, keep, at, |b| {
                        c1.lock().unwrap()[i].up.extend_from_slice(b)
                    })
                });
                spawn_small("relay-down", move || {
                    pump(u2, d2, keep, None, |b| {
                        c2.lock().unwrap()[i].down.extend_from_slice(b)
                    })
                });
            }
        });
        Relay { addr, conns, stop }
    }

    /// Where clients connect instead of the server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What every connection carried so far.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.conns.lock().unwrap().clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Copies `from` to `to` until EOF (passed on as a half-close) or an error
/// (passed on by closing both), recording the first `keep` bytes and
/// flipping the byte at offset `flip.0` unless `flip.1` says one pump has
/// flipped a byte already.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    keep: usize,
    flip: Option<(u64, Arc<AtomicBool>)>,
    mut record: impl FnMut(&[u8]),
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = 0u64;
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                let k = n.min(keep.saturating_sub(at as usize));
                if k > 0 {
                    record(&buf[..k]);
                }
                if let Some((f, done)) = &flip
                    && (at..at + n as u64).contains(f)
                    && !done.swap(true, Ordering::SeqCst)
                {
                    buf[(f - at) as usize] ^= 0x20;
                }
                at += n as u64;
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
