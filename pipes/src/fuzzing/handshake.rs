//! The `handshake` target: the hello parsers, the key file parser and the
//! proofs.

use crate::proto::auth::Key;
use crate::proto::handshake::{
    CLIENT_HELLO_LEN, CLIENT_MAGIC, ClientHello, HandshakeError, MAX_STRIPES, MIN_MAX_PAYLOAD,
    MIN_WINDOW, SERVER_HELLO_LEN, SERVER_MAGIC, ServerHello, Status,
};

/// Both hello parsers on `data` and every prefix up to a whole hello, with
/// round trips; the key file parser on `data` as text; and, when there are
/// enough bytes, the proofs over a fuzzed transcript.
pub fn handshake(data: &[u8]) {
    client_hello(data);
    server_hello(data);
    key_file(data);
    proofs(data);
}

/// Magic prefix rule shared by both parsers: `Err(BadMagic)` exactly when
/// the first `min(len, 4)` bytes differ from the magic.
fn magic_ok(b: &[u8], magic: [u8; 4]) -> bool {
    let n = b.len().min(4);
    b[..n] == magic[..n]
}

fn client_hello(data: &[u8]) {
    let full = ClientHello::parse(data);
    for cut in 0..data.len().min(CLIENT_HELLO_LEN) {
        let p = ClientHello::parse(&data[..cut]);
        if magic_ok(&data[..cut], CLIENT_MAGIC) {
            assert_eq!(p, Ok(None), "a short prefix of {cut} bytes");
        } else {
            assert!(matches!(p, Err(HandshakeError::BadMagic(_))), "{p:?}");
        }
    }
    if data.len() > CLIENT_HELLO_LEN {
        assert_eq!(
            full,
            ClientHello::parse(&data[..CLIENT_HELLO_LEN]),
            "trailing bytes mattered"
        );
    }
    match &full {
        Ok(Some(h)) => {
            assert!(data.len() >= CLIENT_HELLO_LEN);
            assert!(h.count >= 1 && h.count <= MAX_STRIPES && h.index < h.count);
            assert!(h.window >= MIN_WINDOW && h.max_payload >= MIN_MAX_PAYLOAD);
            // The server's proof covers `hello.encode()`, the client's the
            // bytes it sent: they must be the same bytes.
            assert_eq!(
                &h.encode()[..],
                &data[..CLIENT_HELLO_LEN],
                "hello not canonical"
            );
            assert_eq!(ClientHello::parse(&h.encode()), Ok(Some(h.clone())));
        }
        Ok(None) => {
            assert!(data.len() < CLIENT_HELLO_LEN && magic_ok(data, CLIENT_MAGIC));
        }
        Err(e) => {
            let _ = (e.to_string(), e.status());
            assert_eq!(
                matches!(e, HandshakeError::BadMagic(_)),
                !magic_ok(data, CLIENT_MAGIC)
            );
            if !matches!(e, HandshakeError::BadMagic(_)) {
                assert!(data.len() >= CLIENT_HELLO_LEN);
                assert_ne!(e.status(), Status::Ok);
            }
        }
    }
}

fn server_hello(data: &[u8]) {
    let full = ServerHello::parse(data);
    for cut in 0..data.len().min(SERVER_HELLO_LEN) {
        let p = ServerHello::parse(&data[..cut]);
        if magic_ok(&data[..cut], SERVER_MAGIC) {
            assert_eq!(p, Ok(None), "a short prefix of {cut} bytes");
        } else {
            assert!(matches!(p, Err(HandshakeError::BadMagic(_))), "{p:?}");
        }
    }
    if data.len() > SERVER_HELLO_LEN {
        assert_eq!(
            full,
            ServerHello::parse(&data[..SERVER_HELLO_LEN]),
            "trailing bytes mattered"
        );
    }
    match &full {
        Ok(Some(h)) => {
            assert!(data.len() >= SERVER_HELLO_LEN);
            assert_eq!(Status::from_code(h.status.code()), h.status);
            assert_eq!(h.status.code(), data[5]);
            let _ = h.status.to_string();
            if h.status == Status::Ok {
                assert!(h.window >= MIN_WINDOW && h.max_payload >= MIN_MAX_PAYLOAD);
            }
            let enc = h.encode();
            // Bytes 6..8 are reserved: the parser ignores them, so the only
            // difference a round trip may make is zeroing them.
            let mut want = [0u8; SERVER_HELLO_LEN];
            want.copy_from_slice(&data[..SERVER_HELLO_LEN]);
            want[6..8].fill(0);
            assert_eq!(enc, want, "round trip changed more than the reserved bytes");
            assert_eq!(ServerHello::parse(&enc), Ok(Some(h.clone())));
            let t = h.transcript();
            assert_eq!(t[..32], enc[..32]);
            assert!(t[32..].iter().all(|&b| b == 0));
        }
        Ok(None) => {
            assert!(data.len() < SERVER_HELLO_LEN && magic_ok(data, SERVER_MAGIC));
        }
        Err(e) => {
            let _ = (e.to_string(), e.status());
            assert_eq!(
                matches!(e, HandshakeError::BadMagic(_)),
                !magic_ok(data, SERVER_MAGIC)
            );
        }
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

fn proofs(data: &[u8]) {
    if data.len() < 32 + CLIENT_HELLO_LEN + SERVER_HELLO_LEN {
        return;
    }
    let key = Key::from_bytes(data[..32].try_into().expect("32"));
    let ch: [u8; CLIENT_HELLO_LEN] = data[32..96].try_into().expect("64");
    let sh: [u8; SERVER_HELLO_LEN] = data[96..160].try_into().expect("64");
    let sp = key.server_proof(&ch, &sh);
    let cp = key.client_proof(&ch, &sh);
    assert!(key.verify_server(&ch, &sh, &sp));
    assert!(key.verify_client(&ch, &sh, &cp));
    assert!(
        !key.verify_client(&ch, &sh, &sp),
        "a server proof passed as a client's"
    );
    assert!(
        !key.verify_server(&ch, &sh, &cp),
        "a client proof passed as a server's"
    );
    // Whatever else the input holds, as a proof, is wrong (unless it is the
    // proof itself, which a fuzzer will not find).
    let guess = &data[160..data.len().min(192)];
    if guess != sp {
        assert!(!key.verify_server(&ch, &sh, guess));
    }
    if guess != cp {
        assert!(!key.verify_client(&ch, &sh, guess));
    }
}
