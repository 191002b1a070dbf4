//! tcpblast: a bulk TCP source and sink that checks what arrived.
//!
//! The demo and the benchmark scripts use it so they need nothing beyond
//! cargo: `serve` reads each connection to EOF and prints its length, CRC32
//! and rate; `send` writes a deterministic pseudo-random stream and prints
//! the same figures for what it sent. Equal CRCs and lengths mean every byte
//! arrived in order.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tcpblast",
    version,
    about = "Bulk TCP source and sink that checks what arrived"
)]
struct Opts {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Accept connections; read each to EOF and print `bytes=N crc=X secs=T mbit=R`.
    Serve {
        /// Address to listen on (port 0: any; the chosen one is printed first).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// Stop after this many connections (0: serve until killed).
        #[arg(long, default_value_t = 0)]
        count: usize,
    },
    /// Connect, send BYTES of the seeded stream, half-close, wait for the
    /// peer to close, print `bytes=N crc=X secs=T mbit=R`.
    Send {
        #[arg(long)]
        connect: String,
        /// Bytes to send (suffixes K, M, G).
        #[arg(long, value_parser = striper_core::config::parse_size)]
        bytes: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Echo every byte back on each connection (for `ping`).
    Echo {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
    /// 1-byte ping-pong: send a byte, wait for it to come back, COUNT times;
    /// print `pings=N median_us=.. p99_us=.. max_us=..`.
    Ping {
        #[arg(long)]
        connect: String,
        #[arg(long, default_value_t = 2000)]
        count: usize,
    },
}

/// xorshift64*: fast, deterministic, good enough to defeat compression and
/// make misplaced bytes visible.
struct Stream(u64);

impl Stream {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn report(what: &str, bytes: u64, crc: u32, secs: f64) {
    let mbit = if secs > 0.0 {
        bytes as f64 * 8.0 / secs / 1e6
    } else {
        0.0
    };
    println!("{what} bytes={bytes} crc={crc:08x} secs={secs:.3} mbit={mbit:.2}");
}

fn main() -> ExitCode {
    let r = match Opts::parse().cmd {
        Cmd::Serve { listen, count } => serve(&listen, count),
        Cmd::Send {
            connect,
            bytes,
            seed,
            timeout,
        } => send(&connect, bytes, seed, Duration::from_secs(timeout)),
        Cmd::Echo { listen } => echo(&listen),
        Cmd::Ping { connect, count } => ping(&connect, count),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcpblast: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(listen: &str, count: usize) -> io::Result<()> {
    let l = TcpListener::bind(listen)?;
    println!("listening on {}", l.local_addr()?);
    io::stdout().flush()?;
    let mut handles = Vec::new();
    for (n, conn) in l.incoming().enumerate() {
        let mut c = conn?;
        handles.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            let mut crc = crc32fast::Hasher::new();
            let mut total = 0u64;
            let mut first: Option<Instant> = None;
            loop {
                match c.read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => {
                        first.get_or_insert_with(Instant::now);
                        crc.update(&buf[..k]);
                        total += k as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        eprintln!("tcpblast: read failed after {total} bytes: {e}");
                        return;
                    }
                }
            }
            let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
            report("received", total, crc.finalize(), secs);
            let _ = io::stdout().flush();
        }));
        if count > 0 && n + 1 >= count {
            break;
        }
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// Connects to the first address `addr` resolves to, within 10 s.
fn dial(addr: &str) -> io::Result<TcpStream> {
    let addr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;
    TcpStream::connect_timeout(&addr, Duration::from_secs(10))
}

fn send(addr: &str, bytes: u64, seed: u64, timeout: Duration) -> io::Result<()> {
    let mut c = dial(addr)?;
    c.set_write_timeout(Some(timeout))?;
    c.set_read_timeout(Some(timeout))?;
    let mut stream = Stream(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut buf = vec![0u8; 256 * 1024];
    let mut crc = crc32fast::Hasher::new();
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = (left as usize).min(buf.len());
        stream.fill(&mut buf[..n]);
        crc.update(&buf[..n]);
        c.write_all(&buf[..n])?;
        left -= n as u64;
    }
    c.shutdown(Shutdown::Write)?;
    // The peer closes after reading everything: that is when the bytes arrived.
    let mut sink = [0u8; 4096];
    while c.read(&mut sink)? > 0 {}
    report("sent", bytes, crc.finalize(), start.elapsed().as_secs_f64());
    Ok(())
}

fn echo(listen: &str) -> io::Result<()> {
    let l = TcpListener::bind(listen)?;
    println!("listening on {}", l.local_addr()?);
    io::stdout().flush()?;
    for conn in l.incoming() {
        let mut c = conn?;
        c.set_nodelay(true)?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if c.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    Ok(())
}

fn ping(addr: &str, count: usize) -> io::Result<()> {
    let mut c = dial(addr)?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut rtts = Vec::with_capacity(count);
    let mut b = [0u8; 1];
    // A few rounds to warm up (connects, buffers) before measuring.
    for i in 0..count + 20 {
        let t = Instant::now();
        c.write_all(&[i as u8])?;
        c.read_exact(&mut b)?;
        if b[0] != i as u8 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "echo returned a different byte",
            ));
        }
        if i >= 20 {
            rtts.push(t.elapsed().as_micros() as u64);
        }
    }
    rtts.sort_unstable();
    let pct = |p: f64| rtts[((rtts.len() - 1) as f64 * p).round() as usize];
    println!(
        "pings={} median_us={} p99_us={} max_us={}",
        rtts.len(),
        pct(0.5),
        pct(0.99),
        rtts[rtts.len() - 1]
    );
    Ok(())
}
