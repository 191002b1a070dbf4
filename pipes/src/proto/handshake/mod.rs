//! The stripe handshake: a Noise `NNpsk0` exchange ([`super::noise`]) that
//! carries the two hellos, then the client's confirmation as the first
//! sealed record.
//!
//! ```text
//! client -> server  preamble + ClientHello fields (40 bytes, sealed)    96 bytes
//! server -> client  ServerHello fields (16 bytes, sealed)               64 bytes
//! client -> server  record: the session's secret (32 bytes)             52 bytes
//!                   then sealed frames both ways
//! ```
//!
//! The session's secret is drawn by the client when it opens a session and
//! travels only inside sealed records: the server ties it to the session
//! when the session's first stripe confirms, and lets a later stripe in
//! only if it brings the same secret. Another holder of the pre-shared key
//! who learns a session's id cannot join it.
//!
//! Parsing never panics; every refusal has a [`Status`] code that the server
//! sends back (sealed) so the client can log why.

use std::fmt;

mod client;
mod server;

pub use client::{ClientHandshake, ClientStep};
pub use server::{ServerHandshake, ServerStep};

use super::noise::{ANSWER_PLAIN_LEN, HELLO_PLAIN_LEN};

/// Where each field of the two hellos sits, the one place the layout is
/// written.
mod field {
    pub mod client {
        use std::ops::Range;
        pub const KIND: usize = 0;
        pub const INDEX: usize = 1;
        pub const COUNT: usize = 2;
        pub const RESERVED_A: usize = 3;
        pub const SESSION: Range<usize> = 4..20;
        pub const WINDOW: Range<usize> = 20..24;
        pub const MAX_PAYLOAD: Range<usize> = 24..28;
        pub const FLAGS: usize = 28;
        pub const RESERVED: Range<usize> = 29..40;
    }
    pub mod server {
        use std::ops::Range;
        pub const STATUS: usize = 0;
        pub const RESERVED_A: Range<usize> = 1..4;
        pub const WINDOW: Range<usize> = 4..8;
        pub const MAX_PAYLOAD: Range<usize> = 8..12;
        pub const RESERVED: Range<usize> = 12..16;
    }
}

/// Bytes of the session's secret.
pub const SECRET_LEN: usize = 32;

/// Largest stripe count a session may have.
pub const MAX_STRIPES: u8 = 64;

/// Every receiver accepts at least this window, so a client may send this
/// much before it has heard the server's own figure.
pub const MIN_WINDOW: u32 = 256 * 1024;
/// Every receiver accepts DATA payloads of at least this size.
pub const MIN_MAX_PAYLOAD: u32 = 16 * 1024;

pub type SessionId = [u8; 16];
pub type Secret = [u8; SECRET_LEN];

/// Renders a session id the way logs show it (first 8 bytes, hex).
pub fn short_id(id: &SessionId) -> String {
    id[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two secrets in time that does not depend on where they differ.
pub fn same_secret(a: &Secret, b: &Secret) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a client's stripe wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One of the stripes that open a session: creates it, or joins it if a
    /// sibling stripe got there first.
    Open = 1,
    /// Replaces a lost stripe of a session that exists.
    Join = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientHello {
    pub kind: Kind,
    pub index: u8,
    pub count: u8,
    pub session: SessionId,
    /// The client's receive window in bytes.
    pub window: u32,
    /// The largest DATA payload the client accepts.
    pub max_payload: u32,
    /// The stripe is on a backup path: it carries no data while a stripe
    /// of a primary path is up.
    pub backup: bool,
}

/// Bits of the client hello's flags byte; the others must be zero.
pub const FLAG_BACKUP: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerHello {
    pub status: Status,
    pub window: u32,
    pub max_payload: u32,
}

/// The server's verdict on a stripe, sent in the ServerHello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    Ok,
    BadVersion,
    Malformed,
    UnknownSession,
    SessionFull,
    ServerFull,
    AuthFailed,
    ServerBusy,
    Other(u8),
}

impl Status {
    pub fn code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::BadVersion => 1,
            Status::Malformed => 2,
            Status::UnknownSession => 3,
            Status::SessionFull => 4,
            Status::ServerFull => 5,
            Status::AuthFailed => 6,
            Status::ServerBusy => 7,
            Status::Other(c) => c,
        }
    }

    pub fn from_code(c: u8) -> Status {
        match c {
            0 => Status::Ok,
            1 => Status::BadVersion,
            2 => Status::Malformed,
            3 => Status::UnknownSession,
            4 => Status::SessionFull,
            5 => Status::ServerFull,
            6 => Status::AuthFailed,
            7 => Status::ServerBusy,
            c => Status::Other(c),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Ok => write!(f, "accepted"),
            Status::BadVersion => write!(f, "unsupported protocol version"),
            Status::Malformed => write!(f, "malformed handshake"),
            Status::UnknownSession => write!(f, "unknown or finished session"),
            Status::SessionFull => write!(f, "session has its maximum number of stripes"),
            Status::ServerFull => write!(f, "server at its session limit"),
            Status::AuthFailed => write!(f, "authentication failed (wrong key?)"),
            Status::ServerBusy => write!(f, "server busy"),
            Status::Other(c) => write!(f, "refused with unknown code {c}"),
        }
    }
}

/// Why a hello's fields were refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// A field out of range.
    BadField(&'static str),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::BadField(what) => write!(f, "invalid handshake field: {what}"),
        }
    }
}

impl std::error::Error for HandshakeError {}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b.try_into().expect("4 bytes"))
}

