//! The audit trail (DESIGN.md §5). This file owns the event vocabulary ([`Event`]: field names are
//! spelled nowhere else), the [`AuditSink`] every recorder writes through, and [`AuditError`]; the
//! files below own the rest. The module owns the audit file and nothing else: it never calls AWS
//! and never decides anything about a lockdown; it records what the daemon and the engine tell it.
//!
//! - `writer.rs`: [`AuditLog`], the flock'd, fsync'd appender with its in-memory queue for records
//!   the file cannot take yet. The only code here that writes, locks or syncs the file.
//! - `chain.rs`: the line format (`seq` first, `seal` last), the `prev` chain and the seal, and
//!   reading the chain's tail (where a torn last line is found). Builds bytes; writes nothing.
//! - `verify.rs`: [`verify()`], which checks a whole file line by line.
//! - `redact.rs`: [`redact_credentials`], applied to every string before it is recorded or logged.

mod chain;
mod redact;
mod verify;
mod writer;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::model::TriggerSource;

pub use chain::COMMON_FIELDS;
pub use redact::redact_credentials;
pub use verify::{VerifySummary, verify};
pub use writer::AuditLog;

/// How one Disconnect call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectResult {
    Accepted,
    AlreadyDisconnected,
    Error,
}

/// How one DisableKey call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyDisableResult {
    Accepted,
    /// `KMSInvalidStateException` (e.g. pending deletion): look at the state and carry on.
    AlreadyDisabled,
    Error,
}

/// How a lockdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LockdownOutcome {
    Complete,
    Partial,
    DryRun,
}

/// One store that a lockdown could not verify DISCONNECTED.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedStore {
    pub key_store_id: String,
    pub region: String,
    /// The last state KMS reported, if any.
    pub connection_state: Option<String>,
    pub error: Option<String>,
}

/// One standard key that a lockdown could not verify Disabled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedKey {
    /// The key's id or ARN (as resolved), or the policy's alias while unresolved.
    pub key_id: String,
    pub region: String,
    /// The last `KeyState` KMS reported, if any.
    pub key_state: Option<String>,
    pub error: Option<String>,
}

/// One entry of `lockdown_finished`'s `failed`: a store, or (second round) a standard key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Failed {
    Store(FailedStore),
    Key(FailedKey),
}

