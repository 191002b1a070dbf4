//! Prometheus metrics (`--metrics ADDR`): what the program exports, and how
//! the event loop keeps it current at no cost to the data path.
//!
//! The loop owns a [`Recorder`]; the HTTP responder ([`http`]) owns the
//! shared registry. Nothing is counted per byte or per event: a session's
//! figures live in its own counters (the bridge's bytes, the session's
//! stats) and are read only when someone scrapes. A scrape wakes the loop,
//! which adds up the open sessions into a [`Snapshot`] and publishes it
//! ([`Recorder::publish`]); a session that ends adds its final figures to
//! the closed totals once ([`Recorder::closed`]). A counter is then the
//! closed totals plus the open sessions' figures, which never goes down.
//! An idle program pays nothing: the responder's thread blocks in accept.
//!
//! Labels are bounded: a close reason or a refusal kind from a fixed list,
//! a stripe index below the stripe limit, a path's name from the client's
//! configuration (`paths.rs`); never a session or a peer's address.

pub mod http;
mod paths;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::bridge::Outcome;
use crate::pipe::ErrorKind;
pub use paths::PathCounters;
use paths::{LivePaths, PathMetrics};

/// Why sessions end: the `reason` label of `striper_sessions_closed_total`.
pub const CLOSE_REASONS: [&str; 8] = [
    "finished",
    "connect_failed",
    "reset",
    "protocol_error",
    "peer_abort",
    "timeout",
    "shutdown",
    "io_error",
];

/// The `reason` label for a session that ended with `outcome` (`None`: it
/// was dropped without one, as the close line counts it: finished).
pub fn close_reason(outcome: Option<&Outcome>) -> &'static str {
    let Some(Outcome::Failed { error, .. }) = outcome else {
        return "finished";
    };
    match error.kind {
        ErrorKind::Connect => "connect_failed",
        ErrorKind::Reset => "reset",
        ErrorKind::Protocol => "protocol_error",
        ErrorKind::PeerAbort => "peer_abort",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Shutdown => "shutdown",
        _ => "io_error",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StripeIndex {
    stripe: u8,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// A session's cumulative figures (while open, or at its close).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Application bytes read from this end's application and taken into
    /// the tunnel.
    pub to_peer: u64,
    /// Application bytes from the peer written to this end's application.
    pub from_peer: u64,
    pub stripes_lost: u64,
    pub stripes_redialed: u64,
    pub bytes_resent: u64,
    pub outages_survived: u64,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.to_peer += o.to_peer;
        self.from_peer += o.from_peer;
        self.stripes_lost += o.stripes_lost;
        self.stripes_redialed += o.stripes_redialed;
        self.bytes_resent += o.bytes_resent;
        self.outages_survived += o.outages_survived;
    }
}

/// Stripes of one index, added up over the open sessions.
#[derive(Clone, Copy, Debug, Default)]
struct StripeSum {
    rtt_sum: f64,
    rtt_n: u32,
    queued: u64,
    rate: f64,
    rate_n: u32,
    up: bool,
}

/// The open sessions' figures, added up at a scrape.
#[derive(Debug, Default)]
pub struct Snapshot {
    sessions: u64,
    stripes_up: u64,
    totals: Totals,
    stripes: Vec<StripeSum>,
    paths: LivePaths,
}

impl Snapshot {
    /// One open session with `stripes_up` stripes carrying frames.
    pub fn add_session(&mut self, totals: &Totals, stripes_up: usize) {
        self.sessions += 1;
        self.stripes_up += stripes_up as u64;
        self.totals.add(totals);
    }

