//! Hostile input against the real stripe-server on loopback (protocol
//! v3: a clear preamble and a Noise NNpsk0 first flight, then sealed
//! records).
//!
//! * A storm of hostile connections while a genuine session moves 64 MiB
//!   each way (echoed): 1,000 connections of garbage (random bytes; the
//!   v3 preamble followed by garbage, which fails authentication; "STRP"
//!   with another protocol version; a genuine-looking first flight cut
//!   short and half-closed; a whole first flight made with another key,
//!   with bytes behind it), 200 connections that open and send nothing and
//!   30 that send a first flight cut short and then stall. The genuine
//!   session's bytes arrive intact; a second session opened in the middle
//!   of the storm works; the server closes every garbage connection
//!   promptly, without a byte of answer (nobody without the key gets one),
//!   and every stalled one at its handshake timeout (2 s here); it names
//!   each kind in its log; none of them reaches the target; the server's
//!   resident memory stays bounded; it logs no panic; and a new session
//!   after the storm works.
//! * With default settings, one burst of 256 idle connections
//!   (--max-pending) must not lock honest clients out.
//!
//! What a peer past its handshake may do wrong (malformed frames, tampered
//! records) is in `malformed.rs`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use pipes::proto::auth::Key;
use pipes::proto::handshake::{ClientHandshake, ClientHello, Kind};
use pipes::proto::noise::{CLIENT_FIRST_LEN, PREAMBLE};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use striper_tests::harness::rawv2;
use striper_tests::harness::{
    self, HeldSession, KeyFile, Pattern, Proc, Target, echo, read_to_close, vm_rss_kib,
};

const MIB: u64 = 1 << 20;
/// Bound on waiting for an expected log line.
const LOG_WAIT: Duration = Duration::from_secs(10);
/// Bound on a genuine session's whole transfer.
const TRANSFER: Duration = Duration::from_secs(90);

/// A hello for a new session (OPEN, one stripe) with a random id.
fn new_hello(rng: &mut StdRng) -> ClientHello {
    rawv2::hello(Kind::Open, 0, 1, rng.random())
}

/// A first flight (preamble and Noise message 1) for a new session,
/// made with `key`.
fn first_flight(key: &Key, rng: &mut StdRng) -> Vec<u8> {
    ClientHandshake::start(&new_hello(rng), key, rng.random()).1
}

/// Resident memory of a process, sampled in the background.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak_kib: Arc<AtomicU64>,
    samples: Arc<AtomicU64>,
}

impl RssSampler {
    fn start(pid: u32, every: Duration) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let (peak_kib, samples) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (st, pk, n) = (stop.clone(), peak_kib.clone(), samples.clone());
        harness::spawn_small("rss-sampler", move || {
            while !st.load(Ordering::SeqCst) {
                if let Some(kib) = vm_rss_kib(pid) {
                    pk.fetch_max(kib, Ordering::SeqCst);
                    n.fetch_add(1, Ordering::SeqCst);
                }
                thread::sleep(every);
            }
        });
        RssSampler {
            stop,
            peak_kib,
            samples,
        }
    }

    /// Stops sampling; returns the highest VmRSS seen (KiB) and how many
    /// samples were taken.
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        (
            self.peak_kib.load(Ordering::SeqCst),
            self.samples.load(Ordering::SeqCst),
        )
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// ---------------------------------------------------------------------------
// The storm

/// The server's handshake timeout in the storm.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// How late after the handshake timeout a stalled connection may be
/// closed: the server checks deadlines on a 100 ms tick; the rest is room
/// for a loaded machine (two cores shared with a fuzzer and a benchmark).
const TIMEOUT_SLACK: Duration = Duration::from_millis(1500);
/// How soon a garbage connection must be closed once its bytes are sent:
/// the server judges them as they arrive (a bad preamble at its first
/// wrong byte, a first flight that does not decrypt at its 96th byte, EOF
/// at once); well under the handshake timeout, so a garbage connection
/// cannot be one the timeout closed.
const GARBAGE_PROMPT: Duration = Duration::from_millis(1000);

