//! A client stripe made by hand from the protocol (v3; the module kept its name), for the tests that
//! must send what the real stripe-client never sends: frames that break
//! the protocol, a session's id with another secret, a handshake on a
//! chosen source address.
//!
//! [`RawStripe::handshake`] runs the stripe handshake with the protocol's
//! own state machine ([`ClientHandshake`]): the preamble and the Noise
//! first message out, the server's 64-byte answer in, the confirmation
//! (the first sealed record, holding the session's secret) out. After
//! that every frame is one sealed record each way, sealed and opened here
//! with the stripe's keys, so a malformed frame passes the record's tag
//! and reaches the server's frame and session checks. [`EchoSession`] is
//! the smallest session that works through a server to an echo target:
//! one stripe, DATA out, DATA back in order, ACKs, PONGs and a clean FIN.
//!
//! Every read has a deadline.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use pipes::proto::auth::Key;
use pipes::proto::frame::{self, ACK_FIN, FrameType, ResetReason};
use pipes::proto::handshake::{
    ClientHandshake, ClientHello, ClientStep, Kind, Secret, SessionId, Status, TargetName,
};
use pipes::proto::noise::SERVER_ANSWER_LEN;
use pipes::proto::seal::{Opener, Sealer};

use super::{IO_TIMEOUT, KeyFile, with_timeouts};

/// The receive window a hand-made stripe announces.
pub const WINDOW: u32 = 1 << 20;
/// The largest DATA payload it announces (and accepts).
pub const MAX_PAYLOAD: u32 = 64 * 1024;

/// The key in a key file, read as the binaries read it.
pub fn key_of(k: &KeyFile) -> Key {
    pipes::keyfile::load(k.path()).unwrap_or_else(|e| panic!("{e}"))
}

/// A hello with this stripe's window and payload cap.
pub fn hello(kind: Kind, index: u8, count: u8, session: SessionId) -> ClientHello {
    ClientHello {
        kind,
        index,
        count,
        session,
        window: WINDOW,
        max_payload: MAX_PAYLOAD,
        backup: false,
        target: TargetName::DEFAULT,
    }
}

/// The `n`th extra loopback address, 127.0.0.(n+1), n >= 1. The server
/// logs a refusal once per address and kind, so a test that wants to see
/// each one sends each from its own address.
pub fn loopback(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n + 1)
}

/// A connection to `to` from `src` (any port), with timeouts.
pub fn connect_from(src: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.bind(&SocketAddr::new(IpAddr::V4(src), 0).into())
        .unwrap_or_else(|e| panic!("bind {src}: {e}"));
    sock.connect_timeout(&to.into(), IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {src} -> {to}: {e}"));
    with_timeouts(sock.into())
}

/// Reads until `n` bytes are in, the stream ends, or `limit` elapsed.
/// Returns the bytes and, if it ended short, how: EOF (`Ok`), the error,
/// or `TimedOut`.
pub fn read_up_to(
    s: &mut TcpStream,
    n: usize,
    limit: Duration,
) -> (Vec<u8>, Option<Result<(), io::ErrorKind>>) {
    let deadline = Instant::now() + limit;
    let mut got = vec![0u8; n];
    let mut have = 0;
    while have < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            got.truncate(have);
            return (got, Some(Err(io::ErrorKind::TimedOut)));
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut got[have..]) {
            Ok(0) => {
                got.truncate(have);
                return (got, Some(Ok(())));
            }
            Ok(k) => have += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                got.truncate(have);
                let kind = match e.kind() {
                    io::ErrorKind::WouldBlock => io::ErrorKind::TimedOut,
                    k => k,
                };
                return (got, Some(Err(kind)));
            }
        }
    }
    (got, None)
}

/// One frame as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub ty: FrameType,
    pub flags: u8,
    pub value: u64,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The reason and message, if this is an RST.
    pub fn rst(&self) -> Option<(ResetReason, String)> {
        (self.ty == FrameType::Rst).then(|| frame::parse_rst(&self.payload))
    }
}

/// A server's answer short of taking the stripe.
#[derive(Debug)]
pub enum Refused {
    /// The connection ended (or `limit` passed) before a whole answer:
    /// what came, how it ended, and when after the first flight was sent.
    Closed {
        answer: Vec<u8>,
        ended: Result<(), io::ErrorKind>,
        took: Duration,
    },
    /// A whole answer, refusing the stripe with this status.
    Status(Status),
    /// A whole answer this client cannot take (its description).
    Invalid(String),
}

/// A stripe past its handshake: frames go out and come in sealed with its
/// keys.
pub struct RawStripe {
    s: TcpStream,
    send: Sealer,
    recv: Opener,
    inbuf: Vec<u8>,
    /// The server's answer as it was on the wire.
    pub answer: Vec<u8>,
    /// The server's receive window and DATA payload cap.
    pub window: u32,
    pub max_payload: u32,
}

