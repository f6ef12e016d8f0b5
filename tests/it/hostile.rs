//! Hostile local inputs against the real daemon: signal storms (every handled signal — SIGUSR1,
//! SIGHUP, SIGTERM, SIGINT — 10,000 times in a burst). Each case ends in a correct outcome — one
//! lockdown, the daemon up, the chain verifying — never a hang (every wait bounded) nor a panic.
//! Owns no support code of others.

use std::process::Command;

use super::support::daemon::Env;

/// Send `signal` `count` times to `pid` from one shell (the `kill` builtin: no process per signal).
fn burst(signal: &str, pid: u32, count: u32) {
    let script = format!("for i in $(seq {count}); do kill -s {signal} {pid} 2>/dev/null; done");
    let status = Command::new("bash")
        .args(["-c", &script])
        .status()
        .expect("bash runs");
    assert!(status.success(), "burst of {signal}");
}

#[test]
/// Found by this test (issue 17): the SIGHUP storm's RELOADING/READY/STATUS datagrams filled the
/// queue of a `NOTIFY_SOCKET` nobody read (the harness reads it only when asked), `sd_notify`'s
/// blocking send parked the daemon's loop in `unix_wait_for_peer`, and nothing more was handled:
/// no trigger, no SIGTERM. Notifications now leave from a thread of their own.
fn ten_thousand_of_each_signal_one_lockdown_chain_verifies() {
    let env = Env::new();
    let mut daemon = env.start();
    burst("USR1", daemon.pid(), 10_000);
    env.wait_all_disconnected();
    env.wait_events("lockdown_finished", 1);
    burst("HUP", daemon.pid(), 10_000);
    burst("USR1", daemon.pid(), 10_000);
    // An unchanged policy reloads silently (no `policy_loaded` saying nothing new): the daemon
    // must simply still be there, latched.
    env.wait_events("trigger_fired", 2);
    assert_eq!(
        env.events("lockdown_started").len(),
        1,
        "one lockdown for every burst; log:\n{}",
        daemon.log()
    );
    burst("TERM", daemon.pid(), 10_000);
    let status = daemon.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    assert!(!daemon.log().contains("panicked"), "{}", daemon.log());
    let verify = super::support::command()
        .args(["audit", "verify"])
        .arg(env.audit_log())
        .output()
        .expect("audit verify runs");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
/// SIGINT is handled like SIGTERM: 10,000 of them at once stop the daemon once, cleanly.
fn ten_thousand_sigints_stop_the_daemon_once_with_daemon_stopped() {
    let env = Env::new();
    let mut daemon = env.start();
    burst("INT", daemon.pid(), 10_000);
    let status = daemon.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    assert_eq!(env.events("daemon_stopped").len(), 1, "{}", daemon.log());
    assert!(
        env.events("lockdown_started").is_empty(),
        "{}",
        daemon.log()
    );
}
