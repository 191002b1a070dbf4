//! A stripe-server and a stripe-client wired together ([`Tunnel`]), the
//! key and other authentication arguments they are started with, and the
//! application's side of a connection (timeouts, a reset seen). Separate
//! from [`Proc`]: this is what is specific to striper's ends.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{IO_TIMEOUT, Proc, TempDir, bin, run_ok};

/// A fresh pre-shared key in its own scratch directory, made with
/// `stripe-client genkey`; both ends of a tunnel are given its file.
pub struct KeyFile {
    _dir: TempDir,
    path: PathBuf,
}

impl KeyFile {
    pub fn generate() -> KeyFile {
        let dir = TempDir::new("key");
        let path = dir.path().join("striper.key");
        run_ok(Command::new(bin("stripe-client")).arg("genkey").arg(&path));
        KeyFile { _dir: dir, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `--key-file PATH`.
    pub fn args(&self) -> Vec<String> {
        vec!["--key-file".into(), self.path.display().to_string()]
    }
}

/// The authentication arguments a binary is started with: a [`KeyFile`]'s
/// (`--key-file PATH`), or any others as strings (none, another key's,
/// `--insecure-no-auth`).
pub trait Auth {
    fn auth_args(&self) -> Vec<String>;
}

impl Auth for KeyFile {
    fn auth_args(&self) -> Vec<String> {
        self.args()
    }
}

impl Auth for [String] {
    fn auth_args(&self) -> Vec<String> {
        self.to_vec()
    }
}

/// Starts `stripe-server --listen 127.0.0.1:0 --target TARGET --key-file
/// KEY EXTRA...` (or other authentication arguments than a key's).
pub fn start_server(
    auth: &(impl Auth + ?Sized),
    target: SocketAddr,
    extra: &[&str],
    log: &str,
) -> Proc {
    start_server_on(auth, "127.0.0.1:0".parse().unwrap(), target, extra, log)
}

/// Starts `stripe-server` listening on `listen`.
pub fn start_server_on(
    auth: &(impl Auth + ?Sized),
    listen: SocketAddr,
    target: SocketAddr,
    extra: &[&str],
    log: &str,
) -> Proc {
    let role = [
        "--listen".to_string(),
        listen.to_string(),
        "--target".to_string(),
        target.to_string(),
    ];
    start_listening("stripe-server", &role, auth, extra, log)
}

/// Starts `stripe-client --listen 127.0.0.1:0 --server SERVER --stripes N
/// --key-file KEY EXTRA...` (or other authentication arguments than a
/// key's).
pub fn start_client(
    auth: &(impl Auth + ?Sized),
    server: SocketAddr,
    stripes: u8,
    extra: &[&str],
    log: &str,
) -> Proc {
    let server = server.to_string();
    start_client_on(auth, "127.0.0.1:0", &server, stripes, extra, log)
}

/// Starts `stripe-client` listening on `listen`, with `server` as given
/// (a host name, an address).
pub fn start_client_on(
    auth: &(impl Auth + ?Sized),
    listen: &str,
    server: &str,
    stripes: u8,
    extra: &[&str],
    log: &str,
) -> Proc {
    let role = [
        "--listen".to_string(),
        listen.to_string(),
        "--server".to_string(),
        server.to_string(),
        "--stripes".to_string(),
        stripes.to_string(),
    ];
    start_listening("stripe-client", &role, auth, extra, log)
}

/// Starts `binary ROLE... AUTH... EXTRA...` with `RUST_LOG=log` and waits
/// until it is listening.
fn start_listening(
    binary: &str,
    role: &[String],
    auth: &(impl Auth + ?Sized),
    extra: &[&str],
    log: &str,
) -> Proc {
    let mut args = role.to_vec();
    args.extend(auth.auth_args());
    args.extend(extra.iter().map(|s| s.to_string()));
    Proc::spawn_listening(binary, binary, &args, log)
}

/// A stripe-server relaying to a target and a stripe-client using it.
/// Fields drop client first, so sessions end from the application's side.
pub struct Tunnel {
    pub client: Proc,
    pub server: Proc,
    /// The key both ends were given.
    pub key: KeyFile,
}

impl Tunnel {
    /// A tunnel to `target` over `stripes` stripes, default tuning.
    pub fn start(target: SocketAddr, stripes: u8) -> Tunnel {
        Tunnel::start_with(target, stripes, &[], "info")
    }

    /// With extra tuning arguments for both ends and a `RUST_LOG` value.
    pub fn start_with(target: SocketAddr, stripes: u8, extra: &[&str], log: &str) -> Tunnel {
        let key = KeyFile::generate();
        let server = start_server(&key, target, extra, log);
        let client = start_client(&key, server.addr(), stripes, extra, log);
        Tunnel {
            client,
            server,
            key,
        }
    }

    /// Where applications connect.
    pub fn addr(&self) -> SocketAddr {
        self.client.addr()
    }

    /// A connection to the client's listening port, with timeouts.
    pub fn connect(&self) -> TcpStream {
        connect(self.addr())
    }

    /// Both processes still run and neither logged a panic.
    pub fn assert_healthy(&mut self) {
        self.server.assert_healthy();
        self.client.assert_healthy();
    }
}

/// Whether an application saw its connection reset: its write failed, or
/// its reading ended, with a reset (or a broken pipe).
pub fn saw_reset<T>(write: &io::Result<T>, read_end: Option<io::ErrorKind>) -> bool {
    use io::ErrorKind as K;
    let reset = |k: K| matches!(k, K::ConnectionReset | K::BrokenPipe);
    write.as_ref().is_err_and(|e| reset(e.kind())) || read_end.is_some_and(reset)
}

/// Connects with [`IO_TIMEOUT`] on connect, reads and writes.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    with_timeouts(s)
}

/// Sets [`IO_TIMEOUT`] on reads and writes.
pub fn with_timeouts(s: TcpStream) -> TcpStream {
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// A loopback address nothing listens on: bound to learn a free port, then
/// released. Connecting to it is refused.
pub fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().unwrap()
}
