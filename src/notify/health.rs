//! The health watch and the heartbeat. Healthy means: the daemon's main loop is turning, the
//! audit log can be written, and the daemon reports nothing wrong itself (every alarm unreadable,
//! enforcement failing). A change is recorded as `unhealthy {reasons}` / `healthy` (so it is
//! notified); the heartbeat's PutMetricData goes out only while healthy, so an alarm with
//! `TreatMissingData=breaching` pages when the daemon dies, hangs or cannot record.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditLog, AuditSink, Event};
use crate::aws::{HeartbeatDatum, Messaging};
use crate::model::Target;

/// How often health is judged: four times a second, so the heartbeat (every 1 s at the
/// shortest) stops within a quarter of a second of the daemon turning unhealthy.
pub const HEALTH_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// The main loop turns at least every 500 ms (its latch poll); ten times that without a turn
/// is a stalled loop, not a busy one on a loaded machine.
pub const LOOP_STALL: Duration = Duration::from_secs(5);
/// A probe of the audit log that takes longer than this (a hung disk) counts as unwritable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The audit log as the health watch sees it.
pub trait LogHealth: AuditSink {
    /// The log can take records right now: none held in memory after a write failure, and the
    /// file can be opened for appending. Blocking: called on a blocking thread.
    fn writable(&self) -> bool;

    /// Records written from now on carry this `policy_sha256` (a reload).
    fn set_policy_sha256(&self, _policy_sha256: &str) {}

    /// Every record so far is durable (none in flight or held).
    fn all_durable(&self) -> bool {
        true
    }

    /// Ask the writer to retry records held in memory; true when none is held now.
    fn retry_held(&self) -> bool {
        true
    }

    /// Records held in memory because the file cannot be written.
    fn held(&self) -> usize {
        0
    }
}

impl LogHealth for AuditLog {
    fn writable(&self) -> bool {
        self.unflushed() == 0 && self.probe_writable()
    }

    fn set_policy_sha256(&self, policy_sha256: &str) {
        AuditLog::set_policy_sha256(self, policy_sha256);
    }

    fn all_durable(&self) -> bool {
        self.healthy()
    }

    fn retry_held(&self) -> bool {
        self.flush_soon();
        self.unflushed() == 0
    }

    fn held(&self) -> usize {
        self.unflushed()
    }
}

/// The health as of the last check, for `status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthReport {
    pub healthy: bool,
    pub reasons: Vec<String>,
    /// RFC 3339 time of the last heartbeat CloudWatch accepted.
    pub last_heartbeat: Option<String>,
    /// The same, as Unix seconds (for the metrics).
    #[serde(skip)]
    pub last_heartbeat_unix: Option<f64>,
}

/// What the watch, the daemon's loop and the heartbeat share.
#[derive(Debug)]
pub struct Health {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    last_turn: Instant,
    daemon_reasons: Vec<String>,
    /// The last `enforcement_failed` record, and how long one counts (two enforcement
    /// intervals: a round that fails again renews it, two clean rounds clear it).
    enforcement_failed: Option<Instant>,
    enforcement_window: Duration,
    report: HealthReport,
}