/// Every event the audit log records, with its extra fields. The common fields (`seq`, `ts`,
/// `event`, `prev`, `host`, `pid`, `policy_sha256`, `seal`) are added by the writer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    DaemonStarted,
    DaemonStopped,
    PolicyLoaded,
    PolicyRejected {
        error: String,
    },
    TriggerFired {
        source: TriggerSource,
        /// The path and its owner uid, the signal and its sender pid/uid, the alarm
        /// name/region/StateReason, or the CLI user and reason.
        detail: serde_json::Value,
        /// True when the switch was already latched: no second lockdown starts.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        latched: bool,
    },
    TriggerRejected {
        source: TriggerSource,
        reason: String,
    },
    LockdownStarted {
        lockdown_id: String,
        /// The policy's key stores as written (ids or names, with region); an `all: true` entry
        /// as the stores it resolved to (each with `"all": true`).
        key_stores: Vec<serde_json::Value>,
        /// Second round: the policy's standard keys as written (absent when there are none).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        keys: Vec<serde_json::Value>,
        dry_run: bool,
    },
    DisconnectRequested {
        lockdown_id: String,
        key_store_id: String,
        region: String,
        account: Option<String>,
        attempt: u32,
    },
    DisconnectResult {
        lockdown_id: String,
        key_store_id: String,
        region: String,
        result: DisconnectResult,
        request_id: Option<String>,
        error: Option<String>,
    },
    StoreVerified {
        lockdown_id: String,
        key_store_id: String,
        region: String,
        connection_state: String,
    },
    LockdownFinished {
        lockdown_id: String,
        outcome: LockdownOutcome,
        verified: usize,
        /// Standard keys verified Disabled (second round), counted apart from the stores.
        keys_verified: usize,
        failed: Vec<Failed>,
        elapsed_ms: u64,
    },
    DriftDetected {
        key_store_id: String,
        region: String,
        connection_state: String,
    },
    Rearmed {
        reason: String,
        by: String,
    },
    /// Second round: a DisableKey sent for a standard key.
    KeyDisableRequested {
        lockdown_id: String,
        key_id: String,
        region: String,
        account: Option<String>,
        attempt: u32,
    },
    KeyDisableResult {
        lockdown_id: String,
        key_id: String,
        region: String,
        result: KeyDisableResult,
        request_id: Option<String>,
        error: Option<String>,
    },
    /// DescribeKey reports the key `Disabled` (or `PendingDeletion`: unusable too).
    KeyVerified {
        lockdown_id: String,
        key_id: String,
        region: String,
        key_state: String,
    },
    /// An enforcement round while latched could not check or disable this standard key (one
    /// record per failing key per round; the next round tries again).
    KeyEnforcementFailed {
        lockdown_id: String,
        /// The key's id or ARN, or the policy's entry (e.g. an alias) while unresolved.
        key_id: String,
        region: String,
        account: Option<String>,
        key_state: Option<String>,
        error: String,
    },
    /// `drift_detected` for a standard key: while latched, a listed key seen `Enabled` is
    /// disabled again.
    #[serde(rename = "drift_detected")]
    KeyDriftDetected {
        key_id: String,
        region: String,
        key_state: String,
    },
    /// Written by the writer itself: a torn last line (a crash in mid-write) was cut off the
    /// file. `torn_bytes` holds its bytes escaped (`\xNN`, `\\`, `\"`, `\n` …, reversible).
    AuditRecovered {
        torn_bytes: String,
        torn_sha256: String,
        torn_len: usize,
    },
    /// Written by the writer itself: the in-memory queue (used while the file cannot be written)
    /// was full, and this many records were dropped from it. They still went to tracing.
    AuditRecordsLost {
        count: u64,
    },
    /// The latch file vanished (or became unreadable as a latch) without a `rearm`: the daemon
    /// wrote it back from memory and keeps enforcing.
    LatchTampered {
        detail: String,
    },
    /// Written by the writer itself as the first record of a file that replaced the one it was
    /// appending to (moved away, deleted or truncated): the chain head it knew before.
    AuditLogReplaced {
        previous_seq: u64,
        previous_line_sha256: String,
    },
    /// A CloudWatch poll failed or a watched alarm is missing (never fires by itself).
    AlarmPollFailed {
        alarm_names: Vec<String>,
        region: String,
        error: String,
    },
    /// An enforcement round while latched could not check or disconnect this store (one record
    /// per failing store per round; the next round tries again).
    EnforcementFailed {
        lockdown_id: String,
        /// The store's id, or `name:<name>` while its name could not be resolved.
        key_store_id: String,
        region: String,
        account: Option<String>,
        connection_state: Option<String>,
        error: String,
    },
    /// A queue message that does not match, is not JSON or is too big: deleted, never a trip.
    TriggerIgnored {
        source: TriggerSource,
        reason: String,
    },
    /// A watched queue cannot be read (once per change; the watcher keeps retrying).
    QueuePollFailed {
        queue_url: String,
        error: String,
    },
    /// One attempt to deliver a notification (DESIGN.md §9) to one sink. `notified` names the
    /// event notified (`event` is this record's own).
    NotificationSent {
        /// `sns:<topic arn>` or `webhook:<scheme://host[:port]>` (never a path or query, which
        /// may hold a token).
        sink: String,
        notified: String,
        result: NotificationResult,
        /// SNS's MessageId, or the webhook's HTTP status.
        message_id: Option<String>,
        error: Option<String>,
        attempt: u32,
    },
    /// The daemon stopped being healthy (audit log unwritable, every alarm unreadable,
    /// enforcement failing, main loop stalled): the heartbeat stops until `healthy`.
    Unhealthy {
        reasons: Vec<String>,
    },
    /// Healthy again after `unhealthy`.
    Healthy,
}

/// How one notification attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationResult {
    Delivered,
    Failed,
}

/// Where the daemon and the engine send events. The writer implements it; tests use a
/// `Vec`-backed fake. `record` queues the event at once (records are written in the order they
/// are recorded) and returns a [`Recorded`] future that resolves once the record is durable
/// (fsync'd) or, if the log cannot be written, once it is held in memory and the failure
/// reported: a kill switch is never stopped by its own logging.
pub trait AuditSink: Send + Sync {
    fn record(&self, event: Event) -> Recorded;
}

/// The acknowledgement of one record: a future that resolves once the record is durable or
/// held in memory. Dropping it (or [`Recorded::queued`]) does not withdraw the record: it is
/// written in order with the others, so once a later record is durable, this one is too.
#[must_use = "await it for durability, or call `.queued()` to go on without waiting"]
#[derive(Debug)]
pub struct Recorded(Option<tokio::sync::oneshot::Receiver<()>>);

