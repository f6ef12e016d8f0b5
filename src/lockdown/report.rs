//! What the engine hands back: the typed results of a lockdown ([`LockdownReport`],
//! [`StoreOutcome`]), of an enforcement round ([`EnforceReport`]) and of a describe
//! ([`StoreStatus`]), the [`LockdownError`] a store fails with, and the progress steps of a live
//! view. Errors stay typed here; they become text only where they are printed or audited
//! ([`LockdownError::to_line`]). Pure data: no AWS calls, no pacing, no audit writes.

use std::sync::Arc;
use std::time::Duration;

use crate::audit::LockdownOutcome;
use crate::aws::{AwsError, ErrorKind, KeyStore};
use crate::model::{ConnectionState, KeySpec, KeyState, KeyStoreSpec};

/// How one store ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOutcome {
    pub spec: KeyStoreSpec,
    /// Resolved id (`None` if a name could not be resolved).
    pub custom_key_store_id: Option<String>,
    pub account: Option<String>,
    /// The last state KMS reported.
    pub connection_state: Option<ConnectionState>,
    pub verified: bool,
    /// Why the store is not verified (or, for a dry run, could not be described).
    pub error: Option<LockdownError>,
    /// Disconnect attempts sent.
    pub attempts: u32,
    pub request_ids: Vec<String>,
    /// For a store listed by name: the id the name belonged to in an earlier Describe, sent a
    /// Disconnect before verification showed the name now belongs to `custom_key_store_id` (the
    /// store was renamed and another took its name). That store is not in the policy.
    pub stale_id: Option<String>,
    /// From the start of the lockdown to verification (or the deadline).
    pub elapsed: Duration,
}

/// The result of one lockdown: one outcome per listed store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockdownReport {
    pub lockdown_id: String,
    pub dry_run: bool,
    pub stores: Vec<StoreOutcome>,
    /// Second round: one outcome per listed standard key.
    pub keys: Vec<KeyOutcome>,
    pub elapsed: Duration,
}

impl LockdownReport {
    /// Every store verified DISCONNECTED and every key Disabled (never true for a dry run with a
    /// store still connected or a key still enabled).
    pub fn complete(&self) -> bool {
        self.stores.iter().all(|s| s.verified) && self.keys.iter().all(|k| k.verified)
    }

    /// How the audit log names this ending.
    pub fn outcome(&self) -> LockdownOutcome {
        if self.dry_run {
            LockdownOutcome::DryRun
        } else if self.complete() {
            LockdownOutcome::Complete
        } else {
            LockdownOutcome::Partial
        }
    }
}

/// How one standard key ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOutcome {
    pub spec: KeySpec,
    /// The key's id or ARN as DisableKey takes it (`None` if an alias could not be resolved).
    pub key_id: Option<String>,
    pub account: Option<String>,
    /// The last `KeyState` KMS reported.
    pub key_state: Option<KeyState>,
    pub verified: bool,
    pub error: Option<LockdownError>,
    /// DisableKey attempts sent.
    pub attempts: u32,
    pub request_ids: Vec<String>,
    /// From the start of the lockdown to verification (or the deadline).
    pub elapsed: Duration,
}

/// One standard key as KMS describes it now (for `status` and `check --online`).
#[derive(Debug, Clone)]
pub struct KeyStatus {
    pub spec: KeySpec,
    pub account: Option<String>,
    pub metadata: Option<crate::aws::KeyMetadata>,
    pub error: Option<LockdownError>,
}

/// One standard key seen by an enforcement round.
#[derive(Debug, Clone)]
pub struct EnforcedKey {
    pub spec: KeySpec,
    pub key_id: Option<String>,
    pub account: Option<String>,
    pub key_state: Option<KeyState>,
    /// KMS reported it Disabled (or pending deletion) this round.
    pub verified: bool,
    /// Seen `Enabled`: disabled again.
    pub drift: bool,
    pub error: Option<String>,
}

