//! Fuzzing entry points: hostile input against the sans-IO protocol.
//!
//! Each function takes arbitrary bytes, drives one part of [`crate::proto`]
//! with them and panics if an invariant breaks. The libFuzzer targets in
//! `fuzz/fuzz_targets/` are one-line wrappers around them, and
//! `pipes/tests/fuzz_corpus.rs` replays the committed corpus
//! (`fuzz/corpus/<target>/`) and crash reproducers (`fuzz/regressions/<target>/`)
//! through them on stable Rust, so CI checks every seed without nightly.
//!
//! - [`frame()`]: the frame codec ([`decode`], [`frame::needed`]) on a raw byte
//!   stream, as is and with every frame's CRC fixed up so the fuzzer reaches
//!   the checks behind it.
//! - [`handshake`]: the ClientHello / ServerHello parsers on the input and
//!   its prefixes, round trips, and the key file parser.
//! - [`session`]: the input is a little program that drives a [`Session`]
//!   (stripes up and down, frames from the peer, application reads and
//!   writes, transmits, time), checked against a shadow model of both
//!   directions after every step.
//!
//! Nothing here is used by the binaries; it is compiled into `pipes` so that
//! the stable test suite and the fuzz crate share one implementation.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::proto::auth::Key;
use crate::proto::frame::{
    self, ABSOLUTE_MAX_PAYLOAD, ACK_FIN, FrameError, FrameType, HEADER_LEN, Header,
    MAX_RST_PAYLOAD, ResetReason, decode, encode_vec,
};
use crate::proto::handshake::{
    CLIENT_HELLO_LEN, CLIENT_MAGIC, ClientHello, HandshakeError, MAX_STRIPES, MIN_MAX_PAYLOAD,
    MIN_WINDOW, SERVER_HELLO_LEN, SERVER_MAGIC, ServerHello, Status,
};
use crate::proto::reassembly::ReassemblyError;
use crate::proto::session::{Session, SessionConfig, SessionError, Transmit};

// ---------------------------------------------------------------------------
// frame
// ---------------------------------------------------------------------------

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
}

/// Rewrites the CRC of each frame in `buf` (as far as its headers give
/// lengths), so that a stream of fuzzed headers decodes past the CRC check.
fn fix_crcs(buf: &mut [u8]) {
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
                    assert!(msg.len() <= 3 * MAX_RST_PAYLOAD);
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

// ---------------------------------------------------------------------------
// handshake
// ---------------------------------------------------------------------------

/// Both hello parsers on `data` and every prefix up to a whole hello, with
/// round trips; the key file parser on `data` as text; and, when there are
/// enough bytes, the proofs over a fuzzed transcript.
pub fn handshake(data: &[u8]) {
    client_hello(data);
    server_hello(data);
    key_file(data);
    proofs(data);
}

/// Magic prefix rule shared by both parsers: `Err(BadMagic)` exactly when
/// the first `min(len, 4)` bytes differ from the magic.
fn magic_ok(b: &[u8], magic: [u8; 4]) -> bool {
    let n = b.len().min(4);
    b[..n] == magic[..n]
}

fn client_hello(data: &[u8]) {
    let full = ClientHello::parse(data);
    for cut in 0..data.len().min(CLIENT_HELLO_LEN) {
        let p = ClientHello::parse(&data[..cut]);
        if magic_ok(&data[..cut], CLIENT_MAGIC) {
            assert_eq!(p, Ok(None), "a short prefix of {cut} bytes");
        } else {
            assert!(matches!(p, Err(HandshakeError::BadMagic(_))), "{p:?}");
        }
    }
    if data.len() > CLIENT_HELLO_LEN {
        assert_eq!(
            full,
            ClientHello::parse(&data[..CLIENT_HELLO_LEN]),
            "trailing bytes mattered"
        );
    }
    match &full {
        Ok(Some(h)) => {
            assert!(data.len() >= CLIENT_HELLO_LEN);
            assert!(h.count >= 1 && h.count <= MAX_STRIPES && h.index < h.count);
            assert!(h.window >= MIN_WINDOW && h.max_payload >= MIN_MAX_PAYLOAD);
            // The server's proof covers `hello.encode()`, the client's the
            // bytes it sent: they must be the same bytes.
            assert_eq!(
                &h.encode()[..],
                &data[..CLIENT_HELLO_LEN],
                "hello not canonical"
            );
            assert_eq!(ClientHello::parse(&h.encode()), Ok(Some(h.clone())));
        }
        Ok(None) => {
            assert!(data.len() < CLIENT_HELLO_LEN && magic_ok(data, CLIENT_MAGIC));
        }
        Err(e) => {
            let _ = (e.to_string(), e.status());
            assert_eq!(
                matches!(e, HandshakeError::BadMagic(_)),
                !magic_ok(data, CLIENT_MAGIC)
            );
            if !matches!(e, HandshakeError::BadMagic(_)) {
                assert!(data.len() >= CLIENT_HELLO_LEN);
                assert_ne!(e.status(), Status::Ok);
            }
        }
    }
}

fn server_hello(data: &[u8]) {
    let full = ServerHello::parse(data);
    for cut in 0..data.len().min(SERVER_HELLO_LEN) {
        let p = ServerHello::parse(&data[..cut]);
        if magic_ok(&data[..cut], SERVER_MAGIC) {
            assert_eq!(p, Ok(None), "a short prefix of {cut} bytes");
        } else {
            assert!(matches!(p, Err(HandshakeError::BadMagic(_))), "{p:?}");
        }
    }
    if data.len() > SERVER_HELLO_LEN {
        assert_eq!(
            full,
            ServerHello::parse(&data[..SERVER_HELLO_LEN]),
            "trailing bytes mattered"
        );
    }
    match &full {
        Ok(Some(h)) => {
            assert!(data.len() >= SERVER_HELLO_LEN);
            assert_eq!(Status::from_code(h.status.code()), h.status);
            assert_eq!(h.status.code(), data[5]);
            let _ = h.status.to_string();
            if h.status == Status::Ok {
                assert!(h.window >= MIN_WINDOW && h.max_payload >= MIN_MAX_PAYLOAD);
            }
            let enc = h.encode();
            // Bytes 6..8 are reserved: the parser ignores them, so the only
            // difference a round trip may make is zeroing them.
            let mut want = [0u8; SERVER_HELLO_LEN];
            want.copy_from_slice(&data[..SERVER_HELLO_LEN]);
            want[6..8].fill(0);
            assert_eq!(enc, want, "round trip changed more than the reserved bytes");
            assert_eq!(ServerHello::parse(&enc), Ok(Some(h.clone())));
            let t = h.transcript();
            assert_eq!(t[..32], enc[..32]);
            assert!(t[32..].iter().all(|&b| b == 0));
        }
        Ok(None) => {
            assert!(data.len() < SERVER_HELLO_LEN && magic_ok(data, SERVER_MAGIC));
        }
        Err(e) => {
            let _ = (e.to_string(), e.status());
            assert_eq!(
                matches!(e, HandshakeError::BadMagic(_)),
                !magic_ok(data, SERVER_MAGIC)
            );
        }
    }
}

fn key_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(k) = Key::parse(&text) {
        assert_eq!(Key::parse(&k.to_file_text()), Ok(k.clone()));
        // A key is exactly 64 hex digits once comments and blanks are gone.
        let digits: usize = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.len())
            .sum();
        assert_eq!(digits, 64);
        let key_lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        assert!(
            key_lines
                .flat_map(str::chars)
                .all(|c| c.is_ascii_hexdigit()),
            "a key with non-hex characters was accepted"
        );
    }
}

