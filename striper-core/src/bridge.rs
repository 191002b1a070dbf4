//! The bridge: relays bytes both ways between two pipes.
//!
//! Each direction has its own state, as in tokio's `copy_bidirectional`:
//! `Open` while bytes flow; `ShuttingDown` once the source reached EOF and
//! the destination was half-closed; `Done` once the destination confirms the
//! far end has everything. One direction finishing never stops the other, so
//! `ssh host cmd < input` and every protocol that half-closes keeps working.
//!
//! The bridge owns no buffer. It moves bytes from one pipe's read buffer
//! into the other pipe with [`Pipe::write`]; when that returns 0 the bytes
//! stay where they are, the source stops being read, and the sending
//! application is slowed by TCP itself: that is the backpressure.
//!
//! A failure on either side (a reset, a protocol error, a peer abort) tears
//! both down: the failing side is aborted and the other is aborted with the
//! same reason, so an RST frame or a TCP reset carries the cause onward.

use crate::pipe::{Ctx, Pipe, PipeError, Readable, Ready, TokenSpan};
use mio::{Registry, Token};
use std::io;
use std::time::{Duration, Instant};

/// Relay rounds per wake-up before yielding to other sessions.
const MAX_ROUNDS: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DirState {
    Open,
    ShuttingDown,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// How the bridge ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Both directions reached EOF and were delivered.
    Finished,
    /// One side failed; both were torn down.
    Failed { side: Side, error: PipeError },
}

/// What the owner should do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Status {
    /// Waiting for events; `again` asks to be pumped again without one.
    Running { again: bool },
    /// Finished or failed; still flushing and lingering. Pump again later.
    Closing,
    /// Nothing left: drop it.
    Closed,
}

pub struct Bridge<A, B> {
    a: A,
    b: B,
    span_a: Option<TokenSpan>,
    ab: DirState,
    ba: DirState,
    bytes_ab: u64,
    bytes_ba: u64,
    outcome: Option<Outcome>,
    /// When bytes last moved; after [`IDLE_RELEASE`] without, both pipes
    /// are told to free their empty buffers (once).
    last_moved: Option<Instant>,
    released: bool,
}

/// Traffic pause after which the pipes' empty buffers are freed.
pub const IDLE_RELEASE: Duration = Duration::from_secs(2);

impl<A: Pipe, B: Pipe> Bridge<A, B> {
    pub fn new(a: A, b: B) -> Bridge<A, B> {
        Bridge {
            a,
            b,
            span_a: None,
            ab: DirState::Open,
            ba: DirState::Open,
            bytes_ab: 0,
            bytes_ba: 0,
            outcome: None,
            last_moved: None,
            released: false,
        }
    }

    pub fn a(&self) -> &A {
        &self.a
    }

    pub fn b(&self) -> &B {
        &self.b
    }

    pub fn a_mut(&mut self) -> &mut A {
        &mut self.a
    }

    pub fn b_mut(&mut self) -> &mut B {
        &mut self.b
    }

    /// Bytes relayed from A to B and from B to A.
    pub fn bytes(&self) -> (u64, u64) {
        (self.bytes_ab, self.bytes_ba)
    }

    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// Registers A with the first half of `span` and B with the second.
    pub fn register(&mut self, registry: &Registry, span: TokenSpan) -> io::Result<()> {
        let (sa, sb) = span.split();
        self.a.register(registry, sa)?;
        self.b.register(registry, sb)?;
        self.span_a = Some(sa);
        Ok(())
    }

    pub fn deregister(&mut self, registry: &Registry) {
        self.a.deregister(registry);
        self.b.deregister(registry);
    }

    pub fn on_ready(&mut self, token: Token, ready: Ready) {
        match self.span_a.and_then(|s| s.index(token)) {
            Some(_) => self.a.on_ready(token, ready),
            None => self.b.on_ready(token, ready),
        }
    }

    /// Aborts both sides for a reason from outside (shutdown, a timeout).
    pub fn abort(&mut self, error: PipeError) {
        if self.outcome.is_none() {
            self.fail(Side::A, error);
        }
    }

    /// Tears both sides down with `error`, blaming `side`.
    fn fail(&mut self, side: Side, error: PipeError) {
        self.a.abort(&error);
        self.b.abort(&error);
        self.outcome = Some(Outcome::Failed { side, error });
    }

