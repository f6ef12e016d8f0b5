//! `triggers:`, one function per kind of trigger (the flag file, the signal, the CloudWatch
//! alarms and their poll and fail-closed settings), and the rule that one must stay enabled.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::{Defaults, Validator};
use crate::policy::error::quoted;
use crate::policy::raw::{RawAlarm, RawFileSetting, RawTriggers};
use crate::policy::{
    AlarmSpec, DEFAULT_ALARM_POLL_INTERVAL, DEFAULT_FLAG_PATH, DEFAULT_SIGNAL, FileTrigger,
    MAX_ALARM_NAME_CHARS, MIN_ALARM_POLL_INTERVAL, SignalTrigger, Target, Triggers,
};

impl Validator {
    pub(super) fn triggers(
        &mut self,
        raw: Option<Spanned<RawTriggers>>,
        defaults: Defaults<'_>,
    ) -> Option<Triggers> {
        let (location, raw) = match raw {
            Some(raw) => (Some(raw.referenced), raw.value),
            None => (None, RawTriggers::default()),
        };
        let file = self.file_trigger(raw.file);
        let signal = self.signal_trigger(raw.signal);
        let alarms = self.alarms(raw.alarms, defaults);
        let alarm_poll_interval = self.alarm_poll_interval(raw.alarm_poll_interval.as_ref());
        let queues = self.queues(raw.queues, defaults);
        // Only when everything before it is valid: an invalid alarm entry may be the alarm that
        // fail_closed_after is for.
        let no_alarms = file.is_some()
            && signal.is_some()
            && alarm_poll_interval.is_some()
            && alarms.as_ref().is_some_and(Vec::is_empty);
        let fail_closed_after = self.fail_closed_after(
            raw.fail_closed_after.as_ref(),
            no_alarms,
            alarm_poll_interval,
        );
        let triggers = Triggers {
            file: file?,
            signal: signal?,
            alarms: alarms?,
            alarm_poll_interval: alarm_poll_interval?,
            fail_closed_after: fail_closed_after?,
            queues: queues?,
        };
        if triggers.file.is_none()
            && triggers.signal.is_none()
            && triggers.alarms.is_empty()
            && triggers.queues.is_empty()
        {
            self.problem(
                location.as_ref(),
                "triggers: every trigger is disabled (file: none, signal: none, no alarms): the daemon \
                 could never fire; keep at least one",
            );
            return None;
        }
        Some(triggers)
    }

    /// `triggers.file`: `Some(None)` when `none`, the default flag when absent, `None` when
    /// invalid.
    fn file_trigger(
        &mut self,
        raw: Option<Spanned<RawFileSetting>>,
    ) -> Option<Option<FileTrigger>> {
        let Some(setting) = raw else {
            return Some(Some(FileTrigger {
                path: PathBuf::from(DEFAULT_FLAG_PATH),
                allow_untrusted_flag_dir: false,
            }));
        };
        match setting.value {
            RawFileSetting::Keyword(word) if word.trim() == "none" => Some(None),
            RawFileSetting::Keyword(word) => {
                self.problem(
                    Some(&setting.referenced),
                    format!(
                        "triggers.file: {} is not valid: expected `none` or a mapping with `path:`",
                        quoted(&word)
                    ),
                );
                None
            }
            RawFileSetting::Settings(file) => {
                let path = match file.path {
                    Some(path) => self.file_path(&path, "triggers.file.path", DEFAULT_FLAG_PATH)?,
                    None => PathBuf::from(DEFAULT_FLAG_PATH),
                };
                Some(Some(FileTrigger {
                    path,
                    allow_untrusted_flag_dir: file.allow_untrusted_flag_dir.unwrap_or(false),
                }))
            }
        }
    }

    /// `triggers.signal`: `Some(None)` when `none`, [`DEFAULT_SIGNAL`] when absent, `None` when
    /// invalid.
    fn signal_trigger(&mut self, raw: Option<Spanned<String>>) -> Option<Option<SignalTrigger>> {
        match raw {
            None => Some(signal_by_name(DEFAULT_SIGNAL)),
            Some(signal) if signal.value.trim() == "none" => Some(None),
            Some(signal) => match check_signal(&signal.value) {
                Ok(trigger) => Some(Some(trigger)),
                Err(message) => {
                    self.problem(
                        Some(&signal.referenced),
                        format!("triggers.signal: {message}"),
                    );
                    None
                }
            },
        }
    }

