//! Tests of the link emulator (`striper_tests::linkemu`) and its `linkemu`
//! binary: the rate it holds, the delay it adds, each fault, data integrity
//! and half-close, all over loopback with bounded transfers and timeouts.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use striper_tests::linkemu::{ConnInfo, ConnState, Dir, LinkConfig, LinkEmu, LinkEmuError, Shape};

/// Upper bound for any single blocking socket call in these tests.
const IO_TIMEOUT: Duration = Duration::from_secs(20);
const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);
const TOLERANCE: f64 = 0.05;

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn upstream_listener() -> TcpListener {
    TcpListener::bind(any_port()).expect("bind upstream listener")
}

fn start(upstream: &TcpListener, up: Shape, down: Shape) -> LinkEmu {
    LinkEmu::start(LinkConfig {
        up,
        down,
        ..LinkConfig::new(any_port(), upstream.local_addr().unwrap())
    })
    .expect("start link emulator")
}

/// A `wait_until` predicate on connection 0, false while it is not listed.
fn conn0(pred: impl Fn(&ConnInfo) -> bool) -> impl FnMut(&[ConnInfo]) -> bool {
    move |cs| cs.first().is_some_and(&pred)
}

fn with_timeouts(s: TcpStream) -> TcpStream {
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

fn connect(emu: &LinkEmu) -> TcpStream {
    with_timeouts(TcpStream::connect(emu.local_addr()).expect("connect to emulator"))
}

/// `accept` with a timeout, by polling the listener's fd.
fn accept_within(l: &TcpListener, timeout: Duration) -> io::Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no connection"));
        }
        return Ok(with_timeouts(l.accept()?.0));
    }
}

/// A client connection through the emulator and the upstream's side of it,
/// returned once the emulator lists the connection as open (its snapshot is
/// published just after the loop's socket calls, so it can trail them).
fn pair(emu: &LinkEmu, up: &TcpListener) -> (TcpStream, TcpStream) {
    let c = connect(emu);
    let s = accept_within(up, WAIT).expect("upstream accepts the relayed connection");
    let relay = Some(s.peer_addr().unwrap());
    assert!(
        emu.wait_until(WAIT, |cs| cs
            .iter()
            .any(|i| i.upstream_local == relay && i.state == ConnState::Open)),
        "relayed connection listed as open: {:?}",
        emu.connections()
    );
    (c, s)
}

/// Pseudo-random bytes with a period that no buffer size divides, so lost,
/// repeated or reordered data shows up as a content mismatch.
struct Pattern(Vec<u8>);

const PERIOD: usize = 1_000_003;

impl Pattern {
    fn new(seed: u64) -> Pattern {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
        let mut v = Vec::with_capacity(PERIOD + 8);
        while v.len() < PERIOD {
            // splitmix64
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            v.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        v.truncate(PERIOD);
        Pattern(v)
    }

    fn send(&self, s: &mut TcpStream, total: u64) -> io::Result<()> {
        let mut sent = 0u64;
        while sent < total {
            let off = (sent % PERIOD as u64) as usize;
            let n = ((total - sent) as usize).min(PERIOD - off).min(64 * 1024);
            s.write_all(&self.0[off..off + n])?;
            sent += n as u64;
        }
        Ok(())
    }

    fn matches(&self, offset: u64, buf: &[u8]) -> bool {
        let mut off = (offset % PERIOD as u64) as usize;
        let mut rest = buf;
        while !rest.is_empty() {
            let n = rest.len().min(PERIOD - off);
            if rest[..n] != self.0[off..off + n] {
                return false;
            }
            rest = &rest[n..];
            off = 0;
        }
        true
    }
}

/// What a receiving application saw.
#[derive(Debug, Default)]
struct Received {
    bytes: u64,
    intact: bool,
    eof: bool,
    error: Option<io::ErrorKind>,
    first: Option<Instant>,
    first_len: u64,
    last: Option<Instant>,
    /// (time, bytes so far) after every read.
    samples: Vec<(Instant, u64)>,
}

impl Received {
    /// Goodput from the first to the last byte, in Mbit/s. The first read's
    /// bytes arrived at `first`, so they are not part of the interval.
    fn mbit(&self) -> f64 {
        let secs = (self.last.unwrap() - self.first.unwrap()).as_secs_f64();
        (self.bytes - self.first_len) as f64 * 8.0 / secs / 1e6
    }

