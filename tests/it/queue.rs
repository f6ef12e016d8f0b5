//! The SQS queue trigger (issue 14), against the real binary and kms-sim: SNS fan-out trips
//! every host, a crash between the latch and the delete loses nothing and starts no second
//! lockdown, garbage never trips, an unreachable queue recovers on its own, and a CloudTrail
//! ConnectCustomKeyStore while latched is answered at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kms_sim::{FaultRule, Faults, QueueDecl, QueueFault, QueueFaultKind, World};
use serde_json::json;

use crate::support::daemon::{ACCOUNT, Env, POLL, PolicyOptions, REGION, STORES, now_us, wait_for};

/// `queues:` lines for `extra_triggers`: one queue, optionally with `match:` lines (already
/// indented under the entry).
fn queue_yaml(url: &str, matches: Option<&str>) -> String {
    let mut yaml = format!("  queues:\n    - url: \"{url}\"\n");
    if let Some(matches) = matches {
        yaml.push_str("      match:\n");
        yaml.push_str(matches);
    }
    yaml
}

const GUARDDUTY_OR_CONNECT: &str = "        - source: aws.guardduty\n          min_severity: 7\n        - detail_type: AWS API Call via CloudTrail\n          event_name: ConnectCustomKeyStore\n";

/// The demo world with these queues (visibility timeout in seconds) in ACCOUNT / REGION.
fn world_with_queues(queues: &[(&str, u64)]) -> World {
    let mut world = World::demo();
    let region = world
        .accounts
        .get_mut(ACCOUNT)
        .and_then(|regions| regions.get_mut(REGION))
        .expect("the demo world has ACCOUNT/REGION");
    for (name, visibility) in queues {
        region.queues.push(QueueDecl {
            name: name.to_string(),
            visibility_timeout_seconds: Some(*visibility),
            receive_message_wait_time_seconds: None,
            maximum_message_size: None,
        });
    }
    world
}

/// The queue's URL on this simulator (`SimHandle::queue_url` may leave the port out for a queue
/// declared in the world file).
fn queue_url(sim: &kms_sim::SimHandle, name: &str) -> String {
    format!("{}/{ACCOUNT}/{name}", sim.endpoint_url())
}

fn options(extra_triggers: String) -> PolicyOptions {
    PolicyOptions {
        extra_triggers,
        ..PolicyOptions::default()
    }
}

/// Wait up to `deadline` (for the tests that the default DEADLINE is too short for).
fn wait_long<T>(what: &str, deadline: Duration, mut condition: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

fn queue_fired(env: &Env) -> Vec<serde_json::Value> {
    env.events("trigger_fired")
        .into_iter()
        .filter(|r| r["source"] == "queue")
        .collect()
}

/// Milliseconds since the epoch of an audit record's `ts`.
fn ts_ms(record: &serde_json::Value) -> u64 {
    let ts = record["ts"].as_str().expect("ts");
    humantime::parse_rfc3339(ts)
        .expect("RFC 3339 ts")
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_millis() as u64
}

/// `aws sns publish`, through the real SDK; the SNS MessageId.
fn sns_publish(env: &Env, topic_arn: &str, message: &str) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let config = aws_sdk_sns::config::Builder::new()
            .behavior_version(aws_sdk_sns::config::BehaviorVersion::latest())
            .region(aws_sdk_sns::config::Region::new(REGION))
            .endpoint_url(env.sim.endpoint_url())
            .credentials_provider(aws_sdk_sns::config::Credentials::new(
                "AKIDKMSSIMDEMO",
                "kms-sim-demo-secret",
                None,
                None,
                "test",
            ))
            .build();
        aws_sdk_sns::Client::from_conf(config)
            .publish()
            .topic_arn(topic_arn)
            .subject("kms-killswitch drill")
            .message(message)
            .send()
            .await
            .expect("Publish")
            .message_id()
            .unwrap_or_default()
            .to_string()
    })
}

