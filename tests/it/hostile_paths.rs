//! Hostile local inputs as a table (issue 17): every path the daemon opens — the policy, the
//! flag, the state file (latch), the audit log, the webhook's secret file and the metrics
//! textfile — given as a FIFO, a device (`/dev/null`'s and `/dev/zero`'s), a symlink, a
//! directory, a hard link, a file owned by another user (uid 65534), or inside a directory others
//! can write; and for each, `check`, `run` and `trip` run against it. Every run is bounded (a hang is a failure, not a stuck suite); every outcome is either a
//! clear one-line refusal with the exit code of DESIGN §4 or a correct result; never a panic.
//! One `#[test]` per path (they run in parallel); the table of expectations is [`expected`].

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use crate::support::daemon::{DEADLINE, Env, POLL, PolicyOptions};
use crate::support::webhook::Receiver;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Policy,
    Flag,
    State,
    Audit,
    /// `notify: [webhook: {secret_file}]` (the policy of these rows has a webhook to a local
    /// receiver and a metrics textfile).
    WebhookSecret,
    /// `metrics: {textfile}`.
    MetricsFile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fifo,
    NullDevice,
    ZeroDevice,
    Symlink,
    Directory,
    HardLink,
    ForeignOwner,
    OpenDir,
}

const KINDS: [Kind; 8] = [
    Kind::Fifo,
    Kind::NullDevice,
    Kind::ZeroDevice,
    Kind::Symlink,
    Kind::Directory,
    Kind::HardLink,
    Kind::ForeignOwner,
    Kind::OpenDir,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    Check,
    Run,
    Trip,
}

/// What one command did: its exit code (`None` for `run` that came up READY and was stopped),
/// and its stderr.
#[derive(Debug)]
struct Outcome {
    code: Option<i32>,
    stderr: String,
}

fn path_of(env: &Env, which: Which) -> PathBuf {
    match which {
        Which::Policy => env.policy_path(),
        Which::Flag => env.flag(),
        Which::State => env.state_file(),
        Which::Audit => env.audit_log(),
        Which::WebhookSecret => env.dir.path().join("secrets/webhook.secret"),
        Which::MetricsFile => env.dir.path().join("metrics/kms_killswitch.prom"),
    }
}

/// For the webhook and metrics rows: the default policy plus a webhook (signed with a valid
/// secret file) to `receiver` and a metrics textfile in a directory of its own.
fn add_notify_and_metrics(env: &Env, receiver: &Receiver) {
    for dir in ["secrets", "metrics"] {
        let dir = env.dir.path().join(dir);
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    }
    let secret = path_of(env, Which::WebhookSecret);
    std::fs::write(&secret, "s3cret\n").expect("secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let text = format!(
        "{}notify:\n  - webhook: {{url: \"{}\", secret_file: \"{}\"}}\nmetrics:\n  textfile: \"{}\"\n",
        env.policy_text(&PolicyOptions::default()),
        receiver.url,
        secret.display(),
        path_of(env, Which::MetricsFile).display(),
    );
    env.write_policy_text(&text);
}

fn mknod(path: &Path, kind: rustix::fs::FileType, dev: u64) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        kind,
        rustix::fs::Mode::from_raw_mode(0o600),
        dev,
    )
    .expect("mknod");
}