    /// Goodput between two instants, from the samples nearest inside them.
    fn mbit_between(&self, from: Instant, to: Instant) -> f64 {
        let inside: Vec<_> = self
            .samples
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .collect();
        let (t0, b0) = inside.first().expect("samples in window");
        let (t1, b1) = inside.last().expect("samples in window");
        (b1 - b0) as f64 * 8.0 / (*t1 - *t0).as_secs_f64() / 1e6
    }
}

/// Reads until EOF, an error, `limit` bytes or `within` elapsed, checking
/// the content against `pat`.
fn receive(s: &mut TcpStream, pat: &Pattern, limit: Option<u64>, within: Duration) -> Received {
    let deadline = Instant::now() + within;
    let mut r = Received {
        intact: true,
        ..Default::default()
    };
    let mut buf = vec![0u8; 256 * 1024];
    while limit.is_none_or(|l| r.bytes < l) && Instant::now() < deadline {
        let want = limit.map_or(buf.len(), |l| buf.len().min((l - r.bytes) as usize));
        match s.read(&mut buf[..want]) {
            Ok(0) => {
                r.eof = true;
                break;
            }
            Ok(n) => {
                let now = Instant::now();
                r.intact &= pat.matches(r.bytes, &buf[..n]);
                if r.first.is_none() {
                    r.first = Some(now);
                    r.first_len = n as u64;
                }
                r.last = Some(now);
                r.bytes += n as u64;
                r.samples.push((now, r.bytes));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                r.error = Some(e.kind());
                break;
            }
        }
    }
    r
}

fn spawn_sender(mut s: TcpStream, seed: u64, total: u64) -> thread::JoinHandle<TcpStream> {
    thread::spawn(move || {
        Pattern::new(seed).send(&mut s, total).expect("send");
        s.shutdown(Shutdown::Write).expect("shutdown write");
        s
    })
}

fn spawn_receiver(mut s: TcpStream, seed: u64, within: Duration) -> thread::JoinHandle<Received> {
    thread::spawn(move || receive(&mut s, &Pattern::new(seed), None, within))
}

fn assert_rate(what: &str, measured: f64, configured: f64) {
    let err = (measured - configured) / configured;
    eprintln!(
        "{what}: configured {configured} Mbit/s, measured {measured:.3} Mbit/s ({:+.2}%)",
        err * 100.0
    );
    assert!(
        err.abs() <= TOLERANCE,
        "{what}: measured {measured:.3} Mbit/s, configured {configured} Mbit/s ({:+.2}%, tolerance {}%)",
        err * 100.0,
        TOLERANCE * 100.0
    );
}

/// Sends `secs` worth of data at `mbit` over each of `conns` connections at
/// once, in direction `dir`, and checks each one's goodput and content.
fn check_rate(dir: Dir, mbit: f64, conns: usize, secs: f64, delay_ms: u64) {
    let up = upstream_listener();
    let shape = Shape::rate(mbit).with_delay_ms(delay_ms);
    let (su, sd) = match dir {
        Dir::Up => (shape, Shape::UNLIMITED),
        _ => (Shape::UNLIMITED, shape),
    };
    let emu = start(&up, su, sd);
    let total = (mbit * 125_000.0 * secs) as u64;
    let within = Duration::from_secs_f64(secs * 3.0 + 10.0);
    let mut pairs = Vec::new();
    for _ in 0..conns {
        pairs.push(pair(&emu, &up));
    }
    let mut jobs = Vec::new();
    for (i, (c, s)) in pairs.into_iter().enumerate() {
        let (tx, rx) = if dir == Dir::Up { (c, s) } else { (s, c) };
        let seed = 1000 + i as u64;
        jobs.push((
            spawn_sender(tx, seed, total),
            spawn_receiver(rx, seed, within),
        ));
    }
    for (i, (snd, rcv)) in jobs.into_iter().enumerate() {
        let r = rcv.join().unwrap();
        let _keep_open_until_received = snd.join().unwrap();
        assert!(r.intact, "conn {i}: content corrupted");
        assert_eq!(r.bytes, total, "conn {i}: byte count");
        assert!(r.eof, "conn {i}: no EOF after the data ({:?})", r.error);
        let label = format!("{conns} conn(s) {dir:?} delay {delay_ms} ms, conn {i}");
        assert_rate(&label, r.mbit(), mbit);
    }
    let forwarded = |c: &ConnInfo| match dir {
        Dir::Up => c.bytes_up,
        _ => c.bytes_down,
    };
    assert!(
        emu.wait_until(WAIT, |cs| cs.iter().all(|c| forwarded(c) == total)),
        "emulator's byte counts: {:?}",
        emu.connections()
    );
}

#[test]
fn rate_5_mbit_one_connection() {
    check_rate(Dir::Up, 5.0, 1, 2.5, 0);
}

#[test]
fn rate_20_mbit_one_connection_down() {
    check_rate(Dir::Down, 20.0, 1, 2.5, 0);
}

#[test]
fn rate_100_mbit_one_connection() {
    check_rate(Dir::Up, 100.0, 1, 2.5, 0);
}

#[test]
fn rate_holds_per_connection_with_8_at_once() {
    check_rate(Dir::Up, 25.0, 8, 2.5, 0);
}

#[test]
fn rate_not_throttled_by_delay() {
    // The queue must hold rate × delay, or the delay would cap throughput
    // below the rate.
    check_rate(Dir::Down, 40.0, 1, 2.5, 50);
}

/// The relay thread needs about 10% of a core for this; most of the load is
/// the test's own senders and receivers.
#[test]
fn rate_holds_with_8_connections_at_100_mbit() {
    check_rate(Dir::Up, 100.0, 8, 2.5, 0);
}

#[test]
fn delay_adds_round_trip_time() {
    const D: u64 = 25;
    const PINGS: usize = 10;
    let up = upstream_listener();
    let emu = start(&up, Shape::delay(D), Shape::delay(D));
    let (mut c, mut s) = pair(&emu, &up);
    c.set_nodelay(true).unwrap();
    s.set_nodelay(true).unwrap();
    let echo = thread::spawn(move || {
        let mut b = [0u8; 1];
        for _ in 0..PINGS {
            s.read_exact(&mut b).unwrap();
            s.write_all(&b).unwrap();
        }
    });
    let mut rtts = Vec::new();
    for i in 0..PINGS {
        let t = Instant::now();
        c.write_all(&[i as u8]).unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).unwrap();
        assert_eq!(b[0], i as u8);
        rtts.push(t.elapsed());
    }
    echo.join().unwrap();
    rtts.sort();
    eprintln!("RTTs with {D} ms each way: {rtts:?}");
    let two_d = Duration::from_millis(2 * D);
    assert!(rtts[0] >= two_d, "RTT {:?} below 2 × delay", rtts[0]);
    let median = rtts[PINGS / 2];
    assert!(
        median < two_d + Duration::from_millis(20),
        "median RTT {median:?} much above 2 × delay"
    );
}

