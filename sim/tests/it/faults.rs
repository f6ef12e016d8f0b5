//! Every fault rule effect, seen through the real SDK: latency, 5xx, throttling storms, dropped
//! connections, AccessDenied per account, transition delay, consistency lag, a store stuck in
//! DISCONNECTING, a store that goes FAILED; and selectors that confine a rule.

use std::time::Duration;

use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::error::SdkError;
use aws_sdk_kms::types::ConnectionStateType;
use kms_sim::{FaultRule, Faults};

use crate::support::*;

fn one(rule: FaultRule) -> Faults {
    Faults { rules: vec![rule] }
}

#[tokio::test]
async fn latency_delays_the_answer_past_a_client_timeout() {
    let sim = start(quiet_world());
    sim.set_faults(one(FaultRule {
        latency_ms: 3_000,
        operation: Some("DescribeCustomKeyStores".into()),
        ..FaultRule::default()
    }));
    let config = sdk_config(&sim, REGION, ACCESS_KEY_ID, SECRET).await;
    let kms = aws_sdk_kms::Client::from_conf(
        aws_sdk_kms::config::Builder::from(&config)
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(Duration::from_millis(300))
                    .build(),
            )
            .build(),
    );
    let err = kms.describe_custom_key_stores().send().await.unwrap_err();
    assert!(matches!(err, SdkError::TimeoutError(_)), "{err:?}");
    // Other operations are not delayed (the same 300 ms budget is enough on loopback).
    kms.connect_custom_key_store()
        .custom_key_store_id(HSM_EU)
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn internal_errors_are_500_kms_internal_exception_and_cloudwatch_internal_failure() {
    let sim = start(quiet_world());
    sim.set_faults(one(FaultRule {
        internal_error_rate: 1.0,
        ..FaultRule::default()
    }));
    let err = kms(&sim, REGION)
        .await
        .disconnect_custom_key_store()
        .custom_key_store_id(HSM_EU)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(500));
    assert!(err.into_service_error().is_kms_internal_exception());
    assert_eq!(
        sim.connection_state(ACCOUNT, REGION, HSM_EU).as_deref(),
        Some("CONNECTED")
    );
    let err = cloudwatch(&sim, REGION)
        .await
        .describe_alarms()
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("InternalFailure"));
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(500));
}

#[tokio::test]
async fn throttling_storm_hits_only_the_selected_operation() {
    let sim = start(quiet_world());
    sim.set_faults(one(FaultRule {
        throttle_rate: 1.0,
        operation: Some("DisconnectCustomKeyStore".into()),
        ..FaultRule::default()
    }));
    let kms = kms(&sim, REGION).await;
    for _ in 0..5 {
        let err = kms
            .disconnect_custom_key_store()
            .custom_key_store_id(HSM_EU)
            .send()
            .await
            .unwrap_err();
        assert_eq!(code(&err).as_deref(), Some("ThrottlingException"));
    }
    kms.describe_custom_key_stores().send().await.unwrap();
    // Replacing the rules ends the storm.
    sim.set_faults(Faults::default());
    kms.disconnect_custom_key_store()
        .custom_key_store_id(HSM_EU)
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn dropped_connections_reach_the_sdk_as_transport_failures() {
    let sim = start(quiet_world());
    sim.set_faults(one(FaultRule {
        drop_connection_rate: 1.0,
        ..FaultRule::default()
    }));
    let err = kms(&sim, REGION)
        .await
        .describe_custom_key_stores()
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SdkError::DispatchFailure(_) | SdkError::ResponseError(_)
        ),
        "{err:?}"
    );
    let log = sim.requests();
    assert_eq!(
        log.last().unwrap().error_code.as_deref(),
        Some("ConnectionDropped")
    );
}

#[tokio::test]
async fn access_denied_applies_to_the_selected_account_only() {
    let sim = start(quiet_world());
    sim.set_faults(one(FaultRule {
        access_denied: true,
        account: Some(ACCOUNT.into()),
        ..FaultRule::default()
    }));
    let err = kms(&sim, REGION)
        .await
        .describe_custom_key_stores()
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("AccessDeniedException"));
    let err = cloudwatch(&sim, REGION)
        .await
        .describe_alarms()
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("AccessDenied"));
    sim.set_faults(one(FaultRule {
        access_denied: true,
        account: Some(OTHER_ACCOUNT.into()),
        ..FaultRule::default()
    }));
    kms(&sim, REGION)
        .await
        .describe_custom_key_stores()
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn transition_delay_rule_holds_one_store_in_disconnecting() {
    let sim = start(quiet_world());
    sim.set_faults(one(FaultRule {
        custom_key_store_id: Some(HSM_EU.into()),
        transition_delay_ms: Some(3_600_000),
        ..FaultRule::default()
    }));
    let kms = kms(&sim, REGION).await;
    kms.disconnect_custom_key_store()
        .custom_key_store_id(HSM_EU)
        .send()
        .await
        .unwrap();
    kms.disconnect_custom_key_store()
        .custom_key_store_id(XKS_EU)
        .send()
        .await
        .unwrap();
    assert_eq!(
        sim.connection_state(ACCOUNT, REGION, HSM_EU).as_deref(),
        Some("DISCONNECTING")
    );
    assert_eq!(
        sim.connection_state(ACCOUNT, REGION, XKS_EU).as_deref(),
        Some("DISCONNECTED")
    );
}

