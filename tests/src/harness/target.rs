//! [`Target`], the TCP server a tunnel relays to, and its connection
//! handlers ([`echo`], [`exchange`], [`reset_after`]), each reporting what
//! its connection saw. The far end of a test, apart from the near end's
//! helpers.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{
    Digest, Digester, Pattern, Received, lock, poll_until, receive, send, spawn_small,
    with_timeouts,
};

/// What one target connection saw.
#[derive(Clone, Debug, Default)]
pub struct ConnReport {
    /// What it read (for handlers that read to the end).
    pub received: Option<Received>,
    /// What it wrote.
    pub sent: Option<Digest>,
    /// The error that stopped its writing, if any.
    pub send_error: Option<io::ErrorKind>,
    /// When it reset the connection (for [`reset_after`]).
    pub reset_at: Option<Instant>,
}

type Handler = dyn Fn(usize, TcpStream) -> ConnReport + Send + Sync;

struct TargetShared {
    reports: Mutex<Vec<(usize, ConnReport)>>,
    changed: Condvar,
    live: AtomicUsize,
    peak: AtomicUsize,
    accepted: AtomicUsize,
    stop: AtomicBool,
}

/// A TCP server on loopback running `handler(index, stream)` on its own
/// thread for each accepted connection (index in accept order, from 0).
pub struct Target {
    addr: SocketAddr,
    shared: Arc<TargetShared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Target {
    /// Listens on a free loopback port.
    pub fn start(
        handler: impl Fn(usize, TcpStream) -> ConnReport + Send + Sync + 'static,
    ) -> Target {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind target");
        Target::with_listener(l, Arc::new(handler))
    }

    /// Listens on `addr` (e.g. a port a test has just seen refused).
    pub fn start_on(
        addr: SocketAddr,
        handler: impl Fn(usize, TcpStream) -> ConnReport + Send + Sync + 'static,
    ) -> Target {
        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind target on {addr}: {e}"));
        Target::with_listener(l, Arc::new(handler))
    }

    fn with_listener(l: TcpListener, handler: Arc<Handler>) -> Target {
        let addr = l.local_addr().unwrap();
        let shared = Arc::new(TargetShared {
            reports: Mutex::new(Vec::new()),
            changed: Condvar::new(),
            live: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let sh = shared.clone();
        let acceptor = thread::Builder::new()
            .name(format!("target-{}", addr.port()))
            .spawn(move || {
                for (i, conn) in l.incoming().enumerate() {
                    if sh.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(s) = conn else { continue };
                    sh.accepted.fetch_add(1, Ordering::SeqCst);
                    let live = sh.live.fetch_add(1, Ordering::SeqCst) + 1;
                    sh.peak.fetch_max(live, Ordering::SeqCst);
                    let (sh, h) = (sh.clone(), handler.clone());
                    spawn_small(&format!("target-conn-{i}"), move || {
                        let report = h(i, with_timeouts(s));
                        sh.live.fetch_sub(1, Ordering::SeqCst);
                        lock(&sh.reports).push((i, report));
                        sh.changed.notify_all();
                    });
                }
            })
            .expect("spawn target acceptor");
        Target {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections whose handler is still running.
    pub fn live(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// Most connections whose handlers ran at the same time.
    pub fn peak_live(&self) -> usize {
        self.shared.peak.load(Ordering::SeqCst)
    }

    /// Waits until `n` handlers have finished; returns their reports in
    /// accept order, or panics after `timeout`.
    #[track_caller]
    pub fn wait_reports(&self, n: usize, timeout: Duration) -> Vec<ConnReport> {
        let g = lock(&self.shared.reports);
        let (mut g, _) = self
            .shared
            .changed
            .wait_timeout_while(g, timeout, |r| r.len() < n)
            .unwrap_or_else(|e| e.into_inner());
        assert!(
            g.len() >= n,
            "target: {} of {n} connections finished within {timeout:?} ({} accepted)",
            g.len(),
            self.accepted()
        );
        g.sort_by_key(|(i, _)| *i);
        g.iter().map(|(_, r)| r.clone()).collect()
    }

    /// Waits for the first connection's handler and asserts that it read
    /// exactly `want`, then a clean end of stream.
    #[track_caller]
    pub fn assert_read_exactly(&self, want: &[u8], timeout: Duration) {
        let seen = self.wait_reports(1, timeout)[0]
            .received
            .clone()
            .expect("the handler reads");
        assert!(seen.eof && seen.error.is_none(), "{seen:?}");
        assert_eq!(seen.digest, super::digest(want), "at the target");
    }

    /// Waits until at least `n` connections have been accepted.
    pub fn wait_accepted(&self, n: usize, timeout: Duration) -> bool {
        poll_until(timeout, Duration::from_millis(1), || self.accepted() >= n)
    }

    /// Waits until `pred` holds for the live handler count.
    pub fn wait_live(&self, timeout: Duration, pred: impl Fn(usize) -> bool) -> bool {
        poll_until(timeout, Duration::from_millis(10), || pred(self.live()))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept; it sees the stop flag and returns.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// Handler: writes back everything it reads; half-closes on EOF.
pub fn echo(_: usize, mut s: TcpStream) -> ConnReport {
    let mut d = Digester::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut report = ConnReport::default();
    let mut received = Received::default();
    loop {
        match s.read(&mut buf) {
            Ok(0) => {
                received.eof = true;
                let _ = s.shutdown(Shutdown::Write);
                break;
            }
            Ok(n) => {
                if let Err(e) = s.write_all(&buf[..n]) {
                    report.send_error = Some(e.kind());
                    break;
                }
                d.update(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                received.error = Some(e.kind());
                break;
            }
        }
    }
    received.digest = d.digest();
    received.ended = Some(Instant::now());
    report.sent = Some(received.digest);
    report.received = Some(received);
    report
}

/// Handler: reads to EOF checking `expect`, while sending `reply_len`
/// bytes of `reply` (after the EOF if `after_eof`); then closes.
pub fn exchange(
    s: TcpStream,
    expect: &Pattern,
    reply: &Pattern,
    reply_len: u64,
    after_eof: bool,
) -> ConnReport {
    let mut report = ConnReport::default();
    let mut w = s.try_clone().expect("clone socket");
    let writer = (!after_eof).then(|| {
        let reply = reply.clone();
        spawn_small("target-writer", move || {
            let r = send(&mut w, &reply, reply_len, None);
            let _ = w.shutdown(Shutdown::Write);
            r
        })
    });
    let mut r = s;
    let got = receive(&mut r, Some(expect));
    let sent = match writer {
        Some(t) => t.join().expect("target writer panicked"),
        None if got.eof => {
            let res = send(&mut r, reply, reply_len, None);
            let _ = r.shutdown(Shutdown::Write);
            res
        }
        None => Err(io::ErrorKind::ConnectionAborted.into()),
    };
    match sent {
        Ok(d) => report.sent = Some(d),
        Err(e) => report.send_error = Some(e.kind()),
    }
    report.received = Some(got);
    report
}

/// Handler: reads at least `n` bytes, then resets the connection (RST:
/// `SO_LINGER` 0, then close).
pub fn reset_after(mut s: TcpStream, n: u64) -> ConnReport {
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    while got < n {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(m) => got += m as u64,
        }
    }
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(s);
    ConnReport {
        received: Some(Received {
            digest: Digest { len: got, crc: 0 },
            ..Received::default()
        }),
        reset_at: Some(Instant::now()),
        ..ConnReport::default()
    }
}
