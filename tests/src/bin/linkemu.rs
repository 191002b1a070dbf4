//! `linkemu`: the link emulator as a standalone process, for shell scripts
//! and demos. It relays every connection accepted on `--listen` to
//! `--upstream`, shaping each connection on its own, and optionally serves
//! the line-based control protocol (see `striper_tests::linkemu`'s `control`
//! docs, or send `help`) on `--control`.
//!
//! On start it prints exactly one line to stdout:
//! `linkemu listening on ADDR control ADDR|none`, then logs to stderr
//! (`RUST_LOG`, default `info`: a line per connection accepted and closed).
//! SIGINT and SIGTERM are caught so that every connection's closing line,
//! with its byte counts, is logged before the process exits with status 0.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use striper_tests::linkemu::{LinkConfig, LinkEmu, Shape, serve_control};

/// A TCP relay that emulates a link per connection: rate cap, added delay,
/// and faults (reset, black-hole, close-after, outage) on command.
///
/// Each accepted connection gets its own cap, like a per-flow shaper. "Up"
/// is client -> upstream, "down" is upstream -> client. Rates are payload
/// megabits (10^6 bits) per second.
#[derive(Parser, Debug)]
#[command(name = "linkemu", version)]
struct Args {
    /// Address to accept client connections on (port 0: any free port).
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Address each connection is relayed to.
    #[arg(long, value_name = "ADDR")]
    upstream: SocketAddr,
    /// Rate cap in Mbit/s for both directions (default: no cap).
    #[arg(long, value_name = "MBIT")]
    rate_mbit: Option<f64>,
    /// Rate cap client -> upstream, overriding --rate-mbit.
    #[arg(long, value_name = "MBIT")]
    rate_up_mbit: Option<f64>,
    /// Rate cap upstream -> client, overriding --rate-mbit.
    #[arg(long, value_name = "MBIT")]
    rate_down_mbit: Option<f64>,
    /// Added one-way delay in ms for both directions.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    delay_ms: u64,
    /// Added delay client -> upstream, overriding --delay-ms.
    #[arg(long, value_name = "MS")]
    delay_up_ms: Option<u64>,
    /// Added delay upstream -> client, overriding --delay-ms.
    #[arg(long, value_name = "MS")]
    delay_down_ms: Option<u64>,
    /// Serve the control protocol here (one command per line; send `help`).
    #[arg(long, value_name = "ADDR")]
    control: Option<SocketAddr>,
    /// Kernel receive buffer of the relay's sockets in bytes: bounds what a
    /// sender can park in the relay beyond its own queue, like a bottleneck
    /// buffer (0: the kernel's default, which autotunes to megabytes).
    #[arg(long, value_name = "BYTES", default_value_t = striper_tests::linkemu::DEFAULT_SOCK_BUF)]
    sock_buf: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let up = Shape {
        rate_mbit: args.rate_up_mbit.or(args.rate_mbit),
        delay_ms: args.delay_up_ms.unwrap_or(args.delay_ms),
    };
    let down = Shape {
        rate_mbit: args.rate_down_mbit.or(args.rate_mbit),
        delay_ms: args.delay_down_ms.unwrap_or(args.delay_ms),
    };
    // Registered before anything is announced, so a script that signals us
    // right after reading the first line gets the clean shutdown.
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let emu = Arc::new(LinkEmu::start(LinkConfig {
        listen: args.listen,
        upstream: args.upstream,
        up,
        down,
        sock_buf: (args.sock_buf > 0).then_some(args.sock_buf),
    })?);
    let control = match args.control {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr)
                .map_err(|e| format!("cannot listen for control on {addr}: {e}"))?;
            let local = l.local_addr()?;
            serve_control(emu.clone(), l)?;
            local.to_string()
        }
        None => "none".into(),
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "linkemu listening on {} control {control}",
        emu.local_addr()
    )?;
    out.flush()?;
    drop(out);
    log::info!(
        "relaying {} -> {}: up: {up}; down: {down}",
        emu.local_addr(),
        args.upstream
    );
    if let Some(sig) = signals.forever().next() {
        log::info!("signal {sig}: shutting down");
    }
    emu.shutdown();
    Ok(())
}
