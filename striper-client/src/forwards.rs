//! The client's listeners (`--listen` for the server's default target,
//! `--forward ADDR=NAME` for named ones) and SIGHUP: the config file read
//! again, listeners bound and closed to match it, new settings for new
//! sessions. Live sessions are never touched.

use std::collections::HashMap;
use std::net::SocketAddr;

use log::{info, warn};
use pipes::proto::handshake::TargetName;
use striper_core::config::join_addrs;
use striper_core::daemon::Listeners;

use super::{Listening, Opts, Settings, forwards_of};

/// One listener: where, and for which of the server's targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    /// As configured (`127.0.0.1:0` stays that, whatever port it got): a
    /// reload keeps a listener whose configured address is unchanged.
    pub addr: String,
    pub target: TargetName,
}

impl Forward {
    fn describe(&self) -> String {
        if self.target.is_default() {
            "the default target".into()
        } else {
            format!("target {}", self.target)
        }
    }
}

/// `--forward LISTEN_ADDR=NAME`.
pub fn parse_forward(s: &str) -> Result<Forward, String> {
    let (addr, name) = s
        .rsplit_once('=')
        .filter(|(a, _)| !a.is_empty())
        .ok_or_else(|| format!("`{s}` is not LISTEN_ADDR=NAME (e.g. 127.0.0.1:5432=db)"))?;
    Ok(Forward {
        addr: addr.to_string(),
        target: TargetName::new(name)?,
    })
}

/// `--target-name NAME`.
pub fn parse_target_name(s: &str) -> Result<TargetName, String> {
    TargetName::new(s)
}

/// How the running listeners become the wanted ones.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan<K> {
    /// Listeners left as they are.
    kept: usize,
    /// Same address, another target: the socket stays, new sessions go to
    /// the new target.
    retarget: Vec<(K, TargetName)>,
    close: Vec<K>,
    bind: Vec<Forward>,
}

/// Matches wanted forwards to running listeners: first those with the same
/// address and target, then the same address alone, so no address is
/// closed and bound again (which would refuse connections meanwhile).
fn plan<K: Copy + Ord>(running: &HashMap<K, Forward>, wanted: &[Forward]) -> Plan<K> {
    let mut left: Vec<(K, &Forward)> = running.iter().map(|(&k, f)| (k, f)).collect();
    left.sort_by_key(|(k, _)| *k);
    let mut p = Plan {
        kept: 0,
        retarget: Vec::new(),
        close: Vec::new(),
        bind: Vec::new(),
    };
    let mut unmatched = Vec::new();
    for w in wanted {
        match left.iter().position(|(_, f)| *f == w) {
            Some(i) => {
                left.remove(i);
                p.kept += 1;
            }
            None => unmatched.push(w),
        }
    }
    for w in unmatched {
        match left.iter().position(|(_, f)| f.addr == w.addr) {
            Some(i) => {
                let (k, _) = left.remove(i);
                p.retarget.push((k, w.target));
            }
            None => p.bind.push(w.clone()),
        }
    }
    p.close = left.into_iter().map(|(k, _)| k).collect();
    p
}

impl Listening {
    pub(super) fn log_listening(&self, f: &Forward, local: SocketAddr) {
        let s = &self.settings;
        let what = if f.target.is_default() {
            String::new()
        } else {
            format!(" for target {}", f.target)
        };
        if let [p] = s.server.paths.as_slice() {
            info!(
                "listening on {local}{what}, carrying each connection to server {} ({}) over {} \
                 stripes",
                p.server_name,
                join_addrs(&p.servers),
                s.stripes
            );
            return;
        }
        info!(
            "listening on {local}{what}, carrying each connection over {} paths x {} stripes",
            s.server.paths.len(),
            s.stripes
        );
        for p in &s.server.paths {
            info!("  path {}: server {}", p.label(), join_addrs(&p.servers));
        }
    }

    /// SIGHUP: the config file again. Anything wrong with it (it does not
    /// parse, an option is refused, a new address cannot be bound) leaves
    /// everything as it was.
    pub(super) fn reload_config(&mut self, listeners: &mut Listeners) {
        let Some(path) = self.reload.path().map(|p| p.display().to_string()) else {
            info!("SIGHUP received, but there is no --config file: nothing to reload");
            return;
        };
        info!("SIGHUP received: reloading {path}");
        match self.apply(listeners) {
            Ok(summary) => info!("reloaded {path}: {summary}"),
            Err(e) => warn!("reload of {path} refused, the running settings stay: {e}"),
        }
    }

