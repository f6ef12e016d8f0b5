//! Helpers the audit module's unit tests share (compiled only for tests): a sample log, reading
//! a log back, and verifying bytes. It owns no behaviour of the audit trail.

use std::io::Cursor;
use std::path::Path;

use serde_json::{Map, Value};

use super::verify::verify_from;
use super::{
    AuditError, AuditLog, DisconnectResult, Event, LockdownOutcome, TriggerSource, VerifySummary,
};

pub(super) const POLICY: &str = "1111111111111111111111111111111111111111111111111111111111111111";

/// The env var that names the log a child test process (run by a test of this module) writes.
pub(super) const CHILD_LOG: &str = "KMS_KILLSWITCH_AUDIT_TEST_CHILD_LOG";

pub(super) fn drift(id: &str) -> Event {
    Event::DriftDetected {
        key_store_id: id.into(),
        region: "eu-west-1".into(),
        connection_state: "CONNECTED".into(),
    }
}

pub(super) fn lines(path: &Path) -> Vec<Map<String, Value>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

pub(super) fn events(path: &Path) -> Vec<String> {
    lines(path)
        .iter()
        .map(|line| line["event"].as_str().unwrap().to_owned())
        .collect()
}

pub(super) fn verify_bytes(bytes: &[u8]) -> Result<VerifySummary, AuditError> {
    verify_from(Path::new("sample.jsonl"), Cursor::new(bytes))
}

pub(super) fn broken_line(result: Result<VerifySummary, AuditError>) -> (u64, String) {
    match result {
        Err(AuditError::Broken { line, reason, .. }) => (line, reason),
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

/// A small log with one of each kind of field: strings, numbers, null, arrays, nested objects.
pub(super) fn sample_log(dir: &Path) -> Vec<u8> {
    let path = dir.join("sample.jsonl");
    let log = AuditLog::open(&path, POLICY);
    log.record_blocking(Event::TriggerFired {
        source: TriggerSource::Cli,
        detail: serde_json::json!({"user": "root", "reason": "drill"}),
        latched: false,
    });
    log.record_blocking(Event::LockdownStarted {
        lockdown_id: "ld-1".into(),
        key_stores: vec![serde_json::json!({"id": "cks-1234567890abcdef0"})],
        keys: vec![],
        dry_run: false,
    });
    log.record_blocking(Event::DisconnectResult {
        lockdown_id: "ld-1".into(),
        key_store_id: "cks-1234567890abcdef0".into(),
        region: "eu-west-1".into(),
        result: DisconnectResult::Accepted,
        request_id: Some("8f0e-11".into()),
        error: None,
    });
    log.record_blocking(Event::LockdownFinished {
        lockdown_id: "ld-1".into(),
        outcome: LockdownOutcome::Complete,
        verified: 1,
        keys_verified: 0,
        failed: vec![],
        elapsed_ms: 1234,
    });
    assert!(log.healthy());
    std::fs::read(&path).unwrap()
}
