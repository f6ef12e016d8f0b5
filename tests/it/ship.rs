//! Shipping checks (issue 7): the systemd unit is valid and scores "OK" in
//! `systemd-analyze security`, the IAM policy is least privilege and covers exactly the AWS
//! operations the binary calls, and the demo policy is a policy the binary accepts.
//!
//! Owns the tests for `systemd/`, `config/iam-*.json` and `config/demo.yaml`; it only reads those
//! files and never touches what other modules test.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support;

/// The repository root, where the shipped files live.
fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read_repo_file(relative: &str) -> String {
    let path = repo_file(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
}

mod systemd {
    use super::*;

    /// The unit as shipped.
    const UNIT: &str = "systemd/kms-killswitch.service";

    /// Where the shipped unit expects the binary; the tests point it at the freshly built one,
    /// because `systemd-analyze verify` checks that `ExecStart=` exists.
    const INSTALLED_BINARY: &str = "/usr/local/bin/kms-killswitch";

    /// The highest exposure `systemd-analyze security` may give the unit: 2.0 is the top of the
    /// "OK" band, the target.
    const MAX_EXPOSURE: f64 = 2.0;

    /// SIGTERM waits for a lockdown in flight up to `lockdown.verify_timeout`, so systemd must
    /// not SIGKILL the daemon sooner than the default.
    const DEFAULT_VERIFY_TIMEOUT_SECS: u64 =
        kms_killswitch::policy::DEFAULT_VERIFY_TIMEOUT.as_secs();

    /// Run `systemd-analyze` or fail loudly: CI must never skip these checks silently.
    fn systemd_analyze(args: &[&str]) -> Output {
        match Command::new("systemd-analyze").args(args).output() {
            Ok(output) => output,
            Err(err) => panic!(
                "cannot run systemd-analyze ({err}): install it with `apt-get install systemd` \
                 (.ci/test does); the unit checks must not be skipped"
            ),
        }
    }

    /// A copy of the shipped unit, in a temporary directory, whose `ExecStart=` is the binary
    /// cargo built for this test run.
    fn unit_with_built_binary() -> (tempfile::TempDir, PathBuf) {
        let text = read_repo_file(UNIT);
        assert!(
            text.contains(&format!("ExecStart={INSTALLED_BINARY} run")),
            "the unit's ExecStart= no longer runs {INSTALLED_BINARY}"
        );
        let text = text.replace(INSTALLED_BINARY, &support::bin().display().to_string());
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("kms-killswitch.service");
        std::fs::write(&path, text).expect("the unit copy is written");
        (dir, path)
    }

    #[test]
    fn unit_passes_systemd_analyze_verify() {
        let (_dir, unit) = unit_with_built_binary();
        let unit = unit.display().to_string();
        let output = systemd_analyze(&["verify", "--man=no", &unit]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "systemd-analyze verify failed ({}):\n{stderr}",
            output.status
        );
        // verify also reports unknown or misspelled directives as warnings while exiting 0.
        let complaints: Vec<&str> = stderr
            .lines()
            .filter(|line| line.contains("kms-killswitch"))
            .collect();
        assert!(
            complaints.is_empty(),
            "systemd-analyze verify complains about the unit:\n{}",
            complaints.join("\n")
        );
    }

    #[test]
    fn unit_exposure_is_ok() {
        let (_dir, unit) = unit_with_built_binary();
        let unit = unit.display().to_string();
        // --threshold is the exposure × 10: the command itself fails above MAX_EXPOSURE.
        let threshold = format!("--threshold={}", (MAX_EXPOSURE * 10.0) as u32);
        let output = systemd_analyze(&["security", "--offline=true", &threshold, &unit]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let exposure = parse_overall_exposure(&stdout).unwrap_or_else(|| {
            panic!(
                "no overall exposure in systemd-analyze security's output:\n{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        println!("systemd-analyze security exposure of kms-killswitch.service: {exposure}");
        assert!(
            exposure <= MAX_EXPOSURE,
            "exposure {exposure} is above {MAX_EXPOSURE}:\n{stdout}"
        );
        assert!(
            output.status.success(),
            "systemd-analyze security failed ({}):\n{stdout}",
            output.status
        );
    }

    /// The number in `→ Overall exposure level for kms-killswitch.service: 1.6 OK 🙂`.
    fn parse_overall_exposure(stdout: &str) -> Option<f64> {
        let line = stdout
            .lines()
            .find(|line| line.contains("Overall exposure level for"))?;
        let (_, rest) = line.rsplit_once(".service:")?;
        rest.split_whitespace().next()?.parse().ok()
    }

    #[test]
    fn parse_overall_exposure_reads_the_summary_line() {
        let stdout = "  NAME  DESCRIPTION  EXPOSURE\n\
                      ✗ PrivateNetwork=  Service has access to the host's network  0.5\n\
                      \n→ Overall exposure level for kms-killswitch.service: 1.6 OK 🙂\n";
        assert_eq!(parse_overall_exposure(stdout), Some(1.6));
        assert_eq!(parse_overall_exposure("no summary here\n"), None);
    }

    /// The system calls the unit's `SystemCallFilter=` lines allow: the union of the allow-list
    /// entries minus the `~` deny-list entries, with `@groups` expanded by `systemd-analyze
    /// syscall-filter` (systemd's own tables, so the answer matches the installed systemd).
    fn allowed_system_calls(unit_text: &str) -> BTreeSet<String> {
        let output = systemd_analyze(&["syscall-filter"]);
        assert!(
            output.status.success(),
            "systemd-analyze syscall-filter failed"
        );
        let mut groups: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        let mut current = None;
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let entry = line.trim();
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            if !line.starts_with(' ') && entry.starts_with('@') {
                current = Some(entry.to_owned());
                groups.insert(entry.to_owned(), Vec::new());
            } else if let Some(group) = &current {
                groups
                    .entry(group.clone())
                    .or_default()
                    .push(entry.to_owned());
            }
        }
        fn expand(
            groups: &std::collections::BTreeMap<String, Vec<String>>,
            entry: &str,
            out: &mut BTreeSet<String>,
        ) {
            match groups.get(entry) {
                Some(members) if entry.starts_with('@') => {
                    for member in members {
                        expand(groups, member, out);
                    }
                }
                _ => {
                    out.insert(entry.to_owned());
                }
            }
        }
        let (mut allowed, mut denied) = (BTreeSet::new(), BTreeSet::new());
        for (key, value, _) in directives(unit_text, "Service") {
            if key != "SystemCallFilter" {
                continue;
            }
            let (target, list) = match value.strip_prefix('~') {
                Some(list) => (&mut denied, list.to_owned()),
                None => (&mut allowed, value.clone()),
            };
            for entry in list.split_whitespace() {
                expand(&groups, entry, target);
            }
        }
        assert!(
            !allowed.is_empty(),
            "the unit has an allow-list SystemCallFilter="
        );
        allowed.difference(&denied).cloned().collect()
    }

    /// Run the real daemon under `strace -f` through start-up, a reload, a file trip, a signal
    /// while latched, enforcement of a reconnected store and SIGTERM, and check that every
    /// system call it made passes the unit's filter: a call the filter refused would fail with
    /// EPERM in production (SystemCallErrorNumber=EPERM) and could stop the switch from firing.
    #[test]
    fn every_system_call_the_daemon_makes_passes_the_units_filter() {
        use support::daemon::{Env, METRIC_ALARM, PolicyOptions, alarms_yaml};

        let allowed = allowed_system_calls(&read_repo_file(UNIT));
        let env = Env::with_policy(PolicyOptions {
            extra_triggers: alarms_yaml(&[(METRIC_ALARM, 1)], "1s", None),
            enforce_interval: "1s",
            ..PolicyOptions::default()
        });
        let trace = env.dir.path().join("strace.txt");
        let socket = env.dir.path().join("strace-notify.sock");
        let notify = std::os::unix::net::UnixDatagram::bind(&socket).expect("bind NOTIFY_SOCKET");
        notify
            .set_read_timeout(Some(support::daemon::POLL))
            .expect("socket timeout");
        let daemon = env.command();
        let mut traced = Command::new("strace");
        traced
            .args(["-f", "-qq", "-o"])
            .arg(&trace)
            .arg("--")
            .arg(daemon.get_program())
            .args(daemon.get_args())
            .arg("run");
        for (key, value) in daemon.get_envs() {
            match value {
                Some(value) => traced.env(key, value),
                None => traced.env_remove(key),
            };
        }
        let log = std::fs::File::create(env.dir.path().join("strace-daemon.log")).expect("log");
        traced
            .env("NOTIFY_SOCKET", &socket)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        let mut strace = match traced.spawn() {
            Ok(child) => child,
            Err(err) => panic!(
                "cannot run strace ({err}): install it with `apt-get install strace` (.ci/test \
                 does); the system-call filter check must not be skipped"
            ),
        };
        let mut buffer = [0u8; 4096];
        support::daemon::wait_for("READY=1 from the traced daemon", || {
            let len = notify.recv(&mut buffer).ok()?;
            String::from_utf8_lossy(&buffer[..len])
                .lines()
                .any(|line| line == "READY=1")
                .then_some(())
        })
        .unwrap_or_else(|what| panic!("{what}; audit log:\n{}", env.audit_dump()));
        // strace's child is the daemon; its pid is in its own audit records.
        let started = env.wait_events("daemon_started", 1);
        let pid = started[0]["pid"]
            .as_i64()
            .and_then(|pid| i32::try_from(pid).ok())
            .and_then(rustix::process::Pid::from_raw)
            .expect("daemon_started names the daemon's pid");
        let signal = |signal| rustix::process::kill_process(pid, signal).expect("signal sent");

        // A changed policy (an unchanged one is not audited): the reload reads and swaps it.
        let policy = std::fs::read_to_string(env.policy_path()).expect("policy");
        env.write_policy_text(&format!("{policy}# reloaded\n"));
        signal(rustix::process::Signal::HUP);
        env.wait_events("policy_loaded", 2);
        env.touch_flag();
        env.wait_events("lockdown_finished", 1);
        signal(rustix::process::Signal::USR1);
        env.wait_events("trigger_fired", 2);
        env.reconnect_all();
        env.wait_events("drift_detected", 1);
        env.wait_all_disconnected();
        signal(rustix::process::Signal::TERM);
        let status = support::daemon::wait_for("the traced daemon to exit", || {
            strace.try_wait().ok().flatten()
        })
        .unwrap_or_else(|what| {
            let _ = strace.kill();
            panic!("{what}")
        });
        assert!(status.success(), "the traced daemon exited with {status}");

        let trace_text = std::fs::read_to_string(&trace).expect("the strace output");
        // Lines are `PID name(args…) = result`; `<... name resumed>` continues an earlier line.
        let used: BTreeSet<String> = trace_text
            .lines()
            .filter_map(|line| line.split_once(' ').map(|(_, call)| call.trim_start()))
            .filter_map(|call| call.split_once('(').map(|(name, _)| name))
            .filter(|name| {
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            })
            .map(str::to_owned)
            .collect();
        assert!(
            used.contains("openat") && used.contains("connect"),
            "the trace holds the daemon's system calls: {used:?}"
        );
        let refused: Vec<&String> = used.difference(&allowed).collect();
        println!("system calls the daemon made: {}", used.len());
        assert!(
            refused.is_empty(),
            "the daemon made system calls the unit's SystemCallFilter= refuses: {refused:?}"
        );
    }

    /// `Key=value` directives of one section, in order, with whether a comment line precedes
    /// each.
    fn directives(text: &str, section: &str) -> Vec<(String, String, bool)> {
        let mut in_section = false;
        let mut previous_is_comment = false;
        let mut found = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                in_section = line == format!("[{section}]");
                previous_is_comment = false;
                continue;
            }
            if line.starts_with('#') {
                previous_is_comment = true;
                continue;
            }
            if let Some((key, value)) = line.split_once('=')
                && in_section
            {
                found.push((key.to_owned(), value.to_owned(), previous_is_comment));
            }
            previous_is_comment = false;
        }
        found
    }

    fn value<'a>(directives: &'a [(String, String, bool)], key: &str) -> Vec<&'a str> {
        directives
            .iter()
            .filter(|(k, _, _)| k == key)
            .map(|(_, v, _)| v.as_str())
            .collect()
    }

    #[test]
    fn unit_keeps_the_service_contract_and_explains_every_directive() {
        let text = read_repo_file(UNIT);
        for section in ["Unit", "Service", "Install"] {
            for (key, _, commented) in directives(&text, section) {
                assert!(
                    commented,
                    "[{section}] {key}= has no comment line saying why"
                );
            }
        }
        let service = directives(&text, "Service");
        let expect = |key: &str, wanted: &str| {
            assert_eq!(value(&service, key), vec![wanted], "[Service] {key}=");
        };
        expect("Type", "notify");
        expect("NotifyAccess", "main");
        expect("ExecStart", &format!("{INSTALLED_BINARY} run"));
        expect("ExecReload", "/bin/kill -HUP $MAINPID");
        expect("Restart", "always");
        expect("RestartPreventExitStatus", "78");
        expect("CapabilityBoundingSet", "");
        expect("NoNewPrivileges", "yes");
        expect("ProtectSystem", "strict");
        expect("UMask", "0077");
        expect("StateDirectoryMode", "0700");
        expect("LogsDirectoryMode", "0700");
        assert_eq!(
            value(&service, "WatchdogSec").len(),
            1,
            "WatchdogSec= is set"
        );
        let stop_timeout = value(&service, "TimeoutStopSec");
        let stop_secs: u64 = stop_timeout
            .first()
            .and_then(|v| v.strip_suffix('s'))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("TimeoutStopSec= is set in seconds: {stop_timeout:?}"));
        assert!(
            stop_secs > DEFAULT_VERIFY_TIMEOUT_SECS,
            "TimeoutStopSec={stop_secs}s would SIGKILL a lockdown still within its \
             verify_timeout of {DEFAULT_VERIFY_TIMEOUT_SECS}s"
        );
    }
}

