//! `kms-killswitch trip [--reason TEXT] [--dry-run] [--again]`: lock down now from a shell, with
//! or without the daemon. Writes the latch (create-new) before the first Disconnect (unless a dry
//! run), records `trigger_fired {source: cli}`, runs the engine to verification, prints one line
//! per store and exits 0 only when every store is verified DISCONNECTED (1 otherwise, or when the
//! audit log could not be written). A dry run resolves and describes only and sends no
//! Disconnect. When the switch is already latched (another trigger won), the trip records
//! `latched: true` and starts no second lockdown unless `--again`: it only describes the stores
//! (exit 0 when all are DISCONNECTED). It holds the disconnect lock (`crate::latch`) while it
//! sends Disconnects, so a `rearm` refuses meanwhile.

use std::io::IsTerminal;
use std::sync::Arc;

use clap::Args;
use serde_json::json;

use crate::audit::{AuditLog, Event};
use crate::cmd::{Context, Exit, engine, runtime, table};
use crate::latch::{self, Latch};
use crate::lockdown::{LockdownError, LockdownReport, ProgressEvent, ProgressStep};
use crate::model::{ConnectionState, LockdownId, TriggerSource};
use crate::policy::Policy;
use crate::switch::{self, Latching};

#[derive(Debug, Args)]
pub struct TripArgs {
    /// Why the switch is being pulled (recorded in the audit log and the latch).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Resolve and describe the stores and show what would be disconnected; send no Disconnect.
    #[arg(long)]
    pub dry_run: bool,
    /// Lock down even if the switch is already latched. Without it, a trip while latched starts
    /// no second lockdown: it says so and checks the stores (exit 0 if all are DISCONNECTED).
    #[arg(long, conflicts_with = "dry_run")]
    pub again: bool,
}

pub fn run(ctx: &Context, args: &TripArgs) -> anyhow::Result<Exit> {
    let policy = ctx.load_policy()?;
    let audit = AuditLog::open(&policy.audit_log, &policy.sha256);
    let trip = if args.dry_run {
        dry_run_trip(&policy, &audit, args)
    } else {
        fire(&policy, &audit, args)
    };
    let mut exit = if trip.latch_unwritten {
        Exit::Incomplete
    } else {
        Exit::Success
    };

    if let Some(existing) = &trip.existing {
        if !args.again {
            drop(trip.disconnect_lock);
            return already_latched(&policy, &audit, existing);
        }
        println!(
            "already latched by lockdown {}: locking down again as requested (--again)",
            existing.lockdown_id
        );
    }

    let request = switch::lockdown_request(&policy, trip.lockdown_id, args.dry_run);
    let report = runtime()?.block_on(async {
        let mut engine = engine(&policy).await;
        if std::io::stderr().is_terminal() {
            engine = engine.with_progress(Arc::new(print_progress));
        }
        engine
            .lockdown_with_keys(&request, &policy.keys, &audit)
            .await
    });

    print!("{}", report_table(&report));
    if !report.keys.is_empty() {
        println!();
        print!("{}", key_table(&report));
    }
    println!("{}", summary(&report));
    for store in &report.stores {
        if let Some(stale) = &store.stale_id {
            println!(
                "note: {} was renamed during the lockdown: {stale} was sent a Disconnect before the name moved to {}; reconnect {stale} through AWS if it should not stay disconnected",
                store.spec.selector,
                store.custom_key_store_id.as_deref().unwrap_or("no store"),
            );
        }
    }
    if !report.dry_run && !report.complete() {
        exit = Exit::Incomplete;
    }
    if report.dry_run && report.stores.iter().any(|s| s.error.is_some()) {
        exit = Exit::Incomplete;
    }
    if !audit.flush() || !audit.healthy() {
        eprintln!(
            "kms-killswitch: ERROR: the audit log {} could not be written ({} records held in memory are lost when this process exits); the lockdown itself is as reported above",
            policy.audit_log.display(),
            audit.unflushed()
        );
        exit = Exit::Incomplete;
    }
    Ok(exit)
}

/// How this trip started.
struct Trip {
    lockdown_id: LockdownId,
    /// Held until this trip's lockdown ends: `rearm` refuses while it is held, so no Disconnect
    /// of this trip follows an accepted rearm (see `crate::latch`).
    disconnect_lock: Option<latch::DisconnectLock>,
    /// The latch that was there first, if any: then this trip starts no second lockdown.
    existing: Option<Latch>,
    /// Our latch could not be written (the lockdown goes ahead; the exit says so).
    latch_unwritten: bool,
}

/// What `trip` records in `trigger_fired`.
fn trigger_detail(args: &TripArgs, user: &str) -> serde_json::Value {
    let reason = args.reason.clone().unwrap_or_default();
    json!({ "user": user, "reason": reason, "dry_run": args.dry_run, "again": args.again })
}

