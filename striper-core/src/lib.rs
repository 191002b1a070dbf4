//! striper's core: the [`Pipe`] trait, the [`Bridge`] that relays between
//! two pipes, the [`Reactor`] event loop they run on, and the skeleton both
//! binaries run ([`daemon`]: listener, signals, loop, shutdown, and
//! [`notify`], which tells systemd about them).
//!
//! Nothing here knows about stripes or frames; the `pipes` crate builds
//! those on top. The command-line options both binaries share are in
//! [`cli`], as plain values; `pipes::config` turns them into the pipes'
//! configuration.

pub mod bridge;
pub mod cfgfile;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod mem;
pub mod metrics;
pub mod notify;
pub mod pipe;
pub mod reactor;
pub mod signals;
pub mod warnlimit;

pub use bridge::{Bridge, Outcome, Side, Status};
pub use pipe::{Ctx, ErrorKind, Pipe, PipeError, Readable, Ready, TokenSpan};
pub use reactor::{Reactor, SPAN, Task, TaskStatus};
