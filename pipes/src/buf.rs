//! A read buffer that grows with use and can be released when idle.

use std::io;

/// Bytes read from a source and not yet consumed: `buf[start..end]`.
#[derive(Default)]
pub struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Capacity the buffer may grow to.
    max: usize,
}

/// First allocation; doubled whenever a read fills the buffer. Small,
/// because most reads of a new or newly woken connection are small (a
/// handshake message, a keystroke) and a fresh block costs page faults: at
/// 16 KiB, zeroing new pages was 10% of the client's CPU in a burst of new
/// sessions. A bulk transfer doubles its way to the cap in a few reads.
const INITIAL: usize = 4 * 1024;

impl ReadBuf {
    pub fn new(max: usize) -> ReadBuf {
        ReadBuf {
            buf: Vec::new(),
            start: 0,
            end: 0,
            max: max.max(INITIAL),
        }
    }

    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    pub fn is_full(&self) -> bool {
        self.len() >= self.max
    }

    pub fn consume(&mut self, n: usize) {
        assert!(n <= self.len(), "consume past end");
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            // A buffer that never grew is given back as soon as it is
            // empty: an idle connection's occasional keepalive then holds
            // no memory and needs no later wake-up to free it, and taking a
            // small block from the allocator again costs next to nothing.
            if self.buf.len() <= INITIAL {
                self.buf = Vec::new();
            }
        }
    }

    /// Raises the cap so `n` bytes fit at once (a frame larger than the cap).
    pub fn reserve(&mut self, n: usize) {
        self.max = self.max.max(n);
    }

    /// Calls `read` once with the free space (making some first); returns
    /// what it returned. A read that fills the space doubles the next one.
    pub fn read_with(
        &mut self,
        read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        if self.start > 0 && (self.end == self.buf.len() || self.start >= self.buf.len() / 2) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let cap = (self.buf.len() * 2).clamp(INITIAL, self.max.max(self.len() + 1));
            if cap <= self.buf.len() {
                return Ok(0);
            }
            self.buf.resize(cap, 0);
        }
        let n = read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// Frees the storage if it holds nothing.
    /// Frees the storage if nothing is buffered; true if it did.
    pub fn release_if_empty(&mut self) -> bool {
        if self.is_empty() && !self.buf.is_empty() {
            self.buf = Vec::new();
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_up_to_the_cap_and_keeps_order() {
        let mut b = ReadBuf::new(64 * 1024);
        let mut next = 0u32;
        let mut out = Vec::new();
        for round in 0..200 {
            let n = b
                .read_with(|space| {
                    let n = space.len().min(10_000 + round * 37);
                    for x in &mut space[..n] {
                        *x = (next % 251) as u8;
                        next += 1;
                    }
                    Ok(n)
                })
                .unwrap();
            assert!(b.capacity() <= 64 * 1024);
            let _ = n;
            let take = b.len().min(7_000 + round * 11);
            out.extend_from_slice(&b.data()[..take]);
            b.consume(take);
        }
        out.extend_from_slice(b.data());
        assert!(out.iter().enumerate().all(|(i, &x)| x == (i % 251) as u8));
    }
}
