//! The frame codec: every byte on a stripe after the handshake is a frame.
//!
//! ```text
//!  0      1      2      4            8                    16           20
//!  +------+------+------+------------+--------------------+------------+---------
//!  | type | flags| rsvd |  length    |  value (u64)       |  crc32     | payload
//!  +------+------+------+------------+--------------------+------------+---------
//! ```
//!
//! All integers are big-endian. `crc32` (IEEE, as computed by crc32fast) covers
//! header bytes 0..16 followed by the payload, so a flipped bit anywhere in a
//! frame is caught before any field is trusted. The meaning of `value` depends
//! on the type (see [`FrameType`]).
//!
//! [`decode`] never panics on any input and checks the length cap *before* it
//! waits for a payload: a peer that announces a 4 GiB frame is refused at the
//! header, it never makes us buffer it.

use std::fmt;

/// Where each header field sits, the one place the layout is written.
mod field {
    use std::ops::Range;
    pub const TYPE: usize = 0;
    pub const FLAGS: usize = 1;
    pub const RESERVED: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..8;
    pub const VALUE: Range<usize> = 8..16;
    pub const CRC: Range<usize> = 16..20;
}

/// Bytes in a frame header.
pub const HEADER_LEN: usize = field::CRC.end;

/// Largest payload any build of striper will accept, whatever the flags say.
pub const ABSOLUTE_MAX_PAYLOAD: usize = 1 << 20;

/// Largest RST payload: a reason code and a short message.
pub const MAX_RST_PAYLOAD: usize = 1024;

/// What a frame carries. The `value` header field means, per type:
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// `value` = stream offset of the first payload byte. Payload: the bytes.
    Data = 1,
    /// `value` = bytes the receiver has delivered in order to its application
    /// (a cumulative, data-level acknowledgement). Flag [`ACK_FIN`] when the
    /// peer's FIN was reached too. No payload.
    Ack = 2,
    /// `value` = final length of the sender's stream (half-close). No payload.
    Fin = 3,
    /// Abort the session. `value` = 0. Payload: u16 reason code + UTF-8 text.
    Rst = 4,
    /// Keepalive / RTT probe. `value` = opaque, echoed by the PONG.
    Ping = 5,
    /// Answer to a PING, `value` copied from it.
    Pong = 6,
}

/// ACK flag: the sender of the ACK has reached the FIN of the stream it acks.
pub const ACK_FIN: u8 = 0x01;

impl FrameType {
    fn from_u8(b: u8) -> Option<FrameType> {
        Some(match b {
            1 => FrameType::Data,
            2 => FrameType::Ack,
            3 => FrameType::Fin,
            4 => FrameType::Rst,
            5 => FrameType::Ping,
            6 => FrameType::Pong,
            _ => return None,
        })
    }
}

/// A decoded frame header (the payload follows it on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub ty: FrameType,
    pub flags: u8,
    pub len: u32,
    pub value: u64,
}

impl Header {
    /// Encodes the header for `payload`, computing the CRC over both. The
    /// payload may come in pieces (a ring buffer's two halves).
    pub fn encode(&self, payload: &[&[u8]]) -> [u8; HEADER_LEN] {
        debug_assert_eq!(
            payload.iter().map(|p| p.len()).sum::<usize>(),
            self.len as usize
        );
        let mut h = self.encode_sealed();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&h[..field::CRC.start]);
        for p in payload {
            crc.update(p);
        }
        h[field::CRC].copy_from_slice(&crc.finalize().to_be_bytes());
        h
    }

    /// Encodes the header of a frame that travels inside a sealed record:
    /// the check field is zero, since the record's tag covers every byte
    /// (a CRC there would only cost two passes over each payload).
    pub fn encode_sealed(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[field::TYPE] = self.ty as u8;
        h[field::FLAGS] = self.flags;
        h[field::LENGTH].copy_from_slice(&self.len.to_be_bytes());
        h[field::VALUE].copy_from_slice(&self.value.to_be_bytes());
        h
    }
}

