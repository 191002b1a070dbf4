//! stripe-server: accepts stripes from stripe-clients, groups them into
//! sessions, and relays each session to the configured target.

mod admission;
mod handshake;
mod targets;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser};
use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::{Registry, Token};
use pipes::proto::handshake::{ClientHello, Kind, Secret, SessionId, Status, short_id};
use pipes::proto::noise::Keys;
use pipes::report;
use pipes::{StripedConfig, StripedPipe, TcpPipe};
use striper_core::cfgfile::Reload;
use striper_core::cli::{AuthOpts, Command, ConfigOpts, MetricsOpts, TuningOpts};
use striper_core::config::{log_fd_limit, parse_secs, parse_size};
use striper_core::daemon::{Daemon, ListenerId, Listeners, Service};
use striper_core::metrics::{Recorder, Snapshot};
use striper_core::reactor::TICK;
use striper_core::{
    Bridge, Ctx, ErrorKind, PipeError, Reactor, Ready, Task, TaskStatus, TokenSpan,
};

use admission::{Admission, Candidate, REFUSAL_KINDS};
use handshake::{Handshake, Progress};
use targets::{TargetSpec, Targets, describe, parse_target, resolve_targets};

/// Accept striped sessions from stripe-clients and relay each to a target.
///
/// Every session's stripes arrive as separate TCP connections; the server
/// groups them by session id, connects to the session's --target once,
/// and reassembles the byte stream in order.
///
/// Examples:
///   stripe-server --listen 0.0.0.0:7900 --target 127.0.0.1:22
///   stripe-server --listen 0.0.0.0:7900 --target 127.0.0.1:22 \
///       --target db=127.0.0.1:5432 --target web=10.0.0.5:80
///
/// SIGHUP re-reads the --config file: targets and session limits apply to
/// new sessions; live sessions go on untouched.
///
/// Logs go to standard error; set RUST_LOG=debug for per-stripe detail.
#[derive(Parser, Debug)]
#[command(
    name = "stripe-server",
    version,
    verbatim_doc_comment,
    subcommand_negates_reqs = true
)]
struct Opts {
    #[command(subcommand)]
    command: Option<Command>,

    /// Address to accept stripes on, e.g. 0.0.0.0:7900 or [::]:7900.
    #[arg(short, long, value_name = "ADDR", required = true)]
    listen: Option<String>,

    /// Where sessions are relayed to. HOST:PORT is the default target
    /// (sessions from a client's --listen); NAME=HOST:PORT is the target a
    /// client's `--forward ADDR=NAME` asks for. Repeatable; in a config
    /// file, a list. Resolved at start (and at a reload); clients can reach
    /// no other destination, and a name the server lacks is refused.
    #[arg(short, long, value_name = "[NAME=]HOST:PORT", required = true,
          value_parser = parse_target)]
    target: Vec<TargetSpec>,

    /// Most sessions open at once; stripes of new sessions beyond it are refused.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_sessions: usize,

    /// Most stripes one session may have; a client asking for more is refused.
    #[arg(long, value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u8).range(1..=64))]
    max_stripes: u8,

    /// Most connections in their handshake at once. Beyond it the oldest
    /// silent handshake (nothing received for 0.1 s), else the oldest one
    /// over 1 s old, is closed to make room; otherwise new connections wait
    /// in the listen queue.
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_pending: usize,

    /// Connections in their handshake from one address (one /64 for IPv6)
    /// beyond which a new one from it first reclaims the address's own
    /// stale handshakes (silent for 0.1 s, or in progress for 1 s).
    /// Default: a quarter of --max-pending.
    #[arg(long, value_name = "N")]
    max_pending_per_source: Option<usize>,

    /// Memory the sessions' buffers may hold in all (send and reassembly
    /// buffers, stripe and target read buffers). While they hold more, new
    /// sessions are refused ("server busy"); the sessions in progress go
    /// on, each bounded by --window.
    #[arg(long, value_name = "BYTES", default_value = "1G", value_parser = parse_size)]
    memory_budget: u64,

    /// Seconds a new connection has to complete its handshake.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    handshake_timeout: Duration,

    #[command(flatten)]
    config: ConfigOpts,

    #[command(flatten)]
    auth: AuthOpts,

    #[command(flatten)]
    tuning: TuningOpts,

    #[command(flatten)]
    metrics: MetricsOpts,
}

