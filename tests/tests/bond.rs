//! Bonding several links: one session's stripes over several paths, each
//! path its own link emulator with its own rate and delay, through the
//! real binaries:
//!
//! ```text
//!                 ╔═ LinkEmu A (path A: rate, delay) ═╗
//! app ── client ══╣                                   ╠══ server ── target
//!                 ╚═ LinkEmu B (path B: rate, delay) ═╝
//! ```
//!
//! The client gets `--server A --server B` (two paths, default route) and
//! `--stripes 2`; the emulator caps each flow, so each flow gets half the
//! path's rate and the path as a whole carries its rate. The application
//! writes a deterministic stream until told to stop; the target checks
//! every byte and counts them as they arrive, which is where rates are
//! measured. `--via` is tested with two loopback source addresses
//! (127.0.0.2, 127.0.0.3: the whole of 127/8 is on `lo`), and an ssh
//! session copies a file across the switch to a backup path.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use striper_tests::harness::{
    self, ConnReport, Digest, Digester, KeyFile, Pattern, Pending, Proc, Target, TempDir,
    receive_counting,
};
use striper_tests::linkemu::{LinkConfig, LinkEmu, Shape};
use striper_tests::sshd::{self, Sshd, Tools};

const MIB: u64 = 1 << 20;
const PER_PATH: u8 = 2;
/// Bound on a log line that follows from an event within a second or two.
const LOG_TIMEOUT: Duration = Duration::from_secs(15);
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the end of a transfer once the writer stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Fast silence detection for the fault tests: a black-holed path is lost
/// within about a second.
const FAST_KEEPALIVE: [&str; 4] = ["--keepalive", "0.25", "--stripe-timeout", "1.2"];

/// One path: the rate of the whole link, its one-way delay, and whether
/// it is a backup.
#[derive(Clone, Copy)]
struct Link {
    mbit: f64,
    delay_ms: u64,
    backup: bool,
}

fn link(mbit: f64, delay_ms: u64) -> Link {
    Link {
        mbit,
        delay_ms,
        backup: false,
    }
}

/// The relay's socket buffers for a flow of `mbit`: 100 ms of its rate,
/// a router's queue. The emulator's default (256 KiB, sized for 20 Mbit/s)
/// would hold 0.4 s of a 5 Mbit/s flow where the sender cannot see it,
/// on top of the emulator's own queue.
fn link_buffer(mbit: f64) -> usize {
    ((mbit * 1e6 / 8.0 * 0.1) as usize).max(32 * 1024)
}

/// The client, an emulator per path, the server and the target, dropped
/// in that order (the client ends its sessions first).
struct Bond {
    client: Proc,
    emus: Vec<LinkEmu>,
    server: Proc,
    _key: KeyFile,
    target: Target,
    /// Bytes the target has read.
    arrived: Arc<AtomicU64>,
    pattern: Pattern,
}

impl Bond {
    /// Paths with `links`, relaying to a target that checks and counts
    /// what it reads.
    fn start(links: &[Link], extra: &[&str]) -> Bond {
        let pattern = Pattern::new(1200);
        let arrived = Arc::new(AtomicU64::new(0));
        let (p, a) = (pattern.clone(), arrived.clone());
        let target = Target::start(move |_, mut s| ConnReport {
            received: Some(receive_counting(&mut s, Some(&p), Some(&a))),
            ..ConnReport::default()
        });
        let (client, emus, server, key) = Bond::tunnel(target.addr(), links, extra);
        Bond {
            client,
            emus,
            server,
            _key: key,
            target,
            arrived,
            pattern,
        }
    }

