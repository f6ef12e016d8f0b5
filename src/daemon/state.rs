//! The daemon's state as one value: armed or latched, and what runs for the switch (a lockdown,
//! an enforcement round, or nothing until the next round is due). Each event of the run loop is a
//! `match` on it (`crate::daemon`); this file owns only the shape and its transitions, never a
//! spawn, a file or an AWS call.
//!
//! Why the activity is carried when armed too: a `rearm` can be accepted while a lockdown task
//! is still waiting for the disconnect lock (it then finds the latch gone and sends nothing), and
//! a trigger right after the rearm must wait for that task, not run beside it.

use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::latch::Latch;
use crate::lockdown::LockdownReport;
use crate::model::LockdownId;

/// The latch as the daemon holds it.
pub(super) struct Latched {
    pub latch: Latch,
    /// The latch is on disk (false only if writing it failed; retried on every latch poll).
    pub persisted: bool,
    /// Verified DISCONNECTED out of listed, from the last lockdown or enforcement round.
    pub progress: Option<(usize, usize)>,
}

/// What runs for the switch. At most one task at a time: a lockdown cancels the enforcement
/// round, and a lockdown requested while one is in flight waits for it (`pending`).
pub(super) enum Activity {
    /// Nothing runs; the next enforcement round is due at `next_enforce` (latched, enforcement
    /// on), or never.
    Idle { next_enforce: Option<Instant> },
    /// A lockdown in flight (it runs to its end: no cancellation). The task ends with `None`
    /// when a rearm came first and it sent nothing.
    LockingDown {
        task: JoinHandle<Option<LockdownReport>>,
        /// A lockdown requested meanwhile (a trigger right after a rearm): started when this
        /// one ends.
        pending: Option<LockdownId>,
    },
    /// An enforcement round in flight, cancelled by a rearm, a lockdown or shutdown. Ends with
    /// (verified DISCONNECTED, listed); (0, 0) when cancelled or rearmed.
    Enforcing {
        task: JoinHandle<(usize, usize)>,
        cancel: CancellationToken,
    },
}

/// A task of [`Activity`] ended.
pub(super) enum TaskEnded {
    Lockdown(Result<Option<LockdownReport>, JoinError>),
    Enforcement(Result<(usize, usize), JoinError>),
}

impl Activity {
    pub(super) const IDLE: Activity = Activity::Idle { next_enforce: None };

    /// When the next enforcement round is due, if idle and one is scheduled.
    pub(super) fn next_enforce(&self) -> Option<Instant> {
        match self {
            Activity::Idle { next_enforce } => *next_enforce,
            _ => None,
        }
    }

    pub(super) fn locking_down(&self) -> bool {
        matches!(self, Activity::LockingDown { .. })
    }

    /// Completes when the task in flight ends; never while idle. Cancel-safe (the handle is
    /// only polled). The caller then replaces the activity ([`Activity::finish`]).
    pub(super) async fn task_ended(&mut self) -> TaskEnded {
        match self {
            Activity::Idle { .. } => std::future::pending().await,
            Activity::LockingDown { task, .. } => TaskEnded::Lockdown(task.await),
            Activity::Enforcing { task, .. } => TaskEnded::Enforcement(task.await),
        }
    }

    /// Back to idle after a task ended (or to drop a cancelled round): returns the lockdown
    /// requested meanwhile, if any.
    pub(super) fn finish(&mut self) -> Option<LockdownId> {
        match std::mem::replace(self, Activity::IDLE) {
            Activity::LockingDown { pending, .. } => pending,
            Activity::Idle { .. } | Activity::Enforcing { .. } => None,
        }
    }

    /// Stop an enforcement round (its task ends on its own; the tracker waits for it) and any
    /// scheduled one; a lockdown in flight is left alone.
    pub(super) fn stop_enforcement(&mut self) {
        match self {
            Activity::Enforcing { cancel, .. } => {
                cancel.cancel();
                *self = Activity::IDLE;
            }
            Activity::Idle { next_enforce } => *next_enforce = None,
            Activity::LockingDown { .. } => {}
        }
    }
}

/// The switch: armed or latched, each with what runs for it.
pub(super) enum State {
    /// Not latched. `activity` is a lockdown from before a rearm, still finishing, or idle.
    Armed { activity: Activity },
    /// Latched: a lockdown, enforcement rounds, or waiting for the next one.
    Latched {
        latched: Latched,
        activity: Activity,
    },
}

impl State {
    pub(super) const ARMED: State = State::Armed {
        activity: Activity::IDLE,
    };

    pub(super) fn latched(&self) -> Option<&Latched> {
        match self {
            State::Armed { .. } => None,
            State::Latched { latched, .. } => Some(latched),
        }
    }

    pub(super) fn latched_mut(&mut self) -> Option<&mut Latched> {
        match self {
            State::Armed { .. } => None,
            State::Latched { latched, .. } => Some(latched),
        }
    }

    pub(super) fn is_latched(&self) -> bool {
        matches!(self, State::Latched { .. })
    }

    pub(super) fn activity(&self) -> &Activity {
        match self {
            State::Armed { activity } | State::Latched { activity, .. } => activity,
        }
    }

    pub(super) fn activity_mut(&mut self) -> &mut Activity {
        match self {
            State::Armed { activity } | State::Latched { activity, .. } => activity,
        }
    }

    /// Latch with `latched` (replacing the latch held, if any), keeping what runs.
    pub(super) fn latch(&mut self, latched: Latched) {
        let activity = self.take_activity();
        *self = State::Latched { latched, activity };
    }

    /// Armed again (rearm): enforcement stops; a lockdown in flight finishes on its own.
    pub(super) fn arm(&mut self) {
        let mut activity = self.take_activity();
        activity.stop_enforcement();
        *self = State::Armed { activity };
    }

    fn take_activity(&mut self) -> Activity {
        match std::mem::replace(self, State::ARMED) {
            State::Armed { activity } | State::Latched { activity, .. } => activity,
        }
    }
}