#[test]
fn one_sns_publish_trips_three_hosts_each_on_its_own_queue() {
    let hosts = ["host-a", "host-b", "host-c"];
    let world = world_with_queues(&[("host-a", 30), ("host-b", 30), ("host-c", 30)]);
    let sim = Arc::new(kms_sim::spawn(world).expect("kms-sim starts"));
    let topic = sim
        .create_topic(ACCOUNT, REGION, "kms-killswitch-fleet")
        .expect("topic");
    let envs: Vec<Env> = hosts
        .iter()
        .map(|host| {
            let arn = format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{host}");
            sim.subscribe_queue(&topic, &arn, false).expect("subscribe");
            let url = queue_url(&sim, host);
            Env::on_sim(sim.clone(), options(queue_yaml(&url, None)))
        })
        .collect();
    envs[0].set_transition_delay(100);
    let _daemons: Vec<_> = envs.iter().map(Env::start).collect();
    // Let every host's first long poll be in flight: the message arrives during it.
    std::thread::sleep(Duration::from_millis(500));

    let published_ms = now_us() / 1000;
    let sns_id = sns_publish(&envs[0], &topic, "trip: drill");

    for (env, host) in envs.iter().zip(hosts) {
        let fired = env.wait_events("trigger_fired", 1);
        assert_eq!(fired.len(), 1, "{host}: {}", env.audit_dump());
        assert_eq!(fired[0]["source"], "queue");
        assert_eq!(fired[0]["detail"]["queue"], queue_url(&sim, host));
        assert_eq!(
            fired[0]["detail"]["carried"]["sns_message_id"],
            sns_id.as_str()
        );
        assert_eq!(
            fired[0]["detail"]["carried"]["subject"],
            "kms-killswitch drill"
        );
        env.wait_events("lockdown_finished", 1);
        let first = env.wait_events("disconnect_requested", 1);
        let after_ms = ts_ms(&first[0]).saturating_sub(published_ms);
        assert!(
            after_ms <= 1000,
            "{host}: first Disconnect {after_ms} ms after the publish (issue 14: within 1 s)"
        );
        let deleted = wait_for(&format!("{host}'s message deleted"), || {
            let deletions = sim.deletions(ACCOUNT, REGION, host).ok()?;
            deletions.iter().any(|d| d.deleted).then_some(deletions)
        })
        .unwrap_or_else(|what| panic!("{what}"));
        assert_eq!(deleted.len(), 1, "{host}: one delete, after the trip");
    }
    envs[0].wait_all_disconnected();
}

#[test]
fn a_crash_between_the_latch_and_the_delete_redelivers_without_a_second_lockdown() {
    let env = Env::with_world(
        world_with_queues(&[("host-a", 3)]),
        options(queue_yaml(
            &format!("http://placeholder/{ACCOUNT}/host-a"),
            None,
        )),
    );
    let url = queue_url(&env.sim, "host-a");
    env.write_policy(&options(queue_yaml(&url, None)));
    // DeleteMessage hangs: the daemon has latched and audited, but the message is still there.
    let fast = FaultRule {
        transition_delay_ms: Some(100),
        ..FaultRule::default()
    };
    let hang_delete = FaultRule {
        operation: Some("DeleteMessage".into()),
        latency_ms: 60_000,
        ..FaultRule::default()
    };
    env.sim.set_faults(Faults {
        rules: vec![fast.clone(), hang_delete],
    });
    let mut daemon = env.start();
    let message_id = env
        .sim
        .send_message(
            ACCOUNT,
            REGION,
            "host-a",
            &json!({"source": "ops.drill"}).to_string(),
        )
        .expect("send");
    let fired = env.wait_events("trigger_fired", 1);
    assert_eq!(fired[0]["detail"]["message_id"], message_id.as_str());
    assert!(
        env.state_file().exists(),
        "the latch is on disk before any delete"
    );
    daemon.kill_9();
    assert!(
        !env.sim
            .deletions(ACCOUNT, REGION, "host-a")
            .expect("deletions")
            .iter()
            .any(|d| d.deleted),
        "the message was not deleted before the crash"
    );
    env.sim.set_faults(Faults { rules: vec![fast] });

    let restarted = env.start();
    let restarted_pid = restarted.pid();
    let latched = wait_for("the redelivered message as a trigger while latched", || {
        let fired = queue_fired(&env);
        fired.iter().find(|r| r["latched"] == true).cloned()
    })
    .unwrap_or_else(|what| panic!("{what}; audit:\n{}", env.audit_dump()));
    assert_eq!(latched["detail"]["message_id"], message_id.as_str());
    assert!(latched["detail"]["receive_count"].as_u64() >= Some(2));
    wait_for("the redelivered message deleted", || {
        env.sim
            .deletions(ACCOUNT, REGION, "host-a")
            .ok()?
            .iter()
            .any(|d| d.deleted)
            .then_some(())
    })
    .unwrap_or_else(|what| panic!("{what}"));
    let fired = queue_fired(&env);
    assert_eq!(
        fired.iter().filter(|r| r["latched"] != true).count(),
        1,
        "one trip from the queue: {fired:?}"
    );
    assert_eq!(
        fired.iter().filter(|r| r["latched"] == true).count(),
        1,
        "one trigger while latched: {fired:?}"
    );
    // After the restart: the resume's lockdown (source: resume), none from the redelivery. (The
    // first daemon may have died before writing its own `lockdown_started`.)
    let restarted = env
        .events("lockdown_started")
        .into_iter()
        .filter(|r| r["pid"] == restarted_pid)
        .count();
    assert_eq!(restarted, 1, "{}", env.audit_dump());
    assert_eq!(
        env.events("trigger_fired")
            .iter()
            .filter(|r| r["source"] == "resume")
            .count(),
        1
    );
}