    /// Server, an emulator per link and the client, relaying to `target`.
    fn tunnel(
        target: SocketAddr,
        links: &[Link],
        extra: &[&str],
    ) -> (Proc, Vec<LinkEmu>, Proc, KeyFile) {
        let key = KeyFile::generate();
        let server = harness::start_server(&key, target, extra, "info");
        let emus: Vec<LinkEmu> = links
            .iter()
            .map(|l| {
                // Each path's stripes share its rate: the emulator caps
                // each flow, so each gets its share.
                let flow = l.mbit / PER_PATH as f64;
                let shape = Shape::rate(flow).with_delay_ms(l.delay_ms);
                LinkEmu::start(LinkConfig {
                    sock_buf: Some(link_buffer(flow)),
                    ..LinkConfig::new("127.0.0.1:0".parse().unwrap(), server.addr())
                        .with_shape(shape)
                })
                .expect("start a link emulator")
            })
            .collect();
        let servers: Vec<String> = links
            .iter()
            .zip(&emus)
            .map(|(l, e)| {
                let suffix = if l.backup { ":backup" } else { "" };
                format!("{}{suffix}", e.local_addr())
            })
            .collect();
        let mut args: Vec<&str> = extra.to_vec();
        for s in &servers[1..] {
            args.extend(["--server", s]);
        }
        let client =
            harness::start_client_on(&key, "127.0.0.1:0", &servers[0], PER_PATH, &args, "info");
        (client, emus, server, key)
    }

    /// Starts an application writing the pattern through the tunnel, and
    /// waits until every path's stripes are up and data flows.
    fn write(&mut self) -> Writer {
        let stream = harness::connect(self.client.addr());
        let writer = Writer::start(stream, self.pattern.clone());
        let n = self.emus.len();
        self.client
            .wait_log(&format!("({n} of {n} paths up)"), START_TIMEOUT);
        let arrived = self.arrived.clone();
        if !harness::poll_until(START_TIMEOUT, Duration::from_millis(20), || {
            arrived.load(Ordering::Relaxed) >= MIB
        }) {
            self.client.fail("no data arrived at the target");
        }
        writer
    }

    /// Goodput at the target over the next `window`, in Mbit/s. Sleeping is
    /// the measurement here, not a synchronisation.
    fn rate(&self, window: Duration) -> f64 {
        let (t0, b0) = (Instant::now(), self.arrived.load(Ordering::Relaxed));
        thread::sleep(window);
        let b1 = self.arrived.load(Ordering::Relaxed);
        (b1 - b0) as f64 * 8.0 / t0.elapsed().as_secs_f64() / 1e6
    }

    /// Bytes that crossed path `k` towards the server (all its flows).
    fn bytes_up(&self, k: usize) -> u64 {
        self.emus[k].connections().iter().map(|c| c.bytes_up).sum()
    }

    /// Stops the application, and checks that the target got exactly what
    /// it wrote: every byte, in order, same length and CRC-32.
    fn finish(&mut self, w: Writer) -> u64 {
        let sent = w.stop();
        let report = self.target.wait_reports(1, DRAIN_TIMEOUT).remove(0);
        let got = report.received.expect("the target read");
        got.assert_intact("up", sent, &self.pattern, sent.len);
        self.client.assert_healthy();
        self.server.assert_healthy();
        sent.len
    }

    /// The client's close line, once the session has closed.
    fn close_line(&mut self) -> String {
        self.client.wait_log("closed after", LOG_TIMEOUT)
    }
}

/// An application writing the pattern until told to stop, then
/// half-closing; it returns the digest of what it wrote.
struct Writer {
    stop: Arc<AtomicBool>,
    done: Pending<io::Result<Digest>>,
}

impl Writer {
    fn start(mut s: TcpStream, pattern: Pattern) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let done = harness::background("app-writer", move || {
            let mut d = Digester::default();
            let mut buf = vec![0u8; 64 * 1024];
            let mut pos = 0u64;
            while !flag.load(Ordering::Relaxed) {
                pattern.fill(pos, &mut buf);
                s.write_all(&buf)?;
                d.update(&buf);
                pos += buf.len() as u64;
            }
            s.shutdown(Shutdown::Write)?;
            Ok(d.digest())
        });
        Writer { stop, done }
    }

    fn stop(self) -> Digest {
        self.stop.store(true, Ordering::Relaxed);
        self.done
            .wait(DRAIN_TIMEOUT)
            .expect("the application wrote everything")
    }
}

