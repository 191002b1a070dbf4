//! Backpressure end to end, through the real binaries on loopback: when the
//! receiving application stops reading while the other end pushes 1 GiB,
//!
//! * the pushing side blocks: within a few seconds its writes stop being
//!   accepted, with far less than 1 GiB taken;
//! * neither stripe-client nor stripe-server buffers the backlog: their
//!   resident memory stays under [`RSS_BOUND_MIB`];
//! * nothing is lost: once the receiver reads again, all 1 GiB arrives,
//!   byte-identical, followed by EOF.
//!
//! Both directions are tested: the application not reading while the
//! target pushes, and the target not reading while the application pushes.
//! The 1 GiB is generated on the fly and checked on arrival, never stored.

use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use striper_tests::harness::{
    self, ConnReport, Gate, Memory, Pattern, Target, Tunnel, receive, send,
};

const MIB: u64 = 1 << 20;
const TOTAL: u64 = 1 << 30;
/// The pusher counts as blocked once nothing more is accepted for this long.
const QUIET: Duration = Duration::from_secs(1);
/// It must block within this long (it fills the buffers in well under 1 s).
const STALL_WITHIN: Duration = Duration::from_secs(10);
/// What the pusher may get accepted before it blocks: the kernel buffers
/// of the three TCP hops (on loopback each side's buffers autotune to a few
/// MiB), plus the tunnel's window of 8 MiB. Measured: 15-18 MiB. A tunnel
/// that buffered instead of pushing back would take hundreds of MiB.
const STALL_BOUND: u64 = 64 * MIB;
/// Resident memory bound for each process. What either process may hold:
/// its binary, libraries and idle buffers (~3-4 MiB RSS after the
/// transfer), and per direction at most one window (8 MiB) of stream data,
/// kept by the receiver for reassembly or by the sender until it is
/// acknowledged; so about 12 MiB for the one busy direction here and 20 MiB
/// with both. Socket buffers are kernel memory, not RSS. Measured while
/// blocked and at the peak: 11-12.6 MiB for either process. 32 MiB is
/// 2.5 times that; a process holding the backlog would pass it after 3% of
/// the 1 GiB.
const RSS_BOUND_MIB: u64 = 32;
/// The window these bounds are computed for (the default is larger, for
/// long paths; the bounds scale with it).
const WINDOW: &[&str] = &["--window", "8M"];
/// Bound on moving the whole 1 GiB once reading resumes.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits for the pusher to block, checks it blocked early, and samples both
/// processes' memory while the backlog sits there.
fn measure_stall(what: &str, pushed: &AtomicU64, tunnel: &mut Tunnel) -> u64 {
    let started = Instant::now();
    let (accepted, stalled) = harness::wait_stall(pushed, QUIET, STALL_WITHIN);
    assert!(
        stalled,
        "{what}: the pusher was still being accepted after {STALL_WITHIN:?} ({} MiB taken)",
        accepted / MIB
    );
    assert!(
        accepted < STALL_BOUND,
        "{what}: {} MiB accepted before blocking, bound {} MiB",
        accepted / MIB,
        STALL_BOUND / MIB
    );
    assert!(accepted > 0, "{what}: the pusher never started");
    let (client, server) = (tunnel.client.memory_kib(), tunnel.server.memory_kib());
    eprintln!(
        "{what}: blocked after {:.1} MiB in {:.1} s (incl. {QUIET:?} quiet); client {client}, server {server}",
        accepted as f64 / MIB as f64,
        started.elapsed().as_secs_f64(),
    );
    check_memory(what, "while blocked", client, server);
    accepted
}

fn check_memory(what: &str, when: &str, client: Memory, server: Memory) {
    for (name, mem) in [("stripe-client", client), ("stripe-server", server)] {
        assert!(
            mem.rss_kib < RSS_BOUND_MIB * 1024 && mem.peak_kib < RSS_BOUND_MIB * 1024,
            "{what}: {name} {when}: {mem}, bound {RSS_BOUND_MIB} MiB"
        );
    }
}

/// The application connects and reads nothing while the target pushes.
#[test]
fn application_not_reading() {
    let pat = Pattern::new(500);
    let pushed = Arc::new(AtomicU64::new(0));
    let (p, counter) = (pat.clone(), pushed.clone());
    let target = Target::start(move |_, mut s: TcpStream| {
        let mut report = ConnReport::default();
        match send(&mut s, &p, TOTAL, Some(&counter)) {
            Ok(d) => report.sent = Some(d),
            Err(e) => report.send_error = Some(e.kind()),
        }
        let _ = s.shutdown(Shutdown::Write);
        report.received = Some(receive(&mut s, None));
        report
    });
    let mut tunnel = Tunnel::start_with(target.addr(), 4, WINDOW, "info");
    let mut app = tunnel.connect();

    measure_stall("target -> idle application", &pushed, &mut tunnel);

    let started = Instant::now();
    let got = harness::background("app-reader", move || {
        let got = receive(&mut app, Some(&pat));
        let _ = app.shutdown(Shutdown::Write);
        (got, pat)
    })
    .wait(DRAIN_TIMEOUT);
    let (got, pat) = got;
    let report = target.wait_reports(1, Duration::from_secs(10)).remove(0);
    assert_eq!(report.send_error, None, "the target's push failed");
    got.assert_intact(
        "1 GiB to the application",
        report.sent.unwrap(),
        &pat,
        TOTAL,
    );
    let (client, server) = (tunnel.client.memory_kib(), tunnel.server.memory_kib());
    eprintln!(
        "drained 1 GiB in {:.1} s; afterwards client {client}, server {server}",
        started.elapsed().as_secs_f64()
    );
    check_memory(
        "target -> idle application",
        "after the transfer",
        client,
        server,
    );
    tunnel.assert_healthy();
}

/// The target accepts and reads nothing while the application pushes.
#[test]
fn target_not_reading() {
    let pat = Pattern::new(501);
    let gate = Arc::new(Gate::default());
    let (p, g) = (pat.clone(), gate.clone());
    let target = Target::start(move |_, mut s: TcpStream| {
        let mut report = ConnReport::default();
        if g.wait(Duration::from_secs(60)) {
            report.received = Some(receive(&mut s, Some(&p)));
        }
        report
    });
    let mut tunnel = Tunnel::start_with(target.addr(), 4, WINDOW, "info");
    let app = tunnel.connect();

    let pushed = Arc::new(AtomicU64::new(0));
    let (p, counter) = (pat.clone(), pushed.clone());
    let mut w = app.try_clone().unwrap();
    let writer = harness::background("app-writer", move || {
        let r = send(&mut w, &p, TOTAL, Some(&counter));
        let _ = w.shutdown(Shutdown::Write);
        r
    });

    let before = measure_stall("application -> idle target", &pushed, &mut tunnel);

    let started = Instant::now();
    gate.open();
    let sent = writer.wait(DRAIN_TIMEOUT).expect("the application's push");
    assert!(sent.len > before, "pushing resumed once the target read");
    let report = target.wait_reports(1, DRAIN_TIMEOUT).remove(0);
    let got = report.received.expect("the target read");
    got.assert_intact("1 GiB to the target", sent, &pat, TOTAL);
    let (client, server) = (tunnel.client.memory_kib(), tunnel.server.memory_kib());
    eprintln!(
        "drained 1 GiB in {:.1} s; afterwards client {client}, server {server}",
        started.elapsed().as_secs_f64()
    );
    check_memory(
        "application -> idle target",
        "after the transfer",
        client,
        server,
    );
    drop(app);
    tunnel.assert_healthy();
}
