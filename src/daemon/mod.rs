//! The daemon (`kms-killswitch run`): the one place that spawns long-lived tasks and owns
//! shutdown, reload, the latch, enforcement and systemd notification.
//!
//! ```text
//!   FileWatch ─┐
//!   SignalWatch├─ TriggerEvent ─▶ Daemon::run (one select! loop) ──▶ switch::fire ──▶ Engine::lockdown (task)
//!   AlarmWatch ┤                    │  ▲                                  └────────▶ Engine::enforce (task, while latched)
//!   QueueWatch ┘ (ack ◀── once the latch and trigger_fired are durable)
//!                                   │  └── shutdown future, reload requests (SIGHUP), latch poll, watchdog
//!                                   └──▶ audit, sd_notify
//! ```
//!
//! State machine (one `state::State` value, each event a `match` on it): **armed** → (a trigger fires) → latch written → `trigger_fired` audited →
//! lockdown task → **latched**, enforcing every `enforce_interval` → (the latch file disappears
//! and `kms-killswitch rearm` left its tombstone naming this lockdown) → **armed**. A latch that
//! disappears without that tombstone is tampering: audited `latch_tampered`, written back from
//! memory, and enforcement goes on. A trigger while latched is audited with
//! `latched: true` and starts nothing. A latch found at start resumes (`source: resume`).
//!
//! Rearm hand-off: the daemon `stat`s/reads the latch file every [`LATCH_POLL_INTERVAL`]. When the
//! file is gone the switch is armed again; when a latch appears that the daemon did not write
//! (a `kms-killswitch trip` from a shell), it adopts it and enforces. No pid file, no socket, no
//! signal: the latch file is the single source of truth and survives everything. The latch is
//! written create-new: when a `trip` latched first, the daemon's trigger is a trigger while
//! latched. Each lockdown and enforcement task holds the disconnect lock (`crate::latch`) and checks
//! the latch is still on disk before its first Disconnect, so `rearm` (which needs that lock
//! exclusively) refuses while one is in flight and none sends after an accepted rearm.
//!
//! Shutdown (the future passed to [`Daemon::run`], SIGTERM/SIGINT in production): triggers stop,
//! triggers already queued are still handled, a lockdown in flight is awaited (it ends by its
//! `verify_timeout`), then `daemon_stopped` is written. It must not touch KMS directly (that is
//! the engine) nor parse YAML (that is `policy`).

mod notify;
mod state;
mod triggers;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::notify::{Notifier, SystemdNotifier};
use self::state::{Activity, Latched, State, TaskEnded};
use self::triggers::Running;
use crate::audit::{AuditLog, AuditSink, Event, Recorded};
use crate::aws::{AlarmSource, KeyStoreControl, QueueSource};
use crate::error_chain;
use crate::latch::{self, Latch};
use crate::lockdown::{Engine, LockdownReport};
use crate::model::{KeyStoreSelector, KeyStoreSpec, LockdownId, TriggerSource};
use crate::policy::{FileTrigger, Policy, SignalTrigger};
#[cfg(test)]
use crate::switch::new_latch;
use crate::switch::{self, Latching};
use crate::trigger::alarm::AlarmConfig;
use crate::trigger::file::FileTriggerError;
use crate::trigger::queue::QueueConfig;
use crate::trigger::signal::{SignalTriggerError, SignalWatch};
use crate::trigger::{QueueAck, TriggerEvent};

/// How often the latch file is re-read: `rearm` promises a running daemon is armed again
/// "within a second", and one small read twice a second is free.
pub const LATCH_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// How often credentials are kept warm while the daemon runs. Shorter than the AWS module's
/// refresh-ahead window (5 min), so an assumed role's credentials are always renewed before they
/// expire and a trip never waits on STS, even for a target nothing else calls while armed.
pub const KEEP_WARM_INTERVAL: Duration = Duration::from_secs(4 * 60);

/// Renews credentials (in production: `AwsClients::warm_up`, which logs its own failures).
pub type KeepWarm =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Room for trigger events between the watchers and the loop. Watchers send one event per
/// change, so this is never full in practice; if it were, watchers wait (nothing is dropped).
const TRIGGER_QUEUE: usize = 64;

/// The audit log as the daemon needs it: a sink, plus the policy hash swapped on reload.
pub trait DaemonAudit: AuditSink {
    /// Records written from now on carry this `policy_sha256`.
    fn set_policy_sha256(&self, policy_sha256: &str);

    /// Every record so far is durable (none held in memory after a write failure).
    fn healthy(&self) -> bool {
        true
    }

    /// Retry writing records held in memory; true when none is left.
    fn flush(&self) -> bool {
        true
    }

    /// No record is held in memory after a write failure (records may be in flight): a record
    /// whose acknowledgement resolved is then on disk.
    fn holds_none(&self) -> bool {
        true
    }

    /// The main loop turned (every latch poll), with what the daemon knows to be wrong
    /// (`reasons` empty: nothing): the health watch's input (issue 13).
    fn loop_turned(&self, _reasons: Vec<String>) {}
}

impl DaemonAudit for crate::notify::NotifyingAudit {
    fn set_policy_sha256(&self, policy_sha256: &str) {
        self.log().set_policy_sha256(policy_sha256);
    }

    fn healthy(&self) -> bool {
        self.log().all_durable()
    }

    fn flush(&self) -> bool {
        self.log().retry_held()
    }

