//! The event loop: one mio `Poll`, a slab of tasks (sessions, handshakes),
//! a block of tokens per task, and a heap of deadlines.
//!
//! Tokens `0..SPAN` belong to the application (listeners, the signal pipe);
//! task `k` owns tokens `(k + 1) * SPAN .. (k + 2) * SPAN`. An event for a
//! task marks it to run. After running, a task says when it next needs to
//! run without an event ([`Task::poll_timeout`]); the loop sleeps until the
//! earliest such deadline. A task with no deadline and no event never runs,
//! so thousands of idle sessions cost nothing. Each task has at most one
//! live entry in the heap: a later deadline than the one queued is ignored
//! (the task runs early, sees nothing due, and asks again), an earlier one
//! replaces it. A finished task is deregistered and its slot freed only
//! after the batch of events it was in has been dispatched, so no event
//! meets a stranger's slot.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Registry, Token};

use crate::pipe::{Ctx, Ready, TokenSpan};

/// Tokens per task (and the application's own block).
pub const SPAN: usize = 256;

/// What a task asks of the loop after running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum TaskStatus {
    /// Wait for events or the deadline from [`Task::poll_timeout`].
    Idle,
    /// Run again in this turn's next round (work left after a budget ran out).
    Again,
    /// Finished: deregister and hand it back to the owner.
    Done,
}

pub trait Task {
    fn register(&mut self, registry: &Registry, span: TokenSpan) -> io::Result<()>;
    fn deregister(&mut self, registry: &Registry);
    fn on_ready(&mut self, token: Token, ready: Ready);
    fn run(&mut self, cx: &mut Ctx<'_>) -> TaskStatus;
    /// After an idle run: when to run next without an event (`None`: only
    /// on events). The default is the old periodic tick, for tasks that
    /// check their own timers whenever they run.
    fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        Some(now + TICK)
    }
}

/// How often a task that keeps no exact deadlines runs (busy sessions,
/// handshakes, closing sessions).
pub const TICK: Duration = Duration::from_millis(100);

pub struct Reactor<T> {
    poll: Poll,
    events: Events,
    tasks: Vec<Option<T>>,
    free: Vec<usize>,
    queued: Vec<bool>,
    queue: Vec<usize>,
    /// Deadlines, earliest first; an entry is live only while it equals its
    /// task's `deadline`.
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    deadline: Vec<Option<Instant>>,
}

impl<T: Task> Reactor<T> {
    pub fn new() -> io::Result<Reactor<T>> {
        Ok(Reactor {
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
            tasks: Vec::new(),
            free: Vec::new(),
            queued: Vec::new(),
            queue: Vec::new(),
            timers: BinaryHeap::new(),
            deadline: Vec::new(),
        })
    }

    pub fn registry(&self) -> &Registry {
        self.poll.registry()
    }

