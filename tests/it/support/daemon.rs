//! Support for the daemon tests: a kms-sim, a tempdir with a policy (0600) pointing at it, the
//! real binary's `run` as a child with a `NOTIFY_SOCKET` of our own, and bounded waits on the
//! audit log, the simulator and the notify socket. Signals go to the child only (with `kill`).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use kms_sim::{FaultRule, Faults, SimHandle, World};

/// Every wait in these tests gives up after this long (then the test fails with context).
pub const DEADLINE: Duration = Duration::from_secs(20);
/// How often a wait re-checks its condition.
pub const POLL: Duration = Duration::from_millis(50);

pub const ACCOUNT: &str = "111111111111";
pub const OTHER_ACCOUNT: &str = "222222222222";
pub const REGION: &str = "eu-west-1";
pub const ROLE: &str = "arn:aws:iam::222222222222:role/kms-killswitch";
/// The stores the test policy lists: (account, region, id).
pub const STORES: [(&str, &str, &str); 3] = [
    (ACCOUNT, REGION, "cks-1e1c0000000000001"),
    (ACCOUNT, REGION, "cks-1e1e0000000000001"),
    (OTHER_ACCOUNT, REGION, "cks-2e1c0000000000001"),
];
pub const METRIC_ALARM: &str = "kms-killswitch-hsm-anomaly";
pub const COMPOSITE_ALARM: &str = "kms-killswitch-red-button";

/// Knobs of the generated policy.
#[derive(Debug, Clone)]
pub struct PolicyOptions {
    /// Lines under `triggers:` after file/signal (e.g. alarms), indented by two spaces.
    pub extra_triggers: String,
    pub verify_timeout: &'static str,
    pub enforce_interval: &'static str,
}

impl Default for PolicyOptions {
    fn default() -> Self {
        PolicyOptions {
            extra_triggers: String::new(),
            verify_timeout: "15s",
            enforce_interval: "30s",
        }
    }
}

/// `alarms:` lines for `extra_triggers`.
pub fn alarms_yaml(alarms: &[(&str, u32)], poll: &str, fail_closed_after: Option<&str>) -> String {
    let mut yaml = String::from("  alarms:\n");
    for (name, consecutive) in alarms {
        yaml.push_str(&format!(
            "    - name: {name}\n      consecutive: {consecutive}\n"
        ));
    }
    yaml.push_str(&format!("  alarm_poll_interval: {poll}\n"));
    if let Some(after) = fail_closed_after {
        yaml.push_str(&format!("  fail_closed_after: {after}\n"));
    }
    yaml
}

/// A simulator and a directory holding the policy, flag dir, state and audit log.
pub struct Env {
    pub dir: tempfile::TempDir,
    /// Shared when several daemons (hosts) watch one simulated AWS ([`Env::on_sim`]).
    pub sim: std::sync::Arc<SimHandle>,
}

impl Env {
    /// The demo world with fast transitions (100 ms), and the default policy.
    pub fn new() -> Env {
        Env::with_policy(PolicyOptions::default())
    }

    pub fn with_policy(options: PolicyOptions) -> Env {
        Env::with_world(World::demo(), options)
    }

    /// A simulator of `world` (fast transitions) and the policy.
    pub fn with_world(world: World, options: PolicyOptions) -> Env {
        let sim = kms_sim::spawn(world).expect("kms-sim starts");
        Env::on_sim(std::sync::Arc::new(sim), options)
    }