/// Bodies that must never trip a queue matching GuardDuty ≥ 7 or CloudTrail Connect.
fn garbage(i: usize) -> String {
    match i % 10 {
        0 => "not json at all".to_string(),
        1 => format!("{{\"unterminated\": \"{i}"),
        2 => json!({"source": "aws.guardduty", "detail-type": "GuardDuty Finding", "detail": {"severity": 2.0}}).to_string(),
        3 => json!({"detail-type": "AWS API Call via CloudTrail", "detail": {"eventName": "DescribeCustomKeyStores"}}).to_string(),
        4 => json!([1, 2, 3]).to_string(),
        5 => format!("{}{}", "[".repeat(5000), "]".repeat(5000)),
        6 => json!({"Type": "Notification", "MessageId": "m", "Message": "{\"source\": \"aws.guardduty\"}"}).to_string(),
        7 => json!({"source": "aws.guardduty", "detail": {"severity": "high"}}).to_string(),
        // SQS refuses most control characters, as AWS does; these it accepts.
        8 => "\t\r\n\u{fffd}\u{10ffff}".to_string(),
        _ => json!({"source": "aws.guardduty", "detail": {"severity": 6.9}}).to_string(),
    }
}

#[test]
fn a_thousand_garbage_or_non_matching_messages_never_trip_and_are_all_audited() {
    let env = Env::with_world(
        world_with_queues(&[("host-a", 30)]),
        PolicyOptions::default(),
    );
    let url = queue_url(&env.sim, "host-a");
    env.write_policy(&options(queue_yaml(&url, Some(GUARDDUTY_OR_CONNECT))));
    let mut daemon = env.start();
    let huge = format!("{{\"source\": \"{}\"}}", "a".repeat(300 * 1024));
    for i in 0..1000 {
        let body = if i == 500 { huge.clone() } else { garbage(i) };
        env.sim
            .send_message(ACCOUNT, REGION, "host-a", &body)
            .expect("send");
    }
    let ignored = wait_long("1000 trigger_ignored", Duration::from_secs(180), || {
        let ignored = env.events("trigger_ignored");
        (ignored.len() >= 1000).then_some(ignored)
    });
    assert_eq!(ignored.len(), 1000);
    assert!(ignored.iter().all(|r| r["source"] == "queue"));
    assert!(ignored.iter().any(|r| {
        r["reason"]
            .as_str()
            .is_some_and(|s| s.contains("larger than 256 KiB"))
    }));
    assert!(
        ignored
            .iter()
            .all(|r| r["reason"].as_str().is_some_and(|s| s.len() < 4096)),
        "reasons are bounded"
    );
    assert!(
        env.events("trigger_fired").is_empty(),
        "{}",
        env.audit_dump()
    );
    assert!(!env.state_file().exists());
    assert!(
        STORES
            .iter()
            .all(|(a, r, id)| env.sim.connection_state(a, r, id).as_deref() == Some("CONNECTED"))
    );
    // Still watching: a real finding trips.
    env.sim
        .send_message(
            ACCOUNT,
            REGION,
            "host-a",
            &json!({"id": "f-1", "source": "aws.guardduty", "detail-type": "GuardDuty Finding", "detail": {"severity": 8.0}}).to_string(),
        )
        .expect("send");
    let fired = env.wait_events("trigger_fired", 1);
    assert_eq!(fired[0]["detail"]["carried"]["id"], "f-1");
    daemon.drain_notify();
}

