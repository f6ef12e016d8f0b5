//! `trip`, `status` and `check --online`: the real binary against kms-sim over HTTP with the real
//! AWS SDK — two accounts (the second through AssumeRole) × two regions, ids and names — with and
//! without injected faults. Every test checks the simulator's own view of the stores afterwards.

use kms_sim::FaultRule;

use crate::support::sim::{ACCOUNT, ALARMS, DEMO_STORES, OTHER_ACCOUNT, SimEnv, output_text};

fn assert_all(env: &SimEnv, state: &str) {
    for (account, region, id, _) in DEMO_STORES {
        assert_eq!(
            env.state(account, region, id),
            state,
            "{id} in {account}/{region}"
        );
    }
}

#[test]
fn trip_disconnects_every_store_across_accounts_and_regions() {
    let env = SimEnv::demo();
    let output = env.run(&["trip", "--reason", "integration test"]);
    let text = output_text(&output);

    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("COMPLETE: 8/8"), "{text}");
    assert_all(&env, "DISCONNECTED");
    // The second account was reached through AssumeRole.
    assert!(!env.requests("AssumeRole").is_empty());
    assert!(
        env.requests("DisconnectCustomKeyStore")
            .iter()
            .any(|r| r.account.as_deref() == Some(OTHER_ACCOUNT))
    );
    // No credential in any output.
    assert!(!text.contains("kms-sim-demo-secret"), "{text}");

    let latch: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.state_file()).expect("latch written"))
            .expect("latch is JSON");
    assert_eq!(latch["trigger"], "cli");
    let fired = env.events("trigger_fired");
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0]["source"], "cli");
    assert_eq!(fired[0]["detail"]["reason"], "integration test");
    let finished = env.events("lockdown_finished");
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0]["outcome"], "complete");
    assert_eq!(finished[0]["verified"], 8);
    assert_eq!(env.events("store_verified").len(), 8);
    // The latch was on disk before the first Disconnect: the lockdown_id it names is the one
    // every disconnect record carries.
    assert!(
        env.events("disconnect_requested")
            .iter()
            .all(|e| e["lockdown_id"] == latch["lockdown_id"])
    );
}

#[test]
fn trip_prints_its_report_without_step_logs_unless_rust_log_asks() {
    let env = SimEnv::demo();
    let output = env
        .command()
        .env_remove("RUST_LOG")
        .args(["trip", "--reason", "quiet terminal"])
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("COMPLETE: 8/8"), "{stdout}");
    assert!(
        !stderr.contains(" INFO "),
        "a one-shot command logs only warnings and errors by default:\n{stderr}"
    );
    // Every step is still in the audit log.
    assert_eq!(env.events("store_verified").len(), 8);
}

#[test]
fn trip_completes_despite_throttling_server_errors_and_consistency_lag() {
    let env = SimEnv::demo();
    env.set_faults(vec![
        FaultRule {
            transition_delay_ms: Some(200),
            consistency_lag_ms: Some(1000),
            ..FaultRule::default()
        },
        FaultRule {
            operation: Some("DisconnectCustomKeyStore".into()),
            throttle_rate: 0.3,
            internal_error_rate: 0.1,
            ..FaultRule::default()
        },
        FaultRule {
            operation: Some("DescribeCustomKeyStores".into()),
            throttle_rate: 0.3,
            internal_error_rate: 0.1,
            ..FaultRule::default()
        },
    ]);
    let output = env.run(&["trip", "--reason", "faults"]);
    let text = output_text(&output);

    assert_eq!(output.status.code(), Some(0), "{text}");
    assert_all(&env, "DISCONNECTED");
    assert_eq!(env.events("lockdown_finished")[0]["outcome"], "complete");
}

#[test]
fn trip_dry_run_sends_no_disconnect_and_writes_no_latch() {
    let env = SimEnv::demo();
    let output = env.run(&["trip", "--dry-run"]);
    let text = output_text(&output);

    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(
        text.contains("8 of 8 key stores would be disconnected"),
        "{text}"
    );
    assert!(env.requests("DisconnectCustomKeyStore").is_empty());
    assert!(!env.requests("DescribeCustomKeyStores").is_empty());
    assert_all(&env, "CONNECTED");
    assert!(!env.state_file().exists());
    assert_eq!(env.events("lockdown_finished")[0]["outcome"], "dry_run");
}

