//! Fuzzing the queue-message parser (issue 17) with proptest: `trigger::queue_message::classify`
//! on valid EventBridge events and SNS envelopes (also envelopes inside envelopes) with hostile
//! edits, random JSON, 10k-deep nesting, bodies just under, at and over the 256 KiB cap, huge
//! fields and odd `\u` escapes. Each case checks more than "no panic": the verdict a model of
//! the `match:` rules predicts, the same verdict after edits that leave the JSON value the same
//! (whitespace, re-escaping), and on any input the module's promises ([`promises`]). Cases from
//! `KMS_KILLSWITCH_FUZZ_CASES` (default 2,000; the properties that build 256 KiB bodies run a
//! fiftieth of them); the long run is
//! `KMS_KILLSWITCH_FUZZ_CASES=1000000 cargo test --release --test it fuzz_queue::`.
//! It owns no behaviour and starts nothing (a pure function: no simulator, no binary).

use kms_killswitch::policy::QueueMatch;
use kms_killswitch::trigger::queue_message::{
    MAX_CARRIED_CHARS, MAX_MESSAGE_BYTES, Verdict, classify,
};
use proptest::prelude::*;
use serde_json::{Value, json};

fn config() -> ProptestConfig {
    crate::support::fuzz_config()
}

/// For the properties whose every case parses a body near 256 KiB.
fn big_config() -> ProptestConfig {
    ProptestConfig {
        cases: (crate::support::fuzz_cases() / 50).max(16),
        ..config()
    }
}

/// The keys `carried` may hold (the module's doc on `Verdict::Fire`).
const CARRIED_KEYS: [&str; 8] = [
    "source",
    "detail_type",
    "id",
    "event_name",
    "severity",
    "sns_message_id",
    "subject",
    "topic_arn",
];
const KEY_STORE_EVENTS: [&str; 2] = ["ConnectCustomKeyStore", "UpdateCustomKeyStore"];
const SNS_SUBSCRIPTION_TYPES: [&str; 2] = ["SubscriptionConfirmation", "UnsubscribeConfirmation"];
/// Longest `Ignore` reason: the fixed words and every carried field, JSON-escaped.
const MAX_REASON_CHARS: usize = 8 * 1024;

/// What `classify` promises for every body, whatever it is. `Err` says which promise broke.
fn promises(body: &str, matches: &[QueueMatch], verdict: &Verdict) -> Result<(), String> {
    // Parsed only when `classify` must have parsed it too (an oversized body is not read).
    let parsed = (body.len() <= MAX_MESSAGE_BYTES)
        .then(|| serde_json::from_str::<Value>(body).ok())
        .flatten();
    // SNS's own subscription messages are never a trip.
    let subscription = parsed
        .as_ref()
        .and_then(|v| v.get("Type")?.as_str())
        .filter(|kind| SNS_SUBSCRIPTION_TYPES.contains(kind));
    match verdict {
        Verdict::Ignore { reason } => {
            ignore_promises(body, matches, parsed.is_some(), subscription, reason)
        }
        Verdict::Fire {
            carried,
            key_store_event,
        } => {
            if parsed.is_none() {
                return Err(format!("fired on an unreadable body: {carried}"));
            }
            if let Some(kind) = subscription {
                return Err(format!("fired on an SNS {kind}"));
            }
            fire_promises(carried, *key_store_event)?;
            // Fewer entries cannot make a firing message quiet: without `match:` it fires too,
            // carrying the same.
            if !matches.is_empty() && classify(body, &[]) != *verdict {
                return Err("fires with `match:` but differs without".into());
            }
            Ok(())
        }
    }
}

