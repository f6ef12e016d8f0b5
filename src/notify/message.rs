//! The notification document of DESIGN.md §9, built from the audit record it reports: which
//! events are notified, the one-line summary a human reads in a pager, and the details (the
//! record's own fields, credentials redacted). Pure: builds bytes, sends nothing.

use serde_json::{Map, Value, json};

use crate::audit::{Event, LockdownOutcome, redact_credentials};

/// One notification, ready for every sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// `trigger_fired`, `lockdown_finished`, `drift_detected`, `rearmed`, `unhealthy`, `healthy`.
    pub event: String,
    /// The one-line summary (also the SNS Subject, shortened).
    pub summary: String,
    /// The JSON document's bytes: exactly what is published, posted and signed.
    pub body: Vec<u8>,
}

/// Whether `event` is notified at all (a trigger while latched is not: it starts nothing).
pub fn is_notified(event: &Event) -> bool {
    matches!(
        event,
        Event::TriggerFired { latched: false, .. }
            | Event::LockdownFinished { .. }
            | Event::DriftDetected { .. }
            | Event::KeyDriftDetected { .. }
            | Event::Rearmed { .. }
            | Event::Unhealthy { .. }
            | Event::Healthy
    )
}

/// The notification for `event`, or `None` when it is not notified. `lockdown_id` is the
/// lockdown the event belongs to when the record does not carry one itself.
pub fn build(
    event: &Event,
    host: &str,
    ts: std::time::SystemTime,
    lockdown_id: Option<&str>,
) -> Option<Notification> {
    if !is_notified(event) {
        return None;
    }
    // Our own enum of strings, numbers and JSON values: serializing it cannot fail, and an
    // internally tagged enum is always an object with its tag (as `audit` relies on too).
    let Ok(Value::Object(mut details)) = serde_json::to_value(event) else {
        return None;
    };
    let name = match details.remove("event") {
        Some(Value::String(name)) => name,
        _ => return None,
    };
    let lockdown_id = match details.remove("lockdown_id") {
        Some(Value::String(id)) => Some(id),
        _ => lockdown_id.map(str::to_owned),
    };
    details.values_mut().for_each(redact);
    let summary = summary(event, host);
    let document = json!({
        "kms_killswitch": 1,
        "event": name,
        "host": host,
        "ts": humantime::format_rfc3339_millis(ts).to_string(),
        "lockdown_id": lockdown_id,
        "summary": summary,
        "details": Value::Object(Map::from_iter(details)),
    });
    Some(Notification {
        event: name,
        summary,
        body: document.to_string().into_bytes(),
    })
}