/// Put the hostile `kind` at `which`'s path of `env`. A file needed for a symlink or hard link
/// (the real thing, e.g. the valid policy) lives beside it.
fn plant(env: &Env, which: Which, kind: Kind) {
    let path = path_of(env, which);
    let dir = path.parent().expect("a parent").to_path_buf();
    std::fs::create_dir_all(&dir).expect("parent dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    // What a regular file at this path would hold: the policy's text, else nothing.
    let content = std::fs::read(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    let real = dir.join("real-file");
    match kind {
        Kind::Fifo => mknod(&path, rustix::fs::FileType::Fifo, 0),
        Kind::NullDevice => mknod(&path, rustix::fs::FileType::CharacterDevice, makedev(1, 3)),
        Kind::ZeroDevice => mknod(&path, rustix::fs::FileType::CharacterDevice, makedev(1, 5)),
        Kind::Symlink | Kind::HardLink => {
            std::fs::write(&real, &content).expect("real file");
            std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
            if kind == Kind::Symlink {
                std::os::unix::fs::symlink(&real, &path).expect("symlink");
            } else {
                std::fs::hard_link(&real, &path).expect("hard link");
            }
        }
        Kind::Directory => std::fs::create_dir(&path).expect("mkdir"),
        Kind::ForeignOwner => {
            std::fs::write(&path, &content).expect("file");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::os::unix::fs::chown(&path, Some(65534), Some(65534)).expect("chown");
        }
        Kind::OpenDir => {
            if which != Which::Flag && which != Which::State {
                std::fs::write(&path, &content).expect("file");
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
    }
}

fn makedev(major: u64, minor: u64) -> u64 {
    (major << 8) | minor
}

/// Run `cmd` against `env`, bounded by the support module's deadline (a hang fails the test).
fn run_cmd(env: &Env, cmd: Cmd) -> Outcome {
    match cmd {
        Cmd::Check => bounded(env.command().arg("check")),
        Cmd::Trip => bounded(env.command().args(["trip", "--reason", "hostile paths"])),
        Cmd::Run => run_daemon(env),
    }
}

fn bounded(cmd: &mut std::process::Command) -> Outcome {
    let out = tempfile::NamedTempFile::new().expect("stderr file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(out.reopen().expect("reopen"))
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hung for {DEADLINE:?}: {cmd:?}");
        }
        std::thread::sleep(POLL);
    };
    Outcome {
        code: status.code(),
        stderr: std::fs::read_to_string(out.path()).unwrap_or_default(),
    }
}

/// `run`: either it refuses (exits) or comes up READY; then it is stopped with SIGTERM and must
/// exit 0. `code` is the refusal's exit code, or `None` when it ran.
fn run_daemon(env: &Env) -> Outcome {
    let mut daemon = env.spawn_with(|_| {});
    let start = Instant::now();
    loop {
        if let Some(status) = daemon.try_exit() {
            return Outcome {
                code: status.code(),
                stderr: daemon.log(),
            };
        }
        daemon.drain_notify();
        if daemon
            .messages
            .iter()
            .any(|m| m.lines().any(|l| l == "READY=1"))
        {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "run hung before READY: {}",
            daemon.log()
        );
    }
    daemon.signal("TERM");
    let status = daemon.wait_exit();
    assert_eq!(
        status.code(),
        Some(0),
        "run stopped by SIGTERM: {}",
        daemon.log()
    );
    Outcome {
        code: None,
        stderr: daemon.log(),
    }
}

/// What a case must end in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Exit 78 (EX_CONFIG) with one line on stderr naming the problem ([`reason`]; for `run`,
    /// see [`refusal_lines`]); nothing is disconnected.
    Refused,
    /// `check` exits 0, `run` comes up READY (and stops on SIGTERM with 0), `trip` exits 0.
    Works,
    /// `trip` locks down but its audit log cannot be written: exit 1 (incomplete), every store
    /// still DISCONNECTED.
    LockedDownUnaudited,
}

/// The table: what each command must do with each hostile path.
fn expected(which: Which, kind: Kind, cmd: Cmd) -> Expect {
    use {Cmd::*, Expect::*, Kind::*, Which::*};
    match (which, kind, cmd) {
        // A hard-linked policy, latch or audit log can only be made by root or the daemon's user
        // in a trusted directory (backup tools do): accepted. A flag must be a file of its own.
        (Policy | State | Audit | WebhookSecret | MetricsFile, HardLink, _) => Works,
        (Policy, _, _) => Refused,
        // `trip` never looks at the flag; `run` starts and rejects the hostile flag (reported in
        // STATUS and the audit log, never fired), unless its directory itself is open.
        (Flag, _, Trip) => Works,
        (Flag, OpenDir, Run) | (Flag, _, Check) => Refused,
        (Flag, _, Run) => Works,
        // `trip` locks down whatever the state of the latch's path (nothing may delay the
        // lockdown); `check` and `run` refuse an untrusted latch or audit log.
        (State, _, Trip) => Works,
        (Audit, Fifo | NullDevice | ZeroDevice | Symlink | Directory, Trip) => LockedDownUnaudited,
        (Audit, ForeignOwner | OpenDir, Trip) => Works,
        (State | Audit, _, Check | Run) => Refused,
        // `trip` sends no notification and writes no metrics: neither can delay the lockdown.
        // `check` and `run` refuse a secret or textfile that is not a regular file of root or
        // the daemon's user in a directory only they can change (the daemon writes the
        // textfile as root: a symlink or an open directory would let others aim that write).
        (WebhookSecret | MetricsFile, _, Trip) => Works,
        (WebhookSecret | MetricsFile, _, Check | Run) => Refused,
    }
}

/// The words a refusal must contain for `kind`.
fn reason(kind: Kind) -> &'static str {
    match kind {
        Kind::Fifo => "a fifo or socket, not a regular file",
        Kind::NullDevice | Kind::ZeroDevice => "a device, not a regular file",
        Kind::Symlink => "a symlink, not a regular file",
        Kind::Directory => "a directory, not a regular file",
        Kind::HardLink => "2 hard links",
        Kind::ForeignOwner => "uid 65534",
        Kind::OpenDir => "(mode 0777)",
    }
}

/// How many lines the refusal takes: all of stderr for `check`/`trip`; for `run` (whose log
/// may hold the tracing of its start first) the lines of the `kms-killswitch: error:` kind.
fn refusal_lines(stderr: &str, cmd: Cmd) -> usize {
    let lines = stderr.trim_end().lines();
    match cmd {
        Cmd::Run => lines
            .filter(|l| l.starts_with("kms-killswitch: error:"))
            .count(),
        _ => lines.count(),
    }
}

/// One case in a fresh world: plant, run, judge. `Err` describes a mismatch.
fn one(which: Which, kind: Kind, cmd: Cmd) -> Result<(), String> {
    let env = Env::new();
    let receiver = Receiver::answering();
    if matches!(which, Which::WebhookSecret | Which::MetricsFile) {
        add_notify_and_metrics(&env, &receiver);
    }
    plant(&env, which, kind);
    let outcome = run_cmd(&env, cmd);
    let expect = expected(which, kind, cmd);
    let case = format!("{which:?} as {kind:?}, {cmd:?} (expected {expect:?})");
    let first = outcome.stderr.lines().last().unwrap_or("").to_owned();
    if outcome.stderr.contains("panicked") {
        return Err(format!("{case}: panicked: {}", outcome.stderr));
    }
    let states = env.store_states();
    let all = |state: &str| states.iter().all(|s| s == state);
    let ok = match expect {
        Expect::Refused => {
            outcome.code == Some(78)
                && refusal_lines(&outcome.stderr, cmd) == 1
                && first.contains(reason(kind))
                && all("CONNECTED")
        }
        Expect::Works => {
            let code_ok = match cmd {
                Cmd::Run => outcome.code.is_none(),
                _ => outcome.code == Some(0),
            };
            // A trip disconnects everything; a run with no trigger nothing — except a run on an
            // existing (here: empty, unparseable) latch, which fails closed and locks down.
            let locked = cmd == Cmd::Trip || (which == Which::State && cmd == Cmd::Run);
            code_ok
                && all(if locked { "DISCONNECTED" } else { "CONNECTED" })
                && metrics_replaced_not_written_through(&env, which, cmd)
        }
        Expect::LockedDownUnaudited => outcome.code == Some(1) && all("DISCONNECTED"),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{case}: exit {:?}, stores {states:?}, stderr ends: {first}",
            outcome.code
        ))
    }
}