    /// One stripe that is up: its index in its session, its smoothed round
    /// trip (if measured), the bytes queued on it, its drain rate in bytes
    /// per second (if measured).
    pub fn add_stripe(
        &mut self,
        index: usize,
        rtt: Option<Duration>,
        queued: u64,
        rate: Option<f64>,
    ) {
        if index > u8::MAX as usize {
            return;
        }
        if self.stripes.len() <= index {
            self.stripes.resize(index + 1, StripeSum::default());
        }
        let s = &mut self.stripes[index];
        s.up = true;
        if let Some(rtt) = rtt {
            s.rtt_sum += rtt.as_secs_f64();
            s.rtt_n += 1;
        }
        s.queued += queued;
        if let Some(rate) = rate {
            s.rate += rate;
            s.rate_n += 1;
        }
    }

    /// One path of an open session: its name, whether it is a backup, what
    /// it carried so far, and its stripes that are up.
    pub fn add_path(
        &mut self,
        name: &str,
        backup: bool,
        counters: &PathCounters,
        stripes_up: usize,
    ) {
        self.paths.add(name, backup, counters, stripes_up);
    }
}

/// The metric handles, as the event loop updates them (each is an `Arc`
/// around atomics, shared with the registry the responder encodes).
pub struct Recorder {
    sessions_open: Gauge,
    sessions_opened: Counter,
    sessions_closed: Family<Reason, Counter>,
    app_bytes: Family<Direction, Counter>,
    stripes_up: Gauge,
    stripes_lost: Counter,
    stripes_redialed: Counter,
    bytes_resent: Counter,
    outages_survived: Counter,
    refusals: Option<Family<Kind, Counter>>,
    stripe_rtt: Family<StripeIndex, FloatGauge>,
    stripe_queue: Family<StripeIndex, Gauge>,
    stripe_rate: Family<StripeIndex, FloatGauge>,
    /// The client's `striper_path_*`.
    paths: Option<PathMetrics>,
    /// What the sessions that ended left behind.
    closed: Totals,
    closed_sessions: u64,
}

