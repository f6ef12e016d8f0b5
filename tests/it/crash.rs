//! Crash-point matrix: SIGKILL the real daemon at every durable step of a lockdown, restart it,
//! and check the promises — every store ends DISCONNECTED, `audit verify` passes, no record of a
//! completed step is lost, the latch is never lost nor cleared by a crash. The kill points are
//! watched from outside (the latch file, the audit log, the sim's request log, with sim latency
//! so the daemon is reliably mid-step): no hook in the binary. Also: a latch that exists but
//! cannot be read or parsed counts as latched (fail closed). Owns no support code of others.

use std::time::Duration;

use kms_sim::{FaultRule, Faults};

use super::support::daemon::{Env, PolicyOptions, STORES, now_us, wait_for};

/// Where in a lockdown the daemon is killed.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// The latch file exists (written before the first Disconnect).
    LatchWritten,
    /// The audit log holds `n` records of this event kind.
    Record(&'static str, usize),
    /// The sim has received a Disconnect whose result is not yet in the audit log.
    DisconnectInFlight,
    /// Every Disconnect is answered and the daemon is polling Describe (verification).
    Verifying,
    /// After the lockdown, a store reconnected behind its back is being enforced again.
    Enforcing,
    /// Right after a SIGHUP (reload) of a latched daemon.
    Reload,
    /// While a `rearm` runs against the latched daemon.
    Rearm,
}

/// Every kill point of the matrix.
fn matrix() -> Vec<KillPoint> {
    use KillPoint::*;
    let mut points = vec![LatchWritten, Record("trigger_fired", 1)];
    points.push(Record("lockdown_started", 1));
    for n in 1..=3 {
        points.push(Record("disconnect_requested", n));
        points.push(Record("disconnect_result", n));
    }
    points.push(DisconnectInFlight);
    points.push(Verifying);
    for n in 1..=3 {
        points.push(Record("store_verified", n));
    }
    points.extend([Record("lockdown_finished", 1), Enforcing, Reload, Rearm]);
    points
}

/// Slow every step: Disconnects answer after 300 ms, stores take 1.5 s to disconnect.
fn slow_world(env: &Env) {
    env.sim.set_faults(Faults {
        rules: slow_rules(),
    });
}

fn slow_rules() -> Vec<FaultRule> {
    vec![
        FaultRule {
            transition_delay_ms: Some(1500),
            ..FaultRule::default()
        },
        FaultRule {
            operation: Some("DisconnectCustomKeyStore".into()),
            latency_ms: 300,
            ..FaultRule::default()
        },
    ]
}

fn audit_verify(env: &Env) -> std::process::Output {
    super::support::command()
        .args(["audit", "verify"])
        .arg(env.audit_log())
        .output()
        .expect("audit verify runs")
}

/// The complete (newline-terminated) lines of the audit log.
fn complete_lines(env: &Env) -> Vec<String> {
    let text = std::fs::read_to_string(env.audit_log()).unwrap_or_default();
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_owned).collect();
    if lines.last().is_some_and(|l| !l.ends_with('\n')) {
        lines.pop();
    }
    lines
}

/// Bring the daemon to `point` (from a fresh start); returns whether a rearm may have cleared
/// the latch legitimately.
fn drive_to(env: &Env, daemon: &mut super::support::daemon::Daemon, point: KillPoint) -> bool {
    match point {
        KillPoint::LatchWritten => {
            env.touch_flag();
            wait_for("the latch file", || env.state_file().exists().then_some(())).unwrap();
        }
        KillPoint::Record(event, n) => {
            env.touch_flag();
            env.wait_events(event, n);
        }
        KillPoint::DisconnectInFlight => {
            // The third store's Disconnect answers after 3 s: with two results recorded and
            // three requests, that one is sent and its result not yet recorded.
            let mut rules = slow_rules();
            rules.push(FaultRule {
                operation: Some("DisconnectCustomKeyStore".into()),
                custom_key_store_id: Some(STORES[2].2.into()),
                latency_ms: 3000,
                ..FaultRule::default()
            });
            env.sim.set_faults(Faults { rules });
            env.touch_flag();
            wait_for("a Disconnect in flight", || {
                (env.events("disconnect_requested").len() == 3
                    && env.events("disconnect_result").len() == 2)
                    .then_some(())
            })
            .unwrap_or_else(|w| panic!("{w}; audit:\n{}", env.audit_dump()));
        }
        KillPoint::Verifying => {
            let since = now_us();
            env.touch_flag();
            env.wait_events("disconnect_result", 3);
            wait_for("a Describe after the Disconnects", || {
                (env.requests_since("DescribeCustomKeyStores", since) >= 1
                    && env.events("lockdown_finished").is_empty())
                .then_some(())
            })
            .unwrap_or_else(|w| panic!("{w}; audit:\n{}", env.audit_dump()));
        }
        KillPoint::Enforcing => {
            env.touch_flag();
            env.wait_events("lockdown_finished", 1);
            env.reconnect_all();
            env.wait_events("drift_detected", 1);
        }
        KillPoint::Reload => {
            env.touch_flag();
            env.wait_events("lockdown_finished", 1);
            daemon.signal("HUP");
        }
        KillPoint::Rearm => {
            env.touch_flag();
            env.wait_events("lockdown_finished", 1);
            std::fs::remove_file(env.flag()).expect("remove flag");
            let mut rearm = env
                .command()
                .args(["rearm", "--reason", "crash test"])
                .spawn()
                .expect("rearm runs");
            std::thread::sleep(Duration::from_millis(fastrand::u64(0..300)));
            let _ = rearm.kill();
            let _ = rearm.wait();
            return true;
        }
    }
    false
}

