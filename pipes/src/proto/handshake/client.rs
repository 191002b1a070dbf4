//! The client's side of a stripe handshake, without IO: bytes to send out,
//! the server's bytes in, a verdict.
//!
//! With a key the client sends its hello, checks the server's proof in the
//! answer and only then sends its own proof and its first frames. Without a
//! key it sends hello, the (zero) proof and frames at once: data rides the
//! first flight, and the answer is only checked for a refusal.

use super::{
    CLIENT_AUTH_LEN, CLIENT_HELLO_LEN, ClientHello, HandshakeError, Kind, SERVER_HELLO_LEN,
    ServerHello, Status,
};
use crate::proto::auth::Key;

/// What the server's bytes meant.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientStep {
    /// Not all of the answer is in.
    Pending,
    /// The server took the stripe. `send` goes out before any frame (the
    /// proof, when there is a key); `window` and `max_payload` are the
    /// server's.
    Accepted {
        send: Vec<u8>,
        window: u32,
        max_payload: u32,
    },
    /// The server refused the stripe, for this reason.
    Refused(Status),
    /// The answer is not a valid handshake.
    Malformed(HandshakeError),
    /// The server did not prove it holds our key.
    BadProof,
}

pub struct ClientHandshake {
    hello: [u8; CLIENT_HELLO_LEN],
    join: bool,
    key: Option<Key>,
    done: bool,
}

impl ClientHandshake {
    /// Starts a handshake; the returned bytes go out first on the stripe.
    pub fn start(hello: &ClientHello, key: Option<Key>) -> (ClientHandshake, Vec<u8>) {
        let bytes = hello.encode();
        let mut out = bytes.to_vec();
        if key.is_none() {
            // No key: the (empty) proof and the first frames follow the
            // hello at once, without waiting for the answer.
            out.extend_from_slice(&[0u8; CLIENT_AUTH_LEN]);
        }
        let hs = ClientHandshake {
            hello: bytes,
            join: hello.kind == Kind::Join,
            key,
            done: false,
        };
        (hs, out)
    }

    /// Frames may follow the hello before the server answers.
    pub fn early_frames(&self) -> bool {
        self.key.is_none()
    }

    /// The hello was a JOIN (a refusal then means the session is gone).
    pub fn is_join(&self) -> bool {
        self.join
    }

    /// How many bytes of the server's answer to consume once it is not
    /// [`ClientStep::Pending`].
    pub const ANSWER_LEN: usize = SERVER_HELLO_LEN;

    /// Looks at the bytes the server sent so far. Anything but `Pending`
    /// ends the handshake; the caller then consumes [`Self::ANSWER_LEN`].
    pub fn handle(&mut self, bytes: &[u8]) -> ClientStep {
        assert!(!self.done, "the handshake has ended");
        let answer = match ServerHello::parse(bytes) {
            Ok(None) => return ClientStep::Pending,
            Ok(Some(a)) => a,
            Err(e) => {
                self.done = true;
                return ClientStep::Malformed(e);
            }
        };
        self.done = true;
        if answer.status != Status::Ok {
            return ClientStep::Refused(answer.status);
        }
        let send = match &self.key {
            None => Vec::new(),
            Some(key) => {
                let transcript = answer.transcript();
                if !key.verify_server(&self.hello, &transcript, &answer.proof) {
                    return ClientStep::BadProof;
                }
                key.client_proof(&self.hello, &transcript).to_vec()
            }
        };
        ClientStep::Accepted {
            send,
            window: answer.window,
            max_payload: answer.max_payload,
        }
    }
}
