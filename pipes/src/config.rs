//! The pipes' configuration, and how the shared command line
//! ([`striper_core::cli`]) becomes it: ranges checked, congestion control
//! tried on the kernel, the key loaded; and the `genkey` subcommand.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use striper_core::cli::{AuthOpts, Command, DEFAULT_CONGESTION, TuningOpts, UnsentArg};
use striper_core::config::{exit_with, init_logging};

use crate::keyfile;
use crate::proto::auth::Key;
use crate::proto::frame::ABSOLUTE_MAX_PAYLOAD;
use crate::proto::handshake::{MIN_MAX_PAYLOAD, MIN_WINDOW};
use crate::proto::queue::QueueBounds;
use crate::proto::session::{MAX_WINDOW, SessionConfig};
use crate::sys;

/// Settings of the IO side of a session.
#[derive(Clone, Debug)]
pub struct StripedConfig {
    pub session: SessionConfig,
    /// Unsent bytes a stripe socket may hold (TCP_NOTSENT_LOWAT).
    pub unsent: UnsentLimit,
    /// Congestion control of the stripe sockets; `None`: the system's.
    pub congestion: Option<String>,
    /// How long a stripe may take to connect.
    pub connect_timeout: Duration,
    /// How long a finished or aborted session waits for the peer to close.
    pub close_linger: Duration,
    /// Buffers of a session idle this long are freed.
    pub idle_release: Duration,
    /// How long a session with no stripe at all is kept for a stripe to
    /// come back. Zero: fail at once.
    pub resume_timeout: Duration,
    /// The pre-shared key; `None` runs without authentication.
    pub key: Option<Key>,
}

impl Default for StripedConfig {
    fn default() -> Self {
        StripedConfig {
            session: SessionConfig::default(),
            unsent: UnsentLimit::Auto(QueueBounds::default()),
            congestion: None,
            connect_timeout: Duration::from_secs(10),
            close_linger: Duration::from_secs(5),
            idle_release: Duration::from_secs(2),
            resume_timeout: Duration::from_secs(60),
            key: None,
        }
    }
}

/// How each stripe's unsent limit is set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnsentLimit {
    /// Follows the stripe's rate x round trip (see [`crate::proto::queue`]).
    Auto(QueueBounds),
    /// The same for every stripe, whatever its path.
    Fixed(u32),
}

/// The body of both binaries' `main` once their options are parsed:
/// logging, then the subcommand if one was given, else `run`. An error is
/// logged and exits with status 2.
pub fn main(command: Option<Command>, run: impl FnOnce() -> Result<ExitCode, String>) -> ExitCode {
    init_logging();
    exit_with(match &command {
        Some(cmd) => run_command(cmd),
        None => run(),
    })
}

/// Runs a subcommand; the error is for the log.
pub fn run_command(command: &Command) -> Result<ExitCode, String> {
    match command {
        Command::Genkey { file } => genkey(file),
        // They need the program's own definition: the binary runs them
        // first (`striper_core::cli::generate`).
        Command::Man { .. } | Command::Completions { .. } => {
            Err("this subcommand is run by the program itself".into())
        }
    }
}

fn genkey(file: &Path) -> Result<ExitCode, String> {
    keyfile::generate(file)?;
    eprintln!(
        "wrote a new key to {} (mode 0600); give both ends the same file",
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Checks the options and builds the pipe configuration, key included.
pub fn from_opts(tuning: &TuningOpts, auth: &AuthOpts) -> Result<StripedConfig, String> {
    let mut cfg = from_tuning(tuning)?;
    cfg.key = load_key(auth)?;
    Ok(cfg)
}

/// Checks ranges and builds the pipe configuration (without a key).
fn from_tuning(t: &TuningOpts) -> Result<StripedConfig, String> {
    let mut cfg = StripedConfig::default();
    if t.window < MIN_WINDOW as u64 || t.window > MAX_WINDOW as u64 {
        return Err(format!(
            "--window must be between {}K and 1G",
            MIN_WINDOW >> 10
        ));
    }
    if t.max_frame < MIN_MAX_PAYLOAD as u64 || t.max_frame > ABSOLUTE_MAX_PAYLOAD as u64 {
        return Err(format!(
            "--max-frame must be between {}K and {}K",
            MIN_MAX_PAYLOAD >> 10,
            ABSOLUTE_MAX_PAYLOAD >> 10
        ));
    }
    if t.frame_size < 512 || t.frame_size > ABSOLUTE_MAX_PAYLOAD as u64 {
        return Err(format!(
            "--frame-size must be between 512 and {}K",
            ABSOLUTE_MAX_PAYLOAD >> 10
        ));
    }
    if let UnsentArg::Fixed(n) = t.notsent_lowat {
        if !(4096..=64 << 20).contains(&n) {
            return Err("--notsent-lowat must be auto or between 4K and 64M".to_string());
        }
        cfg.unsent = UnsentLimit::Fixed(n as u32);
    }
    cfg.congestion = resolve_congestion(&t.congestion)?;
    cfg.session.window = t.window as u32;
    cfg.session.max_payload = t.max_frame as u32;
    cfg.session.frame_size = t.frame_size as usize;
    cfg.connect_timeout = t.connect_timeout;
    if t.keepalive.is_zero() || t.stripe_timeout <= t.keepalive {
        return Err("--stripe-timeout must be longer than --keepalive, and both above 0".into());
    }
    cfg.session.keepalive = t.keepalive;
    if t.idle_keepalive < t.keepalive {
        return Err("--idle-keepalive must be at least --keepalive".into());
    }
    cfg.session.idle_keepalive = t.idle_keepalive;
    cfg.session.stripe_timeout = t.stripe_timeout;
    cfg.resume_timeout = t.resume_timeout;
    Ok(cfg)
}

/// The algorithm to set on stripe sockets (`None`: leave the system's),
/// checked on a throw-away socket and logged once.
fn resolve_congestion(name: &str) -> Result<Option<String>, String> {
    let name = name.trim();
    let system = sys::default_congestion();
    if name == "system" {
        log::info!("stripes use the system's congestion control ({system})");
        return Ok(None);
    }
    if name.is_empty() || name.len() > 15 || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("--congestion {name:?} is not an algorithm name"));
    }
    match sys::congestion_usable(name) {
        Ok(()) => {
            log::info!("stripes use {name} congestion control (system default: {system})");
            Ok(Some(name.to_string()))
        }
        Err(e) if name == DEFAULT_CONGESTION => {
            log::warn!(
                "{name} congestion control is not available ({e}); stripes use the system \
                 default, {system} (load tcp_bbr, or allow it in \
                 net.ipv4.tcp_allowed_congestion_control, for full speed under policers)"
            );
            Ok(None)
        }
        Err(e) => Err(format!(
            "--congestion {name}: the kernel refuses it ({e}); available: {}",
            sys::available_congestion()
        )),
    }
}

/// The key, or `None` when running without authentication.
pub fn load_key(auth: &AuthOpts) -> Result<Option<Key>, String> {
    match &auth.key_file {
        Some(p) => keyfile::load(p).map(Some),
        None if auth.insecure_no_auth => Ok(None),
        None => Err(
            "refusing to run without a key: pass --key-file FILE (make one with the `genkey FILE` \
                     subcommand and give both ends the same file), or --insecure-no-auth to run \
                     without authentication"
                .into(),
        ),
    }
}
