//! Several forwards through one pair, named targets, and SIGHUP reload,
//! with the real binaries run from config files: each forward reaches its
//! own target; an unknown name is refused with the cause on both ends; a
//! reload adds, removes and keeps listeners and targets while live
//! sessions move their bytes intact; a bad file on reload changes nothing.

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use striper_tests::harness::{
    self, HeldSession, KeyFile, Pattern, Proc, Target, TempDir, connect, echo, read_until_closed,
};

const WAIT: Duration = Duration::from_secs(20);

/// A config file in `dir`, rewritten by [`Config::set`].
struct Config {
    path: String,
}

impl Config {
    fn new(dir: &TempDir, name: &str, text: &str) -> Config {
        let path = dir.path().join(name).to_str().unwrap().to_string();
        let c = Config { path };
        c.set(text);
        c
    }

    /// Replaces the file at once (written aside, then renamed), so a
    /// reload never reads half of it.
    fn set(&self, text: &str) {
        let tmp = format!("{}.tmp", self.path);
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }

    fn args(&self) -> Vec<String> {
        vec!["--config".into(), self.path.clone()]
    }
}

fn server_toml(key: &KeyFile, listen: &str, targets: &[String]) -> String {
    let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "listen = \"{listen}\"\nkey-file = \"{}\"\ntarget = [{}]\n",
        key.path().display(),
        list.join(", ")
    )
}

fn client_toml(
    key: &KeyFile,
    server: SocketAddr,
    listen: Option<&str>,
    forwards: &[&str],
) -> String {
    let list: Vec<String> = forwards.iter().map(|f| format!("\"{f}\"")).collect();
    let listen = listen.map_or(String::new(), |l| format!("listen = \"{l}\"\n"));
    format!(
        "server = \"{server}\"\nstripes = 2\nkey-file = \"{}\"\n{listen}forward = [{}]\n",
        key.path().display(),
        list.join(", ")
    )
}