/// Credentials out of every string (error texts come from outside).
fn redact(value: &mut Value) {
    match value {
        Value::String(text) => {
            if let std::borrow::Cow::Owned(clean) = redact_credentials(text) {
                *text = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::Object(map) => map.values_mut().for_each(redact),
        _ => {}
    }
}

/// The pager line: what happened, on which host, and what is left to do.
fn summary(event: &Event, host: &str) -> String {
    match event {
        Event::TriggerFired { source, .. } => {
            format!("kms-killswitch on {host}: trigger fired ({source}); locking down")
        }
        Event::LockdownFinished {
            outcome,
            verified,
            keys_verified,
            failed,
            elapsed_ms,
            ..
        } => lockdown_summary(*outcome, (*verified, *keys_verified), failed, *elapsed_ms),
        Event::DriftDetected {
            key_store_id,
            region,
            connection_state,
        } => format!(
            "drift on {host}: key store {key_store_id} in {region} was {connection_state}; disconnecting it again"
        ),
        Event::KeyDriftDetected {
            key_id,
            region,
            key_state,
        } => {
            format!("drift on {host}: key {key_id} in {region} was {key_state}; disabling it again")
        }
        Event::Rearmed { reason, by } => {
            format!("kms-killswitch on {host} re-armed by {by}: {reason}")
        }
        Event::Unhealthy { reasons } => {
            format!(
                "kms-killswitch on {host} is UNHEALTHY: {}",
                reasons.join("; ")
            )
        }
        Event::Healthy => format!("kms-killswitch on {host} is healthy again"),
        _ => String::new(),
    }
}

fn lockdown_summary(
    outcome: LockdownOutcome,
    (verified, keys_verified): (usize, usize),
    failed: &[crate::audit::Failed],
    elapsed_ms: u64,
) -> String {
    let seconds = elapsed_ms as f64 / 1000.0;
    let mut done = format!("{} DISCONNECTED", crate::count(verified, "key store"));
    if keys_verified > 0 {
        done.push_str(&format!(
            ", {} Disabled",
            crate::count(keys_verified, "key")
        ));
    }
    match outcome {
        LockdownOutcome::Complete => format!("lockdown complete: {done} in {seconds:.1} s"),
        LockdownOutcome::DryRun => {
            format!(
                "dry run: {} would be disconnected",
                crate::count(verified, "key store")
            )
        }
        LockdownOutcome::Partial => {
            let failures: Vec<String> = failed.iter().map(failure_text).collect();
            format!(
                "lockdown PARTIAL: {done}, {} failed: {} after {seconds:.1} s",
                failed.len(),
                failures.join(", ")
            )
        }
    }
}

/// One failed store or key as the pager line names it: id, region, last state.
fn failure_text(failed: &crate::audit::Failed) -> String {
    match failed {
        crate::audit::Failed::Store(f) => {
            let state = f.connection_state.as_deref().unwrap_or("unknown state");
            format!("{} ({}, {state})", f.key_store_id, f.region)
        }
        crate::audit::Failed::Key(f) => {
            let state = f.key_state.as_deref().unwrap_or("unknown state");
            format!("key {} ({}, {state})", f.key_id, f.region)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::audit::{Failed, FailedStore};
    use crate::model::TriggerSource;

    fn doc(notification: &Notification) -> Value {
        serde_json::from_slice(&notification.body).expect("the body is JSON")
    }

    #[test]
    fn lockdown_finished_carries_the_record_fields_and_a_pager_line() {
        let event = Event::LockdownFinished {
            lockdown_id: "ld-1".into(),
            outcome: LockdownOutcome::Partial,
            verified: 2,
            keys_verified: 0,
            failed: vec![Failed::Store(FailedStore {
                key_store_id: "cks-1".into(),
                region: "eu-west-1".into(),
                connection_state: Some("CONNECTED".into()),
                error: Some("AccessDeniedException: secret_access_key=abc".into()),
            })],
            elapsed_ms: 1712,
        };
        let ts = UNIX_EPOCH + Duration::from_millis(1_800_000_001_234);
        let notification = build(&event, "sec-01", ts, None).expect("notified");
        let doc = doc(&notification);
        assert_eq!(doc["kms_killswitch"], 1);
        assert_eq!(doc["event"], "lockdown_finished");
        assert_eq!(doc["host"], "sec-01");
        assert_eq!(doc["ts"], "2027-01-15T08:00:01.234Z");
        assert_eq!(doc["lockdown_id"], "ld-1");
        assert_eq!(doc["details"]["outcome"], "partial");
        assert_eq!(doc["details"]["verified"], 2);
        assert_eq!(doc["details"]["elapsed_ms"], 1712);
        assert_eq!(doc["details"]["failed"][0]["connection_state"], "CONNECTED");
        assert!(doc["details"].get("lockdown_id").is_none());
        assert!(!String::from_utf8_lossy(&notification.body).contains("=abc"));
        assert_eq!(
            notification.summary,
            "lockdown PARTIAL: 2 key stores DISCONNECTED, 1 failed: cks-1 (eu-west-1, CONNECTED) after 1.7 s"
        );
    }

    #[test]
    fn a_trigger_while_latched_and_bookkeeping_records_are_not_notified() {
        let latched = Event::TriggerFired {
            source: TriggerSource::File,
            detail: Value::Null,
            latched: true,
        };
        assert!(build(&latched, "h", UNIX_EPOCH, None).is_none());
        assert!(build(&Event::DaemonStarted, "h", UNIX_EPOCH, None).is_none());
        let fired = Event::TriggerFired {
            source: TriggerSource::Signal,
            detail: json!({"signal": "SIGUSR1"}),
            latched: false,
        };
        let notification = build(&fired, "h", UNIX_EPOCH, Some("ld-9")).expect("notified");
        let doc = doc(&notification);
        assert_eq!(doc["lockdown_id"], "ld-9");
        assert_eq!(doc["details"]["source"], "signal");
        assert_eq!(doc["details"]["detail"]["signal"], "SIGUSR1");
        assert_eq!(
            notification.summary,
            "kms-killswitch on h: trigger fired (signal); locking down"
        );
    }

    #[test]
    fn unhealthy_lists_its_reasons() {
        let event = Event::Unhealthy {
            reasons: vec!["audit log unwritable".into()],
        };
        let notification = build(&event, "h", UNIX_EPOCH, None).expect("notified");
        assert_eq!(
            doc(&notification)["details"]["reasons"][0],
            "audit log unwritable"
        );
        assert_eq!(doc(&notification)["lockdown_id"], Value::Null);
        assert!(
            notification
                .summary
                .contains("UNHEALTHY: audit log unwritable")
        );
    }
}
