//! The daemon's state machine with in-memory fakes (KMS, CloudWatch, audit, systemd) and the
//! real lockdown engine, on tokio's paused clock. The file and signal triggers are off here
//! (their own tests and the integration tests cover them); triggers are injected on the queue.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::notify::fake::RecordingNotifier;
use super::*;
use crate::aws::fake::{DEFAULT_ACCOUNT, FakeAws};
use crate::model::ConnectionState;

#[derive(Default)]
struct FakeAudit {
    events: Mutex<Vec<Event>>,
    sha: Mutex<Vec<String>>,
}

impl AuditSink for FakeAudit {
    fn record(&self, event: Event) -> crate::audit::Recorded {
        self.events.lock().unwrap().push(event);
        crate::audit::Recorded::done()
    }
}

impl DaemonAudit for FakeAudit {
    fn set_policy_sha256(&self, policy_sha256: &str) {
        self.sha.lock().unwrap().push(policy_sha256.to_string());
    }
}

impl FakeAudit {
    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    fn names(&self) -> Vec<String> {
        self.events()
            .iter()
            .map(|e| {
                serde_json::to_value(e).unwrap()["event"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    fn count(&self, name: &str) -> usize {
        self.names().iter().filter(|n| *n == name).count()
    }
}

const STORES: [&str; 2] = ["cks-00000000000000001", "cks-00000000000000002"];

fn policy_text(dir: &Path, extra_triggers: &str, enforce: &str) -> String {
    format!(
        "version: 1\n\
         aws:\n  region: eu-west-1\n\
         key_stores:\n  - id: {}\n  - id: {}\n\
         triggers:\n  file:\n    path: {}/flag\n  signal: none\n{extra_triggers}\
         lockdown:\n  verify_timeout: 30s\n  enforce_interval: {enforce}\n  rate_limit: 5\n\
         state_file: {}/state/latch.json\n\
         audit_log: {}/audit/audit.jsonl\n",
        STORES[0],
        STORES[1],
        dir.display(),
        dir.display(),
        dir.display()
    )
}

fn alarms_yaml() -> &'static str {
    "  alarms:\n    - name: big-red-button\n      consecutive: 1\n  alarm_poll_interval: 10s\n"
}

fn parse(text: &str, dir: &Path) -> Policy {
    crate::policy::parse(text, &dir.join("policy.yaml")).unwrap_or_else(|err| panic!("{err}"))
}

/// A daemon running on the paused clock, with handles on every fake.
struct Harness {
    dir: tempfile::TempDir,
    kms: Arc<FakeAws>,
    /// The same fake as `kms` (one fake of KMS and CloudWatch).
    alarms: Arc<FakeAws>,
    audit: Arc<FakeAudit>,
    notifier: Arc<RecordingNotifier>,
    triggers: mpsc::Sender<TriggerEvent>,
    reload: mpsc::Sender<()>,
    /// The next policy a reload reads (`Err` text = invalid).
    next_policy: Arc<Mutex<Result<Policy, String>>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), DaemonError>>,
}

struct Options {
    delay: Duration,
    alarms: bool,
    enforce: &'static str,
    watchdog: Option<Duration>,
    latched_at_start: bool,
    keep_warm: Option<KeepWarm>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            delay: Duration::from_millis(10),
            alarms: false,
            enforce: "30s",
            watchdog: None,
            latched_at_start: false,
            keep_warm: None,
        }
    }
}