impl Health {
    /// `enforce_interval`: the policy's (`None`: enforcement off).
    pub(super) fn new(enforce_interval: Option<Duration>) -> Arc<Health> {
        let enforcement_window =
            enforce_interval.unwrap_or(Duration::ZERO) * 2 + Duration::from_secs(1);
        Arc::new(Health {
            inner: Mutex::new(Inner {
                last_turn: Instant::now(),
                daemon_reasons: Vec::new(),
                enforcement_failed: None,
                enforcement_window,
                report: HealthReport {
                    healthy: true,
                    reasons: Vec::new(),
                    last_heartbeat: None,
                    last_heartbeat_unix: None,
                },
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Plain data, consistent after any panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn loop_turned(&self, reasons: Vec<String>) {
        let mut inner = self.lock();
        inner.last_turn = Instant::now();
        inner.daemon_reasons = reasons;
    }

    pub(super) fn enforcement_failed(&self) {
        self.lock().enforcement_failed = Some(Instant::now());
    }

    pub fn report(&self) -> HealthReport {
        self.lock().report.clone()
    }

    /// Judge health now; `Some(reasons)` when it changed (empty: healthy again).
    fn judge(&self, writable: bool, frozen: bool) -> Option<Vec<String>> {
        let mut inner = self.lock();
        let mut reasons = inner.daemon_reasons.clone();
        if !writable {
            reasons.push("audit log unwritable".into());
        }
        if inner
            .enforcement_failed
            .is_some_and(|at| at.elapsed() <= inner.enforcement_window)
        {
            reasons.push("enforcement failing".into());
        }
        // After the whole process was frozen (SIGSTOP, a suspended VM) the loop had no chance to
        // turn: judge it at the next check, not now.
        if !frozen && inner.last_turn.elapsed() > LOOP_STALL {
            reasons.push("main loop stalled".into());
        }
        let healthy = reasons.is_empty();
        let changed = healthy != inner.report.healthy;
        inner.report.healthy = healthy;
        inner.report.reasons = reasons.clone();
        changed.then_some(reasons)
    }

    fn heartbeat_sent(&self, at: SystemTime) {
        let mut inner = self.lock();
        inner.report.last_heartbeat = Some(humantime::format_rfc3339_millis(at).to_string());
        // Milliseconds, like the RFC 3339 text: the two always name the same instant.
        inner.report.last_heartbeat_unix = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_millis() as f64 / 1000.0);
    }
}

/// Judge health every [`HEALTH_CHECK_INTERVAL`] and record each change through `audit` (the
/// notifying sink, so `unhealthy` / `healthy` are notified) until `stop`.
pub(super) async fn watch(
    health: Arc<Health>,
    log: Arc<dyn LogHealth>,
    audit: Arc<dyn AuditSink>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(HEALTH_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let frozen = previous.elapsed() > LOOP_STALL;
        let probe = {
            let log = log.clone();
            tokio::task::spawn_blocking(move || log.writable())
        };
        let writable = matches!(
            tokio::time::timeout(PROBE_TIMEOUT, probe).await,
            Ok(Ok(true))
        );
        previous = Instant::now();
        match health.judge(writable, frozen) {
            Some(reasons) if reasons.is_empty() => {
                tracing::info!("healthy again");
                audit.record(Event::Healthy).queued();
            }
            Some(reasons) => {
                tracing::error!(reasons = %reasons.join("; "), "unhealthy; the heartbeat stops until healthy again");
                audit.record(Event::Unhealthy { reasons }).queued();
            }
            None => {}
        }
    }
}

/// PutMetricData every `interval` while healthy, until `stop`.
pub(super) async fn heartbeat<M: Messaging>(
    health: Arc<Health>,
    aws: Arc<M>,
    target: Target,
    datum: HeartbeatDatum,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !health.report().healthy {
            continue;
        }
        let put = aws.put_heartbeat(&target, &datum);
        // The first call also fetches credentials: allow a full attempt even at 1 s intervals
        // (the next tick waits for this one: beats never pile up).
        match tokio::time::timeout(super::ATTEMPT_TIMEOUT, put).await {
            Ok(Ok(())) => health.heartbeat_sent(SystemTime::now()),
            Ok(Err(err)) => {
                tracing::warn!(namespace = %datum.namespace, cause = %err, "heartbeat not accepted")
            }
            Err(_) => tracing::warn!(namespace = %datum.namespace, "heartbeat timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stalled_loop_or_an_unwritable_log_is_unhealthy_until_it_recovers() {
        let health = Health::new(Some(Duration::from_secs(30)));
        assert_eq!(health.judge(true, false), None);
        assert_eq!(
            health.judge(false, false),
            Some(vec!["audit log unwritable".to_string()])
        );
        assert_eq!(health.judge(false, false), None, "reported once");
        assert_eq!(health.judge(true, false), Some(vec![]));
        tokio::time::advance(LOOP_STALL + Duration::from_millis(1)).await;
        assert_eq!(
            health.judge(true, true),
            None,
            "not judged right after a freeze"
        );
        assert_eq!(
            health.judge(true, false),
            Some(vec!["main loop stalled".to_string()])
        );
        health.loop_turned(vec!["every alarm unreadable".into()]);
        assert_eq!(
            health.judge(true, false),
            None,
            "still unhealthy, for another reason"
        );
        assert_eq!(
            health.report().reasons,
            vec!["every alarm unreadable".to_string()]
        );
        health.loop_turned(vec![]);
        assert_eq!(health.judge(true, false), Some(vec![]));
        assert!(health.report().healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn enforcement_failures_count_for_two_enforcement_intervals() {
        let health = Health::new(Some(Duration::from_secs(30)));
        health.enforcement_failed();
        assert_eq!(
            health.judge(true, false),
            Some(vec!["enforcement failing".to_string()])
        );
        tokio::time::advance(Duration::from_secs(50)).await;
        health.loop_turned(vec![]);
        assert_eq!(health.judge(true, false), None);
        tokio::time::advance(Duration::from_secs(12)).await;
        health.loop_turned(vec![]);
        assert_eq!(health.judge(true, false), Some(vec![]));
    }
}
