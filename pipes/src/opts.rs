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
use crate::striped::StripedConfig;

#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Tuning")]
pub struct TuningOpts {
    /// Receive window per session and direction: the most bytes in flight
    /// between the two applications, and so the reassembly memory bound.
    /// Cover the path's bandwidth x round trip (100 Mbit/s x 100 ms = 1.25M).
    #[arg(long, value_name = "BYTES", default_value = "8M", value_parser = parse_size)]
    pub window: u64,

    /// Largest frame payload this end sends.
    #[arg(long, value_name = "BYTES", default_value = "32K", value_parser = parse_size)]
    pub frame_size: u64,

    /// Largest frame payload this end accepts from its peer.
    #[arg(long, value_name = "BYTES", default_value = "256K", value_parser = parse_size)]
    pub max_frame: u64,

    /// Unsent bytes a stripe's kernel buffer may hold (TCP_NOTSENT_LOWAT).
    /// Small values keep traffic off stripes that cannot send it soon.
    #[arg(long, value_name = "BYTES", default_value = "64K", value_parser = parse_size)]
    pub notsent_lowat: u64,

    /// Seconds a connect (to a stripe's server, or to the target) may take.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub connect_timeout: Duration,

    /// Seconds of silence on a stripe before it is sent a keepalive PING.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_secs)]
    pub keepalive: Duration,

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
        if self.notsent_lowat < 4096 || self.notsent_lowat > 64 << 20 {
            return Err("--notsent-lowat must be between 4K and 64M".to_string());
        }
        cfg.session.window = self.window as u32;
        cfg.session.max_payload = self.max_frame as u32;
        cfg.session.frame_size = self.frame_size as usize;
        cfg.notsent_lowat = self.notsent_lowat as u32;
        cfg.connect_timeout = self.connect_timeout;
        if self.keepalive.is_zero() || self.stripe_timeout <= self.keepalive {
            return Err(
                "--stripe-timeout must be longer than --keepalive, and both above 0".into(),
            );
        }
        cfg.session.keepalive = self.keepalive;
        cfg.session.stripe_timeout = self.stripe_timeout;
        cfg.resume_timeout = self.resume_timeout;
        Ok(cfg)
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