/// Two paths of 30 and 10 Mbit/s carry at least 0.9 of their 40 Mbit/s
/// together: with the same delay, and when the slow path is also four
/// times longer (it must add its share without holding reassembly to its
/// pace). Both paths carry a real share.
#[test]
fn two_paths_of_different_rates_and_delays_add_up() {
    for (fast_ms, slow_ms) in [(5, 5), (5, 20)] {
        let mut b = Bond::start(&[link(30.0, fast_ms), link(10.0, slow_ms)], &[]);
        let w = b.write();
        let (a0, b0) = (b.bytes_up(0), b.bytes_up(1));
        // Past slow start and the first rate measurements.
        b.rate(Duration::from_millis(700));
        let mbit = b.rate(Duration::from_secs(3));
        let (a1, b1) = (b.bytes_up(0) - a0, b.bytes_up(1) - b0);
        let total = b.finish(w);
        eprintln!(
            "30 Mbit/s at {fast_ms} ms + 10 Mbit/s at {slow_ms} ms: {mbit:.1} Mbit/s; \
             paths' shares {:.2} / {:.2}; {} MiB intact",
            a1 as f64 / (a1 + b1) as f64,
            b1 as f64 / (a1 + b1) as f64,
            total / MIB
        );
        assert!(
            mbit >= 0.9 * 40.0,
            "{mbit:.1} Mbit/s over 30 + 10 Mbit/s paths (delays {fast_ms} / {slow_ms} ms)"
        );
        assert!(
            b1 as f64 >= 0.15 * (a1 + b1) as f64,
            "the slow path carried {b1} of {} bytes",
            a1 + b1
        );
    }
}

/// A path black-holed mid-transfer loses its stripes (one line for the
/// path, not one per stripe); within 2 s the session runs at 0.9 of the
/// surviving path; when the path returns its stripes rejoin and the
/// aggregate comes back. Every byte arrives.
#[test]
fn a_dead_path_is_routed_around_and_rejoins() {
    let mut b = Bond::start(&[link(20.0, 5), link(20.0, 5)], &FAST_KEEPALIVE);
    let w = b.write();
    let before = b.rate(Duration::from_secs(1));
    b.emus[1].set_outage(true).expect("black-hole path B");
    let killed = Instant::now();
    let path_b = b.emus[1].local_addr().to_string();
    b.client
        .wait_log(&format!("path {path_b} down"), LOG_TIMEOUT);
    thread::sleep(Duration::from_secs(2).saturating_sub(killed.elapsed()));
    // Three seconds from the 2 s mark: a shorter window read one re-dial
    // hiccup on a busy machine as a slow path (18.0 of 20 Mbit/s).
    let alone = b.rate(Duration::from_secs(3));
    b.emus[1].set_outage(false).expect("restore path B");
    b.client
        .wait_log(&format!("path {path_b} is back"), LOG_TIMEOUT);
    // The new stripes start unmeasured, in slow start.
    b.rate(Duration::from_secs(1));
    let after = b.rate(Duration::from_millis(1500));
    let total = b.finish(w);
    eprintln!(
        "2 x 20 Mbit/s: {before:.1} Mbit/s, path B dead: {alone:.1}, back: {after:.1}; {} MiB intact",
        total / MIB
    );
    // The surviving path's capacity is what it carried before (its half of
    // the two), at most its nominal 20 Mbit/s: on a busy machine the
    // emulators fall a little short of their rates for everyone.
    let survivor = (before / 2.0).min(20.0);
    assert!(
        alone >= 0.9 * survivor,
        "{alone:.1} Mbit/s on the surviving path ({survivor:.1} Mbit/s before) 2 s after \
         the other died"
    );
    assert!(
        after >= 0.8 * 40.0,
        "{after:.1} Mbit/s after path B came back (it was {before:.1})"
    );
    assert_eq!(
        b.client.count_log(&format!("path {path_b} down")),
        1,
        "the path's death is logged once"
    );
    let close = b.close_line();
    assert!(close.contains("re-dialed"), "{close}");
}

