//! `StdioPipe`: standard input and output as a [`Pipe`], for
//! `ssh -o ProxyCommand='stripe-client --stdio ...'`.
//!
//! Both descriptors are made non-blocking and registered with the poller.
//! Descriptors epoll cannot watch (a regular file, /dev/null) are treated as
//! always ready, which is true for them. Half-closing replaces standard
//! output with /dev/null, so the reader sees EOF while the descriptor number
//! stays taken.

use std::io::{self, IoSlice};
use std::os::fd::RawFd;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use striper_core::{Ctx, Pipe, PipeError, Readable, Ready, TokenSpan};

use crate::buf::ReadBuf;
use crate::tcp::READ_BUF_MAX;

const IN: RawFd = 0;
const OUT: RawFd = 1;

pub struct StdioPipe {
    rbuf: ReadBuf,
    readable: bool,
    writable: bool,
    in_registered: bool,
    out_registered: bool,
    read_eof: bool,
    shut_wr: bool,
    error: Option<PipeError>,
    saved_flags: [libc::c_int; 2],
}

fn set_nonblocking(fd: RawFd) -> io::Result<libc::c_int> {
    // SAFETY: fcntl on a descriptor we were given; no memory is involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags)
}

impl StdioPipe {
    pub fn new() -> io::Result<StdioPipe> {
        let a = set_nonblocking(IN)?;
        let b = set_nonblocking(OUT)?;
        Ok(StdioPipe {
            rbuf: ReadBuf::new(READ_BUF_MAX),
            readable: true,
            writable: true,
            in_registered: false,
            out_registered: false,
            read_eof: false,
            shut_wr: false,
            error: None,
            saved_flags: [a, b],
        })
    }

    fn io_err(&mut self, what: &str, e: io::Error) -> PipeError {
        let e = PipeError::io(what, &e);
        self.error = Some(e.clone());
        e
    }
}

impl Drop for StdioPipe {
    fn drop(&mut self) {
        // Leave the descriptors as we found them: they may be a shared terminal.
        for (fd, flags) in [(IN, self.saved_flags[0]), (OUT, self.saved_flags[1])] {
            // SAFETY: restoring flags read from the same descriptor.
            unsafe { libc::fcntl(fd, libc::F_SETFL, flags) };
        }
    }
}

/// Registers `fd`; false if epoll refuses it (files are always ready).
fn register_fd(
    registry: &Registry,
    fd: RawFd,
    token: Token,
    interest: Interest,
) -> io::Result<bool> {
    match registry.register(&mut SourceFd(&fd), token, interest) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(false),
        Err(e) => Err(e),
    }
}

impl Pipe for StdioPipe {
    fn register(&mut self, registry: &Registry, span: TokenSpan) -> io::Result<()> {
        self.in_registered = register_fd(registry, IN, span.token(0), Interest::READABLE)?;
        self.out_registered = register_fd(registry, OUT, span.token(1), Interest::WRITABLE)?;
        Ok(())
    }

    fn deregister(&mut self, registry: &Registry) {
        if std::mem::take(&mut self.in_registered) {
            let _ = registry.deregister(&mut SourceFd(&IN));
        }
        if std::mem::take(&mut self.out_registered) {
            let _ = registry.deregister(&mut SourceFd(&OUT));
        }
    }

    fn on_ready(&mut self, _token: Token, ready: Ready) {
        self.readable |= ready.readable || ready.error;
        self.writable |= ready.writable || ready.error;
    }

    fn drive(&mut self, _cx: &mut Ctx<'_>) -> Result<bool, PipeError> {
        Ok(false)
    }

    fn fill_buf(&mut self) -> Result<Readable<'_>, PipeError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.readable && !self.read_eof && !self.rbuf.is_full() {
            let r = self.rbuf.read_with(|space| {
                // SAFETY: reading into a buffer we own, of the given length.
                let n = unsafe { libc::read(IN, space.as_mut_ptr().cast(), space.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match r {
                Ok(0) => self.read_eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = !self.in_registered
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_err("standard input", e)),
            }
        }
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

    fn write(&mut self, data: &[u8]) -> Result<usize, PipeError> {
        self.write_vectored(&[IoSlice::new(data)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> Result<usize, PipeError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if !self.writable || self.shut_wr {
            return Ok(0);
        }
        loop {
            // SAFETY: IoSlice is ABI-compatible with iovec; the slices outlive the call.
            let n = unsafe {
                libc::writev(
                    OUT,
                    bufs.as_ptr().cast(),
                    bufs.len().min(1024) as libc::c_int,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    self.writable = !self.out_registered;
                    return Ok(0);
                }
                _ => return Err(self.io_err("standard output", e)),
            }
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
            // SAFETY: opening /dev/null and dup2 onto fd 1; both descriptors are ours.
            unsafe {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
                if null >= 0 {
                    libc::dup2(null, OUT);
                    libc::close(null);
                }
            }
            self.out_registered = false;
        }
        Ok(())
    }

    fn write_done(&self) -> bool {
        self.shut_wr
    }

    fn abort(&mut self, _reason: &PipeError) {
        let _ = self.shutdown_write();
    }

    fn poll_close(&mut self, _cx: &mut Ctx<'_>) -> bool {
        true
    }

    fn describe(&self) -> String {
        "standard input/output".to_string()
    }
}
