//! The daemon end to end: the real `kms-killswitch run` against kms-sim over HTTP, one behaviour
//! per test. Every wait polls (the audit log, the sim, the notify socket) with a bounded deadline;
//! nothing asserts on elapsed time. Signals go to the daemon child only.

use std::os::unix::fs::PermissionsExt;

use kms_sim::{FaultRule, Faults};

use crate::support::daemon::{
    ACCOUNT, COMPOSITE_ALARM, Env, METRIC_ALARM, PolicyOptions, REGION, STORES, alarms_yaml,
    now_us, wait_for,
};

/// The first lockdown in `env` finished complete, with every listed store verified.
fn assert_complete_lockdown(env: &Env, index: usize) {
    let finished = env.wait_events("lockdown_finished", index + 1);
    assert_eq!(
        finished[index]["outcome"],
        "complete",
        "{}",
        env.audit_dump()
    );
    assert_eq!(finished[index]["verified"], STORES.len());
    env.wait_all_disconnected();
}

#[test]
fn file_flag_trips_latches_and_disconnects_every_store() {
    let env = Env::new();
    let _daemon = env.start();
    assert!(env.events("trigger_fired").is_empty());
    env.touch_flag();
    let fired = env.wait_events("trigger_fired", 1);
    assert_eq!(fired[0]["source"], "file");
    assert_eq!(fired[0]["detail"]["path"], env.flag().display().to_string());
    assert_eq!(fired[0]["detail"]["owner_uid"], 0);
    assert_complete_lockdown(&env, 0);
    let latch: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.state_file()).unwrap()).unwrap();
    assert_eq!(latch["trigger"], "file");
    // The latch names the lockdown the audit log records.
    let started = env.events("lockdown_started");
    assert_eq!(started[0]["lockdown_id"], latch["lockdown_id"]);
    // The flag is the operator's word: the daemon never removes it.
    assert!(env.flag().exists());
}

#[test]
fn flag_present_at_start_fires_at_once() {
    let env = Env::new();
    env.touch_flag();
    let _daemon = env.start();
    let fired = env.wait_events("trigger_fired", 1);
    assert_eq!(fired[0]["source"], "file");
    assert_complete_lockdown(&env, 0);
}

