//! The policy: YAML text → validated, immutable [`Policy`] (DESIGN.md §3). This file owns the
//! validated types, the defaults and floors, and [`load`] / [`parse`].
//!
//! Two stages, like ripgrep's lowargs/hiargs: `raw.rs` parses with serde-saphyr into serde
//! shapes with `deny_unknown_fields` (syntax, unknown and duplicate keys, with line and column),
//! then `validate/` (one file per section of the policy) turns them into [`Policy`], collecting
//! every semantic error with the line and column of the value it is about (the raw types carry
//! `serde_saphyr::Spanned` values for that). `error.rs` owns [`PolicyError`] and the wording of
//! YAML problems.
//!
//! Pure: no tokio, no AWS, no network; the only I/O is reading the file and checking its
//! permissions and its directories' in [`load`]. It must not reach into any other module of the
//! crate but the leaf [`crate::fs_trust`] (the one judge of path trust).

mod error;
mod raw;
mod validate;

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::Digest;

use crate::model::{KeySpec, KeyStoreSelector, KeyStoreSpec, Target};

pub use error::{PolicyError, Position, Problem};

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
    /// `transitions: true`: also fire on any transition into ALARM that the alarm's history
    /// records since the previous poll (one that reverted before the poll, e.g. SetAlarmState on
    /// a metric alarm).
    pub transitions: bool,
}

/// One entry of `triggers.queues:`: an SQS queue long-polled for trip messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// The queue URL, as SQS names it (`https://sqs.REGION.amazonaws.com/ACCOUNT/NAME`).
    pub url: String,
    /// Where its SQS calls go: the URL's region (else `aws.region`), the entry's role (else
    /// `aws.role_arn`).
    pub target: Target,
    /// `match:`: any entry may match; empty means every message fires.
    pub matches: Vec<QueueMatch>,
}

/// One entry of a queue's `match:`; every field it gives must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueMatch {
    /// The EventBridge event's `source`, e.g. `aws.guardduty`.
    pub source: Option<String>,
    /// The event's `detail-type`, e.g. `AWS API Call via CloudTrail`.
    pub detail_type: Option<String>,
    /// GuardDuty's `detail.severity` at least this, in thousandths (7.5 → 7500), so the policy
    /// stays `Eq`.
    pub min_severity_milli: Option<u32>,
    /// CloudTrail's `detail.eventName`, e.g. `ConnectCustomKeyStore`.
    pub event_name: Option<String>,
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
    /// `triggers.queues:` (empty when absent).
    pub queues: Vec<QueueSpec>,
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

/// One entry of `notify:` (DESIGN.md §9): where notifications go, after the fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifySink {
    /// SNS Publish to `topic_arn`, in the topic's region, with `role_arn` (or `aws.role_arn`).
    Sns { topic_arn: String, target: Target },
    /// HTTP POST of the JSON document, signed with the secret in `secret_file` when set. The
    /// secret itself is never part of the policy (read by the notifier at start).
    Webhook {
        url: String,
        secret_file: Option<PathBuf>,
    },
}

/// `heartbeat:`: PutMetricData every `interval` while healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatSettings {
    pub namespace: String,
    /// `Heartbeat` unless the policy names another.
    pub metric_name: String,
    pub interval: Duration,
    /// `region` / `role_arn`, defaulting to `aws.region` / `aws.role_arn`.
    pub target: Target,
}

/// `metrics:`: the Prometheus textfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Absolute path ending in `.prom` (node_exporter's textfile collector reads only those).
    pub textfile: PathBuf,
}

/// Default heartbeat metric name (DESIGN.md §9).
pub const DEFAULT_HEARTBEAT_METRIC: &str = "Heartbeat";
/// Default heartbeat interval: CloudWatch's standard resolution is one minute, so an alarm on
/// missing data with 1-minute periods sees every beat.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(60);
/// Shortest heartbeat interval accepted (DESIGN.md §9: "any from 1s").
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

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
    /// `keys:`: standard KMS keys to disable on a trip (empty when the policy lists none).
    pub keys: Vec<KeySpec>,
    /// `lockdown.allow_unprotected`: `check --online` passes although a custom key store of a
    /// listed account-region is covered by no entry (it still lists them).
    pub allow_unprotected: bool,
    pub triggers: Triggers,
    pub lockdown: LockdownSettings,
    pub state_file: PathBuf,
    pub audit_log: PathBuf,
    /// `notify:`, in policy order (empty: none).
    pub notify: Vec<NotifySink>,
    pub heartbeat: Option<HeartbeatSettings>,
    pub metrics: Option<MetricsSettings>,
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
fn parse_bytes(bytes: &[u8], path: &Path) -> Result<Policy, PolicyError> {
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
    // `parse` hashes the text's UTF-8 bytes, which are exactly `bytes`.
    parse(text, path)
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
    let raw = raw::from_str(text).map_err(|problem| invalid(vec![problem]))?;
    let mut policy = validate::policy(raw, path).map_err(invalid)?;
    policy.sha256 = hex::encode(sha2::Sha256::digest(text.as_bytes()));
    Ok(policy)
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
impl Policy {
    /// The target of `aws.region` / `aws.role_arn`, used when a store or alarm names neither.
    fn default_target(&self) -> Target {
        Target {
            region: self.region.clone(),
            role_arn: self.role_arn.clone(),
        }
    }
}

#[cfg(test)]
mod test_support;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::*;

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
                    transitions: false,
                },
                AlarmSpec {
                    name: "big-red-button".into(),
                    target: policy.default_target(),
                    consecutive: 1,
                    transitions: false,
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
    fn an_empty_file_says_so() {
        assert_one_problem("", None, "the file is empty");
        assert_one_problem("# only a comment\n\n   \n", None, "the file is empty");
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
