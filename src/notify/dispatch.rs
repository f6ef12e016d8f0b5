//! The audit decorator ([`NotifyingAudit`]), the dispatcher and the sink workers. `record`
//! passes every event to the audit log at once and, for a notified one, queues it with the log's
//! acknowledgement: the dispatcher waits for that (the record is durable, or held in memory after
//! a write failure), builds the document and hands it to each sink's worker without waiting.
//! Each worker sends its queue in order, with bounded retries, and audits every attempt as
//! `notification_sent`. Nothing here is awaited by the daemon or the engine.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::health::{Health, LogHealth};
use super::message::{Notification, build, is_notified};
use super::metrics::Metrics;
use super::{ATTEMPT_TIMEOUT, ATTEMPTS, RETRY_BACKOFF, Settings, Sink};
use crate::audit::{AuditSink, Event, NotificationResult, Recorded};
use crate::aws::Messaging;

/// Notifications waiting for one sink: a burst (a lockdown's `trigger_fired`, `lockdown_finished`
/// and a few drifts) fits many times over; beyond it, a dead sink's backlog is dropped (and each
/// dropped one audited as failed) rather than kept in memory without end.
const SINK_QUEUE: usize = 64;

/// What the decorator queues for the dispatcher.
enum Queued {
    /// A notified event and its record's acknowledgement (to the caller, forwarded once durable).
    Event {
        event: Event,
        durable: Recorded,
        ack: oneshot::Sender<()>,
        at: std::time::SystemTime,
    },
    /// Acknowledge once everything queued before has been tried on every sink.
    Drain(oneshot::Sender<()>),
}

/// What the dispatcher hands a sink worker.
enum Work {
    Send(Arc<Notification>),
    Drain(oneshot::Sender<()>),
}

/// The audit log with the metrics counting each record (what the dispatcher and the workers
/// record through).
struct Observed {
    log: Arc<dyn LogHealth>,
    metrics: Arc<Metrics>,
}

impl AuditSink for Observed {
    fn record(&self, event: Event) -> Recorded {
        self.metrics.observe(&event);
        self.log.record(event)
    }
}

/// The daemon's audit sink with notifications: every record goes to the audit log first.
pub struct NotifyingAudit {
    log: Arc<dyn LogHealth>,
    metrics: Arc<Metrics>,
    queue: mpsc::UnboundedSender<Queued>,
    /// Set once the health watch starts: the daemon's loop reports to it.
    health: Mutex<Option<Arc<Health>>>,
}

impl NotifyingAudit {
    /// The audit log underneath.
    pub fn log(&self) -> &dyn LogHealth {
        &*self.log
    }

    pub(super) fn set_health(&self, health: Arc<Health>) {
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = Some(health);
    }

    /// The daemon's main loop turned, with what it knows to be wrong (e.g. every alarm
    /// unreadable): input to the health watch and the heartbeat's gate.
    pub fn report_loop_turn(&self, reasons: Vec<String>) {
        if let Some(health) = &*self.health.lock().unwrap_or_else(|p| p.into_inner()) {
            health.loop_turned(reasons);
        }
    }

    /// Health as of the last check (`None` before the watch started).
    pub fn health(&self) -> Option<super::HealthReport> {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|health| health.report())
    }

    /// Resolves once every notification queued so far has been tried on every sink.
    pub async fn drain(&self) {
        let (ack, done) = oneshot::channel();
        if self.queue.send(Queued::Drain(ack)).is_ok() {
            let _ = done.await;
        }
    }
}

impl AuditSink for NotifyingAudit {
    fn record(&self, event: Event) -> Recorded {
        if matches!(event, Event::EnforcementFailed { .. })
            && let Some(health) = &*self.health.lock().unwrap_or_else(|p| p.into_inner())
        {
            health.enforcement_failed();
        }
        self.metrics.observe(&event);
        if !is_notified(&event) {
            return self.log.record(event);
        }
        let durable = self.log.record(event.clone());
        let (ack, acked) = oneshot::channel();
        let queued = Queued::Event {
            event,
            durable,
            ack,
            at: std::time::SystemTime::now(),
        };
        match self.queue.send(queued) {
            Ok(()) => Recorded::pending(acked),
            // The dispatcher is gone (stopping): the record still stands; no notification.
            Err(mpsc::error::SendError(Queued::Event { durable, .. })) => durable,
            Err(_) => Recorded::done(),
        }
    }
}

/// Start the dispatcher and one worker per sink.
pub(super) fn start<M: Messaging>(
    settings: &Settings,
    sinks: Vec<Sink>,
    log: Arc<dyn LogHealth>,
    metrics: Arc<Metrics>,
    aws: Arc<M>,
) -> (Arc<NotifyingAudit>, Vec<JoinHandle<()>>) {
    let (queue, queued) = mpsc::unbounded_channel();
    let audit = Arc::new(NotifyingAudit {
        log: log.clone(),
        metrics: metrics.clone(),
        queue,
        health: Mutex::new(None),
    });
    let observed: Arc<dyn AuditSink> = Arc::new(Observed { log, metrics });
    let mut tasks = Vec::new();
    let mut workers = Vec::new();
    for sink in sinks {
        let (tx, rx) = mpsc::channel(SINK_QUEUE);
        let sink_log = observed.clone();
        tasks.push(tokio::spawn(worker(
            sink.clone(),
            rx,
            aws.clone(),
            sink_log,
        )));
        workers.push((sink.label(), tx));
    }
    tasks.push(tokio::spawn(dispatcher(
        settings.clone(),
        queued,
        workers,
        observed,
    )));
    (audit, tasks)
}

