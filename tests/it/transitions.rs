//! `transitions: true` on an alarm (issue 14): a metric alarm set to ALARM with SetAlarmState
//! returns to its evaluated state within seconds (kms-sim: `set_alarm_revert`); a 10 s poll
//! that reads only DescribeAlarms misses it, one that reads the alarm's history does not.

use std::time::Duration;

use crate::support::daemon::{
    ACCOUNT, Daemon, Env, METRIC_ALARM, POLL, PolicyOptions, REGION, now_us,
};

/// `alarms:` with one metric alarm polled every 10 s, with or without `transitions: true`.
fn alarm_yaml(transitions: bool) -> String {
    let mut yaml = format!("  alarms:\n    - name: {METRIC_ALARM}\n");
    if transitions {
        yaml.push_str("      transitions: true\n");
    }
    yaml.push_str("  alarm_poll_interval: 10s\n");
    yaml
}

/// `aws cloudwatch set-alarm-state --state-value ALARM`, through the real SDK.
fn set_alarm_state_alarm(env: &Env) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let config = aws_sdk_cloudwatch::config::Builder::new()
            .behavior_version(aws_sdk_cloudwatch::config::BehaviorVersion::latest())
            .region(aws_sdk_cloudwatch::config::Region::new(REGION))
            .endpoint_url(env.sim.endpoint_url())
            .credentials_provider(aws_sdk_cloudwatch::config::Credentials::new(
                "AKIDKMSSIMDEMO",
                "kms-sim-demo-secret",
                None,
                None,
                "test",
            ))
            .build();
        aws_sdk_cloudwatch::Client::from_conf(config)
            .set_alarm_state()
            .alarm_name(METRIC_ALARM)
            .state_value(aws_sdk_cloudwatch::types::StateValue::Alarm)
            .state_reason("big red button drill")
            .send()
            .await
            .expect("SetAlarmState");
    });
}

/// DescribeAlarms requests since `since_us`.
fn polls_since(env: &Env, since_us: u64) -> usize {
    env.requests_since("DescribeAlarms", since_us)
}

/// Wait (up to `limit`) for `count` polls after `since_us`.
fn wait_polls(env: &Env, since_us: u64, count: usize, limit: Duration) {
    let start = std::time::Instant::now();
    while polls_since(env, since_us) < count {
        assert!(start.elapsed() < limit, "no alarm poll within {limit:?}");
        std::thread::sleep(POLL);
    }
}

/// Start a daemon watching the metric alarm (reverting 2 s after a SetAlarmState), set it to
/// ALARM right after a poll, and wait for the poll after the revert.
fn blip_between_polls(transitions: bool) -> (Env, Daemon) {
    let env = Env::with_policy(PolicyOptions {
        extra_triggers: alarm_yaml(transitions),
        ..PolicyOptions::default()
    });
    env.sim
        .set_alarm_revert(ACCOUNT, REGION, METRIC_ALARM, Duration::from_secs(2))
        .expect("revert");
    let daemon = env.start();
    // The first poll runs at start; the blip goes right after it, well before the next.
    wait_polls(&env, 0, 1, Duration::from_secs(20));
    let after_first = now_us();
    set_alarm_state_alarm(&env);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        env.sim
            .alarms(ACCOUNT, REGION)
            .iter()
            .find(|a| a.alarm_name == METRIC_ALARM)
            .map(|a| a.state_value.clone()),
        Some("OK".to_string()),
        "the sim reverted the set state"
    );
    wait_polls(&env, after_first, 1, Duration::from_secs(20));
    // Let the poll's events reach the audit log.
    std::thread::sleep(Duration::from_millis(1000));
    (env, daemon)
}

#[test]
fn transitions_true_trips_on_an_alarm_that_reverted_before_the_poll() {
    let (env, _daemon) = blip_between_polls(true);
    let fired = env.wait_events("trigger_fired", 1);
    assert_eq!(fired[0]["source"], "alarm");
    assert_eq!(fired[0]["detail"]["via"], "alarm_history");
    assert_eq!(fired[0]["detail"]["state_reason"], "big red button drill");
    assert!(
        env.requests_since("DescribeAlarmHistory", 0) >= 1,
        "the history was read"
    );
}

#[test]
fn without_transitions_a_set_state_that_reverts_between_polls_is_missed_as_documented() {
    let (env, _daemon) = blip_between_polls(false);
    assert!(
        env.events("trigger_fired").is_empty(),
        "documented: DescribeAlarms alone cannot see an ALARM shorter than the poll; {}",
        env.audit_dump()
    );
    assert_eq!(
        env.requests_since("DescribeAlarmHistory", 0),
        0,
        "no history reads without transitions"
    );
}
