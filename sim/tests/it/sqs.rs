//! SQS through aws-sdk-sqs (awsJson 1.0): long polling, visibility timeout and redelivery,
//! receipt handles (stale and invalid), typed errors, attributes, queue faults.

use std::time::Duration;

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use kms_sim::{QueueFault, QueueFaultKind};

use crate::support::*;

/// A guard against a hung test only; the behaviour asserted is what arrives, not how fast.
const GUARD: Duration = Duration::from_secs(15);

async fn queue(sim: &kms_sim::SimHandle, client: &aws_sdk_sqs::Client, name: &str) -> String {
    client
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .expect("CreateQueue succeeds")
        .queue_url()
        .expect("CreateQueue returns the QueueUrl")
        .to_owned()
        .tap(|url| assert_eq!(*url, sim.queue_url(ACCOUNT, name)))
}

trait Tap: Sized {
    fn tap(self, f: impl FnOnce(&Self)) -> Self {
        f(&self);
        self
    }
}
impl<T> Tap for T {}

#[tokio::test]
async fn long_poll_returns_when_a_message_arrives() {
    let sim = start(quiet_world());
    let client = sqs(&sim, REGION).await;
    let url = queue(&sim, &client, "trigger").await;
    let poll = tokio::spawn({
        let client = client.clone();
        let url = url.clone();
        async move {
            client
                .receive_message()
                .queue_url(url)
                .wait_time_seconds(20)
                .send()
                .await
        }
    });
    // Let the poll reach the simulator and start waiting before the message exists.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "an empty queue holds the long poll");
    client
        .send_message()
        .queue_url(&url)
        .message_body("{\"source\":\"aws.guardduty\"}")
        .send()
        .await
        .unwrap();
    let received = tokio::time::timeout(GUARD, poll)
        .await
        .expect("the long poll answers once the message arrives, not after 20 s")
        .unwrap()
        .unwrap();
    let bodies: Vec<_> = received
        .messages()
        .iter()
        .filter_map(|m| m.body())
        .collect();
    assert_eq!(bodies, ["{\"source\":\"aws.guardduty\"}"]);
}

#[tokio::test]
async fn long_poll_of_an_empty_queue_answers_empty_after_the_wait() {
    let sim = start(quiet_world());
    let client = sqs(&sim, REGION).await;
    let url = queue(&sim, &client, "quiet").await;
    let out = client
        .receive_message()
        .queue_url(&url)
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap();
    assert!(out.messages().is_empty());
}

#[tokio::test]
async fn receive_honours_max_number_of_messages() {
    let sim = start(quiet_world());
    let client = sqs(&sim, REGION).await;
    let url = queue(&sim, &client, "batch").await;
    for i in 0..12 {
        sim.send_message(ACCOUNT, REGION, "batch", &format!("m{i}"))
            .unwrap();
    }
    let one = client
        .receive_message()
        .queue_url(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(one.messages().len(), 1, "MaxNumberOfMessages defaults to 1");
    let ten = client
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    assert_eq!(ten.messages().len(), 10);
    let err = client
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(11)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("InvalidParameterValue"));
    let attributes = client
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .unwrap();
    let get = |name: QueueAttributeName| {
        attributes
            .attributes()
            .and_then(|a| a.get(&name))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(get(QueueAttributeName::ApproximateNumberOfMessages), "1");
    assert_eq!(
        get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        "11"
    );
    assert_eq!(
        get(QueueAttributeName::QueueArn),
        "arn:aws:sqs:eu-west-1:111111111111:batch"
    );
}

#[tokio::test]
async fn an_undeleted_message_comes_back_after_its_visibility_timeout() {
    let sim = start(quiet_world());
    let client = sqs(&sim, REGION).await;
    let url = queue(&sim, &client, "redeliver").await;
    let sent = client
        .send_message()
        .queue_url(&url)
        .message_body("trip")
        .send()
        .await
        .unwrap();
    // MD5 of "trip", as `md5sum` prints it.
    assert_eq!(
        sent.md5_of_message_body(),
        Some("7da7993d1249cb28b4e0c3e8524d15d2")
    );
    let receive = |visibility: Option<i32>, wait: i32| {
        client
            .receive_message()
            .queue_url(&url)
            .set_visibility_timeout(visibility)
            .wait_time_seconds(wait)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
    };
    let first = receive(Some(1), 0).await.unwrap();
    let first = first
        .messages()
        .first()
        .expect("the message is received")
        .clone();
    let count = |m: &aws_sdk_sqs::types::Message| {
        m.attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .cloned()
    };
    assert_eq!(count(&first).as_deref(), Some("1"));
    assert!(
        first
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
            .is_some_and(|t| t.parse::<u64>().is_ok_and(|ms| ms > 1_600_000_000_000))
    );
    assert!(
        receive(None, 0).await.unwrap().messages().is_empty(),
        "in flight: invisible"
    );
    let again = tokio::time::timeout(GUARD, receive(None, 10))
        .await
        .expect("redelivered after the 1 s visibility timeout")
        .unwrap();
    let again = again.messages().first().expect("redelivered").clone();
    assert_eq!(again.message_id(), first.message_id());
    assert_eq!(again.body(), Some("trip"));
    assert_ne!(again.receipt_handle(), first.receipt_handle());
    assert_eq!(count(&again).as_deref(), Some("2"));
}

#[tokio::test]
async fn a_stale_receipt_handle_deletes_nothing_and_an_invented_one_is_invalid() {
    let sim = start(quiet_world());
    let client = sqs(&sim, REGION).await;
    let url = queue(&sim, &client, "handles").await;
    sim.send_message(ACCOUNT, REGION, "handles", "x").unwrap();
    let receive = || {
        client
            .receive_message()
            .queue_url(&url)
            .visibility_timeout(0)
            .send()
    };
    let old = receive().await.unwrap().messages()[0].clone();
    let new = receive().await.unwrap().messages()[0].clone();
    let old_handle = old.receipt_handle().unwrap();
    let new_handle = new.receipt_handle().unwrap();
    // Make the latest receive in flight again so visibility changes apply.
    client
        .change_message_visibility()
        .queue_url(&url)
        .receipt_handle(new_handle)
        .visibility_timeout(0)
        .send()
        .await
        .unwrap_err()
        .tap(|err| {
            assert_eq!(
                code(err).as_deref(),
                Some("AWS.SimpleQueueService.MessageNotInflight")
            )
        });

    // DeleteMessage with the older receive's handle: 200, and the message stays (AWS documents).
    client
        .delete_message()
        .queue_url(&url)
        .receipt_handle(old_handle)
        .send()
        .await
        .expect("a stale handle is answered with success");
    assert_eq!(
        sim.queue_messages(ACCOUNT, REGION, "handles")
            .unwrap()
            .len(),
        1
    );

    let err = client
        .delete_message()
        .queue_url(&url)
        .receipt_handle("not-a-handle")
        .send()
        .await
        .unwrap_err();
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_receipt_handle_is_invalid())
    );

    let current = client
        .receive_message()
        .queue_url(&url)
        .visibility_timeout(30)
        .send()
        .await
        .unwrap()
        .messages()[0]
        .clone();
    let err = client
        .change_message_visibility()
        .queue_url(&url)
        .receipt_handle(old_handle)
        .visibility_timeout(5)
        .send()
        .await
        .unwrap_err();
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_receipt_handle_is_invalid())
    );
    client
        .delete_message()
        .queue_url(&url)
        .receipt_handle(current.receipt_handle().unwrap())
        .send()
        .await
        .unwrap();
    assert!(
        sim.queue_messages(ACCOUNT, REGION, "handles")
            .unwrap()
            .is_empty()
    );
    let deletions = sim.deletions(ACCOUNT, REGION, "handles").unwrap();
    let outcomes: Vec<bool> = deletions.iter().map(|d| d.deleted).collect();
    assert_eq!(outcomes, [false, true]);
    assert_eq!(deletions[1].receive_count, 3);
}

