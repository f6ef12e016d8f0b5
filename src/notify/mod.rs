//! Heard when it fires, heard when it dies (issue 13, DESIGN.md §9): notifications to SNS
//! topics and webhooks, the health watch and the CloudWatch heartbeat.
//!
//! ```text
//!   daemon / engine ──record──▶ NotifyingAudit ──▶ AuditLog (durable first)
//!                                     │ (notified events, once their record is durable or held)
//!                                     ▼
//!                               dispatcher task ──▶ one worker task per sink ──▶ SNS / webhook
//!                                                        └──▶ `notification_sent` per attempt
//!   health task (every 250 ms): loop turning? audit writable? alarms readable? ──▶ `unhealthy` /
//!                                     `healthy` records (notified) and the heartbeat's gate
//!   heartbeat task: PutMetricData every interval, only while healthy
//! ```
//!
//! Never in the way of the lockdown: `record` only queues (no await, no I/O); sinks run in their
//! own tasks with bounded retries and timeouts, so a sink that hangs or refuses changes nothing
//! about a lockdown's timing. Files: `message.rs` (the document), `webhook.rs` (the HTTP sink and
//! its signature), `dispatch.rs` (the audit decorator, the dispatcher and the sink workers),
//! `health.rs` (health watch and heartbeat). It talks to AWS only through [`crate::aws::Messaging`]
//! and knows nothing of triggers or the lockdown engine; the daemon's wiring (`cmd::run`) starts it.

mod dispatch;
mod health;
mod message;
mod metrics;
mod webhook;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use self::dispatch::NotifyingAudit;
pub use self::health::{HealthReport, LogHealth};
pub use self::message::{Notification, build as build_notification, is_notified};
pub use self::metrics::{LastNotification, Metrics, StatusFile};
pub use self::webhook::{SIGNATURE_HEADER, Secret, Webhook};
use crate::audit::AuditSink;
use crate::aws::{HeartbeatDatum, Messaging};
use crate::model::Target;
use crate::policy::{NotifySink, Policy};

/// Attempts per notification and sink: three tries over about 20 s ride out a blip without
/// letting a dead sink hold the queue for long.
pub const ATTEMPTS: u32 = 3;
/// One attempt's limit: SNS and webhook receivers answer in well under a second; a sink that
/// says nothing in 5 s is treated as failed and tried again.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause before the second attempt (doubled before the third).
pub const RETRY_BACKOFF: Duration = Duration::from_secs(1);
/// How long the daemon's stop (and `rearm`) waits for notifications still queued.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Why notifications could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The webhook secret file is missing, unsafe or unreadable. Its content is never shown.
    #[error("webhook secret {path}: {reason}")]
    Secret { path: PathBuf, reason: String },
    #[error("cannot set up TLS for webhooks: {0}")]
    Tls(String),
}

/// One configured sink, ready to send.
#[derive(Debug, Clone)]
pub enum Sink {
    Sns { topic_arn: String, target: Target },
    Webhook(Box<Webhook>),
}

impl Sink {
    /// Its name in `notification_sent` and `status`: `sns:<topic arn>` or `webhook:<origin>`.
    pub fn label(&self) -> String {
        match self {
            Sink::Sns { topic_arn, .. } => format!("sns:{topic_arn}"),
            Sink::Webhook(webhook) => webhook.label(),
        }
    }
}

/// The policy's sinks, webhook secrets read now (a start with an unreadable secret is refused).
pub fn sinks(policy: &Policy) -> Result<Vec<Sink>, NotifyError> {
    policy
        .notify
        .iter()
        .map(|sink| match sink {
            NotifySink::Sns { topic_arn, target } => Ok(Sink::Sns {
                topic_arn: topic_arn.clone(),
                target: target.clone(),
            }),
            NotifySink::Webhook { url, secret_file } => {
                let secret = secret_file.as_deref().map(Secret::read).transpose()?;
                Ok(Sink::Webhook(Box::new(Webhook::new(url, secret)?)))
            }
        })
        .collect()
}