/// An `Ignore`: a bounded one-line reason that says why, and only for a body that had to be.
fn ignore_promises(
    body: &str,
    matches: &[QueueMatch],
    parses: bool,
    subscription: Option<&str>,
    reason: &str,
) -> Result<(), String> {
    if reason.chars().any(hidden) || reason.chars().count() > MAX_REASON_CHARS {
        return Err(format!(
            "reason unbounded or with control characters: {} chars",
            reason.chars().count()
        ));
    }
    let why = if body.len() > MAX_MESSAGE_BYTES {
        "larger than 256 KiB"
    } else if !parses {
        "not JSON"
    } else if let Some(kind) = subscription {
        kind
    } else if matches.is_empty() {
        return Err(format!("readable, no `match:`, yet ignored: {reason}"));
    } else {
        "matches no `match:` entry"
    };
    if !reason.contains(why) {
        return Err(format!("expected {why:?}, but: {reason}"));
    }
    Ok(())
}

/// A `Fire`: only the documented keys, each string cut, `key_store_event` only for the two
/// CloudTrail events.
fn fire_promises(carried: &Value, key_store_event: bool) -> Result<(), String> {
    let object = carried.as_object().ok_or("carried is not an object")?;
    for (key, value) in object {
        if !CARRIED_KEYS.contains(&key.as_str()) {
            return Err(format!("carried an unexpected key {key}"));
        }
        match value {
            Value::String(text) => carried_text_is_cut(text)?,
            Value::Number(n) if key == "severity" && n.as_f64().is_some() => {}
            other => return Err(format!("carried {key} = {other}")),
        }
    }
    let name = object.get("event_name").and_then(Value::as_str);
    if key_store_event && !name.is_some_and(|n| KEY_STORE_EVENTS.contains(&n)) {
        return Err(format!("key_store_event for {name:?}"));
    }
    Ok(())
}

/// A carried string: at most [`MAX_CARRIED_CHARS`] characters (plus `…` when cut), no control
/// or bidirectional formatting character.
fn carried_text_is_cut(text: &str) -> Result<(), String> {
    let count = text.chars().count();
    let cut_ok =
        count <= MAX_CARRIED_CHARS || (count == MAX_CARRIED_CHARS + 1 && text.ends_with('…'));
    if !cut_ok || text.chars().any(hidden) {
        return Err(format!(
            "carried text of {count} chars: {:?}",
            cut_for_message(text)
        ));
    }
    Ok(())
}

/// What a carried field must never hold: control characters and the Unicode bidirectional
/// formatting characters (listed here, not taken from the module, so the model is independent).
fn hidden(c: char) -> bool {
    const BIDI: [char; 12] = [
        '\u{061c}', '\u{200e}', '\u{200f}', '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}',
        '\u{202e}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
    ];
    c.is_control() || BIDI.contains(&c)
}

fn cut_for_message(text: &str) -> String {
    text.chars().take(80).collect()
}

/// What the generator built, for the model of `match:`.
#[derive(Debug, Clone)]
struct Event {
    source: String,
    detail_type: String,
    id: String,
    /// GuardDuty's `detail.severity` in tenths (GuardDuty uses one decimal), and whether it is
    /// sent as a numeric string.
    severity_tenths: Option<(u32, bool)>,
    event_name: Option<String>,
    /// 0: the bare event; 1: in an SNS envelope; 2: that envelope in another.
    wrap: u8,
}

impl Event {
    fn value(&self) -> Value {
        let mut detail =
            json!({"type": "Recon:EC2/PortProbeUnprotectedPort", "region": "eu-west-1"});
        if let Some((tenths, as_string)) = self.severity_tenths {
            let severity = f64::from(tenths) / 10.0;
            detail["severity"] = if as_string {
                json!(format!("{severity}"))
            } else {
                json!(severity)
            };
        }
        if let Some(name) = &self.event_name {
            detail["eventName"] = json!(name);
            detail["eventSource"] = json!("kms.amazonaws.com");
        }
        json!({
            "version": "0", "id": self.id, "detail-type": self.detail_type,
            "source": self.source, "account": "111111111111", "time": "2026-12-01T18:00:00Z",
            "region": "eu-west-1", "resources": [], "detail": detail,
        })
    }

    /// The body as SQS delivers it, compact.
    fn body(&self) -> String {
        self.body_with(&|v: &Value| v.to_string())
    }

    /// The body, each JSON level rendered by `render`.
    fn body_with(&self, render: &dyn Fn(&Value) -> String) -> String {
        let mut text = render(&self.value());
        for level in 0..self.wrap {
            text = render(&sns(&text, level));
        }
        text
    }

