//! Reading a binary's `--metrics` endpoint: where it serves ([`metrics_addr`],
//! from its log), one HTTP exchange with timeouts ([`http_exchange`]), a
//! parsed scrape ([`Scrape`]) and `promtool check metrics` on it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{IO_TIMEOUT, Proc, START_TIMEOUT};

const LOG_LINE: &str = "serving metrics at http://";

/// The address from a binary's `serving metrics at http://ADDR/metrics`.
pub fn metrics_addr(p: &mut Proc) -> SocketAddr {
    let line = p.wait_log(LOG_LINE, START_TIMEOUT);
    let addr = line
        .split(LOG_LINE)
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|a| a.parse().ok());
    addr.unwrap_or_else(|| p.fail(&format!("no metrics address in {line:?}")))
}

/// Sends `request` as is and half-closes (so a request cut short ends
/// there), reads the answer to EOF; returns its status line and body.
pub fn http_exchange(addr: SocketAddr, request: &[u8]) -> (String, String) {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("cannot connect to the metrics at {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(request).expect("send the request");
    s.shutdown(std::net::Shutdown::Write).expect("half-close");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).expect("read the answer");
    let answer = String::from_utf8(answer).expect("a UTF-8 answer");
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {answer:?}"));
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, body.to_string())
}

/// One scrape of `/metrics`: the text and its samples by series
/// (`name{labels}` as written).
pub struct Scrape {
    pub text: String,
    samples: HashMap<String, f64>,
}

impl Scrape {
    /// `GET /metrics`; fails the test unless the answer is 200 with the
    /// classic text format.
    pub fn get(addr: SocketAddr) -> Scrape {
        let (status, text) = http_exchange(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: striper\r\nAccept: */*\r\n\r\n",
        );
        assert_eq!(status, "HTTP/1.1 200 OK", "scrape of {addr}: {text}");
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("not a sample line: {l:?}"));
                let value = value
                    .parse()
                    .unwrap_or_else(|_| panic!("not a number in {l:?}"));
                (series.to_string(), value)
            })
            .collect();
        Scrape { text, samples }
    }

    /// The value of `series`, e.g. `striper_sessions_open` or
    /// `striper_app_bytes_total{direction="to_peer"}`; fails if absent.
    #[track_caller]
    pub fn value(&self, series: &str) -> f64 {
        self.get_value(series)
            .unwrap_or_else(|| panic!("no {series} in the scrape:\n{}", self.text))
    }

    pub fn get_value(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }

    /// The series of metric `name` (with their labels).
    pub fn series_of(&self, name: &str) -> Vec<String> {
        let prefix = format!("{name}{{");
        let mut v: Vec<String> = self
            .samples
            .keys()
            .filter(|k| k.starts_with(&prefix) || *k == name)
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// Application bytes (to the peer, from the peer).
    #[track_caller]
    pub fn app_bytes(&self) -> (u64, u64) {
        let v = |d: &str| self.value(&format!("striper_app_bytes_total{{direction=\"{d}\"}}"));
        (v("to_peer") as u64, v("from_peer") as u64)
    }

    /// Fails the test unless `promtool check metrics` accepts the text
    /// (with its lint checks), or if promtool is missing.
    #[track_caller]
    pub fn assert_promtool_accepts(&self) {
        let child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = child.unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install the Debian package `prometheus` \
                 (scripts/test.sh does when it is missing)"
            )
        });
        child
            .stdin
            .take()
            .unwrap()
            .write_all(self.text.as_bytes())
            .expect("feed promtool");
        let out = wait_output(child, Duration::from_secs(30));
        assert!(
            out.status.success(),
            "promtool check metrics refused the scrape ({}): {}{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.text
        );
    }
}

/// Fails the test unless `promtool test rules FILE` passes: the rules a
/// rules test file names, against its series.
#[track_caller]
pub fn assert_promtool_rules_pass(file: &std::path::Path) {
    let child = Command::new("promtool")
        .args(["test", "rules"])
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install the Debian package `prometheus`")
        });
    let out = wait_output(child, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "promtool test rules {} failed ({}): {}{}",
        file.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A child's output, killing it (by PID) if it runs past `timeout`.
fn wait_output(mut child: std::process::Child, timeout: Duration) -> std::process::Output {
    let ok = super::poll_until(timeout, Duration::from_millis(10), || {
        child.try_wait().ok().flatten().is_some()
    });
    if !ok {
        let _ = child.kill();
        panic!("promtool did not finish within {timeout:?}");
    }
    child.wait_with_output().expect("promtool's output")
}
