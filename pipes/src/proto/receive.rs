//! The incoming stream: reassembly of the peer's DATA, its FIN, and the
//! data-level acknowledgements that tell it what our application took.

use super::reassembly::{Reassembler, ReassemblyError};

pub struct RecvStream {
    reasm: Reassembler,
    /// The final length of the peer's stream, once its FIN arrived.
    fin: Option<u64>,
    /// ACK every this many delivered bytes (an eighth of the window).
    ack_step: u64,
    ack_sent: u64,
    ack_due: bool,
    fin_ack_sent: bool,
}

/// A FIN that disagrees with an earlier FIN or with data already seen.
#[derive(Debug)]
pub struct FinMismatch {
    pub seen: u64,
}

impl RecvStream {
    pub fn new(window: u64, max_pieces: usize) -> RecvStream {
        RecvStream {
            reasm: Reassembler::new(window, max_pieces),
            fin: None,
            ack_step: (window / 8).max(1),
            ack_sent: 0,
            ack_due: false,
            fin_ack_sent: false,
        }
    }

    pub fn on_data(&mut self, offset: u64, payload: &[u8]) -> Result<(), ReassemblyError> {
        self.reasm.insert(offset, payload, self.fin)
    }

    pub fn on_fin(&mut self, at: u64) -> Result<(), FinMismatch> {
        let seen = self.reasm.delivered() + self.reasm.buffered();
        if self.fin.is_some_and(|f| f != at) || at < seen {
            return Err(FinMismatch { seen });
        }
        self.fin = Some(at);
        if self.read_eof() {
            self.ack_due = true;
        }
        Ok(())
    }

    /// In-order bytes ready for the application.
    pub fn readable(&self) -> &[u8] {
        self.reasm.readable()
    }

    /// The application took `n` bytes of [`RecvStream::readable`].
    pub fn consume(&mut self, n: usize) {
        self.reasm.consume(n);
        let delivered = self.reasm.delivered();
        if delivered - self.ack_sent >= self.ack_step || delivered == self.reasm.ready() {
            self.ack_due = true;
        }
    }

    /// The peer's FIN has been reached: the application has read everything.
    pub fn read_eof(&self) -> bool {
        self.fin == Some(self.reasm.delivered())
    }

    /// Bytes delivered to our application.
    pub fn delivered(&self) -> u64 {
        self.reasm.delivered()
    }

    /// Bytes held that our application has not taken.
    pub fn buffered(&self) -> u64 {
        self.reasm.buffered()
    }

    /// Anything at all came from the peer (an ACK then tells it where we are).
    pub fn has_state(&self) -> bool {
        self.reasm.delivered() > 0 || self.fin.is_some()
    }

    /// Our latest ACK may have been lost (its stripe died, a new one came):
    /// send it again if there is anything to say.
    pub fn repeat_ack(&mut self) {
        if self.has_state() {
            self.ack_due = true;
        }
    }

    pub fn ack_due(&self) -> bool {
        self.ack_due
    }

    /// The ACK to send now: the delivered offset, and whether it also
    /// acknowledges the peer's FIN.
    pub fn take_ack(&mut self) -> (u64, bool) {
        self.ack_due = false;
        self.ack_sent = self.reasm.delivered();
        let fin = self.read_eof();
        self.fin_ack_sent |= fin;
        (self.ack_sent, fin)
    }

    /// Our application read to the peer's FIN and we told the peer so.
    pub fn finished(&self) -> bool {
        self.read_eof() && self.fin_ack_sent
    }

    pub fn capacity(&self) -> usize {
        self.reasm.capacity()
    }

    pub fn release_if_empty(&mut self) {
        self.reasm.release_if_empty();
    }
}
