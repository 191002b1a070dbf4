//! Reading and writing key files (mode 0600, refused if others can read them).

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use zeroize::Zeroize;

use crate::proto::auth::Key;

/// A key file is one line of 64 hex digits and comments: anything larger is
/// not one (and is not read into memory whole).
const MAX_KEY_FILE: u64 = 4096;

/// Loads a key. The file is opened once and every check is made on the
/// open descriptor (so it cannot be swapped between check and read): a
/// regular file, owned by this process's user or by root, that group and
/// others cannot access, and small. The text read is zeroed afterwards.
pub fn load(path: &Path) -> Result<Key, String> {
    let shown = path.display();
    let cannot = |e: std::io::Error| format!("cannot read key file {shown}: {e}");
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => {
                format!("key file {shown} is a symbolic link; name the file itself")
            }
            _ => cannot(e),
        })?;
    let meta = f.metadata().map_err(cannot)?;
    if !meta.file_type().is_file() {
        return Err(format!("key file {shown} is not a regular file"));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me && meta.uid() != 0 {
        return Err(format!(
            "key file {shown} belongs to user id {}, not to this user ({me}) or root",
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "key file {shown} is accessible by others (mode {mode:03o}); run `chmod 600 {shown}`"
        ));
    }
    if meta.len() > MAX_KEY_FILE {
        return Err(format!(
            "key file {shown} is {} bytes; a striper key file is under {MAX_KEY_FILE}",
            meta.len()
        ));
    }
    let mut bytes = Vec::with_capacity(MAX_KEY_FILE as usize);
    let read = (&mut f)
        .take(MAX_KEY_FILE)
        .read_to_end(&mut bytes)
        .map_err(cannot);
    let key = read.and_then(|_| match std::str::from_utf8(&bytes) {
        Ok(text) => {
            Key::parse(text).map_err(|e| format!("key file {shown} is not a striper key: {e}"))
        }
        Err(_) => Err(format!("key file {shown} is not a striper key: not text")),
    });
    bytes.zeroize();
    key
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
    use std::fs;

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
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(load(&link).unwrap_err().contains("symbolic link"));
        assert!(load(&dir).unwrap_err().contains("not a regular file"));
        let big = dir.join("big");
        generate(&big).unwrap();
        OpenOptions::new()
            .append(true)
            .open(&big)
            .unwrap()
            .write_all(&[b'#'; 5000])
            .unwrap();
        assert!(
            load(&big)
                .unwrap_err()
                .contains("a striper key file is under")
        );
        assert!(
            load(&dir.join("missing"))
                .unwrap_err()
                .contains("cannot read key file")
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
