//! `--metrics ADDR` on both programs, against the real binaries: the
//! endpoint is scraped during a transfer and after it; every scrape passes
//! `promtool check metrics`; the application byte counters of both ends
//! equal the bytes moved, exactly, while the session is open and after it
//! closed; sessions opened and closed move; per stripe index round trips
//! and queues are shown for the stripes up; a lost stripe shows in the
//! fault counters as in the close line; the server counts handshake
//! refusals by kind (not striper, another key, another session's secret);
//! garbage, cut-short, oversized and silent HTTP requests get an error (or
//! time out) while the tunnel keeps carrying bytes intact; the address may
//! come from `--config`; one that cannot be served stops the program with
//! the cause.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use pipes::proto::handshake::{Kind, SessionId};
use striper_tests::harness::rawv2::{self, EchoSession, RawStripe, hello};
use striper_tests::harness::relay::Relay;
use striper_tests::harness::{
    self, HeldSession, KeyFile, Pattern, Proc, Scrape, Target, TempDir, Tunnel,
    assert_echo_session, connect, echo, exchange_on, http_exchange, metrics_addr, start_client,
    start_server,
};

const METRICS: [&str; 2] = ["--metrics", "127.0.0.1:0"];
const WAIT: Duration = Duration::from_secs(30);

#[test]
fn byte_counters_follow_a_transfer_exactly_and_promtool_accepts_every_scrape() {
    const LEN: u64 = 4 << 20;
    const HOLD: u64 = 1 << 20;
    let target = Target::start(echo);
    let mut t = Tunnel::start_with(target.addr(), 4, &METRICS, "info");
    let (c, s) = (metrics_addr(&mut t.client), metrics_addr(&mut t.server));

    for (end, addr) in [("client", c), ("server", s)] {
        let m = Scrape::get(addr);
        m.assert_promtool_accepts();
        assert_eq!(m.value("striper_sessions_opened_total"), 0.0, "{end}");
        assert_eq!(m.app_bytes(), (0, 0), "{end}");
    }

    // Paused a quarter of the way: everything written so far has come back,
    // so both ends have moved exactly HOLD bytes each way, and the session
    // is still open. Paced, so that the session is busy for a few of its
    // 100 ms ticks, where it samples its stripes' round trips.
    let held = HeldSession::start(t.connect(), Pattern::new(13), LEN, HOLD, Some(2 << 20));
    assert!(
        held.wait_echoed(HOLD, WAIT),
        "echoed {} of {HOLD}",
        held.echoed()
    );
    for (end, addr) in [("client", c), ("server", s)] {
        let m = Scrape::get(addr);
        m.assert_promtool_accepts();
        assert_eq!(m.app_bytes(), (HOLD, HOLD), "{end}: bytes mid-transfer");
        assert_eq!(m.value("striper_sessions_open"), 1.0, "{end}");
        assert_eq!(m.value("striper_sessions_opened_total"), 1.0, "{end}");
        let up = m.value("striper_stripes_up");
        assert!((1.0..=4.0).contains(&up), "{end}: {up} stripes up");
        // One queue reading per stripe up, labelled by its index.
        let queues = m.series_of("striper_stripe_send_queue_bytes");
        assert_eq!(queues.len() as f64, up, "{end}: {queues:?}");
        for q in &queues {
            let i: u8 = q
                .split('"')
                .nth(1)
                .and_then(|i| i.parse().ok())
                .unwrap_or_else(|| panic!("{end}: no stripe index in {q}"));
            assert!(i < 4, "{end}: stripe index {i} of 4 stripes");
        }
        let rtts = m.series_of("striper_stripe_rtt_seconds");
        assert!(!rtts.is_empty(), "{end}: no round trip:\n{}", m.text);
        for r in &rtts {
            let v = m.value(r);
            assert!(v > 0.0 && v < 1.0, "{end}: {r} = {v} s on loopback");
        }
    }

    held.finish("held session", WAIT);
    t.client.wait_log("closed after", WAIT);
    t.server.wait_log("closed after", WAIT);
    for (end, addr) in [("client", c), ("server", s)] {
        let m = Scrape::get(addr);
        m.assert_promtool_accepts();
        assert_eq!(m.app_bytes(), (LEN, LEN), "{end}: bytes after the session");
        assert_eq!(m.value("striper_sessions_open"), 0.0, "{end}");
        assert_eq!(m.value("striper_sessions_opened_total"), 1.0, "{end}");
        assert_eq!(
            m.value("striper_sessions_closed_total{reason=\"finished\"}"),
            1.0,
            "{end}"
        );
        assert_eq!(m.value("striper_stripes_up"), 0.0, "{end}");
        assert!(m.series_of("striper_stripe_send_queue_bytes").is_empty());
    }
    // The far end's application read exactly what the near end's wrote.
    let at_target = target.wait_reports(1, WAIT)[0].received.clone().unwrap();
    assert_eq!(at_target.digest.len, LEN);
    t.assert_healthy();
}