impl RawStripe {
    /// Runs the handshake for `hello` on `s` with `key`, confirming with
    /// `secret`; the server must answer within `limit`.
    pub fn handshake(
        mut s: TcpStream,
        hello: &ClientHello,
        key: &Key,
        secret: Secret,
        limit: Duration,
    ) -> Result<RawStripe, Refused> {
        let (mut hs, first) = ClientHandshake::start(hello, key, secret);
        let sent = Instant::now();
        if let Err(e) = s.write_all(&first) {
            return Err(Refused::Closed {
                answer: Vec::new(),
                ended: Err(e.kind()),
                took: sent.elapsed(),
            });
        }
        let (answer, ended) = read_up_to(&mut s, SERVER_ANSWER_LEN, limit);
        if let Some(ended) = ended {
            let took = sent.elapsed();
            return Err(Refused::Closed {
                answer,
                ended,
                took,
            });
        }
        match hs.handle(&answer) {
            ClientStep::Accepted {
                keys,
                send,
                window,
                max_payload,
            } => {
                let keys = *keys;
                s.write_all(&send).expect("send the confirmation");
                Ok(RawStripe {
                    s,
                    send: keys.send,
                    recv: keys.recv,
                    inbuf: Vec::new(),
                    answer,
                    window,
                    max_payload,
                })
            }
            ClientStep::Refused(status) => Err(Refused::Status(status)),
            ClientStep::Malformed(e) => Err(Refused::Invalid(e.to_string())),
            ClientStep::BadProof(e) => Err(Refused::Invalid(e.to_string())),
            ClientStep::Pending => unreachable!("the whole answer is in"),
        }
    }

    /// Connects to `server` and runs [`RawStripe::handshake`]; panics
    /// unless the server takes the stripe.
    pub fn open(server: SocketAddr, hello: &ClientHello, key: &Key, secret: Secret) -> RawStripe {
        let s = super::connect(server);
        RawStripe::handshake(s, hello, key, secret, IO_TIMEOUT)
            .unwrap_or_else(|r| panic!("the server did not take the stripe: {r:?}"))
    }

    /// The connection (its local address, a half-close).
    pub fn stream(&self) -> &TcpStream {
        &self.s
    }

    /// Seals `frames`, one record each, and writes them in one go.
    pub fn send(&mut self, frames: &[Vec<u8>]) -> io::Result<()> {
        let mut out = Vec::new();
        for f in frames {
            out.extend(self.seal(f));
        }
        self.s.write_all(&out)
    }

    /// Seals `plain` as the next record and returns it, unsent (to be
    /// altered, say, and written with [`RawStripe::write_raw`]).
    pub fn seal(&mut self, plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.send.seal(&[plain], &mut out).expect("seal a record");
        out
    }

