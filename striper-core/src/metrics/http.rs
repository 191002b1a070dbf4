//! The HTTP responder behind `--metrics ADDR`: `GET /metrics` on a thread
//! of its own, blocking in accept while nobody scrapes.
//!
//! One connection at a time, one request per connection (then close):
//! a scraper asks every few seconds, so nothing more is needed. A request
//! is read within [`REQUEST_TIMEOUT`] and [`MAX_REQUEST`] bytes, so a slow
//! or garbage client holds the responder at most that long and never
//! reaches the event loop. Before answering, the responder wakes the loop
//! through a mio `Waker` and waits (at most [`PUBLISH_WAIT`]) for it to
//! publish fresh figures; a loop busy for longer gets the previous ones
//! served.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use log::debug;
use prometheus_client::registry::Registry;

/// Largest request head accepted (request line and headers).
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request, and to take the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Time the answer's connection waits for the client's EOF before closing.
const LINGER: Duration = Duration::from_millis(500);
/// Time a scrape waits for the event loop to publish fresh figures.
pub const PUBLISH_WAIT: Duration = Duration::from_secs(1);
/// The classic Prometheus text format, which every scraper and `promtool
/// check metrics` read (see [`classic_text`]).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What to answer a request with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics` (`head`: a `HEAD`, headers only).
    Metrics {
        head: bool,
    },
    NotFound,
    MethodNotAllowed,
    BadRequest,
    TooLarge,
}

/// Judges the request read so far (`buf`); `None` while its head is
/// incomplete and more may come (`eof`: nothing more will).
pub fn route(buf: &[u8], eof: bool) -> Option<Route> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n"));
    if end.is_none() {
        return if buf.len() >= MAX_REQUEST {
            Some(Route::TooLarge)
        } else if eof {
            Some(Route::BadRequest)
        } else {
            None
        };
    }
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else {
        return Some(Route::BadRequest);
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Some(Route::BadRequest);
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Some(Route::BadRequest);
    }
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Some(Route::MethodNotAllowed),
    };
    let path = target.split('?').next().unwrap_or_default();
    Some(if path == "/metrics" {
        Route::Metrics { head }
    } else {
        Route::NotFound
    })
}

/// Scrapes asked for and published, as generations: a scrape waits until
/// the loop has published at or after its request.
#[derive(Default)]
struct Generations {
    requested: u64,
    published: u64,
}

struct Shared {
    generations: Mutex<Generations>,
    published: Condvar,
    waker: mio::Waker,
}

/// The event loop's end of the responder.
pub struct Exporter {
    shared: Arc<Shared>,
}

impl Exporter {
    /// Listens on `listen` (`HOST:PORT`) and serves `registry` from a new
    /// thread; `waker` wakes the event loop to publish. Returns the address
    /// bound.
    pub fn start(
        listen: &str,
        registry: Arc<Registry>,
        waker: mio::Waker,
    ) -> Result<(Exporter, SocketAddr), String> {
        let addrs = crate::config::resolve("metrics address", listen)?;
        let listener = TcpListener::bind(addrs.as_slice())
            .map_err(|e| format!("cannot serve metrics on {listen}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let shared = Arc::new(Shared {
            generations: Mutex::new(Generations::default()),
            published: Condvar::new(),
            waker,
        });
        let theirs = shared.clone();
        thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(listener, &registry, &theirs))
            .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
        Ok((Exporter { shared }, local))
    }

    /// The loop was woken: `publish` sets the metrics, then the scrapes
    /// waiting for it are answered.
    pub fn publish(&self, publish: impl FnOnce()) {
        let wanted = lock(&self.shared.generations).requested;
        publish();
        lock(&self.shared.generations).published = wanted;
        self.shared.published.notify_all();
    }
}

