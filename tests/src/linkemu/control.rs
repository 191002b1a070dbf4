//! The link emulator's line-based control protocol, served by the `linkemu`
//! binary so shell scripts and Python can drive faults.
//!
//! One command per line; the answer is zero or more data lines followed by
//! one line that starts with `ok` or `err` (a reader reads until such a
//! line). Commands (`ID` is a connection id, `all` means every live
//! connection and the default for new ones):
//!
//! ```text
//! list                                 one `conn ...` line per connection, then `ok N`
//! stats                                one `stats ...` line, then `ok`
//! reset ID                             RST to both peers
//! blackhole ID | restore ID            stop / resume forwarding
//! close-after ID up|down|both BYTES    forward BYTES more, then FIN both ways
//! rate ID|all up|down|both MBIT|none   change the rate cap (none: no cap)
//! delay ID|all up|down|both MS         change the added delay
//! outage on|off                        black-hole every connection, new ones too
//! wait N TIMEOUT_MS                    until N connections were accepted
//! wait-open N TIMEOUT_MS               until N connections are open at once
//! help                                 this list
//! quit                                 close this control connection
//! ```
//!
//! A `conn` line reads `conn ID state=open client=ADDR upstream_local=ADDR
//! up=BYTES down=BYTES queued_up=BYTES queued_down=BYTES rate_up=MBIT|none
//! rate_down=MBIT|none delay_up=MS delay_down=MS`.

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::{ConnInfo, ConnState, Dir, LinkEmu, Shape};

const HELP: &str = "\
list                                 one `conn ...` line per connection, then `ok N`
stats                                one `stats ...` line, then `ok`
reset ID                             RST to both peers
blackhole ID | restore ID            stop / resume forwarding
close-after ID up|down|both BYTES    forward BYTES more, then FIN both ways
rate ID|all up|down|both MBIT|none   change the rate cap (none: no cap)
delay ID|all up|down|both MS         change the added delay
outage on|off                        black-hole every connection, new ones too
wait N TIMEOUT_MS                    until N connections were accepted
wait-open N TIMEOUT_MS               until N connections are open at once
help                                 this list
quit                                 close this control connection";

/// Serves the control protocol on `listener`, one thread per client, until
/// the process exits (the threads keep `emu` alive).
pub fn serve(emu: Arc<LinkEmu>, listener: TcpListener) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("linkemu-control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let stream = match stream {
                    Ok(s) => s,
                    Err(e) => {
                        log::warn!("control accept failed: {e}");
                        continue;
                    }
                };
                let emu = emu.clone();
                let spawned = std::thread::Builder::new()
                    .name("linkemu-control-client".into())
                    .spawn(move || {
                        if let Err(e) = client(&emu, stream) {
                            log::debug!("control client: {e}");
                        }
                    });
                if let Err(e) = spawned {
                    log::warn!("cannot start a control client thread: {e}");
                }
            }
        })
}