const GARBAGE: usize = 1000;
const SILENT: usize = 200;
/// Connections that send a genuine-looking first flight cut short, then
/// stall.
const STALLED: usize = 30;
/// Threads sending the garbage connections one after another, pausing
/// between connections so the garbage spreads over ~1.5 s.
const GARBAGE_WORKERS: usize = 8;
const GARBAGE_PAUSE: Duration = Duration::from_millis(10);

/// The genuine session: 64 MiB each way (echoed), paced at 12 MiB/s so it
/// is moving all through the storm (which lasts the 2 s handshake timeout
/// and a little more), and held at 60 MiB until the storm is over.
const SESSION_LEN: u64 = 64 * MIB;
const SESSION_RATE: u64 = 12 * MIB;
const SESSION_HOLD: u64 = 60 * MIB;

/// Both ends run with a 1 MiB window (instead of 8 MiB) so that the
/// genuine sessions' share of the server's memory is small and the bound
/// below is sensitive to what the hostile connections cost.
const WINDOW_ARGS: &[&str] = &["--window", "1M"];

/// The server's resident memory bound during the storm (VmRSS sampled
/// every 20 ms, and VmHWM). What it may hold: its binary, libraries and
/// heap at rest (measured 3.0-3.2 MiB); each of the two sessions open
/// during the storm at most one 1 MiB window per direction (reassembly
/// towards the target, unacknowledged bytes towards the client) plus
/// stripe and target read buffers of at most 256 KiB each (5): ~3.3 MiB,
/// 6.5 MiB for both; and each connection still in its handshake (at most
/// --max-pending = 256; ~240 here) one 16 KiB read buffer (no hostile
/// connection sends more before it is judged) plus bookkeeping, ~5 MiB.
/// About 15 MiB at worst. Measured: 6.5 MiB peak for the sessions alone,
/// 10.6-11.0 MiB with the storm (the storm's ~4.5 MiB is the 240 stalled
/// handshakes' buffers). 24 MiB leaves room for the allocator; a server
/// that kept 8 KiB per hostile connection beyond its handshake, or
/// buffered the garbage, would pass it.
const RSS_BOUND_MIB: u64 = 24;

/// What one hostile connection saw.
#[derive(Clone, Debug)]
struct Seen {
    kind: &'static str,
    /// From the end of its sending (or its connect, for silent ones) to
    /// the server's close.
    took: Duration,
    ended: Result<(), io::ErrorKind>,
    answer: Vec<u8>,
}

/// Bytes for garbage connection `i`, its kind, and whether to half-close
/// after sending. `key` is the server's (for a genuine-looking first
/// flight).
fn garbage(i: usize, key: &Key, rng: &mut StdRng) -> (&'static str, Vec<u8>, bool) {
    match i % 10 {
        // Random bytes (never starting with "S", so never our preamble).
        0..=3 => {
            let mut b = vec![0u8; rng.random_range(1..=2048)];
            rng.fill(&mut b[..]);
            if b[0] == b'S' {
                b[0] = b'X';
            }
            ("random bytes", b, false)
        }
        // Our preamble, then garbage where the Noise message should be: at
        // least a whole first flight's worth, which does not decrypt.
        4 | 5 => {
            let mut b = vec![0u8; rng.random_range(CLIENT_FIRST_LEN..=2048)];
            rng.fill(&mut b[..]);
            b[..PREAMBLE.len()].copy_from_slice(&PREAMBLE);
            ("STRP + garbage", b, false)
        }
        // "STRP" and another protocol version (v1, or garbage), then more.
        6 => {
            let mut b = vec![0u8; rng.random_range(64..=2048)];
            rng.fill(&mut b[..]);
            b[..4].copy_from_slice(b"STRP");
            if b[4] == PREAMBLE[4] {
                b[4] = 1;
            }
            ("another protocol version", b, false)
        }
        // A first flight with the server's key, cut short, then EOF.
        7 | 8 => {
            let f = first_flight(key, rng);
            let cut = rng.random_range(1..f.len());
            ("truncated first flight + EOF", f[..cut].to_vec(), true)
        }
        // A whole first flight made with another key, and what would be
        // records behind it.
        _ => {
            let mut b = first_flight(&Key::from_bytes(rng.random()), rng);
            let mut behind = vec![0u8; rng.random_range(1..=1024)];
            rng.fill(&mut behind[..]);
            b.extend_from_slice(&behind);
            ("first flight with another key", b, false)
        }
    }
}

