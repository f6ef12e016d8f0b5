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

/// `kms-killswitch run` that is expected to refuse to start: its exit code and its log. Bounded
/// (a daemon that starts after all is killed at the support module's deadline and the test fails),
/// so a regression fails instead of hanging.
fn run_refused(env: &Env) -> (Option<i32>, String) {
    let mut daemon = env.spawn_with(|_| {});
    let status = daemon.wait_exit();
    (status.code(), daemon.log())
}

#[test]
fn policy_in_a_directory_others_can_write_is_refused_with_78() {
    let env = Env::new();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let output = env.command().arg("check").output().unwrap();
    let check = (output.status.code(), stderr_of(&output));
    for (command, (code, stderr)) in [("check", check), ("run", run_refused(&env))] {
        assert_eq!(code, Some(78), "{command}: {stderr}");
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

#[test]
fn fifo_at_state_file_or_audit_log_or_an_open_state_directory_refuses_to_start() {
    let env = Env::new();
    std::fs::create_dir_all(env.state_file().parent().unwrap()).unwrap();
    mkfifo(&env.state_file());
    let (code, stderr) = run_refused(&env);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("refusing state_file") && stderr.contains("a fifo or socket"),
        "{stderr}"
    );
    let check = env.command().arg("check").output().unwrap();
    assert_eq!(check.status.code(), Some(78), "{}", stderr_of(&check));
    std::fs::remove_file(env.state_file()).unwrap();

    std::fs::create_dir_all(env.audit_log().parent().unwrap()).unwrap();
    mkfifo(&env.audit_log());
    let (code, stderr) = run_refused(&env);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("refusing audit_log"), "{stderr}");
    std::fs::remove_file(env.audit_log()).unwrap();

    // A state directory anyone may write: anyone could delete the latch.
    let state_dir = env.state_file().parent().unwrap().to_path_buf();
    std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let (code, stderr) = run_refused(&env);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("mode 1777"), "{stderr}");
}

#[test]
fn a_deleted_latch_is_tampering_written_back_and_enforcement_goes_on() {
    let env = Env::with_policy(PolicyOptions {
        enforce_interval: "1s",
        ..PolicyOptions::default()
    });
    let mut daemon = env.start();
    env.touch_flag();
    env.wait_events("lockdown_finished", 1);
    env.wait_all_disconnected();
    let latched = daemon.wait_status("LATCHED since", 0);
    let before = std::fs::read(env.state_file()).unwrap();
    std::fs::remove_file(env.state_file()).unwrap();
    let tampered = env.wait_events("latch_tampered", 1);
    assert!(
        tampered[0]["detail"]
            .as_str()
            .unwrap()
            .contains("without a rearm"),
        "{}",
        tampered[0]
    );
    wait_for("the latch to be written back", || {
        std::fs::read(env.state_file())
            .ok()
            .filter(|b| *b == before)
    })
    .unwrap();
    assert!(env.events("rearmed").is_empty());
    // Still latched and enforcing: a reconnected store is disconnected again.
    env.reconnect_all();
    env.wait_events("drift_detected", 1);
    env.wait_all_disconnected();
    // A real rearm is still one: no second latch_tampered.
    std::fs::remove_file(env.flag()).unwrap();
    let rearm = env.rearm("drill over");
    assert_eq!(rearm.status.code(), Some(0), "{}", stderr_of(&rearm));
    env.wait_events("rearmed", 1);
    daemon.wait_status("armed", latched);
    assert!(!env.state_file().exists(), "the rearm stays a rearm");
    assert_eq!(
        env.events("latch_tampered").len(),
        1,
        "{}",
        env.audit_dump()
    );
}

