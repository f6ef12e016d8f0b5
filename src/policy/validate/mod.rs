//! Stage 2 of reading a policy: the raw serde shapes → a validated [`Policy`]. The
//! `Validator` walks the file one section at a time, one child module per section (`aws`,
//! `key_stores`, `triggers`, `lockdown`); this file holds the walk, the rules that span sections
//! and the checks for values of one kind wherever they appear (names, file paths, durations).
//! Each check records a [`Problem`] with the line and column of the value it is about and carries
//! on, so one run reports them all; a section with any invalid value yields `None`.
//!
//! Owns what each field means (formats, floors, defaults, rules across fields) and the wording
//! of those problems. Pure: no I/O, no tokio, no AWS; it must not parse YAML (that is `raw`).

mod aws;
mod key_stores;
mod keys;
mod lockdown;
mod notify;
mod queues;
mod triggers;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::error::{Problem, position, quoted};
use super::raw::RawPolicy;
use super::{
    DEFAULT_AUDIT_LOG, DEFAULT_STATE_FILE, MAX_DURATION, Policy, SUPPORTED_VERSION, Triggers,
};

/// Validate a parsed policy read from `path`: the policy (its `sha256` not yet set), or every
/// problem found, in file order.
pub(super) fn policy(raw: RawPolicy, path: &Path) -> Result<Policy, Vec<Problem>> {
    let mut validator = Validator::default();
    let policy = validator.policy(raw, path);
    match policy {
        Some(policy) if validator.problems.is_empty() => Ok(policy),
        _ => {
            let mut problems = validator.problems;
            if problems.is_empty() {
                // Every check that rejects a value records why; this only guards that invariant.
                problems.push(Problem {
                    position: None,
                    message: "the policy is incomplete (no specific problem was recorded)".into(),
                });
            }
            // File order reads best; problems without a position (missing keys) come first.
            problems.sort_by_key(|problem| problem.position.map(|p| (p.line, p.column)));
            Err(problems)
        }
    }
}

/// `aws.region` / `aws.role_arn`, for the key stores and alarms that name neither; `None` when
/// missing or invalid (reported once, at `aws:`, not again for every entry).
#[derive(Debug, Clone, Copy)]
struct Defaults<'a> {
    region: Option<&'a str>,
    role_arn: Option<&'a str>,
}

/// The problems found so far.
#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

// The whole file: its sections, and the rules that span them.
impl Validator {
    fn problem(&mut self, location: Option<&Location>, message: impl Into<String>) {
        self.problems.push(Problem {
            position: location.copied().and_then(position),
            message: message.into(),
        });
    }

    fn policy(&mut self, raw: RawPolicy, path: &Path) -> Option<Policy> {
        self.version(raw.version.as_ref());
        let (region, role_arn, endpoints) = self.aws(raw.aws);
        let defaults = Defaults {
            region: region.as_deref(),
            role_arn: role_arn.as_deref(),
        };
        let key_stores = self.key_stores(raw.key_stores, defaults);
        let keys = self.keys(raw.keys, defaults);
        let triggers = self.triggers(raw.triggers, defaults);
        let allow_unprotected = raw
            .lockdown
            .as_ref()
            .and_then(|lockdown| lockdown.allow_unprotected)
            .unwrap_or(false);
        let lockdown = self.lockdown(raw.lockdown);
        let state_file = self.absolute_path(raw.state_file, "state_file", DEFAULT_STATE_FILE);
        let audit_log = self.absolute_path(raw.audit_log, "audit_log", DEFAULT_AUDIT_LOG);
        self.distinct_files(triggers.as_ref(), state_file.as_ref(), audit_log.as_ref());
        let notify = self.notify(raw.notify, defaults);
        let heartbeat = self.heartbeat(raw.heartbeat, defaults);
        let metrics = self.metrics(raw.metrics);
        Some(Policy {
            path: path.to_owned(),
            sha256: String::new(),
            region: region?,
            role_arn,
            endpoints,
            key_stores: key_stores?,
            keys: keys?,
            allow_unprotected,
            triggers: triggers?,
            lockdown: lockdown?,
            state_file: state_file?.0,
            audit_log: audit_log?.0,
            notify: notify?,
            heartbeat: heartbeat?,
            metrics: metrics?,
        })
    }

