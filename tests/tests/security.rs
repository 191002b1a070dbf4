//! Who may use the tunnel, through the real binaries on loopback
//! (protocol v3). The server holds a pre-shared key and every stripe
//! proves it from its first flight on: the preamble ("STRP" 03 00 00 00,
//! in clear) and a Noise NNpsk0 message that mixes the key in before
//! anything else and carries the hello's fields (session id included)
//! encrypted; the server's 64-byte answer is sealed the same way, and the
//! client's first sealed record (its confirmation, holding the session's
//! secret) proves it derived the stripe's fresh transport keys. A peer
//! without the key can neither produce nor read any of it:
//!
//! * a client with another key is refused: the server cannot decrypt its
//!   first flight, logs "failed authentication" and closes the stripe
//!   without a byte of answer; the client says the server closed the
//!   stripe during the handshake (what a server with another key does),
//!   its application connection is closed at once, and the target never
//!   sees a connection;
//! * a client without a key (`--insecure-no-auth`, the all-zero key) is
//!   refused the same way;
//! * authentication is mutual: a keyed client facing an impostor server
//!   (one that answers 64 random bytes, or a well-formed Noise answer made
//!   with another key) finds the answer does not decrypt and gives up, and
//!   the impostor gets nothing but the 160-byte first flight;
//! * a replayed handshake is refused: the bytes a genuine client sent on
//!   a stripe (first flight, confirmation, frames), captured on the path
//!   and replayed verbatim on a new connection, get an answer to the
//!   first flight (with a fresh ephemeral key), but the captured
//!   confirmation does not open under the fresh transport keys: "failed
//!   authentication", nothing reaches the target, and the genuine session
//!   carries on intact; after the session ends, the same replay is refused
//!   as a finished session, and a restarted server (which has forgotten
//!   the session) refuses its confirmation. The session's id never
//!   appears in clear on the path.
//!
//! Who may join a live session (another key holder without the session's
//! secret may not) is in `join.rs`; the key files and the command line in
//! `keys.rs`.
//!
//! The server logs each refusal class once per address (a flood stays one
//! warning), so each forged connection here comes from its own loopback
//! address (127.0.0.2, 127.0.0.3, ...) and its warning can be told apart by
//! address and port.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use pipes::proto::auth::Key;
use pipes::proto::frame;
use pipes::proto::handshake::{
    ClientHandshake, Kind, SECRET_LEN, ServerHandshake, ServerStep, Status,
};
use pipes::proto::noise::{CLIENT_FIRST_LEN, PREAMBLE, SERVER_ANSWER_LEN};
use pipes::proto::seal;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use striper_tests::harness::rawv2::{self, connect_from, loopback, read_up_to};
use striper_tests::harness::relay::Relay;
use striper_tests::harness::{
    self, AppClosed, HeldSession, KeyFile, Pattern, Proc, Target, assert_closed_promptly, echo,
    read_to_close,
};

const MIB: u64 = 1 << 20;
/// How soon a refused client's application connection must be closed. A
/// refusal on loopback is known within milliseconds; 3 s leaves room for
/// a loaded machine but not for any timeout (the handshake and stripe
/// timeouts are 10 s and 5 s).
const PROMPT: Duration = Duration::from_secs(3);
/// Bound on waiting for an expected log line.
const LOG_WAIT: Duration = Duration::from_secs(10);
/// Bound on a genuine session's whole transfer.
const TRANSFER: Duration = Duration::from_secs(60);
/// How long to watch for something that must not happen (a target
/// connection, a log line) after the forged connection was closed.
const SETTLE: Duration = Duration::from_millis(500);

/// The server's refusal warning for the connection from `peer`.
fn refusal_line(server: &mut Proc, peer: SocketAddr, class: &str) -> String {
    let needle = format!("connection from {peer} {class}");
    server.wait_log(&needle, LOG_WAIT)
}

/// Fails if anything was accepted by the target, after giving a stray
/// connection time to arrive.
#[track_caller]
fn assert_target_untouched(target: &Target, expected: usize) {
    thread::sleep(SETTLE);
    assert_eq!(
        target.accepted(),
        expected,
        "the target saw a connection it should not have"
    );
}

