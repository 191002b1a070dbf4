//! Test support for striper: a userspace link emulator ([`linkemu`]) that caps
//! each TCP connection on its own, and helpers the end-to-end tests share
//! ([`harness`], and a private OpenSSH server in [`sshd`]).

pub mod harness;
pub mod linkemu;
pub mod sshd;