#[test]
fn a_replaced_audit_log_names_the_previous_chain_head_in_its_first_record() {
    let env = Env::new();
    let daemon = env.start();
    let old = env.audit();
    let last = old
        .last()
        .expect("daemon_started and policy_loaded")
        .clone();
    let moved = env.dir.path().join("moved.jsonl");
    std::fs::rename(env.audit_log(), &moved).unwrap();
    daemon.signal("USR1");
    env.wait_events("trigger_fired", 1);
    let new = env.audit();
    assert_eq!(
        new[0]["event"],
        "audit_log_replaced",
        "{}",
        env.audit_dump()
    );
    assert_eq!(new[0]["seq"], 1);
    assert_eq!(new[0]["previous_seq"], last["seq"]);
    let moved_text = std::fs::read_to_string(&moved).unwrap();
    let last_line = moved_text.lines().last().unwrap();
    let digest = sha2::Sha256::digest(last_line.as_bytes());
    assert_eq!(
        new[0]["previous_line_sha256"],
        hex::encode(digest),
        "the hash of the last line the daemon wrote"
    );
    assert_eq!(read_audit(&moved).len(), old.len());
}

#[test]
fn a_hard_linked_flag_is_rejected_and_nothing_is_disconnected() {
    let env = Env::new();
    let _daemon = env.start();
    // A root-owned file anyone can see, hard-linked onto the flag's name.
    let root_owned = env.flag_dir().join(".some-root-file");
    std::fs::write(&root_owned, b"").unwrap();
    std::fs::hard_link(&root_owned, env.flag()).unwrap();
    let rejected = env.wait_events("trigger_rejected", 1);
    assert!(
        rejected[0]["reason"]
            .as_str()
            .unwrap()
            .contains("2 hard links"),
        "{}",
        rejected[0]
    );
    assert!(env.events("trigger_fired").is_empty());
    assert!(!env.state_file().exists());
    assert!(env.store_states().iter().all(|s| s == "CONNECTED"));
}

#[test]
fn a_sticky_world_writable_flag_directory_refuses_to_start() {
    let env = Env::new();
    std::fs::set_permissions(env.flag_dir(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let (code, stderr) = run_refused(&env);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("mode 1777") && stderr.contains("allow_untrusted_flag_dir"),
        "{stderr}"
    );
}

#[test]
fn a_squatted_flag_is_reported_by_check_and_in_status() {
    let env = Env::new();
    env.touch_flag();
    std::os::unix::fs::chown(env.flag(), Some(65534), Some(65534)).unwrap();
    let check = env.command().arg("check").output().unwrap();
    let stderr = stderr_of(&check);
    assert_eq!(check.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("cannot fire") && stderr.contains("uid 65534"),
        "{stderr}"
    );
    let mut daemon = env.start();
    daemon.wait_notify("STATUS naming the rejected flag", |m| {
        m.lines().any(|l| {
            l.starts_with("STATUS=armed") && l.contains("flag rejected") && l.contains("uid 65534")
        })
    });
    // Gone: STATUS says armed without it.
    std::fs::remove_file(env.flag()).unwrap();
    daemon.wait_notify("STATUS without the rejected flag", |m| {
        m.lines()
            .any(|l| l.starts_with("STATUS=armed") && !l.contains("flag rejected"))
    });
}

#[test]
fn a_trace_log_in_the_flag_directory_does_not_feed_itself() {
    let env = Env::new();
    let log_path = env.flag_dir().join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut daemon = env.start_with(|cmd| {
        cmd.env("RUST_LOG", "trace")
            .stdout(Stdio::null())
            .stderr(log);
    });
    daemon.signal("USR1");
    env.wait_events("lockdown_finished", 1);
    daemon.signal("TERM");
    assert!(daemon.wait_exit().success());
    let text = std::fs::read_to_string(&log_path).unwrap();
    // Each such line is a write to the directory, hence one more event, hence one more line.
    let echoes = text.lines().filter(|l| l.contains("inotify event")).count();
    assert_eq!(echoes, 0, "{} lines of log", text.lines().count());
    assert!(
        text.contains("lockdown complete"),
        "the trace log is written"
    );
}
