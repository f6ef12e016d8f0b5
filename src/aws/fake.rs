//! The one in-memory fake of KMS and CloudWatch for unit tests (`cfg(test)` only): implements
//! [`KeyStoreControl`] with KMS's custom key store state machine (DISCONNECTING → DISCONNECTED
//! after `transition`, eventually consistent Describes, pages of two stores, per account and
//! region) and [`AlarmSource`] with scripted answers. It records every request with the paused
//! clock's time, returns scripted errors, and adds latency on tokio's clock (never a real sleep).
//! Quota-free: pacing is asserted on the recorded requests. Touches no network and no file
//! except through a test's own probe.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{
    AlarmSource, AlarmState, AlarmStateValue, AwsError, ConnectionState, DisableKeyAccepted,
    DisconnectAccepted, ErrorKind, KeyMetadata, KeyStore, KeyStoreControl, Target,
};
use crate::model::KeyState;

/// The account of a target without a role (what GetCallerIdentity answers).
pub(crate) const DEFAULT_ACCOUNT: &str = "111111111111";
/// The region of the stores [`FakeAws::add`] creates.
pub(crate) const REGION: &str = "eu-west-1";

/// The KMS operations the fake records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Disconnect,
    Describe,
    DisableKey,
    DescribeKey,
}

/// One KMS request as it arrived.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) at: Instant,
    pub(crate) op: Op,
    pub(crate) account: String,
    pub(crate) region: String,
    pub(crate) custom_key_store_id: Option<String>,
    /// What the test's probe said when the request arrived (see [`FakeAws::probe_disconnects`]).
    pub(crate) probe: bool,
}

/// One custom key store.
pub(crate) struct FakeStore {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) account: String,
    pub(crate) region: String,
    pub(crate) state: ConnectionState,
    /// When an accepted Disconnect happened, and the state before it.
    pub(crate) disconnected_at: Option<(Instant, ConnectionState)>,
    /// Never leaves DISCONNECTING.
    pub(crate) stuck: bool,
}

/// One standard KMS key (in [`REGION`]).
pub(crate) struct FakeKey {
    pub(crate) id: String,
    pub(crate) alias: Option<String>,
    pub(crate) account: String,
    pub(crate) state: KeyState,
    /// `KeyManager: AWS`: DisableKey is refused with AccessDenied (its key policy allows none).
    pub(crate) aws_managed: bool,
}

impl FakeKey {
    fn arn(&self) -> String {
        format!("arn:aws:kms:{REGION}:{}:key/{}", self.account, self.id)
    }

    /// `key_id` names this key: its id or key ARN, or (when `aliases`) its alias or alias ARN.
    fn named(&self, key_id: &str, aliases: bool) -> bool {
        key_id == self.id
            || key_id == self.arn()
            || (aliases
                && self.alias.as_deref().is_some_and(|alias| {
                    key_id == alias
                        || key_id == format!("arn:aws:kms:{REGION}:{}:{alias}", self.account)
                }))
    }
}

/// One scripted DescribeAlarms answer: (alarm name, CloudWatch `StateValue`) pairs, or a
/// refusal of that kind.
pub(crate) type AlarmAnswer = Result<Vec<(&'static str, &'static str)>, ErrorKind>;

/// Asked before each Disconnect is taken in; its answer is recorded in [`Request::probe`].
type Probe = Box<dyn Fn() -> bool + Send + Sync>;

/// Everything the fake knows; tests may set it directly through [`FakeAws::with`].
#[derive(Default)]
pub(crate) struct FakeState {
    pub(crate) stores: Vec<FakeStore>,
    pub(crate) keys: Vec<FakeKey>,
    /// Keys whose every DisableKey is refused with AccessDenied.
    pub(crate) denied_keys: HashSet<String>,
    pub(crate) requests: Vec<Request>,
    /// Errors to return, in order, for the next calls of an operation (any store).
    pub(crate) scripted: HashMap<String, VecDeque<ErrorKind>>,
    /// Accounts that refuse everything.
    pub(crate) denied_accounts: HashSet<String>,
    /// Stores whose every Disconnect fails with KMSInternalException.
    pub(crate) failing_disconnects: HashSet<String>,
    /// GetCallerIdentity fails (e.g. only a KMS VPC endpoint is reachable).
    pub(crate) sts_unreachable: bool,
    /// GetCallerIdentity answers after this long.
    pub(crate) sts_latency: Duration,
    /// A Disconnect is taken in (and answered) this long after it arrives.
    pub(crate) disconnect_latency: Duration,
    /// DISCONNECTING → DISCONNECTED after this long.
    pub(crate) transition: Duration,
    /// Describe shows the state before a Disconnect for this long after it.
    pub(crate) consistency_lag: Duration,
    probe: Option<Probe>,
    /// One answer per DescribeAlarms; the last one repeats (none: no alarm exists).
    pub(crate) alarm_script: VecDeque<AlarmAnswer>,
    /// Every DescribeAlarms: the target and the names asked for.
    pub(crate) alarm_calls: Vec<(Target, Vec<String>)>,
    /// Regions whose DescribeAlarms answers (with no alarm) only after this long; `None`: never.
    pub(crate) slow_alarm_regions: Vec<(String, Option<Duration>)>,
    /// Transitions into ALARM the history holds (every call answers those at or after `since`).
    pub(crate) alarm_history: Vec<crate::aws::AlarmTransition>,
    /// Every DescribeAlarmHistory: the target and the names asked for.
    pub(crate) history_calls: Vec<(Target, Vec<String>)>,
}

