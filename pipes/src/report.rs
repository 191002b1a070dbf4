//! What both binaries tell about a session: the line they log when it
//! ends, and its figures for the metrics (`--metrics`).

use std::time::Instant;

use log::Level;
use striper_core::config::human_bytes;
use striper_core::metrics::{Recorder, Snapshot, Totals};
use striper_core::{Bridge, Outcome, Pipe};

use crate::proto::handshake::short_id;
use crate::striped::StripedPipe;

/// Logs "session ID closed after T s: A <-> B, N stripes, AB X, BA Y;
/// why" (with the session's faults, if any, and with several paths each
/// path's DATA bytes out and in, before the `;`) under `target`,
/// as a warning if the session failed. `ends` names the bridge's sides A
/// and B; `directions` names the bytes relayed from A to B and from B to A
/// (the client's "sent", "received"). `striped` is whichever side that is.
pub fn log_close<A: Pipe, B: Pipe>(
    target: &str,
    bridge: &Bridge<A, B>,
    striped: &StripedPipe,
    started: Instant,
    ends: [&str; 2],
    directions: [&str; 2],
) {
    let stats = striped.session().stats();
    let (ab, ba) = bridge.bytes();
    let (level, why) = match bridge.outcome() {
        Some(Outcome::Finished) | None => (Level::Info, "both sides closed"),
        Some(Outcome::Failed { error, .. }) => (Level::Warn, error.message.as_str()),
    };
    log::log!(
        target: target,
        level,
        "session {} closed after {:.1} s: {} <-> {}, {} stripes, {} {}, {} {}{}{}; {why}",
        short_id(striped.id()),
        started.elapsed().as_secs_f64(),
        ends[0],
        ends[1],
        striped.stripe_count(),
        directions[0],
        human_bytes(ab),
        directions[1],
        human_bytes(ba),
        stats.fault_summary(),
        striped.path_summary(),
    );
}

/// A session's figures for the metrics. `bytes` are the application bytes
/// (read from this end's application, delivered to it), as the bridge
/// counts them.
pub fn totals(striped: &StripedPipe, (to_peer, from_peer): (u64, u64)) -> Totals {
    let stats = striped.session().stats();
    Totals {
        to_peer,
        from_peer,
        stripes_lost: stats.stripes_lost,
        stripes_redialed: stats.stripes_redialed,
        bytes_resent: stats.bytes_resent,
        outages_survived: stats.outages_survived,
    }
}

/// Adds an open session to a scrape's snapshot: its figures so far, each
/// stripe that is up, and (a client's) each path.
pub fn add_live(snapshot: &mut Snapshot, striped: &StripedPipe, bytes: (u64, u64)) {
    let session = striped.session();
    snapshot.add_session(&totals(striped, bytes), session.stripes_up());
    for i in 0..session.stripe_count() {
        if let Some((rtt, queued, rate)) = session.stripe_reading(i) {
            snapshot.add_stripe(i, rtt, queued, rate);
        }
    }
    for p in striped.path_readings() {
        snapshot.add_path(p.name, p.backup, &p.counters, p.stripes_up);
    }
}

/// A session ended with `outcome`: its final figures go into the closed
/// totals, once. `bytes` as for [`totals`].
pub fn record_close(
    recorder: &mut Recorder,
    outcome: Option<&Outcome>,
    striped: &StripedPipe,
    bytes: (u64, u64),
) {
    recorder.closed(outcome, &totals(striped, bytes));
    for p in striped.path_readings() {
        recorder.closed_path(p.name, &p.counters);
    }
}
