//! Configuration helpers both binaries share: sizes, durations, addresses,
//! logging.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

/// Parses a byte size: `65536`, `64K`, `8M`, `1G` (binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'B' => 1,
                _ => return Err(format!("unknown size suffix in {s:?} (use K, M or G)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 65536, 64K, 8M)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Parses seconds, fractions allowed: `10`, `0.5`.
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.0..=1e6).contains(&v) {
        return Err(format!("{s:?} seconds is out of range"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Resolves `HOST:PORT` (a name, an IPv4 address, or `[v6]:port`).
pub fn resolve(what: &str, s: &str) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {what} {s:?}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{what} {s:?} resolved to no address"));
    }
    Ok(addrs)
}

/// Listens on the first of `addrs` that can be bound.
pub fn bind_first(addrs: &[SocketAddr]) -> io::Result<mio::net::TcpListener> {
    let mut last = None;
    for a in addrs {
        match mio::net::TcpListener::bind(*a) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address")))
}

/// The exit of a binary: an error is logged and exits with status 2.
pub fn exit_with(result: Result<ExitCode, String>) -> ExitCode {
    result.unwrap_or_else(|e| {
        log::error!("{e}");
        ExitCode::from(2)
    })
}

/// Logging to standard error; `RUST_LOG` overrides the `info` default.
pub fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
}

/// Human-readable byte count for log lines.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("8m"), Ok(8 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("12Q").unwrap_err().contains("suffix"));
        assert!(parse_size("abc").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }

    #[test]
    fn addresses() {
        assert_eq!(resolve("server", "127.0.0.1:80").unwrap()[0].port(), 80);
        assert!(resolve("server", "[::1]:7900").unwrap()[0].is_ipv6());
        assert!(resolve("server", "localhost:7900").is_ok());
        let e = resolve("server", "no-port-here").unwrap_err();
        assert!(e.contains("server"), "{e}");
    }

    #[test]
    fn human() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
    }
}
