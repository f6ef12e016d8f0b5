//! The file trigger: fire when the flag file (`triggers.file.path`, default `/run/kms-killswitch`)
//! appears. It owns the inotify watch on the flag's parent directory (non-recursive) and the trust
//! checks on the flag and its directory. It only sends [`TriggerEvent`]s: it never touches the
//! latch, never calls AWS, never removes the flag (that is the operator's word) and never exits.
//!
//! How a flag is never missed:
//! - the path is checked right after the watch is set up, so a flag created before (or while) the
//!   watch was added still fires;
//! - `Create` and rename-into-place (`Modify(Name)`) events both lead to a check, as does any
//!   other event naming the flag (a `chown` to root makes a rejected flag trusted);
//! - a queue overflow (`Rescan`) leads to a check;
//! - a removed flag directory drops the watch: it is re-added as soon as the directory exists
//!   again, followed by a check;
//! - a cheap `lstat` every [`BACKSTOP_INTERVAL`] catches anything inotify could not say.
//!
//! Trust: only a regular file (not a symlink: `lstat`) with one link, owned by root or by the
//! daemon's own uid fires; anything else is sent as [`TriggerEvent::Rejected`] (a hard link is
//! refused: anyone may hard-link a root-owned file they can see). A flag directory that group or
//! others may write — sticky or not: in a sticky `/tmp` anyone may still create the flag, or
//! squat its name — or any directory above it that others can change ([`crate::fs_trust`]) makes
//! the trigger refuse to start, unless the policy says `allow_untrusted_flag_dir: true`.
//!
//! Only events naming the flag (or its directory) are looked at, before anything is logged: a
//! log file in the flag's directory must not feed itself through inotify.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error_chain;
use crate::model::TriggerSource;
use crate::policy::FileTrigger;
use crate::trigger::TriggerEvent;

/// How often the flag path is `lstat`ed even when inotify is quiet: a backstop for anything the
/// kernel could not report (an unforeseen event kind, a watch silently lost). One `lstat` per
/// second costs nothing measurable.
pub const BACKSTOP_INTERVAL: Duration = Duration::from_secs(1);

/// How often the flag directory is looked for while it does not exist (it was removed): short, so
/// a flag created right after the directory is re-created is seen at once (the check that follows
/// the new watch catches it).
pub const REWATCH_INTERVAL: Duration = Duration::from_millis(50);

/// Why the file trigger could not start.
#[derive(Debug, thiserror::Error)]
pub enum FileTriggerError {
    #[error("flag path {path} has no parent directory")]
    NoParent { path: PathBuf },
    #[error("cannot inspect flag directory {dir}")]
    InspectDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "flag directory {dir} is not trusted ({untrusted}), so others could trip the switch or \
         squat the flag; fix its permissions or set triggers.file.allow_untrusted_flag_dir: true"
    )]
    UntrustedDir {
        dir: PathBuf,
        untrusted: crate::fs_trust::Untrusted,
    },
}

/// What `lstat` says about the flag path, judged.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Absent,
    /// A regular file owned by a trusted uid.
    Trusted {
        identity: Identity,
    },
    /// Present but not to be trusted; `reason` is for the audit record and the log.
    Untrusted {
        identity: Identity,
        reason: String,
    },
    /// `lstat` failed for another reason than "not found" (logged; nothing is sent).
    Unreadable {
        error: String,
    },
}

/// What makes two sightings of the flag "the same flag": inode, owner and file type. A new flag
/// (or a `chown`) is a new identity and is judged again; the same flag seen twice is sent once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    uid: u32,
    mode: u32,
    nlink: u64,
}

/// Check that the flag directory cannot be written by just anyone. A directory that does not
/// exist yet is not an error here (it is watched for and checked when it appears).
pub fn check_flag_dir(config: &FileTrigger) -> Result<(), FileTriggerError> {
    let dir = flag_dir(&config.path)?;
    if config.allow_untrusted_flag_dir {
        return Ok(());
    }
    match crate::fs_trust::check_dir(dir, crate::fs_trust::Leaf::Strict) {
        Ok(()) => Ok(()),
        Err(crate::fs_trust::Untrusted::Inspect { error, .. }) => {
            Err(FileTriggerError::InspectDir {
                dir: dir.to_path_buf(),
                source: std::io::Error::other(error),
            })
        }
        Err(untrusted) => Err(FileTriggerError::UntrustedDir {
            dir: dir.to_path_buf(),
            untrusted,
        }),
    }
}

/// `Some(why)` when a flag is already at the path and would be rejected (squatted by another
/// user, a symlink, a hard link …): `touch` by root would then fire nothing. For `check` and the
/// daemon's STATUS line.
pub fn squatted_flag(config: &FileTrigger) -> Option<String> {
    let trusted = [0, rustix::process::geteuid().as_raw()];
    match judge(&config.path, &trusted) {
        Verdict::Untrusted { reason, .. } => Some(reason),
        _ => None,
    }
}

