//! Integration tests for the audit trail: `kms-killswitch audit verify` on logs written by the
//! library's writer (good, tampered, torn, missing), and the real daemon and a CLI `trip` against
//! kms-sim writing one log at the same time, or none at all when the log cannot be written.

use std::path::Path;

use kms_killswitch::audit::{AuditLog, DisconnectResult, Event, LockdownOutcome};
use kms_killswitch::model::TriggerSource;

use crate::support;
use crate::support::daemon::Env;
use crate::support::sim::{DEMO_STORES, SimEnv, output_text};

/// The secret access key `support` gives the binary (it must appear in no output).
const TEST_SECRET: &str = "kms-sim-demo-secret";

const POLICY_SHA256: &str = "3333333333333333333333333333333333333333333333333333333333333333";

/// A log of one lockdown (and one dry run, which is not counted as a lockdown).
fn write_log(path: &Path) {
    let log = AuditLog::open(path, POLICY_SHA256);
    log.record_blocking(Event::TriggerFired {
        source: TriggerSource::Cli,
        detail: serde_json::json!({"user": "root", "reason": "integration test"}),
        latched: false,
    });
    for (lockdown_id, dry_run) in [("ld-dry", true), ("ld-1", false)] {
        log.record_blocking(Event::LockdownStarted {
            lockdown_id: lockdown_id.into(),
            key_stores: vec![
                serde_json::json!({"id": "cks-1234567890abcdef0", "region": "eu-west-1"}),
            ],
            keys: vec![],
            dry_run,
        });
    }
    log.record_blocking(Event::DisconnectResult {
        lockdown_id: "ld-1".into(),
        key_store_id: "cks-1234567890abcdef0".into(),
        region: "eu-west-1".into(),
        result: DisconnectResult::Accepted,
        request_id: Some("4c2f-aa".into()),
        error: None,
    });
    log.record_blocking(Event::LockdownFinished {
        lockdown_id: "ld-1".into(),
        outcome: LockdownOutcome::Complete,
        verified: 1,
        keys_verified: 0,
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
    let expected = format!("audit log {} OK: 5 records, 1 lockdown, ", path.display());
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

#[test]
fn daemon_and_cli_trip_writing_at_once_leave_one_chain_that_verifies() {
    let env = Env::new();
    let mut daemon = env.start();
    // The daemon locks down (flag) while a `trip` from a shell does the same: two processes
    // append to one audit log under flock.
    let trip = env
        .command()
        .args(["trip", "--reason", "concurrent with the daemon"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("trip starts");
    env.touch_flag();
    let trip = trip.wait_with_output().expect("trip runs");
    assert_eq!(trip.status.code(), Some(0), "{}", output_text(&trip));
    // Whoever latched first locks down; the other records its trigger as `latched: true` and
    // starts none (the latch is written once), so there is exactly one lockdown.
    let fired = env.wait_events("trigger_fired", 2);
    let winners = fired.iter().filter(|r| r["latched"] != true).count();
    assert_eq!(winners, 1, "{}", env.audit_dump());
    env.wait_events("lockdown_finished", 1);
    daemon.signal("TERM");
    assert!(daemon.wait_exit().success(), "{}", daemon.log());

    let records = env.audit();
    let pids: std::collections::BTreeSet<u64> =
        records.iter().filter_map(|r| r["pid"].as_u64()).collect();
    assert_eq!(
        pids.len(),
        2,
        "the daemon and trip both wrote:\n{}",
        env.audit_dump()
    );
    let (code, stdout, _) = verify_output(&env.audit_log());
    assert_eq!(code, Some(0), "{stdout}\n{}", env.audit_dump());
    for output in [env.audit_dump(), output_text(&trip), daemon.log()] {
        assert!(
            !output.contains(TEST_SECRET),
            "the secret key leaked:\n{output}"
        );
    }
    let lockdowns = records
        .iter()
        .filter(|r| r["event"] == "lockdown_started" && r["dry_run"] == false)
        .count();
    assert!(
        stdout.contains(&format!(
            "OK: {} records, {lockdowns} lockdown{}",
            records.len(),
            if lockdowns == 1 { "" } else { "s" }
        )),
        "{stdout}"
    );
}

#[test]
fn an_unwritable_audit_log_does_not_stop_a_trip() {
    let env = SimEnv::demo();
    // The policy's audit log is `<dir>/audit/audit.jsonl`: make `audit` a regular file, which
    // stops even root from creating the log.
    std::fs::write(env.dir.path().join("audit"), b"not a directory").unwrap();
    let output = env.run(&["trip", "--reason", "audit log down"]);
    let text = output_text(&output);

    for (account, region, id, _) in DEMO_STORES {
        assert_eq!(
            env.state(account, region, id),
            "DISCONNECTED",
            "{id}: {text}"
        );
    }
    // Reported loudly, and in the exit status: the lockdown is complete, its record is not.
    assert_eq!(output.status.code(), Some(1), "{text}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("audit log"), "{text}");
    assert!(!stderr.contains("panicked"), "{text}");
    assert!(
        !text.contains(TEST_SECRET),
        "the secret key leaked:\n{text}"
    );
}
