//! The world file: credentials, roles, accounts → regions → key stores and alarms, and settings.
//! Owns parsing and validating it; knows nothing of HTTP or of the running state (`state.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::SimError;

/// The shipped demo world (`sim/worlds/demo.yaml`).
const DEMO_WORLD: &str = include_str!("../worlds/demo.yaml");

/// A whole simulated AWS: who may sign requests, which roles exist, and what every account and
/// region holds at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct World {
    /// Quotas and timings; every field has a default.
    #[serde(default)]
    pub settings: Settings,
    /// Long-term access keys (IAM users).
    pub credentials: Vec<Credential>,
    /// Roles that may be assumed with sts:AssumeRole.
    #[serde(default)]
    pub roles: Vec<Role>,
    /// account id → region → contents.
    #[serde(default)]
    pub accounts: BTreeMap<String, BTreeMap<String, RegionWorld>>,
}

/// Quotas and timings for the whole world.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Requests per second allowed per account, region and operation (AWS: 5 for the KMS custom
    /// key store operations). 0 turns quotas off.
    pub rate_limit_rps: f64,
    /// Bucket size of each quota; None = one second's worth (`rate_limit_rps`).
    pub rate_limit_burst: Option<f64>,
    /// Per-operation overrides of `rate_limit_rps` (e.g. `DescribeAlarms: 9`).
    pub operation_rate_limits: BTreeMap<String, f64>,
    /// How long DISCONNECTING lasts before DISCONNECTED, and CONNECTING before CONNECTED/FAILED.
    pub transition_delay_ms: u64,
    /// Describe shows each store as it was this long ago (KMS is eventually consistent).
    pub consistency_lag_ms: u64,
    /// Lifetime of AssumeRole credentials when the caller does not ask for one.
    pub session_duration_seconds: u64,
    /// How long a state set with CloudWatch SetAlarmState lasts on a metric alarm before it
    /// returns to the alarm's evaluated state (AWS: "often within seconds"); per alarm:
    /// `set_state_revert_ms`.
    pub alarm_set_state_revert_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            rate_limit_rps: 5.0,
            rate_limit_burst: None,
            operation_rate_limits: BTreeMap::new(),
            transition_delay_ms: 1000,
            consistency_lag_ms: 0,
            session_duration_seconds: 3600,
            alarm_set_state_revert_ms: 3000,
        }
    }
}

/// A long-term access key and the account and user it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub account: String,
    /// IAM user name, for GetCallerIdentity (`arn:aws:iam::ACCOUNT:user/NAME`).
    #[serde(default = "default_user_name")]
    pub user_name: String,
}

fn default_user_name() -> String {
    "kms-sim".to_owned()
}

/// A role and who may assume it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    /// `arn:aws:iam::ACCOUNT:role/NAME`; temporary credentials act in ACCOUNT.
    pub arn: String,
    /// Access key ids of long-term credentials, or role arns (role chaining), allowed to assume it.
    pub assumable_by: Vec<String>,
}

/// What one account holds in one region.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionWorld {
    /// SQS standard queues (see `sqs`).
    #[serde(default)]
    pub queues: Vec<crate::sqs::QueueDecl>,
    /// SNS topics and their SQS subscriptions (see `sns`).
    #[serde(default)]
    pub topics: Vec<crate::sns::TopicDecl>,

    #[serde(default)]
    pub key_stores: Vec<KeyStoreDecl>,
    #[serde(default)]
    pub alarms: Vec<AlarmDecl>,
    /// Standard KMS keys (not custom key stores): DisableKey, EnableKey, DescribeKey, ListAliases.
    #[serde(default)]
    pub keys: Vec<KeyDecl>,
}

/// The kinds of custom key store KMS has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyStoreType {
    #[serde(rename = "AWS_CLOUDHSM")]
    AwsCloudHsm,
    #[serde(rename = "EXTERNAL_KEY_STORE")]
    ExternalKeyStore,
}

