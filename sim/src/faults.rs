//! Fault injection rules: which requests they select and what they do to them.
//! Owns only the rule types and matching; the server and the state machine apply the effects.

use serde::{Deserialize, Serialize};

/// All fault rules in force. Replaced whole by `SimHandle::set_faults` / `POST /_sim/faults`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    pub rules: Vec<FaultRule>,
}

/// One rule: selectors (None = any) and effects (default off). Every matching rule applies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultRule {
    /// Account id the request acts in.
    pub account: Option<String>,
    /// Region from the SigV4 credential scope.
    pub region: Option<String>,
    /// Operation name, e.g. `DisconnectCustomKeyStore`, `DescribeAlarms`, `AssumeRole`.
    pub operation: Option<String>,
    /// A rule with a store id selects only requests naming that store (Connect, Disconnect,
    /// Describe filtered by id), and only that store's transitions and Describe entry.
    pub custom_key_store_id: Option<String>,
    /// A rule with a key id selects only DisableKey / EnableKey / DescribeKey / ListAliases
    /// requests that resolve to that standard key (whichever form the KeyId took); of its
    /// effects those apply: `access_denied`, `internal_error_rate`, `dependency_timeout_rate`,
    /// `consistency_lag_ms`.
    pub key_id: Option<String>,
    /// Added before the response.
    pub latency_ms: u64,
    /// Probability of 500 KMSInternalException (KMS) / InternalFailure (CloudWatch, STS).
    pub internal_error_rate: f64,
    /// Probability of 400 ThrottlingException (Throttling for STS).
    pub throttle_rate: f64,
    /// Probability of closing the connection without any response.
    pub drop_connection_rate: f64,
    /// Probability of 500 DependencyTimeoutException on the standard-key operations.
    pub dependency_timeout_rate: f64,
    /// Refuse with AccessDeniedException (AccessDenied for STS).
    pub access_denied: bool,
    /// Overrides the world's transition delay for the stores it selects.
    pub transition_delay_ms: Option<u64>,
    /// Describe shows the selected stores as they were this many ms ago.
    pub consistency_lag_ms: Option<u64>,
    /// Disconnect leaves the store in DISCONNECTING for ever.
    pub stuck_disconnecting: bool,
    /// Connect goes CONNECTING → FAILED (ConnectionErrorCode NETWORK_ERRORS for CloudHSM,
    /// XKS_PROXY_TIMED_OUT for external stores) instead of CONNECTED.
    pub fail_on_connect: bool,
}

/// What a request (or a store inside one) is, for matching rules.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Selector<'a> {
    pub account: Option<&'a str>,
    pub region: Option<&'a str>,
    pub operation: &'a str,
    pub custom_key_store_id: Option<&'a str>,
    /// The standard key a request resolved to (set only by `keys.rs`, once it has resolved it).
    pub key_id: Option<&'a str>,
}

impl FaultRule {
    pub(crate) fn matches(&self, selector: &Selector<'_>) -> bool {
        fn field(rule: &Option<String>, value: Option<&str>) -> bool {
            match rule {
                None => true,
                Some(wanted) => value == Some(wanted.as_str()),
            }
        }
        field(&self.account, selector.account)
            && field(&self.region, selector.region)
            && field(&self.operation, Some(selector.operation))
            && field(&self.custom_key_store_id, selector.custom_key_store_id)
            && field(&self.key_id, selector.key_id)
    }
}

impl Faults {
    pub(crate) fn matching<'a>(
        &'a self,
        selector: &'a Selector<'a>,
    ) -> impl Iterator<Item = &'a FaultRule> + 'a {
        self.rules.iter().filter(move |rule| rule.matches(selector))
    }
}

/// Request-level effects of every matching rule, combined.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RequestEffects {
    pub latency_ms: u64,
    pub drop_connection: bool,
    pub access_denied: bool,
    pub throttle: bool,
    pub internal_error: bool,
}

impl RequestEffects {
    /// Roll the dice of every matching rule once.
    pub(crate) fn roll(faults: &Faults, selector: &Selector<'_>) -> RequestEffects {
        let mut effects = RequestEffects::default();
        for rule in faults.matching(selector) {
            effects.latency_ms = effects.latency_ms.saturating_add(rule.latency_ms);
            effects.access_denied |= rule.access_denied;
            effects.drop_connection |= chance(rule.drop_connection_rate);
            effects.throttle |= chance(rule.throttle_rate);
            effects.internal_error |= chance(rule.internal_error_rate);
        }
        effects
    }
}

pub(crate) fn chance(rate: f64) -> bool {
    rate > 0.0 && (rate >= 1.0 || fastrand::f64() < rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector<'a>(operation: &'a str, store: Option<&'a str>) -> Selector<'a> {
        Selector {
            account: Some("111111111111"),
            region: Some("eu-west-1"),
            operation,
            custom_key_store_id: store,
            key_id: None,
        }
    }

    #[test]
    fn empty_selectors_match_everything() {
        let rule = FaultRule::default();
        assert!(rule.matches(&selector("DescribeAlarms", None)));
    }

    #[test]
    fn store_selector_needs_the_store_named() {
        let rule = FaultRule {
            custom_key_store_id: Some("cks-00000000000000001".into()),
            ..FaultRule::default()
        };
        assert!(!rule.matches(&selector("DescribeCustomKeyStores", None)));
        assert!(rule.matches(&selector(
            "DisconnectCustomKeyStore",
            Some("cks-00000000000000001")
        )));
    }

    #[test]
    fn certain_rates_always_fire_and_zero_never() {
        let faults = Faults {
            rules: vec![FaultRule {
                throttle_rate: 1.0,
                latency_ms: 7,
                operation: Some("DescribeAlarms".into()),
                ..FaultRule::default()
            }],
        };
        let effects = RequestEffects::roll(&faults, &selector("DescribeAlarms", None));
        assert!(effects.throttle && !effects.internal_error && effects.latency_ms == 7);
        let other = RequestEffects::roll(&faults, &selector("SetAlarmState", None));
        assert!(!other.throttle && other.latency_ms == 0);
    }
}