    /// What the model of DESIGN §3's `match:` says: fire when there is no entry or when every
    /// field of some entry holds. A double envelope is unwrapped once: its inner envelope has
    /// none of the fields.
    fn fires(&self, matches: &[QueueMatch]) -> bool {
        let bare = self.wrap < 2;
        let source = bare.then_some(self.source.as_str());
        let detail_type = bare.then_some(self.detail_type.as_str());
        let event_name = self.event_name.as_deref().filter(|_| bare);
        let severity_milli = self.severity_tenths.filter(|_| bare).map(|(t, _)| t * 100);
        let same = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        matches.is_empty()
            || matches.iter().any(|m| {
                same(&m.source, source)
                    && same(&m.detail_type, detail_type)
                    && same(&m.event_name, event_name)
                    && m.min_severity_milli
                        .is_none_or(|min| severity_milli.is_some_and(|s| s >= min))
            })
    }
}

/// An SNS notification envelope around `message`.
fn sns(message: &str, level: u8) -> Value {
    json!({
        "Type": "Notification", "MessageId": format!("sns-{level}"),
        "TopicArn": "arn:aws:sns:eu-west-1:111111111111:kms-killswitch",
        "Subject": "kms-killswitch drill", "Message": message,
        "Timestamp": "2026-12-01T18:00:00.000Z", "SignatureVersion": "1",
    })
}

const SOURCES: [&str; 4] = [
    "aws.guardduty",
    "aws.kms",
    "custom.drill",
    "aws.securityhub",
];
const DETAIL_TYPES: [&str; 3] = ["GuardDuty Finding", "AWS API Call via CloudTrail", "Drill"];
const EVENT_NAMES: [&str; 4] = [
    "ConnectCustomKeyStore",
    "UpdateCustomKeyStore",
    "DisconnectCustomKeyStore",
    "DescribeCustomKeyStores",
];

fn one_of(items: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::select(items).prop_map(str::to_owned)
}

fn event() -> impl Strategy<Value = Event> {
    (
        one_of(&SOURCES),
        one_of(&DETAIL_TYPES),
        "[a-z0-9-]{0,40}",
        prop::option::of((0u32..=100, any::<bool>())),
        prop::option::of(one_of(&EVENT_NAMES)),
        0u8..=2,
    )
        .prop_map(
            |(source, detail_type, id, severity_tenths, event_name, wrap)| Event {
                source,
                detail_type,
                id,
                severity_tenths,
                event_name,
                wrap,
            },
        )
}

/// `match:` entries as the policy allows them (each names at least one field).
fn matches() -> impl Strategy<Value = Vec<QueueMatch>> {
    let entry = (
        prop::option::of(one_of(&SOURCES)),
        prop::option::of(one_of(&DETAIL_TYPES)),
        prop::option::of((0u32..=100).prop_map(|tenths| tenths * 100)),
        prop::option::of(one_of(&EVENT_NAMES)),
    )
        .prop_map(
            |(source, detail_type, min_severity_milli, event_name)| QueueMatch {
                source,
                detail_type,
                min_severity_milli,
                event_name,
            },
        )
        .prop_filter("an entry names a field", |m| *m != QueueMatch::default());
    prop::collection::vec(entry, 0..4)
}

/// JSON whitespace (RFC 8259 §2) to put between tokens.
fn whitespace() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(&b" \t\r\n"[..]), 0..6)
}

fn render_pretty(value: &Value, indent: &[u8]) -> String {
    use serde::Serialize;
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(indent);
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    value
        .serialize(&mut serializer)
        .expect("a Value serializes");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// Random JSON with the vocabulary `classify` looks at, so some of it looks like an event.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        prop::sample::select(
            &[
                "Type",
                "Message",
                "MessageId",
                "Subject",
                "TopicArn",
                "source",
                "detail-type",
                "id",
                "detail",
                "severity",
                "eventName",
            ][..]
        )
        .prop_map(str::to_owned),
        any::<String>(),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from), // NaN and infinities become null
        prop::sample::select(
            &[
                "Notification",
                "SubscriptionConfirmation",
                "UnsubscribeConfirmation",
                "aws.guardduty",
                "GuardDuty Finding",
                "ConnectCustomKeyStore",
                "7.5",
                "NaN",
                "inf",
                "1e400",
                "-0",
                "{}",
                "{\"source\": \"aws.guardduty\"}",
            ][..]
        )
        .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// Check `promises` and return the verdict.
