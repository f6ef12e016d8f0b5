//! The running world: key stores with their state history, alarms, temporary credentials, quota
//! buckets, fault rules and the request log, all behind one lock. Owns the lazy state machine
//! (transitions are timestamped entries, so nothing runs in the background). Knows nothing of
//! HTTP or wire formats.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::SimError;
use crate::alarm_history::Timeline;
use crate::faults::{Faults, Selector};
use crate::world::{
    AlarmKind, AlarmState, ConnectionState, KeyStoreType, World, is_account_id, role_account,
};

/// Oldest records are dropped past this many, so a long demo or benchmark cannot exhaust memory.
const REQUEST_LOG_CAPACITY: usize = 200_000;

/// A key store as the simulator truly sees it now (no consistency lag).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreView {
    pub custom_key_store_id: String,
    pub custom_key_store_name: String,
    pub custom_key_store_type: String,
    pub connection_state: String,
    pub connection_error_code: Option<String>,
}

/// An alarm as the simulator sees it now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmView {
    pub alarm_name: String,
    pub alarm_type: String,
    pub state_value: String,
    pub state_reason: String,
}

/// One entry of the request log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Microseconds since the UNIX epoch, when the request arrived.
    pub ts_us: u64,
    /// kms | cloudwatch | sts | sim
    pub service: String,
    /// Wire protocol: awsJson1_1 | awsJson1_0 | rpcv2Cbor | awsQuery | control
    pub protocol: String,
    pub operation: String,
    pub account: Option<String>,
    pub region: Option<String>,
    /// The key store id, or the alarm name(s) joined by commas, the request named.
    pub target: Option<String>,
    pub status: u16,
    pub error_code: Option<String>,
    /// The `app/NAME` of the request's User-Agent (the SDK's `app_name`), if any: tells the
    /// kms-killswitch binary's calls from a test's or the AWS CLI's.
    #[serde(default)]
    pub app: Option<String>,
}

/// Environment variable naming a file to which every simulator process appends one line per
/// request, `<service>:<Operation> <app or ->`: the IAM coverage test reads it after the suite.
pub const OPERATIONS_LOG_ENV: &str = "KMS_SIM_OPERATIONS_LOG";

pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

pub(crate) fn us_to_secs(us: u64) -> f64 {
    // Millisecond precision: what the SDK keeps of epoch-seconds timestamps anyway.
    (us / 1000) as f64 / 1000.0
}

/// One point of a store's history: from `at_us` on, the store is in `state`.
#[derive(Debug, Clone)]
pub(crate) struct Transition {
    pub at_us: u64,
    pub state: ConnectionState,
    pub error_code: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct StoreState {
    pub id: String,
    pub name: String,
    pub store_type: KeyStoreType,
    pub cloud_hsm_cluster_id: Option<String>,
    pub xks_proxy_uri_endpoint: Option<String>,
    pub creation_date: f64,
    /// Ordered by `at_us`; entries in the future are transitions still to come.
    history: Vec<Transition>,
}

impl StoreState {
    pub(crate) fn new(
        id: String,
        name: String,
        store_type: KeyStoreType,
        creation_date: f64,
        initial: Transition,
    ) -> StoreState {
        StoreState {
            id,
            name,
            store_type,
            cloud_hsm_cluster_id: None,
            xks_proxy_uri_endpoint: None,
            creation_date,
            history: vec![initial],
        }
    }

    /// The state in force at `at_us` (the earliest known state for times before it existed).
    pub(crate) fn at(&self, at_us: u64) -> &Transition {
        // `new` starts the history with one entry and `begin` never empties it.
        let earliest = self
            .history
            .first()
            .expect("a store's history is never empty");
        self.history
            .iter()
            .rev()
            .find(|t| t.at_us <= at_us)
            .unwrap_or(earliest)
    }

    /// Cancel transitions scheduled after `now_us` and start a new sequence.
    /// `steps` must be ordered by time, none before `now_us`. An empty `steps` changes nothing,
    /// so the history is never empty.
    pub(crate) fn begin(&mut self, now_us: u64, steps: Vec<Transition>) {
        if steps.is_empty() {
            return;
        }
        self.history.retain(|t| t.at_us <= now_us);
        // Bound the history: the past is kept only for consistency-lag views, and 64 changes
        // cover any lag a test or demo uses.
        if self.history.len() > 64 {
            self.history.drain(..self.history.len() - 64);
        }
        self.history.extend(steps);
    }

