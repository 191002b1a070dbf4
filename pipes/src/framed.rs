//! `FramedPipe<P>`: frames on top of a byte pipe.
//!
//! Reading decodes whole frames straight out of the inner pipe's read
//! buffer (no copy until the session takes the payload). Writing sends the
//! header and the payload as one gathered write; the payload stays in the
//! session's send buffer, so a frame that only partly fits is finished from
//! there on the next writable event. Before the first frame, raw handshake
//! bytes may be queued with [`FramedPipe::queue_raw`].

use std::fmt;
use std::io::IoSlice;

use striper_core::{Pipe, PipeError, Readable};

use crate::proto::frame::{self, Frame, FrameError};
use crate::proto::session::Transmit;

/// Why reading frames stopped.
#[derive(Debug)]
pub enum FramedError {
    /// The bytes are not a valid frame; `offset` is where the frame started
    /// in this stripe's byte stream (after the handshake).
    Corrupt {
        err: FrameError,
        offset: u64,
    },
    /// The stream ended in the middle of a frame.
    Truncated {
        offset: u64,
    },
    Pipe(PipeError),
}

impl fmt::Display for FramedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FramedError::Corrupt { err, offset } => write!(f, "{err} at offset {offset}"),
            FramedError::Truncated { offset } => {
                write!(f, "connection closed inside the frame at offset {offset}")
            }
            FramedError::Pipe(e) => write!(f, "{e}"),
        }
    }
}

/// The next thing on the read side.
pub enum Next<'a> {
    /// A frame and the bytes it occupies (pass them to [`FramedPipe::consume_frame`]).
    Frame(Frame<'a>, usize),
    /// No whole frame yet.
    Pending,
    /// The peer closed its side cleanly between frames.
    Eof,
}

struct OutFrame {
    header: [u8; frame::HEADER_LEN],
    data: Option<(u64, usize)>,
    inline: Vec<u8>,
    written: usize,
}

pub struct FramedPipe<P> {
    inner: P,
    max_payload: usize,
    raw_out: Vec<u8>,
    out: Option<OutFrame>,
    in_offset: u64,
}

impl<P: Pipe> FramedPipe<P> {
    pub fn new(inner: P, max_payload: usize) -> FramedPipe<P> {
        FramedPipe {
            inner,
            max_payload,
            raw_out: Vec::new(),
            out: None,
            in_offset: 0,
        }
    }

    pub fn inner(&self) -> &P {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut P {
        &mut self.inner
    }

    /// Queues bytes to write before any frame (the handshake).
    pub fn queue_raw(&mut self, bytes: &[u8]) {
        self.raw_out.extend_from_slice(bytes);
    }

    /// Nothing partly written: a new frame may be handed over.
    pub fn is_idle(&self) -> bool {
        self.out.is_none() && self.raw_out.is_empty()
    }

    /// The next whole frame in the read buffer, reading more if needed.
    pub fn next_frame(&mut self) -> Result<Next<'_>, FramedError> {
        let mut last = usize::MAX;
        let offset = self.in_offset;
        loop {
            let (len, need) = match self.inner.fill_buf().map_err(FramedError::Pipe)? {
                Readable::Pending => return Ok(Next::Pending),
                Readable::Eof => return Ok(Next::Eof),
                Readable::Bytes(b) => (
                    b.len(),
                    frame::needed(b, self.max_payload)
                        .map_err(|err| FramedError::Corrupt { err, offset })?,
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
        let Readable::Bytes(b) = self.inner.fill_buf().map_err(FramedError::Pipe)? else {
            unreachable!("bytes were buffered a moment ago");
        };
        match frame::decode(b, self.max_payload) {
            Ok(Some((f, n))) => Ok(Next::Frame(f, n)),
            Ok(None) => Ok(Next::Pending),
            Err(err) => Err(FramedError::Corrupt { err, offset }),
        }
    }

    /// Marks a frame returned by [`FramedPipe::next_frame`] as handled.
    pub fn consume_frame(&mut self, n: usize) {
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
        debug_assert!(self.out.is_none(), "a frame is already in progress");
        // The one place a frame header is encoded (and its check computed
        // over the payload).
        let header = match t.data {
            Some((off, len)) => {
                let (a, b) = payload(off, len);
                t.header.encode(&[a, b])
            }
            None => t.header.encode(&[&t.inline]),
        };
        self.out = Some(OutFrame {
            header,
            data: t.data,
            inline: t.inline,
            written: 0,
        });
        self.flush(payload)
    }

    /// Copies the payload of the frame in progress out of the session's
    /// send buffer, so the session may free those bytes (they were
    /// acknowledged through another stripe) while this stripe still has to
    /// finish the frame byte for byte.
    pub fn detach_payload<'s>(&mut self, payload: impl Fn(u64, usize) -> (&'s [u8], &'s [u8])) {
        if let Some(out) = &mut self.out
            && let Some((off, len)) = out.data.take()
        {
            let (a, b) = payload(off, len);
            out.inline = [a, b].concat();
        }
    }

    /// Writes what is queued. Returns true when nothing is left.
    pub fn flush<'s>(
        &mut self,
        payload: impl Fn(u64, usize) -> (&'s [u8], &'s [u8]),
    ) -> Result<bool, PipeError> {
        while !self.raw_out.is_empty() {
            let n = self.inner.write(&self.raw_out)?;
            if n == 0 {
                return Ok(false);
            }
            self.raw_out.drain(..n);
        }
        let Some(out) = &mut self.out else {
            return Ok(true);
        };
        let (a, b) = match out.data {
            Some((off, len)) => payload(off, len),
            None => (&out.inline[..], &[][..]),
        };
        let total = frame::HEADER_LEN + a.len() + b.len();
        while out.written < total {
            let mut slices = [IoSlice::new(&[]), IoSlice::new(&[]), IoSlice::new(&[])];
            let mut k = 0;
            let mut skip = out.written;
            for part in [&out.header[..], a, b] {
                if skip >= part.len() {
                    skip -= part.len();
                    continue;
                }
                slices[k] = IoSlice::new(&part[skip..]);
                skip = 0;
                k += 1;
            }
            let n = self.inner.write_vectored(&slices[..k])?;
            if n == 0 {
                return Ok(false);
            }
            out.written += n;
        }
        self.out = None;
        Ok(true)
    }
}
