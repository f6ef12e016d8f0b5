//! CloudWatch alarms through aws-sdk-cloudwatch (Smithy RPC v2 CBOR): AlarmTypes semantics,
//! filters, NextToken pagination, SetAlarmState, typed errors.

use aws_sdk_cloudwatch::types::{AlarmType, StateValue};
use kms_sim::{AlarmDecl, AlarmKind, AlarmState, World};

use crate::support::*;

fn world_with_many_alarms() -> World {
    let mut world = quiet_world();
    let region = world
        .accounts
        .get_mut(ACCOUNT)
        .unwrap()
        .get_mut(REGION)
        .unwrap();
    for i in 0..5 {
        region.alarms.push(AlarmDecl {
            name: format!("extra-metric-{i}"),
            kind: AlarmKind::Metric,
            state: if i == 0 {
                AlarmState::Alarm
            } else {
                AlarmState::Ok
            },
            state_reason: None,
            alarm_rule: None,
            namespace: None,
            metric_name: None,
            threshold: None,
            set_state_revert_ms: None,
        });
    }
    region.alarms.push(AlarmDecl {
        name: "extra-composite".into(),
        kind: AlarmKind::Composite,
        state: AlarmState::InsufficientData,
        state_reason: Some("no data yet".into()),
        alarm_rule: Some("ALARM(extra-metric-0)".into()),
        namespace: None,
        metric_name: None,
        threshold: None,
        set_state_revert_ms: None,
    });
    world
}

#[tokio::test]
async fn describe_alarms_without_alarm_types_returns_metric_alarms_only() {
    let sim = start(quiet_world());
    let cw = cloudwatch(&sim, REGION).await;
    let out = cw.describe_alarms().send().await.unwrap();
    let metric: Vec<_> = out
        .metric_alarms()
        .iter()
        .filter_map(|a| a.alarm_name())
        .collect();
    assert_eq!(metric, [METRIC_ALARM]);
    assert!(out.composite_alarms().is_empty());
    let alarm = &out.metric_alarms()[0];
    assert_eq!(alarm.state_value(), Some(&StateValue::Ok));
    assert!(
        alarm
            .state_updated_timestamp()
            .is_some_and(|t| t.secs() > 1_600_000_000)
    );
    assert_eq!(
        alarm.alarm_arn(),
        Some("arn:aws:cloudwatch:eu-west-1:111111111111:alarm:kms-killswitch-hsm-anomaly")
    );
    assert_eq!(alarm.metric_name(), Some("HsmAnomalies"));
    // No alarms in another region.
    let us = cloudwatch(&sim, OTHER_REGION).await;
    assert!(
        us.describe_alarms()
            .send()
            .await
            .unwrap()
            .metric_alarms()
            .is_empty()
    );
}

#[tokio::test]
async fn describe_alarms_with_alarm_types_and_names_returns_composites_too() {
    let sim = start(quiet_world());
    let cw = cloudwatch(&sim, REGION).await;
    let out = cw
        .describe_alarms()
        .alarm_types(AlarmType::MetricAlarm)
        .alarm_types(AlarmType::CompositeAlarm)
        .alarm_names(METRIC_ALARM)
        .alarm_names(COMPOSITE_ALARM)
        .send()
        .await
        .unwrap();
    assert_eq!(out.metric_alarms().len(), 1);
    let composite = &out.composite_alarms()[0];
    assert_eq!(composite.alarm_name(), Some(COMPOSITE_ALARM));
    assert_eq!(composite.state_value(), Some(&StateValue::Ok));
    assert_eq!(
        composite.alarm_rule(),
        Some("ALARM(\"kms-killswitch-hsm-anomaly\")")
    );
    assert!(composite.state_updated_timestamp().is_some());

    let only_composite = cw
        .describe_alarms()
        .alarm_types(AlarmType::CompositeAlarm)
        .send()
        .await
        .unwrap();
    assert!(only_composite.metric_alarms().is_empty());
    assert_eq!(only_composite.composite_alarms().len(), 1);

    let none = cw
        .describe_alarms()
        .alarm_names("no-such-alarm")
        .send()
        .await
        .unwrap();
    assert!(none.metric_alarms().is_empty());
}

#[tokio::test]
async fn describe_alarms_refuses_more_than_100_names() {
    let sim = start(quiet_world());
    let cw = cloudwatch(&sim, REGION).await;
    let names: Vec<String> = (0..101).map(|i| format!("alarm-{i}")).collect();
    let err = cw
        .describe_alarms()
        .set_alarm_names(Some(names.clone()))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("InvalidParameterValue"));
    let ok = cw
        .describe_alarms()
        .set_alarm_names(Some(names[..100].to_vec()))
        .send()
        .await;
    assert!(ok.is_ok());
}

