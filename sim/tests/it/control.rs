//! The `/_sim/` JSON control API over plain HTTP, as the demo and shell scripts use it; its
//! changes are what the real SDK sees next.

use aws_sdk_cloudwatch::types::StateValue;
use aws_sdk_kms::types::ConnectionStateType;
use serde_json::{Value, json};

use crate::support::*;

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test]
async fn world_health_and_key_store_listing() {
    let sim = start(quiet_world());
    let (status, body) = http(sim.addr(), "GET", "/_sim/health", "").await;
    assert_eq!((status, parse(&body)), (200, json!({"status": "ok"})));
    let (status, body) = http(sim.addr(), "GET", "/_sim/world", "").await;
    assert_eq!(status, 200);
    let world = parse(&body);
    assert_eq!(world["credentials"][0]["access_key_id"], "AKIDKMSSIMDEMO");
    assert_eq!(
        world["accounts"]["222222222222"]["us-east-1"]["key_stores"][1]["type"],
        "EXTERNAL_KEY_STORE"
    );
    let (status, body) = http(
        sim.addr(),
        "GET",
        "/_sim/key-stores?account=111111111111&region=eu-west-1",
        "",
    )
    .await;
    assert_eq!(status, 200);
    let stores = parse(&body);
    assert_eq!(stores[0]["custom_key_store_id"], HSM_EU);
    assert_eq!(stores[0]["connection_state"], "CONNECTED");
    let (status, _) = http(sim.addr(), "GET", "/_sim/key-stores", "").await;
    assert_eq!(status, 400);
    let (status, _) = http(sim.addr(), "GET", "/_sim/nothing-here", "").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn key_store_state_set_over_http_is_what_kms_describes() {
    let sim = start(quiet_world());
    let body = json!({
        "account": ACCOUNT, "region": REGION, "custom_key_store_id": HSM_EU,
        "connection_state": "DISCONNECTED"
    });
    let (status, _) = http(
        sim.addr(),
        "POST",
        "/_sim/key-stores/state",
        &body.to_string(),
    )
    .await;
    assert_eq!(status, 200);
    let kms = kms(&sim, REGION).await;
    assert_eq!(
        described_state(&kms, HSM_EU).await,
        Some(ConnectionStateType::Disconnected)
    );

    // An attacker reconnecting the store.
    let body = json!({
        "account": ACCOUNT, "region": REGION, "custom_key_store_id": HSM_EU,
        "connection_state": "CONNECTED"
    });
    http(
        sim.addr(),
        "POST",
        "/_sim/key-stores/state",
        &body.to_string(),
    )
    .await;
    assert_eq!(
        sim.connection_state(ACCOUNT, REGION, HSM_EU).as_deref(),
        Some("CONNECTED")
    );

    let bad = json!({
        "account": ACCOUNT, "region": REGION, "custom_key_store_id": HSM_EU,
        "connection_state": "SIDEWAYS"
    });
    let (status, body) = http(
        sim.addr(),
        "POST",
        "/_sim/key-stores/state",
        &bad.to_string(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let missing = json!({
        "account": ACCOUNT, "region": REGION, "custom_key_store_id": "cks-00000000000000000",
        "connection_state": "CONNECTED"
    });
    let (status, _) = http(
        sim.addr(),
        "POST",
        "/_sim/key-stores/state",
        &missing.to_string(),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn alarm_state_set_over_http_is_what_cloudwatch_describes() {
    let sim = start(quiet_world());
    let body = json!({
        "account": ACCOUNT, "region": REGION, "alarm_name": METRIC_ALARM,
        "state_value": "ALARM", "state_reason": "demo"
    });
    let (status, _) = http(sim.addr(), "POST", "/_sim/alarms/state", &body.to_string()).await;
    assert_eq!(status, 200);
    let cw = cloudwatch(&sim, REGION).await;
    let out = cw.describe_alarms().send().await.unwrap();
    assert_eq!(
        out.metric_alarms()[0].state_value(),
        Some(&StateValue::Alarm)
    );
    assert_eq!(out.metric_alarms()[0].state_reason(), Some("demo"));
    let (status, body) = http(
        sim.addr(),
        "GET",
        "/_sim/alarms?account=111111111111&region=eu-west-1",
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(parse(&body)[0]["state_value"], "ALARM");
}

#[tokio::test]
async fn faults_and_request_log_over_http() {
    let sim = start(quiet_world());
    let faults = json!({"rules": [{"operation": "DescribeCustomKeyStores", "throttle_rate": 1.0}]});
    let (status, _) = http(sim.addr(), "POST", "/_sim/faults", &faults.to_string()).await;
    assert_eq!(status, 200);
    let (_, body) = http(sim.addr(), "GET", "/_sim/faults", "").await;
    assert_eq!(parse(&body)["rules"][0]["throttle_rate"], 1.0);
    let kms = kms(&sim, REGION).await;
    let err = kms.describe_custom_key_stores().send().await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("ThrottlingException"));

    let (status, body) = http(sim.addr(), "GET", "/_sim/requests", "").await;
    assert_eq!(status, 200);
    let log = parse(&body);
    let records = log.as_array().unwrap();
    let last = records.last().unwrap();
    assert_eq!(last["service"], "kms");
    assert_eq!(last["operation"], "DescribeCustomKeyStores");
    assert_eq!(last["status"], 400);
    assert_eq!(last["error_code"], "ThrottlingException");
    assert!(last["ts_us"].as_u64().unwrap() > 1_600_000_000_000_000);
    assert!(
        records
            .iter()
            .any(|r| r["service"] == "sim" && r["operation"] == "SetFaults")
    );

    let unknown_field = json!({"rules": [{"operaton": "typo"}]});
    let (status, _) = http(
        sim.addr(),
        "POST",
        "/_sim/faults",
        &unknown_field.to_string(),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = http(sim.addr(), "DELETE", "/_sim/requests", "").await;
    assert_eq!(status, 200);
    assert!(sim.requests().is_empty());
}