#[test]
fn data_intact_both_directions_at_once() {
    const N: u64 = 8 << 20;
    let up = upstream_listener();
    let emu = start(&up, Shape::UNLIMITED, Shape::UNLIMITED);
    let (c, s) = pair(&emu, &up);
    let info = emu.connection(0).expect("connection 0 listed");
    assert_eq!(info.client, c.local_addr().unwrap());
    assert_eq!(info.upstream_local, Some(s.peer_addr().unwrap()));

    let jobs = [
        (
            spawn_sender(c.try_clone().unwrap(), 1, N),
            spawn_receiver(s.try_clone().unwrap(), 1, IO_TIMEOUT),
        ),
        (spawn_sender(s, 2, N), spawn_receiver(c, 2, IO_TIMEOUT)),
    ];
    for (snd, rcv) in jobs {
        let r = rcv.join().unwrap();
        snd.join().unwrap();
        assert!(r.intact && r.eof && r.bytes == N, "{r:?}");
    }
    assert!(
        emu.wait_until(WAIT, conn0(|c| c.state == ConnState::Closed)),
        "connection closes after FIN both ways: {:?}",
        emu.connection(0)
    );
    let info = emu.connection(0).unwrap();
    assert_eq!((info.bytes_up, info.bytes_down), (N, N));
}