fn client(emu: &LinkEmu, stream: std::net::TcpStream) -> io::Result<()> {
    let peer = stream.peer_addr()?;
    log::debug!("control client {peer} connected");
    let mut out = stream.try_clone()?;
    for line in BufReader::new(stream).lines() {
        let line = line?;
        let cmd = line.trim();
        if cmd.is_empty() {
            continue;
        }
        if cmd == "quit" {
            out.write_all(b"ok\n")?;
            break;
        }
        let answer = execute(emu, cmd);
        log::debug!(
            "control {peer}: {cmd} -> {}",
            answer.lines().last().unwrap_or("")
        );
        out.write_all(answer.as_bytes())?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Runs one command line and returns the full answer (lines separated by
/// `\n`, no trailing newline; the last line starts with `ok` or `err`).
pub fn execute(emu: &LinkEmu, line: &str) -> String {
    match run(emu, line) {
        Ok(s) => s,
        Err(e) => format!("err {e}"),
    }
}

fn run(emu: &LinkEmu, line: &str) -> Result<String, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let done = |r: Result<(), super::LinkEmuError>| r.map(|()| "ok".to_string());
    let fail = |e: super::LinkEmuError| e.to_string();
    match words.as_slice() {
        ["help"] => Ok(format!("{HELP}\nok")),
        ["list"] => {
            let conns = emu.connections();
            let mut s = String::new();
            for c in &conns {
                s.push_str(&conn_line(c));
                s.push('\n');
            }
            s.push_str(&format!("ok {}", conns.len()));
            Ok(s)
        }
        ["stats"] => {
            let st = emu.stats();
            Ok(format!(
                "stats accepted={} live={} up={} down={} outage={} rate_up={} rate_down={} \
                 delay_up={} delay_down={}\nok",
                st.accepted,
                st.live,
                st.bytes_up,
                st.bytes_down,
                if st.outage { "on" } else { "off" },
                rate(&st.default_up),
                rate(&st.default_down),
                st.default_up.delay_ms,
                st.default_down.delay_ms
            ))
        }
        ["reset", id] => done(emu.reset(conn_id(id)?)).map_err(fail),
        ["blackhole", id] => done(emu.blackhole(conn_id(id)?)).map_err(fail),
        ["restore", id] => done(emu.restore(conn_id(id)?)).map_err(fail),
        ["close-after", id, dir, n] => {
            let n: u64 = n
                .parse()
                .map_err(|_| format!("BYTES must be a whole number, not {n:?}"))?;
            done(emu.close_after(conn_id(id)?, dir.parse()?, n)).map_err(fail)
        }
        ["rate", target, dir, mbit] => {
            let mbit = match *mbit {
                "none" | "off" | "unlimited" => None,
                m => Some(
                    m.parse::<f64>()
                        .map_err(|_| format!("MBIT must be a number or none, not {m:?}"))?,
                ),
            };
            done(emu.set_rate(target_id(target)?, dir.parse::<Dir>()?, mbit)).map_err(fail)
        }
        ["delay", target, dir, ms] => {
            let ms: u64 = ms
                .parse()
                .map_err(|_| format!("MS must be a whole number, not {ms:?}"))?;
            done(emu.set_delay(target_id(target)?, dir.parse::<Dir>()?, ms)).map_err(fail)
        }
        ["outage", "on"] => done(emu.set_outage(true)).map_err(fail),
        ["outage", "off"] => done(emu.set_outage(false)).map_err(fail),
        ["wait", n, ms] => {
            let n: usize = n.parse().map_err(|_| format!("bad count {n:?}"))?;
            let ms: u64 = ms.parse().map_err(|_| format!("bad timeout {ms:?}"))?;
            if emu.wait_for_connections(n, Duration::from_millis(ms)) {
                Ok("ok".into())
            } else {
                Err(format!(
                    "timeout: {} of {n} connections accepted after {ms} ms",
                    emu.stats().accepted
                ))
            }
        }
        ["wait-open", n, ms] => {
            let n: usize = n.parse().map_err(|_| format!("bad count {n:?}"))?;
            let ms: u64 = ms.parse().map_err(|_| format!("bad timeout {ms:?}"))?;
            let open = |cs: &[ConnInfo]| cs.iter().filter(|c| c.state == ConnState::Open).count();
            if emu.wait_until(Duration::from_millis(ms), |cs| open(cs) >= n) {
                Ok("ok".into())
            } else {
                Err(format!(
                    "timeout: {} of {n} connections open after {ms} ms",
                    open(&emu.connections())
                ))
            }
        }
        [] => Err("empty command".into()),
        [cmd, ..] => Err(format!(
            "unknown command or wrong arguments: {cmd:?} (try `help`)"
        )),
    }
}

fn conn_id(s: &str) -> Result<usize, String> {
    s.parse()
        .map_err(|_| format!("ID must be a connection number, not {s:?}"))
}

fn target_id(s: &str) -> Result<Option<usize>, String> {
    if s == "all" {
        Ok(None)
    } else {
        conn_id(s).map(Some)
    }
}

fn rate(s: &Shape) -> String {
    s.rate_mbit.map_or("none".into(), |r| r.to_string())
}

fn conn_line(c: &ConnInfo) -> String {
    let upstream_local = c.upstream_local.map_or("-".into(), |a| a.to_string());
    format!(
        "conn {} state={} client={} upstream_local={} up={} down={} queued_up={} queued_down={} \
         rate_up={} rate_down={} delay_up={} delay_down={}",
        c.id,
        c.state,
        c.client,
        upstream_local,
        c.bytes_up,
        c.bytes_down,
        c.queued_up,
        c.queued_down,
        rate(&c.up),
        rate(&c.down),
        c.up.delay_ms,
        c.down.delay_ms
    )
}