/// One garbage connection: send, then wait for the server to close it.
fn garbage_conn(server: SocketAddr, i: usize, key: &Key, rng: &mut StdRng) -> Seen {
    let (kind, bytes, half_close) = garbage(i, key, rng);
    let mut s = harness::connect(server);
    let wrote = s.write_all(&bytes);
    if half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    let sent = Instant::now();
    let (answer, ended) = match wrote {
        Ok(()) => read_to_close(&mut s, HANDSHAKE_TIMEOUT * 2 + TIMEOUT_SLACK),
        // The server closed it before taking everything: closed, promptly.
        Err(e) => (Vec::new(), Err(e.kind())),
    };
    Seen {
        kind,
        took: sent.elapsed(),
        ended,
        answer,
    }
}

/// Opens a connection that sends `bytes` (maybe nothing) and then stalls,
/// and waits on a thread for the server to close it.
fn stalled_conn(server: SocketAddr, kind: &'static str, bytes: Vec<u8>) -> harness::Pending<Seen> {
    let mut s = harness::connect(server);
    let opened = Instant::now();
    if !bytes.is_empty() {
        s.write_all(&bytes).expect("send a partial first flight");
    }
    harness::background("stalled", move || {
        let (answer, ended) = read_to_close(&mut s, HANDSHAKE_TIMEOUT * 3 + TIMEOUT_SLACK);
        Seen {
            kind,
            took: opened.elapsed(),
            ended,
            answer,
        }
    })
}