    /// Another host on an existing simulator: its own directory, policy, latch and audit log.
    pub fn on_sim(sim: std::sync::Arc<SimHandle>, options: PolicyOptions) -> Env {
        let env = Env {
            dir: tempfile::tempdir().expect("tempdir"),
            sim,
        };
        env.set_transition_delay(100);
        std::fs::create_dir(env.flag_dir()).expect("flag dir");
        std::fs::set_permissions(env.flag_dir(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod flag dir");
        env.write_policy(&options);
        env
    }

    /// Every store's transition (CONNECTED → DISCONNECTING → DISCONNECTED) takes this long.
    pub fn set_transition_delay(&self, ms: u64) {
        self.sim.set_faults(Faults {
            rules: vec![FaultRule {
                transition_delay_ms: Some(ms),
                ..FaultRule::default()
            }],
        });
    }

    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.yaml")
    }
    pub fn flag_dir(&self) -> PathBuf {
        self.dir.path().join("flags")
    }
    pub fn flag(&self) -> PathBuf {
        self.flag_dir().join("kms-killswitch")
    }
    pub fn state_file(&self) -> PathBuf {
        self.dir.path().join("state/latch.json")
    }
    pub fn audit_log(&self) -> PathBuf {
        self.dir.path().join("audit/audit.jsonl")
    }
    pub fn notify_socket(&self) -> PathBuf {
        self.dir.path().join("notify.sock")
    }

    pub fn policy_text(&self, options: &PolicyOptions) -> String {
        let dir = self.dir.path().display();
        let url = self.sim.endpoint_url();
        format!(
            "version: 1\n\
             aws:\n  region: {REGION}\n  endpoint_url: \"{url}\"\n\
             key_stores:\n  - id: {}\n  - id: {}\n  - id: {}\n    role_arn: {ROLE}\n\
             triggers:\n  file:\n    path: \"{dir}/flags/kms-killswitch\"\n  signal: SIGUSR1\n{}\
             lockdown:\n  verify_timeout: {}\n  enforce_interval: {}\n  rate_limit: 5\n\
             state_file: \"{dir}/state/latch.json\"\n\
             audit_log: \"{dir}/audit/audit.jsonl\"\n",
            STORES[0].2,
            STORES[1].2,
            STORES[2].2,
            options.extra_triggers,
            options.verify_timeout,
            options.enforce_interval,
        )
    }

    /// Write the policy 0600 (the daemon refuses a loose one).
    pub fn write_policy(&self, options: &PolicyOptions) {
        self.write_policy_text(&self.policy_text(options));
    }

    pub fn write_policy_text(&self, text: &str) {
        let path = self.policy_path();
        super::write_policy_file(&path, text);
    }

    /// A hermetic command for the binary with this env's policy and the sim's credentials.
    pub fn command(&self) -> Command {
        super::command_with_policy(&self.policy_path(), REGION)
    }

    /// Start `kms-killswitch run` and wait for READY=1 on our notify socket.
    pub fn start(&self) -> Daemon {
        self.start_with(|_| {})
    }

    /// Start with extra settings on the command (e.g. WATCHDOG_USEC), and wait for READY=1.
    pub fn start_with(&self, configure: impl FnOnce(&mut Command)) -> Daemon {
        let mut daemon = self.spawn_with(configure);
        daemon.wait_notify("READY=1", |m| m.lines().any(|l| l == "READY=1"));
        daemon
    }

    /// Start `kms-killswitch run` without waiting for READY=1.
    pub fn spawn_with(&self, configure: impl FnOnce(&mut Command)) -> Daemon {
        let socket_path = self.notify_socket();
        let _ = std::fs::remove_file(&socket_path);
        let notify = UnixDatagram::bind(&socket_path).expect("bind NOTIFY_SOCKET");
        notify.set_read_timeout(Some(POLL)).expect("socket timeout");
        let log_path = self
            .dir
            .path()
            .join(format!("daemon-{}.log", fastrand::u32(..)));
        let log = std::fs::File::create(&log_path).expect("daemon log");
        let mut cmd = self.command();
        cmd.arg("run")
            .env("NOTIFY_SOCKET", &socket_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        configure(&mut cmd);
        let child = cmd.spawn().expect("the daemon starts");
        Daemon {
            child: Some(child),
            notify,
            messages: Vec::new(),
            log_path,
        }
    }

    /// The audit log's records (empty if it does not exist yet).
    pub fn audit(&self) -> Vec<serde_json::Value> {
        read_audit(&self.audit_log())
    }

    /// Records of one event kind.
    pub fn events(&self, event: &str) -> Vec<serde_json::Value> {
        self.audit()
            .into_iter()
            .filter(|r| r["event"] == event)
            .collect()
    }

    /// Wait until the audit log holds at least `count` records of `event`; returns them.
    pub fn wait_events(&self, event: &str, count: usize) -> Vec<serde_json::Value> {
        wait_for(&format!("{count} × {event} in the audit log"), || {
            let found = self.events(event);
            (found.len() >= count).then_some(found)
        })
        .unwrap_or_else(|what| panic!("{what}; audit log:\n{}", self.audit_dump()))
    }

    pub fn audit_dump(&self) -> String {
        std::fs::read_to_string(self.audit_log()).unwrap_or_default()
    }

    /// The true state of every listed store in the sim.
    pub fn store_states(&self) -> Vec<String> {
        STORES
            .iter()
            .map(|(account, region, id)| {
                self.sim
                    .connection_state(account, region, id)
                    .unwrap_or_default()
            })
            .collect()
    }

    pub fn wait_all_disconnected(&self) {
        wait_for("every listed store DISCONNECTED in the sim", || {
            self.store_states()
                .iter()
                .all(|s| s == "DISCONNECTED")
                .then_some(())
        })
        .unwrap_or_else(|what| {
            panic!(
                "{what}: {:?}; audit log:\n{}",
                self.store_states(),
                self.audit_dump()
            )
        });
    }

    /// Reconnect every listed store (as an operator would after an incident).
    pub fn reconnect_all(&self) {
        for (account, region, id) in STORES {
            self.sim
                .set_connection_state(account, region, id, "CONNECTED")
                .expect("reconnect");
        }
    }

    pub fn touch_flag(&self) {
        std::fs::write(self.flag(), b"").expect("touch flag");
    }

    /// Requests the sim logged for `operation` at or after `since_us`.
    pub fn requests_since(&self, operation: &str, since_us: u64) -> usize {
        self.sim
            .requests()
            .iter()
            .filter(|r| r.operation == operation && r.ts_us >= since_us)
            .count()
    }

    /// `kms-killswitch status --json`, parsed.
    pub fn run_status_json(&self) -> serde_json::Value {
        let output = self
            .command()
            .args(["status", "--json"])
            .output()
            .expect("status runs");
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|err| panic!("status --json is not JSON ({err}): {output:?}"))
    }

    /// `kms-killswitch rearm --reason …`.
    pub fn rearm(&self, reason: &str) -> std::process::Output {
        self.command()
            .args(["rearm", "--reason", reason])
            .output()
            .expect("rearm runs")
    }
}

/// The real daemon process. Killed (SIGKILL) on drop if still running.
pub struct Daemon {
    child: Option<Child>,
    notify: UnixDatagram,
    /// Every notify datagram received so far, in order.
    pub messages: Vec<String>,
    pub log_path: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Send a signal to the daemon (never to the test process) with `kill`; returns the pid of
    /// the `kill` process (the sender the daemon should record).
    pub fn signal(&self, signal: &str) -> u32 {
        let mut kill = Command::new("kill")
            .arg("-s")
            .arg(signal)
            .arg(self.pid().to_string())
            .spawn()
            .expect("kill runs");
        let sender = kill.id();
        assert!(
            kill.wait().expect("kill ends").success(),
            "kill -s {signal} failed"
        );
        sender
    }

