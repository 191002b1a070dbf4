//! Command-line options both binaries share: the session's tunables.

use std::time::Duration;

use clap::{Args, Subcommand};
use striper_core::config::{parse_secs, parse_size};

use std::path::PathBuf;

use crate::keyfile;
use crate::proto::auth::Key;
use crate::proto::frame::ABSOLUTE_MAX_PAYLOAD;
use crate::proto::handshake::{MIN_MAX_PAYLOAD, MIN_WINDOW};
use crate::proto::session::MAX_WINDOW;
use crate::striped::{StripedConfig, UnsentLimit};
use crate::sys;

/// Congestion control chosen for stripes unless told otherwise.
pub const DEFAULT_CONGESTION: &str = "bbr";

#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Tuning")]
pub struct TuningOpts {
    /// Receive window per session and direction: the most bytes in flight
    /// between the two applications, and so the reassembly memory bound.
    /// Cover the session's rate x (round trip + the stripes' queues):
    /// 160 Mbit/s at 200 ms needs about 16M; 32M leaves room. Memory is
    /// taken only as bytes are in flight and given back when idle.
    #[arg(long, value_name = "BYTES", default_value = "32M", value_parser = parse_size)]
    pub window: u64,

    /// Largest frame payload this end sends.
    #[arg(long, value_name = "BYTES", default_value = "32K", value_parser = parse_size)]
    pub frame_size: u64,

    /// Largest frame payload this end accepts from its peer.
    #[arg(long, value_name = "BYTES", default_value = "256K", value_parser = parse_size)]
    pub max_frame: u64,

    /// Unsent bytes a stripe's kernel buffer may hold (TCP_NOTSENT_LOWAT).
    /// `auto`: each stripe's own bandwidth x round trip, at least 64K and
    /// at most 8M, so a long path never runs dry and a short one holds
    /// little. A size fixes it for every stripe.
    #[arg(long, value_name = "BYTES|auto", default_value = "auto", value_parser = parse_unsent)]
    pub notsent_lowat: UnsentArg,

    /// Congestion control of the stripe sockets: an algorithm the kernel
    /// offers (see net.ipv4.tcp_available_congestion_control), or `system`
    /// for the system default. bbr keeps nearly all of a policed flow's rate
    /// where cubic, the usual default, keeps a third on a 100 ms path; when
    /// bbr is the default choice and the kernel refuses it, stripes use the
    /// system default and the log says so.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_CONGESTION)]
    pub congestion: String,

    /// Seconds a connect (to a stripe's server, or to the target) may take.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub connect_timeout: Duration,

    /// Seconds of silence on a stripe before it is sent a keepalive PING.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_secs)]
    pub keepalive: Duration,

    /// Seconds of silence on a stripe before it is sent a keepalive PING
    /// while nothing is in flight. Rare probes cost idle sessions nothing;
    /// 15 s keeps NAT and firewall mappings alive (the shortest common idle
    /// timeouts for TCP are minutes) and finds a dead idle stripe before
    /// it is needed, or at once when data starts to flow.
    #[arg(long, value_name = "SECS", default_value = "15", value_parser = parse_secs)]
    pub idle_keepalive: Duration,

    /// Seconds of silence (PINGs unanswered) after which a stripe is
    /// declared dead; its data goes out again on the other stripes.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_secs)]
    pub stripe_timeout: Duration,

    /// Seconds a session survives with no stripe at all (an outage) while
    /// the client re-dials, before both ends close the applications'
    /// connections. 0: close at once.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_secs)]
    pub resume_timeout: Duration,
}

