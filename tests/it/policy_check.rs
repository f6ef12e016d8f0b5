//! `kms-killswitch check` on real files, through the real binary: exit codes (0, 78, 2), the
//! one-line error on stderr with its line number, the permission rule, and `config/example.yaml`.
//! Offline only: `check --online` is tested with the simulator by the lockdown tests.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::support;

const VALID: &str = "version: 1
aws:
  region: eu-west-1
  role_arn: arn:aws:iam::111122223333:role/kms-killswitch
key_stores:
  - id: cks-1234567890abcdef0
  - name: prod-xks
    region: us-east-1
    role_arn: arn:aws:iam::444455556666:role/kms-killswitch
triggers:
  alarms:
    - name: kms-exfiltration-suspected
      consecutive: 2
";

/// The example policy shipped in the repository.
fn example_policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.yaml")
}

/// Write `text` as `policy.yaml` in a fresh directory with `mode`.
fn policy_file(text: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, text).expect("write the policy");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .expect("chmod the policy");
    (dir, path)
}

fn check(path: &Path, extra: &[&str]) -> Output {
    support::command()
        .arg("check")
        .arg("--config")
        .arg(path)
        .args(extra)
        .output()
        .expect("run kms-killswitch check")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Exit 78 and exactly one stderr line, the error, naming the file, readable: no panic, no
/// backtrace, no Rust `Debug` structure. Returns that line.
fn assert_config_error(output: &Output, path: &Path) -> String {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(78), "stderr: {err}");
    assert!(
        stdout(output).is_empty(),
        "nothing on stdout: {}",
        stdout(output)
    );
    let lines: Vec<&str> = err.lines().filter(|line| !line.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one error line, got: {err}");
    let line = lines[0];
    let prefix = format!("kms-killswitch: error: policy {}: ", path.display());
    assert!(
        line.starts_with(&prefix),
        "{line:?} should start with {prefix:?}"
    );
    for debug_marker in [
        "panicked",
        "RUST_BACKTRACE",
        "Os {",
        "kind:",
        "Error {",
        "Spanned",
        "Location {",
        "\\n",
    ] {
        assert!(!line.contains(debug_marker), "{debug_marker:?} in {line:?}");
    }
    line.to_owned()
}

#[test]
fn check_accepts_a_valid_policy_and_prints_a_summary() {
    let (_dir, path) = policy_file(VALID, 0o600);
    let output = check(&path, &[]);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert_eq!(
        stdout(&output).trim_end(),
        format!(
            "policy {} OK: 2 key stores in 2 accounts/2 regions, triggers: file /run/kms-killswitch, \
             signal SIGUSR1, 1 alarm",
            path.display()
        )
    );
}

#[test]
fn example_policy_passes_check() {
    // Copied with mode 0600: a checkout made under umask 002 is group-writable, and check
    // rightly refuses that.
    let text = std::fs::read_to_string(example_policy()).expect("read config/example.yaml");
    let (_dir, path) = policy_file(&text, 0o600);
    let output = check(&path, &[]);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert!(
        stdout(&output).contains("OK: 2 key stores and 2 keys in 2 accounts/2 regions, triggers: file /run/kms-killswitch, signal SIGUSR1, 2 alarms"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn example_policy_passes_check_in_place() {
    // The file as checked out; --insecure-policy-permissions only in case the checkout's umask
    // made it group-writable.
    let output = check(&example_policy(), &["--insecure-policy-permissions"]);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
}

#[test]
fn syntax_error_exits_78_with_its_line() {
    let (_dir, path) = policy_file(
        "version: 1\naws:\n  region: \"eu-west-1\nkey_stores: []\n",
        0o600,
    );
    let line = assert_config_error(&check(&path, &[]), &path);
    assert!(line.contains("line 3, column 11: unclosed quote"), "{line}");
}

#[test]
fn unknown_key_exits_78_naming_it_and_the_expected_keys() {
    let text = VALID.replace(
        "  - id: cks-1234567890abcdef0\n",
        "  - id: cks-1234567890abcdef0\n    regoin: eu-west-2\n",
    );
    let (_dir, path) = policy_file(&text, 0o600);
    let line = assert_config_error(&check(&path, &[]), &path);
    assert!(
        line.contains(
            "line 7, column 5: unknown field `regoin`, expected one of id, name, region, role_arn"
        ),
        "{line}"
    );
}

#[test]
fn duplicate_key_exits_78_with_its_line() {
    let text = VALID.replace(
        "  region: eu-west-1\n",
        "  region: eu-west-1\n  region: eu-west-2\n",
    );
    let (_dir, path) = policy_file(&text, 0o600);
    let line = assert_config_error(&check(&path, &[]), &path);
    assert!(
        line.contains("line 4, column 3: duplicate mapping key `region`"),
        "{line}"
    );
}

#[test]
fn bad_duration_exits_78_saying_what_is_expected() {
    let (_dir, path) = policy_file(&format!("{VALID}lockdown:\n  verify_timeout: 120\n"), 0o600);
    let line = assert_config_error(&check(&path, &[]), &path);
    assert!(
        line.contains("line 15, column 19: lockdown.verify_timeout: `120` has no unit: write e.g. `120s` or `120ms`"),
        "{line}"
    );
}

#[test]
fn bad_key_store_id_exits_78_saying_what_is_expected() {
    let (_dir, path) = policy_file(&VALID.replace("cks-1234567890abcdef0", "cks-XYZ"), 0o600);
    let line = assert_config_error(&check(&path, &[]), &path);
    assert!(
        line.contains("line 6, column 9: key_stores[0].id: `cks-XYZ` is not a custom key store ID: expected `cks-` and 17 lowercase hex digits"),
        "{line}"
    );
}

#[test]
fn several_problems_are_all_reported_on_one_line() {
    let text = VALID
        .replace("cks-1234567890abcdef0", "cks-1")
        .replace("region: us-east-1", "region: us_east_1")
        .replace("consecutive: 2", "consecutive: 0");
    let (_dir, path) = policy_file(&text, 0o600);
    let line = assert_config_error(&check(&path, &[]), &path);
    assert!(line.contains(": 3 problems: line 6, column 9: "), "{line}");
    assert!(
        line.contains("; line 8, column 13: key_stores[1].region"),
        "{line}"
    );
    assert!(
        line.contains("; line 13, column 20: triggers.alarms[0].consecutive"),
        "{line}"
    );
}

#[test]
fn missing_file_exits_78() {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let path = dir.path().join("absent.yaml");
    let line = assert_config_error(&check(&path, &[]), &path);
    assert!(
        line.contains("cannot read it: No such file or directory"),
        "{line}"
    );
}

#[test]
fn world_writable_file_exits_78_and_says_how_to_fix_it() {
    let (_dir, path) = policy_file(VALID, 0o666);
    let line = assert_config_error(&check(&path, &[]), &path);
    assert!(
        line.contains("refusing a file writable by group and others (mode 0666)"),
        "{line}"
    );
    assert!(line.contains("chmod go-w"), "{line}");
    assert!(line.contains("--insecure-policy-permissions"), "{line}");
}

#[test]
fn group_writable_file_exits_78() {
    let (_dir, path) = policy_file(VALID, 0o620);
    let line = assert_config_error(&check(&path, &[]), &path);
    assert!(line.contains("writable by its group (mode 0620)"), "{line}");
}

#[test]
fn insecure_permissions_flag_accepts_the_file_with_a_loud_warning() {
    let (_dir, path) = policy_file(VALID, 0o666);
    let output = check(&path, &["--insecure-policy-permissions"]);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let err = stderr(&output);
    assert!(err.contains("WARN"), "{err}");
    assert!(
        err.contains("INSECURE: policy file accepted despite its permissions"),
        "{err}"
    );
    assert!(
        err.contains("reason=writable by group and others (mode 0666)"),
        "{err}"
    );
    assert!(stdout(&output).contains(" OK: "), "{}", stdout(&output));
}

#[test]
fn json_log_format_writes_the_warning_as_one_json_object() {
    let (_dir, path) = policy_file(VALID, 0o666);
    let output = check(
        &path,
        &["--insecure-policy-permissions", "--log-format", "json"],
    );
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let err = stderr(&output);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    let record: serde_json::Value = serde_json::from_str(lines[0]).expect("a JSON log line");
    assert_eq!(record["level"], "WARN");
    assert_eq!(record["reason"], "writable by group and others (mode 0666)");
    assert_eq!(record["path"], path.display().to_string());
}

#[test]
fn rust_log_filters_the_warning_out() {
    let (_dir, path) = policy_file(VALID, 0o666);
    let output = support::command()
        .env("RUST_LOG", "error")
        .args(["check", "--insecure-policy-permissions", "--config"])
        .arg(&path)
        .output()
        .expect("run kms-killswitch check");
    assert_eq!(output.status.code(), Some(0));
    assert!(stderr(&output).is_empty(), "{}", stderr(&output));
}

#[test]
fn config_flag_wins_over_the_environment_which_wins_over_the_default() {
    let (_dir, valid) = policy_file(VALID, 0o600);
    let (_dir2, invalid) = policy_file("version: 1\n", 0o600);
    let from_env = support::command()
        .env("KMS_KILLSWITCH_CONFIG", &valid)
        .arg("check")
        .output()
        .expect("run kms-killswitch check");
    assert_eq!(
        from_env.status.code(),
        Some(0),
        "stderr: {}",
        stderr(&from_env)
    );
    assert!(stdout(&from_env).contains(&valid.display().to_string()));

    let flag_wins = support::command()
        .env("KMS_KILLSWITCH_CONFIG", &valid)
        .arg("check")
        .arg("--config")
        .arg(&invalid)
        .output()
        .expect("run kms-killswitch check");
    assert_config_error(&flag_wins, &invalid);
}

#[test]
fn usage_errors_exit_2() {
    let output = support::command()
        .args(["check", "--no-such-flag"])
        .output()
        .expect("run kms-killswitch check");
    assert_eq!(output.status.code(), Some(2), "stderr: {}", stderr(&output));
    assert!(stderr(&output).contains("--no-such-flag"));
}

/// A policy that breaches the YAML parser's limits (issue 10, item 9): `check` exits 78 with one
/// readable sentence naming the limit, never the parser's Debug text (`Aliases { aliases: … }`).
#[test]
fn check_explains_a_policy_beyond_the_parser_limits_in_one_sentence() {
    let mut alias_bomb = String::from(
        "version: 1\naws:\n  region: eu-west-1\nkey_stores:\n  - &store {id: cks-1}\n",
    );
    for _ in 0..50_001 {
        alias_bomb.push_str("  - *store\n");
    }
    let deep = format!(
        "version: 1\naws:\n  region: eu-west-1\nkey_stores:\n  - {}1{}\n",
        "{a: ".repeat(3000),
        "}".repeat(3000)
    );
    for (text, expected) in [
        (alias_bomb, "the policy has more than 50000 aliases"),
        (deep, "the policy nests more than 255 levels deep"),
    ] {
        let (_dir, path) = policy_file(&text, 0o600);
        let line = assert_config_error(&check(&path, &[]), &path);
        assert!(line.contains(expected), "{line}");
        assert!(
            !line.contains('{') && !line.contains("limits breached"),
            "{line}"
        );
    }
}
