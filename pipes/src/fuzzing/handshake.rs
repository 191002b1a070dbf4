//! The `handshake` target: the hello parsers, the key file parser, the
//! server's handshake machine fed arbitrary bytes, and the client's machine
//! fed an arbitrary answer.

use crate::proto::auth::Key;
use crate::proto::handshake::{
    ClientHandshake, ClientHello, ClientStep, Kind, MAX_STRIPES, MIN_MAX_PAYLOAD, MIN_WINDOW,
    ServerHandshake, ServerHello, ServerStep, Status, TargetName,
};
use crate::proto::noise::{ANSWER_PLAIN_LEN, HELLO_PLAIN_LEN};

/// Both field parsers with round trips; the key file parser on `data` as
/// text; the server's machine on `data` cut into pieces (first as it is,
/// then behind a genuine first flight, so the confirmation's decoder sees
/// fuzzed bytes too); the client's machine on `data` as the answer.
pub fn handshake(data: &[u8]) {
    hello_fields(data);
    key_file(data);
    server_machine(data, false);
    server_machine(data, true);
    client_machine(data);
}

fn hello_fields(data: &[u8]) {
    if let Some(b) = data.get(..HELLO_PLAIN_LEN) {
        let b: &[u8; HELLO_PLAIN_LEN] = b.try_into().expect("checked");
        if let Ok(h) = ClientHello::parse(b) {
            assert!(h.count >= 1 && h.count <= MAX_STRIPES && h.index < h.count);
            assert!(h.window >= MIN_WINDOW && h.max_payload >= MIN_MAX_PAYLOAD);
            assert_eq!(&h.encode(), b, "hello not canonical");
        }
    }
    if let Some(b) = data.get(..ANSWER_PLAIN_LEN) {
        let b: &[u8; ANSWER_PLAIN_LEN] = b.try_into().expect("checked");
        if let Ok(a) = ServerHello::parse(b) {
            assert_eq!(&a.encode(), b, "answer not canonical");
        }
    }
}

fn hello() -> ClientHello {
    ClientHello {
        kind: Kind::Open,
        index: 0,
        count: 1,
        session: [9; 16],
        window: MIN_WINDOW,
        max_payload: MIN_MAX_PAYLOAD,
        backup: false,
        target: TargetName::DEFAULT,
    }
}

/// Feeds the server's machine `data` in pieces whose sizes come from the
/// data itself; with `genuine_first`, a real first flight goes first and
/// the hello is accepted, so `data` lands on the confirmation.
fn server_machine(data: &[u8], genuine_first: bool) {
    let key = Key::from_bytes([7; 32]);
    let mut m = ServerHandshake::new(key.clone());
    let mut buf = Vec::new();
    if genuine_first {
        let (_, first) = ClientHandshake::start(&hello(), &key, [1; 32]);
        buf.extend_from_slice(&first);
    }
    let mut rest = data;
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps < 10_000, "the machine does not make progress");
        let take = rest
            .first()
            .map_or(0, |&b| (b as usize % 64) + 1)
            .min(rest.len());
        buf.extend_from_slice(&rest[..take]);
        rest = &rest[take..];
        let (used, step) = m.handle(&buf);
        assert!(used <= buf.len());
        buf.drain(..used);
        match step {
            ServerStep::Pending if rest.is_empty() => return,
            ServerStep::Pending => {}
            ServerStep::Hello(h) => {
                assert!(genuine_first, "a hello decrypted from fuzzed bytes: {h:?}");
                let answer = m.answer(Status::Ok, MIN_WINDOW, MIN_MAX_PAYLOAD);
                assert_eq!(answer.len(), ClientHandshake::ANSWER_LEN);
            }
            ServerStep::Complete { .. } => {
                panic!("a confirmation forged from fuzzed bytes was accepted")
            }
            ServerStep::Failed { class, reply, .. } => {
                assert!(!class.is_empty());
                assert!(reply.len() <= ClientHandshake::ANSWER_LEN);
                return;
            }
        }
    }
}

/// The client's machine on a fuzzed answer: it never accepts one.
fn client_machine(data: &[u8]) {
    let key = Key::from_bytes([7; 32]);
    let (mut c, _) = ClientHandshake::start(&hello(), &key, [1; 32]);
    match c.handle(data) {
        ClientStep::Pending => assert!(data.len() < ClientHandshake::ANSWER_LEN),
        ClientStep::Accepted { .. } | ClientStep::Refused(_) | ClientStep::Malformed(_) => {
            panic!("a fuzzed answer decrypted")
        }
        ClientStep::BadProof(_) => {}
    }
}

fn key_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(k) = Key::parse(&text) {
        assert_eq!(Key::parse(&k.to_file_text()), Ok(k.clone()));
        // A key is exactly 64 hex digits once comments and blanks are gone.
        let digits: usize = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.len())
            .sum();
        assert_eq!(digits, 64);
        let key_lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        assert!(
            key_lines
                .flat_map(str::chars)
                .all(|c| c.is_ascii_hexdigit()),
            "a key with non-hex characters was accepted"
        );
    }
}
