//! SNS through aws-sdk-sns (awsQuery): CreateTopic, Subscribe (sqs), ListTopics, Publish fanning
//! out the notification envelope (or the raw message) to every subscribed queue, typed errors,
//! and the faults that make a topic refuse or hang.

use std::time::Duration;

use aws_sdk_sns::types::MessageAttributeValue;
use kms_sim::TopicFault;
use serde_json::Value;

use crate::support::*;

async fn topic(client: &aws_sdk_sns::Client, name: &str) -> String {
    client
        .create_topic()
        .name(name)
        .send()
        .await
        .expect("CreateTopic succeeds")
        .topic_arn()
        .expect("CreateTopic returns the TopicArn")
        .to_owned()
}

async fn subscribe(client: &aws_sdk_sns::Client, topic_arn: &str, queue: &str, raw: bool) {
    let mut request = client
        .subscribe()
        .topic_arn(topic_arn)
        .protocol("sqs")
        .endpoint(format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}"));
    if raw {
        request = request.attributes("RawMessageDelivery", "true");
    }
    let arn = request.send().await.expect("Subscribe succeeds");
    assert!(
        arn.subscription_arn()
            .is_some_and(|a| a.starts_with(&format!("{topic_arn}:")))
    );
}

#[tokio::test]
async fn one_publish_reaches_three_subscribed_queues_in_the_sns_envelope() {
    let sim = start(quiet_world());
    let client = sns(&sim, REGION).await;
    let queues = sqs(&sim, REGION).await;
    let arn = topic(&client, "kms-killswitch-fleet").await;
    assert_eq!(
        arn,
        "arn:aws:sns:eu-west-1:111111111111:kms-killswitch-fleet"
    );
    for host in ["host-a", "host-b", "host-c", "host-raw"] {
        sim.create_queue(ACCOUNT, REGION, host).unwrap();
        subscribe(&client, &arn, host, host == "host-raw").await;
    }
    let published = client
        .publish()
        .topic_arn(&arn)
        .subject("kms-killswitch trip")
        .message("{\"action\":\"trip\"}")
        .message_attributes(
            "origin",
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value("red-button")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("Publish succeeds");
    let message_id = published.message_id().expect("a MessageId").to_owned();
    for host in ["host-a", "host-b", "host-c"] {
        let got = queues
            .receive_message()
            .queue_url(sim.queue_url(ACCOUNT, host))
            .send()
            .await
            .unwrap();
        let body = got.messages()[0].body().unwrap();
        let envelope: Value = serde_json::from_str(body).expect("the envelope is JSON");
        assert_eq!(envelope["Type"], "Notification");
        assert_eq!(envelope["MessageId"], message_id.as_str());
        assert_eq!(envelope["TopicArn"], arn.as_str());
        assert_eq!(envelope["Subject"], "kms-killswitch trip");
        assert_eq!(envelope["Message"], "{\"action\":\"trip\"}");
        assert_eq!(envelope["SignatureVersion"], "1");
        assert_eq!(
            envelope["MessageAttributes"]["origin"]["Value"],
            "red-button"
        );
        for field in ["Timestamp", "Signature", "SigningCertURL", "UnsubscribeURL"] {
            assert!(
                envelope[field].as_str().is_some_and(|v| !v.is_empty()),
                "{field}"
            );
        }
        assert!(
            envelope["Timestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z') && t.contains('T'))
        );
    }
    let raw = queues
        .receive_message()
        .queue_url(sim.queue_url(ACCOUNT, "host-raw"))
        .message_attribute_names("All")
        .send()
        .await
        .unwrap();
    let raw = &raw.messages()[0];
    assert_eq!(
        raw.body(),
        Some("{\"action\":\"trip\"}"),
        "raw delivery: the message alone"
    );
    assert!(
        raw.message_attributes()
            .is_some_and(|a| a.contains_key("origin"))
    );
    let record = sim.publishes().pop().expect("the publish is recorded");
    assert_eq!(record.outcome, "delivered");
    assert_eq!(record.message_id.as_deref(), Some(message_id.as_str()));
    assert_eq!(record.delivered_to.len(), 4);
    let listed = client.list_topics().send().await.unwrap();
    let arns: Vec<_> = listed
        .topics()
        .iter()
        .filter_map(|t| t.topic_arn())
        .collect();
    assert_eq!(arns, [arn.as_str()]);
}

#[tokio::test]
async fn a_refusing_topic_answers_its_fault_and_delivers_nothing() {
    let sim = start(quiet_world());
    let client = sns(&sim, REGION).await;
    let arn = topic(&client, "refusing").await;
    sim.create_queue(ACCOUNT, REGION, "q").unwrap();
    subscribe(&client, &arn, "q", false).await;
    sim.set_topic_fault(&arn, Some(TopicFault::AuthorizationError))
        .unwrap();
    let err = client
        .publish()
        .topic_arn(&arn)
        .message("m")
        .send()
        .await
        .unwrap_err();
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_authorization_error_exception()),
        "{err:?}"
    );
    sim.set_topic_fault(&arn, Some(TopicFault::InternalError))
        .unwrap();
    let err = client
        .publish()
        .topic_arn(&arn)
        .message("m")
        .send()
        .await
        .unwrap_err();
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_internal_error_exception())
    );
    assert!(sim.queue_messages(ACCOUNT, REGION, "q").unwrap().is_empty());
    let outcomes: Vec<_> = sim
        .publishes()
        .into_iter()
        .map(|p| (p.outcome, p.error_code))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("refused".to_owned(), Some("AuthorizationError".to_owned())),
            ("refused".to_owned(), Some("InternalError".to_owned()))
        ]
    );
    sim.set_topic_fault(&arn, None).unwrap();
    client
        .publish()
        .topic_arn(&arn)
        .message("m")
        .send()
        .await
        .unwrap();
    assert_eq!(sim.queue_messages(ACCOUNT, REGION, "q").unwrap().len(), 1);
}