    fn version(&mut self, version: Option<&Spanned<u32>>) {
        match version {
            None => self.problem(None, "missing `version: 1` at the top of the file"),
            Some(version) if version.value != SUPPORTED_VERSION => self.problem(
                Some(&version.referenced),
                format!(
                    "version: {} is not supported: this build reads version {SUPPORTED_VERSION}",
                    version.value
                ),
            ),
            Some(_) => {}
        }
    }

    /// The files the daemon writes (`state_file`, `audit_log`) and the flag it watches must be
    /// three different files.
    fn distinct_files(
        &mut self,
        triggers: Option<&Triggers>,
        state_file: Option<&(PathBuf, Option<Location>)>,
        audit_log: Option<&(PathBuf, Option<Location>)>,
    ) {
        let (Some((state_file, state_location)), Some((audit_log, _))) = (state_file, audit_log)
        else {
            return;
        };
        if state_file == audit_log {
            self.problem(
                state_location.as_ref(),
                "state_file and audit_log are the same file: each needs its own",
            );
        }
        if let Some(flag) = triggers.and_then(|triggers| triggers.file.as_ref())
            && (&flag.path == state_file || &flag.path == audit_log)
        {
            self.problem(
                None,
                format!(
                    "triggers.file.path {} is also the state_file or audit_log: the daemon writes \
                     those, so it would trip itself",
                    flag.path.display()
                ),
            );
        }
    }
}

// Values of one kind, wherever they appear: names, file paths and durations.
impl Validator {
    /// A non-empty, single-line name of at most `max_chars` characters.
    fn name(
        &mut self,
        name: &Spanned<String>,
        field: &str,
        max_chars: usize,
        what: &str,
    ) -> Option<String> {
        let value = name.value.trim();
        let message = if value.is_empty() {
            format!("{field}: the {what} is empty")
        } else if value.chars().count() > max_chars {
            format!("{field}: the {what} is longer than {max_chars} characters")
        } else if value.chars().any(char::is_control) {
            format!(
                "{field}: the {what} {} contains control characters",
                quoted(value)
            )
        } else {
            return Some(value.to_owned());
        };
        self.problem(Some(&name.referenced), message);
        None
    }

    /// An absolute path that names a file; `example` is shown when it is not absolute.
    fn file_path(&mut self, raw: &Spanned<String>, field: &str, example: &str) -> Option<PathBuf> {
        let value = PathBuf::from(&raw.value);
        let message = if !value.is_absolute() {
            format!(
                "{field}: {} must be an absolute path, like `{example}`",
                quoted(&raw.value)
            )
        } else if value.file_name().is_none() {
            format!(
                "{field}: {} must name a file, not a directory",
                quoted(&raw.value)
            )
        } else if raw.value.contains('\0') {
            format!("{field}: contains a NUL character")
        } else {
            return Some(value);
        };
        self.problem(Some(&raw.referenced), message);
        None
    }

    /// `state_file` / `audit_log`: an absolute file path, or the default. Returns the path and
    /// where it was written.
    fn absolute_path(
        &mut self,
        raw: Option<Spanned<String>>,
        field: &str,
        default: &str,
    ) -> Option<(PathBuf, Option<Location>)> {
        let Some(raw) = raw else {
            return Some((PathBuf::from(default), None));
        };
        let path = self.file_path(&raw, field, default)?;
        Some((path, Some(raw.referenced)))
    }

