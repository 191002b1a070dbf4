//! A growable ring of bytes addressed by logical position.
//!
//! Position 0 is the front; [`ByteRing::advance`] drops bytes from the front
//! and renumbers. Bytes may be written anywhere below the capacity (the
//! reassembler writes out of order); `extent` is one past the highest
//! position ever written since the front. Capacity is a power of two, grows
//! on demand up to the limit the caller gives and can be released when the
//! ring is empty, so an idle session holds almost nothing.

#[derive(Default)]
pub struct ByteRing {
    buf: Vec<u8>,
    head: usize,
    extent: usize,
}

impl ByteRing {
    pub fn new() -> ByteRing {
        ByteRing::default()
    }

    /// One past the highest written position.
    pub fn extent(&self) -> usize {
        self.extent
    }

    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Makes positions `0..end` writable. Returns false (and changes nothing)
    /// if that would take the capacity over `max`.
    pub fn reserve(&mut self, end: usize, max: usize) -> bool {
        if end <= self.buf.len() {
            return true;
        }
        let cap = end.next_power_of_two().max(4096);
        if end > max {
            return false;
        }
        // A power of two may overshoot `max`; the caller's bound is on
        // positions, so capacity up to the next power of two is allowed.
        let mut grown = vec![0u8; cap];
        let (a, b) = self.slices(0, self.extent);
        grown[..a.len()].copy_from_slice(a);
        grown[a.len()..a.len() + b.len()].copy_from_slice(b);
        self.buf = grown;
        self.head = 0;
        true
    }

    /// Writes `data` at position `pos`. The positions must be reserved.
    pub fn write_at(&mut self, pos: usize, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        assert!(pos + data.len() <= self.buf.len(), "write beyond capacity");
        let cap = self.buf.len();
        let start = (self.head + pos) & (cap - 1);
        let first = data.len().min(cap - start);
        self.buf[start..start + first].copy_from_slice(&data[..first]);
        self.buf[..data.len() - first].copy_from_slice(&data[first..]);
        self.extent = self.extent.max(pos + data.len());
    }

    /// Appends at `extent`, growing up to `max` positions; returns bytes taken.
    pub fn push(&mut self, data: &[u8], max: usize) -> usize {
        let n = data.len().min(max.saturating_sub(self.extent));
        if n == 0 || !self.reserve(self.extent + n, max) {
            return 0;
        }
        self.write_at(self.extent, &data[..n]);
        n
    }

    /// The bytes at positions `pos..pos+len` as at most two slices.
    pub fn slices(&self, pos: usize, len: usize) -> (&[u8], &[u8]) {
        if len == 0 {
            return (&[], &[]);
        }
        assert!(pos + len <= self.buf.len(), "read beyond capacity");
        let cap = self.buf.len();
        let start = (self.head + pos) & (cap - 1);
        let first = len.min(cap - start);
        (&self.buf[start..start + first], &self.buf[..len - first])
    }

    /// Drops `n` bytes from the front.
    pub fn advance(&mut self, n: usize) {
        assert!(n <= self.extent, "advance past extent");
        if n == 0 {
            return;
        }
        self.head = (self.head + n) & (self.buf.len() - 1);
        self.extent -= n;
        if self.extent == 0 {
            self.head = 0;
        }
    }

    /// Frees the storage if nothing is held.
    pub fn release_if_empty(&mut self) -> bool {
        if self.extent == 0 && !self.buf.is_empty() {
            self.buf = Vec::new();
            self.head = 0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_and_grows_keeping_order() {
        let mut r = ByteRing::new();
        let mut model: std::collections::VecDeque<u8> = Default::default();
        let mut next = 0u8;
        for round in 0..2000usize {
            let n = (round * 7919) % 3000;
            let chunk: Vec<u8> = (0..n)
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            let took = r.push(&chunk, 20_000);
            model.extend(&chunk[..took]);
            let drop = ((round * 104_729) % 3500).min(r.extent());
            let (a, b) = r.slices(0, drop);
            let got: Vec<u8> = a.iter().chain(b).copied().collect();
            let want: Vec<u8> = model.drain(..drop).collect();
            assert_eq!(got, want, "round {round}");
            r.advance(drop);
            assert_eq!(r.extent(), model.len());
        }
    }

    #[test]
    fn release_only_when_empty() {
        let mut r = ByteRing::new();
        r.push(b"abc", 100);
        assert!(!r.release_if_empty());
        r.advance(3);
        assert!(r.release_if_empty());
        assert_eq!(r.capacity(), 0);
        assert_eq!(r.push(b"xy", 100), 2);
        assert_eq!(r.slices(0, 2), (&b"xy"[..], &b""[..]));
    }
}