#[test]
fn an_unreachable_queue_recovers_by_itself_and_says_so_in_status() {
    let env = Env::with_world(
        world_with_queues(&[("host-a", 30)]),
        PolicyOptions::default(),
    );
    let url = queue_url(&env.sim, "host-a");
    env.write_policy(&options(queue_yaml(&url, None)));
    let mut daemon = env.start();
    env.sim
        .set_queue_fault(
            ACCOUNT,
            REGION,
            "host-a",
            Some(QueueFault {
                kind: QueueFaultKind::DropConnection,
                for_ms: Some(30_000),
            }),
        )
        .expect("fault");
    // The long poll in flight ends (≤ 20 s), the next receive fails.
    let unreadable = wait_long(
        "STATUS naming the unreadable queue",
        Duration::from_secs(40),
        || {
            daemon.drain_notify();
            daemon
                .messages
                .iter()
                .position(|m| m.contains("queues unreadable: ") && m.contains(&url))
        },
    );
    assert_eq!(env.events("queue_poll_failed").len(), 1);
    let after = wait_long("STATUS without the queue", Duration::from_secs(60), || {
        daemon.drain_notify();
        daemon
            .messages
            .iter()
            .skip(unreadable + 1)
            .position(|m| m.contains("STATUS=armed") && !m.contains("queues unreadable"))
    });
    assert!(after < usize::MAX);
    assert_eq!(env.events("queue_poll_failed").len(), 1, "reported once");
    env.sim
        .send_message(ACCOUNT, REGION, "host-a", "{}")
        .expect("send");
    env.wait_events("trigger_fired", 1);
}

#[test]
fn a_connect_custom_key_store_event_while_latched_is_enforced_within_2_s() {
    let env = Env::with_world(
        world_with_queues(&[("host-a", 30)]),
        PolicyOptions::default(),
    );
    let url = queue_url(&env.sim, "host-a");
    env.write_policy(&PolicyOptions {
        enforce_interval: "5m",
        ..options(queue_yaml(&url, Some(GUARDDUTY_OR_CONNECT)))
    });
    let _daemon = env.start();
    env.touch_flag();
    env.wait_events("lockdown_finished", 1);
    env.wait_all_disconnected();

    let (account, region, id) = STORES[0];
    env.sim
        .set_connection_state(account, region, id, "CONNECTED")
        .expect("reconnect");
    let sent_us = now_us();
    let event = json!({
        "version": "0", "id": "ct-1", "source": "aws.kms",
        "detail-type": "AWS API Call via CloudTrail",
        "detail": {"eventName": "ConnectCustomKeyStore", "requestParameters": {"customKeyStoreId": id}}
    });
    env.sim
        .send_message(ACCOUNT, REGION, "host-a", &event.to_string())
        .expect("send");
    let disconnect = wait_for("a Disconnect of the reconnected store", || {
        env.sim.requests().into_iter().find(|r| {
            r.operation == "DisconnectCustomKeyStore"
                && r.target.as_deref() == Some(id)
                && r.ts_us >= sent_us
        })
    })
    .unwrap_or_else(|what| panic!("{what}; audit:\n{}", env.audit_dump()));
    let after_ms = (disconnect.ts_us - sent_us) / 1000;
    assert!(
        after_ms <= 2000,
        "re-disconnected {after_ms} ms after the event (issue 14: within 2 s)"
    );
    let latched = queue_fired(&env);
    assert_eq!(latched.len(), 1);
    assert_eq!(latched[0]["latched"], true);
    assert_eq!(
        latched[0]["detail"]["carried"]["event_name"],
        "ConnectCustomKeyStore"
    );
    assert_eq!(
        env.events("lockdown_started").len(),
        1,
        "no second lockdown"
    );
}

