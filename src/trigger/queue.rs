//! The SQS queue trigger: each watched queue is long-polled (20 s) without pause, concurrently
//! with the others, and each message is classified (`super::queue_message`). A trip is sent as
//! [`TriggerEvent::QueueFired`] and its message deleted only once the daemon completes the ack
//! (the latch and `trigger_fired` are durable); until then, or if the daemon never acks (a
//! crash, an unwritten latch), the message stays in the queue and is delivered again. A message
//! that is not a trip is reported ([`TriggerEvent::Ignored`]) and deleted. A queue that cannot be
//! read is reported once ([`TriggerEvent::QueuePollFailed`]) and retried with a capped backoff
//! until it answers again ([`TriggerEvent::QueuePollRecovered`]).
//!
//! It talks to SQS only, through [`QueueSource`]; it never calls KMS, never touches the latch
//! or the audit log, and never exits the process.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::aws::{QueueMessage, QueueSource};
use crate::model::TriggerSource;
use crate::policy::QueueSpec;
use crate::trigger::queue_message::{Verdict, classify};
use crate::trigger::{QueueAck, TriggerEvent};

/// SQS's longest `WaitTimeSeconds`: one request per 20 s per queue while nothing arrives, and a
/// message is answered the moment it is sent.
pub const LONG_POLL: Duration = Duration::from_secs(20);
/// First pause after a failed receive; doubled on each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest pause between receives of an unreachable queue: it is read again within this long
/// of coming back.
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// How long the watcher waits for the daemon's ack (two fsyncs, normally milliseconds). Past it
/// the message is left for redelivery.
const ACK_WAIT: Duration = Duration::from_secs(60);
/// A trip the daemon could not make durable comes back this soon, to be tried again.
const RETRY_VISIBILITY: Duration = Duration::from_secs(10);

/// What the queue trigger needs from the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    pub queues: Vec<QueueSpec>,
}

/// The queue watcher, built but not running.
pub struct QueueWatch {
    source: Arc<dyn QueueSource>,
    queues: Vec<QueueSpec>,
    events: mpsc::Sender<TriggerEvent>,
}

impl QueueWatch {
    pub fn new(
        source: Arc<dyn QueueSource>,
        config: &QueueConfig,
        events: mpsc::Sender<TriggerEvent>,
    ) -> Self {
        QueueWatch {
            source,
            queues: config.queues.clone(),
            events,
        }
    }

    /// Watch every queue until cancelled (futures of this one task: a dead queue delays no
    /// other). Cancelled mid-message, that message is simply delivered again later.
    pub async fn run(self, cancel: CancellationToken) {
        let watchers = self
            .queues
            .iter()
            .map(|spec| watch_queue(spec, &*self.source, &self.events));
        tokio::select! {
            // Stopped by the daemon (shutdown, or a reload that changed the queues).
            _ = cancel.cancelled() => {}
            // Only if every watcher ended: the daemon's receiver is gone.
            _ = join_all(watchers) => {}
        }
    }
}

