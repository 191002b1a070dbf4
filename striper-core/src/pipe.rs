//! The `Pipe` trait: a non-blocking duplex byte stream driven by readiness.

use std::fmt;
use std::io::{self, IoSlice};
use std::time::Instant;

use mio::{Registry, Token};

/// The block of tokens a pipe may use for its sockets: `base..base + len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenSpan {
    pub base: usize,
    pub len: usize,
}

impl TokenSpan {
    pub fn token(&self, i: usize) -> Token {
        assert!(i < self.len, "token {i} outside a span of {}", self.len);
        Token(self.base + i)
    }

    /// Index of `t` in this span, if it belongs here.
    pub fn index(&self, t: Token) -> Option<usize> {
        (t.0 >= self.base && t.0 < self.base + self.len).then(|| t.0 - self.base)
    }

    /// Splits the span in two halves.
    pub fn split(&self) -> (TokenSpan, TokenSpan) {
        let half = self.len / 2;
        (
            TokenSpan {
                base: self.base,
                len: half,
            },
            TokenSpan {
                base: self.base + half,
                len: self.len - half,
            },
        )
    }
}

/// What an event said about a socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    pub readable: bool,
    pub writable: bool,
    /// Error or hang-up: the next read or write will say what happened.
    pub error: bool,
    /// The peer's FIN (or a reset) is in: reads must go on to the end.
    pub read_closed: bool,
}

impl From<&mio::event::Event> for Ready {
    fn from(e: &mio::event::Event) -> Ready {
        Ready {
            readable: e.is_readable() || e.is_read_closed(),
            writable: e.is_writable() || e.is_write_closed(),
            error: e.is_error(),
            read_closed: e.is_read_closed(),
        }
    }
}

/// What a pipe gets when it is driven: the registry for (re)registering
/// sockets and the time of this turn of the loop (pipes never read the clock).
pub struct Ctx<'a> {
    pub registry: &'a Registry,
    pub now: Instant,
}

/// The answer of [`Pipe::fill_buf`].
#[derive(Debug, PartialEq, Eq)]
pub enum Readable<'a> {
    /// In-order bytes; take some with [`Pipe::consume`].
    Bytes(&'a [u8]),
    /// Nothing now; an event will come.
    Pending,
    /// The far end half-closed: no more bytes, ever.
    Eof,
}

/// Why a pipe failed: its class, and words a log line can print as they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipeError {
    pub kind: ErrorKind,
    /// The whole cause, e.g. "target 127.0.0.1:22 refused the connection".
    pub message: String,
    /// Where the cause starts after the subject ("target 127.0.0.1:22"),
    /// so a caller can re-word the subject without parsing the message.
    detail_at: usize,
}

/// Broad classes of failure: they pick the RST reason code and the exit
/// status, the message says the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A connection could not be made (refused, unreachable, timed out).
    Connect,
    /// The peer reset or broke the connection.
    Reset,
    /// The peer spoke the protocol wrongly (bad frame, bad handshake).
    Protocol,
    /// The peer aborted the session on purpose, for the reason in the message.
    PeerAbort,
    /// Nothing heard for too long.
    Timeout,
    /// We are shutting down.
    Shutdown,
    /// Any other IO error.
    Io,
}

impl PipeError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> PipeError {
        PipeError {
            kind,
            message: message.into(),
            detail_at: 0,
        }
    }

    /// An error about `subject`: "{subject} {detail}".
    pub fn about(kind: ErrorKind, subject: &str, detail: impl std::fmt::Display) -> PipeError {
        PipeError {
            kind,
            message: format!("{subject} {detail}"),
            detail_at: subject.len() + 1,
        }
    }

    /// The cause without its subject: "refused the connection".
    pub fn detail(&self) -> &str {
        &self.message[self.detail_at..]
    }

    /// Classifies an IO error from `what` ("target 127.0.0.1:22", "client
    /// 10.0.0.5:40022", "stripe 3") into a message naming both.
    pub fn io(what: &str, e: &io::Error) -> PipeError {
        use io::ErrorKind as K;
        let (kind, detail) = match e.kind() {
            K::ConnectionRefused => (ErrorKind::Connect, "refused the connection".to_string()),
            K::ConnectionReset | K::ConnectionAborted => {
                (ErrorKind::Reset, "reset the connection".to_string())
            }
            K::BrokenPipe => (
                ErrorKind::Reset,
                "closed the connection (broken pipe)".to_string(),
            ),
            K::TimedOut => (ErrorKind::Timeout, "timed out".to_string()),
            K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => {
                (ErrorKind::Connect, format!("unreachable: {e}"))
            }
            _ => {
                return PipeError {
                    kind: ErrorKind::Io,
                    message: format!("{what}: {e}"),
                    detail_at: what.len() + 2,
                };
            }
        };
        PipeError::about(kind, what, detail)
    }
}

