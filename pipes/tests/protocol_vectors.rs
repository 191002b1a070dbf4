//! The test vectors in docs/PROTOCOL.md: one handshake and one sealed frame
//! with fixed keys, computed here and required to appear in the document
//! verbatim, so a second implementation can check itself against them.

use pipes::proto::frame::{FrameType, encode_sealed_vec};
use pipes::proto::handshake::{ClientHello, Kind, ServerHello, Status, TargetName};
use pipes::proto::noise::{Initiator, Responder};

const DOC: &str = include_str!("../../docs/PROTOCOL.md");

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The vectors, as `name: hex` lines.
fn vectors() -> Vec<(&'static str, String)> {
    let psk = [0x42u8; 32];
    let e_client = [0x11u8; 32];
    let e_server = [0x22u8; 32];
    let hello = ClientHello {
        kind: Kind::Open,
        index: 0,
        count: 4,
        session: [0x5a; 16],
        window: 32 << 20,
        max_payload: 256 << 10,
        backup: false,
        target: TargetName::new("db").unwrap(),
    };
    let (init, first) = Initiator::start(&psk, &hello.encode(), Some(&e_client));
    let (resp, fields) =
        Responder::read_hello(&psk, &first.clone().try_into().unwrap(), Some(&e_server)).unwrap();
    assert_eq!(ClientHello::parse(&fields), Ok(hello));
    let answer_fields = ServerHello {
        status: Status::Ok,
        window: 32 << 20,
        max_payload: 256 << 10,
    }
    .encode();
    let (answer, mut skeys) = resp.answer(&answer_fields);
    let (got, mut ckeys) = init.finish(&answer).unwrap();
    assert_eq!(got, answer_fields);
    let mut confirm = Vec::new();
    ckeys.send.seal(&[&[0x33u8; 32]], &mut confirm).unwrap();
    let frame = encode_sealed_vec(FrameType::Data, 0, 0, b"hello, striper");
    let mut record = Vec::new();
    ckeys.send.seal(&[&frame], &mut record).unwrap();
    // The server opens both.
    let mut c = confirm.clone();
    assert_eq!(
        skeys.recv.open(&mut c, 64).unwrap().unwrap().0,
        [0x33u8; 32]
    );
    let mut r = record.clone();
    assert_eq!(
        skeys.recv.open(&mut r, 1024).unwrap().unwrap().0,
        &frame[..]
    );
    vec![
        ("hello fields", hex(&hello.encode())),
        ("first flight", hex(&first)),
        ("answer fields", hex(&answer_fields)),
        ("answer", hex(&answer)),
        ("handshake hash", hex(&ckeys.hash)),
        ("confirmation record", hex(&confirm)),
        ("frame", hex(&frame)),
        ("frame record", hex(&record)),
    ]
}

#[test]
fn the_documented_vectors_are_what_the_code_computes() {
    let mut missing = Vec::new();
    for (name, hex) in vectors() {
        let line = format!("{name}: {hex}");
        if !DOC.contains(&line) {
            missing.push(line);
        }
    }
    assert!(
        missing.is_empty(),
        "docs/PROTOCOL.md lacks these vector lines (or has other values):\n{}",
        missing.join("\n")
    );
}