#[test]
fn half_close_is_passed_on() {
    const REQ: u64 = 100_000;
    const REPLY: u64 = 300_000;
    let up = upstream_listener();
    let emu = start(&up, Shape::rate(50.0), Shape::rate(50.0));
    let (mut c, mut s) = pair(&emu, &up);
    Pattern::new(3).send(&mut c, REQ).unwrap();
    c.shutdown(Shutdown::Write).unwrap();

    let r = receive(&mut s, &Pattern::new(3), None, IO_TIMEOUT);
    assert!(
        r.eof && r.intact && r.bytes == REQ,
        "upstream gets request then EOF: {r:?}"
    );
    // Half-closed, not closed: the reply direction must still work.
    assert_eq!(emu.connection(0).unwrap().state, ConnState::Open);
    Pattern::new(4).send(&mut s, REPLY).unwrap();
    s.shutdown(Shutdown::Write).unwrap();

    let r = receive(&mut c, &Pattern::new(4), None, IO_TIMEOUT);
    assert!(
        r.eof && r.intact && r.bytes == REPLY,
        "client gets whole reply: {r:?}"
    );
    assert!(emu.wait_until(WAIT, conn0(|c| c.state == ConnState::Closed)));
}

#[test]
fn reset_reaches_both_ends() {
    let up = upstream_listener();
    let emu = start(&up, Shape::UNLIMITED, Shape::UNLIMITED);
    let (mut c, mut s) = pair(&emu, &up);
    c.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();

    let t = Instant::now();
    emu.reset(0).unwrap();
    assert_eq!(emu.connection(0).unwrap().state, ConnState::Reset);
    for (who, sock) in [("client", &mut c), ("upstream", &mut s)] {
        let e = sock.read(&mut b).expect_err("read after reset fails");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{who}: {e}");
    }
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "reset took {:?}",
        t.elapsed()
    );
    assert_eq!(emu.reset(0), Err(LinkEmuError::Ended(0, ConnState::Reset)));
    assert_eq!(emu.reset(9), Err(LinkEmuError::NoSuchConnection(9)));
}

#[test]
fn blackhole_holds_data_and_restore_delivers_it() {
    const UP_BYTES: u64 = 200_000;
    const DOWN_BYTES: u64 = 50_000;
    let up = upstream_listener();
    let emu = start(&up, Shape::UNLIMITED, Shape::UNLIMITED);
    let (mut c, mut s) = pair(&emu, &up);
    assert!(emu.wait_until(WAIT, conn0(|c| c.state == ConnState::Open)));

    emu.blackhole(0).unwrap();
    assert_eq!(emu.connection(0).unwrap().state, ConnState::Blackholed);
    Pattern::new(5).send(&mut c, UP_BYTES).unwrap();
    Pattern::new(6).send(&mut s, DOWN_BYTES).unwrap();
    for sock in [&mut c, &mut s] {
        sock.set_read_timeout(Some(QUIET)).unwrap();
        let e = sock.read(&mut [0u8; 16]).expect_err("nothing arrives");
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "black-holed connection: {e}"
        );
        sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    }
    let info = emu.connection(0).unwrap();
    assert_eq!((info.bytes_up, info.bytes_down), (0, 0));
    assert_eq!(info.state, ConnState::Blackholed);

    emu.restore(0).unwrap();
    let r = receive(&mut s, &Pattern::new(5), Some(UP_BYTES), IO_TIMEOUT);
    assert!(
        r.intact && r.bytes == UP_BYTES,
        "held bytes arrive up: {r:?}"
    );
    let r = receive(&mut c, &Pattern::new(6), Some(DOWN_BYTES), IO_TIMEOUT);
    assert!(
        r.intact && r.bytes == DOWN_BYTES,
        "held bytes arrive down: {r:?}"
    );
    assert_eq!(emu.connection(0).unwrap().state, ConnState::Open);
}

#[test]
fn close_after_forwards_exactly_k_bytes_then_fin() {
    const K: u64 = 10_000;
    let up = upstream_listener();
    let emu = start(&up, Shape::UNLIMITED, Shape::UNLIMITED);
    let (mut c, mut s) = pair(&emu, &up);
    assert!(emu.wait_until(WAIT, conn0(|c| c.state == ConnState::Open)));

    emu.close_after(0, Dir::Up, K).unwrap();
    Pattern::new(7).send(&mut c, 50_000).unwrap();
    let r = receive(&mut s, &Pattern::new(7), None, IO_TIMEOUT);
    assert!(
        r.intact && r.eof && r.bytes == K,
        "upstream: K bytes then EOF: {r:?}"
    );
    let r = receive(&mut c, &Pattern::new(0), None, IO_TIMEOUT);
    assert!(
        r.eof && r.bytes == 0,
        "client: EOF (FIN), not a reset: {r:?}"
    );
    assert!(
        emu.wait_until(
            WAIT,
            conn0(|c| c.state == ConnState::Closed && c.bytes_up == K)
        ),
        "{:?}",
        emu.connection(0)
    );
}

