//! Trigger → first DisconnectCustomKeyStore on the wire, and the idle cost of the daemon.
//!
//! `cargo bench --bench trigger_latency` starts kms-sim (in process, loopback) and the real
//! release `kms-killswitch run`, then:
//! 1. file flag: `TRIPS` times, note the time (µs since the epoch), create the flag, and read the
//!    sim's request log for the first DisconnectCustomKeyStore after it (same clock); wait for the
//!    lockdown to finish, remove the flag, `kms-killswitch rearm`, wait for STATUS=armed on our
//!    NOTIFY_SOCKET, reconnect the stores in the sim, repeat. p50/p99/max.
//! 2. signal: the same with SIGUSR1 sent straight to the daemon (`kill(2)` via rustix).
//!    Then the file flag again with a webhook that never answers and an SNS topic that refuses
//!    (issue 13): the notifications must not delay the first Disconnect (at most 10 trips).
//! 3. queue: see [`queue_latency`] (SendMessage → first Disconnect).
//! 4. idle: a fresh daemon watching 10 alarms polled every 10 s; CPU time (sum of
//!    `/proc/<pid>/task/*/schedstat`, ns) and RSS (`/proc/<pid>/status`) over `IDLE_SECS`.
//!
//! Each trip measurement runs at a sync delay of 0, 1 and 5 ms: the daemon is started with
//! `benches/support/slow_sync.c` (built here with `cc`) in `LD_PRELOAD`, which makes every
//! `fsync`/`fdatasync` of the real binary wait that long first, as a network-attached volume does
//! (the shipped binary has no such knob). Without a C compiler only 0 ms runs.
//!
//! Env: `TRIPS` (default 50), `IDLE_SECS` (default 60). The state and audit files live in a
//! temporary directory (set `TMPDIR` to measure on the daemon's real filesystem).
#![forbid(unsafe_code)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kms_sim::{FaultRule, Faults, SimHandle, World};

const ACCOUNT: &str = "111111111111";
const REGION: &str = "eu-west-1";
const STORES: [&str; 3] = [
    "cks-b000000000000000a",
    "cks-b000000000000000b",
    "cks-b000000000000000c",
];
/// Generous: a wait longer than this is a failure of the run, not a slow sample.
const DEADLINE: Duration = Duration::from_secs(30);

fn world() -> World {
    let mut yaml = String::from(
        "settings:\n  rate_limit_rps: 5\n  transition_delay_ms: 50\n  consistency_lag_ms: 0\n  session_duration_seconds: 3600\n\
         credentials:\n  - access_key_id: AKIDKMSSIMDEMO\n    secret_access_key: kms-sim-demo-secret\n    account: \"111111111111\"\n    user_name: bench\n\
         accounts:\n  \"111111111111\":\n    eu-west-1:\n      key_stores:\n",
    );
    for (i, id) in STORES.iter().enumerate() {
        yaml.push_str(&format!(
            "        - id: {id}\n          name: bench-hsm-{i}\n          type: AWS_CLOUDHSM\n          connection_state: CONNECTED\n          cloud_hsm_cluster_id: cluster-b0000000{i}\n"
        ));
    }
    yaml.push_str("      alarms:\n");
    for i in 0..10 {
        yaml.push_str(&format!(
            "        - name: bench-alarm-{i}\n          type: metric\n          state: OK\n          namespace: Bench\n          metric_name: M{i}\n          threshold: 1\n"
        ));
    }
    World::from_yaml_str(&yaml).expect("the bench world is valid")
}

