//! An attacker on the path, through the real binaries on loopback.
//!
//! * A relay between client and server flips one byte of a stripe's
//!   traffic after its handshake: that record fails its tag, the server
//!   drops that stripe (its log names the stripe and says "authentication
//!   failed"), its bytes go out again on the other stripes, and the target
//!   receives exactly the bytes sent (checksums).
//! * A relay that records every byte both ways finds no trace of a marker
//!   the application sent 10,000 times, and none of the session's data.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use striper_tests::harness::relay::Relay;
use striper_tests::harness::{self, KeyFile, Pattern, Target, echo, exchange_on};

const MIB: u64 = 1 << 20;

/// One flipped byte in the middle of stripe traffic costs that stripe, not
/// the session, and never reaches the target.
#[test]
fn a_flipped_byte_ends_its_stripe_and_the_bytes_arrive_intact() {
    let target = Target::start(echo);
    let key = KeyFile::generate();
    let mut server = harness::start_server(&key, target.addr(), &[], "info");
    // 100 KB into the client-to-server bytes of the first stripe that
    // carries that far: well past its handshake (148 bytes), inside its
    // frames. (A fixed stripe might carry less: on loopback the scheduler
    // may leave one nearly idle.)
    let relay = Relay::start(server.addr(), usize::MAX, Some(100_000));
    let mut client = harness::start_client(&key, relay.addr(), 4, &[], "info");
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
    let relay = Relay::start(server.addr(), usize::MAX, None);
    let client = harness::start_client(&key, relay.addr(), 4, &[], "info");
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
    let seen = relay.recorded();
    let total: usize = seen.iter().map(|r| r.up.len() + r.down.len()).sum();
    assert!(
        total >= 2 * msg.len(),
        "the relay saw the whole session ({total} bytes)"
    );
    let needle = &MARKER[..16];
    for (i, r) in seen.iter().enumerate() {
        for (dir, bytes) in [("to the server", &r.up), ("to the client", &r.down)] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "connection {i} {dir}: the marker is visible on the path"
            );
        }
    }
}
