//! The disconnect + verify engine: resolve names, disconnect every listed store concurrently
//! (paced per account, region and operation), retry with jittered backoff until the deadline,
//! verify with one paginated DescribeCustomKeyStores per account+region per round, and return a
//! typed [`LockdownReport`]. It talks to AWS only through [`KeyStoreControl`], records through
//! [`AuditSink`], and knows nothing of triggers, latches or file paths.

use std::sync::Arc;
use std::time::Duration;

use crate::audit::AuditSink;
use crate::aws::{ConnectionState, KeyStoreControl};
use crate::policy::{KeyStoreSpec, LockdownSettings};

/// What to lock down.
#[derive(Debug, Clone)]
pub struct LockdownRequest {
    /// Unique per lockdown; carried by every audit record of it.
    pub lockdown_id: String,
    pub key_stores: Vec<KeyStoreSpec>,
    /// Resolve and describe only; send no Disconnect.
    pub dry_run: bool,
}

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
    pub error: Option<String>,
    /// Disconnect attempts sent.
    pub attempts: u32,
    pub request_ids: Vec<String>,
    /// From the start of the lockdown to verification (or the deadline).
    pub elapsed: Duration,
}

/// The result of one lockdown: one outcome per listed store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockdownReport {
    pub lockdown_id: String,
    pub dry_run: bool,
    pub stores: Vec<StoreOutcome>,
    pub elapsed: Duration,
}

impl LockdownReport {
    /// Every store verified DISCONNECTED (never true for a dry run with a store still connected).
    pub fn complete(&self) -> bool {
        self.stores.iter().all(|s| s.verified)
    }
}

/// The engine. Holds the shared pacers (one token bucket per account, region and operation) and
/// the name → id cache, so lockdowns and enforcement rounds share the KMS quota.
pub struct Engine<C> {
    control: Arc<C>,
    settings: LockdownSettings,
}

impl<C: KeyStoreControl> Engine<C> {
    pub fn new(control: Arc<C>, settings: LockdownSettings) -> Self {
        Engine { control, settings }
    }

    /// Run one lockdown to completion or its `verify_timeout`. Never returns early because one
    /// store failed.
    pub async fn lockdown(&self, request: &LockdownRequest, audit: &dyn AuditSink) -> LockdownReport {
        let _ = (&self.control, &self.settings, audit);
        unimplemented!("lockdown engine: issue 4 ({})", request.lockdown_id)
    }
}