#[test]
fn flag_directory_removed_and_recreated_is_watched_again() {
    let env = Env::new();
    let daemon = env.start();
    std::fs::remove_dir(env.flag_dir()).unwrap();
    std::fs::create_dir(env.flag_dir()).unwrap();
    std::fs::set_permissions(env.flag_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The daemon says when the watch is back (its log); then a new flag fires.
    wait_for("the daemon to watch the re-created directory", || {
        daemon
            .log()
            .contains("flag directory is back")
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", daemon.log()));
    env.touch_flag();
    let fired = env.wait_events("trigger_fired", 1);
    assert_eq!(fired[0]["source"], "file");
    assert_complete_lockdown(&env, 0);
}

#[test]
fn symlink_flag_is_rejected_and_nothing_is_disconnected() {
    let env = Env::new();
    let _daemon = env.start();
    let target = env.dir.path().join("elsewhere");
    std::fs::write(&target, b"").unwrap();
    std::os::unix::fs::symlink(&target, env.flag()).unwrap();
    let rejected = env.wait_events("trigger_rejected", 1);
    assert_eq!(rejected[0]["source"], "file");
    assert!(
        rejected[0]["reason"].as_str().unwrap().contains("symlink"),
        "{}",
        rejected[0]
    );
    // The rejection and the (non-)firing come from the same check: it is decided.
    assert!(env.events("trigger_fired").is_empty());
    assert!(!env.state_file().exists(), "no latch for a rejected flag");
    assert!(env.store_states().iter().all(|s| s == "CONNECTED"));
}

#[test]
fn flag_owned_by_an_untrusted_uid_is_rejected_until_root_owns_it() {
    let env = Env::new();
    let _daemon = env.start();
    // Created elsewhere with the wrong owner, then moved into place (rename = Modify(Name)).
    let staged = env.flag_dir().join(".staged");
    std::fs::write(&staged, b"").unwrap();
    std::os::unix::fs::chown(&staged, Some(65534), Some(65534)).unwrap();
    std::fs::rename(&staged, env.flag()).unwrap();
    let rejected = env.wait_events("trigger_rejected", 1);
    assert!(
        rejected[0]["reason"]
            .as_str()
            .unwrap()
            .contains("uid 65534"),
        "{}",
        rejected[0]
    );
    assert!(env.events("trigger_fired").is_empty());
    assert!(!env.state_file().exists());
    // Root taking ownership is a new, trusted flag.
    std::os::unix::fs::chown(env.flag(), Some(0), Some(0)).unwrap();
    env.wait_events("trigger_fired", 1);
    assert_complete_lockdown(&env, 0);
}

#[test]
fn world_writable_flag_directory_refuses_to_start() {
    let env = Env::new();
    std::fs::set_permissions(env.flag_dir(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let output = env.command().arg("run").output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(78),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("writable by group and others")
            && stderr.contains("allow_untrusted_flag_dir"),
        "{stderr}"
    );
}

#[test]
fn sigusr1_trips_and_records_the_sender() {
    let env = Env::new();
    let daemon = env.start();
    let sender = daemon.signal("USR1");
    let fired = env.wait_events("trigger_fired", 1);
    assert_eq!(fired[0]["source"], "signal");
    assert_eq!(fired[0]["detail"]["signal"], "SIGUSR1");
    assert_eq!(fired[0]["detail"]["sender_pid"], sender);
    assert_eq!(fired[0]["detail"]["sender_uid"], 0);
    assert_complete_lockdown(&env, 0);
}

#[test]
fn sigusr1_during_start_up_is_queued_and_fires_once_ready() {
    let env = Env::new();
    // Credential warm-up (GetCallerIdentity) takes 2 s, so the daemon is still starting.
    env.sim.set_faults(Faults {
        rules: vec![
            FaultRule {
                transition_delay_ms: Some(100),
                ..FaultRule::default()
            },
            FaultRule {
                operation: Some("GetCallerIdentity".to_owned()),
                latency_ms: 2_000,
                ..FaultRule::default()
            },
        ],
    });
    let mut daemon = env.spawn_with(|_| {});
    // The audit log is opened right after the trigger signal is registered, before warm-up.
    wait_for("the audit log to be created", || {
        env.audit_log().exists().then_some(())
    })
    .unwrap();
    assert!(
        daemon.messages.iter().all(|m| !m.contains("READY=1")),
        "the signal must arrive before READY for this test to mean anything"
    );
    let sender = daemon.signal("USR1");
    daemon.wait_notify("READY=1", |m| m.lines().any(|l| l == "READY=1"));
    let fired = env.wait_events("trigger_fired", 1);
    assert_eq!(fired[0]["source"], "signal");
    assert_eq!(fired[0]["detail"]["sender_pid"], sender);
    assert_complete_lockdown(&env, 0);
}

#[test]
fn sighup_with_a_valid_policy_swaps_it_in() {
    let env = Env::new();
    let mut daemon = env.start();
    let first_sha = env.wait_events("policy_loaded", 1)[0]["policy_sha256"].clone();
    let options = PolicyOptions {
        extra_triggers: alarms_yaml(&[(METRIC_ALARM, 1)], "1s", None),
        ..PolicyOptions::default()
    };
    env.write_policy(&options);
    let before = daemon.messages.len();
    daemon.signal("HUP");
    let loaded = env.wait_events("policy_loaded", 2);
    assert_ne!(
        loaded[1]["policy_sha256"], first_sha,
        "records now carry the new policy's hash"
    );
    let reloading = daemon.wait_notify("RELOADING=1", |m| {
        m.contains("RELOADING=1") && m.contains("MONOTONIC_USEC=")
    });
    assert!(reloading >= before);
    daemon.wait_status("armed, 3 key stores, 1 alarm", reloading);
    // The new alarm trigger is live.
    env.sim
        .set_alarm_state(ACCOUNT, REGION, METRIC_ALARM, "ALARM", "test")
        .unwrap();
    let fired = env.wait_events("trigger_fired", 1);
    assert_eq!(fired[0]["source"], "alarm");
}

/// Wait until the daemon has sent READY=1 `count` times (once at start, once after each reload).
fn wait_ready_count(daemon: &mut crate::support::daemon::Daemon, count: usize) {
    wait_for(&format!("READY=1 #{count}"), || {
        daemon.drain_notify();
        let ready = daemon
            .messages
            .iter()
            .filter(|m| m.lines().any(|l| l == "READY=1"))
            .count();
        (ready >= count).then_some(())
    })
    .unwrap();
}

#[test]
fn sighup_with_an_unchanged_policy_records_nothing_and_a_changed_one_is_recorded() {
    let env = Env::new();
    let mut daemon = env.start();
    env.wait_events("policy_loaded", 1);
    daemon.signal("HUP");
    wait_ready_count(&mut daemon, 2);
    // The same bytes written again are no change either.
    let same = std::fs::read_to_string(env.policy_path()).unwrap();
    env.write_policy_text(&same);
    daemon.signal("HUP");
    wait_ready_count(&mut daemon, 3);
    assert_eq!(env.events("policy_loaded").len(), 1, "{}", env.audit_dump());

    env.write_policy(&PolicyOptions {
        extra_triggers: alarms_yaml(&[(METRIC_ALARM, 1)], "1s", None),
        ..PolicyOptions::default()
    });
    daemon.signal("HUP");
    let loaded = env.wait_events("policy_loaded", 2);
    assert_ne!(loaded[1]["policy_sha256"], loaded[0]["policy_sha256"]);
    assert!(env.events("policy_rejected").is_empty());
}

#[test]
fn sighup_with_an_invalid_policy_is_rejected_and_the_old_one_stays() {
    let env = Env::new();
    let daemon = env.start();
    let good = std::fs::read_to_string(env.policy_path()).unwrap();
    env.write_policy_text(&format!("{good}bogus_key: 1\n"));
    daemon.signal("HUP");
    let rejected = env.wait_events("policy_rejected", 1);
    assert!(
        rejected[0]["error"].as_str().unwrap().contains("bogus_key"),
        "{}",
        rejected[0]
    );
    assert_eq!(env.events("policy_loaded").len(), 1);
    // The old policy is still in force: the flag still trips it.
    env.touch_flag();
    assert_complete_lockdown(&env, 0);
}

#[test]
fn sigterm_during_a_lockdown_finishes_it_first() {
    let env = Env::new();
    // Make the lockdown take a while: every store needs 2 s to reach DISCONNECTED.
    env.set_transition_delay(2000);
    let mut daemon = env.start();
    env.touch_flag();
    env.wait_events("disconnect_requested", 1);
    daemon.signal("TERM");
    let status = daemon.wait_exit();
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log());
    let names: Vec<String> = env
        .audit()
        .iter()
        .map(|r| r["event"].as_str().unwrap().to_string())
        .collect();
    let finished = names
        .iter()
        .position(|n| n == "lockdown_finished")
        .expect("lockdown_finished written");
    let stopped = names
        .iter()
        .position(|n| n == "daemon_stopped")
        .expect("daemon_stopped written");
    assert!(finished < stopped, "{names:?}");
    assert_eq!(names.last().map(String::as_str), Some("daemon_stopped"));
    assert_eq!(env.events("lockdown_finished")[0]["outcome"], "complete");
    assert!(
        env.store_states().iter().all(|s| s == "DISCONNECTED"),
        "{:?}",
        env.store_states()
    );
}

/// Wait until the daemon has polled CloudWatch `polls` more times since `since_us`.
fn wait_polls(env: &Env, since_us: u64, polls: usize) {
    wait_for(&format!("{polls} DescribeAlarms polls"), || {
        (env.requests_since("DescribeAlarms", since_us) >= polls).then_some(())
    })
    .unwrap();
}

#[test]
fn alarm_fires_on_two_consecutive_alarm_polls_but_not_on_ok_insufficient_data_or_a_blip() {
    let env = Env::with_policy(PolicyOptions {
        extra_triggers: alarms_yaml(&[(METRIC_ALARM, 2)], "1s", None),
        ..PolicyOptions::default()
    });
    let _daemon = env.start();
    wait_polls(&env, 0, 2);
    env.sim
        .set_alarm_state(
            ACCOUNT,
            REGION,
            METRIC_ALARM,
            "INSUFFICIENT_DATA",
            "no data",
        )
        .unwrap();
    wait_polls(&env, now_us(), 3);
    // A blip: ALARM for exactly one poll (the request log entry is written once it is answered).
    let alarm_at = now_us();
    env.sim
        .set_alarm_state(ACCOUNT, REGION, METRIC_ALARM, "ALARM", "blip")
        .unwrap();
    wait_polls(&env, alarm_at, 1);
    env.sim
        .set_alarm_state(ACCOUNT, REGION, METRIC_ALARM, "OK", "back to normal")
        .unwrap();
    let ok_at = now_us();
    assert_eq!(
        env.requests_since("DescribeAlarms", alarm_at)
            - env.requests_since("DescribeAlarms", ok_at),
        1,
        "the blip lasted one poll"
    );
    wait_polls(&env, ok_at, 3);
    assert!(
        env.events("trigger_fired").is_empty(),
        "{}",
        env.audit_dump()
    );
    assert!(!env.state_file().exists());
    // Two polls in a row in ALARM fire.
    env.sim
        .set_alarm_state(
            ACCOUNT,
            REGION,
            METRIC_ALARM,
            "ALARM",
            "exfiltration suspected",
        )
        .unwrap();
    let fired = env.wait_events("trigger_fired", 1);
    assert_eq!(fired[0]["source"], "alarm");
    assert_eq!(fired[0]["detail"]["alarm"], METRIC_ALARM);
    assert_eq!(fired[0]["detail"]["region"], REGION);
    assert_eq!(fired[0]["detail"]["consecutive_polls"], 2);
    assert_eq!(fired[0]["detail"]["state_reason"], "exfiltration suspected");
    assert_complete_lockdown(&env, 0);
}

#[test]
fn composite_alarm_trips() {
    let env = Env::with_policy(PolicyOptions {
        extra_triggers: alarms_yaml(&[(COMPOSITE_ALARM, 1)], "1s", None),
        ..PolicyOptions::default()
    });
    let _daemon = env.start();
    env.sim
        .set_alarm_state(ACCOUNT, REGION, COMPOSITE_ALARM, "ALARM", "big red button")
        .unwrap();
    let fired = env.wait_events("trigger_fired", 1);
    assert_eq!(fired[0]["detail"]["alarm"], COMPOSITE_ALARM);
    assert_eq!(fired[0]["detail"]["alarm_type"], "composite");
    assert_complete_lockdown(&env, 0);
}

#[test]
fn fail_closed_after_fires_when_alarms_stay_unreadable() {
    let env = Env::with_policy(PolicyOptions {
        extra_triggers: alarms_yaml(&[("no-such-alarm", 1)], "1s", Some("2s")),
        ..PolicyOptions::default()
    });
    let _daemon = env.start();
    let failed = env.wait_events("alarm_poll_failed", 1);
    assert!(
        failed[0]["error"].as_str().unwrap().contains("not found"),
        "{}",
        failed[0]
    );
    let fired = env.wait_events("trigger_fired", 1);
    assert_eq!(fired[0]["source"], "alarm");
    assert_eq!(fired[0]["detail"]["reason"], "fail_closed_after");
    assert_eq!(
        env.events("alarm_poll_failed").len(),
        1,
        "a persistent problem is audited once"
    );
    assert_complete_lockdown(&env, 0);
}

#[test]
fn missing_alarm_without_fail_closed_is_reported_and_never_fires() {
    let env = Env::with_policy(PolicyOptions {
        extra_triggers: alarms_yaml(&[("no-such-alarm", 1)], "1s", None),
        ..PolicyOptions::default()
    });
    let mut daemon = env.start();
    env.wait_events("alarm_poll_failed", 1);
    daemon.wait_status(
        "armed, 3 key stores, 1 alarm; alarms unreadable in eu-west-1",
        0,
    );
    wait_polls(&env, now_us(), 5);
    assert!(env.events("trigger_fired").is_empty());
}

#[test]
fn kill_9_mid_lockdown_then_restart_resumes_and_completes() {
    let env = Env::new();
    env.set_transition_delay(3000);
    let mut daemon = env.start();
    env.touch_flag();
    env.wait_events("disconnect_requested", 1);
    daemon.kill_9();
    assert!(
        env.state_file().exists(),
        "the latch was written before the first Disconnect"
    );
    assert!(
        env.events("lockdown_finished").is_empty(),
        "killed mid-lockdown"
    );
    env.set_transition_delay(100);
    let _restarted = env.start();
    let fired = env.wait_events("trigger_fired", 2);
    assert_eq!(fired[1]["source"], "resume", "{}", env.audit_dump());
    assert_complete_lockdown(&env, 0);
    // The flag is still there: seen again, audited as latched, no second lockdown.
    let fired = env.wait_events("trigger_fired", 3);
    assert_eq!(fired[2]["source"], "file");
    assert_eq!(fired[2]["latched"], true);
    assert_eq!(
        env.events("lockdown_started").len(),
        2,
        "the killed one and the resumed one"
    );
}

#[test]
fn enforcement_disconnects_a_store_reconnected_behind_its_back() {
    let env = Env::with_policy(PolicyOptions {
        enforce_interval: "1s",
        ..PolicyOptions::default()
    });
    let _daemon = env.start();
    env.touch_flag();
    assert_complete_lockdown(&env, 0);
    let (account, region, id) = STORES[2];
    env.sim
        .set_connection_state(account, region, id, "CONNECTED")
        .unwrap();
    let drift = env.wait_events("drift_detected", 1);
    assert_eq!(drift[0]["key_store_id"], id);
    assert_eq!(drift[0]["connection_state"], "CONNECTED");
    env.wait_all_disconnected();
}

#[test]
fn rearm_is_refused_while_the_flag_exists_then_accepted_and_the_switch_trips_again() {
    let env = Env::new();
    let mut daemon = env.start();
    env.touch_flag();
    assert_complete_lockdown(&env, 0);
    let latched = daemon.wait_status("LATCHED since", 0);

    let refused = env.rearm("drill over");
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("still exists"), "{stderr}");
    assert!(env.state_file().exists());
    assert!(env.events("rearmed").is_empty());

    std::fs::remove_file(env.flag()).unwrap();
    let accepted = env.rearm("drill over");
    assert_eq!(
        accepted.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    assert!(!env.state_file().exists());
    let rearmed = env.wait_events("rearmed", 1);
    assert_eq!(rearmed[0]["reason"], "drill over");
    assert!(
        rearmed[0]["by"].as_str().unwrap().contains("uid 0"),
        "{}",
        rearmed[0]
    );
    daemon.wait_status("armed, 3 key stores", latched);

    // Armed again: the next flag is a new trip with a new lockdown.
    env.reconnect_all();
    env.touch_flag();
    let fired = env.wait_events("trigger_fired", 2);
    assert_eq!(
        fired[1]["latched"],
        serde_json::Value::Null,
        "not latched: a real trip"
    );
    assert_complete_lockdown(&env, 1);
    let started = env.events("lockdown_started");
    assert_ne!(started[0]["lockdown_id"], started[1]["lockdown_id"]);
}

#[test]
fn rearm_is_refused_while_a_watched_alarm_is_in_alarm() {
    let env = Env::with_policy(PolicyOptions {
        extra_triggers: alarms_yaml(&[(METRIC_ALARM, 1)], "1s", None),
        ..PolicyOptions::default()
    });
    let _daemon = env.start();
    env.sim
        .set_alarm_state(ACCOUNT, REGION, METRIC_ALARM, "ALARM", "incident")
        .unwrap();
    assert_complete_lockdown(&env, 0);
    let refused = env.rearm("too early");
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(METRIC_ALARM) && stderr.contains("ALARM"),
        "{stderr}"
    );
    assert!(env.state_file().exists());
    env.sim
        .set_alarm_state(ACCOUNT, REGION, METRIC_ALARM, "OK", "resolved")
        .unwrap();
    assert_eq!(env.rearm("resolved").status.code(), Some(0));
    assert!(!env.state_file().exists());
}

#[test]
fn notify_socket_gets_ready_status_and_watchdog_in_order() {
    let env = Env::new();
    // WATCHDOG_PID is left unset: the child's pid is only known after spawn, and sd_notify
    // accepts an unset WATCHDOG_PID as "for this process".
    let mut daemon = env.start_with(|cmd| {
        cmd.env("WATCHDOG_USEC", "400000");
    });
    let ready = daemon.wait_notify("READY=1", |m| m.lines().any(|l| l == "READY=1"));
    assert!(
        daemon.messages[ready].contains("STATUS=armed, 3 key stores, 0 alarms"),
        "{:?}",
        daemon.messages
    );
    assert!(
        daemon.messages[..ready]
            .iter()
            .all(|m| !m.contains("WATCHDOG=1")),
        "no watchdog ping before READY: {:?}",
        daemon.messages
    );
    let first_ping = daemon.wait_notify("WATCHDOG=1", |m| m == "WATCHDOG=1\n");
    assert!(first_ping > ready);
    env.touch_flag();
    assert_complete_lockdown(&env, 0);
    let latched = daemon.wait_status("LATCHED since", ready);
    wait_for("a 3/3 status", || {
        daemon.drain_notify();
        daemon
            .messages
            .iter()
            .any(|m| m.contains("— 3/3 disconnected"))
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", daemon.messages));
    let ping_count = daemon
        .messages
        .iter()
        .filter(|m| m.as_str() == "WATCHDOG=1\n")
        .count();
    wait_for("more watchdog pings", || {
        daemon.drain_notify();
        (daemon
            .messages
            .iter()
            .filter(|m| m.as_str() == "WATCHDOG=1\n")
            .count()
            > ping_count)
            .then_some(())
    })
    .unwrap();
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit().code(), Some(0));
    daemon.drain_notify();
    let stopping = daemon
        .messages
        .iter()
        .position(|m| m.contains("STOPPING=1"))
        .expect("STOPPING=1 sent");
    assert!(stopping > latched, "{:?}", daemon.messages);
}

/// Issue 10 item 10: two `trip`s and the daemon's flag at once. The latch is written once (the
/// first writer wins, nobody replaces it), every loser records `latched: true`, and exactly one
/// lockdown runs.
#[test]
fn concurrent_trips_and_the_daemon_latch_once_and_lock_down_once() {
    let env = Env::new();
    let _daemon = env.start();
    let trips: Vec<_> = (0..2)
        .map(|i| {
            env.command()
                .args(["trip", "--reason", &format!("race {i}")])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("trip runs")
        })
        .collect();
    env.touch_flag();
    for trip in trips {
        let output = trip.wait_with_output().expect("trip ends");
        assert!(
            matches!(output.status.code(), Some(0 | 1)),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let fired = env.wait_events("trigger_fired", 3);
    env.wait_events("lockdown_finished", 1);
    let dump = env.audit_dump();
    let started = env.events("lockdown_started");
    assert_eq!(started.len(), 1, "one lockdown: {dump}");
    let first = fired.iter().filter(|f| f["latched"] != true).count();
    assert_eq!(first, 1, "one trigger latched, the others found it: {dump}");
    let latch: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.state_file()).expect("latch")).unwrap();
    assert_eq!(
        latch["lockdown_id"], started[0]["lockdown_id"],
        "the latch is the winner's, never replaced: {dump}"
    );
    assert!(
        env.events("disconnect_requested")
            .iter()
            .all(|d| d["lockdown_id"] == started[0]["lockdown_id"]),
        "{dump}"
    );
}

/// Issue 10 item 6: `rearm` refuses while the daemon's lockdown is still sending Disconnects (it
/// would otherwise be accepted and the lockdown go on disconnecting), and is accepted once it has
/// finished; no Disconnect follows the accepted rearm.
#[test]
fn rearm_is_refused_while_the_daemons_lockdown_is_in_flight() {
    let env = Env::new();
    // Long enough that the lockdown is still in flight after rearm's wait for the lock.
    env.set_transition_delay(6000);
    let mut daemon = env.start();
    env.touch_flag();
    env.wait_events("disconnect_requested", 1);
    std::fs::remove_file(env.flag()).unwrap();

    let refused = env.rearm("too early");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("a lockdown is in flight"), "{stderr}");
    assert!(env.state_file().exists());
    assert!(env.events("rearmed").is_empty());

    assert_complete_lockdown(&env, 0);
    let latched = daemon.wait_status("LATCHED since", 0);
    let accepted = env.rearm("drill over");
    let since = now_us();
    assert_eq!(
        accepted.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    daemon.wait_status("armed, 3 key stores", latched);
    assert_eq!(env.requests_since("DisconnectCustomKeyStore", since), 0);
}

/// Issue 10 item 6, for a lockdown run by `kms-killswitch trip` (a process of its own).
#[test]
fn rearm_is_refused_while_a_trip_is_locking_down() {
    let env = Env::new();
    env.set_transition_delay(6000);
    let trip = env
        .command()
        .args(["trip", "--reason", "slow"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("trip runs");
    env.wait_events("disconnect_requested", 1);

    let refused = env.rearm("too early");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("a lockdown is in flight"), "{stderr}");
    assert!(env.state_file().exists());

    let output = trip.wait_with_output().expect("trip ends");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let since = now_us();
    assert_eq!(env.rearm("drill over").status.code(), Some(0));
    assert!(!env.state_file().exists());
    assert_eq!(env.requests_since("DisconnectCustomKeyStore", since), 0);
}
