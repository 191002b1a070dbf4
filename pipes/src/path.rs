//! Paths: the ways a client's stripes reach the server. A path is one local
//! way out (`--via`: a source address or an interface, or the default
//! route) paired with one server address (`--server`); the client opens
//! `--stripes` stripes on every path, so two uplinks and one server are two
//! paths, and their stripes share one session.
//!
//! A path marked backup carries no data while a primary path has a live
//! stripe; its stripes stay connected and probed, so that taking over costs
//! no handshake.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use striper_core::{ErrorKind, PipeError};

/// The suffix that marks a `--via` or `--server` as a backup. Interface
/// names cannot contain `:` (the kernel refuses them), and no IPv6 address
/// ends in `:backup` (not hex), so the suffix is never part of a name.
pub const BACKUP_SUFFIX: &str = ":backup";

/// Where a path's stripes leave from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// Wherever the routing table sends them.
    Default,
    /// Bound to this local source address before connecting.
    Addr(IpAddr),
    /// Bound to this interface (`SO_BINDTODEVICE`, needs `CAP_NET_RAW`).
    Device(String),
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Via::Default => f.write_str("default route"),
            Via::Addr(ip) => write!(f, "{ip}"),
            Via::Device(d) => f.write_str(d),
        }
    }
}

/// Strips a trailing `:backup`; the rest and whether it was there.
pub fn split_backup(s: &str) -> (&str, bool) {
    match s.strip_suffix(BACKUP_SUFFIX) {
        Some(rest) => (rest, true),
        None => (s, false),
    }
}

impl Via {
    /// Parses `--via`: an IPv4 or IPv6 address (bare or in brackets) or an
    /// interface name, optionally followed by `:backup`.
    pub fn parse(s: &str) -> Result<(Via, bool), String> {
        let (spec, backup) = split_backup(s.trim());
        let bare = spec
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(spec);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            if ip.is_unspecified() {
                return Err(format!(
                    "--via {s:?}: the unspecified address is no source address; leave --via out \
                     for the default route"
                ));
            }
            return Ok((Via::Addr(ip), backup));
        }
        // The kernel's rules for a name (dev_valid_name): 1-15 bytes, no
        // '/', ':' or white space, not "." or "..".
        let valid = !spec.is_empty()
            && spec.len() < 16
            && spec != "."
            && spec != ".."
            && spec
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
        if !valid {
            return Err(format!(
                "--via {s:?} is neither an IP address nor an interface name (write ADDR, \
                 [IPV6], or IFACE, with :backup after it for a backup path)"
            ));
        }
        Ok((Via::Device(spec.to_string()), backup))
    }

    /// Tries the binding on a throw-away socket, so a wrong address, a
    /// missing interface or a missing privilege is an error at start.
    pub fn check(&self) -> Result<(), String> {
        let domain = match self {
            Via::Default => return Ok(()),
            Via::Addr(IpAddr::V6(_)) => Domain::IPV6,
            _ => Domain::IPV4,
        };
        let sock = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
            .map_err(|e| format!("cannot open a socket to check --via {self}: {e}"))?;
        self.bind(&sock)
    }

    /// Binds `sock` to this path's way out; the error names the cause.
    pub fn bind(&self, sock: &Socket) -> Result<(), String> {
        match self {
            Via::Default => Ok(()),
            Via::Addr(ip) => {
                sock.bind(&SocketAddr::new(*ip, 0).into())
                    .map_err(|e| match e.raw_os_error() {
                        Some(libc::EADDRNOTAVAIL) => {
                            format!("--via {ip}: not an address of this host ({e})")
                        }
                        _ => format!("--via {ip}: cannot bind to it: {e}"),
                    })
            }
            Via::Device(d) => {
                sock.bind_device(Some(d.as_bytes()))
                    .map_err(|e| match e.raw_os_error() {
                        Some(libc::EPERM) => format!(
                            "--via {d}: binding to an interface needs CAP_NET_RAW (run as root, \
                         or `setcap cap_net_raw+ep` on the binary), or give the interface's \
                         address instead ({e})"
                        ),
                        Some(libc::ENODEV) => format!("--via {d}: no such interface ({e})"),
                        _ => format!("--via {d}: cannot bind to the interface: {e}"),
                    })
            }
        }
    }

    /// Whether this way out can reach `addr` at all (an address binds only
    /// sockets of its own family).
    pub fn reaches(&self, addr: &SocketAddr) -> bool {
        match self {
            Via::Addr(ip) => ip.is_ipv4() == addr.is_ipv4(),
            _ => true,
        }
    }
}

/// One path: a way out and a server.
#[derive(Clone, Debug)]
pub struct PathSpec {
    pub via: Via,
    /// The server's addresses this way out can reach, tried in turn.
    pub servers: Vec<SocketAddr>,
    /// The server as the user wrote it (HOST:PORT).
    pub server_name: String,
    pub backup: bool,
}

