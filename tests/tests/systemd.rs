//! Running as a systemd service: the units `scripts/install.sh` installs
//! pass `systemd-analyze verify`, and both programs, started from the
//! example configs with `$NOTIFY_SOCKET` set as systemd sets it, report
//! READY=1 once they listen, their session count as STATUS, and
//! STOPPING=1 at SIGTERM, while carrying bytes intact; their log lines to
//! the journal carry syslog priorities.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use striper_tests::harness::{
    self, HeldSession, KeyFile, Pattern, Proc, START_TIMEOUT, TERM_GRACE, Target, TempDir, echo,
};

/// The workspace's `scripts/`.
fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts")
}

#[test]
fn installed_units_pass_systemd_analyze_verify() {
    let version = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "systemd-analyze is not installed ({:?}): install the Debian package `systemd` \
         (scripts/test.sh does)",
        version.err()
    );
    // Installed under a prefix of our own, the units' ExecStart names
    // binaries that exist, which verify checks.
    let dir = TempDir::new("units");
    let prefix = dir.path().join("usr");
    let bin_dir = harness::bin("stripe-server")
        .parent()
        .expect("the binaries' directory")
        .to_path_buf();
    harness::run_ok(
        Command::new(scripts().join("install.sh"))
            .env("PREFIX", &prefix)
            .env_remove("DESTDIR")
            .env_remove("UNITDIR")
            .env("BIN_DIR", &bin_dir),
    );
    let units = prefix.join("lib/systemd/system");
    let server_unit = units.join("stripe-server.service");
    let text = std::fs::read_to_string(&server_unit).expect("install.sh installs the unit");
    let exec = format!("ExecStart={}/bin/stripe-server ", prefix.display());
    assert!(
        text.contains(&exec),
        "the unit runs the installed binary ({exec}):\n{text}"
    );
    assert!(units.join("stripe-client@.service").exists());
    // An instance of the template: its %i must expand to a valid unit.
    let client_unit = units.join("stripe-client@home.service");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&server_unit)
        .arg(&client_unit)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .env("SYSTEMD_LOG_COLOR", "0")
        .stdin(Stdio::null())
        .output()
        .expect("run systemd-analyze verify");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{said}"
    );
    // Verify exits 0 on an unknown key or a bad value (it only warns).
    let ours: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("stripe-server") || l.contains("stripe-client"))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze warns about our units:\n{said}"
    );
}

/// A socket standing in for systemd's, bound where `$NOTIFY_SOCKET` says.
struct Manager {
    socket: UnixDatagram,
    env: String,
    /// Every message so far, for the failure message.
    heard: Vec<String>,
}

impl Manager {
    fn abstract_name(tag: &str) -> Manager {
        let name = format!("striper-test-notify-{tag}-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        Manager::new(UnixDatagram::bind_addr(&addr).unwrap(), format!("@{name}"))
    }

    fn path(path: &Path) -> Manager {
        let socket = UnixDatagram::bind(path).unwrap();
        Manager::new(socket, path.display().to_string())
    }

    fn new(socket: UnixDatagram, env: String) -> Manager {
        Manager {
            socket,
            env,
            heard: Vec::new(),
        }
    }

    /// Waits for a message of which some line satisfies `pred`.
    fn expect(&mut self, what: &str, mut pred: impl FnMut(&str) -> bool) -> String {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {what} at {} within {START_TIMEOUT:?}; heard {:?}",
                self.env,
                self.heard
            );
            self.socket.set_read_timeout(Some(left)).unwrap();
            let Ok(n) = self.socket.recv(&mut buf) else {
                continue;
            };
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.heard.push(msg.clone());
            if msg.lines().any(&mut pred) {
                return msg;
            }
        }
    }

    fn expect_status(&mut self, what: &str, status: &str) -> String {
        let line = format!("STATUS={status}");
        self.expect(what, |l| l == line)
    }
}

/// An example config with its `#key = value` defaults switched on, so
/// that they are checked too.
fn example(dir: &TempDir, name: &str) -> String {
    let text = std::fs::read_to_string(scripts().join("systemd").join(name)).unwrap();
    let on: String = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase()) => rest,
            _ => l,
        })
        .flat_map(|l| [l, "\n"])
        .collect();
    assert!(on != text, "{name} shows no defaults");
    let path = dir.path().join(name.trim_end_matches(".example"));
    std::fs::write(&path, on).unwrap();
    path.display().to_string()
}

fn start(name: &str, config: &str, manager: &Manager, overrides: &[String]) -> Proc {
    let mut cmd = Command::new(harness::bin(name));
    cmd.args(["--config", config])
        .args(overrides)
        .env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", &manager.env);
    Proc::spawn_listening_cmd(name, cmd)
}

