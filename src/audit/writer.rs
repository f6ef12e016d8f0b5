//! The writer: [`AuditLog`] opens (or creates) the audit file, takes its `flock`, finds where the
//! chain continues, appends the lines [`super::chain`] builds with one `write_all`, `fdatasync`s,
//! and keeps in memory what the file cannot take yet. It is the only code that writes, locks or
//! syncs the audit file; it does not build or check line bytes itself (that is the chain's), and
//! it decides nothing about what is recorded.
//!
//! [`AuditLog::record`] appends under an exclusive `flock` (the daemon and a CLI `trip` share one
//! file), re-reading the tail under the lock because another process may have appended, writes the
//! line(s) with one `write_all`, `fdatasync`s, and only then returns. If the file cannot be
//! written (permissions, disk full, a directory in the way, a foreign file, a writer that holds the
//! lock too long) the record is kept in memory, the failure is logged at `error`, and every later
//! record (or [`AuditLog::flush`]) retries: a kill switch is never stopped by its own logging.

use std::collections::VecDeque;
use std::fs::{DirBuilder, File, Metadata, OpenOptions, TryLockError};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::{Duration, Instant};

use super::chain::{self, Batch, ChainTail, Origin, Pending};
use super::{AuditError, AuditSink, Event, Recorded, event_fields};
use crate::error_chain;

/// How long `record` waits for another writer's `flock` before it keeps the record in memory.
/// A writer holds the lock for one append + fdatasync (milliseconds); a writer that holds it for
/// seconds is stuck (e.g. a `trip` stopped with ^Z), and a lockdown must not wait on it.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// How often `record` retries `try_lock` while another writer holds the lock: short against the
/// milliseconds a healthy writer holds it.
const LOCK_POLL: Duration = Duration::from_millis(2);

/// Records kept in memory while the file cannot be written. About 50 MiB at most; a day of
/// enforcement drift records every 30 s is ~3000. Beyond it records are counted, not kept (they
/// still reach tracing), and an `audit_records_lost` record says how many once the file is back.
const MAX_PENDING: usize = 100_000;

/// Where our own last append left the file: lets the next append skip re-reading the tail when
/// nobody else wrote in between.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KnownTail {
    dev: u64,
    ino: u64,
    len: u64,
    seq: u64,
    prev: String,
}

impl KnownTail {
    /// True when the file is still as our last append left it: same inode, same length.
    fn matches(&self, meta: &Metadata) -> bool {
        self.dev == meta.dev() && self.ino == meta.ino() && self.len == meta.len()
    }

    /// True when the path now holds another file than the one our last append wrote, or that
    /// file cut shorter than it: the chain we knew is gone from here.
    fn replaced_by(&self, meta: &Metadata) -> bool {
        self.dev != meta.dev() || self.ino != meta.ino() || meta.len() < self.len
    }
}

/// The chain head our last append left in a file that is no longer at the path (moved away,
/// deleted or truncated): the new file's first record names it (`audit_log_replaced`).
#[derive(Debug)]
struct ReplacedChain {
    previous_seq: u64,
    previous_line_sha256: String,
}

/// The mutable part of the log: only the owner thread touches it (and `open` and `Drop`, while
/// the thread does not run).
#[derive(Debug)]
struct State {
    /// Records not yet durable, oldest first.
    pending: VecDeque<Pending>,
    /// Records dropped because `pending` was full, not yet reported in the file.
    lost: u64,
    /// The file as our last append left it.
    known: Option<KnownTail>,
    /// The last failure, until a later flush succeeds.
    failure: Option<String>,
}

/// What `healthy` and `unflushed` read without waiting for the owner thread.
#[derive(Debug, Default)]
struct Status {
    /// Records recorded and not yet acknowledged by the owner thread.
    in_flight: AtomicUsize,
    /// `pending.len()` after the owner's last batch.
    held: AtomicUsize,
    /// `lost > 0 || failure.is_some()` after the owner's last batch.
    failed: AtomicBool,
}

/// What the owner thread is asked to do.
enum Request {
    /// Append this record, then acknowledge.
    Record(Pending, tokio::sync::oneshot::Sender<()>),
    /// Retry the records held in memory, then acknowledge (if anyone waits).
    Flush(Option<tokio::sync::oneshot::Sender<()>>),
}

/// Everything the handle and the owner thread share.
#[derive(Debug)]
struct Shared {
    path: PathBuf,
    /// The `host` and `pid` of every line this log writes.
    origin: Origin,
    /// How long the owner waits for another writer's lock, in ms (`with_lock_wait`).
    lock_wait_ms: AtomicU64,
    /// The last attempt gave up waiting for another writer's lock: until a lock is taken again,
    /// later batches try once without waiting, so a stuck writer costs one `lock_wait` in all
    /// rather than one per batch.
    lock_contended: AtomicBool,
    /// How the file is made durable: the OS's calls (the benchmark slows them down).
    durability: Arc<dyn crate::durability::Durability>,
    /// Stamped on each record when it is recorded (`set_policy_sha256` swaps it on reload).
    policy_sha256: Mutex<String>,
    status: Status,
    state: Mutex<State>,
}

