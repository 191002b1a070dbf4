//! Who may join a live session, against the real stripe-server on
//! loopback (protocol v3). A session's id travels only encrypted, and a
//! stripe is let into a session only if its confirmation (its first sealed
//! record) brings the session's secret, which the client drew when it
//! opened the session. So even a holder of the pre-shared key who knows a
//! live session's id cannot join it:
//!
//! * without the key, a stripe naming the session (OPEN or JOIN) is closed
//!   unanswered: "failed authentication";
//! * with the key and the id but another secret, as OPEN or JOIN, on the
//!   live stripe's index or on the free one, with frames behind its
//!   confirmation: the server answers the hello (the session exists) and
//!   then closes the stripe, naming it ("could not join session ...: it
//!   does not hold the session's secret"); nothing is sent to it;
//! * the genuine session goes on untouched: its bytes come back intact
//!   before and after, the target reads exactly them (checksum), its
//!   stripe is never replaced, and it ends cleanly.
//!
//! Both sessions are made by hand (`harness::rawv2`): the test needs the
//! full session id, which no log shows, and the real client never sends
//! another secret. Each forged stripe comes from its own loopback address,
//! so the server's once-per-address warnings name each one.

use std::io;
use std::time::Duration;

use pipes::proto::auth::Key;
use pipes::proto::frame::{self, FrameType};
use pipes::proto::handshake::{Kind, Secret, SessionId, short_id};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use striper_tests::harness::rawv2::{
    self, EchoSession, RawStripe, Refused, connect_from, hello, loopback,
};
use striper_tests::harness::{KeyFile, Pattern, Target, digest, echo, start_server};

/// How soon a forged stripe must be closed: a refusal on loopback is known
/// within milliseconds; 3 s leaves room for a loaded machine but not for
/// any timeout (the handshake timeout is 10 s).
const PROMPT: Duration = Duration::from_secs(3);
/// Bound on waiting for an expected log line.
const LOG_WAIT: Duration = Duration::from_secs(10);
/// Bound on one echo round of the genuine session.
const TRANSFER: Duration = Duration::from_secs(60);
/// Bytes of each echo round.
const ROUND: usize = 256 * 1024;
/// The genuine session announces two stripes and opens only the first:
/// forged stripes try the live index and the free one.
const STRIPES: u8 = 2;

#[test]
fn a_stripe_without_the_session_secret_cannot_join() {
    let target = Target::start(echo);
    let key_file = KeyFile::generate();
    let mut server = start_server(&key_file, target.addr(), &[], "info");
    let key = rawv2::key_of(&key_file);
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let id: SessionId = rng.random();
    let secret: Secret = rng.random();
    let short = short_id(&id);
    let pattern = Pattern::new(4);

    // The genuine session: stripe 0 of 2, echoing its first round.
    let genuine = RawStripe::open(
        server.addr(),
        &hello(Kind::Open, 0, STRIPES, id),
        &key,
        secret,
    );
    let mut genuine = EchoSession::new(genuine);
    let first = pattern.bytes(ROUND);
    let back = genuine.echo(&first, TRANSFER).expect("the first round");
    assert_eq!(digest(&back), digest(&first), "the first round came back");
    server.wait_log(&format!("session {short} opened"), LOG_WAIT);

    // Without the key: closed before any answer.
    let other = Key::from_bytes(rng.random());
    let mut n = 0;
    for (kind, index) in [(Kind::Open, 0), (Kind::Join, 1)] {
        n += 1;
        let what = format!("{kind:?} stripe {index} with another key");
        let conn = connect_from(loopback(n), server.addr());
        let peer = conn.local_addr().unwrap();
        let h = hello(kind, index, STRIPES, id);
        match RawStripe::handshake(conn, &h, &other, rng.random(), PROMPT + LOG_WAIT) {
            Err(Refused::Closed {
                answer,
                ended,
                took,
            }) => {
                assert!(answer.is_empty(), "{what}: answered {answer:?}");
                assert_ne!(ended, Err(io::ErrorKind::TimedOut), "{what}: kept open");
                assert!(took < PROMPT, "{what}: closed after {took:?}");
            }
            Ok(_) => panic!("{what}: the server took the stripe"),
            Err(r) => panic!("{what}: the server answered: {r:?}"),
        }
        let line = server.wait_log(
            &format!("connection from {peer} failed authentication"),
            LOG_WAIT,
        );
        eprintln!("{what}: {line}");
    }

    // With the key and the id, another secret; DATA and a FIN behind the
    // confirmation that would corrupt the session's stream if taken in.
    let forged = [
        (Kind::Open, 0),
        (Kind::Join, 0),
        (Kind::Join, STRIPES - 1),
        (Kind::Open, STRIPES - 1),
    ];
    for (kind, index) in forged {
        n += 1;
        let what = format!("{kind:?} stripe {index} with another secret");
        let conn = connect_from(loopback(n), server.addr());
        let peer = conn.local_addr().unwrap();
        let h = hello(kind, index, STRIPES, id);
        let mut stripe = RawStripe::handshake(conn, &h, &key, rng.random(), PROMPT)
            .unwrap_or_else(|r| panic!("{what}: the live session's hello was refused: {r:?}"));
        // The server may close before it has read these.
        let _ = stripe.send(&[
            rawv2::data(0, &[0xEE; 4096]),
            frame::encode_sealed_vec(FrameType::Fin, 0, 4096, &[]),
        ]);
        let closing = stripe.read_to_close(PROMPT + LOG_WAIT);
        assert_ne!(
            closing.ended,
            Err(io::ErrorKind::TimedOut),
            "{what}: the server kept the stripe open"
        );
        assert!(closing.took < PROMPT, "{what}: closed after {closing:?}");
        assert_eq!(closing.bytes, 0, "{what}: the server sent it records");
        let line = server.wait_log(
            &format!("stripe {index} from {peer} could not join session {short}"),
            LOG_WAIT,
        );
        assert!(
            line.contains("it does not hold the session's secret"),
            "{what}: {line}"
        );
        eprintln!("{what}: closed after {:?}; {line}", closing.took);
    }

    // The genuine session is untouched: its next round comes back intact,
    // on the same stripe, and it ends cleanly.
    let second = pattern.skip(ROUND as u64).bytes(ROUND);
    let back = genuine.echo(&second, TRANSFER).expect("the second round");
    assert_eq!(digest(&back), digest(&second), "the second round came back");
    let closing = genuine.finish(TRANSFER).expect("a clean end");
    assert_eq!(closing.rst(), None, "{closing:?}");
    assert_eq!(closing.ended, Ok(()), "{closing:?}");
    let line = server.wait_log(&format!("session {short} closed after "), LOG_WAIT);
    assert!(
        line.contains("both sides closed") && !line.contains("lost"),
        "the genuine session ended cleanly: {line}"
    );
    let changes: Vec<String> = server
        .lines()
        .into_iter()
        .filter(|l| l.contains("re-joined") || l.contains("replaced"))
        .collect();
    assert!(changes.is_empty(), "the stripe was replaced: {changes:?}");
    assert_eq!(server.count_log(" opened: "), 1, "one session opened");
    assert_eq!(target.accepted(), 1, "one target connection");
    // The target read the genuine bytes, exactly, and the session's end.
    target.assert_read_exactly(&[first, second].concat(), LOG_WAIT);
    server.assert_healthy();
    eprintln!("genuine session: {line}");
}