/// Waits for each notified record to be durable, then fans the document out to the workers.
async fn dispatcher(
    settings: Settings,
    mut queued: mpsc::UnboundedReceiver<Queued>,
    workers: Vec<(String, mpsc::Sender<Work>)>,
    log: Arc<dyn AuditSink>,
) {
    // The lockdown the latest records belong to, for events that do not carry its id.
    let mut lockdown_id: Option<String> = None;
    while let Some(item) = queued.recv().await {
        match item {
            Queued::Event {
                event,
                durable,
                ack,
                at,
            } => {
                durable.await;
                let _ = ack.send(());
                if matches!(event, Event::TriggerFired { .. }) {
                    lockdown_id = latch_lockdown_id(&settings).await.or(lockdown_id);
                }
                if let Event::LockdownFinished {
                    lockdown_id: id, ..
                } = &event
                {
                    lockdown_id = Some(id.clone());
                }
                let Some(notification) = build(&event, &settings.host, at, lockdown_id.as_deref())
                else {
                    continue;
                };
                let notification = Arc::new(notification);
                for (label, worker) in &workers {
                    if worker.try_send(Work::Send(notification.clone())).is_err() {
                        tracing::warn!(sink = %label, notified = %notification.event, "notification queue full; dropping this notification");
                        log.record(sent(
                            label,
                            &notification,
                            Err("queue full: the sink is not keeping up".into()),
                            0,
                        ))
                        .queued();
                    }
                }
            }
            Queued::Drain(ack) => {
                let mut waits = Vec::new();
                for (_, worker) in &workers {
                    let (tx, rx) = oneshot::channel();
                    if worker.send(Work::Drain(tx)).await.is_ok() {
                        waits.push(rx);
                    }
                }
                for wait in waits {
                    let _ = wait.await;
                }
                let _ = ack.send(());
            }
        }
    }
}

/// The lockdown id in the latch (written before `trigger_fired` is recorded).
async fn latch_lockdown_id(settings: &Settings) -> Option<String> {
    let state_file = settings.state_file.clone();
    tokio::task::spawn_blocking(move || crate::latch::read(&state_file))
        .await
        .ok()?
        .ok()?
        .map(|latch| latch.lockdown_id.to_string())
}

/// One sink's queue, in order.
async fn worker<M: Messaging>(
    sink: Sink,
    mut work: mpsc::Receiver<Work>,
    aws: Arc<M>,
    log: Arc<dyn AuditSink>,
) {
    while let Some(item) = work.recv().await {
        match item {
            Work::Send(notification) => deliver(&sink, &notification, &*aws, &*log).await,
            Work::Drain(ack) => {
                let _ = ack.send(());
            }
        }
    }
}

/// Up to [`ATTEMPTS`] tries, each within [`ATTEMPT_TIMEOUT`], backing off between them; every
/// attempt audited.
pub(super) async fn deliver<M: Messaging>(
    sink: &Sink,
    notification: &Notification,
    aws: &M,
    log: &dyn AuditSink,
) {
    let label = sink.label();
    let mut backoff = RETRY_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let result =
            match tokio::time::timeout(ATTEMPT_TIMEOUT, send(sink, notification, aws)).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {}s", ATTEMPT_TIMEOUT.as_secs())),
            };
        let delivered = result.is_ok();
        match &result {
            Ok(_) => {
                tracing::info!(sink = %label, notified = %notification.event, attempt, "notification delivered")
            }
            Err(error) => {
                tracing::warn!(sink = %label, notified = %notification.event, attempt, cause = %error, "notification failed")
            }
        }
        log.record(sent(&label, notification, result, attempt))
            .queued();
        if delivered {
            return;
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
}

/// One attempt: SNS's MessageId or the webhook's status, or why not.
async fn send<M: Messaging>(
    sink: &Sink,
    notification: &Notification,
    aws: &M,
) -> Result<Option<String>, String> {
    let body = &notification.body;
    match sink {
        Sink::Sns { topic_arn, target } => {
            // The document is our own JSON: always UTF-8.
            let message = String::from_utf8_lossy(body);
            aws.publish(target, topic_arn, &subject(&notification.summary), &message)
                .await
                .map_err(|err| err.to_string())
        }
        Sink::Webhook(webhook) => webhook.post(body).await.map(Some),
    }
}

