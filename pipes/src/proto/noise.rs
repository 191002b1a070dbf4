//! The stripe handshake's cryptography: Noise `NNpsk0` with the pre-shared
//! key, X25519, AES-256-GCM and SHA-256 (`Noise_NNpsk0_25519_AESGCM_SHA256`).
//!
//! ```text
//! client -> server  preamble "STRP" 03 00 00 00 (clear, also the prologue)
//!                   e, and the hello's fields sealed under the PSK  152 bytes
//! server -> client  e, ee, and the answer's fields sealed            64 bytes
//! ```
//!
//! Why this pattern: both ends hold only the pre-shared key, and `psk0`
//! mixes it in before anything else, so the first message already proves
//! the key and hides the hello's fields (session id, stripe index, window)
//! from anyone without it; the ephemeral-ephemeral exchange gives every
//! stripe fresh transport keys, so a key stolen later does not decrypt
//! recorded traffic (forward secrecy). Patterns with static keys (`XXpsk3`,
//! `IKpsk2`) would authenticate identities we do not have, at the cost of a
//! third message or a key distribution of their own. The first message can
//! be replayed by someone who recorded it, but the replay learns nothing
//! and cannot go on: the transport keys need the client's ephemeral
//! secret, and the server only lets a stripe near a session once its first
//! sealed record (the client's confirmation) has opened.

use std::fmt;

use super::seal::{KEY_LEN, Opener, Sealer};

pub const PATTERN: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
/// Sent in clear before the first message, and bound in as the prologue:
/// a peer of another version is told apart without any secret.
pub const PREAMBLE: [u8; 8] = *b"STRP\x03\x00\x00\x00";
const DH_LEN: usize = 32;
const TAG_LEN: usize = 16;
/// The hello's fields (see `handshake`).
pub const HELLO_PLAIN_LEN: usize = 104;
/// The answer's fields.
pub const ANSWER_PLAIN_LEN: usize = 16;
/// The client's first flight: preamble and message 1.
pub const CLIENT_FIRST_LEN: usize = PREAMBLE.len() + DH_LEN + HELLO_PLAIN_LEN + TAG_LEN;
/// The server's answer: message 2.
pub const SERVER_ANSWER_LEN: usize = DH_LEN + ANSWER_PLAIN_LEN + TAG_LEN;

/// Why a handshake message was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoiseError {
    /// Not our preamble: not striper, or another version of it.
    Preamble([u8; 8]),
    /// The message does not decrypt: another key (or none), or altered.
    Decrypt,
}

impl fmt::Display for NoiseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoiseError::Preamble(p) if p[..4] == PREAMBLE[..4] => write!(
                f,
                "striper protocol version {} (this build speaks {})",
                p[4], PREAMBLE[4]
            ),
            NoiseError::Preamble(p) => {
                write!(f, "not a striper handshake (first bytes {:02x?})", &p[..4])
            }
            NoiseError::Decrypt => write!(
                f,
                "authentication failed: the handshake does not decrypt with this key \
                 (another key on one side, or none)"
            ),
        }
    }
}

impl std::error::Error for NoiseError {}

/// One stripe's transport keys, and the handshake hash that names it.
pub struct Keys {
    pub send: Sealer,
    pub recv: Opener,
    pub hash: [u8; 32],
}

fn builder<'a>(psk: &'a [u8; KEY_LEN]) -> snow::Builder<'a> {
    snow::Builder::new(PATTERN.parse().expect("a valid pattern"))
        .prologue(&PREAMBLE)
        .expect("a prologue")
        .psk(0, psk)
        .expect("psk0")
}

fn split(hs: &mut snow::HandshakeState, initiator: bool) -> Keys {
    let (i2r, r2i) = hs.dangerously_get_raw_split();
    let hash: [u8; 32] = hs.get_handshake_hash().try_into().expect("SHA-256");
    let (send, recv) = if initiator { (i2r, r2i) } else { (r2i, i2r) };
    Keys {
        send: Sealer::new(&send),
        recv: Opener::new(&recv),
        hash,
    }
}

/// The client's side.
pub struct Initiator {
    hs: snow::HandshakeState,
}

impl Initiator {
    /// Starts a handshake; returns the first flight to send.
    pub fn start(
        psk: &[u8; KEY_LEN],
        hello: &[u8; HELLO_PLAIN_LEN],
        fixed_ephemeral: Option<&[u8; 32]>,
    ) -> (Initiator, Vec<u8>) {
        let mut b = builder(psk);
        if let Some(e) = fixed_ephemeral {
            b = b.fixed_ephemeral_key_for_testing_only(e);
        }
        let mut hs = b.build_initiator().expect("an initiator");
        let mut out = vec![0u8; CLIENT_FIRST_LEN];
        out[..PREAMBLE.len()].copy_from_slice(&PREAMBLE);
        let n = hs
            .write_message(hello, &mut out[PREAMBLE.len()..])
            .expect("message 1 fits");
        debug_assert_eq!(PREAMBLE.len() + n, CLIENT_FIRST_LEN);
        (Initiator { hs }, out)
    }

    /// Reads the server's answer: its fields and the transport keys.
    pub fn finish(
        mut self,
        answer: &[u8; SERVER_ANSWER_LEN],
    ) -> Result<([u8; ANSWER_PLAIN_LEN], Keys), NoiseError> {
        let mut plain = [0u8; SERVER_ANSWER_LEN];
        let n = self
            .hs
            .read_message(answer, &mut plain)
            .map_err(|_| NoiseError::Decrypt)?;
        if n != ANSWER_PLAIN_LEN {
            return Err(NoiseError::Decrypt);
        }
        let fields = plain[..ANSWER_PLAIN_LEN].try_into().expect("checked");
        Ok((fields, split(&mut self.hs, true)))
    }
}