    pub(crate) fn view(&self, at_us: u64) -> StoreView {
        let t = self.at(at_us);
        StoreView {
            custom_key_store_id: self.id.clone(),
            custom_key_store_name: self.name.clone(),
            custom_key_store_type: self.store_type.as_str().to_owned(),
            connection_state: t.state.as_str().to_owned(),
            connection_error_code: t.error_code.clone(),
        }
    }

    /// The ConnectionErrorCode a failed connection of this kind of store reports.
    pub(crate) fn default_error_code(&self) -> &'static str {
        match self.store_type {
            KeyStoreType::AwsCloudHsm => "NETWORK_ERRORS",
            KeyStoreType::ExternalKeyStore => "XKS_PROXY_TIMED_OUT",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct AlarmRecord {
    pub name: String,
    pub kind: AlarmKind,
    pub state: AlarmState,
    pub state_reason: String,
    pub state_reason_data: Option<String>,
    pub state_updated: f64,
    pub state_transitioned: f64,
    pub configuration_updated: f64,
    pub alarm_rule: Option<String>,
    pub namespace: Option<String>,
    pub metric_name: Option<String>,
    pub threshold: Option<f64>,
    /// Evaluated state, SetAlarmState's pending revert, history (`alarm_history`).
    pub timeline: Timeline,
}

#[derive(Debug, Default)]
pub(crate) struct RegionState {
    pub key_stores: Vec<StoreState>,
    pub alarms: Vec<AlarmRecord>,
    pub keys: Vec<crate::keys::KeyRecord>,
}

/// Who signed a request.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub account: String,
    /// `arn:aws:iam::A:user/N` or `arn:aws:sts::A:assumed-role/R/S`.
    pub arn: String,
    pub user_id: String,
    /// Temporary credentials: the role they act as, their token and expiry.
    pub role_arn: Option<String>,
    pub session_token: Option<String>,
    pub expires_us: Option<u64>,
}

struct TokenBucket {
    tokens: f64,
    last: Instant,
}

pub(crate) struct State {
    pub regions: BTreeMap<(String, String), RegionState>,
    pub temporary: HashMap<String, Identity>,
    buckets: HashMap<(String, String, String), TokenBucket>,
    pub faults: Faults,
    requests: VecDeque<RequestRecord>,
}

impl State {
    pub(crate) fn region_mut(&mut self, account: &str, region: &str) -> &mut RegionState {
        self.regions
            .entry((account.to_owned(), region.to_owned()))
            .or_default()
    }

    pub(crate) fn region(&self, account: &str, region: &str) -> Option<&RegionState> {
        self.regions.get(&(account.to_owned(), region.to_owned()))
    }