impl Recorded {
    /// Already durable (or a sink that keeps nothing on disk).
    pub fn done() -> Recorded {
        Recorded(None)
    }

    pub(crate) fn pending(ack: tokio::sync::oneshot::Receiver<()>) -> Recorded {
        Recorded(Some(ack))
    }

    /// Go on without waiting: the record is queued and written in order.
    pub fn queued(self) {}

    /// Block the calling thread until the record is durable or held. Outside async code only
    /// (the CLI, tests): async code awaits instead.
    pub fn wait(self) {
        if let Some(ack) = self.0 {
            let _ = ack.blocking_recv();
        }
    }
}

impl std::future::Future for Recorded {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        match self.0.as_mut() {
            None => std::task::Poll::Ready(()),
            // A writer gone (its thread ended) acknowledges too: nothing more will happen.
            Some(ack) => std::pin::Pin::new(ack).poll(cx).map(|_| ()),
        }
    }
}

/// Why the audit log could not be written or verified.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot create the audit log directory {path}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open audit log {path}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot lock audit log {path}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit log {path}: another writer held its lock for more than {waited:?}")]
    LockTimeout { path: PathBuf, waited: Duration },
    #[error("cannot read audit log {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "audit log {path}: {reason}; refusing to append to it (move the file aside to start a new chain)"
    )]
    ForeignTail { path: PathBuf, reason: String },
    #[error("cannot append to audit log {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot fsync audit log {path}")]
    Sync {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The chain is broken: `line` is the first line (1-based) that does not verify.
    #[error("audit log {path}: line {line}: {reason}")]
    Broken {
        path: PathBuf,
        line: u64,
        reason: String,
    },
}

/// The event's name and its fields, with credentials redacted from every string.
fn event_fields(event: &Event) -> (String, Map<String, Value>) {
    // Serializing our own enum of strings, numbers and JSON values to a Value cannot fail, and an
    // internally tagged enum always serializes to an object with its tag.
    let value = serde_json::to_value(event).expect("an audit event always serializes");
    let Value::Object(mut fields) = value else {
        unreachable!("an internally tagged enum serializes to a JSON object")
    };
    let name = match fields.remove("event") {
        Some(Value::String(name)) => name,
        _ => unreachable!("the serde tag is always a string"),
    };
    for value in fields.values_mut() {
        redact::redact_value(value);
    }
    (name, fields)
}

/// The helpers the tests of every file here share (a sample log, reading a log back).
#[cfg(test)]
mod test_support;

#[cfg(test)]
mod tests {
    use super::test_support::drift;
    use super::*;

