//! Surviving lost stripes and outages without losing a byte, through the
//! real binaries with the link emulator between them:
//!
//! ```text
//! app ── stripe-client ══ LinkEmu (one flow per stripe, capped) ══ stripe-server ── target
//! ```
//!
//! Every transfer test sends [`LEN`] (64 MiB) of deterministic pseudo-random
//! data each way at the same time over 4 stripes of [`RATE_MBIT`] each, so
//! it lasts several seconds and the faults land in the middle of it (each
//! test checks that the transfer was still running at its last fault). Both
//! receivers check every byte against the expected stream, and length and
//! CRC-32 are compared end to end. The faults:
//!
//! 1. one stripe reset mid-transfer;
//! 2. three of the four reset at once;
//! 3. all four original stripes reset one after another, a second apart;
//! 4. one stripe black-holed (silence, no reset): with `--keepalive 0.5
//!    --stripe-timeout 2` both ends must notice within [`NOTICE_BOUND`]
//!    (the timeout plus 1.5 s) and go on;
//! 5. a 10 s outage of every stripe: the same application connection
//!    resumes and completes;
//! 6. an outage (8 s) longer than `--stripe-timeout 2` + `--resume-timeout
//!    3`: both application connections are reset, within a bound, with the
//!    reason logged on both ends, and what arrived before is intact;
//! 7. OpenSSH: a file copied through one ssh session while every stripe is
//!    down for 10 s and then each stripe is reset in turn arrives intact.
//!
//! After each fault the tests check the logs: which stripes were lost, that
//! the client re-dialed them (`re-joined`), that outages were noticed and
//! survived, and the counts on both ends' close lines.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use striper_tests::harness::{
    self, ConnReport, Digest, KeyFile, Pattern, Pending, Proc, Received, Target, TempDir, Tunnel,
    assert_echo_session, digest, echo, receive_counting, send, spawn_small,
};
use striper_tests::linkemu::{ConnInfo, ConnState, LinkConfig, LinkEmu, Shape};
use striper_tests::sshd::{self, Sshd, Tools};

const MIB: u64 = 1 << 20;
/// Bytes each way of every transfer test.
const LEN: u64 = 64 * MIB;
const STRIPES: usize = 4;
/// Cap of each stripe's flow, each way: 4 x 20 Mbit/s moves 64 MiB in about
/// 6.7 s per direction, long enough for faults spread over 3 s to land
/// mid-transfer, short enough for the whole file to run in parallel.
const RATE_MBIT: f64 = 20.0;
/// The first fault comes once this much has crossed the emulator each way.
const FAULT_AT: u64 = 8 * MIB;
/// Bound on a whole transfer, faults included.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(90);
/// Bound on a log line that follows from an event within a second or two.
const LOG_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on the first bytes crossing the emulator.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Short keepalive settings for the tests that wait for silence detection.
const KEEPALIVE: &str = "0.5";
const STRIPE_TIMEOUT: Duration = Duration::from_secs(2);
/// How soon after a stripe goes silent both ends must have noticed: the
/// stripe timeout plus 1.5 s for the 100 ms tick, the log pipe and a busy
/// 2-core machine.
const NOTICE_BOUND: Duration = Duration::from_millis(3500);

// ---------------------------------------------------------------------------
// The rig: stripe-server, the link emulator in front of it, stripe-client
// dialing the emulator.

struct Rig {
    /// First field: dropped first, so the client ends its sessions before
    /// the emulator goes away.
    tunnel: Tunnel,
    emu: LinkEmu,
}

impl Rig {
    /// `extra` goes to both ends; each stripe is its own flow capped at
    /// `rate_mbit` each way.
    fn start(target: SocketAddr, rate_mbit: f64, extra: &[&str]) -> Rig {
        let key = KeyFile::generate();
        let server = harness::start_server(&key, target, extra, "info");
        let emu = LinkEmu::start(
            LinkConfig::new("127.0.0.1:0".parse().unwrap(), server.addr())
                .with_shape(Shape::rate(rate_mbit)),
        )
        .expect("start the link emulator");
        let client = harness::start_client(&key, emu.local_addr(), STRIPES as u8, extra, "info");
        Rig {
            tunnel: Tunnel {
                client,
                server,
                key,
            },
            emu,
        }
    }

