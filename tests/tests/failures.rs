//! What the application sees when the far side fails, through the real
//! binaries on loopback. For a target that refuses, a server that is down
//! and a target that resets mid-stream:
//!
//! * the client closes the application's connection promptly (within
//!   [`PROMPT`]) instead of leaving it hanging;
//! * the client's log names the cause (refused / reset) and the party
//!   (the target's or the server's address);
//! * neither process exits or logs a panic, and the same processes then
//!   carry a normal session byte-identically.
//!
//! Also: SIGTERM to the client mid-session aborts that session (a reset
//! for the application, the reason in the server's log) and the client
//! exits 0; the server keeps serving, and exits 0 on SIGTERM itself.

use std::io::{ErrorKind, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use striper_tests::harness::{
    self, AppClosed, KeyFile, Pattern, Proc, Target, Tunnel, assert_closed_promptly,
    assert_echo_session, dead_addr, echo, read_until_closed, reset_after, send,
};

/// How soon the application's connection must be closed after the failure.
/// On loopback a refusal or reset is known within milliseconds; 3 s leaves
/// room for a loaded machine but not for any timeout-based detection (the
/// connect and handshake timeouts are 10 s).
const PROMPT: Duration = Duration::from_secs(3);
/// Size of the normal session that follows each failure.
const AFTER: u64 = 4 << 20;

/// Whether the application learned of the failure as a reset rather than a
/// clean end: the client aborts the connection (RST) so that a cut-short
/// stream cannot pass for a complete one. Reading and writing share one
/// socket, and the kernel reports a reset to only the first call that
/// looks, so either may be the one that saw it.
/// The "session ... closed" line of `p`, which carries the cause.
fn close_line(p: &mut Proc) -> String {
    p.wait_log(" closed after ", Duration::from_secs(10))
}

/// An application connection through the client listening on `addr`,
/// whose session fails: it sends a little and must be closed within
/// [`PROMPT`], with a reset.
#[track_caller]
fn assert_reset_promptly(addr: SocketAddr) -> AppClosed {
    let app = assert_closed_promptly(addr, b"hello?", PROMPT);
    assert!(
        harness::saw_reset(&app.wrote, app.closed.how.err()),
        "the application saw a reset, not a clean close: write {:?}, read {:?}",
        app.wrote,
        app.closed
    );
    app
}

#[test]
fn target_refuses() {
    let target_addr = dead_addr();
    let mut tunnel = Tunnel::start(target_addr, 4);

    // Whatever the application sends first goes nowhere: the session fails.
    let AppClosed { closed, took, .. } = assert_reset_promptly(tunnel.addr());
    assert_eq!(closed.bytes, 0, "nothing came back");

    let line = close_line(&mut tunnel.client);
    assert!(
        line.contains("refused") && line.contains(&target_addr.to_string()),
        "client's close line names the refusal and the target {target_addr}: {line}"
    );
    tunnel.assert_healthy();
    eprintln!("refused target: application closed after {took:?} ({closed:?}); {line}");

    // The target comes up on the same address: the same server relays to it.
    let target = Target::start_on(target_addr, echo);
    assert_echo_session(tunnel.addr(), 1, AFTER);
    assert_eq!(target.accepted(), 1);
    tunnel.assert_healthy();
}

#[test]
fn server_down() {
    let server_addr = dead_addr();
    let key = KeyFile::generate();
    let mut client = harness::start_client(&key, server_addr, 4, &[], "info");

    let AppClosed { closed, took, .. } = assert_reset_promptly(client.addr());

    let line = close_line(&mut client);
    assert!(
        (line.contains("refused") || line.contains("unreachable"))
            && line.contains(&server_addr.to_string()),
        "client's close line names the failure and the server {server_addr}: {line}"
    );
    client.assert_healthy();
    eprintln!("server down: application closed after {took:?} ({closed:?}); {line}");

    // The server comes up on that address: the same client now works.
    let target = Target::start(echo);
    let mut server = harness::start_server_on(&key, server_addr, target.addr(), &[], "info");
    assert_echo_session(client.addr(), 2, AFTER);
    client.assert_healthy();
    server.assert_healthy();
}

#[test]
fn target_resets_mid_stream() {
    const BEFORE_RESET: u64 = 256 * 1024;
    // The first connection is reset after some data, later ones echo.
    let target = Target::start(|i, s| {
        if i == 0 {
            reset_after(s, BEFORE_RESET)
        } else {
            echo(i, s)
        }
    });
    let mut tunnel = Tunnel::start(target.addr(), 4);

    let app = tunnel.connect();
    let mut writer_side = app.try_clone().unwrap();
    let pushed = Arc::new(AtomicU64::new(0));
    let p = pushed.clone();
    // Keeps sending well past the reset, as a real application would.
    let writer = harness::background("app-writer", move || {
        send(&mut writer_side, &Pattern::new(3), 64 << 20, Some(&p))
    });
    let mut reader = app;
    let closed = read_until_closed(&mut reader, Duration::from_secs(20));
    let report = target.wait_reports(1, Duration::from_secs(10)).remove(0);
    let reset_at = report.reset_at.expect("the target reset its connection");
    assert!(
        report.received.as_ref().unwrap().digest.len >= BEFORE_RESET,
        "the reset came mid-stream, after data: {report:?}"
    );
    assert_ne!(
        closed.how,
        Err(ErrorKind::TimedOut),
        "the application's connection was still open 20 s later"
    );
    let took = closed.at.saturating_duration_since(reset_at);
    assert!(
        took < PROMPT,
        "closed {took:?} after the target's reset, bound {PROMPT:?}"
    );
    let sent = writer.wait(Duration::from_secs(10));
    assert!(
        harness::saw_reset(&sent, closed.how.err()),
        "the application saw a reset, not a clean close: send {sent:?}, read {closed:?}"
    );

    let line = close_line(&mut tunnel.client);
    assert!(
        line.contains("reset"),
        "client's close line names the reset: {line}"
    );
    tunnel.assert_healthy();
    eprintln!(
        "target reset: application closed {took:?} after it ({closed:?}, send: {sent:?}); {line}"
    );

    assert_echo_session(tunnel.addr(), 4, AFTER);
    tunnel.assert_healthy();
}

/// SIGTERM to the client mid-session: the session is aborted (the
/// application sees a reset, the server logs why), the client exits with
/// status 0 within its grace period, and the server carries on. SIGTERM to
/// the idle server then ends it cleanly too.
#[test]
fn sigterm_aborts_sessions_and_exits_cleanly() {
    let target = Target::start(echo);
    let mut tunnel = Tunnel::start(target.addr(), 4);

    let mut app = tunnel.connect();
    let msg = Pattern::new(5).bytes(64 * 1024);
    app.write_all(&msg).unwrap();
    let mut back = vec![0; msg.len()];
    std::io::Read::read_exact(&mut app, &mut back).expect("echo before the signal");
    assert_eq!(back, msg);

    let started = Instant::now();
    let status = tunnel.client.terminate(harness::TERM_GRACE);
    let took = started.elapsed();
    let status = status.unwrap_or_else(|| {
        tunnel
            .client
            .fail(&format!("did not exit within {:?}", harness::TERM_GRACE))
    });
    assert!(status.success(), "stripe-client exit status {status}");
    let closed = read_until_closed(&mut app, PROMPT);
    assert_ne!(
        closed.how,
        Err(ErrorKind::TimedOut),
        "application left open"
    );
    assert!(
        harness::saw_reset(&Ok::<(), std::io::Error>(()), closed.how.err()),
        "the application saw a reset, not a clean close: {closed:?}"
    );
    tunnel
        .client
        .wait_log("all sessions closed; exiting", Duration::from_secs(1));
    let line = close_line(&mut tunnel.server);
    assert!(
        line.contains("shutting down"),
        "server's close line gives the client's reason: {line}"
    );
    tunnel.server.assert_healthy();
    eprintln!("client exited {status} {took:?} after SIGTERM; server: {line}");

    // A new client with the same key gets through the same server.
    let mut client = harness::start_client(&tunnel.key, tunnel.server.addr(), 4, &[], "info");
    assert_echo_session(client.addr(), 6, AFTER);
    client.assert_healthy();
    drop(client);

    let status = tunnel.server.terminate(harness::TERM_GRACE);
    assert!(
        status.is_some_and(|s| s.success()),
        "stripe-server exit status {status:?}"
    );
    tunnel
        .server
        .wait_log("all sessions closed; exiting", Duration::from_secs(1));
}