impl PathSpec {
    /// The path's name: "127.0.0.2->host:7900", "eth1->host:7900", or
    /// "host:7900" on the default route. The metrics' `path` label; it
    /// stays the same if a reload makes the path a backup or a primary.
    pub fn name(&self) -> String {
        match &self.via {
            Via::Default => self.server_name.clone(),
            via => format!("{via}->{}", self.server_name),
        }
    }

    /// The path as logs and the close line name it: its name, with
    /// " (backup)" after a backup path.
    pub fn label(&self) -> String {
        let mut s = self.name();
        if self.backup {
            s.push_str(" (backup)");
        }
        s
    }
}

/// The client's paths from its `--via` and `--server` options: every way
/// out paired with every server, in that order (the ways out vary slowest).
/// No `--via` is one way out, the default route. Each way out is tried at
/// once, and each server resolved; a pair that cannot work (an IPv4 source
/// and a server with only IPv6 addresses) is left out with a warning, and
/// none left is an error.
pub fn build(vias: &[String], servers: &[String]) -> Result<Vec<PathSpec>, String> {
    let mut ways = Vec::new();
    for v in vias {
        let (via, backup) = Via::parse(v)?;
        via.check()?;
        ways.push((via, backup));
    }
    if ways.is_empty() {
        ways.push((Via::Default, false));
    }
    let mut resolved = Vec::new();
    for s in servers {
        let (name, backup) = split_backup(s.trim());
        let addrs = striper_core::config::resolve("server", name)?;
        resolved.push((name.to_string(), addrs, backup));
    }
    let mut paths = Vec::new();
    for (via, via_backup) in &ways {
        for (name, addrs, server_backup) in &resolved {
            let reachable: Vec<SocketAddr> =
                addrs.iter().filter(|a| via.reaches(a)).copied().collect();
            if reachable.is_empty() {
                log::warn!("no path from {via} to server {name}: it has no address of that family");
                continue;
            }
            paths.push(PathSpec {
                via: via.clone(),
                servers: reachable,
                server_name: name.clone(),
                backup: *via_backup || *server_backup,
            });
        }
    }
    if paths.is_empty() {
        return Err(
            "no usable path: no --via can reach any --server (IPv4 source, IPv6-only \
                    server, or the reverse)"
                .into(),
        );
    }
    if paths.iter().all(|p| p.backup) {
        return Err(
            "every path is a backup: mark at least one --via or --server as a \
                    primary (without :backup)"
                .into(),
        );
    }
    Ok(paths)
}

/// Opens a non-blocking TCP connection to `addr` leaving by `via`; `name`
/// names the peer in the error. The connect is in progress when this
/// returns, as with mio's `TcpStream::connect`.
pub fn dial(addr: SocketAddr, via: &Via, name: &str) -> Result<mio::net::TcpStream, PipeError> {
    if *via == Via::Default {
        return mio::net::TcpStream::connect(addr).map_err(|e| PipeError::io(name, &e));
    }
    let io = |e: io::Error| PipeError::io(name, &e);
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )
    .map_err(io)?;
    via.bind(&sock)
        .map_err(|m| PipeError::new(ErrorKind::Connect, m))?;
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(io(e)),
    }
    Ok(mio::net::TcpStream::from_std(sock.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_spellings() {
        let p = |s| Via::parse(s).unwrap();
        assert_eq!(
            p("127.0.0.2"),
            (Via::Addr("127.0.0.2".parse().unwrap()), false)
        );
        assert_eq!(p("eth1:backup"), (Via::Device("eth1".into()), true));
        assert_eq!(
            p("2001:db8::1:backup"),
            (Via::Addr("2001:db8::1".parse().unwrap()), true)
        );
        assert_eq!(p("[::1]:backup"), (Via::Addr("::1".parse().unwrap()), true));
        assert_eq!(p("fe80::b"), (Via::Addr("fe80::b".parse().unwrap()), false));
        assert!(
            Via::parse("eth0:1")
                .unwrap_err()
                .contains("neither an IP address")
        );
        assert!(Via::parse("0.0.0.0").unwrap_err().contains("unspecified"));
        assert!(Via::parse("a-very-long-interface").is_err());
    }

    #[test]
    fn a_foreign_address_is_refused_at_start_with_the_cause() {
        let e = Via::Addr("192.0.2.77".parse().unwrap())
            .check()
            .unwrap_err();
        assert!(e.contains("not an address of this host"), "{e}");
        let e = Via::Device("nosuchif0".into()).check().unwrap_err();
        assert!(
            e.contains("no such interface") || e.contains("CAP_NET_RAW"),
            "{e}"
        );
        Via::Addr("127.0.0.3".parse().unwrap()).check().unwrap();
    }

    #[test]
    fn labels_name_the_way_out_and_the_server() {
        let mut p = PathSpec {
            via: Via::Addr("127.0.0.2".parse().unwrap()),
            servers: vec![],
            server_name: "h:7900".into(),
            backup: false,
        };
        assert_eq!(p.label(), "127.0.0.2->h:7900");
        p.via = Via::Default;
        p.backup = true;
        assert_eq!(p.label(), "h:7900 (backup)");
        assert_eq!(p.name(), "h:7900");
    }
}