    /// Waits until the session's first [`STRIPES`] flows are open and at
    /// least `up` bytes crossed the emulator client -> server and `down`
    /// bytes server -> client (over all flows).
    fn wait_mid_transfer(&mut self, up: u64, down: u64) {
        let ok = self.emu.wait_until(START_TIMEOUT, |c| {
            c.len() >= STRIPES
                && c[..STRIPES].iter().all(|c| c.state == ConnState::Open)
                && c.iter().map(|c| c.bytes_up).sum::<u64>() >= up
                && c.iter().map(|c| c.bytes_down).sum::<u64>() >= down
        });
        if !ok {
            let conns = self.emu.connections();
            self.tunnel.client.fail(&format!(
                "{STRIPES} open stripes, {} KiB up and {} KiB down through the emulator \
                 within {START_TIMEOUT:?}; emulator: {conns:?}",
                up >> 10,
                down >> 10
            ));
        }
    }

    /// Resets stripe flow `id`. If it has already ended, says why: most
    /// likely one of the processes died (its log is printed).
    fn reset(&mut self, id: usize) {
        if let Err(e) = self.emu.reset(id) {
            self.tunnel.assert_healthy();
            panic!(
                "cannot reset stripe flow {id}: {e}; emulator: {:?}",
                self.emu.connections()
            );
        }
    }

    /// Ids of the emulator's live connections (the stripes, once stray
    /// re-dial connections have ended).
    fn live_ids(&self) -> Vec<usize> {
        live(&self.emu.connections())
    }
}

fn live(conns: &[ConnInfo]) -> Vec<usize> {
    conns
        .iter()
        .filter(|c| c.state.is_live())
        .map(|c| c.id)
        .collect()
}

// ---------------------------------------------------------------------------
// The transfer: 64 MiB each way at once, counted as it arrives.

#[derive(Default)]
struct Progress {
    /// Bytes of the up stream (application -> target) the target has read.
    at_target: AtomicU64,
    /// Bytes of the down stream (target -> application) the application read.
    at_app: AtomicU64,
}

impl Progress {
    fn get(&self) -> (u64, u64) {
        (
            self.at_target.load(Ordering::Relaxed),
            self.at_app.load(Ordering::Relaxed),
        )
    }
}

/// Both directions of one connection at once: sends `len` bytes of `out`
/// (then half-closes), reads checking against `expect`, counting into
/// `counter`. Returns what was sent (or the error that stopped it) and what
/// was read.
fn duplex(
    stream: TcpStream,
    out: Pattern,
    expect: &Pattern,
    len: u64,
    counter: &AtomicU64,
) -> (io::Result<Digest>, Received) {
    let mut w = stream.try_clone().expect("clone socket");
    let writer = spawn_small("writer", move || {
        let r = send(&mut w, &out, len, None);
        let _ = w.shutdown(Shutdown::Write);
        r
    });
    let mut r = stream;
    let got = receive_counting(&mut r, Some(expect), Some(counter));
    let sent = writer.join().expect("writer thread panicked");
    (sent, got)
}

/// A running transfer through a rig.
struct Transfer {
    up: Pattern,
    down: Pattern,
    progress: Arc<Progress>,
    target: Target,
    app: Pending<(io::Result<Digest>, Received)>,
    started: Instant,
}

impl Transfer {
    /// The target: its first connection is the transfer, later ones echo
    /// (for a check session after the faults).
    fn target(seed: u64) -> (Target, Pattern, Pattern, Arc<Progress>) {
        let (up, down) = (Pattern::new(seed), Pattern::new(seed + 1));
        let progress = Arc::new(Progress::default());
        let (u, d, p) = (up.clone(), down.clone(), progress.clone());
        let target = Target::start(move |i, s| {
            if i > 0 {
                return echo(i, s);
            }
            let (sent, got) = duplex(s, d.clone(), &u, LEN, &p.at_target);
            let mut report = ConnReport::default();
            match sent {
                Ok(d) => report.sent = Some(d),
                Err(e) => report.send_error = Some(e.kind()),
            }
            report.received = Some(got);
            report
        });
        (target, up, down, progress)
    }