#[test]
fn outage_blackholes_existing_and_new_connections() {
    let up = upstream_listener();
    let emu = start(&up, Shape::UNLIMITED, Shape::UNLIMITED);
    let (mut c0, mut s0) = pair(&emu, &up);
    let (_c1, _s1) = pair(&emu, &up);
    emu.blackhole(1).unwrap();

    emu.set_outage(true).unwrap();
    assert!(emu.outage());
    assert!(
        emu.connections()
            .iter()
            .all(|c| c.state == ConnState::Blackholed)
    );
    // A new connection is accepted, but the upstream does not see it yet.
    let mut c2 = connect(&emu);
    assert!(emu.wait_for_connections(3, WAIT));
    assert_eq!(emu.connection(2).unwrap().state, ConnState::Blackholed);
    c0.write_all(b"during outage 0").unwrap();
    c2.write_all(b"during outage 2").unwrap();
    let e = accept_within(&up, QUIET).expect_err("upstream sees no new connection");
    assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    s0.set_read_timeout(Some(QUIET)).unwrap();
    assert!(
        s0.read(&mut [0u8; 16]).is_err(),
        "nothing forwarded during outage"
    );
    s0.set_read_timeout(Some(IO_TIMEOUT)).unwrap();

    emu.set_outage(false).unwrap();
    let mut s2 = accept_within(&up, WAIT).expect("upstream gets the new connection");
    let mut b = [0u8; 15];
    s0.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"during outage 0");
    s2.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"during outage 2");
    // Connection 1 was black-holed on its own and stays so.
    let expected = [ConnState::Open, ConnState::Blackholed, ConnState::Open];
    assert!(
        emu.wait_until(WAIT, |cs| cs.iter().map(|c| c.state).eq(expected)),
        "{:?}",
        emu.connections()
    );
}

#[test]
fn set_rate_mid_transfer_changes_the_rate() {
    const FIRST: f64 = 40.0;
    const SECOND: f64 = 10.0;
    let up = upstream_listener();
    let emu = start(&up, Shape::rate(FIRST), Shape::UNLIMITED);
    let (c, s) = pair(&emu, &up);
    let total = (FIRST * 125_000.0 * 1.2 + SECOND * 125_000.0 * 1.2) as u64;
    let snd = spawn_sender(c, 8, total);
    let rcv = spawn_receiver(s, 8, IO_TIMEOUT);

    let switch_at = (FIRST * 125_000.0 * 1.2) as u64;
    assert!(emu.wait_until(IO_TIMEOUT, conn0(|c| c.bytes_up >= switch_at)));
    // The windows end before a command is sent and start after it returned,
    // so neither sees bytes shaped by the other setting.
    let switching = Instant::now();
    emu.set_rate(Some(0), Dir::Up, Some(SECOND)).unwrap();
    let switched = Instant::now();
    assert_eq!(emu.connection(0).unwrap().up.rate_mbit, Some(SECOND));
    // After one more second at the low rate, lift the cap on every
    // connection: the rest must then arrive far faster.
    let lift_at = switch_at + (SECOND * 125_000.0 * 1.0) as u64;
    assert!(emu.wait_until(IO_TIMEOUT, conn0(|c| c.bytes_up >= lift_at)));
    let lifting = Instant::now();
    emu.set_rate(None, Dir::Both, None).unwrap();
    assert_eq!(emu.stats().default_up.rate_mbit, None);

    let r = rcv.join().unwrap();
    snd.join().unwrap();
    assert!(r.intact && r.eof && r.bytes == total, "{r:?}");
    let first = r.first.unwrap();
    let ms = Duration::from_millis;
    assert_rate(
        "before set_rate",
        r.mbit_between(first + ms(100), switching),
        FIRST,
    );
    assert_rate(
        "after set_rate",
        r.mbit_between(switched + ms(100), lifting),
        SECOND,
    );
    let rest = r.last.unwrap() - lifting;
    let rest_bytes = total - lift_at;
    assert!(
        rest < Duration::from_secs_f64(rest_bytes as f64 / (SECOND * 125_000.0) / 2.0),
        "{rest_bytes} B after lifting the cap took {rest:?}"
    );
}

