//! `cargo run --release --example demo`: the whole kill switch, end to end, on one machine, in
//! seconds, with no AWS account and no network beyond loopback.
//!
//! It starts kms-sim in-process with the world of `examples/demo-world.yaml` (2 accounts ×
//! 2 regions, a CloudHSM and an external key store in each, one alarm), writes `config/demo.yaml`
//! into a fresh directory (flag, latch and audit log all there: no root), starts the REAL daemon
//! binary, waits for READY=1 on its NOTIFY_SOCKET, trips it by creating the flag, prints every
//! store's ConnectionState change as the simulator sees it, plays an attacker who reconnects a
//! store with stolen credentials and watches the daemon undo it, checks the audit trail with
//! `kms-killswitch audit verify`, stops the daemon with SIGTERM and exits 0. Any step that fails
//! or overruns its timeout ends the demo with a message and exit status 1.
//!
//! It owns nothing but itself: it must not change the library, the simulator or the policy file.
#![forbid(unsafe_code)]

#[path = "support/binary.rs"]
mod binary;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The simulated world and the policy the daemon runs on.
const DEMO_WORLD: &str = include_str!("demo-world.yaml");
const DEMO_POLICY: &str = include_str!("../config/demo.yaml");

/// The demo world's long-term credentials (account 111111111111); they exist only in kms-sim.
const ACCESS_KEY_ID: &str = "AKIDKMSSIMDEMO";
const SECRET_ACCESS_KEY: &str = "kms-sim-demo-secret";

/// Every account and region of the demo world, as (account, region).
const ACCOUNT_REGIONS: [(&str, &str); 4] = [
    ("111111111111", "eu-west-1"),
    ("111111111111", "us-east-1"),
    ("222222222222", "eu-west-1"),
    ("222222222222", "us-east-1"),
];

/// The store the attacker reconnects: payments-hsm, in the base account's home region.
const ATTACKED: (&str, &str, &str) = ("111111111111", "eu-west-1", "cks-111e1000000000001");

/// How often the demo looks at the simulator's view: fine enough to show every transition of a
/// one-second DISCONNECTING.
const POLL: Duration = Duration::from_millis(100);

/// Startup covers loading the policy, AssumeRole warm-up and the first alarm poll on loopback.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// The demo policy's verify_timeout is 20 s; on loopback the lockdown takes about 2 s.
const LOCKDOWN_TIMEOUT: Duration = Duration::from_secs(20);
/// enforce_interval (2 s) + the Connect and Disconnect transitions (1 s each) + slack.
const ENFORCEMENT_TIMEOUT: Duration = Duration::from_secs(12);
/// SIGTERM with no lockdown in flight stops the daemon at once.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Any CLI command of the demo (`status`, `audit verify`) against the loopback simulator.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

fn main() -> ExitCode {
    let mut demo = Demo::default();
    match demo.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("\ndemo FAILED: {err:#}");
            demo.show_daemon_log();
            ExitCode::FAILURE
        }
    }
}

/// What a failed step needs to clean up and explain itself.
#[derive(Default)]
struct Demo {
    /// The daemon, while it runs; killed on drop if the demo fails halfway.
    daemon: Option<Child>,
    /// Where the daemon's stderr goes.
    daemon_log: Option<PathBuf>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
    }
}