/// Bytes of the client's confirmation: one sealed record holding the
/// session's secret.
const CONFIRM_LEN: usize = seal::OVERHEAD + SECRET_LEN;
/// Bytes of the ephemeral public key that opens the server's answer.
const EPHEMERAL_LEN: usize = 32;

/// What the server did with a replayed stripe.
struct Replayed {
    /// Its answer to the replayed first flight.
    answer: Vec<u8>,
    /// Anything it sent after the answer (nothing, for a stripe it refuses).
    after: Vec<u8>,
    ended: Result<(), io::ErrorKind>,
    /// From the rest of the replay to the close.
    took: Duration,
}

/// Replays `up` (a stripe's client-to-server bytes, as captured) on a new
/// connection to `to` from the `n`th extra loopback address: its first
/// flight, then (once the server answered it) the rest, verbatim. Returns
/// the connection's own address (which the server's warning names) and
/// what came back.
fn replay(n: u8, to: SocketAddr, up: &[u8]) -> (SocketAddr, Replayed) {
    let mut conn = connect_from(loopback(n), to);
    let peer = conn.local_addr().unwrap();
    conn.write_all(&up[..CLIENT_FIRST_LEN])
        .expect("replay the first flight");
    let (answer, ended) = read_up_to(&mut conn, SERVER_ANSWER_LEN, PROMPT);
    let started = Instant::now();
    let (after, ended) = match ended {
        Some(ended) => (Vec::new(), ended),
        None => {
            // The server may close before it has read all of this.
            let _ = conn.write_all(&up[CLIENT_FIRST_LEN..]);
            read_to_close(&mut conn, PROMPT + Duration::from_secs(5))
        }
    };
    let r = Replayed {
        answer,
        after,
        ended,
        took: started.elapsed(),
    };
    (peer, r)
}

/// Fails unless the server answered the replayed first flight with a
/// whole answer (made with a fresh ephemeral key, not the one of the
/// `genuine` answer), then closed the connection promptly (EOF or a reset,
/// not our timeout) without sending anything more.
#[track_caller]
fn assert_answered_then_closed(what: &str, r: &Replayed, genuine: &[u8]) {
    assert_eq!(
        r.answer.len(),
        SERVER_ANSWER_LEN,
        "{what}: the server answered the first flight"
    );
    assert_ne!(
        r.answer[..EPHEMERAL_LEN],
        genuine[..EPHEMERAL_LEN],
        "{what}: the server's ephemeral key is fresh"
    );
    assert_ne!(
        r.ended,
        Err(io::ErrorKind::TimedOut),
        "{what}: the server kept the connection open"
    );
    assert!(r.took < PROMPT, "{what}: closed after {:?}", r.took);
    assert!(
        r.after.is_empty(),
        "{what}: the server sent {} bytes after its answer",
        r.after.len()
    );
}

/// A keyed server and client with a recording relay between them and an
/// echo target.
struct PathTunnel {
    target: Target,
    server: Proc,
    client: Proc,
    relay: Relay,
    key: KeyFile,
}

/// Bytes of the genuine session: 1 MiB before the hold, 8 MiB in all.
const HELD_FIRST: u64 = MIB;
const HELD_LEN: u64 = 8 * MIB;

/// The tunnel through the relay, and one genuine session held open in it
/// (its first MiB echoed, so every stripe is in).
fn start_recorded(stripes: u8, seed: u64) -> (PathTunnel, HeldSession) {
    let target = Target::start(echo);
    let key = KeyFile::generate();
    let mut server = harness::start_server(&key, target.addr(), &[], "info");
    let relay = Relay::start(server.addr(), 8192, None);
    let client = harness::start_client(&key, relay.addr(), stripes, &[], "info");
    let stream = harness::connect(client.addr());
    let session = HeldSession::start(stream, Pattern::new(seed), HELD_LEN, HELD_FIRST, None);
    assert!(
        session.wait_echoed(HELD_FIRST, TRANSFER),
        "the genuine session's first {HELD_FIRST} bytes did not come back ({} did)",
        session.echoed()
    );
    server.wait_log(&format!("{stripes} stripes announced"), LOG_WAIT);
    let t = PathTunnel {
        target,
        server,
        client,
        relay,
        key,
    };
    (t, session)
}

