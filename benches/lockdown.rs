//! The lockdown benchmark (issue 12): how close a lockdown comes to the floor KMS allows, on a
//! quick and on a slow disk. `cargo bench --bench lockdown`.
//!
//! The real engine, the real audit writer on a real file (in a tempdir) and the real latch write,
//! the real AWS SDK against kms-sim over loopback: 20 ms per request, 500 ms DISCONNECTING →
//! DISCONNECTED, 5 requests/s per account, region and operation with a burst of 5. Scenarios:
//! 1 store; 10 in one account-region; 10 stores + 10 standard keys in one account-region (the keys
//! disabled and verified alongside, on their own DisableKey quota); 500 (50 account-regions × 10,
//! half through AssumeRole); the
//! 500 with 20 % throttling + 5 % HTTP 500s; 5,000 (100 accounts × 5 regions × 10, 99 accounts
//! through AssumeRole). Each at a sync delay of 0, 1 and 5 ms: every fsync of the audit writer and
//! the latch sleeps that long first (through `kms_killswitch::durability`, a seam the shipped
//! binary has no knob for), as a network-attached volume would.
//!
//! The simulator runs in this (parent) process; every run is a child process of this binary (so
//! its peak RSS and CPU time are its own), which builds its clients, warms its credentials, says
//! `ready`, and on `go` writes the latch, records `trigger_fired` and runs the engine's lockdown. The
//! time is trigger → `lockdown_finished` durable. The floor, per account-region: the admission of
//! its last Disconnect under a 5/s bucket of 5, one round trip, the transition, one Describe round
//! trip; the maximum over account-regions.
//!
//! Baselines against the same simulator: the naive loop (disconnect one store, poll it every 1 s
//! until DISCONNECTED, next store; the SDK) at 10 stores and on the first 50 of the 500 (its time
//! is linear in stores: the 500 figure is extrapolated, and says so), and the official AWS CLI
//! doing the same at 10 stores, one process per call as a shell script would (from
//! `target/awscli-venv`, which `sim/tests/it/cli.rs` installs; skipped when absent).
//!
//! Results: a table on stdout and `target/bench/lockdown.json`. Env: `RUNS` scales the runs per
//! scenario (default 1 = 5/5/3/3/1).
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use kms_killswitch::audit::{AuditLog, AuditSink, Event};
use kms_killswitch::aws::{AwsClients, KeyStoreControl};
use kms_killswitch::durability::Durability;
use kms_killswitch::latch::{self, Latch};
use kms_killswitch::lockdown::{Engine, LockdownRequest};
use kms_killswitch::model::{
    ConnectionState, KeySelector, KeySpec, KeyStoreSelector, KeyStoreSpec, LockdownId, Target,
    TriggerSource,
};
use kms_killswitch::policy::{Endpoints, LockdownSettings};
use kms_sim::{FaultRule, Faults, SimHandle, World};
use serde_json::{Value, json};

const ACCESS_KEY: &str = "AKIDKMSSIMBENCH";
const SECRET: &str = "kms-sim-bench-secret";
const BASE_ACCOUNT: &str = "100000000000";
/// Per-request latency the simulator adds (a cross-AZ round trip to KMS).
const LATENCY_MS: u64 = 20;
/// DISCONNECTING → DISCONNECTED.
const TRANSITION_MS: u64 = 500;
const RATE: f64 = 5.0;
const BURST: usize = 5;
/// Before each run, so the simulator's quota buckets refill and nothing is in flight.
const SETTLE: Duration = Duration::from_millis(1500);
const SYNC_DELAYS_MS: [u64; 3] = [0, 1, 5];
const REGIONS: [&str; 25] = [
    "eu-west-1",
    "us-east-1",
    "us-west-2",
    "eu-central-1",
    "ap-southeast-1",
    "us-east-2",
    "us-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-north-1",
    "eu-south-1",
    "eu-central-2",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-south-1",
    "ap-east-1",
    "ca-central-1",
    "sa-east-1",
    "me-south-1",
    "af-south-1",
    "il-central-1",
    "mx-central-1",
];

/// accounts × regions × stores; the first account uses the base credentials, every other one a
/// role in it.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    accounts: usize,
    regions: usize,
    stores: usize,
    /// Standard keys per account-region, disabled alongside the stores (issue 15).
    keys: usize,
    faults: bool,
    runs: usize,
}

