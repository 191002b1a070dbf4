//! Giving freed buffers back to the operating system.
//!
//! Idle sessions free their buffers (a few 16–64 KiB blocks each), but the C
//! allocator keeps freed blocks of that size in its heap, so the process's
//! resident memory stays at its peak: 3,000 sessions that each once held
//! ~90 KiB kept ~270 MiB resident while idle. `malloc_trim` returns the free
//! pages inside the heap. It walks the heap, so it runs at most once a
//! second, and only after buffers were freed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static FREED: AtomicBool = AtomicBool::new(false);

/// Notes that a buffer was freed: the next [`Trimmer::poll`] trims.
pub fn note_freed() {
    FREED.store(true, Ordering::Relaxed);
}

/// Trims the heap after buffers were freed, at most once per interval.
pub struct Trimmer {
    last: Option<Instant>,
}

const INTERVAL: Duration = Duration::from_secs(1);

impl Trimmer {
    pub fn new() -> Trimmer {
        Trimmer { last: None }
    }

    /// Trims if buffers were freed and the last trim is an interval old.
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
