//! The stripe handshake: three fixed-size messages at the start of every
//! stripe, before any frame.
//!
//! ```text
//! client -> server  ClientHello  64 bytes
//! server -> client  ServerHello  64 bytes
//! client -> server  ClientAuth   32 bytes, then frames both ways
//! ```
//!
//! The authentication fields (the ServerHello's and ClientAuth's 32-byte
//! proofs) are carried in every handshake; without a key they are zero. A
//! client without a key sends ClientAuth and its first frames right behind
//! its hello, without waiting for the server: data rides the first flight.
//! Parsing never panics; every refusal has a [`Status`] code that the server
//! sends back so the client can log why.

use std::fmt;

mod client;
mod server;

pub use client::{ClientHandshake, ClientStep};
pub use server::{ServerHandshake, ServerStep};

/// Where each field of the two hellos sits, the one place the layout is
/// written.
mod field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: usize = 4;
    /// ClientHello: Open or Join. ServerHello: the status.
    pub const KIND: usize = 5;
    pub const STATUS: usize = 5;
    pub mod client {
        use std::ops::Range;
        pub const INDEX: usize = 6;
        pub const COUNT: usize = 7;
        pub const SESSION: Range<usize> = 8..24;
        pub const NONCE: Range<usize> = 24..40;
        pub const WINDOW: Range<usize> = 40..44;
        pub const MAX_PAYLOAD: Range<usize> = 44..48;
        pub const RESERVED: Range<usize> = 48..64;
    }
    pub mod server {
        use std::ops::Range;
        pub const RESERVED: Range<usize> = 6..8;
        pub const NONCE: Range<usize> = 8..24;
        pub const WINDOW: Range<usize> = 24..28;
        pub const MAX_PAYLOAD: Range<usize> = 28..32;
        pub const PROOF: Range<usize> = 32..64;
    }
}

pub const CLIENT_HELLO_LEN: usize = 64;
pub const SERVER_HELLO_LEN: usize = 64;
pub const CLIENT_AUTH_LEN: usize = 32;
pub const PROOF_LEN: usize = 32;

pub const CLIENT_MAGIC: [u8; 4] = *b"STRP";
pub const SERVER_MAGIC: [u8; 4] = *b"STRS";
pub const VERSION: u8 = 1;

/// Largest stripe count a session may have.
pub const MAX_STRIPES: u8 = 64;

/// Every receiver accepts at least this window, so a client may send this
/// much before it has heard the server's own figure.
pub const MIN_WINDOW: u32 = 256 * 1024;
/// Every receiver accepts DATA payloads of at least this size.
pub const MIN_MAX_PAYLOAD: u32 = 16 * 1024;

pub type SessionId = [u8; 16];
pub type Nonce = [u8; 16];

