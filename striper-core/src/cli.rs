//! Command-line options both binaries share, as plain values: the session's
//! tunables, the key and the `genkey` subcommand. `pipes::config` checks
//! them and builds the pipes' configuration; each binary flattens them into
//! its own options.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::config::{parse_secs, parse_size};

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
    /// while nothing is in flight. Rare probes cost idle sessions little;
    /// 30 s keeps NAT and firewall mappings alive (the shortest common idle
    /// timeouts for TCP are minutes: 4 on some cloud load balancers; RFC
    /// 5382 asks NATs for over 2 hours) and finds a dead idle stripe before
    /// it is needed, or at once when data starts to flow.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
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

/// `--config FILE` (read before the command line is parsed, see
/// [`crate::cfgfile`]); here so that it is accepted and documented.
#[derive(Args, Clone, Debug)]
pub struct ConfigOpts {
    /// Read settings from FILE, TOML: each key is a long option and its
    /// value the option's (`window = "8M"`, `stripes = 8`,
    /// `insecure-no-auth = true`, a list for a repeatable one). Options on
    /// the command line override the file; an unknown key is an error.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `--metrics ADDR`: Prometheus metrics, off unless given.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Monitoring")]
pub struct MetricsOpts {
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g.
    /// 127.0.0.1:9900): sessions, bytes each way, stripes, faults, and per
    /// stripe index round trip, queue and drain rate (see docs/METRICS.md).
    /// Anyone who can reach ADDR can read them: keep it on loopback or a
    /// private network. Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
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
    /// Write this program's man page into DIR (as NAME.1) and exit.
    #[command(hide = true)]
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Write this program's completion script for SHELL into DIR and exit.
    #[command(hide = true)]
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// The program's options, parsed from its command line with the settings
/// of its `--config FILE` in front; `Err` is the exit status when there is
/// nothing more to do (a bad config file, or the man page or completions
/// written).
pub fn parse<O: clap::Parser>(command: impl FnOnce(&O) -> &Option<Command>) -> Result<O, ExitCode> {
    let args =
        crate::cfgfile::with_config(std::env::args_os().collect(), &O::command()).map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::from(2)
        })?;
    let opts = O::parse_from(args);
    match generate(command(&opts), O::command) {
        Some(code) => Err(code),
        None => Ok(opts),
    }
}

/// Runs the subcommands that need the program's own command-line
/// definition (`app`): the man page and the completion scripts, generated
/// from the same clap definitions as `--help`, so they never drift. `None`
/// for any other subcommand (or none).
fn generate(command: &Option<Command>, app: impl FnOnce() -> clap::Command) -> Option<ExitCode> {
    let result = match command {
        Some(Command::Man { dir }) => man_page(app(), dir),
        Some(Command::Completions { shell, dir }) => {
            let mut app = app();
            let name = app.get_name().to_string();
            std::fs::create_dir_all(dir)
                .and_then(|()| clap_complete::generate_to(*shell, &mut app, name, dir))
                .map(|path| eprintln!("wrote {}", path.display()))
                .map_err(|e| {
                    format!(
                        "cannot write the {shell} completions into {}: {e}",
                        dir.display()
                    )
                })
        }
        _ => return None,
    };
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    })
}

fn man_page(app: clap::Command, dir: &std::path::Path) -> Result<(), String> {
    let path = dir.join(format!("{}.1", app.get_name()));
    let mut page = Vec::new();
    clap_mangen::Man::new(app)
        .render(&mut page)
        .map_err(|e| format!("cannot render the man page: {e}"))?;
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&path, page))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
