//! The AWS adapters: one SDK configuration per [`Target`] (region + role) built from the
//! standard credential chain, with explicit timeouts, the SDK's own retries turned off (the
//! engine paces and retries, so every request counts against its token buckets), AssumeRole for
//! `role_arn` targets with credentials cached and refreshed ahead of expiry, and the policy's
//! endpoints winning over `AWS_ENDPOINT_URL*`. Credentials AWS refuses (an unknown or expired
//! session) are dropped and fetched again, paced. Implements [`KeyStoreControl`] and
//! [`AlarmSource`] for every target. Never logs or returns a credential.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::identity::IdentityCache;
use aws_config::retry::RetryConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_cloudwatch::types::AlarmType;
use aws_types::service_config::{LoadServiceConfig, ServiceConfigKey};
use tokio::sync::OnceCell;

use super::classify::classify;
use super::{
    AlarmSource, AlarmState, AlarmStateValue, AlarmTransition, AwsError, DisableKeyAccepted,
    DisconnectAccepted, ErrorKind, KeyMetadata, KeyStore, KeyStoreControl,
};
use crate::model::{ConnectionState, KeyState, Target};
use crate::policy::Endpoints;

/// A kill switch must not hang on a black-holed endpoint; KMS and VPC endpoints connect in
/// milliseconds, so 3 s only ever cuts off a dead path (the engine then retries).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One attempt of one call. KMS answers Disconnect and Describe in well under a second; a reply
/// slower than this is treated as transient and retried by the engine within its deadline.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Refresh assumed-role credentials this long before they expire, so a trip never waits on STS.
const CREDENTIALS_REFRESH_AHEAD: Duration = Duration::from_secs(5 * 60);
/// How long fetching credentials (e.g. one AssumeRole) may take.
const CREDENTIALS_LOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// DescribeCustomKeyStores `Limit`: the maximum, so one page usually lists every store.
const DESCRIBE_PAGE_LIMIT: i32 = 1000;
/// CloudWatch DescribeAlarms accepts at most 100 `AlarmNames` per call.
const ALARM_NAMES_PER_CALL: usize = 100;
/// After AWS refuses a target's credentials (e.g. an assumed-role session it forgot in an
/// outage), they are dropped and fetched again, but not more often than this per target: a
/// hundred refused requests at once cause one AssumeRole, and a role whose new sessions are
/// refused too is re-assumed every 2 s at most, never in a storm.
const REFETCH_CREDENTIALS_MIN_INTERVAL: Duration = Duration::from_secs(2);
/// Shown in CloudTrail for the assumed-role session.
const ROLE_SESSION_NAME: &str = "kms-killswitch";

/// The SDK clients of one target, sharing one credentials cache.
pub(super) struct TargetClients {
    kms: aws_sdk_kms::Client,
    pub(super) cloudwatch: aws_sdk_cloudwatch::Client,
    /// For the queue trigger (`super::queue`).
    pub(super) sqs: aws_sdk_sqs::Client,
    sts: aws_sdk_sts::Client,
    /// SNS, for notifications (issue 13); the policy's `endpoint_url` or `AWS_ENDPOINT_URL_SNS`.
    pub(super) sns: aws_sdk_sns::Client,
    /// The account the target's credentials act in; resolved once.
    account: OnceCell<String>,
    /// When these clients (and so their credentials cache) were built; paces re-fetching.
    built_at: std::time::Instant,
    /// AWS refused their credentials: the next use builds new clients (a fresh cache).
    stale: AtomicBool,
}

/// `app/kms-killswitch` in every request's User-Agent: CloudTrail (and kms-sim's operations log)
/// can tell the kill switch's calls from anyone else's.
pub const APP_NAME: &str = "kms-killswitch";

fn app_name() -> aws_config::AppName {
    // APP_NAME is a constant made of the characters AppName allows; this cannot fail.
    aws_config::AppName::new(APP_NAME).expect("APP_NAME is a valid app name")
}

/// The AWS side of the kill switch for every target of a policy.
pub struct AwsClients {
    /// The standard chain (env, profile, SSO, web identity, IMDS), loaded once.
    base: SdkConfig,
    endpoints: Endpoints,
    /// Built on first use of a target (the policy's targets are built up front by `new`).
    targets: Mutex<HashMap<Target, Arc<TargetClients>>>,
}