impl fmt::Display for PipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PipeError {}

/// A duplex byte stream on the event loop: raw TCP, stdio, or a striped
/// session presenting N stripes as one ordered stream.
///
/// Reading is buffered and pull-based, like `BufRead`: [`Pipe::fill_buf`]
/// shows what has arrived and [`Pipe::consume`] takes some, so the bridge
/// moves bytes from one pipe's buffer straight into the other without a
/// buffer of its own. Writing is [`Pipe::write`], which takes what fits and
/// returns 0 when the pipe is full: that is backpressure, and the bridge
/// stops reading the other side until an event says there is room again.
///
/// Readiness is edge-triggered: a pipe remembers what its sockets last
/// reported and keeps reading or writing until they say `WouldBlock`.
pub trait Pipe {
    /// Registers the pipe's sockets with tokens from `span`.
    fn register(&mut self, registry: &Registry, span: TokenSpan) -> io::Result<()>;

    /// Removes the pipe's sockets from the poller.
    fn deregister(&mut self, registry: &Registry);

    /// An event for one of the pipe's tokens.
    fn on_ready(&mut self, token: Token, ready: Ready);

    /// Does the pipe's own work: connects, handshakes, frames, timers. Called
    /// after events and on every tick of the loop. Returns true if it stopped
    /// with work left (a budget ran out) and wants to run again soon.
    fn drive(&mut self, cx: &mut Ctx<'_>) -> Result<bool, PipeError>;

    /// When [`Pipe::drive`] must run again without an event (`None`: only
    /// on events). The default is the loop's periodic tick, for pipes that
    /// check their own timers whenever they run.
    fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        Some(now + crate::reactor::TICK)
    }

    /// The bytes that have arrived, or why there are none.
    fn fill_buf(&mut self) -> Result<Readable<'_>, PipeError>;

    /// Frees buffers that hold nothing (the bridge calls it after a while
    /// without traffic). The default holds none worth freeing.
    fn release_idle(&mut self) {}

    /// Marks `n` bytes of [`Pipe::fill_buf`] as taken.
    fn consume(&mut self, n: usize);

    /// Takes what fits of `data`; 0 means full, come back after an event.
    fn write(&mut self, data: &[u8]) -> Result<usize, PipeError>;

    /// Gathering write; the default writes the first non-empty slice.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> Result<usize, PipeError> {
        match bufs.iter().find(|b| !b.is_empty()) {
            Some(b) => self.write(b),
            None => Ok(0),
        }
    }

    /// Lets [`Pipe::fill_buf`] return at least `n` bytes once they arrive
    /// (framing needs a whole frame in view). Pipes without a read buffer of
    /// their own ignore it.
    fn reserve_read(&mut self, _n: usize) {}

    /// The far end's EOF has been read (bytes may still be buffered).
    fn at_eof(&self) -> bool {
        false
    }

    /// Half-close: no more writes; the far end sees EOF after what was written.
    fn shutdown_write(&mut self) -> Result<(), PipeError>;

    /// True once the far end has everything written and the EOF.
    fn write_done(&self) -> bool;

    /// Tears the pipe down abnormally, telling the far end why if it can.
    fn abort(&mut self, reason: &PipeError);

    /// Finishes closing (flushes final frames, lingers for the peer's close).
    /// Returns true when nothing is left to do and the pipe can be dropped.
    fn poll_close(&mut self, cx: &mut Ctx<'_>) -> bool;

    /// A short description for logs ("client 127.0.0.1:50122").
    fn describe(&self) -> String;
}
