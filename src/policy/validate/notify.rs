//! `notify:`, `heartbeat:` and `metrics:` (DESIGN.md §3, §9): where the switch says that it
//! fired and that it is alive. Knows the shapes of SNS topic ARNs, webhook URLs, CloudWatch
//! namespaces and the textfile path; reads no file (the webhook secret is read by the notifier).

use serde_saphyr::Spanned;

use super::aws::{is_loopback, is_region, region_partition};
use super::{Defaults, Validator};
use crate::policy::error::quoted;
use crate::policy::raw::{RawHeartbeat, RawMetrics, RawNotifySink, RawSns, RawWebhook};
use crate::policy::{
    DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_METRIC, HeartbeatSettings,
    MIN_HEARTBEAT_INTERVAL, MetricsSettings, NotifySink,
};

/// CloudWatch namespaces and metric names are 1 to 255 characters (API reference).
const MAX_METRIC_CHARS: usize = 255;
/// SNS topic names are 1 to 256 characters (API reference).
const MAX_TOPIC_NAME_CHARS: usize = 256;

impl Validator {
    /// `notify:` → its sinks in order (empty when absent).
    pub(super) fn notify(
        &mut self,
        raw: Option<Spanned<Vec<Spanned<RawNotifySink>>>>,
        defaults: Defaults<'_>,
    ) -> Option<Vec<NotifySink>> {
        let Some(raw) = raw else {
            return Some(Vec::new());
        };
        let mut sinks = Some(Vec::new());
        for (index, entry) in raw.value.into_iter().enumerate() {
            let field = format!("notify[{index}]");
            let sink = match (entry.value.sns, entry.value.webhook) {
                (Some(sns), None) => self.sns(sns, &field, defaults),
                (None, Some(webhook)) => self.webhook(webhook, &field),
                _ => {
                    self.problem(
                        Some(&entry.referenced),
                        format!("{field}: give exactly one of `sns:` or `webhook:`"),
                    );
                    None
                }
            };
            match (sink, sinks.as_mut()) {
                (Some(sink), Some(list)) => list.push(sink),
                _ => sinks = None,
            }
        }
        sinks
    }

    fn sns(
        &mut self,
        raw: Spanned<RawSns>,
        field: &str,
        defaults: Defaults<'_>,
    ) -> Option<NotifySink> {
        let field = format!("{field}.sns");
        let Some(arn) = raw.value.topic_arn else {
            self.problem(
                Some(&raw.referenced),
                format!("{field}: missing `topic_arn:`"),
            );
            return None;
        };
        let value = arn.value.trim();
        let Some(region) = topic_region(value) else {
            self.problem(
                Some(&arn.referenced),
                format!(
                    "{field}.topic_arn: {} is not an SNS topic ARN: expected \
                     `arn:aws:sns:<region>:<12-digit account>:<topic name>`",
                    quoted(value)
                ),
            );
            return None;
        };
        let defaults = Defaults {
            region: Some(region),
            role_arn: defaults.role_arn,
        };
        let target = self.target(None, raw.value.role_arn.as_ref(), &field, defaults)?;
        Some(NotifySink::Sns {
            topic_arn: value.to_owned(),
            target,
        })
    }

    fn webhook(&mut self, raw: Spanned<RawWebhook>, field: &str) -> Option<NotifySink> {
        let field = format!("{field}.webhook");
        let Some(url) = raw.value.url else {
            self.problem(Some(&raw.referenced), format!("{field}: missing `url:`"));
            return None;
        };
        let url = self.webhook_url(&url, &format!("{field}.url"));
        let secret_file = match &raw.value.secret_file {
            Some(path) => Some(self.file_path(
                path,
                &format!("{field}.secret_file"),
                "/etc/kms-killswitch/webhook.secret",
            )?),
            None => None,
        };
        Some(NotifySink::Webhook {
            url: url?,
            secret_file,
        })
    }

    /// `https://` anywhere, `http://` only to this machine; no user name or password in it.
    fn webhook_url(&mut self, url: &Spanned<String>, field: &str) -> Option<String> {
        let value = url.value.trim();
        let message = match url::Url::parse(value) {
            Err(err) => format!(
                "{field}: {} is not a URL ({err}): expected e.g. `https://hooks.example.com/kms`",
                quoted(value)
            ),
            Ok(parsed) if !matches!(parsed.scheme(), "http" | "https") => {
                format!("{field}: {} must be an https:// URL", quoted(value))
            }
            Ok(parsed) if parsed.host_str().is_none_or(str::is_empty) => {
                format!("{field}: {} has no host", quoted(value))
            }
            // Never echo the URL here: it holds what looks like a secret.
            Ok(parsed) if !parsed.username().is_empty() || parsed.password().is_some() => format!(
                "{field}: the URL contains a user name or password; sign with `secret_file` instead"
            ),
            Ok(parsed) if parsed.scheme() == "http" && !is_loopback(&parsed) => format!(
                "{field}: {} uses http:// to a host that is not loopback: use https:// (http:// \
                 only to 127.0.0.0/8, ::1 or localhost)",
                quoted(value)
            ),
            Ok(_) => return Some(value.to_owned()),
        };
        self.problem(Some(&url.referenced), message);
        None
    }

