//! SQS for the queue trigger: the [`QueueSource`] trait in our own types (receive with long
//! polling, delete, change visibility, read attributes) and its adapter on [`AwsClients`]. The
//! trait is object-safe (boxed futures) so the daemon holds it as `Arc<dyn QueueSource>` and unit
//! tests use an in-memory fake. It knows nothing of message formats, matching or the audit log.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_sdk_sqs::types::MessageSystemAttributeName;

use super::classify::classify;
use super::{AwsClients, AwsError, ErrorKind};
use crate::model::Target;

/// A boxed, sendable future (what an object-safe async trait returns).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Messages taken per ReceiveMessage: SQS's maximum, so a burst is drained in few calls.
const MAX_MESSAGES_PER_RECEIVE: i32 = 10;
/// A long poll holds the request open up to its wait time; the SDK's per-call timeout (10 s, for
/// KMS) would cut it, so a receive gets its wait plus this margin.
const LONG_POLL_MARGIN: Duration = Duration::from_secs(10);

/// One received message, in our types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMessage {
    pub message_id: String,
    /// Needed to delete it or change its visibility (never logged: it is a capability).
    pub receipt_handle: String,
    pub body: String,
    /// `ApproximateReceiveCount`: 2 and more means a redelivery.
    pub receive_count: u32,
}

/// SQS calls the queue trigger and `check --online` make. Implemented by [`AwsClients`] and by
/// fakes in tests.
pub trait QueueSource: Send + Sync + 'static {
    /// One ReceiveMessage with `WaitTimeSeconds = wait` (≤ 20 s): up to 10 messages, or none
    /// when the wait ends empty.
    fn receive<'a>(
        &'a self,
        target: &'a Target,
        queue_url: &'a str,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Vec<QueueMessage>, AwsError>>;

    /// DeleteMessage with the handle of the receive that returned it.
    fn delete<'a>(
        &'a self,
        target: &'a Target,
        queue_url: &'a str,
        receipt_handle: &'a str,
    ) -> BoxFuture<'a, Result<(), AwsError>>;

    /// ChangeMessageVisibility: the message comes back `visible_in` from now.
    fn change_visibility<'a>(
        &'a self,
        target: &'a Target,
        queue_url: &'a str,
        receipt_handle: &'a str,
        visible_in: Duration,
    ) -> BoxFuture<'a, Result<(), AwsError>>;

    /// GetQueueAttributes (`ApproximateNumberOfMessages`): the queue exists and these
    /// credentials may read it. Returns the approximate number of visible messages.
    fn queue_depth<'a>(
        &'a self,
        target: &'a Target,
        queue_url: &'a str,
    ) -> BoxFuture<'a, Result<u64, AwsError>>;
}

impl QueueSource for AwsClients {
    fn receive<'a>(
        &'a self,
        target: &'a Target,
        queue_url: &'a str,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Vec<QueueMessage>, AwsError>> {
        Box::pin(async move {
            const OPERATION: &str = "ReceiveMessage";
            let clients = self.clients(target).await;
            let timeout = wait + LONG_POLL_MARGIN;
            let output = clients
                .sqs
                .receive_message()
                .queue_url(queue_url)
                .wait_time_seconds(wait.as_secs().min(20) as i32)
                .max_number_of_messages(MAX_MESSAGES_PER_RECEIVE)
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .customize()
                .config_override(
                    aws_sdk_sqs::config::Builder::default().timeout_config(
                        TimeoutConfig::builder()
                            .operation_timeout(timeout)
                            .operation_attempt_timeout(timeout)
                            .build(),
                    ),
                )
                .send()
                .await
                .map_err(|err| {
                    self.refused(target, &clients, classify(OPERATION, &target.region, &err))
                })?;
            let mut messages = Vec::with_capacity(output.messages().len());
            for message in output.messages() {
                let (Some(message_id), Some(receipt_handle)) =
                    (message.message_id(), message.receipt_handle())
                else {
                    // Cannot be deleted nor named: SQS always sends both; skip, never guess.
                    tracing::warn!(queue = %queue_url, "received a message without MessageId or ReceiptHandle; skipped");
                    continue;
                };
                let receive_count = message
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1);
                messages.push(QueueMessage {
                    message_id: message_id.to_string(),
                    receipt_handle: receipt_handle.to_string(),
                    body: message.body().unwrap_or_default().to_string(),
                    receive_count,
                });
            }
            Ok(messages)
        })
    }

    fn delete<'a>(
        &'a self,
        target: &'a Target,
        queue_url: &'a str,
        receipt_handle: &'a str,
    ) -> BoxFuture<'a, Result<(), AwsError>> {
        Box::pin(async move {
            let clients = self.clients(target).await;
            clients
                .sqs
                .delete_message()
                .queue_url(queue_url)
                .receipt_handle(receipt_handle)
                .send()
                .await
                .map_err(|err| {
                    let err = classify("DeleteMessage", &target.region, &err);
                    self.refused(target, &clients, err)
                })?;
            Ok(())
        })
    }

    fn change_visibility<'a>(
        &'a self,
        target: &'a Target,
        queue_url: &'a str,
        receipt_handle: &'a str,
        visible_in: Duration,
    ) -> BoxFuture<'a, Result<(), AwsError>> {
        Box::pin(async move {
            let clients = self.clients(target).await;
            clients
                .sqs
                .change_message_visibility()
                .queue_url(queue_url)
                .receipt_handle(receipt_handle)
                .visibility_timeout(visible_in.as_secs().min(43_200) as i32)
                .send()
                .await
                .map_err(|err| {
                    let err = classify("ChangeMessageVisibility", &target.region, &err);
                    self.refused(target, &clients, err)
                })?;
            Ok(())
        })
    }

    fn queue_depth<'a>(
        &'a self,
        target: &'a Target,
        queue_url: &'a str,
    ) -> BoxFuture<'a, Result<u64, AwsError>> {
        Box::pin(async move {
            use aws_sdk_sqs::types::QueueAttributeName;
            const OPERATION: &str = "GetQueueAttributes";
            let clients = self.clients(target).await;
            let output = clients
                .sqs
                .get_queue_attributes()
                .queue_url(queue_url)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                .send()
                .await
                .map_err(|err| {
                    self.refused(target, &clients, classify(OPERATION, &target.region, &err))
                })?;
            output
                .attributes()
                .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| {
                    AwsError::local(
                        OPERATION,
                        target,
                        ErrorKind::Other,
                        "response without ApproximateNumberOfMessages",
                    )
                })
        })
    }
}