#[test]
fn refused_upstream_resets_client_and_emulator_keeps_serving() {
    let up = upstream_listener();
    let addr = up.local_addr().unwrap();
    drop(up);
    let emu = LinkEmu::start(LinkConfig::new(any_port(), addr)).unwrap();
    let mut c = connect(&emu);
    match c.read(&mut [0u8; 1]) {
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("expected a reset, read returned {n}"),
    }
    assert!(emu.wait_until(WAIT, conn0(|c| c.state == ConnState::Reset)));

    // Same port again (nothing else can hold it: it saw no connection, so it
    // has no TIME_WAIT), to show the emulator still serves.
    let up = TcpListener::bind(addr).expect("re-bind the upstream port");
    let (mut c, mut s) = pair(&emu, &up);
    c.write_all(b"still here").unwrap();
    let mut b = [0u8; 10];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"still here");
    assert_eq!(emu.connection(1).unwrap().state, ConnState::Open);
}

#[test]
fn connections_are_listed_in_accept_order() {
    let up = upstream_listener();
    let emu = start(&up, Shape::UNLIMITED, Shape::UNLIMITED);
    let mut clients = Vec::new();
    for i in 0..3 {
        let (c, s) = pair(&emu, &up);
        assert!(emu.wait_for_connections(i + 1, WAIT));
        clients.push((c, s));
    }
    assert!(emu.wait_until(WAIT, |cs| cs.iter().all(|c| c.state == ConnState::Open)));
    let conns = emu.connections();
    assert_eq!(conns.len(), 3);
    for (i, (info, (c, s))) in conns.iter().zip(&clients).enumerate() {
        assert_eq!(info.id, i);
        assert_eq!(info.client, c.local_addr().unwrap());
        assert_eq!(info.upstream_local, Some(s.peer_addr().unwrap()));
    }
    assert_eq!(emu.live_count(), 3);
    assert!(!emu.wait_for_connections(4, Duration::from_millis(50)));
}

#[test]
fn shutdown_is_prompt_and_closes_everything() {
    let up = upstream_listener();
    let emu = start(&up, Shape::rate(1.0), Shape::rate(1.0));
    let (mut c0, _s0) = pair(&emu, &up);
    let (mut c1, _s1) = pair(&emu, &up);
    // Connection 0 has a backlog at 1 Mbit/s, connection 1 is black-holed.
    Pattern::new(9).send(&mut c0, 100_000).unwrap();
    emu.blackhole(1).unwrap();
    c1.write_all(b"held").unwrap();

    let t = Instant::now();
    drop(emu);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        t.elapsed()
    );
    for c in [&mut c0, &mut c1] {
        // EOF or reset, but promptly, and never a timeout.
        let mut buf = [0u8; 1024];
        loop {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
                    break;
                }
            }
        }
    }
}

#[test]
fn invalid_rate_is_refused() {
    let up = upstream_listener();
    let emu = start(&up, Shape::UNLIMITED, Shape::UNLIMITED);
    assert_eq!(
        emu.set_rate(None, Dir::Up, Some(0.0)),
        Err(LinkEmuError::InvalidRate(0.0))
    );
    let bad = LinkConfig::new(any_port(), up.local_addr().unwrap()).with_shape(Shape::rate(-1.0));
    assert!(LinkEmu::start(bad).is_err());
}

/// A child process that is killed if the test fails before it exits.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Sends one control command and reads the answer up to its `ok`/`err` line.
fn control(out: &mut TcpStream, inp: &mut impl BufRead, cmd: &str) -> Vec<String> {
    writeln!(out, "{cmd}").unwrap();
    let mut lines = Vec::new();
    loop {
        let mut l = String::new();
        assert!(
            inp.read_line(&mut l).unwrap() > 0,
            "control closed during {cmd:?}"
        );
        let l = l.trim_end().to_string();
        let last = l.starts_with("ok") || l.starts_with("err");
        lines.push(l);
        if last {
            return lines;
        }
    }
}