fn judged(body: &str, matches: &[QueueMatch]) -> Result<Verdict, TestCaseError> {
    let verdict = classify(body, matches);
    promises(body, matches, &verdict).map_err(|broken| {
        TestCaseError::fail(format!(
            "{broken}\nbody ({} bytes) starts {:?}",
            body.len(),
            cut_for_message(body)
        ))
    })?;
    Ok(verdict)
}

proptest! {
    #![proptest_config(config())]

    /// A well-formed event fires exactly when the model says, carrying its fields.
    #[test]
    fn valid_events_fire_as_the_match_model_says(event in event(), matches in matches()) {
        let verdict = judged(&event.body(), &matches)?;
        prop_assert_eq!(matches!(verdict, Verdict::Fire { .. }), event.fires(&matches), "{:?}", verdict);
        if let Verdict::Fire { carried, key_store_event } = verdict {
            if event.wrap < 2 {
                prop_assert_eq!(&carried["source"], &json!(event.source));
                prop_assert_eq!(&carried["detail_type"], &json!(event.detail_type));
                prop_assert_eq!(&carried["id"], &json!(event.id));
                let name = event.event_name.as_deref();
                prop_assert_eq!(key_store_event, name.is_some_and(|n| KEY_STORE_EVENTS.contains(&n)));
            } else {
                prop_assert!(!key_store_event);
            }
            if event.wrap > 0 {
                prop_assert_eq!(&carried["sns_message_id"], &json!(format!("sns-{}", event.wrap - 1)));
            }
        }
    }

    /// Whitespace between tokens, at either end and at every level of envelope, changes nothing.
    #[test]
    fn whitespace_edits_change_no_verdict(
        event in event(),
        matches in matches(),
        indent in whitespace(),
        lead in whitespace(),
        trail in whitespace(),
    ) {
        let plain = classify(&event.body(), &matches);
        let render = |v: &Value| render_pretty(v, &indent);
        let body = format!(
            "{}{}{}",
            String::from_utf8_lossy(&lead),
            event.body_with(&render),
            String::from_utf8_lossy(&trail)
        );
        prop_assert_eq!(judged(&body, &matches)?, plain);
    }

    /// A valid body with characters replaced, inserted or removed, or cut short: the promises
    /// hold, and an edit that leaves the same JSON value leaves the same verdict.
    #[test]
    fn hostile_edits_keep_the_promises(
        event in event(),
        matches in matches(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<char>()), 1..6),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let original = event.body();
        let mut chars: Vec<char> = original.chars().collect();
        for (at, op, c) in edits {
            let at = at.index(chars.len() + 1);
            match op {
                0 if at < chars.len() => chars[at] = c,
                1 if at < chars.len() => { chars.remove(at); }
                _ => chars.insert(at, c),
            }
        }
        if let Some(cut) = cut {
            chars.truncate(cut.index(chars.len() + 1));
        }
        let body: String = chars.into_iter().collect();
        let verdict = judged(&body, &matches)?;
        let same_value = serde_json::from_str::<Value>(&body).ok()
            == serde_json::from_str::<Value>(&original).ok();
        if same_value {
            prop_assert_eq!(verdict, classify(&original, &matches));
        }
    }

    /// Arbitrary bytes after a valid event's prefix (read as SQS would hand them: UTF-8, lossy).
    #[test]
    fn binary_tails_keep_the_promises(
        event in event(),
        matches in matches(),
        keep in any::<prop::sample::Index>(),
        tail in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = event.body().into_bytes();
        bytes.truncate(keep.index(bytes.len() + 1));
        bytes.extend_from_slice(&tail);
        judged(&String::from_utf8_lossy(&bytes), &matches)?;
    }

    /// Random JSON, bare or as an SNS envelope's message: the promises hold.
    #[test]
    fn random_json_keeps_the_promises(value in json_value(), matches in matches(), wrap in any::<bool>()) {
        let body = if wrap { sns(&value.to_string(), 0).to_string() } else { value.to_string() };
        judged(&body, &matches)?;
    }

    /// Text that is not JSON at all.
    #[test]
    fn arbitrary_text_keeps_the_promises(text in any::<String>(), matches in matches()) {
        judged(&text, &matches)?;
        judged(&sns(&text, 0).to_string(), &matches)?;
    }

    /// `\u` escapes in a carried field: valid UTF-16 is decoded (surrogate pairs included) and
    /// carried cut; a lone surrogate makes the body unreadable (ignored as not JSON).
    #[test]
    fn escapes_decode_or_make_the_body_unreadable(
        units in prop::collection::vec(
            prop_oneof![0u16..0x20, 0xd800u16..0xe000, any::<u16>(), Just(0xfeff)], 0..100),
        matches in matches(),
    ) {
        let escaped: String = units.iter().map(|u| format!("\\u{u:04x}")).collect();
        let body = format!("{{\"source\": \"{escaped}\", \"detail-type\": \"Drill\"}}");
        let verdict = judged(&body, &matches)?;
        match String::from_utf16(&units) {
            Ok(decoded) => {
                if let Verdict::Fire { carried, .. } = &verdict {
                    let want: String = decoded
                        .chars()
                        .take(MAX_CARRIED_CHARS)
                        .map(|c| if hidden(c) { '\u{fffd}' } else { c })
                        .collect();
                    let have = carried["source"].as_str().unwrap_or_default();
                    prop_assert!(have.starts_with(&want), "{:?} vs {:?}", have, want);
                }
            }
            Err(_) => prop_assert!(
                matches!(&verdict, Verdict::Ignore { reason } if reason.starts_with("not JSON")),
                "{:?}", verdict
            ),
        }
    }

    /// A field of any size and kind of character: carried cut to its first characters.
    #[test]
    fn huge_fields_are_carried_cut(
        piece in prop_oneof![Just("a".to_owned()), Just("é".to_owned()), Just("\u{1F6A8}".to_owned()),
            Just("\n".to_owned()), Just("\"".to_owned()), Just("\u{202e}".to_owned()), any::<char>().prop_map(String::from)],
        count in prop_oneof![3 => 0usize..600, 1 => 0usize..30_000],
        wrap in any::<bool>(),
    ) {
        let field = piece.repeat(count);
        let event = json!({"source": field, "id": field, "detail": {"eventName": field}}).to_string();
        let body = if wrap { sns(&event, 0).to_string() } else { event };
        let verdict = judged(&body, &[])?;
        if body.len() <= MAX_MESSAGE_BYTES {
            let Verdict::Fire { carried, .. } = verdict else {
                return Err(TestCaseError::fail("a readable message without `match:` must fire"));
            };
            let chars = field.chars().count();
            for key in ["source", "id", "event_name"] {
                let have = carried[key].as_str().unwrap_or_default();
                prop_assert_eq!(have.chars().count(), chars.min(MAX_CARRIED_CHARS) + usize::from(chars > MAX_CARRIED_CHARS));
            }
        }
    }
}

