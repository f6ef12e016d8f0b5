//! Path trust, once: whether a file the switch reads or writes (the policy, the latch, the audit
//! log, the flag) sits in directories only root or the daemon's user can change, like sshd's
//! `StrictModes`. Pure std + rustix; it judges paths and opens nothing for writing. It must not
//! reach into any other module of the crate (the policy loader uses it too).

use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Write permission for group or others.
const GROUP_OTHER_WRITE: u32 = 0o022;
/// The sticky bit: in a sticky directory only an entry's owner (or root) may rename or remove it.
const STICKY: u32 = 0o1000;

/// Why a path is not to be trusted. `Display` is one readable clause ("directory /x is writable
/// by others (mode 0777)") for the caller's own sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    #[error("directory {} is writable by {who} (mode {mode:04o})", dir.display())]
    WritableDir {
        dir: PathBuf,
        who: &'static str,
        mode: u32,
    },
    #[error("directory {} is owned by uid {owner}, neither root nor the daemon's uid {running}", dir.display())]
    ForeignDir {
        dir: PathBuf,
        owner: u32,
        running: u32,
    },
    #[error("{} is {kind}, not a regular file", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{} is owned by uid {owner}, neither root nor the daemon's uid {running}: its owner could rewrite it", path.display())]
    ForeignFile {
        path: PathBuf,
        owner: u32,
        running: u32,
    },
    #[error("cannot inspect {}: {error}", path.display())]
    Inspect { path: PathBuf, error: String },
}

/// How the directory that holds the entry itself is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    /// The entry is checked for its owner by the caller (the policy): a sticky parent such as
    /// `/tmp` protects it from being renamed or removed by others.
    StickyOk,
    /// Others must not even create entries there (the flag, the latch's temp file, the audit
    /// log): the parent must not be writable by group or others, sticky or not.
    Strict,
}

/// The effective uid of this process (the "running user" of sshd's StrictModes rule).
pub fn running_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Check `dir` and every directory above it up to `/`: each owned by root or the daemon's uid and
/// not writable by group or others, except that a sticky directory is fine above the leaf (and at
/// the leaf with [`Leaf::StickyOk`]). Missing trailing components are skipped (they will be
/// created 0700); symlinks are resolved first, as sshd does with `realpath`.
pub fn check_dir(dir: &Path, leaf: Leaf) -> Result<(), Untrusted> {
    let mut existing = dir;
    let mut is_leaf = true;
    while !existing.exists() {
        match existing.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => existing = parent,
            _ => return Ok(()),
        }
        is_leaf = false;
    }
    let real = existing.canonicalize().map_err(|e| Untrusted::Inspect {
        path: existing.to_path_buf(),
        error: e.to_string(),
    })?;
    let running = running_uid();
    let mut current = Some(real.as_path());
    while let Some(dir) = current {
        let meta = std::fs::metadata(dir).map_err(|e| Untrusted::Inspect {
            path: dir.to_path_buf(),
            error: e.to_string(),
        })?;
        let sticky_ok = !is_leaf || leaf == Leaf::StickyOk;
        judge_dir(dir, meta.mode(), meta.uid(), running, sticky_ok)?;
        is_leaf = false;
        current = dir.parent();
    }
    Ok(())
}