fn flag_dir(path: &Path) -> Result<&Path, FileTriggerError> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => Ok(dir),
        _ => Err(FileTriggerError::NoParent {
            path: path.to_path_buf(),
        }),
    }
}

/// A file trigger whose watch is set up and whose first check is done; [`FileWatch::run`] keeps
/// it going.
pub struct FileWatch {
    /// The flag path and whether an untrusted directory is allowed.
    config: FileTrigger,
    /// The flag path.
    path: PathBuf,
    /// Its parent directory (the watched one).
    dir: PathBuf,
    /// Owners whose flags fire: root and the daemon's effective uid.
    trusted_uids: [u32; 2],
    /// The inotify watcher; dropping it stops the kernel watch. `None` when inotify could not be
    /// set up at all (e.g. the per-user instance limit is exhausted): the flag is then found by
    /// the [`BACKSTOP_INTERVAL`] check alone.
    watcher: Option<notify::RecommendedWatcher>,
    /// Raw events from notify's thread.
    raw_events: mpsc::UnboundedReceiver<notify::Result<Event>>,
    /// Whether the directory watch is in place (false while the directory is gone).
    watching: bool,
    /// The identity last sent (fired or rejected); `None` after the flag was seen absent.
    last_sent: Option<Identity>,
    /// The last event sent was a rejection (a [`TriggerEvent::FlagRejectionCleared`] follows
    /// once the flag is gone).
    last_rejected: bool,
    /// Where events go.
    events: mpsc::Sender<TriggerEvent>,
}

impl FileWatch {
    /// Check the directory's trust, set up the watch and check the flag once (sending an event if
    /// it is already there). Fails only for an untrusted directory or a watch that cannot be set
    /// on an existing directory.
    pub async fn start(
        config: &FileTrigger,
        events: mpsc::Sender<TriggerEvent>,
    ) -> Result<FileWatch, FileTriggerError> {
        check_flag_dir(config)?;
        let dir = flag_dir(&config.path)?.to_path_buf();
        let (raw_tx, raw_events) = mpsc::unbounded_channel();
        let watcher = match notify::recommended_watcher(move |event| {
            // The receiver is gone only when the trigger is being stopped.
            let _ = raw_tx.send(event);
        }) {
            Ok(watcher) => Some(watcher),
            // Losing inotify must not stop the daemon (and with it the signal and alarm
            // triggers, resume and enforcement): the once-a-second check still sees the flag.
            Err(err) => {
                tracing::error!(dir = %dir.display(), cause = %err, "cannot use inotify; checking the flag every second instead");
                None
            }
        };
        let mut watch = FileWatch {
            config: config.clone(),
            path: config.path.clone(),
            dir,
            trusted_uids: [0, rustix::process::geteuid().as_raw()],
            watcher,
            raw_events,
            watching: false,
            last_sent: None,
            last_rejected: false,
            events,
        };
        match watch.add_watch() {
            Ok(()) => {}
            // e.g. the inotify watch limit is exhausted: fall back to the backstop check.
            Err(err) if watch.dir.exists() => tracing::error!(
                dir = %watch.dir.display(),
                cause = %err,
                "cannot watch the flag directory; checking the flag every second instead"
            ),
            Err(_) => tracing::warn!(
                dir = %watch.dir.display(),
                "flag directory does not exist; watching for it to appear"
            ),
        }
        // Checked after the watch is in place: a flag created before it is not missed.
        watch.check().await;
        Ok(watch)
    }