#[test]
fn binary_control_protocol_and_clean_exit_on_sigterm() {
    let up = upstream_listener();
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_linkemu"))
            .args(["--listen", "127.0.0.1:0", "--upstream"])
            .arg(up.local_addr().unwrap().to_string())
            .args([
                "--rate-mbit",
                "50",
                "--delay-up-ms",
                "5",
                "--control",
                "127.0.0.1:0",
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn linkemu"),
    );
    let mut first = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let words: Vec<&str> = first.split_whitespace().collect();
    assert_eq!(words[..3], ["linkemu", "listening", "on"], "{first:?}");
    assert_eq!(words[4], "control", "{first:?}");
    let listen: SocketAddr = words[3].parse().unwrap();
    let ctl: SocketAddr = words[5].parse().unwrap();

    let mut c = with_timeouts(TcpStream::connect(listen).unwrap());
    let mut s = accept_within(&up, WAIT).unwrap();
    c.write_all(b"hi").unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).unwrap();

    let mut out = with_timeouts(TcpStream::connect(ctl).unwrap());
    let mut inp = BufReader::new(out.try_clone().unwrap());
    assert_eq!(control(&mut out, &mut inp, "wait-open 1 5000"), ["ok"]);
    let list = control(&mut out, &mut inp, "list");
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(list[0].starts_with("conn 0 state=open "), "{list:?}");
    assert!(list[0].contains(&format!("client={}", c.local_addr().unwrap())));
    assert!(list[0].contains(" rate_up=50 rate_down=50 delay_up=5 delay_down=0"));
    assert_eq!(list[1], "ok 1");
    assert_eq!(control(&mut out, &mut inp, "blackhole 0"), ["ok"]);
    assert!(control(&mut out, &mut inp, "list")[0].contains("state=blackholed"));
    assert_eq!(control(&mut out, &mut inp, "restore 0"), ["ok"]);
    assert_eq!(control(&mut out, &mut inp, "rate 0 up 10"), ["ok"]);
    assert_eq!(control(&mut out, &mut inp, "rate all both none"), ["ok"]);
    assert_eq!(control(&mut out, &mut inp, "delay all down 3"), ["ok"]);
    assert_eq!(control(&mut out, &mut inp, "outage on"), ["ok"]);
    assert_eq!(control(&mut out, &mut inp, "outage off"), ["ok"]);
    assert_eq!(control(&mut out, &mut inp, "wait 1 1000"), ["ok"]);
    assert!(control(&mut out, &mut inp, "wait 2 10")[0].starts_with("err timeout"));
    let stats = control(&mut out, &mut inp, "stats");
    assert_eq!(stats.len(), 2);
    assert!(
        stats[0].starts_with("stats accepted=1 live=1 up=2 down=0 outage=off rate_up=none"),
        "{stats:?}"
    );
    assert!(control(&mut out, &mut inp, "reset 7")[0].starts_with("err no connection with id 7"));
    assert!(control(&mut out, &mut inp, "rate 0 sideways 5")[0].starts_with("err direction"));
    assert!(control(&mut out, &mut inp, "frobnicate")[0].starts_with("err unknown command"));
    assert_eq!(control(&mut out, &mut inp, "close-after 0 down 1"), ["ok"]);
    s.write_all(b"xyz").unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"x", "one byte, then FIN");

    // SAFETY: signalling our own child, which has not been reaped.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let (tx, rx) = mpsc::channel();
    let mut stderr = child.0.stderr.take().unwrap();
    thread::spawn(move || {
        let mut log = String::new();
        let _ = stderr.read_to_string(&mut log);
        let _ = tx.send(log);
    });
    let log = rx.recv_timeout(WAIT).expect("linkemu exits after SIGTERM");
    let status = child.0.wait().unwrap();
    assert!(status.success(), "exit status {status}; log:\n{log}");
    assert!(log.contains("conn 0 127.0.0.1:"), "{log}");
    assert!(log.contains("closing with FIN"), "{log}");
}

#[test]
fn binary_help_describes_the_options() {
    let out = Command::new(env!("CARGO_BIN_EXE_linkemu"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for opt in [
        "--listen",
        "--upstream",
        "--rate-mbit",
        "--rate-up-mbit",
        "--rate-down-mbit",
        "--delay-ms",
        "--control",
    ] {
        assert!(help.contains(opt), "--help lacks {opt}:\n{help}");
    }
}
