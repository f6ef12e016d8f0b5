//! What the daemon refuses on disk (issue 10, items 2, 3, 4, 7, 12), end to end on the real
//! binary: policy, state and audit paths others can change, FIFOs and symlinks where files
//! belong, a latch deleted behind the daemon's back, a replaced audit log, hard-linked and
//! squatted flags, and a trace log written into the flag's own directory.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use sha2::Digest as _;

use crate::support::daemon::{Env, PolicyOptions, read_audit, wait_for};

fn mkfifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .expect("mkfifo");
}

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn policy_in_a_directory_others_can_write_is_refused_with_78() {
    let env = Env::new();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    for command in ["check", "run"] {
        let output = env.command().arg(command).output().unwrap();
        let stderr = stderr_of(&output);
        assert_eq!(output.status.code(), Some(78), "{command}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains("writable by group and others (mode 0777)"),
            "{command}: {stderr}"
        );
    }
    // Development only: the refusal becomes a warning for the policy (the state and audit
    // directories below it stay refused: `run` would still stop with 78).
    let output = env
        .command()
        .args(["--insecure-policy-permissions", "check"])
        .output()
        .unwrap();
    let stderr = stderr_of(&output);
    assert!(stderr.contains("INSECURE"), "{stderr}");
}

#[test]
fn fifo_or_symlink_swapped_in_for_the_policy_is_rejected_on_sighup_without_blocking() {
    let env = Env::new();
    let mut daemon = env.start();
    // A FIFO: opening it for reading without O_NONBLOCK waits for a writer forever.
    std::fs::remove_file(env.policy_path()).unwrap();
    mkfifo(&env.policy_path());
    daemon.signal("HUP");
    let rejected = env.wait_events("policy_rejected", 1);
    assert!(
        rejected[0]["error"]
            .as_str()
            .unwrap()
            .contains("a fifo or socket, not a regular file"),
        "{}",
        rejected[0]
    );
    // A symlink to a policy someone else wrote (here: a valid one listing one store).
    let other = env.dir.path().join("other.yaml");
    std::fs::rename(env.policy_path(), env.dir.path().join("fifo")).unwrap();
    crate::support::write_policy_file(&other, &env.policy_text(&PolicyOptions::default()));
    std::os::unix::fs::symlink(&other, env.policy_path()).unwrap();
    daemon.signal("HUP");
    let rejected = env.wait_events("policy_rejected", 2);
    assert!(
        rejected[1]["error"].as_str().unwrap().contains("symlink"),
        "{}",
        rejected[1]
    );
    // The loop was never blocked: the signal trigger fires and SIGTERM stops it cleanly.
    daemon.signal("USR1");
    let fired = env.wait_events("trigger_fired", 1);
    assert_eq!(fired[0]["source"], "signal");
    env.wait_events("lockdown_finished", 1);
    daemon.signal("TERM");
    assert!(daemon.wait_exit().success(), "{}", daemon.log());
}

