//! Reading and writing key files (mode 0600, refused if others can read them).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::proto::auth::Key;

/// Loads a key, refusing a file that group or others may read.
pub fn load(path: &Path) -> Result<Key, String> {
    let shown = path.display();
    let meta = fs::metadata(path).map_err(|e| format!("cannot read key file {shown}: {e}"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "key file {shown} is accessible by others (mode {mode:03o}); run `chmod 600 {shown}`"
        ));
    }
    let text =
        fs::read_to_string(path).map_err(|e| format!("cannot read key file {shown}: {e}"))?;
    Key::parse(&text).map_err(|e| format!("key file {shown} is not a striper key: {e}"))
}

/// Writes a fresh key to a new file with mode 0600; never overwrites.
pub fn generate(path: &Path) -> Result<(), String> {
    let shown = path.display();
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create key file {shown}: {e}"))?;
    f.write_all(Key::generate().to_file_text().as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write key file {shown}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_then_load_and_refusals() {
        let dir = std::env::temp_dir().join(format!("striper-keyfile-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("k");
        let _ = fs::remove_file(&p);
        generate(&p).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let k = load(&p).unwrap();
        assert!(
            generate(&p).unwrap_err().contains("cannot create"),
            "never overwrites"
        );
        assert_eq!(load(&p).unwrap(), k);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load(&p).unwrap_err().contains("chmod 600"));
        assert!(
            load(&dir.join("missing"))
                .unwrap_err()
                .contains("cannot read key file")
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
