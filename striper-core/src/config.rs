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

/// "127.0.0.1:7900" or "127.0.0.1:7900, [::1]:7900" for a name with several.
pub fn join_addrs(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Listens on the first of `addrs` that can be bound, with the largest
/// listen queue the system allows (`net.core.somaxconn`): a burst of new
/// connections waits there instead of overflowing a queue of 128 (mio's and
/// std's default) into SYN retransmits, a second each.
pub fn bind_first(addrs: &[SocketAddr]) -> io::Result<mio::net::TcpListener> {
    let mut last = None;
    for a in addrs {
        match bind_one(*a) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address")))
}

fn bind_one(addr: SocketAddr) -> io::Result<mio::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    // The kernel caps the backlog at somaxconn without complaint.
    sock.listen(listen_backlog())?;
    Ok(mio::net::TcpListener::from_std(sock.into()))
}

/// `net.core.somaxconn`, or 4096 (its default since Linux 5.4) if unreadable.
pub fn listen_backlog() -> i32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096)
}

/// Raises the soft limit on open descriptors to the hard limit (every
/// stripe and every application connection is one) and returns the limit
/// now in force, with the one found at start.
pub fn raise_fd_limit() -> io::Result<(u64, u64)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through the pointer we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = r.rlim_cur;
    if r.rlim_cur < r.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: r.rlim_max,
            rlim_max: r.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit through the pointer we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            r.rlim_cur = r.rlim_max;
        }
    }
    Ok((before, r.rlim_cur))
}

/// Raises the descriptor limit and logs it once, with how many sessions of
/// `stripes` stripes it holds (each is `stripes` + 1 descriptors). `want`:
/// sessions the configuration allows, if it caps them; a limit too small
/// for them is logged as a warning that names the fix.
pub fn log_fd_limit(stripes: u64, want: Option<u64>) {
    let per = stripes + 1;
    // Listeners, the poll instance, standard streams, log and spare.
    const RESERVED: u64 = 16;
    match raise_fd_limit() {
        Ok((before, now)) => {
            let fits = now.saturating_sub(RESERVED) / per;
            let raised = if now > before {
                format!("raised from {before} to {now}")
            } else {
                format!("{now}")
            };
            match want {
                Some(w) if w > fits => log::warn!(
                    "open-file limit {raised}: room for about {fits} tunneled connections of \
                     {stripes} stripes, fewer than --max-sessions {w}; raise the hard limit (ulimit -Hn, \
                     LimitNOFILE= in a systemd unit) or lower --max-sessions"
                ),
                _ => log::info!(
                    "open-file limit {raised}: room for about {fits} tunneled connections of {stripes} stripes"
                ),
            }
        }
        Err(e) => log::warn!("cannot read the open-file limit: {e}"),
    }
}

/// The exit of a binary: an error is logged and exits with status 2.
pub fn exit_with(result: Result<ExitCode, String>) -> ExitCode {
    result.unwrap_or_else(|e| {
        log::error!("{e}");
        ExitCode::from(2)
    })
}

/// Logging to standard error; `RUST_LOG` overrides the `info` default.
/// When standard error is systemd's journal, lines carry a syslog priority
/// prefix instead of a timestamp: the journal stamps them itself, and
/// `journalctl -p warning` then finds the warnings.
pub fn init_logging() {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if stderr_is_journal() {
        builder.format(|f, record| {
            use std::io::Write;
            writeln!(
                f,
                "<{}>{} {}: {}",
                syslog_priority(record.level()),
                record.level(),
                record.target(),
                record.args()
            )
        });
    } else {
        builder.format_timestamp_millis();
    }
    builder.init();
}

/// The syslog priority of a log level (`<3>` error ... `<7>` debug).
fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Whether standard error is the stream systemd connected to the journal:
/// `$JOURNAL_STREAM` names its device and inode, and a child whose stderr
/// was redirected inherits the variable, so both must match.
fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    // SAFETY: fstat on descriptor 2 with an owned, zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    names_stream(&value, st.st_dev, st.st_ino)
}

/// Whether a `$JOURNAL_STREAM` value (`DEVICE:INODE`) names this stream.
fn names_stream(value: &str, dev: u64, ino: u64) -> bool {
    value
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
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

    #[test]
    fn journal_stream_names_device_and_inode() {
        assert!(names_stream("8:12345", 8, 12345));
        assert!(!names_stream("8:12345", 8, 12346));
        assert!(!names_stream("8:12345", 9, 12345));
        assert!(!names_stream("812345", 8, 12345));
        assert!(!names_stream("", 0, 0));
        assert_eq!(syslog_priority(log::Level::Warn), 4);
        assert_eq!(syslog_priority(log::Level::Info), 6);
    }
}