fn proofs(data: &[u8]) {
    if data.len() < 32 + CLIENT_HELLO_LEN + SERVER_HELLO_LEN {
        return;
    }
    let key = Key::from_bytes(data[..32].try_into().expect("32"));
    let ch: [u8; CLIENT_HELLO_LEN] = data[32..96].try_into().expect("64");
    let sh: [u8; SERVER_HELLO_LEN] = data[96..160].try_into().expect("64");
    let sp = key.server_proof(&ch, &sh);
    let cp = key.client_proof(&ch, &sh);
    assert!(key.verify_server(&ch, &sh, &sp));
    assert!(key.verify_client(&ch, &sh, &cp));
    assert!(
        !key.verify_client(&ch, &sh, &sp),
        "a server proof passed as a client's"
    );
    assert!(
        !key.verify_server(&ch, &sh, &cp),
        "a client proof passed as a server's"
    );
    // Whatever else the input holds, as a proof, is wrong (unless it is the
    // proof itself, which a fuzzer will not find).
    let guess = &data[160..data.len().min(192)];
    if guess != sp {
        assert!(!key.verify_server(&ch, &sh, guess));
    }
    if guess != cp {
        assert!(!key.verify_client(&ch, &sh, guess));
    }
}

// ---------------------------------------------------------------------------
// session
// ---------------------------------------------------------------------------

/// Byte `o` of the stream the (simulated) peer sends us. Every DATA frame
/// the harness builds carries these bytes, so any byte the session delivers
/// can be checked against its offset.
fn peer_byte(o: u64) -> u8 {
    let x = o.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8 ^ (o as u8).rotate_left(3)
}

/// Byte `o` of the stream our application writes.
fn app_byte(o: u64) -> u8 {
    let x = (o ^ 0x5555).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    (x >> 48) as u8 ^ (o >> 8) as u8
}

/// Reads the program. Past the end every read is `None` and the program stops.
struct Input<'a> {
    data: &'a [u8],
    at: usize,
}

impl Input<'_> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.data.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        let b = self.data.get(self.at..self.at + n)?;
        self.at += n;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.bytes(2)?.try_into().expect("2")))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.bytes(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.bytes(8)?.try_into().expect("8")))
    }
}

/// A set of byte ranges, merged when they overlap or touch. The merge is
/// written again here rather than shared with the session's: this is the
/// model that checks the session, and a bug in a shared merge would agree
/// with itself.
#[derive(Default, Debug)]
struct Ranges(BTreeMap<u64, u64>);

impl Ranges {
    fn add(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        let touching: Vec<u64> = self
            .0
            .range(..=end)
            .rev()
            .take_while(|&(_, &e)| e >= start)
            .map(|(&s, _)| s)
            .collect();
        for s in touching {
            let e = self.0.remove(&s).expect("listed");
            start = start.min(s);
            end = end.max(e);
        }
        self.0.insert(start, end);
    }

    /// End of the range that covers `from`, or `from`.
    fn contiguous_from(&self, from: u64) -> u64 {
        match self.0.range(..=from).next_back() {
            Some((_, &e)) if e >= from => e,
            _ => from,
        }
    }

    /// Ranges that start after `from` (out-of-order pieces beyond it).
    fn after(&self, from: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.range(from + 1..).map(|(&s, &e)| (s, e))
    }

    fn max_end(&self) -> u64 {
        self.0.last_key_value().map_or(0, |(_, &e)| e)
    }
}

/// Limits that keep one fuzz input cheap.
const MAX_OPS: usize = 2048;
const MAX_WRITE: usize = 300_000;
const MAX_TRANSMITS_PER_POLL: usize = 100_000;
const STRIPE_TIMEOUT: Duration = Duration::from_secs(5);
const KEEPALIVE: Duration = Duration::from_secs(1);
const IDLE_KEEPALIVE: Duration = Duration::from_secs(4);

/// Drives a [`Session`] with the program in `data` and checks it against a
/// model of what both ends sent after every step.
///
/// The program starts with five configuration bytes (stripe count 2..=4,
/// receive window, receive cap, frame size, unsent limit and reassembly
/// piece limit), then one opcode byte (taken modulo 21) per operation,
/// followed by its arguments:
///
/// | op | operation |
/// |---:|---|
/// | 0, 1, 2, 3 | stripe up (replacing a live one) / down / writable or not / kernel numbers (queue, delivered, RTT) |
/// | 4, 5, 6, 7 | application writes N bytes / consumes N / consumes all / shuts down its side |
/// | 8 | the IO side copies out stale half-written frames (or is late), then `poll_transmit` until `None`; bit masks say which transmits reach the peer (a loss kills the stripe), which DATA frames are left half written, and whether the peer ACKs |
/// | 9, 10 | the peer ACKs what reached it / a hostile ACK (beyond what was sent, old, arbitrary, FIN_ACK flags) |
/// | 11, 12 | the peer cuts its next DATA frame (within our window) / one of its cut frames arrives, in any order |
/// | 13 | odd DATA: a re-sent range, around our read position, at the window's edge, past the FIN, anywhere |
/// | 14 | the peer's FIN, or a contradicting one |
/// | 15 | PING or PONG |
/// | 16 | time passes, `handle_timeout`; a stripe it names goes down |
/// | 17 | a raw frame: any type, flags, reserved bits, value, length (CRC correct) |
/// | 18 | the peer's window and frame cap from its hello (once) |
/// | 19 | a half-written frame is finished (`frame_written`), or its stripe dies |
/// | 20 | abort, or release idle buffers |
///
/// Frames from the peer are encoded with a correct CRC and decoded with
/// our receive cap, as the framed pipe does, so they reach the state
/// machine. DATA payloads are a fixed function of their offsets, and so
/// are the bytes the application writes, so every byte delivered either
/// way can be checked. Checked after every operation:
/// the session's verdict on every frame (accepted, or exactly which
/// protocol violation) against the model's; readable bytes are exactly the
/// accepted bytes, in order; every transmit is a valid frame on a stripe
/// that is up and writable, DATA within the peer's window and cap and
/// carrying the bytes written at its offset, ACKs equal to what the
/// application consumed, FIN at the end of the stream, PONG answering a
/// PING, RST only after an abort; buffers within the windows. At the end,
/// if the program stayed within the protocol, fresh stripes and a
/// cooperative peer must bring both streams (and FINs) to their ends.
pub fn session(data: &[u8]) {
    let mut input = Input { data, at: 0 };
    let Some(mut sim) = Sim::new(&mut input) else {
        return;
    };
    for _ in 0..MAX_OPS {
        let Some(op) = input.u8() else { break };
        if sim.step(op, &mut input).is_none() {
            break;
        }
        sim.check_state();
    }
    sim.settle();
}