    /// `triggers.alarms:`; `None` when any entry is invalid or a duplicate.
    fn alarms(
        &mut self,
        raw: Option<Vec<Spanned<RawAlarm>>>,
        defaults: Defaults<'_>,
    ) -> Option<Vec<AlarmSpec>> {
        let mut alarms = Vec::new();
        let mut complete = true;
        // First line of each alarm, to name the earlier entry of a duplicate.
        let mut listed: HashMap<(String, Target), u64> = HashMap::new();
        for (index, entry) in raw.unwrap_or_default().into_iter().enumerate() {
            let field = format!("triggers.alarms[{index}]");
            match self.alarm(entry, &field, defaults, &mut listed) {
                Some(alarm) => alarms.push(alarm),
                None => complete = false,
            }
        }
        complete.then_some(alarms)
    }

    /// One entry of `triggers.alarms:`: a name unique within its region and role.
    fn alarm(
        &mut self,
        entry: Spanned<RawAlarm>,
        field: &str,
        defaults: Defaults<'_>,
        listed: &mut HashMap<(String, Target), u64>,
    ) -> Option<AlarmSpec> {
        let location = entry.referenced;
        let alarm = entry.value;
        let name = match &alarm.name {
            Some(name) => self.name(
                name,
                &format!("{field}.name"),
                MAX_ALARM_NAME_CHARS,
                "alarm name",
            ),
            None => {
                self.problem(Some(&location), format!("{field}: missing `name:`"));
                None
            }
        };
        let target = self.target(
            alarm.region.as_ref(),
            alarm.role_arn.as_ref(),
            field,
            defaults,
        );
        let consecutive = self.consecutive(alarm.consecutive, field);
        let (Some(name), Some(target), Some(consecutive)) = (name, target, consecutive) else {
            return None;
        };
        if let Some(earlier) = listed.insert((name.clone(), target.clone()), location.line()) {
            self.problem(
                Some(&location),
                format!(
                    "{field}: alarm {} in {} is already listed at line {earlier}",
                    quoted(&name),
                    target.region
                ),
            );
            return None;
        }
        Some(AlarmSpec {
            name,
            target,
            consecutive,
            transitions: alarm.transitions.unwrap_or(false),
        })
    }

    /// `consecutive`: polls in ALARM before firing, 1 when absent.
    fn consecutive(&mut self, raw: Option<Spanned<u32>>, field: &str) -> Option<u32> {
        match raw {
            None => Some(1),
            Some(n) if n.value >= 1 => Some(n.value),
            Some(n) => {
                self.problem(
                    Some(&n.referenced),
                    format!(
                        "{field}.consecutive: must be 1 or more (the number of polls in ALARM before firing)"
                    ),
                );
                None
            }
        }
    }

    fn alarm_poll_interval(&mut self, raw: Option<&Spanned<String>>) -> Option<Duration> {
        let Some(raw) = raw else {
            return Some(DEFAULT_ALARM_POLL_INTERVAL);
        };
        let interval = self.duration(raw, "triggers.alarm_poll_interval")?;
        if interval >= MIN_ALARM_POLL_INTERVAL {
            return Some(interval);
        }
        self.problem(
            Some(&raw.referenced),
            format!(
                "triggers.alarm_poll_interval: must be at least {} (faster polling only \
                 spends the DescribeAlarms quota)",
                humantime::format_duration(MIN_ALARM_POLL_INTERVAL)
            ),
        );
        None
    }

    /// `triggers.fail_closed_after`: `Some(None)` when absent, `None` when invalid. It needs an
    /// alarm (`no_alarms` says the policy validly lists none) and must outlast one poll.
    fn fail_closed_after(
        &mut self,
        raw: Option<&Spanned<String>>,
        no_alarms: bool,
        alarm_poll_interval: Option<Duration>,
    ) -> Option<Option<Duration>> {
        let Some(raw) = raw else {
            return Some(None);
        };
        let after = self.positive_duration(raw, "triggers.fail_closed_after");
        let mut valid = after.is_some();
        if after.is_some() && no_alarms {
            self.problem(
                Some(&raw.referenced),
                "triggers.fail_closed_after: needs at least one alarm in triggers.alarms \
                 (it fires when the alarms stay unreadable)",
            );
            valid = false;
        }
        if let (Some(after), Some(poll)) = (after, alarm_poll_interval)
            && after < poll
        {
            self.problem(
                Some(&raw.referenced),
                format!(
                    "triggers.fail_closed_after: {} is shorter than alarm_poll_interval ({}): \
                     a single failed poll would lock down",
                    humantime::format_duration(after),
                    humantime::format_duration(poll)
                ),
            );
            valid = false;
        }
        valid.then_some(after)
    }
}

