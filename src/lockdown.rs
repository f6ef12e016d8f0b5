//! The disconnect + verify engine: resolve names, disconnect every listed store concurrently
//! (paced per account, region and operation), verify with one paginated
//! DescribeCustomKeyStores per account+region per round (the last one at the deadline), send
//! again between rounds the Disconnects refused with a retryable error, and return a typed
//! [`LockdownReport`]. The account is looked up alongside, never waited for. It also re-enforces
//! a latched lockdown ([`Engine::enforce`]) and describes stores without touching them
//! ([`Engine::describe`]). It talks to AWS only through [`KeyStoreControl`], records through
//! [`AuditSink`], and knows nothing of triggers, latches or file paths.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::future::Future;
use std::pin::pin;

use futures_util::future::{Either, join_all, select};
use tokio::time::{Instant, sleep_until, timeout_at};
use tracing::{info, warn};

use crate::audit::{AuditSink, DisconnectResult, Event, FailedStore, LockdownOutcome};
use crate::aws::{AwsError, ConnectionState, ErrorKind, KeyStore, KeyStoreControl, Target};
use crate::policy::{KeyStoreSelector, KeyStoreSpec, LockdownSettings};

/// First verification poll after the Disconnects: KMS usually reports DISCONNECTING at once and
/// DISCONNECTED within a second or two, so look early.
const VERIFY_POLL_FIRST: Duration = Duration::from_millis(250);
/// Each verification poll waits this much longer than the last (250, 375, 560, 840 ms, …):
/// quick while KMS is likely finishing, gentle on the quota for a store that takes its time.
const VERIFY_POLL_GROWTH: f64 = 1.5;
/// Slowest verification poll: one Describe per account+region every 2 s stays far inside the
/// 5/s Describe quota, even with several lockdown targets in one account.
const VERIFY_POLL_MAX: Duration = Duration::from_secs(2);
/// KMS is eventually consistent: right after an accepted Disconnect, Describe may still say
/// CONNECTED. Only a store that stays connected longer than this is disconnected again.
const CONSISTENCY_GRACE: Duration = Duration::from_secs(2);
/// Share of `rate_limit` the pacer actually uses. AWS meters arrivals, we meter departures: a
/// request that travels faster than the one before it arrives "early", and at exactly the quota
/// that is a ThrottlingException. 10 % headroom absorbs ~20 ms of jitter per request.
const PACING_HEADROOM: f64 = 0.9;

/// First retry pause after throttling or a transient error (doubled per attempt, jittered).
const RETRY_BASE: Duration = Duration::from_millis(100);
/// Longest retry pause: a throttling storm must not push a retry past many verification rounds.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// The last verification poll is made at the deadline itself; this is how long that one
/// paginated Describe (with its pacing and retries) may run past it, so a store that reached
/// DISCONNECTED in the final moments is verified rather than reported failed.
const FINAL_CHECK_ALLOWANCE: Duration = Duration::from_secs(1);
/// How long an account lookup still running when the key stores are done may take to finish:
/// STS answers in well under a second and started with the first request, while an unreachable
/// STS must not hold up the report for long (the account only names things in it).
const ACCOUNT_LOOKUP_GRACE: Duration = Duration::from_secs(1);

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
    pub elapsed: Duration,
}

impl LockdownReport {
    /// Every store verified DISCONNECTED (never true for a dry run with a store still connected).
    pub fn complete(&self) -> bool {
        self.stores.iter().all(|s| s.verified)
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

/// Why a store could not be resolved, described, disconnected or verified.
#[derive(Debug, Clone, thiserror::Error)]
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
}

impl LockdownError {
    /// The AWS error kind behind this error, if AWS refused something.
    pub fn aws_kind(&self) -> Option<ErrorKind> {
        match self {
            LockdownError::Aws { source, .. } => Some(source.kind),
            LockdownError::NotFound { .. } => Some(ErrorKind::NotFound),
            LockdownError::NotVerified { .. } => None,
        }
    }