impl Harness {
    async fn start(options: Options) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let extra = if options.alarms { alarms_yaml() } else { "" };
        let policy = parse(&policy_text(dir.path(), extra, options.enforce), dir.path());
        if options.latched_at_start {
            let latch = new_latch(TriggerSource::File, "before the crash".into());
            latch::write(&policy.state_file, &latch).unwrap();
        }
        // Disconnects take `delay` and record whether the latch was on disk.
        let kms = Arc::new(FakeAws::new(Duration::ZERO));
        for id in STORES {
            kms.add(id, DEFAULT_ACCOUNT, ConnectionState::Connected);
        }
        kms.with(|s| s.disconnect_latency = options.delay);
        let latch_path = policy.state_file.clone();
        kms.probe_disconnects(move || latch_path.exists());
        let alarms = kms.clone();
        alarms.answer_alarms(vec![Ok(vec![("big-red-button", "OK")])]);
        let audit = Arc::new(FakeAudit::default());
        let notifier = Arc::new(RecordingNotifier::default());
        let next_policy = Arc::new(Mutex::new(Ok(policy.clone())));
        let loader = next_policy.clone();
        let daemon = Daemon::new(DaemonConfig {
            policy,
            control: kms.clone(),
            alarms: alarms.clone(),
            audit: audit.clone(),
            notifier: notifier.clone(),
            load_policy: Box::new(move || {
                loader.lock().unwrap().clone().map_err(|e: String| e.into())
            }),
            watchdog: options.watchdog,
            signal_watch: None,
            keep_warm: options.keep_warm.clone(),
        });
        let triggers = daemon.trigger_sender();
        let (reload, reload_rx) = mpsc::channel(1);
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(daemon.run(
            async move {
                let _ = shutdown_rx.await;
            },
            reload_rx,
        ));
        let harness = Harness {
            dir,
            kms,
            alarms,
            audit,
            notifier,
            triggers,
            reload,
            next_policy,
            shutdown: Some(shutdown),
            task,
        };
        harness
            .wait_until("READY", |h| {
                h.notifier.lines().iter().any(|l| l.contains("READY=1"))
            })
            .await;
        harness
    }

    fn state_file(&self) -> PathBuf {
        self.dir.path().join("state/latch.json")
    }

    async fn fire(&self, source: TriggerSource) {
        self.triggers
            .send(TriggerEvent::Fired {
                source,
                detail: serde_json::json!({"test": true}),
            })
            .await
            .unwrap();
    }

    /// What `kms-killswitch rearm` does to the state directory: the tombstone naming the
    /// latched lockdown first, then the latch removed.
    fn rearm_on_disk(&self) {
        let on_disk = latch::read(&self.state_file()).unwrap().expect("latched");
        let tombstone = latch::Tombstone {
            lockdown_id: on_disk.lockdown_id,
            rearmed_at: "2026-12-01T00:00:00.000Z".into(),
        };
        latch::write_tombstone(&self.state_file(), &tombstone).unwrap();
        latch::clear(&self.state_file()).unwrap();
    }

    /// Let the paused clock run (auto-advancing while idle) until `condition` holds.
    async fn wait_until(&self, what: &str, condition: impl Fn(&Harness) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(600);
        while !condition(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; audit: {:?}",
                self.audit.names()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(mut self) -> Harness {
        let _ = self.shutdown.take().unwrap().send(());
        (&mut self.task).await.unwrap().unwrap();
        self
    }
}

fn statuses(notifier: &RecordingNotifier) -> Vec<String> {
    notifier
        .lines()
        .iter()
        .flat_map(|m| m.lines().map(str::to_string).collect::<Vec<_>>())
        .filter_map(|l| l.strip_prefix("STATUS=").map(str::to_string))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn first_trigger_latches_before_the_first_disconnect_and_locks_down() {
    let h = Harness::start(Options::default()).await;
    assert_eq!(
        statuses(&h.notifier).last().unwrap(),
        "armed, 2 key stores, 0 alarms"
    );
    h.fire(TriggerSource::Signal).await;
    h.wait_until("lockdown finished", |h| {
        h.audit.count("lockdown_finished") == 1
    })
    .await;
    let disconnects = h.kms.disconnects();
    assert_eq!(disconnects.len(), 2);
    assert!(
        disconnects.iter().all(|(_, latched)| *latched),
        "latch on disk before every Disconnect"
    );
    let latch = latch::read(&h.state_file()).unwrap().expect("latched");
    assert_eq!(latch.trigger, TriggerSource::Signal);
    let names = h.audit.names();
    let fired = names.iter().position(|n| n == "trigger_fired").unwrap();
    let started = names.iter().position(|n| n == "lockdown_started").unwrap();
    assert!(fired < started, "{names:?}");
    for id in STORES {
        assert_eq!(h.kms.state(id), Some(ConnectionState::Disconnected));
    }
    h.wait_until("status shows the result", |h| {
        statuses(&h.notifier)
            .last()
            .is_some_and(|s| s.starts_with("LATCHED since") && s.ends_with("2/2 disconnected"))
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn triggers_while_latched_are_audited_and_start_no_second_lockdown() {
    let h = Harness::start(Options::default()).await;
    h.fire(TriggerSource::File).await;
    h.fire(TriggerSource::Alarm).await;
    h.wait_until("lockdown finished", |h| {
        h.audit.count("lockdown_finished") == 1
    })
    .await;
    h.fire(TriggerSource::Signal).await;
    h.wait_until("third trigger audited", |h| {
        h.audit.count("trigger_fired") == 3
    })
    .await;
    let latched: Vec<bool> = h
        .audit
        .events()
        .iter()
        .filter_map(|e| match e {
            Event::TriggerFired { latched, .. } => Some(*latched),
            _ => None,
        })
        .collect();
    assert_eq!(latched, vec![false, true, true]);
    assert_eq!(h.audit.count("lockdown_started"), 1);
    assert_eq!(h.kms.disconnects().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn latch_present_at_start_resumes_the_lockdown() {
    let h = Harness::start(Options {
        latched_at_start: true,
        ..Options::default()
    })
    .await;
    h.wait_until("lockdown finished", |h| {
        h.audit.count("lockdown_finished") == 1
    })
    .await;
    let resumed = h.audit.events().into_iter().find_map(|e| match e {
        Event::TriggerFired {
            source,
            detail,
            latched,
        } => Some((source, detail, latched)),
        _ => None,
    });
    let (source, detail, latched) = resumed.expect("trigger_fired");
    assert_eq!(source, TriggerSource::Resume);
    assert!(!latched);
    assert_eq!(detail["detail"], "before the crash");
    assert_eq!(h.kms.disconnects().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_the_lockdown_in_flight() {
    let h = Harness::start(Options {
        delay: Duration::from_secs(5),
        ..Options::default()
    })
    .await;
    h.fire(TriggerSource::File).await;
    h.wait_until("first disconnect sent", |h| !h.kms.disconnects().is_empty())
        .await;
    let h = h.stop().await;
    let names = h.audit.names();
    let finished = names
        .iter()
        .position(|n| n == "lockdown_finished")
        .expect("lockdown finished before stopping");
    let stopped = names
        .iter()
        .position(|n| n == "daemon_stopped")
        .expect("daemon_stopped");
    assert!(finished < stopped, "{names:?}");
    assert_eq!(names.last().unwrap(), "daemon_stopped");
    for id in STORES {
        assert_eq!(h.kms.state(id), Some(ConnectionState::Disconnected));
    }
    assert!(h.notifier.lines().iter().any(|l| l.contains("STOPPING=1")));
}

#[tokio::test(start_paused = true)]
async fn trigger_queued_with_the_shutdown_still_latches_and_locks_down() {
    let mut h = Harness::start(Options::default()).await;
    h.fire(TriggerSource::Signal).await;
    let _ = h.shutdown.take().unwrap().send(());
    (&mut h.task).await.unwrap().unwrap();
    assert!(latch::read(&h.state_file()).unwrap().is_some());
    assert_eq!(h.audit.count("lockdown_finished"), 1);
}

#[tokio::test(start_paused = true)]
async fn enforcement_disconnects_a_reconnected_store_again() {
    let h = Harness::start(Options {
        enforce: "30s",
        ..Options::default()
    })
    .await;
    h.fire(TriggerSource::File).await;
    h.wait_until("lockdown finished", |h| {
        h.audit.count("lockdown_finished") == 1
    })
    .await;
    h.kms.set(STORES[1], ConnectionState::Connected);
    h.wait_until("drift detected", |h| h.audit.count("drift_detected") == 1)
        .await;
    h.wait_until("store disconnected again", |h| {
        h.kms.state(STORES[1]) == Some(ConnectionState::Disconnected)
    })
    .await;
    assert_eq!(h.kms.disconnects().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn trigger_right_after_rearm_fires_before_the_next_latch_poll() {
    let h = Harness::start(Options::default()).await;
    h.fire(TriggerSource::File).await;
    h.wait_until("lockdown finished", |h| {
        h.audit.count("lockdown_finished") == 1
    })
    .await;
    for id in STORES {
        h.kms.set(id, ConnectionState::Connected);
    }
    // `kms-killswitch rearm` removes the latch, and a responder trips again before the daemon's
    // next latch poll has seen it.
    h.rearm_on_disk();
    h.fire(TriggerSource::Signal).await;
    h.wait_until("second lockdown", |h| {
        h.audit.count("lockdown_finished") == 2
    })
    .await;
    assert!(
        !h.audit
            .events()
            .iter()
            .any(|e| matches!(e, Event::TriggerFired { latched: true, .. })),
        "the trigger after the rearm was taken for one while latched"
    );
    assert!(latch::read(&h.state_file()).unwrap().is_some());
    assert_eq!(h.kms.disconnects().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_latch_deleted_without_a_rearm_is_written_back_and_audited_as_tampering() {
    let h = Harness::start(Options::default()).await;
    h.fire(TriggerSource::File).await;
    h.wait_until("lockdown finished", |h| {
        h.audit.count("lockdown_finished") == 1
    })
    .await;
    let before = latch::read(&h.state_file()).unwrap();
    latch::clear(&h.state_file()).unwrap();
    h.wait_until("latch_tampered", |h| h.audit.count("latch_tampered") == 1)
        .await;
    assert_eq!(latch::read(&h.state_file()).unwrap(), before);
    assert!(
        statuses(&h.notifier)
            .last()
            .is_some_and(|s| s.starts_with("LATCHED")),
        "still latched"
    );
}

#[tokio::test(start_paused = true)]
async fn cleared_latch_rearms_within_a_second_and_the_next_trigger_locks_down_again() {
    let h = Harness::start(Options::default()).await;
    h.fire(TriggerSource::File).await;
    h.wait_until("lockdown finished", |h| {
        h.audit.count("lockdown_finished") == 1
    })
    .await;
    for id in STORES {
        h.kms.set(id, ConnectionState::Connected);
    }
    h.rearm_on_disk();
    let cleared_at = Instant::now();
    h.wait_until("armed again", |h| {
        statuses(&h.notifier)
            .last()
            .is_some_and(|s| s.starts_with("armed"))
    })
    .await;
    assert!(
        cleared_at.elapsed() <= Duration::from_secs(1),
        "armed within a second"
    );
    assert_eq!(
        h.audit.count("drift_detected"),
        0,
        "no enforcement once rearmed"
    );
    h.fire(TriggerSource::Signal).await;
    h.wait_until("second lockdown", |h| {
        h.audit.count("lockdown_finished") == 2
    })
    .await;
    assert_eq!(h.kms.disconnects().len(), 4);
    assert!(latch::read(&h.state_file()).unwrap().is_some());
}

#[tokio::test(start_paused = true)]
async fn invalid_reload_is_rejected_and_the_old_policy_stays() {
    let h = Harness::start(Options::default()).await;
    *h.next_policy.lock().unwrap() = Err("policy /x: line 3: unknown key `bogus`".into());
    h.reload.send(()).await.unwrap();
    h.wait_until("rejected", |h| h.audit.count("policy_rejected") == 1)
        .await;
    let lines = h.notifier.lines();
    let reloading = lines
        .iter()
        .position(|l| l.contains("RELOADING=1") && l.contains("MONOTONIC_USEC="))
        .unwrap();
    assert!(lines[reloading + 1..].iter().any(|l| l.contains("READY=1")));
    // The old policy still works.
    h.fire(TriggerSource::File).await;
    h.wait_until("lockdown finished", |h| {
        h.audit.count("lockdown_finished") == 1
    })
    .await;
    assert_eq!(h.kms.disconnects().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn valid_reload_swaps_the_policy_and_its_hash() {
    let h = Harness::start(Options::default()).await;
    let text = policy_text(h.dir.path(), alarms_yaml(), "30s");
    let new = parse(&text, h.dir.path());
    let sha = new.sha256.clone();
    *h.next_policy.lock().unwrap() = Ok(new);
    h.reload.send(()).await.unwrap();
    h.wait_until("policy loaded twice", |h| {
        h.audit.count("policy_loaded") == 2
    })
    .await;
    assert_eq!(h.audit.sha.lock().unwrap().clone(), vec![sha]);
    h.wait_until("status counts the new alarm", |h| {
        statuses(&h.notifier)
            .last()
            .is_some_and(|s| s == "armed, 2 key stores, 1 alarm")
    })
    .await;
    // The new alarm trigger is live.
    h.alarms
        .answer_alarms(vec![Ok(vec![("big-red-button", "ALARM")])]);
    h.wait_until("alarm trip", |h| h.audit.count("lockdown_finished") == 1)
        .await;
}

#[tokio::test(start_paused = true)]
async fn reload_that_moves_the_state_file_is_rejected() {
    let h = Harness::start(Options::default()).await;
    let text =
        policy_text(h.dir.path(), "", "30s").replace("/state/latch.json", "/elsewhere/latch.json");
    *h.next_policy.lock().unwrap() = Ok(parse(&text, h.dir.path()));
    h.reload.send(()).await.unwrap();
    h.wait_until("rejected", |h| h.audit.count("policy_rejected") == 1)
        .await;
    match h
        .audit
        .events()
        .iter()
        .find(|e| matches!(e, Event::PolicyRejected { .. }))
    {
        Some(Event::PolicyRejected { error }) => {
            assert!(error.contains("needs a restart"), "{error}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn rejected_trigger_is_audited_and_does_not_latch() {
    let h = Harness::start(Options::default()).await;
    h.triggers
        .send(TriggerEvent::Rejected {
            source: TriggerSource::File,
            reason: "owned by uid 65534".into(),
        })
        .await
        .unwrap();
    h.wait_until("rejected", |h| h.audit.count("trigger_rejected") == 1)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(latch::read(&h.state_file()).unwrap().is_none());
    assert!(h.kms.disconnects().is_empty());
}

#[tokio::test(start_paused = true)]
async fn ready_carries_the_armed_status_then_watchdog_pings_at_half_the_period() {
    let h = Harness::start(Options {
        alarms: true,
        watchdog: Some(Duration::from_secs(4)),
        ..Options::default()
    })
    .await;
    let ready_at = h
        .notifier
        .lines()
        .iter()
        .position(|l| l.contains("READY=1"))
        .unwrap();
    assert!(h.notifier.lines()[ready_at].contains("STATUS=armed, 2 key stores, 1 alarm"));
    let before = Instant::now();
    h.wait_until("two watchdog pings", |h| {
        h.notifier
            .lines()
            .iter()
            .filter(|l| l.as_str() == "WATCHDOG=1")
            .count()
            >= 2
    })
    .await;
    assert!(
        before.elapsed() <= Duration::from_secs(3),
        "pings every 2 s"
    );
    let h = h.stop().await;
    let stopping = h
        .notifier
        .lines()
        .iter()
        .position(|l| l.contains("STOPPING=1"))
        .expect("STOPPING=1");
    assert!(stopping > ready_at);
}

#[tokio::test(start_paused = true)]
async fn alarm_poll_failures_are_audited_and_shown_in_status() {
    let h = Harness::start(Options::default()).await;
    h.triggers
        .send(TriggerEvent::AlarmPollFailed {
            alarm_names: vec!["a".into()],
            region: "eu-west-1".into(),
            error: "AccessDenied".into(),
        })
        .await
        .unwrap();
    h.wait_until("audited", |h| h.audit.count("alarm_poll_failed") == 1)
        .await;
    assert!(
        statuses(&h.notifier)
            .last()
            .unwrap()
            .contains("alarms unreadable in eu-west-1")
    );
    h.triggers
        .send(TriggerEvent::AlarmPollRecovered {
            alarm_names: vec!["a".into()],
            region: "eu-west-1".into(),
        })
        .await
        .unwrap();
    h.wait_until("status recovered", |h| {
        !statuses(&h.notifier).last().unwrap().contains("unreadable")
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn latch_written_by_trip_is_adopted_and_enforced_without_a_second_lockdown() {
    let h = Harness::start(Options::default()).await;
    // `kms-killswitch trip` from a shell: it writes the latch and runs its own lockdown; here
    // one store is still connected when the daemon looks.
    let latch = new_latch(TriggerSource::Cli, "operator: drill".into());
    latch::write(&h.state_file(), &latch).unwrap();
    h.kms.set(STORES[0], ConnectionState::Disconnected);
    h.wait_until("adopted", |h| {
        statuses(&h.notifier)
            .last()
            .is_some_and(|s| s.ends_with("not yet verified by this daemon"))
    })
    .await;
    h.wait_until("enforced", |h| h.audit.count("drift_detected") == 1)
        .await;
    h.wait_until("disconnected", |h| {
        h.kms.state(STORES[1]) == Some(ConnectionState::Disconnected)
    })
    .await;
    assert_eq!(
        h.audit.count("lockdown_started"),
        0,
        "the daemon started no lockdown of its own"
    );
    assert_eq!(h.audit.count("trigger_fired"), 0);
}

#[tokio::test(start_paused = true)]
async fn credentials_are_kept_warm_while_armed() {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = calls.clone();
    let keep_warm: KeepWarm = Arc::new(move || {
        let counter = counter.clone();
        Box::pin(async move {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
    });
    let h = Harness::start(Options {
        keep_warm: Some(keep_warm),
        ..Options::default()
    })
    .await;
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "start-up warmed them already"
    );
    tokio::time::sleep(KEEP_WARM_INTERVAL * 3 + Duration::from_secs(1)).await;
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    drop(h);
}

/// A queue trip: acked only once the latch is on disk and `trigger_fired` recorded; a second
/// one while latched is acked too, and starts no lockdown.
#[tokio::test(start_paused = true)]
async fn a_queue_trip_is_acked_after_the_latch_and_its_record_and_only_once_locked_down() {
    let h = Harness::start(Options::default()).await;
    let (ack, mut acked) = crate::trigger::QueueAck::new();
    h.triggers
        .send(TriggerEvent::QueueFired {
            detail: serde_json::json!({"queue": "q", "message_id": "m-1"}),
            ack,
            key_store_event: false,
        })
        .await
        .unwrap();
    h.wait_until("acked", |_| true).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(acked.try_recv(), Ok(()), "acked once durable");
    assert!(
        h.state_file().exists(),
        "the latch is on disk when the ack goes out"
    );
    assert_eq!(h.audit.count("trigger_fired"), 1);
    h.wait_until("lockdown finished", |h| {
        h.audit.count("lockdown_finished") == 1
    })
    .await;
    let (again, mut acked_again) = crate::trigger::QueueAck::new();
    h.triggers
        .send(TriggerEvent::QueueFired {
            detail: serde_json::json!({"queue": "q", "message_id": "m-1"}),
            ack: again,
            key_store_event: false,
        })
        .await
        .unwrap();
    h.wait_until("second trigger audited", |h| {
        h.audit.count("trigger_fired") == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(acked_again.try_recv(), Ok(()));
    assert_eq!(h.audit.count("lockdown_started"), 1, "no second lockdown");
}

/// While latched with a 5-minute enforce_interval, a ConnectCustomKeyStore event on a queue
/// starts an enforcement round at once.
#[tokio::test(start_paused = true)]
async fn a_key_store_event_while_latched_enforces_now_not_at_the_interval() {
    let h = Harness::start(Options {
        enforce: "5m",
        ..Options::default()
    })
    .await;
    h.fire(TriggerSource::File).await;
    h.wait_until("lockdown finished", |h| {
        h.audit.count("lockdown_finished") == 1
    })
    .await;
    h.kms.set(STORES[0], ConnectionState::Connected);
    let before = Instant::now();
    let (ack, _acked) = crate::trigger::QueueAck::new();
    h.triggers
        .send(TriggerEvent::QueueFired {
            detail: serde_json::json!({"carried": {"event_name": "ConnectCustomKeyStore"}}),
            ack,
            key_store_event: true,
        })
        .await
        .unwrap();
    h.wait_until("drift disconnected again", |h| {
        h.audit.count("drift_detected") == 1
    })
    .await;
    assert!(
        Instant::now() - before < Duration::from_secs(5),
        "enforced at once, not after enforce_interval"
    );
    assert_eq!(h.audit.count("lockdown_started"), 1);
}

#[tokio::test(start_paused = true)]
async fn an_ignored_message_and_an_unreadable_queue_are_audited_and_shown_in_status() {
    let h = Harness::start(Options::default()).await;
    h.triggers
        .send(TriggerEvent::Ignored {
            source: TriggerSource::Queue,
            reason: "not JSON".into(),
        })
        .await
        .unwrap();
    h.triggers
        .send(TriggerEvent::QueuePollFailed {
            queue_url: "https://sqs.eu-west-1.amazonaws.com/111122223333/q".into(),
            error: "ConnectionDropped".into(),
        })
        .await
        .unwrap();
    h.wait_until("status names the queue", |h| {
        statuses(&h.notifier).last().is_some_and(|s| {
            s.ends_with("; queues unreadable: https://sqs.eu-west-1.amazonaws.com/111122223333/q")
        })
    })
    .await;
    assert_eq!(h.audit.count("trigger_ignored"), 1);
    assert_eq!(h.audit.count("queue_poll_failed"), 1);
    h.triggers
        .send(TriggerEvent::QueuePollRecovered {
            queue_url: "https://sqs.eu-west-1.amazonaws.com/111122223333/q".into(),
        })
        .await
        .unwrap();
    h.wait_until("status back", |h| {
        statuses(&h.notifier)
            .last()
            .is_some_and(|s| s == "armed, 2 key stores, 0 alarms")
    })
    .await;
    assert_eq!(h.audit.count("trigger_fired"), 0);
}
