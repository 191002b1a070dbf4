//! SIGINT/SIGTERM, and SIGHUP apart, as readable sockets on the event loop
//! (self-pipes: the handler only writes a byte, everything else happens in
//! the loop).

use std::io::{self, Read};

use mio::net::UnixStream;
use mio::{Interest, Registry, Token};

pub struct Signals {
    rx: UnixStream,
}

impl Signals {
    /// Routes SIGINT and SIGTERM to a socket registered under `token`.
    pub fn register(registry: &Registry, token: Token) -> io::Result<Signals> {
        Signals::route(
            registry,
            token,
            &[signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM],
        )
    }

    /// Routes SIGHUP (reload) to a socket registered under `token`.
    pub fn register_hangup(registry: &Registry, token: Token) -> io::Result<Signals> {
        Signals::route(registry, token, &[signal_hook::consts::SIGHUP])
    }

    fn route(registry: &Registry, token: Token, signals: &[i32]) -> io::Result<Signals> {
        let (mut rx, tx) = UnixStream::pair()?;
        let tx = std::os::unix::net::UnixStream::from(std::os::fd::OwnedFd::from(tx));
        for &sig in signals {
            signal_hook::low_level::pipe::register(sig, tx.try_clone()?)?;
        }
        registry.register(&mut rx, token, Interest::READABLE)?;
        Ok(Signals { rx })
    }

    /// Empties the pipe; true if at least one signal arrived.
    pub fn take(&mut self) -> bool {
        let mut buf = [0u8; 64];
        let mut got = false;
        loop {
            match self.rx.read(&mut buf) {
                Ok(0) => return got,
                Ok(_) => got = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return got,
            }
        }
    }
}