/// Renders a session id the way logs show it (first 8 bytes, hex).
pub fn short_id(id: &SessionId) -> String {
    id[..8].iter().map(|b| format!("{b:02x}")).collect()
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientHello {
    pub kind: Kind,
    pub index: u8,
    pub count: u8,
    pub session: SessionId,
    pub nonce: Nonce,
    /// The client's receive window in bytes.
    pub window: u32,
    /// The largest DATA payload the client accepts.
    pub max_payload: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerHello {
    pub status: Status,
    pub nonce: Nonce,
    pub window: u32,
    pub max_payload: u32,
    pub proof: [u8; PROOF_LEN],
}

/// The server's verdict on a stripe, sent in the ServerHello and, for
/// failures found later (a bad ClientAuth), as an RST frame's code.
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

/// Why handshake bytes were refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// Not a striper peer at all (HTTP, TLS, noise...).
    BadMagic([u8; 4]),
    BadVersion(u8),
    /// Well-formed framing but a field out of range.
    BadField(&'static str),
}

impl HandshakeError {
    /// The status a server answers this error with.
    pub fn status(&self) -> Status {
        match self {
            HandshakeError::BadVersion(_) => Status::BadVersion,
            _ => Status::Malformed,
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::BadMagic(m) => {
                write!(f, "not a striper handshake (first bytes {m:02x?})")
            }
            HandshakeError::BadVersion(v) => {
                write!(
                    f,
                    "protocol version {v} not supported (this build speaks {VERSION})"
                )
            }
            HandshakeError::BadField(what) => write!(f, "invalid handshake field: {what}"),
        }
    }
}

impl std::error::Error for HandshakeError {}

impl ClientHello {
    pub fn encode(&self) -> [u8; CLIENT_HELLO_LEN] {
        use field::client as f;
        let mut b = [0u8; CLIENT_HELLO_LEN];
        b[field::MAGIC].copy_from_slice(&CLIENT_MAGIC);
        b[field::VERSION] = VERSION;
        b[field::KIND] = self.kind as u8;
        b[f::INDEX] = self.index;
        b[f::COUNT] = self.count;
        b[f::SESSION].copy_from_slice(&self.session);
        b[f::NONCE].copy_from_slice(&self.nonce);
        b[f::WINDOW].copy_from_slice(&self.window.to_be_bytes());
        b[f::MAX_PAYLOAD].copy_from_slice(&self.max_payload.to_be_bytes());
        b
    }

    /// Parses a ClientHello. The magic is checked as soon as 4 bytes are in,
    /// so garbage is refused without waiting for 64 bytes of it.
    pub fn parse(b: &[u8]) -> Result<Option<ClientHello>, HandshakeError> {
        use field::client as f;
        check_magic(b, CLIENT_MAGIC)?;
        if b.len() < CLIENT_HELLO_LEN {
            return Ok(None);
        }
        if b[field::VERSION] != VERSION {
            return Err(HandshakeError::BadVersion(b[field::VERSION]));
        }
        let kind = match b[field::KIND] {
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
        if b[f::RESERVED].iter().any(|&x| x != 0) {
            return Err(HandshakeError::BadField("reserved bytes"));
        }
        Ok(Some(ClientHello {
            kind,
            index,
            count,
            session: b[f::SESSION].try_into().expect("16"),
            nonce: b[f::NONCE].try_into().expect("16"),
            window,
            max_payload,
        }))
    }
}

impl ServerHello {
    pub fn encode(&self) -> [u8; SERVER_HELLO_LEN] {
        use field::server as f;
        let mut b = [0u8; SERVER_HELLO_LEN];
        b[field::MAGIC].copy_from_slice(&SERVER_MAGIC);
        b[field::VERSION] = VERSION;
        b[field::STATUS] = self.status.code();
        b[f::NONCE].copy_from_slice(&self.nonce);
        b[f::WINDOW].copy_from_slice(&self.window.to_be_bytes());
        b[f::MAX_PAYLOAD].copy_from_slice(&self.max_payload.to_be_bytes());
        b[f::PROOF].copy_from_slice(&self.proof);
        b
    }

    /// The bytes a proof covers: the whole message with the proof zeroed.
    pub fn transcript(&self) -> [u8; SERVER_HELLO_LEN] {
        let mut b = self.encode();
        b[field::server::PROOF].fill(0);
        b
    }

    pub fn parse(b: &[u8]) -> Result<Option<ServerHello>, HandshakeError> {
        use field::server as f;
        check_magic(b, SERVER_MAGIC)?;
        if b.len() < SERVER_HELLO_LEN {
            return Ok(None);
        }
        if b[field::VERSION] != VERSION {
            return Err(HandshakeError::BadVersion(b[field::VERSION]));
        }
        if b[f::RESERVED].iter().any(|&x| x != 0) {
            return Err(HandshakeError::BadField("reserved bytes"));
        }
        let status = Status::from_code(b[field::STATUS]);
        let window = be32(&b[f::WINDOW]);
        let max_payload = be32(&b[f::MAX_PAYLOAD]);
        if status == Status::Ok && (window < MIN_WINDOW || max_payload < MIN_MAX_PAYLOAD) {
            return Err(HandshakeError::BadField(
                "window or max payload below the protocol minimum",
            ));
        }
        Ok(Some(ServerHello {
            status,
            nonce: b[f::NONCE].try_into().expect("16"),
            window,
            max_payload,
            proof: b[f::PROOF].try_into().expect("32"),
        }))
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b.try_into().expect("4 bytes"))
}

fn check_magic(b: &[u8], magic: [u8; 4]) -> Result<(), HandshakeError> {
    let n = b.len().min(4);
    if b[..n] != magic[..n] {
        let mut got = [0u8; 4];
        got[..n].copy_from_slice(&b[..n]);
        return Err(HandshakeError::BadMagic(got));
    }
    Ok(())
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
            nonce: [9; 16],
            window: 8 << 20,
            max_payload: 65536,
        }
    }

    #[test]
    fn round_trips() {
        let h = hello();
        assert_eq!(ClientHello::parse(&h.encode()), Ok(Some(h)));
        let s = ServerHello {
            status: Status::Ok,
            nonce: [3; 16],
            window: 1 << 20,
            max_payload: 1 << 16,
            proof: [5; 32],
        };
        assert_eq!(ServerHello::parse(&s.encode()), Ok(Some(s)));
    }

    #[test]
    fn truncated_waits_and_garbage_fails_fast() {
        let b = hello().encode();
        for cut in 0..CLIENT_HELLO_LEN {
            assert_eq!(ClientHello::parse(&b[..cut]), Ok(None));
        }
        assert!(matches!(
            ClientHello::parse(b"GET / HTTP/1.1"),
            Err(HandshakeError::BadMagic(_))
        ));
        assert!(matches!(
            ClientHello::parse(b"SX"),
            Err(HandshakeError::BadMagic(_))
        ));
    }

    #[test]
    fn bad_fields_are_named() {
        let mut b = hello().encode();
        b[field::VERSION] = 9;
        assert_eq!(ClientHello::parse(&b), Err(HandshakeError::BadVersion(9)));
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
        b[field::client::RESERVED.start + 12] = 1;
        assert_eq!(
            ClientHello::parse(&b),
            Err(HandshakeError::BadField("reserved bytes"))
        );
        let mut h = hello();
        h.window = 1000;
        assert!(ClientHello::parse(&h.encode()).is_err());
    }
}
