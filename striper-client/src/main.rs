//! stripe-client: accepts TCP connections (or uses standard input/output)
//! and carries each one to a stripe-server over N parallel TCP stripes.

mod forwards;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Instant;

use clap::{CommandFactory, Parser};
use log::{info, warn};
use mio::net::TcpStream;
use mio::{Registry, Token};
use pipes::path::{self, PathSpec};
use pipes::proto::handshake::{MAX_STRIPES, TargetName, short_id};
use pipes::report;
use pipes::striped::new_session_id;
use pipes::{StdioPipe, StripedConfig, StripedPipe, TcpPipe};
use striper_core::cfgfile::Reload;
use striper_core::cli::{AuthOpts, Command, ConfigOpts, MetricsOpts, TuningOpts};
use striper_core::config::log_fd_limit;
use striper_core::daemon::{Daemon, ListenerId, Listeners, Service};
use striper_core::metrics::{Recorder, Snapshot};

use forwards::{Forward, parse_forward, parse_target_name};
use striper_core::{
    Bridge, Ctx, Outcome, Pipe, PipeError, Reactor, Ready, Task, TaskStatus, TokenSpan,
};

/// Carry TCP connections to a stripe-server over N parallel TCP connections.
///
/// Each connection accepted on --listen or a --forward (or standard
/// input/output with --stdio) becomes one session, striped over --stripes
/// TCP connections to the server and reassembled in order there. Per-flow
/// bandwidth caps on the path then apply to each stripe, not to the whole
/// session.
///
/// Several links (bonding): with --via (a local address or interface,
/// repeatable) and several --server, the stripes go over every (via,
/// server) pair, a path, --stripes of them per path. A path that dies
/// loses its stripes, its data goes out on the others, and it is re-dialed
/// until it is back; a path marked :backup carries data only while no
/// primary path is up.
///
/// Examples:
///   stripe-client --listen 127.0.0.1:2222 --server host:7900 --stripes 4
///   ssh -p 2222 user@127.0.0.1
///   ssh -o ProxyCommand='stripe-client --stdio --server host:7900' user@host
///   stripe-client --listen 127.0.0.1:2222 --server host:7900 \
///       --via 192.168.1.20 --via wwan0:backup
///   stripe-client --server host:7900 --forward 127.0.0.1:5432=db \
///       --forward 127.0.0.1:8080=web
///
/// SIGHUP re-reads the --config file: listeners and every other setting
/// apply to new sessions; live sessions go on untouched.
///
/// Logs go to standard error; set RUST_LOG=debug for per-stripe detail.
#[derive(Parser, Debug)]
#[command(
    name = "stripe-client",
    version,
    verbatim_doc_comment,
    subcommand_negates_reqs = true
)]
struct Opts {
    #[command(subcommand)]
    command: Option<Command>,

    /// Local address to accept connections on, e.g. 127.0.0.1:2222 or
    /// [::1]:2222; its sessions go to the server's default target.
    #[arg(
        short,
        long,
        value_name = "ADDR",
        required_unless_present_any = ["stdio", "forward"],
        conflicts_with = "stdio"
    )]
    listen: Option<String>,

    /// Another local address whose sessions go to the server's target
    /// NAME (a `--target NAME=HOST:PORT` of the server), e.g.
    /// 127.0.0.1:5432=db. Repeatable; in a config file, a list.
    #[arg(long, value_name = "ADDR=NAME", value_parser = parse_forward,
          conflicts_with = "stdio")]
    forward: Vec<Forward>,

    /// Carry standard input and output instead of listening (one session,
    /// then exit): for ssh's ProxyCommand.
    #[arg(long)]
    stdio: bool,

    /// With --stdio: the server's target to ask for (default: the
    /// server's default target).
    #[arg(long, value_name = "NAME", value_parser = parse_target_name,
          conflicts_with_all = ["listen", "forward"])]
    target_name: Option<TargetName>,

    /// The stripe-server, HOST:PORT (a name, an IPv4 address or [IPv6]:PORT).
    /// Repeat it for a server with several addresses (each is a path);
    /// HOST:PORT:backup marks a backup path.
    #[arg(short, long, value_name = "HOST:PORT[:backup]", required = true)]
    server: Vec<String>,

    /// Send stripes out by this local source address or interface (an
    /// interface needs CAP_NET_RAW: SO_BINDTODEVICE). Repeat it for each
    /// link; ADDR:backup or IFACE:backup (IPv6 bare or in brackets,
    /// [2001:db8::1]:backup) marks a backup link, which stays connected but
    /// carries data only while no primary path is up. Default: the route
    /// the system picks, one path per --server.
    #[arg(long, value_name = "ADDR|IFACE[:backup]")]
    via: Vec<String>,

    /// Parallel TCP connections per session on each path (paths x N in
    /// all, at most 64; the server's --max-stripes must allow it).
    #[arg(short = 'n', long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u8).range(1..=64))]
    stripes: u8,

    #[command(flatten)]
    config: ConfigOpts,

    #[command(flatten)]
    auth: AuthOpts,

    #[command(flatten)]
    tuning: TuningOpts,

    #[command(flatten)]
    metrics: MetricsOpts,
}