impl Demo {
    fn run(&mut self) -> anyhow::Result<()> {
        println!("kms-killswitch demo: the real daemon against a simulated AWS on loopback\n");

        step(1, "building the daemon binary");
        let build_started = Instant::now();
        let binary = binary::build_daemon().context("building the kms-killswitch binary")?;
        println!(
            "      {} ({:.1} s)",
            binary.display(),
            build_started.elapsed().as_secs_f64()
        );
        let started = Instant::now();

        step(2, "starting the simulated AWS (kms-sim, in this process)");
        let world = kms_sim::World::from_yaml_str(DEMO_WORLD).context("the demo world")?;
        let sim = kms_sim::spawn(world).context("starting kms-sim")?;
        let endpoint_url = sim.endpoint_url();
        let stores = sim_view(&sim);
        println!(
            "      {endpoint_url}: 2 accounts × 2 regions, {} custom key stores (CloudHSM and \
             external), alarm kms-exfiltration-suspected",
            stores.len()
        );

        step(3, "writing the demo policy (config/demo.yaml, filled in)");
        let dir = tempfile::Builder::new()
            .prefix("kms-killswitch-demo-")
            .tempdir()
            .context("creating the demo directory")?
            // Kept on purpose: the audit trail is there to be read after the demo.
            .keep();
        let files = DemoFiles::create(&dir, &endpoint_url)?;
        println!("      {}", files.policy.display());

        step(4, "starting the daemon: kms-killswitch run");
        let notify = UnixDatagram::bind(&files.notify_socket).context("binding NOTIFY_SOCKET")?;
        notify.set_read_timeout(Some(POLL))?;
        let daemon_log = dir.join("daemon.log");
        self.daemon_log = Some(daemon_log.clone());
        let log_file = std::fs::File::create(&daemon_log).context("creating daemon.log")?;
        let daemon = daemon_command(&binary, &files)
            .arg("run")
            .env("NOTIFY_SOCKET", &files.notify_socket)
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting `kms-killswitch run`")?;
        println!(
            "      pid {}, logging to {}",
            daemon.id(),
            daemon_log.display()
        );
        let pid = daemon.id();
        self.daemon = Some(daemon);
        self.wait_ready(&notify)?;

        step(5, "armed: kms-killswitch status");
        let status = run_command(&binary, &files, &["status"])?;
        indent(&status);

        step(6, "BREACH: touch the flag file");
        std::fs::File::create(&files.flag)
            .with_context(|| format!("creating the flag {}", files.flag.display()))?;
        println!("      touch {}", files.flag.display());
        let mut last = stores;
        let tripped = Instant::now();
        let all_disconnected =
            |view: &BTreeMap<StoreKey, String>| view.values().all(|state| state == "DISCONNECTED");
        last = self
            .watch(&sim, last, tripped, LOCKDOWN_TIMEOUT, all_disconnected)
            .context("waiting for every key store to be DISCONNECTED")?;
        println!(
            "      all {} key stores DISCONNECTED {:.1} s after the flag (the simulator's own view)",
            last.len(),
            tripped.elapsed().as_secs_f64()
        );
        // The daemon's own verdict, from KMS's answers: it must have verified every store.
        let finished = wait_for(
            "the lockdown_finished audit record",
            LOCKDOWN_TIMEOUT,
            || {
                audit_events(&files.audit_log)
                    .ok()?
                    .into_iter()
                    .find(|e| e["event"] == "lockdown_finished")
            },
        )?;
        if finished["outcome"] != "complete" {
            bail!("the lockdown did not complete: {finished}");
        }
        println!(
            "      the daemon's audit: lockdown_finished, outcome complete, {} stores verified \
             DISCONNECTED with DescribeCustomKeyStores in {} ms",
            finished["verified"], finished["elapsed_ms"]
        );

        step(7, "ATTACKER: ConnectCustomKeyStore with stolen credentials");
        let (account, region, id) = ATTACKED;
        connect_as_attacker(&endpoint_url, region, id)
            .with_context(|| format!("reconnecting {id} as the attacker"))?;
        println!("      reconnect requested for {id} ({account} {region})");
        let attacked = Instant::now();
        let attacked_key = StoreKey::new(account, region, id);
        let mut seen_reconnecting = false;
        self.watch(&sim, last, attacked, ENFORCEMENT_TIMEOUT, |view| {
            let state = view.get(&attacked_key).map(String::as_str);
            seen_reconnecting |= matches!(state, Some("CONNECTING" | "CONNECTED"));
            seen_reconnecting && state == Some("DISCONNECTED")
        })
        .context("waiting for the daemon to disconnect the reconnected store again")?;
        let drift = wait_for(
            "the drift_detected audit record",
            ENFORCEMENT_TIMEOUT,
            || {
                audit_events(&files.audit_log)
                    .ok()?
                    .into_iter()
                    .find(|e| e["event"] == "drift_detected" && e["key_store_id"] == id)
            },
        )?;
        println!(
            "      the daemon saw it {} and disconnected it again: {id} DISCONNECTED {:.1} s \
             after the attack",
            drift["connection_state"].as_str().unwrap_or("reconnected"),
            attacked.elapsed().as_secs_f64()
        );

        step(8, "stopping the daemon with SIGTERM");
        let stopped = self.stop(pid)?;
        println!("      exited with {stopped}");
        let events = audit_events(&files.audit_log)?;
        let last_event = events.last().map(|e| e["event"].to_string());
        if last_event.as_deref() != Some("\"daemon_stopped\"") {
            bail!(
                "the audit log ends with {} instead of daemon_stopped",
                last_event.unwrap_or_else(|| "nothing".to_owned())
            );
        }

        step(9, "kms-killswitch audit verify");
        let audit_path = files.audit_log.display().to_string();
        let verified = run_command(&binary, &files, &["audit", "verify", &audit_path])?;
        indent(&verified);

        println!(
            "\naudit trail: {} ({} records, hash chain verified)\nlatch:       {}\n\
             everything the demo wrote is kept in {} (remove it with rm -r)\n",
            files.audit_log.display(),
            events.len(),
            files.state_file.display(),
            dir.display()
        );
        println!(
            "demo complete in {:.1} s after the build",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Wait for `READY=1` from the daemon, showing its STATUS= lines.
    fn wait_ready(&mut self, notify: &UnixDatagram) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut buffer = [0u8; 4096];
        loop {
            self.check_daemon_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "the daemon sent no READY=1 within {} s",
                    READY_TIMEOUT.as_secs()
                );
            }
            let Ok(len) = notify.recv(&mut buffer) else {
                continue; // read timeout: look again
            };
            let message = String::from_utf8_lossy(&buffer[..len]);
            let mut ready = false;
            for line in message.lines() {
                if let Some(status) = line.strip_prefix("STATUS=") {
                    println!("      systemd would show: {status}");
                }
                ready |= line == "READY=1";
            }
            if ready {
                println!("      READY=1: every trigger is live");
                return Ok(());
            }
        }
    }

    /// Print every ConnectionState change until `done` holds, or fail after `timeout`.
    fn watch(
        &mut self,
        sim: &kms_sim::SimHandle,
        mut last: BTreeMap<StoreKey, String>,
        since: Instant,
        timeout: Duration,
        mut done: impl FnMut(&BTreeMap<StoreKey, String>) -> bool,
    ) -> anyhow::Result<BTreeMap<StoreKey, String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = sim_view(sim);
            for (key, state) in &now {
                let before = last.get(key).map(String::as_str).unwrap_or("(absent)");
                if before != state {
                    println!(
                        "      +{:>5.2} s  {}  {:<9}  {}  {:<13} → {}",
                        since.elapsed().as_secs_f64(),
                        key.account,
                        key.region,
                        key.custom_key_store_id,
                        before,
                        state
                    );
                }
            }
            last = now;
            if done(&last) {
                return Ok(last);
            }
            self.check_daemon_alive()?;
            if Instant::now() > deadline {
                let pending: Vec<String> = last
                    .iter()
                    .map(|(key, state)| format!("{} {state}", key.custom_key_store_id))
                    .collect();
                bail!(
                    "not done within {} s; the simulator shows: {}",
                    timeout.as_secs(),
                    pending.join(", ")
                );
            }
            std::thread::sleep(POLL);
        }
    }

    fn check_daemon_alive(&mut self) -> anyhow::Result<()> {
        if let Some(daemon) = self.daemon.as_mut()
            && let Some(status) = daemon.try_wait()?
        {
            self.daemon = None;
            bail!("the daemon exited early with {status}");
        }
        Ok(())
    }

    /// SIGTERM, then wait for the exit; the daemon must exit 0.
    fn stop(&mut self, pid: u32) -> anyhow::Result<ExitStatus> {
        let raw = i32::try_from(pid).context("the daemon's pid")?;
        let pid = rustix::process::Pid::from_raw(raw).context("the daemon's pid is not 0")?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .context("sending SIGTERM to the daemon")?;
        let daemon = self.daemon.as_mut().context("the daemon is not running")?;
        let status = wait_for("the daemon to exit after SIGTERM", STOP_TIMEOUT, || {
            daemon.try_wait().ok().flatten()
        })?;
        self.daemon = None;
        if !status.success() {
            bail!("the daemon exited with {status} after SIGTERM, not 0");
        }
        Ok(status)
    }

    /// On failure: the end of the daemon's log, where its own error is.
    fn show_daemon_log(&self) {
        let Some(path) = &self.daemon_log else { return };
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(30)..];
        eprintln!("\nlast lines of the daemon's log ({}):", path.display());
        for line in tail {
            eprintln!("  {line}");
        }
    }
}

