//! What an outage of AWS does to every command: STS refusing connections (issue 10, item 1), a
//! cached assumed-role session refused after an outage (item 5), a region whose DescribeAlarms
//! crawls (item 8). The real binary against kms-sim; the stores of the accounts that still work
//! always end DISCONNECTED, the other regions' alarms still fire, and nothing crashes.

use std::net::TcpListener;

use kms_sim::{FaultRule, Faults};

use crate::support::daemon::{self, Env, PolicyOptions};
use crate::support::sim::{ACCOUNT, DEMO_STORES, OTHER_ACCOUNT, SimEnv, output_text};

/// A loopback port nobody listens on: connections to it are refused at once.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let port = listener.local_addr().expect("local addr").port();
    drop(listener);
    port
}

/// The demo world and a policy listing every store (the second account through its role), with
/// STS pointed at a closed port and a short verify_timeout.
fn sts_unreachable_env() -> SimEnv {
    let env = SimEnv::demo();
    let dir = env.dir.path().display();
    let text = format!(
        "version: 1\n\
         aws:\n  region: eu-west-1\n  endpoint_url: \"{url}\"\n  endpoints:\n    sts: \"http://127.0.0.1:{port}\"\n\
         key_stores:\n{stores}\
         triggers:\n  file:\n    path: \"{dir}/kms-killswitch\"\n  signal: none\n\
         lockdown:\n  verify_timeout: 3s\n  enforce_interval: 30s\n  rate_limit: 5\n\
         state_file: \"{dir}/state/latch.json\"\n\
         audit_log: \"{dir}/audit/audit.jsonl\"\n",
        url = env.sim.endpoint_url(),
        port = closed_port(),
        stores = env.key_stores_yaml(&DEMO_STORES),
    );
    crate::support::write_policy_file(&env.policy_path(), &text);
    env
}

/// The process ended by itself with an exit code (no abort, no stack overflow) and said why the
/// role's account failed in one readable line.
fn assert_readable_sts_failure(text: &str) {
    assert!(!text.contains("overflowed its stack"), "{text}");
    assert!(text.contains("AssumeRole"), "{text}");
    assert!(text.contains("Connection refused"), "{text}");
    assert!(!text.contains("DispatchFailure {"), "no Debug dump: {text}");
}

#[test]
fn trip_with_sts_unreachable_disconnects_the_other_account_and_retries_the_role_until_the_deadline()
{
    let env = sts_unreachable_env();
    let output = env.run(&["trip", "--reason", "sts down"]);
    let text = output_text(&output);

    assert_eq!(output.status.code(), Some(1), "{text}");
    assert_readable_sts_failure(&text);
    for (account, region, id, _) in DEMO_STORES {
        let expected = if account == ACCOUNT {
            "DISCONNECTED"
        } else {
            "CONNECTED"
        };
        assert_eq!(env.state(account, region, id), expected, "{id}\n{text}");
    }
    // The role's stores were retried (a transport failure is not a refusal).
    let most_attempts = env
        .events("disconnect_requested")
        .iter()
        .filter(|e| e["account"] == OTHER_ACCOUNT)
        .filter_map(|e| e["attempt"].as_u64())
        .max();
    assert!(most_attempts >= Some(2), "{most_attempts:?}\n{text}");
    let finished = env.events("lockdown_finished");
    assert_eq!(finished.len(), 1, "{text}");
    assert_eq!(finished[0]["outcome"], "partial");
    assert_eq!(finished[0]["verified"], 4);
}

#[test]
fn status_with_sts_unreachable_reports_the_role_stores_and_describes_the_others() {
    let env = sts_unreachable_env();
    let output = env.run(&["status"]);
    let text = output_text(&output);

    assert_eq!(output.status.code(), Some(1), "{text}");
    assert_readable_sts_failure(&text);
    for (account, _, id, _) in DEMO_STORES {
        if account == ACCOUNT {
            let line = text
                .lines()
                .find(|l| l.contains(id))
                .unwrap_or_else(|| panic!("{id} listed\n{text}"));
            assert!(line.contains("CONNECTED"), "{line}");
        }
    }
}

#[test]
fn check_online_with_sts_unreachable_fails_readably() {
    let env = sts_unreachable_env();
    let output = env.run(&["check", "--online"]);
    let text = output_text(&output);

    assert_eq!(output.status.code(), Some(1), "{text}");
    assert_readable_sts_failure(&text);
}

#[test]
fn daemon_with_sts_unreachable_starts_stays_up_and_disconnects_the_other_stores() {
    let env = Env::with_policy(PolicyOptions {
        verify_timeout: "3s",
        ..PolicyOptions::default()
    });
    let text = env.policy_text(&PolicyOptions {
        verify_timeout: "3s",
        ..PolicyOptions::default()
    });
    let url_line = format!("  endpoint_url: \"{}\"\n", env.sim.endpoint_url());
    let text = text.replace(
        &url_line,
        &format!(
            "{url_line}  endpoints:\n    sts: \"http://127.0.0.1:{}\"\n",
            closed_port()
        ),
    );
    env.write_policy_text(&text);

    // READY after the credential warm-up failed: start-up survived it.
    let mut daemon = env.start();
    env.touch_flag();
    let finished = env.wait_events("lockdown_finished", 1);
    assert_eq!(finished[0]["outcome"], "partial", "{}", env.audit_dump());
    assert_eq!(finished[0]["verified"], 2, "{}", env.audit_dump());
    for (account, region, id) in daemon::STORES {
        let expected = if account == daemon::ACCOUNT {
            "DISCONNECTED"
        } else {
            "CONNECTED"
        };
        assert_eq!(
            env.sim.connection_state(account, region, id).as_deref(),
            Some(expected),
            "{id}"
        );
    }
    // Still running after the partial lockdown (enforcement keeps retrying): a clean stop.
    daemon.signal("TERM");
    let status = daemon.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    assert!(!daemon.log().contains("overflowed its stack"));
    assert_eq!(env.events("daemon_stopped").len(), 1);
}

