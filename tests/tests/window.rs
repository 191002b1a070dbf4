//! Memory is bounded by the server's own settings, whatever a client
//! claims: two sessions that announce a 1 GiB window and never acknowledge
//! anything, while their target pushes data as fast as it can, make a
//! server started with `--window 1M` hold at most about its own window per
//! session. Before the server capped the peer's window at its own, the same
//! two sessions took such a server from 3 MiB to 612 MiB.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use pipes::proto::handshake::{ClientHello, Kind, TargetName};
use striper_tests::harness::rawv2::{RawStripe, key_of};
use striper_tests::harness::{self, ConnReport, KeyFile, Target};

const MIB: u64 = 1 << 20;
/// What the target tries to push into each session.
const PUSH: usize = 256 << 20;
/// How long the pushing goes on before the server's memory is judged.
const PUSH_FOR: Duration = Duration::from_secs(4);

/// Writes as much as the connection takes, for at most `PUSH_FOR` + 1 s.
fn push(_: usize, mut s: TcpStream) -> ConnReport {
    let chunk = vec![0x5au8; 256 << 10];
    let until = Instant::now() + PUSH_FOR + Duration::from_secs(1);
    let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
    let mut sent = 0;
    while sent < PUSH && Instant::now() < until {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    ConnReport::default()
}

#[test]
fn a_huge_announced_window_cannot_make_the_server_hold_more_than_its_own() {
    let target = Target::start(push);
    let key = KeyFile::generate();
    let mut server = harness::start_server(&key, target.addr(), &["--window", "1M"], "info");
    let at_rest = server.memory_kib().rss_kib;
    let k = key_of(&key);
    let mut stripes = Vec::new();
    for n in 0..2u8 {
        let hello = ClientHello {
            kind: Kind::Open,
            index: 0,
            count: 1,
            session: [n + 1; 16],
            window: 1 << 30,
            max_payload: 256 << 10,
            backup: false,
            target: TargetName::DEFAULT,
        };
        let mut secret = [0u8; 32];
        rand::fill(&mut secret);
        // Never read from, never acknowledging: everything the target sends
        // is unacknowledged for as long as the session lives.
        stripes.push(RawStripe::open(server.addr(), &hello, &k, secret));
    }
    assert!(
        target.wait_accepted(2, Duration::from_secs(10)),
        "both sessions reached the target"
    );
    let started = Instant::now();
    let mut peak = 0;
    while started.elapsed() < PUSH_FOR {
        peak = peak.max(server.memory_kib().rss_kib);
        std::thread::sleep(Duration::from_millis(50));
    }
    let grew = peak.saturating_sub(at_rest);
    eprintln!(
        "server RSS {} KiB at rest, {peak} KiB at the peak: +{:.1} MiB for 2 sessions of --window 1M announcing 1 GiB",
        at_rest,
        grew as f64 / 1024.0
    );
    // Per session: its 1 MiB window of unacknowledged bytes (plus a little
    // for a frame being written), a stripe's read buffer, the target's read
    // buffer; allocator slack aside.
    assert!(
        grew < 16 * MIB / 1024,
        "the server grew by {grew} KiB for two sessions (bound 16 MiB)"
    );
    drop(stripes);
    server.assert_healthy();
}

/// `--memory-budget`: while the sessions' buffers hold more than it, new
/// sessions are refused ("server busy"); once the hog is gone, they are
/// served again.
#[test]
fn new_sessions_wait_for_room_in_the_memory_budget() {
    let target = Target::start(push);
    let key = KeyFile::generate();
    let mut server = harness::start_server(
        &key,
        target.addr(),
        &[
            "--window",
            "1M",
            "--memory-budget",
            "128K",
            "--resume-timeout",
            "0",
            // The hog never answers keepalives: it must outlive the test.
            "--keepalive",
            "20",
            "--idle-keepalive",
            "20",
            "--stripe-timeout",
            "60",
        ],
        "info",
    );
    // A session that holds what it can: the target pushes, the client never
    // reads. It holds the stripe's and the target's read buffers, and its
    // unacknowledged bytes: those in the kernel's socket buffers (small,
    // since the hog's receive window never opens) and up to 64 KiB more.
    let hello = ClientHello {
        kind: Kind::Open,
        index: 0,
        count: 1,
        session: [9; 16],
        window: 1 << 30,
        max_payload: 256 << 10,
        backup: false,
        target: TargetName::DEFAULT,
    };
    let hog = RawStripe::open(server.addr(), &hello, &key_of(&key), [7; 32]);
    assert!(target.wait_accepted(1, Duration::from_secs(10)));
    let client = harness::start_client(&key, server.addr(), 2, &["--resume-timeout", "0"], "info");
    // Retried until the hog's window is full: then a new session is refused.
    let refused = harness::poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let mut app = harness::connect(client.addr());
        let _ = app.write_all(b"x");
        let mut b = [0u8; 1];
        let _ = std::io::Read::read(&mut app, &mut b);
        client
            .log_text()
            .contains("refused the stripe: server busy")
    });
    assert!(refused, "no session was refused while the budget was spent");
    let line = server.wait_log("server busy", Duration::from_secs(5));
    assert!(line.contains("was refused a stripe"), "{line}");
    // The hog leaves; its session ends at once (--resume-timeout 0) and
    // gives its memory back: sessions are served again.
    drop(hog);
    server.wait_log("session 0909090909090909 closed", Duration::from_secs(10));
    let mut app = harness::connect(client.addr());
    app.write_all(b"ping").unwrap();
    app.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 4];
    // The target pushes to every session: its first bytes come back.
    std::io::Read::read_exact(&mut app, &mut b).expect("a session after the hog left");
    assert_eq!(b, [0x5a; 4]);
    server.assert_healthy();
}