    fn apply(&mut self, listeners: &mut Listeners) -> Result<String, String> {
        // Every option applies to new sessions but the metrics address
        // (its responder thread lives as long as the program).
        let (opts, changed) = self.reload.read::<Opts>(|long| long != "metrics")?;
        let path = self.reload.path().map(|p| p.display().to_string());
        for long in changed {
            warn!(
                "--{long} changed in {}; restart to apply (the running value stays)",
                path.as_deref().unwrap_or("the config file")
            );
        }
        if opts.stdio {
            return Err("--stdio cannot be turned on by a reload".into());
        }
        let settings = Settings::from_opts(&opts)?;
        let plan = plan(&self.forwards, &forwards_of(&opts));
        let registry = self.reactor.registry();
        // New addresses first: if one cannot be bound, nothing has changed.
        let mut bound = Vec::new();
        for f in &plan.bind {
            match listeners.bind(registry, &f.addr) {
                Ok((id, local)) => bound.push((id, local, f.clone())),
                Err(e) => {
                    for (id, ..) in bound {
                        listeners.close(registry, id);
                    }
                    return Err(e);
                }
            }
        }
        self.settings = settings;
        self.recorder.set_paths(self.settings.path_names());
        for &id in &plan.close {
            listeners.close(registry, id);
            if let Some(f) = self.forwards.remove(&id) {
                info!(
                    "stopped listening on {} ({}): its live sessions go on",
                    f.addr,
                    f.describe()
                );
            }
        }
        for &(id, target) in &plan.retarget {
            if let Some(f) = self.forwards.get_mut(&id) {
                let old = f.describe();
                f.target = target;
                info!(
                    "{}: new sessions go to {} (was {old})",
                    f.addr,
                    f.describe()
                );
            }
        }
        for (id, local, f) in bound {
            self.log_listening(&f, local);
            self.forwards.insert(id, f);
        }
        Ok(format!(
            "{} listener(s): {} kept, {} retargeted, {} closed, {} new; new sessions use the \
             file's settings",
            self.forwards.len(),
            plan.kept,
            plan.retarget.len(),
            plan.close.len(),
            plan.bind.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(addr: &str, name: &str) -> Forward {
        Forward {
            addr: addr.into(),
            target: if name.is_empty() {
                TargetName::DEFAULT
            } else {
                TargetName::new(name).unwrap()
            },
        }
    }

    #[test]
    fn forwards_parse_and_bad_ones_name_the_cause() {
        assert_eq!(
            parse_forward("127.0.0.1:5432=db").unwrap(),
            fwd("127.0.0.1:5432", "db")
        );
        assert_eq!(
            parse_forward("[::1]:80=web-1").unwrap(),
            fwd("[::1]:80", "web-1")
        );
        let e = parse_forward("127.0.0.1:5432").unwrap_err();
        assert!(e.contains("not LISTEN_ADDR=NAME"), "{e}");
        assert!(parse_forward("=db").is_err());
        let e = parse_forward("127.0.0.1:1=").unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let e = parse_forward("127.0.0.1:1=d b").unwrap_err();
        assert!(e.contains("only letters"), "{e}");
    }

    #[test]
    fn a_reload_keeps_unchanged_addresses_and_binds_only_new_ones() {
        let running: HashMap<u32, Forward> = [
            (1, fwd("127.0.0.1:0", "")),
            (2, fwd("127.0.0.1:5432", "db")),
            (3, fwd("127.0.0.1:8080", "web")),
            (4, fwd("127.0.0.1:0", "db")),
        ]
        .into();
        let wanted = [
            fwd("127.0.0.1:0", ""),
            fwd("127.0.0.1:5432", "db"),
            fwd("127.0.0.1:8080", "api"),
            fwd("127.0.0.1:9090", "metrics"),
        ];
        let p = plan(&running, &wanted);
        assert_eq!(p.kept, 2);
        assert_eq!(p.retarget, vec![(3, TargetName::new("api").unwrap())]);
        assert_eq!(p.close, vec![4]);
        assert_eq!(p.bind, vec![fwd("127.0.0.1:9090", "metrics")]);
        let same = plan(&running, &running.values().cloned().collect::<Vec<_>>());
        assert_eq!((same.kept, same.close.len(), same.bind.len()), (4, 0, 0));
    }
}
