//! Pacing: whose KMS quota a request draws on ([`PacerScope`]) and the token buckets that keep
//! every lockdown and enforcement round of one engine under it. The engine only calls
//! [`Pacer::acquire`] before each request; how the wait is computed stays in here. Knows nothing
//! of stores, reports or the audit log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::model::Target;

/// Share of `rate_limit` the pacer actually uses. AWS meters arrivals, we meter departures: a
/// request that travels faster than the one before it arrives "early", and at exactly the quota
/// that is a ThrottlingException. 10 % headroom absorbs ~20 ms of jitter per request.
const PACING_HEADROOM: f64 = 0.9;

/// The KMS operations the engine paces separately (each has its own 5/s quota).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Operation {
    Disconnect,
    Describe,
    /// A standard key's DisableKey (its own 5/s quota in KMS).
    DisableKey,
}

/// The shared pacers of one engine: one token bucket per (scope, operation), created on first
/// use, so lockdowns and enforcement rounds share the KMS quota.
pub(super) struct Pacer {
    /// The policy's `rate_limit`: requests per second per account, region and operation.
    rate_limit: u32,
    /// (scope, operation) → its bucket; shared by every lockdown of this engine.
    buckets: Mutex<HashMap<(PacerScope, Operation), Arc<TokenBucket>>>,
}

impl Pacer {
    pub(super) fn new(rate_limit: u32) -> Self {
        Pacer {
            rate_limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Wait until one `operation` request for `target` may leave, and count it.
    pub(super) async fn acquire(&self, target: &Target, operation: Operation) {
        self.bucket(target, operation).acquire().await;
    }

    fn bucket(&self, target: &Target, operation: Operation) -> Arc<TokenBucket> {
        // A panic while holding this lock leaves only a map of buckets, still consistent.
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets
            .entry((PacerScope::of(target), operation))
            .or_insert_with(|| Arc::new(TokenBucket::new(self.rate_limit)))
            .clone()
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` saved. Waiters are served in order
/// (tokio's mutex is fair), so concurrent stores share the quota without starving each other.
/// For a quota of `rate_limit`/s it refills at 90 % of it and saves one token less than AWS does
/// (see [`PACING_HEADROOM`]), so 10 stores in one account and region take ~1.3 s and AWS's own
/// bucket never runs dry.
struct TokenBucket {
    rate: f64,
    burst: f64,
    /// (tokens available, when they were counted).
    state: tokio::sync::Mutex<(f64, Instant)>,
}

impl TokenBucket {
    fn new(rate_limit: u32) -> Self {
        let quota = f64::from(rate_limit.max(1));
        let rate = quota * PACING_HEADROOM;
        let burst = (quota - 1.0).max(1.0);
        TokenBucket {
            rate,
            burst,
            state: tokio::sync::Mutex::new((burst, Instant::now())),
        }
    }

    /// Wait for one token and take it.
    async fn acquire(&self) {
        let mut state = self.state.lock().await;
        loop {
            let now = Instant::now();
            let refill = now.saturating_duration_since(state.1).as_secs_f64() * self.rate;
            state.0 = (state.0 + refill).min(self.burst);
            state.1 = now;
            // A hair of tolerance: float rounding must not cost a whole extra sleep.
            if state.0 >= 1.0 - 1e-9 {
                state.0 = (state.0 - 1.0).max(0.0);
                return;
            }
            let wait = Duration::from_secs_f64((1.0 - state.0) / self.rate);
            tokio::time::sleep(wait.max(Duration::from_micros(1))).await;
        }
    }
}

/// Whose quota a target's requests draw on. AWS meters per account and region; the account of
/// a target that assumes a role is in its ARN, so role targets in one account share buckets. A
/// target without a role has its own buckets: learning its account needs STS, and no Disconnect
/// may wait for STS (a host may reach KMS only through a VPC endpoint).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PacerScope {
    Account { account: String, region: String },
    Target(Target),
}

impl PacerScope {
    fn of(target: &Target) -> Self {
        match target.role_account().map(str::to_string) {
            Some(account) => PacerScope::Account {
                account,
                region: target.region.clone(),
            },
            None => PacerScope::Target(target.clone()),
        }
    }
}
