//! End-to-end harness: builds and runs the real `stripe-client` and
//! `stripe-server` binaries, the targets they relay to, and the
//! applications that talk through them, all on loopback.
//!
//! * [`bin`] builds the release binaries once per test process and returns
//!   the path of one.
//! * [`Proc`] is a child process whose standard error is collected line by
//!   line, so a test can wait for a log line (with a timeout), read its
//!   listening address, signal it, and get its logs printed when the test
//!   fails. Dropping it ends the process (SIGTERM, then SIGKILL), by PID.
//! * [`Tunnel`] is a stripe-server and a stripe-client wired together,
//!   authenticating with a fresh [`KeyFile`].
//! * [`Target`] is a threaded TCP server running a handler per connection
//!   ([`echo`], [`exchange`], [`reset_after`], or the test's own), which
//!   reports what each connection saw.
//! * [`Pattern`] is a deterministic pseudo-random byte stream; [`send`] and
//!   [`receive`] write and check it. The receiver regenerates what it
//!   should get and compares every byte, so a lost, repeated, reordered or
//!   corrupted byte is caught with its offset. Both ends also report a
//!   CRC-32 and a length ([`Digest`]), the "checksum" compared end to end.
//!   CRC-32 rather than SHA-256 because tests build without optimisation:
//!   unoptimised SHA-256 runs at ~40 MB/s here, CRC-32 at ~700 MB/s, and
//!   the byte-for-byte comparison is already stronger than any hash.
//! * [`HeldSession`] keeps a checked echo session open (paced, and paused
//!   at a given offset) while a test does something else to the tunnel.
//!
//! Every blocking socket call has a timeout ([`IO_TIMEOUT`]) and every wait
//! a deadline, so a hung tunnel fails a test instead of stalling it.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Upper bound for any single blocking socket call: far above anything a
/// working tunnel needs on loopback, low enough that a hang fails the test.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a started binary may take to say it is listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a process gets to exit after SIGTERM before it is killed. The
/// binaries give their sessions 2 s to close after a signal.
pub const TERM_GRACE: Duration = Duration::from_secs(4);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not hide the logs of the others.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// Binaries

/// Path of a workspace binary (`stripe-client`, `stripe-server`,
/// `linkemu`), built in release mode on first use in this process. Release
/// keeps the large transfers fast; building here means a plain
/// `cargo test` or `cargo nextest run` is enough.
pub fn bin(name: &str) -> PathBuf {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = DIR.get_or_init(build_binaries);
    match dir {
        Ok(d) => {
            let p = d.join(name);
            assert!(p.exists(), "binary {} was not built", p.display());
            p
        }
        Err(e) => panic!("{e}"),
    }
}

/// Runs `cmd` (standard input closed) to its end, fails the test unless it
/// succeeded, and returns its standard output.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn build_binaries() -> Result<PathBuf, String> {
    raise_nofile_limit();
    let target_dir = target_dir()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let out = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "-p",
            "striper-client",
            "-p",
            "striper-server",
            "-p",
            "striper-tests",
            "--bins",
            "--target-dir",
        ])
        .arg(&target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cargo:?} to build the binaries: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building the release binaries failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(target_dir.join("release"))
}

/// The target directory this test binary was built in
/// (`<target>/<profile>/deps/<test>`), so the release binaries land next
/// to it whatever `CARGO_TARGET_DIR` or `build.target-dir` say.
fn target_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate the test binary: {e}"))?;
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("unexpected test binary location {}", exe.display()))
}

/// Raises this process's soft descriptor limit to the hard one. Children
/// inherit it: hundreds of sessions of several stripes each need more than
/// the common default of 1024 descriptors per process.
pub fn raise_nofile_limit() {
    // SAFETY: getrlimit/setrlimit with a valid, owned struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The soft descriptor limit of this process.
pub fn nofile_limit() -> libc::rlim_t {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid, owned struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_cur
}

// ---------------------------------------------------------------------------
// Processes

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    /// Standard error reached EOF (the process and its children closed it).
    closed: bool,
}

struct Logs {
    state: Mutex<LogState>,
    changed: Condvar,
}

/// A child process with its standard error collected line by line.
pub struct Proc {
    name: String,
    child: Child,
    logs: Arc<Logs>,
    status: Option<ExitStatus>,
    addr: Option<SocketAddr>,
}

