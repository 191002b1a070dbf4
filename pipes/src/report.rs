//! The line both binaries log when a session ends.

use std::time::Instant;

use log::Level;
use striper_core::config::human_bytes;
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