#[test]
fn trip_is_partial_when_one_account_denies_disconnect() {
    let env = SimEnv::demo();
    env.set_faults(vec![
        FaultRule {
            transition_delay_ms: Some(200),
            ..FaultRule::default()
        },
        FaultRule {
            account: Some(OTHER_ACCOUNT.into()),
            operation: Some("DisconnectCustomKeyStore".into()),
            access_denied: true,
            ..FaultRule::default()
        },
    ]);
    let output = env.run(&["trip"]);
    let text = output_text(&output);

    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("PARTIAL: only 4/8"), "{text}");
    assert!(text.contains("AccessDenied"), "{text}");
    for (account, region, id, _) in DEMO_STORES {
        let expected = if account == ACCOUNT {
            "DISCONNECTED"
        } else {
            "CONNECTED"
        };
        assert_eq!(env.state(account, region, id), expected, "{id}");
    }
    let finished = &env.events("lockdown_finished")[0];
    assert_eq!(finished["outcome"], "partial");
    assert_eq!(finished["failed"].as_array().map(Vec::len), Some(4));
}

/// Issue 10 item 10: a trip while latched records `latched: true`, starts no second lockdown
/// and never replaces the latch; it exits 0 only if every store is DISCONNECTED now. `--again`
/// locks down again.
#[test]
fn trip_while_latched_starts_no_second_lockdown_unless_again() {
    let env = SimEnv::demo();
    assert_eq!(env.run(&["trip"]).status.code(), Some(0));
    let latch = std::fs::read(env.state_file()).expect("latch written");
    let disconnects = env.requests("DisconnectCustomKeyStore").len();

    let output = env.run(&["trip", "--reason", "again?"]);
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("already latched"), "{text}");
    assert!(text.contains("8/8 key stores DISCONNECTED"), "{text}");

    // Someone reconnects a store: a plain trip says so (exit 1) and still sends nothing.
    let (account, region, id, _) = DEMO_STORES[4];
    env.sim
        .set_connection_state(account, region, id, "CONNECTED")
        .expect("store exists");
    let output = env.run(&["trip"]);
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("only 7/8"), "{text}");
    assert_eq!(env.state(account, region, id), "CONNECTED");
    assert_eq!(env.requests("DisconnectCustomKeyStore").len(), disconnects);
    assert_eq!(env.events("lockdown_started").len(), 1);

    // `--again` locks down again, under the same latch.
    let output = env.run(&["trip", "--again"]);
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("locking down again"), "{text}");
    assert_eq!(env.state(account, region, id), "DISCONNECTED");
    let fired = env.events("trigger_fired");
    assert_eq!(fired.len(), 4);
    assert!(fired[1..].iter().all(|f| f["latched"] == true), "{fired:?}");
    assert_eq!(env.events("lockdown_started").len(), 2);
    assert_eq!(
        std::fs::read(env.state_file()).unwrap(),
        latch,
        "never replaced"
    );
}

#[test]
fn status_json_reports_latch_and_every_store_as_kms_does() {
    let env = SimEnv::demo();
    let (account, region, id, _) = DEMO_STORES[2];
    env.sim
        .set_connection_state(account, region, id, "FAILED")
        .expect("store exists");
    let output = env.run(&["status", "--json"]);
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");

    let status: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("status --json is JSON");
    assert_eq!(status["latched"], false);
    assert!(status["latch"].is_null());
    let stores = status["key_stores"].as_array().expect("key_stores array");
    assert_eq!(stores.len(), 8);
    for (store, (account, region, id, name)) in stores.iter().zip(DEMO_STORES) {
        let fields: Vec<&str> = store
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(fields.len(), 7, "{store}");
        assert_eq!(store["key_store_id"], id);
        assert_eq!(store["name"], name);
        assert_eq!(store["account"], account);
        assert_eq!(store["region"], region);
        assert!(
            store["type"] == "AWS_CLOUDHSM" || store["type"] == "EXTERNAL_KEY_STORE",
            "{store}"
        );
        assert_eq!(store["connection_state"], env.state(account, region, id));
    }
    assert_eq!(stores[2]["connection_state"], "FAILED");
    assert!(stores[2]["connection_error_code"].is_string());
    assert!(stores[0]["connection_error_code"].is_null());
    // status changes nothing.
    assert!(env.requests("DisconnectCustomKeyStore").is_empty());

    assert_eq!(env.run(&["trip"]).status.code(), Some(0));
    let output = env.run(&["status"]);
    let text = output_text(&output);
    assert!(text.contains("LATCHED"), "{text}");
    assert_eq!(text.matches("DISCONNECTED").count(), 8, "{text}");
}

