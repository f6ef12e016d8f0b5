//! Trigger sources. Each watcher only sends [`TriggerEvent`]s on a channel: it never calls KMS,
//! never touches the latch and never exits the process. The daemon decides what an event means.

pub mod alarm;
pub mod file;
pub mod signal;

use crate::model::TriggerSource;

/// Something asked the switch to fire, or a trigger was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum TriggerEvent {
    /// Fire: `detail` goes into the audit record's `detail`.
    Fired {
        source: TriggerSource,
        detail: serde_json::Value,
    },
    /// A would-be trigger that was not trusted (e.g. a flag owned by another uid).
    Rejected {
        source: TriggerSource,
        reason: String,
    },
    /// The flag that was rejected is gone (so STATUS stops reporting it as squatted).
    FlagRejectionCleared,
    /// Watched alarms could not be read (a failed DescribeAlarms, or alarms missing from its
    /// answer). Reported, never a reason to fire by itself (except `fail_closed_after`, which the
    /// alarm trigger turns into a `Fired`). Sent once per change, not on every poll.
    AlarmPollFailed {
        alarm_names: Vec<String>,
        region: String,
        error: String,
    },
    /// The alarms of this region that were unreadable can be read again.
    AlarmPollRecovered {
        alarm_names: Vec<String>,
        region: String,
    },
}
