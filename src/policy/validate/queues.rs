//! `triggers.queues:`: SQS queue URLs (the region taken from an AWS URL), their roles, and the
//! `match:` entries (source, detail_type, min_severity, event_name). Owns the meaning and wording
//! of those fields only; the rest of `triggers:` is `triggers.rs`'s.

use std::collections::HashMap;

use serde_saphyr::Spanned;

use super::{Defaults, Validator};
use crate::policy::error::quoted;
use crate::policy::raw::{RawQueue, RawQueueMatch};
use crate::policy::{QueueMatch, QueueSpec};

/// SQS queue names are 1 to 80 characters of letters, digits, `-` and `_` (`.fifo` aside).
const MAX_QUEUE_NAME_CHARS: usize = 80;
/// GuardDuty severities run from 1.0 to 8.9 (10 leaves room for new levels).
const MAX_SEVERITY: f64 = 10.0;
/// Longest `source` / `detail_type` / `event_name` accepted: EventBridge's own limits are
/// shorter; anything longer is a pasted document, not a field value.
const MAX_MATCH_CHARS: usize = 256;

impl Validator {
    /// `triggers.queues:`; `None` when any entry is invalid or a duplicate.
    pub(super) fn queues(
        &mut self,
        raw: Option<Vec<Spanned<RawQueue>>>,
        defaults: Defaults<'_>,
    ) -> Option<Vec<QueueSpec>> {
        let mut queues = Vec::new();
        let mut complete = true;
        let mut listed: HashMap<String, u64> = HashMap::new();
        for (index, entry) in raw.unwrap_or_default().into_iter().enumerate() {
            let field = format!("triggers.queues[{index}]");
            let line = entry.referenced.line();
            let location = entry.referenced;
            match self.queue(entry.value, &location, &field, defaults) {
                Some(queue) => {
                    if let Some(earlier) = listed.insert(queue.url.clone(), line) {
                        self.problem(
                            Some(&location),
                            format!(
                                "{field}: queue {} is already listed at line {earlier}",
                                quoted(&queue.url)
                            ),
                        );
                        complete = false;
                    } else {
                        queues.push(queue);
                    }
                }
                None => complete = false,
            }
        }
        complete.then_some(queues)
    }

    fn queue(
        &mut self,
        queue: RawQueue,
        location: &serde_saphyr::Location,
        field: &str,
        defaults: Defaults<'_>,
    ) -> Option<QueueSpec> {
        let url = match &queue.url {
            Some(url) => match check_queue_url(&url.value) {
                Ok(parsed) => Some(parsed),
                Err(message) => {
                    self.problem(Some(&url.referenced), format!("{field}.url: {message}"));
                    None
                }
            },
            None => {
                self.problem(Some(location), format!("{field}: missing `url:`"));
                None
            }
        };
        let region = url.as_ref().and_then(|u| u.region.clone());
        let region_default = Defaults {
            region: region.as_deref().or(defaults.region),
            role_arn: defaults.role_arn,
        };
        let target = self.target(None, queue.role_arn.as_ref(), field, region_default);
        let mut matches = Some(Vec::new());
        if let Some(raw) = queue.matches {
            if raw.value.is_empty() {
                self.problem(
                    Some(&raw.referenced),
                    format!(
                        "{field}.match: is empty; leave `match:` out for \"every message fires\""
                    ),
                );
                matches = None;
            }
            for (index, entry) in raw.value.into_iter().enumerate() {
                let parsed = self.queue_match(entry, &format!("{field}.match[{index}]"));
                match (&mut matches, parsed) {
                    (Some(list), Some(one)) => list.push(one),
                    _ => matches = None,
                }
            }
        }
        Some(QueueSpec {
            url: url?.url,
            target: target?,
            matches: matches?,
        })
    }

    fn queue_match(&mut self, entry: Spanned<RawQueueMatch>, field: &str) -> Option<QueueMatch> {
        let raw = entry.value;
        if raw.source.is_none()
            && raw.detail_type.is_none()
            && raw.min_severity.is_none()
            && raw.event_name.is_none()
        {
            self.problem(
                Some(&entry.referenced),
                format!(
                    "{field}: names nothing to match: give source, detail_type, min_severity or event_name"
                ),
            );
            return None;
        }
        let mut valid = true;
        let mut text = |v: &mut Self, value: Option<Spanned<String>>, name: &str| match value {
            None => None,
            Some(value) => {
                let checked = v.name(&value, &format!("{field}.{name}"), MAX_MATCH_CHARS, name);
                valid &= checked.is_some();
                checked
            }
        };
        let source = text(self, raw.source, "source");
        let detail_type = text(self, raw.detail_type, "detail_type");
        let event_name = text(self, raw.event_name, "event_name");
        let min_severity_milli = match raw.min_severity {
            None => None,
            Some(severity) if (0.0..=MAX_SEVERITY).contains(&severity.value) => {
                Some((severity.value * 1000.0).round() as u32)
            }
            Some(severity) => {
                self.problem(
                    Some(&severity.referenced),
                    format!(
                        "{field}.min_severity: {} is not a GuardDuty severity (0 to {MAX_SEVERITY})",
                        severity.value
                    ),
                );
                valid = false;
                None
            }
        };
        valid.then_some(QueueMatch {
            source,
            detail_type,
            min_severity_milli,
            event_name,
        })
    }
}