fn lock(m: &Mutex<Generations>) -> std::sync::MutexGuard<'_, Generations> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn serve(listener: TcpListener, registry: &Registry, shared: &Shared) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                if let Err(e) = answer(stream, registry, shared) {
                    debug!("metrics request dropped: {e}");
                }
            }
            Err(e) => {
                // Out of descriptors and the like: the connection stays
                // queued; retrying at once would spin.
                debug!("metrics accept failed: {e}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Asks the event loop for fresh figures and waits for them, at most
/// [`PUBLISH_WAIT`].
fn refresh(shared: &Shared) {
    let mut g = lock(&shared.generations);
    g.requested += 1;
    let wanted = g.requested;
    if shared.waker.wake().is_err() {
        return;
    }
    let deadline = Instant::now() + PUBLISH_WAIT;
    while g.published < wanted {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            debug!(
                "metrics: the event loop did not publish within {PUBLISH_WAIT:?}; serving the last figures"
            );
            return;
        }
        g = shared
            .published
            .wait_timeout(g, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

fn read_request(stream: &mut TcpStream) -> io::Result<Route> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(r) = route(&buf, false) {
            return Ok(r);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "request too slow"));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(route(&buf, true).unwrap_or(Route::BadRequest)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn answer(mut stream: TcpStream, registry: &Registry, shared: &Shared) -> io::Result<()> {
    let route = read_request(&mut stream)?;
    let (status, content_type, body, head) = match route {
        Route::Metrics { head } => {
            refresh(shared);
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, registry)
                .map_err(|_| io::Error::other("cannot encode the metrics"))?;
            ("200 OK", CONTENT_TYPE, classic_text(&text), head)
        }
        Route::NotFound => plain("404 Not Found", "not found: the metrics are at /metrics"),
        Route::MethodNotAllowed => plain("405 Method Not Allowed", "only GET and HEAD"),
        Route::BadRequest => plain("400 Bad Request", "not an HTTP/1.x request"),
        Route::TooLarge => plain(
            "431 Request Header Fields Too Large",
            "request head over 8 KiB",
        ),
    };
    let allow = if route == Route::MethodNotAllowed {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body.as_bytes());
    }
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    stream.write_all(&out)?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    // Closing with unread bytes (the rest of an oversized request) would
    // reset the connection, and the client might lose the answer: read on
    // until its EOF, briefly.
    stream.set_read_timeout(Some(LINGER))?;
    let mut rest = [0u8; 4096];
    let mut left: usize = 64 * 1024;
    while left > 0 {
        match stream.read(&mut rest) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
    Ok(())
}

/// Turns `prometheus_client`'s OpenMetrics text into the classic format
/// (0.0.4): a counter's HELP and TYPE lines name it with its `_total`
/// suffix, as its samples do, and there is no `# EOF`. Served as
/// OpenMetrics, `promtool check metrics` (which reads the classic format)
/// takes every counter's samples for an undocumented metric of their own.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let total = if counters.contains(&name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{prefix}{name}{total} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

fn plain(status: &'static str, text: &str) -> (&'static str, &'static str, String, bool) {
    (
        status,
        "text/plain; charset=utf-8",
        format!("{text}\n"),
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_requests() {
        let get = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n";
        assert_eq!(route(get, false), Some(Route::Metrics { head: false }));
        // Incomplete until the blank line.
        assert_eq!(route(&get[..20], false), None);
        assert_eq!(route(&get[..20], true), Some(Route::BadRequest));
        assert_eq!(route(b"", true), Some(Route::BadRequest));
        assert_eq!(
            route(b"HEAD /metrics?x=1 HTTP/1.0\n\n", false),
            Some(Route::Metrics { head: true })
        );
        assert_eq!(
            route(b"GET / HTTP/1.1\r\n\r\n", false),
            Some(Route::NotFound)
        );
        assert_eq!(
            route(b"GET /metricsx HTTP/1.1\r\n\r\n", false),
            Some(Route::NotFound)
        );
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n", false),
            Some(Route::MethodNotAllowed)
        );
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET /metrics HTTP/2\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"\xff\xfe /metrics HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n",
        ] {
            assert_eq!(route(bad, false), Some(Route::BadRequest), "{bad:?}");
        }
    }

    #[test]
    fn counters_are_named_with_their_total_in_the_classic_format() {
        let om = "# HELP x_opened Sessions.\n# TYPE x_opened counter\nx_opened_total 2\n\
                  # HELP x_open Open.\n# TYPE x_open gauge\nx_open 1\n# EOF\n";
        assert_eq!(
            classic_text(om),
            "# HELP x_opened_total Sessions.\n# TYPE x_opened_total counter\nx_opened_total 2\n\
             # HELP x_open Open.\n# TYPE x_open gauge\nx_open 1\n"
        );
    }

    #[test]
    fn an_endless_head_is_refused_at_the_limit() {
        let mut req = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while req.len() + 25 < MAX_REQUEST {
            req.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(route(&req, false), None);
        req.resize(MAX_REQUEST, b'a');
        assert_eq!(route(&req, false), Some(Route::TooLarge));
    }
}
