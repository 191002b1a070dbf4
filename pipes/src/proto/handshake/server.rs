//! The server's side of a stripe handshake, without IO.
//!
//! It stops twice and lets its caller decide: with a valid hello
//! ([`ServerStep::Hello`]: the caller judges it against its sessions and
//! calls [`ServerHandshake::answer`]), and with the client's confirmation
//! ([`ServerStep::Complete`]: the stripe may join its session if the
//! secret is the session's). Whatever bytes come, it never panics, and it
//! answers nobody who cannot prove the key: a refusal for a keyless peer
//! is the connection closing, nothing more.

use super::{ClientHello, SECRET_LEN, Secret, ServerHello, Status};
use crate::proto::auth::Key;
use crate::proto::noise::{
    ANSWER_PLAIN_LEN, CLIENT_FIRST_LEN, Keys, NoiseError, PREAMBLE, Responder, SERVER_ANSWER_LEN,
};
use crate::proto::seal::SealError;

/// What the client's bytes meant.
pub enum ServerStep {
    /// More bytes are needed.
    Pending,
    /// A valid hello (its bytes consumed): judge it and answer.
    Hello(ClientHello),
    /// The client confirmed (its record consumed): the stripe may join the
    /// session that holds `secret`, sealing with `keys`.
    Complete {
        hello: ClientHello,
        secret: Secret,
        keys: Box<Keys>,
    },
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
    Judging(Box<Responder>, ClientHello),
    /// Waiting for the client's confirmation.
    Confirm(Box<Keys>, ClientHello),
    Done,
}

pub struct ServerHandshake {
    key: Key,
    phase: Phase,
}

impl ServerHandshake {
    pub fn new(key: Key) -> ServerHandshake {
        ServerHandshake {
            key,
            phase: Phase::Hello,
        }
    }

    /// The hello was answered and the confirmation is awaited.
    pub fn awaiting_proof(&self) -> bool {
        matches!(self.phase, Phase::Confirm(..))
    }

    /// Looks at the bytes received so far; returns how many it consumed
    /// and what they meant.
    pub fn handle(&mut self, bytes: &[u8]) -> (usize, ServerStep) {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Hello => self.read_hello(bytes),
            Phase::Confirm(keys, hello) => self.read_confirm(bytes, keys, hello),
            other => {
                self.phase = other;
                (0, ServerStep::Pending)
            }
        }
    }

    fn read_hello(&mut self, bytes: &[u8]) -> (usize, ServerStep) {
        if let Err(e) = Responder::check_preamble(bytes) {
            return (0, preamble_failed(e));
        }
        let Some(first) = bytes.get(..CLIENT_FIRST_LEN) else {
            self.phase = Phase::Hello;
            return (0, ServerStep::Pending);
        };
        let first = first.try_into().expect("checked");
        let (responder, fields) = match Responder::read_hello(self.key.bytes(), first, None) {
            Ok(x) => x,
            Err(e) => return (0, failed("failed authentication", e.to_string())),
        };
        match ClientHello::parse(&fields) {
            Ok(hello) => {
                self.phase = Phase::Judging(Box::new(responder), hello);
                (CLIENT_FIRST_LEN, ServerStep::Hello(hello))
            }
            Err(e) => {
                // A key holder with a broken client: tell it why.
                let refusal = ServerHello {
                    status: Status::Malformed,
                    window: 0,
                    max_payload: 0,
                };
                let (reply, _) = responder.answer(&refusal.encode());
                let mut f = failed("sent an invalid handshake", e.to_string());
                if let ServerStep::Failed { reply: r, .. } = &mut f {
                    *r = reply.to_vec();
                }
                (CLIENT_FIRST_LEN, f)
            }
        }
    }

    fn read_confirm(
        &mut self,
        bytes: &[u8],
        mut keys: Box<Keys>,
        hello: ClientHello,
    ) -> (usize, ServerStep) {
        let mut record = bytes.to_vec();
        match keys.recv.open(&mut record, SECRET_LEN) {
            Ok(None) => {
                self.phase = Phase::Confirm(keys, hello);
                (0, ServerStep::Pending)
            }
            Ok(Some((plain, n))) => match <Secret>::try_from(plain) {
                Ok(secret) => (
                    n,
                    ServerStep::Complete {
                        hello,
                        secret,
                        keys,
                    },
                ),
                Err(_) => (
                    0,
                    failed(
                        "failed authentication",
                        "a confirmation of the wrong size".into(),
                    ),
                ),
            },
            Err(e @ (SealError::TooLarge { .. } | SealError::TooShort { .. })) => (
                0,
                failed(
                    "sent an invalid handshake",
                    format!("its confirmation: {e}"),
                ),
            ),
            Err(e) => (
                0,
                failed("failed authentication", format!("its confirmation: {e}")),
            ),
        }
    }

    /// The caller's verdict on the hello: the bytes of the answer to send.
    /// With [`Status::Ok`] the handshake goes on to read the confirmation.
    pub fn answer(
        &mut self,
        status: Status,
        window: u32,
        max_payload: u32,
    ) -> [u8; SERVER_ANSWER_LEN] {
        let Phase::Judging(responder, hello) = std::mem::replace(&mut self.phase, Phase::Done)
        else {
            panic!("answer() without a hello to answer");
        };
        let fields: [u8; ANSWER_PLAIN_LEN] = ServerHello {
            status,
            window,
            max_payload,
        }
        .encode();
        let (reply, keys) = responder.answer(&fields);
        if status == Status::Ok {
            self.phase = Phase::Confirm(Box::new(keys), hello);
        }
        reply
    }
}

