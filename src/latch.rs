//! The latch: the on-disk record that the switch has fired (`state_file`, JSON). Written once
//! (create-new: temp file in the same directory, fsync, hard link to the final name, which fails
//! if a latch is already there, fsync the directory) *before* the first Disconnect, so that a
//! crash at any point leaves either no latch or a whole one, and a second trigger racing the first
//! never replaces its latch. Cleared only by `rearm`.
//!
//! Also owns the disconnect lock next to it (`<state_file>.lock`, `flock`): every process that
//! sends Disconnects for a latch (a lockdown, an enforcement round, in the daemon or a CLI `trip`)
//! holds it shared and checks the latch is still there once it holds it; `rearm` takes it
//! exclusively and refuses when it cannot, so no Disconnect is sent after an accepted rearm.
//! Owns those two files; it knows nothing of AWS or triggers.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::model::{LockdownId, TriggerSource};

/// What the latch file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latch {
    /// What fired it first.
    pub trigger: TriggerSource,
    /// RFC 3339 UTC with milliseconds.
    pub fired_at: String,
    /// The lockdown it started.
    pub lockdown_id: LockdownId,
    /// Free text: the CLI reason, the flag path, the alarm name, the signal sender.
    pub detail: String,
}

/// Why the latch could not be read, written or cleared.
#[derive(Debug, thiserror::Error)]
pub enum LatchError {
    #[error("cannot {operation} latch file {path}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another trigger latched the switch first (create-new found a latch in place).
    #[error("latch file {path} already exists: the switch is already latched")]
    AlreadyLatched { path: PathBuf },
    #[error(
        "the disconnect lock {path} is held by a rearm for more than {waited:?}; going ahead without it"
    )]
    LockTimeout { path: PathBuf, waited: Duration },
    #[error(
        "latch file {path} is not valid (delete it only if you know the switch is not latched)"
    )]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_err(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LatchError {
    let path = path.to_path_buf();
    move |source| LatchError::Io {
        operation,
        path,
        source,
    }
}

/// The largest latch file read: ours are a few hundred bytes.
const MAX_LATCH_BYTES: u64 = 64 * 1024;

/// Read the latch; `Ok(None)` when the switch is not latched (no file). Opened `O_NOFOLLOW |
/// O_NONBLOCK` and only as a regular file: a FIFO or symlink put at the path is an error, never
/// a read that blocks the daemon's loop.
pub fn read(path: &Path) -> Result<Option<Latch>, LatchError> {
    match read_regular(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| LatchError::Corrupt {
                    path: path.to_path_buf(),
                    source,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = crate::fs_trust::open_regular(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_LATCH_BYTES).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The rearm tombstone next to the latch (`<state_file>.rearmed`): written by `rearm` *before*
/// it removes the latch, naming the lockdown it cleared, so a daemon that sees the latch vanish
/// can tell a rearm from tampering (a deleted latch without a matching tombstone).
pub fn tombstone_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".rearmed");
    path.with_file_name(name)
}

/// What the tombstone holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// The lockdown whose latch `rearm` cleared.
    pub lockdown_id: LockdownId,
    /// RFC 3339 UTC with milliseconds.
    pub rearmed_at: String,
}

/// Write the tombstone atomically (same discipline as the latch).
pub fn write_tombstone(path: &Path, tombstone: &Tombstone) -> Result<(), LatchError> {
    let target = tombstone_path(path);
    let bytes = serde_json::to_vec(tombstone).map_err(|source| LatchError::Corrupt {
        path: target.clone(),
        source,
    })?;
    publish(&target, &bytes, Publish::Replace, &crate::durability::Os)
        .map_err(io_err("write", &target))
}

/// The lockdown id of the last rearm's tombstone, if one can be read.
pub fn read_tombstone(path: &Path) -> Option<Tombstone> {
    let bytes = read_regular(&tombstone_path(path)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Write the latch atomically and durably, only if there is none: an existing latch is never
/// replaced ([`LatchError::AlreadyLatched`]). Creates the parent directory (0700) if missing.
pub fn write(path: &Path, latch: &Latch) -> Result<(), LatchError> {
    write_with(path, latch, &crate::durability::Os)
}

/// [`write`] with the fsyncs behind `durability` (the benchmark's slow-disk seam).
#[doc(hidden)]
pub fn write_with(
    path: &Path,
    latch: &Latch,
    durability: &dyn crate::durability::Durability,
) -> Result<(), LatchError> {
    let dir = parent_dir(path);
    if !dir.exists() {
        create_private_dir(dir).map_err(io_err("create directory for", path))?;
    }
    let mut bytes = serde_json::to_vec_pretty(latch).map_err(|source| LatchError::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    bytes.push(b'\n');
    match publish(path, &bytes, Publish::CreateNew, durability) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(LatchError::AlreadyLatched {
                path: path.to_path_buf(),
            })
        }
        Err(e) => Err(io_err("write", path)(e)),
    }
}

/// How [`publish`] puts the finished temp file in place.
#[derive(Clone, Copy)]
enum Publish {
    /// link(2): fails with EEXIST instead of replacing (the latch: the first one wins, whole).
    CreateNew,
    /// rename(2): replaces what is there (the tombstone: the last rearm's word counts).
    Replace,
}

/// Write `bytes` to a temp file unique to this writer in `path`'s directory (two processes, or a
/// daemon and a trip, may write at the same instant), sync it, put it in place as `mode` says and
/// sync the directory; the temp file never outlives the call.
fn publish(
    path: &Path,
    bytes: &[u8],
    mode: Publish,
    durability: &dyn crate::durability::Durability,
) -> std::io::Result<()> {
    let dir = parent_dir(path);
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{:08x}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("latch"),
        std::process::id(),
        fastrand::u32(..)
    ));
    let result = (|| {
        let mut file = private_file(&tmp)?;
        file.write_all(bytes)?;
        durability.sync_all(&file)?;
        match mode {
            Publish::CreateNew => {
                let linked = fs::hard_link(&tmp, path);
                fs::remove_file(&tmp)?;
                linked?;
            }
            Publish::Replace => fs::rename(&tmp, path)?,
        }
        durability.sync_all(&fs::File::open(dir)?)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// How long a lockdown waits for a rearm that holds the disconnect lock (a rearm holds it only to
/// remove the latch and append one audit record); past this the lockdown goes ahead without it,
/// since a kill switch is never stopped by its own bookkeeping.
pub const DISCONNECT_LOCK_WAIT: Duration = Duration::from_secs(5);

/// How long `rearm` waits for Disconnect senders to finish before refusing: long enough for an
/// enforcement round against a healthy KMS, far shorter than a lockdown.
pub const REARM_LOCK_WAIT: Duration = Duration::from_secs(2);

/// Between two attempts at the disconnect lock.
const LOCK_POLL: Duration = Duration::from_millis(10);

/// The disconnect lock, held while it lives (closing the file releases the `flock`).
#[derive(Debug)]
pub struct DisconnectLock {
    _file: fs::File,
}

/// `<state_file>.lock`.
pub fn lock_path(state_file: &Path) -> PathBuf {
    let mut name = state_file.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Hold the disconnect lock shared, to send Disconnects for the latch at `state_file` (blocking:
/// call it off the async workers). Waits at most [`DISCONNECT_LOCK_WAIT`] for a rearm.
pub fn lock_for_disconnects(state_file: &Path) -> Result<DisconnectLock, LatchError> {
    match lock(state_file, false, DISCONNECT_LOCK_WAIT)? {
        Some(lock) => Ok(lock),
        None => Err(LatchError::LockTimeout {
            path: lock_path(state_file),
            waited: DISCONNECT_LOCK_WAIT,
        }),
    }
}

/// Hold the disconnect lock exclusively, to clear the latch; `None` while a lockdown or an
/// enforcement round holds it (after waiting [`REARM_LOCK_WAIT`]).
pub fn lock_for_rearm(state_file: &Path) -> Result<Option<DisconnectLock>, LatchError> {
    lock(state_file, true, REARM_LOCK_WAIT)
}

/// Whether another process (or task) holds the disconnect lock right now: a lockdown or an
/// enforcement round is sending Disconnects for the latch. Does not wait.
pub fn disconnects_in_flight(state_file: &Path) -> bool {
    matches!(lock(state_file, true, Duration::ZERO), Ok(None))
}

fn lock(
    state_file: &Path,
    exclusive: bool,
    wait: Duration,
) -> Result<Option<DisconnectLock>, LatchError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = lock_path(state_file);
    let dir = parent_dir(state_file);
    if !dir.exists() {
        create_private_dir(dir).map_err(io_err("create directory for", state_file))?;
    }
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
        .map_err(io_err("open the disconnect lock next to", state_file))?;
    let started = Instant::now();
    loop {
        let attempt = if exclusive {
            file.try_lock()
        } else {
            file.try_lock_shared()
        };
        match attempt {
            Ok(()) => return Ok(Some(DisconnectLock { _file: file })),
            Err(fs::TryLockError::WouldBlock) if started.elapsed() < wait => {
                std::thread::sleep(LOCK_POLL)
            }
            Err(fs::TryLockError::WouldBlock) => return Ok(None),
            Err(fs::TryLockError::Error(e)) => {
                return Err(io_err("lock the disconnect lock next to", state_file)(e));
            }
        }
    }
}

/// Remove the latch durably. Removing a latch that is not there is not an error.
pub fn clear(path: &Path) -> Result<(), LatchError> {
    match fs::remove_file(path) {
        Ok(()) => fsync_dir(parent_dir(path)).map_err(io_err("clear", path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("clear", path)(e)),
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

fn private_file(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Latch {
        Latch {
            trigger: TriggerSource::Cli,
            fired_at: "2026-11-29T11:00:00.000Z".into(),
            lockdown_id: "ld-1".into(),
            detail: "drill".into(),
        }
    }

    #[test]
    fn write_read_clear_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/latch.json");
        assert_eq!(read(&path).unwrap(), None);
        write(&path, &sample()).unwrap();
        assert_eq!(read(&path).unwrap(), Some(sample()));
        clear(&path).unwrap();
        assert_eq!(read(&path).unwrap(), None);
        clear(&path).unwrap();
    }

    #[test]
    fn a_second_write_never_replaces_the_first_latch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latch.json");
        write(&path, &sample()).unwrap();
        let second = Latch {
            lockdown_id: "ld-2".into(),
            ..sample()
        };
        assert!(matches!(
            write(&path, &second),
            Err(LatchError::AlreadyLatched { .. })
        ));
        assert_eq!(read(&path).unwrap(), Some(sample()));
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file left behind: {names:?}");
    }

    #[test]
    fn rearm_cannot_take_the_disconnect_lock_while_a_lockdown_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/latch.json");
        let lockdown = lock_for_disconnects(&path).unwrap();
        let enforcement = lock_for_disconnects(&path).expect("senders share the lock");
        assert!(lock(&path, true, Duration::ZERO).unwrap().is_none());
        drop(lockdown);
        drop(enforcement);
        let rearm = lock(&path, true, Duration::ZERO)
            .unwrap()
            .expect("free once the senders are done");
        drop(rearm);
    }

    #[test]
    fn trigger_source_displays_as_in_the_latch_file() {
        for source in [
            TriggerSource::File,
            TriggerSource::Signal,
            TriggerSource::Alarm,
            TriggerSource::Cli,
            TriggerSource::Resume,
        ] {
            let json = serde_json::to_string(&source).unwrap();
            assert_eq!(json, format!("\"{source}\""));
        }
    }

    #[test]
    fn a_fifo_at_the_latch_path_is_an_error_not_a_blocked_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latch.json");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let err = read(&path).unwrap_err();
        assert!(error_text(&err).contains("not a regular file"), "{err}");
    }

    #[test]
    fn tombstone_round_trip_sits_next_to_the_latch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latch.json");
        assert_eq!(tombstone_path(&path), dir.path().join("latch.json.rearmed"));
        assert_eq!(read_tombstone(&path), None);
        let tombstone = Tombstone {
            lockdown_id: "ld-1".into(),
            rearmed_at: "2026-11-29T11:00:00.000Z".into(),
        };
        write_tombstone(&path, &tombstone).unwrap();
        assert_eq!(read_tombstone(&path), Some(tombstone));
    }

    fn error_text(err: &LatchError) -> String {
        let mut text = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        text
    }

    #[test]
    fn corrupt_latch_is_an_error_not_unlatched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latch.json");
        fs::write(&path, b"{\"trig").unwrap();
        assert!(matches!(read(&path), Err(LatchError::Corrupt { .. })));
    }
}
