//! The disconnect + verify engine: resolve names, disconnect every listed store concurrently
//! (paced per account, region and operation, see [`pacing`]), verify with one paginated
//! DescribeCustomKeyStores per account+region per round (the last one at the deadline), send
//! again between rounds the Disconnects refused with a retryable error, and return a typed
//! [`LockdownReport`] ([`report`]). The account is looked up alongside, never waited for. It
//! also re-enforces a latched lockdown ([`Engine::enforce`], in [`enforce`]) and describes stores
//! without touching them ([`Engine::describe`]). It talks to AWS only through
//! [`KeyStoreControl`], records through [`AuditSink`], and knows nothing of triggers, latches or
//! file paths. `all.rs` expands `all: true` entries and finds unprotected stores; `keys.rs`
//! disables and verifies standard KMS keys ([`Engine::lockdown_with_keys`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::{Instant, sleep_until, timeout_at};
use tracing::{info, warn};

use crate::audit::{AuditSink, DisconnectResult, Event, Failed, FailedStore};
use crate::aws::{AwsError, DisconnectAccepted, ErrorKind, KeyStore, KeyStoreControl};
use crate::model::{ConnectionState, KeySpec, KeyStoreSelector, KeyStoreSpec, Target};
use crate::policy::LockdownSettings;

mod account;
mod all;
mod enforce;
mod keys;
mod pacing;
mod report;

pub use all::UnprotectedStore;
use pacing::{Operation, Pacer};
pub use report::{
    EnforceReport, EnforcedKey, EnforcedStore, KeyOutcome, KeyStatus, LockdownError,
    LockdownReport, ProgressEvent, ProgressFn, ProgressStep, StoreOutcome, StoreStatus,
};

/// Verification polls in the first second after the Disconnects: KMS usually reports
/// DISCONNECTING at once and DISCONNECTED within a second or two, and a store counts as verified
/// only when a Describe sees it, so look often while the Describe bucket still has its burst:
/// 8 polls in that second, and the bucket (5 + the ~4.5 it earns back) never runs dry, so the
/// polls never meet the quota's edge where arrival jitter means throttling.
const VERIFY_POLL_FAST: Duration = Duration::from_millis(125);
const VERIFY_FAST_FOR: Duration = Duration::from_secs(1);
/// Then one Describe per account+region every 250 ms, inside the 5/s quota with room for the
/// other callers (enforcement, `status`), up to [`VERIFY_STEADY_FOR`] after the Disconnects.
const VERIFY_POLL_STEADY: Duration = Duration::from_millis(250);
const VERIFY_STEADY_FOR: Duration = Duration::from_secs(5);
/// After that each poll waits this much longer than the last (375, 560, 840 ms, …): gentle on
/// the quota for a store that takes its time.
const VERIFY_POLL_GROWTH: f64 = 1.5;
/// Slowest verification poll: one Describe per account+region every 2 s stays far inside the
/// 5/s Describe quota, even with several lockdown targets in one account.
const VERIFY_POLL_MAX: Duration = Duration::from_secs(2);
/// KMS is eventually consistent: right after an accepted Disconnect, Describe may still say
/// CONNECTED. Only a store that stays connected longer than this is disconnected again.
const CONSISTENCY_GRACE: Duration = Duration::from_secs(2);

/// Attempts of a store's first Disconnect in a lockdown before verification takes over.
const FIRST_ATTEMPTS: u32 = 3;
/// First retry pause after throttling or a transient error (doubled per attempt, jittered).
const RETRY_BASE: Duration = Duration::from_millis(100);
/// Longest retry pause: a throttling storm must not push a retry past many verification rounds.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// The last verification poll is made at the deadline itself; this is how long that one
/// paginated Describe (with its pacing and retries) may run past it, so a store that reached
/// DISCONNECTED in the final moments is verified rather than reported failed.
const FINAL_CHECK_ALLOWANCE: Duration = Duration::from_secs(1);

/// What to lock down.
#[derive(Debug, Clone)]
pub struct LockdownRequest {
    /// Unique per lockdown; carried by every audit record of it.
    pub lockdown_id: String,
    pub key_stores: Vec<KeyStoreSpec>,
    /// Resolve and describe only; send no Disconnect.
    pub dry_run: bool,
}

/// Where a store is in a lockdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Needs a Disconnect (never sent, refused with a retryable error, or needed again).
    Pending,
    /// KMS accepted a Disconnect (or said it is already disconnecting/disconnected).
    Requested,
    Verified,
    Failed,
}

/// A store's progress through one lockdown.
struct StoreState {
    /// Position in the request, to report in the policy's order.
    index: usize,
    spec: KeyStoreSpec,
    custom_key_store_id: Option<String>,
    phase: Phase,
    /// When KMS last accepted a Disconnect for it (eventual-consistency grace starts here).
    accepted_at: Option<Instant>,
    /// The cached id a name-listed store was followed away from (see [`StoreOutcome`]).
    stale_id: Option<String>,
    connection_state: Option<ConnectionState>,
    attempts: u32,
    request_ids: Vec<String>,
    /// The last error: final when `phase` is Failed, else the last retried one.
    error: Option<LockdownError>,
    finished_at: Option<Instant>,
}

impl StoreState {
    /// A store not yet resolved, sent nothing, seen in no state.
    fn new(index: usize, spec: KeyStoreSpec) -> Self {
        StoreState {
            index,
            spec,
            custom_key_store_id: None,
            phase: Phase::Pending,
            accepted_at: None,
            stale_id: None,
            connection_state: None,
            attempts: 0,
            request_ids: Vec::new(),
            error: None,
            finished_at: None,
        }
    }

    fn label(&self) -> String {
        match (&self.custom_key_store_id, &self.spec.selector) {
            (Some(id), _) => id.clone(),
            (None, KeyStoreSelector::Id(id)) => id.clone(),
            (None, KeyStoreSelector::Name(name)) => name.clone(),
            (None, KeyStoreSelector::All) => "all".to_string(),
        }
    }

    fn is_final(&self) -> bool {
        matches!(self.phase, Phase::Verified | Phase::Failed)
    }
}

/// What every step of one lockdown or enforcement round shares.
struct Run<'a> {
    lockdown_id: &'a str,
    deadline: Instant,
    audit: &'a dyn AuditSink,
}

/// The engine. Holds the shared pacers (see [`pacing`]) and the name → id cache, so lockdowns
/// and enforcement rounds share the KMS quota.
pub struct Engine<C> {
    control: Arc<C>,
    settings: LockdownSettings,
    /// Shared by every lockdown and enforcement round of this engine.
    pacer: Pacer,
    /// DescribeKey requests of the standard keys (see [`keys::DESCRIBE_KEY_RATE`]).
    key_pacer: Pacer,
    /// (target, name) → custom key store id, from earlier Describes.
    names: Mutex<HashMap<(Target, String), String>>,
    /// Target without a role → its account, from an earlier GetCallerIdentity (audit and
    /// reports only).
    accounts: Mutex<HashMap<Target, String>>,
    progress: Option<ProgressFn>,
}

impl<C: KeyStoreControl> Engine<C> {
    pub fn new(control: Arc<C>, settings: LockdownSettings) -> Self {
        Engine {
            control,
            pacer: Pacer::new(settings.rate_limit),
            key_pacer: Pacer::new(keys::DESCRIBE_KEY_RATE),
            settings,
            names: Mutex::new(HashMap::new()),
            accounts: Mutex::new(HashMap::new()),
            progress: None,
        }
    }

    /// The AWS side the engine talks to (e.g. to warm up credentials or read alarms).
    pub fn control(&self) -> &Arc<C> {
        &self.control
    }

    /// Report every step of every store to `progress` (e.g. a live terminal view).
    pub fn with_progress(mut self, progress: ProgressFn) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Run one lockdown of the request's key stores to completion or its `verify_timeout`.
    /// Never returns early because one store failed.
    pub async fn lockdown(
        &self,
        request: &LockdownRequest,
        audit: &dyn AuditSink,
    ) -> LockdownReport {
        self.lockdown_with_keys(request, &[], audit).await
    }

