//! Standard KMS keys through aws-sdk-kms: DisableKey, EnableKey, DescribeKey (every KeyId
//! form), ListAliases pagination, KMS's key-state and AWS-managed rules, quotas, faults, an
//! attacker's re-enable, and custom key stores added while the simulator runs.

use std::time::Duration;

use aws_sdk_kms::types::{KeyManagerType, KeyState};
use kms_sim::{FaultRule, Faults, KeyDecl, KeyStoreDecl, KeyStoreType, World};

use crate::support::*;

const KEY: &str = "1e1a0000-0000-4000-8000-000000000001";
const MRK: &str = "mrk-1e1a0000000040008000000000000002";
const PENDING: &str = "1e1a0000-0000-4000-8000-000000000003";
const AWS_MANAGED: &str = "1e1a0000-0000-4000-8000-0000000000a1";

fn key_arn(id: &str) -> String {
    format!("arn:aws:kms:{REGION}:{ACCOUNT}:key/{id}")
}

async fn described(kms: &aws_sdk_kms::Client, key_id: &str) -> aws_sdk_kms::types::KeyMetadata {
    kms.describe_key()
        .key_id(key_id)
        .send()
        .await
        .unwrap_or_else(|e| panic!("DescribeKey {key_id}: {e:?}"))
        .key_metadata()
        .cloned()
        .expect("DescribeKey returns KeyMetadata")
}

#[tokio::test]
async fn describe_key_takes_a_key_id_key_arn_alias_name_and_alias_arn() {
    let sim = start(quiet_world());
    let kms = kms(&sim, REGION).await;
    let alias_arn = format!("arn:aws:kms:{REGION}:{ACCOUNT}:alias/payments-primary");
    for key_id in [KEY, &key_arn(KEY), "alias/payments", &alias_arn] {
        let meta = described(&kms, key_id).await;
        assert_eq!(meta.key_id(), KEY, "{key_id}");
        assert_eq!(meta.arn(), Some(key_arn(KEY).as_str()));
        assert_eq!(meta.aws_account_id(), Some(ACCOUNT));
        assert_eq!(meta.key_state(), Some(&KeyState::Enabled));
        assert_eq!(meta.key_manager(), Some(&KeyManagerType::Customer));
        assert!(meta.enabled());
        assert_eq!(meta.multi_region(), Some(false));
    }
    let mrk = described(&kms, "alias/payments-global").await;
    assert_eq!(mrk.multi_region(), Some(true));
    assert_eq!(
        mrk.multi_region_configuration()
            .and_then(|c| c.primary_key())
            .and_then(|p| p.region()),
        Some(REGION)
    );
    let managed = described(&kms, "alias/aws/ebs").await;
    assert_eq!(managed.key_manager(), Some(&KeyManagerType::Aws));
    let pending = described(&kms, PENDING).await;
    assert_eq!(pending.key_state(), Some(&KeyState::PendingDeletion));
    assert!(pending.deletion_date().is_some() && !pending.enabled());
}

#[tokio::test]
async fn unknown_keys_bad_arns_and_other_regions_have_the_kms_error_codes() {
    let sim = start(quiet_world());
    let kms = kms(&sim, REGION).await;
    let cases = [
        ("2e1a0000-0000-4000-8000-00000000dead", "NotFoundException"),
        ("alias/nothing-here", "NotFoundException"),
        ("arn:aws:kms:eu-west-1", "InvalidArnException"),
        (
            &format!("arn:aws:kms:{OTHER_REGION}:{ACCOUNT}:key/{KEY}"),
            "NotFoundException",
        ),
    ];
    for (key_id, want) in cases {
        let err = kms.describe_key().key_id(key_id).send().await.unwrap_err();
        assert_eq!(code(&err).as_deref(), Some(want), "{key_id}");
    }
    let err = kms
        .describe_key()
        .key_id("2e1a0000-0000-4000-8000-00000000dead")
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_not_found_exception());
}

#[tokio::test]
async fn disable_then_enable_by_key_id_and_key_arn() {
    let sim = start(quiet_world());
    let kms = kms(&sim, REGION).await;
    kms.disable_key().key_id(KEY).send().await.unwrap();
    assert_eq!(
        sim.key_state(ACCOUNT, REGION, KEY).as_deref(),
        Some("Disabled")
    );
    let meta = described(&kms, "alias/payments").await;
    assert_eq!(meta.key_state(), Some(&KeyState::Disabled));
    assert!(!meta.enabled());
    kms.enable_key().key_id(key_arn(KEY)).send().await.unwrap();
    assert_eq!(
        sim.key_state(ACCOUNT, REGION, KEY).as_deref(),
        Some("Enabled")
    );
    kms.disable_key().key_id(key_arn(MRK)).send().await.unwrap();
    assert_eq!(
        sim.key_state(ACCOUNT, REGION, MRK).as_deref(),
        Some("Disabled")
    );
}

