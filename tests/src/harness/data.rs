//! The data tests send and check: [`Pattern`], a deterministic byte stream,
//! written by [`send`] and checked byte for byte by [`receive`], with a
//! [`Digest`] of each end. Independent of processes and sockets, and unit
//! tested here.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::spawn_small;

/// CRC-32 and length of a byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Digest {
    pub len: u64,
    pub crc: u32,
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes, crc32 {:08x}", self.len, self.crc)
    }
}

/// Computes a [`Digest`] incrementally.
#[derive(Clone, Default)]
pub struct Digester {
    len: u64,
    crc: crc32fast::Hasher,
}

impl Digester {
    pub fn update(&mut self, data: &[u8]) {
        self.len += data.len() as u64;
        self.crc.update(data);
    }

    pub fn digest(&self) -> Digest {
        Digest {
            len: self.len,
            crc: self.crc.clone().finalize(),
        }
    }
}

/// Digest of a byte slice.
pub fn digest(data: &[u8]) -> Digest {
    let mut d = Digester::default();
    d.update(data);
    d.digest()
}

/// Length of the pattern's random block: a prime, so no buffer, frame or
/// window size lines up with it.
const BLOCK: u64 = 1_048_573;
/// Rotation between successive blocks; with `BLOCK` prime the stream only
/// repeats after `BLOCK` blocks (~1 TiB), so a chunk delivered twice or in
/// the wrong place never matches the bytes expected there.
const STEP: u64 = 7_919;

/// A deterministic pseudo-random byte stream of unbounded length: block
/// `k` is a random block rotated by `k * STEP`. Generating and checking it
/// is a couple of `memcpy`s per read, fast even in unoptimised tests.
#[derive(Clone)]
pub struct Pattern {
    block: Arc<Vec<u8>>,
    /// Where in the stream this view starts.
    start: u64,
}

