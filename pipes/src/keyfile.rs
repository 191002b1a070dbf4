//! Reading and writing key files (mode 0600, refused if others can read them).

use std::fs::File;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
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
/// others cannot access (an ACL may grant this process's user alone, as
/// systemd's LoadCredential does), and small. The text read is zeroed
/// afterwards.
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
    if mode & 0o077 != 0 && !access_acl(&f).is_some_and(|acl| acl_admits_only(&acl, me)) {
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

/// The file's POSIX access ACL (`system.posix_acl_access`), if it has one.
fn access_acl(f: &File) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 1024];
    // SAFETY: fgetxattr on an open descriptor, a NUL-terminated name and
    // a buffer of the length given.
    let n = unsafe {
        libc::fgetxattr(
            f.as_raw_fd(),
            c"system.posix_acl_access".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    buf.truncate(usize::try_from(n).ok()?);
    Some(buf)
}

/// Whether an access ACL (the kernel's `posix_acl_xattr` form: a version,
/// then tag, permissions and id per entry) lets no one in but the owner
/// and the user `me`. With an ACL the mode's group bits are the ACL's
/// mask, so a file systemd hands a service (LoadCredential: mode 0400 plus
/// read for the service's user) shows mode 0440 although no group can read
/// it.
fn acl_admits_only(acl: &[u8], me: u32) -> bool {
    const USER: u16 = 0x02;
    const GROUP_OBJ: u16 = 0x04;
    const GROUP: u16 = 0x08;
    const OTHER: u16 = 0x20;
    let Some((version, entries)) = acl.split_first_chunk::<4>() else {
        return false;
    };
    if u32::from_le_bytes(*version) != 2 || entries.is_empty() || entries.len() % 8 != 0 {
        return false;
    }
    entries.chunks_exact(8).all(|e| {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u16::from_le_bytes([e[2], e[3]]);
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        match tag {
            USER => perm == 0 || id == me,
            GROUP_OBJ | GROUP | OTHER => perm == 0,
            // The owner's entry and the mask.
            _ => true,
        }
    })
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

    /// An access ACL in the kernel's xattr form: (tag, perm, id) entries.
    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for &(tag, perm, id) in entries {
            v.extend(tag.to_le_bytes());
            v.extend(perm.to_le_bytes());
            v.extend(id.to_le_bytes());
        }
        v
    }

    /// What systemd's LoadCredential leaves for a service running as `uid`
    /// with a second user `also` granted `also_perm`: owner r, mask r.
    fn credential_acl(uid: u32, also: u32, also_perm: u16) -> Vec<u8> {
        const UNDEFINED: u32 = u32::MAX;
        acl(&[
            (0x01, 4, UNDEFINED),
            (0x02, 4, uid),
            (0x02, also_perm, also),
            (0x04, 0, UNDEFINED),
            (0x10, 4, UNDEFINED),
            (0x20, 0, UNDEFINED),
        ])
    }

    #[test]
    fn an_acl_granting_this_user_alone_is_private() {
        assert!(acl_admits_only(&credential_acl(61234, 61234, 4), 61234));
        assert!(acl_admits_only(&credential_acl(61234, 999, 0), 61234));
        assert!(!acl_admits_only(&credential_acl(61234, 999, 4), 61234));
        assert!(!acl_admits_only(&credential_acl(61234, 61234, 4), 999));
        let group = acl(&[(0x01, 6, 0), (0x04, 0, 0), (0x08, 4, 100), (0x20, 0, 0)]);
        assert!(!acl_admits_only(&group, 0));
        let other = acl(&[(0x01, 6, 0), (0x04, 0, 0), (0x20, 4, 0)]);
        assert!(!acl_admits_only(&other, 0));
        assert!(!acl_admits_only(&[2, 0, 0, 0, 1], 0), "truncated");
        assert!(!acl_admits_only(&[2, 0, 0, 0], 0), "no entries");
    }

    #[test]
    fn a_key_file_with_a_private_acl_loads() {
        let dir = std::env::temp_dir().join(format!("striper-keyacl-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("k");
        let _ = fs::remove_file(&p);
        generate(&p).unwrap();
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let set = |value: &[u8]| {
            let path = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
            // SAFETY: setxattr with NUL-terminated strings and a buffer of
            // the length given.
            let r = unsafe {
                libc::setxattr(
                    path.as_ptr(),
                    c"system.posix_acl_access".as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            };
            assert_eq!(r, 0, "setxattr: {}", std::io::Error::last_os_error());
        };
        set(&credential_acl(me, me.wrapping_add(1), 0));
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o440, "the mask shows as the group bits");
        load(&p).expect("an ACL for this user alone is private");
        set(&credential_acl(me, me.wrapping_add(1), 4));
        assert!(load(&p).unwrap_err().contains("accessible by others"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