impl ClientHello {
    pub fn encode(&self) -> [u8; HELLO_PLAIN_LEN] {
        use field::client as f;
        let mut b = [0u8; HELLO_PLAIN_LEN];
        b[f::KIND] = self.kind as u8;
        b[f::INDEX] = self.index;
        b[f::COUNT] = self.count;
        b[f::FLAGS] = if self.backup { FLAG_BACKUP } else { 0 };
        b[f::SESSION].copy_from_slice(&self.session);
        b[f::WINDOW].copy_from_slice(&self.window.to_be_bytes());
        b[f::MAX_PAYLOAD].copy_from_slice(&self.max_payload.to_be_bytes());
        b
    }

    /// Parses the hello's fields (already authenticated by the handshake:
    /// these checks guard against a broken client, not a forger).
    pub fn parse(b: &[u8; HELLO_PLAIN_LEN]) -> Result<ClientHello, HandshakeError> {
        use field::client as f;
        let kind = match b[f::KIND] {
            1 => Kind::Open,
            2 => Kind::Join,
            _ => return Err(HandshakeError::BadField("kind")),
        };
        let (index, count) = (b[f::INDEX], b[f::COUNT]);
        if count == 0 || count > MAX_STRIPES || index >= count {
            return Err(HandshakeError::BadField("stripe index/count"));
        }
        let window = be32(&b[f::WINDOW]);
        let max_payload = be32(&b[f::MAX_PAYLOAD]);
        if window < MIN_WINDOW {
            return Err(HandshakeError::BadField(
                "window below the protocol minimum",
            ));
        }
        if max_payload < MIN_MAX_PAYLOAD {
            return Err(HandshakeError::BadField(
                "max payload below the protocol minimum",
            ));
        }
        if b[f::RESERVED_A] != 0
            || b[f::FLAGS] & !FLAG_BACKUP != 0
            || b[f::RESERVED].iter().any(|&x| x != 0)
        {
            return Err(HandshakeError::BadField("reserved bytes"));
        }
        Ok(ClientHello {
            kind,
            index,
            count,
            session: b[f::SESSION].try_into().expect("16"),
            window,
            max_payload,
            backup: b[f::FLAGS] & FLAG_BACKUP != 0,
        })
    }
}

impl ServerHello {
    pub fn encode(&self) -> [u8; ANSWER_PLAIN_LEN] {
        use field::server as f;
        let mut b = [0u8; ANSWER_PLAIN_LEN];
        b[f::STATUS] = self.status.code();
        b[f::WINDOW].copy_from_slice(&self.window.to_be_bytes());
        b[f::MAX_PAYLOAD].copy_from_slice(&self.max_payload.to_be_bytes());
        b
    }

    pub fn parse(b: &[u8; ANSWER_PLAIN_LEN]) -> Result<ServerHello, HandshakeError> {
        use field::server as f;
        if b[f::RESERVED_A]
            .iter()
            .chain(&b[f::RESERVED])
            .any(|&x| x != 0)
        {
            return Err(HandshakeError::BadField("reserved bytes"));
        }
        let status = Status::from_code(b[f::STATUS]);
        let window = be32(&b[f::WINDOW]);
        let max_payload = be32(&b[f::MAX_PAYLOAD]);
        if status == Status::Ok && (window < MIN_WINDOW || max_payload < MIN_MAX_PAYLOAD) {
            return Err(HandshakeError::BadField(
                "window or max payload below the protocol minimum",
            ));
        }
        Ok(ServerHello {
            status,
            window,
            max_payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> ClientHello {
        ClientHello {
            kind: Kind::Open,
            index: 2,
            count: 4,
            session: [7; 16],
            window: 8 << 20,
            max_payload: 65536,
            backup: false,
        }
    }

    #[test]
    fn round_trips() {
        let h = hello();
        assert_eq!(ClientHello::parse(&h.encode()), Ok(h));
        let b = ClientHello {
            backup: true,
            ..hello()
        };
        assert_eq!(ClientHello::parse(&b.encode()), Ok(b));
        let mut raw = b.encode();
        raw[field::client::FLAGS] |= 2;
        assert_eq!(
            ClientHello::parse(&raw),
            Err(HandshakeError::BadField("reserved bytes"))
        );
        let s = ServerHello {
            status: Status::Ok,
            window: 1 << 20,
            max_payload: 1 << 16,
        };
        assert_eq!(ServerHello::parse(&s.encode()), Ok(s));
        assert!(same_secret(&[1; 32], &[1; 32]) && !same_secret(&[1; 32], &[2; 32]));
    }

    #[test]
    fn bad_fields_are_named() {
        let mut b = hello().encode();
        b[field::client::INDEX] = 4;
        assert_eq!(
            ClientHello::parse(&b),
            Err(HandshakeError::BadField("stripe index/count"))
        );
        let mut b = hello().encode();
        b[field::client::COUNT] = 65;
        b[field::client::INDEX] = 0;
        assert!(ClientHello::parse(&b).is_err());
        let mut b = hello().encode();
        b[field::client::RESERVED.start + 3] = 1;
        assert_eq!(
            ClientHello::parse(&b),
            Err(HandshakeError::BadField("reserved bytes"))
        );
        let mut h = hello();
        h.window = 1000;
        assert!(ClientHello::parse(&h.encode()).is_err());
        let mut b = ServerHello {
            status: Status::Ok,
            window: 1 << 20,
            max_payload: 1 << 16,
        }
        .encode();
        b[field::server::RESERVED.start] = 1;
        assert!(ServerHello::parse(&b).is_err());
    }
}
