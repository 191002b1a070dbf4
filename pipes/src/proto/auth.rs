//! Mutual authentication of a stripe with a pre-shared key.
//!
//! Each side proves it knows the key with an HMAC-SHA256 over the whole
//! handshake: the ClientHello (with the client's fresh nonce) and the
//! ServerHello with its proof field zeroed (with the server's fresh nonce).
//! A distinct label per direction keeps one side's proof from being
//! reflected as the other's. Because the server's nonce is fresh for every
//! connection, a ClientAuth captured from one handshake is worthless in
//! another; because the client's nonce is fresh, so is a ServerHello.
//! Tags are compared in constant time by the `hmac` crate.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::handshake::{CLIENT_HELLO_LEN, PROOF_LEN, SERVER_HELLO_LEN};

/// Bytes in a key.
pub const KEY_LEN: usize = 32;

const CLIENT_LABEL: &[u8] = b"striper v1 client proof";
const SERVER_LABEL: &[u8] = b"striper v1 server proof";

/// A pre-shared key. Its `Debug` does not print it, and every copy is
/// zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; KEY_LEN]);

impl Drop for Key {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    pub fn from_bytes(b: [u8; KEY_LEN]) -> Key {
        Key(b)
    }

    /// A fresh key from the operating system's RNG.
    pub fn generate() -> Key {
        use rand::TryRng;
        let mut k = [0u8; KEY_LEN];
        rand::rngs::SysRng
            .try_fill_bytes(&mut k)
            .expect("the OS random number generator failed");
        Key(k)
    }

    /// The key file format: one line of 64 hex digits; `#` lines are comments.
    pub fn parse(text: &str) -> Result<Key, String> {
        // Zeroed when dropped, like the key itself.
        let hex = zeroize::Zeroizing::new(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .collect::<String>(),
        );
        if hex.len() != KEY_LEN * 2 {
            return Err(format!(
                "expected {} hex digits, found {} characters",
                KEY_LEN * 2,
                hex.len()
            ));
        }
        // Checked first: slicing below assumes one byte per character, and
        // `from_str_radix` would take a sign ("+f").
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("not hexadecimal".to_string());
        }
        let mut k = [0u8; KEY_LEN];
        for (i, byte) in k.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| "not hexadecimal".to_string())?;
        }
        Ok(Key(k))
    }

    pub fn to_file_text(&self) -> String {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        format!("# striper pre-shared key: keep it secret, give it to both ends\n{hex}\n")
    }

    fn proof(
        &self,
        label: &[u8],
        client_hello: &[u8; CLIENT_HELLO_LEN],
        server_hello: &[u8; SERVER_HELLO_LEN],
    ) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(label);
        mac.update(client_hello);
        mac.update(server_hello);
        mac
    }

    /// The server's proof. `server_hello` is the transcript (proof zeroed).
    pub fn server_proof(
        &self,
        client_hello: &[u8; CLIENT_HELLO_LEN],
        server_hello: &[u8; SERVER_HELLO_LEN],
    ) -> [u8; PROOF_LEN] {
        self.proof(SERVER_LABEL, client_hello, server_hello)
            .finalize()
            .into_bytes()
            .into()
    }

    /// The client's proof, over the same transcript.
    pub fn client_proof(
        &self,
        client_hello: &[u8; CLIENT_HELLO_LEN],
        server_hello: &[u8; SERVER_HELLO_LEN],
    ) -> [u8; PROOF_LEN] {
        self.proof(CLIENT_LABEL, client_hello, server_hello)
            .finalize()
            .into_bytes()
            .into()
    }

    pub fn verify_server(
        &self,
        client_hello: &[u8; CLIENT_HELLO_LEN],
        server_hello: &[u8; SERVER_HELLO_LEN],
        proof: &[u8],
    ) -> bool {
        self.proof(SERVER_LABEL, client_hello, server_hello)
            .verify_slice(proof)
            .is_ok()
    }

    pub fn verify_client(
        &self,
        client_hello: &[u8; CLIENT_HELLO_LEN],
        server_hello: &[u8; SERVER_HELLO_LEN],
        proof: &[u8],
    ) -> bool {
        self.proof(CLIENT_LABEL, client_hello, server_hello)
            .verify_slice(proof)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_key_direction_and_both_nonces() {
        let k = Key::from_bytes([7; 32]);
        let other = Key::from_bytes([8; 32]);
        let ch = [1u8; 64];
        let sh = [2u8; 64];
        let sp = k.server_proof(&ch, &sh);
        let cp = k.client_proof(&ch, &sh);
        assert!(k.verify_server(&ch, &sh, &sp));
        assert!(k.verify_client(&ch, &sh, &cp));
        assert!(
            !k.verify_client(&ch, &sh, &sp),
            "a server proof is not a client proof"
        );
        assert!(
            !other.verify_client(&ch, &sh, &cp),
            "another key does not verify"
        );
        let mut sh2 = sh;
        sh2[10] ^= 1; // another server nonce
        assert!(
            !k.verify_client(&ch, &sh2, &cp),
            "a proof does not carry over to another handshake"
        );
        assert!(!k.verify_client(&ch, &sh, &[0; 32]));
        assert!(!k.verify_client(&ch, &sh, &cp[..31]));
    }

    #[test]
    fn key_file_round_trip_and_errors() {
        let k = Key::generate();
        assert_eq!(Key::parse(&k.to_file_text()), Ok(k.clone()));
        assert_ne!(Key::generate(), k);
        assert!(Key::parse("abc").unwrap_err().contains("64 hex digits"));
        assert!(
            Key::parse(&"zz".repeat(32))
                .unwrap_err()
                .contains("hexadecimal")
        );
        assert_eq!(format!("{k:?}"), "Key(..)");
        // Found with the fuzz targets: a multi-byte character made the
        // 64 "digits" slice inside a character (a panic), and a sign was
        // taken as part of a digit pair.
        let split = format!("0\u{e9}{}", "0".repeat(61));
        assert_eq!(split.len(), 64);
        assert!(Key::parse(&split).unwrap_err().contains("hexadecimal"));
        assert!(
            Key::parse(&"+f".repeat(32))
                .unwrap_err()
                .contains("hexadecimal")
        );
    }
}
