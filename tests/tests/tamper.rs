//! An attacker on the path, through the real binaries on loopback.
//!
//! * A relay between client and server flips one byte of a stripe's
//!   traffic after its handshake: that record fails its tag, the server
//!   drops that stripe (its log names the stripe and says "authentication
//!   failed"), its bytes go out again on the other stripes, and the target
//!   receives exactly the bytes sent (checksums).
//! * A relay that records every byte both ways finds no trace of a marker
//!   the application sent 10,000 times, and none of the session's data.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use striper_tests::harness::{self, KeyFile, Pattern, Target, echo, exchange_on};

const MIB: u64 = 1 << 20;

/// Every connection's bytes: (client to server, server to client).
type Seen = Arc<Mutex<Vec<(Vec<u8>, Vec<u8>)>>>;

/// A TCP relay that records what crosses it, and may flip one byte.
struct Relay {
    addr: SocketAddr,
    seen: Seen,
    stop: Arc<AtomicBool>,
}

impl Relay {
    /// Relays to `upstream`; `flip` = (connection number, offset in its
    /// client-to-server bytes) of the byte to flip.
    fn start(upstream: SocketAddr, flip: Option<(usize, u64)>) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let addr = l.local_addr().unwrap();
        let seen: Seen = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        harness::spawn_small("relay-accept", move || {
            for conn in l.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let (Ok(down), Ok(up)) = (conn, TcpStream::connect(upstream)) else {
                    continue;
                };
                let i = {
                    let mut g = seen2.lock().unwrap();
                    g.push(Default::default());
                    g.len() - 1
                };
                let at = flip.and_then(|(n, off)| (n == i).then_some(off));
                let (d2, u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
                let (s1, s2) = (seen2.clone(), seen2.clone());
                harness::spawn_small("relay-up", move || {
                    pump(down, up, at, |b| {
                        s1.lock().unwrap()[i].0.extend_from_slice(b)
                    })
                });
                harness::spawn_small("relay-down", move || {
                    pump(u2, d2, None, |b| {
                        s2.lock().unwrap()[i].1.extend_from_slice(b)
                    })
                });
            }
        });
        Relay { addr, seen, stop }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Copies `from` to `to` until EOF (passed on as a half-close) or an error
/// (both closed), recording what passes and flipping the byte at `flip`.
fn pump(mut from: TcpStream, mut to: TcpStream, flip: Option<u64>, mut seen: impl FnMut(&[u8])) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = 0u64;
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                seen(&buf[..n]);
                if let Some(f) = flip
                    && (at..at + n as u64).contains(&f)
                {
                    buf[(f - at) as usize] ^= 0x20;
                }
                at += n as u64;
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// One flipped byte in the middle of stripe traffic costs that stripe, not
/// the session, and never reaches the target.
#[test]
fn a_flipped_byte_ends_its_stripe_and_the_bytes_arrive_intact() {
    let target = Target::start(echo);
    let key = KeyFile::generate();
    let mut server = harness::start_server(&key, target.addr(), &[], "info");
    // 100 KB into the first connection's client-to-server bytes: well past
    // its handshake (148 bytes), inside its frames.
    let relay = Relay::start(server.addr(), Some((0, 100_000)));
    let mut client = harness::start_client(&key, relay.addr, 4, &[], "info");
    let pat = Pattern::new(0x7a3);
    let len = 16 * MIB;
    let (sent, got) = exchange_on(harness::connect(client.addr()), &pat, len, Some(&pat));
    got.assert_intact(
        "session across a tampered stripe",
        sent.expect("send"),
        &pat,
        len,
    );
    let line = server.wait_log("authentication failed", Duration::from_secs(10));
    assert!(
        line.contains("stripe 0")
            || line.contains("stripe 1")
            || line.contains("stripe 2")
            || line.contains("stripe 3"),
        "the log names the stripe: {line}"
    );
    assert!(
        line.contains(" lost: "),
        "the stripe is dropped, not the session: {line}"
    );
    assert!(
        !server.log_text().contains("protocol violation"),
        "a tampered record is not blamed on the client"
    );
    server.assert_healthy();
    client.assert_healthy();
}

/// Nothing an application sends is visible on the path.
#[test]
fn a_recording_relay_sees_no_trace_of_the_applications_bytes() {
    const MARKER: &[u8] = b"MARKER-c0ffee-PAY-0100-EUR-TO-alice;";
    const TIMES: usize = 10_000;
    let target = Target::start(echo);
    let key = KeyFile::generate();
    let server = harness::start_server(&key, target.addr(), &[], "info");
    let relay = Relay::start(server.addr(), None);
    let client = harness::start_client(&key, relay.addr, 4, &[], "info");
    let mut app = harness::connect(client.addr());
    let msg = MARKER.repeat(TIMES);
    let mut w = app.try_clone().unwrap();
    let writer = {
        let msg = msg.clone();
        harness::spawn_small("marker-writer", move || {
            w.write_all(&msg).and_then(|()| w.shutdown(Shutdown::Write))
        })
    };
    app.set_read_timeout(Some(harness::IO_TIMEOUT)).unwrap();
    let mut back = Vec::new();
    app.read_to_end(&mut back).expect("the echo");
    writer.join().expect("writer").expect("write");
    assert!(
        back == msg,
        "echo intact ({} of {} bytes)",
        back.len(),
        msg.len()
    );
    drop(client);
    let seen = relay.seen.lock().unwrap().clone();
    let total: usize = seen.iter().map(|(u, d)| u.len() + d.len()).sum();
    assert!(
        total >= 2 * msg.len(),
        "the relay saw the whole session ({total} bytes)"
    );
    let needle = &MARKER[..16];
    for (i, (up, down)) in seen.iter().enumerate() {
        for (dir, bytes) in [("to the server", up), ("to the client", down)] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "connection {i} {dir}: the marker is visible on the path"
            );
        }
    }
}