impl TuningOpts {
    /// Checks ranges and builds the pipe configuration.
    pub fn to_config(&self) -> Result<StripedConfig, String> {
        let mut cfg = StripedConfig::default();
        if self.window < MIN_WINDOW as u64 || self.window > MAX_WINDOW as u64 {
            return Err(format!(
                "--window must be between {}K and 1G",
                MIN_WINDOW >> 10
            ));
        }
        if self.max_frame < MIN_MAX_PAYLOAD as u64 || self.max_frame > ABSOLUTE_MAX_PAYLOAD as u64 {
            return Err(format!(
                "--max-frame must be between {}K and {}K",
                MIN_MAX_PAYLOAD >> 10,
                ABSOLUTE_MAX_PAYLOAD >> 10
            ));
        }
        if self.frame_size < 512 || self.frame_size > ABSOLUTE_MAX_PAYLOAD as u64 {
            return Err(format!(
                "--frame-size must be between 512 and {}K",
                ABSOLUTE_MAX_PAYLOAD >> 10
            ));
        }
        if let UnsentArg::Fixed(n) = self.notsent_lowat {
            if !(4096..=64 << 20).contains(&n) {
                return Err("--notsent-lowat must be auto or between 4K and 64M".to_string());
            }
            cfg.unsent = UnsentLimit::Fixed(n as u32);
        }
        cfg.congestion = self.resolve_congestion()?;
        cfg.session.window = self.window as u32;
        cfg.session.max_payload = self.max_frame as u32;
        cfg.session.frame_size = self.frame_size as usize;
        cfg.connect_timeout = self.connect_timeout;
        if self.keepalive.is_zero() || self.stripe_timeout <= self.keepalive {
            return Err(
                "--stripe-timeout must be longer than --keepalive, and both above 0".into(),
            );
        }
        cfg.session.keepalive = self.keepalive;
        if self.idle_keepalive < self.keepalive {
            return Err("--idle-keepalive must be at least --keepalive".into());
        }
        cfg.session.idle_keepalive = self.idle_keepalive;
        cfg.session.stripe_timeout = self.stripe_timeout;
        cfg.resume_timeout = self.resume_timeout;
        Ok(cfg)
    }
}

/// `--notsent-lowat`: `auto` or a size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnsentArg {
    Auto,
    Fixed(u64),
}

fn parse_unsent(s: &str) -> Result<UnsentArg, String> {
    if s.eq_ignore_ascii_case("auto") {
        Ok(UnsentArg::Auto)
    } else {
        parse_size(s).map(UnsentArg::Fixed)
    }
}

impl TuningOpts {
    /// The algorithm to set on stripe sockets (`None`: leave the system's),
    /// checked on a throw-away socket and logged once.
    fn resolve_congestion(&self) -> Result<Option<String>, String> {
        let name = self.congestion.trim();
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
}

#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Authentication")]
pub struct AuthOpts {
    /// The pre-shared key both ends prove they know on every stripe (make
    /// one with the `genkey` subcommand; the file must be mode 0600).
    #[arg(short, long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,

    /// Run without authentication: anyone who can reach the server can use
    /// the tunnel, and the client cannot tell the server from an impostor.
    #[arg(long, conflicts_with = "key_file")]
    pub insecure_no_auth: bool,
}

impl AuthOpts {
    /// The key, or `None` when running without authentication.
    pub fn load(&self) -> Result<Option<Key>, String> {
        match &self.key_file {
            Some(p) => keyfile::load(p).map(Some),
            None if self.insecure_no_auth => Ok(None),
            None => Err("refusing to run without a key: pass --key-file FILE (make one with the `genkey FILE` \
                         subcommand and give both ends the same file), or --insecure-no-auth to run \
                         without authentication"
                .into()),
        }
    }
}

/// Subcommands both binaries share.
#[derive(Subcommand, Clone, Debug)]
pub enum Command {
    /// Write a fresh random key to FILE (mode 0600, never overwriting) and
    /// exit. Copy the same file to the other end.
    Genkey {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

impl Command {
    /// Runs the subcommand; the error is for the log.
    pub fn run(&self) -> Result<std::process::ExitCode, String> {
        match self {
            Command::Genkey { file } => {
                keyfile::generate(file)?;
                eprintln!(
                    "wrote a new key to {} (mode 0600); give both ends the same file",
                    file.display()
                );
                Ok(std::process::ExitCode::SUCCESS)
            }
        }
    }
}
