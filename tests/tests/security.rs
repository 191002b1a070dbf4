//! Who may use the tunnel, through the real binaries on loopback. The
//! server holds a pre-shared key and every stripe must prove it knows the
//! key (HMAC-SHA256 over both hellos, fresh nonces on both sides) before it
//! reaches a session, and through it the target:
//!
//! * a client with another key is refused: its application connection is
//!   closed at once, its log says the server did not prove our key, the
//!   server logs the failed handshake, and the target never sees a
//!   connection;
//! * a client without a key (`--insecure-no-auth`) is refused the same
//!   way: the server logs "failed authentication" and the client logs the
//!   reason the server sent it;
//! * authentication is mutual: a keyed client facing an impostor server
//!   (one that accepts any hello with a made-up proof) gives up at the
//!   server's proof, and the impostor gets nothing but the hellos;
//! * a replayed handshake is refused: the bytes a genuine client sent on a
//!   stripe (ClientHello, ClientAuth, frames), captured on the path and
//!   replayed verbatim on a new connection, fail authentication because
//!   the server's nonce is fresh; nothing reaches the target and the
//!   genuine session carries on intact; after the session ends, the same
//!   replay is refused as a finished session, and a restarted server (which
//!   has forgotten the session) refuses it for its proof;
//! * a stripe naming a live session's id (captured on the path) without
//!   the key cannot join it, as OPEN or JOIN, on a live stripe's index or
//!   not, with frames behind its garbage proof: each is refused, and the
//!   genuine session's bytes and stripes are untouched;
//! * neither binary starts without a key or `--insecure-no-auth`, and the
//!   message names both options; `genkey` writes a 0600 file and never
//!   overwrites one; a key file others may read is refused, naming chmod;
//!   so are a file that is not a key, and a key with `--insecure-no-auth`.
//!
//! The server logs each refusal class once per address (a flood stays one
//! warning), so each forged connection here comes from its own loopback
//! address (127.0.0.2, 127.0.0.3, ...) and its warning can be told apart by
//! address and port.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use pipes::proto::frame::ResetReason;
use pipes::proto::frame::{self, FrameType};
use pipes::proto::handshake::{
    CLIENT_AUTH_LEN, CLIENT_HELLO_LEN, ClientHello, Kind, SERVER_HELLO_LEN, ServerHello, SessionId,
    Status, short_id,
};
use striper_tests::harness::{
    self, AppClosed, HeldSession, IO_TIMEOUT, KeyFile, Pattern, Proc, Target, TempDir,
    assert_closed_promptly, echo, read_to_close,
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

/// The `n`th extra loopback address, 127.0.0.(n+1), n >= 1.
fn loopback(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n + 1)
}

