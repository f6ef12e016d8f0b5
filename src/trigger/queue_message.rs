//! What one SQS message body means for the switch: a pure function, [`classify`], from the body
//! and the queue's `match:` entries to [`Verdict::Fire`] (with what the message carried, cut to a
//! bounded size) or [`Verdict::Ignore`] (with the reason). An SNS notification envelope is
//! unwrapped (its `Message`) first; the fields read are an EventBridge event's (`source`,
//! `detail-type`, `id`, `detail.severity`, `detail.eventName`). SNS's own subscription messages
//! (`SubscriptionConfirmation`, `UnsubscribeConfirmation`) are never a trip. Any input, however
//! malformed or large, yields a verdict: never a panic. No I/O, no tokio, no AWS.

use serde_json::{Map, Value, json};

use crate::policy::QueueMatch;

/// Largest body read. A trip message is a few kilobytes (an EventBridge event, an SNS envelope);
/// SQS allows 1 MiB, and anything near that is not a trip: ignored without being parsed.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Longest value copied from a message into the audit record, per field: enough for any ARN,
/// id or subject; the rest of an attacker-sized field is cut.
pub const MAX_CARRIED_CHARS: usize = 256;
/// The CloudTrail events that re-attach a custom key store while latched.
const KEY_STORE_EVENTS: [&str; 2] = ["ConnectCustomKeyStore", "UpdateCustomKeyStore"];
/// The envelope types SNS itself sends to a subscribed queue: a topic in another account
/// subscribing the queue delivers a `SubscriptionConfirmation` to it. Tripping on one would lock
/// down every store of a host because a fleet topic was set up.
const SNS_SUBSCRIPTION_TYPES: [&str; 2] = ["SubscriptionConfirmation", "UnsubscribeConfirmation"];

/// What a message means.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Trip. `carried`: the event's `source` / `detail_type` / `id` (and `event_name`,
    /// `severity` when present) and, for an SNS envelope, its `sns_message_id` / `subject` /
    /// `topic_arn`, each cut to [`MAX_CARRIED_CHARS`].
    Fire {
        carried: Value,
        /// A CloudTrail `ConnectCustomKeyStore` / `UpdateCustomKeyStore`: while latched, enforce
        /// now rather than at the next `enforce_interval`.
        key_store_event: bool,
    },
    /// Not a trip: delete it and audit `trigger_ignored` with this reason.
    Ignore { reason: String },
}

/// Classify one message body against a queue's `match:` entries (empty: every readable message
/// fires).
pub fn classify(body: &str, matches: &[QueueMatch]) -> Verdict {
    if body.len() > MAX_MESSAGE_BYTES {
        return ignore(format!(
            "message of {} bytes is larger than {} KiB",
            body.len(),
            MAX_MESSAGE_BYTES / 1024
        ));
    }
    let outer: Value = match serde_json::from_str(body) {
        Ok(value) => value,
        Err(err) => return ignore(format!("not JSON: {}", cut(&err.to_string()))),
    };
    if let Some(kind) = sns_subscription_message(&outer) {
        let topic = outer.get("TopicArn").and_then(Value::as_str).unwrap_or("?");
        return ignore(format!(
            "an SNS {kind} for topic {}, not a trip (subscribe from the queue's account: no confirmation is needed then)",
            cut(topic)
        ));
    }
    let mut carried = Map::new();
    let event = match sns_message(&outer) {
        Some(message) => {
            copy(&mut carried, "sns_message_id", outer.get("MessageId"));
            copy(&mut carried, "subject", outer.get("Subject"));
            copy(&mut carried, "topic_arn", outer.get("TopicArn"));
            // `aws sns publish --message trip` carries plain text: still a message.
            serde_json::from_str(message).unwrap_or_else(|_| Value::String(cut(message)))
        }
        None => outer,
    };
    let fields = EventFields::read(&event);
    copy(&mut carried, "source", event.get("source"));
    copy(&mut carried, "detail_type", event.get("detail-type"));
    copy(&mut carried, "id", event.get("id"));
    if let Some(name) = fields.event_name {
        carried.insert("event_name".into(), json!(cut(name)));
    }
    if let Some(severity) = fields.severity {
        carried.insert("severity".into(), json!(severity));
    }
    if !matches.is_empty() && !matches.iter().any(|m| fields.matches(m)) {
        let mut reason = String::from("matches no `match:` entry");
        if !carried.is_empty() {
            reason.push_str(&format!(" ({})", Value::Object(carried)));
        }
        return ignore(reason);
    }
    Verdict::Fire {
        key_store_event: fields
            .event_name
            .is_some_and(|name| KEY_STORE_EVENTS.contains(&name)),
        carried: Value::Object(carried),
    }
}