/// The files of one demo run, all under its own directory.
struct DemoFiles {
    policy: PathBuf,
    flag: PathBuf,
    state_file: PathBuf,
    audit_log: PathBuf,
    notify_socket: PathBuf,
    /// Empty AWS config and credentials files: nothing from ~/.aws leaks into the demo.
    aws_config: PathBuf,
}

impl DemoFiles {
    fn create(dir: &Path, endpoint_url: &str) -> anyhow::Result<DemoFiles> {
        let text = DEMO_POLICY
            .replace("${ENDPOINT_URL}", endpoint_url)
            .replace("${DEMO_DIR}", &dir.display().to_string());
        if text.contains("${") {
            bail!("config/demo.yaml has a placeholder the demo does not fill");
        }
        for sub in ["state", "audit"] {
            let path = dir.join(sub);
            std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
        }
        let policy = dir.join("policy.yaml");
        std::fs::write(&policy, text).with_context(|| format!("writing {}", policy.display()))?;
        // The daemon refuses a policy others could change.
        std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o600))?;
        let aws_config = dir.join("aws-config-empty");
        std::fs::write(&aws_config, "")?;
        Ok(DemoFiles {
            policy,
            flag: dir.join("kms-killswitch"),
            state_file: dir.join("state/latch.json"),
            audit_log: dir.join("audit/audit.jsonl"),
            notify_socket: dir.join("notify.sock"),
            aws_config,
        })
    }
}

