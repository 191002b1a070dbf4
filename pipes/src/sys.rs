//! The few socket calls the standard library and socket2 do not offer.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use crate::proto::queue::PathSample;

/// Bytes in the socket's send queue: unsent plus sent-but-unacknowledged
/// (SIOCOUTQ, which is TIOCOUTQ for TCP sockets).
pub fn outq(fd: RawFd) -> io::Result<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one c_int through the pointer we pass.
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as u64)
}

/// Bytes received and waiting to be read (FIONREAD).
pub fn inq(fd: RawFd) -> io::Result<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer we pass.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as u64)
}

/// Bytes in the socket's send queue not sent yet (SIOCOUTQNSD).
pub fn outq_unsent(fd: RawFd) -> io::Result<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQNSD writes one c_int through the pointer we pass.
    let r = unsafe { libc::ioctl(fd, libc::SIOCOUTQNSD as _, &mut n) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as u64)
}

/// What `TCP_INFO` says about a TCP socket's path.
pub fn tcp_path(fd: RawFd) -> io::Result<PathSample> {
    // SAFETY: tcp_info is plain old data; zeroed is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // Older kernels fill less of the struct; what they leave out stays 0.
    Ok(PathSample {
        rtt: Duration::from_micros(info.tcpi_rtt as u64),
        min_rtt: Duration::from_micros(info.tcpi_min_rtt as u64),
        delivery_rate: info.tcpi_delivery_rate as f64,
        // u64::MAX: no pacing rate set (the kernel's "unlimited").
        pacing_rate: if info.tcpi_pacing_rate == u64::MAX {
            0.0
        } else {
            info.tcpi_pacing_rate as f64
        },
    })
}

/// Sets the socket's congestion control algorithm (`TCP_CONGESTION`).
pub fn set_congestion(fd: RawFd, name: &str) -> io::Result<()> {
    // SAFETY: we pass a pointer to the name's bytes and their length.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether a TCP socket of this process may use congestion control `name`:
/// tried on a throw-away socket, so the answer includes permissions (an
/// algorithm outside `net.ipv4.tcp_allowed_congestion_control` needs
/// CAP_NET_ADMIN) and module loading.
pub fn congestion_usable(name: &str) -> io::Result<()> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    set_congestion(sock.as_raw_fd(), name)
}

/// The system's default congestion control, for the log.
pub fn default_congestion() -> String {
    ipv4_sysctl("tcp_congestion_control")
}

/// The congestion control algorithms the kernel offers, for an error.
pub fn available_congestion() -> String {
    ipv4_sysctl("tcp_available_congestion_control")
}

fn ipv4_sysctl(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Caps how many unsent bytes the kernel holds before it reports the socket
/// unwritable, so the scheduler decides late where each frame goes.
pub fn set_notsent_lowat(fd: RawFd, bytes: u32) -> io::Result<()> {
    let v = bytes as libc::c_int;
    // SAFETY: we pass a pointer to a c_int and its size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
