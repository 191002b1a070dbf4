//! `FramedPipe`: sealed frames on top of a TCP pipe.
//!
//! Every frame after the handshake travels as one sealed record
//! ([`crate::proto::seal`]): its 20-byte header (the check field zero: the
//! record's tag covers the frame) and its payload. Reading opens records in place in the TCP pipe's read buffer
//! and decodes the frame inside (no copy until the session takes the
//! payload). Writing encodes the header, seals header and payload into the
//! stripe's out buffer (the one copy of the payload on the way out) and
//! writes it; a record that only partly fits is finished on the next
//! writable event. Before the first frame, raw handshake bytes may be
//! queued with [`FramedPipe::queue_raw`].

use std::fmt;

use striper_core::{Pipe, PipeError, Readable};

use crate::proto::frame::{self, Frame, FrameError};
use crate::proto::noise::Keys;
use crate::proto::seal::{self, Opener, SealError, Sealer};
use crate::proto::session::Transmit;
use crate::tcp::TcpPipe;

/// Why reading frames stopped.
#[derive(Debug)]
pub enum FramedError {
    /// The record does not open (its tag fails, or its length is out of
    /// bounds): the stripe cannot be trusted any further. `offset` is where
    /// it started in this stripe's byte stream (after the handshake).
    Sealed {
        err: SealError,
        offset: u64,
    },
    /// The record opened but does not hold one valid frame.
    Corrupt {
        err: FrameError,
        offset: u64,
    },
    /// The stream ended in the middle of a record.
    Truncated {
        offset: u64,
    },
    Pipe(PipeError),
}

impl fmt::Display for FramedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FramedError::Sealed { err, offset } => write!(f, "{err} at offset {offset}"),
            FramedError::Corrupt { err, offset } => write!(f, "{err} at offset {offset}"),
            FramedError::Truncated { offset } => {
                write!(f, "connection closed inside the record at offset {offset}")
            }
            FramedError::Pipe(e) => write!(f, "{e}"),
        }
    }
}

/// The next thing on the read side.
pub enum Next<'a> {
    /// A frame and the bytes its record occupies (pass them to
    /// [`FramedPipe::consume_frame`]).
    Frame(Frame<'a>, usize),
    /// No whole frame yet.
    Pending,
    /// The peer closed its side cleanly between frames.
    Eof,
}

pub struct FramedPipe {
    inner: TcpPipe,
    max_payload: usize,
    raw_out: Vec<u8>,
    sealer: Option<Sealer>,
    opener: Option<Opener>,
    /// The sealed record being written, and how much of it is out.
    out: Vec<u8>,
    written: usize,
    /// A record opened in place and not consumed yet: its plaintext's
    /// length and the bytes it occupies (opening twice would fail).
    opened: Option<(usize, usize)>,
    in_offset: u64,
}

impl FramedPipe {
    pub fn new(inner: TcpPipe, max_payload: usize) -> FramedPipe {
        FramedPipe {
            inner,
            max_payload,
            raw_out: Vec::new(),
            sealer: None,
            opener: None,
            out: Vec::new(),
            written: 0,
            opened: None,
            in_offset: 0,
        }
    }