/// A run with a hard-linked textfile leaves a fresh regular file with the metrics at its path
/// and the other name of the old file untouched (the write is a rename, never through it).
fn metrics_replaced_not_written_through(env: &Env, which: Which, cmd: Cmd) -> bool {
    if which != Which::MetricsFile || cmd != Cmd::Run {
        return true;
    }
    let path = path_of(env, which);
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    let other_name = path.with_file_name("real-file");
    written.contains("kms_killswitch_up ")
        && std::fs::read(other_name).is_ok_and(|old| old.is_empty())
}

/// Every kind × every command for one path; fails listing every mismatch at once.
fn table(which: Which) {
    let failures: Vec<String> = KINDS
        .into_iter()
        .flat_map(|kind| [Cmd::Check, Cmd::Run, Cmd::Trip].map(|cmd| (kind, cmd)))
        .filter_map(|(kind, cmd)| one(which, kind, cmd).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn hostile_policy_path() {
    table(Which::Policy);
}
#[test]
fn hostile_flag_path() {
    table(Which::Flag);
}
#[test]
fn hostile_state_file_path() {
    table(Which::State);
}
#[test]
fn hostile_audit_log_path() {
    table(Which::Audit);
}
#[test]
fn hostile_webhook_secret_path() {
    table(Which::WebhookSecret);
}
#[test]
fn hostile_metrics_textfile_path() {
    table(Which::MetricsFile);
}