impl KeyStoreType {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStoreType::AwsCloudHsm => "AWS_CLOUDHSM",
            KeyStoreType::ExternalKeyStore => "EXTERNAL_KEY_STORE",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "AWS_CLOUDHSM" => Some(KeyStoreType::AwsCloudHsm),
            "EXTERNAL_KEY_STORE" => Some(KeyStoreType::ExternalKeyStore),
            _ => None,
        }
    }
}

/// KMS `ConnectionStateType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConnectionState {
    Connected,
    Connecting,
    Failed,
    Disconnected,
    Disconnecting,
}

impl ConnectionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Connected => "CONNECTED",
            ConnectionState::Connecting => "CONNECTING",
            ConnectionState::Failed => "FAILED",
            ConnectionState::Disconnected => "DISCONNECTED",
            ConnectionState::Disconnecting => "DISCONNECTING",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "CONNECTED" => Some(ConnectionState::Connected),
            "CONNECTING" => Some(ConnectionState::Connecting),
            "FAILED" => Some(ConnectionState::Failed),
            "DISCONNECTED" => Some(ConnectionState::Disconnected),
            "DISCONNECTING" => Some(ConnectionState::Disconnecting),
            _ => None,
        }
    }
}

fn connected() -> ConnectionState {
    ConnectionState::Connected
}

/// One custom key store as declared in the world.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyStoreDecl {
    /// `cks-` followed by 17 hex digits.
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub store_type: KeyStoreType,
    #[serde(default = "connected")]
    pub connection_state: ConnectionState,
    /// KMS `ConnectionErrorCode`, shown while FAILED (e.g. `NETWORK_ERRORS`).
    #[serde(default)]
    pub connection_error_code: Option<String>,
    /// CloudHSM stores: the cluster id (default derived from the store id).
    #[serde(default)]
    pub cloud_hsm_cluster_id: Option<String>,
    /// External stores: the XKS proxy endpoint (default `https://xks.example.com`).
    #[serde(default)]
    pub xks_proxy_uri_endpoint: Option<String>,
    /// Creation time in epoch seconds (default: when the simulator started).
    #[serde(default)]
    pub creation_date: Option<f64>,
}

/// Metric or composite alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlarmKind {
    Metric,
    Composite,
}

/// CloudWatch `StateValue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlarmState {
    Ok,
    Alarm,
    InsufficientData,
}

impl AlarmState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmState::Ok => "OK",
            AlarmState::Alarm => "ALARM",
            AlarmState::InsufficientData => "INSUFFICIENT_DATA",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "OK" => Some(AlarmState::Ok),
            "ALARM" => Some(AlarmState::Alarm),
            "INSUFFICIENT_DATA" => Some(AlarmState::InsufficientData),
            _ => None,
        }
    }
}

fn ok_state() -> AlarmState {
    AlarmState::Ok
}

/// One CloudWatch alarm as declared in the world.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmDecl {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: AlarmKind,
    #[serde(default = "ok_state")]
    pub state: AlarmState,
    #[serde(default)]
    pub state_reason: Option<String>,
    /// Composite alarms: the rule, evaluated again whenever one of the alarms it names changes
    /// state (`alarm_rule.rs` for the syntax); absent = `FALSE` in DescribeAlarms, never evaluated.
    #[serde(default)]
    pub alarm_rule: Option<String>,
    /// Metric alarms: what they watch (cosmetic, returned by DescribeAlarms).
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub metric_name: Option<String>,
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Metric alarms: overrides `settings.alarm_set_state_revert_ms` for this alarm.
    #[serde(default)]
    pub set_state_revert_ms: Option<u64>,
}

