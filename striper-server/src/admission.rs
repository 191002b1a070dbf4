//! Who gets a handshake slot, and what is logged about those who do not.
//!
//! New connections are cheap to open and the server must read them to know
//! what they are, so slots for connections in their handshake are limited:
//! `--max-pending` in all and `--max-pending-per-source` from one address
//! (one /64 for IPv6, where a host has a whole prefix). A source at its
//! limit makes room from its own stale handshakes (silent for
//! [`SILENT_AFTER`]: nothing received, nothing even waiting in the socket;
//! or in progress for [`EVICT_AFTER`]), never from someone else's; at the
//! global limit the oldest handshake silent for [`SILENT_AFTER`] goes
//! first, then any handshake older than [`EVICT_AFTER`], and when every
//! slot is young the rest wait in the kernel's listen queue. An honest stripe
//! sends its hello at once and finishes within a round trip, so a flood of
//! silent connections from a few sources cannot keep others out.
//!
//! A source that has sent an authenticated hello within [`SPARED_FOR`]
//! loses none of its handshakes to eviction: it holds the key and is working
//! through its connections. A client opening 200 sessions at once dials 800
//! stripes and computes their first messages one after another; on a busy
//! machine the last ones go out well after 0.1 s, and before this rule the
//! server closed them as silent (4% to 13% of such a burst's sessions
//! failed). Only someone with the key can earn the reprieve.
//!
//! Warnings about refused or failed connections are logged once per
//! address and kind, and at most [`WARN_BURST`] per [`WARN_WINDOW`] overall;
//! the rest are counted and summed up in one line.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use log::{debug, warn};
use pipes::proto::handshake::Status;
use striper_core::warnlimit::WarnLimiter;

/// At --max-pending, a handshake that has sent something may be closed
/// for a new connection once it is this old.
pub const EVICT_AFTER: Duration = Duration::from_secs(1);
/// A connection that has sent nothing for this long counts as silent.
pub const SILENT_AFTER: Duration = Duration::from_millis(100);
/// A source's handshakes are spared this long after it last authenticated.
pub const SPARED_FOR: Duration = Duration::from_secs(1);
const WARN_BURST: u32 = 20;
const WARN_WINDOW: Duration = Duration::from_secs(10);

/// A handshake in progress, as eviction sees it.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    pub slot: usize,
    pub peer: SocketAddr,
    pub accepted_at: Instant,
    /// Nothing received from it yet.
    pub silent: bool,
}

pub struct Admission {
    max_pending: usize,
    per_source: usize,
    pending: usize,
    by_source: HashMap<IpAddr, usize>,
    /// When each source last sent a hello that decrypted under the key.
    authenticated: HashMap<IpAddr, Instant>,
    logged: HashSet<(IpAddr, &'static str)>,
    warns: WarnLimiter,
}

/// The address a limit applies to: IPv4 as is, IPv6 by its /64.
pub fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

impl Admission {
    pub fn new(max_pending: usize, per_source: usize) -> Admission {
        Admission {
            max_pending: max_pending.max(1),
            per_source: per_source.clamp(1, max_pending.max(1)),
            pending: 0,
            by_source: HashMap::new(),
            authenticated: HashMap::new(),
            logged: HashSet::new(),
            warns: WarnLimiter::new(WARN_BURST, WARN_WINDOW),
        }
    }

    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Below the global limit.
    pub fn has_room(&self) -> bool {
        self.pending < self.max_pending
    }

    /// Below the limit of `peer`'s source.
    pub fn source_has_room(&self, peer: SocketAddr) -> bool {
        self.by_source.get(&source(peer.ip())).copied().unwrap_or(0) < self.per_source
    }

    pub fn add(&mut self, peer: SocketAddr) {
        self.pending += 1;
        *self.by_source.entry(source(peer.ip())).or_default() += 1;
    }

    pub fn remove(&mut self, peer: SocketAddr) {
        self.pending = self.pending.saturating_sub(1);
        let src = source(peer.ip());
        if let Some(n) = self.by_source.get_mut(&src) {
            *n -= 1;
            if *n == 0 {
                self.by_source.remove(&src);
            }
        }
    }

