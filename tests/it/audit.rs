//! Integration tests for `kms-killswitch audit verify`: the real binary on logs written by the
//! library's real writer (there is no writer subcommand), good, tampered, torn and missing.

use std::path::Path;

use kms_killswitch::audit::{
    AuditLog, AuditSink, DisconnectResult, Event, LockdownOutcome, TriggerSource,
};

use crate::support;

const POLICY_SHA256: &str = "3333333333333333333333333333333333333333333333333333333333333333";

/// A log of one lockdown (and one dry run, which is not counted as a lockdown).
fn write_log(path: &Path) {
    let log = AuditLog::open(path, POLICY_SHA256).unwrap();
    log.record(Event::TriggerFired {
        source: TriggerSource::Cli,
        detail: serde_json::json!({"user": "root", "reason": "integration test"}),
        latched: false,
    });
    for (lockdown_id, dry_run) in [("ld-dry", true), ("ld-1", false)] {
        log.record(Event::LockdownStarted {
            lockdown_id: lockdown_id.into(),
            key_stores: vec![
                serde_json::json!({"id": "cks-1234567890abcdef0", "region": "eu-west-1"}),
            ],
            dry_run,
        });
    }
    log.record(Event::DisconnectResult {
        lockdown_id: "ld-1".into(),
        key_store_id: "cks-1234567890abcdef0".into(),
        region: "eu-west-1".into(),
        result: DisconnectResult::Accepted,
        request_id: Some("4c2f-aa".into()),
        error: None,
    });
    log.record(Event::LockdownFinished {
        lockdown_id: "ld-1".into(),
        outcome: LockdownOutcome::Complete,
        verified: 1,
        failed: vec![],
        elapsed_ms: 900,
    });
    assert!(log.healthy());
}

fn verify_output(path: &Path) -> (Option<i32>, String, String) {
    let output = support::run(&["audit", "verify", path.to_str().unwrap()]);
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (output.status.code(), stdout, stderr)
}

#[test]
fn audit_verify_prints_a_summary_of_a_good_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path);
    let (code, stdout, _) = verify_output(&path);
    assert_eq!(code, Some(0), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let expected = format!("audit log {} OK: 5 records, 1 lockdowns, ", path.display());
    assert!(stdout.starts_with(&expected), "{stdout}");
    assert!(
        stdout.contains("Z .. 20") && stdout.contains("; line 5 sha256 "),
        "{stdout}"
    );
}

#[test]
fn audit_verify_names_the_first_tampered_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path);
    let good = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = good.lines().map(str::to_owned).collect();

    // An edited value in line 4 (the store that was disconnected).
    lines[3] = lines[3].replace("cks-1234567890abcdef0", "cks-0000000000000000f");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let (code, stdout, _) = verify_output(&path);
    assert_eq!(code, Some(1), "{stdout}");
    assert_eq!(
        stdout.trim_end(),
        format!(
            "audit log {}: line 4: seal does not match the line's content (the line was changed after it was written)",
            path.display()
        )
    );

    // A deleted line.
    let mut lines: Vec<&str> = good.lines().collect();
    lines.remove(1);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let (code, stdout, _) = verify_output(&path);
    assert_eq!(code, Some(1), "{stdout}");
    assert_eq!(
        stdout.trim_end(),
        format!("audit log {}: line 2: seq is 3, expected 2", path.display())
    );
}

#[test]
fn audit_verify_reports_a_torn_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path);
    let good = std::fs::read(&path).unwrap();
    std::fs::write(&path, &good[..good.len() - 10]).unwrap();
    let (code, stdout, _) = verify_output(&path);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.starts_with(&format!("audit log {}: line 5: torn", path.display())),
        "{stdout}"
    );
}

#[test]
fn audit_verify_of_a_missing_file_fails_with_a_readable_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-audit.jsonl");
    let (code, stdout, stderr) = verify_output(&path);
    assert_eq!(code, Some(1));
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(
        stderr.lines().filter(|l| l.contains("error")).count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "cannot verify the audit log: cannot read audit log {}: No such file",
            path.display()
        )),
        "{stderr}"
    );
}
