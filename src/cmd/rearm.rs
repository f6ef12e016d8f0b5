//! `kms-killswitch rearm --reason TEXT`: clear the latch after an incident. Refuses (exit 1) while
//! a trigger is still active: the flag file exists, or a watched CloudWatch alarm is in ALARM (or
//! cannot be read, so that cannot be ruled out); and while a lockdown is in flight (it cannot
//! take the disconnect lock, `crate::latch`). Otherwise removes the latch and audits
//! `rearmed {reason, by}`. A running daemon re-reads the latch file every half second and is armed
//! again within a second (see `crate::daemon`); nothing else is needed. It never calls KMS.

use clap::Args;

use crate::audit::AuditLog;
use crate::aws::AwsClients;
use crate::cmd::{Context, Exit, runtime};
use crate::latch;
use crate::policy::Policy;
use crate::switch;

#[derive(Debug, Args)]
pub struct RearmArgs {
    /// Why the switch is being re-armed (recorded in the audit log).
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
}

pub fn run(ctx: &Context, args: &RearmArgs) -> anyhow::Result<Exit> {
    let policy = ctx.load_policy()?;

    if let Some(refusal) = switch::flag_still_set(&policy) {
        eprintln!("kms-killswitch: refusing to rearm: {refusal}");
        return Ok(Exit::Incomplete);
    }
    if !policy.triggers.alarms.is_empty()
        && let Some(refusal) = runtime()?.block_on(active_alarms(&policy))
    {
        eprintln!("kms-killswitch: refusing to rearm: {refusal}");
        return Ok(Exit::Incomplete);
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
    let by = switch::operator();
    switch::rearm(&policy.state_file, &latch, &audit, &args.reason, &by)?;
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
    let by_target = switch::alarm_names_by_target(policy);
    let aws = AwsClients::new(&policy.endpoints, by_target.keys().cloned()).await;
    switch::active_alarms(&aws, &by_target).await
}