    /// Run one lockdown of the request's key stores and of the standard `keys` (DisableKey,
    /// verified Disabled, see [`keys`]), all at once, to completion or `verify_timeout`. Never
    /// returns early because one store or key failed.
    pub async fn lockdown_with_keys(
        &self,
        request: &LockdownRequest,
        keys: &[KeySpec],
        audit: &dyn AuditSink,
    ) -> LockdownReport {
        let started = Instant::now();
        let run = Run {
            lockdown_id: &request.lockdown_id,
            deadline: started + self.settings.verify_timeout,
            audit,
        };
        // `all: true` entries are resolved first, so that `lockdown_started` lists their stores.
        let expanded = self.expand_all(&request.key_stores, run.deadline).await;
        audit
            .record(Event::LockdownStarted {
                lockdown_id: request.lockdown_id.clone(),
                key_stores: expanded
                    .specs
                    .iter()
                    .zip(&expanded.from_all)
                    .map(|(spec, from_all)| started_json(spec, *from_all))
                    .collect(),
                keys: keys.iter().map(keys::key_json).collect(),
                dry_run: request.dry_run,
            })
            // Written in order: the first `disconnect_requested`, awaited before its send,
            // makes this durable in the same batch (one fsync before the first Disconnect).
            .queued();
        info!(lockdown_id = %request.lockdown_id, key_stores = expanded.specs.len(), dry_run = request.dry_run, "lockdown started");

        let groups = group_by_target(&expanded.specs);
        let runs = groups.into_iter().map(|(target, stores)| {
            let run = &run;
            async move {
                let states = stores
                    .into_iter()
                    .map(|(index, spec)| StoreState::new(index, spec))
                    .collect();
                self.lockdown_target(&target, states, request.dry_run, run)
                    .await
            }
        });
        let (store_runs, key_outcomes) = tokio::join!(
            join_all(runs),
            self.lockdown_keys(keys, request.dry_run, &run, started)
        );
        let mut outcomes: Vec<(usize, StoreOutcome)> = store_runs
            .into_iter()
            .flat_map(|(account, states)| {
                states
                    .into_iter()
                    .map(move |s| (s.index, outcome(s, account.clone(), started)))
            })
            .collect();
        outcomes.sort_by_key(|(index, _)| *index);
        let report = LockdownReport {
            lockdown_id: request.lockdown_id.clone(),
            dry_run: request.dry_run,
            stores: outcomes.into_iter().map(|(_, o)| o).collect(),
            keys: key_outcomes,
            elapsed: started.elapsed(),
        };
        record_finished(&report, audit).await;
        report
    }

    /// Describe every listed store without changing anything: one paginated Describe per target.
    /// The account is looked up alongside, for the statuses only.
    pub async fn describe(&self, key_stores: &[KeyStoreSpec]) -> Vec<StoreStatus> {
        let deadline = Instant::now() + self.settings.verify_timeout;
        let groups = group_by_target(key_stores);
        let describes = groups.into_iter().map(|(target, stores)| async move {
            let listed = self
                .alongside_account_lookup(
                    &target,
                    deadline,
                    self.describe_all(&target, deadline, deadline),
                )
                .await;
            let account = self.known_account(&target);
            stores
                .into_iter()
                .flat_map(|(index, spec)| {
                    if spec.selector == KeyStoreSelector::All {
                        let statuses = all::statuses(&spec, account.as_ref(), &listed);
                        return statuses.into_iter().map(|s| (index, s)).collect();
                    }
                    let (key_store, error) = match &listed {
                        Ok(listed) => match find(listed, &spec.selector) {
                            Some(store) => (Some(store.clone()), None),
                            None => (None, Some(not_found(&spec, account.as_deref()))),
                        },
                        Err(err) => (None, Some(aws_error(&spec, err.clone()))),
                    };
                    if let (Some(store), KeyStoreSelector::Name(name)) =
                        (&key_store, &spec.selector)
                    {
                        self.remember_name(&target, name, &store.custom_key_store_id);
                    }
                    vec![(
                        index,
                        StoreStatus {
                            spec,
                            account: account.clone(),
                            key_store,
                            error,
                        },
                    )]
                })
                .collect::<Vec<_>>()
        });
        let mut statuses: Vec<(usize, StoreStatus)> =
            join_all(describes).await.into_iter().flatten().collect();
        statuses.sort_by_key(|(index, _)| *index);
        statuses.into_iter().map(|(_, s)| s).collect()
    }

    /// Lock down the stores of one target: names, Disconnects, verification. Its account is
    /// looked up alongside, for the report and the audit log only: no Disconnect waits for STS.
    async fn lockdown_target(
        &self,
        target: &Target,
        stores: Vec<StoreState>,
        dry_run: bool,
        run: &Run<'_>,
    ) -> (Option<String>, Vec<StoreState>) {
        let work = self.lockdown_stores(target, stores, dry_run, run);
        let stores = self
            .alongside_account_lookup(target, run.deadline, work)
            .await;
        (self.known_account(target), stores)
    }

    async fn lockdown_stores(
        &self,
        target: &Target,
        stores: Vec<StoreState>,
        dry_run: bool,
        run: &Run<'_>,
    ) -> Vec<StoreState> {
        // Names need one Describe (cached afterwards); a dry run describes everything.
        let needs_describe = dry_run
            || stores.iter().any(|s| match &s.spec.selector {
                KeyStoreSelector::Id(_) => false,
                KeyStoreSelector::Name(name) => self.cached_name(target, name).is_none(),
                KeyStoreSelector::All => true,
            });
        let listed = if needs_describe {
            Some(self.describe_all(target, run.deadline, run.deadline).await)
        } else {
            None
        };
        let mut stores = self.expand_all_states(target, stores, listed.as_ref());
        for store in &mut stores {
            self.resolve(target, store, listed.as_ref());
        }

        if dry_run {
            for store in stores.iter_mut().filter(|s| s.phase != Phase::Failed) {
                self.dry_run_state(target, store, listed.as_ref());
            }
            return stores;
        }

        let disconnects = stores
            .iter_mut()
            .filter(|s| s.phase == Phase::Pending)
            .map(|store| self.disconnect_first(target, store, run));
        join_all(disconnects).await;

        self.verify(target, &mut stores, run).await;
        stores
    }

    /// The store's id: as listed, from the name cache, or from the Describe (`listed`, made
    /// when a name was not cached); a name no store carries fails the store.
    fn resolve(
        &self,
        target: &Target,
        store: &mut StoreState,
        listed: Option<&Result<Vec<KeyStore>, AwsError>>,
    ) {
        match (&store.spec.selector, listed) {
            // Expanded before (`expand_all_states`); what is left failed already.
            (KeyStoreSelector::All, _) => {}
            (KeyStoreSelector::Id(id), _) => store.custom_key_store_id = Some(id.clone()),
            (KeyStoreSelector::Name(name), None) => {
                store.custom_key_store_id = self.cached_name(target, name)
            }
            (KeyStoreSelector::Name(name), Some(Ok(listed))) => {
                match find(listed, &store.spec.selector) {
                    Some(found) => {
                        self.remember_name(target, name, &found.custom_key_store_id);
                        store.custom_key_store_id = Some(found.custom_key_store_id.clone());
                    }
                    None => {
                        let error = not_found(&store.spec, self.known_account(target).as_deref());
                        self.fail(store, error);
                    }
                }
            }
            (KeyStoreSelector::Name(_), Some(Err(err))) => {
                let error = aws_error(&store.spec, err.clone());
                self.fail(store, error);
            }
        }
    }

    /// A dry run's look at one resolved store: its state in the Describe, verified if it is
    /// DISCONNECTED already.
    fn dry_run_state(
        &self,
        target: &Target,
        store: &mut StoreState,
        listed: Option<&Result<Vec<KeyStore>, AwsError>>,
    ) {
        match listed {
            Some(Ok(listed)) => match store
                .custom_key_store_id
                .as_deref()
                .and_then(|id| find_id(listed, id))
            {
                Some(found) => {
                    store.connection_state = Some(found.connection_state.clone());
                    self.note(
                        store,
                        target,
                        ProgressStep::State(found.connection_state.clone()),
                    );
                    if found.connection_state == ConnectionState::Disconnected {
                        store.phase = Phase::Verified;
                    }
                }
                None => {
                    let error = not_found(&store.spec, self.known_account(target).as_deref());
                    self.fail(store, error);
                }
            },
            Some(Err(err)) => {
                let error = aws_error(&store.spec, err.clone());
                self.fail(store, error);
            }
            None => {}
        }
    }