    /// `peer` sent a hello that decrypted under the key.
    pub fn authenticated(&mut self, peer: SocketAddr, now: Instant) {
        if self.authenticated.len() > 10_000 {
            self.authenticated
                .retain(|_, t| now.saturating_duration_since(*t) < SPARED_FOR);
        }
        self.authenticated.insert(source(peer.ip()), now);
    }

    /// Whether `peer`'s handshakes are spared: its source authenticated a
    /// hello within [`SPARED_FOR`].
    pub fn spared(&self, peer: SocketAddr, now: Instant) -> bool {
        self.authenticated
            .get(&source(peer.ip()))
            .is_some_and(|t| now.saturating_duration_since(*t) < SPARED_FOR)
    }

    /// The handshake to close so that `for_peer`'s source (`Some`) or
    /// anyone (`None`) gets a slot, if one may be closed now.
    pub fn victim(
        &self,
        for_peer: Option<SocketAddr>,
        now: Instant,
        candidates: impl Iterator<Item = Candidate>,
    ) -> Option<Candidate> {
        let src = for_peer.map(|p| source(p.ip()));
        let age = |c: &Candidate| now.saturating_duration_since(c.accepted_at);
        let mut silent: Option<Candidate> = None;
        let mut old: Option<Candidate> = None;
        for c in candidates {
            if src.is_some_and(|s| s != source(c.peer.ip())) || self.spared(c.peer, now) {
                continue;
            }
            if c.silent && age(&c) >= SILENT_AFTER {
                silent = Some(silent.map_or(c, |s| oldest(s, c)));
            } else if age(&c) >= EVICT_AFTER {
                old = Some(old.map_or(c, |o| oldest(o, c)));
            }
        }
        silent.or(old)
    }

    /// Logs a refusal or failure once per address and kind (repeats go to
    /// the debug level), within the overall rate limit.
    pub fn refuse(&mut self, peer: SocketAddr, class: &'static str, why: &str, now: Instant) {
        if self.logged.len() > 10_000 {
            self.logged.clear();
        }
        let mut summary = None;
        let first = self.logged.insert((peer.ip(), class));
        if first && self.warns.allow(class, now, &mut summary) {
            warn!(
                "connection from {peer} {class}: {why} (more like it from {} are logged at debug level)",
                peer.ip()
            );
        } else {
            debug!("connection from {peer} {class}: {why}");
        }
        if let Some(s) = summary {
            warn!("{s}");
        }
    }

    /// Logs the summary of held-back warnings when it is due; returns when
    /// to call again.
    pub fn housekeeping(&mut self, now: Instant) -> Option<Instant> {
        if let Some(s) = self.warns.flush(now) {
            warn!("{s}");
        }
        self.warns.next_flush()
    }
}

/// The `kind` label of `striper_handshake_refusals_total`: a fixed list,
/// whatever the peers send.
pub const REFUSAL_KINDS: [&str; 14] = [
    "auth_failed",
    "bad_version",
    "not_striper",
    "malformed",
    "closed_early",
    "timeout",
    "unknown_session",
    "too_many_stripes",
    "server_full",
    "busy",
    "evicted",
    "join_refused",
    "unknown_target",
    "other",
];

/// The refusal kind of a failed handshake, from the fixed phrase it
/// failed with (`Progress::Failed`'s class).
pub fn failure_kind(class: &str) -> &'static str {
    match class {
        "failed authentication" => "auth_failed",
        "speaks another protocol version" => "bad_version",
        "sent bytes that are not a striper handshake" => "not_striper",
        "sent an invalid handshake" => "malformed",
        crate::handshake::CLOSED => "closed_early",
        crate::handshake::TIMED_OUT => "timeout",
        _ => "other",
    }
}

/// The refusal kind of a hello the server answered with `status`.
pub fn status_kind(status: Status) -> &'static str {
    match status {
        Status::UnknownSession => "unknown_session",
        Status::SessionFull => "too_many_stripes",
        Status::ServerFull => "server_full",
        Status::ServerBusy => "busy",
        Status::AuthFailed => "auth_failed",
        Status::BadVersion => "bad_version",
        Status::Malformed => "malformed",
        Status::UnknownTarget => "unknown_target",
        _ => "other",
    }
}

