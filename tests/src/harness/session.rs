//! Checked echo sessions through a tunnel: one run to its end
//! ([`assert_echo_session`]), or one held open ([`HeldSession`]) while a
//! test does something else to the tunnel. Built on the data and thread
//! helpers; kept apart because of the paced, gated writer.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

#[cfg(doc)]
use super::echo;
use super::{
    Digest, Gate, Pattern, Pending, Received, background, connect, exchange_on, poll_until,
    receive_counting, send,
};

/// One normal session: `len` bytes each way at once through `tunnel`
/// (whose target must be an [`echo`] target), checked byte for byte.
#[track_caller]
pub fn assert_echo_session(tunnel_addr: SocketAddr, seed: u64, len: u64) {
    let pat = Pattern::new(seed);
    let (sent, got) = exchange_on(connect(tunnel_addr), &pat, len, Some(&pat));
    let sent = sent.expect("send through the tunnel");
    got.assert_intact("echo session", sent, &pat, len);
}

/// A session kept alive on purpose while a test does something else to the
/// tunnel: `len` bytes of a pattern sent on a connection whose far end
/// echoes (an [`echo`] target), optionally at most `rate` bytes/s, and
/// paused after `hold_at` bytes until [`HeldSession::release`]; a reader
/// checks every byte that comes back.
pub struct HeldSession {
    pattern: Pattern,
    len: u64,
    gate: Arc<Gate>,
    echoed: Arc<AtomicU64>,
    writer: Pending<io::Result<Digest>>,
    reader: Pending<Received>,
}

/// How long a [`HeldSession`] writer waits for its release.
const HOLD_LIMIT: Duration = Duration::from_secs(120);

impl HeldSession {
    pub fn start(
        stream: TcpStream,
        pattern: Pattern,
        len: u64,
        hold_at: u64,
        rate: Option<u64>,
    ) -> HeldSession {
        let gate = Arc::new(Gate::default());
        let echoed = Arc::new(AtomicU64::new(0));
        let mut w = Held {
            inner: stream.try_clone().expect("clone socket"),
            gate: gate.clone(),
            hold_at,
            rate,
            written: 0,
            started: Instant::now(),
        };
        let pat = pattern.clone();
        let writer = background("held-writer", move || {
            let r = send(&mut w, &pat, len, None);
            let _ = w.inner.shutdown(Shutdown::Write);
            r
        });
        let (pat, progress) = (pattern.clone(), echoed.clone());
        let mut r = stream;
        let reader = background("held-reader", move || {
            receive_counting(&mut r, Some(&pat), Some(&progress))
        });
        HeldSession {
            pattern,
            len,
            gate,
            echoed,
            writer,
            reader,
        }
    }

    /// Bytes echoed back so far (checked as they arrived).
    pub fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` bytes have come back.
    pub fn wait_echoed(&self, n: u64, timeout: Duration) -> bool {
        poll_until(timeout, Duration::from_millis(5), || self.echoed() >= n)
    }

    /// Lets the writer go on past `hold_at`.
    pub fn release(&self) {
        self.gate.open();
    }

    /// Releases the writer and waits for both directions to end; fails
    /// the test unless all `len` bytes went out and came back intact.
    #[track_caller]
    pub fn finish(self, what: &str, timeout: Duration) -> Received {
        self.release();
        let sent = self.writer.wait(timeout);
        let got = self.reader.wait(timeout);
        let sent = sent.unwrap_or_else(|e| panic!("{what}: sending failed: {e}"));
        got.assert_intact(what, sent, &self.pattern, self.len);
        got
    }
}

/// The writing side of a [`HeldSession`]: paced, and paused at `hold_at`.
struct Held {
    inner: TcpStream,
    gate: Arc<Gate>,
    hold_at: u64,
    rate: Option<u64>,
    written: u64,
    started: Instant,
}

impl Write for Held {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut n = buf.len().min(64 * 1024);
        if self.written < self.hold_at {
            n = n.min((self.hold_at - self.written) as usize);
        } else if !self.gate.wait(HOLD_LIMIT) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "held session never released",
            ));
        }
        if let Some(rate) = self.rate {
            let due = self.started + Duration::from_secs_f64(self.written as f64 / rate as f64);
            thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let n = self.inner.write(&buf[..n])?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