impl AwsClients {
    /// Load the standard AWS configuration and build clients for `targets`. Makes no network
    /// call: see [`AwsClients::warm_up`].
    pub async fn new(endpoints: &Endpoints, targets: impl IntoIterator<Item = Target>) -> Self {
        Self::with_loader(
            aws_config::defaults(BehaviorVersion::latest()),
            endpoints,
            targets,
        )
        .await
    }

    /// Like [`AwsClients::new`], from a loader the caller has configured further (e.g. explicit
    /// credentials for the benchmark); our timeouts and retry policy are applied on top.
    pub async fn with_loader(
        loader: aws_config::ConfigLoader,
        endpoints: &Endpoints,
        targets: impl IntoIterator<Item = Target>,
    ) -> Self {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .operation_attempt_timeout(ATTEMPT_TIMEOUT)
            .operation_timeout(ATTEMPT_TIMEOUT)
            .build();
        let base = loader
            .app_name(app_name())
            .http_client(shared_https_client())
            .timeout_config(timeouts)
            // One attempt per call: the engine's pacing and backoff are the only retry logic.
            .retry_config(RetryConfig::disabled())
            .load()
            .await;
        let clients = AwsClients {
            base,
            endpoints: endpoints.clone(),
            targets: Mutex::new(HashMap::new()),
        };
        for target in targets {
            clients.clients(&target).await;
        }
        clients
    }

    /// Fetch credentials (AssumeRole where a role is set) and the account of every target, so a
    /// trip makes no STS call while they are valid. Returns each target's account or error.
    pub async fn warm_up(&self) -> Vec<(Target, Result<String, AwsError>)> {
        let targets: Vec<Target> = self.lock_targets().keys().cloned().collect();
        let checks = targets.into_iter().map(|target| async move {
            let clients = self.clients(&target).await;
            // GetCallerIdentity signs with the target's credentials: it fetches and caches them.
            let result = caller_account(&clients.sts, &target)
                .await
                .map_err(|err| self.refused(&target, &clients, err));
            if let Ok(account) = &result {
                let _ = clients.account.set(account.clone());
            }
            (target, result)
        });
        futures_util::future::join_all(checks).await
    }

