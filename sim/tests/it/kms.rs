//! KMS custom key store operations through aws-sdk-kms: listing, filters, pagination, the state
//! machine, typed errors, quotas and SigV4 rejection.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_sdk_kms::operation::RequestId;
use aws_sdk_kms::types::{ConnectionStateType, CustomKeyStoreType};
use kms_sim::{FaultRule, Faults, World};

use crate::support::kms as client;
use crate::support::*;

#[tokio::test]
async fn describes_every_store_of_an_account_and_region() {
    let sim = start(quiet_world());
    let kms = client(&sim, REGION).await;
    let out = kms.describe_custom_key_stores().send().await.unwrap();
    assert!(
        out.request_id().is_some(),
        "x-amzn-RequestId reaches the SDK"
    );
    assert!(!out.truncated());
    assert_eq!(out.next_marker(), None);
    let stores = out.custom_key_stores();
    assert_eq!(stores.len(), 2);
    let hsm = stores
        .iter()
        .find(|s| s.custom_key_store_id() == Some(HSM_EU))
        .unwrap();
    assert_eq!(hsm.custom_key_store_name(), Some("payments-hsm"));
    assert_eq!(
        hsm.custom_key_store_type(),
        Some(&CustomKeyStoreType::AwsCloudhsm)
    );
    assert_eq!(
        hsm.connection_state(),
        Some(&ConnectionStateType::Connected)
    );
    assert_eq!(hsm.cloud_hsm_cluster_id(), Some("cluster-1e1c000001"));
    assert!(
        hsm.creation_date()
            .is_some_and(|d| d.secs() > 1_600_000_000)
    );
    assert_eq!(hsm.connection_error_code(), None);
    let xks = stores
        .iter()
        .find(|s| s.custom_key_store_id() == Some(XKS_EU))
        .unwrap();
    assert_eq!(
        xks.custom_key_store_type(),
        Some(&CustomKeyStoreType::ExternalKeyStore)
    );
    let proxy = xks.xks_proxy_configuration().unwrap();
    assert_eq!(proxy.uri_endpoint(), Some("https://xks-eu.example.com"));

    // Another region of the same account holds other stores.
    let us = client(&sim, OTHER_REGION).await;
    let ids: Vec<String> = us
        .describe_custom_key_stores()
        .send()
        .await
        .unwrap()
        .custom_key_stores()
        .iter()
        .filter_map(|s| s.custom_key_store_id().map(str::to_owned))
        .collect();
    assert_eq!(ids, ["cks-1a1c0000000000001", "cks-1a1e0000000000001"]);
}

#[tokio::test]
async fn describe_filters_by_id_and_name_and_reports_unknown_ones_as_not_found() {
    let sim = start(quiet_world());
    let kms = client(&sim, REGION).await;
    let by_id = kms
        .describe_custom_key_stores()
        .custom_key_store_id(XKS_EU)
        .send()
        .await
        .unwrap();
    assert_eq!(by_id.custom_key_stores().len(), 1);
    assert_eq!(
        by_id.custom_key_stores()[0].custom_key_store_id(),
        Some(XKS_EU)
    );
    let by_name = kms
        .describe_custom_key_stores()
        .custom_key_store_name("payments-hsm")
        .send()
        .await
        .unwrap();
    assert_eq!(
        by_name.custom_key_stores()[0].custom_key_store_id(),
        Some(HSM_EU)
    );

    let err = kms
        .describe_custom_key_stores()
        .custom_key_store_id("cks-00000000000000000")
        .send()
        .await
        .unwrap_err();
    assert!(
        err.into_service_error()
            .is_custom_key_store_not_found_exception()
    );
    let err = kms
        .describe_custom_key_stores()
        .custom_key_store_name("no-such-store")
        .send()
        .await
        .unwrap_err();
    assert!(
        err.into_service_error()
            .is_custom_key_store_not_found_exception()
    );
    // A store of another region is not found here.
    let err = kms
        .describe_custom_key_stores()
        .custom_key_store_id("cks-1a1c0000000000001")
        .send()
        .await
        .unwrap_err();
    assert!(
        err.into_service_error()
            .is_custom_key_store_not_found_exception()
    );
}