    /// Watch until cancelled.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut backstop = tokio::time::interval(BACKSTOP_INTERVAL);
        backstop.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        backstop.reset();
        loop {
            tokio::select! {
                // Stopped by the daemon (shutdown or a reload that changed this trigger).
                _ = cancel.cancelled() => return,
                // Something happened in the flag directory (or notify reported an error).
                Some(event) = self.raw_events.recv() => self.on_event(event).await,
                // The directory is gone: look for it again soon.
                _ = tokio::time::sleep(REWATCH_INTERVAL), if !self.watching && self.watcher.is_some() => {
                    if self.add_watch().is_ok() {
                        tracing::info!(dir = %self.dir.display(), "flag directory is back; watching it again");
                        if let Err(err) = check_flag_dir(&self.config) {
                            tracing::error!(cause = %err, "re-created flag directory is not trusted");
                        }
                        self.check().await;
                    }
                }
                // The cheap backstop.
                _ = backstop.tick() => self.check().await,
            }
        }
    }

    fn add_watch(&mut self) -> notify::Result<()> {
        let Some(watcher) = self.watcher.as_mut() else {
            return Err(notify::Error::generic("inotify is not available"));
        };
        watcher.watch(&self.dir, RecursiveMode::NonRecursive)?;
        self.watching = true;
        Ok(())
    }

    async fn on_event(&mut self, event: notify::Result<Event>) {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                tracing::warn!(dir = %self.dir.display(), cause = %err, "flag directory watch reported an error; checking the flag");
                self.check().await;
                return;
            }
        };
        if event.need_rescan() {
            tracing::warn!(dir = %self.dir.display(), "inotify queue overflowed; checking the flag");
            self.check().await;
            return;
        }
        let names_dir = event.paths.iter().any(|p| p == &self.dir);
        // Everything else in the directory (a log file written there, say) is none of ours:
        // dropped here, before any log line that could itself become an event.
        if !names_dir && !event.paths.iter().any(|p| p == &self.path) {
            return;
        }
        let dir_gone = names_dir
            && matches!(
                event.kind,
                EventKind::Remove(_) | EventKind::Modify(notify::event::ModifyKind::Name(_))
            );
        if dir_gone {
            tracing::warn!(dir = %self.dir.display(), "flag directory was removed or moved; watching for it to come back");
            if let Some(watcher) = self.watcher.as_mut() {
                let _ = watcher.unwatch(&self.dir);
            }
            self.watching = false;
            self.check().await;
            return;
        }
        if event.paths.iter().any(|p| p == &self.path) {
            self.check().await;
        }
    }

    /// `lstat` the flag and send what it means, once per flag identity.
    async fn check(&mut self) {
        let verdict = judge(&self.path, &self.trusted_uids);
        let event = match verdict {
            Verdict::Absent => {
                let was_rejected = self.last_rejected;
                self.last_sent = None;
                self.last_rejected = false;
                if was_rejected {
                    // The receiver is gone only when the daemon is stopping.
                    let _ = self.events.send(TriggerEvent::FlagRejectionCleared).await;
                }
                return;
            }
            Verdict::Unreadable { error } => {
                tracing::error!(path = %self.path.display(), cause = %error, "cannot inspect the flag path");
                return;
            }
            Verdict::Trusted { identity } => {
                if self.last_sent == Some(identity) {
                    return;
                }
                self.last_sent = Some(identity);
                // The directory was trusted at start, but it may have been re-created since: in
                // a directory others may write, anyone could have put the flag there (e.g. by
                // renaming a root-owned file onto its name).
                if let Err(err) = check_flag_dir(&self.config) {
                    let reason = error_chain(&err);
                    tracing::error!(path = %self.path.display(), %reason, "flag rejected: its directory is not trusted");
                    let _ = self
                        .events
                        .send(TriggerEvent::Rejected {
                            source: TriggerSource::File,
                            reason,
                        })
                        .await;
                    return;
                }
                TriggerEvent::Fired {
                    source: TriggerSource::File,
                    detail: serde_json::json!({
                        "path": self.path.display().to_string(),
                        "owner_uid": identity.uid,
                    }),
                }
            }
            Verdict::Untrusted { identity, reason } => {
                if self.last_sent == Some(identity) {
                    return;
                }
                self.last_sent = Some(identity);
                self.last_rejected = true;
                tracing::error!(path = %self.path.display(), reason = %reason, "flag file rejected");
                TriggerEvent::Rejected {
                    source: TriggerSource::File,
                    reason,
                }
            }
        };
        // The receiver is gone only when the daemon is stopping.
        let _ = self.events.send(event).await;
    }
}

