//! Issue 15: `all: true` key store entries, unprotected stores, and standard KMS keys — the real
//! binary (daemon, `trip`, `status`, `check --online`) against the real kms-sim.

use kms_sim::{ConnectionState, KeyStoreDecl, KeyStoreType};

use crate::support::daemon::{ACCOUNT, Env, OTHER_ACCOUNT, REGION, ROLE};
use crate::support::sim::{SimEnv, output_text};

/// A store created in the sim now, CONNECTED (after the daemon or the policy).
fn add_store(sim: &kms_sim::SimHandle, account: &str, name: &str) -> String {
    sim.add_key_store(
        account,
        REGION,
        KeyStoreDecl {
            id: String::new(),
            name: name.to_string(),
            store_type: KeyStoreType::ExternalKeyStore,
            connection_state: ConnectionState::Connected,
            connection_error_code: None,
            cloud_hsm_cluster_id: None,
            xks_proxy_uri_endpoint: None,
            creation_date: None,
        },
    )
    .expect("the sim adds the store")
    .custom_key_store_id
}

/// The daemon's policy with these `key_stores:` lines instead of the three listed ids.
fn policy_with_key_stores(env: &Env, key_stores: &str) -> String {
    let text = env.policy_text(&Default::default());
    let start = text.find("key_stores:\n").expect("key_stores");
    let end = text.find("triggers:\n").expect("triggers");
    format!(
        "{}key_stores:\n{key_stores}{}",
        &text[..start],
        &text[end..]
    )
}

#[test]
fn all_true_trip_disconnects_a_store_created_after_the_daemon_started() {
    let env = Env::new();
    env.write_policy_text(&policy_with_key_stores(
        &env,
        &format!("  - all: true\n  - all: true\n    role_arn: {ROLE}\n"),
    ));
    let _daemon = env.start();
    let late = add_store(&env.sim, ACCOUNT, "created-after-start");
    let late_other = add_store(&env.sim, OTHER_ACCOUNT, "created-after-start-b");
    env.touch_flag();

    let finished = env.wait_events("lockdown_finished", 1);
    assert_eq!(finished[0]["outcome"], "complete", "{}", env.audit_dump());
    for (account, id) in [(ACCOUNT, &late), (OTHER_ACCOUNT, &late_other)] {
        assert_eq!(
            env.sim.connection_state(account, REGION, id).as_deref(),
            Some("DISCONNECTED"),
            "{id}"
        );
    }
    // Every store of both account-regions, the demo's and the new ones.
    for account in [ACCOUNT, OTHER_ACCOUNT] {
        for store in env.sim.key_stores(account, REGION) {
            assert_eq!(store.connection_state, "DISCONNECTED", "{store:?}");
        }
    }
    let started = &env.events("lockdown_started")[0];
    let listed: Vec<&str> = started["key_stores"]
        .as_array()
        .expect("a list")
        .iter()
        .filter(|entry| entry["all"] == true)
        .filter_map(|entry| entry["id"].as_str())
        .collect();
    assert!(listed.contains(&late.as_str()), "{started}");
    assert!(listed.contains(&late_other.as_str()), "{started}");
}

#[test]
fn check_online_and_status_report_a_store_no_entry_covers() {
    let env = SimEnv::demo();
    let late = add_store(&env.sim, crate::support::sim::ACCOUNT, "nobody-listed-me");

    let output = env.run(&["check", "--online"]);
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("unprotected key store: {late}")),
        "{text}"
    );
    assert_eq!(
        text.matches("unprotected key store:").count(),
        1,
        "only the new store: {text}"
    );

    let output = env.run(&["status", "--json"]);
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    let status: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("status --json prints JSON");
    let unprotected = status["unprotected_key_stores"].as_array().expect("a list");
    assert_eq!(unprotected.len(), 1, "{status}");
    assert_eq!(unprotected[0]["key_store_id"], late.as_str());
    assert_eq!(unprotected[0]["name"], "nobody-listed-me");
    assert_eq!(unprotected[0]["account"], crate::support::sim::ACCOUNT);
    assert_eq!(unprotected[0]["connection_state"], "CONNECTED");

    let output = env.run(&["status"]);
    let text = output_text(&output);
    assert!(text.contains("UNPROTECTED"), "{text}");
    assert!(text.contains(&late), "{text}");
}

#[test]
fn allow_unprotected_lets_check_online_pass_while_still_listing_them() {
    let env = SimEnv::demo();
    let late = add_store(&env.sim, crate::support::sim::ACCOUNT, "tolerated");
    let policy = std::fs::read_to_string(env.policy_path()).expect("policy");
    let policy = policy.replace("lockdown:\n", "lockdown:\n  allow_unprotected: true\n");
    crate::support::write_policy_file(&env.policy_path(), &policy);

    let output = env.run(&["check", "--online"]);
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains(&late), "still listed: {text}");
}