/// Finishes the genuine session and fails unless it ended intact with all
/// its stripes: no stripe replaced, lost or re-dialed on either side, and
/// no other session opened.
#[track_caller]
fn assert_genuine_intact(t: &mut PathTunnel, session: HeldSession, stripes: u8, what: &str) {
    session.finish(what, TRANSFER);
    let line = t.server.wait_log(" closed after ", LOG_WAIT);
    assert!(
        line.contains("both sides closed") && line.contains(&format!("{stripes} stripes,")),
        "{what}: server's close line: {line}"
    );
    assert!(
        !line.contains("lost") && !line.contains("re-dialed"),
        "{what}: the session lived through stripe faults: {line}"
    );
    let line = t.client.wait_log(" closed after ", LOG_WAIT);
    assert!(
        line.contains("both sides closed") && !line.contains("lost"),
        "{what}: client's close line: {line}"
    );
    for p in [&t.server, &t.client] {
        let changes: Vec<String> = p
            .lines()
            .into_iter()
            .filter(|l| {
                l.contains(": stripe ")
                    && (l.contains("re-joined") || l.contains(" lost: ") || l.contains(" failed: "))
            })
            .collect();
        assert!(
            changes.is_empty(),
            "{what}: {} logged stripe changes: {changes:?}",
            p.name()
        );
    }
    assert_eq!(
        t.server.count_log(" opened: "),
        1,
        "{what}: the server opened exactly one session"
    );
    t.server.assert_healthy();
    t.client.assert_healthy();
}

// ---------------------------------------------------------------------------
// A client the server refuses.

/// A keyed server in front of an echo target, and a client it refuses,
/// with one application connection through the client already closed.
struct RefusedClient {
    target: Target,
    /// The server's key.
    key: KeyFile,
    server: Proc,
    client: Proc,
    app: AppClosed,
}

/// Starts the server with a fresh key and the client with `client_auth`
/// (another key, or none); an application sends a little through the
/// client and must be closed within [`PROMPT`], with nothing back.
#[track_caller]
fn refused_client(client_auth: &[String]) -> RefusedClient {
    let target = Target::start(echo);
    let key = KeyFile::generate();
    let server = harness::start_server(&key, target.addr(), &[], "info");
    let client = harness::start_client(client_auth, server.addr(), 4, &[], "info");
    let app = assert_closed_promptly(client.addr(), b"hello?", PROMPT);
    assert_eq!(app.closed.bytes, 0, "nothing came back");
    RefusedClient {
        target,
        key,
        server,
        client,
        app,
    }
}

impl RefusedClient {
    /// Fails unless the server opened no session, the target saw no
    /// connection and both processes are healthy; then logs the client's
    /// close line `close` and the server's refusal `refused`.
    #[track_caller]
    fn assert_no_session(&mut self, what: &str, close: &str, refused: &str) {
        assert_eq!(
            self.server.count_log(" opened: "),
            0,
            "the server opened no session"
        );
        assert_target_untouched(&self.target, 0);
        self.server.assert_healthy();
        self.client.assert_healthy();
        eprintln!(
            "{what}: application closed after {:?} ({:?})",
            self.app.took, self.app.closed
        );
        eprintln!("  client: {close}");
        eprintln!("  server: {refused}");
    }
}

// ---------------------------------------------------------------------------
// Tests

/// The client's own account of a server that closed its stripes unanswered.
const CLOSED_UNANSWERED: &str =
    "closed the stripe during the handshake (a server with another key, or none, does this)";

#[test]
fn wrong_key_is_refused() {
    let other = KeyFile::generate();
    let mut r = refused_client(&other.args());

    // The server cannot decrypt the first flight: it answers nothing.
    let refused = r.server.wait_log("failed authentication", LOG_WAIT);
    assert!(
        refused.contains("does not decrypt with this key"),
        "{refused}"
    );
    // The client names what it saw, and what it means.
    let line = r.client.wait_log(CLOSED_UNANSWERED, LOG_WAIT);
    assert!(line.contains(&r.server.addr().to_string()), "{line}");
    let close = r.client.wait_log(" closed after ", LOG_WAIT);
    assert!(
        close.contains(CLOSED_UNANSWERED),
        "the client's close line names the cause: {close}"
    );
    r.assert_no_session("wrong key", &close, &refused);

    // The same server serves a client holding its key.
    let good = harness::start_client(&r.key, r.server.addr(), 4, &[], "info");
    harness::assert_echo_session(good.addr(), 1, MIB);
    assert_eq!(r.target.accepted(), 1);
}