#[tokio::test]
async fn describe_paginates_with_limit_marker_and_truncated() {
    let sim = start(quiet_world());
    let kms = client(&sim, REGION).await;
    for i in 0..3 {
        kms.create_custom_key_store()
            .custom_key_store_name(format!("extra-{i}"))
            .custom_key_store_type(CustomKeyStoreType::ExternalKeyStore)
            .xks_proxy_uri_endpoint(format!("https://xks-{i}.example.com"))
            .send()
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut marker: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = kms
            .describe_custom_key_stores()
            .limit(2)
            .set_marker(marker.clone())
            .send()
            .await
            .unwrap();
        pages += 1;
        assert!(page.custom_key_stores().len() <= 2);
        seen.extend(
            page.custom_key_stores()
                .iter()
                .filter_map(|s| s.custom_key_store_id().map(str::to_owned)),
        );
        assert_eq!(page.truncated(), page.next_marker().is_some());
        match page.next_marker() {
            Some(next) => marker = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 5);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 5, "no store is listed twice");

    // The SDK's own paginator walks the same pages.
    let items: Vec<_> = kms
        .describe_custom_key_stores()
        .limit(1)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    assert_eq!(items.len(), 5);

    let err = kms
        .describe_custom_key_stores()
        .marker("bogus")
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_invalid_marker_exception());
    let err = kms
        .describe_custom_key_stores()
        .limit(1001)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("ValidationException"));
}

#[tokio::test]
async fn disconnect_goes_through_disconnecting_to_disconnected_after_the_delay() {
    let mut world = World::demo();
    world.settings.rate_limit_rps = 0.0;
    world.settings.transition_delay_ms = 200;
    let sim = start(world);
    let kms = client(&sim, REGION).await;
    kms.disconnect_custom_key_store()
        .custom_key_store_id(HSM_EU)
        .send()
        .await
        .unwrap();
    // The delay has surely not passed between two loopback calls... unless the machine stalls;
    // then DISCONNECTED is the only other acceptable answer.
    let state = described_state(&kms, HSM_EU).await;
    assert!(matches!(
        state,
        Some(ConnectionStateType::Disconnecting | ConnectionStateType::Disconnected)
    ));
    wait_for_state(&sim, ACCOUNT, REGION, HSM_EU, "DISCONNECTED").await;
    assert_eq!(
        described_state(&kms, HSM_EU).await,
        Some(ConnectionStateType::Disconnected)
    );
    // The other store is untouched.
    assert_eq!(
        sim.connection_state(ACCOUNT, REGION, XKS_EU).as_deref(),
        Some("CONNECTED")
    );
}

#[tokio::test]
async fn disconnect_holds_disconnecting_for_the_whole_transition_delay() {
    let mut world = quiet_world();
    world.settings.transition_delay_ms = 3_600_000;
    let sim = start(world);
    let kms = client(&sim, REGION).await;
    kms.disconnect_custom_key_store()
        .custom_key_store_id(XKS_EU)
        .send()
        .await
        .unwrap();
    assert_eq!(
        described_state(&kms, XKS_EU).await,
        Some(ConnectionStateType::Disconnecting)
    );
    assert_eq!(
        sim.connection_state(ACCOUNT, REGION, XKS_EU).as_deref(),
        Some("DISCONNECTING")
    );
}

#[tokio::test]
async fn disconnect_on_disconnecting_or_disconnected_is_an_invalid_state() {
    let mut world = quiet_world();
    world.settings.transition_delay_ms = 3_600_000;
    let sim = start(world);
    let kms = client(&sim, REGION).await;
    kms.disconnect_custom_key_store()
        .custom_key_store_id(HSM_EU)
        .send()
        .await
        .unwrap();
    let err = kms
        .disconnect_custom_key_store()
        .custom_key_store_id(HSM_EU)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(400));
    assert!(
        err.into_service_error()
            .is_custom_key_store_invalid_state_exception()
    );

    sim.set_connection_state(ACCOUNT, REGION, HSM_EU, "DISCONNECTED")
        .unwrap();
    let err = kms
        .disconnect_custom_key_store()
        .custom_key_store_id(HSM_EU)
        .send()
        .await
        .unwrap_err();
    let err = err.into_service_error();
    assert!(err.is_custom_key_store_invalid_state_exception());
    assert!(
        aws_sdk_kms::error::ProvideErrorMetadata::message(&err)
            .is_some_and(|m| m.contains("DISCONNECTED"))
    );
}