    /// A duration written with its unit (`500ms`, `15s`, `2m`, `1h`), at most [`MAX_DURATION`].
    fn duration(&mut self, raw: &Spanned<String>, field: &str) -> Option<Duration> {
        let value = raw.value.trim();
        let message = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
            format!(
                "{field}: {} has no unit: write e.g. `{value}s` or `{value}ms`",
                quoted(value)
            )
        } else {
            match humantime::parse_duration(value) {
                Ok(duration) if duration <= MAX_DURATION => return Some(duration),
                Ok(_) => format!(
                    "{field}: {} is longer than the maximum of {}",
                    quoted(value),
                    humantime::format_duration(MAX_DURATION)
                ),
                // humantime's own message lists every unit spelling: too long for one line.
                Err(_) => format!(
                    "{field}: {} is not a duration: expected a number and a unit, like \
                     `500ms`, `15s`, `2m` or `1h`",
                    quoted(value)
                ),
            }
        };
        self.problem(Some(&raw.referenced), message);
        None
    }

    fn positive_duration(&mut self, raw: &Spanned<String>, field: &str) -> Option<Duration> {
        let duration = self.duration(raw, field)?;
        if duration.is_zero() {
            self.problem(
                Some(&raw.referenced),
                format!("{field}: must be longer than 0s"),
            );
            return None;
        }
        Some(duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::*;

    #[test]
    fn version_is_required_and_must_be_1() {
        assert_one_problem(
            &MINIMAL.replace("version: 1\n", ""),
            None,
            "missing `version: 1`",
        );
        assert_one_problem(
            &MINIMAL.replace("version: 1", "version: 2"),
            Some(1),
            "version: 2 is not supported",
        );
        assert_one_problem(
            &MINIMAL.replace("version: 1", "version: one"),
            Some(1),
            "expected a whole number",
        );
    }

    #[test]
    fn durations_need_a_unit_and_must_fit() {
        let with = |key: &str, value: &str| format!("{MINIMAL}lockdown:\n  {key}: {value}\n");
        assert_one_problem(
            &with("verify_timeout", "15"),
            Some(7),
            "`15` has no unit: write e.g. `15s` or `15ms`",
        );
        assert_one_problem(&with("verify_timeout", "0"), Some(7), "has no unit");
        assert_one_problem(
            &with("verify_timeout", "fast"),
            Some(7),
            "`fast` is not a duration: expected a number and a unit",
        );
        assert_one_problem(&with("verify_timeout", "1.5"), Some(7), "is not a duration");
        assert_one_problem(
            &with("verify_timeout", "0s"),
            Some(7),
            "verify_timeout: `0s` is too short: must be at least 1s",
        );
        assert_one_problem(
            &with("verify_timeout", "2days"),
            Some(7),
            "longer than the maximum of 1day",
        );
        assert_one_problem(&with("verify_timeout", "[1]"), Some(7), "");
        assert_eq!(
            parse_ok(&with("verify_timeout", "1500ms"))
                .lockdown
                .verify_timeout,
            Duration::from_millis(1500)
        );
        assert_eq!(
            parse_ok(&with("verify_timeout", "2m"))
                .lockdown
                .verify_timeout,
            Duration::from_secs(120)
        );
        assert_eq!(
            parse_ok(&with("verify_timeout", "1h"))
                .lockdown
                .verify_timeout,
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn state_file_and_audit_log_must_be_absolute_and_distinct() {
        assert_one_problem(
            &format!("{MINIMAL}state_file: latch.json\n"),
            Some(6),
            "state_file: `latch.json` must be an absolute path",
        );
        assert_one_problem(
            &format!("{MINIMAL}audit_log: ./audit.jsonl\n"),
            Some(6),
            "audit_log: `./audit.jsonl` must be an absolute path",
        );
        assert_one_problem(
            &format!("{MINIMAL}state_file: /var/lib/ks/x\naudit_log: /var/lib/ks/x\n"),
            Some(6),
            "state_file and audit_log are the same file",
        );
        assert_one_problem(
            &format!("{MINIMAL}state_file: /run/kms-killswitch\n"),
            None,
            "it would trip itself",
        );
    }

    #[test]
    fn every_semantic_problem_is_reported_in_file_order() {
        let text = "version: 2
aws:
  region: eu_west_1
key_stores:
  - id: cks-123
  - name: \"\"
triggers:
  signal: SIGHUP
lockdown:
  verify_timeout: 15
  rate_limit: 0
audit_log: audit.jsonl
";
        let problems = problems(text);
        let lines: Vec<Option<u64>> = problems
            .iter()
            .map(|p| p.position.map(|p| p.line))
            .collect();
        assert_eq!(
            lines,
            vec![
                Some(1),
                Some(3),
                Some(5),
                Some(6),
                Some(8),
                Some(10),
                Some(11),
                Some(12)
            ]
        );
    }
}
