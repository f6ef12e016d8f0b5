//! Issue 13: notifications (SNS and webhooks) and the heartbeat, with the real daemon against
//! kms-sim's SNS and PutMetricData and a loopback webhook receiver.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use kms_sim::TopicFault;

use crate::support::daemon::{ACCOUNT, Env, PolicyOptions, REGION, wait_for};
use crate::support::webhook::{Receiver, signature};

const SECRET: &[u8] = b"webhook-s3cret-for-tests";
const NOTIFIED: [&str; 6] = [
    "trigger_fired",
    "lockdown_finished",
    "drift_detected",
    "unhealthy",
    "healthy",
    "rearmed",
];
/// A hanging sink is tried 3 times, 5 s each, with 1 s + 2 s between: well within this.
const SLOW_DEADLINE: Duration = Duration::from_secs(60);

fn wait_long<T>(what: &str, mut condition: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(
            start.elapsed() < SLOW_DEADLINE,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The env's policy with `extra` (top-level sections) appended.
fn env_with(options: PolicyOptions, extra: impl FnOnce(&Env) -> String) -> Env {
    let env = Env::with_policy(options.clone());
    let text = format!("{}{}", env.policy_text(&options), extra(&env));
    env.write_policy_text(&text);
    env
}

fn secret_file(env: &Env) -> std::path::PathBuf {
    let dir = env.dir.path().join("secrets");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let path = dir.join("webhook.secret");
    std::fs::write(&path, [SECRET, b"\n"].concat()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Make the audit log unwritable even for root: its directory becomes a regular file.
fn break_audit_dir(env: &Env) {
    let dir = env.dir.path().join("audit");
    std::fs::rename(&dir, env.dir.path().join("audit.away")).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
}

fn restore_audit_dir(env: &Env) {
    let dir = env.dir.path().join("audit");
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(env.dir.path().join("audit.away"), &dir).unwrap();
}

/// The SNS messages published to `topic_arn` (delivered), as JSON.
fn published(env: &Env, topic_arn: &str) -> Vec<serde_json::Value> {
    env.sim
        .publishes()
        .into_iter()
        .filter(|p| p.topic_arn == topic_arn && p.outcome == "delivered")
        .filter_map(|p| p.message.and_then(|m| serde_json::from_str(&m).ok()))
        .collect()
}

fn names(docs: &[serde_json::Value]) -> Vec<String> {
    docs.iter()
        .map(|d| d["event"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn every_event_reaches_the_topic_and_the_webhook_signed() {
    let receiver = Receiver::answering();
    let options = PolicyOptions {
        enforce_interval: "1s",
        ..PolicyOptions::default()
    };
    let mut topic_arn = String::new();
    let env = env_with(options, |env| {
        topic_arn = env
            .sim
            .create_topic(ACCOUNT, REGION, "kms-killswitch")
            .unwrap();
        let secret = secret_file(env);
        format!(
            "notify:\n  - sns: {{topic_arn: \"{topic_arn}\"}}\n  - webhook: {{url: \"{}\", secret_file: \"{}\"}}\n",
            receiver.url,
            secret.display()
        )
    });
    let mut daemon = env.start();
    env.touch_flag();
    env.wait_all_disconnected();
    env.wait_events("lockdown_finished", 1);
    // Drift: an operator reconnects a store while latched.
    env.reconnect_all();
    env.wait_events("drift_detected", 1);
    // Unhealthy while the audit log cannot be written, healthy once it can.
    break_audit_dir(&env);
    wait_for("an unhealthy notification", || {
        names(&published(&env, &topic_arn))
            .contains(&"unhealthy".to_string())
            .then_some(())
    })
    .unwrap_or_else(|what| panic!("{what}\n{}", daemon.log()));
    restore_audit_dir(&env);
    env.wait_events("healthy", 1);
    // Rearm from the CLI sends `rearmed` itself.
    std::fs::remove_file(env.flag()).unwrap();
    let rearm = env.rearm("all clear");
    assert!(rearm.status.success(), "{rearm:?}");

    let docs = wait_for("every event on the topic", || {
        let docs = published(&env, &topic_arn);
        let names = names(&docs);
        NOTIFIED
            .iter()
            .all(|n| names.contains(&n.to_string()))
            .then_some(docs)
    })
    .unwrap_or_else(|what| {
        panic!(
            "{what}: {:?}\n{}",
            names(&published(&env, &topic_arn)),
            env.audit_dump()
        )
    });
    let host = env.audit()[0]["host"].clone();
    for doc in &docs {
        assert_eq!(doc["kms_killswitch"], 1, "{doc}");
        assert_eq!(doc["host"], host, "{doc}");
        assert!(
            doc["ts"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{doc}"
        );
        assert!(
            doc["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{doc}"
        );
        assert!(doc["details"].is_object(), "{doc}");
    }
    let lockdown_id = env.events("lockdown_started")[0]["lockdown_id"].clone();
    let by_event = |name: &str| docs.iter().find(|d| d["event"] == name).unwrap().clone();
    assert_eq!(by_event("trigger_fired")["lockdown_id"], lockdown_id);
    assert_eq!(by_event("trigger_fired")["details"]["source"], "file");
    let finished = by_event("lockdown_finished");
    assert_eq!(finished["lockdown_id"], lockdown_id);
    assert_eq!(finished["details"]["outcome"], "complete");
    assert_eq!(finished["details"]["verified"], 3);
    assert!(
        finished["summary"]
            .as_str()
            .unwrap()
            .starts_with("lockdown complete: 3 key stores DISCONNECTED")
    );
    assert_eq!(by_event("rearmed")["details"]["reason"], "all clear");
    assert_eq!(by_event("rearmed")["lockdown_id"], lockdown_id);
    assert_eq!(
        by_event("unhealthy")["details"]["reasons"][0],
        "audit log unwritable"
    );

    // The webhook got the same events, each signed over its exact body.
    let hooks = wait_for("every event at the webhook", || {
        let hooks = receiver.received();
        let names: Vec<String> = hooks
            .iter()
            .map(|h| h.json()["event"].as_str().unwrap().to_string())
            .collect();
        NOTIFIED
            .iter()
            .all(|n| names.contains(&n.to_string()))
            .then_some(hooks)
    })
    .unwrap();
    for hook in &hooks {
        assert_eq!(hook.method, "POST");
        assert_eq!(hook.path, "/hooks/kms?token=t0ken");
        assert_eq!(hook.header("content-type"), Some("application/json"));
        assert_eq!(
            hook.header("x-kms-killswitch-signature"),
            Some(signature(SECRET, &hook.body).as_str()),
            "{:?}",
            hook.json()
        );
        assert_ne!(
            hook.header("x-kms-killswitch-signature"),
            Some(signature(b"another secret", &hook.body).as_str())
        );
    }
    // Every delivery audited; the sink names never carry the URL's path or query.
    let sent = env.events("notification_sent");
    for name in NOTIFIED {
        for sink in [
            format!("sns:{topic_arn}"),
            receiver
                .url
                .split("/hooks")
                .next()
                .map(|o| format!("webhook:{o}"))
                .unwrap(),
        ] {
            assert!(
                sent.iter().any(|s| s["notified"] == name
                    && s["sink"] == sink.as_str()
                    && s["result"] == "delivered"),
                "{name} to {sink} not audited as delivered:\n{}",
                env.audit_dump()
            );
        }
    }
    let everything = format!("{}{}", env.audit_dump(), daemon.log());
    assert!(!everything.contains("t0ken"), "the webhook token leaked");
    assert!(
        !everything.contains(std::str::from_utf8(SECRET).unwrap()),
        "the secret leaked"
    );
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit().code(), Some(0), "{}", daemon.log());
}

#[test]
fn a_hanging_webhook_and_a_refusing_topic_leave_the_lockdown_complete_and_are_audited() {
    let receiver = Receiver::hanging();
    let mut topic_arn = String::new();
    let env = env_with(PolicyOptions::default(), |env| {
        topic_arn = env.sim.create_topic(ACCOUNT, REGION, "refusing").unwrap();
        env.sim
            .set_topic_fault(&topic_arn, Some(TopicFault::AuthorizationError))
            .unwrap();
        format!(
            "notify:\n  - webhook: {{url: \"{}\"}}\n  - sns: {{topic_arn: \"{topic_arn}\"}}\n",
            receiver.url
        )
    });
    let mut daemon = env.start();
    env.touch_flag();
    env.wait_all_disconnected();
    let finished = env.wait_events("lockdown_finished", 1);
    assert_eq!(finished[0]["outcome"], "complete", "{}", env.audit_dump());

    let webhook_sink = format!("webhook:{}", receiver.url.split("/hooks").next().unwrap());
    let failures = wait_long("3 failed attempts per sink for both events", || {
        let sent = env.events("notification_sent");
        let failed = |sink: &str, notified: &str| {
            sent.iter()
                .filter(|s| {
                    s["sink"] == sink && s["notified"] == notified && s["result"] == "failed"
                })
                .count()
        };
        let sns = format!("sns:{topic_arn}");
        ["trigger_fired", "lockdown_finished"]
            .iter()
            .all(|n| failed(&sns, n) == 3 && failed(&webhook_sink, n) == 3)
            .then_some(sent)
    });
    assert!(
        failures
            .iter()
            .all(|s| s["result"] == "failed" && s["error"].is_string()),
        "{failures:?}"
    );
    assert!(
        failures
            .iter()
            .any(|s| s["error"].as_str().unwrap().contains("AuthorizationError")),
        "{failures:?}"
    );
    assert!(
        failures
            .iter()
            .any(|s| s["error"].as_str().unwrap().contains("no answer within 5s")),
        "{failures:?}"
    );
    assert!(receiver.received().len() >= 3, "the webhook was tried");
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit().code(), Some(0), "{}", daemon.log());
}

#[test]
fn an_unsafe_webhook_secret_refuses_the_start() {
    let env = env_with(PolicyOptions::default(), |env| {
        let secret = secret_file(env);
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        format!(
            "notify:\n  - webhook: {{url: \"http://127.0.0.1:9/hook\", secret_file: \"{}\"}}\n",
            secret.display()
        )
    });
    let output = env.command().arg("run").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("lets others read it"), "{stderr}");
    assert!(!stderr.contains("webhook-s3cret"), "{stderr}");
}

/// Heartbeat data points CloudWatch accepted, in order.
fn heartbeats(env: &Env) -> Vec<kms_sim::MetricDatumRecord> {
    env.sim
        .metric_data()
        .into_iter()
        .filter(|d| d.namespace == "KmsKillswitch" && d.metric_name == "Heartbeat")
        .collect()
}

/// Wait two intervals for the beats in flight, then check none arrives for three more.
fn assert_heartbeat_stopped(env: &Env, why: &str) {
    std::thread::sleep(Duration::from_secs(2));
    let stopped = heartbeats(env).len();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        heartbeats(env).len(),
        stopped,
        "the heartbeat went on while {why}"
    );
}

fn wait_more_heartbeats(env: &Env, than: usize, why: &str) {
    wait_for(why, || (heartbeats(env).len() >= than + 2).then_some(()))
        .unwrap_or_else(|what| panic!("{what}\n{}", env.audit_dump()));
}

#[test]
fn heartbeat_arrives_every_interval_and_stops_while_frozen_or_unable_to_record() {
    let env = env_with(PolicyOptions::default(), |_| {
        "heartbeat:\n  namespace: KmsKillswitch\n  interval: 1s\n".to_string()
    });
    let mut daemon = env.start();
    wait_more_heartbeats(&env, 1, "three heartbeats");
    let beats = heartbeats(&env);
    let host = env.audit()[0]["host"].as_str().unwrap().to_string();
    for beat in &beats {
        assert_eq!(beat.value, Some(1.0));
        assert_eq!(beat.unit.as_deref(), Some("Count"));
        assert_eq!(beat.dimensions, vec![("Host".to_string(), host.clone())]);
        assert_eq!(beat.region, REGION);
    }
    // One per interval: three beats span about two seconds, never a burst.
    let span_ms = (beats[2].ts_us - beats[0].ts_us) / 1000;
    assert!(
        (1000..=6000).contains(&span_ms),
        "three beats in {span_ms} ms"
    );

    daemon.signal("STOP");
    assert_heartbeat_stopped(&env, "the daemon was frozen");
    let before = heartbeats(&env).len();
    daemon.signal("CONT");
    wait_more_heartbeats(&env, before, "the heartbeat to resume after SIGCONT");

    break_audit_dir(&env);
    assert_heartbeat_stopped(&env, "the audit log was unwritable");
    let before = heartbeats(&env).len();
    restore_audit_dir(&env);
    wait_more_heartbeats(
        &env,
        before,
        "the heartbeat to resume once the audit log is writable",
    );
    let unhealthy = env.wait_events("unhealthy", 1);
    assert_eq!(unhealthy[0]["reasons"][0], "audit log unwritable");
    env.wait_events("healthy", 1);
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit().code(), Some(0), "{}", daemon.log());
}

/// `<name>{labels} value` lines of a Prometheus text exposition, by series.
fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[test]
fn the_metrics_textfile_parses_with_promtool_and_matches_status() {
    let mut topic_arn = String::new();
    let env = env_with(PolicyOptions::default(), |env| {
        topic_arn = env.sim.create_topic(ACCOUNT, REGION, "metrics").unwrap();
        std::fs::create_dir(env.dir.path().join("metrics")).unwrap();
        format!(
            "notify:\n  - sns: {{topic_arn: \"{topic_arn}\"}}\n\
             heartbeat:\n  namespace: KmsKillswitch\n  interval: 1s\n\
             metrics:\n  textfile: \"{}/metrics/kms_killswitch.prom\"\n",
            env.dir.path().display()
        )
    });
    let textfile = env.dir.path().join("metrics/kms_killswitch.prom");
    let mut daemon = env.start();
    env.touch_flag();
    env.wait_all_disconnected();
    env.wait_events("lockdown_finished", 1);
    wait_for("lockdown_finished delivered", || {
        env.events("notification_sent")
            .iter()
            .any(|s| s["notified"] == "lockdown_finished" && s["result"] == "delivered")
            .then_some(())
    })
    .unwrap();
    wait_for("a heartbeat", || {
        (!heartbeats(&env).is_empty()).then_some(())
    })
    .unwrap();
    // Stopped, the files hold their final values: nothing changes between the two reads.
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit().code(), Some(0), "{}", daemon.log());

    let check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&textfile).expect("the textfile exists"))
        .output()
        .expect("promtool runs (Debian package prometheus; .ci/test installs it)");
    let text = std::fs::read_to_string(&textfile).unwrap();
    assert!(
        check.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let series = samples(&text);
    let value = |name: &str| {
        series
            .iter()
            .find(|(s, _)| s == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("{name} not in:\n{text}"))
    };
    for name in [
        "kms_killswitch_up",
        "kms_killswitch_throttled_total",
        "kms_killswitch_audit_records_pending",
        "kms_killswitch_alarm_poll_failures_total",
    ] {
        value(name);
    }
    assert_eq!(
        value("kms_killswitch_lockdowns_total{outcome=\"complete\"}"),
        1.0
    );
    assert!(value("kms_killswitch_last_lockdown_duration_seconds") > 0.0);

    let status = env.run_status_json();
    assert_eq!(status["latched"], true);
    assert_eq!(value("kms_killswitch_latched"), 1.0);
    // Matched by id and region: `account` is labelled as the audit records give it (empty
    // where the engine had not resolved it when it sent the Disconnect).
    for store in status["key_stores"].as_array().unwrap() {
        let prefix = format!(
            "kms_killswitch_key_store_disconnected{{key_store_id=\"{}\",region=\"{}\",",
            store["key_store_id"].as_str().unwrap(),
            store["region"].as_str().unwrap(),
        );
        let (_, metric) = series
            .iter()
            .find(|(s, _)| s.starts_with(&prefix))
            .unwrap_or_else(|| panic!("{prefix} not in:\n{text}"));
        let disconnected = store["connection_state"] == "DISCONNECTED";
        assert_eq!(*metric, f64::from(u8::from(disconnected)), "{prefix}");
    }
    let sink = format!("sns:{topic_arn}");
    assert_eq!(
        status["notifications"][&sink]["result"], "delivered",
        "{status}"
    );
    let delivered = env
        .events("notification_sent")
        .iter()
        .filter(|s| s["sink"] == sink.as_str() && s["result"] == "delivered")
        .count();
    assert_eq!(
        value(&format!(
            "kms_killswitch_notifications_total{{sink=\"{sink}\",result=\"delivered\"}}"
        )),
        delivered as f64
    );
    let last_heartbeat = status["health"]["last_heartbeat"]
        .as_str()
        .expect("a heartbeat in status");
    let at = humantime::parse_rfc3339(last_heartbeat).unwrap();
    let unix = at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as f64
        / 1000.0;
    assert!(
        (value("kms_killswitch_heartbeat_last_success_timestamp_seconds") - unix).abs() < 0.002,
        "{last_heartbeat} vs {text}\n{}",
        daemon.log()
    );
    // The text form names the same.
    let plain = env.command().arg("status").output().unwrap();
    let plain = String::from_utf8_lossy(&plain.stdout);
    assert!(
        plain.contains(&format!("last heartbeat: {last_heartbeat}")),
        "{plain}"
    );
    assert!(
        plain.contains(&format!("last notification to {sink}: ")),
        "{plain}"
    );
}

/// A command block of the README's notification section that starts with `prefix`, with its
/// line continuations joined.
fn readme_command(prefix: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("## Knowing that it fired, and that it is alive")
        .nth(1)
        .expect("the README section");
    let start = section
        .find(prefix)
        .unwrap_or_else(|| panic!("{prefix} in the README"));
    let rest = &section[start..];
    let end = rest.find("\n```").unwrap();
    rest[..end].replace("\\\n", " ")
}

#[test]
fn the_readme_signature_check_matches_the_daemons_signature() {
    let receiver = Receiver::answering();
    let mut secret = std::path::PathBuf::new();
    let env = env_with(PolicyOptions::default(), |env| {
        secret = secret_file(env);
        format!(
            "notify:\n  - webhook: {{url: \"{}\", secret_file: \"{}\"}}\n",
            receiver.url,
            secret.display()
        )
    });
    let mut daemon = env.start();
    env.touch_flag();
    let hook = wait_for("a webhook", || receiver.received().into_iter().next()).unwrap();
    let command = readme_command("printf '%s' \"$BODY\"");
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .current_dir(secret.parent().unwrap())
        .env("BODY", String::from_utf8(hook.body.clone()).unwrap())
        .output()
        .expect("sh runs");
    let computed = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert_eq!(
        Some(computed.as_str()),
        hook.header("x-kms-killswitch-signature"),
        "{command}: {output:?}"
    );
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit().code(), Some(0), "{}", daemon.log());
}

#[test]
fn the_readme_heartbeat_alarm_watches_what_the_daemon_puts() {
    let command = readme_command("aws cloudwatch put-metric-alarm");
    let words: Vec<&str> = command.split_whitespace().collect();
    let arg = |name: &str| {
        let at = words
            .iter()
            .position(|w| *w == name)
            .unwrap_or_else(|| panic!("{name} in {command}"));
        words[at + 1]
    };
    // What `heartbeat_arrives_every_interval_…` sees the daemon put: namespace, `Heartbeat`
    // (the default metric name), one `Host` dimension, every 60 s by default.
    assert_eq!(arg("--namespace"), "KmsKillswitch");
    assert_eq!(arg("--metric-name"), "Heartbeat");
    assert!(
        arg("--dimensions").starts_with("Name=Host,Value="),
        "{command}"
    );
    assert_eq!(arg("--treat-missing-data"), "breaching");
    assert!(arg("--period").parse::<u64>().unwrap() >= 60, "{command}");
    assert_eq!(arg("--comparison-operator"), "LessThanThreshold");
}
