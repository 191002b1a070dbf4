//! Per-path metrics of a bonding client (`striper_path_*`). A path's
//! figures live in each session (the DATA bytes its stripes carried, which
//! the close line shows too, and the times it went down); a scrape adds
//! them up by the path's name, as the session totals are added up.
//!
//! The `path` label is a name from the configuration ("127.0.0.2->h:7900"),
//! so the series are bounded by the paths ever configured: a reload that
//! removes a path leaves its counters at their last totals (a counter
//! never goes down), and its gauges go once no open session uses it.

use std::collections::{BTreeMap, BTreeSet};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::raise;

/// One path's counters in one session, while it is open or at its close.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathCounters {
    /// Payload bytes of DATA frames sent on the path's stripes (re-sends
    /// included).
    pub to_peer: u64,
    /// Payload bytes of DATA frames received on them.
    pub from_peer: u64,
    /// Times the path lost its last stripe after having one up.
    pub downs: u64,
}

impl PathCounters {
    fn add(&mut self, o: &PathCounters) {
        self.to_peer += o.to_peer;
        self.from_peer += o.from_peer;
        self.downs += o.downs;
    }
}

/// The open sessions' figures for one path.
#[derive(Clone, Copy, Debug, Default)]
struct LivePath {
    counters: PathCounters,
    stripes_up: u64,
    backup: bool,
}

/// The open sessions' paths, by name, added up at a scrape.
#[derive(Debug, Default)]
pub(super) struct LivePaths(BTreeMap<String, LivePath>);

