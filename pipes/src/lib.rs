//! striper's pipes and the sans-IO protocol they drive.
//!
//! - [`proto`]: frame codec, handshake messages, reassembly, scheduler and
//!   the session state machine, with no IO at all;
//! - pipes that put it on sockets: `TcpPipe`, `FramedPipe`, `StripedPipe`.

pub mod proto;