const SCENARIOS: [Scenario; 6] = [
    Scenario {
        name: "1 store",
        accounts: 1,
        regions: 1,
        stores: 1,
        keys: 0,
        faults: false,
        runs: 5,
    },
    Scenario {
        name: "10 stores",
        accounts: 1,
        regions: 1,
        stores: 10,
        keys: 0,
        faults: false,
        runs: 5,
    },
    Scenario {
        name: "10 stores + 10 keys",
        accounts: 1,
        regions: 1,
        stores: 10,
        keys: 10,
        faults: false,
        runs: 5,
    },
    Scenario {
        name: "500 stores",
        accounts: 2,
        regions: 25,
        stores: 10,
        keys: 0,
        faults: false,
        runs: 3,
    },
    Scenario {
        name: "500 + faults",
        accounts: 2,
        regions: 25,
        stores: 10,
        keys: 0,
        faults: true,
        runs: 3,
    },
    Scenario {
        name: "5000 stores",
        accounts: 100,
        regions: 5,
        stores: 10,
        keys: 0,
        faults: false,
        runs: 1,
    },
];

impl Scenario {
    fn total(&self) -> usize {
        self.accounts * self.regions * self.stores
    }

    fn by_name(name: &str) -> Scenario {
        *SCENARIOS
            .iter()
            .find(|s| s.name == name)
            .expect("a known scenario")
    }

    /// (account, region, store id, target) of every store.
    fn stores(&self) -> Vec<(String, &'static str, String, Target)> {
        let mut out = Vec::with_capacity(self.total());
        for a in 0..self.accounts {
            for (r, region) in REGIONS.iter().enumerate().take(self.regions) {
                for s in 0..self.stores {
                    out.push((
                        account(a),
                        *region,
                        store_id(a, r, s),
                        Target {
                            region: region.to_string(),
                            role_arn: (a > 0).then(|| role(a)),
                        },
                    ));
                }
            }
        }
        out
    }

    /// (account, region, key id, target) of every standard key.
    fn keys(&self) -> Vec<(String, &'static str, String, Target)> {
        let mut out = Vec::new();
        for a in 0..self.accounts {
            for (r, region) in REGIONS.iter().enumerate().take(self.regions) {
                for k in 0..self.keys {
                    out.push((
                        account(a),
                        *region,
                        key_id(a, r, k),
                        Target {
                            region: region.to_string(),
                            role_arn: (a > 0).then(|| role(a)),
                        },
                    ));
                }
            }
        }
        out
    }

    /// The floor: per account-region, the last Disconnect's admission under a bucket of
    /// `BURST` refilled at `RATE`/s, one round trip, the transition, one Describe round trip;
    /// for keys (their own DisableKey quota), the last DisableKey's admission, one round trip and
    /// one DescribeKey round trip (KMS disables at once). The slower of the two.
    fn floor(&self) -> Duration {
        let last_admission = self.stores.saturating_sub(BURST) as f64 / RATE;
        let stores = Duration::from_secs_f64(last_admission)
            + Duration::from_millis(LATENCY_MS + TRANSITION_MS + LATENCY_MS);
        let keys = match self.keys {
            0 => Duration::ZERO,
            n => {
                Duration::from_secs_f64(n.saturating_sub(BURST) as f64 / RATE)
                    + Duration::from_millis(2 * LATENCY_MS)
            }
        };
        stores.max(keys)
    }

    fn faults(&self) -> Faults {
        Faults {
            rules: vec![FaultRule {
                latency_ms: LATENCY_MS,
                throttle_rate: if self.faults { 0.20 } else { 0.0 },
                internal_error_rate: if self.faults { 0.05 } else { 0.0 },
                operation: None,
                ..FaultRule::default()
            }],
        }
    }
}

fn account(a: usize) -> String {
    format!("{}", 100_000_000_000u64 + a as u64)
}

fn role(a: usize) -> String {
    format!("arn:aws:iam::{}:role/kms-killswitch", account(a))
}

fn key_id(a: usize, r: usize, k: usize) -> String {
    format!("{a:08x}-{r:04x}-4000-8000-{k:012x}")
}

fn store_id(a: usize, r: usize, s: usize) -> String {
    format!("cks-{a:06x}{r:02x}{s:09x}")
}