#[tokio::test]
async fn disconnect_is_valid_on_connecting_and_failed() {
    let sim = start(quiet_world());
    let kms = client(&sim, REGION).await;
    for state in ["CONNECTING", "FAILED"] {
        sim.set_connection_state(ACCOUNT, REGION, HSM_EU, state)
            .unwrap();
        kms.disconnect_custom_key_store()
            .custom_key_store_id(HSM_EU)
            .send()
            .await
            .unwrap();
        assert_eq!(
            sim.connection_state(ACCOUNT, REGION, HSM_EU).as_deref(),
            Some("DISCONNECTED")
        );
    }
    let err = kms
        .disconnect_custom_key_store()
        .custom_key_store_id("cks-00000000000000000")
        .send()
        .await
        .unwrap_err();
    assert!(
        err.into_service_error()
            .is_custom_key_store_not_found_exception()
    );
}

#[tokio::test]
async fn connect_goes_connecting_then_connected_and_refuses_failed_and_disconnecting() {
    let mut world = quiet_world();
    world.settings.transition_delay_ms = 3_600_000;
    let sim = start(world);
    let kms = client(&sim, REGION).await;
    // CONNECTED: accepted, nothing changes.
    kms.connect_custom_key_store()
        .custom_key_store_id(HSM_EU)
        .send()
        .await
        .unwrap();
    assert_eq!(
        sim.connection_state(ACCOUNT, REGION, HSM_EU).as_deref(),
        Some("CONNECTED")
    );
    // DISCONNECTED → CONNECTING (held by the long delay).
    sim.set_connection_state(ACCOUNT, REGION, HSM_EU, "DISCONNECTED")
        .unwrap();
    kms.connect_custom_key_store()
        .custom_key_store_id(HSM_EU)
        .send()
        .await
        .unwrap();
    assert_eq!(
        sim.connection_state(ACCOUNT, REGION, HSM_EU).as_deref(),
        Some("CONNECTING")
    );
    // Disconnecting a CONNECTING store cancels the pending connection.
    kms.disconnect_custom_key_store()
        .custom_key_store_id(HSM_EU)
        .send()
        .await
        .unwrap();
    assert_eq!(
        sim.connection_state(ACCOUNT, REGION, HSM_EU).as_deref(),
        Some("DISCONNECTING")
    );
    let err = kms
        .connect_custom_key_store()
        .custom_key_store_id(HSM_EU)
        .send()
        .await
        .unwrap_err();
    assert!(
        err.into_service_error()
            .is_custom_key_store_invalid_state_exception()
    );
    sim.set_connection_state(ACCOUNT, REGION, HSM_EU, "FAILED")
        .unwrap();
    let err = kms
        .connect_custom_key_store()
        .custom_key_store_id(HSM_EU)
        .send()
        .await
        .unwrap_err();
    assert!(
        err.into_service_error()
            .is_custom_key_store_invalid_state_exception()
    );
}

#[tokio::test]
async fn connect_completes_to_connected_after_the_delay() {
    let mut world = quiet_world();
    world.settings.transition_delay_ms = 100;
    let sim = start(world);
    sim.set_connection_state(ACCOUNT, REGION, XKS_EU, "DISCONNECTED")
        .unwrap();
    let kms = client(&sim, REGION).await;
    kms.connect_custom_key_store()
        .custom_key_store_id(XKS_EU)
        .send()
        .await
        .unwrap();
    wait_for_state(&sim, ACCOUNT, REGION, XKS_EU, "CONNECTED").await;
}

