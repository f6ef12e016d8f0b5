//! DescribeAlarmHistory through aws-sdk-cloudwatch (RPC v2 CBOR), and SetAlarmState as AWS does
//! it: a metric alarm returns to its evaluated state after its revert time, with both
//! transitions in its history; a composite alarm keeps the set state.

use std::time::Duration;

use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{AlarmType, HistoryItemType, ScanBy, StateValue};
use kms_sim::{SimHandle, World};

use crate::support::*;

fn world_with_revert_ms(ms: u64) -> World {
    let mut world = quiet_world();
    world.settings.alarm_set_state_revert_ms = ms;
    world
}

async fn set_alarm(cw: &aws_sdk_cloudwatch::Client, name: &str, value: StateValue) {
    cw.set_alarm_state()
        .alarm_name(name)
        .state_value(value)
        .state_reason("drill")
        .send()
        .await
        .unwrap();
}

/// Poll the simulator's own view until `alarm` is in `want` (bounded).
async fn wait_for_alarm(sim: &SimHandle, alarm: &str, want: &str) {
    for _ in 0..500 {
        let now = sim.alarms(ACCOUNT, REGION);
        if now
            .iter()
            .any(|a| a.alarm_name == alarm && a.state_value == want)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("alarm {alarm} never reached {want}");
}

fn states(item: &aws_sdk_cloudwatch::types::AlarmHistoryItem) -> (String, String) {
    let data: serde_json::Value = serde_json::from_str(item.history_data().expect("HistoryData"))
        .expect("HistoryData is JSON");
    (
        data["oldState"]["stateValue"].as_str().unwrap().to_owned(),
        data["newState"]["stateValue"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn set_alarm_state_on_a_metric_alarm_reverts_and_both_transitions_are_recorded() {
    let sim = start(world_with_revert_ms(200));
    let cw = cloudwatch(&sim, REGION).await;
    set_alarm(&cw, METRIC_ALARM, StateValue::Alarm).await;
    wait_for_alarm(&sim, METRIC_ALARM, "OK").await;
    let described = cw
        .describe_alarms()
        .alarm_names(METRIC_ALARM)
        .send()
        .await
        .unwrap();
    assert_eq!(
        described.metric_alarms()[0].state_value(),
        Some(&StateValue::Ok)
    );
    let history = cw
        .describe_alarm_history()
        .alarm_name(METRIC_ALARM)
        .history_item_type(HistoryItemType::StateUpdate)
        .scan_by(ScanBy::TimestampAscending)
        .send()
        .await
        .unwrap();
    let items = history.alarm_history_items();
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(states(&items[0]), ("OK".into(), "ALARM".into()));
    assert_eq!(states(&items[1]), ("ALARM".into(), "OK".into()));
    assert_eq!(
        items[0].history_summary(),
        Some("Alarm updated from OK to ALARM")
    );
    assert_eq!(
        items[1].history_summary(),
        Some("Alarm updated from ALARM to OK")
    );
    for item in items {
        assert_eq!(item.alarm_name(), Some(METRIC_ALARM));
        assert_eq!(item.alarm_type(), Some(&AlarmType::MetricAlarm));
        assert_eq!(
            item.history_item_type(),
            Some(&HistoryItemType::StateUpdate)
        );
    }
    // The revert is stamped the alarm's revert time after the set (±1 ms of float rounding in
    // the epoch-seconds timestamps), however late this test read it.
    let set_ms = items[0].timestamp().unwrap().to_millis().unwrap();
    let back_ms = items[1].timestamp().unwrap().to_millis().unwrap();
    assert!(
        (199..=201).contains(&(back_ms - set_ms)),
        "{}",
        back_ms - set_ms
    );
    // Newest first by default.
    let newest = cw
        .describe_alarm_history()
        .alarm_name(METRIC_ALARM)
        .send()
        .await
        .unwrap();
    assert_eq!(states(&newest.alarm_history_items()[0]).1, "OK");
}

#[tokio::test]
async fn a_set_state_holds_for_the_alarms_revert_time() {
    let sim = start(with_clock_alarm(world_with_revert_ms(50)));
    sim.set_alarm_revert(ACCOUNT, REGION, METRIC_ALARM, Duration::from_secs(3600))
        .unwrap();
    let cw = cloudwatch(&sim, REGION).await;
    set_alarm(&cw, METRIC_ALARM, StateValue::Alarm).await;
    // The clock alarm has the world's 50 ms: once it is back, the other one would be too.
    set_alarm(&cw, "clock", StateValue::Alarm).await;
    wait_for_alarm(&sim, "clock", "OK").await;
    let described = cw
        .describe_alarms()
        .alarm_names(METRIC_ALARM)
        .send()
        .await
        .unwrap();
    assert_eq!(
        described.metric_alarms()[0].state_value(),
        Some(&StateValue::Alarm),
        "an hour's revert time: still ALARM"
    );
}

fn with_clock_alarm(mut world: World) -> World {
    let region = world
        .accounts
        .get_mut(ACCOUNT)
        .unwrap()
        .get_mut(REGION)
        .unwrap();
    region.alarms.push(kms_sim::AlarmDecl {
        name: "clock".into(),
        kind: kms_sim::AlarmKind::Metric,
        state: kms_sim::AlarmState::Ok,
        state_reason: None,
        alarm_rule: None,
        namespace: None,
        metric_name: None,
        threshold: None,
        set_state_revert_ms: None,
    });
    world
}

async fn composite_history(cw: &aws_sdk_cloudwatch::Client) -> Vec<(String, String)> {
    cw.describe_alarm_history()
        .alarm_name(COMPOSITE_ALARM)
        .alarm_types(AlarmType::CompositeAlarm)
        .scan_by(ScanBy::TimestampAscending)
        .send()
        .await
        .unwrap()
        .alarm_history_items()
        .iter()
        .map(states)
        .collect()
}

#[tokio::test]
async fn a_composite_alarm_keeps_the_set_state_until_a_child_changes() {
    // The demo composite's rule is ALARM("kms-killswitch-hsm-anomaly").
    let sim = start(with_clock_alarm(world_with_revert_ms(50)));
    let cw = cloudwatch(&sim, REGION).await;
    set_alarm(&cw, COMPOSITE_ALARM, StateValue::Alarm).await;
    // The clock alarm is no child of it: once the clock is back, 50 ms have passed.
    set_alarm(&cw, "clock", StateValue::Alarm).await;
    wait_for_alarm(&sim, "clock", "OK").await;
    let described = cw
        .describe_alarms()
        .alarm_names(COMPOSITE_ALARM)
        .alarm_types(AlarmType::CompositeAlarm)
        .send()
        .await
        .unwrap();
    assert_eq!(
        described.composite_alarms()[0].state_value(),
        Some(&StateValue::Alarm)
    );
    // Composite history only when asked for by AlarmTypes, as DescribeAlarms.
    let default_types = cw
        .describe_alarm_history()
        .alarm_name(COMPOSITE_ALARM)
        .send()
        .await
        .unwrap();
    assert!(default_types.alarm_history_items().is_empty());
    let items = cw
        .describe_alarm_history()
        .alarm_name(COMPOSITE_ALARM)
        .alarm_types(AlarmType::CompositeAlarm)
        .send()
        .await
        .unwrap();
    assert_eq!(
        items.alarm_history_items()[0].alarm_type(),
        Some(&AlarmType::CompositeAlarm)
    );
    assert_eq!(
        composite_history(&cw).await,
        [("OK".into(), "ALARM".into())]
    );
    // Its child changes (ALARM, then back to OK): the rule is evaluated again at each change.
    set_alarm(&cw, METRIC_ALARM, StateValue::Alarm).await;
    wait_for_alarm(&sim, METRIC_ALARM, "OK").await;
    assert_eq!(
        composite_history(&cw).await,
        [("OK".into(), "ALARM".into()), ("ALARM".into(), "OK".into())]
    );
}

#[tokio::test]
async fn a_child_blip_nobody_read_still_shows_in_the_composite_history() {
    let sim = start(world_with_revert_ms(50));
    let cw = cloudwatch(&sim, REGION).await;
    set_alarm(&cw, METRIC_ALARM, StateValue::Alarm).await;
    // Nothing reads the alarms until the child is back to OK.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        composite_history(&cw).await,
        [("OK".into(), "ALARM".into()), ("ALARM".into(), "OK".into())]
    );
    let composite = sim
        .alarms(ACCOUNT, REGION)
        .into_iter()
        .find(|a| a.alarm_name == COMPOSITE_ALARM)
        .unwrap();
    assert_eq!(composite.state_value, "OK");
}

#[tokio::test]
async fn every_change_is_recorded_and_history_filters_and_paginates() {
    let sim = start(world_with_revert_ms(3_600_000));
    let cw = cloudwatch(&sim, REGION).await;
    let before = DateTime::from_millis(i64::try_from(kms_sim_now_ms()).unwrap() - 1);
    // Five changes through the simulator (the alarm's own evaluation), one no-op.
    for value in ["ALARM", "OK", "ALARM", "ALARM", "INSUFFICIENT_DATA", "OK"] {
        sim.set_alarm_state(ACCOUNT, REGION, METRIC_ALARM, value, "evaluated")
            .unwrap();
    }
    let all = cw
        .describe_alarm_history()
        .scan_by(ScanBy::TimestampAscending)
        .send()
        .await
        .unwrap();
    let seen: Vec<_> = all.alarm_history_items().iter().map(states).collect();
    let want: Vec<(String, String)> = [
        ("OK", "ALARM"),
        ("ALARM", "OK"),
        ("OK", "ALARM"),
        ("ALARM", "INSUFFICIENT_DATA"),
        ("INSUFFICIENT_DATA", "OK"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(seen, want);
    // Pages of 2 through NextToken, and the SDK paginator, see the same five.
    let mut token = None;
    let mut paged = 0;
    loop {
        let page = cw
            .describe_alarm_history()
            .max_records(2)
            .set_next_token(token)
            .send()
            .await
            .unwrap();
        assert!(page.alarm_history_items().len() <= 2);
        paged += page.alarm_history_items().len();
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    assert_eq!(paged, 5);
    // Date filters and item types.
    let none_before = cw
        .describe_alarm_history()
        .end_date(before)
        .send()
        .await
        .unwrap();
    assert!(none_before.alarm_history_items().is_empty());
    let since = cw
        .describe_alarm_history()
        .start_date(before)
        .send()
        .await
        .unwrap();
    assert_eq!(since.alarm_history_items().len(), 5);
    let actions = cw
        .describe_alarm_history()
        .history_item_type(HistoryItemType::Action)
        .send()
        .await
        .unwrap();
    assert!(actions.alarm_history_items().is_empty());
    let unknown = cw
        .describe_alarm_history()
        .alarm_name("no-such-alarm")
        .send()
        .await
        .unwrap();
    assert!(unknown.alarm_history_items().is_empty());
    // Errors.
    let err = cw
        .describe_alarm_history()
        .max_records(0)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        err.as_service_error()
            .and_then(aws_sdk_cloudwatch::error::ProvideErrorMetadata::code),
        Some("InvalidParameterValue")
    );
    let err = cw
        .describe_alarm_history()
        .next_token("garbage")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        err.as_service_error()
            .and_then(aws_sdk_cloudwatch::error::ProvideErrorMetadata::code),
        Some("InvalidNextToken")
    );
}

#[tokio::test]
async fn a_revert_time_set_over_the_control_api_applies() {
    let sim = start(world_with_revert_ms(3_600_000));
    let body = format!(
        r#"{{"account":"{ACCOUNT}","region":"{REGION}","alarm_name":"{METRIC_ALARM}","set_state_revert_ms":20}}"#
    );
    let (status, text) = http(sim.addr(), "POST", "/_sim/alarms/revert", &body).await;
    assert_eq!(status, 200, "{text}");
    let cw = cloudwatch(&sim, REGION).await;
    set_alarm(&cw, METRIC_ALARM, StateValue::Alarm).await;
    wait_for_alarm(&sim, METRIC_ALARM, "OK").await;
    let missing = body.replace(METRIC_ALARM, "no-such-alarm");
    let (status, _) = http(sim.addr(), "POST", "/_sim/alarms/revert", &missing).await;
    assert_eq!(status, 404);
}

fn kms_sim_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One signed awsJson1_0 CloudWatch request (what botocore sends when it picks that protocol);
/// returns the status and the JSON body.
async fn cloudwatch_json(sim: &SimHandle, operation: &str, body: &str) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = sim.addr().to_string();
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let amz_date: String = stamp.chars().filter(|c| !matches!(c, '-' | ':')).collect();
    let target = format!("GraniteServiceVersion20100801.{operation}");
    let headers: Vec<(&str, &str)> = vec![
        ("host", &host),
        ("x-amz-date", &amz_date),
        ("content-type", "application/x-amz-json-1.0"),
        ("x-amz-target", &target),
    ];
    let authorization = kms_sim::sigv4::sign_request(
        ACCESS_KEY_ID,
        SECRET,
        REGION,
        "monitoring",
        "POST",
        "/",
        &headers,
        body.as_bytes(),
    )
    .unwrap();
    let mut request = "POST / HTTP/1.1\r\nconnection: close\r\n".to_owned();
    for (name, value) in &headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!(
        "authorization: {authorization}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ));
    let mut stream = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(serde_json::Value::Null);
    (status, json)
}

#[tokio::test]
async fn describe_alarm_history_speaks_aws_json_1_0_as_the_cli_sends_it() {
    let sim = start(world_with_revert_ms(3_600_000));
    let since = kms_sim_now_ms() as f64 / 1000.0 - 1.0;
    sim.set_alarm_state(ACCOUNT, REGION, METRIC_ALARM, "ALARM", "evaluated")
        .unwrap();
    let body = format!(
        r#"{{"AlarmName":"{METRIC_ALARM}","HistoryItemType":"StateUpdate","StartDate":{since},"ScanBy":"TimestampAscending","MaxRecords":10}}"#
    );
    let (status, out) = cloudwatch_json(&sim, "DescribeAlarmHistory", &body).await;
    assert_eq!(status, 200, "{out}");
    let items = out["AlarmHistoryItems"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["HistorySummary"], "Alarm updated from OK to ALARM");
    assert_eq!(items[0]["AlarmType"], "MetricAlarm");
    assert!(items[0]["Timestamp"].as_f64().unwrap() >= since);
    let data: serde_json::Value =
        serde_json::from_str(items[0]["HistoryData"].as_str().unwrap()).unwrap();
    assert_eq!(data["newState"]["stateValue"], "ALARM");
    let (status, out) =
        cloudwatch_json(&sim, "DescribeAlarmHistory", r#"{"ScanBy":"Sideways"}"#).await;
    assert_eq!(status, 400);
    assert_eq!(out["__type"], "InvalidParameterValue");
}