fn ignore(reason: String) -> Verdict {
    Verdict::Ignore { reason }
}

/// The `Message` of an SNS notification envelope (`Type: Notification`), if `value` is one.
fn sns_message(value: &Value) -> Option<&str> {
    let object = value.as_object()?;
    (object.get("Type")?.as_str()? == "Notification")
        .then(|| object.get("Message")?.as_str())
        .flatten()
}

/// `SubscriptionConfirmation` or `UnsubscribeConfirmation` if `value` is SNS's envelope of one.
fn sns_subscription_message(value: &Value) -> Option<&'static str> {
    let kind = value.as_object()?.get("Type")?.as_str()?;
    SNS_SUBSCRIPTION_TYPES.into_iter().find(|t| *t == kind)
}

/// The fields `match:` looks at.
struct EventFields<'a> {
    source: Option<&'a str>,
    detail_type: Option<&'a str>,
    severity: Option<f64>,
    event_name: Option<&'a str>,
}

impl<'a> EventFields<'a> {
    fn read(event: &'a Value) -> Self {
        let detail = event.get("detail");
        EventFields {
            source: event.get("source").and_then(Value::as_str),
            detail_type: event.get("detail-type").and_then(Value::as_str),
            // GuardDuty sends a number; accept a numeric string too (hand-made test events).
            severity: detail
                .and_then(|d| d.get("severity"))
                .and_then(|s| s.as_f64().or_else(|| s.as_str()?.trim().parse().ok()))
                .filter(|s| s.is_finite()),
            event_name: detail
                .and_then(|d| d.get("eventName"))
                .and_then(Value::as_str),
        }
    }

    /// Every field the entry gives holds.
    fn matches(&self, entry: &QueueMatch) -> bool {
        let same = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|want| have == Some(want))
        };
        same(&entry.source, self.source)
            && same(&entry.detail_type, self.detail_type)
            && same(&entry.event_name, self.event_name)
            && entry.min_severity_milli.is_none_or(|min| {
                self.severity
                    .is_some_and(|s| s * 1000.0 >= f64::from(min) - 1e-6)
            })
    }
}

/// Copy a scalar field into `carried`, as text cut to [`MAX_CARRIED_CHARS`].
fn copy(carried: &mut Map<String, Value>, key: &str, value: Option<&Value>) {
    let text = match value {
        Some(Value::String(s)) => cut(s),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
        _ => return,
    };
    carried.insert(key.to_string(), Value::String(text));
}