impl Recorder {
    /// The recorder and the registry to serve. `refusal_kinds` (the
    /// server's) adds `striper_handshake_refusals_total` with those kinds.
    pub fn new(refusal_kinds: &[&'static str]) -> (Recorder, Arc<Registry>) {
        Recorder::build(refusal_kinds, false)
    }

    /// The client's: with the per-path metrics (`striper_path_*`), whose
    /// paths [`Recorder::set_paths`] names.
    pub fn client() -> (Recorder, Arc<Registry>) {
        Recorder::build(&[], true)
    }

    fn build(refusal_kinds: &[&'static str], paths: bool) -> (Recorder, Arc<Registry>) {
        let mut reg = Registry::with_prefix("striper");
        let mut r = Recorder {
            sessions_open: Gauge::default(),
            sessions_opened: Counter::default(),
            sessions_closed: Family::default(),
            app_bytes: Family::default(),
            stripes_up: Gauge::default(),
            stripes_lost: Counter::default(),
            stripes_redialed: Counter::default(),
            bytes_resent: Counter::default(),
            outages_survived: Counter::default(),
            refusals: (!refusal_kinds.is_empty()).then(Family::default),
            stripe_rtt: Family::default(),
            stripe_queue: Family::default(),
            stripe_rate: Family::default(),
            paths: None,
            closed: Totals::default(),
            closed_sessions: 0,
        };
        reg.register(
            "sessions_open",
            "Sessions open now",
            r.sessions_open.clone(),
        );
        reg.register(
            "sessions_opened",
            "Sessions opened since start",
            r.sessions_opened.clone(),
        );
        reg.register(
            "sessions_closed",
            "Sessions closed since start, by why they ended",
            r.sessions_closed.clone(),
        );
        reg.register(
            "app_bytes",
            "Application bytes carried: to_peer read from this end's application into the \
             tunnel, from_peer delivered from the tunnel to it",
            r.app_bytes.clone(),
        );
        reg.register(
            "stripes_up",
            "Stripes carrying frames now, over all open sessions",
            r.stripes_up.clone(),
        );
        reg.register(
            "stripes_lost",
            "Stripes that failed after carrying traffic",
            r.stripes_lost.clone(),
        );
        reg.register(
            "stripes_redialed",
            "Lost stripes replaced by a new connection",
            r.stripes_redialed.clone(),
        );
        reg.register(
            "resent_bytes",
            "Bytes sent again on other stripes after a stripe was lost or stalled",
            r.bytes_resent.clone(),
        );
        reg.register(
            "outages_survived",
            "Times a session lost every stripe and came back",
            r.outages_survived.clone(),
        );
        if let Some(f) = &r.refusals {
            reg.register(
                "handshake_refusals",
                "New connections refused or failed in their handshake, by kind",
                f.clone(),
            );
        }
        reg.register(
            "stripe_rtt_seconds",
            "Smoothed round trip (TCP_INFO) of the stripes with this index, averaged over open sessions",
            r.stripe_rtt.clone(),
        );
        reg.register(
            "stripe_send_queue_bytes",
            "Bytes queued to send on the stripes with this index (kernel and ours), summed over open sessions",
            r.stripe_queue.clone(),
        );
        reg.register(
            "stripe_drain_rate_bytes_per_second",
            "Measured drain rate of the stripes with this index, summed over open sessions",
            r.stripe_rate.clone(),
        );
        if paths {
            r.paths = Some(PathMetrics::register(&mut reg));
        }
        // Every label of a fixed set exists from the start, so a graph of
        // a rare reason starts at zero rather than appearing from nowhere.
        for reason in CLOSE_REASONS {
            let _ = r.sessions_closed.get_or_create(&Reason { reason });
        }
        for direction in ["to_peer", "from_peer"] {
            let _ = r.app_bytes.get_or_create(&Direction { direction });
        }
        if let Some(f) = &r.refusals {
            for &kind in refusal_kinds {
                let _ = f.get_or_create(&Kind { kind });
            }
        }
        (r, Arc::new(reg))
    }

    /// A session ended with `outcome`, having done `totals`.
    pub fn closed(&mut self, outcome: Option<&Outcome>, totals: &Totals) {
        self.closed_sessions += 1;
        self.closed.add(totals);
        let reason = close_reason(outcome);
        self.sessions_closed.get_or_create(&Reason { reason }).inc();
    }

    /// The client's paths as configured now (name, backup), at start and
    /// after a reload.
    pub fn set_paths(&mut self, paths: Vec<(String, bool)>) {
        if let Some(p) = &mut self.paths {
            p.configure(paths);
        }
    }

    /// A session ended, having carried `counters` on path `name`.
    pub fn closed_path(&mut self, name: &str, counters: &PathCounters) {
        if let Some(p) = &mut self.paths {
            p.closed(name, counters);
        }
    }

    /// A new connection was refused, or failed its handshake, for `kind`.
    pub fn refused(&self, kind: &'static str) {
        if let Some(f) = &self.refusals {
            f.get_or_create(&Kind { kind }).inc();
        }
    }

    /// Sets every metric from the closed totals and the open sessions'
    /// figures in `live`.
    pub fn publish(&mut self, live: &Snapshot) {
        let mut all = self.closed;
        all.add(&live.totals);
        raise(&self.sessions_opened, self.closed_sessions + live.sessions);
        raise(
            &self.app_bytes.get_or_create(&Direction {
                direction: "to_peer",
            }),
            all.to_peer,
        );
        raise(
            &self.app_bytes.get_or_create(&Direction {
                direction: "from_peer",
            }),
            all.from_peer,
        );
        raise(&self.stripes_lost, all.stripes_lost);
        raise(&self.stripes_redialed, all.stripes_redialed);
        raise(&self.bytes_resent, all.bytes_resent);
        raise(&self.outages_survived, all.outages_survived);
        self.sessions_open.set(live.sessions as i64);
        self.stripes_up.set(live.stripes_up as i64);
        // An index no open session has is not shown, nor a reading no
        // stripe of that index has made yet: an unmeasured rate is no
        // evidence of a stalled stripe, and an average of nothing is no
        // round trip.
        self.stripe_rtt.clear();
        self.stripe_queue.clear();
        self.stripe_rate.clear();
        for (i, s) in live.stripes.iter().enumerate().filter(|(_, s)| s.up) {
            let label = StripeIndex { stripe: i as u8 };
            if s.rtt_n > 0 {
                self.stripe_rtt
                    .get_or_create(&label)
                    .set(s.rtt_sum / s.rtt_n as f64);
            }
            self.stripe_queue
                .get_or_create(&label)
                .set(s.queued.min(i64::MAX as u64) as i64);
            if s.rate_n > 0 {
                self.stripe_rate.get_or_create(&label).set(s.rate);
            }
        }
        if let Some(p) = &mut self.paths {
            p.publish(&live.paths);
        }
    }
}

/// Moves a counter up to `to` (the figures it follows never go down).
fn raise(c: &Counter, to: u64) {
    let now = c.get();
    if to > now {
        c.inc_by(to - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::Side;
    use crate::pipe::PipeError;

    fn text(reg: &Registry) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, reg).unwrap();
        s
    }

    #[test]
    fn counters_are_closed_totals_plus_open_sessions() {
        let (mut r, reg) = Recorder::new(&["auth_failed"]);
        let t = |to_peer, from_peer| Totals {
            to_peer,
            from_peer,
            ..Totals::default()
        };
        let mut live = Snapshot::default();
        live.add_session(&t(100, 7), 4);
        live.add_stripe(0, Some(Duration::from_millis(10)), 500, Some(1e6));
        live.add_stripe(1, None, 0, None);
        live.add_stripe(2, None, 0, Some(2e6));
        r.publish(&live);
        let s = text(&reg);
        assert!(
            s.contains("striper_app_bytes_total{direction=\"to_peer\"} 100\n"),
            "{s}"
        );
        assert!(s.contains("striper_sessions_open 1\n"), "{s}");
        assert!(
            s.contains("striper_stripe_rtt_seconds{stripe=\"0\"} 0.01\n"),
            "{s}"
        );
        assert!(
            !s.contains("striper_stripe_rtt_seconds{stripe=\"1\"}"),
            "{s}"
        );
        assert!(
            s.contains("striper_stripe_send_queue_bytes{stripe=\"1\"} 0\n"),
            "{s}"
        );
        let rate = "striper_stripe_drain_rate_bytes_per_second";
        assert!(
            s.contains(&format!("{rate}{{stripe=\"0\"}} 1000000.0\n")),
            "{s}"
        );
        assert!(!s.contains(&format!("{rate}{{stripe=\"1\"}}")), "{s}");
        assert!(
            s.contains(&format!("{rate}{{stripe=\"2\"}} 2000000.0\n")),
            "{s}"
        );

        // The session ends with more bytes than last seen; another opens.
        let err = PipeError::new(ErrorKind::Reset, "x");
        r.closed(
            Some(&Outcome::Failed {
                side: Side::A,
                error: err,
            }),
            &t(150, 7),
        );
        let mut live = Snapshot::default();
        live.add_session(&t(5, 0), 1);
        r.publish(&live);
        r.refused("auth_failed");
        let s = text(&reg);
        assert!(
            s.contains("striper_app_bytes_total{direction=\"to_peer\"} 155\n"),
            "{s}"
        );
        assert!(s.contains("striper_sessions_opened_total 2\n"), "{s}");
        assert!(
            s.contains("striper_sessions_closed_total{reason=\"reset\"} 1\n"),
            "{s}"
        );
        assert!(
            s.contains("striper_sessions_closed_total{reason=\"finished\"} 0\n"),
            "{s}"
        );
        assert!(
            s.contains("striper_handshake_refusals_total{kind=\"auth_failed\"} 1\n"),
            "{s}"
        );
        assert!(!s.contains("striper_stripe_rtt_seconds{"), "{s}");
    }
}