fn failed(class: &'static str, why: String) -> ServerStep {
    ServerStep::Failed {
        class,
        why,
        reply: Vec::new(),
    }
}

fn preamble_failed(e: NoiseError) -> ServerStep {
    let class = match &e {
        NoiseError::Preamble(p) if p[..4] == PREAMBLE[..4] => "speaks another protocol version",
        _ => "sent bytes that are not a striper handshake",
    };
    failed(class, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::{ClientHandshake, ClientStep, Kind, TargetName};
    use super::*;

    fn hello() -> ClientHello {
        ClientHello {
            kind: Kind::Open,
            index: 0,
            count: 2,
            session: [1; 16],
            window: 1 << 20,
            max_payload: 1 << 16,
            backup: false,
            target: TargetName::DEFAULT,
        }
    }

    /// Both machines against each other: with the same key they agree and
    /// the server learns the secret; with another key each side finds out.
    #[test]
    fn client_and_server_agree_only_on_the_same_key() {
        let k = Key::from_bytes([7; 32]);
        let (mut c, out) = ClientHandshake::start(&hello(), &k, [5; 32]);
        let mut s = ServerHandshake::new(k.clone());
        assert!(matches!(s.handle(&out[..10]), (0, ServerStep::Pending)));
        let (n, step) = s.handle(&out);
        assert_eq!(n, CLIENT_FIRST_LEN);
        assert!(matches!(step, ServerStep::Hello(h) if h == hello()));
        let answer = s.answer(Status::Ok, 1 << 20, 1 << 16);
        assert!(matches!(c.handle(&answer[..63]), ClientStep::Pending));
        let ClientStep::Accepted { send, mut keys, .. } = c.handle(&answer) else {
            panic!("accepted")
        };
        assert!(matches!(s.handle(&send[..20]), (0, ServerStep::Pending)));
        let (m, step) = s.handle(&send);
        assert_eq!(m, send.len());
        let ServerStep::Complete {
            secret,
            keys: mut skeys,
            ..
        } = step
        else {
            panic!("complete")
        };
        assert_eq!(secret, [5; 32]);
        // The keys carry on where the confirmation left off.
        let mut wire = Vec::new();
        keys.send.seal(&[b"frame"], &mut wire).unwrap();
        assert_eq!(skeys.recv.open(&mut wire, 64).unwrap().unwrap().0, b"frame");

        let (_, out) = ClientHandshake::start(&hello(), &Key::from_bytes([8; 32]), [5; 32]);
        let mut s = ServerHandshake::new(k);
        let (_, step) = s.handle(&out);
        let ServerStep::Failed { class, reply, .. } = step else {
            panic!("refused")
        };
        assert_eq!(class, "failed authentication");
        assert!(reply.is_empty(), "nothing for a peer without the key");
    }

    #[test]
    fn garbage_and_other_versions_are_told_apart_without_a_reply() {
        let k = Key::from_bytes([7; 32]);
        let (_, step) = ServerHandshake::new(k.clone()).handle(b"GET / HTTP/1.1\r\n");
        assert!(
            matches!(step, ServerStep::Failed { class: "sent bytes that are not a striper handshake", ref reply, .. } if reply.is_empty())
        );
        let mut v1 = [0u8; 64];
        v1[..5].copy_from_slice(b"STRP\x01");
        let (_, step) = ServerHandshake::new(k).handle(&v1);
        assert!(matches!(
            step,
            ServerStep::Failed {
                class: "speaks another protocol version",
                ..
            }
        ));
    }

    #[test]
    fn a_refusal_reaches_only_a_key_holder_and_a_forged_confirmation_fails() {
        let k = Key::from_bytes([7; 32]);
        let (mut c, out) = ClientHandshake::start(&hello(), &k, [5; 32]);
        let mut s = ServerHandshake::new(k.clone());
        s.handle(&out);
        let answer = s.answer(Status::UnknownSession, 0, 0);
        assert!(matches!(
            c.handle(&answer),
            ClientStep::Refused(Status::UnknownSession)
        ));

        let (_, out) = ClientHandshake::start(&hello(), &k, [5; 32]);
        let mut s = ServerHandshake::new(k);
        s.handle(&out);
        s.answer(Status::Ok, 1 << 20, 1 << 16);
        let mut forged = (48u32).to_be_bytes().to_vec();
        forged.extend_from_slice(&[0u8; 48]);
        let (_, step) = s.handle(&forged);
        assert!(matches!(
            step,
            ServerStep::Failed {
                class: "failed authentication",
                ..
            }
        ));
    }
}
