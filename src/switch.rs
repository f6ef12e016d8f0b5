//! The switch's acts, defined once and called by the daemon and by the CLI alike:
//!
//! - [`fire`]: a new [`LockdownId`] → the latch written durably (create-new, `crate::latch`) →
//!   `trigger_fired` audited → the caller starts the lockdown with [`lockdown_request`] (the
//!   daemon as a task, `trip` on its own runtime). When another process latched first, the
//!   trigger is a trigger while latched and no second lockdown starts.
//! - [`resume`]: a latch found at start is audited `trigger_fired {source: resume}` and locked
//!   down again (an unreadable latch counts as set: fail closed).
//! - The rearm checks: [`flag_still_set`], [`active_alarms`], and [`rearm`] (tombstone, clear,
//!   `rearmed`), which the caller runs holding the disconnect lock exclusively.
//! - [`operator`]: who ran the command, as the audit log and the latch name them.
//!
//! It owns the order of those steps, not their mechanics: the latch file is `crate::latch`'s,
//! the records `crate::audit`'s, Disconnects the engine's. It never spawns a task, never exits the
//! process and never prints (the callers do): the daemon and the CLI decide how to tell.

use std::path::Path;

use serde_json::Value;

use crate::audit::{AuditSink, Event, Recorded};
use crate::aws::{AlarmSource, AlarmStateValue};
use crate::latch::{self, Latch, LatchError};
use crate::lockdown::LockdownRequest;
use crate::model::{LockdownId, Target, TriggerSource};
use crate::policy::Policy;
use crate::{error_chain, model};

/// The CloudWatch state that blocks a rearm.
const ALARM: AlarmStateValue = AlarmStateValue::Alarm;

/// A fresh latch for a trigger firing now, with a new lockdown id.
pub fn new_latch(source: TriggerSource, detail: String) -> Latch {
    Latch {
        trigger: source,
        fired_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        lockdown_id: LockdownId::new(),
        detail,
    }
}

/// What [`fire`] found when it wrote the latch.
#[derive(Debug)]
pub enum Latching {
    /// Our latch is on disk: lock down.
    Written,
    /// Another process (a `trip`, or the daemon) latched first: this trigger was audited with
    /// `latched: true` and starts no second lockdown.
    AlreadyLatched(Latch),
    /// A latch file is there but cannot be read: not a latch we can trust to be in force, so
    /// lock down (fail closed).
    Unreadable(LatchError),
    /// A latch was there when ours was written and gone when read back (a rearm raced this
    /// trigger): lock down.
    Vanished,
    /// Our latch could not be written: lock down anyway (a kill switch is never stopped by its
    /// own bookkeeping); the daemon retries the write.
    Unwritten(LatchError),
}

/// A trigger fired: the latch, then `trigger_fired`. `detail` goes to the audit record,
/// `latch_detail` to the latch file.
pub struct Fired {
    /// The latch this trigger wrote (or tried to); its `lockdown_id` names the lockdown.
    pub latch: Latch,
    pub latching: Latching,
    /// The `trigger_fired` record's acknowledgement: resolves once it is durable (a queue
    /// message is deleted only then). Dropping it withdraws nothing.
    pub trigger_fired: Recorded,
}

impl Fired {
    /// A latch file was on disk when this trigger fired (ours or another's): false only when
    /// ours could not be written.
    pub fn persisted(&self) -> bool {
        !matches!(self.latching, Latching::Unwritten(_))
    }
}

/// Fire the switch: a new lockdown id, the latch written durably (create-new) *before* any
/// Disconnect, then `trigger_fired` (`latched: true` when another process latched first). The
/// latch is written synchronously (fsync): callers on a tokio worker accept that one write, since
/// nothing may be disconnected before it is on disk.
pub fn fire(
    state_file: &Path,
    audit: &dyn AuditSink,
    source: TriggerSource,
    detail: Value,
    latch_detail: String,
) -> Fired {
    let latch = new_latch(source, latch_detail);
    let latching = match latch::write(state_file, &latch) {
        Ok(()) => Latching::Written,
        Err(LatchError::AlreadyLatched { .. }) => match latch::read(state_file) {
            Ok(Some(existing)) => Latching::AlreadyLatched(existing),
            Ok(None) => Latching::Vanished,
            Err(err) => Latching::Unreadable(err),
        },
        Err(err) => Latching::Unwritten(err),
    };
    let trigger_fired = audit.record(Event::TriggerFired {
        source,
        detail,
        latched: matches!(latching, Latching::AlreadyLatched(_)),
    });
    Fired {
        latch,
        latching,
        trigger_fired,
    }
}

