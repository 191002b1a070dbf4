//! striper's pipes and the sans-IO protocol they drive.
//!
//! - [`proto`]: frame codec, handshake messages, reassembly, scheduler and
//!   the session state machine, with no IO at all;
//! - `fuzzing` (only with the `fuzzing` feature): the fuzz harnesses;
//! - pipes that put it on sockets: `TcpPipe`, `FramedPipe`, `StripedPipe`;
//! - [`config`]: their configuration, built from the shared command line.

#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod proto;

mod buf;
pub mod config;
pub mod framed;
pub mod keyfile;
pub mod path;
pub mod report;
pub mod stripe;
pub mod striped;
pub mod sys;
pub mod tcp;

pub use framed::FramedPipe;
pub use striped::{StripedConfig, StripedPipe};
pub use tcp::TcpPipe;
pub mod stdio;
pub use stdio::StdioPipe;