const NAME: &str = "stripe-client";

fn main() -> ExitCode {
    match striper_core::cli::parse::<Opts>(|o| &o.command) {
        Ok(mut opts) => pipes::config::main(opts.command.take(), || run(opts)),
        Err(code) => code,
    }
}

fn run(opts: Opts) -> Result<ExitCode, String> {
    let settings = Settings::from_opts(&opts)?;
    if settings.cfg.key.is_none() {
        warn!("running WITHOUT authentication (--insecure-no-auth): the server is not verified");
    }
    if opts.stdio {
        let target = opts.target_name.unwrap_or(TargetName::DEFAULT);
        return run_stdio(settings, target, &opts.metrics);
    }
    log_fd_limit(
        (settings.server.paths.len() * opts.stripes as usize) as u64,
        None,
    );
    let reload = Reload::new(&Opts::command())?;
    let reactor = Reactor::new().map_err(|e| e.to_string())?;
    let mut daemon = Daemon::listening(reactor.registry())?;
    let recorder = export_metrics(&mut daemon, &reactor, &opts.metrics, &settings)?;
    let mut service = Listening {
        reactor,
        settings,
        forwards: HashMap::new(),
        reload,
        recorder,
    };
    for f in forwards_of(&opts) {
        let (id, local) = daemon
            .listeners()
            .bind(service.reactor.registry(), &f.addr)?;
        service.log_listening(&f, local);
        service.forwards.insert(id, f);
    }
    daemon.serve(service)
}

/// The listeners the options ask for: --listen (the default target) and
/// each --forward.
fn forwards_of(opts: &Opts) -> Vec<Forward> {
    let default = opts.listen.iter().map(|addr| Forward {
        addr: addr.clone(),
        target: TargetName::DEFAULT,
    });
    default.chain(opts.forward.iter().cloned()).collect()
}

/// What new sessions are made with; a reload replaces it whole.
struct Settings {
    cfg: StripedConfig,
    server: Server,
    stripes: u8,
}

impl Settings {
    fn from_opts(opts: &Opts) -> Result<Settings, String> {
        let cfg = pipes::config::from_opts(&opts.tuning, &opts.auth)?;
        let paths = path::build(&opts.via, &opts.server)?;
        let total = paths.len() * opts.stripes as usize;
        if total > MAX_STRIPES as usize {
            return Err(format!(
                "{} paths x --stripes {} = {total} stripes per session; at most {MAX_STRIPES}: \
                 lower --stripes",
                paths.len(),
                opts.stripes
            ));
        }
        Ok(Settings {
            cfg,
            server: Server {
                paths,
                name: opts.server.join(", "),
            },
            stripes: opts.stripes,
        })
    }

    /// Each path's name and whether it is a backup, for the metrics.
    fn path_names(&self) -> Vec<(String, bool)> {
        let paths = &self.server.paths;
        paths.iter().map(|p| (p.name(), p.backup)).collect()
    }
}

fn run_stdio(
    settings: Settings,
    target: TargetName,
    metrics: &MetricsOpts,
) -> Result<ExitCode, String> {
    let mut reactor = Reactor::new().map_err(|e| e.to_string())?;
    let mut daemon = Daemon::new(reactor.registry())?;
    let recorder = export_metrics(&mut daemon, &reactor, metrics, &settings)?;
    let stdio = StdioPipe::new().map_err(|e| format!("cannot use standard input/output: {e}"))?;
    let tunnel = Tunnel::new(
        stdio,
        "standard input/output".to_string(),
        &settings,
        target,
    )
    .map_err(|e| e.to_string())?;
    reactor
        .spawn(tunnel)
        .map_err(|e| format!("cannot register standard input/output: {e}"))?;
    daemon.serve(Stdio {
        reactor,
        succeeded: false,
        recorder,
    })
}

/// The metrics recorder, served on `--metrics ADDR` if given.
fn export_metrics<T: Task>(
    daemon: &mut Daemon,
    reactor: &Reactor<T>,
    opts: &MetricsOpts,
    settings: &Settings,
) -> Result<Recorder, String> {
    let (mut recorder, registry) = Recorder::client();
    recorder.set_paths(settings.path_names());
    if let Some(addr) = &opts.metrics {
        let local = daemon.export_metrics(reactor.registry(), addr, registry)?;
        info!("serving metrics at http://{local}/metrics");
    }
    Ok(recorder)
}

/// Sets the metrics from the open sessions (a scrape is waiting).
fn publish<P: Pipe>(recorder: &mut Recorder, reactor: &Reactor<Tunnel<P>>) {
    let mut live = Snapshot::default();
    for (_, t) in reactor.iter() {
        report::add_live(&mut live, t.bridge.b(), t.bridge.bytes());
    }
    recorder.publish(&live);
}

struct Server {
    /// Every (via, server) pair; each path's stripes try its server's
    /// addresses in turn.
    paths: Vec<PathSpec>,
    /// The servers as given, for logs.
    name: String,
}