    /// `heartbeat:` → its settings; `Some(None)` when absent.
    pub(super) fn heartbeat(
        &mut self,
        raw: Option<Spanned<RawHeartbeat>>,
        defaults: Defaults<'_>,
    ) -> Option<Option<HeartbeatSettings>> {
        let Some(raw) = raw else {
            return Some(None);
        };
        let location = raw.referenced;
        let raw = raw.value;
        let namespace = match &raw.namespace {
            None => {
                self.problem(Some(&location), "heartbeat: missing `namespace:`");
                None
            }
            Some(namespace) => self.namespace(namespace),
        };
        let metric_name = match &raw.metric_name {
            None => Some(DEFAULT_HEARTBEAT_METRIC.to_owned()),
            Some(name) => self.name(
                name,
                "heartbeat.metric_name",
                MAX_METRIC_CHARS,
                "metric name",
            ),
        };
        let interval = match &raw.interval {
            None => Some(DEFAULT_HEARTBEAT_INTERVAL),
            Some(interval) => self.heartbeat_interval(interval),
        };
        let target = self.target(
            raw.region.as_ref(),
            raw.role_arn.as_ref(),
            "heartbeat",
            defaults,
        );
        Some(Some(HeartbeatSettings {
            namespace: namespace?,
            metric_name: metric_name?,
            interval: interval?,
            target: target?,
        }))
    }

    fn namespace(&mut self, raw: &Spanned<String>) -> Option<String> {
        let namespace = self.name(raw, "heartbeat.namespace", MAX_METRIC_CHARS, "namespace")?;
        if namespace.starts_with("AWS/") {
            self.problem(
                Some(&raw.referenced),
                format!(
                    "heartbeat.namespace: {} is reserved for AWS services: use your own, like `KmsKillswitch`",
                    quoted(&namespace)
                ),
            );
            return None;
        }
        Some(namespace)
    }

    fn heartbeat_interval(&mut self, raw: &Spanned<String>) -> Option<std::time::Duration> {
        let interval = self.duration(raw, "heartbeat.interval")?;
        if interval < MIN_HEARTBEAT_INTERVAL {
            self.problem(
                Some(&raw.referenced),
                format!(
                    "heartbeat.interval: {} is too short: must be at least 1s",
                    quoted(raw.value.trim())
                ),
            );
            return None;
        }
        Some(interval)
    }

    /// `metrics:` → its settings; `Some(None)` when absent.
    pub(super) fn metrics(
        &mut self,
        raw: Option<Spanned<RawMetrics>>,
    ) -> Option<Option<MetricsSettings>> {
        let Some(raw) = raw else {
            return Some(None);
        };
        let Some(textfile) = &raw.value.textfile else {
            self.problem(Some(&raw.referenced), "metrics: missing `textfile:`");
            return None;
        };
        let example = "/var/lib/prometheus/node-exporter/kms_killswitch.prom";
        let path = self.file_path(textfile, "metrics.textfile", example)?;
        if path.extension().is_none_or(|ext| ext != "prom") {
            self.problem(
                Some(&textfile.referenced),
                format!(
                    "metrics.textfile: {} must end in `.prom` (node_exporter's textfile collector reads only those)",
                    quoted(&textfile.value)
                ),
            );
            return None;
        }
        Some(Some(MetricsSettings { textfile: path }))
    }
}

