//! Standard KMS keys (`keys:`): on a trip each key is sent DisableKey (paced per account and
//! region like the Disconnects, by the engine's shared pacer) and verified with DescribeKey until
//! its `KeyState` is `Disabled` (or `PendingDeletion`, which no caller can use either); an alias
//! is resolved with DescribeKey first (DisableKey takes only a key id or key ARN). Every key runs
//! on its own, alongside the stores, so one refused key holds nothing else up. While latched an
//! enforcement round disables again a key seen `Enabled` ([`Engine::enforce_keys`]); `status`
//! and `check --online` describe keys without touching them ([`Engine::describe_keys`]).
//! Talks to AWS only through [`KeyStoreControl`], records through [`AuditSink`].

use futures_util::future::join_all;
use tokio::time::{Instant, sleep_until, timeout_at};
use tracing::{info, warn};

use super::pacing::Operation;
use super::report::{EnforcedKey, KeyOutcome, KeyStatus, LockdownError};
use super::{
    Answer, CONSISTENCY_GRACE, Engine, FINAL_CHECK_ALLOWANCE, Run, VERIFY_POLL_FAST, answer,
    backoff, deadline_error, poll_interval,
};
use crate::audit::{AuditSink, Event, Failed, FailedKey, KeyDisableResult};
use crate::aws::{AwsError, DisableKeyAccepted, ErrorKind, KeyMetadata, KeyStoreControl};
use crate::model::{KeySpec, KeyState, Target};

/// DescribeKey requests per second per account and region. KMS's own quota for it is far
/// higher (shared by every caller of the account), so verification of many keys is not slowed
/// down to the 5/s of the store operations, while a lockdown still leaves nearly all of it to
/// the account's other users.
pub(super) const DESCRIBE_KEY_RATE: u32 = 50;

/// A key's progress through one lockdown or enforcement round.
struct KeyRun {
    spec: KeySpec,
    /// As DisableKey takes it: the entry's id or key ARN, or what its alias resolved to.
    key_id: Option<String>,
    key_state: Option<KeyState>,
    attempts: u32,
    request_ids: Vec<String>,
    /// The last error: final when `failed`, else the last retried one.
    error: Option<LockdownError>,
    verified: bool,
    failed: bool,
    accepted_at: Option<Instant>,
    finished_at: Option<Instant>,
}

/// How one DisableKey ended, for the caller's next step.
enum Sent {
    /// Accepted, or `KMSInvalidStateException` (look at the state and carry on).
    Done,
    /// Throttled, 5xx, or the deadline: send again later.
    Retry,
    /// Refused for good: the key failed.
    Refused,
}

impl KeyRun {
    fn new(spec: KeySpec) -> Self {
        KeyRun {
            spec,
            key_id: None,
            key_state: None,
            attempts: 0,
            request_ids: Vec::new(),
            error: None,
            verified: false,
            failed: false,
            accepted_at: None,
            finished_at: None,
        }
    }

    /// The key's resolved id, or the policy's entry while unresolved.
    fn label(&self) -> String {
        self.key_id
            .clone()
            .unwrap_or_else(|| self.spec.selector.as_key_id().to_string())
    }

    fn outcome(self, account: Option<String>, started: Instant) -> KeyOutcome {
        let finished = self.finished_at.unwrap_or_else(Instant::now);
        KeyOutcome {
            spec: self.spec,
            key_id: self.key_id,
            account,
            key_state: self.key_state,
            verified: self.verified,
            error: self.error,
            attempts: self.attempts,
            request_ids: self.request_ids,
            elapsed: finished.saturating_duration_since(started),
        }
    }
}

/// Disabled, or pending deletion (no cryptographic use either; CancelKeyDeletion leaves it
/// Disabled).
fn is_unusable(state: &KeyState) -> bool {
    matches!(state, KeyState::Disabled | KeyState::PendingDeletion)
}

fn key_error(spec: &KeySpec, label: String, source: AwsError) -> LockdownError {
    LockdownError::KeyAws {
        key: label,
        region: spec.target.region.clone(),
        source,
    }
}

