//! The stripe handshake: a Noise `NNpsk0` exchange ([`super::noise`]) that
//! carries the two hellos, then the client's confirmation as the first
//! sealed record.
//!
//! ```text
//! client -> server  preamble + ClientHello fields (104 bytes, sealed)  160 bytes
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
        pub const TARGET_LEN: usize = 3;
        pub const SESSION: Range<usize> = 4..20;
        pub const WINDOW: Range<usize> = 20..24;
        pub const MAX_PAYLOAD: Range<usize> = 24..28;
        pub const FLAGS: usize = 28;
        pub const RESERVED: Range<usize> = 29..40;
        /// The target's name, zero-padded to its fixed size: every hello
        /// is as long as every other, whatever the name.
        pub const TARGET: Range<usize> = 40..104;
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

/// Longest target name a hello carries.
pub const MAX_TARGET_NAME: usize = 64;

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
    /// Which of the server's targets the session is for.
    pub target: TargetName,
}

/// The name of one of the server's targets, as a session asks for it;
/// empty means the server's default target. At most [`MAX_TARGET_NAME`]
/// bytes of ASCII letters, digits, `.`, `_` and `-`: it appears in logs,
/// and in `NAME=HOST:PORT` and `ADDR=NAME` options.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TargetName {
    len: u8,
    bytes: [u8; MAX_TARGET_NAME],
}

impl TargetName {
    /// The server's default target (no name).
    pub const DEFAULT: TargetName = TargetName {
        len: 0,
        bytes: [0; MAX_TARGET_NAME],
    };

    /// A name as an option gives it; the error says what is wrong with it.
    pub fn new(name: &str) -> Result<TargetName, String> {
        if name.is_empty() {
            return Err("a target name cannot be empty".into());
        }
        if name.len() > MAX_TARGET_NAME {
            return Err(format!(
                "target name `{name}` is longer than {MAX_TARGET_NAME} bytes"
            ));
        }
        if let Some(c) = name.chars().find(|&c| !Self::allowed(c as u32)) {
            return Err(format!(
                "target name `{name}` has {c:?}: only letters, digits, '.', '_' and '-' are allowed"
            ));
        }
        let mut bytes = [0; MAX_TARGET_NAME];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        Ok(TargetName {
            len: name.len() as u8,
            bytes,
        })
    }

    fn allowed(c: u32) -> bool {
        u8::try_from(c).is_ok_and(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    }

    pub fn is_default(&self) -> bool {
        self.len == 0
    }

    /// The name; empty for the default target.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).expect("checked to be ASCII")
    }
}

impl fmt::Display for TargetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_default() {
            f.write_str("(default)")
        } else {
            f.write_str(self.as_str())
        }
    }
}

impl Ord for TargetName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialOrd for TargetName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for TargetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TargetName({:?})", self.as_str())
    }
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
    UnknownTarget,
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
            Status::UnknownTarget => 8,
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
            8 => Status::UnknownTarget,
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
            Status::UnknownTarget => write!(f, "the server has no target of that name"),
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
        b[f::TARGET_LEN] = self.target.len;
        b[f::TARGET].copy_from_slice(&self.target.bytes);
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
        if b[f::FLAGS] & !FLAG_BACKUP != 0 || b[f::RESERVED].iter().any(|&x| x != 0) {
            return Err(HandshakeError::BadField("reserved bytes"));
        }
        let target = parse_target(b[f::TARGET_LEN], &b[f::TARGET])?;
        Ok(ClientHello {
            kind,
            index,
            count,
            session: b[f::SESSION].try_into().expect("16"),
            window,
            max_payload,
            backup: b[f::FLAGS] & FLAG_BACKUP != 0,
            target,
        })
    }
}

/// The target name field: its length, then the name's bytes and zeros.
fn parse_target(len: u8, field: &[u8]) -> Result<TargetName, HandshakeError> {
    let len = len as usize;
    if len > MAX_TARGET_NAME {
        return Err(HandshakeError::BadField("target name length"));
    }
    let (name, padding) = field.split_at(len);
    if !name.iter().all(|&c| TargetName::allowed(c.into())) {
        return Err(HandshakeError::BadField("target name characters"));
    }
    if padding.iter().any(|&x| x != 0) {
        return Err(HandshakeError::BadField("target name padding"));
    }
    let mut bytes = [0; MAX_TARGET_NAME];
    bytes.copy_from_slice(field);
    Ok(TargetName {
        len: len as u8,
        bytes,
    })
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
            target: TargetName::new("db-1.eu_west").unwrap(),
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
    fn target_names_round_trip_and_are_checked() {
        let mut h = hello();
        h.target = TargetName::DEFAULT;
        let b = h.encode();
        assert_eq!(b[field::client::TARGET_LEN], 0);
        assert_eq!(ClientHello::parse(&b), Ok(h));
        assert!(ClientHello::parse(&b).unwrap().target.is_default());
        let longest = "a".repeat(MAX_TARGET_NAME);
        h.target = TargetName::new(&longest).unwrap();
        let back = ClientHello::parse(&h.encode()).unwrap();
        assert_eq!(back.target.as_str(), longest);
        let b = hello().encode();
        assert_eq!(&b[field::client::TARGET][..12], b"db-1.eu_west");
        assert_eq!(b[field::client::TARGET_LEN], 12);

        assert!(TargetName::new("").unwrap_err().contains("empty"));
        let e = TargetName::new(&"a".repeat(65)).unwrap_err();
        assert!(e.contains("longer than 64"), "{e}");
        let e = TargetName::new("db 1").unwrap_err();
        assert!(e.contains("' '") && e.contains("only letters"), "{e}");
        assert!(TargetName::new("db=1").is_err() && TargetName::new("é").is_err());
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
        let mut b = hello().encode();
        b[field::client::TARGET_LEN] = 65;
        assert_eq!(
            ClientHello::parse(&b),
            Err(HandshakeError::BadField("target name length"))
        );
        let mut b = hello().encode();
        b[field::client::TARGET.start + 2] = b' ';
        assert_eq!(
            ClientHello::parse(&b),
            Err(HandshakeError::BadField("target name characters"))
        );
        let mut b = hello().encode();
        b[field::client::TARGET_LEN] = 4;
        assert_eq!(
            ClientHello::parse(&b),
            Err(HandshakeError::BadField("target name padding")),
            "bytes of the name beyond its length"
        );
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
