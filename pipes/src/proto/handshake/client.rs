//! The client's side of a stripe handshake, without IO: bytes to send out,
//! the server's bytes in, a verdict.

use super::{ClientHello, HandshakeError, Secret, ServerHello, Status};
use crate::proto::auth::Key;
use crate::proto::noise::{Initiator, Keys, NoiseError, SERVER_ANSWER_LEN};

/// What the server's bytes meant.
pub enum ClientStep {
    /// Not all of the answer is in.
    Pending,
    /// The server took the stripe. `send` (the sealed confirmation) goes
    /// out before any frame, sealed with `keys`; `window` and
    /// `max_payload` are the server's.
    Accepted {
        keys: Box<Keys>,
        send: Vec<u8>,
        window: u32,
        max_payload: u32,
    },
    /// The server refused the stripe, for this reason.
    Refused(Status),
    /// The answer is not a valid handshake.
    Malformed(HandshakeError),
    /// The answer does not decrypt: the server does not hold our key.
    BadProof(NoiseError),
}

pub struct ClientHandshake {
    init: Option<Initiator>,
    secret: Secret,
}

impl ClientHandshake {
    /// Starts a handshake for `hello`, to confirm with the session's
    /// `secret`; the returned bytes go out first on the stripe.
    pub fn start(hello: &ClientHello, key: &Key, secret: Secret) -> (ClientHandshake, Vec<u8>) {
        let (init, first) = Initiator::start(key.bytes(), &hello.encode(), None);
        let hs = ClientHandshake {
            init: Some(init),
            secret,
        };
        (hs, first)
    }

    /// Bytes of the server's answer, consumed once it is not
    /// [`ClientStep::Pending`].
    pub const ANSWER_LEN: usize = SERVER_ANSWER_LEN;

    /// Looks at the bytes the server sent so far. Anything but `Pending`
    /// ends the handshake.
    pub fn handle(&mut self, bytes: &[u8]) -> ClientStep {
        let Some(answer) = bytes.get(..SERVER_ANSWER_LEN) else {
            return ClientStep::Pending;
        };
        let init = self.init.take().expect("the handshake has ended");
        let (fields, mut keys) = match init.finish(answer.try_into().expect("checked")) {
            Ok(x) => x,
            Err(e) => return ClientStep::BadProof(e),
        };
        let answer = match ServerHello::parse(&fields) {
            Ok(a) => a,
            Err(e) => return ClientStep::Malformed(e),
        };
        if answer.status != Status::Ok {
            return ClientStep::Refused(answer.status);
        }
        let mut send = Vec::new();
        if let Err(e) = keys.send.seal(&[&self.secret], &mut send) {
            unreachable!("the first record of a stripe: {e}");
        }
        ClientStep::Accepted {
            keys: Box::new(keys),
            send,
            window: answer.window,
            max_payload: answer.max_payload,
        }
    }
}
