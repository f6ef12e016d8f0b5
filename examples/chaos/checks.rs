//! The invariants the chaos run holds the daemon to, checked while it runs and at the end:
//! while latched no covered store stays CONNECTED (no covered key Enabled) longer than
//! `enforce_interval` + one round once AWS is reachable; never a Disconnect (or DisableKey) while
//! armed and untriggered; no request the simulator served without its audit record. Owns the
//! bookkeeping and the violations list; it must not inject anything.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kms_sim::{RequestRecord, SimHandle};

use crate::world::{ENFORCE_INTERVAL_S, KEYS, REGION, STORES, VERIFY_TIMEOUT_S};

/// "One round" of enforcement: see a reconnected store, Disconnect it, see it DISCONNECTED
/// (verification gives up after `verify_timeout`, and the next round starts at once).
pub const ROUND: Duration = Duration::from_secs(VERIFY_TIMEOUT_S);
/// A running daemon is armed again within a second of a `rearm` (DESIGN §4).
pub const REARM_GRACE: Duration = Duration::from_secs(1);

pub fn bound() -> Duration {
    Duration::from_secs(ENFORCE_INTERVAL_S) + ROUND
}

/// One violation, with when (seconds into the run) and what.
#[derive(Debug)]
pub struct Violation {
    pub at_s: f64,
    pub what: String,
}

/// What the checks have seen so far.
#[derive(Default)]
pub struct Checks {
    pub violations: Vec<Violation>,
    /// Since when each covered store (by id) / key has been CONNECTED / Enabled, and whether that
    /// spell has already been reported.
    exposed: BTreeMap<String, (Instant, bool)>,
    /// The longest a covered resource stayed exposed while the invariant's clock ran.
    pub worst_exposure: Duration,
    /// How many requests of the log have been looked at by [`Checks::requests`].
    seen_requests: usize,
    pub disconnects_seen: usize,
}

impl Checks {
    pub fn violate(&mut self, started: Instant, what: String) {
        let at_s = started.elapsed().as_secs_f64();
        eprintln!("VIOLATION at {at_s:.1} s: {what}");
        self.violations.push(Violation { at_s, what });
    }

    /// Sample the simulator's true state. `clock_from`: when the invariant's clock starts (the
    /// latch seen, AWS calm, the daemon READY: the latest of them), or None while it does not run.
    pub fn exposure(&mut self, sim: &SimHandle, clock_from: Option<Instant>, started: Instant) {
        let now = Instant::now();
        for (name, exposed) in exposed_now(sim) {
            if !exposed {
                self.exposed.remove(&name);
                continue;
            }
            let (since, reported) = *self.exposed.entry(name.clone()).or_insert((now, false));
            let Some(clock_from) = clock_from else {
                continue;
            };
            let running = now.saturating_duration_since(since.max(clock_from));
            self.worst_exposure = self.worst_exposure.max(running);
            if running > bound() && !reported {
                self.exposed.insert(name.clone(), (since, true));
                let what = format!(
                    "{name} exposed for {:.1} s while latched with AWS reachable (bound {} s)",
                    running.as_secs_f64(),
                    bound().as_secs()
                );
                self.violate(started, what);
            }
        }
    }

    /// Look at the requests the simulator served since the last call: a Disconnect or
    /// DisableKey from the binary while armed and untriggered is a violation. `armed_since_us`:
    /// wall-clock µs of the last successful `rearm` with no trigger injected since.
    pub fn requests(&mut self, sim: &SimHandle, armed_since_us: Option<u64>, started: Instant) {
        let log = sim.requests();
        let new = log.get(self.seen_requests..).unwrap_or_default().to_vec();
        self.seen_requests = log.len();
        let grace_us = REARM_GRACE.as_micros() as u64;
        for request in new.iter().filter(|r| is_lockdown_call(r)) {
            self.disconnects_seen += 1;
            if let Some(armed) = armed_since_us
                && request.ts_us > armed + grace_us
            {
                let what = format!(
                    "{} of {} while armed and untriggered ({:.1} s after the rearm)",
                    request.operation,
                    request.target.as_deref().unwrap_or("?"),
                    (request.ts_us - armed) as f64 / 1e6
                );
                self.violate(started, what);
            }
        }
    }
}

/// Every covered store and key, and whether it is exposed (CONNECTED/CONNECTING; Enabled) now.
fn exposed_now(sim: &SimHandle) -> Vec<(String, bool)> {
    let mut now = Vec::new();
    for (account, id) in STORES {
        let state = sim
            .connection_state(account, REGION, id)
            .unwrap_or_default();
        now.push((id.to_owned(), state == "CONNECTED" || state == "CONNECTING"));
    }
    for (account, id) in KEYS {
        let state = sim.key_state(account, REGION, id).unwrap_or_default();
        now.push((id.to_owned(), state == "Enabled"));
    }
    now
}

/// A request of the binary that disconnects a store or disables a key.
pub fn is_lockdown_call(request: &RequestRecord) -> bool {
    request.app.as_deref() == Some("kms-killswitch")
        && matches!(
            request.operation.as_str(),
            "DisconnectCustomKeyStore" | "DisableKey"
        )
}

/// The `*_requested` records of the audit log: (store or key id, wall-clock µs).
pub fn requested_records(audit: &str) -> Vec<(String, u64)> {
    let mut records = Vec::new();
    for line in audit.lines() {
        let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let id = match record["event"].as_str() {
            Some("disconnect_requested") => record["key_store_id"].as_str(),
            Some("key_disable_requested") => record["key_id"].as_str(),
            _ => None,
        };
        let ts = record["ts"]
            .as_str()
            .and_then(|ts| humantime::parse_rfc3339(ts).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        if let (Some(id), Some(ts)) = (id, ts) {
            records.push((id.to_owned(), ts.as_micros() as u64));
        }
    }
    records
}

/// Whether a request's target and a record's id name the same store or key: ids, key ARNs,
/// aliases and alias ARNs compare by their last `/`-part.
fn names(target: &str, id: &str) -> bool {
    fn last(name: &str) -> &str {
        name.rsplit_once('/').map_or(name, |(_, last)| last)
    }
    last(target) == last(id)
}

/// Every Disconnect / DisableKey the simulator served must have its `*_requested` record
/// written before it (the record is durable before the send). `excused(ts)`: a request whose
/// record may be lost because the daemon was SIGKILLed while the audit disk was full. Returns
/// (missing, excused).
pub fn unrecorded(
    requests: &[RequestRecord],
    records: &[(String, u64)],
    excused: impl Fn(u64) -> bool,
) -> (Vec<String>, usize) {
    // Millisecond timestamps in the log: a record made in the same millisecond counts.
    const SLACK_US: u64 = 1_000;
    let mut missing = Vec::new();
    let mut excused_count = 0;
    for request in requests.iter().filter(|r| is_lockdown_call(r)) {
        let target = request.target.as_deref().unwrap_or("");
        let recorded = records
            .iter()
            .any(|(id, ts)| names(target, id) && *ts <= request.ts_us + SLACK_US);
        if recorded {
            continue;
        }
        if excused(request.ts_us) {
            excused_count += 1;
        } else {
            missing.push(format!(
                "{} {target} at {}",
                request.operation, request.ts_us
            ));
        }
    }
    (missing, excused_count)
}
