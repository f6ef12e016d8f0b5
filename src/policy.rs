//! The policy: YAML text → validated, immutable [`Policy`] (DESIGN.md §3).
//!
//! Two stages, like ripgrep's lowargs/hiargs: serde-saphyr parses into raw types with
//! `deny_unknown_fields` (syntax, unknown and duplicate keys, with line and column), then
//! validation turns them into [`Policy`], collecting every semantic error with the line and column
//! of the value it is about (the raw types carry `serde_saphyr::Spanned` values for that).
//!
//! Pure: no tokio, no AWS, no network; the only I/O is reading the file and checking its
//! permissions and its directories' in [`load`]. It must not reach into any other module of the
//! crate but the leaf [`crate::fs_trust`] (the one judge of path trust).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};
use sha2::Digest;

use crate::model::{KeyStoreSelector, KeyStoreSpec, Target};

/// The only policy version this build reads.
pub const SUPPORTED_VERSION: u32 = 1;
/// Default flag path: `/run` is a tmpfs that only root can write, and is emptied at boot, so a
/// flag cannot outlive the machine's uptime without the latch recording it.
pub const DEFAULT_FLAG_PATH: &str = "/run/kms-killswitch";
/// Default signal: SIGUSR1 is free for applications and never sent by the kernel or by systemd.
pub const DEFAULT_SIGNAL: &str = "SIGUSR1";
/// Default alarm poll: CloudWatch evaluates metric alarms at most every 10 s, so faster polling
/// learns nothing new and spends the DescribeAlarms quota.
pub const DEFAULT_ALARM_POLL_INTERVAL: Duration = Duration::from_secs(10);
/// Shortest alarm poll accepted: below 1 s the daemon would only burn DescribeAlarms quota.
pub const MIN_ALARM_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Default verification deadline: a CloudHSM store can take a minute or more to reach
/// DISCONNECTED; two minutes covers that with margin while still reporting a stuck store.
pub const DEFAULT_VERIFY_TIMEOUT: Duration = Duration::from_secs(120);
/// Default enforcement period while latched: a reconnected store is cut again within 30 s, at a
/// cost of one DescribeCustomKeyStores page per account and region.
pub const DEFAULT_ENFORCE_INTERVAL: Duration = Duration::from_secs(30);
/// Shortest verification deadline accepted: a Disconnect and a Describe round trip to KMS (with
/// pacing) take most of a second, so a shorter deadline would report every store failed.
pub const MIN_VERIFY_TIMEOUT: Duration = Duration::from_secs(1);
/// Shortest enforcement period accepted, `0s` (disabled) aside: each round spends
/// DescribeCustomKeyStores requests from the 5/s quota that a lockdown's verification needs.
pub const MIN_ENFORCE_INTERVAL: Duration = Duration::from_secs(1);
/// Default request rate: KMS allows 5 DisconnectCustomKeyStore and 5 DescribeCustomKeyStores
/// requests per second per account and region.
pub const DEFAULT_RATE_LIMIT: u32 = 5;
/// Default latch location: survives reboots (unlike /run), owned by the daemon's state directory.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/kms-killswitch/latch.json";
/// Default audit log location.
pub const DEFAULT_AUDIT_LOG: &str = "/var/log/kms-killswitch/audit.jsonl";
/// Longest duration accepted anywhere in the policy: longer values are typos, and bounding them
/// keeps every `Instant + Duration` in the daemon far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// Largest policy file read: a real policy is a few kilobytes; the cap keeps a wrong path (a log,
/// a device) from being read into memory whole.
pub const MAX_POLICY_BYTES: u64 = 1024 * 1024;
/// `CustomKeyStoreName` is 1 to 256 characters (KMS API reference).
const MAX_KEY_STORE_NAME_CHARS: usize = 256;
/// CloudWatch alarm names are 1 to 255 characters (CloudWatch API reference).
const MAX_ALARM_NAME_CHARS: usize = 255;

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
    /// Its canonical name, e.g. `SIGUSR1` (also when the policy wrote `USR1`).
    pub name: &'static str,
}

/// `triggers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Triggers {
    /// `None` only when the policy says `file: none`.
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

impl Policy {
    /// The target of `aws.region` / `aws.role_arn`, used when a store or alarm names neither.
    pub fn default_target(&self) -> Target {
        Target {
            region: self.region.clone(),
            role_arn: self.role_arn.clone(),
        }
    }
}

/// Where in the policy file a problem is (1-based, in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

/// One thing wrong with a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `None` when the problem is about something missing, or YAML gave no location.
    pub position: Option<Position>,
    /// One lowercase sentence, already safe to print (no control characters).
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(Position { line, column }) => {
                write!(f, "line {line}, column {column}: {}", self.message)
            }
            None => f.write_str(&self.message),
        }
    }
}

/// The problems of an invalid policy, joined on one line.
struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [only] = self.0 {
            return write!(f, "{only}");
        }
        write!(f, "{} problems: ", self.0.len())?;
        for (index, problem) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// Why a policy could not be loaded. Its `Display` is the whole, readable report on one line
/// (the audit log's `policy_rejected.error` uses it as is).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be opened or read (missing, a directory, permission denied, too big).
    #[error("policy {}: cannot read it: {error}", path.display())]
    Read {
        path: PathBuf,
        /// Not a `#[source]`: the message already includes it, and the chain must not repeat it.
        error: std::io::Error,
    },
    /// The file's owner or mode would let someone other than root or the daemon's user change
    /// what gets disconnected.
    #[error(
        "policy {file}: refusing a file {reason}: whoever can write the policy controls the kill switch \
         (fix: `chown root: {file} && chmod go-w {file}`, or pass --insecure-policy-permissions for \
         development only)",
        file = path.display()
    )]
    Insecure { path: PathBuf, reason: String },
    /// The YAML is malformed, or well-formed but wrong: every problem found, in file order.
    #[error("policy {}: {}", path.display(), ProblemList(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

/// How [`load`] treats the file's permissions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Warn instead of refusing a policy writable by group/others or owned by another user.
    pub insecure_permissions: bool,
}

/// Read, permission-check, hash, parse and validate the policy at `path`.
pub fn load(path: &Path, options: LoadOptions) -> Result<Policy, PolicyError> {
    let read_error = |error| PolicyError::Read {
        path: path.to_owned(),
        error,
    };
    // O_NOFOLLOW | O_NONBLOCK, regular files only: a symlink swapped in is refused, and a FIFO
    // put in its place can never block the caller (the daemon's reload) in `open`.
    let file = crate::fs_trust::open_regular(path).map_err(read_error)?;
    // Check the opened file, not the path again: what is checked is what is read.
    let metadata = file.metadata().map_err(read_error)?;
    // Every directory up to `/` too (sshd StrictModes): whoever can write one of them can swap
    // the file. A sticky parent such as /tmp is fine: the file's owner is checked below.
    let dir_reason = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => crate::fs_trust::check_dir(dir, crate::fs_trust::Leaf::StickyOk)
            .err()
            .map(|untrusted| format!("in a directory others can change: {untrusted}")),
        None => None,
    };
    let file_reason = insecure_reason(metadata.mode(), metadata.uid(), running_uid());
    if let Some(reason) = file_reason.or(dir_reason) {
        if options.insecure_permissions {
            tracing::warn!(
                path = %path.display(),
                reason = %reason,
                "INSECURE: policy file accepted despite its permissions, only because of \
                 --insecure-policy-permissions; never use this flag in production"
            );
        } else {
            return Err(PolicyError::Insecure {
                path: path.to_owned(),
                reason,
            });
        }
    }
    let mut bytes = Vec::new();
    file.take(MAX_POLICY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_POLICY_BYTES {
        return Err(read_error(std::io::Error::other(format!(
            "larger than {MAX_POLICY_BYTES} bytes; a policy is a few kilobytes"
        ))));
    }
    parse_bytes(&bytes, path)
}

/// The effective uid of this process (the "running user" of sshd's StrictModes rule).
fn running_uid() -> u32 {
    crate::fs_trust::running_uid()
}

/// Why a file with this mode and owner must not be trusted, or `None` if it may be.
fn insecure_reason(mode: u32, owner: u32, running_uid: u32) -> Option<String> {
    /// Write permission for group or others.
    const GROUP_OTHER_WRITE: u32 = 0o022;
    if mode & GROUP_OTHER_WRITE != 0 {
        let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
            (true, true) => "group and others",
            (true, false) => "its group",
            _ => "others",
        };
        return Some(format!("writable by {who} (mode {:04o})", mode & 0o7777));
    }
    if owner != 0 && owner != running_uid {
        return Some(format!(
            "owned by uid {owner}, which is neither root nor the running user (uid {running_uid})"
        ));
    }
    None
}

/// Parse and validate policy bytes read from `path`: the sha256 is of these bytes.
pub fn parse_bytes(bytes: &[u8], path: &Path) -> Result<Policy, PolicyError> {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => {
            let valid = &bytes[..err.valid_up_to()];
            let line = valid.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
            let line_start = valid
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |newline| newline + 1);
            let column = String::from_utf8_lossy(&valid[line_start..])
                .chars()
                .count() as u64
                + 1;
            return Err(PolicyError::Invalid {
                path: path.to_owned(),
                problems: vec![Problem {
                    position: Some(Position { line, column }),
                    message: "the file is not valid UTF-8 text".to_owned(),
                }],
            });
        }
    };
    let mut policy = parse(text, path)?;
    policy.sha256 = hex::encode(sha2::Sha256::digest(bytes));
    Ok(policy)
}

/// Parse and validate policy text (no permission check; for tests and reload). The `sha256` is
/// that of the text's UTF-8 bytes.
pub fn parse(text: &str, path: &Path) -> Result<Policy, PolicyError> {
    let invalid = |problems| PolicyError::Invalid {
        path: path.to_owned(),
        problems,
    };
    if text
        .lines()
        .all(|line| line.trim().is_empty() || line.trim_start().starts_with('#'))
    {
        return Err(invalid(vec![Problem {
            position: None,
            message:
                "the file is empty: expected at least `version: 1`, `aws.region` and `key_stores`"
                    .to_owned(),
        }]));
    }
    let raw: RawPolicy =
        serde_saphyr::from_str_with_options(text, yaml_options()).map_err(|err| {
            invalid(vec![Problem {
                position: err.location().and_then(position),
                message: err.render_with_options(render_options()),
            }])
        })?;
    let mut validator = Validator::default();
    let policy = validator.policy(raw, path);
    match policy {
        Some(mut policy) if validator.problems.is_empty() => {
            policy.sha256 = hex::encode(sha2::Sha256::digest(text.as_bytes()));
            Ok(policy)
        }
        _ => {
            let mut problems = validator.problems;
            if problems.is_empty() {
                // Every check that rejects a value records why; this only guards that invariant.
                problems.push(Problem {
                    position: None,
                    message: "the policy is incomplete (no specific problem was recorded)".into(),
                });
            }
            // File order reads best; problems without a position (missing keys) come first.
            problems.sort_by_key(|problem| problem.position.map(|p| (p.line, p.column)));
            Err(invalid(problems))
        }
    }
}

/// If `name` is a signal the policy accepts as a trigger, that signal. Accepts `SIGUSR1` and
/// `USR1` spellings, in any case.
pub fn signal_by_name(name: &str) -> Option<SignalTrigger> {
    check_signal(name).ok()
}