    /// Poll one paginated Describe per round until every store is verified or failed; the last
    /// poll is at the deadline itself. Between polls, send the Disconnect again of every store
    /// that needs it (refused with a retryable error, or still or again connected).
    async fn verify(&self, target: &Target, stores: &mut [StoreState], run: &Run<'_>) {
        let started = Instant::now();
        let mut interval = VERIFY_POLL_FAST;
        while !stores.iter().all(StoreState::is_final) {
            let next_poll = (Instant::now() + interval).min(run.deadline);
            let last = next_poll >= run.deadline;
            sleep_until(next_poll).await;
            interval = poll_interval(started.elapsed(), interval);

            // Before the last round the rounds are the retries: a failing Describe must not hold
            // up sending again the Disconnects that need it.
            let (describe_deadline, retry_until) = if last {
                let end = run.deadline + FINAL_CHECK_ALLOWANCE;
                (end, end)
            } else {
                (run.deadline, Instant::now())
            };
            match self
                .describe_all(target, describe_deadline, retry_until)
                .await
            {
                Ok(listed) => self.record_states(target, stores, &listed, run).await,
                Err(err) if err.kind.is_retryable() => {
                    // Kept for the report; the next round describes again.
                    for store in stores.iter_mut().filter(|s| !s.is_final()) {
                        store.error = Some(aws_error(&store.spec, err.clone()));
                    }
                }
                Err(err) => {
                    for store in stores.iter_mut().filter(|s| !s.is_final()) {
                        let error = aws_error(&store.spec, err.clone());
                        self.fail(store, error);
                    }
                    break;
                }
            }
            if last {
                break;
            }
            let again = stores
                .iter_mut()
                .filter(|s| s.phase == Phase::Pending)
                .map(|store| self.disconnect_once(target, store, run));
            join_all(again).await;
        }

        for store in stores.iter_mut().filter(|s| !s.is_final()) {
            let error = LockdownError::NotVerified {
                key_store: store.label(),
                region: target.region.clone(),
                connection_state: store
                    .connection_state
                    .as_ref()
                    .map_or_else(|| "unknown".to_string(), |s| s.to_string()),
                verify_timeout: self.settings.verify_timeout,
                last_error: store
                    .error
                    .take()
                    .map(|e| format!("; last error: {}", e.to_line()))
                    .unwrap_or_default(),
            };
            self.fail(store, error);
        }
    }

    /// Take in one verification Describe: verify the DISCONNECTED stores, mark Pending those
    /// that need a Disconnect (again), fail those that are gone. A store listed by name is
    /// looked up by that name, so a cached id the name no longer belongs to is not verified.
    async fn record_states(
        &self,
        target: &Target,
        stores: &mut [StoreState],
        listed: &[KeyStore],
        run: &Run<'_>,
    ) {
        let now = Instant::now();
        for store in stores.iter_mut().filter(|s| !s.is_final()) {
            if !self.follow_name(target, store, listed) {
                let error = not_found(&store.spec, self.known_account(target).as_deref());
                self.fail(store, error);
                continue;
            }
            let Some(found) = store
                .custom_key_store_id
                .as_deref()
                .and_then(|id| find_id(listed, id))
            else {
                let error = not_found(&store.spec, self.known_account(target).as_deref());
                self.fail(store, error);
                continue;
            };
            let state = found.connection_state.clone();
            if store.connection_state.as_ref() != Some(&state) {
                self.note(store, target, ProgressStep::State(state.clone()));
            }
            store.connection_state = Some(state.clone());
            match state {
                ConnectionState::Disconnected => {
                    store.phase = Phase::Verified;
                    store.error = None;
                    store.finished_at = Some(now);
                    run.audit
                        .record(Event::StoreVerified {
                            lockdown_id: run.lockdown_id.to_string(),
                            key_store_id: found.custom_key_store_id.clone(),
                            region: target.region.clone(),
                            connection_state: state.to_string(),
                        })
                        .await;
                    self.note(store, target, ProgressStep::Verified);
                }
                // On its way (e.g. a Disconnect whose answer was lost): nothing to send.
                ConnectionState::Disconnecting => store.phase = Phase::Requested,
                // CONNECTED, CONNECTING, FAILED or unknown: disconnect again, unless KMS
                // accepted a Disconnect so recently that this may be a stale read.
                _ => {
                    let stale = store
                        .accepted_at
                        .is_some_and(|at| now.saturating_duration_since(at) < CONSISTENCY_GRACE);
                    if !stale {
                        store.phase = Phase::Pending;
                    }
                }
            }
        }
    }

    /// For a store listed by name, check the (possibly cached) id against the name in a fresh
    /// listing. The daemon lives long: a store may have been renamed since its name was cached
    /// and another taken the name. Then the store now carrying the name is the one to
    /// disconnect: switch to it (it needs a Disconnect unless it is already on its way) and
    /// update the cache. Returns false, and forgets the cached id, when no listed store has the
    /// name any more.
    fn follow_name(&self, target: &Target, store: &mut StoreState, listed: &[KeyStore]) -> bool {
        let KeyStoreSelector::Name(name) = &store.spec.selector else {
            return true;
        };
        let Some(named) = find(listed, &store.spec.selector) else {
            self.forget_name(target, name);
            return false;
        };
        if store.custom_key_store_id.as_deref() == Some(named.custom_key_store_id.as_str()) {
            return true;
        }
        warn!(
            key_store_name = %name,
            stale_id = store.custom_key_store_id.as_deref().unwrap_or("none"),
            key_store = %named.custom_key_store_id,
            region = %target.region,
            "the key store name now belongs to another store (renamed since it was cached): following the name"
        );
        self.remember_name(target, name, &named.custom_key_store_id);
        store.stale_id = store.custom_key_store_id.take();
        store.custom_key_store_id = Some(named.custom_key_store_id.clone());
        // Nothing was sent to this store yet: no consistency grace, no known state.
        store.phase = Phase::Pending;
        store.accepted_at = None;
        store.connection_state = None;
        true
    }