#[test]
fn alarm_in_one_region_fires_while_another_region_takes_9s_to_answer() {
    // ap-southeast-2 sorts before eu-west-1: polled one after another, eu-west-1 would wait.
    let slow_region = "ap-southeast-2";
    let options = PolicyOptions {
        extra_triggers: format!(
            "  alarms:\n    - name: {}\n      region: {slow_region}\n    - name: {}\n  alarm_poll_interval: 1s\n",
            daemon::COMPOSITE_ALARM,
            daemon::METRIC_ALARM,
        ),
        ..PolicyOptions::default()
    };
    let env = Env::with_policy(options);
    env.sim.set_faults(Faults {
        rules: vec![
            FaultRule {
                transition_delay_ms: Some(100),
                ..FaultRule::default()
            },
            FaultRule {
                region: Some(slow_region.into()),
                operation: Some("DescribeAlarms".into()),
                latency_ms: 9_000,
                ..FaultRule::default()
            },
        ],
    });
    let _daemon = env.start();
    env.sim
        .set_alarm_state(
            daemon::ACCOUNT,
            daemon::REGION,
            daemon::METRIC_ALARM,
            "ALARM",
            "integration test",
        )
        .expect("set the alarm");
    let fired = env.wait_events("trigger_fired", 1);
    assert_eq!(fired[0]["source"], "alarm");
    assert_eq!(fired[0]["detail"]["region"], daemon::REGION);
    // The slow region's first DescribeAlarms (logged by the sim once answered) is not in yet.
    let slow_answers = env
        .sim
        .requests()
        .iter()
        .filter(|r| r.operation == "DescribeAlarms" && r.region.as_deref() == Some(slow_region))
        .count();
    assert_eq!(slow_answers, 0, "{}", env.audit_dump());
}

#[test]
fn cached_session_refused_after_an_outage_is_renewed_and_the_lockdown_completes() {
    let env = Env::new();
    // Start-up warms the credentials: the role's session is cached from here on.
    let _daemon = env.start();
    let assumed_before = env
        .sim
        .requests()
        .iter()
        .filter(|r| r.operation == "AssumeRole")
        .count();
    assert!(assumed_before >= 1, "warm-up assumed the role");
    // An outage: every connection dropped while the lockdown starts.
    env.sim.set_faults(Faults {
        rules: vec![FaultRule {
            drop_connection_rate: 1.0,
            ..FaultRule::default()
        }],
    });
    env.touch_flag();
    env.wait_events("disconnect_result", 3);
    // The endpoint comes back without the sessions it issued before.
    let since = daemon::now_us();
    env.sim.forget_sessions();
    env.set_transition_delay(100);

    let finished = env.wait_events("lockdown_finished", 1);
    assert_eq!(finished[0]["outcome"], "complete", "{}", env.audit_dump());
    assert_eq!(finished[0]["verified"], daemon::STORES.len());
    env.wait_all_disconnected();
    // The refused session was replaced, paced: not one AssumeRole per refused request.
    let assumed = env.requests_since("AssumeRole", since);
    assert!((1..=3).contains(&assumed), "{assumed} AssumeRole calls");
}

#[test]
fn every_failed_enforcement_round_is_audited() {
    let env = Env::with_policy(PolicyOptions {
        enforce_interval: "1s",
        ..PolicyOptions::default()
    });
    let _daemon = env.start();
    env.touch_flag();
    let finished = env.wait_events("lockdown_finished", 1);
    assert_eq!(finished[0]["outcome"], "complete", "{}", env.audit_dump());
    // The second account stops answering the enforcement rounds' Describe.
    env.sim.set_faults(Faults {
        rules: vec![FaultRule {
            account: Some(daemon::OTHER_ACCOUNT.into()),
            operation: Some("DescribeCustomKeyStores".into()),
            access_denied: true,
            ..FaultRule::default()
        }],
    });
    let failed = env.wait_events("enforcement_failed", 2);
    let (_, region, id) = daemon::STORES[2];
    for record in &failed[..2] {
        assert_eq!(record["key_store_id"], id, "{record}");
        assert_eq!(record["region"], region);
        assert_eq!(record["lockdown_id"], finished[0]["lockdown_id"]);
        let error = record["error"].as_str().unwrap_or_default();
        assert!(error.contains("AccessDenied"), "{error}");
    }
    // The first account's stores are enforced as usual: no failure recorded for them.
    assert!(
        env.events("enforcement_failed")
            .iter()
            .all(|r| r["key_store_id"] == id),
        "{}",
        env.audit_dump()
    );
}