/// A DATA frame a stripe's socket took only part of.
#[derive(Clone, Debug)]
struct Partial {
    offset: u64,
    len: usize,
    /// Its payload, once the IO side copied it out of the send buffer
    /// because the peer acknowledged those bytes through another stripe
    /// ([`Session::stale_pins`]).
    detached: Option<Vec<u8>>,
}

/// Acknowledged bytes the session may keep beyond the peer's window for
/// frames still being written (its `PIN_ALLOWANCE`).
const PIN_ALLOWANCE: u64 = 1 << 20;

/// The harness: the session under test, the simulated peer and the model.
struct Sim {
    s: Session,
    n: usize,
    window: u64,
    recv_cap: usize,
    frame_size: usize,
    unsent_limit: u64,
    max_pieces: usize,
    base: Instant,
    now: Instant,
    scratch: Vec<u8>,

    // Stripes, as the IO side knows them.
    up: Vec<bool>,
    writable: Vec<bool>,
    last_heard: Vec<Instant>,
    /// Since when the session has had data in flight, as the model sees it.
    busy_since: Option<Instant>,
    pong_due: Vec<Option<u64>>,
    kernel_delivered: Vec<u64>,
    /// A DATA frame the stripe's socket took only part of: its bytes must
    /// stay readable until the rest is written ([`Session::frame_written`]).
    partial: Vec<Option<Partial>>,
    /// The most acknowledged bytes a partial frame has kept in the send
    /// buffer (they count against memory, not against the window).
    max_held: u64,
    last_ping: u64,
    pings: std::collections::BTreeSet<u64>,

    // Peer -> us: the peer's stream and what the session accepted of it.
    /// Accepted DATA ranges (merged).
    got: Ranges,
    /// Bytes our application consumed.
    consumed: u64,
    fin_in: Option<u64>,
    /// Highest ACK we sent, and the highest that reached the peer.
    ack_out: u64,
    peer_acked_by_us: u64,
    /// The peer's own send state: its next new offset, its FIN, and
    /// frames built but not delivered yet (delivered in any order).
    peer_next: u64,
    peer_fin: Option<u64>,
    in_flight: Vec<(u64, usize)>,

    // Us -> peer.
    written: u64,
    fin_out: Option<u64>,
    /// One past the highest offset the session put in a DATA frame.
    sent_end: u64,
    /// Highest ACK the session accepted.
    acked: u64,
    fin_acked: bool,
    peer_window: u64,
    peer_max_payload: usize,
    peer_params_set: bool,
    /// What reached the peer.
    peer_got: Ranges,
    peer_got_fin: Option<u64>,

    aborted: Option<u16>,
    rst_sent: Vec<bool>,
    /// Something non-protocol happened (a hostile frame, an error, an
    /// abort): the end-of-program liveness check does not apply.
    hostile: bool,
}

impl Sim {
    fn new(input: &mut Input<'_>) -> Option<Sim> {
        let n = 2 + (input.u8()? % 3) as usize;
        let window = [4096u32, 5000, 65_536, MIN_WINDOW, 1 << 20][(input.u8()? % 5) as usize];
        let recv_cap = [512usize, 1000, 16_384, 65_536][(input.u8()? % 4) as usize];
        let frame_size = [512usize, 1000, 4096, 32_768][(input.u8()? % 4) as usize];
        let b = input.u8()?;
        let unsent_limit = [1024usize, 16_384, 100_000, 256 * 1024][(b % 4) as usize];
        let max_pieces = [2usize, 8, 16_384][((b >> 2) % 3) as usize];
        let cfg = SessionConfig {
            window,
            max_payload: recv_cap as u32,
            frame_size,
            unsent_limit,
            max_pieces,
            rate_interval: Duration::from_millis(100),
            keepalive: KEEPALIVE,
            idle_keepalive: IDLE_KEEPALIVE,
            stripe_timeout: STRIPE_TIMEOUT,
        };
        let base = Instant::now();
        Some(Sim {
            s: Session::new(cfg, n),
            n,
            window: window as u64,
            recv_cap,
            frame_size,
            unsent_limit: unsent_limit as u64,
            max_pieces,
            base,
            now: base,
            scratch: Vec::new(),
            up: vec![false; n],
            writable: vec![false; n],
            last_heard: vec![base; n],
            busy_since: None,
            pong_due: vec![None; n],
            kernel_delivered: vec![0; n],
            partial: vec![None; n],
            max_held: 0,
            last_ping: 0,
            pings: Default::default(),
            got: Ranges::default(),
            consumed: 0,
            fin_in: None,
            ack_out: 0,
            peer_acked_by_us: 0,
            peer_next: 0,
            peer_fin: None,
            in_flight: Vec::new(),
            written: 0,
            fin_out: None,
            sent_end: 0,
            acked: 0,
            fin_acked: false,
            peer_window: MIN_WINDOW as u64,
            peer_max_payload: MIN_MAX_PAYLOAD as usize,
            peer_params_set: false,
            peer_got: Ranges::default(),
            peer_got_fin: None,
            aborted: None,
            rst_sent: vec![false; n],
            hostile: false,
        })
    }