fn oldest(a: Candidate, b: Candidate) -> Candidate {
    if b.accepted_at < a.accepted_at { b } else { a }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(slot: usize, ip: &str, age_ms: u64, silent: bool, now: Instant) -> Candidate {
        Candidate {
            slot,
            peer: SocketAddr::new(ip.parse().unwrap(), 1000),
            accepted_at: now - Duration::from_millis(age_ms),
            silent,
        }
    }

    #[test]
    fn a_source_makes_room_only_from_its_own_silent_handshakes() {
        let now = Instant::now() + Duration::from_secs(10);
        let a = Admission::new(8, 2);
        let c = [
            cand(1, "10.0.0.1", 5000, false, now),
            cand(2, "10.0.0.2", 300, true, now),
            cand(3, "10.0.0.2", 900, true, now),
            cand(4, "10.0.0.2", 50, true, now),
        ];
        let p2: SocketAddr = "10.0.0.2:5".parse().unwrap();
        let p3: SocketAddr = "10.0.0.3:5".parse().unwrap();
        assert_eq!(
            a.victim(Some(p2), now, c.into_iter()).map(|c| c.slot),
            Some(3)
        );
        assert_eq!(a.victim(Some(p3), now, c.into_iter()).map(|c| c.slot), None);
        assert_eq!(
            a.victim(Some(p2), now, c[3..].iter().copied())
                .map(|c| c.slot),
            None,
            "never a young one: it may be an honest stripe whose hello is on its way"
        );
        // Globally: the oldest silent one first, before older talkers; never
        // a young one.
        assert_eq!(
            a.victim(None, now, c[3..].iter().copied()).map(|c| c.slot),
            None
        );
        assert_eq!(a.victim(None, now, c.into_iter()).map(|c| c.slot), Some(3));
        assert_eq!(
            a.victim(None, now, c[..2].iter().copied()).map(|c| c.slot),
            Some(2)
        );
        assert_eq!(
            a.victim(None, now, c[..1].iter().copied()).map(|c| c.slot),
            Some(1),
            "a talker older than EVICT_AFTER when nobody is silent"
        );
    }

    #[test]
    fn a_source_that_keeps_authenticating_loses_nothing() {
        let now = Instant::now() + Duration::from_secs(10);
        let mut a = Admission::new(8, 2);
        let c = [
            cand(1, "10.0.0.1", 900, true, now),
            cand(2, "10.0.0.1", 5000, false, now),
            cand(3, "10.0.0.2", 300, true, now),
        ];
        let p1: SocketAddr = "10.0.0.1:5".parse().unwrap();
        a.authenticated(p1, now - Duration::from_millis(50));
        assert_eq!(
            a.victim(Some(p1), now, c.into_iter()).map(|c| c.slot),
            None,
            "its silent and old handshakes are its own queue, not a flood"
        );
        assert_eq!(
            a.victim(None, now, c.into_iter()).map(|c| c.slot),
            Some(3),
            "someone else's silent one still goes"
        );
        // Once it stops authenticating, the usual rules apply again.
        let later = now + SPARED_FOR;
        assert_eq!(
            a.victim(Some(p1), later, c.into_iter()).map(|c| c.slot),
            Some(1)
        );
    }

    #[test]
    fn limits_count_by_source_and_ipv6_prefix() {
        let mut a = Admission::new(4, 2);
        let v6a: SocketAddr = "[2001:db8:1:2::1]:1".parse().unwrap();
        let v6b: SocketAddr = "[2001:db8:1:2:ffff::9]:2".parse().unwrap();
        let other: SocketAddr = "[2001:db8:1:3::1]:1".parse().unwrap();
        a.add(v6a);
        assert!(a.source_has_room(v6b));
        a.add(v6b);
        assert!(!a.source_has_room(v6a), "one /64 is one source");
        assert!(a.source_has_room(other));
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:1".parse().unwrap();
        assert_eq!(source(mapped.ip()), "10.0.0.1".parse::<IpAddr>().unwrap());
        a.remove(v6a);
        assert!(a.source_has_room(v6a));
        assert_eq!(a.pending(), 1);
    }
}