/// Decodes the frame that fills a sealed record's plaintext `buf` exactly:
/// the same checks as [`decode`], with the check field required to be zero
/// instead of a CRC; a frame that does not fill the record exactly (or a
/// record shorter than a header) is `RecordNotOneFrame`.
pub fn decode_sealed(buf: &[u8], max_payload: usize) -> Result<Frame<'_>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Err(FrameError::RecordNotOneFrame {
            frame: HEADER_LEN,
            record: buf.len(),
        });
    }
    let header = parse_header(buf, max_payload)?;
    if HEADER_LEN + header.len as usize != buf.len() {
        return Err(FrameError::RecordNotOneFrame {
            frame: HEADER_LEN + header.len as usize,
            record: buf.len(),
        });
    }
    let check = be32(&buf[field::CRC]);
    if check != 0 {
        return Err(FrameError::CheckFieldSet(check));
    }
    Ok(Frame {
        header,
        payload: &buf[HEADER_LEN..],
    })
}

/// Encodes a whole sealed-format frame into a new vector (tests).
pub fn encode_sealed_vec(ty: FrameType, flags: u8, value: u64, payload: &[u8]) -> Vec<u8> {
    let h = Header {
        ty,
        flags,
        len: payload.len() as u32,
        value,
    }
    .encode_sealed();
    let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
    v.extend_from_slice(&h);
    v.extend_from_slice(payload);
    v
}

/// A whole frame borrowed from a receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub header: Header,
    pub payload: &'a [u8],
}

/// Why bytes could not be a frame. Any of these means the stream is corrupt:
/// framing is lost and the stripe cannot be trusted any further.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    UnknownType(u8),
    ReservedBits(u16),
    TooLarge {
        len: u32,
        max: usize,
    },
    CrcMismatch {
        expected: u32,
        computed: u32,
    },
    /// Inside a sealed record the check field must be zero (the record's
    /// tag covers the frame).
    CheckFieldSet(u32),
    /// A sealed record holds exactly one frame.
    RecordNotOneFrame {
        frame: usize,
        record: usize,
    },
    /// A frame type that never carries a payload (or a short RST) had a bad length.
    BadLength {
        ty: FrameType,
        len: u32,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::UnknownType(t) => write!(f, "unknown frame type {t}"),
            FrameError::ReservedBits(r) => write!(f, "reserved header bits set ({r:#06x})"),
            FrameError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the {max}-byte cap")
            }
            FrameError::CrcMismatch { expected, computed } => write!(
                f,
                "CRC mismatch (frame says {expected:#010x}, computed {computed:#010x})"
            ),
            FrameError::RecordNotOneFrame { frame, record } => write!(
                f,
                "a record of {record} bytes holding a frame of {frame} bytes (one frame per record)"
            ),
            FrameError::CheckFieldSet(v) => write!(
                f,
                "check field {v:#010x} set in a sealed frame (must be zero)"
            ),
            FrameError::BadLength { ty, len } => {
                write!(f, "{ty:?} frame with invalid length {len}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Decodes one frame from the front of `buf`.
///
/// `Ok(None)`: not enough bytes yet (the caller should make room for at least
/// [`needed`] bytes and read more). `Ok(Some((frame, consumed)))`: one frame.
/// `Err`: the stream is corrupt. `max_payload` is this receiver's cap; it is
/// checked as soon as the header is in, before the payload is awaited.
pub fn decode(buf: &[u8], max_payload: usize) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let header = parse_header(buf, max_payload)?;
    let total = HEADER_LEN + header.len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let payload = &buf[HEADER_LEN..total];
    let expected = be32(&buf[field::CRC]);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&buf[..field::CRC.start]);
    crc.update(payload);
    let computed = crc.finalize();
    if computed != expected {
        return Err(FrameError::CrcMismatch { expected, computed });
    }
    Ok(Some((Frame { header, payload }, total)))
}

/// Bytes needed to decode the frame at the front of `buf`: the header, or the
/// header and its payload once the header is in. Lets a reader grow its buffer
/// exactly as far as the (already size-checked) frame requires.
pub fn needed(buf: &[u8], max_payload: usize) -> Result<usize, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(HEADER_LEN);
    }
    Ok(HEADER_LEN + parse_header(buf, max_payload)?.len as usize)
}