/// A queue URL, checked, and the region its host names (None: not an AWS host, e.g. a VPC
/// endpoint or a simulator: `aws.region` applies).
struct QueueUrl {
    url: String,
    region: Option<String>,
}

/// `https://sqs.REGION.amazonaws.com/ACCOUNT/NAME` (or any http(s) host, e.g. a VPC endpoint),
/// or why not (one sentence).
fn check_queue_url(raw: &str) -> Result<QueueUrl, String> {
    let url = raw.trim();
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| {
            format!(
                "{} is not a queue URL: expected https://sqs.REGION.amazonaws.com/ACCOUNT/NAME",
                quoted(url)
            )
        })?;
    let (host, path) = rest
        .split_once('/')
        .ok_or_else(|| format!("{} has no /ACCOUNT/NAME path", quoted(url)))?;
    let mut parts = path.trim_end_matches('/').split('/');
    let (Some(account), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!(
            "{} has no /ACCOUNT/NAME path (the queue URL, not its ARN)",
            quoted(url)
        ));
    };
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{}: the account {} is not 12 digits",
            quoted(url),
            quoted(account)
        ));
    }
    let base = name.strip_suffix(".fifo").unwrap_or(name);
    if base.is_empty()
        || name.len() > MAX_QUEUE_NAME_CHARS
        || !base
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "{}: {} is not a queue name (1 to 80 letters, digits, - or _)",
            quoted(url),
            quoted(name)
        ));
    }
    let region = host
        .strip_prefix("sqs.")
        .and_then(|h| {
            h.strip_suffix(".amazonaws.com")
                .or_else(|| h.strip_suffix(".amazonaws.com.cn"))
        })
        .filter(|r| !r.is_empty() && !r.contains('.'))
        .map(str::to_owned);
    Ok(QueueUrl {
        url: url.to_owned(),
        region,
    })
}

#[cfg(test)]
mod tests {
    use crate::policy::test_support::*;

    fn with(queues: &str) -> String {
        format!("{MINIMAL}triggers:\n  queues:\n{queues}")
    }

    #[test]
    fn a_queue_takes_its_region_from_an_aws_url_and_matches_any_entry() {
        let policy = parse_ok(&with(
            "    - url: https://sqs.us-east-1.amazonaws.com/111122223333/host-a\n      match:\n        - source: aws.guardduty\n          min_severity: 7\n        - detail_type: AWS API Call via CloudTrail\n          event_name: ConnectCustomKeyStore\n    - url: http://127.0.0.1:4599/111111111111/sim\n",
        ));
        let queues = &policy.triggers.queues;
        assert_eq!(queues.len(), 2);
        assert_eq!(queues[0].target.region, "us-east-1");
        assert_eq!(queues[0].matches.len(), 2);
        assert_eq!(queues[0].matches[0].min_severity_milli, Some(7000));
        assert_eq!(
            queues[0].matches[1].event_name.as_deref(),
            Some("ConnectCustomKeyStore")
        );
        assert_eq!(queues[1].target.region, "eu-west-1");
        assert!(queues[1].matches.is_empty());
    }

    #[test]
    fn bad_queue_entries_are_one_line_errors_with_their_line() {
        assert_one_problem(
            &with("    - role_arn: arn:aws:iam::111122223333:role/x\n"),
            Some(8),
            "missing `url:`",
        );
        assert_one_problem(
            &with("    - url: arn:aws:sqs:eu-west-1:111122223333:q\n"),
            Some(8),
            "is not a queue URL",
        );
        assert_one_problem(
            &with("    - url: https://sqs.eu-west-1.amazonaws.com/1234/q\n"),
            Some(8),
            "is not 12 digits",
        );
        assert_one_problem(
            &with("    - url: https://sqs.eu-west-1.amazonaws.com/111122223333/a b\n"),
            Some(8),
            "is not a queue name",
        );
        assert_one_problem(
            &with("    - url: http://h/111122223333/q\n      match: []\n"),
            Some(9),
            "match: is empty",
        );
        assert_one_problem(
            &with("    - url: http://h/111122223333/q\n      match:\n        - {}\n"),
            Some(10),
            "names nothing to match",
        );
        assert_one_problem(
            &with("    - url: http://h/111122223333/q\n      match:\n        - min_severity: 11\n"),
            Some(10),
            "is not a GuardDuty severity",
        );
        assert_one_problem(
            &with("    - url: http://h/111122223333/q\n      match:\n        - colour: red\n"),
            Some(10),
            "unknown field `colour`",
        );
        assert_one_problem(
            &with("    - url: http://h/111122223333/q\n    - url: http://h/111122223333/q\n"),
            Some(9),
            "is already listed at line 8",
        );
        for problem in problems(&with("    - url: nope\n")) {
            assert!(!problem.message.contains('\n'), "{problem:?}");
        }
    }

    #[test]
    fn a_queue_alone_is_enough_of_a_trigger_and_alarms_take_transitions() {
        let policy = parse_ok(&format!(
            "{MINIMAL}triggers:\n  file: none\n  signal: none\n  queues:\n    - url: http://h/111122223333/q\n"
        ));
        assert_eq!(policy.triggers.queues.len(), 1);
        let policy = parse_ok(&format!(
            "{MINIMAL}triggers:\n  alarms:\n    - name: a\n      transitions: true\n    - name: b\n"
        ));
        assert!(policy.triggers.alarms[0].transitions);
        assert!(!policy.triggers.alarms[1].transitions);
    }
}