/// Finished session ids remembered, so a stripe naming one is refused.
const FINISHED_MEMORY: usize = 65_536;

fn main() -> ExitCode {
    match striper_core::cli::parse::<Opts>(|o| &o.command) {
        Ok(mut opts) => pipes::config::main(opts.command.take(), || run(opts)),
        Err(code) => code,
    }
}

enum ServerTask {
    Handshake(Box<Handshake>),
    Session(Box<SessionTask>),
}

struct SessionTask {
    bridge: Bridge<StripedPipe, TcpPipe>,
    client: SocketAddr,
    /// "target [NAME ]HOST:PORT", for its log lines.
    target: String,
    started: Instant,
}

impl Task for ServerTask {
    fn register(&mut self, registry: &Registry, span: TokenSpan) -> io::Result<()> {
        match self {
            ServerTask::Handshake(h) => h.register(registry, span),
            ServerTask::Session(s) => s.bridge.register(registry, span),
        }
    }
    fn deregister(&mut self, registry: &Registry) {
        match self {
            ServerTask::Handshake(h) => h.deregister(registry),
            ServerTask::Session(s) => s.bridge.deregister(registry),
        }
    }
    fn on_ready(&mut self, token: Token, ready: Ready) {
        match self {
            ServerTask::Handshake(h) => h.on_ready(token, ready),
            ServerTask::Session(s) => s.bridge.on_ready(token, ready),
        }
    }
    fn run(&mut self, cx: &mut Ctx<'_>) -> TaskStatus {
        match self {
            ServerTask::Handshake(h) => h.run(cx),
            ServerTask::Session(s) => s.bridge.run(cx),
        }
    }
    fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        match self {
            ServerTask::Handshake(_) => Some(now + TICK),
            ServerTask::Session(s) => s.bridge.poll_timeout(now),
        }
    }
}

struct Server {
    reactor: Reactor<ServerTask>,
    cfg: StripedConfig,
    targets: Targets,
    reload: Reload,
    max_sessions: usize,
    max_stripes: u8,
    memory_budget: u64,
    admission: Admission,
    handshake_timeout: Duration,
    sessions: HashMap<SessionId, usize>,
    finished: HashSet<SessionId>,
    finished_order: VecDeque<SessionId>,
    recorder: Recorder,
}

fn run(opts: Opts) -> Result<ExitCode, String> {
    let cfg = pipes::config::from_opts(&opts.tuning, &opts.auth)?;
    let listen = opts.listen.expect("required");
    let targets = resolve_targets(&opts.target)?;
    // Sessions of the client's default 4 stripes: the usual case.
    log_fd_limit(4, Some(opts.max_sessions as u64));
    let (recorder, metrics) = Recorder::new(&REFUSAL_KINDS);
    let server = Server {
        reactor: Reactor::new().map_err(|e| e.to_string())?,
        cfg,
        targets,
        reload: Reload::new(&Opts::command())?,
        max_stripes: opts.max_stripes,
        max_sessions: opts.max_sessions.max(1),
        memory_budget: opts.memory_budget,
        admission: Admission::new(
            opts.max_pending,
            opts.max_pending_per_source
                .unwrap_or(opts.max_pending / 4)
                .max(1),
        ),
        handshake_timeout: opts.handshake_timeout,
        sessions: HashMap::new(),
        finished: HashSet::new(),
        finished_order: VecDeque::new(),
        recorder,
    };
    let (mut daemon, local) = Daemon::listen(server.reactor.registry(), &listen)?;
    info!(
        "listening on {local}, relaying sessions to {}",
        describe(&server.targets)
    );
    if let Some(addr) = &opts.metrics.metrics {
        let local = daemon.export_metrics(server.reactor.registry(), addr, metrics)?;
        info!("serving metrics at http://{local}/metrics");
    }
    if server.cfg.key.is_none() {
        warn!(
            "running WITHOUT authentication (--insecure-no-auth): anyone who can reach {local} \
             can use this tunnel to reach its targets"
        );
    }
    daemon.serve(server)
}

