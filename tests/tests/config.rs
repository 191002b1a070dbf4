//! `--config FILE`: both programs run from a TOML file alone, flags on the
//! command line override it, and a key that is no option is refused with
//! its name and line.

use std::process::Command;

use striper_tests::harness::{self, KeyFile, Proc, Target, TempDir, echo};

fn write(dir: &TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn both_programs_run_from_a_config_file_and_flags_override_it() {
    let target = Target::start(echo);
    let key = KeyFile::generate();
    let dir = TempDir::new("config");
    let keyp = key.path().display().to_string();
    let server_cfg = write(
        &dir,
        "server.toml",
        &format!(
            "# stripe-server\nlisten = \"127.0.0.1:0\"\ntarget = \"{}\"\nkey-file = \"{keyp}\"\nwindow = \"8M\"\nmax-sessions = 16\n",
            target.addr()
        ),
    );
    let mut server = Proc::spawn_listening(
        "stripe-server",
        "stripe-server",
        &["--config".into(), server_cfg],
        "info",
    );
    let client_cfg = write(
        &dir,
        "client.toml",
        &format!(
            "listen = \"127.0.0.1:0\"\nserver = \"{}\"\nstripes = 2\nkey-file = \"{keyp}\"\n",
            server.addr()
        ),
    );
    let args = [
        "--config".to_string(),
        client_cfg,
        "--stripes".into(),
        "3".into(),
    ];
    let mut client = Proc::spawn_listening("stripe-client", "stripe-client", &args, "info");
    let line = client.wait_log("listening on", std::time::Duration::from_secs(10));
    assert!(
        line.contains("over 3 stripes"),
        "the flag overrides the file: {line}"
    );
    harness::assert_echo_session(client.addr(), 11, 1 << 20);
    server.assert_healthy();
    client.assert_healthy();
}

#[test]
fn an_unknown_key_is_refused_with_its_name_and_line() {
    let dir = TempDir::new("config-bad");
    let cfg = write(&dir, "bad.toml", "listen = \"127.0.0.1:0\"\n\nstrips = 4\n");
    let out = Command::new(harness::bin("stripe-client"))
        .args(["--config", &cfg])
        .output()
        .expect("run stripe-client");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("line 3: unknown key `strips`"), "{err}");
    assert!(
        err.contains("bad.toml"),
        "the message names the file: {err}"
    );
}