    /// The first stripe that is up (0 if none is).
    fn first_up(&self) -> usize {
        (0..self.n).find(|&i| self.up[i]).unwrap_or(0)
    }

    /// A stripe index: mostly valid, sometimes one past the end.
    fn stripe_arg(&self, b: u8) -> usize {
        b as usize % (self.n + 1)
    }

    fn ready(&self) -> u64 {
        self.got.contiguous_from(self.consumed).max(self.consumed)
    }

    /// One operation. `None` when the input ran out.
    fn step(&mut self, op: u8, input: &mut Input<'_>) -> Option<()> {
        match op % 21 {
            0 => {
                let i = input.u8()? as usize % self.n;
                self.stripe_up(i);
            }
            1 => {
                let i = self.stripe_arg(input.u8()?);
                self.stripe_down(i);
            }
            2 => {
                // The socket reports writable (not while a frame is half
                // written: the pipe first finishes it) or WouldBlock.
                let b = input.u8()?;
                let i = self.stripe_arg(b >> 1);
                let w = b & 1 == 1 && self.partial.get(i).is_none_or(|p| p.is_none());
                self.s.set_stripe_writable(i, w);
                if i < self.n {
                    self.writable[i] = w && self.up[i];
                }
            }
            3 => {
                let i = self.stripe_arg(input.u8()?);
                let queued = input.u16()? as u64 * 64;
                let step = input.u16()? as u64 * 16;
                let rtt = input.u8()?;
                let delivered = match self.kernel_delivered.get_mut(i) {
                    Some(d) => {
                        *d += step;
                        *d
                    }
                    None => step,
                };
                let rtt = (rtt > 0).then(|| Duration::from_millis(rtt as u64));
                self.s
                    .update_stripe(i, self.now, (queued, queued / 2), delivered, rtt);
            }
            4 => {
                let a = input.u8()? as usize;
                let b = input.u8()?;
                let len = ((a + 1) << (b % 12)).min(MAX_WRITE);
                self.app_write(len);
            }
            5 => {
                let b = input.u16()?;
                self.app_consume(b as usize * 16 + 1);
            }
            6 => self.app_consume(usize::MAX),
            7 => {
                self.fin_out.get_or_insert(self.written);
                self.s.shutdown_write();
            }
            8 => {
                let mode = input.u16()?;
                let partial = input.u8()?;
                self.poll(mode, partial);
            }
            9 => {
                let i = self.stripe_arg(input.u8()?);
                self.peer_ack(i);
            }
            10 => {
                let kind = input.u8()?;
                let i = self.stripe_arg(input.u8()?);
                self.hostile_ack(i, kind, input)?;
            }
            11 => {
                // The peer cuts a new frame of its stream (sent later).
                let len = input.u16()? as usize + 1;
                self.peer_new_data(len);
            }
            12 => {
                // One of the peer's frames arrives, in any order.
                let k = input.u8()? as usize;
                let i = self.stripe_arg(input.u8()?);
                if !self.in_flight.is_empty() {
                    let (off, len) = self.in_flight.remove(k % self.in_flight.len());
                    self.deliver_data(i, off, len, false);
                }
            }
            13 => {
                let kind = input.u8()?;
                let i = self.stripe_arg(input.u8()?);
                self.odd_data(i, kind, input)?;
            }
            14 => {
                let kind = input.u8()?;
                let i = self.stripe_arg(input.u8()?);
                self.peer_fin(i, kind, input)?;
            }
            15 => {
                let i = self.stripe_arg(input.u8()?);
                let value = match input.u8()? {
                    0..=127 => self.last_ping,
                    _ => input.u64()?,
                };
                let ty = if input.u8()? & 1 == 0 {
                    FrameType::Ping
                } else {
                    FrameType::Pong
                };
                self.deliver(i, ty as u8, 0, 0, value, &[]);
            }
            16 => {
                let ms = input.u8()? as u64;
                let ms = if ms >= 200 {
                    (ms - 199) * 1000
                } else {
                    ms * 10
                };
                self.now += Duration::from_millis(ms);
                self.timeout();
            }
            17 => {
                // A raw frame with a correct CRC: any type byte, flags,
                // reserved bits, value; DATA payloads are the peer's bytes.
                let i = self.stripe_arg(input.u8()?);
                let ty = input.u8()?;
                let flags = input.u8()?;
                let reserved = if input.u8()? < 240 { 0 } else { input.u16()? };
                let value = input.u64()?;
                let len = input.u16()? as usize;
                let payload = if ty == FrameType::Data as u8 {
                    self.peer_bytes(value, len)
                } else {
                    input.bytes(len.min(input.data.len() - input.at))?.to_vec()
                };
                self.hostile = true;
                self.deliver(i, ty, flags, reserved, value, &payload);
            }
            18 => {
                if !self.peer_params_set {
                    let w = input.u32()?;
                    let m = input.u32()?;
                    self.s.set_peer_params(w, m);
                    self.peer_window = w.max(MIN_WINDOW) as u64;
                    self.peer_max_payload = m.max(MIN_MAX_PAYLOAD) as usize;
                    self.peer_params_set = true;
                }
            }
            19 => {
                // The rest of a half-written frame goes out, or the stripe
                // dies with it.
                let b = input.u8()?;
                let i = b as usize % self.n;
                if b & 0x80 == 0 {
                    self.flush(i);
                } else if self.partial[i].is_some() {
                    self.stripe_down(i);
                }
            }
            _ => match input.u8()? {
                0..=7 => {
                    let code = input.u16()?;
                    self.hostile = true;
                    self.s.abort(ResetReason::from_code(code), "fuzz abort");
                    self.aborted.get_or_insert(code);
                }
                _ => self.s.release_idle_buffers(),
            },
        }
        Some(())
    }

    // ---- stripes ----

    fn stripe_up(&mut self, i: usize) {
        // As the striped pipe does when a stripe replaces a live one.
        if self.up[i] {
            self.stripe_down(i);
        }
        self.s.stripe_up(i, self.now);
        self.up[i] = true;
        self.writable[i] = true;
        self.last_heard[i] = self.now;
        self.pong_due[i] = None;
        self.kernel_delivered[i] = 0;
        self.rst_sent[i] = false;
        self.partial[i] = None;
    }

    fn stripe_down(&mut self, i: usize) {
        self.s.stripe_down(i);
        if i < self.n {
            self.up[i] = false;
            self.writable[i] = false;
            // Whatever was half written is lost with the connection.
            self.partial[i] = None;
        }
    }