#[test]
fn check_online_names_a_missing_queue_and_reads_an_existing_one() {
    use crate::support::sim::{ALARMS, DEMO_STORES, SimEnv, output_text};
    let env = SimEnv::demo();
    let url = env
        .sim
        .create_queue(ACCOUNT, REGION, "host-a")
        .expect("queue");
    let missing = queue_url(&env.sim, "host-missing");
    let queues = format!("  queues:\n    - url: \"{url}\"\n    - url: \"{missing}\"\n");
    let stores = env.key_stores_yaml(&DEMO_STORES);
    env.write_policy(
        &stores,
        &format!("{}{queues}", SimEnv::alarms_yaml(&ALARMS)),
    );
    let output = env.run(&["check", "--online"]);
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("missing queue: queue {missing}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("queue {url}: 0 message(s) waiting")),
        "{text}"
    );

    let queues = format!("  queues:\n    - url: \"{url}\"\n");
    env.write_policy(
        &stores,
        &format!("{}{queues}", SimEnv::alarms_yaml(&ALARMS)),
    );
    let output = env.run(&["check", "--online"]);
    assert_eq!(output.status.code(), Some(0), "{}", output_text(&output));
}

#[test]
fn a_trip_that_cannot_be_latched_keeps_its_message_until_the_latch_is_on_disk() {
    let env = Env::with_world(
        world_with_queues(&[("host-a", 30)]),
        PolicyOptions::default(),
    );
    let url = queue_url(&env.sim, "host-a");
    env.write_policy(&options(queue_yaml(&url, None)));
    let _daemon = env.start();
    // The state directory replaced by a file: the latch cannot be written (even as root).
    let state_dir = env.state_file().parent().expect("state dir").to_path_buf();
    let _ = std::fs::remove_dir_all(&state_dir);
    std::fs::write(&state_dir, b"not a directory").expect("block the state dir");
    let sent_us = now_us();
    env.sim
        .send_message(ACCOUNT, REGION, "host-a", "{\"source\": \"ops.drill\"}")
        .expect("send");
    env.wait_events("trigger_fired", 1);
    wait_for("ChangeMessageVisibility for the unlatched trip", || {
        (env.requests_since("ChangeMessageVisibility", sent_us) >= 1).then_some(())
    })
    .unwrap_or_else(|what| panic!("{what}; audit:\n{}", env.audit_dump()));
    assert!(
        !env.sim
            .deletions(ACCOUNT, REGION, "host-a")
            .expect("deletions")
            .iter()
            .any(|d| d.deleted),
        "not deleted while the latch is not on disk"
    );
    // The disk is back: the latch poll writes the latch, and the redelivered message (10 s
    // later) is a trigger while latched, acknowledged and deleted.
    std::fs::remove_file(&state_dir).expect("unblock");
    std::fs::create_dir(&state_dir).expect("state dir");
    wait_long(
        "the redelivered message deleted",
        Duration::from_secs(40),
        || {
            env.sim
                .deletions(ACCOUNT, REGION, "host-a")
                .ok()?
                .iter()
                .any(|d| d.deleted)
                .then_some(())
        },
    );
    assert!(env.state_file().exists());
    let fired = queue_fired(&env);
    assert_eq!(fired.len(), 2, "{fired:?}");
    assert_eq!(fired[1]["latched"], true);
    assert_eq!(env.events("lockdown_started").len(), 1);
}
