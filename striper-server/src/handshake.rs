//! A new connection's handshake, as a task of its own: the IO around
//! [`ServerHandshake`], the sans-IO state machine in `pipes::proto`.
//!
//! A new connection is a `Handshake` until it has sent a valid ClientHello
//! and ClientAuth; only then does it reach a session (and through it the
//! target). The task stops twice: with the hello, so the server can judge
//! it against its sessions and answer; and with the proof, so the server can
//! move the socket into its session (it stays registered with the event
//! loop; the session takes it over under its own token). Whatever the peer
//! sends, the task ends within the handshake timeout.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::{Registry, Token};
use pipes::TcpPipe;
use pipes::proto::auth::Key;
use pipes::proto::handshake::{ClientHello, Secret, ServerHandshake, ServerStep, Status};
use pipes::proto::noise::{Keys, SERVER_ANSWER_LEN};
use striper_core::{Ctx, Pipe, Readable, Ready, TaskStatus, TokenSpan};

pub const CLOSED: &str = "closed the connection during the handshake";
pub const TIMED_OUT: &str = "did not complete its handshake in time";

/// Where a handshake stands when its task stops.
pub enum Progress {
    Reading,
    /// A valid hello: judge it and [`Handshake::answer`].
    HelloReceived(ClientHello),
    /// Hello answered and confirmation received: the stripe may join the
    /// session holding `secret`, sealing with `keys`.
    Complete {
        hello: ClientHello,
        secret: Secret,
        keys: Box<Keys>,
    },
    /// `class` is a fixed phrase for rate-limited logging ("failed
    /// authentication"); `why` the details.
    Failed {
        class: &'static str,
        why: String,
    },
    Cancelled,
}

pub struct Handshake {
    tcp: TcpPipe,
    /// When the connection was accepted (the oldest are evicted first when
    /// the server is at --max-pending).
    accepted_at: Instant,
    peer: SocketAddr,
    timeout: Duration,
    deadline: Option<Instant>,
    machine: ServerHandshake,
    progress: Progress,
}

impl Handshake {
    pub fn new(tcp: TcpPipe, key: Option<Key>, peer: SocketAddr, timeout: Duration) -> Handshake {
        let key = key.unwrap_or_else(Key::none);
        Handshake {
            tcp,
            accepted_at: Instant::now(),
            peer,
            timeout,
            deadline: None,
            machine: ServerHandshake::new(key),
            progress: Progress::Reading,
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn accepted_at(&self) -> Instant {
        self.accepted_at
    }

    /// Nothing has arrived from the peer yet, not even unread in the
    /// socket (an honest stripe's hello comes with its connection).
    pub fn is_silent(&self) -> bool {
        self.tcp.bytes_read() == 0 && pipes::sys::inq(self.tcp.raw_fd()).is_ok_and(|n| n == 0)
    }

    pub fn progress(&mut self) -> Progress {
        std::mem::replace(&mut self.progress, Progress::Reading)
    }

    pub fn cancel(&mut self) {
        self.progress = Progress::Cancelled;
    }

    /// The connection, still registered with the event loop (under this
    /// task's token) when the handshake completed.
    pub fn into_tcp(self) -> TcpPipe {
        self.tcp
    }

    /// Sends the server's verdict on the hello; with `Status::Ok` the task
    /// goes on to read the client's proof.
    pub fn answer(&mut self, status: Status, window: u32, max_payload: u32) -> Result<(), String> {
        let answer = self.machine.answer(status, window, max_payload);
        // A fresh socket always has room for 64 bytes; anything else means
        // the peer is already gone.
        match self.tcp.write(&answer) {
            Ok(SERVER_ANSWER_LEN) => Ok(()),
            Ok(_) => Err("the connection would not take the 64-byte answer".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn fail(&mut self, class: &'static str, why: String) -> TaskStatus {
        self.progress = Progress::Failed { class, why };
        TaskStatus::Done
    }

    /// The connection is registered with the event loop once for its whole
    /// life: when the task comes back after its hello was answered it only
    /// gets its new token.
    pub fn register(&mut self, registry: &Registry, span: TokenSpan) -> io::Result<()> {
        if self.tcp.token().is_some() {
            self.tcp.reregister(registry, span.token(0))
        } else {
            self.tcp.register(registry, span)
        }
    }

    /// A handshake that stops to be judged, or that completed, keeps its
    /// socket registered: it comes back, or a session takes it over.
    pub fn deregister(&mut self, registry: &Registry) {
        if !matches!(
            self.progress,
            Progress::HelloReceived(_) | Progress::Complete { .. }
        ) {
            self.tcp.deregister(registry)
        }
    }

    pub fn on_ready(&mut self, token: Token, ready: Ready) {
        self.tcp.on_ready(token, ready)
    }

    pub fn run(&mut self, cx: &mut Ctx<'_>) -> TaskStatus {
        if matches!(self.progress, Progress::Cancelled) {
            return TaskStatus::Done;
        }
        let deadline = *self.deadline.get_or_insert(cx.now + self.timeout);
        // A client that finds our proof wrong (another key) hangs up here.
        let when = if self.machine.awaiting_proof() {
            " before proving the key (a client with another key does this, or one that gave up waiting for our answer)"
        } else {
            ""
        };
        let bytes = match self.tcp.fill_buf() {
            Err(e) => return self.fail(CLOSED, format!("{e}{when}")),
            Ok(Readable::Eof) => return self.fail(CLOSED, format!("closed{when}")),
            Ok(Readable::Pending) => &[][..],
            Ok(Readable::Bytes(b)) => b,
        };
        let (used, step) = self.machine.handle(bytes);
        self.tcp.consume(used);
        match step {
            ServerStep::Pending => {}
            ServerStep::Hello(hello) => {
                self.progress = Progress::HelloReceived(hello);
                return TaskStatus::Done;
            }
            ServerStep::Complete {
                hello,
                secret,
                keys,
            } => {
                self.progress = Progress::Complete {
                    hello,
                    secret,
                    keys,
                };
                return TaskStatus::Done;
            }
            ServerStep::Failed { class, why, reply } => {
                if !reply.is_empty() {
                    let _ = self.tcp.write(&reply);
                }
                return self.fail(class, why);
            }
        }
        if self.tcp.at_eof() {
            return self.fail(
                CLOSED,
                format!("closed in the middle of the handshake{when}"),
            );
        }
        if cx.now >= deadline {
            return self.fail(
                TIMED_OUT,
                format!(
                    "no complete handshake within {:.0} s",
                    self.timeout.as_secs_f64()
                ),
            );
        }
        TaskStatus::Idle
    }
}