proptest! {
    #![proptest_config(big_config())]

    /// A matching event padded to any length around the cap: fires up to 256 KiB, ignored
    /// (unread) above, bare or in an envelope.
    #[test]
    fn bodies_around_the_cap_fire_up_to_it_and_not_beyond(
        offset in -64i64..=64,
        wrap in any::<bool>(),
        padding in prop::sample::select(&["x", "é", "\u{1F6A8}", "\\"][..]),
    ) {
        let target = (MAX_MESSAGE_BYTES as i64 + offset) as usize;
        let body = padded_guardduty(target, wrap, padding);
        prop_assert_eq!(body.len(), target);
        let verdict = judged(&body, &guardduty_match())?;
        prop_assert_eq!(matches!(verdict, Verdict::Fire { .. }), target <= MAX_MESSAGE_BYTES, "{:?}", verdict);
    }
}

fn guardduty_match() -> Vec<QueueMatch> {
    vec![QueueMatch {
        source: Some("aws.guardduty".into()),
        min_severity_milli: Some(7000),
        ..QueueMatch::default()
    }]
}

/// A GuardDuty finding of severity 8 whose body is exactly `target` bytes: `detail.padding` of
/// `piece`s, topped up with ASCII.
fn padded_guardduty(target: usize, wrap: bool, piece: &str) -> String {
    let build = |pieces: usize, ascii: usize| {
        let padding = format!("{}{}", piece.repeat(pieces), "x".repeat(ascii));
        let event = json!({"source": "aws.guardduty", "detail-type": "GuardDuty Finding",
            "detail": {"severity": 8, "padding": padding}})
        .to_string();
        if wrap {
            sns(&event, 0).to_string()
        } else {
            event
        }
    };
    let empty = build(0, 0).len();
    let per_piece = build(1, 0).len() - empty;
    let pieces = (target - empty) / per_piece;
    let body = build(pieces, 0);
    build(pieces, target - body.len())
}

