//! Admission under a flood: silent connections from one address must not
//! lock out honest clients connecting from another.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use striper_tests::harness::{self, KeyFile, Target, echo};

const PENDING: usize = 8;
/// Silent connections a second: ten times --max-pending.
const FLOOD_RATE: usize = 10 * PENDING;
const HONEST: usize = 10;
const HANDSHAKE_BOUND: Duration = Duration::from_secs(1);

/// A connection from `from` to `to` that never sends anything.
fn silent_conn(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&SocketAddr::new(from.parse().expect("an address"), 0).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(1))?;
    Ok(s.into())
}

/// At --max-pending 8, 80 silent connections a second from 127.0.0.2 (each
/// kept open until the server closes it, or the flood ends) while honest
/// sessions open one after another from 127.0.0.1: every honest session's
/// first echo comes back within 1 s, handshakes included. Before sources
/// had limits of their own, 40 a second stopped every honest handshake.
#[test]
fn a_silent_flood_from_one_address_does_not_lock_out_another() {
    let target = Target::start(echo);
    let key = KeyFile::generate();
    let pending = PENDING.to_string();
    let mut server =
        harness::start_server(&key, target.addr(), &["--max-pending", &pending], "info");
    let mut client = harness::start_client(&key, server.addr(), 4, &[], "info");
    let server_addr = server.addr();

    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let flood = {
        let (stop, opened) = (stop.clone(), opened.clone());
        harness::background("silent-flood", move || {
            let mut held = Vec::new();
            let every = Duration::from_secs(1) / FLOOD_RATE as u32;
            let started = Instant::now();
            // Bounded: at most 30 s of flood, whatever the test does.
            for i in 0..FLOOD_RATE * 30 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match silent_conn("127.0.0.2", server_addr) {
                    Ok(s) => {
                        held.push(s);
                        opened.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => eprintln!("flood connect: {e}"),
                }
                let next = started + every * (i as u32 + 1);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            held.len()
        })
    };
    // The flood is on once the server has had to refuse some of it, and
    // has run for half a second.
    server.wait_log("--max-pending", Duration::from_secs(10));
    let warm = harness::poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
        opened.load(Ordering::Relaxed) >= FLOOD_RATE / 2
    });
    assert!(warm, "the flood did not get going");

    let mut slowest = Duration::ZERO;
    for i in 0..HONEST {
        let started = Instant::now();
        let mut app = harness::connect(client.addr());
        let msg = format!("honest {i}");
        app.write_all(msg.as_bytes()).expect("write to the client");
        app.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = vec![0u8; msg.len()];
        let r = app.read_exact(&mut got);
        let took = started.elapsed();
        if r.is_err() || got != msg.as_bytes() {
            stop.store(true, Ordering::Relaxed);
            client.fail(&format!("honest session {i} failed after {took:?}: {r:?}"));
        }
        slowest = slowest.max(took);
        // Spread the sessions over the flood (pacing, not waiting for
        // anything).
        std::thread::sleep(Duration::from_millis(150));
    }
    stop.store(true, Ordering::Relaxed);
    let held = flood.wait(Duration::from_secs(40));
    eprintln!(
        "{HONEST} honest sessions, slowest first echo {slowest:?}, during {} silent connections ({held} still open at the end)",
        opened.load(Ordering::Relaxed)
    );
    assert!(
        slowest < HANDSHAKE_BOUND,
        "an honest session took {slowest:?} to echo during the flood"
    );
    assert!(
        opened.load(Ordering::Relaxed) >= 2 * FLOOD_RATE,
        "the flood was too weak to prove anything"
    );
    server.assert_healthy();
    client.assert_healthy();
}