/// What the notifier needs to know of the host and the policy.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `host` of every document and the heartbeat's `Host` dimension.
    pub host: String,
    /// The latch, read for the lockdown id of `trigger_fired`.
    pub state_file: PathBuf,
    pub heartbeat: Option<(Target, HeartbeatDatum, Duration)>,
    /// `lockdown.enforce_interval`: how long an `enforcement_failed` counts against health.
    pub enforce_interval: Option<Duration>,
    /// `metrics.textfile`.
    pub metrics_textfile: Option<PathBuf>,
    /// The notifier's status file for `status` ([`status_file`]).
    pub status_file: PathBuf,
}

/// Where the daemon's notifier writes its status (health, last heartbeat, last notification per
/// sink) for `kms-killswitch status`: `notify.json` beside the latch, in the state directory.
pub fn status_file(state_file: &std::path::Path) -> PathBuf {
    state_file.with_file_name("notify.json")
}

impl Settings {
    pub fn from_policy(policy: &Policy) -> Settings {
        let host = hostname();
        Settings {
            heartbeat: policy.heartbeat.as_ref().map(|h| {
                let datum = HeartbeatDatum {
                    namespace: h.namespace.clone(),
                    metric_name: h.metric_name.clone(),
                    host: host.clone(),
                };
                (h.target.clone(), datum, h.interval)
            }),
            host,
            state_file: policy.state_file.clone(),
            enforce_interval: policy.lockdown.enforce_interval,
            metrics_textfile: policy.metrics.as_ref().map(|m| m.textfile.clone()),
            status_file: status_file(&policy.state_file),
        }
    }
}

/// The host name (as the audit log's `host`).
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// The running notifier: the decorated audit sink to hand to the daemon, and its tasks.
pub struct Started {
    pub audit: Arc<NotifyingAudit>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// The metrics and status writer: stopped last, after its final write.
    writer: JoinHandle<()>,
}

/// Start the dispatcher, one worker per sink, the health watch and the heartbeat. `log` is the
/// audit log (records go there first); `aws` publishes and puts metric data.
pub fn start<M: Messaging>(
    settings: Settings,
    sinks: Vec<Sink>,
    log: Arc<dyn LogHealth>,
    aws: Arc<M>,
) -> Started {
    let stop = CancellationToken::new();
    let metrics = Metrics::new();
    let (audit, mut tasks) =
        dispatch::start(&settings, sinks, log.clone(), metrics.clone(), aws.clone());
    let health = health::Health::new(settings.enforce_interval);
    audit.set_health(health.clone());
    let writer = tokio::spawn(metrics::write_files(
        metrics,
        health.clone(),
        log.clone(),
        settings.metrics_textfile.clone(),
        settings.status_file.clone(),
        settings.state_file.clone(),
        stop.clone(),
    ));
    tasks.push(tokio::spawn(health::watch(
        health.clone(),
        log,
        audit.clone(),
        stop.clone(),
    )));
    if let Some((target, datum, interval)) = settings.heartbeat.clone() {
        tasks.push(tokio::spawn(health::heartbeat(
            health,
            aws,
            target,
            datum,
            interval,
            stop.clone(),
        )));
    }
    Started {
        audit,
        stop,
        tasks,
        writer,
    }
}

impl Started {
    /// Deliver what is queued (bounded by `timeout`), then stop every task.
    pub async fn stop(self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.audit.drain()).await;
        self.stop.cancel();
        for task in self.tasks {
            task.abort();
        }
        // One last write of the metrics and status files (bounded like the drain).
        let _ = tokio::time::timeout(timeout, self.writer).await;
    }
}

/// Send one notification to every sink now, each with the bounded retries, auditing every
/// attempt to `audit`: for `rearm`, which has no daemon to queue it. Waits at most `timeout`.
pub async fn send_now<M: Messaging>(
    notification: &Notification,
    sinks: &[Sink],
    aws: &M,
    audit: &dyn AuditSink,
    timeout: Duration,
) {
    let sends = sinks
        .iter()
        .map(|sink| dispatch::deliver(sink, notification, aws, audit));
    let _ = tokio::time::timeout(timeout, futures_util::future::join_all(sends)).await;
}