fn parse_header(buf: &[u8], max_payload: usize) -> Result<Header, FrameError> {
    let ty =
        FrameType::from_u8(buf[field::TYPE]).ok_or(FrameError::UnknownType(buf[field::TYPE]))?;
    let reserved = u16::from_be_bytes(buf[field::RESERVED].try_into().expect("2 bytes"));
    if reserved != 0 {
        return Err(FrameError::ReservedBits(reserved));
    }
    let len = be32(&buf[field::LENGTH]);
    let max = max_payload.min(ABSOLUTE_MAX_PAYLOAD);
    let ok_len = match ty {
        FrameType::Data => {
            if len as usize > max {
                return Err(FrameError::TooLarge { len, max });
            }
            len > 0
        }
        FrameType::Rst => (2..=MAX_RST_PAYLOAD as u32).contains(&len),
        FrameType::Ack | FrameType::Fin | FrameType::Ping | FrameType::Pong => len == 0,
    };
    if !ok_len {
        return Err(FrameError::BadLength { ty, len });
    }
    let value = u64::from_be_bytes(buf[field::VALUE].try_into().expect("8 bytes"));
    Ok(Header {
        ty,
        flags: buf[field::FLAGS],
        len,
        value,
    })
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b.try_into().expect("4 bytes"))
}

/// Encodes a whole frame into a new vector (control frames, tests).
pub fn encode_vec(ty: FrameType, flags: u8, value: u64, payload: &[u8]) -> Vec<u8> {
    let h = Header {
        ty,
        flags,
        len: payload.len() as u32,
        value,
    }
    .encode(&[payload]);
    let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
    v.extend_from_slice(&h);
    v.extend_from_slice(payload);
    v
}

/// Why a session was aborted: the code an RST frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetReason {
    /// The peer broke the protocol.
    Protocol,
    /// The application reset its connection, or another local failure.
    AppReset,
    /// The server could not reach its target.
    TargetUnreachable,
    /// The sender is shutting down.
    Shutdown,
    /// Every stripe was lost and none came back.
    AllStripesLost,
    /// The stripe's proof of the key was wrong.
    Auth,
    /// Nothing was heard for too long.
    Timeout,
    /// A code this build does not know.
    Other(u16),
}

impl ResetReason {
    pub fn code(self) -> u16 {
        match self {
            ResetReason::Protocol => 1,
            ResetReason::AppReset => 2,
            ResetReason::TargetUnreachable => 3,
            ResetReason::Shutdown => 4,
            ResetReason::AllStripesLost => 5,
            ResetReason::Auth => 6,
            ResetReason::Timeout => 7,
            ResetReason::Other(c) => c,
        }
    }

    pub fn from_code(c: u16) -> ResetReason {
        match c {
            1 => ResetReason::Protocol,
            2 => ResetReason::AppReset,
            3 => ResetReason::TargetUnreachable,
            4 => ResetReason::Shutdown,
            5 => ResetReason::AllStripesLost,
            6 => ResetReason::Auth,
            7 => ResetReason::Timeout,
            c => ResetReason::Other(c),
        }
    }
}

/// The payload of an RST frame: the reason's code and a message, cut to fit.
pub fn rst_payload(reason: ResetReason, msg: &str) -> Vec<u8> {
    let mut v = reason.code().to_be_bytes().to_vec();
    let mut end = msg.len().min(MAX_RST_PAYLOAD - 2);
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    v.extend_from_slice(&msg.as_bytes()[..end]);
    v
}