#[tokio::test]
async fn create_makes_disconnected_cloudhsm_and_external_stores() {
    let sim = start(quiet_world());
    let kms = client(&sim, REGION).await;
    let hsm = kms
        .create_custom_key_store()
        .custom_key_store_name("new-hsm")
        .cloud_hsm_cluster_id("cluster-new0000001")
        .trust_anchor_certificate("-----BEGIN CERTIFICATE-----")
        .key_store_password("kmsuser-password")
        .send()
        .await
        .unwrap();
    let id = hsm.custom_key_store_id().unwrap().to_owned();
    assert!(id.starts_with("cks-") && id.len() == 21);
    let seen = kms
        .describe_custom_key_stores()
        .custom_key_store_id(&id)
        .send()
        .await
        .unwrap();
    let store = &seen.custom_key_stores()[0];
    assert_eq!(
        store.connection_state(),
        Some(&ConnectionStateType::Disconnected)
    );
    assert_eq!(
        store.custom_key_store_type(),
        Some(&CustomKeyStoreType::AwsCloudhsm)
    );
    assert_eq!(store.cloud_hsm_cluster_id(), Some("cluster-new0000001"));

    let err = kms
        .create_custom_key_store()
        .custom_key_store_name("new-hsm")
        .cloud_hsm_cluster_id("cluster-other00001")
        .send()
        .await
        .unwrap_err();
    assert!(
        err.into_service_error()
            .is_custom_key_store_name_in_use_exception()
    );
    let err = kms
        .create_custom_key_store()
        .custom_key_store_name("same-cluster")
        .cloud_hsm_cluster_id("cluster-new0000001")
        .send()
        .await
        .unwrap_err();
    assert!(
        err.into_service_error()
            .is_cloud_hsm_cluster_in_use_exception()
    );

    let xks = kms
        .create_custom_key_store()
        .custom_key_store_name("new-xks")
        .custom_key_store_type(CustomKeyStoreType::ExternalKeyStore)
        .xks_proxy_uri_endpoint("https://xks-new.example.com")
        .send()
        .await
        .unwrap();
    let view = sim.key_stores(ACCOUNT, REGION);
    let created = view
        .iter()
        .find(|s| Some(s.custom_key_store_id.as_str()) == xks.custom_key_store_id())
        .unwrap();
    assert_eq!(created.custom_key_store_type, "EXTERNAL_KEY_STORE");
    assert_eq!(created.connection_state, "DISCONNECTED");
}

#[tokio::test]
async fn quota_throttles_per_account_region_and_operation() {
    let mut world = World::demo();
    // One request per 1000 s: the second call in the same bucket is always throttled.
    world.settings.rate_limit_rps = 0.001;
    world.settings.rate_limit_burst = Some(1.0);
    let sim = start(world);
    let eu = client(&sim, REGION).await;
    eu.describe_custom_key_stores().send().await.unwrap();
    let err = eu.describe_custom_key_stores().send().await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("ThrottlingException"));
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(400));
    // Separate buckets: another operation, another region.
    eu.disconnect_custom_key_store()
        .custom_key_store_id(HSM_EU)
        .send()
        .await
        .unwrap();
    client(&sim, OTHER_REGION)
        .await
        .describe_custom_key_stores()
        .send()
        .await
        .unwrap();
    let log = sim.requests();
    assert_eq!(
        log.iter()
            .filter(|r| r.error_code.as_deref() == Some("ThrottlingException"))
            .count(),
        1
    );
}

#[tokio::test]
async fn default_world_quota_is_five_per_second() {
    let mut world = World::demo();
    world.settings.rate_limit_burst = None;
    assert_eq!(world.settings.rate_limit_rps, 5.0);
    let sim = start(world);
    let kms = client(&sim, REGION).await;
    let mut throttled = 0;
    for _ in 0..20 {
        if let Err(err) = kms.describe_custom_key_stores().send().await {
            assert_eq!(code(&err).as_deref(), Some("ThrottlingException"));
            throttled += 1;
        }
    }
    // Judge by the simulator's own arrival stamps, not by how fast this machine ran the loop:
    // a bucket of 5 tokens refilled at 5/s admits at most 5 + 5 × span requests over any span
    // (+1 for a token refilled between two stamps).
    let calls: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.operation == "DescribeCustomKeyStores")
        .collect();
    assert_eq!(calls.len(), 20, "retries are off: one request per call");
    let span_s = (calls[19].ts_us - calls[0].ts_us) as f64 / 1e6;
    let admitted = calls.iter().filter(|r| r.status == 200).count();
    assert!(
        admitted as f64 <= 5.0 + 5.0 * span_s + 1.0,
        "{admitted} of 20 admitted over {span_s:.3} s exceeds a 5 rps quota with a burst of 5"
    );
    assert_eq!(
        throttled,
        20 - admitted,
        "every refused call was a ThrottlingException"
    );
    assert!(admitted >= 5, "the first 5 calls fit the burst");
}

