//! The processes a test runs: the workspace binaries, built in release mode
//! once per test process, and [`Proc`], a child whose standard error is
//! collected line by line. Kept apart from the tunnel that starts them
//! because tools other than the tunnel's ends (`linkemu`, `sshd`) use them.

use std::ffi::OsString;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use super::{START_TIMEOUT, TERM_GRACE, lock, poll_until};

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
        cmd.args(args).env("RUST_LOG", log);
        Proc::spawn_listening_cmd(name, cmd)
    }

    /// [`Proc::spawn_listening`] for a command the caller prepared (its
    /// environment, say); standard input and output are closed.
    pub fn spawn_listening_cmd(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
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