    fn holds_none(&self) -> bool {
        self.log().held() == 0
    }

    fn loop_turned(&self, reasons: Vec<String>) {
        self.report_loop_turn(reasons);
    }
}

impl DaemonAudit for AuditLog {
    fn set_policy_sha256(&self, policy_sha256: &str) {
        AuditLog::set_policy_sha256(self, policy_sha256);
    }

    fn healthy(&self) -> bool {
        AuditLog::healthy(self)
    }

    /// Never waits on the main loop: asks the writer to retry and says how things stand now.
    fn flush(&self) -> bool {
        self.flush_soon();
        self.unflushed() == 0
    }

    fn holds_none(&self) -> bool {
        self.unflushed() == 0
    }
}

/// Reads the policy again on SIGHUP (in tests: returns a prepared one).
pub type LoadPolicy =
    Box<dyn Fn() -> Result<Policy, Box<dyn std::error::Error + Send + Sync>> + Send + Sync>;

/// Where reload requests come from: SIGHUP in production, a channel in tests.
pub trait ReloadRequests: Send {
    /// Completes when a reload is requested. Cancel-safe. Never completes once the source is gone.
    fn requested(&mut self) -> impl Future<Output = ()> + Send;
}

impl ReloadRequests for tokio::signal::unix::Signal {
    async fn requested(&mut self) {
        if self.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

impl ReloadRequests for mpsc::Receiver<()> {
    async fn requested(&mut self) {
        if self.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

/// Why the daemon could not start (or could not keep running).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot start the file trigger")]
    FileTrigger(#[from] FileTriggerError),
    #[error("cannot start the signal trigger")]
    SignalTrigger(#[from] SignalTriggerError),
    /// Stopped while latched, but the latch never reached the disk: a restart would come back
    /// armed (no resume, no enforcement), so the stop is not clean.
    #[error(
        "stopped while latched (lockdown {lockdown_id}) but the latch could never be written to {path}: a restart will not resume the lockdown; run `kms-killswitch trip` once the state directory is writable"
    )]
    LatchNotPersisted {
        path: std::path::PathBuf,
        lockdown_id: LockdownId,
    },
}

impl DaemonError {
    /// The cause is the configuration (exit 78), e.g. a flag directory anyone may write.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            DaemonError::FileTrigger(
                FileTriggerError::UntrustedDir { .. } | FileTriggerError::NoParent { .. }
            ) | DaemonError::SignalTrigger(SignalTriggerError::Forbidden { .. })
        )
    }
}

/// Everything the daemon is built from.
pub struct DaemonConfig<C, A> {
    /// The validated policy (already loaded: a bad one never gets this far).
    pub policy: Policy,
    /// KMS, for the engine.
    pub control: Arc<C>,
    /// CloudWatch, for the alarm trigger.
    pub alarms: Arc<A>,
    pub audit: Arc<dyn DaemonAudit>,
    pub notifier: Arc<dyn Notifier>,
    /// Re-reads the policy on reload.
    pub load_policy: LoadPolicy,
    /// `WATCHDOG_USEC` when set for us: WATCHDOG=1 is sent at half of it.
    pub watchdog: Option<Duration>,
    /// The policy's trigger signal, registered by the caller as early as it can (before the
    /// audit log is opened and credentials are warmed, which may take seconds): an arrival
    /// during start-up is then queued and fires once the loop runs, instead of the signal's
    /// default action killing the process. `None`: registered when the triggers start.
    pub signal_watch: Option<SignalWatch>,
    /// Called every [`KEEP_WARM_INTERVAL`] while the daemon runs; `None` in tests.
    pub keep_warm: Option<KeepWarm>,
}

/// The running daemon.
pub struct Daemon<C, A> {
    /// The policy in force; replaced whole on a valid reload.
    policy: Arc<Policy>,
    /// KMS, shared with every engine built here.
    control: Arc<C>,
    /// CloudWatch, shared with every alarm poller built here.
    alarm_source: Arc<A>,
    /// Rebuilt when a reload changes the lockdown settings.
    engine: Arc<Engine<C>>,
    /// Written by the daemon and, through `&dyn AuditSink`, by the engine.
    audit: Arc<dyn DaemonAudit>,
    /// systemd (or a recording fake).
    notifier: Arc<dyn Notifier>,
    /// Re-reads the policy on SIGHUP (on a blocking thread, never on the loop).
    load_policy: Arc<LoadPolicy>,
    /// `WATCHDOG_USEC`, when systemd asked for pings.
    watchdog: Option<Duration>,
    /// The early signal registration from [`DaemonConfig::signal_watch`], until the triggers
    /// start (used if it is for the signal the policy names).
    early_signal: Option<SignalWatch>,
    /// See [`DaemonConfig::keep_warm`].
    keep_warm: Option<KeepWarm>,
    /// Watchers send here; the loop receives. The daemon keeps a sender, so `recv` never ends.
    events_tx: mpsc::Sender<TriggerEvent>,
    events_rx: mpsc::Receiver<TriggerEvent>,
    /// Every task the daemon spawns, so shutdown can wait for them.
    tracker: TaskTracker,
    /// Parent of every trigger and enforcement task's cancellation.
    cancel: CancellationToken,
    /// The running trigger tasks (`None`: off in the policy). Dropping one stops it.
    file: Option<Running<FileTrigger>>,
    signal: Option<Running<SignalTrigger>>,
    alarms: Option<Running<AlarmConfig>>,
    queues: Option<Running<QueueConfig>>,
    /// SQS, for the queue trigger (`None`: no queue can be watched; see
    /// [`Daemon::with_queue_source`]).
    queue_source: Option<Arc<dyn QueueSource>>,
    /// Queues that cannot be read right now (for STATUS).
    unreadable_queues: std::collections::BTreeSet<String>,
    /// A queue message said a key store was reconnected: the next enforcement round is due
    /// at once, not at `enforce_interval`.
    enforce_now: bool,
    /// Armed or latched, and the lockdown or enforcement round in flight (see `state.rs`).
    state: State,
    /// Regions whose alarms cannot be read right now (for STATUS).
    unreadable_alarms: std::collections::BTreeMap<String, Vec<String>>,
    /// The last latch read error, so a persistent one is logged once (a log memo, not the
    /// switch's state: an unreadable latch changes nothing).
    latch_read_error: Option<String>,
    /// Why the flag now at the flag path was rejected (squatted, hard-linked …), for STATUS.
    flag_rejected: Option<String>,
}