#[tokio::test]
async fn a_hanging_topic_never_answers_until_the_client_times_out() {
    let sim = start(quiet_world());
    let config = sdk_config(&sim, REGION, ACCESS_KEY_ID, SECRET).await;
    let client = aws_sdk_sns::Client::from_conf(
        aws_sdk_sns::config::Builder::from(&config)
            .timeout_config(
                aws_sdk_sns::config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(Duration::from_millis(500))
                    .build(),
            )
            .build(),
    );
    let arn = topic(&client, "hanging").await;
    sim.set_topic_fault(&arn, Some(TopicFault::Hang)).unwrap();
    let err = client
        .publish()
        .topic_arn(&arn)
        .message("m")
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(err, aws_sdk_sns::error::SdkError::TimeoutError(_)),
        "{err:?}"
    );
    let record = sim.publishes().pop().unwrap();
    assert_eq!(record.outcome, "hung");
}

#[tokio::test]
async fn publish_checks_its_topic_and_message() {
    let sim = start(quiet_world());
    let client = sns(&sim, REGION).await;
    let err = client
        .publish()
        .topic_arn(format!("arn:aws:sns:{REGION}:{ACCOUNT}:missing"))
        .message("m")
        .send()
        .await
        .unwrap_err();
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_not_found_exception())
    );
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(404));
    let arn = topic(&client, "t").await;
    let err = client
        .publish()
        .topic_arn(&arn)
        .message("x".repeat(262_145))
        .send()
        .await
        .unwrap_err();
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_invalid_parameter_exception())
    );
    let rejected: Vec<_> = sim.publishes().into_iter().map(|p| p.outcome).collect();
    assert_eq!(rejected, ["rejected", "rejected"]);
}

#[tokio::test]
async fn topics_and_queues_declared_in_the_world_fan_out() {
    let world = kms_sim::World::from_yaml_str(
        r#"
credentials:
  - {access_key_id: AKIDKMSSIMDEMO, secret_access_key: kms-sim-demo-secret, account: "111111111111"}
settings: {rate_limit_rps: 0}
accounts:
  "111111111111":
    eu-west-1:
      queues:
        - {name: host-a, visibility_timeout_seconds: 5}
        - {name: host-b}
      topics:
        - name: fleet
          subscriptions:
            - {queue: host-a}
            - {queue: "arn:aws:sqs:eu-west-1:111111111111:host-b", raw_message_delivery: true}
"#,
    )
    .expect("the world parses");
    let sim = start(world);
    let topic = &sim.topics(ACCOUNT, REGION)[0];
    assert_eq!(topic.subscriptions.len(), 2);
    sns(&sim, REGION)
        .await
        .publish()
        .topic_arn(&topic.topic_arn)
        .message("trip")
        .send()
        .await
        .unwrap();
    let a = sim.queue_messages(ACCOUNT, REGION, "host-a").unwrap();
    let b = sim.queue_messages(ACCOUNT, REGION, "host-b").unwrap();
    assert!(a[0].body.contains("\"Message\":\"trip\""));
    assert_eq!(b[0].body, "trip");
    assert_eq!(sim.queues(ACCOUNT, REGION)[0].visibility_timeout_seconds, 5);
    let bad = "credentials: []\naccounts:\n  \"111111111111\":\n    eu-west-1:\n      queues:\n        - {name: \"no spaces\"}\n";
    assert!(kms_sim::World::from_yaml_str(bad).is_err());
}