/// The hash-chained JSON Lines writer with group commit. `record` (any thread, any task) stamps
/// the record and hands it to the log's one owner thread, which appends every record queued at
/// that moment with one `write_all` and one `fdatasync` under the `flock`, then acknowledges
/// each: no file I/O, lock wait or fsync ever runs on the caller (a tokio worker, the daemon's
/// main loop). Records are written in the order they are recorded.
#[derive(Debug)]
pub struct AuditLog {
    shared: Arc<Shared>,
    /// `None` once dropped (closing the channel ends the owner thread).
    requests: Option<mpsc::Sender<Request>>,
    owner: Option<std::thread::JoinHandle<()>>,
}

/// While another writer holds the `flock`, waiting records are acknowledged as held in memory
/// after this long (the owner keeps waiting for the lock up to `lock_wait` and writes them then):
/// a healthy writer holds the lock for one append + fdatasync, and no Disconnect may wait for a
/// stuck one (issue 10 item 11).
const HELD_ACK_AFTER: Duration = Duration::from_millis(50);

/// While records are held in memory, the owner retries this often by itself.
const HELD_RETRY: Duration = Duration::from_secs(1);

impl AuditLog {
    /// Open (or create, 0600 in a 0700 directory) the log at `path` and continue its chain. A torn
    /// last line left by a crash is cut off and recorded as `audit_recovered`. Starts the log's
    /// owner thread.
    ///
    /// Never fails because of the file: if it cannot be created, read, locked or written, or if its
    /// last line is not an audit record (then it is left untouched: it is evidence, or someone
    /// else's file), the failure is logged at `error`, the log reports itself unhealthy and keeps
    /// records in memory until the file can be written. A kill switch must not be stopped by its
    /// own logging. (Refusing an audit path at start, e.g. in a directory others can change, is
    /// the caller's check: see `fs_trust`.)
    pub fn open(path: &Path, policy_sha256: &str) -> AuditLog {
        Self::open_with(path, policy_sha256, crate::durability::os())
    }

    /// [`AuditLog::open`] with the fsyncs behind `durability` (the benchmark's slow-disk seam).
    #[doc(hidden)]
    pub fn open_with(
        path: &Path,
        policy_sha256: &str,
        durability: Arc<dyn crate::durability::Durability>,
    ) -> AuditLog {
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            origin: Origin::this_process(),
            lock_wait_ms: AtomicU64::new(LOCK_WAIT.as_millis() as u64),
            lock_contended: AtomicBool::new(false),
            durability,
            policy_sha256: Mutex::new(policy_sha256.to_owned()),
            status: Status::default(),
            state: Mutex::new(State {
                pending: VecDeque::new(),
                lost: 0,
                known: None,
                failure: None,
            }),
        });
        // Create the file and recover a torn tail now, at start, not at the first record.
        {
            let mut state = shared.lock_state();
            let _ = shared.flush_locked(&mut state, &mut |_, _| {});
            shared.publish(&state);
        }
        let (requests, queue) = mpsc::channel();
        let owner = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("audit-writer".into())
                .spawn(move || shared.own(&queue))
        };
        let owner = match owner {
            Ok(owner) => Some(owner),
            Err(err) => {
                // No thread: `record` then writes on the caller (as before group commit).
                tracing::error!(cause = %err, "cannot start the audit writer thread; records are written by their callers");
                None
            }
        };
        AuditLog {
            requests: owner.as_ref().map(|_| requests),
            shared,
            owner,
        }
    }

    /// How long the writer waits for another writer's lock before keeping records in memory
    /// (default 2 s). Records waiting for it are acknowledged as held after 50 ms.
    pub fn with_lock_wait(self, wait: Duration) -> AuditLog {
        self.shared
            .lock_wait_ms
            .store(wait.as_millis() as u64, Ordering::Relaxed);
        self
    }

    /// The file this log writes to.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Stamp later records with a reloaded policy's SHA-256.
    pub fn set_policy_sha256(&self, policy_sha256: &str) {
        *self.shared.policy() = policy_sha256.to_owned();
    }

    /// True when every record is durable in the file and the last attempt to reach it succeeded.
    /// Never waits for the writer.
    pub fn healthy(&self) -> bool {
        let status = &self.shared.status;
        status.in_flight.load(Ordering::SeqCst) == 0
            && status.held.load(Ordering::SeqCst) == 0
            && !status.failed.load(Ordering::SeqCst)
    }

    /// Records held in memory because the file could not be written (as of the writer's last
    /// batch).
    pub fn unflushed(&self) -> usize {
        self.shared.status.held.load(Ordering::SeqCst)
    }

    /// Retry writing the records held in memory and wait for the attempt; true when none is left.
    /// The writer retries by itself every second while records are held; call this before
    /// exiting. Blocks the calling thread: not for async code (see [`AuditLog::flush_soon`]).
    pub fn flush(&self) -> bool {
        let (ack, acked) = tokio::sync::oneshot::channel();
        match &self.requests {
            Some(requests) if requests.send(Request::Flush(Some(ack))).is_ok() => {
                let _ = acked.blocking_recv();
            }
            _ => {
                let mut state = self.shared.lock_state();
                let _ = self.shared.flush_locked(&mut state, &mut |_, _| {});
                self.shared.publish(&state);
            }
        }
        let status = &self.shared.status;
        status.held.load(Ordering::SeqCst) == 0 && !status.failed.load(Ordering::SeqCst)
    }

    /// [`AuditLog::flush`] for async code: awaits the writer's attempt instead of blocking.
    pub async fn flushed(&self) -> bool {
        let (ack, acked) = tokio::sync::oneshot::channel();
        match &self.requests {
            Some(requests) if requests.send(Request::Flush(Some(ack))).is_ok() => {
                let _ = acked.await;
            }
            _ => return self.flush(),
        }
        let status = &self.shared.status;
        status.held.load(Ordering::SeqCst) == 0 && !status.failed.load(Ordering::SeqCst)
    }

    /// Ask the writer to retry the records held in memory, without waiting for it.
    pub fn flush_soon(&self) {
        if let Some(requests) = &self.requests {
            let _ = requests.send(Request::Flush(None));
        }
    }

    /// Whether the file can be opened for appending right now (no file is created, nothing is
    /// written): the health watch's probe, which sees a log that vanished or became unwritable
    /// before the next record fails. Blocking: not for async code.
    pub fn probe_writable(&self) -> bool {
        let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
        OpenOptions::new()
            .append(true)
            .custom_flags(flags.bits() as i32)
            .open(&self.shared.path)
            .is_ok_and(|file| file.metadata().is_ok_and(|m| m.is_file()))
    }

    /// Record `event` and block the calling thread until it is durable or held (the CLI, tests).
    pub fn record_blocking(&self, event: Event) {
        self.record(event).wait();
    }
}