/// Judge the flag path with `lstat` (a symlink is judged as a symlink, never followed).
fn judge(path: &Path, trusted_uids: &[u32]) -> Verdict {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Verdict::Absent,
        Err(e) => {
            return Verdict::Unreadable {
                error: e.to_string(),
            };
        }
    };
    let identity = Identity {
        dev: meta.dev(),
        ino: meta.ino(),
        uid: meta.uid(),
        mode: meta.mode(),
        nlink: meta.nlink(),
    };
    let file_type = meta.file_type();
    let kind = if file_type.is_symlink() {
        Some("a symlink")
    } else if file_type.is_dir() {
        Some("a directory")
    } else if file_type.is_fifo() || file_type.is_socket() {
        Some("a fifo or socket")
    } else if file_type.is_block_device() || file_type.is_char_device() {
        Some("a device")
    } else {
        None
    };
    if let Some(kind) = kind {
        return Verdict::Untrusted {
            identity,
            reason: format!("flag {} is {kind}, not a regular file", path.display()),
        };
    }
    if meta.nlink() > 1 {
        return Verdict::Untrusted {
            identity,
            reason: format!(
                "flag {} has {} hard links; a flag must be a file of its own (anyone can hard-link a root-owned file)",
                path.display(),
                meta.nlink()
            ),
        };
    }
    if !trusted_uids.contains(&meta.uid()) {
        return Verdict::Untrusted {
            identity,
            reason: format!(
                "flag {} is owned by uid {}, not by root or the daemon's uid",
                path.display(),
                meta.uid()
            ),
        };
    }
    Verdict::Trusted { identity }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn trusted() -> [u32; 2] {
        [0, rustix::process::geteuid().as_raw()]
    }

    #[test]
    fn absent_flag_is_absent() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(judge(&dir.path().join("flag"), &trusted()), Verdict::Absent);
    }

    #[test]
    fn regular_file_owned_by_daemon_uid_is_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("flag");
        std::fs::write(&flag, b"").unwrap();
        assert!(matches!(judge(&flag, &trusted()), Verdict::Trusted { .. }));
    }

    #[test]
    fn symlink_is_rejected_even_to_a_trusted_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"").unwrap();
        let flag = dir.path().join("flag");
        std::os::unix::fs::symlink(&target, &flag).unwrap();
        match judge(&flag, &trusted()) {
            Verdict::Untrusted { reason, .. } => assert!(reason.contains("symlink"), "{reason}"),
            other => panic!("expected untrusted, got {other:?}"),
        }
    }

    #[test]
    fn flag_owned_by_another_uid_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("flag");
        std::fs::write(&flag, b"").unwrap();
        // Pretend neither root nor we own it: trust only an unused uid.
        match judge(&flag, &[4_000_000_000]) {
            Verdict::Untrusted { reason, .. } => {
                assert!(reason.contains("owned by uid"), "{reason}")
            }
            other => panic!("expected untrusted, got {other:?}"),
        }
    }

    #[test]
    fn world_writable_dir_without_sticky_bit_is_refused_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut config = FileTrigger {
            path: dir.path().join("flag"),
            allow_untrusted_flag_dir: false,
        };
        assert!(matches!(
            check_flag_dir(&config),
            Err(FileTriggerError::UntrustedDir { .. })
        ));
        config.allow_untrusted_flag_dir = true;
        assert!(check_flag_dir(&config).is_ok());
        config.allow_untrusted_flag_dir = false;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err =
            check_flag_dir(&config).expect_err("sticky world-writable (like /tmp) is refused");
        assert!(err.to_string().contains("mode 1777"), "{err}");
        config.allow_untrusted_flag_dir = true;
        assert!(check_flag_dir(&config).is_ok());
    }

    #[test]
    fn a_hard_linked_flag_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("root-owned");
        std::fs::write(&other, b"").unwrap();
        let flag = dir.path().join("flag");
        std::fs::hard_link(&other, &flag).unwrap();
        match judge(&flag, &trusted()) {
            Verdict::Untrusted { reason, .. } => {
                assert!(reason.contains("2 hard links"), "{reason}")
            }
            other => panic!("expected untrusted, got {other:?}"),
        }
        let config = FileTrigger {
            path: flag,
            allow_untrusted_flag_dir: false,
        };
        assert!(squatted_flag(&config).is_some_and(|r| r.contains("hard links")));
    }

    #[tokio::test]
    async fn existing_flag_fires_once_at_start_and_again_after_recreation() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("flag");
        std::fs::write(&flag, b"").unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let config = FileTrigger {
            path: flag.clone(),
            allow_untrusted_flag_dir: false,
        };
        let mut watch = FileWatch::start(&config, tx).await.unwrap();
        assert!(matches!(
            rx.try_recv(),
            Ok(TriggerEvent::Fired {
                source: TriggerSource::File,
                ..
            })
        ));
        watch.check().await;
        assert!(rx.try_recv().is_err(), "the same flag is sent once");
        std::fs::remove_file(&flag).unwrap();
        watch.check().await;
        std::fs::write(&flag, b"").unwrap();
        watch.check().await;
        assert!(matches!(rx.try_recv(), Ok(TriggerEvent::Fired { .. })));
    }

    #[tokio::test]
    async fn flag_in_a_directory_made_world_writable_after_start_is_rejected() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("flags");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let flag = dir.join("flag");
        let (tx, mut rx) = mpsc::channel(8);
        let config = FileTrigger {
            path: flag.clone(),
            allow_untrusted_flag_dir: false,
        };
        let mut watch = FileWatch::start(&config, tx).await.unwrap();
        // Re-created (or chmod-ed) so that anyone may rename a root-owned file onto the flag.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(&flag, b"").unwrap();
        watch.check().await;
        match rx.try_recv() {
            Ok(TriggerEvent::Rejected { reason, .. }) => {
                assert!(reason.contains("writable"), "{reason}")
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
}
