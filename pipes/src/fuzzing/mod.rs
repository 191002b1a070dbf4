//! Fuzzing entry points: hostile input against the sans-IO protocol.
//!
//! Each function takes arbitrary bytes, drives one part of [`crate::proto`]
//! with them and panics if an invariant breaks. The libFuzzer targets in
//! `fuzz/fuzz_targets/` are one-line wrappers around them, and
//! `pipes/tests/fuzz_corpus.rs` replays the committed corpus
//! (`fuzz/corpus/<target>/`) and crash reproducers (`fuzz/regressions/<target>/`)
//! through them on stable Rust, so CI checks every seed without nightly.
//!
//! One submodule per target:
//!
//! - [`frame()`] (`frame.rs`): the frame codec
//!   ([`decode`](crate::proto::frame::decode),
//!   [`needed`](crate::proto::frame::needed)) on a raw byte stream, as is and
//!   with every frame's CRC fixed up so the fuzzer reaches the checks behind
//!   it.
//! - [`handshake()`] (`handshake.rs`): the ClientHello / ServerHello parsers
//!   on the input and its prefixes, round trips, and the key file parser.
//! - [`session()`] (`session/`): the input is a little program that drives a
//!   [`Session`](crate::proto::session::Session) (stripes up and down, frames
//!   from the peer, application reads and writes, transmits, time), checked
//!   against a shadow model of both directions after every step.
//!
//! Nothing here is used by the binaries, and it is only compiled with the
//! `fuzzing` feature of `pipes`: the fuzz crate enables it, and so does
//! `pipes`' own dev-dependency on itself, so that the stable test suite and
//! the fuzz crate share one implementation.

mod frame;
mod handshake;
mod session;

pub use frame::frame;
pub use handshake::handshake;
pub use session::session;

/// Reads the program. Past the end every read is `None` and the program stops.
struct Input<'a> {
    data: &'a [u8],
    at: usize,
}

impl Input<'_> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.data.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        let b = self.data.get(self.at..self.at + n)?;
        self.at += n;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.bytes(2)?.try_into().expect("2")))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.bytes(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.bytes(8)?.try_into().expect("8")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_tiny_inputs() {
        for data in [&[][..], &[0], &[1, 2, 3], &[0xff; 40]] {
            frame(data);
            handshake(data);
            session(data);
        }
    }
}
