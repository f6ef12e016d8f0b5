//! Pacing: whose KMS quota a request draws on ([`PacerScope`]) and the token buckets that keep
//! every lockdown and enforcement round of one engine under it. The engine calls
//! [`Pacer::acquire`] immediately before each send (after its audit record is durable, so no
//! fsync sits between a token and its request) and [`Pacer::throttled`] when KMS answers
//! `ThrottlingException`; how the wait is computed stays in here. Knows nothing of stores,
//! reports or the audit log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::model::Target;

/// Added to every token interval. AWS meters arrivals, we meter departures: a request that
/// travels faster than the one before it arrives "early", and at exactly the quota that is a
/// ThrottlingException. A fixed margin absorbs that much arrival jitter per request whatever the
/// rate (at 5/s: 220 ms between sends instead of 200). 10 ms was measured too little on a busy
/// 2-core host (50 account-regions at once: ~100 throttled responses in 700 requests).
const ARRIVAL_MARGIN: Duration = Duration::from_millis(20);

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

    /// KMS throttled an `operation` request for `target`: its bucket is empty whatever ours
    /// says (someone else draws on the same quota, or KMS's burst is smaller than its rate).
    /// Empty ours too, and save one token less from now on.
    pub(super) fn throttled(&self, target: &Target, operation: Operation) {
        self.bucket(target, operation).throttled();
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

/// A token bucket: one token every `1/rate_limit` s plus [`ARRIVAL_MARGIN`], at most `burst`
/// saved (the whole quota at first, as KMS documents it; one less after each throttle, down to
/// one). Waiters are served in order (tokio's mutex is fair), so concurrent stores share the
/// quota without starving each other: 10 stores in one account and region leave within ~1.1 s.
struct TokenBucket {
    /// Seconds between tokens.
    interval: f64,
    /// The queue: held by the one waiter whose turn it is, across its sleep.
    turn: tokio::sync::Mutex<()>,
    /// The count; never held across an await, so a throttle applies at once, even mid-wait.
    state: Mutex<BucketState>,
}

struct BucketState {
    tokens: f64,
    burst: f64,
    /// When `tokens` was counted.
    at: Instant,
}

impl TokenBucket {
    fn new(rate_limit: u32) -> Self {
        let quota = f64::from(rate_limit.max(1));
        TokenBucket {
            interval: 1.0 / quota + ARRIVAL_MARGIN.as_secs_f64(),
            turn: tokio::sync::Mutex::new(()),
            state: Mutex::new(BucketState {
                tokens: quota,
                burst: quota,
                at: Instant::now(),
            }),
        }
    }

    /// Wait for one token and take it.
    async fn acquire(&self) {
        let _turn = self.turn.lock().await;
        loop {
            let wait = {
                let mut state = self.counted();
                // A hair of tolerance: float rounding must not cost a whole extra sleep.
                if state.tokens >= 1.0 - 1e-9 {
                    state.tokens = (state.tokens - 1.0).max(0.0);
                    return;
                }
                Duration::from_secs_f64((1.0 - state.tokens) * self.interval)
            };
            tokio::time::sleep(wait.max(Duration::from_micros(1))).await;
        }
    }

    fn throttled(&self) {
        let mut state = self.counted();
        state.tokens = 0.0;
        state.burst = (state.burst - 1.0).max(1.0);
    }

    /// The state, refilled up to now.
    fn counted(&self) -> std::sync::MutexGuard<'_, BucketState> {
        // A panic while holding this lock leaves two numbers, still consistent.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let earned = now.saturating_duration_since(state.at).as_secs_f64() / self.interval;
        state.tokens = (state.tokens + earned).min(state.burst);
        state.at = now;
        state
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

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            region: "eu-west-1".into(),
            role_arn: Some("arn:aws:iam::111122223333:role/ks".into()),
        }
    }

    /// When each of `n` acquisitions returned, in ms after the first call.
    async fn admissions(pacer: &Pacer, n: usize) -> Vec<u128> {
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..n {
            pacer.acquire(&target(), Operation::Disconnect).await;
            at.push(start.elapsed().as_millis());
        }
        at
    }

    #[tokio::test(start_paused = true)]
    async fn spends_the_whole_burst_then_one_token_per_interval_and_margin() {
        let pacer = Pacer::new(5);
        let at = admissions(&pacer, 8).await;
        assert_eq!(at, vec![0, 0, 0, 0, 0, 220, 440, 660]);
    }

    #[tokio::test(start_paused = true)]
    async fn operations_and_accounts_have_their_own_buckets() {
        let pacer = Pacer::new(5);
        admissions(&pacer, 5).await;
        let start = Instant::now();
        pacer.acquire(&target(), Operation::Describe).await;
        let other = Target {
            role_arn: Some("arn:aws:iam::444455556666:role/ks".into()),
            ..target()
        };
        pacer.acquire(&other, Operation::Disconnect).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_empties_the_bucket_and_saves_one_token_less() {
        let pacer = Pacer::new(5);
        admissions(&pacer, 1).await;
        pacer.throttled(&target(), Operation::Disconnect);
        // Four tokens were left: none is now, the next comes a whole interval later.
        assert_eq!(admissions(&pacer, 2).await, vec![220, 440]);
        // Refilled for a long while, the bucket now holds four, not five.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(admissions(&pacer, 5).await, vec![0, 0, 0, 0, 220]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_reaches_a_waiter_already_asleep() {
        let pacer = Arc::new(Pacer::new(1));
        admissions(&pacer, 1).await; // empty; the next token in 1.02 s
        let waiter = {
            let pacer = pacer.clone();
            tokio::spawn(async move { admissions(&pacer, 1).await })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        pacer.throttled(&target(), Operation::Disconnect);
        // Half a token was earned and is lost: the waiter gets its token 1.02 s after the throttle.
        let at = waiter.await.map_err(|e| e.to_string());
        assert_eq!(at, Ok(vec![1520]));
    }
}
