//! The pre-shared key: both ends prove they hold it in every stripe's
//! handshake (it is the Noise PSK, see `noise`), and it never leaves them.

/// Bytes in a key.
pub const KEY_LEN: usize = 32;

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

    /// The key of `--insecure-no-auth`: all zeros, known to everyone. The
    /// stripes are still sealed (a passive observer learns nothing), but
    /// anyone can be either end.
    pub fn none() -> Key {
        Key([0; KEY_LEN])
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

    /// The key's bytes, for the handshake (its pre-shared key).
    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