    /// Disconnect one store, retrying throttling and transient errors with jittered backoff
    /// until KMS accepts, says it is already disconnecting/disconnected, refuses for good, or
    /// the deadline passes.
    async fn disconnect(&self, target: &Target, store: &mut StoreState, run: &Run<'_>) {
        let mut retries = 0u32;
        loop {
            self.disconnect_once(target, store, run).await;
            if store.phase != Phase::Pending {
                return;
            }
            let pause = backoff(retries);
            retries += 1;
            if Instant::now() + pause >= run.deadline {
                return; // The caller reports the store with its last error.
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// A lockdown's first Disconnect of one store. Refused with a retryable error, it is sent
    /// again soon (paced: after a throttle the emptied bucket is the back-off), up to
    /// [`FIRST_ATTEMPTS`] in all; after that verification sends it again every round, so a
    /// store that keeps failing never holds up verifying the others.
    async fn disconnect_first(&self, target: &Target, store: &mut StoreState, run: &Run<'_>) {
        for attempt in 0..FIRST_ATTEMPTS {
            if attempt > 0 {
                let pause = backoff(0);
                if Instant::now() + pause >= run.deadline {
                    return;
                }
                tokio::time::sleep(pause).await;
            }
            self.disconnect_once(target, store, run).await;
            if store.phase != Phase::Pending {
                return;
            }
        }
    }

    /// Send one paced Disconnect: its `disconnect_requested` record made durable first, then
    /// the token, then the request at once, so no fsync sits between a token and its send.
    /// Accepted or already disconnecting/disconnected → Requested; refused for good → Failed; a
    /// retryable error (or the deadline) leaves it Pending with the error kept for the report.
    async fn disconnect_once(&self, target: &Target, store: &mut StoreState, run: &Run<'_>) {
        let Some(id) = store.custom_key_store_id.clone() else {
            return;
        };
        store.attempts += 1;
        run.audit
            .record(Event::DisconnectRequested {
                lockdown_id: run.lockdown_id.to_string(),
                key_store_id: id.clone(),
                region: target.region.clone(),
                account: self.known_account(target),
                attempt: store.attempts,
            })
            .await;
        self.note(
            store,
            target,
            ProgressStep::DisconnectRequested {
                attempt: store.attempts,
            },
        );
        let result = self
            .paced_send(
                target,
                Operation::Disconnect,
                "DisconnectCustomKeyStore",
                run,
                self.control.disconnect(target, &id),
            )
            .await;
        let (answer, request_id, error) = answer(&result, |a| a.request_id.clone());
        let audit_result = match answer {
            Answer::Accepted => DisconnectResult::Accepted,
            Answer::AlreadyDone => DisconnectResult::AlreadyDisconnected,
            Answer::Error => DisconnectResult::Error,
        };
        run.audit
            .record(Event::DisconnectResult {
                lockdown_id: run.lockdown_id.to_string(),
                key_store_id: id.clone(),
                region: target.region.clone(),
                result: audit_result,
                request_id: request_id.clone(),
                error,
            })
            .await;
        store.request_ids.extend(request_id);
        self.take_disconnect_result(target, store, result);
    }

    /// Take `operation`'s token for `target` right before `call` is sent, and the answer; at the
    /// deadline an unsent or unanswered call ends as an error (so every request recorded has its
    /// result). A ThrottlingException teaches the bucket (see [`Pacer::throttled`]).
    async fn paced_send<T>(
        &self,
        target: &Target,
        operation: Operation,
        name: &'static str,
        run: &Run<'_>,
        call: impl Future<Output = Result<T, AwsError>>,
    ) -> Result<T, AwsError> {
        let send = async {
            self.pacer.acquire(target, operation).await;
            call.await
        };
        let result = timeout_at(run.deadline, send)
            .await
            .unwrap_or_else(|_| Err(deadline_error(name, target)));
        if matches!(&result, Err(err) if err.kind == ErrorKind::Throttled) {
            self.pacer.throttled(target, operation);
        }
        result
    }

    /// Move the store on by KMS's answer to its Disconnect.
    fn take_disconnect_result(
        &self,
        target: &Target,
        store: &mut StoreState,
        result: Result<DisconnectAccepted, AwsError>,
    ) {
        match result {
            Ok(_) => {
                store.phase = Phase::Requested;
                store.error = None;
                store.accepted_at = Some(Instant::now());
                self.note(store, target, ProgressStep::Accepted);
            }
            Err(err) if err.kind == ErrorKind::InvalidState => {
                // Already DISCONNECTING or DISCONNECTED: success; verification reads the state.
                store.phase = Phase::Requested;
                store.error = None;
                self.note(store, target, ProgressStep::AlreadyDisconnected);
            }
            Err(err) if err.kind.is_retryable() => {
                self.note(
                    store,
                    target,
                    ProgressStep::Retrying {
                        error: err.to_string(),
                    },
                );
                store.phase = Phase::Pending;
                store.error = Some(aws_error(&store.spec, err));
            }
            Err(err) => {
                let error = aws_error(&store.spec, err);
                self.fail(store, error);
            }
        }
    }

    /// Every store of the target's account and region: one paginated, paced Describe, retrying
    /// throttling and transient errors while a retry can start before `retry_until`; the whole
    /// call ends at `deadline`.
    async fn describe_all(
        &self,
        target: &Target,
        deadline: Instant,
        retry_until: Instant,
    ) -> Result<Vec<KeyStore>, AwsError> {
        let mut listed = Vec::new();
        let mut marker: Option<String> = None;
        let mut retries = 0u32;
        loop {
            let page = timeout_at(deadline, async {
                self.pacer.acquire(target, Operation::Describe).await;
                self.control.describe_page(target, marker.as_deref()).await
            })
            .await
            .unwrap_or_else(|_| Err(deadline_error("DescribeCustomKeyStores", target)));
            match page {
                Ok((stores, next)) => {
                    listed.extend(stores);
                    match next {
                        Some(next) => marker = Some(next),
                        None => return Ok(listed),
                    }
                }
                Err(err) if err.kind.is_retryable() => {
                    if err.kind == ErrorKind::Throttled {
                        self.pacer.throttled(target, Operation::Describe);
                    }
                    let pause = backoff(retries);
                    retries += 1;
                    if Instant::now() + pause >= retry_until.min(deadline) {
                        return Err(err);
                    }
                    tokio::time::sleep(pause).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    fn cached_name(&self, target: &Target, name: &str) -> Option<String> {
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        names.get(&(target.clone(), name.to_string())).cloned()
    }

    fn remember_name(&self, target: &Target, name: &str, custom_key_store_id: &str) {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        names.insert(
            (target.clone(), name.to_string()),
            custom_key_store_id.to_string(),
        );
    }

    fn forget_name(&self, target: &Target, name: &str) {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        names.remove(&(target.clone(), name.to_string()));
    }

    fn fail(&self, store: &mut StoreState, error: LockdownError) {
        store.phase = Phase::Failed;
        store.finished_at = Some(Instant::now());
        let line = error.to_line();
        warn!(key_store = %store.label(), region = %store.spec.target.region, cause = %line, "key store failed");
        store.error = Some(error);
        if let Some(progress) = &self.progress {
            progress(&ProgressEvent {
                key_store: store.label(),
                region: store.spec.target.region.clone(),
                step: ProgressStep::Failed { error: line },
            });
        }
    }

    fn note(&self, store: &StoreState, target: &Target, step: ProgressStep) {
        let key_store = store.label();
        match &step {
            ProgressStep::DisconnectRequested { attempt } => {
                info!(key_store = %key_store, region = %target.region, attempt, "disconnect requested")
            }
            ProgressStep::Accepted => {
                info!(key_store = %key_store, region = %target.region, "disconnect accepted")
            }
            ProgressStep::AlreadyDisconnected => {
                info!(key_store = %key_store, region = %target.region, "already disconnecting or disconnected")
            }
            ProgressStep::Retrying { error } => {
                warn!(key_store = %key_store, region = %target.region, cause = %error, "disconnect will be retried")
            }
            ProgressStep::State(state) => {
                info!(key_store = %key_store, region = %target.region, connection_state = %state, "connection state")
            }
            ProgressStep::Verified => {
                info!(key_store = %key_store, region = %target.region, "verified DISCONNECTED")
            }
            ProgressStep::Failed { error } => {
                warn!(key_store = %key_store, region = %target.region, cause = %error, "key store failed")
            }
        }
        if let Some(progress) = &self.progress {
            progress(&ProgressEvent {
                key_store,
                region: target.region.clone(),
                step,
            });
        }
    }
}

/// The audit record and log line that close a lockdown.
async fn record_finished(report: &LockdownReport, audit: &dyn AuditSink) {
    let mut failed: Vec<Failed> = report
        .stores
        .iter()
        .filter(|s| !s.verified)
        .map(|s| {
            Failed::Store(FailedStore {
                key_store_id: s
                    .custom_key_store_id
                    .clone()
                    .unwrap_or_else(|| selector_text(&s.spec)),
                region: s.spec.target.region.clone(),
                connection_state: s.connection_state.as_ref().map(|c| c.to_string()),
                error: s.error.as_ref().map(LockdownError::to_line),
            })
        })
        .collect();
    failed.extend(keys::failed_keys(&report.keys));
    let verified = report.stores.iter().filter(|s| s.verified).count();
    let keys_verified = report.keys.iter().filter(|k| k.verified).count();
    audit
        .record(Event::LockdownFinished {
            lockdown_id: report.lockdown_id.clone(),
            outcome: report.outcome(),
            verified,
            keys_verified,
            failed,
            elapsed_ms: u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX),
        })
        .await;
    info!(
        lockdown_id = %report.lockdown_id,
        outcome = ?report.outcome(),
        verified,
        total = report.stores.len(),
        keys_verified,
        keys = report.keys.len(),
        elapsed_ms = report.elapsed.as_millis() as u64,
        "lockdown finished"
    );
}

/// How KMS answered a Disconnect or a DisableKey, as the audit record says it.
enum Answer {
    Accepted,
    /// `KMSInvalidStateException`: already disconnecting/disconnected, disabled or pending
    /// deletion: success, verification reads the state.
    AlreadyDone,
    Error,
}

/// The answer, its request id and (for an error) its text.
fn answer<T>(
    result: &Result<T, AwsError>,
    request_id: impl Fn(&T) -> Option<String>,
) -> (Answer, Option<String>, Option<String>) {
    match result {
        Ok(accepted) => (Answer::Accepted, request_id(accepted), None),
        Err(err) if err.kind == ErrorKind::InvalidState => {
            (Answer::AlreadyDone, err.request_id.clone(), None)
        }
        Err(err) => (Answer::Error, err.request_id.clone(), Some(err.to_string())),
    }
}

/// The wait before the next verification poll, `since` the first and after a wait of `last`.
fn poll_interval(since: Duration, last: Duration) -> Duration {
    if since < VERIFY_FAST_FOR {
        VERIFY_POLL_FAST
    } else if since < VERIFY_STEADY_FOR {
        VERIFY_POLL_STEADY
    } else {
        last.mul_f64(VERIFY_POLL_GROWTH)
            .clamp(VERIFY_POLL_STEADY, VERIFY_POLL_MAX)
    }
}

/// Jittered exponential backoff: half the doubled delay fixed, half random.
fn backoff(retries: u32) -> Duration {
    let ceiling = RETRY_BASE
        .saturating_mul(1u32 << retries.min(16))
        .min(RETRY_MAX);
    let half = ceiling / 2;
    half + half.mul_f64(fastrand::f64())
}

fn deadline_error(operation: &'static str, target: &Target) -> AwsError {
    AwsError::local(
        operation,
        target,
        ErrorKind::Transient,
        "verify_timeout reached",
    )
}

/// The policy's stores grouped by target, each with its position in the policy.
fn group_by_target(key_stores: &[KeyStoreSpec]) -> BTreeMap<Target, Vec<(usize, KeyStoreSpec)>> {
    let mut groups: BTreeMap<Target, Vec<(usize, KeyStoreSpec)>> = BTreeMap::new();
    for (index, spec) in key_stores.iter().enumerate() {
        groups
            .entry(spec.target.clone())
            .or_default()
            .push((index, spec.clone()));
    }
    groups
}

fn find<'a>(listed: &'a [KeyStore], selector: &KeyStoreSelector) -> Option<&'a KeyStore> {
    match selector {
        KeyStoreSelector::Id(id) => find_id(listed, id),
        KeyStoreSelector::Name(name) => listed
            .iter()
            .find(|s| s.custom_key_store_name.as_deref() == Some(name)),
        KeyStoreSelector::All => None,
    }
}

fn find_id<'a>(listed: &'a [KeyStore], id: &str) -> Option<&'a KeyStore> {
    listed.iter().find(|s| s.custom_key_store_id == id)
}

fn selector_text(spec: &KeyStoreSpec) -> String {
    match &spec.selector {
        KeyStoreSelector::Id(id) => id.clone(),
        KeyStoreSelector::Name(name) => format!("name:{name}"),
        KeyStoreSelector::All => "all".to_string(),
    }
}

/// `account` is `None` while it is unknown (STS not reached).
fn not_found(spec: &KeyStoreSpec, account: Option<&str>) -> LockdownError {
    LockdownError::NotFound {
        key_store: selector_text(spec),
        account: account.unwrap_or("unknown").to_string(),
        region: spec.target.region.clone(),
    }
}

fn aws_error(spec: &KeyStoreSpec, source: AwsError) -> LockdownError {
    LockdownError::Aws {
        key_store: selector_text(spec),
        region: spec.target.region.clone(),
        source,
    }
}

/// The policy entry as the audit log's `lockdown_started` lists it.
fn spec_json(spec: &KeyStoreSpec) -> serde_json::Value {
    let mut entry = serde_json::Map::new();
    match &spec.selector {
        KeyStoreSelector::Id(id) => entry.insert("id".into(), id.clone().into()),
        KeyStoreSelector::Name(name) => entry.insert("name".into(), name.clone().into()),
        KeyStoreSelector::All => entry.insert("all".into(), true.into()),
    };
    entry.insert("region".into(), spec.target.region.clone().into());
    if let Some(role_arn) = &spec.target.role_arn {
        entry.insert("role_arn".into(), role_arn.clone().into());
    }
    serde_json::Value::Object(entry)
}

/// A `lockdown_started` entry: the policy entry, or a store an `all: true` entry resolved to
/// (`"all": true` beside its `id`).
fn started_json(spec: &KeyStoreSpec, from_all: bool) -> serde_json::Value {
    let mut entry = spec_json(spec);
    if let (true, serde_json::Value::Object(map)) = (from_all, &mut entry) {
        map.insert("all".into(), true.into());
    }
    entry
}

fn outcome(store: StoreState, account: Option<String>, started: Instant) -> StoreOutcome {
    let finished = store.finished_at.unwrap_or_else(Instant::now);
    StoreOutcome {
        custom_key_store_id: store.custom_key_store_id,
        account,
        connection_state: store.connection_state,
        verified: store.phase == Phase::Verified,
        error: store.error,
        attempts: store.attempts,
        request_ids: store.request_ids,
        stale_id: store.stale_id,
        elapsed: finished.saturating_duration_since(started),
        spec: store.spec,
    }
}

#[cfg(test)]
mod tests {
    //! The engine against an in-memory KMS on tokio's paused clock: time only moves when every
    //! task waits, so pacing, backoff and deadlines are exact and instant.

    use std::collections::HashSet;

    use super::*;
    use crate::audit::LockdownOutcome;
    use crate::aws::fake::{DEFAULT_ACCOUNT, FakeAws, Op, REGION, Request};

    const ROLE_B: &str = "arn:aws:iam::222222222222:role/kms-killswitch";

    /// A Vec-backed audit sink.
    #[derive(Default)]
    struct Recorded(Mutex<Vec<Event>>);

    impl AuditSink for Recorded {
        fn record(&self, event: Event) -> crate::audit::Recorded {
            self.0.lock().unwrap().push(event);
            crate::audit::Recorded::done()
        }
    }

    impl Recorded {
        fn events(&self) -> Vec<Event> {
            self.0.lock().unwrap().clone()
        }
    }

    fn settings(verify_timeout: Duration) -> LockdownSettings {
        LockdownSettings {
            verify_timeout,
            enforce_interval: None,
            rate_limit: 5,
        }
    }

    fn id_spec(id: &str, role_arn: Option<&str>) -> KeyStoreSpec {
        KeyStoreSpec {
            selector: KeyStoreSelector::Id(id.to_string()),
            target: Target {
                region: REGION.to_string(),
                role_arn: role_arn.map(str::to_string),
            },
        }
    }

    fn request(key_stores: Vec<KeyStoreSpec>) -> LockdownRequest {
        LockdownRequest {
            lockdown_id: "ld-test".to_string(),
            key_stores,
            dry_run: false,
        }
    }

    fn engine(fake: &Arc<FakeAws>, verify_timeout: Duration) -> Engine<FakeAws> {
        Engine::new(fake.clone(), settings(verify_timeout))
    }

    fn store_id(n: usize) -> String {
        format!("cks-{n:017x}")
    }

    fn ten_connected_stores(fake: &FakeAws) -> Vec<KeyStoreSpec> {
        (0..10)
            .map(|n| {
                fake.add(&store_id(n), DEFAULT_ACCOUNT, ConnectionState::Connected);
                id_spec(&store_id(n), None)
            })
            .collect()
    }

    /// Replays the requests through AWS's quota (a bucket of `quota` tokens refilled at `quota`
    /// per second) and asserts none would have been throttled.
    fn assert_within_quota(requests: &[Request], quota: u32) {
        let quota = f64::from(quota);
        let (mut tokens, mut last) = (quota, requests[0].at);
        for (i, r) in requests.iter().enumerate() {
            tokens = (tokens + (r.at - last).as_secs_f64() * quota).min(quota);
            last = r.at;
            assert!(
                tokens >= 1.0 - 1e-9,
                "request {i} at {:?} would be throttled",
                r.at - requests[0].at
            );
            tokens -= 1.0;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn paces_disconnects_under_the_rate_limit_and_verifies_all() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(500)));
        let specs = ten_connected_stores(&fake);
        let audit = Recorded::default();
        let report = engine(&fake, Duration::from_secs(60))
            .lockdown(&request(specs), &audit)
            .await;

        assert!(report.complete(), "{report:#?}");
        let disconnects = fake.requests(Op::Disconnect);
        assert_eq!(disconnects.len(), 10, "one Disconnect per store");
        let ids: HashSet<_> = disconnects
            .iter()
            .filter_map(|r| r.custom_key_store_id.clone())
            .collect();
        assert_eq!(ids.len(), 10);
        assert!(
            disconnects
                .iter()
                .all(|r| r.account == DEFAULT_ACCOUNT && r.region == REGION)
        );
        assert_within_quota(&disconnects, 5);
        // The Disconnects did not go out one by one either: the first ones left together.
        assert_eq!(disconnects[1].at, disconnects[0].at);
        assert_within_quota(&fake.requests(Op::Describe), 5);
        for n in 0..10 {
            assert_eq!(fake.seen(&store_id(n)), ConnectionState::Disconnected);
        }
        let events = audit.events();
        assert!(matches!(
            events.first(),
            Some(Event::LockdownStarted { .. })
        ));
        assert!(matches!(
            events.last(),
            Some(Event::LockdownFinished {
                outcome: LockdownOutcome::Complete,
                verified: 10,
                ..
            })
        ));
        let verified = events
            .iter()
            .filter(|e| matches!(e, Event::StoreVerified { .. }))
            .count();
        assert_eq!(verified, 10);
    }

    #[tokio::test(start_paused = true)]
    async fn verifies_with_one_paginated_describe_per_round_not_per_store() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(100)));
        let specs = ten_connected_stores(&fake);
        let report = engine(&fake, Duration::from_secs(60))
            .lockdown(&request(specs), &Recorded::default())
            .await;
        assert!(report.complete());
        // 10 stores in pages of 2: each round is 5 pages. Per store it would be 10 per round.
        let describes = fake.requests(Op::Describe).len();
        assert_eq!(
            describes % 5,
            0,
            "whole paginated rounds only, got {describes}"
        );
        assert!(describes <= 10, "at most two rounds, got {describes}");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_throttled_disconnect_until_accepted() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(500)));
        fake.add(&store_id(1), DEFAULT_ACCOUNT, ConnectionState::Connected);
        fake.script(
            "DisconnectCustomKeyStore",
            &[
                ErrorKind::Throttled,
                ErrorKind::Transient,
                ErrorKind::Throttled,
            ],
        );
        let audit = Recorded::default();
        let report = engine(&fake, Duration::from_secs(60))
            .lockdown(&request(vec![id_spec(&store_id(1), None)]), &audit)
            .await;

        assert!(report.complete(), "{report:#?}");
        assert_eq!(report.stores[0].attempts, 4);
        let disconnects = fake.requests(Op::Disconnect);
        // Backoff: each retry waits at least half the doubled base delay.
        for (i, pair) in disconnects.windows(2).enumerate() {
            let floor = RETRY_BASE.saturating_mul(1 << i) / 2;
            assert!(
                pair[1].at - pair[0].at >= floor,
                "retry {i} came after {:?}",
                pair[1].at - pair[0].at
            );
        }
        let attempts: Vec<u32> = audit
            .events()
            .iter()
            .filter_map(|e| match e {
                Event::DisconnectRequested { attempt, .. } => Some(*attempt),
                _ => None,
            })
            .collect();
        assert_eq!(attempts, vec![1, 2, 3, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_throttled_disconnect_until_deadline() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(500)));
        fake.add(&store_id(1), DEFAULT_ACCOUNT, ConnectionState::Connected);
        fake.script("DisconnectCustomKeyStore", &[ErrorKind::Throttled; 1000]);
        let verify_timeout = Duration::from_secs(10);
        let started = Instant::now();
        let report = engine(&fake, verify_timeout)
            .lockdown(
                &request(vec![id_spec(&store_id(1), None)]),
                &Recorded::default(),
            )
            .await;

        assert!(!report.complete());
        let store = &report.stores[0];
        assert!(!store.verified);
        assert!(
            store.attempts > 3,
            "kept retrying: {} attempts",
            store.attempts
        );
        let error = store
            .error
            .as_ref()
            .map(LockdownError::to_line)
            .unwrap_or_default();
        assert!(
            error.contains("not DISCONNECTED within") && error.contains("Throttled"),
            "{error}"
        );
        assert_eq!(fake.seen(&store_id(1)), ConnectionState::Connected);
        // Stopped at the deadline, not before and not long after.
        assert!(started.elapsed() >= verify_timeout);
        assert!(started.elapsed() < verify_timeout + RETRY_MAX);
        let last = fake
            .requests(Op::Disconnect)
            .last()
            .map(|r| r.at - started)
            .unwrap_or_default();
        assert!(last <= verify_timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn already_disconnected_store_is_success_not_error() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(500)));
        fake.add(&store_id(1), DEFAULT_ACCOUNT, ConnectionState::Disconnected);
        let audit = Recorded::default();
        let report = engine(&fake, Duration::from_secs(30))
            .lockdown(&request(vec![id_spec(&store_id(1), None)]), &audit)
            .await;

        assert!(report.complete(), "{report:#?}");
        assert_eq!(report.stores[0].error, None);
        assert!(audit.events().iter().any(|e| matches!(
            e,
            Event::DisconnectResult {
                result: DisconnectResult::AlreadyDisconnected,
                ..
            }
        )));
    }

    #[tokio::test(start_paused = true)]
    async fn disconnects_failed_and_connecting_stores() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(500)));
        fake.add(&store_id(1), DEFAULT_ACCOUNT, ConnectionState::Failed);
        fake.add(&store_id(2), DEFAULT_ACCOUNT, ConnectionState::Connecting);
        let specs = vec![id_spec(&store_id(1), None), id_spec(&store_id(2), None)];
        let report = engine(&fake, Duration::from_secs(30))
            .lockdown(&request(specs), &Recorded::default())
            .await;

        assert!(report.complete(), "{report:#?}");
        assert_eq!(fake.requests(Op::Disconnect).len(), 2);
        assert_eq!(fake.seen(&store_id(1)), ConnectionState::Disconnected);
        assert_eq!(fake.seen(&store_id(2)), ConnectionState::Disconnected);
    }

    #[tokio::test(start_paused = true)]
    async fn tolerates_eventual_consistency_without_redundant_disconnects() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(500)));
        fake.with(|s| s.consistency_lag = Duration::from_millis(1500));
        fake.add(&store_id(1), DEFAULT_ACCOUNT, ConnectionState::Connected);
        let report = engine(&fake, Duration::from_secs(30))
            .lockdown(
                &request(vec![id_spec(&store_id(1), None)]),
                &Recorded::default(),
            )
            .await;

        assert!(report.complete(), "{report:#?}");
        // Describe said CONNECTED for 1.5 s after the accepted Disconnect: shorter than the grace,
        // so no second Disconnect.
        assert_eq!(fake.requests(Op::Disconnect).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn disconnects_again_a_store_that_stays_connected() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(500)));
        fake.add(&store_id(1), DEFAULT_ACCOUNT, ConnectionState::Connected);
        let engine = engine(&fake, Duration::from_secs(30));
        let fake_for_attacker = fake.clone();
        // Someone reconnects the store 200 ms after our Disconnect was accepted, before it is
        // verified: Describe keeps saying CONNECTED past the consistency grace.
        let attacker = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            fake_for_attacker.set(&store_id(1), ConnectionState::Connected);
        });
        let report = engine
            .lockdown(
                &request(vec![id_spec(&store_id(1), None)]),
                &Recorded::default(),
            )
            .await;
        attacker.await.unwrap();

        assert!(report.complete(), "{report:#?}");
        assert_eq!(fake.requests(Op::Disconnect).len(), 2);
        assert_eq!(fake.seen(&store_id(1)), ConnectionState::Disconnected);
    }

    #[tokio::test(start_paused = true)]
    async fn access_denied_in_one_account_does_not_stop_the_others() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(500)));
        fake.add(&store_id(1), DEFAULT_ACCOUNT, ConnectionState::Connected);
        fake.add(&store_id(2), "222222222222", ConnectionState::Connected);
        fake.with(|s| s.denied_accounts.insert("222222222222".to_string()));
        let specs = vec![
            id_spec(&store_id(1), None),
            id_spec(&store_id(2), Some(ROLE_B)),
        ];
        let audit = Recorded::default();
        let report = engine(&fake, Duration::from_secs(30))
            .lockdown(&request(specs), &audit)
            .await;

        assert!(!report.complete());
        assert!(report.stores[0].verified, "{report:#?}");
        assert!(!report.stores[1].verified);
        assert_eq!(report.stores[1].attempts, 1, "AccessDenied is not retried");
        assert!(
            report.stores[1]
                .error
                .as_ref()
                .map(LockdownError::to_line)
                .unwrap_or_default()
                .contains("AccessDenied")
        );
        assert_eq!(fake.seen(&store_id(1)), ConnectionState::Disconnected);
        assert!(matches!(
            audit.events().last(),
            Some(Event::LockdownFinished { outcome: LockdownOutcome::Partial, verified: 1, failed, .. }) if failed.len() == 1
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_store_id_fails_alone() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(500)));
        fake.add(&store_id(1), DEFAULT_ACCOUNT, ConnectionState::Connected);
        let specs = vec![id_spec(&store_id(1), None), id_spec(&store_id(9), None)];
        let report = engine(&fake, Duration::from_secs(30))
            .lockdown(&request(specs), &Recorded::default())
            .await;

        assert!(report.stores[0].verified);
        assert!(!report.stores[1].verified);
        assert!(
            report.stores[1]
                .error
                .as_ref()
                .map(LockdownError::to_line)
                .unwrap_or_default()
                .contains("NotFound")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_store_name_fails_and_known_name_is_resolved_once() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(500)));
        fake.add(&store_id(1), DEFAULT_ACCOUNT, ConnectionState::Connected);
        let by_name = |name: &str| KeyStoreSpec {
            selector: KeyStoreSelector::Name(name.to_string()),
            target: Target {
                region: REGION.to_string(),
                role_arn: None,
            },
        };
        let specs = vec![
            by_name(&format!("name-{}", store_id(1))),
            by_name("no-such-store"),
        ];
        let engine = engine(&fake, Duration::from_secs(30));
        let report = engine
            .lockdown(&request(specs.clone()), &Recorded::default())
            .await;

        assert_eq!(
            report.stores[0].custom_key_store_id.as_deref(),
            Some(store_id(1).as_str())
        );
        assert!(report.stores[0].verified, "{report:#?}");
        assert!(
            report.stores[1]
                .error
                .as_ref()
                .map(LockdownError::to_line)
                .unwrap_or_default()
                .contains("not found")
        );
        // The second lockdown resolves nothing again for the known name: no Describe before
        // its Disconnect.
        let only_known = vec![specs[0].clone()];
        let before = fake.requests(Op::Describe).len();
        let started = Instant::now();
        engine
            .lockdown(&request(only_known), &Recorded::default())
            .await;
        let first_describe = fake.requests(Op::Describe)[before].at;
        let disconnect = fake
            .requests(Op::Disconnect)
            .last()
            .map(|r| r.at)
            .unwrap_or(started);
        assert!(first_describe > disconnect);
    }

    #[tokio::test(start_paused = true)]
    async fn store_stuck_disconnecting_fails_at_the_deadline() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(500)));
        fake.add(&store_id(1), DEFAULT_ACCOUNT, ConnectionState::Connected);
        fake.with(|s| s.stores[0].stuck = true);
        let verify_timeout = Duration::from_secs(20);
        let started = Instant::now();
        let report = engine(&fake, verify_timeout)
            .lockdown(
                &request(vec![id_spec(&store_id(1), None)]),
                &Recorded::default(),
            )
            .await;

        assert!(!report.complete());
        assert_eq!(
            report.stores[0].connection_state,
            Some(ConnectionState::Disconnecting)
        );
        assert!(
            report.stores[0]
                .error
                .as_ref()
                .map(LockdownError::to_line)
                .unwrap_or_default()
                .contains("last state DISCONNECTING")
        );
        assert!(started.elapsed() >= verify_timeout);
        // Polling backed off: 8 in the first second, 4/s to 5 s, then slower and slower
        // (2 s apart at most): far fewer rounds than one per 250 ms (80).
        let rounds = fake.requests(Op::Describe).len();
        assert!(rounds <= 40, "{rounds} describes in {verify_timeout:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_describe_errors_during_verification() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(500)));
        fake.add(&store_id(1), DEFAULT_ACCOUNT, ConnectionState::Connected);
        fake.script(
            "DescribeCustomKeyStores",
            &[ErrorKind::Transient, ErrorKind::Throttled],
        );
        let report = engine(&fake, Duration::from_secs(30))
            .lockdown(
                &request(vec![id_spec(&store_id(1), None)]),
                &Recorded::default(),
            )
            .await;
        assert!(report.complete(), "{report:#?}");
    }

    #[tokio::test(start_paused = true)]
    async fn dry_run_describes_and_sends_no_disconnect() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(500)));
        fake.add(&store_id(1), DEFAULT_ACCOUNT, ConnectionState::Connected);
        fake.add(&store_id(2), DEFAULT_ACCOUNT, ConnectionState::Disconnected);
        let mut dry = request(vec![
            id_spec(&store_id(1), None),
            id_spec(&store_id(2), None),
        ]);
        dry.dry_run = true;
        let audit = Recorded::default();
        let report = engine(&fake, Duration::from_secs(30))
            .lockdown(&dry, &audit)
            .await;

        assert!(fake.requests(Op::Disconnect).is_empty());
        assert_eq!(report.outcome(), LockdownOutcome::DryRun);
        assert_eq!(
            report.stores[0].connection_state,
            Some(ConnectionState::Connected)
        );
        assert!(!report.stores[0].verified);
        assert!(report.stores[1].verified);
        assert!(matches!(
            audit.events().last(),
            Some(Event::LockdownFinished {
                outcome: LockdownOutcome::DryRun,
                ..
            })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn enforce_disconnects_drifted_stores_and_records_drift() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(500)));
        fake.add(&store_id(1), DEFAULT_ACCOUNT, ConnectionState::Disconnected);
        fake.add(&store_id(2), DEFAULT_ACCOUNT, ConnectionState::Connected);
        fake.add(&store_id(3), DEFAULT_ACCOUNT, ConnectionState::Connecting);
        let specs: Vec<_> = (1..=3).map(|n| id_spec(&store_id(n), None)).collect();
        let audit = Recorded::default();
        let report = engine(&fake, Duration::from_secs(30))
            .enforce(&specs, "ld-test", &audit)
            .await;

        assert_eq!(report.drifted(), 2);
        assert_eq!(report.errors(), 0);
        assert!(report.stores[0].verified && !report.stores[0].drift);
        assert_eq!(
            fake.requests(Op::Describe).len(),
            2,
            "one paginated Describe (two pages)"
        );
        let drifts: Vec<String> = audit
            .events()
            .iter()
            .filter_map(|e| match e {
                Event::DriftDetected { key_store_id, .. } => Some(key_store_id.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(drifts, vec![store_id(2), store_id(3)]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(fake.seen(&store_id(2)), ConnectionState::Disconnected);
        assert_eq!(fake.seen(&store_id(3)), ConnectionState::Disconnected);
    }

    #[tokio::test(start_paused = true)]
    async fn describe_reports_state_and_missing_stores_without_disconnecting() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(500)));
        fake.add(&store_id(1), DEFAULT_ACCOUNT, ConnectionState::Failed);
        let specs = vec![id_spec(&store_id(1), None), id_spec(&store_id(2), None)];
        let statuses = engine(&fake, Duration::from_secs(30))
            .describe(&specs)
            .await;

        assert_eq!(
            statuses[0]
                .key_store
                .as_ref()
                .map(|k| k.connection_state.clone()),
            Some(ConnectionState::Failed)
        );
        assert!(matches!(
            statuses[1].error,
            Some(LockdownError::NotFound { .. })
        ));
        assert!(fake.requests(Op::Disconnect).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn store_failing_every_disconnect_does_not_stop_verifying_the_others() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(500)));
        fake.add(&store_id(1), DEFAULT_ACCOUNT, ConnectionState::Connected);
        fake.add(&store_id(2), DEFAULT_ACCOUNT, ConnectionState::Connected);
        fake.with(|s| s.failing_disconnects.insert(store_id(1)));
        let specs = vec![id_spec(&store_id(1), None), id_spec(&store_id(2), None)];
        let audit = Recorded::default();
        let report = engine(&fake, Duration::from_secs(30))
            .lockdown(&request(specs), &audit)
            .await;

        assert_eq!(fake.seen(&store_id(2)), ConnectionState::Disconnected);
        assert!(report.stores[1].verified, "{report:#?}");
        assert_eq!(report.stores[1].error, None);
        assert_eq!(report.stores[1].account.as_deref(), Some(DEFAULT_ACCOUNT));
        let verified: Vec<String> = audit
            .events()
            .iter()
            .filter_map(|e| match e {
                Event::StoreVerified { key_store_id, .. } => Some(key_store_id.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(verified, vec![store_id(2)]);
        // Only the failing store fails, after its Disconnect was sent again every round.
        assert!(!report.stores[0].verified);
        assert!(
            report.stores[0].attempts > 3,
            "{} attempts",
            report.stores[0].attempts
        );
        let error = report.stores[0]
            .error
            .as_ref()
            .map(LockdownError::to_line)
            .unwrap_or_default();
        assert!(
            error.contains("not DISCONNECTED within") && error.contains("Transient"),
            "{error}"
        );
        assert_within_quota(&fake.requests(Op::Disconnect), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn verifies_at_the_deadline_a_store_that_disconnects_after_the_last_regular_poll() {
        // DISCONNECTED 9.99 s after the Disconnect: after the poll at ~9.95 s (the schedule: 8 in
        // the first second, 4/s to 5 s, then 375, 563, 844, 1266, 1898 ms apart), before the
        // deadline.
        let fake = Arc::new(FakeAws::new(Duration::from_millis(9990)));
        fake.add(&store_id(1), DEFAULT_ACCOUNT, ConnectionState::Connected);
        let verify_timeout = Duration::from_secs(10);
        let started = Instant::now();
        let report = engine(&fake, verify_timeout)
            .lockdown(
                &request(vec![id_spec(&store_id(1), None)]),
                &Recorded::default(),
            )
            .await;

        assert!(report.complete(), "{report:#?}");
        let last_describe = fake
            .requests(Op::Describe)
            .last()
            .map(|r| r.at - started)
            .unwrap_or_default();
        assert_eq!(
            last_describe, verify_timeout,
            "the final check is at the deadline"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn short_verify_timeout_still_verifies_an_already_disconnected_store() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(500)));
        fake.add(&store_id(1), DEFAULT_ACCOUNT, ConnectionState::Disconnected);
        let report = engine(&fake, Duration::from_millis(200))
            .lockdown(
                &request(vec![id_spec(&store_id(1), None)]),
                &Recorded::default(),
            )
            .await;

        assert!(report.complete(), "{report:#?}");
        assert_eq!(fake.requests(Op::Describe).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_sts_does_not_stop_disconnects_or_pacing() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(500)));
        fake.with(|s| s.sts_unreachable = true);
        let mut specs = ten_connected_stores(&fake);
        fake.add(&store_id(10), "222222222222", ConnectionState::Connected);
        specs.push(id_spec(&store_id(10), Some(ROLE_B)));
        let audit = Recorded::default();
        let report = engine(&fake, Duration::from_secs(30))
            .lockdown(&request(specs), &audit)
            .await;

        assert!(report.complete(), "{report:#?}");
        assert_eq!(fake.requests(Op::Disconnect).len(), 11);
        let default_account: Vec<Request> = fake
            .requests(Op::Disconnect)
            .into_iter()
            .filter(|r| r.account == DEFAULT_ACCOUNT)
            .collect();
        assert_within_quota(&default_account, 5);
        // Unknown without STS; a role's account comes from its ARN.
        assert_eq!(report.stores[0].account, None);
        assert_eq!(report.stores[10].account.as_deref(), Some("222222222222"));
        assert!(
            audit
                .events()
                .iter()
                .any(|e| matches!(e, Event::DisconnectRequested { account: None, .. }))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failing_describes_do_not_stop_sending_a_refused_disconnect_again() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(500)));
        fake.add(&store_id(1), DEFAULT_ACCOUNT, ConnectionState::Connected);
        fake.script("DisconnectCustomKeyStore", &[ErrorKind::Transient]);
        fake.script("DescribeCustomKeyStores", &[ErrorKind::Transient; 1000]);
        let report = engine(&fake, Duration::from_secs(30))
            .lockdown(
                &request(vec![id_spec(&store_id(1), None)]),
                &Recorded::default(),
            )
            .await;

        assert_eq!(report.stores[0].attempts, 2, "{report:#?}");
        // Sent again at once, not after a Describe retried until the deadline.
        let order: Vec<Op> = fake.with(|s| s.requests.iter().map(|r| r.op).take(3).collect());
        assert_eq!(order, vec![Op::Disconnect, Op::Disconnect, Op::Describe]);
        assert_eq!(fake.seen(&store_id(1)), ConnectionState::Disconnected);
        // KMS never answered a Describe: disconnected, but not verified.
        assert!(!report.stores[0].verified);
    }

    #[tokio::test(start_paused = true)]
    async fn describe_reports_the_account_when_sts_answers_after_kms() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(500)));
        fake.add(&store_id(1), DEFAULT_ACCOUNT, ConnectionState::Connected);
        fake.with(|s| s.sts_latency = Duration::from_millis(300));
        let statuses = engine(&fake, Duration::from_secs(30))
            .describe(&[id_spec(&store_id(1), None)])
            .await;

        assert_eq!(statuses[0].account.as_deref(), Some(DEFAULT_ACCOUNT));
        assert!(statuses[0].key_store.is_some(), "{statuses:?}");
    }

    /// A name-listed spec in the default target.
    fn name_spec(name: &str) -> KeyStoreSpec {
        KeyStoreSpec {
            selector: KeyStoreSelector::Name(name.to_string()),
            target: Target {
                region: REGION.to_string(),
                role_arn: None,
            },
        }
    }

    fn rename(fake: &FakeAws, id: &str, name: &str) {
        fake.with(|s| {
            if let Some(store) = s.stores.iter_mut().find(|st| st.id == id) {
                store.name = name.to_string();
            }
        });
    }

    #[tokio::test(start_paused = true)]
    async fn renamed_store_is_followed_by_name_not_by_cached_id() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(500)));
        let name = format!("name-{}", store_id(1));
        fake.add(&store_id(1), DEFAULT_ACCOUNT, ConnectionState::Disconnected);
        let spec = name_spec(&name);
        let engine = engine(&fake, Duration::from_secs(30));
        // The long-lived daemon caches name → id (here through a `status`-like describe).
        engine.describe(std::slice::from_ref(&spec)).await;
        // Later the store is renamed, and a new CONNECTED store takes its name.
        rename(&fake, &store_id(1), "old");
        fake.add(&store_id(2), DEFAULT_ACCOUNT, ConnectionState::Connected);
        rename(&fake, &store_id(2), &name);

        let audit = Recorded::default();
        let report = engine.lockdown(&request(vec![spec.clone()]), &audit).await;

        assert_eq!(fake.seen(&store_id(2)), ConnectionState::Disconnected);
        assert!(report.complete(), "{report:#?}");
        let outcome = &report.stores[0];
        assert_eq!(
            outcome.custom_key_store_id.as_deref(),
            Some(store_id(2).as_str())
        );
        assert_eq!(outcome.stale_id.as_deref(), Some(store_id(1).as_str()));
        assert_eq!(
            outcome.connection_state,
            Some(ConnectionState::Disconnected)
        );
        assert!(audit.events().iter().any(|e| matches!(
            e,
            Event::StoreVerified { key_store_id, .. } if *key_store_id == store_id(2)
        )));
        assert!(!audit.events().iter().any(|e| matches!(
            e,
            Event::StoreVerified { key_store_id, .. } if *key_store_id == store_id(1)
        )));

        // The cache now holds the new id: the next lockdown's first Disconnect goes to it.
        let sent = fake.requests(Op::Disconnect).len();
        let report = engine.lockdown(&request(vec![spec]), &audit).await;
        assert!(report.complete(), "{report:#?}");
        assert_eq!(report.stores[0].stale_id, None);
        assert_eq!(
            fake.requests(Op::Disconnect)[sent]
                .custom_key_store_id
                .as_deref(),
            Some(store_id(2).as_str())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cached_name_that_no_store_carries_any_more_is_not_found() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(500)));
        let name = format!("name-{}", store_id(1));
        fake.add(&store_id(1), DEFAULT_ACCOUNT, ConnectionState::Connected);
        let spec = name_spec(&name);
        let engine = engine(&fake, Duration::from_secs(30));
        engine.describe(std::slice::from_ref(&spec)).await;
        rename(&fake, &store_id(1), "old");

        let report = engine
            .lockdown(&request(vec![spec.clone()]), &Recorded::default())
            .await;

        assert!(!report.complete(), "{report:#?}");
        assert!(
            report.stores[0]
                .error
                .as_ref()
                .map(LockdownError::to_line)
                .unwrap_or_default()
                .contains("not found"),
            "{report:#?}"
        );
        // The stale mapping is gone: the next lockdown resolves the name again first.
        let described = fake.requests(Op::Describe).len();
        let sent = fake.requests(Op::Disconnect).len();
        engine
            .lockdown(&request(vec![spec]), &Recorded::default())
            .await;
        assert!(fake.requests(Op::Describe).len() > described);
        assert_eq!(fake.requests(Op::Disconnect).len(), sent);
    }
}