/// 20 stores (8 + 2 per account: eu-west-1 and us-east-1) and 20 keys (10 per account, in
/// eu-west-1) across the demo's two accounts: the demo world and what is added to it.
/// A key of the mixed world: (account, id, alias).
type MixedKey = (&'static str, String, String);
/// A store of the mixed world: (account, region, id).
type MixedStore = (&'static str, &'static str, String);

fn mixed_world() -> (kms_sim::World, Vec<MixedStore>, Vec<MixedKey>) {
    use crate::support::sim::DEMO_STORES;
    let mut world = kms_sim::World::demo();
    let mut stores: Vec<MixedStore> = DEMO_STORES
        .iter()
        .map(|(account, region, id, _)| (*account, *region, id.to_string()))
        .collect();
    let mut keys = Vec::new();
    for (digit, account) in [("1", ACCOUNT), ("2", OTHER_ACCOUNT)] {
        let region_world = world
            .accounts
            .get_mut(account)
            .and_then(|regions| regions.get_mut(REGION))
            .expect("the demo world has both accounts in eu-west-1");
        for n in 0..6 {
            let id = format!("cks-{digit}e9e{n:013}");
            region_world.key_stores.push(KeyStoreDecl {
                id: id.clone(),
                name: format!("mixed-{digit}-{n}"),
                store_type: KeyStoreType::ExternalKeyStore,
                connection_state: ConnectionState::Connected,
                connection_error_code: None,
                cloud_hsm_cluster_id: None,
                xks_proxy_uri_endpoint: None,
                creation_date: None,
            });
            stores.push((account, REGION, id));
        }
        for n in 0..10 {
            let id = format!("{digit}e9a0000-0000-4000-8000-{n:012}");
            let alias = format!("alias/mixed-{digit}-{n}");
            region_world.keys.push(kms_sim::KeyDecl {
                id: id.clone(),
                aliases: vec![alias.clone()],
                key_manager: kms_sim::KeyManager::Customer,
                key_state: kms_sim::KeyState::Enabled,
                origin: "AWS_KMS".to_string(),
                multi_region: false,
                custom_key_store_id: None,
                description: None,
                creation_date: None,
            });
            keys.push((account, id, alias));
        }
    }
    (world, stores, keys)
}

/// `key_stores:` lines listing `stores` by id and `keys:` lines, half by id and half by alias.
fn mixed_policy_lines(stores: &[(&str, &str, String)], keys: &[MixedKey]) -> String {
    let role = |account: &str| {
        if account == OTHER_ACCOUNT {
            format!("    role_arn: {ROLE}\n")
        } else {
            String::new()
        }
    };
    let mut yaml = String::new();
    for (account, region, id) in stores {
        yaml.push_str(&format!(
            "  - id: {id}\n    region: {region}\n{}",
            role(account)
        ));
    }
    yaml.push_str("keys:\n");
    for (n, (account, id, alias)) in keys.iter().enumerate() {
        if n % 2 == 0 {
            yaml.push_str(&format!("  - id: {id}\n{}", role(account)));
        } else {
            yaml.push_str(&format!("  - alias: {alias}\n{}", role(account)));
        }
    }
    yaml
}

fn mixed_env(world: kms_sim::World) -> SimEnv {
    let env = SimEnv {
        sim: kms_sim::spawn(world).expect("kms-sim starts"),
        dir: tempfile::tempdir().expect("tempdir"),
    };
    env.set_faults(vec![kms_sim::FaultRule {
        transition_delay_ms: Some(200),
        ..kms_sim::FaultRule::default()
    }]);
    env
}

#[test]
fn trip_with_20_stores_and_20_keys_across_two_accounts_ends_complete() {
    let (world, stores, keys) = mixed_world();
    assert_eq!((stores.len(), keys.len()), (20, 20));
    let env = mixed_env(world);
    env.write_policy(&mixed_policy_lines(&stores, &keys), "");

    let output = env.run(&["trip", "--reason", "mixed"]);
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("COMPLETE: 20/20"), "{text}");
    assert!(text.contains("20/20 keys verified Disabled"), "{text}");
    for (account, region, id) in &stores {
        assert_eq!(env.state(account, region, id), "DISCONNECTED", "{id}");
    }
    for (account, id, _) in &keys {
        assert_eq!(
            env.sim.key_state(account, REGION, id).as_deref(),
            Some("Disabled"),
            "{id}"
        );
    }
    let finished = &env.events("lockdown_finished")[0];
    assert_eq!(finished["outcome"], "complete", "{finished}");
    assert_eq!(finished["verified"], 20);
    assert_eq!(finished["keys_verified"], 20);
    assert_eq!(env.events("key_verified").len(), 20);
    // No DisableKey ever named an alias (KMS refuses them): aliases were resolved first.
    assert!(
        env.requests("DisableKey").iter().all(|r| !r
            .target
            .as_deref()
            .unwrap_or("")
            .contains("alias/"))
    );
}

