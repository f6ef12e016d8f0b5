//! Fuzzing with proptest (cargo-fuzz needs nightly): the policy loader and the audit verifier on
//! hostile input — no panic, a refusal or a value, bounded input sizes. Short runs here (cases
//! from `KMS_KILLSWITCH_FUZZ_CASES`, default 2,000); the long run is
//! `KMS_KILLSWITCH_FUZZ_CASES=1000000 cargo test --release --test it fuzz::`.
//! The queue-message parser has its own targets in `fuzz_queue.rs`.

use std::io::Write;
use std::path::Path;

use kms_killswitch::policy::{self, LoadOptions, MAX_POLICY_BYTES};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    crate::support::fuzz_config()
}

const VALID: &str = "version: 1\naws:\n  region: eu-west-1\nkey_stores:\n  - id: cks-1234567890abcdef0\n\
triggers:\n  file:\n    path: /run/kms-killswitch\nstate_file: /var/lib/k/latch.json\naudit_log: /var/log/k/a.jsonl\n";

/// A valid policy with hostile edits: bytes replaced, inserted or cut.
fn mutated_policy() -> impl Strategy<Value = String> {
    (
        prop::collection::vec((0..VALID.len(), any::<char>()), 0..8),
        0..=VALID.len(),
    )
        .prop_map(|(edits, cut)| {
            let mut text: Vec<char> = VALID[..cut].chars().collect();
            for (at, c) in edits {
                let at = at.min(text.len());
                text.insert(at, c);
            }
            text.into_iter().collect()
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn policy_parse_never_panics_on_arbitrary_text(text in any::<String>()) {
        let _ = policy::parse(&text, Path::new("fuzz.yaml"));
    }

    #[test]
    fn policy_parse_never_panics_on_mutated_policies(text in mutated_policy()) {
        let _ = policy::parse(&text, Path::new("fuzz.yaml"));
    }

    #[test]
    fn audit_verify_never_panics_on_arbitrary_logs(
        lines in prop::collection::vec(audit_line(), 0..6),
        tail in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut file = std::fs::File::create(&path).unwrap();
        for line in &lines {
            file.write_all(line.as_bytes()).unwrap();
        }
        file.write_all(&tail).unwrap();
        drop(file);
        let _ = kms_killswitch::audit::verify(&path);
    }
}

/// Lines that look like audit records (right field names, wrong or random values).
fn audit_line() -> impl Strategy<Value = String> {
    (
        any::<i64>(),
        "[a-f0-9]{0,70}",
        "[a-z_]{0,20}",
        any::<String>(),
        any::<bool>(),
    )
        .prop_map(|(seq, prev, event, junk, newline)| {
            let line = serde_json::json!({
                "seq": seq, "ts": "2026-12-01T00:00:00.000Z", "event": event, "prev": prev,
                "host": junk, "pid": 1, "policy_sha256": "0", "seal": "0",
            });
            format!("{line}{}", if newline { "\n" } else { "" })
        })
}

#[test]
fn alias_bomb_is_refused() {
    let mut text = String::from("version: 1\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let p = i - 1;
        text.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    assert!(policy::parse(&text, Path::new("bomb.yaml")).is_err());
}

#[test]
fn ten_thousand_deep_nesting_is_refused() {
    let text = format!(
        "version: 1\nx: {}{}\n",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert!(policy::parse(&text, Path::new("deep.yaml")).is_err());
    let text = format!(
        "version: 1\nx: {}1{}\n",
        "{a: ".repeat(10_000),
        "}".repeat(10_000)
    );
    assert!(policy::parse(&text, Path::new("deep.yaml")).is_err());
}

#[test]
fn control_bytes_are_refused() {
    for byte in (0u8..0x20).filter(|b| !matches!(b, b'\n' | b'\t' | b'\r')) {
        let text = VALID.replace("eu-west-1", &format!("eu-west-1{}", byte as char));
        assert!(
            policy::parse(&text, Path::new("ctl.yaml")).is_err(),
            "{byte:#x}"
        );
    }
}

#[test]
fn hundred_megabyte_policy_is_refused_by_the_size_cap() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(VALID.as_bytes()).unwrap();
    file.set_len(100 * 1024 * 1024).unwrap(); // sparse: the cap must stop the read, not memory
    drop(file);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = policy::load(&path, LoadOptions::default()).expect_err("refused");
    assert!(
        err.to_string().contains(&MAX_POLICY_BYTES.to_string()),
        "{err}"
    );
}

#[test]
fn audit_verify_refuses_a_huge_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    std::fs::write(&path, vec![b'x'; 8 * 1024 * 1024]).unwrap();
    assert!(kms_killswitch::audit::verify(&path).is_err());
}

/// Where a generated alias bomb sits: under an unknown key, or in a field of the schema (which
/// never accepts the nested value, but must refuse it without replaying the aliases).
/// `{bomb}` is replaced by list items indented to fit.
const BOMB_SITES: [&str; 5] = [
    "{bomb}",
    "key_stores:\n  - id: cks-1234567890abcdef0\n{bomb}",
    "triggers:\n  alarms:\n{bomb}",
    "triggers:\n  queues:\n    - url: https://sqs.eu-west-1.amazonaws.com/111111111111/q\n      match:\n{bomb:8}",
    "notify:\n{bomb}",
];

/// A billion-laughs document of `depth` levels of `width` aliases each, the last level used as a
/// list item at `site`; `width^depth` nodes if expanded.
fn alias_bomb(site: &str, depth: usize, width: usize) -> String {
    let (marker, indent) = match site.contains("{bomb:8}") {
        true => ("{bomb:8}", " ".repeat(8)),
        false => ("{bomb}", " ".repeat(2)),
    };
    let mut anchors = format!("{indent}- &l0 [lol, lol]\n");
    for level in 1..depth {
        let items = vec![format!("*l{}", level - 1); width].join(", ");
        anchors.push_str(&format!("{indent}- &l{level} [{items}]\n"));
    }
    let body = site.replace(marker, &anchors);
    let head = "version: 1\naws:\n  region: eu-west-1\n";
    if site == "{bomb}" {
        format!("{head}key_stores:\n  - id: cks-1234567890abcdef0\nlol:\n{body}")
    } else {
        format!("{head}{body}")
    }
}

proptest! {
    #![proptest_config(config())]

    /// Alias bombs of any shape, at any place: refused, with a short message (no expansion).
    #[test]
    fn alias_bombs_are_refused_anywhere(
        site in prop::sample::select(&BOMB_SITES[..]),
        depth in 2usize..16,
        width in 2usize..16,
    ) {
        let text = alias_bomb(site, depth, width);
        let err = policy::parse(&text, Path::new("bomb.yaml")).expect_err("a bomb is refused");
        prop_assert!(err.to_string().len() < 4096, "{} bytes of error", err.to_string().len());
        prop_assert!(!err.to_string().contains("while parsing"), "not the bomb: {}", err);
    }
}

#[test]
fn the_classic_billion_laughs_is_refused_in_every_site() {
    for site in BOMB_SITES {
        let text = alias_bomb(site, 10, 10);
        let err = policy::parse(&text, Path::new("lol.yaml")).expect_err("refused");
        // Refused for what it is, not for a mistake of this test's YAML.
        assert!(!err.to_string().contains("while parsing"), "{site}: {err}");
        assert!(err.to_string().lines().count() <= 3, "{site}: {err}");
    }
}