#[test]
fn hostile_storm_during_a_real_session() {
    let started = Instant::now();
    let target = Target::start(echo);
    let key = KeyFile::generate();
    let mut server = harness::start_server(
        &key,
        target.addr(),
        // Every hostile connection here comes from the client's own
        // address: the per-source limit is lifted so that each stalled one
        // meets its handshake timeout (tests/tests/admission.rs tests the
        // limit).
        &[
            &[
                "--handshake-timeout",
                "2",
                "--max-pending-per-source",
                "256",
            ][..],
            WINDOW_ARGS,
        ]
        .concat(),
        "info",
    );
    let mut client = harness::start_client(&key, server.addr(), 4, WINDOW_ARGS, "info");
    let server_key = rawv2::key_of(&key);
    let at_rest = server.memory_kib();
    let rss = RssSampler::start(server.pid(), Duration::from_millis(20));

    // The genuine session, moving before the storm starts.
    let session = HeldSession::start(
        client_conn(&client),
        Pattern::new(61),
        SESSION_LEN,
        SESSION_HOLD,
        Some(SESSION_RATE),
    );
    assert!(
        session.wait_echoed(MIB, TRANSFER),
        "the genuine session did not start"
    );
    let storm_start = Instant::now();
    let echoed_at_start = session.echoed();

    // 200 silent connections and 30 stalled first flights, all at once:
    // with the garbage workers' 8 and the mid-storm session's 4 stripes
    // that is at most 242 connections in their handshake, under
    // --max-pending (256), so the server accepts every one at once and
    // each gets exactly the handshake timeout. (Beyond 256 the server leaves connections in the
    // listen queue, by design: their timeout would only start at accept.)
    let mut rng = StdRng::seed_from_u64(0xbad_5eed);
    let mut stalled = Vec::new();
    for _ in 0..SILENT {
        stalled.push(stalled_conn(server.addr(), "silent", Vec::new()));
    }
    for _ in 0..STALLED {
        let f = first_flight(&server_key, &mut rng);
        let cut = rng.random_range(1..f.len());
        stalled.push(stalled_conn(
            server.addr(),
            "truncated first flight, stalled",
            f[..cut].to_vec(),
        ));
    }

    // The garbage, from several threads at once.
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..GARBAGE_WORKERS)
        .map(|w| {
            let (seen, next, addr) = (seen.clone(), next.clone(), server.addr());
            let key = server_key.clone();
            harness::background("garbage", move || {
                let mut rng = StdRng::seed_from_u64(w as u64);
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= GARBAGE {
                        return;
                    }
                    let s = garbage_conn(addr, i, &key, &mut rng);
                    seen.lock().unwrap().push(s);
                    // Spread over the stalled connections' 2 s.
                    thread::sleep(GARBAGE_PAUSE);
                }
            })
        })
        .collect();

    // A new session in the middle of the storm gets through.
    thread::sleep(Duration::from_millis(300));
    let mid_addr = client.addr();
    let mid = harness::background("mid-storm session", move || {
        let t = Instant::now();
        harness::assert_echo_session(mid_addr, 62, 4 * MIB);
        t.elapsed()
    });

    for w in workers {
        w.wait(Duration::from_secs(120));
    }
    let garbage_done = storm_start.elapsed();
    let stalled: Vec<Seen> = stalled
        .into_iter()
        .map(|p| p.wait(HANDSHAKE_TIMEOUT * 4 + TIMEOUT_SLACK))
        .collect();
    let mid_took = mid.wait(TRANSFER);
    let storm_took = storm_start.elapsed();
    let echoed_at_end = session.echoed();

    // The genuine session finishes intact.
    session.finish("genuine session (64 MiB each way)", TRANSFER);
    let (peak_kib, samples) = rss.stop();
    let after = server.memory_kib();

    // Every garbage connection was closed promptly, without reaching the target.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), GARBAGE);
    let mut by_kind: Vec<(&str, usize, Duration)> = Vec::new();
    for s in &seen {
        assert_ne!(
            s.ended,
            Err(io::ErrorKind::TimedOut),
            "{}: the server kept a garbage connection open",
            s.kind
        );
        assert!(
            s.took < GARBAGE_PROMPT,
            "{}: closed after {:?}, bound {GARBAGE_PROMPT:?}",
            s.kind,
            s.took
        );
        // None of them proved the key: none gets a byte of answer.
        assert!(
            s.answer.is_empty(),
            "{}: the server answered {} bytes to a peer without the key",
            s.kind,
            s.answer.len()
        );
        match by_kind.iter_mut().find(|k| k.0 == s.kind) {
            Some(k) => {
                k.1 += 1;
                k.2 = k.2.max(s.took);
            }
            None => by_kind.push((s.kind, 1, s.took)),
        }
    }

    // Every stalled connection was closed at the handshake timeout.
    let (mut min, mut max) = (Duration::MAX, Duration::ZERO);
    for s in &stalled {
        assert_ne!(
            s.ended,
            Err(io::ErrorKind::TimedOut),
            "{}: still open after {:?}",
            s.kind,
            s.took
        );
        assert!(
            s.answer.is_empty(),
            "{}: the server answered {:?}",
            s.kind,
            s.answer
        );
        assert!(
            s.took >= HANDSHAKE_TIMEOUT - Duration::from_millis(50),
            "{}: closed after {:?}, before the {HANDSHAKE_TIMEOUT:?} handshake timeout",
            s.kind,
            s.took
        );
        assert!(
            s.took <= HANDSHAKE_TIMEOUT + TIMEOUT_SLACK,
            "{}: closed after {:?}, bound {:?}",
            s.kind,
            s.took,
            HANDSHAKE_TIMEOUT + TIMEOUT_SLACK
        );
        (min, max) = (min.min(s.took), max.max(s.took));
    }

    // No hostile connection reached the target: only the two sessions did.
    assert_eq!(target.accepted(), 2, "target connections");
    let log = server.log_text();
    for class in [
        "sent bytes that are not a striper handshake",
        "speaks another protocol version",
        "closed the connection during the handshake",
        "failed authentication",
        "did not complete its handshake in time",
    ] {
        assert!(log.contains(class), "the server logged no {class:?}");
    }
    assert!(
        !log.contains("--max-pending"),
        "the storm was sized to stay under --max-pending; the server says otherwise:\n{log}"
    );
    assert_eq!(server.count_log(" opened: "), 2, "sessions opened");

    assert!(
        peak_kib < RSS_BOUND_MIB * 1024 && after.peak_kib < RSS_BOUND_MIB * 1024,
        "server RSS: sampled peak {:.1} MiB, {after}; bound {RSS_BOUND_MIB} MiB",
        mib(peak_kib)
    );
    server.assert_healthy();
    client.assert_healthy();

    // And it keeps serving.
    harness::assert_echo_session(client.addr(), 63, 4 * MIB);
    assert_eq!(target.accepted(), 3);
    server.assert_healthy();
    client.assert_healthy();

    eprintln!(
        "storm: {GARBAGE} garbage + {SILENT} silent + {STALLED} stalled connections in {:.2} s (garbage done after {:.2} s); \
         genuine session echoed {:.1} -> {:.1} MiB during it; mid-storm session took {:.2} s",
        storm_took.as_secs_f64(),
        garbage_done.as_secs_f64(),
        echoed_at_start as f64 / MIB as f64,
        echoed_at_end as f64 / MIB as f64,
        mid_took.as_secs_f64()
    );
    for (kind, n, worst) in &by_kind {
        eprintln!("  {n} x {kind}: closed within {worst:?}");
    }
    eprintln!(
        "  {} stalled (silent or cut-short first flight): closed after {min:?} .. {max:?}",
        stalled.len()
    );
    eprintln!(
        "  server memory: at rest {at_rest}; sampled VmRSS peak {:.1} MiB over {samples} samples; after {after}; bound {RSS_BOUND_MIB} MiB",
        mib(peak_kib)
    );
    eprintln!("  whole test {:.1} s", started.elapsed().as_secs_f64());
}