impl Proc {
    /// Starts `cmd` with standard error piped into the log buffer, standard
    /// input and output closed unless `cmd` set them.
    pub fn spawn(name: impl Into<String>, mut cmd: Command) -> Proc {
        let name = name.into();
        cmd.stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let logs = Arc::new(Logs {
            state: Mutex::new(LogState::default()),
            changed: Condvar::new(),
        });
        let stderr = child.stderr.take().expect("stderr is piped");
        let sink = logs.clone();
        thread::Builder::new()
            .name(format!("{name}-stderr"))
            .spawn(move || {
                let mut r = BufReader::new(stderr);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match r.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let s = String::from_utf8_lossy(&line).trim_end().to_string();
                            lock(&sink.state).lines.push(s);
                            sink.changed.notify_all();
                        }
                    }
                }
                lock(&sink.state).closed = true;
                sink.changed.notify_all();
            })
            .expect("spawn stderr reader");
        Proc {
            name,
            child,
            logs,
            status: None,
            addr: None,
        }
    }

    /// Starts one of the workspace binaries with `RUST_LOG=log` and waits
    /// for its `listening on ADDR` line, which gives [`Proc::addr`].
    pub fn spawn_listening(name: &str, binary: &str, args: &[String], log: &str) -> Proc {
        let mut cmd = Command::new(bin(binary));
        cmd.args(args)
            .env("RUST_LOG", log)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let mut p = Proc::spawn(name, cmd);
        let line = p.wait_log("listening on ", START_TIMEOUT);
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split([',', ' ']).next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| p.fail(&format!("no address in {line:?}")));
        p.addr = Some(addr);
        p
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The address from the `listening on` line.
    pub fn addr(&self) -> SocketAddr {
        self.addr
            .unwrap_or_else(|| panic!("{} has no listening address", self.name))
    }

    /// All log lines so far.
    pub fn lines(&self) -> Vec<String> {
        lock(&self.logs.state).lines.clone()
    }

    /// All log lines so far, joined.
    pub fn log_text(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits until a log line satisfies `pred` and returns it, or returns
    /// `None` after `timeout` or once standard error is closed.
    pub fn find_log(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.logs.state);
        let mut seen = 0;
        loop {
            if let Some(l) = st.lines[seen..].iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            seen = st.lines.len();
            let now = Instant::now();
            if st.closed || now >= deadline {
                return None;
            }
            st = self
                .logs
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits for a log line containing `needle`; fails the test (printing
    /// the logs) if none appears within `timeout`.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) -> String {
        match self.find_log(timeout, |l| l.contains(needle)) {
            Some(l) => l,
            None => self.fail(&format!(
                "no log line containing {needle:?} within {timeout:?}"
            )),
        }
    }

    /// How many log lines so far contain `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits until `n` log lines contain `needle`; fails the test otherwise.
    pub fn wait_log_count(&mut self, needle: &str, n: usize, timeout: Duration) {
        let mut count = 0;
        let found = self.find_log(timeout, |l| {
            count += l.contains(needle) as usize;
            count >= n
        });
        if found.is_none() {
            let have = self.count_log(needle);
            self.fail(&format!(
                "{have} log lines contain {needle:?}, wanted {n} within {timeout:?}"
            ));
        }
    }

    /// Panics with `msg` (the logs are printed by drop while panicking).
    pub fn fail(&mut self, msg: &str) -> ! {
        panic!("{}: {msg}", self.name)
    }

    /// Whether the process is still running (not exited, not reaped).
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        poll_until(timeout, Duration::from_millis(10), || {
            status = self.try_status();
            status.is_some()
        });
        status
    }

    /// Sends a signal to this process (by PID), unless it was reaped.
    pub fn signal(&mut self, sig: libc::c_int) {
        if self.try_status().is_none() {
            // SAFETY: kill(2) on the PID of our own unreaped child, which
            // cannot have been recycled while we have not waited for it.
            unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        self.wait_exit(timeout)
    }

    /// Fails the test if the process has exited or logged a panic.
    pub fn assert_healthy(&mut self) {
        if let Some(s) = self.try_status() {
            self.fail(&format!("exited unexpectedly: {s}"));
        }
        if let Some(l) = self.lines().iter().find(|l| l.contains("panicked")) {
            self.fail(&format!("logged a panic: {l}"));
        }
    }

    /// Resident set size now (`VmRSS`) and at its peak (`VmHWM`), in KiB.
    pub fn memory_kib(&mut self) -> Memory {
        let path = format!("/proc/{}/status", self.pid());
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| self.fail(&format!("cannot read {path}: {e}")));
        let field = |name: &str| -> u64 {
            status_field_kib(&text, name).unwrap_or_else(|| panic!("no {name} in {path}"))
        };
        Memory {
            rss_kib: field("VmRSS:"),
            peak_kib: field("VmHWM:"),
        }
    }

    /// Prints the collected log to standard error (the test's output).
    pub fn dump(&self) {
        let st = lock(&self.logs.state);
        eprintln!("----- {} (pid {}) log -----", self.name, self.child.id());
        for l in &st.lines {
            eprintln!("{l}");
        }
        eprintln!("----- end of {} log -----", self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_status().is_none() && self.terminate(TERM_GRACE).is_none() {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
        if thread::panicking() {
            self.dump();
        }
    }
}

/// A process's memory, in KiB.
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    pub rss_kib: u64,
    pub peak_kib: u64,
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RSS {:.1} MiB (peak {:.1} MiB)",
            self.rss_kib as f64 / 1024.0,
            self.peak_kib as f64 / 1024.0
        )
    }
}

