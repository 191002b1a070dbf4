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
//! the cause. A bonding client shows what each path carried, its stripes
//! up, its role and its deaths.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use pipes::proto::handshake::{Kind, SessionId};
use striper_tests::harness::rawv2::{self, EchoSession, RawStripe, hello};
use striper_tests::harness::relay::Relay;
use striper_tests::harness::{
    self, HeldSession, KeyFile, Pattern, Proc, Scrape, Target, TempDir, Tunnel,
    assert_echo_session, connect, echo, exchange_on, http_exchange, metrics_addr, poll_until,
    start_client, start_server,
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

/// A client's view of one path in a scrape.
#[derive(Debug, PartialEq)]
struct PathView {
    to_peer: u64,
    from_peer: u64,
    stripes_up: f64,
    backup: f64,
    downs: f64,
}

/// Every series of `path`; fails if one is missing.
#[track_caller]
fn path_view(m: &Scrape, path: &str) -> PathView {
    let one = |name: &str| m.value(&format!("{name}{{path=\"{path}\"}}"));
    PathView {
        to_peer: path_bytes(m, path, "to_peer"),
        from_peer: path_bytes(m, path, "from_peer"),
        stripes_up: one("striper_path_stripes_up"),
        backup: one("striper_path_backup"),
        downs: one("striper_path_down_total"),
    }
}

/// `striper_path_bytes_total` of `path` in `direction`.
#[track_caller]
fn path_bytes(m: &Scrape, path: &str, direction: &str) -> u64 {
    m.value(&format!(
        "striper_path_bytes_total{{path=\"{path}\",direction=\"{direction}\"}}"
    )) as u64
}

/// Two paths from two loopback source addresses, the second a backup, 2
/// stripes each: the primary's DATA counters account for a checksummed
/// echo each way (re-sends may add), the backup's stay near zero while the
/// primary lives though its stripes are up, each path shows its role, and
/// nothing goes backwards when the session closes.
#[test]
fn per_path_metrics_show_the_primary_carrying_and_the_backup_standing_by() {
    const LEN: u64 = 4 << 20;
    const HOLD: u64 = 2 << 20;
    const PER_PATH: u8 = 2;
    /// Handshakes and PINGs are no DATA: the backup's counters should stay
    /// at 0; a start-up race may give it a frame or two.
    const STANDBY: u64 = 64 << 10;
    let target = Target::start(echo);
    let key = KeyFile::generate();
    let server = start_server(&key, target.addr(), &[], "info");
    let args = ["--via", "127.0.0.2", "--via", "127.0.0.3:backup"];
    let mut client = start_client(
        &key,
        server.addr(),
        PER_PATH,
        &[&args[..], &METRICS].concat(),
        "info",
    );
    let c = metrics_addr(&mut client);
    let primary = format!("127.0.0.2->{}", server.addr());
    let backup = format!("127.0.0.3->{}", server.addr());

    // Configured paths are shown before any session, at 0.
    let m = Scrape::get(c);
    m.assert_promtool_accepts();
    let idle = |backup| PathView {
        to_peer: 0,
        from_peer: 0,
        stripes_up: 0.0,
        backup,
        downs: 0.0,
    };
    assert_eq!(path_view(&m, &primary), idle(0.0), "{}", m.text);
    assert_eq!(path_view(&m, &backup), idle(1.0), "{}", m.text);

    let held = HeldSession::start(connect(client.addr()), Pattern::new(12), LEN, HOLD, None);
    assert!(
        held.wait_echoed(HOLD, WAIT),
        "echoed {} of {HOLD}",
        held.echoed()
    );
    // Every stripe of both paths up (the backup's may finish their
    // handshakes after the data started).
    let mut m = Scrape::get(c);
    let all_up = poll_until(WAIT, Duration::from_millis(20), || {
        m = Scrape::get(c);
        [&primary, &backup]
            .iter()
            .all(|p| path_view(&m, p).stripes_up == PER_PATH as f64)
    });
    assert!(all_up, "stripes up per path:\n{}", m.text);
    m.assert_promtool_accepts();
    let (p, b) = (path_view(&m, &primary), path_view(&m, &backup));
    eprintln!("mid-session: primary {p:?}, backup {b:?}");
    assert!(
        p.to_peer >= HOLD && p.from_peer >= HOLD,
        "the primary carried {p:?} of {HOLD} each way"
    );
    assert!(
        b.to_peer + b.from_peer < STANDBY,
        "the backup carried {b:?} while the primary lived"
    );
    assert_eq!((p.backup, b.backup, p.downs, b.downs), (0.0, 1.0, 0.0, 0.0));
    assert_eq!(m.value("striper_stripes_up"), 2.0 * PER_PATH as f64);

    held.finish("echo over a primary and a backup path", WAIT);
    client.wait_log("closed after", WAIT);
    let m = Scrape::get(c);
    m.assert_promtool_accepts();
    let (p2, b2) = (path_view(&m, &primary), path_view(&m, &backup));
    assert!(
        p2.to_peer >= LEN.max(p.to_peer) && p2.from_peer >= LEN.max(p.from_peer),
        "the primary carried {p2:?} of {LEN} each way (mid-session {p:?})"
    );
    assert!(
        b2.to_peer >= b.to_peer && b2.to_peer + b2.from_peer < STANDBY,
        "the backup carried {b2:?} (mid-session {b:?})"
    );
    assert_eq!((p2.stripes_up, b2.stripes_up), (0.0, 0.0));
    assert_eq!(m.app_bytes(), (LEN, LEN));
    client.assert_healthy();
}

/// A path that loses its only stripe (a flipped byte on the way fails
/// its record) counts one death, as the log says once; the backup then
/// carries the bytes the dead stripe held, and the counters show it.
#[test]
fn a_path_that_dies_counts_in_its_down_total_and_the_backup_takes_its_bytes() {
    const LEN: u64 = 4 << 20;
    let target = Target::start(echo);
    let key = KeyFile::generate();
    let mut server = start_server(&key, target.addr(), &[], "info");
    // Only the primary's stripe carries DATA, so it is the first
    // connection to reach the flipped offset.
    let relay = Relay::start(server.addr(), 0, Some(200_000));
    let args = ["--via", "127.0.0.2", "--via", "127.0.0.3:backup"];
    let mut client = start_client(
        &key,
        relay.addr(),
        1,
        &[&args[..], &METRICS].concat(),
        "info",
    );
    let c = metrics_addr(&mut client);
    let primary = format!("127.0.0.2->{}", relay.addr());
    let backup = format!("127.0.0.3->{}", relay.addr());
    assert_echo_session(client.addr(), 0x9a7, LEN);
    server.wait_log("authentication failed", WAIT);
    client.wait_log("closed after", WAIT);
    let m = Scrape::get(c);
    m.assert_promtool_accepts();
    let (p, b) = (path_view(&m, &primary), path_view(&m, &backup));
    eprintln!("after the session: primary {p:?}, backup {b:?}");
    let logged = client.count_log(&format!("path {primary} down"));
    assert_eq!(logged, 1, "{}", client.log_text());
    assert_eq!((p.downs, b.downs), (1.0, 0.0), "{}", m.text);
    assert!(
        b.to_peer > 0,
        "the backup carried nothing after the primary died: {b:?}"
    );
    assert!(
        p.to_peer + b.to_peer >= LEN && p.from_peer + b.from_peer >= LEN,
        "the paths carried {p:?} and {b:?} of {LEN} each way"
    );
    client.assert_healthy();
}

/// A reload that replaces a path: the removed one keeps its counters (and
/// its gauges while a live session still uses it), the new one starts at
/// 0 and carries the next session's bytes.
#[test]
fn a_reload_that_removes_a_path_keeps_its_counters() {
    const LEN: u64 = 2 << 20;
    let target = Target::start(echo);
    let key = KeyFile::generate();
    let server = start_server(&key, target.addr(), &[], "info");
    let dir = TempDir::new("metrics-paths-reload");
    let cfg = dir.path().join("client.toml");
    let toml = |vias: &str| {
        format!(
            "listen = \"127.0.0.1:0\"\nserver = \"{}\"\nstripes = 2\nkey-file = \"{}\"\n\
             metrics = \"127.0.0.1:0\"\nvia = [{vias}]\n",
            server.addr(),
            key.path().display()
        )
    };
    std::fs::write(&cfg, toml(r#""127.0.0.2", "127.0.0.3""#)).unwrap();
    let args = ["--config".to_string(), cfg.display().to_string()];
    let mut client = Proc::spawn_listening("stripe-client", "stripe-client", &args, "info");
    let c = metrics_addr(&mut client);
    let [a, b, new] =
        ["127.0.0.2", "127.0.0.3", "127.0.0.4"].map(|v| format!("{v}->{}", server.addr()));

    let held = HeldSession::start(connect(client.addr()), Pattern::new(5), LEN, LEN / 2, None);
    assert!(held.wait_echoed(LEN / 2, WAIT), "echoed {}", held.echoed());
    let before = Scrape::get(c);
    let b_before = path_view(&before, &b);

    // b is replaced by a backup, c; the file is written aside and renamed,
    // so the reload never reads half of it.
    let tmp = dir.path().join("client.toml.tmp");
    std::fs::write(&tmp, toml(r#""127.0.0.2", "127.0.0.4:backup""#)).unwrap();
    std::fs::rename(&tmp, &cfg).unwrap();
    client.signal(libc::SIGHUP);
    client.wait_log("reloaded ", WAIT);
    let m = Scrape::get(c);
    m.assert_promtool_accepts();
    let (vb, vnew) = (path_view(&m, &b), path_view(&m, &new));
    assert!(vb.to_peer >= b_before.to_peer, "{vb:?} after {b_before:?}");
    assert_eq!(vb.backup, 0.0, "the live session's path b is a primary");
    assert!(vb.stripes_up > 0.0, "the live session still has b: {vb:?}");
    assert_eq!((vnew.to_peer, vnew.stripes_up, vnew.backup), (0, 0.0, 1.0));

    held.finish("a session across the reload", WAIT);
    client.wait_log("closed after", WAIT);
    let after = Scrape::get(c);
    let b_after = path_bytes(&after, &b, "to_peer");
    assert!(
        b_after >= vb.to_peer && b_after > 0,
        "{b_after} after {vb:?}"
    );
    assert!(
        after
            .get_value(&format!("striper_path_stripes_up{{path=\"{b}\"}}"))
            .is_none(),
        "a removed path with no session has no gauge:\n{}",
        after.text
    );
    // The next session takes a and the new backup, which stands by.
    let a_before = path_view(&after, &a).to_peer;
    assert_echo_session(client.addr(), 6, LEN);
    client.wait_log_count("closed after", 2, WAIT);
    let m = Scrape::get(c);
    m.assert_promtool_accepts();
    assert!(path_view(&m, &a).to_peer >= a_before + LEN, "{}", m.text);
    assert_eq!(path_bytes(&m, &b, "to_peer"), b_after, "{}", m.text);
    assert!(path_view(&m, &new).to_peer < 64 << 10, "{}", m.text);
    client.assert_healthy();
}

/// The rules docs/METRICS.md suggests (each path's share of the bytes, a
/// backup carrying while a primary is up) pass their own tests: the alert
/// fires on a backup carrying beside a live primary, and not after a
/// failover and the primary's return.
#[test]
fn the_suggested_prometheus_rules_pass_their_tests() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/prometheus");
    harness::assert_promtool_rules_pass(&dir.join("striper-rules.test.yml"));
}