/// The lockdown a fired switch starts: every listed key store.
pub fn lockdown_request(
    policy: &Policy,
    lockdown_id: LockdownId,
    dry_run: bool,
) -> LockdownRequest {
    LockdownRequest {
        lockdown_id: lockdown_id.into(),
        key_stores: policy.key_stores.clone(),
        dry_run,
    }
}

/// A latch found at start, resumed.
pub struct Resumed {
    /// The latch in force (for an unreadable one, a stand-in naming the error).
    pub latch: Latch,
    /// The id of the resumed lockdown (a new one: the first lockdown's id stays in the latch).
    pub lockdown_id: LockdownId,
}

/// On start: when the latch is set (or unreadable: fail closed), audit `trigger_fired {source:
/// resume}` and return what to lock down; `None` when the switch is armed.
pub fn resume(state_file: &Path, audit: &dyn AuditSink) -> Option<Resumed> {
    let (latch, detail) = match latch::read(state_file) {
        Ok(None) => return None,
        Ok(Some(latch)) => {
            let detail = serde_json::json!({
                "lockdown_id": latch.lockdown_id,
                "trigger": latch.trigger,
                "fired_at": latch.fired_at,
                "detail": latch.detail,
            });
            (latch, detail)
        }
        Err(err) => {
            tracing::error!(path = %state_file.display(), cause = %error_chain(&err), "cannot read the latch; treating the switch as latched");
            let latch = new_latch(
                TriggerSource::Resume,
                format!("unreadable latch: {}", error_chain(&err)),
            );
            let detail = serde_json::json!({ "error": error_chain(&err) });
            (latch, detail)
        }
    };
    tracing::warn!(lockdown_id = %latch.lockdown_id, fired_at = %latch.fired_at, "latch set at start; resuming the lockdown");
    let lockdown_id = LockdownId::new();
    audit
        .record(Event::TriggerFired {
            source: TriggerSource::Resume,
            detail,
            latched: false,
        })
        .queued();
    Some(Resumed { latch, lockdown_id })
}

/// `Some(refusal)` when the policy's flag file is still there: a rearm would only fire again.
pub fn flag_still_set(policy: &Policy) -> Option<String> {
    let file = policy.triggers.file.as_ref()?;
    std::fs::symlink_metadata(&file.path).is_ok().then(|| {
        format!(
            "the flag {} still exists; remove it first (the switch would only fire again)",
            file.path.display()
        )
    })
}

/// `Some(why)` when a watched alarm is in ALARM, missing or cannot be read (so it may be in
/// ALARM): a rearm would only fire again.
pub async fn active_alarms(
    alarms: &impl AlarmSource,
    by_target: &std::collections::BTreeMap<Target, Vec<String>>,
) -> Option<String> {
    let mut problems = Vec::new();
    for (target, names) in by_target {
        match alarms.describe_alarms(target, names).await {
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

/// Clear `latch` and audit `rearmed {reason, by}`. The tombstone first: a running daemon that
/// sees the latch gone without one naming this lockdown treats it as tampering and writes the
/// latch back. The caller holds the disconnect lock exclusively (`latch::lock_for_rearm`).
pub fn rearm(
    state_file: &Path,
    latch: &Latch,
    audit: &dyn AuditSink,
    reason: &str,
    by: &str,
) -> Result<(), LatchError> {
    latch::write_tombstone(
        state_file,
        &latch::Tombstone {
            lockdown_id: latch.lockdown_id.clone(),
            rearmed_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        },
    )?;
    latch::clear(state_file)?;
    audit
        .record(Event::Rearmed {
            reason: reason.to_string(),
            by: by.to_string(),
        })
        .queued();
    Ok(())
}

/// Who ran the command: `alice (via sudo, uid 0)`, `alice (uid 1000)` or `uid 1000`. Names the
/// operator in `trip`'s latch and audit record and in `rearm`'s `by`.
pub fn operator() -> String {
    let uid = rustix::process::getuid().as_raw();
    match (std::env::var("SUDO_USER"), std::env::var("USER")) {
        (Ok(sudo_user), _) if !sudo_user.is_empty() => format!("{sudo_user} (via sudo, uid {uid})"),
        (_, Ok(user)) if !user.is_empty() => format!("{user} (uid {uid})"),
        _ => format!("uid {uid}"),
    }
}

/// The watched alarms' names grouped by target (one DescribeAlarms per target).
pub fn alarm_names_by_target(policy: &Policy) -> std::collections::BTreeMap<Target, Vec<String>> {
    model::group_by_target(
        policy
            .triggers
            .alarms
            .iter()
            .map(|alarm| (alarm.target.clone(), alarm.name.clone())),
    )
}
