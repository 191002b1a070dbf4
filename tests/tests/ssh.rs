//! Real OpenSSH through the tunnel: a private sshd (throwaway host and user
//! keys, loopback only) behind stripe-server, reached
//!
//! * through stripe-client's listening port (`ssh -p CLIENT_PORT`), and
//! * through `ssh -o ProxyCommand='stripe-client --stdio --server ...'`;
//!
//! each way a remote command runs (`echo hello`) and a 20 MiB random file
//! is copied up (`ssh host 'cat > f' < file`) and down (`ssh host 'cat f'`),
//! arriving byte-identical. Logs show every session went through stripes.
//!
//! The test needs `sshd`, `ssh` and `ssh-keygen` (Debian: openssh-server and
//! openssh-client). Without them it fails and says so: CI installs them,
//! and a skipped ssh test would hide a broken tunnel.

use std::fs::File;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use striper_tests::harness::{self, Digest, Pattern, Proc, TempDir, Tunnel, digest};
use striper_tests::sshd::{Sshd, Tools, user};

const FILE_LEN: usize = 20 << 20;
/// Bound on one ssh invocation (a 20 MiB copy takes well under a second).
const SSH_TIMEOUT: Duration = Duration::from_secs(60);

/// One ssh invocation of `remote_cmd`, with standard input from `stdin`
/// (or nothing) and standard output into `stdout`. `route` is the options
/// and destination that pick the way in (`-p PORT user@host`, or a
/// ProxyCommand). Returns ssh's standard error, which includes the
/// ProxyCommand's.
fn ssh(
    tools: &Tools,
    sshd: &Sshd,
    route: &[String],
    remote_cmd: &str,
    stdin: Option<&Path>,
    stdout: &Path,
) -> Vec<String> {
    let mut cmd = sshd.ssh_command(tools, route, remote_cmd);
    cmd.env("RUST_LOG", "info")
        .stdout(File::create(stdout).expect("create ssh output file"));
    match stdin {
        Some(p) => cmd.stdin(File::open(p).expect("open ssh input file")),
        None => cmd.stdin(Stdio::null()),
    };
    let mut p = Proc::spawn("ssh", cmd);
    match p.wait_exit(SSH_TIMEOUT) {
        Some(st) if st.success() => p.lines(),
        Some(st) => p.fail(&format!("`{remote_cmd}` failed: {st}")),
        None => p.fail(&format!(
            "`{remote_cmd}` did not finish within {SSH_TIMEOUT:?}"
        )),
    }
}

fn file_digest(p: &Path) -> Digest {
    digest(&std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())))
}

/// The remote command, the upload and the download over one route; returns
/// the logs of the three ssh runs.
fn exercise(tools: &Tools, sshd: &Sshd, dir: &Path, route: &[String], tag: &str) -> Vec<String> {
    let mut logs = Vec::new();
    let out = dir.join(format!("{tag}-hello.out"));
    logs.extend(ssh(tools, sshd, route, "echo hello", None, &out));
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "hello\n",
        "{tag}: remote command output"
    );

    let src = dir.join(format!("{tag}-src.bin"));
    std::fs::write(&src, Pattern::new(600).bytes(FILE_LEN)).unwrap();
    let want = file_digest(&src);
    let up = dir.join(format!("{tag}-up.bin"));
    let remote = format!("cat > '{}'", up.display());
    logs.extend(ssh(
        tools,
        sshd,
        route,
        &remote,
        Some(&src),
        &dir.join("up.out"),
    ));
    assert_eq!(file_digest(&up), want, "{tag}: uploaded file");

    let down = dir.join(format!("{tag}-down.bin"));
    let remote = format!("cat '{}'", src.display());
    logs.extend(ssh(tools, sshd, route, &remote, None, &down));
    assert_eq!(file_digest(&down), want, "{tag}: downloaded file");
    eprintln!("{tag}: echo, 20 MiB up and 20 MiB down intact ({want})");
    logs
}

fn start_all(tag: &str) -> (Tools, TempDir, Sshd, Tunnel) {
    let tools = Tools::find();
    let dir = TempDir::new(tag);
    let sshd = Sshd::start(&tools, dir.path(), &[]);
    let target = format!("127.0.0.1:{}", sshd.port).parse().unwrap();
    let tunnel = Tunnel::start(target, 4);
    (tools, dir, sshd, tunnel)
}

#[test]
fn ssh_via_listening_client() {
    let (tools, dir, mut sshd, mut tunnel) = start_all("ssh-listen");
    let route = vec![
        "-p".to_string(),
        tunnel.addr().port().to_string(),
        format!("{}@127.0.0.1", user()),
    ];
    exercise(&tools, &sshd, dir.path(), &route, "listen");
    // Three ssh connections, three striped sessions, all closed cleanly.
    tunnel
        .client
        .wait_log_count("both sides closed", 3, Duration::from_secs(10));
    tunnel
        .server
        .wait_log_count("4 stripes announced", 3, Duration::from_secs(10));
    tunnel.assert_healthy();
    sshd.proc.assert_healthy();
}

#[test]
fn ssh_via_proxy_command() {
    let (tools, dir, mut sshd, mut tunnel) = start_all("ssh-proxy");
    let proxy = format!(
        "ProxyCommand='{}' --stdio --server {} --stripes 4 --key-file '{}'",
        harness::bin("stripe-client").display(),
        tunnel.server.addr(),
        tunnel.key.path().display()
    );
    // The host name only labels the connection: ProxyCommand carries it.
    let route = vec!["-o".to_string(), proxy, format!("{}@striper-test", user())];
    let logs = exercise(&tools, &sshd, dir.path(), &route, "proxy");
    // The stdio client logs to ssh's standard error: one session per run.
    let opened = logs
        .iter()
        .filter(|l| l.contains("stripe_client") && l.contains("over 4 stripes"))
        .count();
    assert_eq!(opened, 3, "stdio sessions opened:\n{}", logs.join("\n"));
    tunnel
        .server
        .wait_log_count("4 stripes announced", 3, Duration::from_secs(10));
    // The listening client was not used on this route.
    assert!(!tunnel.client.log_text().contains("session"));
    tunnel.assert_healthy();
    sshd.proc.assert_healthy();
}
