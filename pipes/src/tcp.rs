//! `TcpPipe`: one TCP socket as a [`Pipe`].

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use striper_core::{Ctx, ErrorKind, Pipe, PipeError, Readable, Ready, TokenSpan};

use crate::buf::ReadBuf;
use crate::path::{Via, dial};

/// Default cap of a TCP pipe's read buffer.
pub const READ_BUF_MAX: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Connecting { since: Option<Instant> },
    Open,
    Closed,
}

pub struct TcpPipe {
    sock: TcpStream,
    /// "target 127.0.0.1:22", "client 127.0.0.1:50122": errors name it.
    name: String,
    token: Option<Token>,
    state: State,
    connect_timeout: Duration,
    /// Addresses still to try if the current connect fails.
    fallback: Vec<SocketAddr>,
    /// Where a connect leaves from (the fallback addresses too).
    via: Via,
    readable: bool,
    writable: bool,
    /// An event said the peer closed its side (or the socket failed).
    read_closed_seen: bool,
    rbuf: ReadBuf,
    read_eof: bool,
    shut_wr: bool,
    error: Option<PipeError>,
    bytes_read: u64,
    bytes_written: u64,
}

impl TcpPipe {
    /// Wraps an accepted (connected) socket.
    pub fn accepted(sock: TcpStream, name: String) -> TcpPipe {
        let _ = sock.set_nodelay(true);
        TcpPipe::new(sock, name, State::Open)
    }

    /// Starts a non-blocking connect to the first of `addrs` (a name may
    /// resolve to several, e.g. 127.0.0.1 and ::1); when one fails the next
    /// is tried. The pipe reads as `Pending` until a connect completes, and
    /// fails with a message naming `name` if none does.
    pub fn connect(
        addrs: &[SocketAddr],
        name: String,
        timeout: Duration,
    ) -> Result<TcpPipe, PipeError> {
        TcpPipe::connect_via(addrs, &Via::Default, name, timeout)
    }