#[tokio::test]
async fn disable_key_on_a_disabled_key_succeeds_and_changes_nothing() {
    let sim = start(quiet_world());
    let kms = kms(&sim, REGION).await;
    kms.disable_key().key_id(KEY).send().await.unwrap();
    kms.disable_key().key_id(KEY).send().await.unwrap();
    assert_eq!(
        sim.key_state(ACCOUNT, REGION, KEY).as_deref(),
        Some("Disabled")
    );
    kms.enable_key().key_id(KEY).send().await.unwrap();
    kms.enable_key().key_id(KEY).send().await.unwrap();
    assert_eq!(
        sim.key_state(ACCOUNT, REGION, KEY).as_deref(),
        Some("Enabled")
    );
}

#[tokio::test]
async fn disable_key_refuses_aliases_pending_deletion_and_aws_managed_keys() {
    let sim = start(quiet_world());
    let kms = kms(&sim, REGION).await;
    // DisableKey takes a key id or key ARN only.
    let err = kms
        .disable_key()
        .key_id("alias/payments")
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_not_found_exception());
    let err = kms.disable_key().key_id(PENDING).send().await.unwrap_err();
    let err = err.into_service_error();
    assert!(err.is_kms_invalid_state_exception(), "{err:?}");
    assert!(
        aws_sdk_kms::error::ProvideErrorMetadata::message(&err)
            .is_some_and(|m| m.contains("pending deletion"))
    );
    let err = kms.enable_key().key_id(PENDING).send().await.unwrap_err();
    assert!(err.into_service_error().is_kms_invalid_state_exception());
    for op in ["DisableKey", "EnableKey"] {
        let err = if op == "DisableKey" {
            code(
                &kms.disable_key()
                    .key_id(AWS_MANAGED)
                    .send()
                    .await
                    .unwrap_err(),
            )
        } else {
            code(
                &kms.enable_key()
                    .key_id(AWS_MANAGED)
                    .send()
                    .await
                    .unwrap_err(),
            )
        };
        assert_eq!(err.as_deref(), Some("AccessDeniedException"), "{op}");
    }
    assert_eq!(
        sim.key_state(ACCOUNT, REGION, PENDING).as_deref(),
        Some("PendingDeletion")
    );
    assert_eq!(
        sim.key_state(ACCOUNT, REGION, AWS_MANAGED).as_deref(),
        Some("Enabled")
    );
}

fn world_with_many_aliases() -> World {
    let mut world = quiet_world();
    let region = world
        .accounts
        .get_mut(ACCOUNT)
        .unwrap()
        .get_mut(REGION)
        .unwrap();
    region.keys.push(KeyDecl {
        id: "1e1a0000-0000-4000-8000-0000000000b1".into(),
        aliases: (0..5).map(|i| format!("alias/bulk-{i}")).collect(),
        key_manager: kms_sim::KeyManager::Customer,
        key_state: kms_sim::KeyState::Disabled,
        origin: "AWS_KMS".into(),
        multi_region: false,
        custom_key_store_id: None,
        description: None,
        creation_date: None,
    });
    world
}

#[tokio::test]
async fn list_aliases_paginates_with_limit_marker_and_truncated() {
    let sim = start(world_with_many_aliases());
    let kms = kms(&sim, REGION).await;
    let mut names = Vec::new();
    let mut marker: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = kms
            .list_aliases()
            .limit(3)
            .set_marker(marker.clone())
            .send()
            .await
            .unwrap();
        pages += 1;
        assert!(page.aliases().len() <= 3);
        for alias in page.aliases() {
            names.push(alias.alias_name().unwrap().to_owned());
            let arn = alias.alias_arn().unwrap();
            assert_eq!(
                arn,
                format!(
                    "arn:aws:kms:{REGION}:{ACCOUNT}:{}",
                    alias.alias_name().unwrap()
                )
            );
            assert!(alias.target_key_id().is_some());
        }
        assert_eq!(page.truncated(), page.next_marker().is_some());
        match page.next_marker() {
            Some(next) => marker = Some(next.to_owned()),
            None => break,
        }
    }
    // 5 demo aliases + 5 bulk ones, in name order, each once.
    assert_eq!(names.len(), 10, "{names:?}");
    assert_eq!(pages, 4);
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    // The SDK paginator walks the same pages.
    let all: Vec<_> = kms
        .list_aliases()
        .limit(4)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    assert_eq!(all.len(), 10);
    // KeyId filter: only that key's aliases; an alias is not a valid filter.
    let only = kms
        .list_aliases()
        .key_id(key_arn(KEY))
        .send()
        .await
        .unwrap();
    let only: Vec<_> = only
        .aliases()
        .iter()
        .filter_map(|a| a.alias_name())
        .collect();
    assert_eq!(only, ["alias/payments", "alias/payments-primary"]);
    let err = kms
        .list_aliases()
        .key_id("alias/payments")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("InvalidArnException"));
    let err = kms.list_aliases().marker("zz").send().await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("InvalidMarkerException"));
    let err = kms.list_aliases().limit(101).send().await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("ValidationException"));
}