/// Long-poll one queue for ever (until the daemon's channel closes).
async fn watch_queue(
    spec: &QueueSpec,
    source: &dyn QueueSource,
    events: &mpsc::Sender<TriggerEvent>,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut failing = false;
    loop {
        match source.receive(&spec.target, &spec.url, LONG_POLL).await {
            Err(err) => {
                if !failing {
                    failing = true;
                    tracing::error!(queue = %spec.url, cause = %err, "cannot read the queue; retrying");
                    let event = TriggerEvent::QueuePollFailed {
                        queue_url: spec.url.clone(),
                        error: err.to_string(),
                    };
                    if events.send(event).await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Ok(messages) => {
                backoff = FIRST_BACKOFF;
                if failing {
                    failing = false;
                    tracing::info!(queue = %spec.url, "the queue can be read again");
                    let event = TriggerEvent::QueuePollRecovered {
                        queue_url: spec.url.clone(),
                    };
                    if events.send(event).await.is_err() {
                        return;
                    }
                }
                for message in messages {
                    if !handle_message(spec, source, events, message).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Classify one message, report it, and delete it when that is safe. False when the daemon's
/// channel is closed.
async fn handle_message(
    spec: &QueueSpec,
    source: &dyn QueueSource,
    events: &mpsc::Sender<TriggerEvent>,
    message: QueueMessage,
) -> bool {
    match classify(&message.body, &spec.matches) {
        Verdict::Ignore { reason } => {
            let reason = format!(
                "queue {} message {}: {reason}",
                spec.url,
                cut_id(&message.message_id)
            );
            let event = TriggerEvent::Ignored {
                source: TriggerSource::Queue,
                reason,
            };
            if events.send(event).await.is_err() {
                return false;
            }
            delete(spec, source, &message).await;
            true
        }
        Verdict::Fire {
            carried,
            key_store_event,
        } => {
            let (ack, acked) = QueueAck::new();
            let detail = json!({
                "queue": spec.url,
                "message_id": cut_id(&message.message_id),
                "receive_count": message.receive_count,
                "carried": carried,
            });
            let event = TriggerEvent::QueueFired {
                detail,
                ack,
                key_store_event,
            };
            if events.send(event).await.is_err() {
                return false;
            }
            match tokio::time::timeout(ACK_WAIT, acked).await {
                Ok(Ok(())) => delete(spec, source, &message).await,
                _ => {
                    tracing::warn!(queue = %spec.url, message_id = %message.message_id, "trip not acknowledged as durable; leaving the message for redelivery");
                    if let Err(err) = source
                        .change_visibility(
                            &spec.target,
                            &spec.url,
                            &message.receipt_handle,
                            RETRY_VISIBILITY,
                        )
                        .await
                    {
                        tracing::warn!(queue = %spec.url, cause = %err, "cannot shorten the message's visibility; it comes back at the queue's visibility timeout");
                    }
                }
            }
            true
        }
    }
}

async fn delete(spec: &QueueSpec, source: &dyn QueueSource, message: &QueueMessage) {
    if let Err(err) = source
        .delete(&spec.target, &spec.url, &message.receipt_handle)
        .await
    {
        // It comes back after its visibility timeout: a trip again is a trigger while latched,
        // an ignored message is ignored again.
        tracing::warn!(queue = %spec.url, message_id = %message.message_id, cause = %err, "cannot delete the message; it will be delivered again");
    }
}

/// A MessageId is a UUID; one from a hostile fake is cut to a sane length.
fn cut_id(id: &str) -> String {
    id.chars().take(128).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::aws::{AwsError, BoxFuture, ErrorKind};
    use crate::model::Target;

    /// A queue in memory: receives answer from `answers` (then block for ever, as an empty
    /// long poll would), deletes and visibility changes are recorded.
    #[derive(Default)]
    struct FakeQueue {
        answers: Mutex<VecDeque<Result<Vec<QueueMessage>, AwsError>>>,
        deleted: Mutex<Vec<String>>,
        delayed: Mutex<Vec<String>>,
    }

    impl QueueSource for FakeQueue {
        fn receive<'a>(
            &'a self,
            _: &'a Target,
            _: &'a str,
            _: Duration,
        ) -> BoxFuture<'a, Result<Vec<QueueMessage>, AwsError>> {
            let next = self.answers.lock().unwrap().pop_front();
            Box::pin(async move {
                match next {
                    Some(answer) => answer,
                    None => std::future::pending().await,
                }
            })
        }
        fn delete<'a>(
            &'a self,
            _: &'a Target,
            _: &'a str,
            handle: &'a str,
        ) -> BoxFuture<'a, Result<(), AwsError>> {
            self.deleted.lock().unwrap().push(handle.to_string());
            Box::pin(async { Ok(()) })
        }
        fn change_visibility<'a>(
            &'a self,
            _: &'a Target,
            _: &'a str,
            handle: &'a str,
            _: Duration,
        ) -> BoxFuture<'a, Result<(), AwsError>> {
            self.delayed.lock().unwrap().push(handle.to_string());
            Box::pin(async { Ok(()) })
        }
        fn queue_depth<'a>(
            &'a self,
            _: &'a Target,
            _: &'a str,
        ) -> BoxFuture<'a, Result<u64, AwsError>> {
            Box::pin(async { Ok(0) })
        }
    }

    fn message(handle: &str, body: &str) -> QueueMessage {
        QueueMessage {
            message_id: format!("id-{handle}"),
            receipt_handle: handle.to_string(),
            body: body.to_string(),
            receive_count: 1,
        }
    }

    fn spec() -> QueueSpec {
        QueueSpec {
            url: "https://sqs.eu-west-1.amazonaws.com/111111111111/q".into(),
            target: Target {
                region: "eu-west-1".into(),
                role_arn: None,
            },
            matches: vec![],
        }
    }

    fn start(fake: &Arc<FakeQueue>) -> (mpsc::Receiver<TriggerEvent>, CancellationToken) {
        let (tx, rx) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let source: Arc<dyn QueueSource> = fake.clone();
        let watch = QueueWatch::new(
            source,
            &QueueConfig {
                queues: vec![spec()],
            },
            tx,
        );
        tokio::spawn(watch.run(cancel.clone()));
        (rx, cancel)
    }

    #[tokio::test(start_paused = true)]
    async fn a_trip_is_deleted_only_after_the_ack_and_garbage_at_once() {
        let fake = Arc::new(FakeQueue::default());
        fake.answers
            .lock()
            .unwrap()
            .push_back(Ok(vec![message("h1", "garbage"), message("h2", "{}")]));
        let (mut rx, _cancel) = start(&fake);
        let Some(TriggerEvent::Ignored { reason, .. }) = rx.recv().await else {
            panic!("garbage is reported as ignored");
        };
        assert!(reason.contains("not JSON"), "{reason}");
        let Some(TriggerEvent::QueueFired { ack, detail, .. }) = rx.recv().await else {
            panic!("{{}} fires without match");
        };
        assert_eq!(detail["message_id"], "id-h2");
        assert_eq!(*fake.deleted.lock().unwrap(), vec!["h1".to_string()]);
        ack.complete();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(*fake.deleted.lock().unwrap(), vec!["h1", "h2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unacknowledged_trip_is_left_for_redelivery() {
        let fake = Arc::new(FakeQueue::default());
        fake.answers
            .lock()
            .unwrap()
            .push_back(Ok(vec![message("h1", "{}")]));
        let (mut rx, _cancel) = start(&fake);
        let Some(TriggerEvent::QueueFired { ack, .. }) = rx.recv().await else {
            panic!("fires");
        };
        drop(ack);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(fake.deleted.lock().unwrap().is_empty());
        assert_eq!(*fake.delayed.lock().unwrap(), vec!["h1".to_string()]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_queue_is_reported_once_and_recovers() {
        let fake = Arc::new(FakeQueue::default());
        let down = AwsError {
            operation: "ReceiveMessage",
            region: "eu-west-1".into(),
            kind: ErrorKind::Transient,
            code: "ConnectionDropped".into(),
            message: String::new(),
            request_id: None,
        };
        {
            let mut answers = fake.answers.lock().unwrap();
            for _ in 0..5 {
                answers.push_back(Err(down.clone()));
            }
            answers.push_back(Ok(vec![]));
        }
        let (mut rx, _cancel) = start(&fake);
        assert!(matches!(
            rx.recv().await,
            Some(TriggerEvent::QueuePollFailed { error, .. }) if error.contains("ConnectionDropped")
        ));
        assert!(matches!(
            rx.recv().await,
            Some(TriggerEvent::QueuePollRecovered { .. })
        ));
    }
}
