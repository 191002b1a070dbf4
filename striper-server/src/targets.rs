//! The server's targets (`--target NAME=HOST:PORT`, and a bare `HOST:PORT`
//! as the default) and SIGHUP: the config file read again, the targets
//! and limits replaced for new sessions, live sessions untouched.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use log::{info, warn};
use pipes::proto::handshake::TargetName;
use striper_core::config::{join_addrs, resolve};

use super::{Opts, Server};

/// One `--target` as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetSpec {
    /// `None`: the default target (a bare `HOST:PORT`).
    pub name: Option<TargetName>,
    pub addr: String,
}

/// `--target [NAME=]HOST:PORT`.
pub fn parse_target(s: &str) -> Result<TargetSpec, String> {
    match s.split_once('=') {
        None => Ok(TargetSpec {
            name: None,
            addr: s.to_string(),
        }),
        Some((name, addr)) if !addr.is_empty() => Ok(TargetSpec {
            name: Some(TargetName::new(name)?),
            addr: addr.to_string(),
        }),
        Some(_) => Err(format!(
            "`{s}` is not NAME=HOST:PORT (e.g. db=127.0.0.1:5432)"
        )),
    }
}

/// A target sessions may be relayed to.
#[derive(Debug)]
pub struct Target {
    /// Every address the name resolved to; a connect tries them in turn.
    pub addrs: Vec<SocketAddr>,
    /// `HOST:PORT` as configured.
    pub addr: String,
}

/// The targets by name ([`TargetName::DEFAULT`] for the bare one).
pub type Targets = BTreeMap<TargetName, Target>;

/// Checks and resolves the `--target`s: one default at most, each name
/// once.
pub fn resolve_targets(specs: &[TargetSpec]) -> Result<Targets, String> {
    let mut out = Targets::new();
    for spec in specs {
        let name = spec.name.unwrap_or(TargetName::DEFAULT);
        if out.contains_key(&name) {
            return Err(match spec.name {
                Some(n) => format!("--target {n} is given twice"),
                None => "more than one default --target (HOST:PORT without a NAME=)".into(),
            });
        }
        let what = match spec.name {
            Some(n) => format!("target {n}"),
            None => "target".into(),
        };
        let addrs = resolve(&what, &spec.addr)?;
        out.insert(
            name,
            Target {
                addrs,
                addr: spec.addr.clone(),
            },
        );
    }
    Ok(out)
}

/// The targets for the log: `db -> 127.0.0.1:5432 (127.0.0.1:5432), ...`.
pub fn describe(targets: &Targets) -> String {
    targets
        .iter()
        .map(|(name, t)| {
            let label = if name.is_default() {
                "default".to_string()
            } else {
                name.to_string()
            };
            format!("{label} -> {} ({})", t.addr, join_addrs(&t.addrs))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Options a reload applies (to new sessions). The others need a restart:
/// the listening socket, the admission limits it was built with, the key
/// (it also checks re-dialed stripes of live sessions, whose clients hold
/// the old one) and the tuning (announced again to those stripes).
const LIVE: &[&str] = &[
    "target",
    "max-sessions",
    "max-stripes",
    "memory-budget",
    "handshake-timeout",
];

impl Server {
    /// SIGHUP: targets and session limits from the config file again, for
    /// new sessions. A file that does not parse, or a target that does not
    /// resolve, changes nothing.
    pub(super) fn reload_config(&mut self) {
        let Some(path) = self.reload.path().map(|p| p.display().to_string()) else {
            info!("SIGHUP received, but there is no --config file: nothing to reload");
            return;
        };
        info!("SIGHUP received: reloading {path}");
        let applied = self
            .reload
            .read::<Opts>(|long| LIVE.contains(&long))
            .and_then(|(opts, changed)| Ok((resolve_targets(&opts.target)?, opts, changed)));
        let (targets, opts, changed) = match applied {
            Ok(x) => x,
            Err(e) => {
                warn!("reload of {path} refused, the running settings stay: {e}");
                return;
            }
        };
        for long in changed {
            warn!("--{long} changed in {path}; restart to apply (the running value stays)");
        }
        self.targets = targets;
        self.max_sessions = opts.max_sessions.max(1);
        self.max_stripes = opts.max_stripes;
        self.memory_budget = opts.memory_budget;
        self.handshake_timeout = opts.handshake_timeout;
        info!(
            "reloaded {path}: targets for new sessions: {}; live sessions go on",
            describe(&self.targets)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_bad_ones_name_the_cause() {
        let t = parse_target("db=127.0.0.1:5432").unwrap();
        assert_eq!(t.name.unwrap().as_str(), "db");
        assert_eq!(t.addr, "127.0.0.1:5432");
        let t = parse_target("[::1]:22").unwrap();
        assert_eq!((t.name, t.addr.as_str()), (None, "[::1]:22"));
        assert!(parse_target("db=").unwrap_err().contains("NAME=HOST:PORT"));
        assert!(
            parse_target("d b=x:1")
                .unwrap_err()
                .contains("only letters")
        );
        assert!(parse_target("=x:1").unwrap_err().contains("empty"));

        let specs = |v: &[&str]| {
            v.iter()
                .map(|s| parse_target(s).unwrap())
                .collect::<Vec<_>>()
        };
        let t = resolve_targets(&specs(&["127.0.0.1:1", "db=127.0.0.1:2"])).unwrap();
        assert_eq!(
            t[&TargetName::DEFAULT].addrs,
            ["127.0.0.1:1".parse().unwrap()]
        );
        assert_eq!(
            t[&TargetName::new("db").unwrap()].addrs,
            ["127.0.0.1:2".parse().unwrap()]
        );
        let e = resolve_targets(&specs(&["db=127.0.0.1:1", "db=127.0.0.1:2"])).err();
        assert_eq!(e.as_deref(), Some("--target db is given twice"));
        let e = resolve_targets(&specs(&["127.0.0.1:1", "127.0.0.1:2"])).unwrap_err();
        assert!(e.contains("more than one default"), "{e}");
    }
}