#[tokio::test]
async fn an_attacker_re_enables_a_key_now_or_later() {
    let sim = start(quiet_world());
    let kms = kms(&sim, REGION).await;
    kms.disable_key().key_id(KEY).send().await.unwrap();
    sim.set_key_state(ACCOUNT, REGION, KEY, "Enabled").unwrap();
    assert_eq!(
        described(&kms, KEY).await.key_state(),
        Some(&KeyState::Enabled)
    );
    kms.disable_key().key_id(KEY).send().await.unwrap();
    // A scheduled re-enable is not cancelled by a DisableKey before it.
    sim.schedule_key_state(ACCOUNT, REGION, KEY, "Enabled", Duration::from_millis(300))
        .unwrap();
    kms.disable_key().key_id(KEY).send().await.unwrap();
    for _ in 0..500 {
        if sim.key_state(ACCOUNT, REGION, KEY).as_deref() == Some("Enabled") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        described(&kms, KEY).await.key_state(),
        Some(&KeyState::Enabled)
    );
    assert!(sim.set_key_state(ACCOUNT, REGION, KEY, "Bogus").is_err());
    assert!(
        sim.set_key_state(ACCOUNT, REGION, "alias/none", "Enabled")
            .is_err()
    );
}

#[tokio::test]
async fn a_key_scoped_fault_refuses_that_key_only() {
    let sim = start(quiet_world());
    let kms = kms(&sim, REGION).await;
    sim.set_faults(Faults {
        rules: vec![FaultRule {
            key_id: Some(KEY.into()),
            operation: Some("DisableKey".into()),
            access_denied: true,
            ..FaultRule::default()
        }],
    });
    // Whatever form the KeyId takes, the rule selects the key it resolves to.
    for key_id in [KEY.to_owned(), key_arn(KEY)] {
        let err = kms.disable_key().key_id(key_id).send().await.unwrap_err();
        assert_eq!(code(&err).as_deref(), Some("AccessDeniedException"));
    }
    kms.disable_key().key_id(MRK).send().await.unwrap();
    described(&kms, KEY).await;
    assert_eq!(
        sim.key_state(ACCOUNT, REGION, KEY).as_deref(),
        Some("Enabled")
    );
    sim.set_faults(Faults {
        rules: vec![FaultRule {
            operation: Some("DescribeKey".into()),
            dependency_timeout_rate: 1.0,
            ..FaultRule::default()
        }],
    });
    let err = kms.describe_key().key_id(KEY).send().await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("DependencyTimeoutException"));
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(500));
}

#[tokio::test]
async fn describe_key_lags_behind_a_disable_under_eventual_consistency() {
    let sim = start(quiet_world());
    let kms = kms(&sim, REGION).await;
    sim.set_faults(Faults {
        rules: vec![FaultRule {
            key_id: Some(KEY.into()),
            consistency_lag_ms: Some(3_600_000),
            ..FaultRule::default()
        }],
    });
    kms.disable_key().key_id(KEY).send().await.unwrap();
    assert_eq!(
        sim.key_state(ACCOUNT, REGION, KEY).as_deref(),
        Some("Disabled")
    );
    assert_eq!(
        described(&kms, KEY).await.key_state(),
        Some(&KeyState::Enabled),
        "an hour of lag: DescribeKey still shows the key as it was"
    );
}