impl<C: KeyStoreControl> Engine<C> {
    /// Every key of a lockdown, each on its own; outcomes in the policy's order.
    pub(super) async fn lockdown_keys(
        &self,
        keys: &[KeySpec],
        dry_run: bool,
        run: &Run<'_>,
        started: Instant,
    ) -> Vec<KeyOutcome> {
        let each = keys
            .iter()
            .map(|spec| self.lockdown_key(spec.clone(), dry_run, run, started));
        join_all(each).await
    }

    /// One key: resolve (aliases, or every key in a dry run), DisableKey, verify Disabled. Its
    /// account is looked up alongside, for the report and the audit log only.
    async fn lockdown_key(
        &self,
        spec: KeySpec,
        dry_run: bool,
        run: &Run<'_>,
        started: Instant,
    ) -> KeyOutcome {
        let target = spec.target.clone();
        let mut key = KeyRun::new(spec);
        let work = async {
            if key.spec.selector.is_alias() || dry_run {
                self.resolve_key(&target, &mut key, dry_run, run).await;
            } else {
                key.key_id = Some(key.spec.selector.as_key_id().to_string());
            }
            if !key.failed && !key.verified && !dry_run {
                self.disable_and_verify(&target, &mut key, run).await;
            }
        };
        self.alongside_account_lookup(&target, run.deadline, work)
            .await;
        key.outcome(self.known_account(&target), started)
    }

    /// DescribeKey the entry: its key id (as ARN), its state; an AWS managed key fails.
    async fn resolve_key(&self, target: &Target, key: &mut KeyRun, dry_run: bool, run: &Run<'_>) {
        let entry = key.spec.selector.as_key_id().to_string();
        match self
            .describe_key_paced(target, &entry, run.deadline, run.deadline)
            .await
        {
            Ok(metadata) => {
                key.key_id = Some(metadata.arn.clone().unwrap_or(metadata.key_id.clone()));
                key.key_state = Some(metadata.key_state.clone());
                if metadata.is_aws_managed() {
                    let error = LockdownError::AwsManagedKey {
                        key: key.label(),
                        region: target.region.clone(),
                    };
                    self.fail_key(key, error);
                } else if dry_run && is_unusable(&metadata.key_state) {
                    key.verified = true;
                }
            }
            Err(err) => {
                let error = key_error(&key.spec, key.label(), err);
                self.fail_key(key, error);
            }
        }
    }

    /// DisableKey until accepted, then DescribeKey rounds until the key is Disabled, sending
    /// DisableKey again if it is seen Enabled after the consistency grace; the last round is at
    /// the deadline itself.
    async fn disable_and_verify(&self, target: &Target, key: &mut KeyRun, run: &Run<'_>) {
        let started = Instant::now();
        let mut interval = VERIFY_POLL_FAST;
        let mut pending = true;
        loop {
            if pending {
                match self.disable_key_once(target, key, run).await {
                    Sent::Done => pending = false,
                    Sent::Retry => {}
                    Sent::Refused => return,
                }
            }
            let next_poll = (Instant::now() + interval).min(run.deadline);
            let last = next_poll >= run.deadline;
            sleep_until(next_poll).await;
            interval = poll_interval(started.elapsed(), interval);
            let (describe_deadline, retry_until) = if last {
                let end = run.deadline + FINAL_CHECK_ALLOWANCE;
                (end, end)
            } else {
                (run.deadline, Instant::now())
            };
            let key_id = key.label();
            match self
                .describe_key_paced(target, &key_id, describe_deadline, retry_until)
                .await
            {
                Ok(metadata) => {
                    if self.take_key_state(target, key, metadata, run).await {
                        return;
                    }
                    let stale = key.accepted_at.is_some_and(|at| {
                        Instant::now().saturating_duration_since(at) < CONSISTENCY_GRACE
                    });
                    if key.key_state == Some(KeyState::Enabled) && !stale {
                        pending = true;
                    }
                }
                Err(err) if err.kind.is_retryable() => {
                    key.error = Some(key_error(&key.spec, key.label(), err));
                }
                Err(err) => {
                    let error = key_error(&key.spec, key.label(), err);
                    self.fail_key(key, error);
                    return;
                }
            }
            if last {
                break;
            }
        }
        let error = LockdownError::KeyNotVerified {
            key: key.label(),
            region: target.region.clone(),
            key_state: key
                .key_state
                .as_ref()
                .map_or_else(|| "unknown".to_string(), |s| s.to_string()),
            verify_timeout: self.settings.verify_timeout,
            last_error: key
                .error
                .take()
                .map(|e| format!("; last error: {}", e.to_line()))
                .unwrap_or_default(),
        };
        self.fail_key(key, error);
    }