/// The region of `arn:<partition>:sns:<region>:<12 digits>:<name>`, or `None` when `arn` is not
/// a topic ARN in the region's partition.
fn topic_region(arn: &str) -> Option<&str> {
    let mut fields = arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("sns"), Some(region), Some(account), Some(name)) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return None;
    };
    let base = name.strip_suffix(".fifo").unwrap_or(name);
    let name_ok = !base.is_empty()
        && name.len() <= MAX_TOPIC_NAME_CHARS
        && base
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (is_region(region)
        && region_partition(region) == partition
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && name_ok)
        .then_some(region)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use crate::model::Target;
    use crate::policy::NotifySink;
    use crate::policy::test_support::*;

    const TOPIC: &str = "arn:aws:sns:us-east-1:111122223333:kms-killswitch";

    #[test]
    fn notify_lists_sns_topics_and_webhooks_in_order() {
        let policy = parse_ok(&format!(
            "{MINIMAL}notify:\n  - sns: {{topic_arn: {TOPIC}}}\n  - webhook: {{url: \"https://hooks.example.com/kms\", secret_file: /etc/kms-killswitch/webhook.secret}}\n  - webhook: {{url: \"http://127.0.0.1:8080/hook\"}}\n"
        ));
        assert_eq!(
            policy.notify,
            vec![
                NotifySink::Sns {
                    topic_arn: TOPIC.into(),
                    target: Target {
                        region: "us-east-1".into(),
                        role_arn: None
                    },
                },
                NotifySink::Webhook {
                    url: "https://hooks.example.com/kms".into(),
                    secret_file: Some(PathBuf::from("/etc/kms-killswitch/webhook.secret")),
                },
                NotifySink::Webhook {
                    url: "http://127.0.0.1:8080/hook".into(),
                    secret_file: None,
                },
            ]
        );
        assert!(parse_ok(MINIMAL).notify.is_empty());
    }

    #[test]
    fn a_topic_arn_must_be_one_and_sinks_take_one_kind_each() {
        let with = |entry: &str| format!("{MINIMAL}notify:\n  - {entry}\n");
        assert_one_problem(
            &with("sns: {topic_arn: kms-killswitch}"),
            Some(7),
            "is not an SNS topic ARN",
        );
        assert_one_problem(
            &with("sns: {topic_arn: \"arn:aws-cn:sns:eu-west-1:111122223333:t\"}"),
            Some(7),
            "is not an SNS topic ARN",
        );
        assert_one_problem(&with("sns: {}"), Some(7), "missing `topic_arn:`");
        assert_one_problem(
            &format!(
                "{MINIMAL}notify:\n  - sns: {{topic_arn: {TOPIC}}}\n    webhook: {{url: \"https://x.example\"}}\n"
            ),
            Some(7),
            "exactly one of `sns:` or `webhook:`",
        );
        assert_one_problem(
            &with("email: a@example.com"),
            Some(7),
            "unknown field `email`",
        );
    }

    #[test]
    fn webhooks_are_https_or_loopback_http_without_credentials() {
        let with = |url: &str| format!("{MINIMAL}notify:\n  - webhook: {{url: \"{url}\"}}\n");
        assert_one_problem(
            &with("http://hooks.example.com/kms"),
            Some(7),
            "uses http:// to a host that is not loopback",
        );
        assert_one_problem(
            &with("ftp://hooks.example.com/"),
            Some(7),
            "must be an https:// URL",
        );
        let problems = problems(&with("https://user:hunter2@hooks.example.com/"));
        assert!(problems[0].message.contains("user name or password"));
        assert!(!problems[0].message.contains("hunter2"), "{problems:?}");
        assert_one_problem(
            &format!(
                "{MINIMAL}notify:\n  - webhook: {{url: \"https://x.example\", secret_file: secret}}\n"
            ),
            Some(7),
            "secret_file: `secret` must be an absolute path",
        );
        parse_ok(&with("http://localhost:9000/hook"));
        parse_ok(&with("http://[::1]:9000/hook"));
    }

    #[test]
    fn heartbeat_needs_a_namespace_and_an_interval_from_1s() {
        let policy = parse_ok(&format!(
            "{MINIMAL}heartbeat:\n  namespace: KmsKillswitch\n"
        ));
        let heartbeat = policy.heartbeat.expect("heartbeat");
        assert_eq!(heartbeat.metric_name, "Heartbeat");
        assert_eq!(heartbeat.interval, Duration::from_secs(60));
        assert_eq!(heartbeat.target.region, "eu-west-1");
        let policy = parse_ok(&format!(
            "{MINIMAL}heartbeat:\n  namespace: Ops\n  metric_name: Alive\n  interval: 1s\n  region: us-east-1\n"
        ));
        let heartbeat = policy.heartbeat.expect("heartbeat");
        assert_eq!(
            (
                heartbeat.metric_name.as_str(),
                heartbeat.interval,
                heartbeat.target.region.as_str()
            ),
            ("Alive", Duration::from_secs(1), "us-east-1")
        );
        assert_one_problem(
            &format!("{MINIMAL}heartbeat:\n  interval: 5s\n"),
            Some(7),
            "missing `namespace:`",
        );
        assert_one_problem(
            &format!("{MINIMAL}heartbeat:\n  namespace: AWS/KMS\n"),
            Some(7),
            "reserved for AWS services",
        );
        assert_one_problem(
            &format!("{MINIMAL}heartbeat:\n  namespace: Ops\n  interval: 500ms\n"),
            Some(8),
            "heartbeat.interval: `500ms` is too short",
        );
        assert!(parse_ok(MINIMAL).heartbeat.is_none());
    }

    #[test]
    fn metrics_textfile_is_an_absolute_prom_file() {
        let policy = parse_ok(&format!(
            "{MINIMAL}metrics:\n  textfile: /var/lib/node/ks.prom\n"
        ));
        assert_eq!(
            policy.metrics.expect("metrics").textfile,
            PathBuf::from("/var/lib/node/ks.prom")
        );
        assert_one_problem(
            &format!("{MINIMAL}metrics:\n  textfile: /var/lib/node/ks.txt\n"),
            Some(7),
            "must end in `.prom`",
        );
        assert_one_problem(
            &format!("{MINIMAL}metrics:\n  textfile: ks.prom\n"),
            Some(7),
            "must be an absolute path",
        );
    }
}
