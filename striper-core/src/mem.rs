//! Giving freed buffers back to the operating system.
//!
//! Idle sessions free their buffers (a few 16–64 KiB blocks each), but the C
//! allocator keeps freed blocks of that size in its heap, so the process's
//! resident memory stays at its peak: 3,000 sessions that each once held
//! ~90 KiB kept ~270 MiB resident while idle. `malloc_trim` returns the free
//! pages inside the heap. It walks the heap, so it runs at most once a
//! second, and only after something worth it was freed: a buffer of at
//! least [`WORTH_NOTING`] bytes, or a task's or handshake's state
//! ([`note_released`]). Idle sessions' keepalives free a few small blocks
//! all the time, which the allocator reuses and a trim cannot return;
//! trimming for them every second was 5-8% of the system calls of 2,000
//! idle sessions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static FREED: AtomicBool = AtomicBool::new(false);

/// Smaller buffers are not worth a trim of their own.
pub const WORTH_NOTING: usize = 16 * 1024;
const INTERVAL: Duration = Duration::from_secs(1);

/// Notes that a buffer of `bytes` was freed.
pub fn note_freed(bytes: usize) {
    if bytes >= WORTH_NOTING {
        FREED.store(true, Ordering::Relaxed);
    }
}

/// Notes that a finished task or handshake gave back its state (a session
/// that ends, Noise's handshake state: they add up over many sessions).
pub fn note_released() {
    FREED.store(true, Ordering::Relaxed);
}

/// Trims the heap after memory was freed, at most once per interval.
pub struct Trimmer {
    last: Option<Instant>,
}

impl Trimmer {
    pub fn new() -> Trimmer {
        Trimmer { last: None }
    }

    /// Trims if memory was freed and the last trim is an interval old.
    /// Returns how long the event loop may sleep before calling again
    /// (`None`: nothing pending).
    pub fn poll(&mut self, now: Instant) -> Option<Duration> {
        if !FREED.load(Ordering::Relaxed) {
            return None;
        }
        if let Some(t) = self.last {
            let since = now.saturating_duration_since(t);
            if since < INTERVAL {
                return Some(INTERVAL - since);
            }
        }
        FREED.store(false, Ordering::Relaxed);
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
