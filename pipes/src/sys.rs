//! The few socket calls the standard library and socket2 do not offer.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

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

/// The kernel's smoothed round-trip time of a TCP socket.
pub fn tcp_rtt(fd: RawFd) -> io::Result<Duration> {
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
    Ok(Duration::from_micros(info.tcpi_rtt as u64))
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