/// One directory's verdict from its mode and owner.
fn judge_dir(
    dir: &Path,
    mode: u32,
    owner: u32,
    running: u32,
    sticky_ok: bool,
) -> Result<(), Untrusted> {
    if owner != 0 && owner != running {
        return Err(Untrusted::ForeignDir {
            dir: dir.to_path_buf(),
            owner,
            running,
        });
    }
    let writable = mode & GROUP_OTHER_WRITE != 0;
    if writable && !(sticky_ok && mode & STICKY != 0) {
        let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
            (true, true) => "group and others",
            (true, false) => "its group",
            _ => "others",
        };
        return Err(Untrusted::WritableDir {
            dir: dir.to_path_buf(),
            who,
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// A state file (latch, audit log): its directory chain is trusted ([`Leaf::Strict`]) and, if it
/// exists, it is a regular file (not a symlink, FIFO, socket, device or directory) owned by root
/// or the daemon's uid (another owner could rewrite the audit chain or the latch's record).
/// Hard links are accepted: only root or the daemon can create one in a trusted directory, and
/// backup tools make them.
pub fn check_state_file(path: &Path) -> Result<(), Untrusted> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        check_dir(dir, Leaf::Strict)?;
    }
    let running = running_uid();
    match std::fs::symlink_metadata(path) {
        Ok(meta) => match file_kind(&meta.file_type()) {
            Some(kind) => Err(Untrusted::NotRegular {
                path: path.to_path_buf(),
                kind,
            }),
            None if meta.uid() != 0 && meta.uid() != running => Err(Untrusted::ForeignFile {
                path: path.to_path_buf(),
                owner: meta.uid(),
                running,
            }),
            None => Ok(()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Untrusted::Inspect {
            path: path.to_path_buf(),
            error: e.to_string(),
        }),
    }
}

/// `None` for a regular file, else what it is ("a symlink", "a fifo or socket" …).
pub fn file_kind(file_type: &std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_file() {
        None
    } else if file_type.is_symlink() {
        Some("a symlink")
    } else if file_type.is_dir() {
        Some("a directory")
    } else if file_type.is_fifo() || file_type.is_socket() {
        Some("a fifo or socket")
    } else {
        Some("a device")
    }
}

/// Open an existing file for reading without following a final symlink and without blocking on a
/// FIFO (`O_NOFOLLOW | O_NONBLOCK`), and refuse anything but a regular file. A symlink fails
/// with `ELOOP`, reported as "is a symlink".
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                std::io::Error::other("it is a symlink, not a regular file")
            } else {
                e
            }
        })?;
    let file_type = file.metadata()?.file_type();
    if let Some(kind) = file_kind(&file_type) {
        return Err(std::io::Error::other(format!(
            "it is {kind}, not a regular file"
        )));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn sticky_is_fine_above_the_leaf_and_at_a_sticky_ok_leaf_only() {
        let dir = Path::new("/x");
        let me = running_uid();
        assert_eq!(judge_dir(dir, 0o40755, 0, me, false), Ok(()));
        assert_eq!(judge_dir(dir, 0o41777, 0, me, true), Ok(()));
        assert!(matches!(
            judge_dir(dir, 0o41777, 0, me, false),
            Err(Untrusted::WritableDir {
                who: "group and others",
                ..
            })
        ));
        assert!(matches!(
            judge_dir(dir, 0o40775, 0, me, true),
            Err(Untrusted::WritableDir {
                who: "its group",
                ..
            })
        ));
        assert!(matches!(
            judge_dir(dir, 0o40755, 4242, 0, true),
            Err(Untrusted::ForeignDir { owner: 4242, .. })
        ));
    }

    #[test]
    fn a_world_writable_ancestor_is_refused_and_a_tempdir_is_fine() {
        let base = tempfile::tempdir().unwrap();
        assert_eq!(check_dir(base.path(), Leaf::Strict), Ok(()));
        let open = base.path().join("open");
        let inner = open.join("inner");
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_dir(&inner.join("missing"), Leaf::StickyOk).unwrap_err();
        assert!(
            err.to_string().contains("writable by group and others"),
            "{err}"
        );
    }

    #[test]
    fn a_fifo_or_symlink_state_file_is_refused_and_open_regular_does_not_block() {
        let base = tempfile::tempdir().unwrap();
        let fifo = base.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(matches!(
            check_state_file(&fifo),
            Err(Untrusted::NotRegular {
                kind: "a fifo or socket",
                ..
            })
        ));
        let err = open_regular(&fifo).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let link = base.path().join("link");
        std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
        let err = open_regular(&link).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
    }

    #[test]
    fn a_state_file_owned_by_another_user_is_refused_and_a_hard_link_is_not() {
        let base = tempfile::tempdir().unwrap();
        let file = base.path().join("audit.jsonl");
        std::fs::write(&file, b"").unwrap();
        assert_eq!(check_state_file(&file), Ok(()));
        std::fs::hard_link(&file, base.path().join("backup")).unwrap();
        assert_eq!(check_state_file(&file), Ok(()));
        if running_uid() != 0 {
            return; // only root can give a file away
        }
        std::os::unix::fs::chown(&file, Some(65534), None).unwrap();
        let err = check_state_file(&file).unwrap_err();
        assert!(
            matches!(err, Untrusted::ForeignFile { owner: 65534, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("owned by uid 65534"), "{err}");
    }
}