#[tokio::test]
async fn sdk_retries_throttling_and_internal_errors_but_not_invalid_state() {
    let sim = start(quiet_world());
    let retry = RetryConfig::standard()
        .with_max_attempts(3)
        .with_initial_backoff(Duration::from_millis(1));
    let config = sdk_config_with_retry(&sim, REGION, ACCESS_KEY_ID, SECRET, retry).await;
    let kms = aws_sdk_kms::Client::new(&config);
    for (fault, code_seen) in [
        (
            FaultRule {
                throttle_rate: 1.0,
                ..FaultRule::default()
            },
            "ThrottlingException",
        ),
        (
            FaultRule {
                internal_error_rate: 1.0,
                ..FaultRule::default()
            },
            "KMSInternalException",
        ),
    ] {
        sim.clear_requests();
        sim.set_faults(Faults {
            rules: vec![FaultRule {
                operation: Some("DescribeCustomKeyStores".into()),
                ..fault
            }],
        });
        let err = kms.describe_custom_key_stores().send().await.unwrap_err();
        assert_eq!(code(&err).as_deref(), Some(code_seen));
        assert_eq!(
            sim.requests().len(),
            3,
            "the SDK classified {code_seen} as retryable"
        );
    }
    sim.set_faults(Faults::default());
    sim.set_connection_state(ACCOUNT, REGION, HSM_EU, "DISCONNECTED")
        .unwrap();
    sim.clear_requests();
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
    assert_eq!(sim.requests().len(), 1, "an invalid state is not retried");
}

#[tokio::test]
async fn wrong_secret_and_unknown_key_are_refused() {
    let sim = start(quiet_world());
    let wrong =
        aws_sdk_kms::Client::new(&sdk_config(&sim, REGION, ACCESS_KEY_ID, "not-the-secret").await);
    let err = wrong.describe_custom_key_stores().send().await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("InvalidSignatureException"));
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(400));
    let wrong =
        aws_sdk_kms::Client::new(&sdk_config(&sim, REGION, ACCESS_KEY_ID, "not-the-secret").await);
    let err = wrong
        .disconnect_custom_key_store()
        .custom_key_store_id(HSM_EU)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("InvalidSignatureException"));
    assert_eq!(
        sim.connection_state(ACCOUNT, REGION, HSM_EU).as_deref(),
        Some("CONNECTED")
    );

    let unknown = aws_sdk_kms::Client::new(&sdk_config(&sim, REGION, "AKIDUNKNOWN", SECRET).await);
    let err = unknown
        .describe_custom_key_stores()
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("UnrecognizedClientException"));
}

#[tokio::test]
async fn request_log_records_each_call() {
    let sim = start(quiet_world());
    let kms = client(&sim, REGION).await;
    let before = kms_sim_now_us();
    kms.disconnect_custom_key_store()
        .custom_key_store_id(HSM_EU)
        .send()
        .await
        .unwrap();
    let _ = kms
        .disconnect_custom_key_store()
        .custom_key_store_id(HSM_EU)
        .send()
        .await;
    let log = sim.requests();
    assert_eq!(log.len(), 2);
    let first = &log[0];
    assert!(first.ts_us >= before);
    assert_eq!(first.service, "kms");
    assert_eq!(first.operation, "DisconnectCustomKeyStore");
    assert_eq!(first.account.as_deref(), Some(ACCOUNT));
    assert_eq!(first.region.as_deref(), Some(REGION));
    assert_eq!(first.target.as_deref(), Some(HSM_EU));
    assert_eq!((first.status, first.error_code.as_deref()), (200, None));
    assert_eq!(log[1].status, 400);
    assert_eq!(
        log[1].error_code.as_deref(),
        Some("CustomKeyStoreInvalidStateException")
    );
    sim.clear_requests();
    assert!(sim.requests().is_empty());
}

fn kms_sim_now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}