    pub fn inner(&self) -> &TcpPipe {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut TcpPipe {
        &mut self.inner
    }

    /// The stripe's keys, from its handshake: frames may flow.
    pub fn set_keys(&mut self, keys: Keys) {
        self.sealer = Some(keys.send);
        self.opener = Some(keys.recv);
    }

    /// Queues bytes to write before any frame (the handshake).
    pub fn queue_raw(&mut self, bytes: &[u8]) {
        self.raw_out.extend_from_slice(bytes);
    }

    /// Nothing partly written: a new frame may be handed over.
    pub fn is_idle(&self) -> bool {
        self.written == self.out.len() && self.raw_out.is_empty()
    }

    /// The largest plaintext a record may hold: one frame.
    fn max_record(&self) -> usize {
        frame::HEADER_LEN + self.max_payload.min(frame::ABSOLUTE_MAX_PAYLOAD)
    }

    /// The next whole frame in the read buffer, reading more if needed.
    pub fn next_frame(&mut self) -> Result<Next<'_>, FramedError> {
        let offset = self.in_offset;
        let max = self.max_record();
        if self.opened.is_none() {
            let mut last = usize::MAX;
            loop {
                let (len, need) = match self.inner.fill_buf().map_err(FramedError::Pipe)? {
                    Readable::Pending => return Ok(Next::Pending),
                    Readable::Eof => return Ok(Next::Eof),
                    Readable::Bytes(b) => (
                        b.len(),
                        Opener::needed(b, max)
                            .map_err(|err| FramedError::Sealed { err, offset })?,
                    ),
                };
                if len >= need {
                    break;
                }
                if len == last {
                    if self.inner.at_eof() {
                        return Err(FramedError::Truncated { offset });
                    }
                    // No more bytes came in: wait for the next event.
                    return Ok(Next::Pending);
                }
                last = len;
                self.inner.reserve_read(need);
            }
            let opener = self.opener.as_mut().expect("keys before frames");
            let buf = self.inner.buffered_mut();
            match opener.open(buf, max) {
                Ok(Some((plain, total))) => self.opened = Some((plain.len(), total)),
                Ok(None) => return Ok(Next::Pending),
                Err(err) => return Err(FramedError::Sealed { err, offset }),
            }
        }
        let (plain_len, total) = self.opened.expect("opened above");
        let plain = &self.inner.buffered()[seal::LEN_LEN..seal::LEN_LEN + plain_len];
        match frame::decode_sealed(plain, self.max_payload) {
            Ok(f) => Ok(Next::Frame(f, total)),
            Err(err) => Err(FramedError::Corrupt { err, offset }),
        }
    }

    /// Marks a frame returned by [`FramedPipe::next_frame`] as handled.
    pub fn consume_frame(&mut self, n: usize) {
        self.opened = None;
        self.inner.consume(n);
        self.in_offset += n as u64;
    }

    /// Hands a frame over; `payload` yields a DATA frame's bytes. Returns
    /// true if the frame (and anything queued before it) went out whole.
    pub fn send<'s>(
        &mut self,
        t: Transmit,
        payload: impl Fn(u64, usize) -> (&'s [u8], &'s [u8]),
    ) -> Result<bool, PipeError> {
        debug_assert_eq!(
            self.written,
            self.out.len(),
            "a frame is already in progress"
        );
        let (a, b) = match t.data {
            Some((off, len)) => payload(off, len),
            None => (&t.inline[..], &[][..]),
        };
        // The one place a frame header is encoded (and sealed with its
        // payload).
        let header = t.header.encode_sealed();
        self.out.clear();
        self.written = 0;
        let sealer = self.sealer.as_mut().expect("keys before frames");
        sealer
            .seal(&[&header, a, b], &mut self.out)
            .map_err(|e| PipeError::new(striper_core::ErrorKind::Protocol, e.to_string()))?;
        self.flush()
    }

    /// Writes what is queued. Returns true when nothing is left.
    pub fn flush(&mut self) -> Result<bool, PipeError> {
        while !self.raw_out.is_empty() {
            let n = self.inner.write(&self.raw_out)?;
            if n == 0 {
                return Ok(false);
            }
            self.raw_out.drain(..n);
        }
        while self.written < self.out.len() {
            let n = self.inner.write(&self.out[self.written..])?;
            if n == 0 {
                return Ok(false);
            }
            self.written += n;
        }
        Ok(true)
    }

    /// Frees the out buffer when nothing is in it (an idle stripe).
    pub fn release_idle(&mut self) {
        if self.is_idle() && self.out.capacity() > 0 {
            striper_core::mem::note_freed(self.out.capacity());
            self.out = Vec::new();
            self.written = 0;
        }
        self.inner.release_idle();
    }
}
