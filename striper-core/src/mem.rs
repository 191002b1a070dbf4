//! Giving freed buffers back to the operating system.
//!
//! Idle sessions free their buffers (a few 16–64 KiB blocks each), but the C
//! allocator keeps freed blocks of that size in its heap, so the process's
//! resident memory stays at its peak: 3,000 sessions that each once held
//! ~90 KiB kept ~270 MiB resident while idle. `malloc_trim` returns the free
//! pages inside the heap. It walks the heap, so it runs at most once a
//! second when buffers of at least [`TRIM_AFTER`] bytes were freed, and
//! otherwise at most every [`SLOW_INTERVAL`] after anything was freed: idle
//! sessions' keepalives free a few small blocks all the time, and trimming
//! for them every second was 5-8% of the system calls of 2,000 idle
//! sessions, while what they and finished handshakes leave free still
//! adds up (a trim took 2,000 idle sessions' client from 46 to 10 MB).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Bytes of buffers freed since the last trim, plus one per note (so a
/// note of 0 bytes still counts as something freed).
static FREED: AtomicUsize = AtomicUsize::new(0);

/// Bytes of freed buffers that make a trim worth doing within a second.
pub const TRIM_AFTER: usize = 1 << 20;
const INTERVAL: Duration = Duration::from_secs(1);
/// The longest a smaller amount of freed memory waits for a trim.
pub const SLOW_INTERVAL: Duration = Duration::from_secs(10);

/// Notes that `bytes` of buffers (or some other memory, `0` when unknown)
/// were freed.
pub fn note_freed(bytes: usize) {
    FREED.fetch_add(bytes.saturating_add(1), Ordering::Relaxed);
}

/// Trims the heap after memory was freed, at most once per interval.
pub struct Trimmer {
    last: Option<Instant>,
}

impl Trimmer {
    pub fn new() -> Trimmer {
        Trimmer { last: None }
    }

    /// Trims if enough was freed and the last trim is old enough. Returns
    /// how long the event loop may sleep before calling again (`None`:
    /// nothing pending).
    pub fn poll(&mut self, now: Instant) -> Option<Duration> {
        let freed = FREED.load(Ordering::Relaxed);
        if freed == 0 {
            return None;
        }
        let interval = if freed >= TRIM_AFTER {
            INTERVAL
        } else {
            SLOW_INTERVAL
        };
        if let Some(t) = self.last {
            let since = now.saturating_duration_since(t);
            if since < interval {
                return Some(interval - since);
            }
        }
        FREED.store(0, Ordering::Relaxed);
        self.last = Some(now);
        trim();
        None
    }
}

impl Default for Trimmer {
    fn default() -> Self {
        Trimmer::new()
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only inspects and releases the allocator's free
    // memory; 0 keeps no extra padding at the top of the heap.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