/// Listening: each accepted connection is a session.
struct Listening {
    reactor: Reactor<Tunnel<TcpPipe>>,
    settings: Settings,
    /// What each listener is for.
    forwards: HashMap<ListenerId, Forward>,
    reload: Reload,
    recorder: Recorder,
}

impl Service for Listening {
    type Task = Tunnel<TcpPipe>;
    const NAME: &'static str = NAME;
    const LOG_TARGET: &'static str = module_path!();

    fn reactor(&mut self) -> &mut Reactor<Tunnel<TcpPipe>> {
        &mut self.reactor
    }

    fn accepted(&mut self, listener: ListenerId, sock: TcpStream, peer: SocketAddr) {
        let Some(target) = self.forwards.get(&listener).map(|f| f.target) else {
            return;
        };
        let app = TcpPipe::accepted(sock, format!("client {peer}"));
        match Tunnel::new(app, format!("client {peer}"), &self.settings, target) {
            Ok(t) => {
                self.spawn_accepted(t, peer);
            }
            Err(e) => warn!("connection from {peer} closed: {e}"),
        }
    }

    fn finished(&mut self, _: usize, t: Tunnel<TcpPipe>) {
        t.log_close();
        t.record_close(&mut self.recorder);
    }

    fn publish_metrics(&mut self) {
        publish(&mut self.recorder, &self.reactor);
    }

    fn abort(t: &mut Tunnel<TcpPipe>, reason: &PipeError) {
        t.bridge.abort(reason.clone());
    }

    fn reload(&mut self, listeners: &mut Listeners) {
        self.reload_config(listeners);
    }
}

/// --stdio: one session on standard input and output; the exit status
/// says whether it finished cleanly.
struct Stdio {
    reactor: Reactor<Tunnel<StdioPipe>>,
    succeeded: bool,
    recorder: Recorder,
}

impl Service for Stdio {
    type Task = Tunnel<StdioPipe>;
    const NAME: &'static str = NAME;
    const LOG_TARGET: &'static str = module_path!();

    fn reactor(&mut self) -> &mut Reactor<Tunnel<StdioPipe>> {
        &mut self.reactor
    }

    fn accepted(&mut self, _: ListenerId, _: TcpStream, _: SocketAddr) {
        unreachable!("--stdio has no listener")
    }

    fn finished(&mut self, _: usize, t: Tunnel<StdioPipe>) {
        t.log_close();
        t.record_close(&mut self.recorder);
        self.succeeded = matches!(t.bridge.outcome(), Some(Outcome::Finished));
    }

    fn abort(t: &mut Tunnel<StdioPipe>, reason: &PipeError) {
        t.bridge.abort(reason.clone());
    }

    fn publish_metrics(&mut self) {
        publish(&mut self.recorder, &self.reactor);
    }

    fn exit_code(&self) -> ExitCode {
        if self.succeeded {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    }
}

/// One tunneled connection: the application's side and the striped side.
struct Tunnel<P> {
    bridge: Bridge<P, StripedPipe>,
    peer: String,
    /// "server S" or "server S target T", for its log lines.
    server: String,
    started: Instant,
}

impl<P: Pipe> Tunnel<P> {
    fn new(
        app: P,
        peer: String,
        settings: &Settings,
        target: TargetName,
    ) -> Result<Tunnel<P>, PipeError> {
        let id = new_session_id();
        let (server, stripes) = (&settings.server, settings.stripes);
        let striped = StripedPipe::client(
            settings.cfg.clone(),
            server.paths.clone(),
            target,
            stripes,
            id,
        )?;
        let n = server.paths.len();
        let over = if n == 1 {
            format!("{stripes} stripes")
        } else {
            format!("{n} paths x {stripes} stripes")
        };
        let to = if target.is_default() {
            format!("server {}", server.name)
        } else {
            format!("server {} target {target}", server.name)
        };
        info!(
            "session {} opened: {peer} -> {to} over {over}",
            short_id(&id)
        );
        Ok(Tunnel {
            bridge: Bridge::new(app, striped),
            peer,
            server: to,
            started: Instant::now(),
        })
    }

    fn log_close(&self) {
        report::log_close(
            module_path!(),
            &self.bridge,
            self.bridge.b(),
            self.started,
            [&self.peer, &self.server],
            ["sent", "received"],
        );
    }

    /// The bridge's A side is the application: A to B is to the peer.
    fn record_close(&self, recorder: &mut Recorder) {
        let b = &self.bridge;
        report::record_close(recorder, b.outcome(), b.b(), b.bytes());
    }
}

impl<P: Pipe> Task for Tunnel<P> {
    fn register(&mut self, registry: &Registry, span: TokenSpan) -> io::Result<()> {
        self.bridge.register(registry, span)
    }
    fn deregister(&mut self, registry: &Registry) {
        self.bridge.deregister(registry)
    }
    fn on_ready(&mut self, token: Token, ready: Ready) {
        self.bridge.on_ready(token, ready)
    }
    fn run(&mut self, cx: &mut Ctx<'_>) -> TaskStatus {
        self.bridge.run(cx)
    }
    fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        self.bridge.poll_timeout(now)
    }
}
