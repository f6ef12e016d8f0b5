//! The invariants the chaos run holds the daemon to, checked while it runs and at the end:
//! while latched no covered store stays CONNECTED (no covered key Enabled) longer than
//! `enforce_interval` + one round once AWS is reachable; never a Disconnect (or DisableKey) while
//! armed and untriggered; every Disconnect / DisableKey the simulator served paired one to one
//! with its `*_requested` record before it and its `*_result` record after it. Owns the
//! bookkeeping and the violations list; it must not inject anything.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kms_sim::{RequestRecord, SimHandle};

use crate::world::{ENFORCE_INTERVAL_S, KEYS, REGION, STORES, VERIFY_TIMEOUT_S};

/// "One round" of enforcement: see a reconnected store, Disconnect it, see it DISCONNECTED
/// (verification gives up after `verify_timeout`, and the next round starts at once).
pub const ROUND: Duration = Duration::from_secs(VERIFY_TIMEOUT_S);
/// `rearm` holds the disconnect lock while it clears the latch, and a lockdown or enforcement
/// round re-reads the latch under that lock: once `rearm` has exited no Disconnect may be sent.
/// This covers the simulator's and the harness's own clocks (the exit is seen ≤ 100 ms late).
pub const REARM_GRACE: Duration = Duration::from_millis(250);

pub fn bound() -> Duration {
    Duration::from_secs(ENFORCE_INTERVAL_S) + ROUND
}

/// One violation, with when (seconds into the run) and what.
#[derive(Debug)]
pub struct Violation {
    pub at_s: f64,
    pub what: String,
}

/// Wall-clock µs spans in which the switch was armed with no trigger injected: (from, until).
pub type ArmedSpans = Vec<(u64, Option<u64>)>;

/// What the checks have seen so far.
#[derive(Default)]
pub struct Checks {
    pub violations: Vec<Violation>,
    /// Since when each covered store (by id) / key has been CONNECTED / Enabled, and whether that
    /// spell has already been reported.
    exposed: BTreeMap<String, (Instant, bool)>,
    /// The exposure nearest its bound while the invariant's clock ran: (exposed, bound).
    pub worst_exposure: (Duration, Duration),
    /// The newest request timestamp looked at (the simulator's log is a bounded ring: an index
    /// into it stops meaning anything once it wraps).
    last_request_us: u64,
    /// Every Disconnect / DisableKey of the binary the simulator served, kept for the end.
    pub served: Vec<RequestRecord>,
}

impl Checks {
    pub fn violate(&mut self, started: Instant, what: String) {
        let at_s = started.elapsed().as_secs_f64();
        eprintln!("VIOLATION at {at_s:.1} s: {what}");
        self.violations.push(Violation { at_s, what });
    }

    /// Sample the simulator's true state. `clock_from`: when the invariant's clock starts (the
    /// latch seen, AWS reachable, the daemon READY: the latest of them), or None while it does not
    /// run; `stretch(since)`: how much 500s and throttling since then stretch the bound.
    pub fn exposure(
        &mut self,
        sim: &SimHandle,
        clock_from: Option<Instant>,
        stretch: impl Fn(Instant) -> f64,
        started: Instant,
    ) {
        let now = Instant::now();
        for (name, state) in exposed_now(sim) {
            let exposed = match state {
                Some(exposed) => exposed,
                None => {
                    self.violate(started, format!("{name} vanished from the simulator"));
                    continue;
                }
            };
            if !exposed {
                self.exposed.remove(&name);
                continue;
            }
            let (since, reported) = *self.exposed.entry(name.clone()).or_insert((now, false));
            let Some(clock_from) = clock_from else {
                continue;
            };
            let from = since.max(clock_from);
            let running = now.saturating_duration_since(from);
            let allowed = bound().mul_f64(stretch(from));
            let (worst, worst_allowed) = self.worst_exposure;
            if running.as_secs_f64() / allowed.as_secs_f64()
                > worst.as_secs_f64() / worst_allowed.as_secs_f64().max(1e-9)
            {
                self.worst_exposure = (running, allowed);
            }
            if running > allowed && !reported {
                self.exposed.insert(name.clone(), (since, true));
                let what = format!(
                    "{name} exposed for {:.1} s while latched with AWS reachable (bound {:.0} s)",
                    running.as_secs_f64(),
                    allowed.as_secs_f64()
                );
                self.violate(started, what);
            }
        }
    }

    /// Look at the requests the simulator served since the last call: a Disconnect or
    /// DisableKey from the binary inside an armed span (past its grace) is a violation, judged
    /// by when the simulator served it.
    pub fn requests(&mut self, sim: &SimHandle, armed: &ArmedSpans, started: Instant) {
        let grace_us = REARM_GRACE.as_micros() as u64;
        let new: Vec<RequestRecord> = sim
            .requests()
            .into_iter()
            .filter(|r| r.ts_us > self.last_request_us)
            .collect();
        self.last_request_us = new
            .iter()
            .map(|r| r.ts_us)
            .max()
            .unwrap_or(self.last_request_us);
        for request in new.into_iter().filter(is_lockdown_call) {
            let span = armed.iter().find(|(from, until)| {
                request.ts_us > from + grace_us && until.is_none_or(|until| request.ts_us < until)
            });
            if let Some((from, _)) = span {
                let what = format!(
                    "{} of {} while armed and untriggered ({:.2} s after the rearm)",
                    request.operation,
                    request.target.as_deref().unwrap_or("?"),
                    (request.ts_us - from) as f64 / 1e6
                );
                self.violate(started, what);
            }
            self.served.push(request);
        }
    }
}

