//! A client's paths as the striped pipe keeps them: which stripes each one
//! has, the data it carried each way, and whether it is down. A path's
//! stripes are a contiguous run of indices (`--stripes` of them), so the
//! server, which knows nothing of paths, sees one session of paths × N
//! stripes.
//!
//! Events are logged per path, not per stripe: a path that dies loses all
//! its stripes at once, and one line says so. The same figures feed the
//! client's per-path metrics ([`StripedPipe::path_readings`]).

use std::time::Instant;

use log::{info, warn};
use striper_core::config::human_bytes;
use striper_core::metrics::PathCounters;
use striper_core::{ErrorKind, PipeError};

use super::StripedPipe;
use crate::path::PathSpec;
use crate::proto::session::Session;
use crate::stripe::StripeState;

pub(super) struct PathState {
    pub(super) spec: PathSpec,
    /// The path's name ([`PathSpec::name`]); logs add the backup mark.
    name: String,
    /// Payload bytes of DATA frames sent on the path's stripes (re-sends
    /// included) and received on them.
    bytes_out: u64,
    bytes_in: u64,
    /// Times the path lost its last stripe after having one up.
    downs: u64,
    /// Since when no stripe of the path has been up (after it was once).
    down_since: Option<Instant>,
    ever_up: bool,
}

/// One path of a session as the metrics see it.
pub struct PathReading<'a> {
    pub name: &'a str,
    pub backup: bool,
    pub counters: PathCounters,
    pub stripes_up: usize,
}

/// The client's paths; empty on the server.
#[derive(Default)]
pub(super) struct Paths {
    list: Vec<PathState>,
    per_path: usize,
}

impl Paths {
    pub(super) fn new(specs: Vec<PathSpec>, per_path: usize) -> Paths {
        Paths {
            list: specs
                .into_iter()
                .map(|spec| PathState {
                    name: spec.name(),
                    spec,
                    bytes_out: 0,
                    bytes_in: 0,
                    downs: 0,
                    down_since: None,
                    ever_up: false,
                })
                .collect(),
            per_path,
        }
    }

    /// More than one path: events are logged per path.
    pub(super) fn several(&self) -> bool {
        self.list.len() > 1
    }

    pub(super) fn of(&self, stripe: usize) -> Option<&PathState> {
        self.list.get(self.index_of(stripe)?)
    }

    fn index_of(&self, stripe: usize) -> Option<usize> {
        let k = stripe / self.per_path.max(1);
        (k < self.list.len()).then_some(k)
    }

    pub(super) fn spec_of(&self, stripe: usize) -> &PathSpec {
        &self.of(stripe).expect("client stripes have a path").spec
    }

    /// "stripe 3" with one path; "stripe 3 (path 127.0.0.2->h:7900)" with
    /// several.
    pub(super) fn name_stripe(&self, stripe: usize) -> String {
        match self.of(stripe) {
            Some(p) if self.several() => format!("stripe {stripe} (path {})", p.spec.label()),
            _ => format!("stripe {stripe}"),
        }
    }

    pub(super) fn count_out(&mut self, stripe: usize, n: u64) {
        if let Some(k) = self.index_of(stripe) {
            self.list[k].bytes_out += n;
        }
    }

    pub(super) fn count_in(&mut self, stripe: usize, n: u64) {
        if let Some(k) = self.index_of(stripe) {
            self.list[k].bytes_in += n;
        }
    }

    /// The stripes of path `k`.
    fn stripes_of(&self, k: usize) -> std::ops::Range<usize> {
        k * self.per_path..(k + 1) * self.per_path
    }

    fn stripes_up(&self, k: usize, session: &Session) -> usize {
        self.stripes_of(k)
            .filter(|&i| session.is_stripe_up(i))
            .count()
    }

    fn paths_up(&self, session: &Session) -> usize {
        (0..self.list.len())
            .filter(|&k| self.stripes_up(k, session) > 0)
            .count()
    }

    /// For the close line: each path's data each way, e.g. "; paths:
    /// 127.0.0.2->h:7900 out 10.0 MiB in 2.0 KiB, ...". Empty with one
    /// path (the line's totals say it all).
    pub(super) fn summary(&self) -> String {
        if !self.several() {
            return String::new();
        }
        let each: Vec<String> = self
            .list
            .iter()
            .map(|p| {
                format!(
                    "{} out {} in {}",
                    p.spec.label(),
                    human_bytes(p.bytes_out),
                    human_bytes(p.bytes_in)
                )
            })
            .collect();
        format!(" [paths: {}]", each.join(", "))
    }
}