/// An in-memory KMS (the real state machine, quota-free) and CloudWatch, recording every
/// request.
#[derive(Default)]
pub(crate) struct FakeAws {
    state: Mutex<FakeState>,
}

/// An error as the adapter classifies it; the code is `<kind>Exception` (e.g.
/// `ThrottledException`), so tests can look for the kind in the text.
pub(crate) fn error(operation: &'static str, region: &str, kind: ErrorKind) -> AwsError {
    AwsError {
        operation,
        region: region.to_string(),
        kind,
        code: format!("{kind:?}Exception"),
        message: "fake".to_string(),
        request_id: Some("rid-error".to_string()),
    }
}

/// The account a target acts in: its role's, or [`DEFAULT_ACCOUNT`].
pub(crate) fn account_of(target: &Target) -> String {
    match &target.role_arn {
        Some(arn) => arn.split(':').nth(4).unwrap_or_default().to_string(),
        None => DEFAULT_ACCOUNT.to_string(),
    }
}

impl FakeAws {
    /// A fake whose accepted Disconnects reach DISCONNECTED after `transition`.
    pub(crate) fn new(transition: Duration) -> Self {
        let fake = FakeAws::default();
        fake.with(|s| s.transition = transition);
        fake
    }

    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// A store named `name-<id>` in [`REGION`].
    pub(crate) fn add(&self, id: &str, account: &str, state: ConnectionState) {
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

    /// A customer managed key `id` in [`REGION`] of `account`.
    pub(crate) fn add_key(&self, id: &str, account: &str, state: KeyState) {
        self.with(|s| {
            s.keys.push(FakeKey {
                id: id.to_string(),
                alias: None,
                account: account.to_string(),
                state,
                aws_managed: false,
            })
        });
    }

    /// The key's state now (`None`: no such key).
    pub(crate) fn key_state(&self, id: &str) -> Option<KeyState> {
        self.with(|s| s.keys.iter().find(|k| k.id == id).map(|k| k.state.clone()))
    }

    /// Someone changes a key's state behind the switch's back (e.g. an attacker's EnableKey).
    pub(crate) fn set_key_state(&self, id: &str, state: KeyState) {
        self.with(|s| {
            if let Some(key) = s.keys.iter_mut().find(|k| k.id == id) {
                key.state = state;
            }
        });
    }

    /// Fail the next calls of `op` (e.g. `DisconnectCustomKeyStore`) with these kinds, in order.
    pub(crate) fn script(&self, op: &str, errors: &[ErrorKind]) {
        self.with(|s| {
            s.scripted
                .entry(op.to_string())
                .or_default()
                .extend(errors.iter().copied())
        });
    }

    /// Ask `probe` as each Disconnect arrives (e.g. "is the latch on disk?").
    pub(crate) fn probe_disconnects(&self, probe: impl Fn() -> bool + Send + Sync + 'static) {
        self.with(|s| s.probe = Some(Box::new(probe)));
    }

    pub(crate) fn requests(&self, op: Op) -> Vec<Request> {
        self.with(|s| s.requests.iter().filter(|r| r.op == op).cloned().collect())
    }

    /// Every Disconnect sent: the store id and what the probe said then.
    pub(crate) fn disconnects(&self) -> Vec<(String, bool)> {
        self.requests(Op::Disconnect)
            .into_iter()
            .map(|r| (r.custom_key_store_id.unwrap_or_default(), r.probe))
            .collect()
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

    /// What Describe would show for one store now (`None`: no such store).
    pub(crate) fn state(&self, id: &str) -> Option<ConnectionState> {
        self.with(|s| {
            let store = s.stores.iter().find(|st| st.id == id)?;
            Some(FakeAws::states(s, store, Instant::now()).1)
        })
    }

    /// What Describe would show for one store the test added.
    pub(crate) fn seen(&self, id: &str) -> ConnectionState {
        self.state(id).expect("test store exists")
    }

    /// Someone changes a store's state behind the switch's back (e.g. reconnects it).
    pub(crate) fn set(&self, id: &str, state: ConnectionState) {
        self.with(|s| {
            let store = s
                .stores
                .iter_mut()
                .find(|st| st.id == id)
                .expect("test store exists");
            store.state = state;
            store.disconnected_at = None;
        });
    }

    /// Replace the DescribeAlarms answers: one per call, the last one repeating.
    pub(crate) fn answer_alarms(&self, answers: Vec<AlarmAnswer>) {
        self.with(|s| s.alarm_script = answers.into());
    }

    /// DescribeAlarms in `region` answers (with no alarm) after `delay`; `None`: never.
    pub(crate) fn slow_alarm_region(&self, region: &str, delay: Option<Duration>) {
        self.with(|s| s.slow_alarm_regions.push((region.to_string(), delay)));
    }

    pub(crate) fn alarm_calls(&self) -> Vec<(Target, Vec<String>)> {
        self.with(|s| s.alarm_calls.clone())
    }

    /// DescribeAlarms calls made for `region`.
    pub(crate) fn alarm_calls_in(&self, region: &str) -> usize {
        self.with(|s| {
            s.alarm_calls
                .iter()
                .filter(|(t, _)| t.region == region)
                .count()
        })
    }

    /// Take in a Disconnect that arrived at `now`.
    fn take_disconnect(
        s: &mut FakeState,
        account: &str,
        target: &Target,
        custom_key_store_id: &str,
        now: Instant,
    ) -> Result<DisconnectAccepted, AwsError> {
        const OPERATION: &str = "DisconnectCustomKeyStore";
        let refuse = |kind| Err(error(OPERATION, &target.region, kind));
        if s.denied_accounts.contains(account) {
            return refuse(ErrorKind::AccessDenied);
        }
        if s.failing_disconnects.contains(custom_key_store_id) {
            return refuse(ErrorKind::Transient);
        }
        if let Some(kind) = s.scripted.get_mut(OPERATION).and_then(VecDeque::pop_front) {
            return refuse(kind);
        }
        let position = s.stores.iter().position(|st| {
            st.id == custom_key_store_id && st.account == account && st.region == target.region
        });
        let Some(position) = position else {
            return refuse(ErrorKind::NotFound);
        };
        let (real, _) = FakeAws::states(s, &s.stores[position], now);
        if matches!(
            real,
            ConnectionState::Disconnected | ConnectionState::Disconnecting
        ) {
            return refuse(ErrorKind::InvalidState);
        }
        s.stores[position].disconnected_at = Some((now, real));
        Ok(DisconnectAccepted {
            request_id: Some(format!("rid-{}", s.requests.len())),
        })
    }
}

impl KeyStoreControl for FakeAws {
    async fn disconnect(
        &self,
        target: &Target,
        custom_key_store_id: &str,
    ) -> Result<DisconnectAccepted, AwsError> {
        let account = account_of(target);
        let latency = self.with(|s| {
            let probe = s.probe.as_ref().is_some_and(|probe| probe());
            s.requests.push(Request {
                at: Instant::now(),
                op: Op::Disconnect,
                account: account.clone(),
                region: target.region.clone(),
                custom_key_store_id: Some(custom_key_store_id.to_string()),
                probe,
            });
            s.disconnect_latency
        });
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let now = Instant::now();
        self.with(|s| FakeAws::take_disconnect(s, &account, target, custom_key_store_id, now))
    }

    async fn describe_page(
        &self,
        target: &Target,
        marker: Option<&str>,
    ) -> Result<(Vec<KeyStore>, Option<String>), AwsError> {
        const OPERATION: &str = "DescribeCustomKeyStores";
        let now = Instant::now();
        let account = account_of(target);
        self.with(|s| {
            s.requests.push(Request {
                at: now,
                op: Op::Describe,
                account: account.clone(),
                region: target.region.clone(),
                custom_key_store_id: None,
                probe: false,
            });
            if s.denied_accounts.contains(&account) {
                return Err(error(OPERATION, &target.region, ErrorKind::AccessDenied));
            }
            if let Some(kind) = s.scripted.get_mut(OPERATION).and_then(VecDeque::pop_front) {
                return Err(error(OPERATION, &target.region, kind));
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
                    connection_state: FakeAws::states(s, st, now).1,
                    connection_error_code: None,
                })
                .collect();
            let start: usize = marker.map_or(0, |m| m.parse().unwrap_or(0));
            let end = (start + 2).min(all.len());
            let next = (end < all.len()).then(|| end.to_string());
            Ok((all[start..end].to_vec(), next))
        })
    }

    async fn disable_key(
        &self,
        target: &Target,
        key_id: &str,
    ) -> Result<DisableKeyAccepted, AwsError> {
        const OPERATION: &str = "DisableKey";
        let account = account_of(target);
        self.with(|s| {
            let request_id = Some(format!("rid-{}", s.requests.len()));
            s.requests.push(Request {
                at: Instant::now(),
                op: Op::DisableKey,
                account: account.clone(),
                region: target.region.clone(),
                custom_key_store_id: Some(key_id.to_string()),
                probe: false,
            });
            let refuse = |kind| Err(error(OPERATION, &target.region, kind));
            if s.denied_accounts.contains(&account) || s.denied_keys.contains(key_id) {
                return refuse(ErrorKind::AccessDenied);
            }
            if let Some(kind) = s.scripted.get_mut(OPERATION).and_then(VecDeque::pop_front) {
                return refuse(kind);
            }
            let Some(key) = s.keys.iter_mut().find(|k| {
                k.account == account && target.region == REGION && k.named(key_id, false)
            }) else {
                return refuse(ErrorKind::NotFound);
            };
            if key.aws_managed {
                return refuse(ErrorKind::AccessDenied);
            }
            match key.state {
                KeyState::Enabled | KeyState::Disabled => key.state = KeyState::Disabled,
                _ => return refuse(ErrorKind::InvalidState),
            }
            Ok(DisableKeyAccepted { request_id })
        })
    }

    async fn describe_key(&self, target: &Target, key_id: &str) -> Result<KeyMetadata, AwsError> {
        const OPERATION: &str = "DescribeKey";
        let account = account_of(target);
        self.with(|s| {
            s.requests.push(Request {
                at: Instant::now(),
                op: Op::DescribeKey,
                account: account.clone(),
                region: target.region.clone(),
                custom_key_store_id: Some(key_id.to_string()),
                probe: false,
            });
            let refuse = |kind| Err(error(OPERATION, &target.region, kind));
            if s.denied_accounts.contains(&account) {
                return refuse(ErrorKind::AccessDenied);
            }
            if let Some(kind) = s.scripted.get_mut(OPERATION).and_then(VecDeque::pop_front) {
                return refuse(kind);
            }
            let Some(key) = s
                .keys
                .iter()
                .find(|k| k.account == account && target.region == REGION && k.named(key_id, true))
            else {
                return refuse(ErrorKind::NotFound);
            };
            Ok(KeyMetadata {
                key_id: key.id.clone(),
                arn: Some(key.arn()),
                key_state: key.state.clone(),
                key_manager: Some(if key.aws_managed { "AWS" } else { "CUSTOMER" }.to_string()),
                multi_region: key.id.starts_with("mrk-"),
            })
        })
    }

    async fn account(&self, target: &Target) -> Result<String, AwsError> {
        tokio::time::sleep(self.with(|s| s.sts_latency)).await;
        if self.with(|s| s.sts_unreachable) {
            return Err(error(
                "GetCallerIdentity",
                &target.region,
                ErrorKind::Transient,
            ));
        }
        Ok(account_of(target))
    }
}

impl AlarmSource for FakeAws {
    async fn describe_alarms(
        &self,
        target: &Target,
        alarm_names: &[String],
    ) -> Result<Vec<AlarmState>, AwsError> {
        let slow = self.with(|s| {
            s.alarm_calls.push((target.clone(), alarm_names.to_vec()));
            s.slow_alarm_regions
                .iter()
                .find(|(region, _)| *region == target.region)
                .map(|(_, delay)| *delay)
        });
        if let Some(delay) = slow {
            match delay {
                Some(delay) => tokio::time::sleep(delay).await,
                None => std::future::pending::<()>().await,
            }
            return Ok(Vec::new());
        }
        let answer = self.with(|s| {
            let answer = if s.alarm_script.len() > 1 {
                s.alarm_script.pop_front()
            } else {
                s.alarm_script.front().cloned()
            };
            answer.unwrap_or_else(|| Ok(Vec::new()))
        });
        let states = answer.map_err(|kind| error("DescribeAlarms", &target.region, kind))?;
        Ok(states
            .into_iter()
            .map(|(name, value)| AlarmState {
                alarm_name: name.to_string(),
                state_value: AlarmStateValue::parse(value).expect("a CloudWatch StateValue"),
                state_reason: Some("test".into()),
                alarm_type: "metric",
            })
            .collect())
    }

    async fn alarm_transitions(
        &self,
        target: &Target,
        alarm_names: &[String],
        since: std::time::SystemTime,
    ) -> Result<Vec<crate::aws::AlarmTransition>, AwsError> {
        Ok(self.with(|s| {
            s.history_calls.push((target.clone(), alarm_names.to_vec()));
            s.alarm_history
                .iter()
                .filter(|t| t.timestamp >= since && alarm_names.contains(&t.alarm_name))
                .cloned()
                .collect()
        }))
    }
}