impl AuditSink for AuditLog {
    fn record(&self, event: Event) -> Recorded {
        let pending = self.shared.stamp(&event);
        let (ack, acked) = tokio::sync::oneshot::channel();
        self.shared.status.in_flight.fetch_add(1, Ordering::SeqCst);
        let refused = match &self.requests {
            Some(requests) => requests.send(Request::Record(pending, ack)).err(),
            None => Some(mpsc::SendError(Request::Record(pending, ack))),
        };
        if let Some(mpsc::SendError(Request::Record(pending, _))) = refused {
            // No owner thread: write on the caller, as the writer did before group commit.
            let mut state = self.shared.lock_state();
            self.shared.take(&mut state, pending);
            let _ = self.shared.flush_locked(&mut state, &mut |_, _| {});
            self.shared.publish(&state);
            self.shared.status.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Recorded::done();
        }
        Recorded::pending(acked)
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        // Closing the channel ends the owner once it has written everything queued.
        drop(self.requests.take());
        if let Some(owner) = self.owner.take() {
            let _ = owner.join();
        }
        let mut state = self.shared.lock_state();
        if state.pending.is_empty() && state.lost == 0 {
            return;
        }
        let _ = self.shared.flush_locked(&mut state, &mut |_, _| {});
        if !state.pending.is_empty() {
            tracing::error!(
                path = %self.shared.path.display(),
                records = state.pending.len(),
                "audit records were never written to the audit log; they are only in this process's log output"
            );
        }
    }
}