impl Pattern {
    /// The stream for `seed` (splitmix64 fills the block).
    pub fn new(seed: u64) -> Pattern {
        let mut x = seed ^ 0x5DEE_CE66_D1CE_5EED;
        let mut v = Vec::with_capacity(BLOCK as usize + 8);
        while (v.len() as u64) < BLOCK {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            v.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        v.truncate(BLOCK as usize);
        Pattern {
            block: Arc::new(v),
            start: 0,
        }
    }

    /// The same stream starting `offset` bytes in: cheap distinct streams
    /// for many sessions.
    pub fn skip(&self, offset: u64) -> Pattern {
        Pattern {
            block: self.block.clone(),
            start: self.start + offset,
        }
    }

    /// Fills `buf` with the stream's bytes from position `pos`.
    pub fn fill(&self, pos: u64, buf: &mut [u8]) {
        let mut p = self.start + pos;
        let mut out = &mut buf[..];
        while !out.is_empty() {
            let (k, i) = (p / BLOCK, p % BLOCK);
            let src = (i + (k % BLOCK) * STEP) % BLOCK;
            let n = (BLOCK - i).min(BLOCK - src).min(out.len() as u64) as usize;
            out[..n].copy_from_slice(&self.block[src as usize..src as usize + n]);
            out = &mut out[n..];
            p += n as u64;
        }
    }

    /// The first `len` bytes, in memory (for files and small payloads).
    pub fn bytes(&self, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.fill(0, &mut v);
        v
    }

    /// Digest of the first `len` bytes.
    pub fn digest(&self, len: u64) -> Digest {
        let mut d = Digester::default();
        let mut buf = vec![0u8; 256 * 1024];
        let mut pos = 0;
        while pos < len {
            let n = (len - pos).min(buf.len() as u64) as usize;
            self.fill(pos, &mut buf[..n]);
            d.update(&buf[..n]);
            pos += n as u64;
        }
        d.digest()
    }
}

const CHUNK: usize = 128 * 1024;

/// Writes the first `len` bytes of `pattern` to `w` (all of them, or the
/// error that stopped it) and returns the digest of what was written.
/// `progress` counts bytes the writer accepted, as they are accepted.
pub fn send(
    w: &mut impl Write,
    pattern: &Pattern,
    len: u64,
    progress: Option<&AtomicU64>,
) -> io::Result<Digest> {
    let mut d = Digester::default();
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    while pos < len {
        let n = (len - pos).min(CHUNK as u64) as usize;
        pattern.fill(pos, &mut buf[..n]);
        let mut off = 0;
        while off < n {
            match w.write(&buf[off..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => {
                    off += m;
                    if let Some(p) = progress {
                        p.fetch_add(m as u64, Ordering::Relaxed);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        d.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(d.digest())
}

/// What a reader got.
#[derive(Clone, Debug, Default)]
pub struct Received {
    /// Digest of every byte read.
    pub digest: Digest,
    /// Offset of the first byte that differed from the expected pattern.
    pub mismatch: Option<u64>,
    /// The stream ended with EOF (rather than an error).
    pub eof: bool,
    /// The error that ended the stream, if one did.
    pub error: Option<io::ErrorKind>,
    /// When the stream ended (EOF or error).
    pub ended: Option<Instant>,
}

impl Received {
    /// Fails the test unless exactly the first `len` bytes of `pattern`
    /// arrived, followed by EOF, and the sender's digest agrees.
    #[track_caller]
    pub fn assert_intact(&self, what: &str, sent: Digest, pattern: &Pattern, len: u64) {
        assert_eq!(self.error, None, "{what}: the stream ended with an error");
        assert!(self.eof, "{what}: no EOF after the data");
        assert_eq!(
            self.mismatch, None,
            "{what}: first wrong byte at this offset"
        );
        assert_eq!(self.digest.len, len, "{what}: bytes received");
        assert_eq!(sent.len, len, "{what}: bytes sent");
        assert_eq!(self.digest, sent, "{what}: received vs sent checksum");
        assert_eq!(
            self.digest,
            pattern.digest(len),
            "{what}: received vs expected checksum"
        );
    }
}

/// Reads `r` until EOF or an error, checking every byte against `expect`
/// (if given). A read error ends the stream and is recorded, not returned.
pub fn receive(r: &mut impl Read, expect: Option<&Pattern>) -> Received {
    receive_counting(r, expect, None)
}

/// [`receive`], adding the bytes read to `progress` as they arrive.
pub fn receive_counting(
    r: &mut impl Read,
    expect: Option<&Pattern>,
    progress: Option<&AtomicU64>,
) -> Received {
    let mut d = Digester::default();
    let mut got = Received::default();
    let mut buf = vec![0u8; CHUNK];
    let mut want = vec![0u8; if expect.is_some() { CHUNK } else { 0 }];
    loop {
        match r.read(&mut buf) {
            Ok(0) => {
                got.eof = true;
                break;
            }
            Ok(n) => {
                if let (Some(p), None) = (expect, got.mismatch) {
                    p.fill(d.len, &mut want[..n]);
                    if buf[..n] != want[..n] {
                        let i = (0..n).find(|&i| buf[i] != want[i]).unwrap();
                        got.mismatch = Some(d.len + i as u64);
                    }
                }
                d.update(&buf[..n]);
                if let Some(p) = progress {
                    p.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                got.error = Some(e.kind());
                break;
            }
        }
    }
    got.ended = Some(Instant::now());
    got.digest = d.digest();
    got
}

/// Sends `len` bytes of `send_pat` on `stream` and half-closes, while
/// reading everything that comes back checked against `expect`; both at
/// once. Returns what was sent and what was received.
pub fn exchange_on(
    stream: TcpStream,
    send_pat: &Pattern,
    len: u64,
    expect: Option<&Pattern>,
) -> (io::Result<Digest>, Received) {
    let mut w = stream.try_clone().expect("clone socket");
    let pat = send_pat.clone();
    let writer = spawn_small("writer", move || {
        let r = send(&mut w, &pat, len, None);
        let _ = w.shutdown(Shutdown::Write);
        r
    });
    let mut r = stream;
    let got = receive(&mut r, expect);
    let sent = writer.join().expect("writer thread panicked");
    (sent, got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_deterministic_and_position_addressed() {
        let p = Pattern::new(7);
        let whole = p.bytes(3 * BLOCK as usize + 100);
        assert_eq!(whole, Pattern::new(7).bytes(whole.len()));
        // Any position can be regenerated on its own, across block edges.
        for pos in [0, 1, BLOCK - 3, BLOCK, 2 * BLOCK + 17] {
            let mut b = vec![0; 4096];
            p.fill(pos, &mut b);
            assert_eq!(b[..], whole[pos as usize..pos as usize + 4096]);
        }
        assert_eq!(
            p.skip(BLOCK + 5).bytes(10),
            whole[BLOCK as usize + 5..][..10]
        );
        assert_ne!(
            whole[..BLOCK as usize],
            whole[BLOCK as usize..2 * BLOCK as usize]
        );
    }

    #[test]
    fn receive_catches_swapped_lost_and_repeated_chunks() {
        let p = Pattern::new(8);
        let good = p.bytes(2 * BLOCK as usize + 4096);
        let ok = receive(&mut &good[..], Some(&p));
        assert_eq!((ok.mismatch, ok.eof), (None, true));
        assert_eq!(ok.digest, p.digest(good.len() as u64));

        // Two 32 KiB frames swapped one block apart: same bytes, wrong place.
        let mut swapped = good.clone();
        let (a, b) = (100_000, 100_000 + BLOCK as usize);
        let tmp = swapped[a..a + 32768].to_vec();
        swapped.copy_within(b..b + 32768, a);
        swapped[b..b + 32768].copy_from_slice(&tmp);
        assert_eq!(
            receive(&mut &swapped[..], Some(&p)).mismatch,
            Some(a as u64)
        );

        let mut lost = good.clone();
        lost.drain(5000..6000);
        assert_eq!(receive(&mut &lost[..], Some(&p)).mismatch, Some(5000));

        let mut repeated = good[..10_000].to_vec();
        repeated.extend_from_slice(&good[9_000..]);
        assert_eq!(receive(&mut &repeated[..], Some(&p)).mismatch, Some(10_000));
    }
}