#[test]
fn client_without_key_is_refused() {
    let mut r = refused_client(&["--insecure-no-auth".into()]);

    // The all-zero key is just another key to the server.
    let refused = r.server.wait_log("failed authentication", LOG_WAIT);
    assert!(
        refused.contains("does not decrypt with this key"),
        "{refused}"
    );
    let close = r.client.wait_log(" closed after ", LOG_WAIT);
    assert!(
        close.contains(CLOSED_UNANSWERED),
        "the client's close line names the cause: {close}"
    );
    r.assert_no_session("no key", &close, &refused);
}

/// What an impostor server answers every stripe.
#[derive(Clone, Copy, Debug)]
enum Impostor {
    /// 64 random bytes, the size of an answer.
    RandomBytes,
    /// A well-formed Noise answer ("accepted", sealed) made with another
    /// key, for a first flight of its own: it cannot read the client's.
    AnotherKey,
}

impl Impostor {
    fn answer(self, rng: &mut StdRng) -> Vec<u8> {
        match self {
            Impostor::RandomBytes => {
                let mut b = vec![0u8; SERVER_ANSWER_LEN];
                rng.fill(&mut b[..]);
                b
            }
            Impostor::AnotherKey => {
                let key = Key::from_bytes(rng.random());
                let hello = rawv2::hello(Kind::Open, 0, 4, rng.random());
                let (_, first) = ClientHandshake::start(&hello, &key, rng.random());
                let mut s = ServerHandshake::new(key);
                let (_, ServerStep::Hello(_)) = s.handle(&first) else {
                    panic!("its own first flight");
                };
                s.answer(Status::Ok, 1 << 20, 64 * 1024).to_vec()
            }
        }
    }
}

/// Authentication is mutual: a client holding a key checks the server's
/// answer before it sends anything but its first flight, so an impostor
/// server (one that answers every stripe at once, and records what it
/// gets) learns nothing of the application's data.
#[test]
fn impostor_server_gets_no_data() {
    const SECRET: &[u8] = b"the application's secret request";
    for (n, mode) in [Impostor::RandomBytes, Impostor::AnotherKey]
        .into_iter()
        .enumerate()
    {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let fake = l.local_addr().unwrap();
        let got: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let g = got.clone();
        harness::spawn_small("impostor", move || {
            let mut rng = StdRng::seed_from_u64(9 + n as u64);
            for conn in l.incoming().take(4) {
                let Ok(mut s) = conn else { continue };
                let answer = mode.answer(&mut rng);
                let g = g.clone();
                harness::spawn_small("impostor-conn", move || {
                    let _ = s.write_all(&answer);
                    let (bytes, _) = read_to_close(&mut s, Duration::from_secs(10));
                    g.lock().unwrap().push(bytes);
                });
            }
        });
        let key = KeyFile::generate();
        let mut client = harness::start_client(&key, fake, 4, &[], "info");

        let took = assert_closed_promptly(client.addr(), SECRET, PROMPT).took;
        let close = client.wait_log(" closed after ", LOG_WAIT);
        assert!(
            close.contains("did not prove it holds our key") && close.contains("does not decrypt"),
            "{mode:?}: the client's close line names the cause: {close}"
        );
        // Every stripe the impostor saw carried a first flight and nothing else.
        harness::poll_until(LOG_WAIT, Duration::from_millis(10), || {
            got.lock().unwrap().len() >= 4
        });
        let got = got.lock().unwrap().clone();
        assert_eq!(got.len(), 4, "{mode:?}: the client dialled its 4 stripes");
        for bytes in &got {
            assert!(
                bytes.starts_with(&PREAMBLE),
                "{mode:?}: a stripe began with the preamble"
            );
            assert_eq!(
                bytes.len(),
                CLIENT_FIRST_LEN,
                "{mode:?}: the impostor got more than the first flight"
            );
        }
        client.assert_healthy();
        eprintln!("impostor ({mode:?}): application closed after {took:?}; {close}");
    }
}

