//! The protocol without IO: frames, the handshake, reassembly, the stripe
//! scheduler and the session state machine. Nothing here touches a socket or
//! reads a clock; time comes in as an argument. That keeps it unit-testable,
//! simulable in virtual time and fuzzable on its own.

pub mod auth;
pub mod frame;
pub mod handshake;
pub mod queue;
pub mod reassembly;
pub mod ring;
pub mod scheduler;
pub mod session;
