//! A peer past its handshake that breaks the protocol, against the real
//! stripe-server on loopback. The forged client is written by hand from
//! the protocol (`harness::rawv2`); both ends run with
//! `--insecure-no-auth`, whose all-zero key it uses for a real v2
//! handshake (Noise NNpsk0 first flight, the server's answer, the sealed
//! confirmation).
//!
//! * A malformed frame ends its session, with the violation named in the
//!   server's log and in the RST frame the client gets, and does not
//!   disturb a concurrent genuine session. Each malformed frame is sealed
//!   in a record with the stripe's keys, so it passes the record's tag and
//!   reaches the server's frame and session checks; the server's RST is
//!   read by opening its records with the stripe's keys.
//! * A tampered record (a flipped bit: the tag fails) ends only its
//!   stripe, not the session: the server names the failed record, keeps
//!   the session (and its target connection) for the client to come back,
//!   and a JOIN that brings the session's secret resumes it with every
//!   byte intact.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use pipes::proto::auth::Key;
use pipes::proto::frame::{self, FrameType, ResetReason};
use pipes::proto::handshake::{Kind, short_id};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use striper_tests::harness::rawv2::{self, EchoSession, RawStripe};
use striper_tests::harness::{
    self, HeldSession, Pattern, Proc, Target, digest, echo, start_client, start_server,
};

const MIB: u64 = 1 << 20;
/// Bound on waiting for an expected log line.
const LOG_WAIT: Duration = Duration::from_secs(10);
/// Bound on a genuine session's whole transfer.
const TRANSFER: Duration = Duration::from_secs(90);

fn client_conn(client: &Proc) -> TcpStream {
    harness::connect(client.addr())
}

/// A hand-made client stripe: the only stripe of a new session (a random
/// id and secret), past its handshake with a server running without a
/// key (so with the all-zero key of `--insecure-no-auth`).
fn open_raw(server: SocketAddr, rng: &mut StdRng) -> (RawStripe, String) {
    let hello = rawv2::hello(Kind::Open, 0, 1, rng.random());
    let raw = RawStripe::open(server, &hello, &Key::none(), rng.random());
    (raw, short_id(&hello.session))
}