    /// [`TcpPipe::connect`] leaving by `via` (a source address or an
    /// interface), for every address it tries.
    pub fn connect_via(
        addrs: &[SocketAddr],
        via: &Via,
        name: String,
        timeout: Duration,
    ) -> Result<TcpPipe, PipeError> {
        let mut last = None;
        for (k, &addr) in addrs.iter().enumerate() {
            match dial(addr, via, &name) {
                Ok(sock) => {
                    let mut p = TcpPipe::new(sock, name, State::Connecting { since: None });
                    p.connect_timeout = timeout;
                    p.fallback = addrs[k + 1..].to_vec();
                    p.via = via.clone();
                    return Ok(p);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| PipeError::about(ErrorKind::Connect, &name, "has no address")))
    }

    fn new(sock: TcpStream, name: String, state: State) -> TcpPipe {
        TcpPipe {
            sock,
            name,
            token: None,
            state,
            connect_timeout: Duration::from_secs(10),
            fallback: Vec::new(),
            via: Via::Default,
            // Edge-triggered: assume ready until the socket says otherwise.
            readable: true,
            writable: true,
            read_closed_seen: false,
            rbuf: ReadBuf::new(READ_BUF_MAX),
            read_eof: false,
            shut_wr: false,
            error: None,
            bytes_read: 0,
            bytes_written: 0,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn socket(&self) -> &TcpStream {
        &self.sock
    }

    pub fn is_connected(&self) -> bool {
        self.state == State::Open
    }

    /// Whether a connect just started has already completed (on loopback
    /// the handshake runs inside the call). A failure is kept for the next
    /// [`TcpPipe::poll_connect`], which moves on to the next address.
    pub fn connected_at_once(&mut self, now: Instant) -> bool {
        self.check_connect(now).is_ok() && self.is_connected()
    }

    pub fn is_connecting(&self) -> bool {
        matches!(self.state, State::Connecting { .. })
    }

    /// The socket said it can take more since the last WouldBlock.
    pub fn is_writable(&self) -> bool {
        self.writable && self.state == State::Open && !self.shut_wr
    }

    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// The error that ended this pipe, if any.
    pub fn error(&self) -> Option<&PipeError> {
        self.error.as_ref()
    }

    pub fn read_buffer_capacity(&self) -> usize {
        self.rbuf.capacity()
    }

    /// Frees the read buffer if it is empty (an idle connection).
    pub fn release_idle(&mut self) {
        let held = self.rbuf.capacity();
        if self.rbuf.release_if_empty() {
            striper_core::mem::note_freed(held);
        }
    }

    /// Checks a pending connect: on the writable event, or when the timeout
    /// has passed. A failed connect moves on to the next address; the error
    /// comes once there is none left.
    pub fn poll_connect(&mut self, registry: &Registry, now: Instant) -> Result<(), PipeError> {
        match self.check_connect(now) {
            Err(e) if !self.fallback.is_empty() && self.error.as_ref() == Some(&e) => {
                log::debug!("{}: {e}; trying its next address", self.name);
                self.error = None;
                if self.token.is_some() {
                    let _ = registry.deregister(&mut self.sock);
                }
                while !self.fallback.is_empty() {
                    let addr = self.fallback.remove(0);
                    let Ok(mut sock) = dial(addr, &self.via, &self.name) else {
                        continue;
                    };
                    if let Some(t) = self.token {
                        registry
                            .register(&mut sock, t, Interest::READABLE | Interest::WRITABLE)
                            .map_err(|e| self.io_err(e))?;
                    }
                    self.sock = sock;
                    self.state = State::Connecting { since: Some(now) };
                    return Ok(());
                }
                self.error = Some(e.clone());
                self.state = State::Closed;
                Err(e)
            }
            r => r,
        }
    }

    fn check_connect(&mut self, now: Instant) -> Result<(), PipeError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let State::Connecting { mut since } = self.state else {
            return Ok(());
        };
        let since = *since.get_or_insert(now);
        self.state = State::Connecting { since: Some(since) };
        if let Ok(Some(e)) | Err(e) = self.sock.take_error() {
            return Err(self.fail(PipeError::io(&self.name, &e)));
        }
        match self.sock.peer_addr() {
            Ok(_) => {
                self.state = State::Open;
                self.readable = true;
                self.writable = true;
                let _ = self.sock.set_nodelay(true);
                Ok(())
            }
            Err(e)
                if e.kind() == io::ErrorKind::NotConnected
                    || e.raw_os_error() == Some(libc::EINPROGRESS) =>
            {
                if now.saturating_duration_since(since) >= self.connect_timeout {
                    let t = self.connect_timeout.as_secs_f64();
                    return Err(self.fail(PipeError::about(
                        ErrorKind::Connect,
                        &self.name,
                        format!("unreachable: no answer to connect within {t:.0} s"),
                    )));
                }
                Ok(())
            }
            Err(e) => Err(self.fail(PipeError::io(&self.name, &e))),
        }
    }

    fn fail(&mut self, e: PipeError) -> PipeError {
        self.state = State::Closed;
        self.error = Some(e.clone());
        e
    }

    fn io_err(&mut self, e: io::Error) -> PipeError {
        let e = PipeError::io(&self.name, &e);
        self.fail(e)
    }

    /// Reads once into the buffer if there is room and the socket may have
    /// bytes; EOF and errors are remembered.
    fn fill(&mut self) -> Result<(), PipeError> {
        if !self.readable || self.read_eof || self.rbuf.is_full() || self.state != State::Open {
            return Ok(());
        }
        loop {
            let sock = &mut self.sock;
            let mut room = 0;
            match self.rbuf.read_with(|space| {
                room = space.len();
                sock.read(space)
            }) {
                Ok(0) if self.rbuf.is_full() => return Ok(()),
                Ok(0) => {
                    self.read_eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.bytes_read += n as u64;
                    // A short read emptied the socket: the next bytes come
                    // with a new edge-triggered event, so the read that
                    // would only say WouldBlock is skipped (half of an idle
                    // server's reads were that). Not once the peer's FIN
                    // is in: its event may have come with these bytes.
                    if n < room && !self.read_closed_seen {
                        self.readable = false;
                    }
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_err(e)),
            }
        }
    }

    /// Reads and throws away whatever arrives, until EOF (used while
    /// lingering for the peer's close). Returns true at EOF or error.
    pub fn drain_until_eof(&mut self) -> bool {
        if self.state == State::Closed || self.read_eof {
            return true;
        }
        let mut scratch = [0u8; 16 * 1024];
        loop {
            match self.sock.read(&mut scratch) {
                Ok(0) => {
                    self.read_eof = true;
                    return true;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }

    fn write_result(&mut self, r: io::Result<usize>) -> Result<usize, PipeError> {
        match r {
            Ok(n) => {
                self.bytes_written += n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.writable = false;
                Ok(0)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(self.io_err(e)),
        }
    }

    /// Resets the connection now, without waiting for the socket to be
    /// dropped: the peer learns at once that the stream was aborted.
    fn reset_now(&self) {
        let _ = socket2::SockRef::from(&self.sock).set_linger(Some(Duration::ZERO));
        // connect(AF_UNSPEC) disconnects a TCP socket; with a zero linger
        // the kernel sends a RST (tcp_disconnect). The descriptor stays
        // valid until the pipe is dropped.
        // SAFETY: a zeroed sockaddr with family AF_UNSPEC and its size.
        unsafe {
            let mut sa: libc::sockaddr = std::mem::zeroed();
            sa.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
            libc::connect(
                self.sock.as_raw_fd(),
                &sa,
                std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
            );
        }
    }

    pub fn raw_fd(&self) -> i32 {
        self.sock.as_raw_fd()
    }

    /// Re-registers the socket under another token (moving it between tasks).
    pub fn reregister(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.reregister(
            &mut self.sock,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.adopt(token);
        Ok(())
    }

    fn adopt(&mut self, token: Token) {
        self.token = Some(token);
        // Moved from another task: the socket may already hold bytes or
        // room, and no new edge would tell us.
        self.readable = true;
        self.writable = true;
    }

    /// Registers with a single given token.
    pub fn register_token(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(
            &mut self.sock,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.adopt(token);
        Ok(())
    }

    pub fn token(&self) -> Option<Token> {
        self.token
    }
}

impl Pipe for TcpPipe {
    fn register(&mut self, registry: &Registry, span: TokenSpan) -> io::Result<()> {
        self.register_token(registry, span.token(0))
    }

    fn deregister(&mut self, registry: &Registry) {
        if self.token.take().is_some() {
            let _ = registry.deregister(&mut self.sock);
        }
    }

    fn on_ready(&mut self, _token: Token, ready: Ready) {
        // An error or hang-up makes the next read or write report it.
        self.readable |= ready.readable || ready.error;
        self.read_closed_seen |= ready.read_closed || ready.error;
        self.writable |= ready.writable || ready.error;
    }

    /// Only a connect in progress has a timer (its timeout); an open
    /// socket runs on events alone.
    fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        self.is_connecting()
            .then_some(now + striper_core::reactor::TICK)
    }

    fn drive(&mut self, cx: &mut Ctx<'_>) -> Result<bool, PipeError> {
        self.poll_connect(cx.registry, cx.now)?;
        Ok(false)
    }

    fn fill_buf(&mut self) -> Result<Readable<'_>, PipeError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        self.fill()?;
        if !self.rbuf.is_empty() {
            Ok(Readable::Bytes(self.rbuf.data()))
        } else if self.read_eof {
            Ok(Readable::Eof)
        } else {
            Ok(Readable::Pending)
        }
    }

    fn consume(&mut self, n: usize) {
        self.rbuf.consume(n);
    }

    fn release_idle(&mut self) {
        TcpPipe::release_idle(self);
    }

    fn write(&mut self, data: &[u8]) -> Result<usize, PipeError> {
        self.write_vectored(&[IoSlice::new(data)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> Result<usize, PipeError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if !self.is_writable() {
            return Ok(0);
        }
        loop {
            let r = self.sock.write_vectored(bufs);
            if matches!(&r, Err(e) if e.kind() == io::ErrorKind::Interrupted) {
                continue;
            }
            return self.write_result(r);
        }
    }

    fn reserve_read(&mut self, n: usize) {
        self.rbuf.reserve(n);
    }

    fn at_eof(&self) -> bool {
        self.read_eof
    }

    fn shutdown_write(&mut self) -> Result<(), PipeError> {
        if !self.shut_wr {
            self.shut_wr = true;
            if self.state == State::Open
                && let Err(e) = self.sock.shutdown(Shutdown::Write)
                && e.kind() != io::ErrorKind::NotConnected
            {
                return Err(self.io_err(e));
            }
        }
        Ok(())
    }

    fn write_done(&self) -> bool {
        self.shut_wr
    }

    fn abort(&mut self, _reason: &PipeError) {
        if self.state != State::Closed || self.error.is_some() {
            self.reset_now();
        }
        self.state = State::Closed;
    }

    fn poll_close(&mut self, _cx: &mut Ctx<'_>) -> bool {
        true
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

impl TcpPipe {
    /// Bytes buffered for reading, without any IO.
    pub fn buffered(&self) -> &[u8] {
        self.rbuf.data()
    }

    /// The same, to decrypt in place.
    pub fn buffered_mut(&mut self) -> &mut [u8] {
        self.rbuf.data_mut()
    }

    /// Whether the buffer holds bytes or the socket may have more.
    pub fn may_read(&self) -> bool {
        !self.rbuf.is_empty() || (self.readable && !self.read_eof && self.state == State::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn connect_moves_on_to_the_next_address() {
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut poll = mio::Poll::new().unwrap();
        let mut events = mio::Events::with_capacity(8);
        let mut p = TcpPipe::connect(
            &[refused, open.local_addr().unwrap()],
            "target t".into(),
            Duration::from_secs(5),
        )
        .unwrap();
        p.register_token(poll.registry(), Token(1)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !p.is_connected() {
            assert!(
                Instant::now() < deadline,
                "no connection to the second address"
            );
            poll.poll(&mut events, Some(Duration::from_millis(50)))
                .unwrap();
            p.poll_connect(poll.registry(), Instant::now()).unwrap();
        }
        let (_, from) = open.accept().unwrap();
        assert_eq!(from, p.socket().local_addr().unwrap());
    }

    #[test]
    fn connect_fails_with_the_cause_when_no_address_works() {
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let mut poll = mio::Poll::new().unwrap();
        let mut events = mio::Events::with_capacity(8);
        let mut p = TcpPipe::connect(
            &[refused, refused],
            "target t".into(),
            Duration::from_secs(5),
        )
        .unwrap();
        p.register_token(poll.registry(), Token(1)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let err = loop {
            assert!(Instant::now() < deadline, "no error");
            if let Err(e) = p.poll_connect(poll.registry(), Instant::now()) {
                break e;
            }
            poll.poll(&mut events, Some(Duration::from_millis(50)))
                .unwrap();
        };
        assert_eq!(err.message, "target t refused the connection");
    }
}