/// Why a store could not be resolved, described, disconnected or verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockdownError {
    #[error("custom key store {key_store} not found in account {account}, region {region}")]
    NotFound {
        key_store: String,
        account: String,
        region: String,
    },
    #[error("custom key store {key_store} in {region}")]
    Aws {
        key_store: String,
        region: String,
        #[source]
        source: AwsError,
    },
    #[error(
        "custom key store {key_store} in {region} not DISCONNECTED within {verify_timeout:?} (last state {connection_state}{last_error})"
    )]
    NotVerified {
        key_store: String,
        region: String,
        connection_state: String,
        verify_timeout: Duration,
        /// `; last error: …` or empty.
        last_error: String,
    },
    #[error("KMS key {key} in {region}")]
    KeyAws {
        key: String,
        region: String,
        #[source]
        source: AwsError,
    },
    #[error(
        "KMS key {key} in {region} is AWS managed: AWS managed keys cannot be disabled by anyone; remove it from keys"
    )]
    AwsManagedKey { key: String, region: String },
    #[error(
        "KMS key {key} in {region} not Disabled within {verify_timeout:?} (last state {key_state}{last_error})"
    )]
    KeyNotVerified {
        key: String,
        region: String,
        key_state: String,
        verify_timeout: Duration,
        /// `; last error: …` or empty.
        last_error: String,
    },
}

impl LockdownError {
    /// The AWS error kind behind this error, if AWS refused something.
    pub fn aws_kind(&self) -> Option<ErrorKind> {
        match self {
            LockdownError::Aws { source, .. } | LockdownError::KeyAws { source, .. } => {
                Some(source.kind)
            }
            LockdownError::NotFound { .. } => Some(ErrorKind::NotFound),
            LockdownError::AwsManagedKey { .. } => Some(ErrorKind::AccessDenied),
            LockdownError::NotVerified { .. } | LockdownError::KeyNotVerified { .. } => None,
        }
    }

    /// The error with its cause, in one line (for reports and audit records).
    pub fn to_line(&self) -> String {
        match self {
            LockdownError::Aws { source, .. } | LockdownError::KeyAws { source, .. } => {
                format!("{self}: {source}")
            }
            _ => self.to_string(),
        }
    }
}

/// One store as KMS describes it now (for `status`, dry runs and `check --online`).
#[derive(Debug, Clone)]
pub struct StoreStatus {
    pub spec: KeyStoreSpec,
    pub account: Option<String>,
    pub key_store: Option<KeyStore>,
    pub error: Option<LockdownError>,
}

/// One store seen by an enforcement round.
#[derive(Debug, Clone)]
pub struct EnforcedStore {
    pub spec: KeyStoreSpec,
    pub custom_key_store_id: Option<String>,
    pub account: Option<String>,
    /// The state KMS reported at the start of the round.
    pub connection_state: Option<ConnectionState>,
    /// KMS reported DISCONNECTED this round.
    pub verified: bool,
    /// Seen in a state other than DISCONNECTED or DISCONNECTING: disconnected again.
    pub drift: bool,
    pub error: Option<String>,
}

/// The result of one enforcement round.
#[derive(Debug, Clone)]
pub struct EnforceReport {
    pub stores: Vec<EnforcedStore>,
}

impl EnforceReport {
    /// Stores found reconnected (or connecting, or failed) and disconnected again.
    pub fn drifted(&self) -> usize {
        self.stores.iter().filter(|s| s.drift).count()
    }

    /// Stores that could not be described or disconnected this round.
    pub fn errors(&self) -> usize {
        self.stores.iter().filter(|s| s.error.is_some()).count()
    }
}

/// A step of a lockdown, for a live progress view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressStep {
    DisconnectRequested { attempt: u32 },
    Accepted,
    AlreadyDisconnected,
    Retrying { error: String },
    State(ConnectionState),
    Verified,
    Failed { error: String },
}

/// A progress report for one store (its id, or its name before resolution).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressEvent {
    pub key_store: String,
    pub region: String,
    pub step: ProgressStep,
}

/// Receives every [`ProgressEvent`]; must return quickly.
pub type ProgressFn = Arc<dyn Fn(&ProgressEvent) + Send + Sync>;