#[test]
fn ten_thousand_deep_nesting_is_ignored_or_plain_text_never_a_crash() {
    let deep_array = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_object = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    let in_detail = format!(
        "{{\"source\": \"aws.guardduty\", \"detail\": {{\"severity\": 8, \"x\": {deep_array}}}}}"
    );
    let unclosed = "[".repeat(10_000);
    for body in [&deep_array, &deep_object, &in_detail, &unclosed] {
        for matches in [vec![], guardduty_match()] {
            let verdict = judged(body, &matches).expect("promises");
            assert!(
                matches!(&verdict, Verdict::Ignore { reason } if reason.starts_with("not JSON")),
                "{verdict:?}"
            );
        }
        // Inside an envelope the message is unreadable as JSON, so it is the envelope's plain
        // text: it fires without `match:` and matches nothing.
        let wrapped = sns(body, 0).to_string();
        assert!(matches!(
            judged(&wrapped, &[]).expect("promises"),
            Verdict::Fire { .. }
        ));
        assert!(matches!(
            judged(&wrapped, &guardduty_match()).expect("promises"),
            Verdict::Ignore { .. }
        ));
    }
}

#[test]
fn envelopes_inside_envelopes_are_unwrapped_once_and_never_blow_up() {
    let event = json!({"source": "aws.guardduty", "detail": {"severity": 8}}).to_string();
    let mut body = event;
    let mut level = 0u8;
    // Each level escapes the one inside: backslashes double, so the cap is reached quickly.
    while body.len() <= MAX_MESSAGE_BYTES * 2 {
        let verdict = judged(&body, &guardduty_match()).expect("promises");
        let fires = matches!(verdict, Verdict::Fire { .. });
        assert_eq!(fires, level <= 1, "level {level}: {verdict:?}");
        body = sns(&body, level).to_string();
        level += 1;
    }
    assert!(level > 5, "only {level} levels");
}

#[test]
fn bodies_at_the_cap_exactly() {
    for wrap in [false, true] {
        for (target, fires) in [
            (MAX_MESSAGE_BYTES - 1, true),
            (MAX_MESSAGE_BYTES, true),
            (MAX_MESSAGE_BYTES + 1, false),
        ] {
            let body = padded_guardduty(target, wrap, "é");
            assert_eq!(body.len(), target);
            let verdict = judged(&body, &guardduty_match()).expect("promises");
            assert_eq!(
                matches!(verdict, Verdict::Fire { .. }),
                fires,
                "{target}: {verdict:?}"
            );
        }
    }
    // 1 MiB (the SQS maximum) of anything is ignored unread.
    let huge = "[".repeat(1024 * 1024);
    assert!(matches!(
        judged(&huge, &[]).expect("promises"),
        Verdict::Ignore { reason } if reason.contains("larger than 256 KiB")
    ));
}