impl Service for Server {
    type Task = ServerTask;
    const NAME: &'static str = "stripe-server";
    const LOG_TARGET: &'static str = module_path!();

    fn reactor(&mut self) -> &mut Reactor<ServerTask> {
        &mut self.reactor
    }

    fn accepted(&mut self, _: ListenerId, sock: TcpStream, peer: SocketAddr) {
        // A source at its own limit makes room from its own stale
        // handshakes first. Its young ones may be an honest burst (a
        // stripe's hello often arrives just after the connection is
        // accepted), so it is not refused for them: --max-pending bounds
        // everyone together.
        if !self.admission.source_has_room(peer) {
            self.evict(Some(peer));
        }
        let tcp = TcpPipe::accepted(sock, format!("client {peer}"));
        let h = Handshake::new(tcp, self.cfg.key.clone(), peer, self.handshake_timeout);
        if self.spawn_accepted(ServerTask::Handshake(Box::new(h)), peer) {
            self.admission.add(peer);
        }
    }

    /// Below --max-pending, or once a silent or old handshake made room.
    /// When every slot is young and talking, the rest wait in the kernel's
    /// listen queue, so a burst of honest clients waits a moment instead of
    /// being cut off; accepting resumes as handshakes finish or grow old
    /// enough to evict.
    fn admit(&mut self) -> bool {
        self.admission.has_room() || self.evict(None)
    }

    fn paused(&mut self) {
        warn!(
            "{} connections in their handshake (--max-pending): new connections wait in the listen queue",
            self.admission.pending()
        );
    }

    fn housekeeping(&mut self, now: Instant) -> Option<Instant> {
        self.admission.housekeeping(now)
    }

    fn finished(&mut self, slot: usize, task: ServerTask) {
        self.finished_task(slot, task);
    }

    fn abort(task: &mut ServerTask, reason: &PipeError) {
        match task {
            ServerTask::Session(s) => s.bridge.abort(reason.clone()),
            ServerTask::Handshake(h) => h.cancel(),
        }
    }

    fn sessions(&mut self) -> usize {
        self.sessions.len()
    }

    fn publish_metrics(&mut self) {
        let mut live = Snapshot::default();
        for (_, t) in self.reactor.iter() {
            if let ServerTask::Session(s) = t {
                report::add_live(&mut live, s.bridge.a(), to_peer_first(&s.bridge));
            }
        }
        self.recorder.publish(&live);
    }

    fn reload(&mut self, _: &mut Listeners) {
        self.reload_config();
    }
}

/// The bridge's B side is the target: B to A is to the peer.
fn to_peer_first(bridge: &Bridge<StripedPipe, TcpPipe>) -> (u64, u64) {
    let (ab, ba) = bridge.bytes();
    (ba, ab)
}

impl Server {
    /// Closes a handshake to make room for `for_peer`'s source (`Some`) or
    /// for anyone (`None`), as [`Admission::victim`] chooses.
    fn evict(&mut self, for_peer: Option<SocketAddr>) -> bool {
        let now = Instant::now();
        // Young handshakes are never chosen; skipping them here spares their
        // FIONREAD (at the limit this runs for every new connection).
        let candidates = self.reactor.iter().filter_map(|(slot, t)| match t {
            ServerTask::Handshake(h)
                if now.saturating_duration_since(h.accepted_at()) >= admission::SILENT_AFTER =>
            {
                Some(Candidate {
                    slot,
                    peer: h.peer(),
                    accepted_at: h.accepted_at(),
                    silent: h.is_silent(),
                })
            }
            _ => None,
        });
        let Some(victim) = self.admission.victim(for_peer, now, candidates) else {
            return false;
        };
        let Some(ServerTask::Handshake(h)) = self.reactor.remove(victim.slot) else {
            return false;
        };
        self.admission.remove(h.peer());
        let (class, limit) = match for_peer {
            Some(_) => (
                "was closed to make room (--max-pending-per-source)",
                "from its address",
            ),
            None => ("was closed to make room (--max-pending)", "in all"),
        };
        let what = if victim.silent {
            "silent"
        } else {
            "in progress"
        };
        self.recorder.refused("evicted");
        self.admission.refuse(
            h.peer(),
            class,
            &format!(
                "its handshake was the oldest {what} one {limit} ({:.1} s)",
                now.saturating_duration_since(h.accepted_at()).as_secs_f64()
            ),
            now,
        );
        true
    }