    /// The transition delay for a store: the first matching fault rule that sets one, else the
    /// world's.
    pub(crate) fn transition_delay_ms(&self, settings_ms: u64, selector: &Selector<'_>) -> u64 {
        self.faults
            .matching(selector)
            .find_map(|rule| rule.transition_delay_ms)
            .unwrap_or(settings_ms)
    }
}

/// The simulator: the world as loaded plus everything that changes while it runs.
pub(crate) struct Sim {
    pub world: World,
    state: Mutex<State>,
    /// Opened in append mode from [`OPERATIONS_LOG_ENV`] when the simulator starts, if set.
    operations_log: Option<Mutex<std::fs::File>>,
    /// SQS queues, SNS topics and PutMetricData records: each behind its own lock, so a long
    /// poll or a fan-out never holds the key store and alarm lock.
    pub(crate) queues: crate::sqs::Queues,
    pub(crate) topics: crate::sns::Topics,
    pub(crate) metrics: crate::metrics::MetricStore,
}

impl Sim {
    pub(crate) fn new(world: World) -> Sim {
        let started = now_us();
        let mut regions = BTreeMap::new();
        for (account, account_regions) in &world.accounts {
            for (region, contents) in account_regions {
                let key_stores = contents
                    .key_stores
                    .iter()
                    .map(|decl| {
                        let mut store = StoreState::new(
                            decl.id.clone(),
                            decl.name.clone(),
                            decl.store_type,
                            decl.creation_date.unwrap_or(us_to_secs(started)),
                            Transition {
                                at_us: 0,
                                state: decl.connection_state,
                                error_code: decl.connection_error_code.clone(),
                            },
                        );
                        store.cloud_hsm_cluster_id = decl.cloud_hsm_cluster_id.clone();
                        store.xks_proxy_uri_endpoint = decl.xks_proxy_uri_endpoint.clone();
                        store
                    })
                    .collect();
                let alarms = contents
                    .alarms
                    .iter()
                    .map(|decl| AlarmRecord {
                        name: decl.name.clone(),
                        kind: decl.kind,
                        state: decl.state,
                        state_reason: decl
                            .state_reason
                            .clone()
                            .unwrap_or_else(|| "initial state from the kms-sim world".to_owned()),
                        state_reason_data: None,
                        state_updated: us_to_secs(started),
                        state_transitioned: us_to_secs(started),
                        configuration_updated: us_to_secs(started),
                        alarm_rule: decl.alarm_rule.clone(),
                        namespace: decl.namespace.clone(),
                        metric_name: decl.metric_name.clone(),
                        threshold: decl.threshold,
                        timeline: Timeline::new(decl, &world.settings),
                    })
                    .collect();
                let keys = crate::keys::records(&contents.keys, started);
                regions.insert(
                    (account.clone(), region.clone()),
                    RegionState {
                        key_stores,
                        alarms,
                        keys,
                    },
                );
            }
        }
        let operations_log = std::env::var_os(OPERATIONS_LOG_ENV).and_then(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|err| {
                    tracing::error!(path = %std::path::Path::new(&path).display(), %err, "cannot open the operations log")
                })
                .ok()
                .map(Mutex::new)
        });
        Sim {
            queues: crate::sqs::Queues::from_world(&world),
            topics: crate::sns::Topics::from_world(&world),
            metrics: crate::metrics::MetricStore::default(),
            world,
            operations_log,
            state: Mutex::new(State {
                regions,
                temporary: HashMap::new(),
                buckets: HashMap::new(),
                faults: Faults::default(),
                requests: VecDeque::new(),
            }),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters to a simulator; keep serving rather than poisoning every later request.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Long-term or temporary credentials for an access key id.
    pub(crate) fn identity(&self, access_key_id: &str) -> Option<Identity> {
        if let Some(credential) = self
            .world
            .credentials
            .iter()
            .find(|c| c.access_key_id == access_key_id)
        {
            return Some(Identity {
                access_key_id: credential.access_key_id.clone(),
                secret_access_key: credential.secret_access_key.clone(),
                account: credential.account.clone(),
                arn: format!(
                    "arn:aws:iam::{}:user/{}",
                    credential.account, credential.user_name
                ),
                user_id: format!("AIDA{}", stable_suffix(&credential.access_key_id)),
                role_arn: None,
                session_token: None,
                expires_us: None,
            });
        }
        self.lock().temporary.get(access_key_id).cloned()
    }

    /// Take one token from the quota bucket of (account, region, operation); false = throttle.
    pub(crate) fn take_token(&self, account: &str, region: &str, operation: &str) -> bool {
        let settings = &self.world.settings;
        let rate = settings
            .operation_rate_limits
            .get(operation)
            .copied()
            .unwrap_or(settings.rate_limit_rps);
        self.take_token_at(account, region, operation, rate)
    }

    /// Take one token from the bucket of (account, region, operation) refilled at `rate` per
    /// second; false = throttle. A rate ≤ 0 never throttles.
    pub(crate) fn take_token_at(
        &self,
        account: &str,
        region: &str,
        operation: &str,
        rate: f64,
    ) -> bool {
        let settings = &self.world.settings;
        if rate <= 0.0 {
            return true;
        }
        let rate = match settings.operation_rate_limits.get(operation) {
            Some(_) => rate,
            None => crate::keys::documented_rate(operation).unwrap_or(rate),
        };
        let burst = settings.rate_limit_burst.unwrap_or(rate).max(1.0);
        let now = Instant::now();
        let mut state = self.lock();
        let bucket = state
            .buckets
            .entry((account.to_owned(), region.to_owned(), operation.to_owned()))
            .or_insert(TokenBucket {
                tokens: burst,
                last: now,
            });
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub(crate) fn record(&self, record: RequestRecord) {
        if let Some(log) = &self.operations_log {
            use std::io::Write;
            let line = format!(
                "{}:{} {}\n",
                record.service,
                record.operation,
                record.app.as_deref().unwrap_or("-")
            );
            // One append-mode write per line, so concurrent simulators in several test processes
            // interleave whole lines. A lost line only weakens the coverage test, which then fails.
            if let Ok(mut file) = log.lock() {
                let _ = file.write_all(line.as_bytes());
            }
        }
        let mut state = self.lock();
        if state.requests.len() >= REQUEST_LOG_CAPACITY {
            state.requests.pop_front();
        }
        state.requests.push_back(record);
    }

    pub(crate) fn requests(&self) -> Vec<RequestRecord> {
        self.lock().requests.iter().cloned().collect()
    }

    pub(crate) fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    pub(crate) fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    pub(crate) fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    pub(crate) fn key_stores(&self, account: &str, region: &str) -> Vec<StoreView> {
        let now = now_us();
        self.lock()
            .region(account, region)
            .map(|r| r.key_stores.iter().map(|s| s.view(now)).collect())
            .unwrap_or_default()
    }

    pub(crate) fn alarms(&self, account: &str, region: &str) -> Vec<AlarmView> {
        let mut state = self.lock();
        crate::alarm_history::settle_alarms(&mut state, account, region);
        state
            .region(account, region)
            .map(|r| {
                r.alarms
                    .iter()
                    .map(|a| AlarmView {
                        alarm_name: a.name.clone(),
                        alarm_type: match a.kind {
                            AlarmKind::Metric => "MetricAlarm".to_owned(),
                            AlarmKind::Composite => "CompositeAlarm".to_owned(),
                        },
                        state_value: a.state.as_str().to_owned(),
                        state_reason: a.state_reason.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Force a store's state now, cancelling any transition in flight (an attacker or an
    /// operator acting outside the kill switch).
    pub(crate) fn set_connection_state(
        &self,
        account: &str,
        region: &str,
        custom_key_store_id: &str,
        state: &str,
        error_code: Option<String>,
    ) -> Result<(), SimError> {
        let connection_state =
            ConnectionState::parse(state).ok_or_else(|| SimError::InvalidValue {
                field: "connection state",
                value: state.to_owned(),
            })?;
        let now = now_us();
        let mut guard = self.lock();
        let store = guard
            .region_mut(account, region)
            .key_stores
            .iter_mut()
            .find(|s| s.id == custom_key_store_id)
            .ok_or_else(|| SimError::KeyStoreNotFound {
                account: account.to_owned(),
                region: region.to_owned(),
                custom_key_store_id: custom_key_store_id.to_owned(),
            })?;
        let error_code = match connection_state {
            ConnectionState::Failed => {
                Some(error_code.unwrap_or_else(|| store.default_error_code().to_owned()))
            }
            _ => error_code,
        };
        store.begin(
            now,
            vec![Transition {
                at_us: now,
                state: connection_state,
                error_code,
            }],
        );
        Ok(())
    }

    pub(crate) fn set_alarm_state(
        &self,
        account: &str,
        region: &str,
        alarm_name: &str,
        state_value: &str,
        reason: &str,
    ) -> Result<(), SimError> {
        let state = AlarmState::parse(state_value).ok_or_else(|| SimError::InvalidValue {
            field: "alarm state value",
            value: state_value.to_owned(),
        })?;
        let mut guard = self.lock();
        let alarm = guard
            .region_mut(account, region)
            .alarms
            .iter_mut()
            .find(|a| a.name == alarm_name)
            .ok_or_else(|| SimError::AlarmNotFound {
                account: account.to_owned(),
                region: region.to_owned(),
                alarm_name: alarm_name.to_owned(),
            })?;
        alarm.set_state(state, reason.to_owned(), None);
        Ok(())
    }

    /// Forget every temporary credential issued so far, as a restart of the service would (an
    /// outage): a request signed with one is then refused as AWS refuses a token it does not
    /// recognise (UnrecognizedClientException, InvalidClientTokenId for STS) until the caller
    /// assumes the role again. Returns how many were forgotten.
    pub(crate) fn forget_sessions(&self) -> usize {
        let mut state = self.lock();
        let forgotten = state.temporary.len();
        state.temporary.clear();
        forgotten
    }

    /// The secret access key and session token of every temporary credential held.
    pub(crate) fn issued_secrets(&self) -> Vec<String> {
        self.lock()
            .temporary
            .values()
            .flat_map(|id| [Some(id.secret_access_key.clone()), id.session_token.clone()])
            .flatten()
            .collect()
    }

    /// Issue temporary credentials for `role_arn`, valid for `duration`.
    pub(crate) fn issue_temporary(
        &self,
        role_arn: &str,
        session_name: &str,
        duration: Duration,
    ) -> Option<Identity> {
        let (account, role_path) = role_account(role_arn)?;
        debug_assert!(is_account_id(account));
        let role_name = role_path.rsplit('/').next().unwrap_or(role_path);
        let access_key_id = format!("ASIA{}", random_upper(16));
        let identity = Identity {
            access_key_id: access_key_id.clone(),
            secret_access_key: fastrand_string(40),
            account: account.to_owned(),
            arn: format!("arn:aws:sts::{account}:assumed-role/{role_name}/{session_name}"),
            user_id: format!("AROA{}:{session_name}", stable_suffix(role_arn)),
            role_arn: Some(role_arn.to_owned()),
            session_token: Some(fastrand_string(172)),
            expires_us: Some(now_us() + duration.as_micros() as u64),
        };
        self.lock()
            .temporary
            .insert(access_key_id, identity.clone());
        Some(identity)
    }
}

impl AlarmRecord {
    /// The alarm's evaluation gives `state` now (its metric changed, or the world says so): it
    /// goes there, and a pending SetAlarmState revert is cancelled. Recorded in its history.
    pub(crate) fn set_state(&mut self, state: AlarmState, reason: String, data: Option<String>) {
        let now = now_us();
        self.settle(now);
        self.timeline.revert_at_us = None;
        self.timeline.evaluated = state;
        self.timeline.evaluated_reason = reason.clone();
        self.transition(now, state, reason, data);
        self.timeline.rule_checked_us = now;
    }
}

fn random_upper(len: usize) -> String {
    (0..len)
        .map(|_| {
            let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
            alphabet[fastrand::usize(..alphabet.len())] as char
        })
        .collect()
}

fn fastrand_string(len: usize) -> String {
    (0..len).map(|_| fastrand::alphanumeric()).collect()
}

/// A stable 17-character id suffix derived from a name (for UserId / AssumedRoleId).
fn stable_suffix(name: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(name.as_bytes());
    hex::encode(digest)[..17].to_uppercase()
}

pub(crate) fn random_key_store_id() -> String {
    let hex: String = (0..17)
        .map(|_| char::from_digit(fastrand::u32(..16), 16).unwrap_or('0'))
        .collect();
    format!("cks-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> StoreState {
        StoreState::new(
            "cks-00000000000000001".into(),
            "s".into(),
            KeyStoreType::AwsCloudHsm,
            0.0,
            Transition {
                at_us: 0,
                state: ConnectionState::Connected,
                error_code: None,
            },
        )
    }

    #[test]
    fn scheduled_transitions_take_effect_at_their_time() {
        let mut s = store();
        s.begin(
            100,
            vec![
                Transition {
                    at_us: 100,
                    state: ConnectionState::Disconnecting,
                    error_code: None,
                },
                Transition {
                    at_us: 200,
                    state: ConnectionState::Disconnected,
                    error_code: None,
                },
            ],
        );
        assert_eq!(s.at(99).state, ConnectionState::Connected);
        assert_eq!(s.at(150).state, ConnectionState::Disconnecting);
        assert_eq!(s.at(200).state, ConnectionState::Disconnected);
    }

    #[test]
    fn a_new_sequence_cancels_the_pending_one() {
        let mut s = store();
        s.begin(
            100,
            vec![
                Transition {
                    at_us: 100,
                    state: ConnectionState::Connecting,
                    error_code: None,
                },
                Transition {
                    at_us: 200,
                    state: ConnectionState::Connected,
                    error_code: None,
                },
            ],
        );
        s.begin(
            150,
            vec![Transition {
                at_us: 150,
                state: ConnectionState::Disconnecting,
                error_code: None,
            }],
        );
        assert_eq!(s.at(1_000).state, ConnectionState::Disconnecting);
    }

    #[test]
    fn random_key_store_ids_have_the_kms_shape() {
        assert!(crate::world::is_key_store_id(&random_key_store_id()));
    }
}