/// Splits an RST payload into its reason and message. The message is the
/// peer's text on its way into our logs: it is decoded lossily and every
/// control character (a newline that would forge a log line, an escape
/// sequence for the terminal) is escaped.
pub fn parse_rst(payload: &[u8]) -> (ResetReason, String) {
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    let text = String::from_utf8_lossy(&payload[2..]);
    let mut safe = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            safe.extend(c.escape_default());
        } else {
            safe.push(c);
        }
    }
    (ResetReason::from_code(code), safe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_type() {
        let cases: Vec<(FrameType, u8, u64, Vec<u8>)> = vec![
            (FrameType::Data, 0, 123_456_789_012, b"hello".to_vec()),
            (FrameType::Ack, ACK_FIN, u64::MAX, vec![]),
            (FrameType::Fin, 0, 42, vec![]),
            (
                FrameType::Rst,
                0,
                0,
                rst_payload(ResetReason::Timeout, "target refused"),
            ),
            (FrameType::Ping, 0, 99, vec![]),
            (FrameType::Pong, 0, 99, vec![]),
        ];
        let mut stream = Vec::new();
        for (ty, flags, value, p) in &cases {
            stream.extend(encode_vec(*ty, *flags, *value, p));
        }
        let mut at = 0;
        for (ty, flags, value, p) in &cases {
            let (f, n) = decode(&stream[at..], 65536).unwrap().unwrap();
            assert_eq!(f.header.ty, *ty);
            assert_eq!(f.header.flags, *flags);
            assert_eq!(f.header.value, *value);
            assert_eq!(f.payload, &p[..]);
            at += n;
        }
        assert_eq!(at, stream.len());
        assert_eq!(
            parse_rst(&rst_payload(ResetReason::Auth, "x")),
            (ResetReason::Auth, "x".to_string())
        );
    }

    #[test]
    fn a_peers_rst_text_cannot_forge_log_lines() {
        let p = rst_payload(
            ResetReason::AppReset,
            "bye\n[2026-12-01T00:00:00Z WARN] forged\x1b[2J caf\u{e9}",
        );
        let (_, msg) = parse_rst(&p);
        assert_eq!(
            msg,
            "bye\\n[2026-12-01T00:00:00Z WARN] forged\\u{1b}[2J caf\u{e9}"
        );
        assert!(!msg.chars().any(char::is_control));
    }

    #[test]
    fn split_payload_encodes_like_whole() {
        let whole = encode_vec(FrameType::Data, 0, 5, b"abcdef");
        let h = Header {
            ty: FrameType::Data,
            flags: 0,
            len: 6,
            value: 5,
        }
        .encode(&[b"ab", b"cdef"]);
        assert_eq!(&whole[..HEADER_LEN], &h[..]);
    }

    #[test]
    fn truncated_frames_need_more() {
        let f = encode_vec(FrameType::Data, 0, 0, &[9u8; 100]);
        for cut in 0..f.len() {
            assert_eq!(decode(&f[..cut], 65536), Ok(None), "cut at {cut}");
        }
        assert_eq!(needed(&f[..3], 65536), Ok(HEADER_LEN));
        assert_eq!(needed(&f[..HEADER_LEN], 65536), Ok(HEADER_LEN + 100));
    }

    #[test]
    fn oversized_frame_refused_at_header() {
        let mut f = encode_vec(FrameType::Data, 0, 0, &[1u8; 10]);
        f[field::LENGTH].copy_from_slice(&u32::MAX.to_be_bytes());
        // Only the header is present: the cap must trip without the payload.
        assert!(matches!(
            decode(&f[..HEADER_LEN], 65536),
            Err(FrameError::TooLarge { .. })
        ));
        let big = encode_vec(FrameType::Data, 0, 0, &vec![0u8; 70_000]);
        assert!(matches!(
            decode(&big, 65536),
            Err(FrameError::TooLarge { len: 70_000, .. })
        ));
    }

    #[test]
    fn every_single_bit_flip_is_caught() {
        let f = encode_vec(FrameType::Data, 0, 77, b"some payload bytes");
        for bit in 0..f.len() * 8 {
            let mut g = f.clone();
            g[bit / 8] ^= 1 << (bit % 8);
            match decode(&g, 65536) {
                Err(_) | Ok(None) => {}
                Ok(Some((frame, _))) => panic!("bit {bit} flip accepted: {frame:?}"),
            }
        }
    }

    #[test]
    fn bad_lengths_and_types() {
        let mut f = encode_vec(FrameType::Ack, 0, 1, b"");
        f[0] = 0;
        assert_eq!(decode(&f, 100), Err(FrameError::UnknownType(0)));
        let f = encode_vec(FrameType::Ack, 0, 1, b"x");
        assert!(matches!(decode(&f, 100), Err(FrameError::BadLength { .. })));
        let f = encode_vec(FrameType::Data, 0, 1, b"");
        assert!(matches!(decode(&f, 100), Err(FrameError::BadLength { .. })));
        let f = encode_vec(FrameType::Rst, 0, 0, b"x");
        assert!(matches!(decode(&f, 100), Err(FrameError::BadLength { .. })));
        let mut f = encode_vec(FrameType::Fin, 0, 1, b"");
        f[field::RESERVED.end - 1] = 1;
        assert_eq!(decode(&f, 100), Err(FrameError::ReservedBits(1)));
    }
}