mod iam {
    use super::*;

    use serde_json::Value;

    /// The policy for the principal the daemon runs as.
    const HOST_POLICY: &str = "config/iam-policy.json";
    /// The permissions of the role it assumes in another account, and that role's trust policy.
    const ROLE_POLICY: &str = "config/iam-role-policy.json";
    const ROLE_TRUST_POLICY: &str = "config/iam-role-trust-policy.json";

    /// The app name the binary puts in its AWS User-Agent (`app/kms-killswitch`); the simulator's
    /// operations log names it, which separates the binary's calls from the test harness's.
    const APP_NAME: &str = "kms-killswitch";

    /// Operations AWS authorizes without any IAM permission, so no policy names them
    /// (sts:GetCallerIdentity: "no permissions are required to perform this operation").
    const NEEDS_NO_PERMISSION: &[&str] = &["sts:GetCallerIdentity"];

    /// What the kill switch must never be able to do.
    const MUST_BE_DENIED: &[&str] = &["kms:ConnectCustomKeyStore", "kms:EnableKey"];

    /// One statement of an IAM policy, with its string-or-list fields flattened.
    #[derive(Debug)]
    struct Statement {
        sid: String,
        effect: String,
        actions: Vec<String>,
        resources: Vec<String>,
        has_not_fields: bool,
    }

