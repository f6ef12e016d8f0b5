//! Redaction: credentials (AWS access key ids, and the value after a secret's name) replaced with
//! `[redacted]` in every string of an event before it reaches the audit file or a log line. It
//! owns only the scrubbing of text; it knows nothing of the file, the chain or the event names.

use std::borrow::Cow;

use serde_json::Value;

/// Redact every string inside `value`, at any depth.
pub(super) fn redact_value(value: &mut Value) {
    match value {
        Value::String(text) => {
            if let Cow::Owned(redacted) = redact_credentials(text) {
                *text = redacted;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_value),
        Value::Object(map) => map.values_mut().for_each(redact_value),
        _ => {}
    }
}

/// Names after which the value is a secret, lowercase (`name=value`, `name: value`, `"name":"value"`).
const SECRET_NAMES: [&str; 9] = [
    "aws_secret_access_key",
    "secret_access_key",
    "secretaccesskey",
    "aws_session_token",
    "session_token",
    "sessiontoken",
    "x-amz-security-token",
    "security_token",
    "securitytoken",
];

/// Defence in depth: events carry no credentials, but error texts come from outside (AWS error
/// messages echo request details). Replace AWS access key ids (`AKIA…`, `ASIA…`) and the value
/// after a secret's name with `[redacted]`.
pub fn redact_credentials(text: &str) -> Cow<'_, str> {
    const REDACTED: &[u8] = b"[redacted]";
    let bytes = text.as_bytes();
    let lower = text.to_ascii_lowercase();
    let lower = lower.as_bytes();
    let mut out: Vec<u8> = Vec::new();
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let word_start = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        // An access key id: AKIA/ASIA and 16 uppercase letters or digits, as a whole word.
        if word_start
            && (bytes[i..].starts_with(b"AKIA") || bytes[i..].starts_with(b"ASIA"))
            && bytes.len() >= i + 20
            && bytes[i + 4..i + 20]
                .iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            && bytes.get(i + 20).is_none_or(|b| !b.is_ascii_alphanumeric())
        {
            out.extend_from_slice(&bytes[copied..i]);
            out.extend_from_slice(REDACTED);
            i += 20;
            copied = i;
            continue;
        }
        if let Some(name) = SECRET_NAMES
            .iter()
            .find(|name| lower[i..].starts_with(name.as_bytes()))
        {
            let mut value_start = i + name.len();
            while value_start < bytes.len()
                && matches!(
                    bytes[value_start],
                    b' ' | b'\t' | b':' | b'=' | b'"' | b'\''
                )
            {
                value_start += 1;
            }
            let mut value_end = value_start;
            while value_end < bytes.len()
                && !matches!(
                    bytes[value_end],
                    b' ' | b'\t' | b'\r' | b'\n' | b'"' | b'\'' | b'&' | b',' | b';' | b'<'
                )
            {
                value_end += 1;
            }
            if value_end > value_start {
                out.extend_from_slice(&bytes[copied..value_start]);
                out.extend_from_slice(REDACTED);
                copied = value_end;
            }
            i = value_end.max(i + 1);
            continue;
        }
        i += 1;
    }
    if copied == 0 && out.is_empty() {
        return Cow::Borrowed(text);
    }
    out.extend_from_slice(&bytes[copied..]);
    // Only whole ASCII runs were replaced, between ASCII delimiters: still UTF-8.
    Cow::Owned(String::from_utf8(out).expect("redaction replaces ASCII ranges only"))
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::path::PathBuf;
    use std::process::Command;
    use std::sync::Mutex;

    use super::super::test_support::{CHILD_LOG, POLICY};
    use super::super::{AuditLog, DisconnectResult, Event, TriggerSource, verify};
    use super::*;

    /// Test credentials, in the shapes AWS uses, that must never be written anywhere.
    const ACCESS_KEY_ID: &str = "ASIAQWERTYUIOPASDFGH";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const SESSION_TOKEN: &str = "FwoGZXIvYXdzEBYaDHhBTEXAMPLETOKEN//////////wEaDPq";
    const CHILD_TRACE: &str = "KMS_KILLSWITCH_AUDIT_TEST_CHILD_TRACE";

    #[test]
    fn credentials_never_reach_the_file_or_the_log_output() {
        // In a child process with its own global subscriber: tracing caches per-callsite interest
        // process-wide, so capturing with a scoped subscriber while other tests log is unreliable.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let trace = dir.path().join("trace.log");
        let output = Command::new(std::env::current_exe().unwrap())
            .args([
                "audit::redact::tests::child_records_credentials",
                "--exact",
                "--ignored",
            ])
            .env(CHILD_LOG, &path)
            .env(CHILD_TRACE, &trace)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stdout)
        );
        let file = std::fs::read_to_string(&path).unwrap();
        let traced = std::fs::read_to_string(&trace).unwrap();
        assert!(
            traced.contains("audit record written")
                && traced.contains("audit record held in memory"),
            "{traced}"
        );
        assert!(file.contains("[redacted]") && file.contains("cks-1234567890abcdef0"));
        for secret in [ACCESS_KEY_ID, SECRET, SESSION_TOKEN] {
            assert!(!file.contains(secret), "{secret} in the audit file");
            assert!(!traced.contains(secret), "{secret} in the log output");
        }
        assert_eq!(verify(&path).unwrap().records, 3);
    }

    /// Not a test of its own: the child process of `credentials_never_reach_the_file_or_the_log_output`.
    #[test]
    #[ignore = "a child process of credentials_never_reach_the_file_or_the_log_output"]
    fn child_records_credentials() {
        let path = PathBuf::from(std::env::var_os(CHILD_LOG).expect("run by the credentials test"));
        let trace = std::env::var_os(CHILD_TRACE).expect("run by the credentials test");
        let trace = File::create(trace).unwrap();
        tracing_subscriber::fmt()
            .with_writer(Mutex::new(trace))
            .with_ansi(false)
            .init();
        let unwritable = path.with_file_name("dir-in-the-way");
        std::fs::create_dir(&unwritable).unwrap();
        // Once written, once held in memory: both paths print the record.
        for path in [path, unwritable] {
            let log = AuditLog::open(&path, POLICY);
            log.record_blocking(Event::DisconnectResult {
                lockdown_id: "ld-1".into(),
                key_store_id: "cks-1234567890abcdef0".into(),
                region: "eu-west-1".into(),
                result: DisconnectResult::Error,
                request_id: None,
                error: Some(format!(
                    "SignatureDoesNotMatch: canonical request x-amz-security-token:{SESSION_TOKEN}\n \
                     credential {ACCESS_KEY_ID}/20261129/eu-west-1/kms"
                )),
            });
            log.record_blocking(Event::PolicyRejected {
                error: format!("aws_secret_access_key = {SECRET}"),
            });
            log.record_blocking(Event::TriggerFired {
                source: TriggerSource::Alarm,
                detail: serde_json::json!({"state_reason": [format!("SessionToken={SESSION_TOKEN}&x=1")]}),
                latched: false,
            });
        }
    }

    #[test]
    fn redaction_replaces_only_credentials() {
        assert!(matches!(
            redact_credentials("store cks-1 is CONNECTED (AKIA is a prefix)"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            redact_credentials("key AKIAIOSFODNN7EXAMPLE used"),
            "key [redacted] used"
        );
        assert_eq!(
            redact_credentials("XAKIAIOSFODNN7EXAMPLE"),
            "XAKIAIOSFODNN7EXAMPLE"
        );
        assert_eq!(
            redact_credentials("\"SecretAccessKey\":\"abc/def+g\",\"x\":1"),
            "\"SecretAccessKey\":\"[redacted]\",\"x\":1"
        );
        assert_eq!(
            redact_credentials("X-Amz-Security-Token: tok=en; rest é"),
            "X-Amz-Security-Token: [redacted]; rest é"
        );
        assert_eq!(redact_credentials("session_token"), "session_token");
    }
}