/// One kill point: drive, SIGKILL, restart, check every promise.
fn kill_and_restart(point: KillPoint) {
    let env = Env::with_policy(PolicyOptions {
        enforce_interval: "1s",
        ..PolicyOptions::default()
    });
    slow_world(&env);
    let mut daemon = env.start();
    let rearm_ran = drive_to(&env, &mut daemon, point);
    daemon.kill_9();
    let before = complete_lines(&env);
    let latched_at_kill = env.state_file().exists();
    assert!(
        latched_at_kill || rearm_ran,
        "{point:?}: the latch was lost by a crash"
    );
    let rearmed = env.events("rearmed").len();
    env.set_transition_delay(100);
    if !latched_at_kill {
        // A rearm finished before the kill: nothing to resume; the test ends armed.
        assert_eq!(rearmed, 1, "{point:?}: latch gone without a rearmed record");
    }
    let restarted = env.start();
    if latched_at_kill {
        env.wait_all_disconnected();
        let resumed = env.wait_events("trigger_fired", 2);
        assert!(
            resumed.iter().any(|r| r["source"] == "resume"),
            "{point:?}: restart did not resume; audit:\n{}",
            env.audit_dump()
        );
        assert!(
            env.state_file().exists(),
            "{point:?}: the latch was cleared"
        );
    }
    let after = complete_lines(&env);
    assert!(
        after.len() >= before.len() && after[..before.len()] == before[..],
        "{point:?}: a completed record was lost or changed; before:\n{}\nafter:\n{}",
        before.concat(),
        after.concat()
    );
    drop(restarted);
    let verify = audit_verify(&env);
    assert!(
        verify.status.success(),
        "{point:?}: audit verify failed: {}\n{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn sigkill_at_every_durable_step_loses_nothing() {
    let points = matrix();
    for point in &points {
        kill_and_restart(*point);
    }
    eprintln!("crash matrix: {} kill points ran", points.len());
}

/// A latch file that exists but cannot be read or parsed: the daemon treats it as latched.
fn starts_latched_with(setup: impl FnOnce(&Env)) {
    let env = Env::new();
    std::fs::create_dir_all(env.state_file().parent().unwrap()).unwrap();
    setup(&env);
    let _daemon = env.start();
    env.wait_all_disconnected();
    let fired = env.wait_events("trigger_fired", 1);
    assert_eq!(fired[0]["source"], "resume", "{}", env.audit_dump());
    assert!(
        env.events("rearmed").is_empty(),
        "never armed by an unreadable latch"
    );
}

#[test]
fn garbage_latch_counts_as_latched() {
    starts_latched_with(|env| std::fs::write(env.state_file(), b"\x00\xffnot json{").unwrap());
}

#[test]
fn empty_latch_counts_as_latched() {
    starts_latched_with(|env| std::fs::write(env.state_file(), b"").unwrap());
}

#[test]
fn whitespace_latch_counts_as_latched() {
    starts_latched_with(|env| std::fs::write(env.state_file(), b"\n  \n").unwrap());
}

#[test]
fn unreadable_latch_is_refused_never_armed() {
    // The tests run as root, where mode 000 is still readable: a directory cannot be read as a
    // latch. The daemon refuses to start (exit 78, naming the state file) rather than run armed.
    let env = Env::new();
    std::fs::create_dir_all(env.state_file()).unwrap();
    let mut daemon = env.spawn_with(|_| {});
    let status = daemon.wait_exit();
    assert_eq!(status.code(), Some(78), "{}", daemon.log());
    assert!(daemon.log().contains("latch.json"), "{}", daemon.log());
}