    /// Starts the application side through `rig`.
    fn start(
        rig: &Rig,
        target: Target,
        up: Pattern,
        down: Pattern,
        progress: Arc<Progress>,
    ) -> Transfer {
        let stream = rig.tunnel.connect();
        let (u, d, p) = (up.clone(), down.clone(), progress.clone());
        let app = harness::background("app", move || duplex(stream, u, &d, LEN, &p.at_app));
        Transfer {
            up,
            down,
            progress,
            target,
            app,
            started: Instant::now(),
        }
    }

    /// Fails unless both directions are still under way (the faults so far
    /// landed mid-transfer).
    #[track_caller]
    fn assert_running(&self, when: &str) {
        let (t, a) = self.progress.get();
        assert!(
            t < LEN && a < LEN,
            "the transfer was already over {when} ({} and {} MiB of {} delivered): \
             the faults must land mid-transfer; lower RATE_MBIT or raise LEN",
            t / MIB,
            a / MIB,
            LEN / MIB
        );
        eprintln!(
            "{when}: {:.1} MiB delivered to the target, {:.1} MiB to the application, {:.1} s in",
            t as f64 / MIB as f64,
            a as f64 / MIB as f64,
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Waits for both sides and checks every byte each way; returns the
    /// transfer's duration.
    #[track_caller]
    fn assert_intact(self) -> Duration {
        let (sent, got) = self.app.wait(TRANSFER_TIMEOUT);
        let took = self.started.elapsed();
        // The application's side first: if the tunnel failed, it knows at
        // once, while the target's side may wait out the resume timeout.
        let sent = sent.expect("the application sends all 64 MiB");
        assert!(
            got.eof && got.error.is_none(),
            "the application's download ended with {:?} after {} bytes",
            got.error,
            got.digest.len
        );
        let report = self.target.wait_reports(1, TRANSFER_TIMEOUT).remove(0);
        assert_eq!(report.send_error, None, "the target sends all 64 MiB");
        got.assert_intact(
            "target -> application",
            report.sent.unwrap(),
            &self.down,
            LEN,
        );
        report.received.as_ref().unwrap().assert_intact(
            "application -> target",
            sent,
            &self.up,
            LEN,
        );
        assert_eq!(
            self.target.accepted(),
            1,
            "one application connection at the target throughout"
        );
        eprintln!(
            "64 MiB each way intact ({sent}) in {:.1} s",
            took.as_secs_f64()
        );
        took
    }
}

// ---------------------------------------------------------------------------
// Logs

/// The counts a close line carries: `..., N stripe(s) lost, N re-dialed,
/// X re-sent[, N outage(s) survived]; why`.
#[derive(Debug, Default, PartialEq)]
struct Faults {
    lost: u64,
    redialed: u64,
    /// Approximate (the line rounds to 0.1 KiB/MiB).
    resent_bytes: f64,
    outages: u64,
}

fn faults(line: &str) -> Faults {
    let mut f = Faults::default();
    let counts = line.split("; ").next().unwrap_or(line);
    let num = |s: &str| -> u64 {
        s.trim()
            .parse()
            .unwrap_or_else(|_| panic!("bad count {s:?} in {line}"))
    };
    for seg in counts.split(", ") {
        if let Some(n) = seg.strip_suffix(" stripe(s) lost") {
            f.lost = num(n);
        } else if let Some(n) = seg.strip_suffix(" re-dialed") {
            f.redialed = num(n);
        } else if let Some(n) = seg.strip_suffix(" outage(s) survived") {
            f.outages = num(n);
        } else if let Some(b) = seg.strip_suffix(" re-sent") {
            let (v, unit) = b.split_once(' ').unwrap_or((b, "B"));
            let v: f64 = v
                .parse()
                .unwrap_or_else(|_| panic!("bad size {b:?} in {line}"));
            let scale = match unit {
                "B" => 1.0,
                "KiB" => 1024.0,
                "MiB" => MIB as f64,
                "GiB" => (1u64 << 30) as f64,
                _ => panic!("bad unit {unit:?} in {line}"),
            };
            f.resent_bytes = v * scale;
        }
    }
    f
}

/// The session's close line (there is one session per test).
fn close_line(p: &mut Proc) -> String {
    p.wait_log(" closed after ", LOG_TIMEOUT)
}

/// Waits for a clean end on both sides and checks the fault counts on both
/// close lines: `lost` and `redialed` exactly on the client; on the server
/// the same number of re-dialed stripes and at least as many lost (a
/// stripe it had not yet seen fail counts when its replacement joins).
/// Returns both lines.
fn check_close(rig: &mut Rig, lost: u64, outages: u64) -> (String, String) {
    let c = close_line(&mut rig.tunnel.client);
    let s = close_line(&mut rig.tunnel.server);
    for (who, line) in [("client", &c), ("server", &s)] {
        assert!(
            line.ends_with("; both sides closed"),
            "{who} closed the session cleanly: {line}"
        );
    }
    let (fc, fs) = (faults(&c), faults(&s));
    eprintln!("client: {fc:?}\nserver: {fs:?}");
    assert_eq!(
        (fc.lost, fc.redialed, fc.outages),
        (lost, lost, outages),
        "client's counts (lost, re-dialed, outages survived): {c}"
    );
    assert!(
        fs.lost >= lost && fs.redialed == lost && fs.outages == outages,
        "server's counts: {lost} re-dialed, {outages} outage(s) and at least {lost} lost: {s}"
    );
    assert!(
        fc.resent_bytes + fs.resent_bytes > 0.0,
        "the lost stripes' unacknowledged bytes were re-sent on the others: {c} / {s}"
    );
    (c, s)
}

// ---------------------------------------------------------------------------
// Stripe resets

/// A transfer through 4 capped stripes; `fault` runs once FAULT_AT crossed
/// the emulator each way and returns how many stripes it reset; then the
/// client must re-dial each one and every byte must arrive.
fn survive_resets(seed: u64, fault: impl FnOnce(&mut Rig, &Transfer) -> u64) {
    let (target, up, down, progress) = Transfer::target(seed);
    let mut rig = Rig::start(target.addr(), RATE_MBIT, &[]);
    let t = Transfer::start(&rig, target, up, down, progress);
    rig.wait_mid_transfer(FAULT_AT, FAULT_AT);
    let n = fault(&mut rig, &t);
    t.assert_running("at the last reset");
    rig.tunnel
        .client
        .wait_log_count(" lost: ", n as usize, LOG_TIMEOUT);
    rig.tunnel
        .client
        .wait_log_count(" re-joined (", n as usize, LOG_TIMEOUT);
    let took = t.assert_intact();
    let (c, _) = check_close(&mut rig, n, 0);
    let client_log = rig.tunnel.client.log_text();
    assert!(
        !client_log.contains("every stripe is gone"),
        "at least one stripe stayed up throughout:\n{client_log}"
    );
    let conns = rig.emu.connections();
    assert!(
        conns.len() > STRIPES && conns[STRIPES..].iter().any(|c| c.bytes_up > MIB),
        "the re-dialed stripes came through the emulator and carried data: {conns:?}"
    );
    rig.tunnel.assert_healthy();
    eprintln!(
        "{n} reset(s) survived; transfer {:.1} s; {c}",
        took.as_secs_f64()
    );
}

/// (1) One stripe of four is reset mid-transfer.
#[test]
fn reset_one_stripe() {
    survive_resets(1000, |rig, _| {
        rig.reset(1);
        1
    });
}

/// (2) Three stripes of four are reset at the same moment.
#[test]
fn reset_three_stripes_at_once() {
    survive_resets(1010, |rig, _| {
        for id in 0..3 {
            rig.reset(id);
        }
        3
    });
}

/// (3) All four original stripes are reset one after another, a second
/// apart: by the last one, every original stripe is gone, and the session
/// lives on the re-dialed ones.
#[test]
fn reset_all_four_one_after_another() {
    survive_resets(1020, |rig, t| {
        for id in 0..STRIPES {
            if id > 0 {
                // Spacing the faults, not synchronisation.
                thread::sleep(Duration::from_secs(1));
                t.assert_running(&format!("before reset {id}"));
            }
            rig.reset(id);
        }
        STRIPES as u64
    });
}

// ---------------------------------------------------------------------------
// Silence

/// (4) One stripe black-holed: no reset, nothing either way. Both ends must
/// declare it dead within NOTICE_BOUND of the silence starting, the client
/// re-dials it, and the transfer completes intact.
#[test]
fn blackholed_stripe_noticed_within_timeout() {
    let (target, up, down, progress) = Transfer::target(1030);
    let timeout = format!("{}", STRIPE_TIMEOUT.as_secs());
    let extra = ["--keepalive", KEEPALIVE, "--stripe-timeout", &timeout];
    let mut rig = Rig::start(target.addr(), RATE_MBIT, &extra);
    let t = Transfer::start(&rig, target, up, down, progress);
    rig.wait_mid_transfer(FAULT_AT, FAULT_AT);

    let silent_from = Instant::now();
    rig.emu.blackhole(2).expect("black-hole stripe flow 2");
    let want = format!(
        " lost: nothing heard on it for {} s",
        STRIPE_TIMEOUT.as_secs()
    );
    let line = rig
        .tunnel
        .client
        .find_log(NOTICE_BOUND + Duration::from_secs(10), |l| {
            l.contains(&want)
        });
    let client_took = silent_from.elapsed();
    let line = line.unwrap_or_else(|| {
        rig.tunnel
            .client
            .fail(&format!("no {want:?} line after the black hole"))
    });
    // The server notices by its own timeout, or by the re-dialed stripe
    // replacing the silent one, whichever comes first.
    let server_line = rig
        .tunnel
        .server
        .find_log(NOTICE_BOUND + Duration::from_secs(10), |l| {
            l.contains(" lost: ") || l.contains(" re-joined (")
        });
    let server_took = silent_from.elapsed();
    let server_line = server_line.unwrap_or_else(|| {
        rig.tunnel
            .server
            .fail("never noticed the black-holed stripe")
    });
    eprintln!(
        "black hole noticed by the client after {client_took:?}: {line}\n\
         and by the server after {server_took:?}: {server_line}"
    );
    assert!(
        client_took <= NOTICE_BOUND,
        "the client noticed the silent stripe after {client_took:?}, bound {NOTICE_BOUND:?} \
         (--stripe-timeout {timeout} + 1.5 s): {line}"
    );
    assert!(
        client_took >= Duration::from_millis(1500),
        "the client declared the stripe dead after {client_took:?}, before its \
         --stripe-timeout {timeout} minus the keepalive could have passed: {line}"
    );
    assert!(
        server_took <= NOTICE_BOUND,
        "the server noticed the silent stripe after {server_took:?}, bound {NOTICE_BOUND:?}: \
         {server_line}"
    );
    t.assert_running("when the black hole was noticed");
    rig.tunnel
        .client
        .wait_log(" re-joined (4 of 4 up)", LOG_TIMEOUT);

    t.assert_intact();
    check_close(&mut rig, 1, 0);
    assert_eq!(
        rig.emu.connection(2).map(|c| c.state),
        Some(ConnState::Blackholed),
        "the silent flow stayed black-holed: the tunnel went on without it"
    );
    rig.tunnel.assert_healthy();
}

// ---------------------------------------------------------------------------
// Outages

/// (5) Every stripe black-holed for 10 s (default keepalive 1 s, stripe
/// timeout 5 s, resume timeout 60 s): both ends lose every stripe, keep the
/// session, and the same application connection resumes and completes.
#[test]
fn outage_of_10s_is_survived() {
    const OUTAGE: Duration = Duration::from_secs(10);
    /// From the end of the outage to the session resuming: a re-dial in
    /// progress gets through at once; one waiting out its backoff starts
    /// within REDIAL_MAX x 1.5 = 7.5 s.
    const RESUME_BOUND: Duration = Duration::from_secs(15);
    let (target, up, down, progress) = Transfer::target(1040);
    let mut rig = Rig::start(target.addr(), RATE_MBIT, &[]);
    let t = Transfer::start(&rig, target, up, down, progress);
    rig.wait_mid_transfer(FAULT_AT, FAULT_AT);

    let outage_from = Instant::now();
    rig.emu.set_outage(true).expect("outage on");
    t.assert_running("at the start of the outage");
    for p in [&mut rig.tunnel.client, &mut rig.tunnel.server] {
        let line = p.wait_log("every stripe is gone; keeping the session for 60 s", OUTAGE);
        eprintln!("{}: {line}", p.name());
    }
    let delivered = t.progress.get();
    // Spacing the faults: the outage lasts OUTAGE.
    thread::sleep(OUTAGE.saturating_sub(outage_from.elapsed()));
    assert_eq!(
        t.progress.get(),
        delivered,
        "nothing was delivered while no stripe could carry it"
    );
    rig.emu.set_outage(false).expect("outage off");
    let outage_end = Instant::now();
    for p in [&mut rig.tunnel.client, &mut rig.tunnel.server] {
        let line = p.wait_log("resumed after ", RESUME_BOUND);
        eprintln!(
            "{}: resumed {:?} after the outage ended: {line}",
            p.name(),
            outage_end.elapsed()
        );
    }
    t.assert_running("when the session resumed");

    t.assert_intact();
    let (c, s) = check_close(&mut rig, STRIPES as u64, 1);
    assert!(
        faults(&c).lost >= STRIPES as u64,
        "every stripe was lost: {c}"
    );
    assert!(
        c.contains("1 outage(s) survived") && s.contains("1 outage(s) survived"),
        "both close lines count the outage: {c} / {s}"
    );
    rig.tunnel.assert_healthy();
}

/// Whether an application saw its connection reset rather than closed
/// cleanly. Reading and writing share one socket and the kernel reports a
/// reset to only the first call that looks, so either may have seen it.
/// (6) An outage (8 s) longer than the stripe timeout (2 s) plus the resume
/// timeout (3 s): both ends give up on the session, reset both application
/// connections with the reason logged, within a bound; what each side got
/// before is an intact prefix; afterwards the same processes carry a new
/// session.
#[test]
fn outage_past_resume_timeout_closes_both_ends() {
    const OUTAGE: Duration = Duration::from_secs(8);
    const RESUME: Duration = Duration::from_secs(3);
    /// Silence detection plus the resume timeout (5 s), plus 2 s for the
    /// tick and the machine: the connections end well before the outage.
    const END_BOUND: Duration = Duration::from_secs(7);
    let (target, up, down, progress) = Transfer::target(1050);
    let (ka, st, rt) = (
        KEEPALIVE,
        STRIPE_TIMEOUT.as_secs().to_string(),
        RESUME.as_secs().to_string(),
    );
    let extra = [
        "--keepalive",
        ka,
        "--stripe-timeout",
        &st,
        "--resume-timeout",
        &rt,
    ];
    let mut rig = Rig::start(target.addr(), RATE_MBIT, &extra);
    let t = Transfer::start(&rig, target, up, down, progress);
    rig.wait_mid_transfer(FAULT_AT, FAULT_AT);

    let outage_from = Instant::now();
    rig.emu.set_outage(true).expect("outage on");
    t.assert_running("at the start of the outage");
    let Transfer {
        up,
        down,
        target,
        app,
        ..
    } = t;
    let (sent, got) = app.wait(OUTAGE + Duration::from_secs(30));
    let report = target.wait_reports(1, Duration::from_secs(30)).remove(0);
    let at_target = report.received.clone().unwrap();
    let app_took = got.ended.unwrap() - outage_from;
    let target_took = at_target.ended.unwrap() - outage_from;
    eprintln!(
        "application: {:?} after {app_took:?} (sent {sent:?}, got {:?}); \
         target: {:?} after {target_took:?} (send error {:?})",
        got.error, got.digest, at_target.error, report.send_error
    );

    // Both application connections were reset, not closed: a cut stream
    // must not pass for a complete one.
    let target_sent = match report.send_error {
        Some(k) => Err(io::Error::from(k)),
        None => Ok(report.sent.unwrap_or_default()),
    };
    assert!(
        harness::saw_reset(&sent, got.error),
        "the application saw a reset: send {sent:?}, read {got:?}"
    );
    assert!(
        harness::saw_reset(&target_sent, at_target.error),
        "the target saw a reset: send {target_sent:?}, read {at_target:?}"
    );
    // What arrived before is an intact prefix.
    assert_eq!(got.mismatch, None, "application: first wrong byte");
    assert_eq!(at_target.mismatch, None, "target: first wrong byte");
    assert_eq!(
        got.digest,
        down.digest(got.digest.len),
        "application prefix"
    );
    assert_eq!(
        at_target.digest,
        up.digest(at_target.digest.len),
        "target prefix"
    );
    assert!(got.digest.len < LEN && at_target.digest.len < LEN);
    // Within the bound, and not before the resume timeout.
    for (who, took) in [("application", app_took), ("target", target_took)] {
        assert!(
            took >= RESUME && took <= END_BOUND,
            "the {who}'s connection ended {took:?} into the outage; expected between \
             {RESUME:?} (resume timeout) and {END_BOUND:?} (stripe timeout + resume timeout + 2 s)"
        );
    }
    let reason = format!("no stripe came back within {} s", RESUME.as_secs());
    for (p, keep) in [
        (&mut rig.tunnel.client, "while re-dialing"),
        (&mut rig.tunnel.server, "for the client to come back"),
    ] {
        p.wait_log(
            &format!("every stripe is gone; keeping the session for 3 s {keep}"),
            LOG_TIMEOUT,
        );
        let line = close_line(p);
        assert!(
            line.contains(&reason),
            "{}'s close line gives the reason {reason:?}: {line}",
            p.name()
        );
        assert!(
            !p.log_text().contains("resumed after"),
            "{} did not resume",
            p.name()
        );
        eprintln!("{}: {line}", p.name());
    }

    // The outage lasts OUTAGE (spacing, not synchronisation); then the same
    // processes carry a new session through the same emulator.
    thread::sleep(OUTAGE.saturating_sub(outage_from.elapsed()));
    rig.emu.set_outage(false).expect("outage off");
    assert_echo_session(rig.tunnel.addr(), 1051, 4 * MIB);
    assert_eq!(target.accepted(), 2, "the check session reached the target");
    rig.tunnel.assert_healthy();
}

// ---------------------------------------------------------------------------
// OpenSSH

/// (7) One ssh session copies a 24 MiB file (`ssh host 'cat > f; sha256sum
/// f'`) through 4 stripes capped at 4 Mbit/s each, so the copy takes long
/// enough to span: a 10 s outage of every stripe (default timeouts), then
/// a reset of each stripe in turn, a second apart. ssh's own keepalives are
/// off. The session must survive, the copy complete, and the remote file's
/// SHA-256 (computed by the same ssh session) and CRC match the source.
#[test]
fn ssh_session_survives_outage_and_resets() {
    const FILE_LEN: usize = 24 << 20;
    const SSH_RATE_MBIT: f64 = 4.0;
    const OUTAGE: Duration = Duration::from_secs(10);
    const SSH_TIMEOUT: Duration = Duration::from_secs(150);
    let tools = Tools::find();
    let dir = TempDir::new("resilience-ssh");
    // sshd's keepalives off.
    let sshd = Sshd::start(&tools, dir.path(), &["ClientAliveInterval 0"]);
    let mut rig = Rig::start(
        format!("127.0.0.1:{}", sshd.port).parse().unwrap(),
        SSH_RATE_MBIT,
        &[],
    );

    let src = dir.path().join("src.bin");
    std::fs::write(&src, Pattern::new(1060).bytes(FILE_LEN)).expect("write the source file");
    let (want_sha, want_crc) = (sshd::sha256(&src), digest(&std::fs::read(&src).unwrap()));
    let remote = dir.path().join("copied.bin");
    let out = dir.path().join("ssh.out");
    let started = Instant::now();
    let mut ssh = sshd.start_copy(&tools, rig.tunnel.addr().port(), &src, &remote, &out);

    rig.wait_mid_transfer(4 * MIB, 0);
    let running = |ssh: &mut Proc, emu: &LinkEmu, when: &str| {
        assert!(
            ssh.is_running(),
            "the copy was already over {when}: raise FILE_LEN or lower SSH_RATE_MBIT"
        );
        eprintln!(
            "{when}: {:.1} s in, {:.1} MiB up through the emulator",
            started.elapsed().as_secs_f64(),
            emu.stats().bytes_up as f64 / MIB as f64
        );
    };
    running(&mut ssh, &rig.emu, "at the start of the outage");

    // The outage.
    let outage_from = Instant::now();
    rig.emu.set_outage(true).expect("outage on");
    rig.tunnel
        .client
        .wait_log("every stripe is gone; keeping the session", OUTAGE);
    thread::sleep(OUTAGE.saturating_sub(outage_from.elapsed()));
    rig.emu.set_outage(false).expect("outage off");
    rig.tunnel
        .client
        .wait_log("resumed after ", Duration::from_secs(15));
    running(&mut ssh, &rig.emu, "when the session resumed");

    // Then each stripe in turn, once both ends have all 4 back (a reset
    // while the server has only some would be a second, short outage).
    // Re-dial connections the client gave up on during the outage end once
    // it is over; the 4 left are the stripes.
    for p in [&mut rig.tunnel.client, &mut rig.tunnel.server] {
        p.wait_log(" re-joined (4 of 4 up)", LOG_TIMEOUT);
    }
    let settled = rig
        .emu
        .wait_until(LOG_TIMEOUT, |c| live(c).len() == STRIPES);
    let stripes = rig.live_ids();
    assert!(
        settled,
        "{STRIPES} live stripe flows after the outage: {:?}",
        rig.emu.connections()
    );
    let rejoined = rig.tunnel.client.count_log(" re-joined (");
    for (k, &id) in stripes.iter().enumerate() {
        if k > 0 {
            // Spacing the faults, not synchronisation.
            thread::sleep(Duration::from_secs(1));
        }
        running(
            &mut ssh,
            &rig.emu,
            &format!("before resetting stripe flow {id}"),
        );
        rig.reset(id);
    }
    rig.tunnel
        .client
        .wait_log_count(" re-joined (", rejoined + STRIPES, LOG_TIMEOUT);

    let remote_sha = sshd::finish_copy(
        &mut ssh,
        &out,
        SSH_TIMEOUT.saturating_sub(started.elapsed()),
    );
    let took = started.elapsed();
    assert_eq!(
        remote_sha, want_sha,
        "SHA-256 of the copy, computed in the ssh session"
    );
    let got = digest(&std::fs::read(&remote).expect("read the copied file"));
    assert_eq!(got, want_crc, "the copied file's length and CRC");

    // One application connection, one session, throughout.
    let (c, s) = (
        close_line(&mut rig.tunnel.client),
        close_line(&mut rig.tunnel.server),
    );
    assert_eq!(
        rig.tunnel.client.count_log(" opened: "),
        1,
        "one session on the client"
    );
    assert_eq!(
        rig.tunnel.server.count_log(" opened: "),
        1,
        "one session on the server"
    );
    for (who, line) in [("client", &c), ("server", &s)] {
        let f = faults(line);
        assert!(
            line.ends_with("; both sides closed")
                && f.outages == 1
                && f.lost >= 2 * STRIPES as u64
                && f.redialed >= 2 * STRIPES as u64,
            "{who}: closed cleanly after 1 outage and at least {} stripes lost and re-dialed: {line}",
            2 * STRIPES
        );
    }
    rig.tunnel.assert_healthy();
    eprintln!(
        "ssh copy of {} MiB intact (sha256 {want_sha}) in {:.1} s\nclient: {c}\nserver: {s}",
        FILE_LEN >> 20,
        took.as_secs_f64()
    );
}