#[tokio::test]
async fn describe_alarms_paginates_with_next_token_and_filters_by_state() {
    let sim = start(world_with_many_alarms());
    let cw = cloudwatch(&sim, REGION).await;
    let pages: Vec<_> = cw
        .describe_alarms()
        .alarm_types(AlarmType::MetricAlarm)
        .alarm_types(AlarmType::CompositeAlarm)
        .max_records(2)
        .into_paginator()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    // 6 metric + 2 composite alarms, 2 per page.
    assert_eq!(pages.len(), 4);
    let mut names: Vec<String> = pages
        .iter()
        .flat_map(|p| {
            p.metric_alarms()
                .iter()
                .filter_map(|a| a.alarm_name())
                .chain(p.composite_alarms().iter().filter_map(|a| a.alarm_name()))
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(names.len(), 8);
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 8);
    assert!(pages.last().unwrap().next_token().is_none());

    let in_alarm = cw
        .describe_alarms()
        .state_value(StateValue::Alarm)
        .send()
        .await
        .unwrap();
    let names: Vec<_> = in_alarm
        .metric_alarms()
        .iter()
        .filter_map(|a| a.alarm_name())
        .collect();
    assert_eq!(names, ["extra-metric-0"]);

    let err = cw
        .describe_alarms()
        .next_token("not-a-token")
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_invalid_next_token());
}

#[tokio::test]
async fn set_alarm_state_changes_what_describe_alarms_shows() {
    let sim = start(quiet_world());
    let cw = cloudwatch(&sim, REGION).await;
    let before = cw
        .describe_alarms()
        .alarm_names(METRIC_ALARM)
        .send()
        .await
        .unwrap();
    let before_ts = before.metric_alarms()[0]
        .state_updated_timestamp()
        .cloned()
        .unwrap();
    cw.set_alarm_state()
        .alarm_name(METRIC_ALARM)
        .state_value(StateValue::Alarm)
        .state_reason("breach drill")
        .state_reason_data("{\"drill\":true}")
        .send()
        .await
        .unwrap();
    let after = cw
        .describe_alarms()
        .alarm_names(METRIC_ALARM)
        .send()
        .await
        .unwrap();
    let alarm = &after.metric_alarms()[0];
    assert_eq!(alarm.state_value(), Some(&StateValue::Alarm));
    assert_eq!(alarm.state_reason(), Some("breach drill"));
    assert_eq!(alarm.state_reason_data(), Some("{\"drill\":true}"));
    assert!(alarm.state_updated_timestamp().unwrap() >= &before_ts);
    assert_eq!(sim.alarms(ACCOUNT, REGION)[0].state_value, "ALARM");

    // The handle's change is what the SDK sees next.
    sim.set_alarm_state(ACCOUNT, REGION, COMPOSITE_ALARM, "ALARM", "red button")
        .unwrap();
    let out = cw
        .describe_alarms()
        .alarm_types(AlarmType::CompositeAlarm)
        .send()
        .await
        .unwrap();
    assert_eq!(
        out.composite_alarms()[0].state_value(),
        Some(&StateValue::Alarm)
    );
    assert_eq!(out.composite_alarms()[0].state_reason(), Some("red button"));
}

#[tokio::test]
async fn set_alarm_state_on_an_unknown_alarm_is_resource_not_found() {
    let sim = start(quiet_world());
    let cw = cloudwatch(&sim, REGION).await;
    let err = cw
        .set_alarm_state()
        .alarm_name("no-such-alarm")
        .state_value(StateValue::Alarm)
        .state_reason("x")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(404));
    assert!(err.into_service_error().is_resource_not_found());
    let err = cw
        .set_alarm_state()
        .alarm_name(METRIC_ALARM)
        .state_value(StateValue::from("BROKEN"))
        .state_reason("x")
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_invalid_format_fault());
    assert!(
        sim.set_alarm_state(ACCOUNT, REGION, "no-such-alarm", "OK", "x")
            .is_err()
    );
}

#[tokio::test]
async fn cloudwatch_refuses_a_wrong_secret_and_throttles_with_the_aws_codes() {
    let mut world = World::demo();
    world.settings.rate_limit_rps = 0.001;
    world.settings.rate_limit_burst = Some(1.0);
    let sim = start(world);
    let wrong =
        aws_sdk_cloudwatch::Client::new(&sdk_config(&sim, REGION, ACCESS_KEY_ID, "wrong").await);
    let err = wrong.describe_alarms().send().await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("SignatureDoesNotMatch"));
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(403));

    let cw = cloudwatch(&sim, REGION).await;
    cw.describe_alarms().send().await.unwrap();
    let err = cw.describe_alarms().send().await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("ThrottlingException"));
    let log = sim.requests();
    let last = log.last().unwrap();
    assert_eq!(
        (last.service.as_str(), last.operation.as_str()),
        ("cloudwatch", "DescribeAlarms")
    );
}
