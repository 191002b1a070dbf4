//! The pre-shared key on the command line and on disk, through the real
//! binaries: neither starts without a key or `--insecure-no-auth`, and the
//! message names both options; `genkey` writes a 0600 file and never
//! overwrites one; a key file others may read is refused, naming chmod;
//! so are a symbolic link (name the file itself), something that is not a
//! regular file (a FIFO, a directory), a file over 4 KiB, a file that is
//! not a key, and a key with `--insecure-no-auth`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use striper_tests::harness::{self, Proc, Target, TempDir, echo};

const MIB: u64 = 1 << 20;

/// Runs a binary to its exit (bounded) and returns its status and log.
fn run_to_exit(binary: &str, args: &[&str]) -> (ExitStatus, String) {
    let mut cmd = Command::new(harness::bin(binary));
    cmd.args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let mut p = Proc::spawn(binary, cmd);
    let status = p
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| p.fail(&format!("{args:?} did not exit within 10 s")));
    // Standard error closes with the process; wait for the last lines.
    let _ = p.find_log(Duration::from_secs(2), |_| false);
    (status, p.log_text())
}

/// A key file the loaders must refuse: `make` creates it at the path it is
/// given; `expect` is what the message says, besides the path.
struct Refused {
    what: &'static str,
    make: fn(&Path, &Path),
    expect: &'static str,
}

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo has no other preconditions.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(
        rc,
        0,
        "mkfifo {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Files that are not key files, whatever their content: each is refused
/// by both binaries, with a message naming the file and the reason. `key`
/// is a good key file (mode 0600).
fn not_key_files() -> [Refused; 4] {
    [
        Refused {
            what: "a symbolic link to a good key file",
            make: |at, key| std::os::unix::fs::symlink(key, at).unwrap(),
            expect: "is a symbolic link",
        },
        Refused {
            // Opened without blocking and refused before it is read.
            what: "a FIFO",
            make: |at, _| mkfifo(at),
            expect: "is not a regular file",
        },
        Refused {
            what: "a directory",
            make: |at, _| {
                std::fs::create_dir(at).unwrap();
                std::fs::set_permissions(at, std::fs::Permissions::from_mode(0o700)).unwrap();
            },
            expect: "is not a regular file",
        },
        Refused {
            // A good key behind 5,000 bytes of comments.
            what: "a file over 4 KiB",
            make: |at, key| {
                let mut text = "# padding\n".repeat(500);
                text.push_str(&std::fs::read_to_string(key).unwrap());
                std::fs::write(at, text).unwrap();
                std::fs::set_permissions(at, std::fs::Permissions::from_mode(0o600)).unwrap();
            },
            expect: "a striper key file is under 4096",
        },
    ]
}

#[test]
fn keys_are_required_generated_and_protected() {
    let target = harness::dead_addr().to_string();
    let dir = TempDir::new("keys");

    // No key and no --insecure-no-auth: neither end starts.
    for (binary, role) in [
        ("stripe-server", ["--target", target.as_str()]),
        ("stripe-client", ["--server", target.as_str()]),
    ] {
        let (status, log) = run_to_exit(binary, &["--listen", "127.0.0.1:0", role[0], role[1]]);
        assert!(!status.success(), "{binary} started without a key: {log}");
        assert!(
            log.contains("--key-file") && log.contains("--insecure-no-auth"),
            "{binary}'s message names both options: {log}"
        );
        assert!(!log.contains("listening on"), "{binary}: {log}");
        eprintln!("{binary} without a key ({status}): {log}");
    }

    // genkey writes a 0600 key file, and never overwrites one.
    let path = dir.path().join("k");
    let shown = path.display().to_string();
    let (status, log) = run_to_exit("stripe-server", &["genkey", &shown]);
    assert!(status.success(), "genkey failed ({status}): {log}");
    let meta = std::fs::metadata(&path).expect("genkey wrote the file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "key file mode");
    let text = std::fs::read_to_string(&path).unwrap();
    let hex: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    assert!(
        hex.len() == 1 && hex[0].len() == 64 && hex[0].bytes().all(|b| b.is_ascii_hexdigit()),
        "one line of 64 hex digits: {text:?}"
    );
    let (status, log) = run_to_exit("stripe-client", &["genkey", &shown]);
    assert!(!status.success(), "genkey overwrote an existing key: {log}");
    assert!(log.contains(&shown), "the message names the file: {log}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        text,
        "the existing key is unchanged"
    );
    let other = dir.path().join("k2");
    let (status, _) = run_to_exit("stripe-client", &["genkey", &other.display().to_string()]);
    assert!(status.success());
    assert_ne!(
        std::fs::read_to_string(&other).unwrap(),
        text,
        "each genkey makes a new key"
    );

    // The key works; the same file readable by group or others is refused.
    let tgt = Target::start(echo);
    let key_args = ["--key-file".to_string(), shown.clone()];
    {
        let server = harness::start_server(&key_args[..], tgt.addr(), &[], "info");
        let client = harness::start_client(&key_args[..], server.addr(), 2, &[], "info");
        harness::assert_echo_session(client.addr(), 5, MIB);
    }
    for mode in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        for binary in ["stripe-server", "stripe-client"] {
            let role = if binary == "stripe-server" {
                "--target"
            } else {
                "--server"
            };
            let (status, log) = run_to_exit(
                binary,
                &[
                    "--listen",
                    "127.0.0.1:0",
                    role,
                    &target,
                    "--key-file",
                    &shown,
                ],
            );
            assert!(
                !status.success(),
                "{binary} accepted a key file of mode {mode:03o}: {log}"
            );
            assert!(
                log.contains("chmod") && log.contains(&shown),
                "{binary}: the message says to chmod the file: {log}"
            );
            if mode == 0o644 {
                eprintln!("{binary} with a mode {mode:03o} key ({status}): {log}");
            }
        }
    }

    // A key and --insecure-no-auth together is a mistake, not a choice;
    // and a 0600 file that is not a key is refused.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let junk = dir.path().join("junk");
    std::fs::write(&junk, "not a key\n").unwrap();
    std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
    let junk = junk.display().to_string();
    let base = ["--listen", "127.0.0.1:0", "--target", &target];
    let (status, log) = run_to_exit(
        "stripe-server",
        &[&base[..], &["--key-file", &shown, "--insecure-no-auth"]].concat(),
    );
    assert!(
        !status.success(),
        "both --key-file and --insecure-no-auth: {log}"
    );
    assert!(log.contains("--insecure-no-auth"), "{log}");
    let (status, log) = run_to_exit(
        "stripe-server",
        &[&base[..], &["--key-file", &junk]].concat(),
    );
    assert!(!status.success(), "a key file that is not a key: {log}");
    assert!(
        log.contains("not a striper key") && log.contains(&junk),
        "{log}"
    );

    // Only a regular file is read: not a link to one, not a FIFO (a read
    // would block), not a directory, nothing larger than a key file can be.
    for (n, case) in not_key_files().into_iter().enumerate() {
        let at = dir.path().join(format!("not-a-key-{n}"));
        (case.make)(&at, &path);
        let at = at.display().to_string();
        for (binary, role) in [("stripe-server", "--target"), ("stripe-client", "--server")] {
            let (status, log) = run_to_exit(
                binary,
                &["--listen", "127.0.0.1:0", role, &target, "--key-file", &at],
            );
            assert!(!status.success(), "{binary} accepted {}: {log}", case.what);
            assert!(
                log.contains(case.expect) && log.contains(&at),
                "{binary}, {}: the message names the file and {:?}: {log}",
                case.what,
                case.expect
            );
            assert!(!log.contains("listening on"), "{binary}: {log}");
        }
        eprintln!("{}: refused ({})", case.what, case.expect);
    }
}
