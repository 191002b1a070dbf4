//! Real OpenSSH for the end-to-end tests: a private `sshd` on a free
//! loopback port (throwaway host and user keys, accepting only the test's
//! key) and `ssh` invocations that log in to it with that key, through
//! whatever route the test gives (a port, a ProxyCommand).
//!
//! The tests need `sshd`, `ssh` and `ssh-keygen` (Debian: openssh-server
//! and openssh-client). Without them they fail and say so: CI installs
//! them, and a skipped ssh test would hide a broken tunnel.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{self, Proc, run_ok};

/// Finds a program on PATH or in the usual places, or fails the test with
/// what to install.
pub fn require(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the ssh tests need `{name}`, which is not installed: \
                 install {package} (e.g. `apt-get install -y {package}`); \
                 scripts/test.sh and CI do this"
            )
        })
}

/// The OpenSSH programs the tests run.
pub struct Tools {
    pub sshd: PathBuf,
    pub ssh: PathBuf,
    pub keygen: PathBuf,
}

impl Tools {
    /// Finds all three, or fails the test with what to install.
    pub fn find() -> Tools {
        Tools {
            sshd: require("sshd", "openssh-server"),
            ssh: require("ssh", "openssh-client"),
            keygen: require("ssh-keygen", "openssh-client"),
        }
    }

    /// Writes a fresh passphrase-less ed25519 key pair at `path` (and
    /// `path.pub`).
    pub fn keygen(&self, path: &Path) {
        run_ok(
            Command::new(&self.keygen)
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "striper-test", "-f"])
                .arg(path),
        );
    }
}

/// The name of the user the tests run as (who logs in to [`Sshd`]).
pub fn user() -> String {
    run_ok(Command::new("id").arg("-un")).trim().to_string()
}

/// A private sshd on a free loopback port, accepting only the test's key.
pub struct Sshd {
    pub proc: Proc,
    pub port: u16,
    /// The private key it accepts.
    pub user_key: PathBuf,
}

impl Sshd {
    /// Starts sshd with its keys and configuration in `dir`; each line of
    /// `extra_config` is added to its `sshd_config` (a keyword the base
    /// configuration does not set, such as `ClientAliveInterval 0`).
    pub fn start(tools: &Tools, dir: &Path, extra_config: &[&str]) -> Sshd {
        let host_key = dir.join("host_key");
        let user_key = dir.join("user_key");
        tools.keygen(&host_key);
        tools.keygen(&user_key);
        std::fs::copy(dir.join("user_key.pub"), dir.join("authorized_keys"))
            .expect("write authorized_keys");
        let config = dir.join("sshd_config");
        let mut text = format!(
            "HostKey {host}\n\
             PidFile {pid}\n\
             AuthorizedKeysFile {auth}\n\
             StrictModes no\n\
             UsePAM no\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\n\
             PermitRootLogin prohibit-password\n\
             LogLevel INFO\n",
            host = host_key.display(),
            pid = dir.join("sshd.pid").display(),
            auth = dir.join("authorized_keys").display(),
        );
        for line in extra_config {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(&config, text).expect("write sshd_config");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // Debian's sshd refuses to start without its privilege
            // separation directory, normally made by the init system.
            std::fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd");
        }
        // The port is picked by binding port 0 and releasing it, so another
        // process may take it before sshd binds: then try another.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut cmd = Command::new(&tools.sshd);
            cmd.args(["-D", "-e", "-f"])
                .arg(&config)
                .arg("-o")
                .arg(format!("ListenAddress=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            let mut proc = Proc::spawn("sshd", cmd);
            let ready = format!("Server listening on 127.0.0.1 port {port}");
            match proc.find_log(harness::START_TIMEOUT, |l| {
                l.contains(&ready) || l.contains("Bind to port") || l.contains("fatal")
            }) {
                Some(l) if l.contains(&ready) => {
                    return Sshd {
                        proc,
                        port,
                        user_key,
                    };
                }
                Some(l) if l.contains("Bind to port") => {
                    eprintln!("sshd could not bind port {port}, trying another: {l}");
                    continue;
                }
                other => proc.fail(&format!("sshd did not start: {other:?}")),
            }
        }
        panic!("sshd could not bind a free port in 5 tries");
    }

    /// An ssh command running `remote_cmd` here with the test's key and no
    /// configuration, host key checks or prompts. `route` is the options
    /// and destination that pick the way in (`-p PORT user@host`, or a
    /// ProxyCommand), and any other options. Standard input, output and
    /// the environment are the caller's to set.
    /// An ssh session copying `src` to `remote` on this host through a
    /// tunnel listening on `port` (`cat > REMOTE && sha256sum REMOTE`),
    /// started; its output, the remote file's SHA-256, goes to `out`.
    /// ssh's own keepalives are off: only the tunnel keeps it alive.
    pub fn start_copy(
        &self,
        tools: &Tools,
        port: u16,
        src: &Path,
        remote: &Path,
        out: &Path,
    ) -> Proc {
        let route = [
            "-o".to_string(),
            "ServerAliveInterval=0".to_string(),
            "-p".to_string(),
            port.to_string(),
            format!("{}@127.0.0.1", user()),
        ];
        let mut cmd = self.ssh_command(
            tools,
            &route,
            &format!("cat > '{r}' && sha256sum '{r}'", r = remote.display()),
        );
        cmd.stdin(File::open(src).expect("open the source file"))
            .stdout(File::create(out).expect("create the ssh output file"));
        Proc::spawn("ssh", cmd)
    }

    pub fn ssh_command(&self, tools: &Tools, route: &[String], remote_cmd: &str) -> Command {
        let mut cmd = Command::new(&tools.ssh);
        cmd.args(["-F", "/dev/null", "-i"])
            .arg(&self.user_key)
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=20",
            ])
            .args(route)
            .arg(remote_cmd);
        cmd
    }
}

/// Waits up to `timeout` for a copy from [`Sshd::start_copy`] to succeed
/// (failing the test otherwise) and returns the remote file's SHA-256.
pub fn finish_copy(ssh: &mut Proc, out: &Path, timeout: Duration) -> String {
    match ssh.wait_exit(timeout) {
        Some(st) if st.success() => {}
        Some(st) => ssh.fail(&format!("the copy failed: {st}")),
        None => ssh.fail(&format!("the copy did not finish within {timeout:?}")),
    }
    let said = std::fs::read_to_string(out).expect("read the ssh output");
    said.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The SHA-256 of a local file, by `sha256sum`.
pub fn sha256(path: &Path) -> String {
    run_ok(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string()
}
