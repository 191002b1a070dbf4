//! Reassembly of one direction's byte stream from DATA frames that arrive on
//! several stripes, in any order, possibly more than once.
//!
//! The receiver keeps bytes from `delivered` (what the application has taken)
//! up to `delivered + window`. A correct sender never goes past that edge (it
//! only sends below `acked + window`, and `acked <= delivered`), so a frame
//! beyond it is a protocol violation, not something to buffer: memory stays
//! bounded by the window whatever the peer does.

use std::fmt;

use super::range_set::RangeSet;
use super::ring::ByteRing;

/// Reasons a DATA frame cannot be accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReassemblyError {
    /// The frame reaches past the receive window.
    BeyondWindow { offset: u64, len: usize, limit: u64 },
    /// The frame reaches past the final offset the peer announced in its FIN.
    BeyondFin { offset: u64, len: usize, fin: u64 },
    /// Too many disjoint out-of-order pieces (a sender cutting its stream into
    /// crumbs to make us spend memory on bookkeeping).
    TooFragmented { ranges: usize },
}

impl fmt::Display for ReassemblyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReassemblyError::BeyondWindow { offset, len, limit } => write!(
                f,
                "data at offset {offset} (+{len}) beyond the receive window (limit {limit})"
            ),
            ReassemblyError::BeyondFin { offset, len, fin } => write!(
                f,
                "data at offset {offset} (+{len}) beyond the announced end of stream {fin}"
            ),
            ReassemblyError::TooFragmented { ranges } => {
                write!(f, "stream too fragmented ({ranges} out-of-order pieces)")
            }
        }
    }
}

impl std::error::Error for ReassemblyError {}

pub struct Reassembler {
    ring: ByteRing,
    /// Stream offset of ring position 0: everything below was delivered.
    delivered: u64,
    /// End of the contiguous prefix: `delivered..ready` can be read now.
    ready: u64,
    /// Received pieces beyond `ready`, start -> end, disjoint, not touching.
    pieces: RangeSet,
    window: u64,
    max_pieces: usize,
}

impl Reassembler {
    pub fn new(window: u64, max_pieces: usize) -> Reassembler {
        Reassembler {
            ring: ByteRing::new(),
            delivered: 0,
            ready: 0,
            pieces: RangeSet::new(),
            window,
            max_pieces,
        }
    }

    /// Bytes taken by the application so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// End of the in-order prefix that has arrived.
    pub fn ready(&self) -> u64 {
        self.ready
    }

    /// Bytes held (in order or not) that the application has not taken.
    pub fn buffered(&self) -> u64 {
        self.ring.extent() as u64
    }

    /// Allocated storage, for memory accounting.
    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    /// Adds the bytes of a DATA frame. Bytes already received are ignored, so
    /// a range re-sent after a stripe failed is harmless. `fin` is the final
    /// offset if the peer has announced one.
    pub fn insert(
        &mut self,
        offset: u64,
        data: &[u8],
        fin: Option<u64>,
    ) -> Result<(), ReassemblyError> {
        let end = offset.saturating_add(data.len() as u64);
        let limit = self.delivered + self.window;
        if end > limit {
            return Err(ReassemblyError::BeyondWindow {
                offset,
                len: data.len(),
                limit,
            });
        }
        if let Some(fin) = fin
            && end > fin
        {
            return Err(ReassemblyError::BeyondFin {
                offset,
                len: data.len(),
                fin,
            });
        }
        if end <= self.ready {
            return Ok(());
        }
        let start = offset.max(self.ready);
        let data = &data[(start - offset) as usize..];
        // Checked first, so a refused insert changes nothing.
        if start > self.ready
            && !self.pieces.touches(start, end)
            && self.pieces.len() >= self.max_pieces
        {
            return Err(ReassemblyError::TooFragmented {
                ranges: self.pieces.len() + 1,
            });
        }
        let pos = (start - self.delivered) as usize;
        let reserved = self.ring.reserve(pos + data.len(), self.window as usize);
        debug_assert!(reserved, "window check above bounds the ring");
        self.ring.write_at(pos, data);
        let (s, e) = self.pieces.insert(start, end);
        if s <= self.ready {
            self.pieces.remove_range(s);
            self.ready = e;
        }
        Ok(())
    }

    /// The next in-order bytes (maybe only part of them: the ring may wrap).
    pub fn readable(&self) -> &[u8] {
        let n = (self.ready - self.delivered) as usize;
        self.ring.slices(0, n).0
    }

