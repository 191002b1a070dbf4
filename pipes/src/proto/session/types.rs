//! The session's vocabulary: its settings, the frames it hands out, its
//! errors and its counters.

use std::fmt;
use std::time::Duration;

use super::super::frame::{HEADER_LEN, Header, ResetReason};
use super::super::reassembly::ReassemblyError;

/// Tunables of a session; both ends choose their own.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Receive window: the most this end buffers for reassembly, and so the
    /// most the peer may have unacknowledged.
    pub window: u32,
    /// Largest DATA payload this end accepts.
    pub max_payload: u32,
    /// Largest DATA payload this end sends (capped by the peer's maximum).
    pub frame_size: usize,
    /// Application bytes accepted ahead of the stripes. Small on purpose:
    /// bytes wait in the application's socket, not in the tunnel, until a
    /// stripe can really carry them.
    pub unsent_limit: usize,
    /// Out-of-order pieces the reassembler tracks before refusing more.
    pub max_pieces: usize,
    /// Window over which stripe drain rates are measured.
    pub rate_interval: Duration,
    /// A stripe silent this long gets a PING while data is in flight.
    pub keepalive: Duration,
    /// A stripe silent this long gets a PING when nothing is in flight.
    pub idle_keepalive: Duration,
    /// A stripe silent this long (nothing received, PINGs unanswered) is dead.
    pub stripe_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            window: 32 << 20,
            max_payload: 256 << 10,
            frame_size: 32 << 10,
            unsent_limit: 64 << 10,
            max_pieces: 16_384,
            rate_interval: Duration::from_millis(100),
            keepalive: Duration::from_secs(1),
            idle_keepalive: Duration::from_secs(30),
            stripe_timeout: Duration::from_secs(5),
        }
    }
}

/// The largest receive window either end offers (and the most we believe).
pub const MAX_WINDOW: u32 = 1 << 30;

/// Why a session ended abnormally.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionError {
    /// A DATA frame the reassembler refused.
    Data { stripe: usize, err: ReassemblyError },
    /// The peer acknowledged bytes never sent.
    AckBeyondSent { stripe: usize, ack: u64, sent: u64 },
    /// The peer's FIN disagrees with an earlier FIN or with data already seen.
    FinMismatch { stripe: usize, fin: u64, seen: u64 },
    /// The peer acknowledged a FIN at an offset we never sent a FIN for.
    BadFinAck { stripe: usize, ack: u64 },
    /// The peer aborted the session.
    PeerReset { code: ResetReason, reason: String },
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Data { stripe, err } => write!(f, "stripe {stripe}: {err}"),
            SessionError::AckBeyondSent { stripe, ack, sent } => {
                write!(
                    f,
                    "stripe {stripe}: ACK of offset {ack} but only {sent} bytes were sent"
                )
            }
            SessionError::FinMismatch { stripe, fin, seen } => write!(
                f,
                "stripe {stripe}: FIN at offset {fin} contradicts the stream seen so far (up to {seen})"
            ),
            SessionError::BadFinAck { stripe, ack } => {
                write!(
                    f,
                    "stripe {stripe}: FIN acknowledged at offset {ack}, not where ours was"
                )
            }
            SessionError::PeerReset { reason, .. } => write!(f, "peer reset the session: {reason}"),
        }
    }
}

impl std::error::Error for SessionError {}

/// One frame to write, and where. The frame layer encodes (and checks)
/// the header with its payload.
#[derive(Debug)]
#[must_use]
pub struct Transmit {
    pub stripe: usize,
    pub header: Header,
    /// DATA payload: `(offset, len)` in the send buffer, see [`Session::send_slices`].
    pub data: Option<(u64, usize)>,
    /// Payload carried by value (RST).
    pub inline: Vec<u8>,
}

impl Transmit {
    pub fn len(&self) -> usize {
        HEADER_LEN + self.data.map_or(0, |d| d.1) + self.inline.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Counters for the close log line.
#[derive(Clone, Debug, Default)]
pub struct SessionStats {
    /// Application bytes taken in to send.
    pub bytes_out: u64,
    /// Application bytes delivered from the peer.
    pub bytes_in: u64,
    /// Bytes sent a second time after a stripe was lost.
    pub bytes_resent: u64,
    /// Stripes that failed after carrying traffic.
    pub stripes_lost: u64,
    /// Stripes replaced by a new connection.
    pub stripes_redialed: u64,
    /// Times every stripe was gone and the session came back.
    pub outages_survived: u64,
}

impl SessionStats {
    /// The faults the session lived through, for its close log line: empty
    /// when there were none, else ", 2 stripe(s) lost, ...".
    pub fn fault_summary(&self) -> String {
        if self.stripes_lost == 0 && self.stripes_redialed == 0 && self.bytes_resent == 0 {
            return String::new();
        }
        let mut s = format!(
            ", {} stripe(s) lost, {} re-dialed, {} re-sent",
            self.stripes_lost,
            self.stripes_redialed,
            striper_core::config::human_bytes(self.bytes_resent)
        );
        if self.outages_survived > 0 {
            s += &format!(", {} outage(s) survived", self.outages_survived);
        }
        s
    }
}
