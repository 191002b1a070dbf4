//! The `frame` target: the frame codec on arbitrary byte streams, and the
//! sealed-record opener in front of it.

use crate::proto::frame::{
    self, ABSOLUTE_MAX_PAYLOAD, FrameError, FrameType, HEADER_LEN, MAX_RST_PAYLOAD, decode,
    encode_vec,
};

/// Receive caps the codec is tried with: degenerate, small, the protocol
/// minimum, the default, the absolute cap and "no cap" (which must still be
/// bounded by [`ABSOLUTE_MAX_PAYLOAD`]).
const FRAME_CAPS: [usize; 7] = [
    0,
    1,
    100,
    16 * 1024,
    256 * 1024,
    ABSOLUTE_MAX_PAYLOAD,
    usize::MAX,
];

/// Decodes frames from the front of `data` until it runs out or is corrupt,
/// with several receive caps; then the same with every frame's CRC patched
/// to the right value, so the checks behind the CRC see fuzzed headers too.
pub fn frame(data: &[u8]) {
    for &cap in &FRAME_CAPS {
        decode_stream(data, cap);
    }
    let mut fixed = data.to_vec();
    fix_crcs(&mut fixed);
    for &cap in &FRAME_CAPS {
        decode_stream(&fixed, cap);
    }
    sealed(data);
    for &cap in &FRAME_CAPS {
        if let Ok(f) = frame::decode_sealed(data, cap) {
            assert_eq!(HEADER_LEN + f.payload.len(), data.len(), "fills its record");
            let again =
                frame::encode_sealed_vec(f.header.ty, f.header.flags, f.header.value, f.payload);
            assert_eq!(again, data, "a sealed frame re-encodes to its bytes");
            check_lengths(f.header.ty, f.payload.len(), cap);
        }
    }
}

/// The record opener on `data` as it is (it never accepts a record nobody
/// sealed: the fuzzer cannot forge a tag), and on `data` sealed for real
/// and cut anywhere (a prefix waits, the whole record opens to `data`).
fn sealed(data: &[u8]) {
    use crate::proto::seal::{Opener, SealError, Sealer};
    let key = [0x5eu8; 32];
    for cap in [0, 64, 1 << 16] {
        match Opener::new(&key).open(&mut data.to_vec(), cap) {
            Ok(None)
            | Err(SealError::TooLarge { .. } | SealError::TooShort { .. })
            | Err(SealError::Authentication { record: 0 }) => {}
            other => panic!("a fuzzed record was {other:?}"),
        }
    }
    let mut wire = Vec::new();
    Sealer::new(&key)
        .seal(&[data], &mut wire)
        .expect("record 0");
    let cut = data.first().map_or(0, |&b| b as usize) % (wire.len() + 1);
    if cut < wire.len() {
        assert_eq!(
            Opener::new(&key).open(&mut wire[..cut].to_vec(), data.len()),
            Ok(None)
        );
    }
    let total = wire.len();
    let (plain, n) = Opener::new(&key)
        .open(&mut wire, data.len())
        .expect("opens")
        .expect("whole");
    assert_eq!((plain, n), (data, total));
}

/// Rewrites the CRC of each frame in `buf` (as far as its headers give
/// lengths), so that a stream of fuzzed headers decodes past the CRC check.
pub(super) fn fix_crcs(buf: &mut [u8]) {
    let mut at = 0;
    while buf.len() - at >= HEADER_LEN {
        let len = u32::from_be_bytes(buf[at + 4..at + 8].try_into().expect("4")) as usize;
        let end = match (at + HEADER_LEN).checked_add(len) {
            Some(e) if e <= buf.len() => e,
            _ => break,
        };
        let mut crc = crc32fast::Hasher::new();
        crc.update(&buf[at..at + 16]);
        crc.update(&buf[at + HEADER_LEN..end]);
        buf[at + 16..at + 20].copy_from_slice(&crc.finalize().to_be_bytes());
        at = end;
    }
}

fn decode_stream(data: &[u8], cap: usize) {
    let max = cap.min(ABSOLUTE_MAX_PAYLOAD);
    let mut at = 0;
    loop {
        let buf = &data[at..];
        let need = frame::needed(buf, cap);
        match decode(buf, cap) {
            Ok(None) => {
                let n = need.expect("needed() refused what decode() waits for");
                assert!(
                    n > buf.len(),
                    "decode waits but needed() says {n} of {} is enough",
                    buf.len()
                );
                assert!(n >= HEADER_LEN && n <= HEADER_LEN + max.max(MAX_RST_PAYLOAD));
                return;
            }
            Ok(Some((f, n))) => {
                assert!(n <= buf.len(), "consumed {n} of {}", buf.len());
                assert_eq!(n, HEADER_LEN + f.payload.len());
                assert_eq!(f.header.len as usize, f.payload.len());
                assert_eq!(need, Ok(n), "needed() disagrees with decode()");
                check_lengths(f.header.ty, f.payload.len(), max);
                // A decoded frame is canonical: encoding it again gives the
                // same bytes (reserved bits are zero, the CRC matched).
                let again = encode_vec(f.header.ty, f.header.flags, f.header.value, f.payload);
                assert_eq!(again, &buf[..n], "re-encoding changed the frame");
                // ... and so does a payload cut in two, as from a ring buffer.
                let cut = f.payload.len() / 2;
                let h = f.header.encode(&[&f.payload[..cut], &f.payload[cut..]]);
                assert_eq!(&h[..], &buf[..HEADER_LEN]);
                // Any truncation of a good frame is "need more", never an error.
                for cut in [0, HEADER_LEN - 1, HEADER_LEN, n - 1] {
                    if cut < n {
                        assert_eq!(decode(&buf[..cut], cap), Ok(None), "cut at {cut}");
                    }
                }
                if f.header.ty == FrameType::Rst {
                    let (code, msg) = frame::parse_rst(f.payload);
                    assert_eq!(code.code().to_be_bytes(), [f.payload[0], f.payload[1]]);
                    assert!(msg.len() <= 6 * MAX_RST_PAYLOAD);
                    assert!(
                        !msg.chars().any(char::is_control),
                        "control characters reach the logs"
                    );
                }
                at += n;
            }
            Err(e) => {
                let _ = e.to_string();
                match &e {
                    FrameError::CrcMismatch { expected, computed } => {
                        assert_ne!(expected, computed);
                        // The header was fine: needed() names the whole frame.
                        let n = need.expect("header accepted by decode()");
                        assert!(n <= buf.len());
                    }
                    FrameError::TooLarge { len, max: m } => {
                        assert_eq!(*m, max);
                        assert!(*len as usize > max);
                        assert_eq!(need, Err(e.clone()));
                    }
                    _ => assert_eq!(need, Err(e.clone()), "needed() and decode() disagree"),
                }
                assert!(buf.len() >= HEADER_LEN, "an error before the header was in");
                return;
            }
        }
    }
}

fn check_lengths(ty: FrameType, len: usize, max: usize) {
    match ty {
        FrameType::Data => assert!(len >= 1 && len <= max, "DATA of {len} with cap {max}"),
        FrameType::Rst => assert!((2..=MAX_RST_PAYLOAD).contains(&len), "RST of {len}"),
        _ => assert_eq!(len, 0, "{ty:?} with a payload"),
    }
}
