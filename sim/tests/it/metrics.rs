//! CloudWatch PutMetricData through aws-sdk-cloudwatch (RPC v2 CBOR): recorded with its
//! dimensions, unit, timestamp and arrival time; the namespace and value rules refused as AWS
//! refuses them; the control API's view of it and of SQS and SNS.

use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};

use crate::support::*;

fn heartbeat(host: &str) -> MetricDatum {
    MetricDatum::builder()
        .metric_name("Heartbeat")
        .value(1.0)
        .unit(StandardUnit::Count)
        .timestamp(DateTime::from(std::time::SystemTime::now()))
        .dimensions(Dimension::builder().name("Host").value(host).build())
        .build()
}

#[tokio::test]
async fn put_metric_data_is_recorded_with_its_dimensions() {
    let sim = start(quiet_world());
    let cw = cloudwatch(&sim, REGION).await;
    cw.put_metric_data()
        .namespace("KmsKillswitch")
        .metric_data(heartbeat("sec-01"))
        .send()
        .await
        .expect("PutMetricData succeeds");
    let data = sim.metric_data();
    assert_eq!(data.len(), 1);
    let datum = &data[0];
    assert_eq!(
        (
            datum.account.as_str(),
            datum.region.as_str(),
            datum.namespace.as_str(),
            datum.metric_name.as_str()
        ),
        (ACCOUNT, REGION, "KmsKillswitch", "Heartbeat")
    );
    assert_eq!(datum.dimensions, [("Host".to_owned(), "sec-01".to_owned())]);
    assert_eq!(
        (datum.value, datum.unit.as_deref()),
        (Some(1.0), Some("Count"))
    );
    assert!(datum.timestamp.is_some_and(|t| t > 1.6e9));
    assert!(datum.ts_us > 1_600_000_000_000_000);
    let log = sim.requests();
    assert!(
        log.iter()
            .any(|r| r.operation == "PutMetricData" && r.protocol == "rpcv2Cbor")
    );
}

#[tokio::test]
async fn put_metric_data_refuses_aws_namespaces_and_bad_values() {
    let sim = start(quiet_world());
    let cw = cloudwatch(&sim, REGION).await;
    let err = cw
        .put_metric_data()
        .namespace("AWS/KMS")
        .metric_data(heartbeat("h"))
        .send()
        .await
        .unwrap_err();
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_invalid_parameter_value_exception()),
        "{err:?}"
    );
    let both = MetricDatum::builder()
        .metric_name("M")
        .value(1.0)
        .values(2.0)
        .build();
    let err = cw
        .put_metric_data()
        .namespace("KmsKillswitch")
        .metric_data(both)
        .send()
        .await
        .unwrap_err();
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_invalid_parameter_combination_exception())
    );
    assert!(
        sim.metric_data().is_empty(),
        "a refused request records nothing"
    );
}

#[tokio::test]
async fn control_api_steers_queues_and_topics_and_shows_what_arrived() {
    let sim = start(quiet_world());
    let addr = sim.addr();
    let (status, body) = http(
        addr,
        "POST",
        "/_sim/sqs/queues",
        r#"{"account":"111111111111","region":"eu-west-1","queue_name":"host-a"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let queue: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(queue["queue_url"], sim.queue_url(ACCOUNT, "host-a"));
    let (_, body) = http(
        addr,
        "POST",
        "/_sim/sns/topics",
        r#"{"account":"111111111111","region":"eu-west-1","name":"fleet"}"#,
    )
    .await;
    let topic: serde_json::Value = serde_json::from_str(&body).unwrap();
    let topic_arn = topic["topic_arn"].as_str().unwrap().to_owned();
    let (status, body) = http(
        addr,
        "POST",
        "/_sim/sns/subscriptions",
        &format!(
            r#"{{"topic_arn":"{topic_arn}","queue_arn":"arn:aws:sqs:eu-west-1:111111111111:host-a"}}"#
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = http(
        addr,
        "POST",
        "/_sim/sqs/messages",
        r#"{"account":"111111111111","region":"eu-west-1","queue_name":"host-a","message_body":"hello"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let client = sns(&sim, REGION).await;
    client
        .publish()
        .topic_arn(&topic_arn)
        .message("trip")
        .send()
        .await
        .unwrap();
    let (_, body) = http(
        addr,
        "GET",
        "/_sim/sqs/messages?account=111111111111&region=eu-west-1&queue_name=host-a",
        "",
    )
    .await;
    let messages: Vec<kms_sim::MessageView> = serde_json::from_str(&body).unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0].body, "hello");
    assert!(messages[1].body.contains("\"Type\":\"Notification\""));
    assert!(messages.iter().all(|m| m.state == "visible"));
    let (_, body) = http(addr, "GET", "/_sim/sns/publishes", "").await;
    let publishes: Vec<kms_sim::PublishRecord> = serde_json::from_str(&body).unwrap();
    assert_eq!(publishes[0].outcome, "delivered");
    let (status, _) = http(
        addr,
        "POST",
        "/_sim/sns/fault",
        &format!(r#"{{"topic_arn":"{topic_arn}","fault":"hang"}}"#),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        sim.topics(ACCOUNT, REGION)[0].fault,
        Some(kms_sim::TopicFault::Hang)
    );
    let (status, _) = http(
        addr,
        "POST",
        "/_sim/sqs/fault",
        r#"{"account":"111111111111","region":"eu-west-1","queue_name":"host-a","fault":{"kind":"drop_connection","for_ms":30000}}"#,
    )
    .await;
    assert_eq!(status, 200);
    let cw = cloudwatch(&sim, REGION).await;
    cw.put_metric_data()
        .namespace("KmsKillswitch")
        .metric_data(heartbeat("h"))
        .send()
        .await
        .unwrap();
    let (_, body) = http(addr, "GET", "/_sim/metrics?namespace=KmsKillswitch", "").await;
    let data: Vec<kms_sim::MetricDatumRecord> = serde_json::from_str(&body).unwrap();
    assert_eq!(data.len(), 1);
    let (status, _) = http(
        addr,
        "GET",
        "/_sim/sqs/messages?account=111111111111&region=eu-west-1&queue_name=nope",
        "",
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_large_put_metric_data_arrives_gzip_compressed_and_is_read() {
    let sim = start(quiet_world());
    let cw = cloudwatch(&sim, REGION).await;
    let mut request = cw.put_metric_data().namespace("KmsKillswitch");
    // 1,000 datums are far past the SDK's 10 KiB compression threshold.
    for i in 0..1000 {
        request = request.metric_data(heartbeat(&format!("host-{i:04}")));
    }
    request
        .send()
        .await
        .expect("a compressed PutMetricData succeeds");
    let data = sim.metric_data();
    assert_eq!(data.len(), 1000);
    assert_eq!(data[999].dimensions[0].1, "host-0999");
}