/// The short id (hex) of the one session `server` opened, from its log.
fn opened_session(server: &mut Proc) -> String {
    let line = server.wait_log(" opened: ", LOG_WAIT);
    let id = line
        .split("session ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("no session id in {line}"));
    id.to_string()
}

/// Fails if `bytes` hold the session id whose short form (hex) is `short`.
#[track_caller]
fn assert_id_hidden(short: &str, bytes: &[u8], what: &str) {
    let id: Vec<u8> = (0..short.len() / 2)
        .map(|i| u8::from_str_radix(&short[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert!(
        !bytes.windows(id.len()).any(|w| w == id),
        "{what}: the session id is readable on the path"
    );
}

#[test]
fn replayed_handshake_is_refused() {
    let (mut t, session) = start_recorded(2, 3);
    let short = opened_session(&mut t.server);
    let rec = t.relay.recorded();
    assert_eq!(rec.len(), 2, "two stripes went through the relay");
    for r in &rec {
        assert_id_hidden(&short, &r.up, "client to server");
        assert_id_hidden(&short, &r.down, "server to client");
    }
    // The stripe that carried the most: first flight, confirmation, frames.
    let stripe = rec.iter().max_by_key(|r| r.up.len()).unwrap().clone();
    assert!(
        stripe.up.starts_with(&PREAMBLE)
            && stripe.up.len()
                > CLIENT_FIRST_LEN + CONFIRM_LEN + seal::OVERHEAD + frame::HEADER_LEN,
        "captured {} bytes: first flight, confirmation and at least one record",
        stripe.up.len()
    );
    assert!(
        stripe.down.len() >= SERVER_ANSWER_LEN,
        "the server's answer"
    );

    // Replay while the session is live: the server answers the first
    // flight (the session exists), but the captured confirmation was
    // sealed with the genuine stripe's keys, not with this one's.
    let (peer, r) = replay(1, t.server.addr(), &stripe.up);
    assert_answered_then_closed("replay", &r, &stripe.down);
    let line = refusal_line(&mut t.server, peer, "failed authentication");
    assert!(line.contains("its confirmation"), "{line}");
    eprintln!(
        "replay of {} bytes of session {short}: closed after {:?} ({:?}); {line}",
        stripe.up.len(),
        r.took,
        r.ended
    );
    assert_target_untouched(&t.target, 1);

    assert_genuine_intact(&mut t, session, 2, "genuine session");

    // Replay after the session ended: refused as finished (the answer is
    // a refusal, sealed), before any confirmation.
    let (peer, r) = replay(2, t.server.addr(), &stripe.up);
    assert_answered_then_closed("replay after the end", &r, &stripe.down);
    let line = refusal_line(&mut t.server, peer, "was refused a stripe");
    assert!(
        line.contains(&format!("of session {short}: unknown or finished session")),
        "{line}"
    );
    eprintln!("replay after the session ended: {line}");
    assert_target_untouched(&t.target, 1);
    assert_eq!(
        t.server.count_log(" opened: "),
        1,
        "no session but the genuine one was opened"
    );
    t.server.assert_healthy();

    // A restarted server has forgotten the session, so the replayed first
    // flight opens a new one as far as it knows: only the confirmation,
    // sealed with keys from another handshake, stops it.
    let mut fresh = harness::start_server(&t.key, t.target.addr(), &[], "info");
    let (peer, r) = replay(3, fresh.addr(), &stripe.up);
    assert_answered_then_closed("replay to a restarted server", &r, &stripe.down);
    let line = refusal_line(&mut fresh, peer, "failed authentication");
    assert!(line.contains("its confirmation"), "{line}");
    eprintln!("replay to a restarted server: {line}");
    assert_target_untouched(&t.target, 1);
    assert_eq!(fresh.count_log(" opened: "), 0, "no session opened");
    fresh.assert_healthy();
}