/// A backup path's stripes are up but carry nothing while the primary
/// lives; when the primary dies they carry everything, and every byte
/// arrives.
#[test]
fn a_backup_path_stands_by_then_takes_over() {
    let backup = Link {
        backup: true,
        ..link(20.0, 5)
    };
    let mut b = Bond::start(&[link(20.0, 5), backup], &FAST_KEEPALIVE);
    let w = b.write();
    b.rate(Duration::from_secs(1));
    let (primary, standby) = (b.bytes_up(0), b.bytes_up(1));
    // Handshakes and keepalive PINGs only: a few hundred bytes a stripe.
    assert!(
        primary >= 2 * MIB && standby < 16 * 1024,
        "primary carried {primary} bytes, the backup {standby}"
    );
    b.emus[0].set_outage(true).expect("black-hole the primary");
    let path_a = b.emus[0].local_addr().to_string();
    b.client
        .wait_log(&format!("path {path_a} down"), LOG_TIMEOUT);
    // The primary's unacknowledged bytes go out again on the backup first,
    // and the backup starts cold: its stripes carried only PINGs, so they
    // begin in slow start with no rate measured. Three seconds from the
    // 1 s mark: under the full suite's load a 1.5 s window read 13.5
    // Mbit/s where the test alone reads 17.5-20.6.
    b.rate(Duration::from_secs(1));
    let on_backup = b.rate(Duration::from_secs(3));
    let took_over = b.bytes_up(1) - standby;
    let total = b.finish(w);
    eprintln!(
        "backup took over at {on_backup:.1} Mbit/s, {} KiB; {} MiB intact",
        took_over >> 10,
        total / MIB
    );
    assert!(
        took_over >= 2 * MIB && on_backup >= 0.7 * 20.0,
        "the backup carried {took_over} bytes, {on_backup:.1} Mbit/s"
    );
    let close = b.close_line();
    assert!(
        close.contains("(backup) out ") && !close.contains("(backup) out 0 B"),
        "the close line counts the backup's bytes: {close}"
    );
}

/// `--via` binds each path's stripes to its source address: the emulator
/// sees two stripes from each, and data arrives intact over both. An
/// address this host does not have is refused at start, naming the cause.
#[test]
fn via_binds_stripes_to_their_source_address() {
    let pattern = Pattern::new(77);
    let arrived = Arc::new(AtomicU64::new(0));
    let (p, a) = (pattern.clone(), arrived.clone());
    let target = Target::start(move |_, mut s| ConnReport {
        received: Some(receive_counting(&mut s, Some(&p), Some(&a))),
        ..ConnReport::default()
    });
    let key = KeyFile::generate();
    let server = harness::start_server(&key, target.addr(), &[], "info");
    // 10 Mbit/s per flow: the data needs both paths.
    let emu = LinkEmu::start(
        LinkConfig::new("127.0.0.1:0".parse().unwrap(), server.addr())
            .with_shape(Shape::rate(10.0)),
    )
    .expect("start a link emulator");
    let mut client = harness::start_client(
        &key,
        emu.local_addr(),
        PER_PATH,
        &["--via", "127.0.0.2", "--via", "127.0.0.3"],
        "info",
    );
    let stream = harness::connect(client.addr());
    let w = Writer::start(stream, pattern.clone());
    client.wait_log("(2 of 2 paths up)", START_TIMEOUT);
    assert!(harness::poll_until(
        START_TIMEOUT,
        Duration::from_millis(20),
        || arrived.load(Ordering::Relaxed) >= 4 * MIB
    ));
    let sent = w.stop();
    let got = target
        .wait_reports(1, DRAIN_TIMEOUT)
        .remove(0)
        .received
        .unwrap();
    got.assert_intact("up", sent, &pattern, sent.len);
    let conns = emu.connections();
    for src in ["127.0.0.2", "127.0.0.3"] {
        let from: Vec<_> = conns
            .iter()
            .filter(|c| c.client.ip().to_string() == src)
            .collect();
        assert_eq!(
            from.len(),
            PER_PATH as usize,
            "stripes from {src}: {conns:?}"
        );
        assert!(
            from.iter().map(|c| c.bytes_up).sum::<u64>() > MIB,
            "the path from {src} carried data: {conns:?}"
        );
    }
    let close = client.wait_log("closed after", LOG_TIMEOUT);
    let emu_addr = emu.local_addr();
    for src in ["127.0.0.2", "127.0.0.3"] {
        assert!(
            close.contains(&format!("{src}->{emu_addr} out ")),
            "the close line names the path from {src}: {close}"
        );
    }
    client.assert_healthy();

    let out = Command::new(harness::bin("stripe-client"))
        .args(["--listen", "127.0.0.1:0", "--server"])
        .arg(emu.local_addr().to_string())
        .args(["--insecure-no-auth", "--via", "192.0.2.77"])
        .output()
        .expect("run stripe-client");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--via 192.0.2.77: not an address of this host"),
        "{err}"
    );
}