    fn lock_targets(&self) -> std::sync::MutexGuard<'_, HashMap<Target, Arc<TargetClients>>> {
        // A panic while holding this lock leaves only a cache of clients, still consistent.
        self.targets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) async fn clients(&self, target: &Target) -> Arc<TargetClients> {
        if let Some(existing) = self.lock_targets().get(target)
            && !existing.stale.load(Ordering::SeqCst)
        {
            return existing.clone();
        }
        let built = Arc::new(self.build(target).await);
        let mut targets = self.lock_targets();
        let entry = targets
            .entry(target.clone())
            .or_insert_with(|| built.clone());
        // Another caller may have replaced stale clients meanwhile: keep theirs.
        if entry.stale.load(Ordering::SeqCst) {
            *entry = built;
        }
        entry.clone()
    }

    async fn build(&self, target: &Target) -> TargetClients {
        let region = Region::new(target.region.clone());
        let mut config = self
            .base
            .to_builder()
            .region(region.clone())
            .identity_cache(
                IdentityCache::lazy()
                    .buffer_time(CREDENTIALS_REFRESH_AHEAD)
                    .load_timeout(CREDENTIALS_LOAD_TIMEOUT)
                    .build(),
            );
        if let Some(all) = &self.endpoints.all {
            config = config.endpoint_url(all.clone());
        }
        let config = config.build();
        let sts_config = self.sts_config(&config);
        let config = match &target.role_arn {
            Some(role_arn) => {
                let provider = AssumeRoleProvider::builder(role_arn.clone())
                    .session_name(ROLE_SESSION_NAME)
                    .region(region)
                    .configure(&sts_config)
                    .build()
                    .await;
                config
                    .into_builder()
                    .credentials_provider(SharedCredentialsProvider::new(provider))
                    .build()
            }
            None => config,
        };
        let sts_config = self.sts_config(&config);

        let mut kms = aws_sdk_kms::config::Builder::from(&config);
        if let Some(url) = self.endpoints.kms.as_ref().or(self.endpoints.all.as_ref()) {
            kms = kms.endpoint_url(url.clone());
        }
        let mut cloudwatch = aws_sdk_cloudwatch::config::Builder::from(&config);
        if let Some(url) = self
            .endpoints
            .cloudwatch
            .as_ref()
            .or(self.endpoints.all.as_ref())
        {
            cloudwatch = cloudwatch.endpoint_url(url.clone());
        }
        let mut sqs = aws_sdk_sqs::config::Builder::from(&config);
        if let Some(url) = self.endpoints.all.as_ref() {
            sqs = sqs.endpoint_url(url.clone());
        }
        let mut sns = aws_sdk_sns::config::Builder::from(&config);
        if let Some(url) = &self.endpoints.all {
            sns = sns.endpoint_url(url.clone());
        }
        TargetClients {
            kms: aws_sdk_kms::Client::from_conf(kms.build()),
            cloudwatch: aws_sdk_cloudwatch::Client::from_conf(cloudwatch.build()),
            sqs: aws_sdk_sqs::Client::from_conf(sqs.build()),
            sts: aws_sdk_sts::Client::new(&sts_config),
            sns: aws_sdk_sns::Client::from_conf(sns.build()),
            account: OnceCell::new_with(target.role_account().map(str::to_string)),
            built_at: std::time::Instant::now(),
            stale: AtomicBool::new(false),
        }
    }

    /// Pass `err` on; when AWS refused the credentials themselves, first drop the target's
    /// clients (their credentials cache with them) so the next call fetches new credentials
    /// (AssumeRole again for a role). Only the clients `used` are dropped, and only once per
    /// [`REFETCH_CREDENTIALS_MIN_INTERVAL`].
    pub(super) fn refused(
        &self,
        target: &Target,
        used: &Arc<TargetClients>,
        err: AwsError,
    ) -> AwsError {
        if err.kind != ErrorKind::CredentialsRejected {
            return err;
        }
        let targets = self.lock_targets();
        let current = targets.get(target).is_some_and(|c| Arc::ptr_eq(c, used));
        if current
            && used.built_at.elapsed() >= REFETCH_CREDENTIALS_MIN_INTERVAL
            && !used.stale.swap(true, Ordering::SeqCst)
        {
            tracing::warn!(region = %target.region, role = ?target.role_arn, code = %err.code, "credentials refused; dropping them and fetching new ones");
        }
        err
    }

    /// The configuration STS calls use: the policy's STS endpoint (or `endpoint_url`) wins over
    /// `AWS_ENDPOINT_URL_STS`, which the SDK would otherwise prefer.
    fn sts_config(&self, config: &SdkConfig) -> SdkConfig {
        match self.endpoints.sts.as_ref().or(self.endpoints.all.as_ref()) {
            Some(url) => {
                let mut builder = config.to_builder();
                builder.set_service_config(None::<NoServiceConfig>);
                builder.endpoint_url(url.clone()).build()
            }
            None => config.clone(),
        }
    }
}

/// The one HTTPS client every SDK client of this process shares: the SDK's default (hyper 1.x,
/// rustls with aws-lc, the system's roots, proxies from the environment), built once. Left to
/// itself the SDK builds one per service client, each with its own TLS configuration, root store
/// and connection pool: three per target, ~0.9 MB each, 460 MB for an organisation of 500
/// account-regions.
fn shared_https_client() -> aws_sdk_kms::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    use aws_smithy_http_client::{Builder, ConnectorBuilder, proxy::ProxyConfig};
    Builder::new().build_with_connector_fn(|settings, components| {
        let mut connector =
            ConnectorBuilder::default().tls_provider(Provider::Rustls(CryptoMode::AwsLc));
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        connector.build()
    })
}

/// No per-service settings from the environment (used where the policy's endpoint must win).
#[derive(Debug)]
struct NoServiceConfig;

impl LoadServiceConfig for NoServiceConfig {
    fn load_config(&self, _key: ServiceConfigKey<'_>) -> Option<String> {
        None
    }
}

