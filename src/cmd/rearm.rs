//! `kms-killswitch rearm --reason TEXT`: clear the latch after an incident. Refuses (exit 1) while
//! a trigger is still active: the flag file exists, or a watched CloudWatch alarm is in ALARM (or
//! cannot be read, so that cannot be ruled out); and while a lockdown is in flight (it cannot
//! take the disconnect lock, `crate::latch`). Otherwise removes the latch and audits
//! `rearmed {reason, by}`. A running daemon re-reads the latch file every half second and is armed
//! again within a second (see `crate::daemon`); nothing else is needed. It never calls KMS.
//! With `notify:` in the policy, it sends `rearmed` to every sink itself (bounded in time).

use clap::Args;

use crate::audit::AuditLog;
use crate::aws::AwsClients;
use crate::cmd::{Context, Exit, runtime};
use crate::latch;
use crate::notify;
use crate::policy::Policy;
use crate::switch;

/// How long `rearm` waits for its `rearmed` notification: one attempt's worth per sink (they run
/// at once), so an operator is never held up long by a sink that hangs; the attempts are audited.
const REARM_NOTIFY_TIMEOUT: std::time::Duration = notify::ATTEMPT_TIMEOUT;

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
    notify_rearmed(&policy, &audit, &latch, &args.reason, &by);
    if !audit.flush() {
        eprintln!(
            "kms-killswitch: error: the rearm could not be recorded in the audit log {}",
            audit.path().display()
        );
        return Ok(Exit::Incomplete);
    }
    Ok(Exit::Success)
}

/// Send `rearmed` to the policy's sinks (there is no daemon to queue it for us), each attempt
/// audited; at most [`REARM_NOTIFY_TIMEOUT`]. A sink that fails changes nothing about the rearm.
fn notify_rearmed(policy: &Policy, audit: &AuditLog, latch: &latch::Latch, reason: &str, by: &str) {
    if policy.notify.is_empty() {
        return;
    }
    let sinks = match notify::sinks(policy) {
        Ok(sinks) => sinks,
        Err(err) => {
            eprintln!("kms-killswitch: warning: no rearm notification sent: {err}");
            return;
        }
    };
    let event = crate::audit::Event::Rearmed {
        reason: reason.to_string(),
        by: by.to_string(),
    };
    let host = notify::hostname();
    let now = std::time::SystemTime::now();
    let Some(notification) =
        notify::build_notification(&event, &host, now, Some(latch.lockdown_id.as_str()))
    else {
        return;
    };
    let send = async {
        let targets = sinks.iter().filter_map(|sink| match sink {
            notify::Sink::Sns { target, .. } => Some(target.clone()),
            notify::Sink::Webhook(_) => None,
        });
        let aws = AwsClients::new(&policy.endpoints, targets.collect::<Vec<_>>()).await;
        notify::send_now(&notification, &sinks, &aws, audit, REARM_NOTIFY_TIMEOUT).await;
    };
    match runtime() {
        Ok(runtime) => runtime.block_on(send),
        Err(err) => eprintln!("kms-killswitch: warning: no rearm notification sent: {err:#}"),
    }
}

/// `Some(why)` when a watched alarm is in ALARM or cannot be read.
async fn active_alarms(policy: &Policy) -> Option<String> {
    let by_target = switch::alarm_names_by_target(policy);
    let aws = AwsClients::new(&policy.endpoints, by_target.keys().cloned()).await;
    switch::active_alarms(&aws, &by_target).await
}
