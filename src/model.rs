//! The pure nouns every module shares: where AWS calls go ([`Target`]), how the policy names a key
//! store ([`KeyStoreSelector`], [`KeyStoreSpec`]) and a standard key ([`KeySelector`],
//! [`KeySpec`]), what KMS says of them ([`ConnectionState`], [`KeyState`]), who
//! pulled the switch ([`TriggerSource`]) and the name of one lockdown ([`LockdownId`]).
//!
//! Plain data with their spellings: no I/O, no tokio, no AWS, and no import from any other module
//! of the crate (everything else imports from here).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Where AWS calls for a key store or alarm go: the region and the role to assume (if any).
/// One AWS SDK configuration is built per distinct `Target`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// e.g. `eu-west-1`.
    pub region: String,
    /// `arn:aws:iam::<account>:role/<name>`; `None` = the base credentials.
    pub role_arn: Option<String>,
}

impl Target {
    /// The 12-digit account of `role_arn`; `None` for the base credentials (account unknown
    /// until STS is asked).
    pub fn role_account(&self) -> Option<&str> {
        self.role_arn
            .as_deref()
            .and_then(|arn| arn.split(':').nth(4))
            .filter(|account| !account.is_empty())
    }
}

/// `items` grouped by the [`Target`] their AWS calls go to, in target order, each group in the
/// order given: one client and one request per target (alarm watchers, `rearm`, `check --online`).
pub fn group_by_target<T>(
    items: impl IntoIterator<Item = (Target, T)>,
) -> BTreeMap<Target, Vec<T>> {
    let mut groups: BTreeMap<Target, Vec<T>> = BTreeMap::new();
    for (target, item) in items {
        groups.entry(target).or_default().push(item);
    }
    groups
}

/// How a key store is named in the policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyStoreSelector {
    /// `cks-` + 17 hex digits.
    Id(String),
    /// A `CustomKeyStoreName`, resolved through DescribeCustomKeyStores.
    Name(String),
    /// `all: true`: every custom key store of the target's account and region, resolved at the
    /// time of the trip (and again each enforcement round) by the paginated
    /// DescribeCustomKeyStores that verification uses.
    All,
}

impl fmt::Display for KeyStoreSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyStoreSelector::Id(id) => f.write_str(id),
            KeyStoreSelector::Name(name) => write!(f, "name {name}"),
            KeyStoreSelector::All => f.write_str("all key stores"),
        }
    }
}

/// One entry of `key_stores:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyStoreSpec {
    pub selector: KeyStoreSelector,
    pub target: Target,
}

/// How the policy names a standard KMS key (`keys:`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySelector {
    /// A key ARN (`arn:aws:kms:<region>:<account>:key/<id>`).
    KeyArn(String),
    /// An alias ARN (`arn:aws:kms:<region>:<account>:alias/<name>`), resolved with DescribeKey.
    AliasArn(String),
    /// A key id: a UUID, or `mrk-` and 32 hex digits for a multi-Region key.
    Id(String),
    /// `alias/<name>`, resolved with DescribeKey.
    Alias(String),
}

impl KeySelector {
    /// The `KeyId` to send DescribeKey: the entry as written (KMS takes every form).
    pub fn as_key_id(&self) -> &str {
        match self {
            KeySelector::KeyArn(s)
            | KeySelector::AliasArn(s)
            | KeySelector::Id(s)
            | KeySelector::Alias(s) => s,
        }
    }

    /// An alias must be resolved to its key (DisableKey takes a key id or key ARN only).
    pub fn is_alias(&self) -> bool {
        matches!(self, KeySelector::AliasArn(_) | KeySelector::Alias(_))
    }
}

impl fmt::Display for KeySelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_key_id())
    }
}

/// One entry of `keys:`: a standard KMS key to disable on a trip.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeySpec {
    pub selector: KeySelector,
    pub target: Target,
}