    fn strings(value: Option<&Value>) -> Vec<String> {
        match value {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => s.clone(),
                    other => panic!("expected a string in an IAM policy list, found {other}"),
                })
                .collect(),
            None => Vec::new(),
            Some(other) => panic!("expected a string or a list of strings, found {other}"),
        }
    }

    fn load_policy(relative: &str) -> Vec<Statement> {
        let text = read_repo_file(relative);
        let doc: Value = serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("{relative} is not valid JSON: {err}"));
        assert_eq!(
            doc.get("Version").and_then(Value::as_str),
            Some("2012-10-17"),
            "{relative}: Version must be 2012-10-17 (older versions have no policy variables)"
        );
        let statements = doc
            .get("Statement")
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("{relative}: Statement must be a list"));
        statements
            .iter()
            .map(|statement| Statement {
                sid: statement
                    .get("Sid")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                effect: statement
                    .get("Effect")
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| panic!("{relative}: a statement has no Effect"))
                    .to_owned(),
                actions: strings(statement.get("Action")),
                resources: strings(statement.get("Resource")),
                has_not_fields: statement.get("NotAction").is_some()
                    || statement.get("NotResource").is_some()
                    || statement.get("NotPrincipal").is_some(),
            })
            .collect()
    }

    fn allowed_actions(statements: &[Statement]) -> BTreeSet<String> {
        statements
            .iter()
            .filter(|s| s.effect == "Allow")
            .flat_map(|s| s.actions.iter().cloned())
            .collect()
    }

    fn assert_least_privilege(relative: &str, expected_allow: &[&str]) {
        let statements = load_policy(relative);
        for statement in &statements {
            assert!(
                !statement.sid.is_empty(),
                "{relative}: every statement has a Sid saying what it is for"
            );
            assert!(
                !statement.has_not_fields,
                "{relative}: statement {} uses NotAction/NotResource/NotPrincipal",
                statement.sid
            );
            if statement.effect == "Allow" {
                for action in &statement.actions {
                    assert!(
                        !action.contains('*') && !action.contains('?'),
                        "{relative}: statement {} allows the wildcard action {action}",
                        statement.sid
                    );
                    if action == "sts:AssumeRole" {
                        assert!(
                            statement
                                .resources
                                .iter()
                                .all(|r| r.starts_with("arn:aws:iam::") && r.contains(":role/")),
                            "{relative}: sts:AssumeRole must name the roles, not {:?}",
                            statement.resources
                        );
                    }
                }
            }
        }
        let allowed = allowed_actions(&statements);
        let expected: BTreeSet<String> = expected_allow.iter().map(|a| a.to_string()).collect();
        assert_eq!(allowed, expected, "{relative}: the allowed actions");
        for denied in MUST_BE_DENIED {
            assert!(
                statements.iter().any(|s| s.effect == "Deny"
                    && s.actions.iter().any(|a| a == denied)
                    && s.resources.iter().any(|r| r == "*")),
                "{relative}: {denied} is not explicitly denied on every resource"
            );
        }
    }

    #[test]
    fn host_policy_is_least_privilege_and_denies_reconnecting() {
        assert_least_privilege(
            HOST_POLICY,
            &[
                "cloudwatch:DescribeAlarmHistory",
                "cloudwatch:DescribeAlarms",
                "cloudwatch:PutMetricData",
                "kms:DescribeCustomKeyStores",
                "kms:DescribeKey",
                "kms:DisableKey",
                "kms:DisconnectCustomKeyStore",
                "sns:Publish",
                "sqs:ChangeMessageVisibility",
                "sqs:DeleteMessage",
                "sqs:GetQueueAttributes",
                "sqs:ReceiveMessage",
                "sts:AssumeRole",
            ],
        );
    }

    /// Issue 13: notifications publish only to named topics, and the heartbeat writes only to
    /// its namespace.
    #[test]
    fn host_policy_names_the_topics_and_limits_the_heartbeat_namespace() {
        let doc: Value = serde_json::from_str(&read_repo_file(HOST_POLICY)).unwrap();
        let statements = doc["Statement"].as_array().unwrap();
        let with = |action: &str| {
            statements
                .iter()
                .filter(|s| strings(s.get("Action")).iter().any(|a| a == action))
                .collect::<Vec<_>>()
        };
        for publish in with("sns:Publish") {
            let resources = strings(publish.get("Resource"));
            assert!(
                !resources.is_empty()
                    && resources
                        .iter()
                        .all(|r| r.starts_with("arn:aws:sns:") && !r.contains('*')),
                "sns:Publish must name its topics, not {resources:?}"
            );
        }
        let put = with("cloudwatch:PutMetricData");
        assert!(!put.is_empty());
        for statement in put {
            assert!(
                statement["Condition"]["StringEquals"]["cloudwatch:namespace"].is_string(),
                "cloudwatch:PutMetricData must be limited by a cloudwatch:namespace condition: {statement}"
            );
        }
    }

    #[test]
    fn assumed_role_policy_is_least_privilege_and_denies_reconnecting() {
        assert_least_privilege(
            ROLE_POLICY,
            &[
                "kms:DescribeCustomKeyStores",
                "kms:DescribeKey",
                "kms:DisableKey",
                "kms:DisconnectCustomKeyStore",
            ],
        );
        let trust = load_policy(ROLE_TRUST_POLICY);
        assert_eq!(
            allowed_actions(&trust),
            BTreeSet::from(["sts:AssumeRole".to_owned()]),
            "{ROLE_TRUST_POLICY}: the trust policy only lets the host assume the role"
        );
    }

    /// Why a line of the simulator's operations log could not be read.
    #[derive(Debug, PartialEq)]
    struct BadLine {
        line: usize,
        text: String,
    }

    /// The operations `app` called, from the simulator's operations log: one line per AWS request,
    /// `<service>:<Operation> <app>`, where `<app>` is the `app/NAME` of the request's User-Agent
    /// or `-`. The simulator's own control calls (`sim:*`) are not AWS operations.
    fn operations_called_by(log: &str, app: &str) -> Result<BTreeSet<String>, BadLine> {
        let mut called = BTreeSet::new();
        for (index, line) in log.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = || BadLine {
                line: index + 1,
                text: line.to_owned(),
            };
            let mut fields = line.split_whitespace();
            let (Some(operation), Some(caller), None) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(bad());
            };
            let Some((service, name)) = operation.split_once(':') else {
                return Err(bad());
            };
            if service.is_empty() || name.is_empty() {
                return Err(bad());
            }
            if service != "sim" && caller == app {
                called.insert(operation.to_owned());
            }
        }
        Ok(called)
    }

    #[test]
    fn operations_log_is_filtered_to_the_binarys_own_calls() {
        let log = "kms:DescribeCustomKeyStores kms-killswitch\n\
                   kms:ConnectCustomKeyStore -\n\
                   cloudwatch:SetAlarmState kms-sim-tests\n\
                   sim:SetConnectionState -\n\
                   \n\
                   sts:AssumeRole kms-killswitch\n\
                   kms:DescribeCustomKeyStores kms-killswitch\n";
        let called = operations_called_by(log, APP_NAME).expect("a well-formed log");
        assert_eq!(
            called,
            BTreeSet::from([
                "kms:DescribeCustomKeyStores".to_owned(),
                "sts:AssumeRole".to_owned()
            ])
        );
        assert_eq!(
            operations_called_by("kms:DescribeCustomKeyStores\n", APP_NAME),
            Err(BadLine {
                line: 1,
                text: "kms:DescribeCustomKeyStores".to_owned()
            }),
            "a line without the caller cannot be attributed, so it is an error, not ignored"
        );
        assert!(operations_called_by("DescribeAlarms kms-killswitch\n", APP_NAME).is_err());
    }

    /// Where `.ci/test` makes the simulator log every operation during the whole suite.
    fn operations_log_path() -> PathBuf {
        std::env::var_os("KMS_SIM_OPERATIONS_LOG")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_file("target/sim-operations.log"))
    }

    /// Run after the whole suite (`.ci/test` does): every AWS operation the binary called during
    /// the suite is allowed by the IAM policy, and the policy allows nothing the binary never
    /// called.
    #[test]
    #[ignore = "reads the operations log of a whole test run; .ci/test runs it last"]
    fn iam_policy_covers_every_operation_the_suite_called() {
        let path = operations_log_path();
        let log = std::fs::read_to_string(&path).unwrap_or_else(|err| {
            panic!(
                "cannot read the simulator's operations log {} ({err}): run the suite with \
                 KMS_SIM_OPERATIONS_LOG={} first (.ci/test does)",
                path.display(),
                path.display()
            )
        });
        let called = operations_called_by(&log, APP_NAME).unwrap_or_else(|bad| {
            panic!(
                "{} line {}: {:?} is not `<service>:<Operation> <app>`",
                path.display(),
                bad.line,
                bad.text
            )
        });
        assert!(
            called.iter().any(|op| op.starts_with("kms:")),
            "{} holds no KMS call from {APP_NAME}: was the suite run with the log on, and does \
             the binary send `app/{APP_NAME}` in its User-Agent?",
            path.display()
        );
        let needs_permission: BTreeSet<String> = called
            .iter()
            .filter(|op| !NEEDS_NO_PERMISSION.contains(&op.as_str()))
            .cloned()
            .collect();
        let allowed = allowed_actions(&load_policy(HOST_POLICY));
        println!("operations kms-killswitch called during the suite: {called:?}");
        let missing: Vec<&String> = needs_permission.difference(&allowed).collect();
        assert!(
            missing.is_empty(),
            "the binary called {missing:?}, which {HOST_POLICY} does not allow"
        );
        let unused: Vec<&String> = allowed.difference(&needs_permission).collect();
        assert!(
            unused.is_empty(),
            "{HOST_POLICY} allows {unused:?}, which the binary never called during the suite: \
             remove it, or add the test that exercises it"
        );
        for denied in MUST_BE_DENIED {
            assert!(
                !called.contains(*denied),
                "the binary called {denied}, which it must never do"
            );
        }
    }
}

mod demo {
    use super::*;

    /// The demo's policy, with `${ENDPOINT_URL}` and `${DEMO_DIR}` to fill in.
    const DEMO_POLICY: &str = "config/demo.yaml";

    /// `config/demo.yaml` filled in the way the demo fills it, written 0600 into `dir`.
    fn write_demo_policy(dir: &Path, endpoint_url: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;

        let text = read_repo_file(DEMO_POLICY)
            .replace("${ENDPOINT_URL}", endpoint_url)
            .replace("${DEMO_DIR}", &dir.display().to_string());
        assert!(!text.contains("${"), "every placeholder is filled: {text}");
        for sub in ["state", "audit"] {
            std::fs::create_dir(dir.join(sub)).expect("the demo's directories are created");
        }
        let path = dir.join("policy.yaml");
        std::fs::write(&path, text).expect("the demo policy is written");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .expect("the demo policy is private");
        path
    }

    #[test]
    fn demo_policy_passes_check() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let policy = write_demo_policy(dir.path(), "http://127.0.0.1:4599");
        let output = support::run(&["--config", &policy.display().to_string(), "check"]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "`check` rejects the demo policy:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