/// If `name` is a signal the policy accepts as a trigger, that signal. Accepts `SIGUSR1` and
/// `USR1` spellings, in any case.
fn signal_by_name(name: &str) -> Option<SignalTrigger> {
    check_signal(name).ok()
}

/// A trigger signal, or why `name` cannot be one (one sentence, for the policy error).
fn check_signal(name: &str) -> Result<SignalTrigger, String> {
    use signal_hook::consts::signal::*;
    let upper = name.trim().to_ascii_uppercase();
    let canonical = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    match canonical.as_str() {
        "SIGUSR1" => Ok(SignalTrigger {
            number: SIGUSR1,
            name: "SIGUSR1",
        }),
        "SIGUSR2" => Ok(SignalTrigger {
            number: SIGUSR2,
            name: "SIGUSR2",
        }),
        "SIGHUP" => Err(
            "SIGHUP cannot be the trigger: it means \"reload the policy\" (systemctl reload)"
                .to_owned(),
        ),
        "SIGTERM" | "SIGINT" | "SIGQUIT" => Err(format!(
            "{canonical} cannot be the trigger: it means \"stop\", and systemd sends it on every stop or restart"
        )),
        "SIGKILL" | "SIGSTOP" => Err(format!(
            "{canonical} cannot be the trigger: it can never be caught by a process"
        )),
        "SIGSEGV" | "SIGBUS" | "SIGILL" | "SIGFPE" | "SIGABRT" | "SIGTRAP" | "SIGSYS" => Err(
            format!("{canonical} cannot be the trigger: it reports a crash of the process itself"),
        ),
        "SIGCHLD" | "SIGPIPE" | "SIGALRM" | "SIGWINCH" | "SIGURG" | "SIGIO" | "SIGPOLL"
        | "SIGPROF" | "SIGVTALRM" | "SIGXCPU" | "SIGXFSZ" | "SIGTSTP" | "SIGTTIN" | "SIGTTOU"
        | "SIGCONT" | "SIGPWR" => Err(format!(
            "{canonical} cannot be the trigger: the kernel or the terminal sends it for unrelated reasons, \
             so it would lock down by accident; use SIGUSR1 or SIGUSR2"
        )),
        _ => Err(format!(
            "{} is not a signal name: expected SIGUSR1, SIGUSR2 or `none`",
            quoted(name)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::*;

    #[test]
    fn alarms_need_a_non_empty_name_and_consecutive_of_at_least_1() {
        let with = |alarms: &str| format!("{MINIMAL}triggers:\n  alarms:\n{alarms}");
        assert_one_problem(&with("    - name: \"\"\n"), Some(8), "alarm name is empty");
        assert_one_problem(
            &with("    - region: eu-west-1\n"),
            Some(8),
            "triggers.alarms[0]: missing `name:`",
        );
        assert_one_problem(
            &with(&format!("    - name: {}\n", "a".repeat(256))),
            Some(8),
            "longer than 255",
        );
        assert_one_problem(
            &with("    - name: a\n      consecutive: 0\n"),
            Some(9),
            "consecutive: must be 1 or more",
        );
        assert_one_problem(
            &with("    - name: a\n      consecutive: -1\n"),
            Some(9),
            "expected a whole number",
        );
        assert_one_problem(
            &with("    - name: a\n    - name: a\n"),
            Some(9),
            "alarm `a` in eu-west-1 is already listed at line 8",
        );
        let policy = parse_ok(&with(
            "    - name: a\n    - name: a\n      region: us-east-1\n",
        ));
        assert_eq!(policy.triggers.alarms.len(), 2);
    }

    #[test]
    fn alarm_poll_interval_must_be_at_least_a_second() {
        let with = |value: &str| format!("{MINIMAL}triggers:\n  alarm_poll_interval: {value}\n");
        assert_one_problem(&with("500ms"), Some(7), "must be at least 1s");
        assert_one_problem(&with("0s"), Some(7), "must be at least 1s");
        assert_eq!(
            parse_ok(&with("1s")).triggers.alarm_poll_interval,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn fail_closed_after_needs_alarms_and_outlasts_a_poll() {
        assert_one_problem(
            &format!("{MINIMAL}triggers:\n  fail_closed_after: 10m\n"),
            Some(7),
            "fail_closed_after: needs at least one alarm",
        );
        assert_one_problem(
            &format!(
                "{MINIMAL}triggers:\n  alarms:\n    - name: a\n  alarm_poll_interval: 30s\n  fail_closed_after: 10s\n"
            ),
            Some(10),
            "is shorter than alarm_poll_interval",
        );
        assert_one_problem(
            &format!("{MINIMAL}triggers:\n  alarms:\n    - name: a\n  fail_closed_after: 0s\n"),
            Some(9),
            "must be longer than 0s",
        );
    }

    #[test]
    fn signal_accepts_usr1_usr2_and_none() {
        let with = |value: &str| format!("{MINIMAL}triggers:\n  signal: {value}\n");
        let usr2 = signal_hook::consts::SIGUSR2;
        assert_eq!(
            parse_ok(&with("SIGUSR2")).triggers.signal,
            Some(SignalTrigger {
                number: usr2,
                name: "SIGUSR2"
            })
        );
        assert_eq!(
            parse_ok(&with("USR2")).triggers.signal.map(|s| s.name),
            Some("SIGUSR2")
        );
        assert_eq!(
            parse_ok(&with("sigusr1")).triggers.signal.map(|s| s.name),
            Some("SIGUSR1")
        );
        assert_eq!(parse_ok(&with("none")).triggers.signal, None);
        assert_eq!(
            signal_by_name("SIGUSR1").map(|s| s.number),
            Some(signal_hook::consts::SIGUSR1)
        );
        assert_eq!(signal_by_name("SIGHUP"), None);
    }

    #[test]
    fn signal_refuses_signals_with_another_meaning_and_says_why() {
        let with = |value: &str| format!("{MINIMAL}triggers:\n  signal: {value}\n");
        assert_one_problem(
            &with("SIGHUP"),
            Some(7),
            "SIGHUP cannot be the trigger: it means \"reload the policy\"",
        );
        assert_one_problem(&with("HUP"), Some(7), "SIGHUP cannot be the trigger");
        assert_one_problem(
            &with("SIGTERM"),
            Some(7),
            "systemd sends it on every stop or restart",
        );
        assert_one_problem(&with("SIGINT"), Some(7), "it means \"stop\"");
        assert_one_problem(&with("SIGKILL"), Some(7), "can never be caught");
        assert_one_problem(&with("SIGSTOP"), Some(7), "can never be caught");
        assert_one_problem(&with("SIGSEGV"), Some(7), "reports a crash");
        assert_one_problem(&with("SIGCHLD"), Some(7), "would lock down by accident");
        assert_one_problem(&with("SIGWINCH"), Some(7), "would lock down by accident");
        assert_one_problem(
            &with("SIGBOGUS"),
            Some(7),
            "`SIGBOGUS` is not a signal name: expected SIGUSR1, SIGUSR2 or `none`",
        );
        assert_one_problem(&with("10"), Some(7), "is not a signal name");
    }

    #[test]
    fn file_trigger_can_be_disabled_or_moved_and_its_path_must_be_absolute() {
        assert_eq!(
            parse_ok(&format!("{MINIMAL}triggers:\n  file: none\n"))
                .triggers
                .file,
            None
        );
        let moved = parse_ok(&format!(
            "{MINIMAL}triggers:\n  file:\n    path: /run/ks/flag\n"
        ));
        assert_eq!(
            moved.triggers.file.map(|f| f.path),
            Some(PathBuf::from("/run/ks/flag"))
        );
        let defaulted = parse_ok(&format!(
            "{MINIMAL}triggers:\n  file:\n    allow_untrusted_flag_dir: false\n"
        ));
        assert_eq!(
            defaulted.triggers.file.map(|f| f.path),
            Some(PathBuf::from(DEFAULT_FLAG_PATH))
        );
        assert_one_problem(
            &format!("{MINIMAL}triggers:\n  file:\n    path: run/flag\n"),
            Some(8),
            "must be an absolute path",
        );
        assert_one_problem(
            &format!("{MINIMAL}triggers:\n  file:\n    path: /\n"),
            Some(8),
            "must name a file",
        );
        assert_one_problem(
            &format!("{MINIMAL}triggers:\n  file: off\n"),
            Some(7),
            "expected `none` or a mapping with `path:`",
        );
        assert_one_problem(
            &format!("{MINIMAL}triggers:\n  file: [1]\n"),
            Some(7),
            "expected `none` or a mapping with `path`",
        );
    }

    #[test]
    fn at_least_one_trigger_must_stay_enabled() {
        assert_one_problem(
            &format!("{MINIMAL}triggers:\n  file: none\n  signal: none\n"),
            Some(7),
            "every trigger is disabled",
        );
        let alarm_only = parse_ok(&format!(
            "{MINIMAL}triggers:\n  file: none\n  signal: none\n  alarms:\n    - name: a\n"
        ));
        assert_eq!(alarm_only.triggers.alarms.len(), 1);
    }
}