/// A dry run fires nothing: no latch, only the record that it was asked for.
fn dry_run_trip(policy: &Policy, audit: &AuditLog, args: &TripArgs) -> Trip {
    // A latch we cannot read is treated as latched: never lose an earlier lockdown's record.
    let latched = match latch::read(&policy.state_file) {
        Ok(latch) => latch.is_some(),
        Err(err) => {
            eprintln!("kms-killswitch: warning: {:#}", anyhow::Error::new(err));
            true
        }
    };
    audit.record_blocking(Event::TriggerFired {
        source: TriggerSource::Cli,
        detail: trigger_detail(args, &switch::operator()),
        latched,
    });
    Trip {
        lockdown_id: LockdownId::new(),
        disconnect_lock: None,
        existing: None,
        latch_unwritten: false,
    }
}

/// The disconnect lock, then [`switch::fire`]: the latch before `trigger_fired`.
fn fire(policy: &Policy, audit: &AuditLog, args: &TripArgs) -> Trip {
    let disconnect_lock = match latch::lock_for_disconnects(&policy.state_file) {
        Ok(lock) => Some(lock),
        Err(err) => {
            eprintln!("kms-killswitch: warning: {:#}", anyhow::Error::new(err));
            None
        }
    };
    let user = switch::operator();
    let latch_detail = match args.reason.as_deref().unwrap_or_default() {
        "" => format!("trip by {user}"),
        reason => format!("trip by {user}: {reason}"),
    };
    let detail = trigger_detail(args, &user);
    let fired = switch::fire(
        &policy.state_file,
        audit,
        TriggerSource::Cli,
        detail,
        latch_detail,
    );
    let mut trip = Trip {
        lockdown_id: fired.latch.lockdown_id,
        disconnect_lock,
        existing: None,
        latch_unwritten: false,
    };
    match fired.latching {
        Latching::Written | Latching::Vanished => {}
        Latching::AlreadyLatched(found) => trip.existing = Some(found),
        // Not a latch we can trust to be in force: lock down (fail closed).
        Latching::Unreadable(err) => eprintln!(
            "kms-killswitch: warning: {:#}; locking down",
            anyhow::Error::new(err)
        ),
        // The lockdown goes ahead even so: a human asked for it in an emergency.
        Latching::Unwritten(err) => {
            eprintln!(
                "kms-killswitch: ERROR: {:#}; locking down anyway",
                anyhow::Error::new(err)
            );
            trip.latch_unwritten = true;
        }
    }
    trip
}

/// Between two looks at KMS while another lockdown holds the latch: well inside the Describe
/// quota (5/s per account and region), which that lockdown's verification shares.
const LATCHED_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Stores KMS reports DISCONNECTED.
fn count_disconnected(statuses: &[crate::lockdown::StoreStatus]) -> usize {
    statuses
        .iter()
        .filter(|s| {
            s.key_store
                .as_ref()
                .is_some_and(|k| k.connection_state == ConnectionState::Disconnected)
        })
        .count()
}

/// A trip while latched, without `--again`: no Disconnect, only looks at what KMS reports; while
/// the latch holder's lockdown is in flight (it holds the disconnect lock), again every
/// [`LATCHED_POLL`] until every store is DISCONNECTED, at most `verify_timeout`. Exit 0 when
/// every store is DISCONNECTED (what `trip` promises), 1 otherwise (a running daemon keeps
/// enforcing).
fn already_latched(policy: &Policy, audit: &AuditLog, existing: &Latch) -> anyhow::Result<Exit> {
    println!(
        "already latched: lockdown {} fired {} by {} ({}); no second lockdown (`kms-killswitch trip --again` sends the Disconnects again)",
        existing.lockdown_id, existing.fired_at, existing.trigger, existing.detail
    );
    // While the latch holder (the daemon or another trip) is still locking down, wait for what
    // it does, as a trip waits for its own verification (up to verify_timeout), sending nothing.
    let deadline = std::time::Instant::now() + policy.lockdown.verify_timeout;
    let statuses = runtime()?.block_on(async {
        let engine = engine(policy).await;
        loop {
            let statuses = engine.describe(&policy.key_stores).await;
            if count_disconnected(&statuses) == statuses.len()
                || !latch::disconnects_in_flight(&policy.state_file)
                || std::time::Instant::now() + LATCHED_POLL >= deadline
            {
                return statuses;
            }
            tokio::time::sleep(LATCHED_POLL).await;
        }
    });
    let disconnected = count_disconnected(&statuses);
    let total = statuses.len();
    let mut exit = Exit::Success;
    if disconnected == total {
        println!("{disconnected}/{total} key stores DISCONNECTED as KMS reports now");
    } else {
        println!(
            "only {disconnected}/{total} key stores DISCONNECTED as KMS reports now: a running daemon keeps enforcing; `kms-killswitch status` shows each store"
        );
        exit = Exit::Incomplete;
    }
    if !audit.flush() || !audit.healthy() {
        eprintln!(
            "kms-killswitch: ERROR: the audit log {} could not be written",
            policy.audit_log.display()
        );
        exit = Exit::Incomplete;
    }
    Ok(exit)
}