    /// When the bridge must run without an event: the earlier of its pipes'
    /// deadlines while relaying; the tick once closing (lingering for the
    /// peers' goodbyes is timed by the pipes' `poll_close`).
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        if self.outcome.is_some() || self.ab != DirState::Open || self.ba != DirState::Open {
            return Some(now + crate::reactor::TICK);
        }
        let release = match self.last_moved {
            Some(t) if !self.released => Some(t + IDLE_RELEASE),
            _ => None,
        };
        [self.a.poll_timeout(now), self.b.poll_timeout(now), release]
            .into_iter()
            .flatten()
            .min()
    }

    /// Moves bytes until nothing moves or the round budget is spent.
    pub fn pump(&mut self, cx: &mut Ctx<'_>) -> Status {
        let before = (self.bytes_ab, self.bytes_ba);
        let status = self.pump_inner(cx);
        if self.last_moved.is_none() || before != (self.bytes_ab, self.bytes_ba) {
            self.last_moved = Some(cx.now);
            self.released = false;
        } else if !self.released
            && self
                .last_moved
                .is_some_and(|t| cx.now.saturating_duration_since(t) >= IDLE_RELEASE)
        {
            self.a.release_idle();
            self.b.release_idle();
            self.released = true;
        }
        status
    }

    fn pump_inner(&mut self, cx: &mut Ctx<'_>) -> Status {
        if self.outcome.is_none() {
            match self.relay(cx) {
                Ok(again) if self.outcome.is_none() => return Status::Running { again },
                Ok(_) => {}
                Err((side, error)) => self.fail(side, error),
            }
        }
        // Both pipes get their turn every time, so one cannot starve the other.
        let a = self.a.poll_close(cx);
        let b = self.b.poll_close(cx);
        if a && b {
            Status::Closed
        } else {
            Status::Closing
        }
    }

    fn relay(&mut self, cx: &mut Ctx<'_>) -> Result<bool, (Side, PipeError)> {
        for _ in 0..MAX_ROUNDS {
            let more_a = self.a.drive(cx).map_err(|e| (Side::A, e))?;
            let more_b = self.b.drive(cx).map_err(|e| (Side::B, e))?;
            let moved = step(
                &mut self.a,
                &mut self.b,
                &mut self.ab,
                &mut self.bytes_ab,
                Side::A,
            )? + step(
                &mut self.b,
                &mut self.a,
                &mut self.ba,
                &mut self.bytes_ba,
                Side::B,
            )?;
            if self.ab == DirState::Done && self.ba == DirState::Done {
                self.outcome = Some(Outcome::Finished);
                return Ok(false);
            }
            if moved == 0 {
                return Ok(more_a || more_b);
            }
        }
        Ok(true)
    }
}

impl<A: Pipe, B: Pipe> crate::reactor::Task for Bridge<A, B> {
    fn register(&mut self, registry: &Registry, span: TokenSpan) -> io::Result<()> {
        Bridge::register(self, registry, span)
    }

    fn deregister(&mut self, registry: &Registry) {
        Bridge::deregister(self, registry)
    }

    fn on_ready(&mut self, token: Token, ready: Ready) {
        Bridge::on_ready(self, token, ready)
    }

    fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        Bridge::poll_timeout(self, now)
    }

    fn run(&mut self, cx: &mut Ctx<'_>) -> crate::reactor::TaskStatus {
        use crate::reactor::TaskStatus;
        match self.pump(cx) {
            Status::Running { again: true } => TaskStatus::Again,
            Status::Running { again: false } | Status::Closing => TaskStatus::Idle,
            Status::Closed => TaskStatus::Done,
        }
    }
}