    /// Stripe `i`'s socket takes the rest of its half-written frame: the
    /// bytes must still be there, unchanged, whatever was acknowledged
    /// meanwhile (the peer may have had them from another stripe).
    fn flush(&mut self, i: usize) {
        let Some(Partial {
            offset,
            len,
            detached,
        }) = self.partial[i].take()
        else {
            return;
        };
        if detached.is_none() {
            self.check_payload(offset, len);
        }
        self.s.frame_written(i);
        self.peer_got.add(offset, offset + len as u64);
        self.s.set_stripe_writable(i, true);
        self.writable[i] = self.up[i];
    }

    fn timeout(&mut self) {
        // Busy (data or a FIN in flight) is the session's own call; the
        // model checks what follows from it.
        let busy = self.s.is_busy_at(self.now);
        self.busy_since = match (busy, self.busy_since) {
            (true, None) => Some(self.now),
            (true, since) => since,
            (false, _) => None,
        };
        // Silence before the PING (quick when busy, rare when idle), then
        // the same grace either way.
        let probe = if busy { KEEPALIVE } else { IDLE_KEEPALIVE };
        let limit = probe + (STRIPE_TIMEOUT - KEEPALIVE);
        for _ in 0..=self.n {
            let dead = self.s.handle_timeout(self.now);
            let expect = (0..self.n).find(|&i| {
                let from = self
                    .busy_since
                    .map_or(self.last_heard[i], |b| b.max(self.last_heard[i]));
                self.up[i] && self.now.saturating_duration_since(from) >= limit
            });
            assert_eq!(dead, expect, "handle_timeout named the wrong stripe");
            match dead {
                Some(i) => self.stripe_down(i),
                None => return,
            }
        }
        panic!("handle_timeout kept naming stripes");
    }

    // ---- application ----

    /// Acknowledged bytes that half-written frames (not yet copied out)
    /// still keep in the send buffer.
    fn held(&self) -> u64 {
        self.partial
            .iter()
            .flatten()
            .filter(|p| p.detached.is_none())
            .map(|p| self.acked.saturating_sub(p.offset))
            .max()
            .unwrap_or(0)
    }

    fn app_write(&mut self, len: usize) {
        let window_room = (self.acked + self.peer_window).saturating_sub(self.written);
        let unsent_room = self
            .unsent_limit
            .saturating_sub(self.written - self.sent_end);
        // Acknowledged bytes a half-written frame still pins count against
        // the session's allowance beyond the window.
        let held = self.held();
        let send_base = self.acked - held;
        let pin_room =
            (self.peer_window + held.min(PIN_ALLOWANCE)).saturating_sub(self.written - send_base);
        let expect = if self.fin_out.is_some() || self.aborted.is_some() {
            0
        } else {
            (len as u64).min(window_room).min(unsent_room).min(pin_room)
        };
        let can_expect = self.fin_out.is_none()
            && self.aborted.is_none()
            && window_room > 0
            && unsent_room > 0
            && pin_room > 0;
        assert_eq!(
            self.s.can_write(),
            can_expect,
            "can_write() must say whether write() takes a byte"
        );
        // One byte more than the session should take is enough to see
        // that it stops at the right place (and is much cheaper than `len`).
        let offer = len.min(expect as usize + 1);
        self.scratch.clear();
        let w = self.written;
        self.scratch
            .extend((0..offer as u64).map(|k| app_byte(w + k)));
        let n = self.s.write(&self.scratch);
        assert_eq!(n as u64, expect, "write took {n}, expected {expect}");
        self.written += n as u64;
    }

    /// The application takes up to `want` bytes; every byte it takes is
    /// checked against the peer's stream.
    fn app_consume(&mut self, want: usize) {
        self.check_readable();
        let r = self.s.readable();
        let n = r.len().min(want);
        for (k, &b) in r[..n].iter().enumerate() {
            let o = self.consumed + k as u64;
            assert_eq!(b, peer_byte(o), "delivered a wrong byte at offset {o}");
        }
        self.s.consume(n);
        self.consumed += n as u64;
    }

    // ---- frames from the peer ----