/// Acknowledgements of the records of the batch being written.
type Waiters = Vec<tokio::sync::oneshot::Sender<()>>;

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        // A panic in another thread while it held the state leaves it consistent (pending is
        // only cleared after a successful write), so carry on rather than lose the audit trail.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn policy(&self) -> MutexGuard<'_, String> {
        self.policy_sha256
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The record as it will be written, stamped now with the current policy hash.
    fn stamp(&self, event: &Event) -> Pending {
        let (name, fields) = event_fields(event);
        Pending::stamped_now(name, fields, &self.policy())
    }

    /// The owner thread: take every request queued, write them in one batch (one append, one
    /// fdatasync), acknowledge each; repeat until the log is dropped. While records are held in
    /// memory it retries every [`HELD_RETRY`] by itself.
    fn own(&self, queue: &mpsc::Receiver<Request>) {
        // Those waiting for their record (acknowledged as held after HELD_ACK_AFTER while another
        // writer holds the lock), and those waiting for a flush attempt (only once it is over).
        let mut waiters = Waiters::new();
        let mut flushers = Waiters::new();
        loop {
            let first = if self.status.held.load(Ordering::SeqCst) > 0 {
                match queue.recv_timeout(HELD_RETRY) {
                    Ok(request) => Some(request),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match queue.recv() {
                    Ok(request) => Some(request),
                    Err(mpsc::RecvError) => return,
                }
            };
            let mut state = self.lock_state();
            let mut added = 0;
            for request in first
                .into_iter()
                .chain(std::iter::from_fn(|| queue.try_recv().ok()))
            {
                added += self.enqueue(&mut state, request, &mut waiters, &mut flushers);
            }
            let written = self.flush_locked(&mut state, &mut |state, waited| {
                // Another writer holds the lock: take in what arrives meanwhile, and let no
                // one wait on it past HELD_ACK_AFTER (the records stay queued for this append).
                for request in std::iter::from_fn(|| queue.try_recv().ok()) {
                    added += self.enqueue(state, request, &mut waiters, &mut flushers);
                }
                if waited >= HELD_ACK_AFTER && !waiters.is_empty() {
                    self.publish(state);
                    self.acknowledge(&mut waiters);
                }
            });
            if !written {
                for record in state.pending.iter().rev().take(added) {
                    tracing::error!(
                        event = %record.event,
                        ts = %record.ts,
                        record = %serde_json::Value::Object(record.fields.clone()),
                        "audit record held in memory"
                    );
                }
            }
            self.publish(&state);
            drop(state);
            self.acknowledge(&mut waiters);
            self.acknowledge(&mut flushers);
        }
    }

    /// Take one request into the batch; returns how many records it added to `pending`.
    fn enqueue(
        &self,
        state: &mut State,
        request: Request,
        waiters: &mut Waiters,
        flushers: &mut Waiters,
    ) -> usize {
        match request {
            Request::Record(pending, ack) => {
                waiters.push(ack);
                usize::from(self.take(state, pending))
            }
            Request::Flush(ack) => {
                if let Some(ack) = ack {
                    // Someone waits for this attempt (an exit, a CLI command): it waits the whole
                    // lock_wait for a busy writer, even after an attempt that gave up.
                    self.lock_contended.store(false, Ordering::Relaxed);
                    // Balanced by `acknowledge`, like a record's; acknowledged once the attempt
                    // is over, never early as held (`flush` reports what the attempt achieved).
                    self.status.in_flight.fetch_add(1, Ordering::SeqCst);
                    flushers.push(ack);
                }
                0
            }
        }
    }

    /// Queue one record for the next append; false when the queue is full (then it is counted
    /// as lost and kept only in this log line).
    fn take(&self, state: &mut State, pending: Pending) -> bool {
        if state.pending.len() >= MAX_PENDING {
            state.lost += 1;
            tracing::error!(
                path = %self.path.display(),
                event = %pending.event,
                record = %serde_json::Value::Object(pending.fields),
                "audit log queue is full: this record is kept only in this log line"
            );
            return false;
        }
        state.pending.push_back(pending);
        true
    }

    /// Make `healthy` and `unflushed` say what `state` says.
    fn publish(&self, state: &State) {
        let status = &self.status;
        status.held.store(state.pending.len(), Ordering::SeqCst);
        status
            .failed
            .store(state.lost > 0 || state.failure.is_some(), Ordering::SeqCst);
    }

    fn acknowledge(&self, waiters: &mut Waiters) {
        for ack in waiters.drain(..) {
            self.status.in_flight.fetch_sub(1, Ordering::SeqCst);
            let _ = ack.send(());
        }
    }

    /// Write the queued records (and recover a torn tail); true on success. On failure they stay
    /// queued and the failure is logged.
    fn flush_locked(&self, state: &mut State, while_locked_out: &mut LockedOut<'_>) -> bool {
        match self.append(state, while_locked_out) {
            Ok(()) => {
                if state.failure.take().is_some() {
                    tracing::warn!(path = %self.path.display(), "audit log is writable again; every held record is now written");
                }
                true
            }
            Err(err) => {
                let cause = error_chain(&err);
                tracing::error!(
                    path = %self.path.display(),
                    held_records = state.pending.len(),
                    cause = %cause,
                    "audit log cannot be written; records are kept in memory and retried with the next record"
                );
                state.failure = Some(cause);
                false
            }
        }
    }

    /// One locked append of the replaced-file note and the torn-tail recovery (if any), the queued
    /// records, and a lost-records note (if any).
    fn append(
        &self,
        state: &mut State,
        while_locked_out: &mut LockedOut<'_>,
    ) -> Result<(), AuditError> {
        let file = self.open_file()?;
        self.lock_file(&file, state, while_locked_out)?;
        let meta = file.metadata().map_err(|source| AuditError::Read {
            path: self.path.clone(),
            source,
        })?;
        let (tail, replaced) = self.current_tail(state.known.as_ref(), &file, &meta)?;
        let policy_sha256 = self.policy().clone();
        let (records, recovered) = self.records_to_write(state, &policy_sha256, &tail, replaced);
        if records.is_empty() {
            return Ok(());
        }
        let batch = self.origin.chain(tail.seq, &tail.prev, &records);

        if !tail.torn.is_empty() {
            file.set_len(tail.complete_len)
                .map_err(|source| AuditError::Write {
                    path: self.path.clone(),
                    source,
                })?;
        }
        if let Err(err) = self.write_durably(&file, &batch.bytes, tail.complete_len) {
            if let Some(recovered) = recovered {
                // The torn bytes are cut off already: their record must not be lost with them.
                state.pending.push_front(recovered);
            }
            return Err(err);
        }
        let _ = file.unlock();

        state.pending.clear();
        state.lost = 0;
        state.known = Some(KnownTail {
            dev: meta.dev(),
            ino: meta.ino(),
            len: tail.complete_len + batch.bytes.len() as u64,
            seq: batch.seq,
            prev: batch.prev.clone(),
        });
        log_written(&batch, &records);
        Ok(())
    }

    /// Where the chain continues: from our last append if the file is as it left it, else from
    /// the file's own tail (another writer, rotation or truncation, or the first append); and the
    /// chain head we knew if the path no longer holds the file we appended to.
    fn current_tail(
        &self,
        known: Option<&KnownTail>,
        file: &File,
        meta: &Metadata,
    ) -> Result<(ChainTail, Option<ReplacedChain>), AuditError> {
        let mut replaced = None;
        match known {
            Some(known) if known.matches(meta) => {
                let tail = ChainTail {
                    seq: known.seq,
                    prev: known.prev.clone(),
                    complete_len: known.len,
                    torn: Vec::new(),
                };
                return Ok((tail, None));
            }
            Some(known) => {
                tracing::warn!(
                    path = %self.path.display(),
                    "audit log changed since our last record (another writer, rotation or truncation); continuing the chain found in the file"
                );
                // Another file, or this one cut shorter than our last record: the chain we
                // knew is gone from here, and the new file's first record says so.
                if known.replaced_by(meta) {
                    replaced = Some(ReplacedChain {
                        previous_seq: known.seq,
                        previous_line_sha256: known.prev.clone(),
                    });
                }
            }
            None => {}
        }
        let tail = chain::read_tail(&self.path, file, meta.len())?;
        Ok((tail, replaced))
    }

    /// What one append writes, in order: `audit_log_replaced` (if the path no longer holds the
    /// file our last append wrote), `audit_recovered` (a torn tail), the queued records, and
    /// `audit_records_lost` (if records were dropped). Also returns the `audit_recovered` record
    /// alone: once the torn bytes are cut off, an append that fails must keep it queued.
    fn records_to_write(
        &self,
        state: &State,
        policy_sha256: &str,
        tail: &ChainTail,
        replaced: Option<ReplacedChain>,
    ) -> (Vec<Pending>, Option<Pending>) {
        let mut records: Vec<Pending> = Vec::new();
        if let Some(ReplacedChain {
            previous_seq,
            previous_line_sha256,
        }) = replaced
        {
            tracing::error!(path = %self.path.display(), previous_seq, %previous_line_sha256, "audit log was replaced, moved or truncated; recording it as audit_log_replaced");
            let replaced = Event::AuditLogReplaced {
                previous_seq,
                previous_line_sha256,
            };
            records.push(Pending::writer_record(&replaced, policy_sha256));
        }
        let recovered = tail.recovered().map(|recovered| {
            tracing::error!(
                path = %self.path.display(),
                torn_len = tail.torn.len(),
                "audit log ends in a torn line (a crash in mid-write); cutting it off and recording it as audit_recovered"
            );
            Pending::writer_record(&recovered, policy_sha256)
        });
        records.extend(recovered.clone());
        records.extend(state.pending.iter().cloned());
        if state.lost > 0 {
            let lost = Event::AuditRecordsLost { count: state.lost };
            records.push(Pending::writer_record(&lost, policy_sha256));
        }
        (records, recovered)
    }

    /// Append `bytes` with one `write_all` and make them durable. On failure, take back a partial
    /// or unsynced append (cut the file to `complete_len`), so the records can be retried without
    /// leaving a torn line or a duplicate; if even that fails the next writer recovers it.
    fn write_durably(
        &self,
        file: &File,
        bytes: &[u8],
        complete_len: u64,
    ) -> Result<(), AuditError> {
        // `append(true)`: the bytes land at the end even if the length changed since we read it
        // (it cannot while we hold the lock, unless a writer ignores flock).
        let mut writer = file;
        let written = writer.write_all(bytes).map_err(|source| AuditError::Write {
            path: self.path.clone(),
            source,
        });
        // fdatasync is enough: it also flushes the new file size, which reading the data needs.
        let synced = written.and_then(|()| {
            self.durability
                .sync_data(file)
                .map_err(|source| AuditError::Sync {
                    path: self.path.clone(),
                    source,
                })
        });
        if synced.is_err() {
            let _ = file.set_len(complete_len).and_then(|()| file.sync_data());
        }
        synced
    }

    /// Open the file for appending, creating it 0600 (and a missing directory 0700).
    fn open_file(&self) -> Result<File, AuditError> {
        if let Some(dir) = self.path.parent().filter(|dir| !dir.as_os_str().is_empty())
            && !dir.exists()
        {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| AuditError::CreateDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        let mut options = OpenOptions::new();
        // O_NOFOLLOW | O_NONBLOCK: a symlink or FIFO put at the path is refused, never followed
        // or waited on (a FIFO would block `write_all` once its pipe buffer is full).
        let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
        options
            .read(true)
            .append(true)
            .mode(0o600)
            .custom_flags(flags.bits() as i32);
        let file = self.open_or_create(&options)?;
        let file_type = file.metadata().map(|m| m.file_type());
        match file_type {
            Ok(file_type) => match crate::fs_trust::file_kind(&file_type) {
                None => Ok(file),
                Some(kind) => Err(AuditError::Open {
                    path: self.path.clone(),
                    source: std::io::Error::other(format!("it is {kind}, not a regular file")),
                }),
            },
            Err(source) => Err(AuditError::Open {
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn open_or_create(&self, options: &OpenOptions) -> Result<File, AuditError> {
        match options.clone().create_new(true).open(&self.path) {
            Ok(file) => {
                // Make the new file's directory entry durable too, or a crash could lose the
                // whole log along with its first records.
                if let Some(dir) = self.path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                    let _ = File::open(dir).and_then(|dir| self.durability.sync_all(&dir));
                }
                Ok(file)
            }
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                options.open(&self.path).map_err(|source| AuditError::Open {
                    path: self.path.clone(),
                    source,
                })
            }
            Err(source) => Err(AuditError::Open {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Take the exclusive flock, waiting at most `lock_wait` (not at all while the previous
    /// attempt timed out: see `lock_contended`). While it waits, `while_locked_out` is called
    /// with the state and the time waited so far at every poll.
    fn lock_file(
        &self,
        file: &File,
        state: &mut State,
        while_locked_out: &mut LockedOut<'_>,
    ) -> Result<(), AuditError> {
        let started = Instant::now();
        let lock_wait = Duration::from_millis(self.lock_wait_ms.load(Ordering::Relaxed));
        let wait = if self.lock_contended.load(Ordering::Relaxed) {
            Duration::ZERO
        } else {
            lock_wait
        };
        loop {
            match file.try_lock() {
                Ok(()) => {
                    self.lock_contended.store(false, Ordering::Relaxed);
                    return Ok(());
                }
                Err(TryLockError::WouldBlock) if started.elapsed() < wait => {
                    while_locked_out(state, started.elapsed());
                    std::thread::sleep(LOCK_POLL)
                }
                Err(TryLockError::WouldBlock) => {
                    self.lock_contended.store(true, Ordering::Relaxed);
                    return Err(AuditError::LockTimeout {
                        path: self.path.clone(),
                        waited: lock_wait,
                    });
                }
                Err(TryLockError::Error(source)) => {
                    return Err(AuditError::Lock {
                        path: self.path.clone(),
                        source,
                    });
                }
            }
        }
    }
}

/// Called while another writer holds the lock, with the time waited so far.
type LockedOut<'a> = dyn FnMut(&mut State, Duration) + 'a;

/// Log each line of a durable append to tracing (journald under systemd) with its `seq` and
/// SHA-256: the anchor outside the file that shows lines removed from its end.
fn log_written(batch: &Batch, records: &[Pending]) {
    for (line, record) in batch.lines.iter().zip(records) {
        tracing::info!(
            event = %record.event,
            seq = line.seq,
            line_sha256 = %line.sha256,
            lockdown_id = record.fields.get("lockdown_id").and_then(serde_json::Value::as_str),
            key_store_id = record.fields.get("key_store_id").and_then(serde_json::Value::as_str),
            record = %String::from_utf8_lossy(&line.bytes),
            "audit record written"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    use std::sync::Arc;

    use super::super::test_support::{CHILD_LOG, POLICY, drift, events, lines};
    use super::super::{TriggerSource, verify};
    use super::*;

    const RELOADED: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    /// With [`CHILD_LOG`], turns `child_process_writer` into a writer for the multi-process test.
    const CHILD_TAG: &str = "KMS_KILLSWITCH_AUDIT_TEST_CHILD_TAG";
    const CHILD_RECORDS: usize = 40;

    #[test]
    fn creates_the_file_0600_in_a_new_0700_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/deeper/audit.jsonl");
        let log = AuditLog::open(&path, POLICY);
        assert!(log.healthy());
        assert_eq!(log.path(), path);
        let file_mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(file_mode, 0o600);
        assert_eq!(dir_mode, 0o700);
        // Opening creates the file but writes nothing until there is something to record.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    #[test]
    fn chain_continues_across_reopen_and_policy_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, POLICY);
        log.record_blocking(Event::DaemonStarted);
        log.record_blocking(Event::PolicyLoaded);
        drop(log);
        let log = AuditLog::open(&path, POLICY);
        log.record_blocking(Event::DaemonStarted);
        log.set_policy_sha256(RELOADED);
        log.record_blocking(Event::PolicyLoaded);
        drop(log);

        let records = lines(&path);
        let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        assert_eq!(records[2]["policy_sha256"], POLICY);
        assert_eq!(records[3]["policy_sha256"], RELOADED);
        assert_eq!(verify(&path).unwrap().records, 4);
    }

    #[test]
    fn threads_writing_through_two_logs_on_one_file_form_one_chain() {
        // Two `AuditLog`s on one path are two open file descriptions: they exclude each other only
        // through flock, and each must re-read the tail the other appended (like two processes).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let logs = [
            Arc::new(AuditLog::open(&path, POLICY)),
            Arc::new(AuditLog::open(&path, POLICY)),
        ];
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = Arc::clone(&logs[t % 2]);
                std::thread::spawn(move || {
                    for i in 0..25 {
                        log.record_blocking(drift(&format!("cks-{t}-{i}")));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(logs.iter().all(|log| log.healthy()));
        assert_eq!(verify(&path).unwrap().records, 200);
        let mut ids: Vec<String> = lines(&path)
            .iter()
            .map(|r| r["key_store_id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 200, "every record written exactly once");
    }

    #[test]
    fn several_processes_and_threads_share_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let exe = std::env::current_exe().unwrap();
        let children: Vec<_> = ["a", "b"]
            .iter()
            .map(|tag| {
                Command::new(&exe)
                    .args([
                        "audit::writer::tests::child_process_writer",
                        "--exact",
                        "--ignored",
                        "--test-threads=1",
                    ])
                    .env(CHILD_LOG, &path)
                    .env(CHILD_TAG, tag)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let log = AuditLog::open(&path, POLICY);
        for i in 0..CHILD_RECORDS {
            log.record_blocking(drift(&format!("cks-parent-{i}")));
        }
        for child in children {
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
        assert!(log.flush(), "every record written");
        assert!(log.healthy());
        let summary = verify(&path).unwrap();
        assert_eq!(summary.records as usize, 3 * CHILD_RECORDS);
        let pids: std::collections::HashSet<u64> = lines(&path)
            .iter()
            .map(|r| r["pid"].as_u64().unwrap())
            .collect();
        assert_eq!(pids.len(), 3, "three processes wrote");
    }

    /// Not a test of its own: `several_processes_and_threads_share_one_chain` runs this test binary
    /// again with this test selected to get a second and third writer process.
    #[test]
    #[ignore = "a child process of several_processes_and_threads_share_one_chain"]
    fn child_process_writer() {
        let path =
            PathBuf::from(std::env::var_os(CHILD_LOG).expect("run by the multi-process test"));
        let tag = std::env::var(CHILD_TAG).expect("run by the multi-process test");
        let log = AuditLog::open(&path, POLICY);
        for i in 0..CHILD_RECORDS {
            log.record_blocking(drift(&format!("cks-{tag}-{i}")));
        }
        // Under load another writer may hold the lock past HELD_ACK_AFTER: a record is then
        // acknowledged as held in memory and written later. Flush, as a process does at exit.
        assert!(log.flush(), "every record written");
        assert!(log.healthy());
    }

    #[test]
    fn a_path_under_a_regular_file_keeps_records_in_memory_until_writable() {
        // Tests run as root, so permission bits would not stop the writer: make the parent a file.
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path().join("log");
        std::fs::write(&parent, b"a file where the directory should be").unwrap();
        let path = parent.join("audit.jsonl");
        let log = AuditLog::open(&path, POLICY);
        assert!(!log.healthy(), "the failure to create the file is reported");
        log.record_blocking(Event::TriggerFired {
            source: TriggerSource::Signal,
            detail: serde_json::json!({}),
            latched: false,
        });
        log.record_blocking(drift("cks-1"));
        assert!(!log.healthy());
        assert_eq!(log.unflushed(), 2);

        std::fs::remove_file(&parent).unwrap();
        log.record_blocking(Event::DaemonStopped);
        assert!(log.healthy());
        assert_eq!(log.unflushed(), 0);
        assert_eq!(
            events(&path),
            ["trigger_fired", "drift_detected", "daemon_stopped"]
        );
        let records = lines(&path);
        assert!(
            records[0]["ts"].as_str() <= records[2]["ts"].as_str(),
            "held records keep their time"
        );
        assert_eq!(verify(&path).unwrap().records, 3);
    }

    #[test]
    fn a_directory_in_place_of_the_file_keeps_records_in_memory_until_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::create_dir(&path).unwrap();
        let log = AuditLog::open(&path, POLICY);
        log.record_blocking(Event::DaemonStarted);
        assert!(!log.flush());
        assert!(!log.healthy());
        std::fs::remove_dir(&path).unwrap();
        assert!(log.flush());
        assert!(log.healthy());
        assert_eq!(events(&path), ["daemon_started"]);
    }

    #[test]
    fn records_left_in_memory_are_written_when_the_log_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::create_dir(&path).unwrap();
        let log = AuditLog::open(&path, POLICY);
        log.record_blocking(Event::DaemonStarted);
        std::fs::remove_dir(&path).unwrap();
        drop(log);
        assert_eq!(events(&path), ["daemon_started"]);
    }

    #[test]
    fn a_writer_holding_the_lock_does_not_block_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, POLICY).with_lock_wait(Duration::ZERO);
        let stuck_writer = File::open(&path).unwrap();
        stuck_writer.lock().unwrap();
        log.record_blocking(Event::DaemonStarted);
        assert!(!log.healthy());
        assert_eq!(log.unflushed(), 1);
        assert!(
            log.shared
                .lock_contended
                .load(std::sync::atomic::Ordering::Relaxed),
            "later records do not wait for the stuck writer again"
        );
        stuck_writer.unlock().unwrap();
        log.record_blocking(Event::DaemonStopped);
        assert!(log.healthy());
        assert!(
            !log.shared
                .lock_contended
                .load(std::sync::atomic::Ordering::Relaxed),
            "once the lock is taken again, a busy lock is waited for as usual"
        );
        assert_eq!(events(&path), ["daemon_started", "daemon_stopped"]);
    }

    #[test]
    fn a_foreign_lock_does_not_hold_up_a_record() {
        // Issue 10 item 11: the wait for another writer's flock happens on the owner thread, and
        // no recorder waits on it for long. With an hour's lock wait, a record that waited for
        // the lock would hang this test.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, POLICY).with_lock_wait(Duration::from_secs(3600));
        let foreign = File::open(&path).unwrap();
        foreign.lock().unwrap();
        log.record_blocking(Event::DaemonStarted);
        assert!(!log.healthy(), "the record is held in memory, not durable");
        assert_eq!(log.unflushed(), 1);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        foreign.unlock().unwrap();
        // The owner was still waiting for the lock: it writes the held record now.
        assert!(log.flush());
        assert!(log.healthy());
        assert_eq!(events(&path), ["daemon_started"]);
    }

    /// Counts fdatasyncs; the first one waits until the test lets it go.
    #[derive(Debug)]
    struct GatedDisk {
        syncs: AtomicUsize,
        entered: Mutex<Option<mpsc::Sender<()>>>,
        release: Mutex<Option<mpsc::Receiver<()>>>,
    }

    impl crate::durability::Durability for GatedDisk {
        fn sync_data(&self, file: &File) -> std::io::Result<()> {
            if self.syncs.fetch_add(1, Ordering::SeqCst) == 0 {
                if let Some(entered) = self.entered.lock().unwrap().take() {
                    entered.send(()).unwrap();
                }
                if let Some(release) = self.release.lock().unwrap().take() {
                    release.recv().unwrap();
                }
            }
            file.sync_data()
        }

        fn sync_all(&self, file: &File) -> std::io::Result<()> {
            file.sync_all()
        }
    }

    #[test]
    fn records_queued_during_an_fdatasync_share_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let disk = Arc::new(GatedDisk {
            syncs: AtomicUsize::new(0),
            entered: Mutex::new(Some(entered_tx)),
            release: Mutex::new(Some(release_rx)),
        });
        let log = AuditLog::open_with(&path, POLICY, disk.clone());
        let first = log.record(Event::DaemonStarted);
        entered.recv().unwrap();
        // The owner is inside the first record's fdatasync: these 50 queue behind it.
        let rest: Vec<Recorded> = (0..50)
            .map(|i| log.record(drift(&format!("cks-{i}"))))
            .collect();
        release.send(()).unwrap();
        first.wait();
        rest.into_iter().for_each(Recorded::wait);
        assert_eq!(
            disk.syncs.load(Ordering::SeqCst),
            2,
            "one batch, one fdatasync"
        );
        assert!(log.healthy());
        assert_eq!(verify(&path).unwrap().records, 51);
    }
}