async fn caller_account(sts: &aws_sdk_sts::Client, target: &Target) -> Result<String, AwsError> {
    const OPERATION: &str = "GetCallerIdentity";
    let output = sts
        .get_caller_identity()
        .send()
        .await
        .map_err(|err| classify(OPERATION, &target.region, &err))?;
    output.account().map(str::to_string).ok_or_else(|| {
        AwsError::local(
            OPERATION,
            target,
            ErrorKind::Other,
            "response without Account",
        )
    })
}

impl KeyStoreControl for AwsClients {
    async fn disconnect(
        &self,
        target: &Target,
        custom_key_store_id: &str,
    ) -> Result<DisconnectAccepted, AwsError> {
        use aws_sdk_kms::operation::RequestId;
        let clients = self.clients(target).await;
        let output = clients
            .kms
            .disconnect_custom_key_store()
            .custom_key_store_id(custom_key_store_id)
            .send()
            .await
            .map_err(|err| {
                let err = classify("DisconnectCustomKeyStore", &target.region, &err);
                self.refused(target, &clients, err)
            })?;
        Ok(DisconnectAccepted {
            request_id: output.request_id().map(str::to_string),
        })
    }

    async fn describe_page(
        &self,
        target: &Target,
        marker: Option<&str>,
    ) -> Result<(Vec<KeyStore>, Option<String>), AwsError> {
        const OPERATION: &str = "DescribeCustomKeyStores";
        let clients = self.clients(target).await;
        let output = clients
            .kms
            .describe_custom_key_stores()
            .limit(DESCRIBE_PAGE_LIMIT)
            .set_marker(marker.map(str::to_string))
            .send()
            .await
            .map_err(|err| {
                self.refused(target, &clients, classify(OPERATION, &target.region, &err))
            })?;
        let mut stores = Vec::with_capacity(output.custom_key_stores().len());
        for entry in output.custom_key_stores() {
            let Some(id) = entry.custom_key_store_id() else {
                return Err(AwsError::local(
                    OPERATION,
                    target,
                    ErrorKind::Other,
                    "response entry without CustomKeyStoreId",
                ));
            };
            stores.push(KeyStore {
                custom_key_store_id: id.to_string(),
                custom_key_store_name: entry.custom_key_store_name().map(str::to_string),
                custom_key_store_type: entry
                    .custom_key_store_type()
                    .map(|t| t.as_str().to_string()),
                connection_state: entry
                    .connection_state()
                    .map(|s| ConnectionState::parse(s.as_str()))
                    .unwrap_or_else(|| ConnectionState::Unknown("(missing)".to_string())),
                connection_error_code: entry
                    .connection_error_code()
                    .map(|c| c.as_str().to_string()),
            });
        }
        let next = if output.truncated() || output.next_marker().is_some() {
            output.next_marker().map(str::to_string)
        } else {
            None
        };
        Ok((stores, next))
    }

    async fn account(&self, target: &Target) -> Result<String, AwsError> {
        let clients = self.clients(target).await;
        clients
            .account
            .get_or_try_init(|| caller_account(&clients.sts, target))
            .await
            .cloned()
            .map_err(|err| self.refused(target, &clients, err))
    }

    async fn disable_key(
        &self,
        target: &Target,
        key_id: &str,
    ) -> Result<DisableKeyAccepted, AwsError> {
        use aws_sdk_kms::operation::RequestId;
        let clients = self.clients(target).await;
        let output = clients
            .kms
            .disable_key()
            .key_id(key_id)
            .send()
            .await
            .map_err(|err| {
                self.refused(
                    target,
                    &clients,
                    classify("DisableKey", &target.region, &err),
                )
            })?;
        Ok(DisableKeyAccepted {
            request_id: output.request_id().map(str::to_string),
        })
    }

    async fn describe_key(&self, target: &Target, key_id: &str) -> Result<KeyMetadata, AwsError> {
        const OPERATION: &str = "DescribeKey";
        let clients = self.clients(target).await;
        let output = clients
            .kms
            .describe_key()
            .key_id(key_id)
            .send()
            .await
            .map_err(|err| {
                self.refused(target, &clients, classify(OPERATION, &target.region, &err))
            })?;
        let Some(metadata) = output.key_metadata() else {
            return Err(AwsError::local(
                OPERATION,
                target,
                ErrorKind::Other,
                "response without KeyMetadata",
            ));
        };
        Ok(KeyMetadata {
            key_id: metadata.key_id().to_string(),
            arn: metadata.arn().map(str::to_string),
            key_state: metadata
                .key_state()
                .map(|s| KeyState::parse(s.as_str()))
                .unwrap_or_else(|| KeyState::Other("(missing)".to_string())),
            key_manager: metadata.key_manager().map(|m| m.as_str().to_string()),
            multi_region: metadata.multi_region().unwrap_or(false),
        })
    }
}