/// The biggest world (every scenario's stores are a subset of it: same ids, same layout).
fn world() -> World {
    let mut yaml = format!(
        "settings:\n  rate_limit_rps: {RATE}\n  transition_delay_ms: {TRANSITION_MS}\n  consistency_lag_ms: 0\n  session_duration_seconds: 3600\n\
         credentials:\n  - access_key_id: {ACCESS_KEY}\n    secret_access_key: {SECRET}\n    account: \"{BASE_ACCOUNT}\"\n    user_name: bench\n\
         roles:\n"
    );
    let accounts = SCENARIOS.iter().map(|s| s.accounts).max().unwrap_or(1);
    let regions = SCENARIOS.iter().map(|s| s.regions).max().unwrap_or(1);
    let keys = SCENARIOS.iter().map(|s| s.keys).max().unwrap_or(0);
    for a in 1..accounts {
        yaml.push_str(&format!(
            "  - arn: {}\n    assumable_by: [{ACCESS_KEY}]\n",
            role(a)
        ));
    }
    yaml.push_str("accounts:\n");
    for a in 0..accounts {
        yaml.push_str(&format!("  \"{}\":\n", account(a)));
        for (r, region) in REGIONS.iter().enumerate().take(regions) {
            yaml.push_str(&format!("    {region}:\n      key_stores:\n"));
            for s in 0..10 {
                yaml.push_str(&format!(
                    "        - id: {}\n          name: bench-{s}\n          type: EXTERNAL_KEY_STORE\n          connection_state: CONNECTED\n",
                    store_id(a, r, s)
                ));
            }
            if a == 0 && r == 0 && keys > 0 {
                yaml.push_str("      keys:\n");
                for k in 0..keys {
                    yaml.push_str(&format!(
                        "        - id: {}\n          key_state: Enabled\n",
                        key_id(a, r, k)
                    ));
                }
            }
        }
    }
    World::from_yaml_str(&yaml).expect("the benchmark world is valid")
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Every fsync sleeps `delay` first (a slow disk), and is counted.
#[derive(Debug)]
struct SlowDisk {
    delay: Duration,
    syncs: AtomicU64,
}

impl SlowDisk {
    fn wait(&self) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
    }
}

impl Durability for SlowDisk {
    fn sync_data(&self, file: &std::fs::File) -> std::io::Result<()> {
        self.wait();
        file.sync_data()
    }

    fn sync_all(&self, file: &std::fs::File) -> std::io::Result<()> {
        self.wait();
        file.sync_all()
    }
}

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds of this process (user + system, from `/proc/self/stat`, in clock ticks of 10 ms).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the `)`: state is field 0, utime 11, stime 12.
    (ticks(11) + ticks(12)) / 100.0
}

fn loader(region: &str) -> aws_config::ConfigLoader {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .credentials_provider(Credentials::new(ACCESS_KEY, SECRET, None, None, "bench"))
}

