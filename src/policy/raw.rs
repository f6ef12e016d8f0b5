//! Stage 1 of reading a policy: YAML text → the serde shapes of DESIGN.md §3, with
//! `deny_unknown_fields` everywhere. Every value that validation looks at is `Spanned` so its
//! problem can name a line and column; missing keys are `Option` so validation reports all of
//! them at once.
//!
//! Owns the parser's settings; must not judge values (that is `validate`) nor word YAML errors
//! (that is `error`).

use std::fmt;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::error::{Problem, yaml_problem};

/// Parse policy text into its raw shape, or the one YAML problem that stopped the parse.
pub(super) fn from_str(text: &str) -> Result<RawPolicy, Problem> {
    serde_saphyr::from_str_with_options(text, yaml_options()).map_err(|err| yaml_problem(&err))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) version: Option<Spanned<u32>>,
    pub(super) aws: Option<Spanned<RawAws>>,
    pub(super) key_stores: Option<Spanned<Vec<Spanned<RawKeyStore>>>>,
    pub(super) keys: Option<Spanned<Vec<Spanned<RawKey>>>>,
    pub(super) triggers: Option<Spanned<RawTriggers>>,
    pub(super) lockdown: Option<RawLockdown>,
    pub(super) state_file: Option<Spanned<String>>,
    pub(super) audit_log: Option<Spanned<String>>,
    pub(super) notify: Option<Spanned<Vec<Spanned<RawNotifySink>>>>,
    pub(super) heartbeat: Option<Spanned<RawHeartbeat>>,
    pub(super) metrics: Option<Spanned<RawMetrics>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAws {
    pub(super) region: Option<Spanned<String>>,
    pub(super) role_arn: Option<Spanned<String>>,
    pub(super) endpoint_url: Option<Spanned<String>>,
    pub(super) endpoints: Option<RawEndpoints>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEndpoints {
    pub(super) kms: Option<Spanned<String>>,
    pub(super) cloudwatch: Option<Spanned<String>>,
    pub(super) sts: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeyStore {
    pub(super) id: Option<Spanned<String>>,
    pub(super) name: Option<Spanned<String>>,
    pub(super) region: Option<Spanned<String>>,
    pub(super) role_arn: Option<Spanned<String>>,
    pub(super) all: Option<Spanned<bool>>,
}

/// One entry of `keys:` (a standard KMS key).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKey {
    pub(super) arn: Option<Spanned<String>>,
    pub(super) id: Option<Spanned<String>>,
    pub(super) alias: Option<Spanned<String>>,
    pub(super) region: Option<Spanned<String>>,
    pub(super) role_arn: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTriggers {
    pub(super) file: Option<Spanned<RawFileSetting>>,
    pub(super) signal: Option<Spanned<String>>,
    pub(super) alarms: Option<Vec<Spanned<RawAlarm>>>,
    pub(super) alarm_poll_interval: Option<Spanned<String>>,
    pub(super) fail_closed_after: Option<Spanned<String>>,
    pub(super) queues: Option<Vec<Spanned<RawQueue>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueue {
    pub(super) url: Option<Spanned<String>>,
    pub(super) role_arn: Option<Spanned<String>>,
    #[serde(rename = "match")]
    pub(super) matches: Option<Spanned<Vec<Spanned<RawQueueMatch>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueueMatch {
    pub(super) source: Option<Spanned<String>>,
    pub(super) detail_type: Option<Spanned<String>>,
    pub(super) min_severity: Option<Spanned<f64>>,
    pub(super) event_name: Option<Spanned<String>>,
}

/// `triggers.file`: a mapping, or the word `none`.
#[derive(Debug)]
pub(super) enum RawFileSetting {
    Keyword(String),
    Settings(RawFileTrigger),
}

impl<'de> Deserialize<'de> for RawFileSetting {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SettingVisitor;
        impl<'de> serde::de::Visitor<'de> for SettingVisitor {
            type Value = RawFileSetting;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`none` or a mapping with `path`")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(RawFileSetting::Keyword(value.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                // Delegating to the derived impl keeps deny_unknown_fields and the spans.
                RawFileTrigger::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawFileSetting::Settings)
            }
        }
        deserializer.deserialize_any(SettingVisitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFileTrigger {
    pub(super) path: Option<Spanned<String>>,
    pub(super) allow_untrusted_flag_dir: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlarm {
    pub(super) name: Option<Spanned<String>>,
    pub(super) region: Option<Spanned<String>>,
    pub(super) role_arn: Option<Spanned<String>>,
    pub(super) consecutive: Option<Spanned<u32>>,
    pub(super) transitions: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLockdown {
    pub(super) verify_timeout: Option<Spanned<String>>,
    pub(super) enforce_interval: Option<Spanned<String>>,
    pub(super) rate_limit: Option<Spanned<u32>>,
    pub(super) allow_unprotected: Option<bool>,
}

/// One entry of `notify:`: exactly one of `sns` / `webhook` (checked by validation).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotifySink {
    pub(super) sns: Option<Spanned<RawSns>>,
    pub(super) webhook: Option<Spanned<RawWebhook>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSns {
    pub(super) topic_arn: Option<Spanned<String>>,
    pub(super) role_arn: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    pub(super) url: Option<Spanned<String>>,
    pub(super) secret_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeartbeat {
    pub(super) namespace: Option<Spanned<String>>,
    pub(super) metric_name: Option<Spanned<String>>,
    pub(super) interval: Option<Spanned<String>>,
    pub(super) role_arn: Option<Spanned<String>>,
    pub(super) region: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) textfile: Option<Spanned<String>>,
}

/// Parser settings: duplicate keys are errors (serde-saphyr's default, restated because the
/// design depends on it), YAML 1.1 booleans like `no`/`off` are not booleans (the Norway
/// problem), no source snippets (the message must fit on one line), and the default budget
/// against alias bombs.
fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    options.strict_booleans = true;
    options.with_snippet = false;
    options
}

#[cfg(test)]
mod tests {
    use crate::policy::test_support::*;

    #[test]
    fn unknown_keys_are_errors_with_their_line() {
        assert_one_problem(
            &format!("{MINIMAL}colour: red\n"),
            Some(6),
            "unknown field `colour`, expected one of version",
        );
        assert_one_problem(
            &MINIMAL.replace(
                "  - id: cks-1234567890abcdef0",
                "  - id: cks-1234567890abcdef0\n    regoin: eu-west-2",
            ),
            Some(6),
            "unknown field `regoin`",
        );
        assert_one_problem(
            &format!("{MINIMAL}triggers:\n  file:\n    path: /run/x\n    mode: 0600\n"),
            Some(9),
            "unknown field `mode`",
        );
        assert_one_problem(
            &format!("{MINIMAL}lockdown:\n  timeout: 5s\n"),
            Some(7),
            "unknown field `timeout`",
        );
    }

    #[test]
    fn duplicate_keys_are_errors() {
        assert_one_problem(
            &format!("{MINIMAL}version: 1\n"),
            Some(6),
            "duplicate mapping key `version`",
        );
        assert_one_problem(
            &MINIMAL.replace(
                "  - id: cks-1234567890abcdef0",
                "  - id: cks-1234567890abcdef0\n    id: cks-1234567890abcdef1",
            ),
            Some(6),
            "duplicate mapping key `id`",
        );
    }

    #[test]
    fn syntax_errors_name_their_line() {
        assert_one_problem(
            "version: 1\naws:\n  region: \"eu-west-1\n",
            Some(3),
            "unclosed quote",
        );
        assert_one_problem(
            "version: 1\naws:\n  region: eu-west-1\n    role_arn: x\n",
            Some(4),
            "mapping values are not allowed",
        );
        assert_one_problem("version: 1\naws: {region: eu-west-1\n", Some(2), "");
    }

    #[test]
    fn a_document_that_is_not_a_mapping_is_an_error() {
        assert_one_problem("- version: 1\n", Some(1), "");
        assert_one_problem("just words\n", Some(1), "");
    }

    #[test]
    fn yaml_1_1_booleans_are_not_booleans() {
        assert_one_problem(
            &format!("{MINIMAL}triggers:\n  file:\n    allow_untrusted_flag_dir: no\n"),
            Some(8),
            "true or false",
        );
    }

    #[test]
    fn aliases_expand_but_an_alias_bomb_fails_before_expanding() {
        // 10^12 nodes if expanded. No field of the schema accepts a nested value, so the first
        // unknown key stops the parse before any alias is replayed; serde-saphyr's default
        // budget bounds what is left.
        let mut text = String::from("version: 1\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..12 {
            let prev = level - 1;
            let items = vec![format!("*a{prev}"); 10].join(", ");
            text.push_str(&format!("a{level}: &a{level} [{items}]\n"));
        }
        assert_one_problem(&text, Some(2), "unknown field `a0`");
        // Ordinary aliases work: the alarms reuse the key store list's shape.
        let policy = parse_ok(&format!(
            "{MINIMAL}  - name: &shared prod\ntriggers:\n  alarms:\n    - name: *shared\n"
        ));
        assert_eq!(policy.triggers.alarms[0].name, "prod");
    }
}