impl AlarmSource for AwsClients {
    async fn describe_alarms(
        &self,
        target: &Target,
        alarm_names: &[String],
    ) -> Result<Vec<AlarmState>, AwsError> {
        let clients = self.clients(target).await;
        let mut alarms = Vec::new();
        for names in alarm_names.chunks(ALARM_NAMES_PER_CALL) {
            let mut next_token: Option<String> = None;
            loop {
                let output = clients
                    .cloudwatch
                    .describe_alarms()
                    .set_alarm_names(Some(names.to_vec()))
                    // Without AlarmTypes only metric alarms come back.
                    .alarm_types(AlarmType::MetricAlarm)
                    .alarm_types(AlarmType::CompositeAlarm)
                    .set_next_token(next_token.take())
                    .send()
                    .await
                    .map_err(|err| {
                        let err = classify("DescribeAlarms", &target.region, &err);
                        self.refused(target, &clients, err)
                    })?;
                for alarm in output.metric_alarms() {
                    alarms.extend(alarm_state(
                        target,
                        alarm.alarm_name(),
                        alarm.state_value().map(|s| s.as_str()),
                        alarm.state_reason(),
                        "metric",
                    )?);
                }
                for alarm in output.composite_alarms() {
                    alarms.extend(alarm_state(
                        target,
                        alarm.alarm_name(),
                        alarm.state_value().map(|s| s.as_str()),
                        alarm.state_reason(),
                        "composite",
                    )?);
                }
                match output.next_token() {
                    Some(token) if !token.is_empty() => next_token = Some(token.to_string()),
                    _ => break,
                }
            }
        }
        Ok(alarms)
    }

    async fn alarm_transitions(
        &self,
        target: &Target,
        alarm_names: &[String],
        since: std::time::SystemTime,
    ) -> Result<Vec<AlarmTransition>, AwsError> {
        use aws_sdk_cloudwatch::types::{HistoryItemType, ScanBy};
        const OPERATION: &str = "DescribeAlarmHistory";
        let clients = self.clients(target).await;
        let mut transitions = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            // One request for every alarm of the account-region (AlarmName filters one alarm
            // only); the names are kept below.
            let output = clients
                .cloudwatch
                .describe_alarm_history()
                .history_item_type(HistoryItemType::StateUpdate)
                .alarm_types(AlarmType::MetricAlarm)
                .alarm_types(AlarmType::CompositeAlarm)
                .start_date(aws_sdk_cloudwatch::primitives::DateTime::from(since))
                .scan_by(ScanBy::TimestampAscending)
                .set_next_token(next_token.take())
                .send()
                .await
                .map_err(|err| {
                    self.refused(target, &clients, classify(OPERATION, &target.region, &err))
                })?;
            for item in output.alarm_history_items() {
                let Some(name) = item
                    .alarm_name()
                    .filter(|n| alarm_names.iter().any(|a| a == n))
                else {
                    continue;
                };
                let Some(timestamp) = item
                    .timestamp()
                    .and_then(|t| std::time::SystemTime::try_from(*t).ok())
                else {
                    continue;
                };
                if let Some(reason) = transition_into_alarm(item.history_data()) {
                    transitions.push(AlarmTransition {
                        alarm_name: name.to_string(),
                        timestamp,
                        state_reason: reason,
                    });
                }
            }
            match output.next_token() {
                Some(token) if !token.is_empty() => next_token = Some(token.to_string()),
                _ => break,
            }
        }
        Ok(transitions)
    }
}