/// KMS `KeyState` of a standard key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    Creating,
    Enabled,
    Disabled,
    PendingDeletion,
    PendingImport,
    PendingReplicaDeletion,
    Unavailable,
    Updating,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Creating => "Creating",
            KeyState::Enabled => "Enabled",
            KeyState::Disabled => "Disabled",
            KeyState::PendingDeletion => "PendingDeletion",
            KeyState::PendingImport => "PendingImport",
            KeyState::PendingReplicaDeletion => "PendingReplicaDeletion",
            KeyState::Unavailable => "Unavailable",
            KeyState::Updating => "Updating",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            KeyState::Creating,
            KeyState::Enabled,
            KeyState::Disabled,
            KeyState::PendingDeletion,
            KeyState::PendingImport,
            KeyState::PendingReplicaDeletion,
            KeyState::Unavailable,
            KeyState::Updating,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }
}

/// KMS `KeyManager`: who manages the key. AWS-managed keys cannot be enabled or disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum KeyManager {
    Customer,
    Aws,
}

impl KeyManager {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyManager::Customer => "CUSTOMER",
            KeyManager::Aws => "AWS",
        }
    }
}

fn customer() -> KeyManager {
    KeyManager::Customer
}

fn enabled() -> KeyState {
    KeyState::Enabled
}

fn aws_kms_origin() -> String {
    "AWS_KMS".to_owned()
}

/// One standard KMS key as declared in the world.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyDecl {
    /// A key id: a UUID (`1234abcd-12ab-34cd-56ef-1234567890ab`), or `mrk-` + 32 hex digits for
    /// a multi-Region key. The ARN is `arn:aws:kms:REGION:ACCOUNT:key/ID`.
    pub id: String,
    /// Alias names, each `alias/NAME` (`alias/aws/…` is reserved for AWS-managed keys).
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default = "customer")]
    pub key_manager: KeyManager,
    #[serde(default = "enabled")]
    pub key_state: KeyState,
    /// KMS `Origin`: AWS_KMS | EXTERNAL | AWS_CLOUDHSM | EXTERNAL_KEY_STORE.
    #[serde(default = "aws_kms_origin")]
    pub origin: String,
    /// A multi-Region primary key (its replicas are keys of their own, declared in their region).
    #[serde(default)]
    pub multi_region: bool,
    /// Keys in a custom key store (origin AWS_CLOUDHSM or EXTERNAL_KEY_STORE): the store's id.
    #[serde(default)]
    pub custom_key_store_id: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Creation time in epoch seconds (default: when the simulator started).
    #[serde(default)]
    pub creation_date: Option<f64>,
}

impl World {
    /// Parse and validate a world from YAML text.
    pub fn from_yaml_str(text: &str) -> Result<World, SimError> {
        Self::parse(text, "<string>")
    }