/// The server's side.
pub struct Responder {
    hs: snow::HandshakeState,
}

impl Responder {
    /// Checks the preamble as soon as it is in: garbage is refused at once.
    pub fn check_preamble(first: &[u8]) -> Result<(), NoiseError> {
        let n = first.len().min(PREAMBLE.len());
        if first[..n] != PREAMBLE[..n] {
            let mut got = [0u8; 8];
            got[..n].copy_from_slice(&first[..n]);
            return Err(NoiseError::Preamble(got));
        }
        Ok(())
    }

    /// Reads the client's first flight: the hello's fields.
    pub fn read_hello(
        psk: &[u8; KEY_LEN],
        first: &[u8; CLIENT_FIRST_LEN],
        fixed_ephemeral: Option<&[u8; 32]>,
    ) -> Result<(Responder, [u8; HELLO_PLAIN_LEN]), NoiseError> {
        Responder::check_preamble(first)?;
        let mut b = builder(psk);
        if let Some(e) = fixed_ephemeral {
            b = b.fixed_ephemeral_key_for_testing_only(e);
        }
        let mut hs = b.build_responder().expect("a responder");
        let mut plain = [0u8; CLIENT_FIRST_LEN];
        let n = hs
            .read_message(&first[PREAMBLE.len()..], &mut plain)
            .map_err(|_| NoiseError::Decrypt)?;
        if n != HELLO_PLAIN_LEN {
            return Err(NoiseError::Decrypt);
        }
        let fields = plain[..HELLO_PLAIN_LEN].try_into().expect("checked");
        Ok((Responder { hs }, fields))
    }

    /// Answers with `fields`; returns the message and the transport keys.
    pub fn answer(mut self, fields: &[u8; ANSWER_PLAIN_LEN]) -> ([u8; SERVER_ANSWER_LEN], Keys) {
        let mut out = [0u8; SERVER_ANSWER_LEN];
        let n = self
            .hs
            .write_message(fields, &mut out)
            .expect("message 2 fits");
        debug_assert_eq!(n, SERVER_ANSWER_LEN);
        let keys = split(&mut self.hs, false);
        (out, keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake(ckey: [u8; 32], skey: [u8; 32]) -> Result<(Keys, Keys), NoiseError> {
        let hello = [7u8; HELLO_PLAIN_LEN];
        let (init, first) = Initiator::start(&ckey, &hello, None);
        let (resp, got) = Responder::read_hello(&skey, &first.try_into().unwrap(), None)?;
        assert_eq!(got, hello);
        let (answer, skeys) = resp.answer(&[9u8; ANSWER_PLAIN_LEN]);
        let (fields, ckeys) = init.finish(&answer)?;
        assert_eq!(fields, [9u8; ANSWER_PLAIN_LEN]);
        Ok((ckeys, skeys))
    }

    #[test]
    fn same_key_agrees_and_fresh_keys_per_stripe() {
        let (mut c, mut s) = handshake([1; 32], [1; 32]).unwrap();
        assert_eq!(c.hash, s.hash);
        let mut wire = Vec::new();
        c.send.seal(&[b"up"], &mut wire).unwrap();
        assert_eq!(s.recv.open(&mut wire, 64).unwrap().unwrap().0, b"up");
        let mut wire = Vec::new();
        s.send.seal(&[b"down"], &mut wire).unwrap();
        assert_eq!(c.recv.open(&mut wire, 64).unwrap().unwrap().0, b"down");
        let (c2, _) = handshake([1; 32], [1; 32]).unwrap();
        assert_ne!(c2.hash, c.hash, "every handshake has its own keys");
    }

    #[test]
    fn another_key_or_garbage_is_refused() {
        assert_eq!(handshake([1; 32], [2; 32]).err(), Some(NoiseError::Decrypt));
        assert!(matches!(
            Responder::check_preamble(b"GET / HT"),
            Err(NoiseError::Preamble(_))
        ));
        let mut v1 = PREAMBLE;
        v1[4] = 1;
        let e = Responder::check_preamble(&v1).unwrap_err();
        assert!(e.to_string().contains("version 1"), "{e}");
        assert_eq!(Responder::check_preamble(b"STR"), Ok(()), "wait for more");
    }

    #[test]
    fn a_flipped_bit_in_either_message_fails() {
        let hello = [7u8; HELLO_PLAIN_LEN];
        let (_, first) = Initiator::start(&[1; 32], &hello, None);
        for byte in PREAMBLE.len()..CLIENT_FIRST_LEN {
            let mut g: [u8; CLIENT_FIRST_LEN] = first.clone().try_into().unwrap();
            g[byte] ^= 0x40;
            assert!(
                Responder::read_hello(&[1; 32], &g, None).is_err(),
                "byte {byte}"
            );
        }
        let (init, first) = Initiator::start(&[1; 32], &hello, None);
        let (resp, _) = Responder::read_hello(&[1; 32], &first.try_into().unwrap(), None).unwrap();
        let (mut answer, _) = resp.answer(&[0; ANSWER_PLAIN_LEN]);
        answer[40] ^= 1;
        assert_eq!(init.finish(&answer).err(), Some(NoiseError::Decrypt));
    }
}
