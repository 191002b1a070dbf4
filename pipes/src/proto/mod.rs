//! The protocol without IO: frames, the handshake, reassembly, the stripe
//! scheduler and the session state machine. Nothing here touches a socket or
//! reads a clock; time comes in as an argument. That keeps it unit-testable,
//! simulable in virtual time and fuzzable on its own.

pub mod auth;
pub mod frame;
pub mod handshake;
pub mod keepalive;
pub mod noise;
pub mod queue;
pub mod range_set;
pub mod reassembly;
pub mod receive;
pub mod ring;
pub mod scheduler;
pub mod seal;
pub mod send_buffer;
pub mod session;
