//! Trigger sources. Each watcher only sends [`TriggerEvent`]s on a channel: it never calls KMS,
//! never touches the latch and never exits the process. The daemon decides what an event means.

pub mod alarm;
pub mod file;
pub mod signal;

use crate::audit::TriggerSource;

/// Something asked the switch to fire, or a trigger was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum TriggerEvent {
    /// Fire: `detail` goes into the audit record's `detail`.
    Fired {
        source: TriggerSource,
        detail: serde_json::Value,
    },
    /// A would-be trigger that was not trusted (e.g. a flag owned by another uid).
    Rejected { source: TriggerSource, reason: String },
}
