//! Every command run twice at once with the daemon running (issue 17): `trip`, `status`,
//! `audit verify`, `check --online` and `rearm`, each pair started together. Outcomes must be
//! correct (one lockdown for two trips, one `rearmed` for two rearms, both statuses and
//! verifications agreeing), the daemon must stay up and stop cleanly, and the chain must verify.
//! Every run is bounded by the support deadline. Owns no support code of others.

use std::process::{Child, Command, Output, Stdio};
use std::time::Instant;

use crate::support::daemon::{DEADLINE, Env, POLL};

/// Start `make()` twice, as close together as two spawns can be, and wait for both (bounded).
fn twice(env: &Env, make: impl Fn(&Env) -> Command) -> [Output; 2] {
    let spawn = |mut cmd: Command| -> Child {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let (a, b) = (make(env), make(env));
    let children = [spawn(a), spawn(b)];
    children.map(wait_bounded)
}

fn wait_bounded(mut child: Child) -> Output {
    let start = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("a command hung for {DEADLINE:?}");
        }
        std::thread::sleep(POLL);
    }
    child.wait_with_output().expect("output")
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn assert_no_panic(outputs: &[Output]) {
    for output in outputs {
        assert!(!text(output).contains("panicked"), "{}", text(output));
    }
}

/// Rounds of the whole sequence (trip ×2 … rearm ×2, then the stores reconnected): more than one
/// interleaving of each pair.
const ROUNDS: usize = 3;

#[test]
fn every_command_twice_at_once_with_the_daemon_running() {
    let env = Env::new();
    let mut daemon = env.start();
    for round in 1..=ROUNDS {
        one_round(&env, round);
        env.reconnect_all();
    }
    assert_eq!(
        env.events("lockdown_started").len(),
        ROUNDS,
        "one lockdown per pair of trips: {}",
        env.audit_dump()
    );
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit().code(), Some(0), "{}", daemon.log());
    assert!(!daemon.log().contains("panicked"), "{}", daemon.log());
    let verify = crate::support::command()
        .args(["audit", "verify"])
        .arg(env.audit_log())
        .output()
        .expect("audit verify");
    assert!(verify.status.success(), "{}", text(&verify));
    assert!(
        stdout(&verify).contains(&format!("{ROUNDS} lockdowns")),
        "{}",
        text(&verify)
    );
}

fn one_round(env: &Env, round: usize) {
    // Two trips: one latches and locks down, the other finds the latch and waits for it.
    let trips = twice(env, |e| {
        let mut cmd = e.command();
        cmd.args(["trip", "--reason", "concurrent drill"]);
        cmd
    });
    assert_no_panic(&trips);
    for trip in &trips {
        assert_eq!(trip.status.code(), Some(0), "round {round}: {}", text(trip));
    }
    assert_eq!(
        trips
            .iter()
            .filter(|t| stdout(t).contains("already latched"))
            .count(),
        1,
        "round {round}: exactly one trip finds the other's latch:\n{}\n{}",
        text(&trips[0]),
        text(&trips[1])
    );
    env.wait_all_disconnected();
    env.wait_events("lockdown_finished", round);

    let statuses = twice(env, |e| {
        let mut cmd = e.command();
        cmd.args(["status", "--json"]);
        cmd
    });
    assert_no_panic(&statuses);
    for status in &statuses {
        let json: serde_json::Value = serde_json::from_slice(&status.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", text(status)));
        assert_eq!(json["latched"], true, "{}", text(status));
    }

    let verifies = twice(env, |e| {
        let mut cmd = crate::support::command();
        cmd.args(["audit", "verify"]).arg(e.audit_log());
        cmd
    });
    assert_no_panic(&verifies);
    for verify in &verifies {
        assert_eq!(verify.status.code(), Some(0), "{}", text(verify));
        assert!(
            stdout(verify).contains(&kms_killswitch::count(round, "lockdown")),
            "{}",
            text(verify)
        );
    }

    let checks = twice(env, |e| {
        let mut cmd = e.command();
        cmd.args(["check", "--online"]);
        cmd
    });
    assert_no_panic(&checks);
    // The shared world has one store the policy does not list (ledger-xks): both checks find
    // it and only it (issue 15), and nothing else.
    for check in &checks {
        assert_eq!(check.status.code(), Some(1), "{}", text(check));
        let stderr = String::from_utf8_lossy(&check.stderr);
        assert!(
            stderr.contains("unprotected key store: cks-2e1e0000000000001")
                && stderr.contains("found 1 problem(s)"),
            "{}",
            text(check)
        );
    }

    // Two rearms: one clears the latch; the other finds nothing left to rearm.
    let rearms = twice(env, |e| {
        let mut cmd = e.command();
        cmd.args(["rearm", "--reason", "concurrent drill over"]);
        cmd
    });
    assert_no_panic(&rearms);
    let cleared = rearms
        .iter()
        .filter(|r| r.status.success() && stdout(r).contains("re-armed by"))
        .count();
    let nothing = rearms
        .iter()
        .filter(|r| r.status.success() && stdout(r).contains("not latched: nothing to rearm"))
        .count();
    assert_eq!(
        (cleared, nothing),
        (1, 1),
        "round {round}: one rearm clears the latch, the other finds none:\n{}\n{}",
        text(&rearms[0]),
        text(&rearms[1])
    );
    assert!(!env.state_file().exists(), "the latch is cleared");
    assert_eq!(env.events("rearmed").len(), round, "{}", env.audit_dump());
}