impl StripedPipe {
    /// Each path's figures so far (none on the server).
    pub fn path_readings(&self) -> impl Iterator<Item = PathReading<'_>> {
        self.paths
            .list
            .iter()
            .enumerate()
            .map(|(k, p)| PathReading {
                name: &p.name,
                backup: p.spec.backup,
                counters: PathCounters {
                    to_peer: p.bytes_out,
                    from_peer: p.bytes_in,
                    downs: p.downs,
                },
                stripes_up: self.paths.stripes_up(k, &self.session),
            })
    }

    /// At the start, backup stripes wait for the primaries still
    /// connecting; once a primary path has been up, or none is trying any
    /// more, a backup takes over as soon as no primary stripe is up.
    pub(super) fn update_backup_hold(&mut self) {
        let paths = &self.paths;
        if !paths.list.iter().any(|p| p.spec.backup) {
            return;
        }
        let primary_was_up = paths.list.iter().any(|p| !p.spec.backup && p.ever_up);
        let primary_connecting = (0..self.stripes.len()).any(|i| {
            !paths.spec_of(i).backup
                && self.stripes[i].as_ref().is_some_and(|s| {
                    matches!(
                        s.state(),
                        StripeState::Connecting | StripeState::AwaitAnswer
                    )
                })
        });
        self.session
            .hold_backups(!primary_was_up && primary_connecting);
    }

    /// Stripe `i` came up: if its path had none, the path is up (or back).
    /// Kept with one path too (for the metrics); logged with several (one
    /// path's stripes log their own events).
    pub(super) fn note_path_up(&mut self, i: usize, now: Instant) {
        let Some(k) = self.paths.index_of(i) else {
            return;
        };
        if self.paths.stripes_up(k, &self.session) != 1 {
            return;
        }
        let up = self.paths.paths_up(&self.session);
        let total = self.paths.list.len();
        let several = self.paths.several();
        let p = &mut self.paths.list[k];
        let was_up = std::mem::replace(&mut p.ever_up, true);
        let down_since = p.down_since.take();
        if !several {
            return;
        }
        match down_since {
            Some(since) => info!(
                "{}: path {} is back after {:.1} s ({up} of {total} paths up)",
                self.label,
                p.spec.label(),
                now.saturating_duration_since(since).as_secs_f64()
            ),
            None if !was_up => info!(
                "{}: path {} up ({up} of {total} paths up)",
                self.label,
                p.spec.label()
            ),
            None => {}
        }
    }

    /// Stripe `i` was reset: its path's other stripes most likely are too,
    /// but each learns it only when its next segment has crossed the path
    /// and the RST has come back. With other paths to carry them, what
    /// they hold goes out again there now.
    pub(super) fn suspect_path_of(&mut self, i: usize, err: &PipeError) {
        if err.kind != ErrorKind::Reset || !self.paths.several() {
            return;
        }
        let Some(k) = self.paths.index_of(i) else {
            return;
        };
        for j in self.paths.stripes_of(k).filter(|&j| j != i) {
            self.session.suspect_stripe(j);
        }
    }

    /// Stripe `i` was lost (`err`): if it was its path's last, the path is
    /// down, once.
    pub(super) fn note_path_down(&mut self, i: usize, err: &PipeError, now: Instant) {
        let Some(k) = self.paths.index_of(i) else {
            return;
        };
        let p = &self.paths.list[k];
        if !p.ever_up || p.down_since.is_some() || self.paths.stripes_up(k, &self.session) > 0 {
            return;
        }
        let up = self.paths.paths_up(&self.session);
        let total = self.paths.list.len();
        let primary = self.session.primary_up();
        let several = self.paths.several();
        let p = &mut self.paths.list[k];
        p.down_since = Some(now);
        p.downs += 1;
        if !several {
            return;
        }
        let rest = match (up, primary) {
            (0, _) => "no path left; re-dialing".to_string(),
            (_, true) => format!("{up} of {total} paths up carry its data; re-dialing it"),
            (_, false) => {
                format!("only backup paths left ({up} of {total}): they take over; re-dialing it")
            }
        };
        warn!(
            "{}: path {} down: {err}; {rest}",
            self.label,
            p.spec.label()
        );
    }
}