#[tokio::test]
async fn errors_arrive_as_the_sdk_types_them() {
    let sim = start(quiet_world());
    let client = sqs(&sim, REGION).await;
    let missing = sim.queue_url(ACCOUNT, "nope");
    let err = client
        .receive_message()
        .queue_url(&missing)
        .send()
        .await
        .unwrap_err();
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_queue_does_not_exist()),
        "{err:?}"
    );
    let err = client
        .get_queue_url()
        .queue_name("nope")
        .send()
        .await
        .unwrap_err();
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_queue_does_not_exist())
    );
    // A queue of 256 KiB messages refuses a bigger body with the documented error.
    let url = client
        .create_queue()
        .queue_name("small")
        .attributes(QueueAttributeName::MaximumMessageSize, "262144")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let err = client
        .send_message()
        .queue_url(&url)
        .message_body("x".repeat(262_145))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("InvalidParameterValue"));
    client
        .send_message()
        .queue_url(&url)
        .message_body("x".repeat(262_144))
        .send()
        .await
        .expect("a body of exactly the maximum is accepted");
    let err = client
        .create_queue()
        .queue_name("small")
        .attributes(QueueAttributeName::MaximumMessageSize, "1024")
        .send()
        .await
        .unwrap_err();
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_queue_name_exists())
    );
    // The same queue answers through its AWS-form URL too.
    let aws_url = format!("https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/small");
    let got = client
        .receive_message()
        .queue_url(aws_url)
        .send()
        .await
        .unwrap();
    assert_eq!(got.messages().len(), 1);
}

#[tokio::test]
async fn an_unreachable_queue_recovers_when_its_fault_ends() {
    let sim = start(quiet_world());
    let client = sqs(&sim, REGION).await;
    let url = queue(&sim, &client, "flaky").await;
    sim.set_queue_fault(
        ACCOUNT,
        REGION,
        "flaky",
        Some(QueueFault {
            kind: QueueFaultKind::DropConnection,
            for_ms: None,
        }),
    )
    .unwrap();
    let err = client
        .receive_message()
        .queue_url(&url)
        .send()
        .await
        .unwrap_err();
    assert!(
        err.as_service_error().is_none(),
        "a dropped connection, not an answer: {err:?}"
    );
    sim.set_queue_fault(
        ACCOUNT,
        REGION,
        "flaky",
        Some(QueueFault {
            kind: QueueFaultKind::InternalError,
            for_ms: Some(200),
        }),
    )
    .unwrap();
    let err = client
        .receive_message()
        .queue_url(&url)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(500));
    tokio::time::sleep(Duration::from_millis(300)).await;
    client
        .receive_message()
        .queue_url(&url)
        .send()
        .await
        .expect("the fault has run out");
    let log = sim.requests();
    assert!(
        log.iter().any(|r| r.operation == "ReceiveMessage"
            && r.error_code.as_deref() == Some("ConnectionDropped"))
    );
}