fn policy(dir: &Path, url: &str, alarms: bool) -> String {
    let d = dir.display();
    let mut text =
        format!("version: 1\naws:\n  region: {REGION}\n  endpoint_url: \"{url}\"\nkey_stores:\n");
    for id in STORES {
        text.push_str(&format!("  - id: {id}\n"));
    }
    text.push_str(&format!(
        "triggers:\n  file:\n    path: \"{d}/flags/kms-killswitch\"\n  signal: SIGUSR1\n"
    ));
    if alarms {
        text.push_str("  alarms:\n");
        for i in 0..10 {
            text.push_str(&format!("    - name: bench-alarm-{i}\n"));
        }
        text.push_str("  alarm_poll_interval: 10s\n");
    }
    text.push_str(&format!(
        "lockdown:\n  verify_timeout: 20s\n  enforce_interval: 0s\n  rate_limit: 5\n\
         state_file: \"{d}/state/latch.json\"\naudit_log: \"{d}/audit/audit.jsonl\"\n"
    ));
    text
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn wait_for<T>(what: &str, mut condition: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

struct Bench {
    dir: tempfile::TempDir,
    sim: SimHandle,
}

struct Daemon {
    child: Child,
    notify: UnixDatagram,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Wait for a notify datagram containing `needle`.
    fn wait_notify(&mut self, needle: &str) {
        let mut buf = vec![0u8; 4096];
        let start = Instant::now();
        loop {
            if let Ok(n) = self.notify.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n]).contains(needle)
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the daemon exited with {status}");
            }
            assert!(start.elapsed() < DEADLINE, "timed out waiting for {needle}");
        }
    }
}

impl Bench {
    fn new(alarms: bool) -> Bench {
        let sim = kms_sim::spawn(world()).expect("kms-sim starts");
        // Quick transitions so each lockdown (and the bench) is short; latency is unaffected.
        sim.set_faults(Faults {
            rules: vec![FaultRule {
                transition_delay_ms: Some(50),
                ..FaultRule::default()
            }],
        });
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("flags")).expect("flag dir");
        std::fs::set_permissions(
            dir.path().join("flags"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        let policy_path = dir.path().join("policy.yaml");
        std::fs::write(
            &policy_path,
            policy(dir.path(), &sim.endpoint_url(), alarms),
        )
        .expect("policy");
        std::fs::set_permissions(&policy_path, std::fs::Permissions::from_mode(0o600))
            .expect("chmod policy");
        Bench { dir, sim }
    }

    fn flag(&self) -> PathBuf {
        self.dir.path().join("flags/kms-killswitch")
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kms-killswitch"));
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("AWS_")
                || key.starts_with("KMS_KILLSWITCH")
                || key.starts_with("NOTIFY_")
                || key.starts_with("WATCHDOG_")
            {
                cmd.env_remove(key);
            }
        }
        cmd.arg("--config")
            .arg(self.dir.path().join("policy.yaml"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ACCESS_KEY_ID", "AKIDKMSSIMDEMO")
            .env("AWS_SECRET_ACCESS_KEY", "kms-sim-demo-secret")
            .env("AWS_REGION", REGION)
            .env("RUST_LOG", "warn");
        cmd
    }

    fn start(&self, slow_sync: Option<(&Path, u64)>) -> Daemon {
        let socket = self.dir.path().join("notify.sock");
        let _ = std::fs::remove_file(&socket);
        let notify = UnixDatagram::bind(&socket).expect("bind notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let mut command = self.command();
        if let Some((shim, delay_ms)) = slow_sync {
            command
                .env("LD_PRELOAD", shim)
                .env("SLOW_SYNC_US", (delay_ms * 1000).to_string());
        }
        let child = command
            .arg("run")
            .env("NOTIFY_SOCKET", &socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the daemon starts");
        let mut daemon = Daemon { child, notify };
        daemon.wait_notify("READY=1");
        daemon
    }

    fn lockdowns_finished(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("audit/audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"event\":\"lockdown_finished\""))
            .count()
    }

    fn first_disconnect_after(&self, since_us: u64) -> u64 {
        wait_for("the first DisconnectCustomKeyStore", || {
            self.sim
                .requests()
                .iter()
                .filter(|r| r.operation == "DisconnectCustomKeyStore" && r.ts_us >= since_us)
                .map(|r| r.ts_us)
                .min()
        })
    }

    /// Trip `trips` times with `trip`, returning trigger → first Disconnect latencies.
    fn measure(
        &self,
        daemon: &mut Daemon,
        trips: usize,
        mut trip: impl FnMut(&Daemon),
    ) -> Vec<Duration> {
        let mut samples = Vec::with_capacity(trips);
        for _ in 0..trips {
            let finished = self.lockdowns_finished();
            let t0 = now_us();
            trip(daemon);
            let first = self.first_disconnect_after(t0);
            samples.push(Duration::from_micros(first.saturating_sub(t0)));
            wait_for("the lockdown to finish", || {
                (self.lockdowns_finished() > finished).then_some(())
            });
            let _ = std::fs::remove_file(self.flag());
            let rearm = self
                .command()
                .args(["rearm", "--reason", "bench"])
                .output()
                .expect("rearm runs");
            assert!(
                rearm.status.success(),
                "rearm: {}",
                String::from_utf8_lossy(&rearm.stderr)
            );
            daemon.wait_notify("STATUS=armed");
            for id in STORES {
                self.sim
                    .set_connection_state(ACCOUNT, REGION, id, "CONNECTED")
                    .expect("reconnect");
            }
        }
        samples
    }
}

/// The sync delays each trip measurement runs at (see the module docs).
const SYNC_DELAYS_MS: [u64; 3] = [0, 1, 5];

/// Build `benches/support/slow_sync.c` into `target/bench/`; `None` (with a note) without `cc`.
fn slow_sync_shim() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir).ok()?;
    let out = out_dir.join("libslow_sync.so");
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&out)
        .arg(root.join("benches/support/slow_sync.c"))
        .arg("-ldl")
        .status();
    match built {
        Ok(status) if status.success() => Some(out),
        _ => {
            println!("no C compiler: the 1 and 5 ms sync delays are skipped");
            None
        }
    }
}