/// An ssh session copying a file (`cat > f && sha256sum f`) over a primary
/// and a backup path survives the primary's death: the backup takes over,
/// the copy completes, and the remote file's SHA-256 matches the source.
#[test]
fn an_ssh_session_survives_the_switch_to_the_backup() {
    const FILE_LEN: usize = 12 << 20;
    const SSH_TIMEOUT: Duration = Duration::from_secs(120);
    let tools = Tools::find();
    let dir = TempDir::new("bond-ssh");
    let sshd = Sshd::start(&tools, dir.path(), &["ClientAliveInterval 0"]);
    let backup = Link {
        backup: true,
        ..link(16.0, 5)
    };
    // 12 MiB at 16 Mbit/s: about 6 s, so the switch lands mid-copy.
    let (mut client, emus, _server, _key) = Bond::tunnel(
        format!("127.0.0.1:{}", sshd.port).parse().unwrap(),
        &[link(16.0, 5), backup],
        &FAST_KEEPALIVE,
    );
    let src = dir.path().join("src.bin");
    std::fs::write(&src, Pattern::new(1300).bytes(FILE_LEN)).expect("write the source file");
    let want = sshd::sha256(&src);
    let remote = dir.path().join("copied.bin");
    let out = dir.path().join("ssh.out");
    let started = Instant::now();
    let mut ssh = sshd.start_copy(&tools, client.addr().port(), &src, &remote, &out);
    let bytes_up = |k: usize| -> u64 { emus[k].connections().iter().map(|c| c.bytes_up).sum() };
    if !harness::poll_until(START_TIMEOUT, Duration::from_millis(20), || {
        bytes_up(0) >= 3 * MIB
    }) {
        client.fail("the copy did not get going on the primary");
    }
    assert!(ssh.is_running(), "the copy was over before the switch");
    let standby = bytes_up(1);
    assert!(
        standby < 64 * 1024,
        "the backup carried {standby} bytes while the primary lived"
    );
    emus[0].set_outage(true).expect("black-hole the primary");
    let path_a = emus[0].local_addr().to_string();
    client.wait_log(&format!("path {path_a} down"), LOG_TIMEOUT);
    let remote_sha = sshd::finish_copy(
        &mut ssh,
        &out,
        SSH_TIMEOUT.saturating_sub(started.elapsed()),
    );
    assert_eq!(remote_sha, want, "the remote file's SHA-256");
    let took_over = bytes_up(1) - standby;
    eprintln!(
        "ssh copy of {} MiB in {:.1} s; the backup carried {} KiB after the switch",
        FILE_LEN >> 20,
        started.elapsed().as_secs_f64(),
        took_over >> 10
    );
    assert!(
        took_over >= MIB,
        "the backup carried {took_over} bytes after the switch"
    );
    client.assert_healthy();
}
