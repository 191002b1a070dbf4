//! End-to-end harness: builds and runs the real `stripe-client` and
//! `stripe-server` binaries, the targets they relay to, and the
//! applications that talk through them, all on loopback.
//!
//! * [`bin`] builds the release binaries once per test process and returns
//!   the path of one.
//! * [`Proc`] is a child process whose standard error is collected line by
//!   line, so a test can wait for a log line (with a timeout), read its
//!   listening address, signal it, and get its logs printed when the test
//!   fails. Dropping it ends the process (SIGTERM, then SIGKILL), by PID.
//! * [`Tunnel`] is a stripe-server and a stripe-client wired together,
//!   authenticating with a fresh [`KeyFile`].
//! * [`Target`] is a threaded TCP server running a handler per connection
//!   ([`echo`], [`exchange`], [`reset_after`], or the test's own), which
//!   reports what each connection saw.
//! * [`Pattern`] is a deterministic pseudo-random byte stream; [`send`] and
//!   [`receive`] write and check it. The receiver regenerates what it
//!   should get and compares every byte, so a lost, repeated, reordered or
//!   corrupted byte is caught with its offset. Both ends also report a
//!   CRC-32 and a length ([`Digest`]), the "checksum" compared end to end.
//!   CRC-32 rather than SHA-256 because tests build without optimisation:
//!   unoptimised SHA-256 runs at ~40 MB/s here, CRC-32 at ~700 MB/s, and
//!   the byte-for-byte comparison is already stronger than any hash.
//! * [`HeldSession`] keeps a checked echo session open (paced, and paused
//!   at a given offset) while a test does something else to the tunnel.
//! * [`Scrape`] reads a binary's `--metrics` endpoint and checks it with
//!   `promtool`.
//! * [`rawv2`] is a client stripe made by hand from the protocol (v3
//!   handshake, sealed frames), for the security and hostile-peer tests.
//!
//! Every blocking socket call has a timeout ([`IO_TIMEOUT`]) and every wait
//! a deadline, so a hung tunnel fails a test instead of stalling it.
//!
//! Each concern has its own file (processes, the tunnel, data, targets,
//! closes, held sessions, threads, scratch directories); everything is
//! re-exported here, so tests use `striper_tests::harness::NAME`.

mod close;
mod data;
mod process;
pub mod rawv2;
pub mod relay;
mod scrape;
mod session;
mod target;
mod tempdir;
mod threads;
mod tunnel;

pub use close::{AppClosed, Closed, assert_closed_promptly, read_to_close, read_until_closed};
pub use data::{
    Digest, Digester, Pattern, Received, digest, exchange_on, receive, receive_counting, send,
};
pub use process::{
    Memory, Proc, bin, nofile_limit, raise_nofile_limit, run_ok, status_field_kib, vm_rss_kib,
};
pub use scrape::{Scrape, assert_promtool_rules_pass, http_exchange, metrics_addr};
pub use session::{HeldSession, assert_echo_session};
pub use target::{ConnReport, Target, echo, exchange, reset_after};
pub use tempdir::TempDir;
pub use threads::{Gate, Pending, background, poll_until, spawn_small, wait_stall};
pub use tunnel::{
    Auth, KeyFile, Tunnel, connect, dead_addr, saw_reset, start_client, start_client_on,
    start_server, start_server_on, with_timeouts,
};

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Upper bound for any single blocking socket call: far above anything a
/// working tunnel needs on loopback, low enough that a hang fails the test.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a started binary may take to say it is listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a process gets to exit after SIGTERM before it is killed. The
/// binaries give their sessions 2 s to close after a signal.
pub const TERM_GRACE: Duration = Duration::from_secs(4);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not hide the logs of the others.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