#[test]
fn both_programs_notify_ready_status_and_stopping() {
    let target = Target::start(echo);
    let key = KeyFile::generate();
    let dir = TempDir::new("notify");
    let mut server_mgr = Manager::abstract_name("server");
    let mut client_mgr = Manager::path(&dir.path().join("notify.sock"));

    let mut server = start(
        "stripe-server",
        &example(&dir, "server.toml.example"),
        &server_mgr,
        &[
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--target".into(),
            target.addr().to_string(),
            "--key-file".into(),
            key.path().display().to_string(),
        ],
    );
    let ready = server_mgr.expect("READY=1", |l| l == "READY=1");
    let status = format!("STATUS=listening on {}; 0 session(s) open", server.addr());
    assert!(ready.lines().any(|l| l == status), "{ready:?}");

    let mut client = start(
        "stripe-client",
        &example(&dir, "client.toml.example"),
        &client_mgr,
        &[
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--server".into(),
            server.addr().to_string(),
            "--key-file".into(),
            key.path().display().to_string(),
        ],
    );
    let ready = client_mgr.expect("READY=1", |l| l == "READY=1");
    let status = format!("STATUS=listening on {}; 0 session(s) open", client.addr());
    assert!(ready.lines().any(|l| l == status), "{ready:?}");

    // A session held open shows in both STATUS lines, and its bytes arrive
    // intact.
    let len = 1 << 20;
    let held = HeldSession::start(
        harness::connect(client.addr()),
        Pattern::new(13),
        len,
        len / 2,
        None,
    );
    assert!(held.wait_echoed(len / 2, START_TIMEOUT), "half echoed");
    let open = format!("listening on {}; 1 session(s) open", server.addr());
    server_mgr.expect_status("a session in the server's STATUS", &open);
    let open = format!("listening on {}; 1 session(s) open", client.addr());
    client_mgr.expect_status("a session in the client's STATUS", &open);
    held.finish("session through the example configs", START_TIMEOUT);
    let closed = format!("listening on {}; 0 session(s) open", client.addr());
    client_mgr.expect_status("the closed session in the client's STATUS", &closed);
    let closed = format!("listening on {}; 0 session(s) open", server.addr());
    server_mgr.expect_status("the closed session in the server's STATUS", &closed);

    for (proc, mgr) in [
        (&mut client, &mut client_mgr),
        (&mut server, &mut server_mgr),
    ] {
        proc.assert_healthy();
        proc.signal(libc::SIGTERM);
        mgr.expect("STOPPING=1", |l| l == "STOPPING=1");
        let status = proc.wait_exit(TERM_GRACE);
        assert!(
            status.is_some_and(|s| s.success()),
            "{} after SIGTERM: {status:?}",
            proc.name()
        );
    }
}

/// Runs stripe-server with a key file that does not exist, standard error
/// to a file, and `JOURNAL_STREAM` set to `journal(file's dev, inode)`;
/// returns what it wrote.
fn failed_start_log(dir: &TempDir, journal: impl Fn(u64, u64) -> Option<String>) -> String {
    use std::os::unix::fs::MetadataExt;
    let path = dir.path().join("stderr");
    let file = std::fs::File::create(&path).unwrap();
    let meta = file.metadata().unwrap();
    let mut cmd = Command::new(harness::bin("stripe-server"));
    cmd.args(["--listen", "127.0.0.1:0", "--target", "127.0.0.1:9"])
        .args(["--key-file", "/nonexistent/striper.key"])
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file);
    if let Some(v) = journal(meta.dev(), meta.ino()) {
        cmd.env("JOURNAL_STREAM", v);
    }
    let status = cmd.status().expect("run stripe-server");
    assert_eq!(status.code(), Some(2), "a missing key file stops the start");
    std::fs::read_to_string(&path).unwrap()
}

#[test]
fn logs_to_the_journal_carry_priorities_instead_of_timestamps() {
    let dir = TempDir::new("journal");
    let log = failed_start_log(&dir, |dev, ino| Some(format!("{dev}:{ino}")));
    assert!(
        log.lines()
            .any(|l| l.starts_with("<3>ERROR ") && l.contains("cannot read key file")),
        "{log}"
    );
    assert!(
        log.lines()
            .all(|l| l.starts_with('<') && !l.contains("[20")),
        "{log}"
    );
    // Inherited by a process whose standard error went elsewhere: the
    // variable names another stream, and the usual format stays.
    for other in [
        None,
        Some(|dev: u64, ino: u64| format!("{dev}:{}", ino + 1)),
    ] {
        let log = failed_start_log(&dir, |dev, ino| other.map(|f| f(dev, ino)));
        assert!(
            log.lines().all(|l| l.starts_with("[20")) && !log.contains("<3>"),
            "{log}"
        );
        assert!(log.contains("cannot read key file"), "{log}");
    }
}