async fn clients(endpoint: &str, targets: Vec<Target>) -> Arc<AwsClients> {
    let endpoints = Endpoints {
        all: Some(endpoint.to_owned()),
        ..Endpoints::default()
    };
    let clients = AwsClients::with_loader(loader(REGIONS[0]), &endpoints, targets).await;
    // Set-up, not measured: hundreds of AssumeRole calls at once meet STS's own quota, so warm
    // again (cached sessions stay) until every target has credentials.
    for attempt in 1.. {
        let failed: Vec<_> = clients
            .warm_up()
            .await
            .into_iter()
            .filter_map(|(target, result)| result.err().map(|err| (target, err)))
            .collect();
        match failed.first() {
            None => break,
            Some((target, err)) if attempt >= 30 => {
                panic!("the benchmark credentials for {target:?} fail: {err}")
            }
            Some(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    Arc::new(clients)
}

fn targets(stores: &[(String, &'static str, String, Target)]) -> Vec<Target> {
    let mut targets: Vec<Target> = stores.iter().map(|s| s.3.clone()).collect();
    targets.sort_by(|a, b| (&a.region, &a.role_arn).cmp(&(&b.region, &b.role_arn)));
    targets.dedup();
    targets
}

/// The child: one lockdown of `scenario` at `delay`, after `ready` / `go` on stdin/stdout.
fn child(endpoint: &str, scenario: Scenario, delay: Duration) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let stores = scenario.stores();
    let clients = runtime.block_on(clients(endpoint, targets(&stores)));
    let key_stores: Vec<KeyStoreSpec> = stores
        .iter()
        .map(|(_, _, id, target)| KeyStoreSpec {
            selector: KeyStoreSelector::Id(id.clone()),
            target: target.clone(),
        })
        .collect();
    let keys: Vec<KeySpec> = scenario
        .keys()
        .into_iter()
        .map(|(_, _, id, target)| KeySpec {
            selector: KeySelector::Id(id),
            target,
        })
        .collect();
    let settings = LockdownSettings {
        verify_timeout: Duration::from_secs(120),
        enforce_interval: None,
        rate_limit: 5,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = Arc::new(SlowDisk {
        delay,
        syncs: AtomicU64::new(0),
    });
    let audit_path = dir.path().join("audit/audit.jsonl");
    let audit = AuditLog::open_with(&audit_path, &"0".repeat(64), disk.clone());
    let engine = Engine::new(clients, settings);
    let request = LockdownRequest {
        lockdown_id: "bench".to_owned(),
        key_stores,
        dry_run: false,
    };
    println!("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("go");
    let syncs_before = disk.syncs.load(Ordering::Relaxed);
    let cpu_before = cpu_seconds();

    let t0_us = now_us();
    let started = Instant::now();
    let latch_value = Latch {
        trigger: TriggerSource::Cli,
        fired_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        lockdown_id: LockdownId::new(),
        detail: "bench".to_owned(),
    };
    latch::write_with(&dir.path().join("state/latch.json"), &latch_value, &*disk)
        .expect("the latch is written");
    let report = runtime.block_on(async {
        audit
            .record(Event::TriggerFired {
                source: TriggerSource::Cli,
                detail: json!({"user": "bench", "reason": "bench"}),
                latched: false,
            })
            .queued();
        let sink: &dyn AuditSink = &audit;
        engine.lockdown_with_keys(&request, &keys, sink).await
    });
    let elapsed = started.elapsed();
    let value = json!({
        "t0_us": t0_us,
        "elapsed_ms": elapsed.as_secs_f64() * 1000.0,
        "complete": report.complete(),
        "fsyncs": disk.syncs.load(Ordering::Relaxed) - syncs_before,
        "cpu_s": cpu_seconds() - cpu_before,
        "vmhwm_kb": status_kb("VmHWM:"),
    });
    println!("{value}");
    drop(audit);
    if let Err(err) = kms_killswitch::audit::verify(&audit_path) {
        panic!("the audit log does not verify: {err}");
    }
}

/// One measured run: reset the stores, spawn the child, wait for it to warm up, settle, go.
fn run_once(sim: &SimHandle, scenario: Scenario, delay_ms: u64) -> Value {
    for (account, region, id, _) in scenario.stores() {
        sim.set_connection_state(&account, region, &id, "CONNECTED")
            .expect("store exists");
    }
    for (account, region, id, _) in scenario.keys() {
        sim.set_key_state(&account, region, &id, "Enabled")
            .expect("key exists");
    }
    sim.set_faults(Faults {
        rules: vec![FaultRule {
            latency_ms: LATENCY_MS,
            ..FaultRule::default()
        }],
    });
    let mut child = Command::new(std::env::current_exe().expect("our own path"))
        .args([
            "--child",
            &sim.endpoint_url(),
            scenario.name,
            &delay_ms.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the child starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("ready");
    assert_eq!(line.trim(), "ready", "the child did not start");
    std::thread::sleep(SETTLE);
    sim.set_faults(scenario.faults());
    sim.clear_requests();
    let mut stdin = child.stdin.take().expect("piped");
    writeln!(stdin, "go").expect("go");
    line.clear();
    stdout.read_line(&mut line).expect("the result");
    let status = child.wait().expect("the child exits");
    assert!(status.success(), "the child failed: {status}");
    let mut result: Value = serde_json::from_str(line.trim()).expect("the child's JSON");
    let requests = sim.requests();
    let t0 = result["t0_us"].as_u64().unwrap_or(0);
    let first = requests
        .iter()
        .filter(|r| r.operation == "DisconnectCustomKeyStore")
        .map(|r| r.ts_us)
        .min()
        .unwrap_or(t0);
    result["first_disconnect_ms"] = json!(first.saturating_sub(t0) as f64 / 1000.0);
    result["requests"] = json!(requests.iter().filter(|r| r.service != "sim").count());
    result["throttled"] = json!(
        requests
            .iter()
            .filter(|r| matches!(
                r.error_code.as_deref(),
                Some("ThrottlingException" | "Throttling")
            ))
            .count()
    );
    let mut throttled_by_operation = serde_json::Map::new();
    for r in requests.iter().filter(|r| {
        matches!(
            r.error_code.as_deref(),
            Some("ThrottlingException" | "Throttling")
        )
    }) {
        let count = throttled_by_operation
            .entry(r.operation.clone())
            .or_insert(json!(0));
        *count = json!(count.as_u64().unwrap_or(0) + 1);
    }
    result["throttled_by_operation"] = Value::Object(throttled_by_operation);
    result["server_errors"] = json!(requests.iter().filter(|r| r.status >= 500).count());
    let all_disconnected = scenario.stores().iter().all(|(account, region, id, _)| {
        sim.connection_state(account, region, id).as_deref() == Some("DISCONNECTED")
    });
    // An incomplete lockdown is a result to report, not a reason to stop the benchmark.
    result["complete"] = json!(result["complete"] == json!(true) && all_disconnected);
    if result["complete"] != json!(true) {
        eprintln!("{} did not complete: {result}", scenario.name);
    }
    result
}

/// The throttled responses of all `results`, summed per operation.
fn throttled_by_operation(results: &[Value]) -> Value {
    let mut sum = serde_json::Map::new();
    for result in results {
        if let Some(ops) = result["throttled_by_operation"].as_object() {
            for (op, n) in ops {
                let total = sum.entry(op.clone()).or_insert(json!(0));
                *total = json!(total.as_u64().unwrap_or(0) + n.as_u64().unwrap_or(0));
            }
        }
    }
    Value::Object(sum)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The naive loop over `stores`: disconnect one, poll it every 1 s until DISCONNECTED, next.
fn naive_loop(sim: &SimHandle, runtime: &tokio::runtime::Runtime, stores: usize) -> Duration {
    let scenario = Scenario::by_name("500 stores");
    let stores: Vec<_> = scenario.stores().into_iter().take(stores).collect();
    for (account, region, id, _) in &stores {
        sim.set_connection_state(account, region, id, "CONNECTED")
            .expect("store exists");
    }
    sim.set_faults(scenario.faults());
    let clients = runtime.block_on(clients(&sim.endpoint_url(), targets(&stores)));
    std::thread::sleep(SETTLE);
    let started = Instant::now();
    runtime.block_on(async {
        for (_, _, id, target) in &stores {
            clients
                .disconnect(target, id)
                .await
                .expect("the naive Disconnect is accepted");
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let (page, _) = clients
                    .describe_page(target, None)
                    .await
                    .expect("the naive Describe answers");
                let disconnected = page.iter().any(|s| {
                    &s.custom_key_store_id == id
                        && s.connection_state == ConnectionState::Disconnected
                });
                if disconnected {
                    break;
                }
            }
        }
    });
    started.elapsed()
}

fn aws_cli() -> Option<PathBuf> {
    let aws = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/awscli-venv/bin/aws");
    aws.exists().then_some(aws)
}

/// The same loop as a shell script calling the official AWS CLI, one process per call.
fn cli_loop(sim: &SimHandle, aws: &Path) -> Duration {
    let scenario = Scenario::by_name("10 stores");
    let stores = scenario.stores();
    for (account, region, id, _) in &stores {
        sim.set_connection_state(account, region, id, "CONNECTED")
            .expect("store exists");
    }
    sim.set_faults(scenario.faults());
    let dir = tempfile::tempdir().expect("tempdir");
    let ids: Vec<&str> = stores.iter().map(|s| s.2.as_str()).collect();
    let script = format!(
        "set -e\nfor id in {}; do\n  aws kms disconnect-custom-key-store --custom-key-store-id \"$id\" --endpoint-url \"$EP\" >/dev/null\n  \
         while sleep 1; do\n    state=$(aws kms describe-custom-key-stores --custom-key-store-id \"$id\" --endpoint-url \"$EP\" --query 'CustomKeyStores[0].ConnectionState' --output text)\n    \
         [ \"$state\" = DISCONNECTED ] && break\n  done\ndone\n",
        ids.join(" ")
    );
    let mut cmd = Command::new("sh");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(key);
        }
    }
    let bin = aws.parent().expect("a bin directory");
    cmd.arg("-c")
        .arg(script)
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("HOME", dir.path())
        .env("AWS_CONFIG_FILE", dir.path().join("config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.path().join("credentials"),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_PAGER", "")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_REGION", REGIONS[0])
        .env("AWS_DEFAULT_REGION", REGIONS[0])
        .env("EP", sim.endpoint_url());
    std::thread::sleep(SETTLE);
    let started = Instant::now();
    let status = cmd.status().expect("sh runs");
    let elapsed = started.elapsed();
    assert!(status.success(), "the AWS CLI script failed: {status}");
    elapsed
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let delay = args[4].parse().expect("a delay in ms");
        child(
            &args[2],
            Scenario::by_name(&args[3]),
            Duration::from_millis(delay),
        );
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: then run a short smoke.
    let benching = args.iter().any(|a| a == "--bench");
    let scale: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let sim = kms_sim::spawn(world()).expect("kms-sim starts");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "lockdown: {LATENCY_MS} ms per request, {TRANSITION_MS} ms transition, quota {RATE}/s burst {BURST}; load average {}",
        load.trim()
    );

    let mut rows = Vec::new();
    let delays: &[u64] = if benching { &SYNC_DELAYS_MS } else { &[1] };
    for scenario in selected_scenarios(benching) {
        for &delay in delays {
            let runs = if benching { scenario.runs * scale } else { 1 };
            rows.push(measure(&sim, scenario, delay, runs));
        }
    }
    let baselines = baselines(&sim, &runtime, benching);
    let ours = |name: &str| -> f64 {
        rows.iter()
            .filter(|r| r["scenario"] == name)
            .filter_map(|r| r["elapsed_ms"].as_f64())
            .fold(0.0, f64::max)
    };
    print_table(&rows, &baselines, &ours);
    write_results(&load, rows, baselines);
}

/// The scenarios to run: all (or those `SCENARIOS=10,500` names) under `cargo bench`, the first
/// two for the smoke run.
fn selected_scenarios(benching: bool) -> Vec<Scenario> {
    if !benching {
        return SCENARIOS[..2].to_vec();
    }
    let only = std::env::var("SCENARIOS").ok();
    SCENARIOS
        .iter()
        .filter(|s| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|n| n == s.name))
        })
        .copied()
        .collect()
}

/// `runs` lockdowns of one scenario at one sync delay: the row of medians (printed too).
fn measure(sim: &SimHandle, scenario: Scenario, delay: u64, runs: usize) -> Value {
    let results: Vec<Value> = (0..runs).map(|_| run_once(sim, scenario, delay)).collect();
    let pick = |key: &str| -> Vec<f64> {
        results
            .iter()
            .map(|r| r[key].as_f64().unwrap_or(0.0))
            .collect()
    };
    let elapsed = median(pick("elapsed_ms"));
    let floor = scenario.floor().as_secs_f64() * 1000.0;
    let row = json!({
        "scenario": scenario.name,
        "stores": scenario.total(),
        "sync_delay_ms": delay,
        "runs": runs,
        "elapsed_ms": elapsed,
        "elapsed_ms_max": pick("elapsed_ms").into_iter().fold(0.0, f64::max),
        "floor_ms": floor,
        "ratio": elapsed / floor,
        "first_disconnect_ms": median(pick("first_disconnect_ms")),
        "first_disconnect_ms_max": pick("first_disconnect_ms").into_iter().fold(0.0, f64::max),
        "requests": median(pick("requests")),
        "throttled": pick("throttled").into_iter().sum::<f64>(),
        "throttled_by_operation": throttled_by_operation(&results),
        "server_errors": pick("server_errors").into_iter().sum::<f64>(),
        "fsyncs": median(pick("fsyncs")),
        "peak_rss_mb": pick("vmhwm_kb").into_iter().fold(0.0, f64::max) / 1024.0,
        "cpu_s": median(pick("cpu_s")),
        "incomplete_runs": results.iter().filter(|r| r["complete"] != json!(true)).count(),
    });
    print_row(&row, scenario, delay, runs);
    row
}

fn print_row(row: &Value, scenario: Scenario, delay: u64, runs: usize) {
    let elapsed = row["elapsed_ms"].as_f64().unwrap_or(0.0);
    let floor = row["floor_ms"].as_f64().unwrap_or(1.0);
    println!(
        "  {:<13} sync {delay} ms: {:>7.0} ms (floor {floor:.0}, ratio {:.2}), first Disconnect {:.1} ms, {} requests, {} throttled, {} fsyncs, {:.1} MB, {:.2} CPU s",
        scenario.name,
        elapsed,
        elapsed / floor,
        row["first_disconnect_ms"].as_f64().unwrap_or(0.0),
        row["requests"],
        row["throttled"],
        row["fsyncs"],
        row["peak_rss_mb"].as_f64().unwrap_or(0.0),
        row["cpu_s"].as_f64().unwrap_or(0.0),
    );
    if row["throttled"] != json!(0.0) {
        println!(
            "  {:<13} sync {delay} ms: throttled (all runs) by operation: {}",
            scenario.name, row["throttled_by_operation"]
        );
    }
    if row["incomplete_runs"] != json!(0) {
        println!(
            "  {:<13} sync {delay} ms: {} of {runs} runs INCOMPLETE (not every store verified by verify_timeout)",
            scenario.name, row["incomplete_runs"]
        );
    }
}

/// The alternatives: a naive Disconnect loop (10 stores; 50, and 500 extrapolated, under `cargo
/// bench`) and the AWS CLI (10 stores) when installed.
fn baselines(
    sim: &SimHandle,
    runtime: &tokio::runtime::Runtime,
    benching: bool,
) -> serde_json::Map<String, Value> {
    let mut baselines = serde_json::Map::new();
    let naive_10 = naive_loop(sim, runtime, 10);
    baselines.insert("naive_10_ms".into(), json!(naive_10.as_secs_f64() * 1000.0));
    if benching {
        let naive_50 = naive_loop(sim, runtime, 50);
        baselines.insert("naive_50_ms".into(), json!(naive_50.as_secs_f64() * 1000.0));
        baselines.insert(
            "naive_500_ms_extrapolated".into(),
            json!(naive_50.as_secs_f64() * 1000.0 * 10.0),
        );
    }
    match aws_cli() {
        Some(aws) => {
            let cli = cli_loop(sim, &aws);
            baselines.insert("aws_cli_10_ms".into(), json!(cli.as_secs_f64() * 1000.0));
        }
        None => println!("  AWS CLI baseline skipped: AWS CLI not installed (target/awscli-venv)"),
    }
    baselines
}

/// target/bench/lockdown.json: the load, every row and the baselines.
fn write_results(load: &str, rows: Vec<Value>, baselines: serde_json::Map<String, Value>) {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).expect("target/bench");
    let doc = json!({
        "load_average": load.trim(),
        "scenarios": rows,
        "baselines": baselines,
    });
    std::fs::write(
        out.join("lockdown.json"),
        serde_json::to_string_pretty(&doc).expect("json"),
    )
    .expect("write target/bench/lockdown.json");
    println!(
        "lockdown: results in {}",
        out.join("lockdown.json").display()
    );
}

fn print_table(
    rows: &[Value],
    baselines: &serde_json::Map<String, Value>,
    ours: &dyn Fn(&str) -> f64,
) {
    println!();
    println!(
        "| scenario | sync delay | trigger → finished | floor | ratio | first Disconnect | requests | throttled | fsyncs | peak RSS | CPU |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} ms | {:.0} ms | {:.0} ms | {:.2} | {:.1} ms | {} | {} | {} | {:.1} MB | {:.2} s |",
            r["scenario"].as_str().unwrap_or(""),
            r["sync_delay_ms"],
            r["elapsed_ms"].as_f64().unwrap_or(0.0),
            r["floor_ms"].as_f64().unwrap_or(0.0),
            r["ratio"].as_f64().unwrap_or(0.0),
            r["first_disconnect_ms"].as_f64().unwrap_or(0.0),
            r["requests"],
            r["throttled"],
            r["fsyncs"],
            r["peak_rss_mb"].as_f64().unwrap_or(0.0),
            r["cpu_s"].as_f64().unwrap_or(0.0),
        );
    }
    println!();
    let speedup = |baseline: &str, scenario: &str, label: &str| {
        if let Some(ms) = baselines.get(baseline).and_then(Value::as_f64) {
            let worst = ours(scenario);
            println!(
                "{label}: {ms:.0} ms; kms-killswitch (slowest sync delay) {worst:.0} ms: {:.1}× faster",
                ms / worst
            );
        }
    };
    speedup("naive_10_ms", "10 stores", "naive loop, 10 stores (SDK)");
    speedup(
        "naive_500_ms_extrapolated",
        "500 stores",
        "naive loop, 500 stores (SDK, 10 × the first 50)",
    );
    speedup("aws_cli_10_ms", "10 stores", "AWS CLI script, 10 stores");
}