    /// Take in one DescribeKey; true when the key is verified (audited) or failed.
    async fn take_key_state(
        &self,
        target: &Target,
        key: &mut KeyRun,
        metadata: KeyMetadata,
        run: &Run<'_>,
    ) -> bool {
        key.key_state = Some(metadata.key_state.clone());
        if metadata.is_aws_managed() {
            let error = LockdownError::AwsManagedKey {
                key: key.label(),
                region: target.region.clone(),
            };
            self.fail_key(key, error);
            return true;
        }
        if !is_unusable(&metadata.key_state) {
            return false;
        }
        key.verified = true;
        key.error = None;
        key.finished_at = Some(Instant::now());
        run.audit
            .record(Event::KeyVerified {
                lockdown_id: run.lockdown_id.to_string(),
                key_id: key.label(),
                region: target.region.clone(),
                key_state: metadata.key_state.to_string(),
            })
            .await;
        info!(key = %key.label(), region = %target.region, key_state = %metadata.key_state, "key verified");
        true
    }

    /// Send one paced DisableKey, audited before and after.
    async fn disable_key_once(&self, target: &Target, key: &mut KeyRun, run: &Run<'_>) -> Sent {
        let Some(key_id) = key.key_id.clone() else {
            return Sent::Refused;
        };
        key.attempts += 1;
        run.audit
            .record(Event::KeyDisableRequested {
                lockdown_id: run.lockdown_id.to_string(),
                key_id: key_id.clone(),
                region: target.region.clone(),
                account: self.known_account(target),
                attempt: key.attempts,
            })
            .await;
        info!(key = %key_id, region = %target.region, attempt = key.attempts, "disable key requested");
        // The token right before the send, after the record is durable (as for Disconnects).
        let result: Result<DisableKeyAccepted, AwsError> = self
            .paced_send(target, Operation::DisableKey, "DisableKey", run, {
                self.control.disable_key(target, &key_id)
            })
            .await;
        let (answer, request_id, error) = answer(&result, |a| a.request_id.clone());
        let audit_result = match answer {
            Answer::Accepted => KeyDisableResult::Accepted,
            Answer::AlreadyDone => KeyDisableResult::AlreadyDisabled,
            Answer::Error => KeyDisableResult::Error,
        };
        run.audit
            .record(Event::KeyDisableResult {
                lockdown_id: run.lockdown_id.to_string(),
                key_id: key_id.clone(),
                region: target.region.clone(),
                result: audit_result,
                request_id: request_id.clone(),
                error,
            })
            .await;
        key.request_ids.extend(request_id);
        match result {
            Ok(_) => {
                key.accepted_at = Some(Instant::now());
                key.error = None;
                Sent::Done
            }
            Err(err) if err.kind == ErrorKind::InvalidState => {
                key.error = None;
                Sent::Done
            }
            Err(err) if err.kind.is_retryable() => {
                warn!(key = %key_id, region = %target.region, cause = %err, "disable key will be retried");
                key.error = Some(key_error(&key.spec, key_id, err));
                Sent::Retry
            }
            Err(err) => {
                let error = key_error(&key.spec, key_id, err);
                self.fail_key(key, error);
                Sent::Refused
            }
        }
    }