impl<C: KeyStoreControl, A: AlarmSource> Daemon<C, A> {
    pub fn new(config: DaemonConfig<C, A>) -> Self {
        let (events_tx, events_rx) = mpsc::channel(TRIGGER_QUEUE);
        let engine = Arc::new(Engine::new(config.control.clone(), config.policy.lockdown));
        Daemon {
            policy: Arc::new(config.policy),
            control: config.control,
            alarm_source: config.alarms,
            engine,
            audit: config.audit,
            notifier: config.notifier,
            load_policy: Arc::new(config.load_policy),
            watchdog: config.watchdog,
            early_signal: config.signal_watch,
            keep_warm: config.keep_warm,
            events_tx,
            events_rx,
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
            file: None,
            signal: None,
            alarms: None,
            queues: None,
            queue_source: None,
            unreadable_queues: Default::default(),
            enforce_now: false,
            state: State::ARMED,
            unreadable_alarms: Default::default(),
            latch_read_error: None,
            flag_rejected: None,
        }
    }

    /// SQS for the queue trigger (`triggers.queues`); without it, listed queues are not watched.
    pub fn with_queue_source(mut self, source: Arc<dyn QueueSource>) -> Self {
        self.queue_source = Some(source);
        self
    }

    /// A sender into the trigger queue (tests inject events with it).
    #[cfg(test)]
    pub(crate) fn trigger_sender(&self) -> mpsc::Sender<TriggerEvent> {
        self.events_tx.clone()
    }

