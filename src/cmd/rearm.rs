//! `kms-killswitch rearm --reason TEXT`: clear the latch after an incident. Refuses (exit 1) while
//! a trigger is still active: the flag file exists, or a watched CloudWatch alarm is in ALARM (or
//! cannot be read, so that cannot be ruled out); and while a lockdown is in flight (it cannot
//! take the disconnect lock, `crate::latch`). Otherwise removes the latch and audits
//! `rearmed {reason, by}`. A running daemon re-reads the latch file every half second and is armed
//! again within a second (see `crate::daemon`); nothing else is needed. It never calls KMS.

use std::collections::BTreeMap;

use anyhow::Context as _;

use crate::audit::{AuditLog, Event};
use crate::aws::{AlarmSource, AwsClients, Target};
use crate::cli::RearmArgs;
use crate::cmd::{Context, Exit};
use crate::latch;
use crate::policy::{self, LoadOptions, Policy};

/// The CloudWatch state that blocks a rearm.
const ALARM: &str = "ALARM";

pub fn run(ctx: &Context, args: &RearmArgs) -> anyhow::Result<Exit> {
    let options = LoadOptions {
        insecure_permissions: ctx.insecure_policy_permissions,
    };
    let policy = policy::load(&ctx.config, options)?;

    if let Some(file) = &policy.triggers.file
        && std::fs::symlink_metadata(&file.path).is_ok()
    {
        eprintln!(
            "kms-killswitch: refusing to rearm: the flag {} still exists; remove it first (the switch would only fire again)",
            file.path.display()
        );
        return Ok(Exit::Incomplete);
    }
    if !policy.triggers.alarms.is_empty() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        if let Some(refusal) = runtime.block_on(active_alarms(&policy)) {
            eprintln!("kms-killswitch: refusing to rearm: {refusal}");
            return Ok(Exit::Incomplete);
        }
    }

    // Held until the rearm is audited: no lockdown or enforcement round (daemon or `trip`) sends
    // a Disconnect meanwhile, and none that starts later finds the old latch (see `crate::latch`).
    let Some(_disconnect_lock) = latch::lock_for_rearm(&policy.state_file)? else {
        eprintln!(
            "kms-killswitch: refusing to rearm: a lockdown is in flight (the daemon's or a `kms-killswitch trip`'s, holding {}); wait until it has finished (at most verify_timeout, {}s) and rearm again",
            latch::lock_path(&policy.state_file).display(),
            policy.lockdown.verify_timeout.as_secs()
        );
        return Ok(Exit::Incomplete);
    };
    let Some(latch) = latch::read(&policy.state_file)? else {
        println!("not latched: nothing to rearm");
        return Ok(Exit::Success);
    };
    let audit = AuditLog::open(&policy.audit_log, &policy.sha256);
    // The tombstone first: a running daemon that sees the latch gone without one naming this
    // lockdown treats it as tampering and writes the latch back.
    latch::write_tombstone(
        &policy.state_file,
        &latch::Tombstone {
            lockdown_id: latch.lockdown_id.clone(),
            rearmed_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        },
    )?;
    latch::clear(&policy.state_file)?;
    let by = rearmed_by();
    audit.record_blocking(Event::Rearmed {
        reason: args.reason.clone(),
        by: by.clone(),
    });
    println!(
        "re-armed by {by}: latch of lockdown {} (fired {} by {}) cleared; a running daemon is armed again within a second",
        latch.lockdown_id, latch.fired_at, latch.trigger
    );
    if !audit.flush() {
        eprintln!(
            "kms-killswitch: error: the rearm could not be recorded in the audit log {}",
            audit.path().display()
        );
        return Ok(Exit::Incomplete);
    }
    Ok(Exit::Success)
}

/// `Some(why)` when a watched alarm is in ALARM or cannot be read.
async fn active_alarms(policy: &Policy) -> Option<String> {
    let mut by_target: BTreeMap<Target, Vec<String>> = BTreeMap::new();
    for alarm in &policy.triggers.alarms {
        by_target
            .entry(alarm.target.clone())
            .or_default()
            .push(alarm.name.clone());
    }
    let aws = AwsClients::new(&policy.endpoints, by_target.keys().cloned()).await;
    let mut problems = Vec::new();
    for (target, names) in &by_target {
        match aws.describe_alarms(target, names).await {
            Ok(states) => {
                for state in states.iter().filter(|s| s.state_value == ALARM) {
                    problems.push(format!(
                        "alarm {} in {} is in ALARM",
                        state.alarm_name, target.region
                    ));
                }
                for name in names
                    .iter()
                    .filter(|n| !states.iter().any(|s| &s.alarm_name == *n))
                {
                    problems.push(format!(
                        "alarm {name} in {} was not found, so it may be in ALARM",
                        target.region
                    ));
                }
            }
            Err(err) => problems.push(format!(
                "cannot read alarms {} in {} ({err}), so they may be in ALARM",
                names.join(", "),
                target.region
            )),
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Who is rearming: the sudo user if any, else the login name, always with the uid.
fn rearmed_by() -> String {
    let uid = rustix::process::getuid().as_raw();
    match (std::env::var("SUDO_USER"), std::env::var("USER")) {
        (Ok(sudo_user), _) if !sudo_user.is_empty() => format!("{sudo_user} (via sudo, uid {uid})"),
        (_, Ok(user)) if !user.is_empty() => format!("{user} (uid {uid})"),
        _ => format!("uid {uid}"),
    }
}