#[test]
fn an_access_denied_key_makes_the_trip_partial_naming_it_and_holds_nothing_else_up() {
    let (world, stores, keys) = mixed_world();
    let env = mixed_env(world);
    let denied = keys[2].1.clone();
    env.set_faults(vec![
        kms_sim::FaultRule {
            transition_delay_ms: Some(200),
            ..kms_sim::FaultRule::default()
        },
        kms_sim::FaultRule {
            operation: Some("DisableKey".into()),
            key_id: Some(denied.clone()),
            access_denied: true,
            ..kms_sim::FaultRule::default()
        },
    ]);
    env.write_policy(&mixed_policy_lines(&stores, &keys), "");

    let output = env.run(&["trip", "--reason", "one key refused"]);
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("PARTIAL"), "{text}");
    assert!(text.contains(&denied), "the refused key is named: {text}");
    let finished = &env.events("lockdown_finished")[0];
    assert_eq!(finished["outcome"], "partial");
    assert_eq!(finished["verified"], 20);
    assert_eq!(finished["keys_verified"], 19);
    let failed = finished["failed"].as_array().expect("failed");
    assert_eq!(failed.len(), 1, "{finished}");
    assert!(failed[0]["key_id"].as_str().unwrap_or("").contains(&denied));
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap_or("")
            .contains("AccessDenied"),
        "{finished}"
    );
    // Nothing else was held up: every other key and store is done, and the lockdown did not
    // wait for the verify_timeout (30 s).
    assert!(
        finished["elapsed_ms"].as_u64().unwrap_or(u64::MAX) < 15_000,
        "{finished}"
    );
    for (account, id, _) in keys.iter().filter(|(_, id, _)| *id != denied) {
        assert_eq!(
            env.sim.key_state(account, REGION, id).as_deref(),
            Some("Disabled"),
            "{id}"
        );
    }
}

#[test]
fn an_attackers_enable_key_while_latched_is_undone_within_enforce_interval_plus_4s() {
    let env = Env::with_policy(crate::support::daemon::PolicyOptions {
        enforce_interval: "2s",
        ..Default::default()
    });
    let text = env.policy_text(&crate::support::daemon::PolicyOptions {
        enforce_interval: "2s",
        ..Default::default()
    });
    let key = "1e1a0000-0000-4000-8000-000000000001";
    let other = "2e1a0000-0000-4000-8000-000000000001";
    let keys = format!(
        "keys:\n  - alias: alias/payments\n  - id: {other}\n    role_arn: {ROLE}\ntriggers:\n"
    );
    env.write_policy_text(&text.replacen("triggers:\n", &keys, 1));
    let _daemon = env.start();
    env.touch_flag();
    let finished = env.wait_events("lockdown_finished", 1);
    assert_eq!(finished[0]["outcome"], "complete", "{}", env.audit_dump());
    assert_eq!(finished[0]["keys_verified"], 2);

    // The attacker re-enables a key behind the switch's back.
    env.sim
        .set_key_state(ACCOUNT, REGION, key, "Enabled")
        .expect("EnableKey in the sim");
    let started = std::time::Instant::now();
    let undone = crate::support::daemon::wait_for("the key Disabled again", || {
        (env.sim.key_state(ACCOUNT, REGION, key).as_deref() == Some("Disabled")).then_some(())
    });
    let elapsed = started.elapsed();
    assert!(undone.is_ok(), "{undone:?}; audit:\n{}", env.audit_dump());
    assert!(
        elapsed <= std::time::Duration::from_secs(2 + 4),
        "undone after {elapsed:?}"
    );
    let drift = env.wait_events("drift_detected", 1);
    assert!(
        drift.iter().any(
            |d| d["key_id"].as_str().unwrap_or("").contains(key) && d["key_state"] == "Enabled"
        ),
        "{drift:?}"
    );
    assert_eq!(
        env.sim.key_state(OTHER_ACCOUNT, REGION, other).as_deref(),
        Some("Disabled")
    );
}

#[test]
fn check_refuses_an_aws_managed_key_offline_and_online() {
    let env = SimEnv::demo();
    let policy = std::fs::read_to_string(env.policy_path()).expect("policy");
    let with_managed = policy.replacen(
        "triggers:\n",
        "keys:\n  - alias: alias/aws/ebs\ntriggers:\n",
        1,
    );
    crate::support::write_policy_file(&env.policy_path(), &with_managed);
    let output = env.run(&["check"]);
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(78), "{text}");
    assert!(text.contains("names an AWS managed key"), "{text}");

    // By id, only AWS knows it is AWS managed: check --online says so.
    let by_id = policy.replacen(
        "triggers:\n",
        "keys:\n  - id: 1e1a0000-0000-4000-8000-0000000000a1\ntriggers:\n",
        1,
    );
    crate::support::write_policy_file(&env.policy_path(), &by_id);
    let output = env.run(&["check", "--online"]);
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("AWS managed key:"), "{text}");
    assert!(text.contains("cannot be disabled"), "{text}");

    let output = env.run(&["status", "--json"]);
    let status: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("status --json prints JSON");
    assert_eq!(status["keys"][0]["key_manager"], "AWS", "{status}");
    assert_eq!(status["keys"][0]["key_state"], "Enabled", "{status}");
}
