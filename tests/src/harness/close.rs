//! How an application's connection ended ([`Closed`]) and the assertion
//! that a failed session is closed promptly. Separate from the data
//! checks: these tests care how a stream ends, not what it carried.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::{IO_TIMEOUT, with_timeouts};

/// How an application connection ended.
#[derive(Debug)]
pub struct Closed {
    /// Bytes read before the end.
    pub bytes: u64,
    /// EOF, or the error kind; `TimedOut` if it did not end.
    pub how: Result<(), io::ErrorKind>,
    pub at: Instant,
}

/// Reads until EOF, an error, or `limit` elapsed, handing what arrives to
/// `on_data`; returns how the stream ended: EOF, the error (a reset), or
/// `TimedOut` (also when the socket's read timeout fires first).
fn read_until_end(
    s: &mut TcpStream,
    limit: Duration,
    buf: &mut [u8],
    mut on_data: impl FnMut(&[u8]),
) -> Result<(), io::ErrorKind> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut);
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => on_data(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::ErrorKind::TimedOut);
            }
            Err(e) => return Err(e.kind()),
        }
    }
}

/// Reads (and discards) until EOF, an error, or `limit` elapsed.
pub fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Closed {
    let mut bytes = 0;
    let how = read_until_end(s, limit, &mut vec![0u8; 64 * 1024], |d| {
        bytes += d.len() as u64
    });
    Closed {
        bytes,
        how,
        at: Instant::now(),
    }
}

/// Reads until EOF, an error, or `limit` elapsed, keeping the bytes (for
/// a peer's short answers: a handshake, a final frame). Returns them and
/// how the stream ended: EOF, the error (a reset), or `TimedOut`.
pub fn read_to_close(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Result<(), io::ErrorKind>) {
    let mut got = Vec::new();
    let how = read_until_end(s, limit, &mut [0u8; 4096], |d| got.extend_from_slice(d));
    (got, how)
}

/// What an application saw of a session the tunnel failed: see
/// [`assert_closed_promptly`].
#[derive(Debug)]
pub struct AppClosed {
    /// The application's first write.
    pub wrote: io::Result<()>,
    /// How the connection ended.
    pub closed: Closed,
    /// From the write to the end.
    pub took: Duration,
}

/// Connects an application to `addr` (a stripe-client's listening port),
/// writes `msg` and reads until the connection ends; fails unless it was
/// closed (EOF or an error, not left open) within `prompt` of the write.
/// The read gives up `prompt` + 5 s after the write.
#[track_caller]
pub fn assert_closed_promptly(addr: SocketAddr, msg: &[u8], prompt: Duration) -> AppClosed {
    let started = Instant::now();
    // A tunnel that fails at once may reset the connection before the
    // connect call has returned: that is the prompt close asked for.
    let mut app = match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
        Ok(s) => with_timeouts(s),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
            let at = Instant::now();
            return AppClosed {
                wrote: Err(io::Error::from(io::ErrorKind::ConnectionReset)),
                closed: Closed {
                    bytes: 0,
                    how: Err(e.kind()),
                    at,
                },
                took: at - started,
            };
        }
        Err(e) => panic!("cannot connect to {addr}: {e}"),
    };
    let wrote = app.write_all(msg);
    let closed = read_until_closed(&mut app, prompt + Duration::from_secs(5));
    let took = closed.at - started;
    assert_ne!(
        closed.how,
        Err(io::ErrorKind::TimedOut),
        "the application's connection was still open after {took:?} (write: {wrote:?})"
    );
    assert!(took < prompt, "closed after {took:?}, bound {prompt:?}");
    AppClosed {
        wrote,
        closed,
        took,
    }
}
