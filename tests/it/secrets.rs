//! Secret hygiene under `RUST_LOG=trace` (issue 17): with a policy whose third store is reached
//! through an assumed role (kms-sim's STS), `trip`, `status` and the daemon through a whole
//! lockdown run at trace level, and no secret — the demo world's secret access key, nor the
//! secret access key or session token of any session kms-sim issued for AssumeRole — may appear
//! in their stdout, stderr or the audit log. Owns no support code of others.

use std::process::Output;

use crate::support::DEMO_SECRET_ACCESS_KEY;
use crate::support::daemon::Env;

fn all_output(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn no_secret_in_trace_output_or_the_audit_log_with_assumed_roles() {
    let env = Env::new();
    let mut texts: Vec<(String, String)> = Vec::new();

    let trip = env
        .command()
        .env("RUST_LOG", "trace")
        .args(["trip", "--reason", "secret hygiene"])
        .output()
        .expect("trip runs");
    assert_eq!(trip.status.code(), Some(0), "{}", all_output(&trip));
    texts.push(("trip".into(), all_output(&trip)));

    let status = env
        .command()
        .env("RUST_LOG", "trace")
        .arg("status")
        .output()
        .expect("status runs");
    texts.push(("status".into(), all_output(&status)));

    let rearm = env.rearm("hygiene drill over");
    assert!(rearm.status.success(), "{}", all_output(&rearm));
    env.reconnect_all();

    let mut daemon = env.start_with(|cmd| {
        cmd.env("RUST_LOG", "trace");
    });
    env.touch_flag();
    env.wait_all_disconnected();
    env.wait_events("lockdown_finished", 2);
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit().code(), Some(0), "{}", daemon.log());
    texts.push(("run".into(), daemon.log()));
    texts.push(("audit log".into(), env.audit_dump()));

    // The test can fail: trace really is on, and roles really were assumed (trip, status and
    // the daemon each assume the third store's role).
    assert!(
        texts[0].1.contains("TRACE") && texts[2].1.contains("TRACE"),
        "trace output"
    );
    let mut secrets = env.sim.issued_secrets();
    assert!(
        secrets.len() >= 6,
        "trip, status and run each assumed the role: {} secrets",
        secrets.len()
    );
    secrets.push(DEMO_SECRET_ACCESS_KEY.to_owned());
    for (what, text) in &texts {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{what} output contains a secret ({}…)",
                &secret[..6]
            );
        }
    }
}
