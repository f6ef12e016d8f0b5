//! The only module that imports `aws_sdk_*`. It owns client construction per [`Target`]
//! (region + role), credential warm-up, and the adapters behind small traits in our own
//! types, [`KeyStoreControl`], [`AlarmSource`] and [`QueueSource`] (SQS, `queue.rs`), so the engine and the daemon are testable with
//! the one in-memory fake of KMS and CloudWatch (`fake`, unit tests only). It knows nothing of
//! policies' YAML, triggers, latches or the audit log.

use std::fmt;
use std::future::Future;

use crate::model::{ConnectionState, KeyState, Target};

mod classify;
mod clients;
#[cfg(test)]
pub(crate) mod fake;
mod messaging;
mod queue;

pub use clients::AwsClients;
pub use queue::{BoxFuture, QueueMessage, QueueSource};

/// One entry of DescribeCustomKeyStores, in our own types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStore {
    pub custom_key_store_id: String,
    pub custom_key_store_name: Option<String>,
    /// `AWS_CLOUDHSM` or `EXTERNAL_KEY_STORE`.
    pub custom_key_store_type: Option<String>,
    pub connection_state: ConnectionState,
    /// Set when `connection_state` is FAILED.
    pub connection_error_code: Option<String>,
}

/// How the engine should treat an AWS error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// `CustomKeyStoreInvalidStateException`: look at the state and carry on.
    InvalidState,
    /// `CustomKeyStoreNotFoundException`: this store fails, the others continue.
    NotFound,
    /// `AccessDeniedException` (or an STS refusal): this account fails, the others continue.
    AccessDenied,
    /// The credentials themselves were refused (`UnrecognizedClientException`,
    /// `InvalidClientTokenId`, `ExpiredToken`): e.g. an assumed-role session AWS no longer
    /// knows after an outage. The adapter drops the target's cached credentials (paced), so a
    /// retry fetches new ones (AssumeRole again): retry.
    CredentialsRejected,
    /// `ThrottlingException` and friends: back off and retry.
    Throttled,
    /// 5xx, `KMSInternalException`, timeouts, dropped connections: retry.
    Transient,
    /// Anything else: not retried.
    Other,
}

/// An AWS call that failed, classified, with the context an operator needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation} in {region}: {code}: {message}")]
pub struct AwsError {
    /// e.g. `DisconnectCustomKeyStore`.
    pub operation: &'static str,
    pub region: String,
    pub kind: ErrorKind,
    /// The AWS error code (`ThrottlingException`), or a short description of a transport failure.
    pub code: String,
    pub message: String,
    /// `x-amzn-RequestId`, when AWS answered.
    pub request_id: Option<String>,
}

impl ErrorKind {
    /// Worth retrying after a pause (throttling, 5xx, timeouts, dropped connections, refused
    /// credentials that are fetched again).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Throttled | ErrorKind::Transient | ErrorKind::CredentialsRejected
        )
    }
}

impl AwsError {
    /// An error raised on our side (no AWS answer), e.g. a malformed response.
    pub fn local(
        operation: &'static str,
        target: &Target,
        kind: ErrorKind,
        message: impl Into<String>,
    ) -> Self {
        AwsError {
            operation,
            region: target.region.clone(),
            kind,
            code: "ClientError".to_string(),
            message: message.into(),
            request_id: None,
        }
    }
}

/// DescribeKey's `KeyMetadata`, in our own types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMetadata {
    pub key_id: String,
    pub arn: Option<String>,
    pub key_state: KeyState,
    /// `CUSTOMER` or `AWS` (an AWS managed key, which nobody can disable).
    pub key_manager: Option<String>,
    pub multi_region: bool,
}

impl KeyMetadata {
    pub fn is_aws_managed(&self) -> bool {
        self.key_manager.as_deref() == Some("AWS")
    }
}

/// A DisableKey that KMS accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisableKeyAccepted {
    pub request_id: Option<String>,
}

/// A Disconnect that KMS accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisconnectAccepted {
    pub request_id: Option<String>,
}