    /// One DescribeKey, paced by the engine's DescribeKey pacer, retrying throttling and
    /// transient errors while a retry can start before `retry_until`; it ends at `deadline`.
    async fn describe_key_paced(
        &self,
        target: &Target,
        key_id: &str,
        deadline: Instant,
        retry_until: Instant,
    ) -> Result<KeyMetadata, AwsError> {
        let mut retries = 0u32;
        loop {
            let answer = timeout_at(deadline, async {
                self.key_pacer.acquire(target, Operation::Describe).await;
                self.control.describe_key(target, key_id).await
            })
            .await
            .unwrap_or_else(|_| Err(deadline_error("DescribeKey", target)));
            match answer {
                Err(err) if err.kind.is_retryable() => {
                    let pause = backoff(retries);
                    retries += 1;
                    if Instant::now() + pause >= retry_until.min(deadline) {
                        return Err(err);
                    }
                    tokio::time::sleep(pause).await;
                }
                answer => return answer,
            }
        }
    }

    fn fail_key(&self, key: &mut KeyRun, error: LockdownError) {
        key.failed = true;
        key.finished_at = Some(Instant::now());
        warn!(key = %key.label(), region = %key.spec.target.region, cause = %error.to_line(), "key failed");
        key.error = Some(error);
    }

    /// One enforcement round for the keys while latched: DescribeKey each; a key seen
    /// `Enabled` is recorded as drift and disabled again (its verification is the next round).
    pub async fn enforce_keys(
        &self,
        keys: &[KeySpec],
        lockdown_id: &str,
        audit: &dyn AuditSink,
    ) -> Vec<EnforcedKey> {
        let run = Run {
            lockdown_id,
            deadline: Instant::now() + self.settings.verify_timeout,
            audit,
        };
        let each = keys.iter().map(|spec| self.enforce_key(spec.clone(), &run));
        join_all(each).await
    }