    fn refuse_once(
        &mut self,
        peer: SocketAddr,
        class: &'static str,
        why: &str,
        kind: &'static str,
    ) {
        self.recorder.refused(kind);
        self.admission.refuse(peer, class, why, Instant::now());
    }

    fn finished_task(&mut self, slot: usize, task: ServerTask) {
        match task {
            ServerTask::Handshake(h) => {
                self.admission.remove(h.peer());
                self.handshake_step(*h);
            }
            ServerTask::Session(s) => {
                let id = *s.bridge.a().id();
                if self.sessions.get(&id) == Some(&slot) {
                    self.sessions.remove(&id);
                }
                self.remember_finished(id);
                log_close(&s);
                let totals = report::totals(s.bridge.a(), to_peer_first(&s.bridge));
                self.recorder.closed(s.bridge.outcome(), &totals);
            }
        }
    }

    fn remember_finished(&mut self, id: SessionId) {
        if self.finished.insert(id) {
            self.finished_order.push_back(id);
            if self.finished_order.len() > FINISHED_MEMORY
                && let Some(old) = self.finished_order.pop_front()
            {
                self.finished.remove(&old);
            }
        }
    }

    /// A handshake stopped: it failed, has a hello to judge, or is complete.
    fn handshake_step(&mut self, mut h: Handshake) {
        match h.progress() {
            Progress::Failed { class, why } => {
                self.refuse_once(h.peer(), class, &why, admission::failure_kind(class))
            }
            Progress::HelloReceived(hello) => {
                self.admission.authenticated(h.peer(), Instant::now());
                let status = self.judge(&hello);
                if let Err(e) = h.answer(
                    status,
                    self.cfg.session.window,
                    self.cfg.session.max_payload,
                ) {
                    debug!("could not answer {}: {e}", h.peer());
                    return;
                }
                if status == Status::UnknownTarget {
                    let why = format!("unknown target {} from {}", hello.target, h.peer());
                    self.refuse_once(
                        h.peer(),
                        "asked for a target this server lacks",
                        &why,
                        "unknown_target",
                    );
                    return;
                }
                if status != Status::Ok {
                    let why = format!(
                        "stripe {} of session {}: {status}",
                        hello.index,
                        short_id(&hello.session)
                    );
                    let kind = admission::status_kind(status);
                    self.refuse_once(h.peer(), "was refused a stripe", &why, kind);
                    return;
                }
                let peer = h.peer();
                match self.reactor.spawn(ServerTask::Handshake(Box::new(h))) {
                    Ok(_) => self.admission.add(peer),
                    Err(e) => warn!("handshake dropped: cannot register it: {e}"),
                }
            }
            Progress::Complete {
                hello,
                secret,
                keys,
            } => self.join(h, hello, secret, *keys),
            Progress::Reading | Progress::Cancelled => {}
        }
    }

    /// The verdict on a hello, before anything is committed.
    fn judge(&self, hello: &ClientHello) -> Status {
        if self.finished.contains(&hello.session) {
            return Status::UnknownSession;
        }
        if hello.count > self.max_stripes {
            return Status::SessionFull;
        }
        match (hello.kind, self.sessions.get(&hello.session)) {
            // A live session keeps the target it was opened with, even
            // one a reload has removed since.
            (_, Some(_)) => Status::Ok,
            (Kind::Join, None) => Status::UnknownSession,
            (Kind::Open, None) if !self.targets.contains_key(&hello.target) => {
                Status::UnknownTarget
            }
            (Kind::Open, None) if self.sessions.len() >= self.max_sessions => Status::ServerFull,
            (Kind::Open, None) if self.buffered() >= self.memory_budget => Status::ServerBusy,
            (Kind::Open, None) => Status::Ok,
        }
    }

