//! The daemon's triggers: built for a policy (file flag, signal, alarms, queues) without running them,
//! so a reload is all or nothing, then installed as tasks, replacing the running ones that
//! changed. Owns only their set-up and swap: what a trigger event does is the run loop's
//! (`crate::daemon`), what a trigger watches is `crate::trigger`'s.

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{Daemon, DaemonError};
use crate::aws::{AlarmSource, KeyStoreControl};
use crate::policy::{FileTrigger, Policy, SignalTrigger};
use crate::trigger::alarm::{AlarmConfig, AlarmWatch};
use crate::trigger::file::FileWatch;
use crate::trigger::queue::{QueueConfig, QueueWatch};
use crate::trigger::signal::SignalWatch;

/// A trigger task in place: its configuration (to tell whether a reload changed it) and its
/// cancellation.
pub(super) struct Running<T> {
    pub(super) config: T,
    cancel: CancellationToken,
}

impl<T> Drop for Running<T> {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Triggers built for a policy but not running yet (so a reload is all or nothing). Outer
/// `None`: unchanged, keep the running one; `Some(None)`: the new policy turns it off.
pub(super) struct Prepared<A> {
    file: Option<Option<(FileTrigger, FileWatch)>>,
    signal: Option<Option<(SignalTrigger, SignalWatch)>>,
    alarms: Option<Option<(AlarmConfig, AlarmWatch<A>)>>,
    queues: Option<Option<(QueueConfig, QueueWatch)>>,
}

impl<C: KeyStoreControl, A: AlarmSource> Daemon<C, A> {
    /// Build (but do not run) the triggers of `policy` that differ from the running ones.
    pub(super) async fn prepare_triggers(
        &mut self,
        policy: &Policy,
    ) -> Result<Prepared<A>, DaemonError> {
        let mut prepared = Prepared {
            file: None,
            signal: None,
            alarms: None,
            queues: None,
        };
        let file = policy.triggers.file.clone();
        if self.file.as_ref().map(|r| &r.config) != file.as_ref() {
            prepared.file = Some(match file {
                Some(config) => {
                    let watch = FileWatch::start(&config, self.events_tx.clone()).await?;
                    Some((config, watch))
                }
                None => None,
            });
        }
        let signal = policy.triggers.signal;
        if self.signal.as_ref().map(|r| r.config) != signal {
            prepared.signal = Some(match signal {
                Some(config) => {
                    let watch = match self.early_signal.take() {
                        Some(early) if early.config() == config => early,
                        _ => SignalWatch::start(config)?,
                    };
                    Some((config, watch))
                }
                None => None,
            });
        }
        let alarms = (!policy.triggers.alarms.is_empty()).then(|| AlarmConfig {
            alarms: policy.triggers.alarms.clone(),
            poll_interval: policy.triggers.alarm_poll_interval,
            fail_closed_after: policy.triggers.fail_closed_after,
        });
        if self.alarms.as_ref().map(|r| &r.config) != alarms.as_ref() {
            prepared.alarms = Some(alarms.map(|config| {
                let watch =
                    AlarmWatch::new(self.alarm_source.clone(), &config, self.events_tx.clone());
                (config, watch)
            }));
        }
        let queues = (!policy.triggers.queues.is_empty()).then(|| QueueConfig {
            queues: policy.triggers.queues.clone(),
        });
        if self.queues.as_ref().map(|r| &r.config) != queues.as_ref() {
            prepared.queues = Some(queues.and_then(|config| match &self.queue_source {
                Some(source) => {
                    let watch = QueueWatch::new(source.clone(), &config, self.events_tx.clone());
                    Some((config, watch))
                }
                None => {
                    tracing::error!("triggers.queues is set but this daemon has no SQS client; the queues are not watched");
                    None
                }
            }));
        }
        Ok(prepared)
    }

    /// Stop the replaced triggers and spawn the prepared ones. Returns, when a new alarm poller
    /// starts, a receiver that completes as its first poll begins.
    pub(super) fn install_triggers(
        &mut self,
        prepared: Prepared<A>,
    ) -> Option<oneshot::Receiver<()>> {
        if let Some(file) = prepared.file {
            self.file = file.map(|(config, watch)| {
                let cancel = self.cancel.child_token();
                self.tracker.spawn(watch.run(cancel.clone()));
                Running { config, cancel }
            });
        }
        if let Some(signal) = prepared.signal {
            self.signal = signal.map(|(config, watch)| {
                let cancel = self.cancel.child_token();
                self.tracker
                    .spawn(watch.run(self.events_tx.clone(), cancel.clone()));
                Running { config, cancel }
            });
        }
        let mut started_rx = None;
        if let Some(alarms) = prepared.alarms {
            self.alarms = alarms.map(|(config, watch)| {
                let cancel = self.cancel.child_token();
                let (started_tx, rx) = oneshot::channel();
                started_rx = Some(rx);
                self.tracker.spawn(watch.run(cancel.clone(), started_tx));
                Running { config, cancel }
            });
        }
        if let Some(queues) = prepared.queues {
            self.queues = queues.map(|(config, watch)| {
                let cancel = self.cancel.child_token();
                self.tracker.spawn(watch.run(cancel.clone()));
                Running { config, cancel }
            });
        }
        started_rx
    }
}