/// A StateUpdate's `HistoryData` (`{"oldState": {...}, "newState": {"stateValue", "stateReason"}}`):
/// `Some(reason)` when it records a change into ALARM from another state.
fn transition_into_alarm(history_data: Option<&str>) -> Option<Option<String>> {
    let data: serde_json::Value = serde_json::from_str(history_data?).ok()?;
    let new = data.get("newState")?;
    let old = data.get("oldState").and_then(|o| o.get("stateValue"));
    (new.get("stateValue")?.as_str()? == "ALARM" && old.and_then(|o| o.as_str()) != Some("ALARM"))
        .then(|| {
            new.get("stateReason")
                .and_then(|r| r.as_str())
                .map(|r| r.chars().take(256).collect())
        })
}

/// An alarm entry in our types; an entry without a name cannot be matched and is skipped. An
/// entry without a `StateValue`, or with one this build does not know, makes the answer an
/// error: that alarm is unreadable (it must not count as a successful read, which would reset
/// the `fail_closed_after` clock).
fn alarm_state(
    target: &Target,
    name: Option<&str>,
    state_value: Option<&str>,
    state_reason: Option<&str>,
    alarm_type: &'static str,
) -> Result<Option<AlarmState>, AwsError> {
    let Some(name) = name else {
        return Ok(None);
    };
    let Some(value) = state_value.and_then(AlarmStateValue::parse) else {
        let message = match state_value {
            None => format!("alarm {name} in the response without StateValue"),
            Some(other) => format!("alarm {name} in the response with unknown StateValue {other}"),
        };
        return Err(AwsError::local(
            "DescribeAlarms",
            target,
            ErrorKind::Other,
            message,
        ));
    };
    Ok(Some(AlarmState {
        alarm_name: name.to_string(),
        state_value: value,
        state_reason: state_reason.map(str::to_string),
        alarm_type,
    }))
}

#[cfg(test)]
mod tests {
    //! The thin adapter against `aws-smithy-mocks`: real SDK serialization and error parsing,
    //! canned HTTP replies, no network.

    use aws_credential_types::Credentials;
    use aws_sdk_cloudwatch::operation::describe_alarms::DescribeAlarmsOutput;
    use aws_sdk_cloudwatch::types::{CompositeAlarm, MetricAlarm, StateValue};
    use aws_sdk_kms::operation::describe_custom_key_stores::DescribeCustomKeyStoresOutput;
    use aws_sdk_kms::types::{
        ConnectionErrorCodeType, ConnectionStateType, CustomKeyStoreType, CustomKeyStoresListEntry,
    };
    use aws_smithy_mocks::{RuleMode, mock};
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    use super::*;

    const REQUEST_ID: &str = "8c6b6a0e-0000-4000-8000-000000000001";

    fn target() -> Target {
        Target {
            region: "eu-west-1".to_string(),
            role_arn: None,
        }
    }

    /// Clients for `target()` whose KMS calls are answered by `rules` in order.
    async fn clients(rules: &[&aws_smithy_mocks::Rule]) -> AwsClients {
        let loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .credentials_provider(Credentials::new(
                "AKIDTEST",
                "test-secret",
                None,
                None,
                "test",
            ));
        let clients = AwsClients::with_loader(loader, &Endpoints::default(), [target()]).await;
        let mut interceptor =
            aws_smithy_mocks::MockResponseInterceptor::new().rule_mode(RuleMode::Sequential);
        for rule in rules {
            interceptor = interceptor.with_rule(rule);
        }
        let existing = clients.clients(&target()).await;
        let kms_config = existing
            .kms
            .config()
            .to_builder()
            .http_client(aws_smithy_mocks::create_mock_http_client())
            .interceptor(interceptor)
            .build();
        let replaced = TargetClients {
            kms: aws_sdk_kms::Client::from_conf(kms_config),
            cloudwatch: existing.cloudwatch.clone(),
            sqs: existing.sqs.clone(),
            sts: existing.sts.clone(),
            sns: existing.sns.clone(),
            account: OnceCell::new_with(Some("111111111111".to_string())),
            built_at: existing.built_at,
            stale: AtomicBool::new(false),
        };
        clients.lock_targets().insert(target(), Arc::new(replaced));
        clients
    }