    /// The application took `n` bytes from [`Reassembler::readable`].
    pub fn consume(&mut self, n: usize) {
        assert!(
            n as u64 <= self.ready - self.delivered,
            "consume past ready"
        );
        self.ring.advance(n);
        self.delivered += n as u64;
    }

    /// Frees the buffer if it holds nothing (an idle session keeps no window).
    pub fn release_if_empty(&mut self) -> bool {
        self.ring.release_if_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    /// The obviously correct model: a map of offset -> byte.
    struct Oracle {
        have: Vec<Option<u8>>,
        delivered: usize,
    }

    impl Oracle {
        fn ready(&self) -> usize {
            let mut r = self.delivered;
            while r < self.have.len() && self.have[r].is_some() {
                r += 1;
            }
            r
        }
    }

    fn seed() -> u64 {
        std::env::var("STRIPER_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random)
    }

    #[test]
    fn matches_naive_oracle() {
        let seed = seed();
        println!("reassembler oracle seed {seed} (rerun with STRIPER_SEED={seed})");
        let mut rng = StdRng::seed_from_u64(seed);
        for round in 0..200 {
            let total = rng.random_range(1..20_000usize);
            let window = rng.random_range(1..4096u64);
            let stream: Vec<u8> = (0..total).map(|_| rng.random()).collect();
            let mut r = Reassembler::new(window, 64);
            let mut o = Oracle {
                have: vec![None; total],
                delivered: 0,
            };
            let mut out = Vec::new();
            let mut steps = 0;
            while out.len() < total {
                steps += 1;
                assert!(steps < 1_000_000, "seed {seed} round {round}: no progress");
                if rng.random_bool(0.6) {
                    // A frame somewhere near the front, maybe a duplicate,
                    // maybe overlapping, maybe past the window.
                    let lo = o.delivered.saturating_sub(50);
                    let hole = o.ready();
                    let room = (o.delivered + window as usize).saturating_sub(hole);
                    let (start, len) = if hole < total && room > 0 && rng.random_bool(0.3) {
                        // Fill the hole at the front, so tiny windows progress too.
                        (hole, rng.random_range(1..=room.min(total - hole).min(700)))
                    } else {
                        let start =
                            rng.random_range(lo..(o.delivered + window as usize + 20).min(total));
                        (start, rng.random_range(1..=(total - start).min(700)))
                    };
                    let res = r.insert(start as u64, &stream[start..start + len], None);
                    let beyond = start + len > o.delivered + window as usize;
                    match res {
                        Err(ReassemblyError::BeyondWindow { .. }) => assert!(beyond, "seed {seed}"),
                        Err(ReassemblyError::TooFragmented { .. }) => assert!(!beyond),
                        Err(e) => panic!("seed {seed}: unexpected {e}"),
                        Ok(()) => {
                            assert!(!beyond, "seed {seed}: accepted beyond window");
                            for (slot, &b) in o.have[start..start + len]
                                .iter_mut()
                                .zip(&stream[start..start + len])
                            {
                                *slot = Some(b);
                            }
                        }
                    }
                } else {
                    let avail = r.readable().len();
                    let n = rng.random_range(0..=avail);
                    out.extend_from_slice(&r.readable()[..n]);
                    r.consume(n);
                    o.delivered += n;
                }
                assert_eq!(r.ready() as usize, o.ready(), "seed {seed} round {round}");
                assert_eq!(r.delivered() as usize, o.delivered);
            }
            assert_eq!(out, stream, "seed {seed} round {round}");
            assert!(r.release_if_empty() || r.capacity() == 0);
        }
    }

    #[test]
    fn refuses_data_past_fin_and_window() {
        let mut r = Reassembler::new(100, 8);
        assert!(r.insert(0, b"abc", Some(3)).is_ok());
        assert!(matches!(
            r.insert(2, b"xy", Some(3)),
            Err(ReassemblyError::BeyondFin { .. })
        ));
        assert!(matches!(
            r.insert(99, b"xy", None),
            Err(ReassemblyError::BeyondWindow { .. })
        ));
        assert_eq!(r.readable(), b"abc");
    }

    #[test]
    fn fragmentation_is_bounded() {
        let mut r = Reassembler::new(1000, 4);
        for i in 0..4 {
            r.insert(10 + i * 10, b"x", None).unwrap();
        }
        assert!(matches!(
            r.insert(100, b"x", None),
            Err(ReassemblyError::TooFragmented { .. })
        ));
        // Extending an existing piece or filling the front is always allowed.
        r.insert(11, b"y", None).unwrap();
        r.insert(0, &[0; 10], None).unwrap();
        assert_eq!(r.ready(), 12);
    }
}