/// A KMS key's `KeyState`, as KMS reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyState {
    Enabled,
    Disabled,
    PendingDeletion,
    /// Any other state (`PendingImport`, `Unavailable`, `Creating`, `Updating`,
    /// `PendingReplicaDeletion`, or one this build does not know).
    Other(String),
}

impl KeyState {
    /// The KMS spelling, e.g. `Disabled`.
    pub fn as_str(&self) -> &str {
        match self {
            KeyState::Enabled => "Enabled",
            KeyState::Disabled => "Disabled",
            KeyState::PendingDeletion => "PendingDeletion",
            KeyState::Other(s) => s,
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "Enabled" => KeyState::Enabled,
            "Disabled" => KeyState::Disabled,
            "PendingDeletion" => KeyState::PendingDeletion,
            other => KeyState::Other(other.to_string()),
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A custom key store's `ConnectionState`, as KMS reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    Connected,
    Connecting,
    Failed,
    Disconnected,
    Disconnecting,
    /// A value this build does not know (KMS may add states).
    Unknown(String),
}

impl ConnectionState {
    /// The KMS spelling, e.g. `DISCONNECTED`.
    pub fn as_str(&self) -> &str {
        match self {
            ConnectionState::Connected => "CONNECTED",
            ConnectionState::Connecting => "CONNECTING",
            ConnectionState::Failed => "FAILED",
            ConnectionState::Disconnected => "DISCONNECTED",
            ConnectionState::Disconnecting => "DISCONNECTING",
            ConnectionState::Unknown(s) => s,
        }
    }

    /// Parse the KMS spelling; anything else is `Unknown`.
    pub fn parse(s: &str) -> Self {
        match s {
            "CONNECTED" => ConnectionState::Connected,
            "CONNECTING" => ConnectionState::Connecting,
            "FAILED" => ConnectionState::Failed,
            "DISCONNECTED" => ConnectionState::Disconnected,
            "DISCONNECTING" => ConnectionState::Disconnecting,
            other => ConnectionState::Unknown(other.to_string()),
        }
    }
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who or what pulled the switch. The same spelling (`snake_case`) in the audit log's `source`
/// and the latch file's `trigger`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerSource {
    File,
    Signal,
    Alarm,
    Cli,
    /// The daemon started with the latch set and resumed the lockdown.
    Resume,
    /// A message on a watched SQS queue (EventBridge, SNS, `aws sns publish`).
    Queue,
}

impl TriggerSource {
    /// The spelling used in the latch file and the audit log, e.g. `cli`.
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerSource::File => "file",
            TriggerSource::Signal => "signal",
            TriggerSource::Alarm => "alarm",
            TriggerSource::Cli => "cli",
            TriggerSource::Resume => "resume",
            TriggerSource::Queue => "queue",
        }
    }
}

impl fmt::Display for TriggerSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name of one lockdown: `ld-<UTC time to the second>Z-<8 random hex digits>`, e.g.
/// `ld-20261129T112233Z-0123abcd`. Sortable, and unique even for two lockdowns in the same second.
/// A latch written by an older build may hold another spelling; it is read as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LockdownId(String);

impl LockdownId {
    /// A fresh id for a lockdown starting now.
    #[allow(clippy::new_without_default)] // each call is a new id: not a default value
    pub fn new() -> Self {
        let stamp: String = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            .to_string()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        LockdownId(format!("ld-{stamp}-{:08x}", fastrand::u32(..)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LockdownId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Tests name their lockdowns (`"ld-1".into()`); the switch only ever makes [`LockdownId::new`].
#[cfg(test)]
impl From<&str> for LockdownId {
    fn from(id: &str) -> Self {
        LockdownId(id.to_string())
    }
}

impl From<LockdownId> for String {
    fn from(id: LockdownId) -> String {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockdown_ids_are_unique_and_sortable() {
        let a = LockdownId::new().to_string();
        let b = LockdownId::new().to_string();
        assert_ne!(a, b);
        assert!(a.starts_with("ld-20"), "{a}");
        assert_eq!(a.len(), "ld-20261129T112233Z-0123abcd".len(), "{a}");
    }
}