/// A live line per step of a store, for an operator watching a terminal.
fn print_progress(event: &ProgressEvent) {
    let step = match &event.step {
        ProgressStep::DisconnectRequested { attempt } => {
            format!("disconnect requested (attempt {attempt})")
        }
        ProgressStep::Accepted => "disconnect accepted".to_string(),
        ProgressStep::AlreadyDisconnected => "already disconnecting or disconnected".to_string(),
        ProgressStep::Retrying { error } => format!("retrying: {error}"),
        ProgressStep::State(state) => format!("KMS reports {state}"),
        ProgressStep::Verified => "verified DISCONNECTED".to_string(),
        ProgressStep::Failed { error } => format!("FAILED: {error}"),
    };
    eprintln!("  {:<24} {:<14} {step}", event.key_store, event.region);
}

fn report_table(report: &LockdownReport) -> String {
    let rows: Vec<Vec<String>> = report
        .stores
        .iter()
        .map(|s| {
            let result = if report.dry_run {
                match (&s.error, &s.connection_state) {
                    (Some(error), _) => format!("cannot describe: {}", error.to_line()),
                    (None, Some(ConnectionState::Disconnected)) => {
                        "already DISCONNECTED".to_string()
                    }
                    (None, _) => "would disconnect".to_string(),
                }
            } else if s.verified {
                let attempts = match s.attempts {
                    1 => "1 attempt".to_string(),
                    n => format!("{n} attempts"),
                };
                format!("verified ({attempts}, {:.1}s)", s.elapsed.as_secs_f64())
            } else {
                let error = s.error.as_ref().map(LockdownError::to_line);
                format!("FAILED: {}", error.as_deref().unwrap_or("not verified"))
            };
            vec![
                s.account.clone().unwrap_or_else(|| "-".to_string()),
                s.spec.target.region.clone(),
                s.custom_key_store_id
                    .clone()
                    .unwrap_or_else(|| s.spec.selector.to_string()),
                s.connection_state
                    .as_ref()
                    .map_or_else(|| "-".to_string(), |c| c.to_string()),
                result,
            ]
        })
        .collect();
    table(
        &["ACCOUNT", "REGION", "KEY STORE", "STATE", "RESULT"],
        &rows,
    )
}

/// Account, region, key, state and result of every standard key.
fn key_table(report: &LockdownReport) -> String {
    let rows: Vec<Vec<String>> = report
        .keys
        .iter()
        .map(|k| {
            let result = match (&k.error, k.verified, report.dry_run) {
                (Some(error), _, _) => format!("FAILED: {}", error.to_line()),
                (None, true, true) => "already disabled".to_string(),
                (None, false, true) => "would disable".to_string(),
                (None, true, false) => format!("verified ({} attempts)", k.attempts),
                (None, false, false) => "FAILED: not verified".to_string(),
            };
            vec![
                k.account.clone().unwrap_or_else(|| "-".to_string()),
                k.spec.target.region.clone(),
                k.key_id
                    .clone()
                    .unwrap_or_else(|| k.spec.selector.to_string()),
                k.key_state
                    .as_ref()
                    .map_or_else(|| "-".to_string(), |s| s.to_string()),
                result,
            ]
        })
        .collect();
    table(&["ACCOUNT", "REGION", "KEY", "STATE", "RESULT"], &rows)
}

/// `, 3/3 keys Disabled` when the policy lists keys, else nothing.
fn keys_summary(report: &LockdownReport) -> String {
    if report.keys.is_empty() {
        return String::new();
    }
    let verified = report.keys.iter().filter(|k| k.verified).count();
    format!(
        "; {verified}/{} keys {}",
        report.keys.len(),
        if report.dry_run {
            "already Disabled"
        } else {
            "verified Disabled"
        }
    )
}

fn summary(report: &LockdownReport) -> String {
    let total = report.stores.len();
    let verified = report.stores.iter().filter(|s| s.verified).count();
    let elapsed = report.elapsed.as_secs_f64();
    if report.dry_run {
        format!(
            "dry run {}: {} of {total} key stores would be disconnected ({verified} already DISCONNECTED); no Disconnect was sent{}",
            report.lockdown_id,
            total - verified,
            keys_summary(report)
        )
    } else if report.complete() {
        format!(
            "lockdown {} COMPLETE: {verified}/{total} key stores verified DISCONNECTED in {elapsed:.1}s{}",
            report.lockdown_id,
            keys_summary(report)
        )
    } else {
        format!(
            "lockdown {} PARTIAL: only {verified}/{total} key stores verified DISCONNECTED after {elapsed:.1}s{}; a running daemon keeps enforcing",
            report.lockdown_id,
            keys_summary(report)
        )
    }
}