    /// The error with its cause, in one line (for reports and audit records).
    pub fn to_line(&self) -> String {
        match self {
            LockdownError::Aws { source, .. } => format!("{self}: {source}"),
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

/// The KMS operations the engine paces separately (each has its own 5/s quota).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Operation {
    Disconnect,
    Describe,
}

/// A token bucket: `rate` tokens per second, at most `burst` saved. Waiters are served in order
/// (tokio's mutex is fair), so concurrent stores share the quota without starving each other.
/// For a quota of `rate_limit`/s it refills at 90 % of it and saves one token less than AWS does
/// (see [`PACING_HEADROOM`]), so 10 stores in one account and region take ~1.3 s and AWS's own
/// bucket never runs dry.
struct TokenBucket {
    rate: f64,
    burst: f64,
    /// (tokens available, when they were counted).
    state: tokio::sync::Mutex<(f64, Instant)>,
}

impl TokenBucket {
    fn new(rate_limit: u32) -> Self {
        let quota = f64::from(rate_limit.max(1));
        let rate = quota * PACING_HEADROOM;
        let burst = (quota - 1.0).max(1.0);
        TokenBucket {
            rate,
            burst,
            state: tokio::sync::Mutex::new((burst, Instant::now())),
        }
    }

    /// Wait for one token and take it.
    async fn acquire(&self) {
        let mut state = self.state.lock().await;
        loop {
            let now = Instant::now();
            let refill = now.saturating_duration_since(state.1).as_secs_f64() * self.rate;
            state.0 = (state.0 + refill).min(self.burst);
            state.1 = now;
            // A hair of tolerance: float rounding must not cost a whole extra sleep.
            if state.0 >= 1.0 - 1e-9 {
                state.0 = (state.0 - 1.0).max(0.0);
                return;
            }
            let wait = Duration::from_secs_f64((1.0 - state.0) / self.rate);
            tokio::time::sleep(wait.max(Duration::from_micros(1))).await;
        }
    }
}

/// Whose quota a target's requests draw on. AWS meters per account and region; the account of
/// a target that assumes a role is in its ARN, so role targets in one account share buckets. A
/// target without a role has its own buckets: learning its account needs STS, and no Disconnect
/// may wait for STS (a host may reach KMS only through a VPC endpoint).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PacerScope {
    Account { account: String, region: String },
    Target(Target),
}

impl PacerScope {
    fn of(target: &Target) -> Self {
        match target.role_account().map(str::to_string) {
            Some(account) => PacerScope::Account {
                account,
                region: target.region.clone(),
            },
            None => PacerScope::Target(target.clone()),
        }
    }
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
    fn label(&self) -> String {
        match (&self.custom_key_store_id, &self.spec.selector) {
            (Some(id), _) => id.clone(),
            (None, KeyStoreSelector::Id(id)) => id.clone(),
            (None, KeyStoreSelector::Name(name)) => name.clone(),
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

/// The engine. Holds the shared pacers (one token bucket per account or target, region and
/// operation, see [`PacerScope`]) and the name → id cache, so lockdowns and enforcement rounds
/// share the KMS quota.
pub struct Engine<C> {
    control: Arc<C>,
    settings: LockdownSettings,
    /// (scope, operation) → its bucket; shared by every lockdown of this engine.
    pacers: Mutex<HashMap<(PacerScope, Operation), Arc<TokenBucket>>>,
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
            settings,
            pacers: Mutex::new(HashMap::new()),
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

    /// Run one lockdown to completion or its `verify_timeout`. Never returns early because one
    /// store failed.
    pub async fn lockdown(
        &self,
        request: &LockdownRequest,
        audit: &dyn AuditSink,
    ) -> LockdownReport {
        let started = Instant::now();
        let run = Run {
            lockdown_id: &request.lockdown_id,
            deadline: started + self.settings.verify_timeout,
            audit,
        };
        audit.record(Event::LockdownStarted {
            lockdown_id: request.lockdown_id.clone(),
            key_stores: request.key_stores.iter().map(spec_json).collect(),
            dry_run: request.dry_run,
        }).await;
        info!(lockdown_id = %request.lockdown_id, key_stores = request.key_stores.len(), dry_run = request.dry_run, "lockdown started");

        let groups = group_by_target(&request.key_stores);
        let runs = groups.into_iter().map(|(target, stores)| {
            let run = &run;
            async move {
                let states = stores
                    .into_iter()
                    .map(|(index, spec)| StoreState {
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
                    })
                    .collect();
                self.lockdown_target(&target, states, request.dry_run, run)
                    .await
            }
        });
        let mut outcomes: Vec<(usize, StoreOutcome)> = join_all(runs)
            .await
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
            elapsed: started.elapsed(),
        };

        let failed: Vec<FailedStore> = report
            .stores
            .iter()
            .filter(|s| !s.verified)
            .map(|s| FailedStore {
                key_store_id: s
                    .custom_key_store_id
                    .clone()
                    .unwrap_or_else(|| selector_text(&s.spec)),
                region: s.spec.target.region.clone(),
                connection_state: s.connection_state.as_ref().map(|c| c.to_string()),
                error: s.error.clone(),
            })
            .collect();
        let verified = report.stores.iter().filter(|s| s.verified).count();
        audit.record(Event::LockdownFinished {
            lockdown_id: request.lockdown_id.clone(),
            outcome: report.outcome(),
            verified,
            failed,
            elapsed_ms: u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX),
        }).await;
        info!(
            lockdown_id = %request.lockdown_id,
            outcome = ?report.outcome(),
            verified,
            total = report.stores.len(),
            elapsed_ms = report.elapsed.as_millis() as u64,
            "lockdown finished"
        );
        report
    }

    /// One enforcement round while latched: one Describe per account+region; every listed store
    /// seen in a state other than DISCONNECTED or DISCONNECTING is recorded as drift and
    /// disconnected again (its verification is the next round).
    pub async fn enforce(
        &self,
        key_stores: &[KeyStoreSpec],
        lockdown_id: &str,
        audit: &dyn AuditSink,
    ) -> EnforceReport {
        let run = Run {
            lockdown_id,
            deadline: Instant::now() + self.settings.verify_timeout,
            audit,
        };
        let groups = group_by_target(key_stores);
        let rounds = groups.into_iter().map(|(target, stores)| {
            let run = &run;
            async move { self.enforce_target(&target, stores, run).await }
        });
        let mut stores: Vec<(usize, EnforcedStore)> =
            join_all(rounds).await.into_iter().flatten().collect();
        stores.sort_by_key(|(index, _)| *index);
        EnforceReport {
            stores: stores.into_iter().map(|(_, s)| s).collect(),
        }
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
                .map(|(index, spec)| {
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
                    (
                        index,
                        StoreStatus {
                            spec,
                            account: account.clone(),
                            key_store,
                            error,
                        },
                    )
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
        mut stores: Vec<StoreState>,
        dry_run: bool,
        run: &Run<'_>,
    ) -> Vec<StoreState> {
        // Names need one Describe (cached afterwards); a dry run describes everything.
        let needs_describe = dry_run
            || stores.iter().any(|s| match &s.spec.selector {
                KeyStoreSelector::Id(_) => false,
                KeyStoreSelector::Name(name) => self.cached_name(target, name).is_none(),
            });
        let listed = if needs_describe {
            Some(self.describe_all(target, run.deadline, run.deadline).await)
        } else {
            None
        };
        for store in &mut stores {
            match (&store.spec.selector, &listed) {
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
                            let error =
                                not_found(&store.spec, self.known_account(target).as_deref());
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

        if dry_run {
            for store in &mut stores {
                if store.phase == Phase::Failed {
                    continue;
                }
                match &listed {
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
                            let error =
                                not_found(&store.spec, self.known_account(target).as_deref());
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
            return stores;
        }

        // One attempt each: a store refused with a retryable error stays Pending and verification
        // sends its Disconnect again every round, so it never holds up verifying the others.
        let disconnects = stores
            .iter_mut()
            .filter(|s| s.phase == Phase::Pending)
            .map(|store| self.disconnect_once(target, store, run));
        join_all(disconnects).await;

        self.verify(target, &mut stores, run).await;
        stores
    }

    /// Poll one paginated Describe per round until every store is verified or failed; the last
    /// poll is at the deadline itself. Between polls, send the Disconnect again of every store
    /// that needs it (refused with a retryable error, or still or again connected).
    async fn verify(&self, target: &Target, stores: &mut [StoreState], run: &Run<'_>) {
        let mut interval = VERIFY_POLL_FIRST;
        while !stores.iter().all(StoreState::is_final) {
            let next_poll = (Instant::now() + interval).min(run.deadline);
            let last = next_poll >= run.deadline;
            sleep_until(next_poll).await;
            interval = interval.mul_f64(VERIFY_POLL_GROWTH).min(VERIFY_POLL_MAX);

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
                    run.audit.record(Event::StoreVerified {
                        lockdown_id: run.lockdown_id.to_string(),
                        key_store_id: found.custom_key_store_id.clone(),
                        region: target.region.clone(),
                        connection_state: state.to_string(),
                    }).await;
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

    /// Send one paced Disconnect. Accepted or already disconnecting/disconnected → Requested;
    /// refused for good → Failed; a retryable error (or the deadline) leaves it Pending with
    /// the error kept for the report.
    async fn disconnect_once(&self, target: &Target, store: &mut StoreState, run: &Run<'_>) {
        let Some(id) = store.custom_key_store_id.clone() else {
            return;
        };
        let bucket = self.bucket(target, Operation::Disconnect);
        if timeout_at(run.deadline, bucket.acquire()).await.is_err() {
            return; // The deadline: verification reports the store with its last error.
        }
        store.attempts += 1;
        run.audit.record(Event::DisconnectRequested {
            lockdown_id: run.lockdown_id.to_string(),
            key_store_id: id.clone(),
            region: target.region.clone(),
            account: self.known_account(target),
            attempt: store.attempts,
        }).await;
        self.note(
            store,
            target,
            ProgressStep::DisconnectRequested {
                attempt: store.attempts,
            },
        );
        // At the deadline an unanswered call ends as an error, so every request has a result.
        let result = timeout_at(run.deadline, self.control.disconnect(target, &id))
            .await
            .unwrap_or_else(|_| Err(deadline_error("DisconnectCustomKeyStore", target)));
        let (audit_result, request_id, error) = match &result {
            Ok(accepted) => (
                DisconnectResult::Accepted,
                accepted.request_id.clone(),
                None,
            ),
            Err(err) if err.kind == ErrorKind::InvalidState => (
                DisconnectResult::AlreadyDisconnected,
                err.request_id.clone(),
                None,
            ),
            Err(err) => (
                DisconnectResult::Error,
                err.request_id.clone(),
                Some(err.to_string()),
            ),
        };
        run.audit.record(Event::DisconnectResult {
            lockdown_id: run.lockdown_id.to_string(),
            key_store_id: id.clone(),
            region: target.region.clone(),
            result: audit_result,
            request_id: request_id.clone(),
            error,
        }).await;
        store.request_ids.extend(request_id);
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

    /// One enforcement round for one target; its account is looked up alongside, for the
    /// report only.
    async fn enforce_target(
        &self,
        target: &Target,
        stores: Vec<(usize, KeyStoreSpec)>,
        run: &Run<'_>,
    ) -> Vec<(usize, EnforcedStore)> {
        let work = self.enforce_stores(target, stores, run);
        let mut results = self
            .alongside_account_lookup(target, run.deadline, work)
            .await;
        let account = self.known_account(target);
        for (_, enforced) in &mut results {
            enforced.account = account.clone();
        }
        results
    }

    async fn enforce_stores(
        &self,
        target: &Target,
        stores: Vec<(usize, KeyStoreSpec)>,
        run: &Run<'_>,
    ) -> Vec<(usize, EnforcedStore)> {
        let listed = match self.describe_all(target, run.deadline, run.deadline).await {
            Ok(listed) => listed,
            Err(err) => {
                warn!(region = %target.region, cause = %err, "enforcement could not describe the key stores");
                return stores
                    .into_iter()
                    .map(|(index, spec)| {
                        let error = Some(aws_error(&spec, err.clone()).to_line());
                        let enforced = EnforcedStore {
                            spec,
                            custom_key_store_id: None,
                            account: None,
                            connection_state: None,
                            verified: false,
                            drift: false,
                            error,
                        };
                        (index, enforced)
                    })
                    .collect();
            }
        };
        let mut results = Vec::with_capacity(stores.len());
        let mut drifted = Vec::new();
        for (index, spec) in stores {
            let found = find(&listed, &spec.selector);
            let mut enforced = EnforcedStore {
                custom_key_store_id: found.map(|f| f.custom_key_store_id.clone()),
                account: None,
                connection_state: found.map(|f| f.connection_state.clone()),
                verified: found
                    .is_some_and(|f| f.connection_state == ConnectionState::Disconnected),
                drift: false,
                error: None,
                spec,
            };
            match found {
                None => {
                    let account = self.known_account(target);
                    enforced.error = Some(not_found(&enforced.spec, account.as_deref()).to_line());
                }
                Some(found) => {
                    if let KeyStoreSelector::Name(name) = &enforced.spec.selector {
                        self.remember_name(target, name, &found.custom_key_store_id);
                    }
                    if !matches!(
                        found.connection_state,
                        ConnectionState::Disconnected | ConnectionState::Disconnecting
                    ) {
                        enforced.drift = true;
                        run.audit.record(Event::DriftDetected {
                            key_store_id: found.custom_key_store_id.clone(),
                            region: target.region.clone(),
                            connection_state: found.connection_state.to_string(),
                        }).await;
                        warn!(key_store = %found.custom_key_store_id, region = %target.region, connection_state = %found.connection_state, "drift detected: disconnecting again");
                        drifted.push((
                            results.len(),
                            StoreState {
                                index,
                                spec: enforced.spec.clone(),
                                custom_key_store_id: Some(found.custom_key_store_id.clone()),
                                phase: Phase::Pending,
                                accepted_at: None,
                                stale_id: None,
                                connection_state: Some(found.connection_state.clone()),
                                attempts: 0,
                                request_ids: Vec::new(),
                                error: None,
                                finished_at: None,
                            },
                        ));
                    }
                }
            }
            results.push((index, enforced));
        }
        let again = drifted
            .iter_mut()
            .map(|(_, store)| self.disconnect(target, store, run));
        join_all(again).await;
        for (position, store) in drifted {
            if store.phase != Phase::Requested {
                let error = match &store.error {
                    Some(error) => error.to_line(),
                    None => format!(
                        "custom key store {} in {}: disconnect not accepted",
                        store.label(),
                        target.region
                    ),
                };
                results[position].1.error = Some(error);
            }
        }
        results
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
        let bucket = self.bucket(target, Operation::Describe);
        let mut listed = Vec::new();
        let mut marker: Option<String> = None;
        let mut retries = 0u32;
        loop {
            let page = timeout_at(deadline, async {
                bucket.acquire().await;
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

    /// The target's account, retrying transient errors until the deadline.
    async fn account(&self, target: &Target, deadline: Instant) -> Result<String, AwsError> {
        let mut retries = 0u32;
        loop {
            let result = timeout_at(deadline, self.control.account(target))
                .await
                .unwrap_or_else(|_| Err(deadline_error("GetCallerIdentity", target)));
            match result {
                Err(err) if err.kind.is_retryable() => {
                    let pause = backoff(retries);
                    retries += 1;
                    if Instant::now() + pause >= deadline {
                        return Err(err);
                    }
                    tokio::time::sleep(pause).await;
                }
                other => return other,
            }
        }
    }

    /// The target's account if known without a call: from its role ARN, or from an earlier
    /// GetCallerIdentity.
    fn known_account(&self, target: &Target) -> Option<String> {
        target.role_account().map(str::to_string).or_else(|| {
            let accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
            accounts.get(target).cloned()
        })
    }

    /// Learn the target's account if it is not known yet. Best effort: the account only names
    /// things in reports and the audit log, so a failure is logged and nothing else.
    async fn learn_account(&self, target: &Target, deadline: Instant) {
        if self.known_account(target).is_some() {
            return;
        }
        match self.account(target, deadline).await {
            Ok(account) => {
                let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
                accounts.insert(target.clone(), account);
            }
            Err(err) => {
                warn!(region = %target.region, cause = %err, "account unknown; key stores are handled without it")
            }
        }
    }

    /// Run `work` while the target's account is looked up alongside; once `work` is done the
    /// lookup gets at most [`ACCOUNT_LOOKUP_GRACE`] more, so an unreachable STS never stops a
    /// lockdown and hardly delays its report.
    async fn alongside_account_lookup<T>(
        &self,
        target: &Target,
        deadline: Instant,
        work: impl Future<Output = T>,
    ) -> T {
        let work = pin!(work);
        let lookup = pin!(self.learn_account(target, deadline));
        match select(work, lookup).await {
            Either::Left((done, lookup)) => {
                if tokio::time::timeout(ACCOUNT_LOOKUP_GRACE, lookup)
                    .await
                    .is_err()
                {
                    warn!(region = %target.region, "account lookup unfinished; reported without the account");
                }
                done
            }
            Either::Right(((), work)) => work.await,
        }
    }

    fn bucket(&self, target: &Target, operation: Operation) -> Arc<TokenBucket> {
        // A panic while holding this lock leaves only a map of buckets, still consistent.
        let mut pacers = self.pacers.lock().unwrap_or_else(|p| p.into_inner());
        pacers
            .entry((PacerScope::of(target), operation))
            .or_insert_with(|| Arc::new(TokenBucket::new(self.settings.rate_limit)))
            .clone()
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
    }
}

fn find_id<'a>(listed: &'a [KeyStore], id: &str) -> Option<&'a KeyStore> {
    listed.iter().find(|s| s.custom_key_store_id == id)
}

fn selector_text(spec: &KeyStoreSpec) -> String {
    match &spec.selector {
        KeyStoreSelector::Id(id) => id.clone(),
        KeyStoreSelector::Name(name) => format!("name:{name}"),
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
    };
    entry.insert("region".into(), spec.target.region.clone().into());
    if let Some(role_arn) = &spec.target.role_arn {
        entry.insert("role_arn".into(), role_arn.clone().into());
    }
    serde_json::Value::Object(entry)
}

fn outcome(store: StoreState, account: Option<String>, started: Instant) -> StoreOutcome {
    let finished = store.finished_at.unwrap_or_else(Instant::now);
    StoreOutcome {
        custom_key_store_id: store.custom_key_store_id,
        account,
        connection_state: store.connection_state,
        verified: store.phase == Phase::Verified,
        error: store.error.map(|e| e.to_line()),
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

    use std::collections::{HashSet, VecDeque};

    use super::*;
    use crate::aws::DisconnectAccepted;

    const DEFAULT_ACCOUNT: &str = "111111111111";
    const REGION: &str = "eu-west-1";
    const ROLE_B: &str = "arn:aws:iam::222222222222:role/kms-killswitch";

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Op {
        Disconnect,
        Describe,
    }

    #[derive(Debug, Clone)]
    struct Request {
        at: Instant,
        op: Op,
        account: String,
        region: String,
        custom_key_store_id: Option<String>,
    }

    struct FakeStore {
        id: String,
        name: String,
        account: String,
        region: String,
        state: ConnectionState,
        /// When an accepted Disconnect happened, and the state before it.
        disconnected_at: Option<(Instant, ConnectionState)>,
        /// Never leaves DISCONNECTING.
        stuck: bool,
    }

    #[derive(Default)]
    struct FakeState {
        stores: Vec<FakeStore>,
        requests: Vec<Request>,
        /// Errors to return, in order, for the next calls of an operation (any store).
        scripted: HashMap<String, VecDeque<ErrorKind>>,
        /// Accounts that refuse everything.
        denied_accounts: HashSet<String>,
        /// Stores whose every Disconnect fails with KMSInternalException.
        failing_disconnects: HashSet<String>,
        /// GetCallerIdentity fails (e.g. only a KMS VPC endpoint is reachable).
        sts_unreachable: bool,
        /// GetCallerIdentity answers after this long.
        sts_latency: Duration,
        /// DISCONNECTING → DISCONNECTED after this long.
        transition: Duration,
        /// Describe shows the state before a Disconnect for this long after it.
        consistency_lag: Duration,
    }

    /// An in-memory KMS with the real state machine, quota-free, recording every request.
    #[derive(Default)]
    struct FakeKms {
        state: Mutex<FakeState>,
    }

    fn error(operation: &'static str, kind: ErrorKind) -> AwsError {
        AwsError {
            operation,
            region: REGION.to_string(),
            kind,
            code: format!("{kind:?}Exception"),
            message: "fake".to_string(),
            request_id: Some("rid-error".to_string()),
        }
    }

    fn account_of(target: &Target) -> String {
        match &target.role_arn {
            Some(arn) => arn.split(':').nth(4).unwrap_or_default().to_string(),
            None => DEFAULT_ACCOUNT.to_string(),
        }
    }

    impl FakeKms {
        fn new(transition: Duration) -> Self {
            let fake = FakeKms::default();
            fake.with(|s| s.transition = transition);
            fake
        }

        fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
            f(&mut self.state.lock().unwrap())
        }

        fn add(&self, id: &str, account: &str, state: ConnectionState) {
            self.with(|s| {
                s.stores.push(FakeStore {
                    id: id.to_string(),
                    name: format!("name-{id}"),
                    account: account.to_string(),
                    region: REGION.to_string(),
                    state,
                    disconnected_at: None,
                    stuck: false,
                })
            });
        }

        fn script(&self, op: &str, errors: &[ErrorKind]) {
            self.with(|s| {
                s.scripted
                    .entry(op.to_string())
                    .or_default()
                    .extend(errors.iter().copied())
            });
        }

        fn requests(&self, op: Op) -> Vec<Request> {
            self.with(|s| s.requests.iter().filter(|r| r.op == op).cloned().collect())
        }

        /// The state KMS really has now, and the one Describe shows.
        fn states(
            s: &FakeState,
            store: &FakeStore,
            now: Instant,
        ) -> (ConnectionState, ConnectionState) {
            match &store.disconnected_at {
                None => (store.state.clone(), store.state.clone()),
                Some((at, before)) => {
                    let real = if store.stuck || now < *at + s.transition {
                        ConnectionState::Disconnecting
                    } else {
                        ConnectionState::Disconnected
                    };
                    let seen = if now < *at + s.consistency_lag {
                        before.clone()
                    } else {
                        real.clone()
                    };
                    (real, seen)
                }
            }
        }

        /// What Describe would show for one store now.
        fn seen(&self, id: &str) -> ConnectionState {
            self.with(|s| {
                let store = s
                    .stores
                    .iter()
                    .find(|st| st.id == id)
                    .expect("test store exists");
                FakeKms::states(s, store, Instant::now()).1
            })
        }

        /// Someone reconnects a store behind the switch's back.
        fn reconnect(&self, id: &str) {
            self.with(|s| {
                let store = s
                    .stores
                    .iter_mut()
                    .find(|st| st.id == id)
                    .expect("test store exists");
                store.state = ConnectionState::Connected;
                store.disconnected_at = None;
            });
        }
    }

    impl KeyStoreControl for FakeKms {
        async fn disconnect(
            &self,
            target: &Target,
            custom_key_store_id: &str,
        ) -> Result<DisconnectAccepted, AwsError> {
            let now = Instant::now();
            let account = account_of(target);
            self.with(|s| {
                s.requests.push(Request {
                    at: now,
                    op: Op::Disconnect,
                    account: account.clone(),
                    region: target.region.clone(),
                    custom_key_store_id: Some(custom_key_store_id.to_string()),
                });
                if s.denied_accounts.contains(&account) {
                    return Err(error("DisconnectCustomKeyStore", ErrorKind::AccessDenied));
                }
                if s.failing_disconnects.contains(custom_key_store_id) {
                    return Err(error("DisconnectCustomKeyStore", ErrorKind::Transient));
                }
                if let Some(kind) = s
                    .scripted
                    .get_mut("DisconnectCustomKeyStore")
                    .and_then(VecDeque::pop_front)
                {
                    return Err(error("DisconnectCustomKeyStore", kind));
                }
                let position = s.stores.iter().position(|st| {
                    st.id == custom_key_store_id
                        && st.account == account
                        && st.region == target.region
                });
                let Some(position) = position else {
                    return Err(error("DisconnectCustomKeyStore", ErrorKind::NotFound));
                };
                let (real, _) = FakeKms::states(s, &s.stores[position], now);
                if matches!(
                    real,
                    ConnectionState::Disconnected | ConnectionState::Disconnecting
                ) {
                    return Err(error("DisconnectCustomKeyStore", ErrorKind::InvalidState));
                }
                let store = &mut s.stores[position];
                store.disconnected_at = Some((now, real));
                Ok(DisconnectAccepted {
                    request_id: Some(format!("rid-{}", s.requests.len())),
                })
            })
        }

        async fn describe_page(
            &self,
            target: &Target,
            marker: Option<&str>,
        ) -> Result<(Vec<KeyStore>, Option<String>), AwsError> {
            let now = Instant::now();
            let account = account_of(target);
            self.with(|s| {
                s.requests.push(Request {
                    at: now,
                    op: Op::Describe,
                    account: account.clone(),
                    region: target.region.clone(),
                    custom_key_store_id: None,
                });
                if s.denied_accounts.contains(&account) {
                    return Err(error("DescribeCustomKeyStores", ErrorKind::AccessDenied));
                }
                if let Some(kind) = s
                    .scripted
                    .get_mut("DescribeCustomKeyStores")
                    .and_then(VecDeque::pop_front)
                {
                    return Err(error("DescribeCustomKeyStores", kind));
                }
                // Pages of two stores, to exercise the markers.
                let all: Vec<KeyStore> = s
                    .stores
                    .iter()
                    .filter(|st| st.account == account && st.region == target.region)
                    .map(|st| KeyStore {
                        custom_key_store_id: st.id.clone(),
                        custom_key_store_name: Some(st.name.clone()),
                        custom_key_store_type: Some("EXTERNAL_KEY_STORE".to_string()),
                        connection_state: FakeKms::states(s, st, now).1,
                        connection_error_code: None,
                    })
                    .collect();
                let start: usize = marker.map_or(0, |m| m.parse().unwrap_or(0));
                let end = (start + 2).min(all.len());
                let next = (end < all.len()).then(|| end.to_string());
                Ok((all[start..end].to_vec(), next))
            })
        }

        async fn account(&self, target: &Target) -> Result<String, AwsError> {
            tokio::time::sleep(self.with(|s| s.sts_latency)).await;
            if self.with(|s| s.sts_unreachable) {
                return Err(error("GetCallerIdentity", ErrorKind::Transient));
            }
            Ok(account_of(target))
        }
    }

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

    fn engine(fake: &Arc<FakeKms>, verify_timeout: Duration) -> Engine<FakeKms> {
        Engine::new(fake.clone(), settings(verify_timeout))
    }

    fn store_id(n: usize) -> String {
        format!("cks-{n:017x}")
    }

    fn ten_connected_stores(fake: &FakeKms) -> Vec<KeyStoreSpec> {
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
        let fake = Arc::new(FakeKms::new(Duration::from_millis(500)));
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
        let fake = Arc::new(FakeKms::new(Duration::from_millis(100)));
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
        let fake = Arc::new(FakeKms::new(Duration::from_millis(500)));
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
        let fake = Arc::new(FakeKms::new(Duration::from_millis(500)));
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
        let error = store.error.as_deref().unwrap_or_default();
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
        let fake = Arc::new(FakeKms::new(Duration::from_millis(500)));
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
        let fake = Arc::new(FakeKms::new(Duration::from_millis(500)));
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
        let fake = Arc::new(FakeKms::new(Duration::from_millis(500)));
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
        let fake = Arc::new(FakeKms::new(Duration::from_millis(500)));
        fake.add(&store_id(1), DEFAULT_ACCOUNT, ConnectionState::Connected);
        let engine = engine(&fake, Duration::from_secs(30));
        let fake_for_attacker = fake.clone();
        // Someone reconnects the store 200 ms after our Disconnect was accepted, before it is
        // verified: Describe keeps saying CONNECTED past the consistency grace.
        let attacker = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            fake_for_attacker.reconnect(&store_id(1));
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
        let fake = Arc::new(FakeKms::new(Duration::from_millis(500)));
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
                .as_deref()
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
        let fake = Arc::new(FakeKms::new(Duration::from_millis(500)));
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
                .as_deref()
                .unwrap_or_default()
                .contains("NotFound")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_store_name_fails_and_known_name_is_resolved_once() {
        let fake = Arc::new(FakeKms::new(Duration::from_millis(500)));
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
                .as_deref()
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
        let fake = Arc::new(FakeKms::new(Duration::from_millis(500)));
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
                .as_deref()
                .unwrap_or_default()
                .contains("last state DISCONNECTING")
        );
        assert!(started.elapsed() >= verify_timeout);
        // Polling backed off: far fewer rounds than one per 250 ms.
        let rounds = fake.requests(Op::Describe).len();
        assert!(rounds < 20, "{rounds} describes in {verify_timeout:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_describe_errors_during_verification() {
        let fake = Arc::new(FakeKms::new(Duration::from_millis(500)));
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
        let fake = Arc::new(FakeKms::new(Duration::from_millis(500)));
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
        let fake = Arc::new(FakeKms::new(Duration::from_millis(500)));
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
        let fake = Arc::new(FakeKms::new(Duration::from_millis(500)));
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
        let fake = Arc::new(FakeKms::new(Duration::from_millis(500)));
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
        let error = report.stores[0].error.as_deref().unwrap_or_default();
        assert!(
            error.contains("not DISCONNECTED within") && error.contains("Transient"),
            "{error}"
        );
        assert_within_quota(&fake.requests(Op::Disconnect), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn verifies_at_the_deadline_a_store_that_disconnects_after_the_last_regular_poll() {
        // DISCONNECTED 9.5 s after the Disconnect: after the poll at ~9.2 s, before the deadline.
        let fake = Arc::new(FakeKms::new(Duration::from_millis(9500)));
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
        let fake = Arc::new(FakeKms::new(Duration::from_millis(500)));
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
        let fake = Arc::new(FakeKms::new(Duration::from_millis(500)));
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
        let fake = Arc::new(FakeKms::new(Duration::from_millis(500)));
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
        // Sent again in the first round, not after a Describe retried until the deadline.
        let order: Vec<Op> = fake.with(|s| s.requests.iter().map(|r| r.op).take(3).collect());
        assert_eq!(order, vec![Op::Disconnect, Op::Describe, Op::Disconnect]);
        assert_eq!(fake.seen(&store_id(1)), ConnectionState::Disconnected);
        // KMS never answered a Describe: disconnected, but not verified.
        assert!(!report.stores[0].verified);
    }

    #[tokio::test(start_paused = true)]
    async fn describe_reports_the_account_when_sts_answers_after_kms() {
        let fake = Arc::new(FakeKms::new(Duration::from_millis(500)));
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

    fn rename(fake: &FakeKms, id: &str, name: &str) {
        fake.with(|s| {
            if let Some(store) = s.stores.iter_mut().find(|st| st.id == id) {
                store.name = name.to_string();
            }
        });
    }

    #[tokio::test(start_paused = true)]
    async fn renamed_store_is_followed_by_name_not_by_cached_id() {
        let fake = Arc::new(FakeKms::new(Duration::from_millis(500)));
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
        let fake = Arc::new(FakeKms::new(Duration::from_millis(500)));
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
                .as_deref()
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