    async fn enforce_key(&self, spec: KeySpec, run: &Run<'_>) -> EnforcedKey {
        let target = spec.target.clone();
        let entry = spec.selector.as_key_id().to_string();
        let mut enforced = EnforcedKey {
            spec: spec.clone(),
            key_id: None,
            account: self.known_account(&target),
            key_state: None,
            verified: false,
            drift: false,
            error: None,
        };
        let metadata = match self
            .describe_key_paced(&target, &entry, run.deadline, run.deadline)
            .await
        {
            Ok(metadata) => metadata,
            Err(err) => {
                enforced.error = Some(key_error(&spec, entry, err).to_line());
                return enforced;
            }
        };
        let key_id = metadata.arn.clone().unwrap_or(metadata.key_id.clone());
        enforced.key_id = Some(key_id.clone());
        enforced.key_state = Some(metadata.key_state.clone());
        enforced.verified = is_unusable(&metadata.key_state);
        if metadata.key_state != KeyState::Enabled {
            return enforced;
        }
        enforced.drift = true;
        run.audit
            .record(Event::KeyDriftDetected {
                key_id: key_id.clone(),
                region: target.region.clone(),
                key_state: metadata.key_state.to_string(),
            })
            .queued();
        warn!(key = %key_id, region = %target.region, "drift detected: key Enabled, disabling again");
        let mut key = KeyRun::new(spec);
        key.key_id = Some(key_id);
        let mut retries = 0u32;
        loop {
            match self.disable_key_once(&target, &mut key, run).await {
                Sent::Done => return enforced,
                Sent::Refused => break,
                Sent::Retry => {
                    let pause = backoff(retries);
                    retries += 1;
                    if Instant::now() + pause >= run.deadline {
                        break;
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
        enforced.error = Some(key.error.as_ref().map_or_else(
            || {
                format!(
                    "KMS key {} in {}: disable not accepted",
                    key.label(),
                    target.region
                )
            },
            LockdownError::to_line,
        ));
        enforced
    }

    /// Describe every listed key without changing anything (for `status` and `check
    /// --online`); an AWS managed key carries the reason it cannot be disabled.
    pub async fn describe_keys(&self, keys: &[KeySpec]) -> Vec<KeyStatus> {
        let deadline = Instant::now() + self.settings.verify_timeout;
        let each = keys.iter().map(|spec| async move {
            let target = &spec.target;
            let entry = spec.selector.as_key_id();
            let answer = self
                .alongside_account_lookup(
                    target,
                    deadline,
                    self.describe_key_paced(target, entry, deadline, deadline),
                )
                .await;
            let (metadata, error) = match answer {
                Ok(metadata) if metadata.is_aws_managed() => {
                    let error = LockdownError::AwsManagedKey {
                        key: metadata.arn.clone().unwrap_or(metadata.key_id.clone()),
                        region: target.region.clone(),
                    };
                    (Some(metadata), Some(error))
                }
                Ok(metadata) => (Some(metadata), None),
                Err(err) => (None, Some(key_error(spec, entry.to_string(), err))),
            };
            KeyStatus {
                spec: spec.clone(),
                account: self.known_account(target),
                metadata,
                error,
            }
        });
        join_all(each).await
    }
}

/// `lockdown_finished`'s `failed` entries for the keys not verified.
pub(super) fn failed_keys(keys: &[KeyOutcome]) -> Vec<Failed> {
    keys.iter()
        .filter(|k| !k.verified)
        .map(|k| {
            Failed::Key(FailedKey {
                key_id: k
                    .key_id
                    .clone()
                    .unwrap_or_else(|| k.spec.selector.as_key_id().to_string()),
                region: k.spec.target.region.clone(),
                key_state: k.key_state.as_ref().map(|s| s.to_string()),
                error: k.error.as_ref().map(LockdownError::to_line),
            })
        })
        .collect()
}

/// The policy entry as `lockdown_started` lists it.
pub(super) fn key_json(spec: &KeySpec) -> serde_json::Value {
    let mut entry = serde_json::Map::new();
    let form = match &spec.selector {
        crate::model::KeySelector::KeyArn(_) | crate::model::KeySelector::AliasArn(_) => "arn",
        crate::model::KeySelector::Id(_) => "id",
        crate::model::KeySelector::Alias(_) => "alias",
    };
    entry.insert(form.into(), spec.selector.as_key_id().into());
    entry.insert("region".into(), spec.target.region.clone().into());
    if let Some(role_arn) = &spec.target.role_arn {
        entry.insert("role_arn".into(), role_arn.clone().into());
    }
    serde_json::Value::Object(entry)
}

#[cfg(test)]
mod tests {
    //! Standard keys against the in-memory KMS on tokio's paused clock.

    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::audit::LockdownOutcome;
    use crate::aws::fake::{DEFAULT_ACCOUNT, FakeAws, Op, REGION};
    use crate::lockdown::LockdownRequest;
    use crate::model::{ConnectionState, KeySelector, KeyStoreSelector, KeyStoreSpec};
    use crate::policy::LockdownSettings;

    const ROLE_B: &str = "arn:aws:iam::222222222222:role/kms-killswitch";

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

    fn engine(fake: &Arc<FakeAws>) -> Engine<FakeAws> {
        let settings = LockdownSettings {
            verify_timeout: Duration::from_secs(10),
            enforce_interval: None,
            rate_limit: 5,
        };
        Engine::new(fake.clone(), settings)
    }

    fn target(role_arn: Option<&str>) -> Target {
        Target {
            region: REGION.to_string(),
            role_arn: role_arn.map(str::to_string),
        }
    }

    fn key_id(n: usize) -> String {
        format!("1e1a0000-0000-4000-8000-{n:012}")
    }

    fn id_key(n: usize, role_arn: Option<&str>) -> KeySpec {
        KeySpec {
            selector: KeySelector::Id(key_id(n)),
            target: target(role_arn),
        }
    }

    fn request(key_stores: Vec<KeyStoreSpec>) -> LockdownRequest {
        LockdownRequest {
            lockdown_id: "ld-keys".to_string(),
            key_stores,
            dry_run: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn disables_and_verifies_keys_alongside_the_stores_across_accounts() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(200)));
        fake.add(
            "cks-00000000000000001",
            DEFAULT_ACCOUNT,
            ConnectionState::Connected,
        );
        let mut keys = Vec::new();
        for n in 0..4 {
            let (account, role) = if n % 2 == 0 {
                (DEFAULT_ACCOUNT, None)
            } else {
                ("222222222222", Some(ROLE_B))
            };
            fake.add_key(&key_id(n), account, KeyState::Enabled);
            keys.push(id_key(n, role));
        }
        fake.add_key(&key_id(9), DEFAULT_ACCOUNT, KeyState::Enabled);
        fake.with(|s| s.keys.last_mut().unwrap().alias = Some("alias/payments".into()));
        keys.push(KeySpec {
            selector: KeySelector::Alias("alias/payments".into()),
            target: target(None),
        });
        let stores = vec![KeyStoreSpec {
            selector: KeyStoreSelector::Id("cks-00000000000000001".into()),
            target: target(None),
        }];
        let audit = Recorded::default();
        let report = engine(&fake)
            .lockdown_with_keys(&request(stores), &keys, &audit)
            .await;

        assert!(report.complete(), "{report:#?}");
        assert_eq!(report.keys.len(), 5);
        for n in [0, 1, 2, 3, 9] {
            assert_eq!(fake.key_state(&key_id(n)), Some(KeyState::Disabled), "{n}");
        }
        // The alias was resolved to its key: DisableKey never takes an alias.
        assert!(fake.requests(Op::DisableKey).iter().all(|r| {
            !r.custom_key_store_id
                .as_deref()
                .unwrap_or("")
                .contains("alias")
        }));
        let events = audit.events();
        let count = |f: fn(&Event) -> bool| events.iter().filter(|e| f(e)).count();
        assert_eq!(count(|e| matches!(e, Event::KeyDisableRequested { .. })), 5);
        assert_eq!(count(|e| matches!(e, Event::KeyVerified { .. })), 5);
        assert!(matches!(
            events.last(),
            Some(Event::LockdownFinished {
                outcome: LockdownOutcome::Complete,
                verified: 1,
                keys_verified: 5,
                ..
            })
        ));
        let Some(Event::LockdownStarted { keys: listed, .. }) = events.first() else {
            panic!("lockdown_started first");
        };
        assert_eq!(listed[4]["alias"], "alias/payments");
    }

    #[tokio::test(start_paused = true)]
    async fn an_access_denied_key_makes_the_lockdown_partial_naming_it_and_holds_nothing_up() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(200)));
        fake.add(
            "cks-00000000000000001",
            DEFAULT_ACCOUNT,
            ConnectionState::Connected,
        );
        for n in 0..3 {
            fake.add_key(&key_id(n), DEFAULT_ACCOUNT, KeyState::Enabled);
        }
        fake.with(|s| s.denied_keys.insert(key_id(1)));
        let keys: Vec<KeySpec> = (0..3).map(|n| id_key(n, None)).collect();
        let stores = vec![KeyStoreSpec {
            selector: KeyStoreSelector::Id("cks-00000000000000001".into()),
            target: target(None),
        }];
        let audit = Recorded::default();
        let report = engine(&fake)
            .lockdown_with_keys(&request(stores), &keys, &audit)
            .await;

        assert_eq!(report.outcome(), LockdownOutcome::Partial);
        assert!(report.stores[0].verified);
        assert!(report.keys[0].verified && report.keys[2].verified);
        let failed = &report.keys[1];
        assert!(!failed.verified);
        let error = failed.error.as_ref().expect("an error").to_line();
        assert!(
            error.contains(&key_id(1)) && error.contains("AccessDenied"),
            "{error}"
        );
        assert_eq!(failed.attempts, 1, "AccessDenied is not retried");
        // Nothing waited for the refused key: the others finished at once.
        assert!(
            report.keys[0].elapsed < Duration::from_secs(2),
            "{report:#?}"
        );
        assert!(
            report.stores[0].elapsed < Duration::from_secs(2),
            "{report:#?}"
        );
        let finished = audit.events().last().cloned();
        let Some(Event::LockdownFinished {
            failed,
            keys_verified: 2,
            ..
        }) = finished
        else {
            panic!("{finished:?}");
        };
        assert_eq!(failed.len(), 1);
        let Failed::Key(key) = &failed[0] else {
            panic!("{failed:?}");
        };
        assert_eq!(key.key_id, key_id(1));
        // Refused before any DescribeKey: no state was seen.
        assert_eq!(key.key_state, None);
        assert!(key.error.as_deref().unwrap_or("").contains("AccessDenied"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_pending_deletion_is_look_and_carry_on_and_an_aws_managed_key_fails_with_its_reason()
     {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(200)));
        fake.add_key(&key_id(0), DEFAULT_ACCOUNT, KeyState::PendingDeletion);
        fake.add_key(&key_id(1), DEFAULT_ACCOUNT, KeyState::Enabled);
        fake.with(|s| {
            let key = s.keys.last_mut().unwrap();
            key.aws_managed = true;
            key.alias = Some("alias/managed".into());
        });
        let keys = vec![
            id_key(0, None),
            KeySpec {
                selector: KeySelector::Alias("alias/managed".into()),
                target: target(None),
            },
        ];
        let audit = Recorded::default();
        let report = engine(&fake)
            .lockdown_with_keys(&request(vec![]), &keys, &audit)
            .await;

        assert!(report.keys[0].verified, "{report:#?}");
        assert_eq!(report.keys[0].key_state, Some(KeyState::PendingDeletion));
        assert!(audit.events().iter().any(|e| matches!(
            e,
            Event::KeyDisableResult {
                result: KeyDisableResult::AlreadyDisabled,
                ..
            }
        )));
        let error = report.keys[1].error.as_ref().expect("refused").to_line();
        assert!(error.contains("AWS managed"), "{error}");
        assert_eq!(
            report.keys[1].attempts, 0,
            "no DisableKey for an AWS managed key"
        );
        assert_eq!(fake.key_state(&key_id(1)), Some(KeyState::Enabled));
    }

    #[tokio::test(start_paused = true)]
    async fn disable_key_requests_are_paced_under_the_rate_limit() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(200)));
        for n in 0..10 {
            fake.add_key(&key_id(n), DEFAULT_ACCOUNT, KeyState::Enabled);
        }
        let keys: Vec<KeySpec> = (0..10).map(|n| id_key(n, None)).collect();
        let report = engine(&fake)
            .lockdown_with_keys(&request(vec![]), &keys, &Recorded::default())
            .await;
        assert!(report.complete(), "{report:#?}");
        let sent = fake.requests(Op::DisableKey);
        assert_eq!(sent.len(), 10);
        // A bucket of 5 refilled at 5/s: every window of 1 s holds at most 5 + 5 requests, and
        // the tenth cannot leave before a second has passed.
        assert!(
            sent[9].at - sent[0].at >= Duration::from_millis(1000),
            "{:?}",
            sent[9].at - sent[0].at
        );
    }

    #[tokio::test(start_paused = true)]
    async fn enforcement_disables_again_a_key_seen_enabled_and_records_drift() {
        let fake = Arc::new(FakeAws::new(Duration::from_millis(200)));
        fake.add_key(&key_id(0), DEFAULT_ACCOUNT, KeyState::Disabled);
        fake.add_key(&key_id(1), DEFAULT_ACCOUNT, KeyState::Disabled);
        let keys = vec![id_key(0, None), id_key(1, None)];
        let engine = engine(&fake);
        let audit = Recorded::default();
        let round = engine.enforce_keys(&keys, "ld-keys", &audit).await;
        assert!(round.iter().all(|k| k.verified && !k.drift), "{round:#?}");

        // An attacker's EnableKey.
        fake.set_key_state(&key_id(1), KeyState::Enabled);
        let round = engine.enforce_keys(&keys, "ld-keys", &audit).await;
        assert!(!round[0].drift && round[1].drift, "{round:#?}");
        assert!(round[1].error.is_none(), "{round:#?}");
        assert_eq!(fake.key_state(&key_id(1)), Some(KeyState::Disabled));
        let drift: Vec<Event> = audit
            .events()
            .into_iter()
            .filter(|e| matches!(e, Event::KeyDriftDetected { .. }))
            .collect();
        assert_eq!(drift.len(), 1, "{drift:?}");
        let Event::KeyDriftDetected { key_state, .. } = &drift[0] else {
            unreachable!()
        };
        assert_eq!(key_state, "Enabled");
    }
}
