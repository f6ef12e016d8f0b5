//! The policy: YAML text → validated, immutable [`Policy`] (DESIGN.md §3).
//!
//! Two stages, like ripgrep's lowargs/hiargs: serde-saphyr parses into raw types with
//! `deny_unknown_fields` (syntax, unknown and duplicate keys, with line and column), then
//! validation turns them into [`Policy`], collecting every semantic error. Pure: no tokio, no AWS,
//! no network; the only I/O is reading the file and checking its permissions.

use std::path::PathBuf;
use std::time::Duration;

/// Where AWS calls for a key store or alarm go: the region and the role to assume (if any).
/// One AWS SDK configuration is built per distinct `Target`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// e.g. `eu-west-1`.
    pub region: String,
    /// `arn:aws:iam::<account>:role/<name>`; `None` = the base credentials.
    pub role_arn: Option<String>,
}

/// How a key store is named in the policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyStoreSelector {
    /// `cks-` + 17 hex digits.
    Id(String),
    /// A `CustomKeyStoreName`, resolved through DescribeCustomKeyStores.
    Name(String),
}

/// One entry of `key_stores:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyStoreSpec {
    pub selector: KeyStoreSelector,
    pub target: Target,
}

/// One entry of `triggers.alarms:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmSpec {
    pub name: String,
    pub target: Target,
    /// Consecutive polls in ALARM before firing (≥ 1).
    pub consecutive: u32,
}

/// `aws.endpoint_url` / `aws.endpoints.*`: explicit endpoints that win over the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// `aws.endpoint_url`: all three services.
    pub all: Option<String>,
    pub kms: Option<String>,
    pub cloudwatch: Option<String>,
    pub sts: Option<String>,
}

/// `triggers.file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileTrigger {
    /// Absolute path of the flag.
    pub path: PathBuf,
    /// Allow a flag directory that other users may write without the sticky bit.
    pub allow_untrusted_flag_dir: bool,
}

/// `triggers.signal`: a real signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalTrigger {
    /// The libc signal number.
    pub number: i32,
    /// Its name as written, e.g. `SIGUSR1`.
    pub name: &'static str,
}

/// `triggers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Triggers {
    /// `None` only if the policy explicitly disables it (`file: none`)… or never: see README.
    pub file: Option<FileTrigger>,
    /// `None` when `signal: none`.
    pub signal: Option<SignalTrigger>,
    pub alarms: Vec<AlarmSpec>,
    pub alarm_poll_interval: Duration,
    /// Dead man's switch: fire when the alarms stay unreadable this long.
    pub fail_closed_after: Option<Duration>,
}

/// `lockdown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockdownSettings {
    /// A store not DISCONNECTED by then is reported as failed.
    pub verify_timeout: Duration,
    /// While latched, re-check every store this often; `None` when `0s` (disabled).
    pub enforce_interval: Option<Duration>,
    /// Requests per second per account, region and operation (> 0).
    pub rate_limit: u32,
}

/// A validated policy. Immutable: a reload builds a new one and swaps it in whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The file it was read from.
    pub path: PathBuf,
    /// Lowercase hex SHA-256 of the file's bytes (the audit log's `policy_sha256`).
    pub sha256: String,
    /// `aws.region`: the default region.
    pub region: String,
    /// `aws.role_arn`: the default role.
    pub role_arn: Option<String>,
    pub endpoints: Endpoints,
    pub key_stores: Vec<KeyStoreSpec>,
    pub triggers: Triggers,
    pub lockdown: LockdownSettings,
    pub state_file: PathBuf,
    pub audit_log: PathBuf,
}

/// Why a policy could not be loaded. Its `Display` is the whole, readable report.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Placeholder until the policy issue lands.
    #[error("policy {path}: not yet implemented")]
    NotImplemented { path: PathBuf },
}