#[tokio::test]
async fn consistency_lag_shows_the_old_state_to_describe_but_not_to_the_handle() {
    let sim = start(quiet_world());
    sim.set_faults(one(FaultRule {
        consistency_lag_ms: Some(3_600_000),
        ..FaultRule::default()
    }));
    let kms = kms(&sim, REGION).await;
    kms.disconnect_custom_key_store()
        .custom_key_store_id(HSM_EU)
        .send()
        .await
        .unwrap();
    assert_eq!(
        described_state(&kms, HSM_EU).await,
        Some(ConnectionStateType::Connected)
    );
    assert_eq!(
        sim.connection_state(ACCOUNT, REGION, HSM_EU).as_deref(),
        Some("DISCONNECTED")
    );
    // The lag is only in what Describe shows: a second Disconnect sees the true state.
    let err = kms
        .disconnect_custom_key_store()
        .custom_key_store_id(HSM_EU)
        .send()
        .await
        .unwrap_err();
    assert!(
        err.into_service_error()
            .is_custom_key_store_invalid_state_exception()
    );
    // Without the rule, Describe catches up.
    sim.set_faults(Faults::default());
    assert_eq!(
        described_state(&kms, HSM_EU).await,
        Some(ConnectionStateType::Disconnected)
    );
}

#[tokio::test]
async fn world_consistency_lag_is_bounded() {
    let mut world = quiet_world();
    world.settings.consistency_lag_ms = 100;
    let sim = start(world);
    let kms = kms(&sim, REGION).await;
    kms.disconnect_custom_key_store()
        .custom_key_store_id(XKS_EU)
        .send()
        .await
        .unwrap();
    let mut last = None;
    for _ in 0..500 {
        last = described_state(&kms, XKS_EU).await;
        if last == Some(ConnectionStateType::Disconnected) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(last, Some(ConnectionStateType::Disconnected));
}

#[tokio::test]
async fn stuck_store_stays_disconnecting() {
    let sim = start(quiet_world());
    sim.set_faults(one(FaultRule {
        custom_key_store_id: Some(XKS_EU.into()),
        stuck_disconnecting: true,
        ..FaultRule::default()
    }));
    let kms = kms(&sim, REGION).await;
    kms.disconnect_custom_key_store()
        .custom_key_store_id(XKS_EU)
        .send()
        .await
        .unwrap();
    // Transition delay is 0 in this world: a normal store would already be DISCONNECTED.
    assert_eq!(
        described_state(&kms, XKS_EU).await,
        Some(ConnectionStateType::Disconnecting)
    );
    let err = kms
        .disconnect_custom_key_store()
        .custom_key_store_id(XKS_EU)
        .send()
        .await
        .unwrap_err();
    assert!(
        err.into_service_error()
            .is_custom_key_store_invalid_state_exception()
    );
}

#[tokio::test]
async fn fail_on_connect_turns_the_store_failed_with_an_error_code() {
    let sim = start(quiet_world());
    sim.set_faults(one(FaultRule {
        fail_on_connect: true,
        ..FaultRule::default()
    }));
    for (id, code) in [(HSM_EU, "NETWORK_ERRORS"), (XKS_EU, "XKS_PROXY_TIMED_OUT")] {
        sim.set_connection_state(ACCOUNT, REGION, id, "DISCONNECTED")
            .unwrap();
        let kms = kms(&sim, REGION).await;
        kms.connect_custom_key_store()
            .custom_key_store_id(id)
            .send()
            .await
            .unwrap();
        let seen = kms
            .describe_custom_key_stores()
            .custom_key_store_id(id)
            .send()
            .await
            .unwrap();
        let store = &seen.custom_key_stores()[0];
        assert_eq!(store.connection_state(), Some(&ConnectionStateType::Failed));
        assert_eq!(
            store.connection_error_code().map(|c| c.as_str()),
            Some(code)
        );
        // FAILED can be disconnected.
        kms.disconnect_custom_key_store()
            .custom_key_store_id(id)
            .send()
            .await
            .unwrap();
        assert_eq!(
            sim.connection_state(ACCOUNT, REGION, id).as_deref(),
            Some("DISCONNECTED")
        );
    }
}

#[tokio::test]
async fn region_selector_confines_a_rule() {
    let sim = start(quiet_world());
    sim.set_faults(one(FaultRule {
        region: Some(OTHER_REGION.into()),
        internal_error_rate: 1.0,
        ..FaultRule::default()
    }));
    kms(&sim, REGION)
        .await
        .describe_custom_key_stores()
        .send()
        .await
        .unwrap();
    let err = kms(&sim, OTHER_REGION)
        .await
        .describe_custom_key_stores()
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_kms_internal_exception());
}
