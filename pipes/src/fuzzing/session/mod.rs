//! The `session` target: a program of stripe, application, time and peer
//! events drives a [`Session`], checked against a model of both ends.
//!
//! - `mod.rs`: the entry point, the harness's state ([`Sim`]: the session,
//!   the IO side's view of the stripes, and the model of both streams);
//! - `ops.rs`: the op interpreter ([`Sim::step`]) and the stripe,
//!   application and time operations;
//! - `wire.rs`: frames on the stripes, both ways: the simulated peer's
//!   frames into the session, and draining `poll_transmit` out of it;
//! - `model.rs`: the oracle: the range set, the verdict the session owes
//!   each frame, the checks on every transmit and on the state after every
//!   step, and the end-of-program liveness check.

mod model;
mod ops;
mod wire;

use std::time::{Duration, Instant};

use super::Input;
use crate::proto::handshake::{MIN_MAX_PAYLOAD, MIN_WINDOW};
use crate::proto::session::{Session, SessionConfig};
use model::Ranges;

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
}