    /// One of each event: the exhaustive match below fails to compile when a variant is added
    /// without being listed here.
    fn one_of_each_event() -> Vec<Event> {
        let events = vec![
            Event::DaemonStarted,
            Event::DaemonStopped,
            Event::PolicyLoaded,
            Event::PolicyRejected {
                error: String::new(),
            },
            Event::TriggerFired {
                source: TriggerSource::File,
                detail: Value::Null,
                latched: true,
            },
            Event::TriggerRejected {
                source: TriggerSource::File,
                reason: String::new(),
            },
            Event::LockdownStarted {
                lockdown_id: String::new(),
                key_stores: vec![],
                keys: vec![Value::Null],
                dry_run: true,
            },
            Event::DisconnectRequested {
                lockdown_id: String::new(),
                key_store_id: String::new(),
                region: String::new(),
                account: None,
                attempt: 1,
            },
            Event::DisconnectResult {
                lockdown_id: String::new(),
                key_store_id: String::new(),
                region: String::new(),
                result: DisconnectResult::AlreadyDisconnected,
                request_id: None,
                error: None,
            },
            Event::StoreVerified {
                lockdown_id: String::new(),
                key_store_id: String::new(),
                region: String::new(),
                connection_state: String::new(),
            },
            Event::LockdownFinished {
                lockdown_id: String::new(),
                outcome: LockdownOutcome::Partial,
                verified: 0,
                keys_verified: 0,
                failed: vec![
                    Failed::Store(FailedStore {
                        key_store_id: String::new(),
                        region: String::new(),
                        connection_state: None,
                        error: None,
                    }),
                    Failed::Key(FailedKey {
                        key_id: String::new(),
                        region: String::new(),
                        key_state: None,
                        error: None,
                    }),
                ],
                elapsed_ms: 0,
            },
            Event::KeyDisableRequested {
                lockdown_id: String::new(),
                key_id: String::new(),
                region: String::new(),
                account: None,
                attempt: 1,
            },
            Event::KeyDisableResult {
                lockdown_id: String::new(),
                key_id: String::new(),
                region: String::new(),
                result: KeyDisableResult::AlreadyDisabled,
                request_id: None,
                error: None,
            },
            Event::KeyVerified {
                lockdown_id: String::new(),
                key_id: String::new(),
                region: String::new(),
                key_state: String::new(),
            },
            Event::KeyDriftDetected {
                key_id: String::new(),
                region: String::new(),
                key_state: String::new(),
            },
            Event::KeyEnforcementFailed {
                lockdown_id: String::new(),
                key_id: String::new(),
                region: String::new(),
                account: None,
                key_state: None,
                error: String::new(),
            },
            drift(""),
            Event::Rearmed {
                reason: String::new(),
                by: String::new(),
            },
            Event::AuditRecovered {
                torn_bytes: String::new(),
                torn_sha256: String::new(),
                torn_len: 0,
            },
            Event::AuditRecordsLost { count: 0 },
            Event::LatchTampered {
                detail: String::new(),
            },
            Event::AuditLogReplaced {
                previous_seq: 0,
                previous_line_sha256: String::new(),
            },
            Event::AlarmPollFailed {
                alarm_names: vec![],
                region: String::new(),
                error: String::new(),
            },
            Event::EnforcementFailed {
                lockdown_id: String::new(),
                key_store_id: String::new(),
                region: String::new(),
                account: None,
                connection_state: None,
                error: String::new(),
            },
            Event::TriggerIgnored {
                source: TriggerSource::Queue,
                reason: String::new(),
            },
            Event::QueuePollFailed {
                queue_url: String::new(),
                error: String::new(),
            },
            Event::NotificationSent {
                sink: String::new(),
                notified: String::new(),
                result: NotificationResult::Failed,
                message_id: None,
                error: None,
                attempt: 1,
            },
            Event::Unhealthy { reasons: vec![] },
            Event::Healthy,
        ];
        for event in &events {
            match event {
                Event::DaemonStarted
                | Event::DaemonStopped
                | Event::PolicyLoaded
                | Event::PolicyRejected { .. }
                | Event::TriggerFired { .. }
                | Event::TriggerRejected { .. }
                | Event::LockdownStarted { .. }
                | Event::DisconnectRequested { .. }
                | Event::DisconnectResult { .. }
                | Event::StoreVerified { .. }
                | Event::LockdownFinished { .. }
                | Event::DriftDetected { .. }
                | Event::Rearmed { .. }
                | Event::AuditRecovered { .. }
                | Event::AuditRecordsLost { .. }
                | Event::LatchTampered { .. }
                | Event::AuditLogReplaced { .. }
                | Event::AlarmPollFailed { .. }
                | Event::EnforcementFailed { .. }
                | Event::TriggerIgnored { .. }
                | Event::QueuePollFailed { .. }
                | Event::KeyDisableRequested { .. }
                | Event::KeyDisableResult { .. }
                | Event::KeyVerified { .. }
                | Event::KeyDriftDetected { .. }
                | Event::KeyEnforcementFailed { .. }
                | Event::NotificationSent { .. }
                | Event::Unhealthy { .. }
                | Event::Healthy => {}
            }
        }
        events
    }

    #[test]
    fn no_event_field_shadows_a_common_field_or_names_a_secret() {
        fn names(value: &Value, out: &mut Vec<String>) {
            match value {
                Value::Object(map) => map.iter().for_each(|(key, value)| {
                    out.push(key.clone());
                    names(value, out);
                }),
                Value::Array(items) => items.iter().for_each(|item| names(item, out)),
                _ => {}
            }
        }
        for event in one_of_each_event() {
            let (name, fields) = event_fields(&event);
            let mut keys = Vec::new();
            names(&Value::Object(fields), &mut keys);
            for key in keys {
                assert!(
                    !COMMON_FIELDS.contains(&key.as_str()),
                    "{name}.{key} shadows a common field"
                );
                for word in ["secret", "token", "password", "credential", "access_key"] {
                    assert!(
                        !key.contains(word),
                        "{name}.{key} looks like it carries a credential"
                    );
                }
            }
        }
    }
}
