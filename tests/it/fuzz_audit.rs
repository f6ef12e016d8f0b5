//! Fuzzing the audit verifier with proptest: a real, valid log (written by `AuditLog`) cut,
//! reordered, duplicated, or given binary, huge or deeply nested lines. Each case checks more
//! than "no panic": a cut at a line end verifies (shorter), every other edit is refused naming
//! the first line it touched. Cases from `KMS_KILLSWITCH_FUZZ_CASES` (default 2,000); the long run
//! is `KMS_KILLSWITCH_FUZZ_CASES=1000000 cargo test --release --test it fuzz_audit::`.
//! It owns no behaviour: it drives `kms_killswitch::audit::verify` only.

use std::path::PathBuf;
use std::sync::OnceLock;

use kms_killswitch::audit::{AuditLog, Event, verify};
use kms_killswitch::model::TriggerSource;
use proptest::prelude::*;

const POLICY: &str = "2222222222222222222222222222222222222222222222222222222222222222";

fn config() -> ProptestConfig {
    crate::support::fuzz_config()
}

/// Six valid lines (without newlines), written once by the real writer.
fn good_lines() -> &'static [Vec<u8>] {
    static LINES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    LINES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, POLICY);
        log.record_blocking(Event::DaemonStarted);
        log.record_blocking(Event::PolicyLoaded);
        for reason in ["drill", "drill \u{1F6A8} \"quoted\"\\", ""] {
            log.record_blocking(Event::TriggerFired {
                source: TriggerSource::Cli,
                detail: serde_json::json!({"user": "root", "reason": reason}),
                latched: true,
            });
        }
        log.record_blocking(Event::DaemonStopped);
        let bytes = std::fs::read(&path).unwrap();
        let lines: Vec<Vec<u8>> = bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        assert_eq!(lines.len(), 6);
        lines
    })
}

/// A scratch file per test thread, rewritten each case.
fn scratch() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    dir.path()
        .join(format!("{:?}.jsonl", std::thread::current().id()))
}

/// Verify `lines` (each followed by a newline) plus `tail`; `Ok(records)` or `Err((line, reason))`.
fn run(lines: &[Vec<u8>], tail: &[u8]) -> Result<u64, (u64, String)> {
    let mut bytes = Vec::new();
    for line in lines {
        bytes.extend_from_slice(line);
        bytes.push(b'\n');
    }
    bytes.extend_from_slice(tail);
    let path = scratch();
    std::fs::write(&path, &bytes).unwrap();
    match verify(&path) {
        Ok(summary) => Ok(summary.records),
        Err(kms_killswitch::audit::AuditError::Broken { line, reason, .. }) => Err((line, reason)),
        Err(other) => panic!("not a chain verdict: {other}"),
    }
}

/// A line no writer of ours produces: random bytes, a long run, or 10k-deep JSON.
fn junk_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(
            any::<u8>().prop_filter("no newline", |b| *b != b'\n'),
            0..256
        ),
        (1usize..200_000, any::<u8>())
            .prop_map(|(n, b)| vec![if b == b'\n' { b'x' } else { b }; n]),
        (1usize..10_000, any::<bool>()).prop_map(|(depth, object)| {
            let (open, close) = if object { ("{\"a\":", "}") } else { ("[", "]") };
            format!("{}1{}", open.repeat(depth), close.repeat(depth)).into_bytes()
        }),
        Just(b"{\"seq\":1}".to_vec()),
        Just(Vec::new()),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn audit_verify_truncated_logs(cut in 0usize..2_000) {
        let whole: Vec<u8> = good_lines().iter().flat_map(|l| l.iter().chain(b"\n")).copied().collect();
        let cut = cut.min(whole.len());
        let path = scratch();
        std::fs::write(&path, &whole[..cut]).unwrap();
        let result = verify(&path);
        if cut == 0 || whole[cut - 1] == b'\n' {
            let records = whole[..cut].iter().filter(|&&b| b == b'\n').count() as u64;
            prop_assert_eq!(result.map(|s| s.records).ok(), Some(records));
        } else {
            prop_assert!(result.is_err());
        }
    }

    #[test]
    fn audit_verify_reordered_or_duplicated_lines(a in 0usize..6, b in 0usize..6, dup in any::<bool>()) {
        let mut lines = good_lines().to_vec();
        if dup {
            lines.insert(a + 1, lines[a].clone());
            prop_assert_eq!(run(&lines, b"").map_err(|e| e.0), Err(a as u64 + 2));
        } else if a != b {
            lines.swap(a, b);
            prop_assert_eq!(run(&lines, b"").map_err(|e| e.0), Err(a.min(b) as u64 + 1));
        } else {
            prop_assert_eq!(run(&lines, b""), Ok(6));
        }
    }

    #[test]
    fn audit_verify_junk_lines(at in 0usize..=6, junk in junk_line(), tail in prop::collection::vec(any::<u8>(), 0..32)) {
        let mut lines = good_lines().to_vec();
        lines.insert(at, junk);
        let result = run(&lines, &tail);
        prop_assert_eq!(result.map_err(|e| e.0), Err(at as u64 + 1));
    }

    #[test]
    fn audit_verify_byte_edits(edits in prop::collection::vec((0usize..2_000, any::<u8>()), 1..4)) {
        let mut whole: Vec<u8> = good_lines().iter().flat_map(|l| l.iter().chain(b"\n")).copied().collect();
        let original = whole.clone();
        for (at, byte) in edits {
            let at = at % whole.len();
            whole[at] = byte;
        }
        let path = scratch();
        std::fs::write(&path, &whole).unwrap();
        let result = verify(&path);
        if whole == original {
            prop_assert!(result.is_ok());
        } else {
            prop_assert!(result.is_err(), "an edit verified");
        }
    }
}

#[test]
fn the_good_log_verifies_and_a_line_over_the_cap_is_named() {
    assert_eq!(run(good_lines(), b""), Ok(6));
    let mut lines = good_lines().to_vec();
    lines.insert(2, vec![b'{'; 5 * 1024 * 1024]);
    let (line, reason) = run(&lines, b"").unwrap_err();
    assert_eq!(line, 3);
    assert!(reason.starts_with("longer than"), "{reason}");
}