/// Every covered store and key, and whether it is exposed (CONNECTED/CONNECTING; Enabled) now;
/// None if the simulator no longer knows it.
fn exposed_now(sim: &SimHandle) -> Vec<(String, Option<bool>)> {
    let mut now = Vec::new();
    for (account, id) in STORES {
        let state = sim.connection_state(account, REGION, id);
        let exposed = state.map(|s| s == "CONNECTED" || s == "CONNECTING");
        now.push((id.to_owned(), exposed));
    }
    for (account, id) in KEYS {
        let exposed = sim.key_state(account, REGION, id).map(|s| s == "Enabled");
        now.push((id.to_owned(), exposed));
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

/// The audit log's records of one kind of step: (store or key id, wall-clock µs).
#[derive(Default)]
pub struct StepRecords {
    pub requested: Vec<(String, u64)>,
    pub results: Vec<(String, u64)>,
}

pub fn step_records(audit: &str) -> StepRecords {
    let mut records = StepRecords::default();
    for line in audit.lines() {
        let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (list, id) = match record["event"].as_str() {
            Some("disconnect_requested") => (&mut records.requested, &record["key_store_id"]),
            Some("key_disable_requested") => (&mut records.requested, &record["key_id"]),
            Some("disconnect_result") => (&mut records.results, &record["key_store_id"]),
            Some("key_disable_result") => (&mut records.results, &record["key_id"]),
            _ => continue,
        };
        let ts = record["ts"]
            .as_str()
            .and_then(|ts| humantime::parse_rfc3339(ts).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        if let (Some(id), Some(ts)) = (id.as_str(), ts) {
            list.push((id.to_owned(), ts.as_micros() as u64));
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

/// Take the earliest record of `list` for `target` whose time is in `window`.
fn take(list: &mut Vec<(String, u64)>, target: &str, window: (u64, u64)) -> bool {
    let found = list
        .iter()
        .enumerate()
        .filter(|(_, (id, ts))| names(target, id) && (window.0..=window.1).contains(ts))
        .min_by_key(|(_, (_, ts))| *ts)
        .map(|(i, _)| i);
    found.map(|i| list.swap_remove(i)).is_some()
}

/// Pair every served Disconnect / DisableKey one to one with its `*_requested` record (written
/// durably before the send, so at most `SLACK` after the arrival the log stamps, and at most a
/// pacing wait before it) and its `*_result` record (after it, and more than `SLACK` before the
/// next request for the same store or key: one is in flight per store at a time; the records'
/// timestamps are cut to the millisecond). Excused, and counted: a missing `*_requested`
/// record only when `lost_on_full_disk(ts)` (a SIGKILL while the disk was full: the record was
/// held in memory, the send could not wait for it); a missing result also when
/// `killed_before_result(ts)`. Returns (missing, excused).
pub fn unrecorded(
    served: &[RequestRecord],
    mut records: StepRecords,
    lost_on_full_disk: impl Fn(u64) -> bool,
    killed_before_result: impl Fn(u64) -> bool,
) -> (Vec<String>, usize) {
    // Millisecond timestamps in the log; a pacing wait (throttling storms) before the send.
    const SLACK_US: u64 = 1_000;
    const PACING_US: u64 = 120_000_000;
    let mut served: Vec<&RequestRecord> = served.iter().collect();
    served.sort_by_key(|r| r.ts_us);
    let target = |r: &RequestRecord| r.target.clone().unwrap_or_default();
    let (mut missing, mut excused_count) = (Vec::new(), 0);
    for (i, request) in served.iter().enumerate() {
        let (id, ts) = (target(request), request.ts_us);
        let next = served[i + 1..]
            .iter()
            .find(|r| names(&target(r), &id))
            .map_or(ts + PACING_US, |r| r.ts_us.saturating_sub(SLACK_US));
        let requested = take(
            &mut records.requested,
            &id,
            (ts.saturating_sub(PACING_US), ts + SLACK_US),
        );
        // A request whose `*_requested` record is missing is excused or reported already; it
        // must not take the next request's result.
        let result = requested
            && take(
                &mut records.results,
                &id,
                (ts.saturating_sub(SLACK_US), next),
            );
        if requested && result {
            continue;
        }
        if lost_on_full_disk(ts) || (requested && killed_before_result(ts)) {
            excused_count += 1;
            continue;
        }
        let lacking = if requested { "result" } else { "requested" };
        missing.push(format!(
            "{} {id} at {ts} (no {lacking} record)",
            request.operation
        ));
    }
    (missing, excused_count)
}
