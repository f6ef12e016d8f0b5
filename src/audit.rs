//! The audit trail (DESIGN.md §5): the event vocabulary ([`Event`]; field names are spelled
//! nowhere else), the hash-chained, fsync'd, flock'd JSON Lines writer ([`AuditLog`]) and the
//! verifier. It owns the audit file and nothing else: it never calls AWS and never decides
//! anything about a lockdown; it records what the daemon and the engine tell it.

use serde::Serialize;

/// Who or what pulled the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerSource {
    File,
    Signal,
    Alarm,
    Cli,
    /// The daemon started with the latch set and resumed the lockdown.
    Resume,
}

/// How one Disconnect call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectResult {
    Accepted,
    AlreadyDisconnected,
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

/// Every event the audit log records, with its extra fields. The common fields (`seq`, `ts`,
/// `event`, `prev`, `host`, `pid`, `policy_sha256`) are added by the writer.
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
        /// The policy's key stores as written (ids or names, with region).
        key_stores: Vec<serde_json::Value>,
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
        failed: Vec<FailedStore>,
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
    AuditRecovered {
        torn_bytes: String,
        torn_sha256: String,
        torn_len: usize,
    },
    /// A CloudWatch poll failed or a watched alarm is missing (never fires by itself).
    AlarmPollFailed {
        alarm_names: Vec<String>,
        region: String,
        error: String,
    },
}

/// Where the daemon and the engine send events. The writer implements it; tests use a
/// `Vec`-backed fake. `record` returns once the record is durable (fsync'd) or, if the log
/// cannot be written, once it is queued in memory and the failure reported: a kill switch is
/// never stopped by its own logging.
pub trait AuditSink: Send + Sync {
    fn record(&self, event: Event);
}

/// Why the audit log could not be opened, written or verified.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Placeholder until the audit issue lands.
    #[error("audit log {path}: not yet implemented")]
    NotImplemented { path: std::path::PathBuf },
}

/// The hash-chained JSON Lines writer. Placeholder API until issue 5 lands:
/// `AuditLog::open(path, policy_sha256)` continues an existing chain (recovering a torn last
/// line), and implements [`AuditSink`].
pub struct AuditLog {
    _private: (),
}

impl AuditLog {
    /// Open (or create, 0600 in a 0700 directory) the log at `path` and continue its chain.
    /// Never fails because the file cannot be written: the log then keeps records in memory and
    /// reports itself unhealthy. Fails only for a chain it cannot continue safely.
    pub fn open(path: &std::path::Path, policy_sha256: &str) -> Result<AuditLog, AuditError> {
        let _ = policy_sha256;
        Err(AuditError::NotImplemented { path: path.to_path_buf() })
    }

    /// False once any record could not be made durable (it is then held in memory).
    pub fn healthy(&self) -> bool {
        true
    }
}

impl AuditSink for AuditLog {
    fn record(&self, _event: Event) {}
}
