//! The server side of a stripe's handshake, as a task of its own.
//!
//! A new connection is a `Handshake` until it has sent a valid ClientHello
//! and ClientAuth; only then does it reach a session (and through it the
//! target). The task stops twice: with the hello, so the server can judge
//! it against its sessions and answer; and with the proof, so the server can
//! move the socket into its session. Whatever the peer sends, the task ends
//! within the handshake timeout.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::{Registry, Token};
use pipes::TcpPipe;
use pipes::proto::auth::Key;
use pipes::proto::frame::{FrameType, ResetReason, encode_vec, rst_payload};
use pipes::proto::handshake::{
    CLIENT_AUTH_LEN, CLIENT_HELLO_LEN, ClientHello, HandshakeError, PROOF_LEN, SERVER_HELLO_LEN,
    ServerHello, Status,
};
use striper_core::{Ctx, Pipe, Readable, Ready, TaskStatus, TokenSpan};

const CLOSED: &str = "closed the connection during the handshake";

/// Where a handshake stands when its task stops.
pub enum Progress {
    Reading,
    /// A valid hello: judge it and [`Handshake::answer`].
    HelloReceived(ClientHello),
    /// Hello answered and proof received: the stripe may join its session.
    Complete(ClientHello),
    /// `class` is a fixed phrase for rate-limited logging ("failed
    /// authentication"); `why` the details.
    Failed {
        class: &'static str,
        why: String,
    },
    Cancelled,
}

enum Phase {
    Hello,
    /// Waiting for the client's proof over this transcript.
    Auth {
        hello: ClientHello,
        transcript: [u8; SERVER_HELLO_LEN],
    },
}

pub struct Handshake {
    tcp: TcpPipe,
    /// When the connection was accepted (the oldest are evicted first when
    /// the server is at --max-pending).
    accepted_at: Instant,
    key: Option<Key>,
    peer: SocketAddr,
    timeout: Duration,
    deadline: Option<Instant>,
    phase: Phase,
    progress: Progress,
}

impl Handshake {
    pub fn new(tcp: TcpPipe, key: Option<Key>, peer: SocketAddr, timeout: Duration) -> Handshake {
        Handshake {
            tcp,
            accepted_at: Instant::now(),
            key,
            peer,
            timeout,
            deadline: None,
            phase: Phase::Hello,
            progress: Progress::Reading,
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn accepted_at(&self) -> Instant {
        self.accepted_at
    }

    pub fn progress(&mut self) -> Progress {
        std::mem::replace(&mut self.progress, Progress::Reading)
    }

    pub fn cancel(&mut self) {
        self.progress = Progress::Cancelled;
    }

    pub fn into_tcp(self) -> TcpPipe {
        self.tcp
    }

    /// Sends the server's answer to `hello`; with `Status::Ok` the task
    /// goes on to read the client's proof.
    pub fn answer(
        &mut self,
        hello: &ClientHello,
        status: Status,
        window: u32,
        max_payload: u32,
    ) -> Result<(), String> {
        let mut nonce = [0u8; 16];
        rand::fill(&mut nonce);
        let mut answer = ServerHello {
            status,
            nonce,
            window,
            max_payload,
            proof: [0; PROOF_LEN],
        };
        let transcript = answer.transcript();
        if let Some(key) = &self.key
            && status == Status::Ok
        {
            answer.proof = key.server_proof(&hello.encode(), &transcript);
        }
        // A fresh socket always has room for 64 bytes; anything else means
        // the peer is already gone.
        match self.tcp.write(&answer.encode()) {
            Ok(SERVER_HELLO_LEN) => {}
            Ok(_) => return Err("the connection would not take the 64-byte answer".into()),
            Err(e) => return Err(e.to_string()),
        }
        if status == Status::Ok {
            self.phase = Phase::Auth {
                hello: hello.clone(),
                transcript,
            };
        }
        Ok(())
    }

    fn fail(&mut self, class: &'static str, why: String) -> TaskStatus {
        self.progress = Progress::Failed { class, why };
        TaskStatus::Done
    }

    /// The client's proof is wrong: tell it why with an RST frame (it may
    /// already be sending frames), then close.
    fn auth_failed(&mut self) -> TaskStatus {
        let why = "authentication failed: the client's proof does not match this server's key (wrong key, or none)";
        let _ = self.tcp.write(&encode_vec(
            FrameType::Rst,
            0,
            0,
            &rst_payload(ResetReason::Auth, why),
        ));
        self.fail("failed authentication", why.to_string())
    }

    fn refuse(&mut self, e: &HandshakeError) -> TaskStatus {
        // A striper client of another version, or a broken one, gets told
        // why; anything else (not even our magic) just gets closed.
        if matches!(e, HandshakeError::BadMagic(_)) {
            return self.fail(
                "sent bytes that are not a striper handshake",
                format!("{e}"),
            );
        }
        {
            let hello = ServerHello {
                status: e.status(),
                nonce: [0; 16],
                window: 0,
                max_payload: 0,
                proof: [0; PROOF_LEN],
            };
            let _ = self.tcp.write(&hello.encode());
        }
        self.fail("sent an invalid handshake", format!("{e}"))
    }

    pub fn register(&mut self, registry: &Registry, span: TokenSpan) -> io::Result<()> {
        self.tcp.register(registry, span)
    }

    pub fn deregister(&mut self, registry: &Registry) {
        self.tcp.deregister(registry)
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
        let when = match self.phase {
            Phase::Hello => "",
            Phase::Auth { .. } => {
                " before proving the key (a client with another key does this, or one that gave up waiting for our answer)"
            }
        };
        let bytes = match self.tcp.fill_buf() {
            Err(e) => return self.fail(CLOSED, format!("{e}{when}")),
            Ok(Readable::Eof) => return self.fail(CLOSED, format!("closed{when}")),
            Ok(Readable::Pending) => &[][..],
            Ok(Readable::Bytes(b)) => b,
        };
        match &self.phase {
            Phase::Hello => match ClientHello::parse(bytes) {
                Ok(Some(hello)) => {
                    self.tcp.consume(CLIENT_HELLO_LEN);
                    self.progress = Progress::HelloReceived(hello);
                    return TaskStatus::Done;
                }
                Ok(None) => {}
                Err(e) => return self.refuse(&e),
            },
            Phase::Auth { hello, transcript } => {
                if bytes.len() >= CLIENT_AUTH_LEN {
                    let hello = hello.clone();
                    let proven = self.key.as_ref().is_none_or(|k| {
                        k.verify_client(&hello.encode(), transcript, &bytes[..CLIENT_AUTH_LEN])
                    });
                    if !proven {
                        return self.auth_failed();
                    }
                    self.tcp.consume(CLIENT_AUTH_LEN);
                    self.progress = Progress::Complete(hello);
                    return TaskStatus::Done;
                }
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
                "did not complete its handshake in time",
                format!(
                    "no complete handshake within {:.0} s",
                    self.timeout.as_secs_f64()
                ),
            );
        }
        TaskStatus::Idle
    }
}