/// Issue 13: the file-flag trip again, with a webhook that never answers and an SNS topic that
/// refuses every Publish: trigger → first Disconnect must read as without sinks. Fewer trips:
/// each `rearm` waits out its own (bounded) `rearmed` notification to the hanging webhook.
fn with_hanging_sinks(trips: usize) {
    let bench = Bench::new(false);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the hanging webhook");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        // Accept and hold every connection, never answering.
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let topic_arn = bench
        .sim
        .create_topic(ACCOUNT, REGION, "refusing")
        .expect("topic");
    bench
        .sim
        .set_topic_fault(&topic_arn, Some(kms_sim::TopicFault::AuthorizationError))
        .expect("topic fault");
    let policy_path = bench.dir.path().join("policy.yaml");
    let mut text = std::fs::read_to_string(&policy_path).expect("policy");
    text.push_str(&format!(
        "notify:\n  - webhook: {{url: \"{url}\"}}\n  - sns: {{topic_arn: \"{topic_arn}\"}}\n"
    ));
    std::fs::write(&policy_path, text).expect("policy");
    let mut daemon = bench.start(None);
    let flag = bench.flag();
    let samples = bench.measure(&mut daemon, trips.clamp(1, 10), |_| {
        std::fs::write(&flag, b"").expect("touch the flag");
    });
    report(
        "file flag, with a hanging webhook and a refusing topic",
        samples,
    );
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| {
        samples[((samples.len() as f64 * q).ceil() as usize)
            .saturating_sub(1)
            .min(samples.len() - 1)]
    };
    println!(
        "{what}: trigger → first DisconnectCustomKeyStore on the wire: n={} p50={:.2?} p99={:.2?} max={:.2?}",
        samples.len(),
        at(0.50),
        at(0.99),
        samples[samples.len() - 1]
    );
}