/// A frame header with its fields as given (the check field zero, as in a
/// sealed record, unless `check_set`), followed by `payload`.
fn raw_frame(
    ty: u8,
    reserved: u16,
    len: u32,
    value: u64,
    payload: &[u8],
    check_set: bool,
) -> Vec<u8> {
    let mut h = vec![0u8; frame::HEADER_LEN];
    h[0] = ty;
    h[2..4].copy_from_slice(&reserved.to_be_bytes());
    h[4..8].copy_from_slice(&len.to_be_bytes());
    h[8..16].copy_from_slice(&value.to_be_bytes());
    h[16..20].copy_from_slice(&u32::from(check_set).to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn data(offset: u64, len: usize) -> Vec<u8> {
    rawv2::data(offset, &vec![b'x'; len])
}

/// The server's receive window in this test (`--window`): data towards
/// the server may reach up to this far past what it delivered.
const WINDOW: u64 = MIB;

/// A protocol violation: the frames the forged client sends after its
/// handshake (each sealed in a record of its own) and what the server's
/// log and its RST must say.
struct Case {
    what: &'static str,
    frames: Vec<Vec<u8>>,
    expect: &'static [&'static str],
}

fn cases() -> Vec<Case> {
    let fin = |v| frame::encode_sealed_vec(FrameType::Fin, 0, v, &[]);
    vec![
        Case {
            what: "check field set",
            frames: vec![
                data(0, 1000),
                raw_frame(1, 0, 1000, 1000, &[b'y'; 1000], true),
            ],
            // The bad frame's record began after the first record: its
            // length (4 bytes), frame (1,020) and tag (16).
            expect: &["stripe 0 check field 0x00000001 set", "at offset 1040"],
        },
        Case {
            what: "DATA beyond the window",
            frames: vec![data(WINDOW, 100)],
            expect: &["stripe 0", "beyond the receive window"],
        },
        Case {
            what: "FIN below data already seen",
            frames: vec![data(0, 1000), fin(500)],
            expect: &["stripe 0", "FIN at offset 500 contradicts"],
        },
        Case {
            what: "second FIN moving the end",
            frames: vec![data(0, 1000), fin(1000), fin(2000)],
            expect: &["stripe 0", "FIN at offset 2000 contradicts"],
        },
        Case {
            what: "DATA beyond the FIN",
            frames: vec![fin(100), data(0, 200)],
            expect: &["stripe 0", "beyond the announced end of stream 100"],
        },
        Case {
            what: "unknown frame type",
            frames: vec![raw_frame(9, 0, 0, 0, &[], false)],
            expect: &["stripe 0", "unknown frame type 9"],
        },
        Case {
            what: "reserved bits",
            frames: vec![raw_frame(5, 0x0100, 0, 0, &[], false)],
            expect: &["stripe 0", "reserved header bits"],
        },
        Case {
            // A record holding only the header: its length is judged on
            // its own, before any payload.
            what: "length over the cap",
            frames: vec![raw_frame(1, 0, 4 << 20, 0, &[], false)[..frame::HEADER_LEN].to_vec()],
            expect: &["stripe 0", "exceeds the"],
        },
        Case {
            // A record is exactly one frame: a second frame inside it is
            // not taken.
            what: "two frames in one record",
            frames: vec![[data(0, 100), data(100, 100)].concat()],
            expect: &[
                "stripe 0",
                "a record of 240 bytes holding a frame of 120 bytes",
            ],
        },
        Case {
            what: "ACK beyond what was sent",
            frames: vec![frame::encode_sealed_vec(FrameType::Ack, 0, 5000, &[])],
            expect: &["stripe 0", "ACK of offset 5000"],
        },
    ]
}

#[test]
fn malformed_frames_end_only_their_session() {
    let started = Instant::now();
    let target = Target::start(echo);
    let insecure = ["--insecure-no-auth".to_string()];
    let window = ["--window", "1M"];
    let mut server = start_server(&insecure[..], target.addr(), &window, "info");
    let mut client = start_client(&insecure[..], server.addr(), 3, &window, "info");

    // A genuine session, moving data (paced) while the forged ones fail.
    let session = HeldSession::start(
        client_conn(&client),
        Pattern::new(71),
        24 * MIB,
        20 * MIB,
        Some(8 * MIB),
    );
    assert!(
        session.wait_echoed(MIB, TRANSFER),
        "the genuine session did not start"
    );

    let mut rng = StdRng::seed_from_u64(7);
    for (n, case) in cases().into_iter().enumerate() {
        let (mut raw, short) = open_raw(server.addr(), &mut rng);
        raw.send(&case.frames).expect("send the sealed frames");
        let t = Instant::now();
        let closing = raw.read_to_close(Duration::from_secs(5));
        let (ended, took) = (closing.ended, closing.took);
        assert_ne!(
            ended,
            Err(io::ErrorKind::TimedOut),
            "{}: the server did not close the stripe",
            case.what
        );
        assert!(
            took < Duration::from_secs(3),
            "{}: closed after {took:?}",
            case.what
        );
        // Whatever came opened under the stripe's keys: the server seals
        // everything, its RST too.
        assert_eq!(
            closing.bad, None,
            "{}: a record from the server did not open",
            case.what
        );
        // The server connected to the target when the forged session
        // opened (it came through the handshake); that connection is torn
        // down with the session, at once.
        assert!(
            target.wait_accepted(n + 2, Duration::from_secs(3)),
            "{}: target connections: {}",
            case.what,
            target.accepted()
        );
        let torn = target.wait_live(Duration::from_secs(3), |n| n == 1);
        let target_took = t.elapsed();
        assert!(
            torn,
            "{}: the forged session's target connection was still open after {target_took:?}",
            case.what
        );
        // The server closes the session once its stripe is closed (it
        // lingers for the peer's EOF so that its RST is not lost).
        drop(raw);
        let line = server.wait_log(&format!("session {short} closed after "), LOG_WAIT);
        for e in case.expect {
            assert!(
                line.contains(e),
                "{}: the server's log names {e:?}: {line}",
                case.what
            );
        }
        // What the forged client was told: the session's last words reach
        // it (every byte it sent was read, so the close is a FIN, not a
        // reset, and the server lingers for our EOF).
        let (code, msg) = closing
            .rst()
            .unwrap_or_else(|| panic!("{}: no RST among {:?}", case.what, closing.frames));
        assert_eq!(
            code,
            ResetReason::Protocol,
            "{}: RST code ({msg})",
            case.what
        );
        for e in case.expect {
            assert!(msg.contains(e), "{}: the RST names {e:?}: {msg}", case.what);
        }
        eprintln!(
            "{}: stripe closed after {took:?} ({ended:?}), target connection after {target_took:?}; \
             {} frame(s) opened, RST {msg:?}",
            case.what,
            closing.frames.len(),
        );
        eprintln!("  server: {line}");
    }
    let echoed_during = session.echoed();
    session.finish("genuine session", TRANSFER);
    let line = server
        .find_log(LOG_WAIT, |l| {
            l.contains(" closed after ") && l.contains("3 stripes,")
        })
        .unwrap_or_else(|| server.fail("no close line for the genuine session"));
    assert!(
        line.contains("both sides closed") && !line.contains("lost"),
        "the genuine session closed normally: {line}"
    );
    let cline = client.wait_log(" closed after ", LOG_WAIT);
    assert!(cline.contains("both sides closed"), "{cline}");
    server.assert_healthy();
    client.assert_healthy();
    eprintln!(
        "genuine session: {:.1} MiB echoed while the forged sessions failed; {line}",
        echoed_during as f64 / MIB as f64
    );
    eprintln!("whole test {:.1} s", started.elapsed().as_secs_f64());
}

/// Bytes echoed through the hand-made session before and after its stripe
/// is lost.
const ROUND: usize = 256 * 1024;

#[test]
fn tampered_record_ends_only_its_stripe() {
    let target = Target::start(echo);
    let insecure = ["--insecure-no-auth".to_string()];
    let mut server = start_server(&insecure[..], target.addr(), &[], "info");
    let mut rng = StdRng::seed_from_u64(8);
    let (id, secret) = (rng.random(), rng.random());
    let short = short_id(&id);
    let pattern = Pattern::new(81);

    // A one-stripe session made by hand, echoing.
    let hello = rawv2::hello(Kind::Open, 0, 1, id);
    let raw = RawStripe::open(server.addr(), &hello, &Key::none(), secret);
    let mut session = EchoSession::new(raw);
    let first = pattern.bytes(ROUND);
    let back = session.echo(&first, TRANSFER).expect("echo before");
    assert_eq!(digest(&back), digest(&first), "echoed intact before");

    // A DATA record at the next offset (bytes the session must never
    // deliver), one bit of its ciphertext flipped.
    let (sent, _) = session.counts();
    let mut record = session.stripe.seal(&rawv2::data(sent, &[0xEE; 1000]));
    record[100] ^= 0x10;
    session
        .stripe
        .write_raw(&record)
        .expect("send the tampered record");
    let closing = session.stripe.read_to_close(Duration::from_secs(5));
    assert_ne!(
        closing.ended,
        Err(io::ErrorKind::TimedOut),
        "the server kept the stripe open after a record failed its tag"
    );
    assert!(closing.took < Duration::from_secs(3), "{closing:?}");
    let lost = server.wait_log(&format!("session {short}: stripe 0 lost: "), LOG_WAIT);
    assert!(
        lost.contains("authentication failed on record"),
        "the server names the record that failed: {lost}"
    );
    // The session waits for its client: its target connection stays open.
    server.wait_log("every stripe is gone; keeping the session", LOG_WAIT);
    assert_eq!(target.live(), 1, "the session's target connection is open");
    assert_eq!(server.count_log(&format!("session {short} closed")), 0);

    // The client comes back with the session's secret: every byte goes on.
    let second = pattern.skip(ROUND as u64).bytes(ROUND);
    let hello = rawv2::hello(Kind::Join, 0, 1, id);
    let raw = RawStripe::open(server.addr(), &hello, &Key::none(), secret);
    drop(session.replace_stripe(raw));
    let back = session.echo(&second, TRANSFER).expect("echo after");
    assert_eq!(digest(&back), digest(&second), "echoed intact after");
    let rejoined = server.wait_log(&format!("session {short}: stripe 0 re-joined"), LOG_WAIT);
    let closing = session.finish(TRANSFER).expect("a clean end");
    assert_eq!(closing.rst(), None, "{closing:?}");
    let line = server.wait_log(&format!("session {short} closed after "), LOG_WAIT);
    assert!(line.contains("both sides closed"), "{line}");
    assert_eq!(target.accepted(), 1, "one session, one target connection");
    // The target read every byte once, and none of the tampered record's.
    target.assert_read_exactly(&[first, second].concat(), LOG_WAIT);
    server.assert_healthy();
    eprintln!("tampered record: {lost}");
    eprintln!("  {rejoined}");
    eprintln!("  {line}");
}