    /// Writes `bytes` as they are.
    pub fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.s.write_all(bytes)
    }

    /// Opens the record at the front of what was read, if it is all in.
    fn open_buffered(&mut self) -> io::Result<Option<Frame>> {
        let max = frame::HEADER_LEN + MAX_PAYLOAD as usize;
        let (plain, n) = match self.recv.open(&mut self.inbuf, max) {
            Ok(Some((plain, n))) => (plain.to_vec(), n),
            Ok(None) => return Ok(None),
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        };
        self.inbuf.drain(..n);
        match frame::decode_sealed(&plain, MAX_PAYLOAD as usize) {
            Ok(f) => Ok(Some(Frame {
                ty: f.header.ty,
                flags: f.header.flags,
                value: f.header.value,
                payload: f.payload.to_vec(),
            })),
            Err(e) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a record that is not one frame: {e}"),
            )),
        }
    }

    /// The next frame from the server, waiting at most `limit`.
    pub fn recv(&mut self, limit: Duration) -> io::Result<Frame> {
        let deadline = Instant::now() + limit;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(f) = self.open_buffered()? {
                return Ok(f);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.s.set_read_timeout(Some(left))?;
            match self.s.read(&mut buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads until the server closes the stripe (or `limit` passed), and
    /// opens what came: see [`Closing`].
    pub fn read_to_close(&mut self, limit: Duration) -> Closing {
        let started = Instant::now();
        let (bytes, ended) = super::read_to_close(&mut self.s, limit);
        let took = started.elapsed();
        self.inbuf.extend_from_slice(&bytes);
        let mut frames = Vec::new();
        let mut bad = None;
        loop {
            match self.open_buffered() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => {
                    bad = Some(e.to_string());
                    break;
                }
            }
        }
        Closing {
            bytes: bytes.len(),
            frames,
            bad,
            unopened: self.inbuf.len(),
            ended,
            took,
        }
    }
}

/// What came on a stripe until the server closed it.
#[derive(Debug)]
pub struct Closing {
    /// Bytes received.
    pub bytes: usize,
    /// The frames in the records that opened, in order.
    pub frames: Vec<Frame>,
    /// Why a record did not open, if one did not.
    pub bad: Option<String>,
    /// Bytes left after the last record that opened (a record cut short).
    pub unopened: usize,
    /// EOF, the error (a reset), or `TimedOut`.
    pub ended: Result<(), io::ErrorKind>,
    pub took: Duration,
}

impl Closing {
    /// The first RST among the frames, as (reason, message).
    pub fn rst(&self) -> Option<(ResetReason, String)> {
        self.frames.iter().find_map(Frame::rst)
    }
}

/// A DATA frame.
pub fn data(offset: u64, payload: &[u8]) -> Vec<u8> {
    frame::encode_sealed_vec(FrameType::Data, 0, offset, payload)
}

/// A one-stripe session whose far end echoes, driven by hand.
pub struct EchoSession {
    pub stripe: RawStripe,
    sent: u64,
    received: u64,
}

/// Largest DATA payload an [`EchoSession`] sends.
const CHUNK: usize = 16 * 1024;

fn protocol(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl EchoSession {
    pub fn new(stripe: RawStripe) -> EchoSession {
        EchoSession {
            stripe,
            sent: 0,
            received: 0,
        }
    }

    /// Bytes sent and received so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.sent, self.received)
    }

    /// Goes on over `stripe` (the session's stripe re-joined); returns the
    /// one it replaces.
    pub fn replace_stripe(&mut self, stripe: RawStripe) -> RawStripe {
        std::mem::replace(&mut self.stripe, stripe)
    }

    /// Takes one frame from the server: DATA in order (appended to `back`),
    /// a PING answered; returns the frame.
    fn take(&mut self, limit: Duration, back: &mut Vec<u8>) -> io::Result<Frame> {
        let f = self.stripe.recv(limit)?;
        match f.ty {
            FrameType::Data => {
                if f.value > self.received {
                    return Err(protocol(format!(
                        "DATA at {} while {} bytes came in order",
                        f.value, self.received
                    )));
                }
                let skip = ((self.received - f.value) as usize).min(f.payload.len());
                back.extend_from_slice(&f.payload[skip..]);
                self.received += (f.payload.len() - skip) as u64;
            }
            FrameType::Ping => {
                let pong = frame::encode_sealed_vec(FrameType::Pong, 0, f.value, &[]);
                self.stripe.send(&[pong])?;
            }
            FrameType::Rst => return Err(protocol(format!("RST {:?}", f.rst()))),
            _ => {}
        }
        Ok(f)
    }

    fn ack(&mut self, flags: u8) -> io::Result<()> {
        let ack = frame::encode_sealed_vec(FrameType::Ack, flags, self.received, &[]);
        self.stripe.send(&[ack])
    }

    /// Sends `bytes` and returns as many bytes as came back (acknowledged),
    /// within `limit`.
    pub fn echo(&mut self, bytes: &[u8], limit: Duration) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + limit;
        let frames: Vec<Vec<u8>> = bytes
            .chunks(CHUNK)
            .map(|c| {
                let f = data(self.sent, c);
                self.sent += c.len() as u64;
                f
            })
            .collect();
        self.stripe.send(&frames)?;
        let mut back = Vec::new();
        while back.len() < bytes.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = self.take(left, &mut back)?;
            if f.ty == FrameType::Fin {
                return Err(protocol(format!("FIN at {} before the echo", f.value)));
            }
        }
        self.ack(0)?;
        Ok(back)
    }

    /// Ends the session cleanly: our FIN, the echo's FIN back (all its
    /// bytes before it), our ACK of it, then both sides closed. Returns
    /// how the server closed the stripe.
    pub fn finish(mut self, limit: Duration) -> io::Result<Closing> {
        let deadline = Instant::now() + limit;
        let fin = frame::encode_sealed_vec(FrameType::Fin, 0, self.sent, &[]);
        self.stripe.send(&[fin])?;
        let mut back = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = self.take(left, &mut back)?;
            if f.ty == FrameType::Fin {
                if f.value != self.received || !back.is_empty() {
                    return Err(protocol(format!(
                        "FIN at {} after {} bytes ({} unexpected)",
                        f.value,
                        self.received,
                        back.len()
                    )));
                }
                break;
            }
        }
        self.ack(ACK_FIN)?;
        self.stripe.s.shutdown(Shutdown::Write)?;
        let left = deadline.saturating_duration_since(Instant::now());
        Ok(self.stripe.read_to_close(left))
    }
}