#[test]
fn the_server_counts_refusals_by_kind_and_bad_http_does_not_hurt_the_tunnel() {
    let target = Target::start(echo);
    let mut t = Tunnel::start_with(target.addr(), 2, &METRICS, "info");
    let s = metrics_addr(&mut t.server);

    // Not a striper handshake, on the stripe port.
    let mut junk = connect(t.server.addr());
    junk.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    t.server
        .wait_log("sent bytes that are not a striper handshake", WAIT);
    drop(junk);
    // A client with another key: its stripes fail authentication.
    let other = KeyFile::generate();
    let mut impostor = start_client(&other, t.server.addr(), 1, &[], "info");
    let mut app = connect(impostor.addr());
    let _ = app.write_all(b"hello");
    t.server.wait_log("failed authentication", WAIT);
    impostor.wait_log("closed after", WAIT);

    let m = Scrape::get(s);
    m.assert_promtool_accepts();
    let kind = |k: &str| m.value(&format!("striper_handshake_refusals_total{{kind=\"{k}\"}}"));
    assert!(kind("not_striper") >= 1.0, "{}", m.text);
    assert!(kind("auth_failed") >= 1.0, "{}", m.text);
    assert_eq!(kind("server_full"), 0.0);
    assert_eq!(m.value("striper_sessions_opened_total"), 0.0);

    // Bad requests get an error each, and the endpoint keeps answering.
    let cases: [(&[u8], &str); 5] = [
        (b"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"),
        (
            b"POST /metrics HTTP/1.1\r\n\r\n",
            "HTTP/1.1 405 Method Not Allowed",
        ),
        (
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\n\n",
            "HTTP/1.1 400 Bad Request",
        ),
        (
            &[b'a'; 9000],
            "HTTP/1.1 431 Request Header Fields Too Large",
        ),
        (
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n",
            "HTTP/1.1 400 Bad Request",
        ),
    ];
    for (req, want) in cases {
        let (status, _) = http_exchange(s, req);
        assert_eq!(status, want, "request {:?}", String::from_utf8_lossy(req));
    }
    // A client that connects and says nothing holds the responder for at
    // most its request timeout; meanwhile the tunnel carries bytes intact.
    let silent = TcpStream::connect(s).unwrap();
    assert_echo_session(t.addr(), 7, 1 << 20);
    let m = Scrape::get(s);
    assert_eq!(m.app_bytes(), (1 << 20, 1 << 20), "{}", m.text);
    drop(silent);
    t.assert_healthy();
}