/// An SNS Subject: printable ASCII, fewer than 100 characters (the API's limits).
fn subject(summary: &str) -> String {
    let text: String = summary
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    let mut subject = format!("kms-killswitch: {text}");
    subject.truncate(99);
    subject
}

fn sent(
    label: &str,
    notification: &Notification,
    result: Result<Option<String>, String>,
    attempt: u32,
) -> Event {
    let (result, message_id, error) = match result {
        Ok(id) => (NotificationResult::Delivered, id, None),
        Err(error) => (NotificationResult::Failed, None, Some(error)),
    };
    Event::NotificationSent {
        sink: label.to_owned(),
        notified: notification.event.clone(),
        result,
        message_id,
        error,
        attempt,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::aws::{AwsError, ErrorKind, HeartbeatDatum};
    use crate::model::Target;

    /// A topic that refuses the first `refusals` publishes, recording every message.
    #[derive(Default)]
    struct Topic {
        refusals: Mutex<u32>,
        published: Mutex<Vec<String>>,
    }

    impl Messaging for Topic {
        async fn publish(
            &self,
            target: &Target,
            _topic_arn: &str,
            _subject: &str,
            message: &str,
        ) -> Result<Option<String>, AwsError> {
            let mut refusals = self.refusals.lock().unwrap();
            if *refusals > 0 {
                *refusals -= 1;
                return Err(AwsError::local(
                    "Publish",
                    target,
                    ErrorKind::Transient,
                    "refused",
                ));
            }
            self.published.lock().unwrap().push(message.to_owned());
            Ok(Some("msg-1".into()))
        }

        async fn put_heartbeat(&self, _: &Target, _: &HeartbeatDatum) -> Result<(), AwsError> {
            Ok(())
        }
    }

    /// A Vec-backed audit log that is always healthy.
    #[derive(Default)]
    struct Log(Mutex<Vec<Event>>);

    impl AuditSink for Log {
        fn record(&self, event: Event) -> Recorded {
            self.0.lock().unwrap().push(event);
            Recorded::done()
        }
    }

    impl LogHealth for Log {
        fn writable(&self) -> bool {
            true
        }
    }

    fn sns() -> Sink {
        Sink::Sns {
            topic_arn: "arn:aws:sns:eu-west-1:111111111111:t".into(),
            target: Target {
                region: "eu-west-1".into(),
                role_arn: None,
            },
        }
    }

    fn settings() -> Settings {
        Settings {
            host: "h".into(),
            state_file: "/nonexistent/latch.json".into(),
            heartbeat: None,
            enforce_interval: None,
            metrics_textfile: None,
            status_file: "/nonexistent/notify.json".into(),
        }
    }

    fn results(log: &Log) -> Vec<(String, NotificationResult, u32)> {
        log.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::NotificationSent {
                    notified,
                    result,
                    attempt,
                    ..
                } => Some((notified.clone(), *result, *attempt)),
                _ => None,
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn retries_a_refusing_topic_and_audits_every_attempt() {
        let topic = Arc::new(Topic {
            refusals: Mutex::new(2),
            ..Topic::default()
        });
        let log = Arc::new(Log::default());
        let (audit, _tasks) = start(
            &settings(),
            vec![sns()],
            log.clone(),
            Metrics::new(),
            topic.clone(),
        );
        audit
            .record(Event::Rearmed {
                reason: "all clear".into(),
                by: "alice".into(),
            })
            .await;
        audit.drain().await;
        assert_eq!(
            results(&log),
            vec![
                ("rearmed".into(), NotificationResult::Failed, 1),
                ("rearmed".into(), NotificationResult::Failed, 2),
                ("rearmed".into(), NotificationResult::Delivered, 3),
            ]
        );
        let published = topic.published.lock().unwrap().clone();
        let doc: serde_json::Value = serde_json::from_str(&published[0]).unwrap();
        assert_eq!(doc["event"], "rearmed");
        assert_eq!(doc["details"]["by"], "alice");
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_last_attempt_and_ignores_unnotified_events() {
        let topic = Arc::new(Topic {
            refusals: Mutex::new(10),
            ..Topic::default()
        });
        let log = Arc::new(Log::default());
        let (audit, _tasks) = start(
            &settings(),
            vec![sns()],
            log.clone(),
            Metrics::new(),
            topic.clone(),
        );
        audit.record(Event::DaemonStarted).await;
        audit.record(Event::Healthy).await;
        let started = tokio::time::Instant::now();
        audit.drain().await;
        let failed = results(&log);
        assert_eq!(failed.len(), ATTEMPTS as usize);
        assert!(
            failed
                .iter()
                .all(|(n, r, _)| n == "healthy" && *r == NotificationResult::Failed)
        );
        // 1 s + 2 s of back-off, nothing more.
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert!(matches!(log.0.lock().unwrap()[0], Event::DaemonStarted));
    }

    #[test]
    fn subjects_fit_sns_limits() {
        let subject = subject(&format!("naïve {}", "x".repeat(200)));
        assert_eq!(subject.len(), 99);
        assert!(subject.starts_with("kms-killswitch: na?ve x"));
    }
}