    /// Bytes the sessions' buffers hold now (what `--memory-budget` limits).
    fn buffered(&self) -> u64 {
        self.reactor
            .iter()
            .map(|(_, t)| match t {
                ServerTask::Session(s) => {
                    (s.bridge.a().buffer_bytes() + s.bridge.b().read_buffer_capacity()) as u64
                }
                ServerTask::Handshake(_) => 0,
            })
            .sum()
    }

    /// An authenticated stripe joins its session, creating it if needed.
    fn join(&mut self, h: Handshake, hello: ClientHello, secret: Secret, keys: Keys) {
        // The handshake's Noise state is dropped here: trim it in due course.
        striper_core::mem::note_released();
        let peer = h.peer();
        let slot = match self.sessions.get(&hello.session) {
            Some(&slot) => slot,
            None => {
                if self.judge(&hello) != Status::Ok {
                    warn!(
                        "stripe {} from {peer} arrived as its session ended; closed",
                        hello.index
                    );
                    return;
                }
                match self.open_session(&hello, secret, peer) {
                    Some(slot) => slot,
                    None => return,
                }
            }
        };
        let Some((task, registry)) = self.reactor.get_with_registry(slot) else {
            return;
        };
        let ServerTask::Session(s) = task else { return };
        if let Err(e) = s.bridge.a_mut().add_stripe(
            registry,
            hello.index,
            hello.backup,
            h.into_tcp(),
            (keys, &secret),
            Instant::now(),
        ) {
            self.recorder.refused(match e.kind {
                ErrorKind::Protocol => "join_refused",
                _ => "other",
            });
            warn!(
                "stripe {} from {peer} could not join session {}: {e}",
                hello.index,
                short_id(&hello.session)
            );
        }
        self.reactor.wake(slot);
    }

    fn open_session(
        &mut self,
        hello: &ClientHello,
        secret: Secret,
        client: SocketAddr,
    ) -> Option<usize> {
        let striped =
            StripedPipe::server(self.cfg.clone(), hello.session, secret, hello.count, hello);
        let Some(t) = self.targets.get(&hello.target) else {
            warn!(
                "session {} from {client} not opened: target {} was removed by a reload",
                short_id(&hello.session),
                hello.target
            );
            return None;
        };
        let name = if hello.target.is_default() {
            format!("target {}", t.addr)
        } else {
            format!("target {} {}", hello.target, t.addr)
        };
        let target = match TcpPipe::connect(&t.addrs, name.clone(), self.cfg.connect_timeout) {
            Ok(t) => t,
            Err(e) => {
                // The bridge reports a failed connect through the session;
                // failing here (no socket at all) is rare: log and drop.
                warn!(
                    "session {} from {client} not opened: {e}",
                    short_id(&hello.session)
                );
                return None;
            }
        };
        let task = SessionTask {
            bridge: Bridge::new(striped, target),
            client,
            target: name,
            started: Instant::now(),
        };
        let label = task.target.clone();
        match self.reactor.spawn(ServerTask::Session(Box::new(task))) {
            Ok(slot) => {
                info!(
                    "session {} opened: client {} -> {}, {} stripes announced",
                    short_id(&hello.session),
                    client,
                    label,
                    hello.count
                );
                self.sessions.insert(hello.session, slot);
                Some(slot)
            }
            Err(e) => {
                warn!(
                    "session {} from {client} not opened: cannot register it: {e}",
                    short_id(&hello.session)
                );
                None
            }
        }
    }
}

fn log_close(s: &SessionTask) {
    report::log_close(
        module_path!(),
        &s.bridge,
        s.bridge.a(),
        s.started,
        [&format!("client {}", s.client), &s.target],
        ["to target", "to client"],
    );
}