fn client_conn(client: &Proc) -> TcpStream {
    harness::connect(client.addr())
}

/// With default settings, one burst of --max-pending (256) connections
/// that send nothing must not lock honest clients out. The silent ones hold
/// every slot; the honest stripes wait in the listen queue until the oldest
/// silent handshakes are old enough (1 s) to be closed to make room, well
/// within the client's 5 s wait for the server's answer.
#[test]
fn idle_flood_at_max_pending_does_not_lock_out_clients() {
    const PENDING: usize = 256;
    let target = Target::start(echo);
    let key = KeyFile::generate();
    let mut server = harness::start_server(&key, target.addr(), &[], "info");
    let mut client = harness::start_client(&key, server.addr(), 4, &[], "info");
    let idle: Vec<TcpStream> = (0..PENDING)
        .map(|_| harness::connect(server.addr()))
        .collect();
    server.wait_log("--max-pending", LOG_WAIT);

    let started = Instant::now();
    let mut app = client_conn(&client);
    let echoed = app.write_all(b"ping").and_then(|()| {
        app.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut b = [0u8; 4];
        app.read_exact(&mut b).map(|()| b)
    });
    let took = started.elapsed();
    drop(idle);
    if echoed.as_ref().ok() != Some(b"ping") {
        let line = client.wait_log(" closed after ", LOG_WAIT);
        client.fail(&format!(
            "the honest session failed after {took:?} ({echoed:?}): {line}"
        ));
    }
    eprintln!("honest session echoed after {took:?} behind {PENDING} idle connections");
    server.assert_healthy();
}
