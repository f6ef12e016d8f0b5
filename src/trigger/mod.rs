//! Trigger sources. Each watcher only sends [`TriggerEvent`]s on a channel: it never calls KMS,
//! never touches the latch and never exits the process. The daemon decides what an event means.
//! The queue watcher (`queue`, with the pure message classifier `queue_message`) calls SQS only,
//! through [`crate::aws::QueueSource`].

pub mod alarm;
pub mod file;
pub mod queue;
pub mod queue_message;
pub mod signal;

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

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
    /// A queue message that trips (source `queue`). The watcher deletes the message only once
    /// `ack` is completed, which the daemon does when the latch and `trigger_fired` are durable.
    QueueFired {
        detail: serde_json::Value,
        ack: QueueAck,
        /// A CloudTrail ConnectCustomKeyStore / UpdateCustomKeyStore: while latched, enforce now.
        key_store_event: bool,
    },
    /// A message that is not a trip (no match, not JSON, too big): audited `trigger_ignored`.
    Ignored {
        source: TriggerSource,
        reason: String,
    },
    /// A watched queue cannot be read (sent once per change; the watcher keeps retrying).
    QueuePollFailed { queue_url: String, error: String },
    /// The queue can be read again.
    QueuePollRecovered { queue_url: String },
}

/// The daemon's word that a queue message's trip is durable (latch on disk, `trigger_fired`
/// fsync'd): the watcher deletes the message then. Dropped without [`QueueAck::complete`], the
/// message stays in the queue and comes back (a crash or an unwritten latch must not lose it).
#[derive(Debug, Clone)]
pub struct QueueAck(Arc<Mutex<Option<oneshot::Sender<()>>>>);

impl QueueAck {
    /// An ack and the receiver the watcher waits on.
    pub fn new() -> (QueueAck, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (QueueAck(Arc::new(Mutex::new(Some(tx)))), rx)
    }

    /// The trip is durable: the watcher may delete the message.
    pub fn complete(&self) {
        // A panic while holding this lock leaves only an Option; still consistent.
        let sender = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(sender) = sender {
            let _ = sender.send(());
        }
    }
}

/// Two acks are equal when they are the same ack (events compare in tests).
impl PartialEq for QueueAck {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