    /// Read pending notify datagrams (waiting at most one POLL).
    pub fn drain_notify(&mut self) {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = self.notify.recv(&mut buf) {
            self.messages
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }

    /// Wait for a notify datagram matching `predicate`; returns its index in `messages`.
    pub fn wait_notify(&mut self, what: &str, predicate: impl Fn(&str) -> bool) -> usize {
        let start = Instant::now();
        loop {
            if let Some(index) = self.messages.iter().position(|m| predicate(m)) {
                return index;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "daemon exited with {status} while waiting for {what}; log:\n{}",
                    self.log()
                );
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}; notify: {:?}; log:\n{}",
                self.messages,
                self.log()
            );
            self.drain_notify();
        }
    }

    /// Wait for a notify STATUS= line starting with `prefix` received after message `after`.
    pub fn wait_status(&mut self, prefix: &str, after: usize) -> usize {
        let wanted = format!("STATUS={prefix}");
        let start = Instant::now();
        loop {
            if let Some(index) = self
                .messages
                .iter()
                .skip(after)
                .position(|m| m.lines().any(|l| l.starts_with(&wanted)))
            {
                return after + index;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {wanted}; notify: {:?}; log:\n{}",
                self.messages,
                self.log()
            );
            self.drain_notify();
        }
    }

    /// Wait for the process to exit; its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "daemon did not exit; log:\n{}",
                read_log(&self.log_path)
            );
            std::thread::sleep(POLL);
        }
    }

    /// The exit status if the process has exited (never waits).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    /// SIGKILL, as a crash would.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill_9();
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub fn read_audit(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Re-check `condition` every POLL until it yields a value, or give up after DEADLINE with a
/// message naming `what`.
pub fn wait_for<T>(what: &str, mut condition: impl FnMut() -> Option<T>) -> Result<T, String> {
    let start = Instant::now();
    loop {
        if let Some(value) = condition() {
            return Ok(value);
        }
        if start.elapsed() > DEADLINE {
            return Err(format!("timed out after {DEADLINE:?} waiting for {what}"));
        }
        std::thread::sleep(POLL);
    }
}

/// Microseconds since the epoch (the sim's request log clock).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