impl LivePaths {
    pub(super) fn add(
        &mut self,
        name: &str,
        backup: bool,
        counters: &PathCounters,
        stripes_up: usize,
    ) {
        // A name is allocated once per scrape, not per session.
        let p = match self.0.get_mut(name) {
            Some(p) => p,
            None => self.0.entry(name.to_string()).or_default(),
        };
        p.counters.add(counters);
        p.stripes_up += stripes_up as u64;
        p.backup |= backup;
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabel {
    path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathDirection {
    path: String,
    direction: &'static str,
}

fn label(name: &str) -> PathLabel {
    PathLabel {
        path: name.to_string(),
    }
}

fn direction(name: &str, direction: &'static str) -> PathDirection {
    PathDirection {
        path: name.to_string(),
        direction,
    }
}

pub(super) struct PathMetrics {
    bytes: Family<PathDirection, Counter>,
    downs: Family<PathLabel, Counter>,
    stripes_up: Family<PathLabel, Gauge>,
    backup: Family<PathLabel, Gauge>,
    /// The paths new sessions use, and whether each is a backup.
    configured: Vec<(String, bool)>,
    /// What the sessions that ended left behind, per path. A path stays
    /// here once seen, whatever a reload does to the configuration.
    closed: BTreeMap<String, PathCounters>,
}

impl PathMetrics {
    pub(super) fn register(reg: &mut Registry) -> PathMetrics {
        let m = PathMetrics {
            bytes: Family::default(),
            downs: Family::default(),
            stripes_up: Family::default(),
            backup: Family::default(),
            configured: Vec::new(),
            closed: BTreeMap::new(),
        };
        reg.register(
            "path_bytes",
            "Payload bytes of DATA frames carried by the path's stripes (re-sends included): \
             to_peer sent, from_peer received",
            m.bytes.clone(),
        );
        reg.register(
            "path_stripes_up",
            "Stripes of the path carrying frames now, over all open sessions",
            m.stripes_up.clone(),
        );
        reg.register(
            "path_backup",
            "1 if the path is a backup (carries data only while no primary path is up), else 0",
            m.backup.clone(),
        );
        reg.register(
            "path_down",
            "Times the path lost its last stripe after having one up, counted per session",
            m.downs.clone(),
        );
        m
    }

    /// The configured paths (at start and after each reload): their series
    /// exist from then on, at 0 until a session uses them.
    pub(super) fn configure(&mut self, paths: Vec<(String, bool)>) {
        for (name, _) in &paths {
            for d in ["to_peer", "from_peer"] {
                let _ = self.bytes.get_or_create(&direction(name, d));
            }
            let _ = self.downs.get_or_create(&label(name));
        }
        self.configured = paths;
    }

    /// A session ended, having carried `counters` on path `name`.
    pub(super) fn closed(&mut self, name: &str, counters: &PathCounters) {
        match self.closed.get_mut(name) {
            Some(c) => c.add(counters),
            None => {
                self.closed.insert(name.to_string(), *counters);
            }
        }
    }

    pub(super) fn publish(&mut self, live: &LivePaths) {
        let names: BTreeSet<&str> = self
            .closed
            .keys()
            .chain(live.0.keys())
            .map(String::as_str)
            .collect();
        for name in names {
            let mut all = self.closed.get(name).copied().unwrap_or_default();
            if let Some(l) = live.0.get(name) {
                all.add(&l.counters);
            }
            raise(
                &self.bytes.get_or_create(&direction(name, "to_peer")),
                all.to_peer,
            );
            raise(
                &self.bytes.get_or_create(&direction(name, "from_peer")),
                all.from_peer,
            );
            raise(&self.downs.get_or_create(&label(name)), all.downs);
        }
        // Gauges for the configured paths and for those open sessions still
        // use after a reload removed them; the configuration says which is
        // a backup, or else the sessions do.
        self.stripes_up.clear();
        self.backup.clear();
        for (name, backup) in &self.configured {
            let up = live.0.get(name).map_or(0, |l| l.stripes_up);
            self.stripes_up.get_or_create(&label(name)).set(up as i64);
            self.backup.get_or_create(&label(name)).set(*backup as i64);
        }
        for (name, l) in &live.0 {
            if self.configured.iter().any(|(n, _)| n == name) {
                continue;
            }
            self.stripes_up
                .get_or_create(&label(name))
                .set(l.stripes_up as i64);
            self.backup.get_or_create(&label(name)).set(l.backup as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Recorder, Snapshot};
    use super::*;

    fn text(reg: &Registry) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, reg).unwrap();
        s
    }

    fn c(to_peer: u64, from_peer: u64, downs: u64) -> PathCounters {
        PathCounters {
            to_peer,
            from_peer,
            downs,
        }
    }

    #[track_caller]
    fn has(s: &str, line: &str) {
        assert!(s.contains(&format!("{line}\n")), "no {line:?} in\n{s}");
    }

    #[test]
    fn paths_add_up_over_sessions_and_survive_a_reload_that_removes_them() {
        let (mut r, reg) = Recorder::client();
        r.set_paths(vec![("a->h:1".into(), false), ("b->h:1".into(), true)]);
        r.publish(&Snapshot::default());
        let s = text(&reg);
        has(
            &s,
            r#"striper_path_bytes_total{path="a->h:1",direction="to_peer"} 0"#,
        );
        has(&s, r#"striper_path_stripes_up{path="b->h:1"} 0"#);
        has(&s, r#"striper_path_backup{path="b->h:1"} 1"#);
        has(&s, r#"striper_path_backup{path="a->h:1"} 0"#);
        has(&s, r#"striper_path_down_total{path="b->h:1"} 0"#);

        // Two open sessions on both paths.
        let mut live = Snapshot::default();
        live.add_path("a->h:1", false, &c(100, 10, 1), 2);
        live.add_path("b->h:1", true, &c(0, 0, 0), 2);
        live.add_path("a->h:1", false, &c(50, 5, 0), 1);
        live.add_path("b->h:1", true, &c(0, 0, 0), 2);
        r.publish(&live);
        let s = text(&reg);
        has(
            &s,
            r#"striper_path_bytes_total{path="a->h:1",direction="to_peer"} 150"#,
        );
        has(
            &s,
            r#"striper_path_bytes_total{path="a->h:1",direction="from_peer"} 15"#,
        );
        has(&s, r#"striper_path_stripes_up{path="a->h:1"} 3"#);
        has(&s, r#"striper_path_stripes_up{path="b->h:1"} 4"#);
        has(&s, r#"striper_path_down_total{path="a->h:1"} 1"#);

        // A reload replaces b with c; the first session ends having carried
        // more than last seen; the second goes on over a and b.
        r.set_paths(vec![("a->h:1".into(), false), ("c->h:1".into(), true)]);
        r.closed_path("a->h:1", &c(120, 10, 1));
        r.closed_path("b->h:1", &c(7, 0, 0));
        let mut live = Snapshot::default();
        live.add_path("a->h:1", false, &c(60, 5, 0), 2);
        live.add_path("b->h:1", true, &c(0, 0, 0), 1);
        r.publish(&live);
        let s = text(&reg);
        has(
            &s,
            r#"striper_path_bytes_total{path="a->h:1",direction="to_peer"} 180"#,
        );
        has(
            &s,
            r#"striper_path_bytes_total{path="b->h:1",direction="to_peer"} 7"#,
        );
        has(
            &s,
            r#"striper_path_bytes_total{path="c->h:1",direction="to_peer"} 0"#,
        );
        // b is no longer configured but a session still uses it.
        has(&s, r#"striper_path_stripes_up{path="b->h:1"} 1"#);
        has(&s, r#"striper_path_backup{path="b->h:1"} 1"#);
        has(&s, r#"striper_path_backup{path="c->h:1"} 1"#);

        // The last session ends: b keeps its counters, loses its gauges.
        r.closed_path("a->h:1", &c(60, 5, 0));
        r.closed_path("b->h:1", &c(0, 0, 0));
        r.publish(&Snapshot::default());
        let s = text(&reg);
        has(
            &s,
            r#"striper_path_bytes_total{path="a->h:1",direction="to_peer"} 180"#,
        );
        has(
            &s,
            r#"striper_path_bytes_total{path="b->h:1",direction="to_peer"} 7"#,
        );
        has(&s, r#"striper_path_down_total{path="a->h:1"} 1"#);
        has(&s, r#"striper_path_stripes_up{path="a->h:1"} 0"#);
        assert!(
            !s.contains(r#"striper_path_stripes_up{path="b->h:1"}"#),
            "{s}"
        );
        assert!(!s.contains(r#"striper_path_backup{path="b->h:1"}"#), "{s}");
    }

    #[test]
    fn the_server_has_no_path_metrics() {
        let (mut r, reg) = Recorder::new(&["auth_failed"]);
        r.set_paths(vec![("a->h:1".into(), false)]);
        r.publish(&Snapshot::default());
        assert!(!text(&reg).contains("striper_path_"));
    }
}
