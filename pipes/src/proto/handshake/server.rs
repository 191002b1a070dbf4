//! The server's side of a stripe handshake, without IO.
//!
//! It stops twice and lets its caller decide: with a valid hello
//! ([`ServerStep::Hello`]: the caller judges it against its sessions and
//! calls [`ServerHandshake::answer`]), and with a valid proof
//! ([`ServerStep::Complete`]: the stripe may join its session). Whatever
//! bytes come, it never panics and says what to send back, if anything.

use super::{
    CLIENT_AUTH_LEN, CLIENT_HELLO_LEN, ClientHello, HandshakeError, PROOF_LEN, SERVER_HELLO_LEN,
    ServerHello, Status,
};
use crate::proto::auth::Key;
use crate::proto::frame::{FrameType, ResetReason, encode_vec, rst_payload};

/// What the client's bytes meant.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerStep {
    /// More bytes are needed.
    Pending,
    /// A valid hello (its bytes consumed): judge it and answer.
    Hello(ClientHello),
    /// The client proved the key (its proof consumed): the stripe may join.
    Complete(ClientHello),
    /// The handshake failed: send `reply` (maybe empty) and close. `class`
    /// is a fixed phrase for rate-limited logging, `why` the details.
    Failed {
        class: &'static str,
        why: String,
        reply: Vec<u8>,
    },
}

enum Phase {
    Hello,
    /// The hello is being judged by the caller.
    Judging(ClientHello),
    /// Waiting for the client's proof over this transcript.
    Auth {
        hello: ClientHello,
        transcript: [u8; SERVER_HELLO_LEN],
    },
    Done,
}

pub struct ServerHandshake {
    key: Option<Key>,
    phase: Phase,
}

impl ServerHandshake {
    pub fn new(key: Option<Key>) -> ServerHandshake {
        ServerHandshake {
            key,
            phase: Phase::Hello,
        }
    }

    /// The hello was answered and the proof is awaited.
    pub fn awaiting_proof(&self) -> bool {
        matches!(self.phase, Phase::Auth { .. })
    }

    /// Looks at the bytes received so far; returns how many it consumed
    /// and what they meant.
    pub fn handle(&mut self, bytes: &[u8]) -> (usize, ServerStep) {
        match &self.phase {
            Phase::Hello => match ClientHello::parse(bytes) {
                Ok(None) => (0, ServerStep::Pending),
                Ok(Some(hello)) => {
                    self.phase = Phase::Judging(hello.clone());
                    (CLIENT_HELLO_LEN, ServerStep::Hello(hello))
                }
                Err(e) => (0, self.refuse(&e)),
            },
            Phase::Auth { hello, transcript } => {
                if bytes.len() < CLIENT_AUTH_LEN {
                    return (0, ServerStep::Pending);
                }
                let proof = &bytes[..CLIENT_AUTH_LEN];
                let proven = self
                    .key
                    .as_ref()
                    .is_none_or(|k| k.verify_client(&hello.encode(), transcript, proof));
                let hello = hello.clone();
                self.phase = Phase::Done;
                if !proven {
                    return (0, auth_failed());
                }
                (CLIENT_AUTH_LEN, ServerStep::Complete(hello))
            }
            Phase::Judging(_) | Phase::Done => (0, ServerStep::Pending),
        }
    }

    /// The caller's verdict on the hello: the bytes of the answer to send.
    /// With [`Status::Ok`] the handshake goes on to read the client's proof.
    pub fn answer(
        &mut self,
        status: Status,
        window: u32,
        max_payload: u32,
        nonce: [u8; 16],
    ) -> [u8; SERVER_HELLO_LEN] {
        let Phase::Judging(hello) = std::mem::replace(&mut self.phase, Phase::Done) else {
            panic!("answer() without a hello to answer");
        };
        let mut answer = ServerHello {
            status,
            nonce,
            window,
            max_payload,
            proof: [0; PROOF_LEN],
        };
        let transcript = answer.transcript();
        if status == Status::Ok {
            if let Some(key) = &self.key {
                answer.proof = key.server_proof(&hello.encode(), &transcript);
            }
            self.phase = Phase::Auth { hello, transcript };
        }
        answer.encode()
    }

