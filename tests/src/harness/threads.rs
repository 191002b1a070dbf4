//! Threads and waiting: small-stack threads, results awaited with a
//! timeout, a one-shot latch, and polling until a condition holds or a
//! counter stalls. Generic helpers every other part of the harness uses.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::lock;

/// Spawns a named thread with a small stack, for tests that run hundreds.
pub fn spawn_small<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    thread::Builder::new()
        .name(name.to_string())
        .stack_size(256 * 1024)
        .spawn(f)
        .expect("spawn thread")
}

/// Runs `f` on a thread and returns a handle whose result can be awaited
/// with a timeout (a `JoinHandle` cannot).
pub fn background<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Pending<T> {
    let (tx, rx) = mpsc::channel();
    spawn_small(name, move || {
        let _ = tx.send(f());
    });
    Pending {
        name: name.to_string(),
        rx,
    }
}

/// The result of a [`background`] thread.
pub struct Pending<T> {
    name: String,
    rx: mpsc::Receiver<T>,
}

impl<T> Pending<T> {
    /// The thread's result; panics if it panicked or took over `timeout`.
    #[track_caller]
    pub fn wait(self, timeout: Duration) -> T {
        match self.rx.recv_timeout(timeout) {
            Ok(v) => v,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("{} did not finish within {timeout:?}", self.name)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{} panicked", self.name),
        }
    }
}

/// A one-shot latch threads can wait on with a timeout.
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    pub fn open(&self) {
        *lock(&self.open) = true;
        self.cv.notify_all();
    }

    /// Whether the gate opened within `timeout`.
    pub fn wait(&self, timeout: Duration) -> bool {
        let g = lock(&self.open);
        let (g, _) = self
            .cv
            .wait_timeout_while(g, timeout, |open| !*open)
            .unwrap_or_else(|e| e.into_inner());
        *g
    }
}

/// Checks `done` every `every` until it holds (true) or `timeout` ends
/// (false).
pub fn poll_until(timeout: Duration, every: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(every);
    }
}

/// Polls `counter` until it stops growing for `quiet`, or `timeout` ends.
/// Returns the value and whether it settled.
pub fn wait_stall(counter: &AtomicU64, quiet: Duration, timeout: Duration) -> (u64, bool) {
    let deadline = Instant::now() + timeout;
    let mut last = counter.load(Ordering::Relaxed);
    let mut since = Instant::now();
    loop {
        thread::sleep(Duration::from_millis(50));
        let now = Instant::now();
        let v = counter.load(Ordering::Relaxed);
        if v != last {
            last = v;
            since = now;
        } else if now - since >= quiet {
            return (v, true);
        }
        if now >= deadline {
            return (v, false);
        }
    }
}