    /// Run until `shutdown` completes; then finish any lockdown in flight and stop. Fails only
    /// at start (a trigger that cannot be set up), before READY.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()>,
        mut reload: impl ReloadRequests,
    ) -> Result<(), DaemonError> {
        // Triggers first: a start refused for an untrusted flag directory must not leave a
        // resumed lockdown behind. A flag seen now is queued and handled by the loop below.
        let prepared = self.prepare_triggers(&self.policy.clone()).await?;
        self.audit.record(Event::DaemonStarted).queued();
        self.audit.record(Event::PolicyLoaded).queued();
        self.resume_if_latched();
        let alarms_started = self.install_triggers(prepared);
        if let Some(started) = alarms_started {
            // READY only once the first alarm poll has begun (or the poller is gone).
            let _ = started.await;
        }
        tracing::info!(
            key_stores = self.policy.key_stores.len(),
            alarms = self.policy.triggers.alarms.len(),
            latched = self.state.is_latched(),
            "daemon ready"
        );
        let status = self.status_line();
        self.notifier
            .notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
        self.spawn_keep_warm();

        let mut latch_poll = tokio::time::interval(LATCH_POLL_INTERVAL);
        latch_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Half of WATCHDOG_USEC, as sd_watchdog_enabled(3) recommends; a very long period when
        // there is no watchdog (the branch is disabled then anyway).
        let watchdog_period = self
            .watchdog
            .map(|w| w / 2)
            .unwrap_or(Duration::from_secs(3600));
        let mut watchdog = tokio::time::interval(watchdog_period.max(Duration::from_millis(1)));
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);

        loop {
            let next_enforce = self.state.activity().next_enforce();
            tokio::select! {
                // Ordered: SIGTERM first, so a storm of triggers (10,000 SIGUSR1s while latched)
                // cannot starve it. Nothing queued is lost: `shutdown` stops the watchers and then
                // handles every event they queued before it stops.
                biased;
                // SIGTERM/SIGINT (or the test's own future): stop, finishing any lockdown first.
                _ = &mut shutdown => break,
                // A trigger fired, was rejected, or the alarms' health changed.
                Some(event) = self.events_rx.recv() => self.on_trigger(event),
                // The lockdown in flight ended (verified, or at its verify_timeout), or an
                // enforcement round did.
                ended = self.state.activity_mut().task_ended() => match ended {
                    TaskEnded::Lockdown(result) => self.on_lockdown_finished(result),
                    TaskEnded::Enforcement(result) => self.on_enforcement_finished(result),
                },
                // SIGHUP: re-read and swap the policy, or keep the old one.
                _ = reload.requested() => self.reload().await,
                // Time for an enforcement round.
                _ = sleep_until_some(next_enforce) => self.start_enforcement(),
                // Rearm hand-off and latches written by `trip`; audit records held in memory
                // after a write failure are retried here too, not only with the next record.
                _ = latch_poll.tick() => {
                    self.poll_latch();
                    if !self.audit.healthy() {
                        self.audit.flush();
                    }
                    self.audit.loop_turned(self.health_reasons());
                }
                // Tell systemd the loop is alive.
                _ = watchdog.tick(), if self.watchdog.is_some() => {
                    self.notifier.notify(&[NotifyState::Watchdog]);
                }
            }
        }
        self.shutdown(&mut watchdog).await
    }

    /// Keep credentials warm every [`KEEP_WARM_INTERVAL`] until shutdown (start-up warmed them
    /// already). Stopped mid-call by the shutdown: nothing depends on its completion.
    fn spawn_keep_warm(&self) {
        let Some(keep_warm) = self.keep_warm.clone() else {
            return;
        };
        let cancel = self.cancel.child_token();
        self.tracker.spawn(async move {
            let mut tick =
                tokio::time::interval_at(Instant::now() + KEEP_WARM_INTERVAL, KEEP_WARM_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tick.tick() => {}
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = keep_warm() => {}
                }
            }
        });
    }

    /// On start with a latch present: audit `trigger_fired {source: resume}` and lock down again.
    fn resume_if_latched(&mut self) {
        let state_file = self.policy.state_file.clone();
        let Some(resumed) = switch::resume(&state_file, &*self.audit) else {
            return;
        };
        // An unreadable latch was replaced by a stand-in: write it if the file is gone since.
        let persisted = state_file.exists() || write_latch(&state_file, &resumed.latch);
        self.state.latch(Latched {
            latch: resumed.latch,
            persisted,
            progress: None,
        });
        self.start_lockdown(resumed.lockdown_id);
    }

    fn on_trigger(&mut self, event: TriggerEvent) {
        match event {
            TriggerEvent::Fired { source, detail } => {
                if self.state.is_latched() {
                    // The in-memory state may be up to one latch poll behind the disk: a
                    // `rearm` that has just cleared the latch must not swallow this trigger.
                    self.poll_latch();
                }
                if self.state.is_latched() {
                    tracing::info!(?source, %detail, "trigger fired while latched; no second lockdown");
                    self.audit
                        .record(Event::TriggerFired {
                            source,
                            detail,
                            latched: true,
                        })
                        .queued();
                } else {
                    self.fire(source, detail).0.queued();
                }
            }
            TriggerEvent::QueueFired {
                detail,
                ack,
                key_store_event,
            } => self.on_queue_fired(detail, ack, key_store_event),
            TriggerEvent::Ignored { source, reason } => {
                tracing::info!(?source, %reason, "message ignored");
                self.audit
                    .record(Event::TriggerIgnored { source, reason })
                    .queued();
            }
            TriggerEvent::QueuePollFailed { queue_url, error } => {
                self.unreadable_queues.insert(queue_url.clone());
                self.audit
                    .record(Event::QueuePollFailed { queue_url, error })
                    .queued();
                self.notify_status();
            }
            TriggerEvent::QueuePollRecovered { queue_url } => {
                self.unreadable_queues.remove(&queue_url);
                self.notify_status();
            }
            TriggerEvent::FlagRejectionCleared => {
                self.flag_rejected = None;
                self.notify_status();
            }
            TriggerEvent::Rejected { source, reason } => {
                tracing::error!(?source, %reason, "trigger rejected");
                if source == TriggerSource::File {
                    // Shown in STATUS until the flag is gone: a squatted flag means `touch`
                    // by root fires nothing.
                    self.flag_rejected = Some(reason.clone());
                    self.notify_status();
                }
                self.audit
                    .record(Event::TriggerRejected { source, reason })
                    .queued();
            }
            TriggerEvent::AlarmPollFailed {
                alarm_names,
                region,
                error,
            } => {
                self.unreadable_alarms
                    .insert(region.clone(), alarm_names.clone());
                self.audit
                    .record(Event::AlarmPollFailed {
                        alarm_names,
                        region,
                        error,
                    })
                    .queued();
                self.notify_status();
            }
            TriggerEvent::AlarmPollRecovered { region, .. } => {
                self.unreadable_alarms.remove(&region);
                self.notify_status();
            }
        }
    }

    /// A queue message trips: as any trigger (latched → `latched: true`, no second lockdown),
    /// and its ack completed once the latch and `trigger_fired` are durable. A CloudTrail
    /// Connect/UpdateCustomKeyStore while latched also starts an enforcement round now.
    fn on_queue_fired(&mut self, detail: serde_json::Value, ack: QueueAck, key_store_event: bool) {
        const SOURCE: TriggerSource = TriggerSource::Queue;
        if self.state.is_latched() {
            // As for any trigger: a rearm that has just cleared the latch must not swallow it.
            self.poll_latch();
        }
        let (recorded, latch_durable) = match self.state.latched() {
            Some(latched) => {
                let durable = latched.persisted;
                tracing::info!(source = ?SOURCE, %detail, "trigger fired while latched; no second lockdown");
                let recorded = self.audit.record(Event::TriggerFired {
                    source: SOURCE,
                    detail,
                    latched: true,
                });
                if key_store_event {
                    tracing::warn!(
                        "a key store was connected or updated while latched; enforcing now"
                    );
                    self.enforce_soon();
                }
                (recorded, durable)
            }
            None => self.fire(SOURCE, detail),
        };
        if !latch_durable {
            tracing::error!("the latch is not on disk; the queue message is kept for redelivery");
            return;
        }
        let audit = self.audit.clone();
        self.tracker.spawn(async move {
            recorded.await;
            // Held in memory after a write failure is not durable: keep the message.
            if audit.holds_none() {
                ack.complete();
            }
        });
    }

    /// The next enforcement round starts now (or as soon as the task in flight ends).
    fn enforce_soon(&mut self) {
        self.enforce_now = true;
        if let Activity::Idle { next_enforce } = self.state.activity_mut() {
            *next_enforce = Some(Instant::now());
            self.enforce_now = false;
        }
    }

    /// The first trigger: latch (durably, before any Disconnect), audit, lock down
    /// ([`switch::fire`]). When another process (a `trip`) latched first, this trigger is a
    /// trigger while latched. Returns the `trigger_fired` record's acknowledgement and whether
    /// a latch is on disk.
    fn fire(&mut self, source: TriggerSource, detail: serde_json::Value) -> (Recorded, bool) {
        let state_file = self.policy.state_file.clone();
        let log_detail = detail.to_string();
        let fired = switch::fire(
            &state_file,
            &*self.audit,
            source,
            detail,
            log_detail.clone(),
        );
        let persisted = fired.persisted();
        let recorded = fired.trigger_fired;
        match fired.latching {
            Latching::AlreadyLatched(existing) => {
                tracing::info!(?source, detail = %log_detail, lockdown_id = %existing.lockdown_id, "trigger fired but another process latched first; no second lockdown");
                self.state.latch(Latched {
                    latch: existing,
                    persisted: true,
                    progress: None,
                });
                self.schedule_enforcement();
                self.notify_status();
                return (recorded, persisted);
            }
            Latching::Unwritten(err) => {
                tracing::error!(path = %state_file.display(), cause = %error_chain(&err), "cannot write the latch; locking down anyway and retrying the write");
            }
            Latching::Written | Latching::Unreadable(_) | Latching::Vanished => {}
        }
        let lockdown_id = fired.latch.lockdown_id.clone();
        tracing::warn!(?source, detail = %log_detail, %lockdown_id, "trigger fired; latching and locking down");
        self.state.latch(Latched {
            latch: fired.latch,
            persisted,
            progress: None,
        });
        self.start_lockdown(lockdown_id);
        (recorded, persisted)
    }

    fn start_lockdown(&mut self, lockdown_id: LockdownId) {
        match self.state.activity_mut() {
            Activity::LockingDown { pending, .. } => {
                tracing::info!(%lockdown_id, "a lockdown is in flight; this one starts when it ends");
                *pending = Some(lockdown_id);
                return;
            }
            // A lockdown supersedes the round (and the one scheduled).
            activity => activity.stop_enforcement(),
        }
        let request = switch::lockdown_request(&self.policy, lockdown_id, false);
        let keys = self.policy.keys.clone();
        let engine = self.engine.clone();
        let audit = self.audit.clone();
        let state_file = self.policy.state_file.clone();
        let require_latch = self.state.latched().is_some_and(|l| l.persisted);
        // Not tied to any cancellation: a lockdown always runs to its end.
        let task = self.tracker.spawn(async move {
            let Some(_lock) = hold_disconnect_lock(state_file, require_latch).await else {
                tracing::warn!(lockdown_id = %request.lockdown_id, "rearmed before the lockdown started; no Disconnect sent");
                return None;
            };
            let sink: &dyn AuditSink = &*audit;
            Some(engine.lockdown_with_keys(&request, &keys, sink).await)
        });
        *self.state.activity_mut() = Activity::LockingDown {
            task,
            pending: None,
        };
        self.notify_status();
    }

    fn on_lockdown_finished(
        &mut self,
        result: Result<Option<LockdownReport>, tokio::task::JoinError>,
    ) {
        let pending = self.state.activity_mut().finish();
        match result {
            Ok(None) => {}
            Ok(Some(report)) => {
                let verified = report.stores.iter().filter(|s| s.verified).count();
                let total = report.stores.len();
                if report.complete() {
                    tracing::info!(lockdown_id = %report.lockdown_id, verified, total, elapsed_ms = report.elapsed.as_millis() as u64, "lockdown complete");
                } else {
                    tracing::error!(lockdown_id = %report.lockdown_id, verified, total, "lockdown partial; enforcement keeps retrying the rest");
                }
                if let Some(latched) = self.state.latched_mut() {
                    latched.progress = Some((verified, total));
                }
            }
            Err(err) => {
                tracing::error!(cause = %err, "lockdown task failed; enforcement keeps trying")
            }
        }
        if let Some(lockdown_id) = pending {
            self.start_lockdown(lockdown_id);
            return;
        }
        self.schedule_enforcement();
        self.notify_status();
    }

    /// While latched and idle: the next enforcement round in `enforce_interval` (none when
    /// enforcement is off or the switch is armed). A task in flight schedules when it ends.
    fn schedule_enforcement(&mut self) {
        let due = match (
            self.state.is_latched(),
            self.policy.lockdown.enforce_interval,
        ) {
            (true, Some(_)) if std::mem::take(&mut self.enforce_now) => Some(Instant::now()),
            (true, Some(interval)) => Some(Instant::now() + interval),
            _ => None,
        };
        if let Activity::Idle { next_enforce } = self.state.activity_mut() {
            *next_enforce = due;
        }
    }

    /// The round that was due (the activity is idle: only then is a round scheduled).
    fn start_enforcement(&mut self) {
        let State::Latched { latched, activity } = &mut self.state else {
            self.state.activity_mut().stop_enforcement();
            return;
        };
        let engine = self.engine.clone();
        let audit = self.audit.clone();
        let key_stores = self.policy.key_stores.clone();
        let keys = self.policy.keys.clone();
        let lockdown_id = latched.latch.lockdown_id.clone();
        let state_file = self.policy.state_file.clone();
        let require_latch = latched.persisted;
        let cancel = self.cancel.child_token();
        let round_cancel = cancel.clone();
        let task = self.tracker.spawn(async move {
            let sink: &dyn AuditSink = &*audit;
            let round = async {
                match hold_disconnect_lock(state_file, require_latch).await {
                    // Rearmed since this round was scheduled: nothing to enforce.
                    None => (0, 0),
                    Some(_lock) => {
                        let lockdown_id = lockdown_id.as_str();
                        let (stores, keys) = tokio::join!(
                            enforce_round(&engine, &key_stores, lockdown_id, sink),
                            engine.enforce_keys(&keys, lockdown_id, sink)
                        );
                        record_key_enforcement_failures(&keys, lockdown_id, sink);
                        stores
                    }
                }
            };
            tokio::select! {
                // Rearmed, a new lockdown, or shutdown: an enforcement round may stop anywhere.
                _ = round_cancel.cancelled() => (0, 0),
                counts = round => counts,
            }
        });
        *activity = Activity::Enforcing { task, cancel };
    }

    fn on_enforcement_finished(&mut self, result: Result<(usize, usize), tokio::task::JoinError>) {
        self.state.activity_mut().finish();
        match result {
            Ok((verified, total)) if total > 0 => {
                if let Some(latched) = self.state.latched_mut() {
                    latched.progress = Some((verified, total));
                }
            }
            Ok(_) => {}
            Err(err) => tracing::error!(cause = %err, "enforcement round failed"),
        }
        self.schedule_enforcement();
        self.notify_status();
    }

    /// Rearm hand-off (the latch file is gone) and adoption of a latch written by `trip`.
    fn poll_latch(&mut self) {
        let state_file = self.policy.state_file.clone();
        let on_disk = match latch::read(&state_file) {
            Ok(on_disk) => {
                self.latch_read_error = None;
                on_disk
            }
            Err(err) => {
                let message = error_chain(&err);
                if self.latch_read_error.as_deref() != Some(message.as_str()) {
                    tracing::error!(path = %state_file.display(), cause = %message, "cannot read the latch; keeping the current state");
                    self.latch_read_error = Some(message);
                }
                return;
            }
        };
        match (&mut self.state, on_disk) {
            (State::Latched { latched, .. }, None) if !latched.persisted => {
                latched.persisted = write_latch(&state_file, &latched.latch);
            }
            (State::Latched { latched, .. }, None)
                if latch::read_tombstone(&state_file).map(|t| t.lockdown_id)
                    != Some(latched.latch.lockdown_id.clone()) =>
            {
                // Gone without `rearm` (which writes its tombstone first): tampering. The
                // switch stays latched: write the latch back and keep enforcing.
                let detail = format!(
                    "latch file {} of lockdown {} vanished without a rearm; written back from memory",
                    state_file.display(),
                    latched.latch.lockdown_id
                );
                tracing::error!(path = %state_file.display(), lockdown_id = %latched.latch.lockdown_id, "latch file vanished without a rearm; writing it back and enforcing");
                latched.persisted = write_latch(&state_file, &latched.latch);
                self.audit.record(Event::LatchTampered { detail }).queued();
            }
            (State::Latched { latched, .. }, None) => {
                tracing::warn!(lockdown_id = %latched.latch.lockdown_id, "latch cleared (rearm); the switch is armed again");
                self.state.arm();
                self.notify_status();
            }
            (State::Armed { .. }, Some(latch)) => {
                tracing::warn!(lockdown_id = %latch.lockdown_id, trigger = ?latch.trigger, "latch set by another process (kms-killswitch trip); enforcing");
                self.state.latch(Latched {
                    latch,
                    persisted: true,
                    progress: None,
                });
                self.schedule_enforcement();
                self.notify_status();
            }
            (State::Latched { latched, activity }, Some(latch))
                if latched.latch != latch && !activity.locking_down() =>
            {
                // A `trip` ran again while latched: follow its lockdown id.
                latched.latch = latch;
            }
            _ => {}
        }
    }

    /// SIGHUP: validate the new policy and swap it in whole, or keep the old one.
    async fn reload(&mut self) {
        notify::reloading(&*self.notifier);
        tracing::info!(path = %self.policy.path.display(), "reloading the policy");
        match self.try_reload().await {
            Ok(()) => {
                tracing::info!(sha256 = %self.policy.sha256, "policy reloaded");
            }
            Err(error) => {
                tracing::error!(cause = %error, "new policy rejected; the old one stays in force");
                self.audit.record(Event::PolicyRejected { error }).queued();
            }
        }
        let status = self.status_line();
        self.notifier
            .notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    }

    async fn try_reload(&mut self) -> Result<(), String> {
        // File I/O off the loop: the policy path is opened O_NONBLOCK (a FIFO cannot block),
        // and a slow disk stalls a blocking thread, not the triggers' tokio worker.
        let load = self.load_policy.clone();
        let new = tokio::task::spawn_blocking(move || load())
            .await
            .map_err(|err| format!("policy reload task failed: {err}"))?
            .map_err(|err| error_chain(&*err))?;
        if new.sha256 == self.policy.sha256 {
            // The same bytes: nothing to swap, and nothing for the audit log (a SIGHUP loop must
            // not fill it with `policy_loaded` records that say nothing new).
            tracing::debug!(sha256 = %new.sha256, "policy_unchanged");
            return Ok(());
        }
        if new.state_file != self.policy.state_file || new.audit_log != self.policy.audit_log {
            return Err(format!(
                "policy {}: changing state_file or audit_log needs a restart",
                new.path.display()
            ));
        }
        if new.endpoints != self.policy.endpoints {
            return Err(format!(
                "policy {}: changing aws endpoints needs a restart",
                new.path.display()
            ));
        }
        if new.notify != self.policy.notify
            || new.heartbeat != self.policy.heartbeat
            || new.metrics != self.policy.metrics
        {
            return Err(format!(
                "policy {}: changing notify, heartbeat or metrics needs a restart",
                new.path.display()
            ));
        }
        let new = Arc::new(new);
        let prepared = self
            .prepare_triggers(&new)
            .await
            .map_err(|err| error_chain(&err))?;
        if new.lockdown != self.policy.lockdown {
            self.engine = Arc::new(Engine::new(self.control.clone(), new.lockdown));
        }
        self.policy = new;
        self.audit.set_policy_sha256(&self.policy.sha256);
        self.audit.record(Event::PolicyLoaded).queued();
        // The first poll of new alarms starts on its own; READY does not wait for it on reload.
        drop(self.install_triggers(prepared));
        if let State::Latched {
            activity: Activity::Idle { .. },
            ..
        } = self.state
        {
            self.schedule_enforcement();
        }
        Ok(())
    }

    async fn shutdown(&mut self, watchdog: &mut tokio::time::Interval) -> Result<(), DaemonError> {
        tracing::info!("shutting down");
        self.notifier
            .notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
        // Stop the watchers first, then handle what they already queued: a trigger that arrived
        // before the shutdown is never lost (its latch is written, its lockdown runs).
        self.file = None;
        self.signal = None;
        self.alarms = None;
        self.queues = None;
        self.cancel.cancel();
        while let Ok(event) = self.events_rx.try_recv() {
            self.on_trigger(event);
        }
        if self.state.activity().locking_down() {
            tracing::info!("waiting for the lockdown in flight to finish before stopping");
        }
        while self.state.activity().locking_down() {
            tokio::select! {
                ended = self.state.activity_mut().task_ended() => {
                    if let TaskEnded::Lockdown(result) = ended {
                        self.on_lockdown_finished(result);
                    }
                }
                _ = watchdog.tick(), if self.watchdog.is_some() => {
                    self.notifier.notify(&[NotifyState::Watchdog]);
                }
            }
        }
        if let Activity::Enforcing { task, cancel } =
            std::mem::replace(self.state.activity_mut(), Activity::IDLE)
        {
            cancel.cancel();
            let _ = task.await;
        }
        self.tracker.close();
        self.tracker.wait().await;
        // A latch whose write failed when the trigger fired has been retried on every latch
        // poll; one last try, and a stop that is not clean if it still fails.
        let mut unpersisted = None;
        if let Some(latched) = self.state.latched_mut()
            && !latched.persisted
        {
            latched.persisted = write_latch(&self.policy.state_file, &latched.latch);
            if !latched.persisted {
                unpersisted = Some(latched.latch.lockdown_id.clone());
            }
        }
        self.audit.record(Event::DaemonStopped).queued();
        tracing::info!("stopped");
        match unpersisted {
            Some(lockdown_id) => Err(DaemonError::LatchNotPersisted {
                path: self.policy.state_file.clone(),
                lockdown_id,
            }),
            None => Ok(()),
        }
    }

    /// What the daemon itself knows to be wrong, for the health watch: every watched alarm
    /// unreadable (the alarm trigger is blind). Enforcement failures are seen by the notifier in
    /// the `enforcement_failed` records themselves.
    fn health_reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        let alarm_regions: std::collections::BTreeSet<&str> = self
            .policy
            .triggers
            .alarms
            .iter()
            .map(|alarm| alarm.target.region.as_str())
            .collect();
        if !alarm_regions.is_empty()
            && alarm_regions
                .iter()
                .all(|region| self.unreadable_alarms.contains_key(*region))
        {
            reasons.push("every alarm unreadable".to_string());
        }
        reasons
    }

    fn notify_status(&self) {
        let status = self.status_line();
        self.notifier.notify(&[NotifyState::Status(&status)]);
    }

    /// The STATUS= line: "armed, 6 key stores, 2 alarms" or "LATCHED since … — 6/6 disconnected".
    fn status_line(&self) -> String {
        let mut line = match self.state.latched() {
            None => format!(
                "armed, {}, {}",
                crate::count(self.policy.key_stores.len(), "key store"),
                crate::count(self.policy.triggers.alarms.len(), "alarm")
            ),
            Some(latched) => match (latched.progress, self.state.activity().locking_down()) {
                (_, true) => format!(
                    "LATCHED since {} — lockdown in progress",
                    latched.latch.fired_at
                ),
                // Latched by `kms-killswitch trip`: the first enforcement round will tell.
                (None, false) => format!(
                    "LATCHED since {} — not yet verified by this daemon",
                    latched.latch.fired_at
                ),
                (Some((verified, total)), false) => format!(
                    "LATCHED since {} — {verified}/{total} disconnected",
                    latched.latch.fired_at
                ),
            },
        };
        if let Some(reason) = &self.flag_rejected {
            line.push_str(&format!("; flag rejected: {reason}"));
        }
        if !self.unreadable_queues.is_empty() {
            let queues: Vec<&str> = self.unreadable_queues.iter().map(String::as_str).collect();
            line.push_str(&format!("; queues unreadable: {}", queues.join(", ")));
        }
        if !self.unreadable_alarms.is_empty() {
            let regions: Vec<&str> = self.unreadable_alarms.keys().map(String::as_str).collect();
            line.push_str(&format!("; alarms unreadable in {}", regions.join(", ")));
        }
        line
    }
}