/// A stripe lost mid-transfer (one flipped byte on the path ends it) shows
/// in the fault counters, which agree with each end's close line, while
/// the byte counters still equal the bytes moved.
#[test]
fn fault_counters_agree_with_the_close_lines() {
    const LEN: u64 = 8 << 20;
    let target = Target::start(echo);
    let key = KeyFile::generate();
    let mut server = start_server(&key, target.addr(), &METRICS, "info");
    let relay = Relay::start(server.addr(), usize::MAX, Some(100_000));
    let mut client = start_client(&key, relay.addr(), 4, &METRICS, "info");
    let pat = Pattern::new(0x3e7);
    let (sent, got) = exchange_on(connect(client.addr()), &pat, LEN, Some(&pat));
    got.assert_intact(
        "session across a tampered stripe",
        sent.expect("send"),
        &pat,
        LEN,
    );
    server.wait_log("authentication failed", WAIT);
    for (end, p) in [("client", &mut client), ("server", &mut server)] {
        let line = p.wait_log("closed after", WAIT);
        let m = Scrape::get(metrics_addr(p));
        m.assert_promtool_accepts();
        assert_eq!(m.app_bytes(), (LEN, LEN), "{end}");
        let (lost, redialed) = faults_in(&line);
        assert_eq!(
            m.value("striper_stripes_lost_total"),
            lost as f64,
            "{end}: {line}"
        );
        assert_eq!(
            m.value("striper_stripes_redialed_total"),
            redialed as f64,
            "{end}: {line}"
        );
        if end == "server" {
            assert!(lost >= 1, "the tampered stripe was lost: {line}");
        }
    }
}

/// "N stripe(s) lost, M re-dialed" from a close line (0, 0 without faults).
fn faults_in(line: &str) -> (u64, u64) {
    let Some((before, after)) = line.split_once(" stripe(s) lost, ") else {
        return (0, 0);
    };
    let lost = before.rsplit(' ').next().and_then(|n| n.parse().ok());
    let redialed = after.split(' ').next().and_then(|n| n.parse().ok());
    (
        lost.unwrap_or_else(|| panic!("no count in {line}")),
        redialed.unwrap_or_else(|| panic!("no count in {line}")),
    )
}

/// A stripe with the key but another session's secret is refused at its
/// join: the only refusal a key holder can cause, counted on its own.
#[test]
fn a_stripe_without_the_session_secret_counts_as_a_refused_join() {
    let target = Target::start(echo);
    let key_file = KeyFile::generate();
    let mut server = start_server(&key_file, target.addr(), &METRICS, "info");
    let s = metrics_addr(&mut server);
    let key = rawv2::key_of(&key_file);
    let id: SessionId = [7; 16];
    let genuine = RawStripe::open(server.addr(), &hello(Kind::Open, 0, 2, id), &key, [1; 32]);
    let mut genuine = EchoSession::new(genuine);
    let round = Pattern::new(3).bytes(64 * 1024);
    let back = genuine.echo(&round, WAIT).expect("an echo round");
    assert_eq!(back, round);

    let forged = RawStripe::open(server.addr(), &hello(Kind::Join, 1, 2, id), &key, [2; 32]);
    server.wait_log("could not join session", WAIT);
    drop(forged);
    let m = Scrape::get(s);
    m.assert_promtool_accepts();
    let kind = |k: &str| m.value(&format!("striper_handshake_refusals_total{{kind=\"{k}\"}}"));
    assert_eq!(kind("join_refused"), 1.0, "{}", m.text);
    assert_eq!(kind("auth_failed"), 0.0, "{}", m.text);
    assert_eq!(m.value("striper_sessions_open"), 1.0);
    assert_eq!(m.app_bytes(), (round.len() as u64, round.len() as u64));
    genuine.finish(WAIT).expect("a clean end");
    server.assert_healthy();
}

/// `metrics` in a `--config` file, like any long option.
#[test]
fn the_metrics_address_can_come_from_the_config_file() {
    let dir = TempDir::new("metrics-config");
    let path = dir.path().join("client.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:0\"\nserver = \"127.0.0.1:9\"\ninsecure-no-auth = true\n\
         metrics = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let args = ["--config".to_string(), path.display().to_string()];
    let mut client = Proc::spawn_listening("stripe-client", "stripe-client", &args, "info");
    let m = Scrape::get(metrics_addr(&mut client));
    assert_eq!(m.value("striper_sessions_open"), 0.0);
    client.assert_healthy();
}

#[test]
fn a_metrics_address_that_cannot_be_served_is_an_error_naming_it() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(harness::bin("stripe-client"))
        .args(["--listen", "127.0.0.1:0", "--server", "127.0.0.1:9"])
        .args(["--insecure-no-auth", "--metrics", &addr])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("cannot serve metrics on {addr}")) && err.contains("in use"),
        "{err}"
    );
}