    fn peer_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|k| peer_byte(offset.wrapping_add(k)))
            .collect()
    }

    /// The peer cuts its next frame, within the window we gave it.
    fn peer_new_data(&mut self, len: usize) {
        if self.peer_fin.is_some() {
            return;
        }
        let room = (self.peer_acked_by_us + self.window).saturating_sub(self.peer_next);
        let len = (len as u64).min(room).min(self.recv_cap as u64);
        if len == 0 {
            return;
        }
        self.in_flight.push((self.peer_next, len as usize));
        self.peer_next += len;
    }

    /// DATA the protocol allows (a duplicate, a re-sent range) or not (past
    /// the window, past the FIN, beyond the cap, anywhere).
    fn odd_data(&mut self, i: usize, kind: u8, input: &mut Input<'_>) -> Option<()> {
        let len = input.u16()? as usize % (self.recv_cap + 2) + 1;
        let delta = input.u16()? as u64;
        let offset = match kind % 6 {
            // A range the peer sent before (a re-send after a stripe loss):
            // within the protocol.
            0 => {
                let off = self.peer_next.saturating_sub(delta);
                let len = (len as u64)
                    .min(self.peer_next - off)
                    .min(self.recv_cap as u64);
                if len > 0 {
                    self.deliver_data(i, off, len as usize, false);
                }
                return Some(());
            }
            // Around what we have delivered or have ready.
            1 => self.consumed + delta % (self.window + 64),
            2 => self.ready().saturating_sub(delta % 64),
            // At the window's edge, give or take a few bytes.
            3 => {
                let edge = self.consumed + self.window;
                (edge + delta % 5).saturating_sub(len as u64 + 2)
            }
            // Anywhere.
            4 => input.u64()?,
            // Just past the FIN (or the peer's end).
            _ => self
                .fin_in
                .unwrap_or(self.peer_next)
                .saturating_add(delta % 4),
        };
        self.deliver_data(i, offset, len, true);
        Some(())
    }

    fn deliver_data(&mut self, i: usize, offset: u64, len: usize, hostile: bool) {
        let payload = self.peer_bytes(offset, len);
        self.hostile |= hostile;
        self.deliver(i, FrameType::Data as u8, 0, 0, offset, &payload);
    }

    /// An ACK of what reached the peer, as the peer would send it.
    fn peer_ack(&mut self, i: usize) {
        let v = self.peer_got.contiguous_from(0);
        let flags = if self.peer_got_fin == Some(v) {
            ACK_FIN
        } else {
            0
        };
        self.deliver(i, FrameType::Ack as u8, flags, 0, v, &[]);
    }

    fn hostile_ack(&mut self, i: usize, kind: u8, input: &mut Input<'_>) -> Option<()> {
        let d = input.u16()? as u64;
        let v = match kind % 5 {
            0 => self.sent_end.saturating_add(d % 4),
            1 => self.sent_end.saturating_sub(d),
            2 => self.acked.saturating_sub(d),
            3 => self.fin_out.unwrap_or(self.sent_end),
            _ => input.u64()?,
        };
        let flags = input.u8()?;
        // An ACK is within the protocol if the peer really has the bytes.
        if v > self.peer_got.contiguous_from(0)
            || (flags & ACK_FIN != 0 && self.peer_got_fin != Some(v))
        {
            self.hostile = true;
        }
        self.deliver(i, FrameType::Ack as u8, flags, 0, v, &[]);
        Some(())
    }

    fn peer_fin(&mut self, i: usize, kind: u8, input: &mut Input<'_>) -> Option<()> {
        let value = match kind % 4 {
            // The peer closes its stream where it is.
            0 | 1 => {
                let f = *self.peer_fin.get_or_insert(self.peer_next);
                self.deliver(i, FrameType::Fin as u8, 0, 0, f, &[]);
                return Some(());
            }
            2 => {
                let seen = self.got.max_end().max(self.consumed);
                (seen + input.u8()? as u64 % 3).saturating_sub(1)
            }
            _ => input.u64()?,
        };
        self.hostile = true;
        self.deliver(i, FrameType::Fin as u8, 0, 0, value, &[]);
        Some(())
    }

    /// Puts a frame on the wire of stripe `i` (with a correct CRC), decodes
    /// it as the framed pipe would with our receive cap, hands it to the
    /// session and compares the verdict with the model's.
    fn deliver(&mut self, i: usize, ty: u8, flags: u8, reserved: u16, value: u64, payload: &[u8]) {
        let mut wire = vec![0u8; HEADER_LEN];
        wire[0] = ty;
        wire[1] = flags;
        wire[2..4].copy_from_slice(&reserved.to_be_bytes());
        wire[4..8].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        wire[8..16].copy_from_slice(&value.to_be_bytes());
        wire.extend_from_slice(payload);
        fix_crcs(&mut wire);

        let f = match decode(&wire, self.recv_cap) {
            Ok(Some((f, n))) => {
                assert_eq!(n, wire.len());
                f
            }
            Ok(None) => panic!("a whole frame decoded as incomplete"),
            Err(e) => {
                // The codec refuses it: the real pipe fails the session
                // before the session sees anything.
                let valid_ty = (1..=6).contains(&ty);
                assert!(
                    !valid_ty
                        || reserved != 0
                        || (ty == FrameType::Data as u8 && payload.len() > self.recv_cap)
                        || (ty == FrameType::Data as u8 && payload.is_empty())
                        || (ty == FrameType::Rst as u8
                            && !(2..=MAX_RST_PAYLOAD).contains(&payload.len()))
                        || (ty != FrameType::Data as u8
                            && ty != FrameType::Rst as u8
                            && !payload.is_empty()),
                    "codec refused a good frame: {e}"
                );
                self.hostile = true;
                return;
            }
        };
        let expect = self.expect(i, f.header, f.payload);
        if i < self.n {
            self.last_heard[i] = self.now;
        }
        let got = self.s.handle_frame(i, f, self.now);
        assert_eq!(
            got, expect,
            "session verdict on {:?} at {value} on stripe {i}",
            f.header.ty
        );
        if got.is_err() {
            self.hostile = true;
            return;
        }
        match f.header.ty {
            FrameType::Data => {
                let end = value + payload.len() as u64;
                self.got.add(value, end);
            }
            FrameType::Ack => {
                self.acked = self.acked.max(value);
                if flags & ACK_FIN != 0 {
                    self.fin_acked = true;
                }
            }
            FrameType::Fin => self.fin_in = Some(value),
            FrameType::Ping => {
                if i < self.n {
                    self.pong_due[i] = Some(value);
                }
            }
            FrameType::Pong => {
                if i < self.n && self.up[i] && value == self.last_ping && value != 0 {
                    // Might be an old PING's value on another stripe: only
                    // check that an RTT, when there is one, is sane.
                    if let Some(rtt) = self.s.stripe_ping_rtt(i) {
                        assert!(rtt <= self.now - self.base);
                    }
                }
            }
            FrameType::Rst => unreachable!("an RST is always an error"),
        }
    }

    /// What the session must answer to a decoded frame.
    fn expect(&self, i: usize, h: Header, payload: &[u8]) -> Result<(), SessionError> {
        match h.ty {
            FrameType::Data => {
                let (offset, len) = (h.value, payload.len());
                let end = offset.saturating_add(len as u64);
                let limit = self.consumed + self.window;
                let ready = self.ready();
                let err = |err| Err(SessionError::Data { stripe: i, err });
                if end > limit {
                    return err(ReassemblyError::BeyondWindow { offset, len, limit });
                }
                if let Some(fin) = self.fin_in
                    && end > fin
                {
                    return err(ReassemblyError::BeyondFin { offset, len, fin });
                }
                if end <= ready {
                    return Ok(());
                }
                let start = offset.max(ready);
                let pieces: Vec<(u64, u64)> = self.got.after(ready).collect();
                let touches = pieces.iter().any(|&(s, e)| s <= end && e >= start);
                if !touches && start > ready && pieces.len() >= self.max_pieces {
                    return err(ReassemblyError::TooFragmented {
                        ranges: pieces.len() + 1,
                    });
                }
                Ok(())
            }
            FrameType::Ack => {
                let ack = h.value;
                if ack > self.sent_end {
                    return Err(SessionError::AckBeyondSent {
                        stripe: i,
                        ack,
                        sent: self.sent_end,
                    });
                }
                if h.flags & ACK_FIN != 0 && self.fin_out != Some(ack) {
                    return Err(SessionError::BadFinAck { stripe: i, ack });
                }
                Ok(())
            }
            FrameType::Fin => {
                let seen = self.got.max_end().max(self.consumed);
                if self.fin_in.is_some_and(|f| f != h.value) || h.value < seen {
                    return Err(SessionError::FinMismatch {
                        stripe: i,
                        fin: h.value,
                        seen,
                    });
                }
                Ok(())
            }
            FrameType::Rst => {
                let (code, reason) = frame::parse_rst(payload);
                Err(SessionError::PeerReset { code, reason })
            }
            FrameType::Ping | FrameType::Pong => Ok(()),
        }
    }

    // ---- frames to the peer ----

    /// Drains `poll_transmit`. Bit k of `mode` (cycling) says whether the
    /// k-th transmit reaches the peer (1) or is lost (0). TCP loses nothing
    /// on a connection that lives, so a loss is the stripe dying: it goes
    /// down at once, and the session must make up for whatever it carried.
    /// The payload of a DATA frame still in the send buffer, unchanged.
    fn check_payload(&self, offset: u64, len: usize) {
        let (a, b) = self.s.send_slices(offset, len);
        assert_eq!(a.len() + b.len(), len);
        for (k, &x) in a.iter().chain(b).enumerate() {
            let o = offset + k as u64;
            assert_eq!(x, app_byte(o), "half-written frame: byte {o} changed");
        }
    }

    /// As the striped pipe does before it transmits: a half-written frame
    /// whose bytes the peer acknowledged (through another stripe) gets its
    /// payload copied out, so the send buffer can let go of them.
    fn detach_stale_pins(&mut self) {
        let stale: Vec<usize> = self.s.stale_pins().collect();
        for i in stale {
            let p = self
                .partial
                .get_mut(i)
                .and_then(|p| p.as_mut())
                .filter(|p| p.detached.is_none())
                .unwrap_or_else(|| {
                    panic!("stale pin on stripe {i}, which has no frame in progress")
                });
            let (offset, len) = (p.offset, p.len);
            assert!(
                offset < self.acked,
                "pin at {offset} is not stale (acked {})",
                self.acked
            );
            self.check_payload(offset, len);
            let (a, b) = self.s.send_slices(offset, len);
            let copy = [a, b].concat();
            self.partial[i].as_mut().expect("checked").detached = Some(copy);
            self.s.frame_written(i);
        }
    }

    /// Bit k of `partial` leaves the k-th DATA frame (of the first 7) that
    /// reaches its stripe half written: the socket took part of it and
    /// reported WouldBlock; the rest goes with [`Sim::flush`]. Its top bit
    /// makes the IO side late: it does not copy out stale pinned frames
    /// first ([`Sim::detach_stale_pins`]), so the session's own allowance
    /// must bound the buffer. The top bit of `mode` makes the peer
    /// acknowledge what it got at the end.
    fn poll(&mut self, mode: u16, partial: u8) {
        if partial & 0x80 == 0 {
            self.detach_stale_pins();
        }
        let (mut k, mut d) = (0, 0);
        while let Some(t) = self.s.poll_transmit() {
            let reach = mode == 0 || (mode >> (k % 15)) & 1 == 1;
            let half = reach && t.data.is_some() && {
                d += 1;
                d <= 7 && (partial >> (d - 1)) & 1 == 1
            };
            self.check_transmit(&t, reach && !half);
            if half {
                let (offset, len) = t.data.expect("DATA");
                self.partial[t.stripe] = Some(Partial {
                    offset,
                    len,
                    detached: None,
                });
                self.s.set_stripe_writable(t.stripe, false);
                self.writable[t.stripe] = false;
            } else if reach {
                // The whole frame went into the stripe's socket.
                self.s.frame_written(t.stripe);
            } else {
                self.stripe_down(t.stripe);
            }
            k += 1;
            assert!(
                k < MAX_TRANSMITS_PER_POLL,
                "poll_transmit never returns None"
            );
        }
        if mode & 0x8000 != 0 {
            self.peer_ack(self.first_up());
        }
    }

    fn check_transmit(&mut self, t: &Transmit, reach: bool) {
        let i = t.stripe;
        assert!(
            i < self.n && self.up[i],
            "transmit on stripe {i}, which is not up"
        );
        assert!(
            self.writable[i],
            "transmit on stripe {i}, which is not writable"
        );
        let mut payload = t.inline.clone();
        if let Some((offset, len)) = t.data {
            let (a, b) = self.s.send_slices(offset, len);
            assert_eq!(a.len() + b.len(), len);
            payload.extend_from_slice(a);
            payload.extend_from_slice(b);
        }
        let mut wire = t.header.encode(&[&payload]).to_vec();
        wire.extend_from_slice(&payload);
        assert_eq!(t.len(), wire.len());
        let (f, n) = match decode(&wire, self.peer_max_payload) {
            Ok(Some(x)) => x,
            other => panic!("the session built a frame its peer refuses: {other:?}"),
        };
        assert_eq!(n, wire.len());
        let v = f.header.value;
        if self.aborted.is_some() {
            assert_eq!(f.header.ty, FrameType::Rst, "{:?} after abort", f.header.ty);
        }
        match f.header.ty {
            FrameType::Data => {
                let (offset, len) = t.data.expect("DATA has a range");
                assert_eq!(v, offset);
                let end = offset + len as u64;
                assert!(
                    len <= self.frame_size.min(self.peer_max_payload),
                    "DATA of {len}"
                );
                assert!(
                    offset >= self.acked,
                    "re-sent acknowledged data at {offset}"
                );
                assert!(end <= self.written, "sent bytes never written");
                assert!(
                    end <= self.acked + self.peer_window,
                    "DATA up to {end} beyond the peer's window ({} + {})",
                    self.acked,
                    self.peer_window
                );
                if let Some(fin) = self.fin_out {
                    assert!(end <= fin);
                }
                if offset >= self.sent_end {
                    assert_eq!(offset, self.sent_end, "a gap in new data");
                }
                for (k, &b) in f.payload.iter().enumerate() {
                    assert_eq!(
                        b,
                        app_byte(offset + k as u64),
                        "wrong byte at {}",
                        offset + k as u64
                    );
                }
                self.sent_end = self.sent_end.max(end);
                if reach {
                    self.peer_got.add(offset, end);
                }
            }
            FrameType::Ack => {
                assert_eq!(
                    v, self.consumed,
                    "ACK of {v}, the application took {}",
                    self.consumed
                );
                assert!(v >= self.ack_out, "ACK went backwards");
                let fin_ack = self.fin_in == Some(self.consumed);
                assert_eq!(f.header.flags, if fin_ack { ACK_FIN } else { 0 });
                self.ack_out = v;
                if reach {
                    self.peer_acked_by_us = self.peer_acked_by_us.max(v);
                }
            }
            FrameType::Fin => {
                assert_eq!(Some(v), self.fin_out, "FIN at {v}");
                assert_eq!(self.sent_end, v, "FIN before all data was handed out");
                if reach {
                    self.peer_got_fin = Some(v);
                }
            }
            FrameType::Rst => {
                let (code, _) = frame::parse_rst(f.payload);
                assert_eq!(Some(code.code()), self.aborted, "RST without abort");
                assert!(!self.rst_sent[i], "second RST on stripe {i}");
                self.rst_sent[i] = true;
            }
            FrameType::Ping => {
                assert!(self.pings.insert(v), "PING value {v} used twice");
                self.last_ping = v;
            }
            FrameType::Pong => {
                assert_eq!(Some(v), self.pong_due[i], "PONG without its PING");
                self.pong_due[i] = None;
            }
        }
    }

    // ---- invariants ----

    fn check_readable(&self) {
        let r = self.s.readable();
        let ready = self.ready();
        assert!(
            self.consumed + r.len() as u64 <= ready,
            "readable bytes that never arrived"
        );
        assert_eq!(
            r.is_empty(),
            ready == self.consumed,
            "in-order bytes not readable"
        );
        // Every byte is checked when the application takes it; here only
        // the ends, which is cheap enough to do after every operation.
        let ends = r.len().min(16);
        for k in (0..ends).chain(r.len() - ends..r.len()) {
            let o = self.consumed + k as u64;
            assert_eq!(r[k], peer_byte(o), "readable: a wrong byte at offset {o}");
        }
    }

    fn check_state(&mut self) {
        self.check_readable();
        let buffered = self.got.max_end().saturating_sub(self.consumed);
        assert_eq!(self.s.recv_backlog(), buffered);
        assert!(buffered <= self.window);
        assert_eq!(self.s.send_backlog(), self.written - self.acked);
        assert!(self.s.send_backlog() <= self.peer_window);
        // Memory: each ring is at most the next power of two of what it may
        // hold (at least 4 KiB): the reassembly ring our window; the send
        // ring the peer's window, plus acknowledged bytes a half-written
        // frame keeps until the IO side copies it out (`held`), of which
        // the session allows at most PIN_ALLOWANCE. So whatever the peer
        // and the stripes do, under 2 x (window + 1 MiB) each.
        self.max_held = self.max_held.max(self.held());
        let bound = |w: u64| (w.next_power_of_two()).max(4096) as usize;
        let cap = self.s.buffer_capacity();
        let extra = self.max_held.min(PIN_ALLOWANCE);
        assert!(
            cap <= bound(self.window) + bound(self.peer_window + extra),
            "buffers hold {cap} bytes with windows {} and {} (+{} held, {} allowed)",
            self.window,
            self.peer_window,
            self.max_held,
            extra
        );
        assert_eq!(self.s.read_eof(), self.fin_in == Some(self.consumed));
        assert_eq!(self.s.write_finished(), self.fin_acked);
        assert_eq!(self.s.stats().bytes_in, self.consumed);
        assert_eq!(self.s.stats().bytes_out, self.written);
        for i in 0..self.n {
            assert_eq!(self.s.is_stripe_up(i), self.up[i]);
        }
        assert_eq!(self.s.stripes_up(), self.up.iter().filter(|&&u| u).count());
        if self.aborted.is_some() {
            assert!(!self.s.can_write());
        }
    }

    /// After the program: if everything stayed within the protocol, the
    /// stripes that are up (or one re-dialed stripe if none is), a peer that
    /// re-sends what we have not acknowledged and acknowledges what it
    /// gets, and an application that reads everything must bring both
    /// streams to their ends, and the peer must hear our last ACK.
    fn settle(&mut self) {
        self.check_state();
        if self.hostile || self.aborted.is_some() {
            // Still check every byte that was deliverable (twice: the ring
            // may hand them out in two pieces).
            self.app_consume(usize::MAX);
            self.app_consume(usize::MAX);
            self.check_state();
            return;
        }
        for i in 0..self.n {
            self.flush(i);
        }
        if !self.up.iter().any(|&u| u) {
            self.stripe_up(0);
        }
        // Kernel buffers drain; every live stripe takes frames again.
        for i in 0..self.n {
            if self.up[i] {
                self.s.set_stripe_writable(i, true);
                self.writable[i] = true;
                self.s
                    .update_stripe(i, self.now, (0, 0), self.kernel_delivered[i], None);
            }
        }
        for _round in 0..10_000 {
            let before = (
                self.consumed,
                self.peer_got.contiguous_from(0),
                self.peer_got_fin,
                self.fin_acked,
            );
            // The peer re-sends everything we have not acknowledged to it.
            self.in_flight.clear();
            let mut off = self.peer_acked_by_us;
            let mut stripe = 0;
            while off < self.peer_next {
                let len = (self.peer_next - off).min(self.recv_cap as u64) as usize;
                let live: Vec<usize> = (0..self.n).filter(|&i| self.up[i]).collect();
                self.deliver_data(live[stripe % live.len()], off, len, false);
                off += len as u64;
                stripe += 1;
            }
            if let Some(f) = self.peer_fin {
                let i = self.first_up();
                self.deliver(i, FrameType::Fin as u8, 0, 0, f, &[]);
            }
            self.app_consume(usize::MAX);
            self.app_consume(usize::MAX);
            self.poll(0, 0);
            self.peer_ack(self.first_up());
            self.check_state();
            assert!(!self.hostile, "a frame within the protocol was refused");
            let after = (
                self.consumed,
                self.peer_got.contiguous_from(0),
                self.peer_got_fin,
                self.fin_acked,
            );
            if after == before {
                break;
            }
        }
        assert_eq!(
            self.consumed, self.peer_next,
            "the peer's stream did not all arrive"
        );
        assert_eq!(
            self.peer_got.contiguous_from(0),
            self.written,
            "our stream did not all arrive"
        );
        assert_eq!(self.peer_got_fin, self.fin_out, "our FIN did not arrive");
        if self.peer_fin.is_some() {
            assert!(self.s.read_eof());
        }
        if self.fin_out.is_some() {
            assert!(self.s.write_finished(), "our FIN was never acknowledged");
        }
        if self.fin_out.is_some() && self.peer_fin.is_some() {
            assert!(self.s.is_finished());
        }
        assert_eq!(
            self.peer_acked_by_us, self.consumed,
            "the peer never heard our last ACK: its window stays closed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_tiny_inputs() {
        for data in [&[][..], &[0], &[1, 2, 3], &[0xff; 40]] {
            frame(data);
            handshake(data);
            session(data);
        }
    }
}