/// A trigger signal, or why `name` cannot be one (one sentence, for the policy error).
fn check_signal(name: &str) -> Result<SignalTrigger, String> {
    use signal_hook::consts::signal::*;
    let upper = name.trim().to_ascii_uppercase();
    let canonical = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    match canonical.as_str() {
        "SIGUSR1" => Ok(SignalTrigger {
            number: SIGUSR1,
            name: "SIGUSR1",
        }),
        "SIGUSR2" => Ok(SignalTrigger {
            number: SIGUSR2,
            name: "SIGUSR2",
        }),
        "SIGHUP" => Err(
            "SIGHUP cannot be the trigger: it means \"reload the policy\" (systemctl reload)"
                .to_owned(),
        ),
        "SIGTERM" | "SIGINT" | "SIGQUIT" => Err(format!(
            "{canonical} cannot be the trigger: it means \"stop\", and systemd sends it on every stop or restart"
        )),
        "SIGKILL" | "SIGSTOP" => Err(format!(
            "{canonical} cannot be the trigger: it can never be caught by a process"
        )),
        "SIGSEGV" | "SIGBUS" | "SIGILL" | "SIGFPE" | "SIGABRT" | "SIGTRAP" | "SIGSYS" => Err(
            format!("{canonical} cannot be the trigger: it reports a crash of the process itself"),
        ),
        "SIGCHLD" | "SIGPIPE" | "SIGALRM" | "SIGWINCH" | "SIGURG" | "SIGIO" | "SIGPOLL"
        | "SIGPROF" | "SIGVTALRM" | "SIGXCPU" | "SIGXFSZ" | "SIGTSTP" | "SIGTTIN" | "SIGTTOU"
        | "SIGCONT" | "SIGPWR" => Err(format!(
            "{canonical} cannot be the trigger: the kernel or the terminal sends it for unrelated reasons, \
             so it would lock down by accident; use SIGUSR1 or SIGUSR2"
        )),
        _ => Err(format!(
            "{} is not a signal name: expected SIGUSR1, SIGUSR2 or `none`",
            quoted(name)
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 1: raw serde types. Every value that validation looks at is `Spanned` so its problem can
// name a line and column. Missing keys are `Option` so validation reports all of them at once.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: Option<Spanned<u32>>,
    aws: Option<Spanned<RawAws>>,
    key_stores: Option<Spanned<Vec<Spanned<RawKeyStore>>>>,
    triggers: Option<Spanned<RawTriggers>>,
    lockdown: Option<RawLockdown>,
    state_file: Option<Spanned<String>>,
    audit_log: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAws {
    region: Option<Spanned<String>>,
    role_arn: Option<Spanned<String>>,
    endpoint_url: Option<Spanned<String>>,
    endpoints: Option<RawEndpoints>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoints {
    kms: Option<Spanned<String>>,
    cloudwatch: Option<Spanned<String>>,
    sts: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyStore {
    id: Option<Spanned<String>>,
    name: Option<Spanned<String>>,
    region: Option<Spanned<String>>,
    role_arn: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTriggers {
    file: Option<Spanned<RawFileSetting>>,
    signal: Option<Spanned<String>>,
    alarms: Option<Vec<Spanned<RawAlarm>>>,
    alarm_poll_interval: Option<Spanned<String>>,
    fail_closed_after: Option<Spanned<String>>,
}

/// `triggers.file`: a mapping, or the word `none`.
#[derive(Debug)]
enum RawFileSetting {
    Keyword(String),
    Settings(RawFileTrigger),
}

impl<'de> Deserialize<'de> for RawFileSetting {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SettingVisitor;
        impl<'de> serde::de::Visitor<'de> for SettingVisitor {
            type Value = RawFileSetting;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`none` or a mapping with `path`")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(RawFileSetting::Keyword(value.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                // Delegating to the derived impl keeps deny_unknown_fields and the spans.
                RawFileTrigger::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawFileSetting::Settings)
            }
        }
        deserializer.deserialize_any(SettingVisitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFileTrigger {
    path: Option<Spanned<String>>,
    allow_untrusted_flag_dir: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlarm {
    name: Option<Spanned<String>>,
    region: Option<Spanned<String>>,
    role_arn: Option<Spanned<String>>,
    consecutive: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLockdown {
    verify_timeout: Option<Spanned<String>>,
    enforce_interval: Option<Spanned<String>>,
    rate_limit: Option<Spanned<u32>>,
}

/// Parser settings: duplicate keys are errors (serde-saphyr's default, restated because the
/// design depends on it), YAML 1.1 booleans like `no`/`off` are not booleans (the Norway
/// problem), no source snippets (the message must fit on one line), and the default budget
/// against alias bombs.
fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    options.strict_booleans = true;
    options.with_snippet = false;
    options
}

/// Render a YAML error as a bare message: the position is printed by [`Problem`].
fn render_options() -> serde_saphyr::RenderOptions<'static> {
    static FORMATTER: PolicyMessages = PolicyMessages;
    let mut options = serde_saphyr::RenderOptions::new(&FORMATTER);
    options.snippets = serde_saphyr::SnippetMode::Off;
    options
}

/// serde-saphyr's user-facing messages, with clearer wording for numbers and without the
/// location suffix (ours comes first, in the same form for YAML and semantic problems).
struct PolicyMessages;

impl serde_saphyr::MessageFormatter for PolicyMessages {
    fn localizer(&self) -> &dyn serde_saphyr::Localizer {
        static NO_SUFFIX: NoLocationSuffix = NoLocationSuffix;
        &NO_SUFFIX
    }

    fn format_message<'a>(&self, err: &'a serde_saphyr::Error) -> Cow<'a, str> {
        match err {
            serde_saphyr::Error::InvalidScalar { ty, .. }
                if matches!(*ty, "u8" | "u16" | "u32" | "u64" | "usize") =>
            {
                Cow::Borrowed("expected a whole number, 0 or more")
            }
            serde_saphyr::Error::Unexpected {
                expected: "mapping start",
                ..
            } => Cow::Borrowed("expected a mapping here (`key: value` lines)"),
            serde_saphyr::Error::Unexpected {
                expected: "sequence start",
                ..
            } => Cow::Borrowed("expected a list here (`- item` lines)"),
            serde_saphyr::Error::Unexpected {
                expected: "string scalar",
                ..
            } => Cow::Borrowed("expected a single value here, not a list or mapping"),
            serde_saphyr::Error::Budget { breach, .. } => Cow::Owned(budget_message(breach)),
            other => match serde_saphyr::UserMessageFormatter.format_message(other) {
                // The scanner's own limit on nested flow collections (`[[[…`, `{a: {a: …`).
                message if message == "recursion limit exceeded" => Cow::Owned(format!(
                    "the policy nests more than {} levels deep, so it was not read (a policy needs only a few)",
                    serde_saphyr::Budget::default().flow_nesting_limit
                )),
                message => message,
            },
        }
    }
}

/// One sentence for a breached parser limit (serde-saphyr prints the breach's Debug form). The
/// limits are serde-saphyr's defaults ([`serde_saphyr::Budget`]), named in the sentence.
fn budget_message(breach: &serde_saphyr::budget::BudgetBreach) -> String {
    use serde_saphyr::budget::BudgetBreach as B;
    let limits = serde_saphyr::Budget::default();
    let what = match breach {
        B::Aliases { .. } => format!("has more than {} aliases (`*name`)", limits.max_aliases),
        B::AliasAnchorRatio { aliases, anchors } => format!(
            "uses {aliases} aliases for {anchors} anchors (more than {} per anchor)",
            limits.alias_anchor_ratio_multiplier
        ),
        B::Anchors { .. } => format!("has more than {} anchors (`&name`)", limits.max_anchors),
        B::Depth { .. } => format!("nests more than {} levels deep", limits.max_depth),
        B::Events { .. } => format!("has more than {} YAML events", limits.max_events),
        B::Nodes { .. } => format!("has more than {} values", limits.max_nodes),
        B::Documents { .. } => format!("has more than {} YAML documents", limits.max_documents),
        B::MergeKeys { .. } => format!("has more than {} merge keys (`<<`)", limits.max_merge_keys),
        B::ScalarBytes { .. } => "holds more text than the parser's limit".to_owned(),
        B::InputBytes { .. } => "is larger than the parser's limit".to_owned(),
        _ => "expands beyond the parser's limits (anchors, aliases or nesting)".to_owned(),
    };
    format!("the policy {what}, so it was not read (a policy needs only a few dozen lines)")
}

struct NoLocationSuffix;

impl serde_saphyr::Localizer for NoLocationSuffix {
    fn attach_location<'a>(&self, base: Cow<'a, str>, _location: Location) -> Cow<'a, str> {
        base
    }
    fn alias_used_at(&self, _used: Location) -> String {
        String::new()
    }
}

/// Whether the URL's host is this machine: 127.0.0.0/8, ::1 or `localhost`.
fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn position(location: Location) -> Option<Position> {
    (location != Location::UNKNOWN).then(|| Position {
        line: location.line(),
        column: location.column(),
    })
}

/// A value from the policy in backticks, with control characters escaped so it prints on one line.
fn quoted(value: &str) -> String {
    format!("`{}`", value.escape_debug())
}

// ---------------------------------------------------------------------------------------------
// Stage 2: validation. Each check records a problem and carries on, so one run reports them all.

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn problem(&mut self, location: Option<&Location>, message: impl Into<String>) {
        self.problems.push(Problem {
            position: location.copied().and_then(position),
            message: message.into(),
        });
    }

    fn policy(&mut self, raw: RawPolicy, path: &Path) -> Option<Policy> {
        match &raw.version {
            None => self.problem(None, "missing `version: 1` at the top of the file"),
            Some(version) if version.value != SUPPORTED_VERSION => self.problem(
                Some(&version.referenced),
                format!(
                    "version: {} is not supported: this build reads version {SUPPORTED_VERSION}",
                    version.value
                ),
            ),
            Some(_) => {}
        }

        let (region, role_arn, endpoints) = self.aws(raw.aws);
        let key_stores = self.key_stores(raw.key_stores, region.as_deref(), role_arn.as_deref());
        let triggers = self.triggers(raw.triggers, region.as_deref(), role_arn.as_deref());
        let lockdown = self.lockdown(raw.lockdown);
        let state_file = self.absolute_path(raw.state_file, "state_file", DEFAULT_STATE_FILE);
        let audit_log = self.absolute_path(raw.audit_log, "audit_log", DEFAULT_AUDIT_LOG);
        if let (Some((state_file, state_location)), Some((audit_log, _))) =
            (&state_file, &audit_log)
            && state_file == audit_log
        {
            self.problem(
                state_location.as_ref(),
                "state_file and audit_log are the same file: each needs its own",
            );
        }
        if let (Some(triggers), Some((state_file, _)), Some((audit_log, _))) =
            (&triggers, &state_file, &audit_log)
            && let Some(flag) = &triggers.file
            && (&flag.path == state_file || &flag.path == audit_log)
        {
            self.problem(
                None,
                format!(
                    "triggers.file.path {} is also the state_file or audit_log: the daemon writes \
                     those, so it would trip itself",
                    flag.path.display()
                ),
            );
        }

        Some(Policy {
            path: path.to_owned(),
            sha256: String::new(),
            region: region?,
            role_arn,
            endpoints,
            key_stores: key_stores?,
            triggers: triggers?,
            lockdown: lockdown?,
            state_file: state_file?.0,
            audit_log: audit_log?.0,
        })
    }

    /// `aws:` → (default region, default role, endpoints).
    fn aws(&mut self, raw: Option<Spanned<RawAws>>) -> (Option<String>, Option<String>, Endpoints) {
        let Some(aws) = raw else {
            self.problem(
                None,
                "missing `aws:` with `region:` (the default region of the key stores and alarms)",
            );
            return (None, None, Endpoints::default());
        };
        let aws_location = aws.referenced;
        let aws = aws.value;
        let region = match aws.region {
            Some(region) => self.region(&region, "aws.region"),
            None => {
                self.problem(
                    Some(&aws_location),
                    "aws: missing `region:` (the default region of the key stores and alarms)",
                );
                None
            }
        };
        let role_arn = aws
            .role_arn
            .as_ref()
            .and_then(|arn| self.role_arn(arn, "aws.role_arn", region.as_deref()));
        let mut endpoints = Endpoints {
            all: aws
                .endpoint_url
                .as_ref()
                .and_then(|url| self.endpoint(url, "aws.endpoint_url")),
            ..Endpoints::default()
        };
        if let Some(raw) = aws.endpoints {
            endpoints.kms = raw
                .kms
                .as_ref()
                .and_then(|url| self.endpoint(url, "aws.endpoints.kms"));
            endpoints.cloudwatch = raw
                .cloudwatch
                .as_ref()
                .and_then(|url| self.endpoint(url, "aws.endpoints.cloudwatch"));
            endpoints.sts = raw
                .sts
                .as_ref()
                .and_then(|url| self.endpoint(url, "aws.endpoints.sts"));
        }
        (region, role_arn, endpoints)
    }

    fn key_stores(
        &mut self,
        raw: Option<Spanned<Vec<Spanned<RawKeyStore>>>>,
        default_region: Option<&str>,
        default_role: Option<&str>,
    ) -> Option<Vec<KeyStoreSpec>> {
        let Some(list) = raw else {
            self.problem(
                None,
                "missing `key_stores:`: list at least one key store (by `id` or `name`) to disconnect",
            );
            return None;
        };
        if list.value.is_empty() {
            self.problem(
                Some(&list.referenced),
                "key_stores is empty: list at least one key store (by `id` or `name`) to disconnect",
            );
            return None;
        }
        let mut specs = Vec::new();
        let mut complete = true;
        // First line of each selector (+ target for names), to name the earlier entry of a duplicate.
        let mut seen_ids: HashMap<String, u64> = HashMap::new();
        let mut seen_names: HashMap<(String, Target), u64> = HashMap::new();
        for (index, entry) in list.value.into_iter().enumerate() {
            let field = format!("key_stores[{index}]");
            let location = entry.referenced;
            let store = entry.value;
            let selector = match (&store.id, &store.name) {
                (Some(id), None) => self.key_store_id(id, &field),
                (None, Some(name)) => self
                    .name(
                        name,
                        &format!("{field}.name"),
                        MAX_KEY_STORE_NAME_CHARS,
                        "custom key store name",
                    )
                    .map(KeyStoreSelector::Name),
                (Some(id), Some(_)) => {
                    self.problem(
                        Some(&id.referenced),
                        format!("{field}: has both `id` and `name`; give exactly one"),
                    );
                    None
                }
                (None, None) => {
                    self.problem(
                        Some(&location),
                        format!("{field}: needs exactly one of `id` (cks-…) or `name`"),
                    );
                    None
                }
            };
            let target = self.target(
                store.region.as_ref(),
                store.role_arn.as_ref(),
                &field,
                default_region,
                default_role,
            );
            // An id is a duplicate whatever its target (ids are unique across AWS); a name only
            // within the same region and role (the same name may exist in other accounts).
            let line = location.line();
            let duplicate = match (&selector, &target) {
                (Some(KeyStoreSelector::Id(id)), _) => seen_ids
                    .insert(id.clone(), line)
                    .map(|earlier| (format!("key store {id}"), earlier)),
                (Some(KeyStoreSelector::Name(name)), Some(target)) => seen_names
                    .insert((name.clone(), target.clone()), line)
                    .map(|earlier| {
                        let what = format!(
                            "key store named {} in {} with the same role",
                            quoted(name),
                            target.region
                        );
                        (what, earlier)
                    }),
                _ => None,
            };
            if let Some((what, earlier)) = duplicate {
                self.problem(
                    Some(&location),
                    format!("{field}: {what} is already listed at line {earlier}"),
                );
                complete = false;
                continue;
            }
            let (Some(selector), Some(target)) = (selector, target) else {
                complete = false;
                continue;
            };
            specs.push(KeyStoreSpec { selector, target });
        }
        complete.then_some(specs)
    }

    fn key_store_id(&mut self, id: &Spanned<String>, field: &str) -> Option<KeyStoreSelector> {
        let value = id.value.trim();
        let well_formed = value.strip_prefix("cks-").is_some_and(|hex| {
            hex.len() == 17
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if well_formed {
            Some(KeyStoreSelector::Id(value.to_owned()))
        } else {
            self.problem(
                Some(&id.referenced),
                format!(
                    "{field}.id: {} is not a custom key store ID: expected `cks-` and 17 lowercase \
                     hex digits, like `cks-1234567890abcdef0` (use `name:` for a store's name)",
                    quoted(&id.value)
                ),
            );
            None
        }
    }

    /// A non-empty, single-line name of at most `max_chars` characters.
    fn name(
        &mut self,
        name: &Spanned<String>,
        field: &str,
        max_chars: usize,
        what: &str,
    ) -> Option<String> {
        let value = name.value.trim();
        let message = if value.is_empty() {
            format!("{field}: the {what} is empty")
        } else if value.chars().count() > max_chars {
            format!("{field}: the {what} is longer than {max_chars} characters")
        } else if value.chars().any(char::is_control) {
            format!(
                "{field}: the {what} {} contains control characters",
                quoted(value)
            )
        } else {
            return Some(value.to_owned());
        };
        self.problem(Some(&name.referenced), message);
        None
    }

    /// The region and role of a store or alarm, falling back to `aws.region` / `aws.role_arn`.
    fn target(
        &mut self,
        region: Option<&Spanned<String>>,
        role_arn: Option<&Spanned<String>>,
        field: &str,
        default_region: Option<&str>,
        default_role: Option<&str>,
    ) -> Option<Target> {
        let region = match region {
            Some(region) => self.region(region, &format!("{field}.region"))?,
            // A missing aws.region is reported once, not again for every store.
            None => default_region?.to_owned(),
        };
        let role_arn = match role_arn {
            Some(arn) => Some(self.role_arn(arn, &format!("{field}.role_arn"), Some(&region))?),
            None => {
                let role = default_role.map(str::to_owned);
                // A default role from another partition cannot work in this region.
                if let Some(role) = &role
                    && region_partition(&region) != arn_partition(role)
                {
                    self.problem(
                        None,
                        format!(
                            "{field}: region {region} is in partition {} but aws.role_arn is in \
                             partition {}: give this entry its own `role_arn`",
                            region_partition(&region),
                            arn_partition(role)
                        ),
                    );
                    return None;
                }
                role
            }
        };
        Some(Target { region, role_arn })
    }

    /// A region name such as `eu-west-1`, `us-gov-west-1` or `cn-north-1`.
    fn region(&mut self, region: &Spanned<String>, field: &str) -> Option<String> {
        let value = region.value.trim();
        if is_region(value) {
            Some(value.to_owned())
        } else {
            self.problem(
                Some(&region.referenced),
                format!(
                    "{field}: {} is not an AWS region name: expected something like `eu-west-1`, \
                     `us-gov-west-1` or `cn-north-1`",
                    quoted(&region.value)
                ),
            );
            None
        }
    }

    /// `arn:<partition>:iam::<12 digits>:role/<optional path/>name`, in the region's partition.
    fn role_arn(
        &mut self,
        arn: &Spanned<String>,
        field: &str,
        region: Option<&str>,
    ) -> Option<String> {
        let value = arn.value.trim();
        if !is_role_arn(value) {
            self.problem(
                Some(&arn.referenced),
                format!(
                    "{field}: {} is not an IAM role ARN: expected \
                     `arn:aws:iam::<12-digit account>:role/<name>` (partitions aws, aws-cn, aws-us-gov)",
                    quoted(&arn.value)
                ),
            );
            return None;
        }
        if let Some(region) = region
            && region_partition(region) != arn_partition(value)
        {
            self.problem(
                Some(&arn.referenced),
                format!(
                    "{field}: the role is in partition {} but region {region} is in partition {}",
                    arn_partition(value),
                    region_partition(region)
                ),
            );
            return None;
        }
        Some(value.to_owned())
    }

    /// An https URL (or http to a loopback host) with a host and no credentials in it.
    fn endpoint(&mut self, url: &Spanned<String>, field: &str) -> Option<String> {
        let value = url.value.trim();
        let message = match url::Url::parse(value) {
            _ if !value.contains("://") => {
                format!(
                    "{field}: {} must be an http:// or https:// URL",
                    quoted(value)
                )
            }
            Err(err) => format!(
                "{field}: {} is not a URL ({err}): expected e.g. `https://kms.eu-west-1.amazonaws.com`",
                quoted(value)
            ),
            Ok(parsed) if !matches!(parsed.scheme(), "http" | "https") => format!(
                "{field}: {} must be an http:// or https:// URL",
                quoted(value)
            ),
            Ok(parsed) if parsed.host_str().is_none_or(str::is_empty) => {
                format!("{field}: {} has no host", quoted(value))
            }
            // Never echo the URL here: it holds what looks like a secret.
            Ok(parsed) if !parsed.username().is_empty() || parsed.password().is_some() => format!(
                "{field}: the URL contains a user name or password; credentials never go in the policy"
            ),
            Ok(parsed) if parsed.query().is_some() || parsed.fragment().is_some() => format!(
                "{field}: {} must not have a query (?…) or fragment (#…)",
                quoted(value)
            ),
            // KMS replies are not signed: over plain http anyone on the path could answer
            // DISCONNECTED for a store that is still connected.
            Ok(parsed) if parsed.scheme() == "http" && !is_loopback(&parsed) => format!(
                "{field}: {} uses http:// to a host that is not loopback; KMS replies are not \
                 signed, so anyone on the path could fake them: use https://, or http:// only \
                 to 127.0.0.0/8, ::1 or localhost",
                quoted(value)
            ),
            Ok(_) => return Some(value.to_owned()),
        };
        self.problem(Some(&url.referenced), message);
        None
    }

    fn triggers(
        &mut self,
        raw: Option<Spanned<RawTriggers>>,
        default_region: Option<&str>,
        default_role: Option<&str>,
    ) -> Option<Triggers> {
        let (location, raw) = match raw {
            Some(raw) => (Some(raw.referenced), raw.value),
            None => (
                None,
                RawTriggers {
                    file: None,
                    signal: None,
                    alarms: None,
                    alarm_poll_interval: None,
                    fail_closed_after: None,
                },
            ),
        };
        let mut complete = true;

        let file = match raw.file {
            None => Some(FileTrigger {
                path: PathBuf::from(DEFAULT_FLAG_PATH),
                allow_untrusted_flag_dir: false,
            }),
            Some(setting) => match setting.value {
                RawFileSetting::Keyword(word) if word.trim() == "none" => None,
                RawFileSetting::Keyword(word) => {
                    self.problem(
                        Some(&setting.referenced),
                        format!(
                            "triggers.file: {} is not valid: expected `none` or a mapping with `path:`",
                            quoted(&word)
                        ),
                    );
                    complete = false;
                    None
                }
                RawFileSetting::Settings(file) => {
                    let path = match file.path {
                        Some(path) => self.flag_path(&path),
                        None => Some(PathBuf::from(DEFAULT_FLAG_PATH)),
                    };
                    complete &= path.is_some();
                    path.map(|path| FileTrigger {
                        path,
                        allow_untrusted_flag_dir: file.allow_untrusted_flag_dir.unwrap_or(false),
                    })
                }
            },
        };

        let signal = match raw.signal {
            None => signal_by_name(DEFAULT_SIGNAL),
            Some(signal) if signal.value.trim() == "none" => None,
            Some(signal) => match check_signal(&signal.value) {
                Ok(trigger) => Some(trigger),
                Err(message) => {
                    self.problem(
                        Some(&signal.referenced),
                        format!("triggers.signal: {message}"),
                    );
                    complete = false;
                    None
                }
            },
        };

        let mut alarms = Vec::new();
        let mut seen: HashMap<(String, Target), u64> = HashMap::new();
        for (index, entry) in raw.alarms.unwrap_or_default().into_iter().enumerate() {
            let field = format!("triggers.alarms[{index}]");
            let entry_location = entry.referenced;
            let alarm = entry.value;
            let name = match &alarm.name {
                Some(name) => self.name(
                    name,
                    &format!("{field}.name"),
                    MAX_ALARM_NAME_CHARS,
                    "alarm name",
                ),
                None => {
                    self.problem(Some(&entry_location), format!("{field}: missing `name:`"));
                    None
                }
            };
            let target = self.target(
                alarm.region.as_ref(),
                alarm.role_arn.as_ref(),
                &field,
                default_region,
                default_role,
            );
            let consecutive = match alarm.consecutive {
                None => Some(1),
                Some(n) if n.value >= 1 => Some(n.value),
                Some(n) => {
                    self.problem(
                        Some(&n.referenced),
                        format!(
                            "{field}.consecutive: must be 1 or more (the number of polls in ALARM before firing)"
                        ),
                    );
                    None
                }
            };
            let (Some(name), Some(target), Some(consecutive)) = (name, target, consecutive) else {
                complete = false;
                continue;
            };
            if let Some(earlier) =
                seen.insert((name.clone(), target.clone()), entry_location.line())
            {
                self.problem(
                    Some(&entry_location),
                    format!(
                        "{field}: alarm {} in {} is already listed at line {earlier}",
                        quoted(&name),
                        target.region
                    ),
                );
                complete = false;
                continue;
            }
            alarms.push(AlarmSpec {
                name,
                target,
                consecutive,
            });
        }

        let alarm_poll_interval = match &raw.alarm_poll_interval {
            None => Some(DEFAULT_ALARM_POLL_INTERVAL),
            Some(raw) => self.duration(raw, "triggers.alarm_poll_interval").and_then(|interval| {
                if interval < MIN_ALARM_POLL_INTERVAL {
                    self.problem(
                        Some(&raw.referenced),
                        format!(
                            "triggers.alarm_poll_interval: must be at least {} (faster polling only \
                             spends the DescribeAlarms quota)",
                            humantime::format_duration(MIN_ALARM_POLL_INTERVAL)
                        ),
                    );
                    None
                } else {
                    Some(interval)
                }
            }),
        };
        complete &= alarm_poll_interval.is_some();

        let fail_closed_after = match &raw.fail_closed_after {
            None => None,
            Some(raw) => {
                let after = self.positive_duration(raw, "triggers.fail_closed_after");
                if after.is_some() && alarms.is_empty() && complete {
                    self.problem(
                        Some(&raw.referenced),
                        "triggers.fail_closed_after: needs at least one alarm in triggers.alarms \
                         (it fires when the alarms stay unreadable)",
                    );
                    complete = false;
                }
                if let (Some(after), Some(poll)) = (after, alarm_poll_interval)
                    && after < poll
                {
                    self.problem(
                        Some(&raw.referenced),
                        format!(
                            "triggers.fail_closed_after: {} is shorter than alarm_poll_interval ({}): \
                             a single failed poll would lock down",
                            humantime::format_duration(after),
                            humantime::format_duration(poll)
                        ),
                    );
                    complete = false;
                }
                complete &= after.is_some();
                after
            }
        };

        if complete && file.is_none() && signal.is_none() && alarms.is_empty() {
            self.problem(
                location.as_ref(),
                "triggers: every trigger is disabled (file: none, signal: none, no alarms): the daemon \
                 could never fire; keep at least one",
            );
            complete = false;
        }

        complete.then_some(Triggers {
            file,
            signal,
            alarms,
            alarm_poll_interval: alarm_poll_interval?,
            fail_closed_after,
        })
    }

    fn flag_path(&mut self, path: &Spanned<String>) -> Option<PathBuf> {
        let field = "triggers.file.path";
        let value = PathBuf::from(&path.value);
        let message = if !value.is_absolute() {
            format!(
                "{field}: {} must be an absolute path, like `{DEFAULT_FLAG_PATH}`",
                quoted(&path.value)
            )
        } else if value.file_name().is_none() {
            format!(
                "{field}: {} must name a file, not a directory",
                quoted(&path.value)
            )
        } else if path.value.contains('\0') {
            format!("{field}: contains a NUL character")
        } else {
            return Some(value);
        };
        self.problem(Some(&path.referenced), message);
        None
    }

    /// `state_file` / `audit_log`: an absolute file path, or the default. Returns the path and
    /// where it was written.
    fn absolute_path(
        &mut self,
        raw: Option<Spanned<String>>,
        field: &str,
        default: &str,
    ) -> Option<(PathBuf, Option<Location>)> {
        let Some(raw) = raw else {
            return Some((PathBuf::from(default), None));
        };
        let value = PathBuf::from(&raw.value);
        let message = if !value.is_absolute() {
            format!(
                "{field}: {} must be an absolute path, like `{default}`",
                quoted(&raw.value)
            )
        } else if value.file_name().is_none() {
            format!(
                "{field}: {} must name a file, not a directory",
                quoted(&raw.value)
            )
        } else if raw.value.contains('\0') {
            format!("{field}: contains a NUL character")
        } else {
            return Some((value, Some(raw.referenced)));
        };
        self.problem(Some(&raw.referenced), message);
        None
    }

    fn lockdown(&mut self, raw: Option<RawLockdown>) -> Option<LockdownSettings> {
        let raw = raw.unwrap_or(RawLockdown {
            verify_timeout: None,
            enforce_interval: None,
            rate_limit: None,
        });
        let verify_timeout = match &raw.verify_timeout {
            None => Some(DEFAULT_VERIFY_TIMEOUT),
            Some(raw) => self
                .duration(raw, "lockdown.verify_timeout")
                .and_then(|timeout| {
                    if timeout >= MIN_VERIFY_TIMEOUT {
                        return Some(timeout);
                    }
                    self.problem(
                        Some(&raw.referenced),
                        format!(
                            "lockdown.verify_timeout: {} is too short: must be at least {} (one \
                             DisconnectCustomKeyStore and one DescribeCustomKeyStores round trip \
                             to KMS cannot complete in less)",
                            quoted(raw.value.trim()),
                            humantime::format_duration(MIN_VERIFY_TIMEOUT)
                        ),
                    );
                    None
                }),
        };
        let enforce_interval = match &raw.enforce_interval {
            None => Some(Some(DEFAULT_ENFORCE_INTERVAL)),
            Some(raw) => self
                .duration(raw, "lockdown.enforce_interval")
                .and_then(|interval| {
                    if interval.is_zero() {
                        return Some(None);
                    }
                    if interval >= MIN_ENFORCE_INTERVAL {
                        return Some(Some(interval));
                    }
                    self.problem(
                        Some(&raw.referenced),
                        format!(
                            "lockdown.enforce_interval: {} is too short: must be `0s` (disabled) \
                             or at least {} (every round spends DescribeCustomKeyStores quota \
                             that a lockdown's verification shares)",
                            quoted(raw.value.trim()),
                            humantime::format_duration(MIN_ENFORCE_INTERVAL)
                        ),
                    );
                    None
                }),
        };
        let rate_limit = match raw.rate_limit {
            None => Some(DEFAULT_RATE_LIMIT),
            Some(limit) if limit.value > 0 => Some(limit.value),
            Some(limit) => {
                self.problem(
                    Some(&limit.referenced),
                    "lockdown.rate_limit: must be 1 or more (requests per second per account, region \
                     and operation)",
                );
                None
            }
        };
        Some(LockdownSettings {
            verify_timeout: verify_timeout?,
            enforce_interval: enforce_interval?,
            rate_limit: rate_limit?,
        })
    }

    /// A duration written with its unit (`500ms`, `15s`, `2m`, `1h`), at most [`MAX_DURATION`].
    fn duration(&mut self, raw: &Spanned<String>, field: &str) -> Option<Duration> {
        let value = raw.value.trim();
        let message = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
            format!(
                "{field}: {} has no unit: write e.g. `{value}s` or `{value}ms`",
                quoted(value)
            )
        } else {
            match humantime::parse_duration(value) {
                Ok(duration) if duration <= MAX_DURATION => return Some(duration),
                Ok(_) => format!(
                    "{field}: {} is longer than the maximum of {}",
                    quoted(value),
                    humantime::format_duration(MAX_DURATION)
                ),
                // humantime's own message lists every unit spelling: too long for one line.
                Err(_) => format!(
                    "{field}: {} is not a duration: expected a number and a unit, like \
                     `500ms`, `15s`, `2m` or `1h`",
                    quoted(value)
                ),
            }
        };
        self.problem(Some(&raw.referenced), message);
        None
    }

    fn positive_duration(&mut self, raw: &Spanned<String>, field: &str) -> Option<Duration> {
        let duration = self.duration(raw, field)?;
        if duration.is_zero() {
            self.problem(
                Some(&raw.referenced),
                format!("{field}: must be longer than 0s"),
            );
            return None;
        }
        Some(duration)
    }
}

/// `eu-west-1`, `us-gov-west-1`, `cn-north-1`, `ap-southeast-2`, `us-isob-east-1`,
/// `eusc-de-east-1`: a 2–4 letter prefix, one or more lowercase words, and a number.
fn is_region(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return false;
    };
    let word = |part: &&str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase());
    (2..=4).contains(&first.len())
        && word(first)
        && !middle.is_empty()
        && middle.iter().all(word)
        && (1..=2).contains(&last.len())
        && last.bytes().all(|b| b.is_ascii_digit())
}

/// Region prefixes outside the `aws` partition, and their partition.
const REGION_PARTITIONS: &[(&str, &str)] = &[
    ("cn-", "aws-cn"),
    ("us-gov-", "aws-us-gov"),
    ("us-iso-", "aws-iso"),
    ("us-isob-", "aws-iso-b"),
    ("eu-isoe-", "aws-iso-e"),
    ("us-isof-", "aws-iso-f"),
    ("eusc-", "aws-eusc"),
];

fn region_partition(region: &str) -> &'static str {
    REGION_PARTITIONS
        .iter()
        .find(|(prefix, _)| region.starts_with(prefix))
        .map_or("aws", |(_, partition)| partition)
}