/// A connection to `to` from `src` (any port), with timeouts.
fn connect_from(src: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.bind(&SocketAddr::new(IpAddr::V4(src), 0).into())
        .unwrap_or_else(|e| panic!("bind {src}: {e}"));
    sock.connect_timeout(&to.into(), IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {src} -> {to}: {e}"));
    harness::with_timeouts(sock.into())
}

/// The frames in `bytes` (after a ServerHello), as (type, value, payload).
fn frames(mut bytes: &[u8]) -> Vec<(FrameType, u64, Vec<u8>)> {
    let mut out = Vec::new();
    while let Ok(Some((f, n))) = frame::decode(bytes, 1 << 20) {
        out.push((f.header.ty, f.header.value, f.payload.to_vec()));
        bytes = &bytes[n..];
    }
    out
}

/// What the server answered a forged stripe before closing it: its
/// ServerHello and the RST frame it sent after refusing the proof, if
/// the reset left them readable.
struct Answer {
    hello: Option<ServerHello>,
    rst: Option<(ResetReason, String)>,
    ended: Result<(), io::ErrorKind>,
    took: Duration,
}

/// Sends `bytes` to the server at `to` on a new connection from the `n`th
/// extra loopback address and reads its answer. Returns the connection's
/// own address (which the server's warning names) and the answer.
fn send_forged(what: &str, n: u8, to: SocketAddr, bytes: &[u8]) -> (SocketAddr, Answer) {
    let mut conn = connect_from(loopback(n), to);
    let peer = conn.local_addr().unwrap();
    conn.write_all(bytes)
        .unwrap_or_else(|e| panic!("{what}: send: {e}"));
    (peer, read_answer(&mut conn))
}

fn read_answer(s: &mut TcpStream) -> Answer {
    let started = Instant::now();
    let (bytes, ended) = read_to_close(s, PROMPT + Duration::from_secs(5));
    let took = started.elapsed();
    let hello = ServerHello::parse(&bytes).ok().flatten();
    let rst = bytes.get(SERVER_HELLO_LEN..).and_then(|rest| {
        frames(rest)
            .into_iter()
            .find(|(ty, ..)| *ty == FrameType::Rst)
            .map(|(_, _, p)| frame::parse_rst(&p))
    });
    Answer {
        hello,
        rst,
        ended,
        took,
    }
}

/// Fails unless the server closed the forged connection promptly (EOF or
/// a reset, not our timeout) and whatever RST it managed to deliver says
/// authentication failed.
#[track_caller]
fn assert_refused_auth(what: &str, a: &Answer) {
    assert_ne!(
        a.ended,
        Err(io::ErrorKind::TimedOut),
        "{what}: the server kept the connection open"
    );
    assert!(a.took < PROMPT, "{what}: closed after {:?}", a.took);
    if let Some((code, msg)) = &a.rst {
        assert_eq!(*code, ResetReason::Auth, "{what}: RST code ({msg})");
        assert!(msg.contains("authentication failed"), "{what}: {msg}");
    }
}

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

// ---------------------------------------------------------------------------
// A relay on the path that records what it carries.

/// The first bytes of one relayed connection, each way.
#[derive(Clone, Debug, Default)]
struct Recorded {
    /// Client to server: ClientHello, ClientAuth, then frames.
    up: Vec<u8>,
    /// Server to client: ServerHello, then frames.
    down: Vec<u8>,
}

/// A TCP relay between stripe-client and stripe-server that keeps the
/// first `keep` bytes of each connection in each direction: what anyone
/// on the path could capture.
struct RecordingRelay {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Recorded>>>,
    stop: Arc<AtomicBool>,
}

impl RecordingRelay {
    fn start(upstream: SocketAddr, keep: usize) -> RecordingRelay {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let addr = l.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (c, st) = (conns.clone(), stop.clone());
        harness::spawn_small("relay-accept", move || {
            for conn in l.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(down) = conn else { continue };
                let Ok(up) = TcpStream::connect(upstream) else {
                    continue;
                };
                let _ = (down.set_nodelay(true), up.set_nodelay(true));
                let i = {
                    let mut g = c.lock().unwrap();
                    g.push(Recorded::default());
                    g.len() - 1
                };
                let (d2, u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
                let (c1, c2) = (c.clone(), c.clone());
                harness::spawn_small("relay-up", move || {
                    pump(down, up, keep, |b| {
                        c1.lock().unwrap()[i].up.extend_from_slice(b)
                    })
                });
                harness::spawn_small("relay-down", move || {
                    pump(u2, d2, keep, |b| {
                        c2.lock().unwrap()[i].down.extend_from_slice(b)
                    })
                });
            }
        });
        RecordingRelay { addr, conns, stop }
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn recorded(&self) -> Vec<Recorded> {
        self.conns.lock().unwrap().clone()
    }
}

impl Drop for RecordingRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Copies `from` to `to` until EOF (passed on as a half-close) or an error
/// (passed on by closing both), recording the first `keep` bytes.
fn pump(mut from: TcpStream, mut to: TcpStream, keep: usize, mut record: impl FnMut(&[u8])) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut kept = 0;
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                let k = n.min(keep - kept);
                if k > 0 {
                    record(&buf[..k]);
                    kept += k;
                }
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

/// A keyed server and client with a recording relay between them and an
/// echo target.
struct PathTunnel {
    target: Target,
    server: Proc,
    client: Proc,
    relay: RecordingRelay,
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
    let relay = RecordingRelay::start(server.addr(), 8192);
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

/// The genuine session's id, from the first ClientHello on the path.
fn captured_session(rec: &[Recorded]) -> SessionId {
    let hello = ClientHello::parse(&rec[0].up[..CLIENT_HELLO_LEN])
        .expect("a ClientHello on the path")
        .expect("64 bytes");
    hello.session
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

#[test]
fn wrong_key_is_refused() {
    let other = KeyFile::generate();
    let mut r = refused_client(&other.args());

    // The client names the cause: the server's proof does not match our key.
    let line = r
        .client
        .wait_log("did not prove it holds our key", LOG_WAIT);
    assert!(line.contains(&r.server.addr().to_string()), "{line}");
    let close = r.client.wait_log(" closed after ", LOG_WAIT);
    assert!(
        close.contains("did not prove it holds our key"),
        "the client's close line names the cause: {close}"
    );
    // The server saw a handshake abandoned before the client's proof.
    let refused = r.server.wait_log("before proving the key", LOG_WAIT);
    assert!(refused.contains("during the handshake"), "{refused}");
    r.assert_no_session("wrong key", &close, &refused);

    // The same server serves a client holding its key.
    let good = harness::start_client(&r.key, r.server.addr(), 4, &[], "info");
    harness::assert_echo_session(good.addr(), 1, MIB);
    assert_eq!(r.target.accepted(), 1);
}

/// Authentication is mutual: a client holding a key checks the server's
/// proof before it sends anything but its hello, so an impostor server
/// (here one that accepts every hello with a made-up proof, and records
/// what it gets) learns nothing of the application's data.
#[test]
fn impostor_server_gets_no_data() {
    const SECRET: &[u8] = b"the application's secret request";
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let fake = l.local_addr().unwrap();
    let got: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let g = got.clone();
    harness::spawn_small("impostor", move || {
        let mut rng = rand_bytes(9);
        for conn in l.incoming().take(4) {
            let Ok(mut s) = conn else { continue };
            let answer = ServerHello {
                status: Status::Ok,
                nonce: rng(),
                window: 1 << 20,
                max_payload: 64 * 1024,
                proof: [rng(), rng()].concat().try_into().unwrap(),
            };
            let g = g.clone();
            harness::spawn_small("impostor-conn", move || {
                let _ = s.write_all(&answer.encode());
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
        close.contains("did not prove it holds our key"),
        "the client's close line names the cause: {close}"
    );
    // Every stripe the impostor saw carried a hello and nothing else.
    harness::poll_until(LOG_WAIT, Duration::from_millis(10), || {
        got.lock().unwrap().len() >= 4
    });
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 4, "the client dialled its 4 stripes");
    for bytes in &got {
        assert!(
            ClientHello::parse(bytes).is_ok_and(|h| h.is_some()),
            "a stripe began with a hello"
        );
        assert_eq!(
            bytes.len(),
            CLIENT_HELLO_LEN,
            "the impostor got more than the hello: {:?}",
            String::from_utf8_lossy(&bytes[CLIENT_HELLO_LEN..])
        );
    }
    client.assert_healthy();
    eprintln!("impostor: application closed after {took:?}; {close}");
}

#[test]
fn client_without_key_is_refused() {
    let mut r = refused_client(&["--insecure-no-auth".into()]);

    let refused = r.server.wait_log("failed authentication", LOG_WAIT);
    assert!(refused.contains("proof does not match"), "{refused}");
    // The client logs the reason the server gave (its RST frame).
    let close = r.client.wait_log(" closed after ", LOG_WAIT);
    assert!(
        close.contains("authentication failed"),
        "the client's close line gives the server's reason: {close}"
    );
    r.assert_no_session("no key", &close, &refused);
}

#[test]
fn replayed_handshake_is_refused() {
    let (mut t, session) = start_recorded(2, 3);
    let rec = t.relay.recorded();
    assert_eq!(rec.len(), 2, "two stripes went through the relay");
    let id = captured_session(&rec);
    // The stripe that carried the most: hello, proof and frames.
    let stripe = rec.iter().max_by_key(|r| r.up.len()).unwrap().clone();
    assert!(
        stripe.up.len() > CLIENT_HELLO_LEN + CLIENT_AUTH_LEN + frame::HEADER_LEN,
        "captured {} bytes: hello, proof and at least one frame",
        stripe.up.len()
    );
    let genuine_nonce = ServerHello::parse(&stripe.down).unwrap().unwrap().nonce;

    // Replay while the session is live: the server answers with a fresh
    // nonce, so the captured proof does not match it.
    let (peer, a) = send_forged("replay", 1, t.server.addr(), &stripe.up);
    let hello = a.hello.as_ref().expect("the server answered the hello");
    assert_eq!(hello.status, Status::Ok, "a hello for a live session");
    assert_ne!(hello.nonce, genuine_nonce, "the server's nonce is fresh");
    assert_refused_auth("replay", &a);
    let line = refusal_line(&mut t.server, peer, "failed authentication");
    eprintln!(
        "replay of {} bytes of session {}: closed after {:?} ({:?}, RST {:?}); {line}",
        stripe.up.len(),
        short_id(&id),
        a.took,
        a.ended,
        a.rst
    );
    assert_target_untouched(&t.target, 1);

    assert_genuine_intact(&mut t, session, 2, "genuine session");

    // Replay after the session ended: refused as finished, before any proof.
    let (peer, a) = send_forged("replay", 2, t.server.addr(), &stripe.up);
    assert_eq!(
        a.hello.as_ref().map(|h| h.status),
        Some(Status::UnknownSession),
        "a finished session's id is refused"
    );
    let line = refusal_line(&mut t.server, peer, "was refused a stripe");
    assert!(line.contains("unknown or finished session"), "{line}");
    eprintln!("replay after the session ended: {line}");
    assert_target_untouched(&t.target, 1);
    assert_eq!(
        t.server.count_log(" opened: "),
        1,
        "no session but the genuine one was opened"
    );
    t.server.assert_healthy();

    // A restarted server has forgotten the session, so the replayed hello
    // opens a new one as far as it knows: only the nonce stops it.
    let mut fresh = harness::start_server(&t.key, t.target.addr(), &[], "info");
    let (peer, a) = send_forged("replay", 3, fresh.addr(), &stripe.up);
    let hello = a.hello.as_ref().expect("the server answered the hello");
    assert_eq!(hello.status, Status::Ok, "an unknown session's OPEN");
    assert_ne!(hello.nonce, genuine_nonce, "the server's nonce is fresh");
    assert_refused_auth("replay to a restarted server", &a);
    let line = refusal_line(&mut fresh, peer, "failed authentication");
    eprintln!("replay to a restarted server: {line}");
    assert_target_untouched(&t.target, 1);
    assert_eq!(fresh.count_log(" opened: "), 0, "no session opened");
    fresh.assert_healthy();
}

#[test]
fn stripe_without_key_cannot_join_a_session() {
    const STRIPES: u8 = 4;
    let (mut t, session) = start_recorded(STRIPES, 4);
    let id = captured_session(&t.relay.recorded());
    let mut rng = rand_bytes(0x5eed);

    // As a new stripe and as a replacement, on a live stripe's index and
    // on the last; each with a garbage proof and frames behind it that
    // would corrupt the stream if they were taken in.
    let forged = [
        (Kind::Open, 0),
        (Kind::Join, 0),
        (Kind::Join, STRIPES - 1),
        (Kind::Open, STRIPES - 1),
    ];
    for (n, (kind, index)) in forged.into_iter().enumerate() {
        let what = format!("forged {kind:?} stripe {index}");
        let hello = ClientHello {
            kind,
            index,
            count: STRIPES,
            session: id,
            nonce: rng(),
            window: 1 << 20,
            max_payload: 64 * 1024,
        };
        let mut proof = [0u8; CLIENT_AUTH_LEN];
        proof[..16].copy_from_slice(&rng());
        proof[16..].copy_from_slice(&rng());
        let mut bytes = hello.encode().to_vec();
        bytes.extend_from_slice(&proof);
        bytes.extend(frame::encode_vec(FrameType::Data, 0, 0, &[0xEE; 4096]));
        bytes.extend(frame::encode_vec(FrameType::Fin, 0, 4096, &[]));

        let (peer, a) = send_forged(&what, n as u8 + 1, t.server.addr(), &bytes);
        assert_refused_auth(&what, &a);
        let line = refusal_line(&mut t.server, peer, "failed authentication");
        eprintln!(
            "{what}: server answered {:?}, closed after {:?} ({:?}, RST {:?}); {line}",
            a.hello.map(|h| h.status),
            a.took,
            a.ended,
            a.rst.map(|r| r.0)
        );
    }
    assert_target_untouched(&t.target, 1);
    assert_genuine_intact(&mut t, session, STRIPES, "genuine session");
}

/// A source of random 16-byte values from a fixed seed.
fn rand_bytes(seed: u64) -> impl FnMut() -> [u8; 16] {
    use rand::{RngExt, SeedableRng};
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    move || r.random()
}

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
}