/// The binary with the demo's policy and a hermetic AWS environment: the demo's credentials
/// (which exist only in kms-sim), no instance metadata probing, nothing from the machine.
fn daemon_command(binary: &Path, files: &DemoFiles) -> Command {
    let mut command = binary::hermetic(binary);
    command
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
        .env("AWS_CONFIG_FILE", &files.aws_config)
        .env("AWS_SHARED_CREDENTIALS_FILE", &files.aws_config)
        .env("RUST_LOG", "warn")
        .arg("--config")
        .arg(&files.policy);
    command
}

/// Run one CLI command to completion within COMMAND_TIMEOUT; its stdout, or an error with its
/// stderr.
fn run_command(binary: &Path, files: &DemoFiles, args: &[&str]) -> anyhow::Result<String> {
    let shown = format!("kms-killswitch {}", args.join(" "));
    let mut child = daemon_command(binary, files)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{shown}`"))?;
    let stdout = child.stdout.take().context("the command's stdout")?;
    let stderr = child.stderr.take().context("the command's stderr")?;
    let out = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let status = match wait_for(&format!("`{shown}`"), COMMAND_TIMEOUT, || {
        child.try_wait().ok().flatten()
    }) {
        Ok(status) => status,
        Err(timeout) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(timeout);
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        bail!("`{shown}` exited with {status}:\n{stdout}{stderr}");
    }
    Ok(stdout)
}

/// The attacker: a plain AWS SDK client with the host's stolen credentials asks KMS to
/// reconnect a store. The kill switch's IAM policy denies this call; an attacker with other
/// credentials is not bound by it, which is why the daemon keeps enforcing.
fn connect_as_attacker(endpoint_url: &str, region: &str, id: &str) -> anyhow::Result<()> {
    use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};

    let config = aws_sdk_kms::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .endpoint_url(endpoint_url)
        .credentials_provider(Credentials::new(
            ACCESS_KEY_ID,
            SECRET_ACCESS_KEY,
            None,
            None,
            "demo-attacker",
        ))
        .build();
    let client = aws_sdk_kms::Client::from_conf(config);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("a runtime for the attacker's request")?;
    runtime
        .block_on(async {
            tokio::time::timeout(
                COMMAND_TIMEOUT,
                client
                    .connect_custom_key_store()
                    .custom_key_store_id(id)
                    .send(),
            )
            .await
        })
        .context("ConnectCustomKeyStore timed out")?
        .map_err(aws_sdk_kms::Error::from)
        .context("ConnectCustomKeyStore")?;
    Ok(())
}

/// A store, as the demo names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct StoreKey {
    account: String,
    region: String,
    custom_key_store_id: String,
}

impl StoreKey {
    fn new(account: &str, region: &str, id: &str) -> StoreKey {
        StoreKey {
            account: account.to_owned(),
            region: region.to_owned(),
            custom_key_store_id: id.to_owned(),
        }
    }
}

/// Every store's ConnectionState as the simulator truly sees it now (no consistency lag).
fn sim_view(sim: &kms_sim::SimHandle) -> BTreeMap<StoreKey, String> {
    let mut view = BTreeMap::new();
    for (account, region) in ACCOUNT_REGIONS {
        for store in sim.key_stores(account, region) {
            view.insert(
                StoreKey::new(account, region, &store.custom_key_store_id),
                store.connection_state,
            );
        }
    }
    view
}

/// The audit log's records, parsed.
fn audit_events(path: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    BufReader::new(file)
        .lines()
        .map(|line| {
            let line = line?;
            serde_json::from_str(&line)
                .with_context(|| format!("{}: a record is not JSON", path.display()))
        })
        .collect()
}

/// Poll `probe` every POLL until it yields, or fail naming `what` after `timeout`.
fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe() {
            return Ok(found);
        }
        if Instant::now() > deadline {
            bail!("gave up waiting for {what} after {} s", timeout.as_secs());
        }
        std::thread::sleep(POLL);
    }
}

fn step(number: u32, what: &str) {
    println!("[{number}/9] {what}");
}

fn indent(text: &str) {
    for line in text.lines() {
        println!("      {line}");
    }
}
