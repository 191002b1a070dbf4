//! sd-notify: tells systemd (a `Type=notify` unit) when the program is
//! ready, reloading or stopping, and what it is doing (`systemctl status`
//! shows the STATUS line).
//!
//! The protocol is one datagram of `KEY=VALUE` lines to the Unix socket
//! named by `$NOTIFY_SOCKET`: a path, or `@name` for the abstract
//! namespace. Without the variable every function here does nothing, so
//! the programs run the same by hand. Notifying is never fatal: a failure
//! is logged once (a service manager that cannot hear us will time the
//! unit out and say so itself).
//!
//! The daemon skeleton sends READY=1 once its listener is bound and the
//! loop is about to run, STATUS updates as the session count changes, and
//! STOPPING=1 at the first signal. Reload code (SIGHUP) calls
//! [`reloading`] when it starts re-reading the configuration and [`ready`]
//! when it is done, whether the new configuration applied or was refused:
//! systemd keeps the unit "reloading" in between.

use std::ffi::OsString;
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use log::{debug, warn};

/// A notification is a few bytes to a local socket; if systemd does not
/// take it in this long, waiting longer would only stall the event loop.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether `$NOTIFY_SOCKET` names a usable socket (the program runs under
/// a service manager that listens).
pub fn enabled() -> bool {
    notifier().is_some()
}

/// READY=1 alone: for the end of a reload.
pub fn ready() {
    send("READY=1");
}

/// READY=1 with a STATUS line: the program is serving.
pub fn ready_with_status(status: &str) {
    send(&format!("READY=1\n{}", status_line(status)));
}

/// RELOADING=1 with the monotonic timestamp systemd ≥ 253 needs to match
/// it with the reload it asked for (`Type=notify-reload`). Follow it with
/// [`ready`] once the reload is over.
pub fn reloading() {
    send(&reloading_message(monotonic_usec()));
}

/// STOPPING=1: shutdown has begun.
pub fn stopping() {
    send("STOPPING=1");
}

/// A STATUS line alone (what the program is doing now).
pub fn status(status: &str) {
    send(&status_line(status));
}

fn status_line(status: &str) -> String {
    // A newline would end the field and start a bogus one.
    format!("STATUS={}", status.replace('\n', " "))
}

fn reloading_message(monotonic_usec: u64) -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd stamps reloads with
/// (std's `Instant` reads it too but does not show its value).
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime with a valid clock id and an owned struct.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// The address `$NOTIFY_SOCKET` names: `/path`, or `@name` for the
/// abstract namespace (as systemd writes it). Other forms (systemd's
/// `vsock:` for virtual machines) are refused with the reason.
pub fn parse_address(value: &str) -> Result<SocketAddr, String> {
    if let Some(name) = value.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes()).map_err(|e| e.to_string())
    } else if value.starts_with('/') {
        SocketAddr::from_pathname(value).map_err(|e| e.to_string())
    } else {
        Err("not a socket path nor an abstract name (@NAME)".to_string())
    }
}

/// The socket and where to send, set up on first use; `None` when the
/// variable is unset (or unusable: logged then).
struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    shown: String,
}

fn notifier() -> Option<&'static Notifier> {
    static NOTIFIER: OnceLock<Option<Notifier>> = OnceLock::new();
    NOTIFIER
        .get_or_init(|| {
            let value = std::env::var_os("NOTIFY_SOCKET")?;
            match open(&value) {
                Ok(n) => Some(n),
                Err(e) => {
                    warn!("cannot notify systemd at NOTIFY_SOCKET={value:?}: {e}");
                    None
                }
            }
        })
        .as_ref()
}

fn open(value: &OsString) -> Result<Notifier, String> {
    let shown = value.to_string_lossy().into_owned();
    let addr = parse_address(&shown)?;
    let socket = UnixDatagram::unbound().map_err(|e| format!("cannot open a socket: {e}"))?;
    socket
        .set_write_timeout(Some(SEND_TIMEOUT))
        .map_err(|e| e.to_string())?;
    Ok(Notifier {
        socket,
        addr,
        shown,
    })
}

fn send(message: &str) {
    let Some(n) = notifier() else {
        return;
    };
    match n.socket.send_to_addr(message.as_bytes(), &n.addr) {
        Ok(_) => debug!("told systemd {:?}", message),
        Err(e) => failed(&n.shown, &e),
    }
}

fn failed(shown: &str, e: &io::Error) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        warn!(
            "cannot notify systemd at NOTIFY_SOCKET={shown}: {e} (later failures are not logged)"
        );
    } else {
        debug!("cannot notify systemd at NOTIFY_SOCKET={shown}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::linux::net::SocketAddrExt;

    #[test]
    fn messages_are_key_value_lines() {
        assert_eq!(
            reloading_message(1_234_567),
            "RELOADING=1\nMONOTONIC_USEC=1234567"
        );
        assert_eq!(
            status_line("listening on 127.0.0.1:7900\n2 sessions"),
            "STATUS=listening on 127.0.0.1:7900 2 sessions"
        );
    }

    #[test]
    fn monotonic_usec_follows_the_monotonic_clock() {
        let a = monotonic_usec();
        std::thread::sleep(Duration::from_millis(20));
        let b = monotonic_usec();
        assert!(a > 0 && b >= a + 20_000, "{a} then {b}");
        assert!(b - a < 10_000_000, "{a} then {b}: not microseconds");
    }

    #[test]
    fn at_names_the_abstract_namespace_and_a_slash_a_path() {
        let a = parse_address("@/org/freedesktop/systemd1/notify").unwrap();
        assert_eq!(
            a.as_abstract_name(),
            Some(&b"/org/freedesktop/systemd1/notify"[..])
        );
        assert!(a.as_pathname().is_none());
        let p = parse_address("/run/systemd/notify").unwrap();
        assert_eq!(
            p.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        let e = parse_address("vsock:2:1234").unwrap_err();
        assert!(e.contains("abstract name"), "{e}");
    }

    #[test]
    fn a_message_reaches_an_abstract_socket() {
        let name = format!("striper-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
            .unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = open(&OsString::from(format!("@{name}"))).unwrap();
        n.socket
            .send_to_addr(b"READY=1\nSTATUS=x", &n.addr)
            .unwrap();
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=x");
    }
}
