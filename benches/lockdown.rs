//! The lockdown scenario (issue 4): 10 custom key stores in one account and region, KMS answering
//! in 20 ms and taking 500 ms from DISCONNECTING to DISCONNECTED, with the real 5 requests/s
//! quota. Measures, per run, the time from the start of the lockdown to every store verified
//! DISCONNECTED, and the requests KMS throttled (target: 0). The real engine and AWS SDK against
//! the in-process kms-sim over loopback HTTP. `cargo bench --bench lockdown`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use kms_killswitch::audit::{AuditSink, Event};
use kms_killswitch::aws::AwsClients;
use kms_killswitch::lockdown::{Engine, LockdownRequest};
use kms_killswitch::model::{KeyStoreSelector, KeyStoreSpec, Target};
use kms_killswitch::policy::{Endpoints, LockdownSettings};
use kms_sim::{FaultRule, Faults, World};

/// Runs measured (each a fresh engine, as a `trip` from the shell would be).
const RUNS: usize = 7;
const STORES: usize = 10;
const ACCOUNT: &str = "111111111111";
const REGION: &str = "eu-west-1";
/// Per-request latency the simulator adds (a cross-AZ round trip to KMS).
const LATENCY_MS: u64 = 20;
/// DISCONNECTING → DISCONNECTED.
const TRANSITION_MS: u64 = 500;
/// Between runs, so both the simulator's quota buckets and the stores' transitions settle.
const SETTLE: Duration = Duration::from_millis(1500);

/// Audit records are not part of this measurement (see `cargo bench --bench audit`).
struct Discard;

impl AuditSink for Discard {
    fn record(&self, _event: Event) {}
}

fn store_id(n: usize) -> String {
    format!("cks-b{n:016x}")
}

fn world() -> World {
    let mut yaml = format!(
        "settings:\n  rate_limit_rps: 5\n  transition_delay_ms: {TRANSITION_MS}\n  consistency_lag_ms: 0\n\
         credentials:\n  - access_key_id: AKIDKMSSIMBENCH\n    secret_access_key: kms-sim-bench-secret\n    account: \"{ACCOUNT}\"\n\
         accounts:\n  \"{ACCOUNT}\":\n    {REGION}:\n      key_stores:\n"
    );
    for n in 0..STORES {
        yaml.push_str(&format!(
            "        - id: {}\n          name: bench-{n}\n          type: EXTERNAL_KEY_STORE\n          connection_state: CONNECTED\n",
            store_id(n)
        ));
    }
    World::from_yaml_str(&yaml).expect("the benchmark world is valid")
}

fn main() {
    let sim = kms_sim::spawn(world()).expect("kms-sim starts");
    sim.set_faults(Faults {
        rules: vec![FaultRule {
            latency_ms: LATENCY_MS,
            ..FaultRule::default()
        }],
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let target = Target {
        region: REGION.to_string(),
        role_arn: None,
    };
    let endpoints = Endpoints {
        all: Some(sim.endpoint_url()),
        ..Endpoints::default()
    };
    let clients = runtime.block_on(async {
        let loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new(
                "AKIDKMSSIMBENCH",
                "kms-sim-bench-secret",
                None,
                None,
                "bench",
            ));
        let clients = AwsClients::with_loader(loader, &endpoints, [target.clone()]).await;
        for (_, result) in clients.warm_up().await {
            result.expect("the benchmark credentials work");
        }
        Arc::new(clients)
    });
    let key_stores: Vec<KeyStoreSpec> = (0..STORES)
        .map(|n| KeyStoreSpec {
            selector: KeyStoreSelector::Id(store_id(n)),
            target: target.clone(),
        })
        .collect();
    let settings = LockdownSettings {
        verify_timeout: Duration::from_secs(60),
        enforce_interval: None,
        rate_limit: 5,
    };

    println!(
        "lockdown: {STORES} stores in one account-region, {LATENCY_MS} ms latency, {TRANSITION_MS} ms transition, quota 5/s"
    );
    let mut times = Vec::with_capacity(RUNS);
    let mut throttled_total = 0;
    for run in 0..RUNS {
        for n in 0..STORES {
            sim.set_connection_state(ACCOUNT, REGION, &store_id(n), "CONNECTED")
                .expect("store exists");
        }
        std::thread::sleep(SETTLE);
        sim.clear_requests();
        let engine = Engine::new(clients.clone(), settings);
        let request = LockdownRequest {
            lockdown_id: format!("bench-{run}"),
            key_stores: key_stores.clone(),
            dry_run: false,
        };
        let started = Instant::now();
        let report = runtime.block_on(engine.lockdown(&request, &Discard));
        let elapsed = started.elapsed();

        let requests = sim.requests();
        let count = |operation: &str| requests.iter().filter(|r| r.operation == operation).count();
        let throttled = requests
            .iter()
            .filter(|r| r.error_code.as_deref() == Some("ThrottlingException"))
            .count();
        let all_disconnected = (0..STORES).all(|n| {
            sim.connection_state(ACCOUNT, REGION, &store_id(n))
                .as_deref()
                == Some("DISCONNECTED")
        });
        assert!(
            report.complete() && all_disconnected,
            "run {run} did not complete: {report:#?}"
        );
        println!(
            "  run {run}: complete in {:>5} ms; Disconnect {:>2}, Describe {:>2}, throttled {throttled}",
            elapsed.as_millis(),
            count("DisconnectCustomKeyStore"),
            count("DescribeCustomKeyStores"),
        );
        times.push(elapsed);
        throttled_total += throttled;
    }
    times.sort();
    println!(
        "lockdown: start to complete min {} ms, median {} ms, max {} ms over {RUNS} runs; throttled requests {throttled_total} (target 0)",
        times[0].as_millis(),
        times[RUNS / 2].as_millis(),
        times[RUNS - 1].as_millis()
    );
}