/// The KMS operations the engine needs, for any target. Implemented by the AWS adapter and by
/// in-memory fakes in tests.
pub trait KeyStoreControl: Send + Sync + 'static {
    /// DisconnectCustomKeyStore for one store. One attempt: no retries here (the engine paces
    /// and retries).
    fn disconnect(
        &self,
        target: &Target,
        custom_key_store_id: &str,
    ) -> impl Future<Output = Result<DisconnectAccepted, AwsError>> + Send;

    /// One page of an unfiltered DescribeCustomKeyStores in the target's account and region
    /// (`Limit` 1000). `marker` is the previous page's `NextMarker`; the result carries the next
    /// one, `None` on the last page. One call is one request against the quota, so the engine
    /// paces and loops.
    fn describe_page(
        &self,
        target: &Target,
        marker: Option<&str>,
    ) -> impl Future<Output = Result<(Vec<KeyStore>, Option<String>), AwsError>> + Send;

    /// The account id the target's credentials belong to (from the role ARN, or the caller
    /// identity of the base credentials). Cached.
    fn account(&self, target: &Target) -> impl Future<Output = Result<String, AwsError>> + Send;

    /// DisableKey for one standard key (`key_id`: a key id or key ARN; KMS refuses an alias).
    /// One attempt: the engine paces and retries.
    fn disable_key(
        &self,
        target: &Target,
        key_id: &str,
    ) -> impl Future<Output = Result<DisableKeyAccepted, AwsError>> + Send;

    /// DescribeKey (`key_id` in any form KMS takes: key id, key ARN, alias name, alias ARN).
    fn describe_key(
        &self,
        target: &Target,
        key_id: &str,
    ) -> impl Future<Output = Result<KeyMetadata, AwsError>> + Send;
}

/// A CloudWatch alarm's `StateValue`. An answer without one, or with one this build does not
/// know, is an error of the adapter (the alarm is unreadable), never a guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlarmStateValue {
    Ok,
    Alarm,
    InsufficientData,
}

impl AlarmStateValue {
    /// The CloudWatch spelling, e.g. `ALARM`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmStateValue::Ok => "OK",
            AlarmStateValue::Alarm => "ALARM",
            AlarmStateValue::InsufficientData => "INSUFFICIENT_DATA",
        }
    }

    /// Parse the CloudWatch spelling; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "OK" => Some(AlarmStateValue::Ok),
            "ALARM" => Some(AlarmStateValue::Alarm),
            "INSUFFICIENT_DATA" => Some(AlarmStateValue::InsufficientData),
            _ => None,
        }
    }
}

impl fmt::Display for AlarmStateValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A CloudWatch alarm's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmState {
    pub alarm_name: String,
    pub state_value: AlarmStateValue,
    pub state_reason: Option<String>,
    /// `metric` or `composite`.
    pub alarm_type: &'static str,
}

/// One transition into ALARM that an alarm's history records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmTransition {
    pub alarm_name: String,
    /// When CloudWatch recorded it (wall clock).
    pub timestamp: std::time::SystemTime,
    /// The new state's `stateReason`, when the history carries it.
    pub state_reason: Option<String>,
}

/// CloudWatch DescribeAlarms (and DescribeAlarmHistory) for the alarm trigger.
pub trait AlarmSource: Send + Sync + 'static {
    /// The named alarms (metric and composite) in the target: one DescribeAlarms per ≤ 100 names,
    /// following `NextToken`. An alarm that does not exist is simply absent from the result.
    fn describe_alarms(
        &self,
        target: &Target,
        alarm_names: &[String],
    ) -> impl Future<Output = Result<Vec<AlarmState>, AwsError>> + Send;

    /// DescribeAlarmHistory (`StateUpdate`, metric and composite) of the target's account and
    /// region from `since`: the transitions into ALARM of the named alarms, oldest first. One
    /// request per call (more only if CloudWatch paginates).
    fn alarm_transitions(
        &self,
        target: &Target,
        alarm_names: &[String],
        since: std::time::SystemTime,
    ) -> impl Future<Output = Result<Vec<AlarmTransition>, AwsError>> + Send;
}

/// One heartbeat datum: value 1, unit Count, dimension `Host` (DESIGN.md §9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatDatum {
    pub namespace: String,
    pub metric_name: String,
    pub host: String,
}

/// SNS Publish and CloudWatch PutMetricData: what notifications and the heartbeat send, after
/// the fact and never in a lockdown's way. Implemented by the AWS adapter and by test fakes.
pub trait Messaging: Send + Sync + 'static {
    /// Publish `message` to the topic; the `MessageId` SNS gave it. One attempt.
    fn publish(
        &self,
        target: &Target,
        topic_arn: &str,
        subject: &str,
        message: &str,
    ) -> impl Future<Output = Result<Option<String>, AwsError>> + Send;

    /// PutMetricData of one heartbeat datum. One attempt.
    fn put_heartbeat(
        &self,
        target: &Target,
        datum: &HeartbeatDatum,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
}