#[test]
fn check_online_passes_when_everything_is_describable() {
    let env = SimEnv::demo();
    // The policy's endpoint_url wins over the standard variables (which point nowhere here).
    let dead = "http://127.0.0.1:9";
    let output = env
        .command()
        .args(["check", "--online"])
        .env("AWS_ENDPOINT_URL", dead)
        .env("AWS_ENDPOINT_URL_KMS", dead)
        .env("AWS_ENDPOINT_URL_STS", dead)
        .env("AWS_ENDPOINT_URL_CLOUDWATCH", dead)
        .output()
        .expect("the binary runs");
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("online check OK"), "{text}");
    assert!(env.requests("DisconnectCustomKeyStore").is_empty());
    assert_all(&env, "CONNECTED");
}

#[test]
fn check_online_reports_each_missing_store_alarm_and_permission() {
    let env = SimEnv::demo();
    let mut key_stores = env.key_stores_yaml(&DEMO_STORES[..2]);
    key_stores.push_str(
        "  - id: cks-0000000000000dead\n  - name: no-such-store\n    region: us-east-1\n",
    );
    key_stores.push_str(&env.key_stores_yaml(&DEMO_STORES[4..5]));
    env.write_policy(
        &key_stores,
        &SimEnv::alarms_yaml(&[ALARMS[0], "no-such-alarm"]),
    );
    env.set_faults(vec![FaultRule {
        account: Some(OTHER_ACCOUNT.into()),
        operation: Some("DescribeCustomKeyStores".into()),
        access_denied: true,
        ..FaultRule::default()
    }]);
    let output = env.run(&["check", "--online"]);
    let text = output_text(&output);

    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("missing key store: custom key store cks-0000000000000dead not found"),
        "{text}"
    );
    assert!(
        text.contains("missing key store: custom key store name:no-such-store not found"),
        "{text}"
    );
    assert!(
        text.contains("missing permission: custom key store cks-2e1c0000000000001"),
        "{text}"
    );
    assert!(text.contains("missing alarm: no-such-alarm"), "{text}");
    // Issue 15: the two real stores of us-east-1, where the policy names only a missing one,
    // are covered by no entry.
    assert_eq!(
        text.matches("unprotected key store: cks-1a1").count(),
        2,
        "{text}"
    );
    assert!(text.contains("found 6 problem(s)"), "{text}");
    assert_all(&env, "CONNECTED");
}

#[test]
fn trip_fails_an_account_whose_role_cannot_be_assumed_without_retrying() {
    let env = SimEnv::demo();
    env.set_faults(vec![
        FaultRule {
            transition_delay_ms: Some(200),
            ..FaultRule::default()
        },
        FaultRule {
            operation: Some("AssumeRole".into()),
            access_denied: true,
            ..FaultRule::default()
        },
    ]);
    let output = env.run(&["trip"]);
    let text = output_text(&output);

    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("AssumeRole: AccessDenied"), "{text}");
    for (account, region, id, _) in DEMO_STORES {
        let expected = if account == ACCOUNT {
            "DISCONNECTED"
        } else {
            "CONNECTED"
        };
        assert_eq!(env.state(account, region, id), expected, "{id}");
    }
    // A refusal is final: one attempt per store of the refused account, no retry storm.
    let attempts: Vec<u64> = env
        .events("disconnect_requested")
        .iter()
        .filter(|e| e["account"] == OTHER_ACCOUNT)
        .map(|e| e["attempt"].as_u64().unwrap_or(0))
        .collect();
    assert!(attempts.iter().all(|a| *a == 1), "{attempts:?}");
}