// ---------------------------------------------------------------------------
// The tunnel

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

/// A `kB` field (`VmRSS:`, `VmHWM:`) of a `/proc/PID/status` text.
pub fn status_field_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A process's resident memory now, in KiB (None once it has exited).
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field_kib(&text, "VmRSS:")
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

// ---------------------------------------------------------------------------
// Data

/// CRC-32 and length of a byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Digest {
    pub len: u64,
    pub crc: u32,
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes, crc32 {:08x}", self.len, self.crc)
    }
}

/// Computes a [`Digest`] incrementally.
#[derive(Clone, Default)]
pub struct Digester {
    len: u64,
    crc: crc32fast::Hasher,
}

impl Digester {
    pub fn update(&mut self, data: &[u8]) {
        self.len += data.len() as u64;
        self.crc.update(data);
    }

    pub fn digest(&self) -> Digest {
        Digest {
            len: self.len,
            crc: self.crc.clone().finalize(),
        }
    }
}

/// Digest of a byte slice.
pub fn digest(data: &[u8]) -> Digest {
    let mut d = Digester::default();
    d.update(data);
    d.digest()
}

/// Length of the pattern's random block: a prime, so no buffer, frame or
/// window size lines up with it.
const BLOCK: u64 = 1_048_573;
/// Rotation between successive blocks; with `BLOCK` prime the stream only
/// repeats after `BLOCK` blocks (~1 TiB), so a chunk delivered twice or in
/// the wrong place never matches the bytes expected there.
const STEP: u64 = 7_919;

/// A deterministic pseudo-random byte stream of unbounded length: block
/// `k` is a random block rotated by `k * STEP`. Generating and checking it
/// is a couple of `memcpy`s per read, fast even in unoptimised tests.
#[derive(Clone)]
pub struct Pattern {
    block: Arc<Vec<u8>>,
    /// Where in the stream this view starts.
    start: u64,
}