fn arn_partition(arn: &str) -> &str {
    arn.split(':').nth(1).unwrap_or("")
}

/// `arn:<partition>:iam::<12 digits>:role/<path/>name` with IAM's name characters.
fn is_role_arn(value: &str) -> bool {
    let mut fields = value.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("iam"), Some(""), Some(account), Some(resource)) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return false;
    };
    let known_partition = partition == "aws"
        || REGION_PARTITIONS
            .iter()
            .any(|(_, known)| *known == partition);
    let Some(role_path) = resource.strip_prefix("role/") else {
        return false;
    };
    // IAM role names and path segments: letters, digits and `+=,.@_-`; names up to 64 chars.
    let iam_chars = |segment: &str| {
        !segment.is_empty()
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
    };
    let segments: Vec<&str> = role_path.split('/').collect();
    known_partition
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && role_path.len() <= 512
        && segments.iter().all(|segment| iam_chars(segment))
        && segments.last().is_some_and(|name| name.len() <= 64)
}

/// How many distinct accounts and regions a policy's key stores span; stores using the base
/// credentials count as one account. For `check`'s summary.
pub fn key_store_spread(policy: &Policy) -> (usize, usize) {
    let accounts: BTreeSet<Option<&str>> = policy
        .key_stores
        .iter()
        .map(|store| store.target.role_account())
        .collect();
    let regions: BTreeSet<&str> = policy
        .key_stores
        .iter()
        .map(|store| store.target.region.as_str())
        .collect();
    (accounts.len(), regions.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/etc/kms-killswitch/policy.yaml";
    /// The smallest valid policy; tests append to it or replace lines of it.
    const MINIMAL: &str = "version: 1
aws:
  region: eu-west-1
key_stores:
  - id: cks-1234567890abcdef0
";

    fn parse_ok(text: &str) -> Policy {
        match parse(text, Path::new(PATH)) {
            Ok(policy) => policy,
            Err(err) => panic!("expected a valid policy, got: {err}"),
        }
    }

    fn problems(text: &str) -> Vec<Problem> {
        match parse(text, Path::new(PATH)) {
            Ok(policy) => panic!("expected an invalid policy, got {policy:?}"),
            Err(PolicyError::Invalid { problems, .. }) => problems,
            Err(other) => panic!("expected PolicyError::Invalid, got: {other}"),
        }
    }

    /// Asserts the policy has exactly one problem, at `line`, whose message contains `needle`.
    fn assert_one_problem(text: &str, line: Option<u64>, needle: &str) {
        let problems = problems(text);
        assert_eq!(problems.len(), 1, "expected one problem, got {problems:?}");
        assert_eq!(problems[0].position.map(|p| p.line), line, "{problems:?}");
        assert!(
            problems[0].message.contains(needle),
            "{:?} does not contain {needle:?}",
            problems[0].message
        );
    }

    #[test]
    fn minimal_policy_gets_every_default() {
        let policy = parse_ok(MINIMAL);
        assert_eq!(policy.path, Path::new(PATH));
        assert_eq!(policy.region, "eu-west-1");
        assert_eq!(policy.role_arn, None);
        assert_eq!(policy.endpoints, Endpoints::default());
        assert_eq!(
            policy.key_stores,
            vec![KeyStoreSpec {
                selector: KeyStoreSelector::Id("cks-1234567890abcdef0".into()),
                target: Target {
                    region: "eu-west-1".into(),
                    role_arn: None
                },
            }]
        );
        let file = policy
            .triggers
            .file
            .expect("the file trigger is on by default");
        assert_eq!(file.path, Path::new("/run/kms-killswitch"));
        assert!(!file.allow_untrusted_flag_dir);
        assert_eq!(
            policy.triggers.signal,
            Some(SignalTrigger {
                number: signal_hook::consts::SIGUSR1,
                name: "SIGUSR1"
            })
        );
        assert!(policy.triggers.alarms.is_empty());
        assert_eq!(policy.triggers.alarm_poll_interval, Duration::from_secs(10));
        assert_eq!(policy.triggers.fail_closed_after, None);
        assert_eq!(
            policy.lockdown,
            LockdownSettings {
                verify_timeout: Duration::from_secs(120),
                enforce_interval: Some(Duration::from_secs(30)),
                rate_limit: 5,
            }
        );
        assert_eq!(
            policy.state_file,
            Path::new("/var/lib/kms-killswitch/latch.json")
        );
        assert_eq!(
            policy.audit_log,
            Path::new("/var/log/kms-killswitch/audit.jsonl")
        );
    }

    #[test]
    fn full_policy_reads_every_option() {
        let policy = parse_ok(
            "version: 1
aws:
  region: eu-west-1
  role_arn: arn:aws:iam::111122223333:role/kms-killswitch
  endpoint_url: http://127.0.0.1:4599
  endpoints:
    kms: https://vpce-0123-abcd.kms.eu-west-1.vpce.amazonaws.com
    cloudwatch: http://127.0.0.1:4600/
    sts: http://localhost:4601
key_stores:
  - id: cks-1234567890abcdef0
  - name: prod-xks
    region: us-east-1
    role_arn: arn:aws:iam::444455556666:role/ops/kms-killswitch
triggers:
  file:
    path: /run/kms/flag
    allow_untrusted_flag_dir: true
  signal: SIGUSR2
  alarms:
    - name: kms-exfiltration-suspected
      region: eu-central-1
      consecutive: 2
    - name: big-red-button
  alarm_poll_interval: 5s
  fail_closed_after: 10m
lockdown:
  verify_timeout: 90s
  enforce_interval: 1m
  rate_limit: 3
state_file: /var/lib/ks/latch.json
audit_log: /var/log/ks/audit.jsonl
",
        );
        assert_eq!(
            policy.role_arn.as_deref(),
            Some("arn:aws:iam::111122223333:role/kms-killswitch")
        );
        assert_eq!(
            policy.endpoints,
            Endpoints {
                all: Some("http://127.0.0.1:4599".into()),
                kms: Some("https://vpce-0123-abcd.kms.eu-west-1.vpce.amazonaws.com".into()),
                cloudwatch: Some("http://127.0.0.1:4600/".into()),
                sts: Some("http://localhost:4601".into()),
            }
        );
        assert_eq!(policy.key_stores.len(), 2);
        assert_eq!(
            policy.key_stores[0].target.role_arn.as_deref(),
            Some("arn:aws:iam::111122223333:role/kms-killswitch"),
            "a store without role_arn inherits aws.role_arn"
        );
        assert_eq!(
            policy.key_stores[1],
            KeyStoreSpec {
                selector: KeyStoreSelector::Name("prod-xks".into()),
                target: Target {
                    region: "us-east-1".into(),
                    role_arn: Some("arn:aws:iam::444455556666:role/ops/kms-killswitch".into()),
                },
            }
        );
        assert_eq!(
            policy.triggers.file,
            Some(FileTrigger {
                path: "/run/kms/flag".into(),
                allow_untrusted_flag_dir: true
            })
        );
        assert_eq!(policy.triggers.signal.map(|s| s.name), Some("SIGUSR2"));
        assert_eq!(
            policy.triggers.alarms,
            vec![
                AlarmSpec {
                    name: "kms-exfiltration-suspected".into(),
                    target: Target {
                        region: "eu-central-1".into(),
                        role_arn: Some("arn:aws:iam::111122223333:role/kms-killswitch".into()),
                    },
                    consecutive: 2,
                },
                AlarmSpec {
                    name: "big-red-button".into(),
                    target: policy.default_target(),
                    consecutive: 1,
                },
            ]
        );
        assert_eq!(policy.triggers.alarm_poll_interval, Duration::from_secs(5));
        assert_eq!(
            policy.triggers.fail_closed_after,
            Some(Duration::from_secs(600))
        );
        assert_eq!(
            policy.lockdown,
            LockdownSettings {
                verify_timeout: Duration::from_secs(90),
                enforce_interval: Some(Duration::from_secs(60)),
                rate_limit: 3,
            }
        );
        assert_eq!(policy.state_file, Path::new("/var/lib/ks/latch.json"));
        assert_eq!(policy.audit_log, Path::new("/var/log/ks/audit.jsonl"));
        assert_eq!(key_store_spread(&policy), (2, 2));
    }

    #[test]
    fn sha256_is_of_the_file_bytes() {
        let policy = parse_bytes(MINIMAL.as_bytes(), Path::new(PATH)).expect("valid");
        assert_eq!(
            policy.sha256,
            hex::encode(sha2::Sha256::digest(MINIMAL.as_bytes()))
        );
        assert_eq!(policy.sha256.len(), 64);
        assert_eq!(parse_ok(MINIMAL).sha256, policy.sha256);
    }

    #[test]
    fn version_is_required_and_must_be_1() {
        assert_one_problem(
            &MINIMAL.replace("version: 1\n", ""),
            None,
            "missing `version: 1`",
        );
        assert_one_problem(
            &MINIMAL.replace("version: 1", "version: 2"),
            Some(1),
            "version: 2 is not supported",
        );
        assert_one_problem(
            &MINIMAL.replace("version: 1", "version: one"),
            Some(1),
            "expected a whole number",
        );
    }

    #[test]
    fn aws_region_is_required() {
        assert_one_problem(
            "version: 1\nkey_stores:\n  - id: cks-1234567890abcdef0\n",
            None,
            "missing `aws:`",
        );
        assert_one_problem(
            "version: 1\naws:\n  role_arn: arn:aws:iam::111122223333:role/k\nkey_stores:\n  - id: cks-1234567890abcdef0\n",
            Some(3),
            "aws: missing `region:`",
        );
    }

    #[test]
    fn unknown_keys_are_errors_with_their_line() {
        assert_one_problem(
            &format!("{MINIMAL}colour: red\n"),
            Some(6),
            "unknown field `colour`, expected one of version",
        );
        assert_one_problem(
            &MINIMAL.replace(
                "  - id: cks-1234567890abcdef0",
                "  - id: cks-1234567890abcdef0\n    regoin: eu-west-2",
            ),
            Some(6),
            "unknown field `regoin`",
        );
        assert_one_problem(
            &format!("{MINIMAL}triggers:\n  file:\n    path: /run/x\n    mode: 0600\n"),
            Some(9),
            "unknown field `mode`",
        );
        assert_one_problem(
            &format!("{MINIMAL}lockdown:\n  timeout: 5s\n"),
            Some(7),
            "unknown field `timeout`",
        );
    }

    #[test]
    fn duplicate_keys_are_errors() {
        assert_one_problem(
            &format!("{MINIMAL}version: 1\n"),
            Some(6),
            "duplicate mapping key `version`",
        );
        assert_one_problem(
            &MINIMAL.replace(
                "  - id: cks-1234567890abcdef0",
                "  - id: cks-1234567890abcdef0\n    id: cks-1234567890abcdef1",
            ),
            Some(6),
            "duplicate mapping key `id`",
        );
    }

    #[test]
    fn syntax_errors_name_their_line() {
        assert_one_problem(
            "version: 1\naws:\n  region: \"eu-west-1\n",
            Some(3),
            "unclosed quote",
        );
        assert_one_problem(
            "version: 1\naws:\n  region: eu-west-1\n    role_arn: x\n",
            Some(4),
            "mapping values are not allowed",
        );
        assert_one_problem("version: 1\naws: {region: eu-west-1\n", Some(2), "");
    }

    #[test]
    fn an_empty_file_says_so() {
        assert_one_problem("", None, "the file is empty");
        assert_one_problem("# only a comment\n\n   \n", None, "the file is empty");
    }

    #[test]
    fn a_document_that_is_not_a_mapping_is_an_error() {
        assert_one_problem("- version: 1\n", Some(1), "");
        assert_one_problem("just words\n", Some(1), "");
    }

    #[test]
    fn invalid_utf8_names_its_position() {
        let mut bytes = b"version: 1\naws:\n  region: eu-".to_vec();
        bytes.extend_from_slice(&[0xff, 0xfe]);
        match parse_bytes(&bytes, Path::new(PATH)) {
            Err(PolicyError::Invalid { problems, .. }) => {
                assert_eq!(
                    problems[0].position,
                    Some(Position {
                        line: 3,
                        column: 14
                    })
                );
                assert!(problems[0].message.contains("not valid UTF-8"));
            }
            other => panic!("expected invalid UTF-8 to be refused, got {other:?}"),
        }
    }

    #[test]
    fn key_stores_must_list_at_least_one() {
        assert_one_problem(
            "version: 1\naws:\n  region: eu-west-1\n",
            None,
            "missing `key_stores:`",
        );
        assert_one_problem(
            "version: 1\naws:\n  region: eu-west-1\nkey_stores: []\n",
            Some(4),
            "key_stores is empty",
        );
    }

    #[test]
    fn key_store_needs_exactly_one_of_id_and_name() {
        assert_one_problem(
            &MINIMAL.replace(
                "  - id: cks-1234567890abcdef0",
                "  - id: cks-1234567890abcdef0\n    name: prod",
            ),
            Some(5),
            "has both `id` and `name`",
        );
        assert_one_problem(
            &MINIMAL.replace("  - id: cks-1234567890abcdef0", "  - region: eu-west-2"),
            Some(5),
            "needs exactly one of `id` (cks-…) or `name`",
        );
        assert_one_problem(
            &MINIMAL.replace("  - id: cks-1234567890abcdef0", "  - name: \"  \""),
            Some(5),
            "name is empty",
        );
        let long = "n".repeat(257);
        assert_one_problem(
            &MINIMAL.replace(
                "  - id: cks-1234567890abcdef0",
                &format!("  - name: {long}"),
            ),
            Some(5),
            "longer than 256",
        );
        assert_eq!(
            parse_ok(&MINIMAL.replace("  - id: cks-1234567890abcdef0", "  - name: prod-xks"))
                .key_stores[0]
                .selector,
            KeyStoreSelector::Name("prod-xks".into())
        );
    }

    #[test]
    fn key_store_id_must_be_cks_and_17_lowercase_hex_digits() {
        for bad in [
            "cks-123",
            "cks-1234567890ABCDEF0",
            "cks-1234567890abcdef01",
            "xks-1234567890abcdef0",
            "cks-1234567890abcdefg",
            "1234567890abcdef0",
        ] {
            assert_one_problem(
                &MINIMAL.replace("cks-1234567890abcdef0", bad),
                Some(5),
                &format!(
                    "`{bad}` is not a custom key store ID: expected `cks-` and 17 lowercase hex digits"
                ),
            );
        }
    }

    #[test]
    fn duplicate_key_stores_are_errors() {
        // The same id twice, even in another region.
        assert_one_problem(
            &format!("{MINIMAL}  - id: cks-1234567890abcdef0\n    region: us-east-1\n"),
            Some(6),
            "key store cks-1234567890abcdef0 is already listed at line 5",
        );
        // The same name in the same region with the same role.
        assert_one_problem(
            "version: 1\naws:\n  region: eu-west-1\nkey_stores:\n  - name: prod\n  - name: prod\n    region: eu-west-1\n",
            Some(6),
            "named `prod` in eu-west-1 with the same role is already listed at line 5",
        );
        // The same name in another region, or through another role, is another store.
        let policy = parse_ok(
            "version: 1
aws:
  region: eu-west-1
key_stores:
  - name: prod
  - name: prod
    region: us-east-1
  - name: prod
    role_arn: arn:aws:iam::444455556666:role/k
",
        );
        assert_eq!(policy.key_stores.len(), 3);
        assert_eq!(key_store_spread(&policy), (2, 2));
    }

    #[test]
    fn role_arns_must_be_well_formed() {
        for bad in [
            "arn:aws:iam::1111:role/k",
            "arn:aws:iam::11112222333a:role/k",
            "arn:aws:iam::111122223333:user/k",
            "arn:aws:iam::111122223333:role/",
            "arn:aws:iam::111122223333:role/a//b",
            "arn:aws:iam:eu-west-1:111122223333:role/k",
            "arn:aws:sts::111122223333:role/k",
            "arn:aws-mars:iam::111122223333:role/k",
            "arn:aws:iam::111122223333:role/has space",
            "role/k",
        ] {
            assert_one_problem(
                &MINIMAL.replace(
                    "key_stores:",
                    &format!("  role_arn: \"{bad}\"\nkey_stores:"),
                ),
                Some(4),
                "is not an IAM role ARN",
            );
        }
        let long_name = "r".repeat(65);
        assert_one_problem(
            &MINIMAL.replace(
                "key_stores:",
                &format!("  role_arn: arn:aws:iam::111122223333:role/{long_name}\nkey_stores:"),
            ),
            Some(4),
            "is not an IAM role ARN",
        );
        for good in [
            "arn:aws:iam::111122223333:role/kms-killswitch",
            "arn:aws:iam::111122223333:role/ops/team/k+=,.@_-",
        ] {
            let policy = parse_ok(
                &MINIMAL.replace("key_stores:", &format!("  role_arn: {good}\nkey_stores:")),
            );
            assert_eq!(policy.role_arn.as_deref(), Some(good));
            assert_eq!(
                policy.key_stores[0].target.role_account(),
                Some("111122223333")
            );
        }
    }

    #[test]
    fn role_partition_must_match_the_region() {
        let cn = parse_ok(
            "version: 1\naws:\n  region: cn-north-1\n  role_arn: arn:aws-cn:iam::111122223333:role/k\nkey_stores:\n  - id: cks-1234567890abcdef0\n",
        );
        assert_eq!(cn.region, "cn-north-1");
        let gov = parse_ok(
            "version: 1\naws:\n  region: us-gov-west-1\nkey_stores:\n  - id: cks-1234567890abcdef0\n    role_arn: arn:aws-us-gov:iam::111122223333:role/k\n",
        );
        assert_eq!(gov.key_stores[0].target.region, "us-gov-west-1");
        assert_one_problem(
            "version: 1\naws:\n  region: eu-west-1\n  role_arn: arn:aws-cn:iam::111122223333:role/k\nkey_stores:\n  - id: cks-1234567890abcdef0\n",
            Some(4),
            "the role is in partition aws-cn but region eu-west-1 is in partition aws",
        );
        // A store in another partition cannot inherit the default role.
        assert_one_problem(
            "version: 1\naws:\n  region: eu-west-1\n  role_arn: arn:aws:iam::111122223333:role/k\nkey_stores:\n  - id: cks-1234567890abcdef0\n    region: cn-north-1\n",
            None,
            "key_stores[0]: region cn-north-1 is in partition aws-cn but aws.role_arn is in partition aws",
        );
    }

    #[test]
    fn regions_must_be_well_formed() {
        for bad in [
            "eu_west_1",
            "EU-WEST-1",
            "euwest1",
            "eu-west",
            "eu-west-",
            "e-west-1",
            "eu-west-123",
            "eu west 1",
            "",
        ] {
            assert_one_problem(
                &MINIMAL.replace("region: eu-west-1", &format!("region: \"{bad}\"")),
                Some(3),
                "is not an AWS region name",
            );
        }
        for good in [
            "eu-west-1",
            "us-gov-west-1",
            "cn-north-1",
            "ap-southeast-2",
            "il-central-1",
            "us-isob-east-1",
            "eusc-de-east-1",
        ] {
            assert_eq!(parse_ok(&MINIMAL.replace("eu-west-1", good)).region, good);
        }
        assert_one_problem(
            &format!("{MINIMAL}    region: eu-west-1a\n"),
            Some(6),
            "key_stores[0].region: `eu-west-1a` is not an AWS region name",
        );
    }

    #[test]
    fn endpoint_urls_must_be_http_urls_without_credentials() {
        let with = |url: &str| {
            MINIMAL.replace(
                "key_stores:",
                &format!("  endpoint_url: \"{url}\"\nkey_stores:"),
            )
        };
        assert_one_problem(
            &with("ftp://127.0.0.1"),
            Some(4),
            "must be an http:// or https:// URL",
        );
        assert_one_problem(
            &with("127.0.0.1:4599"),
            Some(4),
            "must be an http:// or https:// URL",
        );
        assert_one_problem(&with("http://exa mple"), Some(4), "is not a URL");
        assert_one_problem(
            &with("http://127.0.0.1/?x=1"),
            Some(4),
            "must not have a query",
        );
        let problems = problems(&with("https://AKIA:hunter2@kms.example"));
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0]
                .message
                .contains("credentials never go in the policy")
        );
        assert!(
            !problems[0].message.contains("hunter2"),
            "a secret was echoed: {problems:?}"
        );
        assert_one_problem(
            &MINIMAL.replace(
                "key_stores:",
                "  endpoints:\n    kms: kms.local\nkey_stores:",
            ),
            Some(5),
            "aws.endpoints.kms",
        );
        assert_eq!(
            parse_ok(&with("http://127.0.0.1:4599"))
                .endpoints
                .all
                .as_deref(),
            Some("http://127.0.0.1:4599")
        );
    }

    #[test]
    fn plain_http_endpoints_must_be_loopback_and_https_may_go_anywhere() {
        let all = |url: &str| {
            MINIMAL.replace(
                "key_stores:",
                &format!("  endpoint_url: \"{url}\"\nkey_stores:"),
            )
        };
        let one = |service: &str, url: &str| {
            MINIMAL.replace(
                "key_stores:",
                &format!("  endpoints:\n    {service}: {url}\nkey_stores:"),
            )
        };
        for url in [
            "http://127.0.0.1:4599",
            "http://127.3.2.1",
            "http://[::1]:4599",
            "http://localhost:4599",
            "http://LocalHost",
            "https://kms.eu-west-1.amazonaws.com",
            "https://10.0.0.8:8443",
        ] {
            assert_eq!(
                parse_ok(&all(url)).endpoints.all.as_deref(),
                Some(url),
                "{url}"
            );
            assert_eq!(
                parse_ok(&one("kms", url)).endpoints.kms.as_deref(),
                Some(url),
                "{url}"
            );
        }
        for url in [
            "http://kms.eu-west-1.amazonaws.com",
            "http://10.0.0.8:4599",
            "http://128.0.0.1",
            "http://[::2]",
            "http://[::ffff:10.0.0.1]",
            "http://localhost.example.com",
            "http://0.0.0.0:4599",
        ] {
            let problems = problems(&all(url));
            assert_eq!(problems.len(), 1, "{url}: {problems:?}");
            assert_eq!(
                problems[0].position,
                Some(Position {
                    line: 4,
                    column: 17
                }),
                "{url}: {problems:?}"
            );
            let message = &problems[0].message;
            assert!(
                message.starts_with("aws.endpoint_url: ")
                    && message.contains("not loopback")
                    && message.contains("not signed"),
                "{url}: {message}"
            );
        }
        for service in ["kms", "cloudwatch", "sts"] {
            let problems = problems(&one(service, "http://kms.example:80"));
            assert_eq!(problems.len(), 1, "{service}: {problems:?}");
            assert_eq!(
                problems[0].position.map(|p| p.line),
                Some(5),
                "{problems:?}"
            );
            assert!(
                problems[0]
                    .message
                    .starts_with(&format!("aws.endpoints.{service}: ")),
                "{problems:?}"
            );
        }
        let err = parse(&all("http://kms.example"), Path::new(PATH))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("line 4, column 17"), "{err}");
    }

    #[test]
    fn alarms_need_a_non_empty_name_and_consecutive_of_at_least_1() {
        let with = |alarms: &str| format!("{MINIMAL}triggers:\n  alarms:\n{alarms}");
        assert_one_problem(&with("    - name: \"\"\n"), Some(8), "alarm name is empty");
        assert_one_problem(
            &with("    - region: eu-west-1\n"),
            Some(8),
            "triggers.alarms[0]: missing `name:`",
        );
        assert_one_problem(
            &with(&format!("    - name: {}\n", "a".repeat(256))),
            Some(8),
            "longer than 255",
        );
        assert_one_problem(
            &with("    - name: a\n      consecutive: 0\n"),
            Some(9),
            "consecutive: must be 1 or more",
        );
        assert_one_problem(
            &with("    - name: a\n      consecutive: -1\n"),
            Some(9),
            "expected a whole number",
        );
        assert_one_problem(
            &with("    - name: a\n    - name: a\n"),
            Some(9),
            "alarm `a` in eu-west-1 is already listed at line 8",
        );
        let policy = parse_ok(&with(
            "    - name: a\n    - name: a\n      region: us-east-1\n",
        ));
        assert_eq!(policy.triggers.alarms.len(), 2);
    }

    #[test]
    fn durations_need_a_unit_and_must_fit() {
        let with = |key: &str, value: &str| format!("{MINIMAL}lockdown:\n  {key}: {value}\n");
        assert_one_problem(
            &with("verify_timeout", "15"),
            Some(7),
            "`15` has no unit: write e.g. `15s` or `15ms`",
        );
        assert_one_problem(&with("verify_timeout", "0"), Some(7), "has no unit");
        assert_one_problem(
            &with("verify_timeout", "fast"),
            Some(7),
            "`fast` is not a duration: expected a number and a unit",
        );
        assert_one_problem(&with("verify_timeout", "1.5"), Some(7), "is not a duration");
        assert_one_problem(
            &with("verify_timeout", "0s"),
            Some(7),
            "verify_timeout: `0s` is too short: must be at least 1s",
        );
        assert_one_problem(
            &with("verify_timeout", "2days"),
            Some(7),
            "longer than the maximum of 1day",
        );
        assert_one_problem(&with("verify_timeout", "[1]"), Some(7), "");
        assert_eq!(
            parse_ok(&with("verify_timeout", "1500ms"))
                .lockdown
                .verify_timeout,
            Duration::from_millis(1500)
        );
        assert_eq!(
            parse_ok(&with("verify_timeout", "2m"))
                .lockdown
                .verify_timeout,
            Duration::from_secs(120)
        );
        assert_eq!(
            parse_ok(&with("verify_timeout", "1h"))
                .lockdown
                .verify_timeout,
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn verify_timeout_must_leave_time_for_one_disconnect_and_describe() {
        let with = |value: &str| format!("{MINIMAL}lockdown:\n  verify_timeout: {value}\n");
        assert_one_problem(
            &with("999ms"),
            Some(7),
            "lockdown.verify_timeout: `999ms` is too short: must be at least 1s (one \
             DisconnectCustomKeyStore and one DescribeCustomKeyStores round trip",
        );
        assert_one_problem(&with("200ms"), Some(7), "is too short");
        assert_eq!(
            parse_ok(&with("1s")).lockdown.verify_timeout,
            MIN_VERIFY_TIMEOUT
        );
    }

    #[test]
    fn enforce_interval_is_0s_or_at_least_1s() {
        let with = |value: &str| format!("{MINIMAL}lockdown:\n  enforce_interval: {value}\n");
        assert_one_problem(
            &with("500ms"),
            Some(7),
            "lockdown.enforce_interval: `500ms` is too short: must be `0s` (disabled) or at least \
             1s (every round spends DescribeCustomKeyStores quota",
        );
        assert_one_problem(&with("1ms"), Some(7), "is too short");
        assert_eq!(parse_ok(&with("0s")).lockdown.enforce_interval, None);
        assert_eq!(
            parse_ok(&with("1s")).lockdown.enforce_interval,
            Some(MIN_ENFORCE_INTERVAL)
        );
    }

    #[test]
    fn enforce_interval_of_0s_disables_enforcement() {
        let policy = parse_ok(&format!("{MINIMAL}lockdown:\n  enforce_interval: 0s\n"));
        assert_eq!(policy.lockdown.enforce_interval, None);
        assert_one_problem(
            &format!("{MINIMAL}lockdown:\n  enforce_interval: 0\n"),
            Some(7),
            "has no unit",
        );
    }

    #[test]
    fn rate_limit_must_be_positive() {
        assert_one_problem(
            &format!("{MINIMAL}lockdown:\n  rate_limit: 0\n"),
            Some(7),
            "rate_limit: must be 1 or more",
        );
        assert_one_problem(
            &format!("{MINIMAL}lockdown:\n  rate_limit: -5\n"),
            Some(7),
            "expected a whole number",
        );
        assert_one_problem(
            &format!("{MINIMAL}lockdown:\n  rate_limit: 2.5\n"),
            Some(7),
            "expected a whole number",
        );
        assert_eq!(
            parse_ok(&format!("{MINIMAL}lockdown:\n  rate_limit: 20\n"))
                .lockdown
                .rate_limit,
            20
        );
    }

    #[test]
    fn alarm_poll_interval_must_be_at_least_a_second() {
        let with = |value: &str| format!("{MINIMAL}triggers:\n  alarm_poll_interval: {value}\n");
        assert_one_problem(&with("500ms"), Some(7), "must be at least 1s");
        assert_one_problem(&with("0s"), Some(7), "must be at least 1s");
        assert_eq!(
            parse_ok(&with("1s")).triggers.alarm_poll_interval,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn fail_closed_after_needs_alarms_and_outlasts_a_poll() {
        assert_one_problem(
            &format!("{MINIMAL}triggers:\n  fail_closed_after: 10m\n"),
            Some(7),
            "fail_closed_after: needs at least one alarm",
        );
        assert_one_problem(
            &format!(
                "{MINIMAL}triggers:\n  alarms:\n    - name: a\n  alarm_poll_interval: 30s\n  fail_closed_after: 10s\n"
            ),
            Some(10),
            "is shorter than alarm_poll_interval",
        );
        assert_one_problem(
            &format!("{MINIMAL}triggers:\n  alarms:\n    - name: a\n  fail_closed_after: 0s\n"),
            Some(9),
            "must be longer than 0s",
        );
    }

    #[test]
    fn signal_accepts_usr1_usr2_and_none() {
        let with = |value: &str| format!("{MINIMAL}triggers:\n  signal: {value}\n");
        let usr2 = signal_hook::consts::SIGUSR2;
        assert_eq!(
            parse_ok(&with("SIGUSR2")).triggers.signal,
            Some(SignalTrigger {
                number: usr2,
                name: "SIGUSR2"
            })
        );
        assert_eq!(
            parse_ok(&with("USR2")).triggers.signal.map(|s| s.name),
            Some("SIGUSR2")
        );
        assert_eq!(
            parse_ok(&with("sigusr1")).triggers.signal.map(|s| s.name),
            Some("SIGUSR1")
        );
        assert_eq!(parse_ok(&with("none")).triggers.signal, None);
        assert_eq!(
            signal_by_name("SIGUSR1").map(|s| s.number),
            Some(signal_hook::consts::SIGUSR1)
        );
        assert_eq!(signal_by_name("SIGHUP"), None);
    }

    #[test]
    fn signal_refuses_signals_with_another_meaning_and_says_why() {
        let with = |value: &str| format!("{MINIMAL}triggers:\n  signal: {value}\n");
        assert_one_problem(
            &with("SIGHUP"),
            Some(7),
            "SIGHUP cannot be the trigger: it means \"reload the policy\"",
        );
        assert_one_problem(&with("HUP"), Some(7), "SIGHUP cannot be the trigger");
        assert_one_problem(
            &with("SIGTERM"),
            Some(7),
            "systemd sends it on every stop or restart",
        );
        assert_one_problem(&with("SIGINT"), Some(7), "it means \"stop\"");
        assert_one_problem(&with("SIGKILL"), Some(7), "can never be caught");
        assert_one_problem(&with("SIGSTOP"), Some(7), "can never be caught");
        assert_one_problem(&with("SIGSEGV"), Some(7), "reports a crash");
        assert_one_problem(&with("SIGCHLD"), Some(7), "would lock down by accident");
        assert_one_problem(&with("SIGWINCH"), Some(7), "would lock down by accident");
        assert_one_problem(
            &with("SIGBOGUS"),
            Some(7),
            "`SIGBOGUS` is not a signal name: expected SIGUSR1, SIGUSR2 or `none`",
        );
        assert_one_problem(&with("10"), Some(7), "is not a signal name");
    }

    #[test]
    fn file_trigger_can_be_disabled_or_moved_and_its_path_must_be_absolute() {
        assert_eq!(
            parse_ok(&format!("{MINIMAL}triggers:\n  file: none\n"))
                .triggers
                .file,
            None
        );
        let moved = parse_ok(&format!(
            "{MINIMAL}triggers:\n  file:\n    path: /run/ks/flag\n"
        ));
        assert_eq!(
            moved.triggers.file.map(|f| f.path),
            Some(PathBuf::from("/run/ks/flag"))
        );
        let defaulted = parse_ok(&format!(
            "{MINIMAL}triggers:\n  file:\n    allow_untrusted_flag_dir: false\n"
        ));
        assert_eq!(
            defaulted.triggers.file.map(|f| f.path),
            Some(PathBuf::from(DEFAULT_FLAG_PATH))
        );
        assert_one_problem(
            &format!("{MINIMAL}triggers:\n  file:\n    path: run/flag\n"),
            Some(8),
            "must be an absolute path",
        );
        assert_one_problem(
            &format!("{MINIMAL}triggers:\n  file:\n    path: /\n"),
            Some(8),
            "must name a file",
        );
        assert_one_problem(
            &format!("{MINIMAL}triggers:\n  file: off\n"),
            Some(7),
            "expected `none` or a mapping with `path:`",
        );
        assert_one_problem(
            &format!("{MINIMAL}triggers:\n  file: [1]\n"),
            Some(7),
            "expected `none` or a mapping with `path`",
        );
    }

    #[test]
    fn yaml_1_1_booleans_are_not_booleans() {
        assert_one_problem(
            &format!("{MINIMAL}triggers:\n  file:\n    allow_untrusted_flag_dir: no\n"),
            Some(8),
            "true or false",
        );
    }

    #[test]
    fn at_least_one_trigger_must_stay_enabled() {
        assert_one_problem(
            &format!("{MINIMAL}triggers:\n  file: none\n  signal: none\n"),
            Some(7),
            "every trigger is disabled",
        );
        let alarm_only = parse_ok(&format!(
            "{MINIMAL}triggers:\n  file: none\n  signal: none\n  alarms:\n    - name: a\n"
        ));
        assert_eq!(alarm_only.triggers.alarms.len(), 1);
    }

    #[test]
    fn state_file_and_audit_log_must_be_absolute_and_distinct() {
        assert_one_problem(
            &format!("{MINIMAL}state_file: latch.json\n"),
            Some(6),
            "state_file: `latch.json` must be an absolute path",
        );
        assert_one_problem(
            &format!("{MINIMAL}audit_log: ./audit.jsonl\n"),
            Some(6),
            "audit_log: `./audit.jsonl` must be an absolute path",
        );
        assert_one_problem(
            &format!("{MINIMAL}state_file: /var/lib/ks/x\naudit_log: /var/lib/ks/x\n"),
            Some(6),
            "state_file and audit_log are the same file",
        );
        assert_one_problem(
            &format!("{MINIMAL}state_file: /run/kms-killswitch\n"),
            None,
            "it would trip itself",
        );
    }

    #[test]
    fn every_semantic_problem_is_reported_in_file_order() {
        let text = "version: 2
aws:
  region: eu_west_1
key_stores:
  - id: cks-123
  - name: \"\"
triggers:
  signal: SIGHUP
lockdown:
  verify_timeout: 15
  rate_limit: 0
audit_log: audit.jsonl
";
        let problems = problems(text);
        let lines: Vec<Option<u64>> = problems
            .iter()
            .map(|p| p.position.map(|p| p.line))
            .collect();
        assert_eq!(
            lines,
            vec![
                Some(1),
                Some(3),
                Some(5),
                Some(6),
                Some(8),
                Some(10),
                Some(11),
                Some(12)
            ]
        );
    }

    #[test]
    fn the_error_is_one_readable_line_naming_the_file_line_and_column() {
        let err = parse(
            &format!("{MINIMAL}lockdown:\n  rate_limit: 0\n  verify_timeout: x\n"),
            Path::new(PATH),
        )
        .expect_err("invalid");
        let text = err.to_string();
        assert!(!text.contains('\n'), "{text}");
        assert!(
            text.starts_with("policy /etc/kms-killswitch/policy.yaml: 2 problems: line 7, column 15: lockdown.rate_limit"),
            "{text}"
        );
        assert!(
            text.contains("; line 8, column 19: lockdown.verify_timeout: `x` is not a duration"),
            "{text}"
        );
        let err = parse("version: 1\nfoo: [\n", Path::new(PATH)).expect_err("invalid");
        assert!(
            err.to_string()
                .starts_with("policy /etc/kms-killswitch/policy.yaml: line 2"),
            "{err}"
        );
    }

    #[test]
    fn control_characters_in_values_are_escaped() {
        let err = parse(
            &MINIMAL.replace("eu-west-1", "\"eu\\nwest\\u001b[31m\""),
            Path::new(PATH),
        )
        .expect_err("invalid");
        let text = err.to_string();
        assert!(!text.contains('\n') && !text.contains('\u{1b}'), "{text:?}");
        assert!(text.contains("`eu\\nwest\\u{1b}[31m`"), "{text}");
    }

    #[test]
    fn aliases_expand_but_an_alias_bomb_fails_before_expanding() {
        // 10^12 nodes if expanded. No field of the schema accepts a nested value, so the first
        // unknown key stops the parse before any alias is replayed; serde-saphyr's default
        // budget bounds what is left.
        let mut text = String::from("version: 1\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..12 {
            let prev = level - 1;
            let items = vec![format!("*a{prev}"); 10].join(", ");
            text.push_str(&format!("a{level}: &a{level} [{items}]\n"));
        }
        assert_one_problem(&text, Some(2), "unknown field `a0`");
        // Ordinary aliases work: the alarms reuse the key store list's shape.
        let policy = parse_ok(&format!(
            "{MINIMAL}  - name: &shared prod\ntriggers:\n  alarms:\n    - name: *shared\n"
        ));
        assert_eq!(policy.triggers.alarms[0].name, "prod");
    }

    #[test]
    fn insecure_reason_follows_sshd_strict_modes() {
        let me = 1000;
        assert_eq!(insecure_reason(0o100600, me, me), None);
        assert_eq!(
            insecure_reason(0o100644, 0, me),
            None,
            "root-owned and not writable by others"
        );
        assert_eq!(insecure_reason(0o100444, me, me), None);
        let group = insecure_reason(0o100664, me, me).expect("group-writable is refused");
        assert_eq!(group, "writable by its group (mode 0664)");
        let others = insecure_reason(0o100646, me, me).expect("world-writable is refused");
        assert_eq!(others, "writable by others (mode 0646)");
        assert_eq!(
            insecure_reason(0o100666, me, me).as_deref(),
            Some("writable by group and others (mode 0666)")
        );
        let foreign = insecure_reason(0o100600, 1001, me).expect("another user's file is refused");
        assert!(
            foreign.contains(
                "owned by uid 1001, which is neither root nor the running user (uid 1000)"
            )
        );
        assert_eq!(insecure_reason(0o100600, 0, 0), None);
    }

    mod load_from_disk {
        use super::*;
        use std::os::unix::fs::PermissionsExt;

        fn write(dir: &tempfile::TempDir, mode: u32, text: &str) -> PathBuf {
            let path = dir.path().join("policy.yaml");
            std::fs::write(&path, text).expect("write the policy");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            path
        }

        #[test]
        fn a_private_file_loads_with_its_hash() {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = write(&dir, 0o600, MINIMAL);
            let policy = load(&path, LoadOptions::default()).expect("valid policy");
            assert_eq!(policy.path, path);
            assert_eq!(
                policy.sha256,
                hex::encode(sha2::Sha256::digest(MINIMAL.as_bytes()))
            );
        }

        #[test]
        fn a_world_writable_file_is_refused_unless_insecure_is_asked() {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = write(&dir, 0o666, MINIMAL);
            let err = load(&path, LoadOptions::default()).expect_err("refused");
            assert!(matches!(err, PolicyError::Insecure { .. }), "{err}");
            let text = err.to_string();
            assert!(
                text.contains("refusing a file writable by group and others (mode 0666)"),
                "{text}"
            );
            assert!(text.contains("--insecure-policy-permissions"), "{text}");
            let policy = load(
                &path,
                LoadOptions {
                    insecure_permissions: true,
                },
            )
            .expect("accepted with a warning");
            assert_eq!(policy.key_stores.len(), 1);
        }

        #[test]
        fn a_missing_file_or_a_directory_is_a_read_error() {
            let dir = tempfile::tempdir().expect("tempdir");
            let missing = dir.path().join("absent.yaml");
            let err = load(&missing, LoadOptions::default()).expect_err("missing");
            assert!(matches!(err, PolicyError::Read { .. }), "{err}");
            assert!(
                err.to_string()
                    .contains("cannot read it: No such file or directory"),
                "{err}"
            );
            let err = load(dir.path(), LoadOptions::default()).expect_err("a directory");
            assert!(err.to_string().contains("not a regular file"), "{err}");
        }

        #[test]
        fn a_policy_in_a_directory_others_can_write_is_refused_unless_insecure_is_asked() {
            use std::os::unix::fs::PermissionsExt;
            let dir = tempfile::tempdir().expect("tempdir");
            let path = write(&dir, 0o600, MINIMAL);
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
                .expect("chmod");
            let err = load(&path, LoadOptions::default()).expect_err("refused");
            let text = err.to_string();
            assert!(matches!(err, PolicyError::Insecure { .. }), "{text}");
            assert!(
                text.contains("writable by group and others (mode 0777)"),
                "{text}"
            );
            let options = LoadOptions {
                insecure_permissions: true,
            };
            load(&path, options).expect("accepted with a warning");
        }

        #[test]
        fn a_symlink_or_fifo_policy_is_refused_without_blocking() {
            let dir = tempfile::tempdir().expect("tempdir");
            let real = write(&dir, 0o600, MINIMAL);
            let link = dir.path().join("link.yaml");
            std::os::unix::fs::symlink(&real, &link).expect("symlink");
            let err = load(&link, LoadOptions::default()).expect_err("symlink");
            assert!(err.to_string().contains("symlink"), "{err}");
            let fifo = dir.path().join("fifo.yaml");
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &fifo,
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o600),
                0,
            )
            .expect("mkfifo");
            // Without O_NONBLOCK this open would wait for a writer forever.
            let err = load(&fifo, LoadOptions::default()).expect_err("fifo");
            assert!(err.to_string().contains("a fifo or socket"), "{err}");
        }

        #[test]
        fn an_oversized_file_is_refused_before_parsing() {
            let dir = tempfile::tempdir().expect("tempdir");
            let big = format!("{MINIMAL}# {}\n", "x".repeat(MAX_POLICY_BYTES as usize));
            let path = write(&dir, 0o600, &big);
            let err = load(&path, LoadOptions::default()).expect_err("too big");
            assert!(
                err.to_string().contains("larger than 1048576 bytes"),
                "{err}"
            );
        }
    }

    mod never_panics {
        //! Property tests: whatever the bytes, `parse_bytes` / `parse` return, never panic.
        use super::*;
        use proptest::prelude::*;

        /// A valid policy using every section, to mutate.
        const SEED: &str = "version: 1
aws:
  region: eu-west-1
  role_arn: arn:aws:iam::111122223333:role/kms-killswitch
  endpoint_url: http://127.0.0.1:4599
key_stores:
  - id: cks-1234567890abcdef0
  - name: prod-xks
    region: us-east-1
triggers:
  file:
    path: /run/kms-killswitch
  signal: SIGUSR1
  alarms:
    - name: kms-exfiltration-suspected
      consecutive: 2
  alarm_poll_interval: 10s
  fail_closed_after: 10m
lockdown:
  verify_timeout: 120s
  enforce_interval: 30s
  rate_limit: 5
state_file: /var/lib/kms-killswitch/latch.json
audit_log: /var/log/kms-killswitch/audit.jsonl
";

        /// Cases per property: together they run in a few seconds in a debug build.
        const CASES: u32 = 20_000;

        /// Fragments that stress YAML's grammar when spliced into the seed.
        const FRAGMENTS: &[&str] = &[
            ":",
            "- ",
            "\n",
            "  ",
            "\t",
            "&a ",
            "*a",
            "!!str ",
            "!!binary ",
            "? ",
            "[",
            "]",
            "{",
            "}",
            "\"",
            "'",
            "#",
            "|",
            ">",
            "---\n",
            "...\n",
            "<<: *a\n",
            "~",
            "null",
            "0s",
            "-1",
            "99999999999999999999",
            "\u{feff}",
            "\0",
            "é",
            "%YAML 1.2\n",
            "!",
            ",",
            "@",
            "`",
        ];

        fn mutate(seed: &str, edits: &[(usize, usize, u8)]) -> String {
            let mut text: Vec<char> = seed.chars().collect();
            for &(position, what, byte) in edits {
                let at = position % (text.len() + 1);
                match what % 4 {
                    0 => text
                        .splice(at..at, FRAGMENTS[byte as usize % FRAGMENTS.len()].chars())
                        .for_each(drop),
                    1 if at < text.len() => {
                        text.remove(at);
                    }
                    2 if at < text.len() => text[at] = char::from(byte),
                    _ => {
                        // Cut a line out: misaligns indentation or removes a required key.
                        let start = text[..at]
                            .iter()
                            .rposition(|&c| c == '\n')
                            .map_or(0, |i| i + 1);
                        let end = text[at..]
                            .iter()
                            .position(|&c| c == '\n')
                            .map_or(text.len(), |i| at + i + 1);
                        text.drain(start..end);
                    }
                }
            }
            text.into_iter().collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn parse_bytes_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse_bytes(&bytes, Path::new(PATH));
            }

            #[test]
            fn parse_never_panics_on_mutated_policies(edits in proptest::collection::vec((any::<usize>(), any::<usize>(), any::<u8>()), 1..8)) {
                let text = mutate(SEED, &edits);
                match parse(&text, Path::new(PATH)) {
                    Ok(policy) => prop_assert!(!policy.key_stores.is_empty()),
                    Err(err) => {
                        let message = err.to_string();
                        prop_assert!(!message.contains('\n'), "multi-line error: {message:?}");
                        prop_assert!(message.starts_with("policy /etc/kms-killswitch/policy.yaml: "));
                    }
                }
            }
        }

        #[test]
        fn the_seed_is_valid() {
            assert!(parse(SEED, Path::new(PATH)).is_ok());
        }
    }
}
