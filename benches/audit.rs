//! How long one audit record takes (build, flock, append, fdatasync): 1000 records appended to a
//! fresh log, p50/p99/max. `cargo bench --bench audit`; set AUDIT_BENCH_DIR to measure on the
//! filesystem the daemon will use (default: a temporary directory).
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use kms_killswitch::audit::{AuditLog, Event};

/// Enough records for a stable p99.
const RECORDS: usize = 1000;

fn main() {
    let dir = match std::env::var_os("AUDIT_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("a temporary directory for the benchmark log");
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path, &"0".repeat(64));
    let mut samples: Vec<Duration> = (0..RECORDS)
        .map(|i| {
            let event = Event::DriftDetected {
                key_store_id: format!("cks-{i:017}"),
                region: "eu-west-1".into(),
                connection_state: "CONNECTED".into(),
            };
            let started = Instant::now();
            log.record_blocking(event);
            started.elapsed()
        })
        .collect();
    assert!(log.healthy(), "every record was written");
    let summary = kms_killswitch::audit::verify(&path).expect("the benchmark log verifies");
    assert_eq!(summary.records as usize, RECORDS);
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "audit record (write+fdatasync) in {}: n={RECORDS} p50={:?} p99={:?} max={:?}",
        dir.path().display(),
        at(0.50),
        at(0.99),
        samples[samples.len() - 1]
    );
}
