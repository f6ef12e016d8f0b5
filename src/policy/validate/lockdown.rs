//! `lockdown:`: the verification deadline, the enforcement period and the request rate, each
//! with its floor.

use std::time::Duration;

use serde_saphyr::Spanned;

use super::Validator;
use crate::policy::error::quoted;
use crate::policy::raw::RawLockdown;
use crate::policy::{
    DEFAULT_ENFORCE_INTERVAL, DEFAULT_RATE_LIMIT, DEFAULT_VERIFY_TIMEOUT, LockdownSettings,
    MIN_ENFORCE_INTERVAL, MIN_VERIFY_TIMEOUT,
};

impl Validator {
    pub(super) fn lockdown(&mut self, raw: Option<RawLockdown>) -> Option<LockdownSettings> {
        let raw = raw.unwrap_or_default();
        let verify_timeout = self.verify_timeout(raw.verify_timeout.as_ref());
        let enforce_interval = self.enforce_interval(raw.enforce_interval.as_ref());
        let rate_limit = self.rate_limit(raw.rate_limit);
        Some(LockdownSettings {
            verify_timeout: verify_timeout?,
            enforce_interval: enforce_interval?,
            rate_limit: rate_limit?,
        })
    }

    fn verify_timeout(&mut self, raw: Option<&Spanned<String>>) -> Option<Duration> {
        let Some(raw) = raw else {
            return Some(DEFAULT_VERIFY_TIMEOUT);
        };
        let timeout = self.duration(raw, "lockdown.verify_timeout")?;
        if timeout >= MIN_VERIFY_TIMEOUT {
            return Some(timeout);
        }
        self.problem(
            Some(&raw.referenced),
            format!(
                "lockdown.verify_timeout: {} is too short: must be at least {} (one \
                 DisconnectCustomKeyStore and one DescribeCustomKeyStores round trip \
                 to KMS cannot complete in less)",
                quoted(raw.value.trim()),
                humantime::format_duration(MIN_VERIFY_TIMEOUT)
            ),
        );
        None
    }

    /// `Some(None)` when `0s` (enforcement disabled), `None` when invalid.
    fn enforce_interval(&mut self, raw: Option<&Spanned<String>>) -> Option<Option<Duration>> {
        let Some(raw) = raw else {
            return Some(Some(DEFAULT_ENFORCE_INTERVAL));
        };
        let interval = self.duration(raw, "lockdown.enforce_interval")?;
        if interval.is_zero() {
            return Some(None);
        }
        if interval >= MIN_ENFORCE_INTERVAL {
            return Some(Some(interval));
        }
        self.problem(
            Some(&raw.referenced),
            format!(
                "lockdown.enforce_interval: {} is too short: must be `0s` (disabled) \
                 or at least {} (every round spends DescribeCustomKeyStores quota \
                 that a lockdown's verification shares)",
                quoted(raw.value.trim()),
                humantime::format_duration(MIN_ENFORCE_INTERVAL)
            ),
        );
        None
    }

    fn rate_limit(&mut self, raw: Option<Spanned<u32>>) -> Option<u32> {
        match raw {
            None => Some(DEFAULT_RATE_LIMIT),
            Some(limit) if limit.value > 0 => Some(limit.value),
            Some(limit) => {
                self.problem(
                    Some(&limit.referenced),
                    "lockdown.rate_limit: must be 1 or more (requests per second per account, region \
                     and operation)",
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::*;

    #[test]
    fn verify_timeout_must_leave_time_for_one_disconnect_and_describe() {
        let with = |value: &str| format!("{MINIMAL}lockdown:\n  verify_timeout: {value}\n");
        assert_one_problem(
            &with("999ms"),
            Some(7),
            "lockdown.verify_timeout: `999ms` is too short: must be at least 1s (one \
             DisconnectCustomKeyStore and one DescribeCustomKeyStores round trip",
        );
        assert_one_problem(&with("200ms"), Some(7), "is too short");
        assert_eq!(
            parse_ok(&with("1s")).lockdown.verify_timeout,
            MIN_VERIFY_TIMEOUT
        );
    }

    #[test]
    fn enforce_interval_is_0s_or_at_least_1s() {
        let with = |value: &str| format!("{MINIMAL}lockdown:\n  enforce_interval: {value}\n");
        assert_one_problem(
            &with("500ms"),
            Some(7),
            "lockdown.enforce_interval: `500ms` is too short: must be `0s` (disabled) or at least \
             1s (every round spends DescribeCustomKeyStores quota",
        );
        assert_one_problem(&with("1ms"), Some(7), "is too short");
        assert_eq!(parse_ok(&with("0s")).lockdown.enforce_interval, None);
        assert_eq!(
            parse_ok(&with("1s")).lockdown.enforce_interval,
            Some(MIN_ENFORCE_INTERVAL)
        );
    }

    #[test]
    fn enforce_interval_of_0s_disables_enforcement() {
        let policy = parse_ok(&format!("{MINIMAL}lockdown:\n  enforce_interval: 0s\n"));
        assert_eq!(policy.lockdown.enforce_interval, None);
        assert_one_problem(
            &format!("{MINIMAL}lockdown:\n  enforce_interval: 0\n"),
            Some(7),
            "has no unit",
        );
    }

    #[test]
    fn rate_limit_must_be_positive() {
        assert_one_problem(
            &format!("{MINIMAL}lockdown:\n  rate_limit: 0\n"),
            Some(7),
            "rate_limit: must be 1 or more",
        );
        assert_one_problem(
            &format!("{MINIMAL}lockdown:\n  rate_limit: -5\n"),
            Some(7),
            "expected a whole number",
        );
        assert_one_problem(
            &format!("{MINIMAL}lockdown:\n  rate_limit: 2.5\n"),
            Some(7),
            "expected a whole number",
        );
        assert_eq!(
            parse_ok(&format!("{MINIMAL}lockdown:\n  rate_limit: 20\n"))
                .lockdown
                .rate_limit,
            20
        );
    }

    #[test]
    fn allow_unprotected_is_off_unless_set_true() {
        assert!(!parse_ok(MINIMAL).allow_unprotected);
        let with = |value: &str| format!("{MINIMAL}lockdown:\n  allow_unprotected: {value}\n");
        assert!(parse_ok(&with("true")).allow_unprotected);
        assert!(!parse_ok(&with("false")).allow_unprotected);
        assert_one_problem(&with("yes"), Some(7), "true or false");
    }
}