    /// Read, parse and validate a world file.
    pub fn from_file(path: &Path) -> Result<World, SimError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimError::WorldRead {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The shipped demo world, `sim/worlds/demo.yaml`.
    pub fn demo() -> World {
        // The demo world is compiled in and covered by a test, so it always parses.
        Self::parse(DEMO_WORLD, "sim/worlds/demo.yaml").expect("the shipped demo world is valid")
    }

    fn parse(text: &str, origin: &str) -> Result<World, SimError> {
        let world: World = serde_saphyr::from_str(text).map_err(|source| SimError::WorldParse {
            origin: origin.to_owned(),
            source: Box::new(source),
        })?;
        world.validate()?;
        Ok(world)
    }

    /// Check what serde cannot: id formats, uniqueness, role arns, positive rates.
    pub fn validate(&self) -> Result<(), SimError> {
        let invalid = |reason: String| Err(SimError::WorldInvalid { reason });
        let mut access_keys = BTreeSet::new();
        for credential in &self.credentials {
            if !is_account_id(&credential.account) {
                return invalid(format!(
                    "credential {} names account {:?}, which is not 12 digits",
                    credential.access_key_id, credential.account
                ));
            }
            if !access_keys.insert(credential.access_key_id.as_str()) {
                return invalid(format!(
                    "access key id {} is declared twice",
                    credential.access_key_id
                ));
            }
        }
        for role in &self.roles {
            if role_account(&role.arn).is_none() {
                return invalid(format!(
                    "role arn {:?} is not arn:aws:iam::ACCOUNT:role/NAME",
                    role.arn
                ));
            }
        }
        crate::sqs::validate_world(self)
            .and_then(|()| crate::sns::validate_world(self))
            .map_err(|reason| SimError::WorldInvalid { reason })?;
        let settings = &self.settings;
        let rates = std::iter::once(settings.rate_limit_rps)
            .chain(settings.operation_rate_limits.values().copied());
        for rate in rates.chain(settings.rate_limit_burst) {
            if !rate.is_finite() || rate < 0.0 {
                return invalid(format!("rate {rate} must be a finite number ≥ 0"));
            }
        }
        let mut store_ids = BTreeSet::new();
        for (account, regions) in &self.accounts {
            if !is_account_id(account) {
                return invalid(format!("account {account:?} is not 12 digits"));
            }
            for (region, contents) in regions {
                let mut names = BTreeSet::new();
                for store in &contents.key_stores {
                    if !is_key_store_id(&store.id) {
                        return invalid(format!(
                            "key store id {:?} in {account}/{region} is not cks- followed by 17 hex digits",
                            store.id
                        ));
                    }
                    if !store_ids.insert(store.id.as_str()) {
                        return invalid(format!("key store id {} is declared twice", store.id));
                    }
                    if !names.insert(store.name.as_str()) {
                        return invalid(format!(
                            "key store name {} is declared twice in {account}/{region}",
                            store.name
                        ));
                    }
                }
                validate_keys(account, region, &contents.keys)?;
                let mut alarm_names = BTreeSet::new();
                for alarm in &contents.alarms {
                    if !alarm_names.insert(alarm.name.as_str()) {
                        return invalid(format!(
                            "alarm {} is declared twice in {account}/{region}",
                            alarm.name
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

fn validate_keys(account: &str, region: &str, keys: &[KeyDecl]) -> Result<(), SimError> {
    let invalid = |reason: String| Err(SimError::WorldInvalid { reason });
    let mut ids = BTreeSet::new();
    let mut aliases = BTreeSet::new();
    for key in keys {
        if !is_key_id(&key.id) {
            return invalid(format!(
                "key id {:?} in {account}/{region} is neither a UUID nor mrk- followed by 32 hex digits",
                key.id
            ));
        }
        if key.multi_region != key.id.starts_with("mrk-") {
            return invalid(format!(
                "key {} in {account}/{region}: multi-Region key ids start with mrk-, others do not",
                key.id
            ));
        }
        if !ids.insert(key.id.as_str()) {
            return invalid(format!(
                "key id {} is declared twice in {account}/{region}",
                key.id
            ));
        }
        for alias in &key.aliases {
            let Some(name) = alias.strip_prefix("alias/").filter(|n| !n.is_empty()) else {
                return invalid(format!(
                    "alias {alias:?} of key {} is not alias/NAME",
                    key.id
                ));
            };
            if name.starts_with("aws/") != (key.key_manager == KeyManager::Aws) {
                return invalid(format!(
                    "alias {alias} of key {}: alias/aws/… names belong to AWS-managed keys only",
                    key.id
                ));
            }
            if !aliases.insert(alias.as_str()) {
                return invalid(format!(
                    "alias {alias} is declared twice in {account}/{region}"
                ));
            }
        }
    }
    Ok(())
}

/// True for a KMS key id: a UUID in lowercase hex, or `mrk-` and 32 hex digits.
pub(crate) fn is_key_id(text: &str) -> bool {
    if let Some(hex) = text.strip_prefix("mrk-") {
        return hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    let groups: Vec<&str> = text.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// True for a 12-digit AWS account id.
pub(crate) fn is_account_id(text: &str) -> bool {
    text.len() == 12 && text.bytes().all(|b| b.is_ascii_digit())
}

/// True for `cks-` followed by 17 hex digits, the shape of a KMS custom key store id.
pub(crate) fn is_key_store_id(text: &str) -> bool {
    text.strip_prefix("cks-")
        .is_some_and(|hex| hex.len() == 17 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The account of `arn:aws:iam::ACCOUNT:role/NAME`, and the role name.
pub(crate) fn role_account(arn: &str) -> Option<(&str, &str)> {
    let rest = arn.strip_prefix("arn:aws:iam::")?;
    let (account, resource) = rest.split_once(':')?;
    let name = resource.strip_prefix("role/")?;
    (is_account_id(account) && !name.is_empty()).then_some((account, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_world_is_what_issue_3_promises() {
        let world = World::demo();
        let base = &world.credentials[0];
        assert_eq!(
            (
                base.access_key_id.as_str(),
                base.secret_access_key.as_str(),
                base.account.as_str()
            ),
            ("AKIDKMSSIMDEMO", "kms-sim-demo-secret", "111111111111")
        );
        assert_eq!(
            world.accounts.keys().collect::<Vec<_>>(),
            ["111111111111", "222222222222"]
        );
        for regions in world.accounts.values() {
            assert_eq!(
                regions.keys().collect::<Vec<_>>(),
                ["eu-west-1", "us-east-1"]
            );
            for contents in regions.values() {
                let types: BTreeSet<_> = contents
                    .key_stores
                    .iter()
                    .map(|s| s.store_type.as_str())
                    .collect();
                assert_eq!(types.len(), 2, "a CloudHSM and an external store");
                assert!(
                    contents
                        .key_stores
                        .iter()
                        .all(|s| s.connection_state == ConnectionState::Connected)
                );
            }
        }
        let alarms = &world.accounts["111111111111"]["eu-west-1"].alarms;
        assert!(
            alarms
                .iter()
                .any(|a| a.kind == AlarmKind::Metric && a.state == AlarmState::Ok)
        );
        assert!(
            alarms
                .iter()
                .any(|a| a.kind == AlarmKind::Composite && a.state == AlarmState::Ok)
        );
        let role = &world.roles[0];
        assert_eq!(role.arn, "arn:aws:iam::222222222222:role/kms-killswitch");
        assert_eq!(role.assumable_by, ["AKIDKMSSIMDEMO"]);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err =
            World::from_yaml_str("credentials: []\nsettings:\n  rate_limit: 5\n").unwrap_err();
        assert!(matches!(err, SimError::WorldParse { .. }), "{err}");
    }

    #[test]
    fn malformed_ids_and_duplicates_are_refused() {
        let store = |id: &str| {
            format!(
                "credentials: []\naccounts:\n  \"111111111111\":\n    eu-west-1:\n      key_stores:\n        - {{id: {id}, name: a, type: AWS_CLOUDHSM}}\n"
            )
        };
        assert!(World::from_yaml_str(&store("cks-1234567890abcdef0")).is_ok());
        for bad in ["cks-123", "key-1234567890abcdef0", "cks-1234567890abcdefg"] {
            let err = World::from_yaml_str(&store(bad)).unwrap_err();
            assert!(matches!(err, SimError::WorldInvalid { .. }), "{bad}: {err}");
        }
        let twice = "credentials:\n  - {access_key_id: A, secret_access_key: s, account: \"111111111111\"}\n  - {access_key_id: A, secret_access_key: t, account: \"111111111111\"}\n";
        assert!(World::from_yaml_str(twice).is_err());
        let bad_role =
            "credentials: []\nroles:\n  - {arn: \"arn:aws:iam::1:role/x\", assumable_by: []}\n";
        assert!(World::from_yaml_str(bad_role).is_err());
    }

    #[test]
    fn role_arns_give_their_account() {
        assert_eq!(
            role_account("arn:aws:iam::222222222222:role/path/kms-killswitch"),
            Some(("222222222222", "path/kms-killswitch"))
        );
        assert_eq!(role_account("arn:aws:iam::222222222222:user/x"), None);
    }
}