    /// A KMS error reply as the service sends it (awsJson 1.1).
    fn kms_error(status: u16, error_type: &'static str) -> aws_smithy_mocks::Rule {
        mock!(aws_sdk_kms::Client::disconnect_custom_key_store).then_http_response(move || {
            let body = format!(r#"{{"__type":"{error_type}","message":"from the mock"}}"#);
            let mut response = aws_sdk_kms::config::http::HttpResponse::new(
                StatusCode::try_from(status).expect("a valid status"),
                SdkBody::from(body),
            );
            response
                .headers_mut()
                .insert("x-amzn-RequestId", REQUEST_ID);
            response
                .headers_mut()
                .insert("content-type", "application/x-amz-json-1.1");
            response
        })
    }

    async fn disconnect_error(status: u16, error_type: &'static str) -> AwsError {
        let rule = kms_error(status, error_type);
        let clients = clients(&[&rule]).await;
        clients
            .disconnect(&target(), "cks-1234567890abcdef0")
            .await
            .expect_err("the mock refuses")
    }

    #[tokio::test]
    async fn classifies_throttling_with_its_request_id() {
        let err = disconnect_error(400, "ThrottlingException").await;
        assert_eq!(err.kind, ErrorKind::Throttled);
        assert_eq!(err.code, "ThrottlingException");
        assert_eq!(err.operation, "DisconnectCustomKeyStore");
        assert_eq!(err.request_id.as_deref(), Some(REQUEST_ID));
    }

    #[tokio::test]
    async fn classifies_invalid_state_not_found_and_access_denied() {
        let invalid = disconnect_error(400, "CustomKeyStoreInvalidStateException").await;
        assert_eq!(invalid.kind, ErrorKind::InvalidState);
        let missing = disconnect_error(400, "CustomKeyStoreNotFoundException").await;
        assert_eq!(missing.kind, ErrorKind::NotFound);
        let denied = disconnect_error(400, "AccessDeniedException").await;
        assert_eq!(denied.kind, ErrorKind::AccessDenied);
    }

    #[tokio::test]
    async fn classifies_a_refused_session_as_retryable_credentials_rejected() {
        for code in ["UnrecognizedClientException", "ExpiredTokenException"] {
            let refused = disconnect_error(400, code).await;
            assert_eq!(refused.kind, ErrorKind::CredentialsRejected, "{code}");
            assert!(refused.kind.is_retryable(), "{code}");
        }
        let signature = disconnect_error(400, "InvalidSignatureException").await;
        assert_eq!(signature.kind, ErrorKind::AccessDenied);
    }

    #[tokio::test]
    async fn classifies_server_errors_as_transient() {
        let internal = disconnect_error(500, "KMSInternalException").await;
        assert_eq!(internal.kind, ErrorKind::Transient);
        let unknown_5xx = disconnect_error(503, "SomethingNew").await;
        assert_eq!(unknown_5xx.kind, ErrorKind::Transient);
        let unknown_4xx = disconnect_error(400, "SomethingNew").await;
        assert_eq!(unknown_4xx.kind, ErrorKind::Other);
    }

    #[tokio::test]
    async fn describe_page_maps_entries_and_the_next_marker() {
        let rule = mock!(aws_sdk_kms::Client::describe_custom_key_stores)
            .match_requests(|input| input.limit() == Some(1000) && input.marker() == Some("page-1"))
            .then_output(|| {
                DescribeCustomKeyStoresOutput::builder()
                    .custom_key_stores(
                        CustomKeyStoresListEntry::builder()
                            .custom_key_store_id("cks-1234567890abcdef0")
                            .custom_key_store_name("prod-hsm")
                            .custom_key_store_type(CustomKeyStoreType::AwsCloudhsm)
                            .connection_state(ConnectionStateType::Failed)
                            .connection_error_code(ConnectionErrorCodeType::NetworkErrors)
                            .build(),
                    )
                    .truncated(true)
                    .next_marker("page-2")
                    .build()
            });
        let clients = clients(&[&rule]).await;
        let (stores, next) = clients
            .describe_page(&target(), Some("page-1"))
            .await
            .expect("the mock answers");
        assert_eq!(next.as_deref(), Some("page-2"));
        assert_eq!(
            stores,
            vec![KeyStore {
                custom_key_store_id: "cks-1234567890abcdef0".to_string(),
                custom_key_store_name: Some("prod-hsm".to_string()),
                custom_key_store_type: Some("AWS_CLOUDHSM".to_string()),
                connection_state: ConnectionState::Failed,
                connection_error_code: Some("NETWORK_ERRORS".to_string()),
            }]
        );
    }

    /// Clients for `target()` whose CloudWatch calls are answered by `rules` in order.
    async fn alarm_clients(rules: &[&aws_smithy_mocks::Rule]) -> AwsClients {
        let clients = clients(&[]).await;
        let mut interceptor =
            aws_smithy_mocks::MockResponseInterceptor::new().rule_mode(RuleMode::Sequential);
        for rule in rules {
            interceptor = interceptor.with_rule(rule);
        }
        let existing = clients.clients(&target()).await;
        let cloudwatch_config = existing
            .cloudwatch
            .config()
            .to_builder()
            .http_client(aws_smithy_mocks::create_mock_http_client())
            .interceptor(interceptor)
            .build();
        let replaced = TargetClients {
            kms: existing.kms.clone(),
            cloudwatch: aws_sdk_cloudwatch::Client::from_conf(cloudwatch_config),
            sqs: existing.sqs.clone(),
            sts: existing.sts.clone(),
            sns: existing.sns.clone(),
            account: OnceCell::new_with(Some("111111111111".to_string())),
            built_at: existing.built_at,
            stale: AtomicBool::new(false),
        };
        clients.lock_targets().insert(target(), Arc::new(replaced));
        clients
    }

    /// A DescribeAlarms answer with one metric alarm `a` in `state_value` (`None`: no
    /// StateValue) and one composite alarm `c` in ALARM.
    fn alarms_answer(state_value: Option<StateValue>) -> aws_smithy_mocks::Rule {
        mock!(aws_sdk_cloudwatch::Client::describe_alarms).then_output(move || {
            DescribeAlarmsOutput::builder()
                .metric_alarms(
                    MetricAlarm::builder()
                        .alarm_name("a")
                        .set_state_value(state_value.clone())
                        .state_reason("threshold crossed")
                        .build(),
                )
                .composite_alarms(
                    CompositeAlarm::builder()
                        .alarm_name("c")
                        .state_value(StateValue::Alarm)
                        .build(),
                )
                .build()
        })
    }

    async fn describe_alarms(rule: aws_smithy_mocks::Rule) -> Result<Vec<AlarmState>, AwsError> {
        let clients = alarm_clients(&[&rule]).await;
        clients
            .describe_alarms(&target(), &["a".to_string(), "c".to_string()])
            .await
    }

    #[tokio::test]
    async fn describe_alarms_maps_state_values_of_metric_and_composite_alarms() {
        let states = describe_alarms(alarms_answer(Some(StateValue::InsufficientData)))
            .await
            .expect("the mock answers");
        assert_eq!(
            states,
            vec![
                AlarmState {
                    alarm_name: "a".to_string(),
                    state_value: AlarmStateValue::InsufficientData,
                    state_reason: Some("threshold crossed".to_string()),
                    alarm_type: "metric",
                },
                AlarmState {
                    alarm_name: "c".to_string(),
                    state_value: AlarmStateValue::Alarm,
                    state_reason: None,
                    alarm_type: "composite",
                },
            ]
        );
    }

    #[tokio::test]
    async fn an_alarm_without_a_state_value_is_unreadable_not_insufficient_data() {
        let err = describe_alarms(alarms_answer(None))
            .await
            .expect_err("an answer without StateValue is an error");
        assert_eq!(err.operation, "DescribeAlarms");
        assert_eq!(err.kind, ErrorKind::Other);
        assert!(err.message.contains("alarm a") && err.message.contains("without StateValue"));
    }

    #[tokio::test]
    async fn an_alarm_with_an_unknown_state_value_is_unreadable() {
        let err = describe_alarms(alarms_answer(Some(StateValue::from("SNOOZED"))))
            .await
            .expect_err("an unknown StateValue is an error");
        assert!(err.message.contains("unknown StateValue SNOOZED"), "{err}");
    }

    #[test]
    fn account_comes_from_the_role_arn_without_a_call() {
        let role = Target {
            region: "eu-west-1".to_string(),
            role_arn: Some("arn:aws:iam::222222222222:role/kms-killswitch".to_string()),
        };
        assert_eq!(role.role_account(), Some("222222222222"));
        assert_eq!(target().role_account(), None);
    }
}