/// Characters a carried field never holds (each becomes U+FFFD): control characters, and the
/// Unicode bidirectional formatting characters, which make an audit line or a log line display
/// otherwise than it reads ("Trojan Source", CVE-2021-42574).
fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// At most [`MAX_CARRIED_CHARS`] characters, [`is_hidden`] ones replaced, `…` when cut.
fn cut(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_CARRIED_CHARS)
        .map(|c| if is_hidden(c) { '\u{fffd}' } else { c })
        .collect();
    if text.chars().nth(MAX_CARRIED_CHARS).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guardduty(severity: f64) -> String {
        json!({
            "version": "0", "id": "ev-1", "source": "aws.guardduty",
            "detail-type": "GuardDuty Finding", "detail": {"severity": severity, "type": "x"}
        })
        .to_string()
    }

    fn cloudtrail(event_name: &str) -> String {
        json!({
            "id": "ev-2", "source": "aws.kms", "detail-type": "AWS API Call via CloudTrail",
            "detail": {"eventName": event_name, "eventSource": "kms.amazonaws.com"}
        })
        .to_string()
    }

    fn sns(message: &str) -> String {
        json!({
            "Type": "Notification", "MessageId": "sns-1", "Subject": "drill",
            "TopicArn": "arn:aws:sns:eu-west-1:111111111111:fleet", "Message": message
        })
        .to_string()
    }

    fn policy_matches() -> Vec<QueueMatch> {
        vec![
            QueueMatch {
                source: Some("aws.guardduty".into()),
                min_severity_milli: Some(7000),
                ..QueueMatch::default()
            },
            QueueMatch {
                detail_type: Some("AWS API Call via CloudTrail".into()),
                event_name: Some("ConnectCustomKeyStore".into()),
                ..QueueMatch::default()
            },
        ]
    }

    #[test]
    fn guardduty_fires_from_severity_7_and_carries_its_fields() {
        let Verdict::Fire { carried, .. } = classify(&guardduty(7.0), &policy_matches()) else {
            panic!("severity 7 must fire");
        };
        assert_eq!(carried["source"], "aws.guardduty");
        assert_eq!(carried["detail_type"], "GuardDuty Finding");
        assert_eq!(carried["id"], "ev-1");
        assert!(matches!(
            classify(&guardduty(6.9), &policy_matches()),
            Verdict::Ignore { reason } if reason.contains("matches no")
        ));
    }

    #[test]
    fn an_sns_envelope_is_unwrapped_before_matching() {
        let verdict = classify(
            &sns(&cloudtrail("ConnectCustomKeyStore")),
            &policy_matches(),
        );
        let Verdict::Fire {
            carried,
            key_store_event,
        } = verdict
        else {
            panic!("an unwrapped CloudTrail event must fire: {verdict:?}");
        };
        assert!(key_store_event);
        assert_eq!(carried["sns_message_id"], "sns-1");
        assert_eq!(carried["subject"], "drill");
        assert_eq!(carried["event_name"], "ConnectCustomKeyStore");
        assert!(matches!(
            classify(
                &sns(&cloudtrail("DescribeCustomKeyStores")),
                &policy_matches()
            ),
            Verdict::Ignore { .. }
        ));
    }

    #[test]
    fn without_match_every_readable_message_fires_even_plain_sns_text() {
        assert!(matches!(
            classify(&sns("trip now"), &[]),
            Verdict::Fire {
                key_store_event: false,
                ..
            }
        ));
        assert!(matches!(classify("{}", &[]), Verdict::Fire { .. }));
        assert!(matches!(
            classify("not json", &[]),
            Verdict::Ignore { reason } if reason.starts_with("not JSON")
        ));
    }

    #[test]
    fn bidi_overrides_never_reach_a_carried_field() {
        let body =
            json!({"source": "aws.guardduty\u{202e}gnp.exe", "detail-type": "a\u{2066}b\u{200f}"});
        let Verdict::Fire { carried, .. } = classify(&body.to_string(), &[]) else {
            panic!("a readable message without match: fires");
        };
        assert_eq!(carried["source"], "aws.guardduty\u{fffd}gnp.exe");
        assert_eq!(carried["detail_type"], "a\u{fffd}b\u{fffd}");
    }

    #[test]
    fn an_sns_subscription_confirmation_never_fires() {
        // What SNS delivers to a queue that a topic of another account subscribes.
        let confirmation = json!({
            "Type": "SubscriptionConfirmation", "MessageId": "sns-2", "Token": "2336412f37",
            "TopicArn": "arn:aws:sns:eu-west-1:111111111111:fleet",
            "Message": "You have chosen to subscribe to the topic arn:aws:sns:eu-west-1:111111111111:fleet.",
            "SubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=2336412f37"
        });
        for kind in SNS_SUBSCRIPTION_TYPES {
            let mut message = confirmation.clone();
            message["Type"] = json!(kind);
            let verdict = classify(&message.to_string(), &[]);
            assert!(
                matches!(&verdict, Verdict::Ignore { reason }
                    if reason.contains(kind) && reason.contains(":fleet") && !reason.contains("2336412f37")),
                "{verdict:?}"
            );
        }
    }

    #[test]
    fn huge_messages_are_ignored_unread_and_carried_fields_are_cut() {
        let huge = format!("{{\"source\": \"{}\"}}", "a".repeat(MAX_MESSAGE_BYTES));
        assert!(matches!(
            classify(&huge, &[]),
            Verdict::Ignore { reason } if reason.contains("larger than 256 KiB")
        ));
        let long = json!({"source": "s".repeat(10_000), "id": "x\ny"}).to_string();
        let Verdict::Fire { carried, .. } = classify(&long, &[]) else {
            panic!("must fire");
        };
        assert_eq!(
            carried["source"].as_str().map(|s| s.chars().count()),
            Some(MAX_CARRIED_CHARS + 1)
        );
        assert_eq!(carried["id"], "x\u{fffd}y");
    }
}