/// One enforcement round: every listed store re-checked, drift disconnected again (audited by the
/// engine). Returns (verified DISCONNECTED, listed).
async fn enforce_round<C: KeyStoreControl>(
    engine: &Engine<C>,
    key_stores: &[KeyStoreSpec],
    lockdown_id: &str,
    audit: &dyn AuditSink,
) -> (usize, usize) {
    let report = engine.enforce(key_stores, lockdown_id, audit).await;
    record_enforcement_failures(&report, lockdown_id, audit);
    let verified = report.stores.iter().filter(|s| s.verified).count();
    (verified, report.stores.len())
}

/// Audit every standard key an enforcement round could not check or disable (as for stores).
fn record_key_enforcement_failures(
    keys: &[crate::lockdown::EnforcedKey],
    lockdown_id: &str,
    audit: &dyn AuditSink,
) {
    for key in keys {
        let Some(error) = &key.error else { continue };
        let key_id = key
            .key_id
            .clone()
            .unwrap_or_else(|| key.spec.selector.to_string());
        tracing::warn!(key = %key_id, region = %key.spec.target.region, cause = %error, "enforcement round failed for a key");
        audit
            .record(Event::KeyEnforcementFailed {
                lockdown_id: lockdown_id.to_string(),
                key_id,
                region: key.spec.target.region.clone(),
                account: key.account.clone(),
                key_state: key.key_state.as_ref().map(|s| s.to_string()),
                error: error.clone(),
            })
            .queued();
    }
}