    fn refuse(&mut self, e: &HandshakeError) -> ServerStep {
        self.phase = Phase::Done;
        // A striper client of another version, or a broken one, gets told
        // why; anything else (not even our magic) just gets closed.
        if matches!(e, HandshakeError::BadMagic(_)) {
            return ServerStep::Failed {
                class: "sent bytes that are not a striper handshake",
                why: e.to_string(),
                reply: Vec::new(),
            };
        }
        let hello = ServerHello {
            status: e.status(),
            nonce: [0; 16],
            window: 0,
            max_payload: 0,
            proof: [0; PROOF_LEN],
        };
        ServerStep::Failed {
            class: "sent an invalid handshake",
            why: e.to_string(),
            reply: hello.encode().to_vec(),
        }
    }
}

/// The client's proof is wrong: it is told why with an RST frame (it may
/// already be sending frames).
fn auth_failed() -> ServerStep {
    let why = "authentication failed: the client's proof does not match this server's key (wrong key, or none)";
    ServerStep::Failed {
        class: "failed authentication",
        why: why.to_string(),
        reply: encode_vec(FrameType::Rst, 0, 0, &rst_payload(ResetReason::Auth, why)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ClientHandshake, ClientStep, Kind};
    use super::*;

    fn hello() -> ClientHello {
        ClientHello {
            kind: Kind::Open,
            index: 0,
            count: 2,
            session: [1; 16],
            nonce: [2; 16],
            window: 1 << 20,
            max_payload: 1 << 16,
        }
    }

    /// Both machines against each other: with the same key they agree, with
    /// another key each side finds out, and nothing is consumed on failure.
    #[test]
    fn client_and_server_agree_only_on_the_same_key() {
        let k = Key::from_bytes([7; 32]);
        for (ckey, skey, ok) in [
            (Some(k.clone()), Some(k.clone()), true),
            (None, None, true),
            (Some(Key::from_bytes([8; 32])), Some(k.clone()), false),
        ] {
            let (mut c, out) = ClientHandshake::start(&hello(), ckey.clone());
            let mut s = ServerHandshake::new(skey);
            assert_eq!(s.handle(&out[..10]), (0, ServerStep::Pending));
            let (n, step) = s.handle(&out);
            assert_eq!((n, step), (CLIENT_HELLO_LEN, ServerStep::Hello(hello())));
            let answer = s.answer(Status::Ok, 1 << 20, 1 << 16, [3; 16]);
            assert_eq!(c.handle(&answer[..63]), ClientStep::Pending);
            match c.handle(&answer) {
                ClientStep::Accepted { send, .. } if ok => {
                    let proof = if ckey.is_some() {
                        send
                    } else {
                        out[n..].to_vec()
                    };
                    let (m, step) = s.handle(&proof);
                    assert_eq!((m, step), (CLIENT_AUTH_LEN, ServerStep::Complete(hello())));
                }
                ClientStep::BadProof if !ok => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn garbage_and_other_versions_are_refused_with_or_without_a_reply() {
        let mut s = ServerHandshake::new(None);
        let (_, step) = s.handle(b"GET / HTTP/1.1\r\n");
        assert!(matches!(step, ServerStep::Failed { ref reply, .. } if reply.is_empty()));
        let mut s = ServerHandshake::new(None);
        let mut b = hello().encode();
        b[super::super::field::VERSION] = 9;
        let (_, step) = s.handle(&b);
        let ServerStep::Failed { reply, .. } = step else {
            panic!("refused")
        };
        let (mut c, _) = ClientHandshake::start(&hello(), None);
        assert_eq!(c.handle(&reply), ClientStep::Refused(Status::BadVersion));
    }

    #[test]
    fn a_wrong_proof_gets_an_rst_naming_the_cause() {
        let k = Key::from_bytes([7; 32]);
        let mut s = ServerHandshake::new(Some(k));
        s.handle(&hello().encode());
        s.answer(Status::Ok, 1 << 20, 1 << 16, [3; 16]);
        let (n, step) = s.handle(&[0u8; CLIENT_AUTH_LEN]);
        assert_eq!(n, 0);
        let ServerStep::Failed { reply, class, .. } = step else {
            panic!("refused")
        };
        assert_eq!(class, "failed authentication");
        let (f, _) = crate::proto::frame::decode(&reply, 1024).unwrap().unwrap();
        let (code, msg) = crate::proto::frame::parse_rst(f.payload);
        assert_eq!(code, ResetReason::Auth);
        assert!(msg.contains("authentication failed"), "{msg}");
    }
}