impl Pattern {
    /// The stream for `seed` (splitmix64 fills the block).
    pub fn new(seed: u64) -> Pattern {
        let mut x = seed ^ 0x5DEE_CE66_D1CE_5EED;
        let mut v = Vec::with_capacity(BLOCK as usize + 8);
        while (v.len() as u64) < BLOCK {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            v.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        v.truncate(BLOCK as usize);
        Pattern {
            block: Arc::new(v),
            start: 0,
        }
    }

    /// The same stream starting `offset` bytes in: cheap distinct streams
    /// for many sessions.
    pub fn skip(&self, offset: u64) -> Pattern {
        Pattern {
            block: self.block.clone(),
            start: self.start + offset,
        }
    }

    /// Fills `buf` with the stream's bytes from position `pos`.
    pub fn fill(&self, pos: u64, buf: &mut [u8]) {
        let mut p = self.start + pos;
        let mut out = &mut buf[..];
        while !out.is_empty() {
            let (k, i) = (p / BLOCK, p % BLOCK);
            let src = (i + (k % BLOCK) * STEP) % BLOCK;
            let n = (BLOCK - i).min(BLOCK - src).min(out.len() as u64) as usize;
            out[..n].copy_from_slice(&self.block[src as usize..src as usize + n]);
            out = &mut out[n..];
            p += n as u64;
        }
    }

    /// The first `len` bytes, in memory (for files and small payloads).
    pub fn bytes(&self, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.fill(0, &mut v);
        v
    }

    /// Digest of the first `len` bytes.
    pub fn digest(&self, len: u64) -> Digest {
        let mut d = Digester::default();
        let mut buf = vec![0u8; 256 * 1024];
        let mut pos = 0;
        while pos < len {
            let n = (len - pos).min(buf.len() as u64) as usize;
            self.fill(pos, &mut buf[..n]);
            d.update(&buf[..n]);
            pos += n as u64;
        }
        d.digest()
    }
}

const CHUNK: usize = 128 * 1024;

/// Writes the first `len` bytes of `pattern` to `w` (all of them, or the
/// error that stopped it) and returns the digest of what was written.
/// `progress` counts bytes the writer accepted, as they are accepted.
pub fn send(
    w: &mut impl Write,
    pattern: &Pattern,
    len: u64,
    progress: Option<&AtomicU64>,
) -> io::Result<Digest> {
    let mut d = Digester::default();
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    while pos < len {
        let n = (len - pos).min(CHUNK as u64) as usize;
        pattern.fill(pos, &mut buf[..n]);
        let mut off = 0;
        while off < n {
            match w.write(&buf[off..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => {
                    off += m;
                    if let Some(p) = progress {
                        p.fetch_add(m as u64, Ordering::Relaxed);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        d.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(d.digest())
}

/// What a reader got.
#[derive(Clone, Debug, Default)]
pub struct Received {
    /// Digest of every byte read.
    pub digest: Digest,
    /// Offset of the first byte that differed from the expected pattern.
    pub mismatch: Option<u64>,
    /// The stream ended with EOF (rather than an error).
    pub eof: bool,
    /// The error that ended the stream, if one did.
    pub error: Option<io::ErrorKind>,
    /// When the stream ended (EOF or error).
    pub ended: Option<Instant>,
}

impl Received {
    /// Fails the test unless exactly the first `len` bytes of `pattern`
    /// arrived, followed by EOF, and the sender's digest agrees.
    #[track_caller]
    pub fn assert_intact(&self, what: &str, sent: Digest, pattern: &Pattern, len: u64) {
        assert_eq!(self.error, None, "{what}: the stream ended with an error");
        assert!(self.eof, "{what}: no EOF after the data");
        assert_eq!(
            self.mismatch, None,
            "{what}: first wrong byte at this offset"
        );
        assert_eq!(self.digest.len, len, "{what}: bytes received");
        assert_eq!(sent.len, len, "{what}: bytes sent");
        assert_eq!(self.digest, sent, "{what}: received vs sent checksum");
        assert_eq!(
            self.digest,
            pattern.digest(len),
            "{what}: received vs expected checksum"
        );
    }
}

/// Reads `r` until EOF or an error, checking every byte against `expect`
/// (if given). A read error ends the stream and is recorded, not returned.
pub fn receive(r: &mut impl Read, expect: Option<&Pattern>) -> Received {
    receive_counting(r, expect, None)
}

/// [`receive`], adding the bytes read to `progress` as they arrive.
pub fn receive_counting(
    r: &mut impl Read,
    expect: Option<&Pattern>,
    progress: Option<&AtomicU64>,
) -> Received {
    let mut d = Digester::default();
    let mut got = Received::default();
    let mut buf = vec![0u8; CHUNK];
    let mut want = vec![0u8; if expect.is_some() { CHUNK } else { 0 }];
    loop {
        match r.read(&mut buf) {
            Ok(0) => {
                got.eof = true;
                break;
            }
            Ok(n) => {
                if let (Some(p), None) = (expect, got.mismatch) {
                    p.fill(d.len, &mut want[..n]);
                    if buf[..n] != want[..n] {
                        let i = (0..n).find(|&i| buf[i] != want[i]).unwrap();
                        got.mismatch = Some(d.len + i as u64);
                    }
                }
                d.update(&buf[..n]);
                if let Some(p) = progress {
                    p.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                got.error = Some(e.kind());
                break;
            }
        }
    }
    got.ended = Some(Instant::now());
    got.digest = d.digest();
    got
}

/// Sends `len` bytes of `send_pat` on `stream` and half-closes, while
/// reading everything that comes back checked against `expect`; both at
/// once. Returns what was sent and what was received.
pub fn exchange_on(
    stream: TcpStream,
    send_pat: &Pattern,
    len: u64,
    expect: Option<&Pattern>,
) -> (io::Result<Digest>, Received) {
    let mut w = stream.try_clone().expect("clone socket");
    let pat = send_pat.clone();
    let writer = spawn_small("writer", move || {
        let r = send(&mut w, &pat, len, None);
        let _ = w.shutdown(Shutdown::Write);
        r
    });
    let mut r = stream;
    let got = receive(&mut r, expect);
    let sent = writer.join().expect("writer thread panicked");
    (sent, got)
}

/// Spawns a named thread with a small stack, for tests that run hundreds.
pub fn spawn_small<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    thread::Builder::new()
        .name(name.to_string())
        .stack_size(256 * 1024)
        .spawn(f)
        .expect("spawn thread")
}

/// Runs `f` on a thread and returns a handle whose result can be awaited
/// with a timeout (a `JoinHandle` cannot).
pub fn background<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Pending<T> {
    let (tx, rx) = mpsc::channel();
    spawn_small(name, move || {
        let _ = tx.send(f());
    });
    Pending {
        name: name.to_string(),
        rx,
    }
}

/// The result of a [`background`] thread.
pub struct Pending<T> {
    name: String,
    rx: mpsc::Receiver<T>,
}

impl<T> Pending<T> {
    /// The thread's result; panics if it panicked or took over `timeout`.
    #[track_caller]
    pub fn wait(self, timeout: Duration) -> T {
        match self.rx.recv_timeout(timeout) {
            Ok(v) => v,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("{} did not finish within {timeout:?}", self.name)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{} panicked", self.name),
        }
    }
}

/// A one-shot latch threads can wait on with a timeout.
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    pub fn open(&self) {
        *lock(&self.open) = true;
        self.cv.notify_all();
    }

    /// Whether the gate opened within `timeout`.
    pub fn wait(&self, timeout: Duration) -> bool {
        let g = lock(&self.open);
        let (g, _) = self
            .cv
            .wait_timeout_while(g, timeout, |open| !*open)
            .unwrap_or_else(|e| e.into_inner());
        *g
    }
}

/// Checks `done` every `every` until it holds (true) or `timeout` ends
/// (false).
pub fn poll_until(timeout: Duration, every: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(every);
    }
}

/// Polls `counter` until it stops growing for `quiet`, or `timeout` ends.
/// Returns the value and whether it settled.
pub fn wait_stall(counter: &AtomicU64, quiet: Duration, timeout: Duration) -> (u64, bool) {
    let deadline = Instant::now() + timeout;
    let mut last = counter.load(Ordering::Relaxed);
    let mut since = Instant::now();
    loop {
        thread::sleep(Duration::from_millis(50));
        let now = Instant::now();
        let v = counter.load(Ordering::Relaxed);
        if v != last {
            last = v;
            since = now;
        } else if now - since >= quiet {
            return (v, true);
        }
        if now >= deadline {
            return (v, false);
        }
    }
}

// ---------------------------------------------------------------------------
// Targets

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
    let mut app = connect(addr);
    let started = Instant::now();
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

/// A scratch directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "striper-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_deterministic_and_position_addressed() {
        let p = Pattern::new(7);
        let whole = p.bytes(3 * BLOCK as usize + 100);
        assert_eq!(whole, Pattern::new(7).bytes(whole.len()));
        // Any position can be regenerated on its own, across block edges.
        for pos in [0, 1, BLOCK - 3, BLOCK, 2 * BLOCK + 17] {
            let mut b = vec![0; 4096];
            p.fill(pos, &mut b);
            assert_eq!(b[..], whole[pos as usize..pos as usize + 4096]);
        }
        assert_eq!(
            p.skip(BLOCK + 5).bytes(10),
            whole[BLOCK as usize + 5..][..10]
        );
        assert_ne!(
            whole[..BLOCK as usize],
            whole[BLOCK as usize..2 * BLOCK as usize]
        );
    }

    #[test]
    fn receive_catches_swapped_lost_and_repeated_chunks() {
        let p = Pattern::new(8);
        let good = p.bytes(2 * BLOCK as usize + 4096);
        let ok = receive(&mut &good[..], Some(&p));
        assert_eq!((ok.mismatch, ok.eof), (None, true));
        assert_eq!(ok.digest, p.digest(good.len() as u64));

        // Two 32 KiB frames swapped one block apart: same bytes, wrong place.
        let mut swapped = good.clone();
        let (a, b) = (100_000, 100_000 + BLOCK as usize);
        let tmp = swapped[a..a + 32768].to_vec();
        swapped.copy_within(b..b + 32768, a);
        swapped[b..b + 32768].copy_from_slice(&tmp);
        assert_eq!(
            receive(&mut &swapped[..], Some(&p)).mismatch,
            Some(a as u64)
        );

        let mut lost = good.clone();
        lost.drain(5000..6000);
        assert_eq!(receive(&mut &lost[..], Some(&p)).mismatch, Some(5000));

        let mut repeated = good[..10_000].to_vec();
        repeated.extend_from_slice(&good[9_000..]);
        assert_eq!(receive(&mut &repeated[..], Some(&p)).mismatch, Some(10_000));
    }
}