/// Audit every store an enforcement round could not check or disconnect (issue 10, item 5:
/// a round failing for hours must show in the audit log, not only in the journal).
fn record_enforcement_failures(
    report: &crate::lockdown::EnforceReport,
    lockdown_id: &str,
    audit: &dyn AuditSink,
) {
    for store in report.stores.iter() {
        let Some(error) = &store.error else { continue };
        let key_store_id =
            store
                .custom_key_store_id
                .clone()
                .unwrap_or_else(|| match &store.spec.selector {
                    KeyStoreSelector::Id(id) => id.clone(),
                    KeyStoreSelector::Name(name) => format!("name:{name}"),
                    KeyStoreSelector::All => "all".to_string(),
                });
        tracing::warn!(key_store = %key_store_id, region = %store.spec.target.region, cause = %error, "enforcement round failed for a key store");
        audit
            .record(Event::EnforcementFailed {
                lockdown_id: lockdown_id.to_string(),
                key_store_id,
                region: store.spec.target.region.clone(),
                account: store.account.clone(),
                connection_state: store.connection_state.as_ref().map(|s| s.to_string()),
                error: error.clone(),
            })
            .queued();
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Take the disconnect lock (on a blocking thread) before sending Disconnects for the latch, and
/// check the latch is still there once it is held (a rearm needs the lock exclusively, so from
/// then on the answer stays true). `None`: an accepted rearm cleared it, send nothing. `Some(None)`:
/// the lock could not be had; Disconnects go ahead anyway (never stopped by bookkeeping).
async fn hold_disconnect_lock(
    state_file: std::path::PathBuf,
    require_latch: bool,
) -> Option<Option<latch::DisconnectLock>> {
    let held = tokio::task::spawn_blocking(move || {
        let lock = match latch::lock_for_disconnects(&state_file) {
            Ok(lock) => Some(lock),
            Err(err) => {
                tracing::error!(cause = %error_chain(&err), "cannot hold the disconnect lock; disconnecting without it");
                None
            }
        };
        // An unreadable latch is not a rearm: fail closed.
        let rearmed = require_latch && matches!(latch::read(&state_file), Ok(None));
        (!rearmed).then_some(lock)
    })
    .await;
    held.unwrap_or(Some(None))
}

/// Write the latch; a failure is logged and the lockdown still runs (a kill switch is never
/// stopped by its own bookkeeping). Returns whether a latch is on disk (ours, or one another
/// process wrote first: the latch poll adopts that one).
fn write_latch(path: &std::path::Path, latch: &Latch) -> bool {
    match latch::write(path, latch) {
        Ok(()) | Err(latch::LatchError::AlreadyLatched { .. }) => true,
        Err(err) => {
            tracing::error!(path = %path.display(), cause = %error_chain(&err), "cannot write the latch; locking down anyway and retrying the write");
            false
        }
    }
}

#[cfg(test)]
mod tests;