#[tokio::test]
async fn key_operations_have_their_documented_quotas() {
    let mut world = World::demo();
    world.settings.rate_limit_rps = 0.001;
    world.settings.rate_limit_burst = None;
    let sim = start(world);
    let kms = kms(&sim, REGION).await;
    kms.disable_key().key_id(KEY).send().await.unwrap();
    let err = kms.disable_key().key_id(KEY).send().await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("ThrottlingException"));
    // EnableKey has a bucket of its own.
    kms.enable_key().key_id(KEY).send().await.unwrap();
    // DescribeKey (2000 rps) and ListAliases (500 rps) are not held to the 5 rps default.
    for _ in 0..20 {
        kms.describe_key().key_id(KEY).send().await.unwrap();
        kms.list_aliases().send().await.unwrap();
    }
}

#[tokio::test]
async fn a_key_store_added_at_run_time_is_described_and_disconnectable() {
    let sim = start(quiet_world());
    let kms = kms(&sim, REGION).await;
    let added = sim
        .add_key_store(
            ACCOUNT,
            REGION,
            KeyStoreDecl {
                id: String::new(),
                name: "forgotten-hsm".into(),
                store_type: KeyStoreType::AwsCloudHsm,
                connection_state: kms_sim::ConnectionState::Connected,
                connection_error_code: None,
                cloud_hsm_cluster_id: Some("cluster-f0f0f0f0f0f".into()),
                xks_proxy_uri_endpoint: None,
                creation_date: None,
            },
        )
        .unwrap();
    assert!(added.custom_key_store_id.starts_with("cks-"));
    assert_eq!(added.connection_state, "CONNECTED");
    let listed = kms.describe_custom_key_stores().send().await.unwrap();
    let ids: Vec<_> = listed
        .custom_key_stores()
        .iter()
        .filter_map(|s| s.custom_key_store_id())
        .collect();
    assert!(ids.contains(&added.custom_key_store_id.as_str()), "{ids:?}");
    assert_eq!(ids.len(), 3);
    kms.disconnect_custom_key_store()
        .custom_key_store_id(&added.custom_key_store_id)
        .send()
        .await
        .unwrap();
    // A taken name or id is refused.
    let again = KeyStoreDecl {
        id: HSM_EU.into(),
        name: "another".into(),
        store_type: KeyStoreType::ExternalKeyStore,
        connection_state: kms_sim::ConnectionState::Connected,
        connection_error_code: None,
        cloud_hsm_cluster_id: None,
        xks_proxy_uri_endpoint: None,
        creation_date: None,
    };
    assert!(sim.add_key_store(ACCOUNT, REGION, again).is_err());
}

#[tokio::test]
async fn keys_and_added_stores_over_the_control_api() {
    let sim = start(quiet_world());
    let addr = sim.addr();
    let kms = kms(&sim, REGION).await;
    kms.disable_key().key_id(KEY).send().await.unwrap();
    let body = format!(
        r#"{{"account":"{ACCOUNT}","region":"{REGION}","key_id":"alias/payments","key_state":"Enabled"}}"#
    );
    let (status, text) = http(addr, "POST", "/_sim/keys/state", &body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        described(&kms, KEY).await.key_state(),
        Some(&KeyState::Enabled)
    );
    let (status, text) = http(
        addr,
        "GET",
        &format!("/_sim/keys?account={ACCOUNT}&region={REGION}"),
        "",
    )
    .await;
    assert_eq!(status, 200);
    let keys: serde_json::Value = serde_json::from_str(&text).unwrap();
    let first = &keys[0];
    assert_eq!(first["key_id"], KEY);
    assert_eq!(first["key_state"], "Enabled");
    assert_eq!(first["key_manager"], "CUSTOMER");
    let body = format!(
        r#"{{"account":"{OTHER_ACCOUNT}","region":"{REGION}","name":"late-xks","type":"EXTERNAL_KEY_STORE","xks_proxy_uri_endpoint":"https://late.example.com"}}"#
    );
    let (status, text) = http(addr, "POST", "/_sim/key-stores", &body).await;
    assert_eq!(status, 200, "{text}");
    let added: serde_json::Value = serde_json::from_str(&text).unwrap();
    let id = added["custom_key_store_id"].as_str().unwrap().to_owned();
    assert!(
        sim.key_stores(OTHER_ACCOUNT, REGION)
            .iter()
            .any(|s| s.custom_key_store_id == id && s.connection_state == "CONNECTED")
    );
    let (status, _) = http(addr, "POST", "/_sim/key-stores", &body).await;
    assert_eq!(status, 409, "the name is taken now");
    let ops: Vec<_> = sim.requests().into_iter().map(|r| r.operation).collect();
    assert!(ops.iter().any(|o| o == "SetKeyState") && ops.iter().any(|o| o == "AddKeyStore"));
}