/// One relay step from `src` to `dst`; returns a measure of progress.
fn step(
    src: &mut dyn Pipe,
    dst: &mut dyn Pipe,
    state: &mut DirState,
    count: &mut u64,
    src_side: Side,
) -> Result<usize, (Side, PipeError)> {
    let dst_side = match src_side {
        Side::A => Side::B,
        Side::B => Side::A,
    };
    match *state {
        DirState::Open => match src.fill_buf().map_err(|e| (src_side, e))? {
            Readable::Pending => Ok(0),
            Readable::Eof => {
                dst.shutdown_write().map_err(|e| (dst_side, e))?;
                *state = DirState::ShuttingDown;
                Ok(1)
            }
            Readable::Bytes(bytes) => {
                let n = dst.write(bytes).map_err(|e| (dst_side, e))?;
                src.consume(n);
                *count += n as u64;
                Ok(n)
            }
        },
        DirState::ShuttingDown => {
            if dst.write_done() {
                *state = DirState::Done;
                Ok(1)
            } else {
                Ok(0)
            }
        }
        DirState::Done => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipe::ErrorKind;
    use std::collections::VecDeque;
    use std::time::Instant;

    /// An in-memory pipe: `inbox` is what the far end sent us, `outbox` what
    /// we wrote, `room` how much more we take before reporting full.
    #[derive(Default)]
    struct Mem {
        inbox: VecDeque<u8>,
        inbox_eof: bool,
        outbox: Vec<u8>,
        room: usize,
        shut: bool,
        aborted: Option<String>,
        fail_read: Option<PipeError>,
    }

    impl Pipe for Mem {
        fn register(&mut self, _: &Registry, _: TokenSpan) -> io::Result<()> {
            Ok(())
        }
        fn deregister(&mut self, _: &Registry) {}
        fn on_ready(&mut self, _: Token, _: Ready) {}
        fn drive(&mut self, _: &mut Ctx<'_>) -> Result<bool, PipeError> {
            Ok(false)
        }
        fn fill_buf(&mut self) -> Result<Readable<'_>, PipeError> {
            if let Some(e) = self.fail_read.take() {
                return Err(e);
            }
            if self.inbox.is_empty() {
                return Ok(if self.inbox_eof {
                    Readable::Eof
                } else {
                    Readable::Pending
                });
            }
            Ok(Readable::Bytes(self.inbox.as_slices().0))
        }
        fn consume(&mut self, n: usize) {
            self.inbox.drain(..n);
        }
        fn write(&mut self, data: &[u8]) -> Result<usize, PipeError> {
            assert!(!self.shut, "write after shutdown");
            let n = data.len().min(self.room);
            self.room -= n;
            self.outbox.extend_from_slice(&data[..n]);
            Ok(n)
        }
        fn shutdown_write(&mut self) -> Result<(), PipeError> {
            self.shut = true;
            Ok(())
        }
        fn write_done(&self) -> bool {
            self.shut
        }
        fn abort(&mut self, reason: &PipeError) {
            self.aborted = Some(reason.message.clone());
        }
        fn poll_close(&mut self, _: &mut Ctx<'_>) -> bool {
            true
        }
        fn describe(&self) -> String {
            "mem".into()
        }
    }

    fn pump<A: Pipe, B: Pipe>(br: &mut Bridge<A, B>) -> Status {
        let poll = mio::Poll::new().unwrap();
        let mut cx = Ctx {
            registry: poll.registry(),
            now: Instant::now(),
        };
        br.pump(&mut cx)
    }

    #[test]
    fn backpressure_keeps_bytes_in_the_source() {
        let a = Mem {
            inbox: (0..100u8).collect(),
            ..Default::default()
        };
        let b = Mem {
            room: 30,
            ..Default::default()
        };
        let mut br = Bridge::new(a, b);
        assert_eq!(pump(&mut br), Status::Running { again: false });
        assert_eq!(br.b().outbox.len(), 30);
        assert_eq!(br.a().inbox.len(), 70, "the rest waits in the source");
        br.b_mut().room = 1000;
        let _ = pump(&mut br);
        assert_eq!(br.b().outbox, (0..100u8).collect::<Vec<_>>());
    }

    #[test]
    fn half_close_keeps_the_other_direction_flowing() {
        let a = Mem {
            inbox: b"request".iter().copied().collect(),
            inbox_eof: true,
            room: 1000,
            ..Default::default()
        };
        let b = Mem {
            room: 1000,
            ..Default::default()
        };
        let mut br = Bridge::new(a, b);
        assert_eq!(pump(&mut br), Status::Running { again: false });
        assert!(br.b().shut, "A's EOF became B's half-close");
        assert!(!br.a().shut, "A's write side is still open");
        br.b_mut().inbox.extend(b"reply");
        br.b_mut().inbox_eof = true;
        assert_eq!(pump(&mut br), Status::Closed);
        assert_eq!(br.a().outbox, b"reply");
        assert_eq!(br.outcome(), Some(&Outcome::Finished));
        assert_eq!(br.bytes(), (7, 5));
    }

    #[test]
    fn failure_tears_both_sides_down_with_the_cause() {
        let err = PipeError::new(ErrorKind::Reset, "target 127.0.0.1:22 reset the connection");
        let a = Mem {
            room: 10,
            ..Default::default()
        };
        let b = Mem {
            fail_read: Some(err.clone()),
            ..Default::default()
        };
        let mut br = Bridge::new(a, b);
        assert_eq!(pump(&mut br), Status::Closed);
        assert_eq!(br.a().aborted.as_deref(), Some(err.message.as_str()));
        assert_eq!(
            br.outcome(),
            Some(&Outcome::Failed {
                side: Side::B,
                error: err
            })
        );
    }
}