/// CPU time of every thread of `pid`, from schedstat (ns, exact).
fn cpu_ns(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/<pid>/task") {
        let path = task.expect("task entry").path().join("schedstat");
        if let Ok(text) = std::fs::read_to_string(path) {
            total += text
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

fn status_kb(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: then run a short smoke.
    let benching = std::env::args().any(|a| a == "--bench");
    let trips = if benching { env_usize("TRIPS", 50) } else { 2 };
    let idle_secs = if benching {
        env_usize("IDLE_SECS", 60)
    } else {
        2
    } as u64;

    let shim = slow_sync_shim();
    for delay_ms in SYNC_DELAYS_MS {
        let slow_sync = match (&shim, delay_ms) {
            (_, 0) => None,
            (Some(shim), delay) => Some((shim.as_path(), delay)),
            (None, _) => continue,
        };
        let bench = Bench::new(false);
        let mut daemon = bench.start(slow_sync);
        let flag = bench.flag();
        let file = bench.measure(&mut daemon, trips, |_| {
            std::fs::write(&flag, b"").expect("touch the flag");
        });
        report(&format!("file flag, sync delay {delay_ms} ms"), file);
        let signal = bench.measure(&mut daemon, trips, |daemon| {
            let pid = rustix::process::Pid::from_raw(daemon.child.id() as i32).expect("a live pid");
            rustix::process::kill_process(pid, rustix::process::Signal::USR1)
                .expect("SIGUSR1 to the daemon");
        });
        report(&format!("SIGUSR1, sync delay {delay_ms} ms"), signal);
    }
    with_hanging_sinks(trips);
    report(
        "SQS queue (SendMessage during a long poll)",
        queue_latency(trips),
    );

    let idle = Bench::new(true);
    let daemon = idle.start(None);
    let pid = daemon.child.id();
    // Let start-up work (credential warm-up, first polls) settle.
    std::thread::sleep(Duration::from_secs(if benching { 5 } else { 1 }));
    let cpu_before = cpu_ns(pid);
    let polls_before = idle
        .sim
        .requests()
        .iter()
        .filter(|r| r.operation == "DescribeAlarms")
        .count();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_secs));
    let wall = started.elapsed();
    let cpu = Duration::from_nanos(cpu_ns(pid) - cpu_before);
    let polls = idle
        .sim
        .requests()
        .iter()
        .filter(|r| r.operation == "DescribeAlarms")
        .count()
        - polls_before;
    println!(
        "idle with 10 alarms polled every 10 s over {wall:.1?}: cpu={cpu:.2?} ({:.4}% of one core), {polls} DescribeAlarms, VmRSS={} kB, VmHWM={} kB",
        cpu.as_secs_f64() / wall.as_secs_f64() * 100.0,
        status_kb(pid, "VmRSS:"),
        status_kb(pid, "VmHWM:"),
    );
}

/// 3. queue (issue 14): `TRIPS` times, SendMessage to the daemon's SQS queue while its long poll
///    waits (a pause after each rearm lets the previous delete finish and the next poll start),
///    and the time to the first DisconnectCustomKeyStore on the wire. Its own sim and daemon.
fn queue_latency(trips: usize) -> Vec<Duration> {
    let bench = Bench::new(false);
    let url = bench
        .sim
        .create_queue(ACCOUNT, REGION, "bench-host")
        .expect("the bench queue");
    let policy_path = bench.dir.path().join("policy.yaml");
    let text = std::fs::read_to_string(&policy_path)
        .expect("the bench policy")
        .replace(
            "lockdown:\n",
            &format!("  queues:\n    - url: \"{url}\"\nlockdown:\n"),
        );
    std::fs::write(&policy_path, text).expect("the bench policy");
    let mut daemon = bench.start(None);
    let mut samples = Vec::with_capacity(trips);
    for trip in 0..trips {
        // The watcher is back in its 20 s long poll well within this.
        std::thread::sleep(Duration::from_millis(200));
        let finished = bench.lockdowns_finished();
        let t0 = now_us();
        bench
            .sim
            .send_message(
                ACCOUNT,
                REGION,
                "bench-host",
                &format!("{{\"source\": \"bench\", \"id\": \"trip-{trip}\"}}"),
            )
            .expect("SendMessage");
        let first = bench.first_disconnect_after(t0);
        samples.push(Duration::from_micros(first.saturating_sub(t0)));
        wait_for("the lockdown to finish", || {
            (bench.lockdowns_finished() > finished).then_some(())
        });
        let rearm = bench
            .command()
            .args(["rearm", "--reason", "bench"])
            .output()
            .expect("rearm runs");
        assert!(
            rearm.status.success(),
            "rearm: {}",
            String::from_utf8_lossy(&rearm.stderr)
        );
        daemon.wait_notify("STATUS=armed");
        for id in STORES {
            bench
                .sim
                .set_connection_state(ACCOUNT, REGION, id, "CONNECTED")
                .expect("reconnect");
        }
    }
    samples
}