/// The address the client listens on for `target`, from its newest
/// `listening on ADDR for target NAME` line.
fn listener_for(client: &mut Proc, target: &str) -> SocketAddr {
    let tag = format!(" for target {target},");
    client.wait_log(&tag, WAIT);
    let line = client
        .lines()
        .into_iter()
        .rev()
        .find(|l| l.contains(&tag) && l.contains("listening on "))
        .unwrap();
    line.split("listening on ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| client.fail(&format!("no address in {line:?}")))
}

/// Reloads `p` (SIGHUP) and waits for its `n`th reload to be over.
fn reload(p: &mut Proc, n: usize) {
    p.signal(libc::SIGHUP);
    p.wait_log_count("SIGHUP received: reloading", n, WAIT);
    let over = harness::poll_until(WAIT, Duration::from_millis(10), || {
        p.count_log("reloaded ") + p.count_log("reload of ") >= n
    });
    if !over {
        p.fail(&format!("reload {n} did not finish"));
    }
}

fn start(name: &str, binary: &str, cfg: &Config) -> Proc {
    Proc::spawn_listening(name, binary, &cfg.args(), "info")
}

#[test]
fn two_forwards_reach_two_targets_through_one_server() {
    let (ta, tb) = (Target::start(echo), Target::start(echo));
    let key = KeyFile::generate();
    let dir = TempDir::new("forwards-two");
    let scfg = Config::new(
        &dir,
        "server.toml",
        &server_toml(
            &key,
            "127.0.0.1:0",
            &[format!("a={}", ta.addr()), format!("b={}", tb.addr())],
        ),
    );
    let mut server = start("stripe-server", "stripe-server", &scfg);
    let ccfg = Config::new(
        &dir,
        "client.toml",
        &client_toml(
            &key,
            server.addr(),
            None,
            &["127.0.0.1:0=a", "127.0.0.1:0=b"],
        ),
    );
    let mut client = start("stripe-client", "stripe-client", &ccfg);
    let (fa, fb) = (
        listener_for(&mut client, "a"),
        listener_for(&mut client, "b"),
    );
    assert_ne!(fa, fb);

    harness::assert_echo_session(fa, 1, 1 << 20);
    assert_eq!(
        (ta.accepted(), tb.accepted()),
        (1, 0),
        "forward a reached target a only"
    );
    harness::assert_echo_session(fb, 2, 1 << 20);
    assert_eq!(
        (ta.accepted(), tb.accepted()),
        (1, 1),
        "forward b reached target b only"
    );
    server.wait_log(&format!("-> target b {}", tb.addr()), WAIT);
    client.wait_log("target b over 2 stripes", WAIT);
    server.assert_healthy();
    client.assert_healthy();
}

#[test]
fn an_unknown_target_is_refused_with_the_cause_on_both_ends() {
    let target = Target::start(echo);
    let key = KeyFile::generate();
    let dir = TempDir::new("forwards-unknown");
    let scfg = Config::new(
        &dir,
        "server.toml",
        &server_toml(&key, "127.0.0.1:0", &[target.addr().to_string()]),
    );
    let mut server = start("stripe-server", "stripe-server", &scfg);
    let ccfg = Config::new(
        &dir,
        "client.toml",
        &client_toml(
            &key,
            server.addr(),
            Some("127.0.0.1:0"),
            &["127.0.0.1:0=nope"],
        ),
    );
    let mut client = start("stripe-client", "stripe-client", &ccfg);
    let default = client.addr();
    let nope = listener_for(&mut client, "nope");

    let mut app = connect(nope);
    let _ = app.write_all(b"to nowhere");
    let closed = read_until_closed(&mut app, WAIT);
    assert_eq!(closed.bytes, 0);
    assert_ne!(
        closed.how,
        Err(ErrorKind::TimedOut),
        "the user's connection is closed"
    );
    server.wait_log("unknown target nope from 127.0.0.1:", WAIT);
    client.wait_log(
        "refused the session: unknown target: it has no target nope",
        WAIT,
    );
    assert_eq!(target.accepted(), 0, "nothing reached any target");

    // Both go on serving: the default target works.
    harness::assert_echo_session(default, 3, 256 << 10);
    assert_eq!(target.accepted(), 1);
    server.assert_healthy();
    client.assert_healthy();
}

#[test]
fn sighup_adds_a_forward_and_a_target_while_a_live_session_moves_bytes_intact() {
    let (ta, tb) = (Target::start(echo), Target::start(echo));
    let key = KeyFile::generate();
    let dir = TempDir::new("forwards-add");
    let scfg = Config::new(
        &dir,
        "server.toml",
        &server_toml(&key, "127.0.0.1:0", &[format!("a={}", ta.addr())]),
    );
    let mut server = start("stripe-server", "stripe-server", &scfg);
    let ccfg = Config::new(
        &dir,
        "client.toml",
        &client_toml(&key, server.addr(), None, &["127.0.0.1:0=a"]),
    );
    let mut client = start("stripe-client", "stripe-client", &ccfg);
    let fa = listener_for(&mut client, "a");

    let len = 8 << 20;
    let live = HeldSession::start(connect(fa), Pattern::new(4), len, 1 << 20, None);
    assert!(
        live.wait_echoed(1 << 20, WAIT),
        "the live session moved its first MiB"
    );

    // The server learns target b (and says its listen address and window
    // need a restart); then the client a forward to it.
    let more = server_toml(
        &key,
        "127.0.0.2:0",
        &[format!("a={}", ta.addr()), format!("b={}", tb.addr())],
    );
    scfg.set(&format!("{more}window = \"8M\"\n"));
    reload(&mut server, 1);
    server.wait_log("--listen changed", WAIT);
    server.wait_log("--window changed", WAIT);
    server.wait_log(&format!("b -> {}", tb.addr()), WAIT);
    ccfg.set(&client_toml(
        &key,
        server.addr(),
        None,
        &["127.0.0.1:0=a", "127.0.0.1:0=b"],
    ));
    reload(&mut client, 1);
    client.wait_log("1 kept, 0 retargeted, 0 closed, 1 new", WAIT);
    let fb = listener_for(&mut client, "b");

    harness::assert_echo_session(fb, 5, 1 << 20);
    assert_eq!(tb.accepted(), 1, "the new forward reached the new target");
    // The listener kept is the same socket, still accepting.
    harness::assert_echo_session(fa, 6, 256 << 10);
    live.finish("session spanning both reloads", WAIT);
    assert_eq!(ta.accepted(), 2);
    server.assert_healthy();
    client.assert_healthy();
}

#[test]
fn a_bad_config_on_reload_leaves_the_running_one_in_place() {
    let target = Target::start(echo);
    let key = KeyFile::generate();
    let dir = TempDir::new("forwards-bad");
    let server_text = server_toml(&key, "127.0.0.1:0", &[format!("a={}", target.addr())]);
    let scfg = Config::new(&dir, "server.toml", &server_text);
    let mut server = start("stripe-server", "stripe-server", &scfg);
    let client_text = client_toml(&key, server.addr(), None, &["127.0.0.1:0=a"]);
    let ccfg = Config::new(&dir, "client.toml", &client_text);
    let mut client = start("stripe-client", "stripe-client", &ccfg);
    let fa = listener_for(&mut client, "a");

    ccfg.set(&format!("{client_text}forward = [\n"));
    reload(&mut client, 1);
    let line = client.wait_log("reload of", WAIT);
    assert!(
        line.contains("refused") && line.contains("not valid TOML"),
        "{line}"
    );
    ccfg.set(&client_text.replace("=a\"]", "=a\", \"127.0.0.1:0=b c\"]"));
    reload(&mut client, 2);
    client.wait_log("only letters, digits", WAIT);
    scfg.set(&server_text.replace("target = [", "target = [\"x=\", "));
    reload(&mut server, 1);
    let line = server.wait_log("reload of", WAIT);
    assert!(line.contains("is not NAME=HOST:PORT"), "{line}");
    scfg.set(&format!("{server_text}windwo = 3\n"));
    reload(&mut server, 2);
    server.wait_log("line 4: unknown key `windwo`", WAIT);

    assert_eq!(
        client.count_log("listening on "),
        1,
        "no listener was added"
    );
    harness::assert_echo_session(fa, 7, 1 << 20);
    assert_eq!(
        target.accepted(),
        1,
        "the old forward and target still work"
    );
    server.assert_healthy();
    client.assert_healthy();
}

#[test]
fn a_removed_forward_stops_accepting_while_its_live_session_finishes_intact() {
    let (ta, tb) = (Target::start(echo), Target::start(echo));
    let key = KeyFile::generate();
    let dir = TempDir::new("forwards-remove");
    let scfg = Config::new(
        &dir,
        "server.toml",
        &server_toml(
            &key,
            "127.0.0.1:0",
            &[format!("a={}", ta.addr()), format!("b={}", tb.addr())],
        ),
    );
    let server = start("stripe-server", "stripe-server", &scfg);
    let ccfg = Config::new(
        &dir,
        "client.toml",
        &client_toml(
            &key,
            server.addr(),
            None,
            &["127.0.0.1:0=a", "127.0.0.1:0=b"],
        ),
    );
    let mut client = start("stripe-client", "stripe-client", &ccfg);
    let (fa, fb) = (
        listener_for(&mut client, "a"),
        listener_for(&mut client, "b"),
    );
    let len = 4 << 20;
    let live = HeldSession::start(connect(fb), Pattern::new(8), len, 1 << 20, None);
    assert!(live.wait_echoed(1 << 20, WAIT));

    ccfg.set(&client_toml(&key, server.addr(), None, &["127.0.0.1:0=a"]));
    reload(&mut client, 1);
    client.wait_log("stopped listening on 127.0.0.1:0 (target b)", WAIT);
    let refused = TcpStream::connect_timeout(&fb, WAIT);
    assert_eq!(
        refused.as_ref().map_err(|e| e.kind()).err(),
        Some(ErrorKind::ConnectionRefused),
        "the removed forward's port no longer accepts"
    );
    live.finish("live session of the removed forward", WAIT);
    harness::assert_echo_session(fa, 9, 256 << 10);
    assert_eq!((ta.accepted(), tb.accepted()), (1, 1));
    client.assert_healthy();
}

/// A child process ended (by PID) when dropped, so a failing test leaves
/// nothing running.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn stdio_with_a_target_name_reaches_that_target() {
    let (ta, tb) = (Target::start(echo), Target::start(echo));
    let key = KeyFile::generate();
    let dir = TempDir::new("forwards-stdio");
    let scfg = Config::new(
        &dir,
        "server.toml",
        &server_toml(
            &key,
            "127.0.0.1:0",
            &[format!("a={}", ta.addr()), format!("b={}", tb.addr())],
        ),
    );
    let mut server = start("stripe-server", "stripe-server", &scfg);
    let mut client = Reaped(
        Command::new(harness::bin("stripe-client"))
            .args([
                "--stdio",
                "--stripes",
                "2",
                "--target-name",
                "b",
                "--server",
            ])
            .arg(server.addr().to_string())
            .args(key.args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start stripe-client --stdio"),
    );
    let (pat, len) = (Pattern::new(10), 1 << 20);
    let (mut stdin, mut stdout) = (
        client.0.stdin.take().unwrap(),
        client.0.stdout.take().unwrap(),
    );
    let p = pat.clone();
    // Dropping standard input at the end is the application's EOF.
    let writer = harness::background("stdin", move || harness::send(&mut stdin, &p, len, None));
    let p = pat.clone();
    let reader = harness::background("stdout", move || harness::receive(&mut stdout, Some(&p)));
    let sent = writer.wait(WAIT).expect("write standard input");
    reader
        .wait(WAIT)
        .assert_intact("stdio session to target b", sent, &pat, len);
    let exited = harness::poll_until(WAIT, Duration::from_millis(10), || {
        client.0.try_wait().ok().flatten().is_some()
    });
    assert!(exited, "the stdio client exits after its session");
    assert!(client.0.try_wait().unwrap().unwrap().success());
    assert_eq!(
        (ta.accepted(), tb.accepted()),
        (0, 1),
        "only target b was reached"
    );
    server.wait_log(&format!("-> target b {}", tb.addr()), WAIT);
    server.assert_healthy();
}