    /// Number of live tasks.
    pub fn len(&self) -> usize {
        self.tasks.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get_mut(&mut self, slot: usize) -> Option<&mut T> {
        self.tasks.get_mut(slot).and_then(|t| t.as_mut())
    }

    pub fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.tasks
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.as_ref().map(|t| (i, t)))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut T)> {
        self.tasks
            .iter_mut()
            .enumerate()
            .filter_map(|(i, t)| t.as_mut().map(|t| (i, t)))
    }

    /// Registers a task, gives it its token span and queues it to run.
    pub fn spawn(&mut self, mut task: T) -> io::Result<usize> {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.tasks.push(None);
                self.queued.push(false);
                self.deadline.push(None);
                self.tasks.len() - 1
            }
        };
        if let Err(e) = task.register(self.poll.registry(), Self::span(slot)) {
            task.deregister(self.poll.registry());
            self.free.push(slot);
            return Err(e);
        }
        self.tasks[slot] = Some(task);
        self.deadline[slot] = None;
        self.wake(slot);
        Ok(slot)
    }

    /// The token span of `slot`, for moving a socket into that task.
    pub fn span(slot: usize) -> TokenSpan {
        TokenSpan {
            base: (slot + 1) * SPAN,
            len: SPAN,
        }
    }

    /// Makes `slot` run in the next round.
    pub fn wake(&mut self, slot: usize) {
        if self.tasks.get(slot).is_some_and(|t| t.is_some()) {
            enqueue(&mut self.queued, &mut self.queue, slot);
        }
    }

    /// Makes every task run in the next round (shutdown, a config change).
    pub fn wake_all(&mut self) {
        for slot in 0..self.tasks.len() {
            self.wake(slot);
        }
    }

    /// A task and the registry together, to move a socket into the task.
    pub fn get_with_registry(&mut self, slot: usize) -> Option<(&mut T, &Registry)> {
        let registry = self.poll.registry();
        self.tasks
            .get_mut(slot)
            .and_then(|t| t.as_mut())
            .map(|t| (t, registry))
    }

    /// Waits for events (at most until the earliest deadline, not at all if
    /// tasks are queued) and dispatches those of tasks. Events for the
    /// application's own tokens are appended to `own`.
    pub fn poll(
        &mut self,
        own: &mut Vec<(Token, Ready)>,
        max_wait: Option<Duration>,
    ) -> io::Result<()> {
        let now = Instant::now();
        // Round up to the millisecond: epoll sleeps in whole milliseconds,
        // and waking a hair early would only go round once more.
        let mut timeout = self.timers.peek().map(|Reverse((t, _))| {
            let d = t.saturating_duration_since(now);
            Duration::from_millis(d.as_micros().div_ceil(1000) as u64)
        });
        if let Some(m) = max_wait {
            timeout = Some(timeout.map_or(m, |t| t.min(m)));
        }
        if !self.queue.is_empty() {
            timeout = Some(Duration::ZERO);
        }
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        for ev in self.events.iter() {
            let token = ev.token();
            let ready = Ready::from(ev);
            if token.0 < SPAN {
                own.push((token, ready));
                continue;
            }
            let slot = token.0 / SPAN - 1;
            // Unknown tokens (a task that just finished) are ignored.
            if let Some(Some(task)) = self.tasks.get_mut(slot) {
                task.on_ready(token, ready);
                enqueue(&mut self.queued, &mut self.queue, slot);
            }
        }
        Ok(())
    }

    /// Runs the queued tasks (and those whose deadline came) and moves finished ones
    /// into `done`, deregistered, with their slots.
    pub fn run(&mut self, done: &mut Vec<(usize, T)>) {
        let now = Instant::now();
        while let Some(&Reverse((t, slot))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            if self.deadline[slot] == Some(t) {
                self.deadline[slot] = None;
                self.wake(slot);
            }
        }
        let queue = std::mem::take(&mut self.queue);
        let registry = self.poll.registry();
        let mut cx = Ctx { registry, now };
        for &slot in &queue {
            self.queued[slot] = false;
        }
        for slot in queue {
            let Some(task) = self.tasks[slot].as_mut() else {
                continue;
            };
            match task.run(&mut cx) {
                TaskStatus::Idle => {
                    if let Some(t) = task.poll_timeout(now)
                        && self.deadline[slot].is_none_or(|d| t < d)
                    {
                        self.deadline[slot] = Some(t);
                        self.timers.push(Reverse((t, slot)));
                    }
                }
                TaskStatus::Again => enqueue(&mut self.queued, &mut self.queue, slot),
                TaskStatus::Done => {
                    let mut task = self.tasks[slot].take().expect("present");
                    task.deregister(registry);
                    self.free.push(slot);
                    done.push((slot, task));
                }
            }
        }
    }

    /// Removes a task without running it (e.g. moving its socket elsewhere).
    pub fn remove(&mut self, slot: usize) -> Option<T> {
        let mut task = self.tasks.get_mut(slot)?.take()?;
        task.deregister(self.poll.registry());
        self.free.push(slot);
        Some(task)
    }
}

/// Queues `slot` to run in the next round, once.
fn enqueue(queued: &mut [bool], queue: &mut Vec<usize>, slot: usize) {
    if !queued[slot] {
        queued[slot] = true;
        queue.push(slot);
    }
}
