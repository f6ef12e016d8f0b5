//! The CloudWatch alarm trigger: poll the watched alarms (metric and composite) and fire when one
//! is seen in `ALARM` on `consecutive` polls in a row. One DescribeAlarms per account+region
//! ([`Target`]) per poll, with every watched name of that target (the [`AlarmSource`] adapter
//! splits at 100 names and follows `NextToken`). Each account+region polls on its own timer,
//! concurrently with the others: a slow or dead region delays nobody else.
//!
//! A failed poll or an alarm missing from the answer is reported ([`TriggerEvent::AlarmPollFailed`],
//! once per change) but never fires by itself — except with `fail_closed_after`, the dead man's
//! switch, which fires once an alarm has been unreadable that long. It owns the poll timer and the
//! per-alarm counters; it only sends [`TriggerEvent`]s and never touches KMS or the latch.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::aws::{AlarmSource, AlarmState, AlarmStateValue};
use crate::model::{Target, TriggerSource};
use crate::policy::AlarmSpec;
use crate::trigger::TriggerEvent;

/// The CloudWatch state that counts towards firing.
const ALARM: AlarmStateValue = AlarmStateValue::Alarm;
/// Each history read starts this long before the previous poll began: CloudWatch stamps a
/// change when it records it, and clocks differ a little; a transition read twice is recognised
/// by its timestamp and fires once.
const HISTORY_OVERLAP: Duration = Duration::from_secs(5);

/// What the alarm trigger needs from the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmConfig {
    pub alarms: Vec<AlarmSpec>,
    pub poll_interval: Duration,
    pub fail_closed_after: Option<Duration>,
}

/// One watched alarm and what the last polls said about it.
#[derive(Debug)]
struct Tracked {
    name: String,
    consecutive: u32,
    /// Polls in a row that saw it in ALARM.
    in_alarm_polls: u32,
    /// Fired for the current ALARM episode (reset when it leaves ALARM).
    fired: bool,
    /// Since when it could not be read (failed poll or missing); `None` while readable.
    unreadable_since: Option<Instant>,
    /// The dead man's switch fired for the current unreadable stretch.
    fail_closed_fired: bool,
    /// `transitions: true`: its history is read every poll.
    transitions: bool,
    /// The latest transition into ALARM taken from its history (each fires once).
    last_transition: Option<std::time::SystemTime>,
}

/// The alarms of one account+region (one DescribeAlarms per poll).
#[derive(Debug)]
struct Group {
    target: Target,
    names: Vec<String>,
    alarms: Vec<Tracked>,
    /// The problem last reported for this group (`None`: all readable), so that a persistent
    /// problem is reported once, not on every poll.
    reported_problem: Option<String>,
    /// The alarms with `transitions: true` (empty: DescribeAlarmHistory is never called).
    transition_names: Vec<String>,
    /// When the last poll whose history was read began (wall clock, as CloudWatch stamps).
    history_since: std::time::SystemTime,
}

/// The alarm poller.
pub struct AlarmWatch<A> {
    source: Arc<A>,
    groups: Vec<Group>,
    poll_interval: Duration,
    fail_closed_after: Option<Duration>,
    events: mpsc::Sender<TriggerEvent>,
}

impl<A: AlarmSource> AlarmWatch<A> {
    pub fn new(source: Arc<A>, config: &AlarmConfig, events: mpsc::Sender<TriggerEvent>) -> Self {
        let by_target =
            crate::model::group_by_target(config.alarms.iter().map(|s| (s.target.clone(), s)));
        let groups = by_target
            .into_iter()
            .map(|(target, specs)| Group {
                target,
                names: specs.iter().map(|s| s.name.clone()).collect(),
                alarms: specs
                    .iter()
                    .map(|s| Tracked {
                        name: s.name.clone(),
                        consecutive: s.consecutive.max(1),
                        in_alarm_polls: 0,
                        fired: false,
                        unreadable_since: None,
                        fail_closed_fired: false,
                        transitions: s.transitions,
                        last_transition: None,
                    })
                    .collect(),
                reported_problem: None,
                transition_names: specs
                    .iter()
                    .filter(|s| s.transitions)
                    .map(|s| s.name.clone())
                    .collect(),
                history_since: std::time::SystemTime::now(),
            })
            .collect();
        AlarmWatch {
            source,
            groups,
            poll_interval: config.poll_interval,
            fail_closed_after: config.fail_closed_after,
            events,
        }
    }

    /// Poll every `poll_interval` until cancelled. `started` is sent as the first poll begins
    /// (the daemon reports READY only after that). Each account+region polls on its own timer,
    /// concurrently with the others (futures of this one task, not spawned tasks): a region whose
    /// DescribeAlarms is slow or never answers delays no other region's polls or firing.
    pub async fn run(self, cancel: CancellationToken, started: oneshot::Sender<()>) {
        let AlarmWatch {
            source,
            groups,
            poll_interval,
            fail_closed_after,
            events,
        } = self;
        let _ = started.send(());
        let pollers = groups.into_iter().map(|group| {
            poll_group_forever(group, &*source, poll_interval, fail_closed_after, &events)
        });
        tokio::select! {
            // Stopped by the daemon (shutdown or a reload that changed the alarms).
            _ = cancel.cancelled() => {}
            _ = join_all(pollers) => {}
        }
    }

    /// One poll of every group, concurrently; each group's events are sent as soon as its own
    /// answer is in.
    #[cfg(test)]
    async fn poll_once(&mut self) {
        let source = &self.source;
        let events = &self.events;
        let fail_closed_after = self.fail_closed_after;
        join_all(self.groups.iter_mut().map(|group| async move {
            for event in poll_group(group, &**source, fail_closed_after).await {
                // The receiver is gone only when the daemon is stopping.
                let _ = events.send(event).await;
            }
        }))
        .await;
    }
}

/// One group's poll loop: poll, send its events, wait for its next tick. Never returns.
async fn poll_group_forever<A: AlarmSource>(
    mut group: Group,
    source: &A,
    poll_interval: Duration,
    fail_closed_after: Option<Duration>,
    events: &mpsc::Sender<TriggerEvent>,
) {
    let mut ticks = tokio::time::interval(poll_interval);
    // A slow poll delays this group's next one rather than causing a burst.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        for event in poll_group(&mut group, source, fail_closed_after).await {
            // The receiver is gone only when the daemon is stopping.
            let _ = events.send(event).await;
        }
    }
}

/// One DescribeAlarms for one group, then its dead man's switch; the events to send.
async fn poll_group<A: AlarmSource>(
    group: &mut Group,
    source: &A,
    fail_closed_after: Option<Duration>,
) -> Vec<TriggerEvent> {
    let mut out = Vec::new();
    let poll_started = std::time::SystemTime::now();
    let result = source.describe_alarms(&group.target, &group.names).await;
    let now = Instant::now();
    match result {
        Err(err) => {
            let problem = err.to_string();
            tracing::warn!(region = %group.target.region, alarms = ?group.names, cause = %problem, "alarm poll failed");
            for alarm in &mut group.alarms {
                alarm.in_alarm_polls = 0;
                alarm.unreadable_since.get_or_insert(now);
            }
            if group.reported_problem.as_deref() != Some(problem.as_str()) {
                out.push(TriggerEvent::AlarmPollFailed {
                    alarm_names: group.names.clone(),
                    region: group.target.region.clone(),
                    error: problem.clone(),
                });
                group.reported_problem = Some(problem);
            }
        }
        Ok(states) => observe_group(group, &states, now, &mut out),
    }
    if !group.transition_names.is_empty() {
        read_transitions(group, source, poll_started, &mut out).await;
    }
    if let Some(limit) = fail_closed_after {
        fail_closed(group, limit, now, &mut out);
    }
    out
}

/// Take in one readable answer for a group: count each alarm, report missing ones (once per
/// change) and the recovery.
fn observe_group(
    group: &mut Group,
    states: &[AlarmState],
    now: Instant,
    out: &mut Vec<TriggerEvent>,
) {
    let mut missing = Vec::new();
    for alarm in &mut group.alarms {
        match states.iter().find(|s| s.alarm_name == alarm.name) {
            None => {
                missing.push(alarm.name.clone());
                alarm.in_alarm_polls = 0;
                alarm.unreadable_since.get_or_insert(now);
            }
            Some(state) => {
                if let Some(event) = observe(alarm, &group.target, state) {
                    out.push(event);
                }
            }
        }
    }
    let problem = (!missing.is_empty()).then(|| format!("alarm not found: {}", missing.join(", ")));
    if problem != group.reported_problem {
        match &problem {
            Some(error) => {
                tracing::warn!(region = %group.target.region, alarms = ?missing, "watched alarm not found");
                out.push(TriggerEvent::AlarmPollFailed {
                    alarm_names: missing,
                    region: group.target.region.clone(),
                    error: error.clone(),
                });
            }
            None => {
                tracing::info!(region = %group.target.region, "watched alarms are readable again");
                out.push(TriggerEvent::AlarmPollRecovered {
                    alarm_names: group.names.clone(),
                    region: group.target.region.clone(),
                });
            }
        }
        group.reported_problem = problem;
    }
}

/// `transitions: true`: one DescribeAlarmHistory for the group's such alarms; fire for each
/// transition into ALARM since the previous poll that the DescribeAlarms answer did not already
/// fire for (an ALARM that reverted before this poll). A failed read is retried next poll from
/// the same point, so nothing in between is missed.
async fn read_transitions<A: AlarmSource>(
    group: &mut Group,
    source: &A,
    poll_started: std::time::SystemTime,
    out: &mut Vec<TriggerEvent>,
) {
    let since = group
        .history_since
        .checked_sub(HISTORY_OVERLAP)
        .unwrap_or(group.history_since);
    let transitions = match source
        .alarm_transitions(&group.target, &group.transition_names, since)
        .await
    {
        Ok(transitions) => transitions,
        Err(err) => {
            tracing::warn!(region = %group.target.region, alarms = ?group.transition_names, cause = %err, "alarm history read failed; retrying at the next poll");
            return;
        }
    };
    group.history_since = poll_started;
    for transition in transitions {
        let Some(alarm) = group
            .alarms
            .iter_mut()
            .find(|a| a.transitions && a.name == transition.alarm_name)
        else {
            continue;
        };
        if alarm
            .last_transition
            .is_some_and(|seen| transition.timestamp <= seen)
        {
            continue;
        }
        alarm.last_transition = Some(transition.timestamp);
        if alarm.fired {
            // This poll (or an earlier one of the same ALARM episode) fired already.
            continue;
        }
        alarm.fired = true;
        tracing::warn!(alarm = %alarm.name, region = %group.target.region, "alarm history shows a transition into ALARM since the last poll; firing");
        out.push(TriggerEvent::Fired {
            source: TriggerSource::Alarm,
            detail: serde_json::json!({
                "alarm": alarm.name,
                "region": group.target.region,
                "state_reason": transition.state_reason,
                "transition_at": humantime::format_rfc3339_millis(transition.timestamp).to_string(),
                "via": "alarm_history",
            }),
        });
    }
}

/// The dead man's switch: fire once per unreadable stretch that lasts `limit`.
fn fail_closed(group: &mut Group, limit: Duration, now: Instant, out: &mut Vec<TriggerEvent>) {
    for alarm in &mut group.alarms {
        let Some(since) = alarm.unreadable_since else {
            continue;
        };
        let unreadable_for = now.saturating_duration_since(since);
        if unreadable_for >= limit && !alarm.fail_closed_fired {
            alarm.fail_closed_fired = true;
            tracing::error!(alarm = %alarm.name, region = %group.target.region, "alarm unreadable for longer than fail_closed_after; firing");
            out.push(TriggerEvent::Fired {
                source: TriggerSource::Alarm,
                detail: serde_json::json!({
                    "alarm": alarm.name,
                    "region": group.target.region,
                    "reason": "fail_closed_after",
                    "unreadable_for_ms": u64::try_from(unreadable_for.as_millis()).unwrap_or(u64::MAX),
                }),
            });
        }
    }
}

/// Count one readable observation; the event to send when it completes a streak.
fn observe(alarm: &mut Tracked, target: &Target, state: &AlarmState) -> Option<TriggerEvent> {
    alarm.unreadable_since = None;
    alarm.fail_closed_fired = false;
    if state.state_value != ALARM {
        alarm.in_alarm_polls = 0;
        alarm.fired = false;
        return None;
    }
    alarm.in_alarm_polls = alarm.in_alarm_polls.saturating_add(1);
    if alarm.in_alarm_polls < alarm.consecutive || alarm.fired {
        return None;
    }
    alarm.fired = true;
    tracing::warn!(alarm = %alarm.name, region = %target.region, polls = alarm.in_alarm_polls, "alarm in ALARM; firing");
    Some(TriggerEvent::Fired {
        source: TriggerSource::Alarm,
        detail: serde_json::json!({
            "alarm": alarm.name,
            "region": target.region,
            "alarm_type": state.alarm_type,
            "state_reason": state.state_reason,
            "consecutive_polls": alarm.in_alarm_polls,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::ErrorKind;
    use crate::aws::fake::{AlarmAnswer, FakeAws};

    /// CloudWatch answering `answers`, one per DescribeAlarms (the last one repeats).
    fn alarms(answers: Vec<AlarmAnswer>) -> Arc<FakeAws> {
        let fake = Arc::new(FakeAws::default());
        fake.answer_alarms(answers);
        fake
    }

    fn spec(name: &str, region: &str, consecutive: u32) -> AlarmSpec {
        AlarmSpec {
            name: name.into(),
            target: Target {
                region: region.into(),
                role_arn: None,
            },
            consecutive,
            transitions: false,
        }
    }

    fn config(alarms: Vec<AlarmSpec>, fail_closed_after: Option<Duration>) -> AlarmConfig {
        AlarmConfig {
            alarms,
            poll_interval: Duration::from_secs(10),
            fail_closed_after,
        }
    }

    async fn poll(
        watch: &mut AlarmWatch<FakeAws>,
        rx: &mut mpsc::Receiver<TriggerEvent>,
    ) -> Vec<TriggerEvent> {
        watch.poll_once().await;
        let mut events = Vec::new();
        while let Ok(event) = rx.try_recv() {
            events.push(event);
        }
        events
    }

    fn fired(events: &[TriggerEvent]) -> usize {
        events
            .iter()
            .filter(|e| matches!(e, TriggerEvent::Fired { .. }))
            .count()
    }

    #[tokio::test(start_paused = true)]
    async fn transitions_fire_on_an_alarm_that_reverted_between_polls_once() {
        let source = alarms(vec![Ok(vec![("a", "OK"), ("b", "OK")])]);
        let mut with_transitions = spec("a", "eu-west-1", 2);
        with_transitions.transitions = true;
        let specs = vec![with_transitions, spec("b", "eu-west-1", 1)];
        let (tx, mut rx) = mpsc::channel(16);
        let mut watch = AlarmWatch::new(source.clone(), &config(specs, None), tx);
        assert_eq!(fired(&poll(&mut watch, &mut rx).await), 0);
        let blip = std::time::SystemTime::now();
        source.with(|s| {
            for name in ["a", "b"] {
                s.alarm_history.push(crate::aws::AlarmTransition {
                    alarm_name: name.into(),
                    timestamp: blip,
                    state_reason: Some("set by drill".into()),
                })
            }
        });
        let events = poll(&mut watch, &mut rx).await;
        assert_eq!(fired(&events), 1, "only `a` reads its history: {events:?}");
        match &events[0] {
            TriggerEvent::Fired { detail, .. } => {
                assert_eq!(detail["alarm"], "a");
                assert_eq!(detail["via"], "alarm_history");
                assert_eq!(detail["state_reason"], "set by drill");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            fired(&poll(&mut watch, &mut rx).await),
            0,
            "a transition read again (the overlap) fires once"
        );
        let calls = source.with(|s| s.history_calls.clone());
        assert_eq!(calls.len(), 3, "one DescribeAlarmHistory per poll");
        assert!(calls.iter().all(|(_, names)| names == &["a".to_string()]));
    }

    #[tokio::test(start_paused = true)]
    async fn without_transitions_the_history_is_never_read() {
        let source = alarms(vec![Ok(vec![("a", "OK")])]);
        let (tx, mut rx) = mpsc::channel(16);
        let mut watch = AlarmWatch::new(
            source.clone(),
            &config(vec![spec("a", "eu-west-1", 1)], None),
            tx,
        );
        poll(&mut watch, &mut rx).await;
        assert!(source.with(|s| s.history_calls.is_empty()));
    }

    #[tokio::test(start_paused = true)]
    async fn fires_once_after_consecutive_alarm_polls_not_after_a_blip() {
        let source = alarms(vec![
            Ok(vec![("a", "OK")]),
            Ok(vec![("a", "ALARM")]),
            Ok(vec![("a", "INSUFFICIENT_DATA")]),
            Ok(vec![("a", "ALARM")]),
            Ok(vec![("a", "ALARM")]),
            Ok(vec![("a", "ALARM")]),
        ]);
        let (tx, mut rx) = mpsc::channel(16);
        let mut watch = AlarmWatch::new(source, &config(vec![spec("a", "eu-west-1", 2)], None), tx);
        for poll_no in 1..=4 {
            assert_eq!(fired(&poll(&mut watch, &mut rx).await), 0, "poll {poll_no}");
        }
        let events = poll(&mut watch, &mut rx).await;
        assert_eq!(fired(&events), 1, "second ALARM poll in a row fires");
        match &events[0] {
            TriggerEvent::Fired { source, detail } => {
                assert_eq!(*source, TriggerSource::Alarm);
                assert_eq!(detail["alarm"], "a");
                assert_eq!(detail["region"], "eu-west-1");
                assert_eq!(detail["state_reason"], "test");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            fired(&poll(&mut watch, &mut rx).await),
            0,
            "still ALARM: no second fire"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_describe_per_target_with_every_name() {
        let source = alarms(vec![Ok(vec![("a", "OK"), ("b", "OK"), ("c", "OK")])]);
        let (tx, mut rx) = mpsc::channel(16);
        let alarms = vec![
            spec("a", "eu-west-1", 1),
            spec("b", "eu-west-1", 1),
            spec("c", "us-east-1", 1),
        ];
        let mut watch = AlarmWatch::new(source.clone(), &config(alarms, None), tx);
        poll(&mut watch, &mut rx).await;
        let calls = source.alarm_calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].0.region, "eu-west-1");
        assert_eq!(calls[0].1, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(calls[1].1, vec!["c".to_string()]);
    }

    #[tokio::test(start_paused = true)]
    async fn missing_alarm_and_failed_poll_are_reported_once_and_never_fire() {
        let source = alarms(vec![
            Ok(vec![]),
            Ok(vec![]),
            Err(ErrorKind::AccessDenied),
            Err(ErrorKind::AccessDenied),
            Ok(vec![("a", "OK")]),
        ]);
        let (tx, mut rx) = mpsc::channel(16);
        let mut watch = AlarmWatch::new(source, &config(vec![spec("a", "eu-west-1", 1)], None), tx);
        let first = poll(&mut watch, &mut rx).await;
        assert!(
            matches!(&first[..], [TriggerEvent::AlarmPollFailed { error, .. }] if error.contains("not found"))
        );
        assert!(
            poll(&mut watch, &mut rx).await.is_empty(),
            "same problem: reported once"
        );
        let failed = poll(&mut watch, &mut rx).await;
        assert!(
            matches!(&failed[..], [TriggerEvent::AlarmPollFailed { error, .. }] if error.contains("AccessDenied"))
        );
        assert!(poll(&mut watch, &mut rx).await.is_empty());
        tokio::time::advance(Duration::from_secs(3600)).await;
        let recovered = poll(&mut watch, &mut rx).await;
        assert!(
            matches!(&recovered[..], [TriggerEvent::AlarmPollRecovered { .. }]),
            "{recovered:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fail_closed_fires_once_alarms_stay_unreadable_that_long() {
        let source = alarms(vec![Err(ErrorKind::AccessDenied)]);
        let (tx, mut rx) = mpsc::channel(16);
        let cfg = config(
            vec![spec("a", "eu-west-1", 1)],
            Some(Duration::from_secs(60)),
        );
        let mut watch = AlarmWatch::new(source, &cfg, tx);
        assert_eq!(fired(&poll(&mut watch, &mut rx).await), 0);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(fired(&poll(&mut watch, &mut rx).await), 0);
        tokio::time::advance(Duration::from_secs(1)).await;
        let events = poll(&mut watch, &mut rx).await;
        assert_eq!(fired(&events), 1);
        assert!(events.iter().any(|e| matches!(e, TriggerEvent::Fired { detail, .. } if detail["reason"] == "fail_closed_after")));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            fired(&poll(&mut watch, &mut rx).await),
            0,
            "fires once per unreadable stretch"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_without_a_state_value_keeps_the_fail_closed_clock_running() {
        let source = alarms(vec![
            Err(ErrorKind::AccessDenied),
            // What the adapter answers for an alarm without (or with an unknown) StateValue:
            // the alarm is unreadable, not INSUFFICIENT_DATA.
            Err(ErrorKind::Other),
            Err(ErrorKind::Other),
        ]);
        let (tx, mut rx) = mpsc::channel(16);
        let cfg = config(
            vec![spec("a", "eu-west-1", 1)],
            Some(Duration::from_secs(60)),
        );
        let mut watch = AlarmWatch::new(source, &cfg, tx);
        assert_eq!(fired(&poll(&mut watch, &mut rx).await), 0);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(fired(&poll(&mut watch, &mut rx).await), 0);
        tokio::time::advance(Duration::from_secs(30)).await;
        let events = poll(&mut watch, &mut rx).await;
        assert!(
            events.iter().any(|e| matches!(e, TriggerEvent::Fired { detail, .. } if detail["reason"] == "fail_closed_after" && detail["unreadable_for_ms"] == 60_000)),
            "unreadable since the first poll: {events:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn run_polls_on_the_interval_and_reports_started() {
        let source = alarms(vec![Ok(vec![("a", "OK")])]);
        let (tx, _rx) = mpsc::channel(16);
        let watch = AlarmWatch::new(
            source.clone(),
            &config(vec![spec("a", "eu-west-1", 1)], None),
            tx,
        );
        let cancel = CancellationToken::new();
        let (started_tx, started_rx) = oneshot::channel();
        let task = tokio::spawn(watch.run(cancel.clone(), started_tx));
        started_rx.await.unwrap();
        tokio::time::sleep(Duration::from_secs(35)).await;
        cancel.cancel();
        task.await.unwrap();
        // t = 0, 10, 20, 30.
        assert_eq!(source.alarm_calls().len(), 4);
    }

    /// The first Fired event from `rx`, and how long after `start` (paused clock) it came;
    /// panics if none comes within a minute.
    async fn first_fire(
        rx: &mut mpsc::Receiver<TriggerEvent>,
        start: Instant,
    ) -> (serde_json::Value, Duration) {
        let fired = async {
            loop {
                match rx.recv().await {
                    Some(TriggerEvent::Fired { detail, .. }) => return detail,
                    Some(_) => continue,
                    None => panic!("the poller stopped without firing"),
                }
            }
        };
        let detail = tokio::time::timeout(Duration::from_secs(60), fired)
            .await
            .expect("an alarm fires within a minute");
        (detail, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_region_answering_in_9s_does_not_delay_an_alarm_in_another_region() {
        // ap-southeast-2 sorts first: polled one after another, eu-west-1 would wait 9 s.
        let source = alarms(vec![Ok(vec![("b", "ALARM")])]);
        source.slow_alarm_region("ap-southeast-2", Some(Duration::from_secs(9)));
        let (tx, mut rx) = mpsc::channel(16);
        let alarms = vec![spec("a", "ap-southeast-2", 1), spec("b", "eu-west-1", 1)];
        let watch = AlarmWatch::new(source.clone(), &config(alarms, None), tx);
        let cancel = CancellationToken::new();
        let (started_tx, _started_rx) = oneshot::channel();
        let start = Instant::now();
        let task = tokio::spawn(watch.run(cancel.clone(), started_tx));
        let (detail, after) = first_fire(&mut rx, start).await;
        assert_eq!(detail["alarm"], "b");
        assert_eq!(detail["region"], "eu-west-1");
        assert!(
            after < Duration::from_secs(1),
            "fired {after:?} after the start"
        );
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_region_that_never_answers_does_not_stop_polling_the_others() {
        let source = alarms(vec![
            Ok(vec![("b", "OK")]),
            Ok(vec![("b", "ALARM")]),
            Ok(vec![("b", "ALARM")]),
        ]);
        source.slow_alarm_region("ap-southeast-2", None);
        let (tx, mut rx) = mpsc::channel(16);
        let alarms = vec![spec("a", "ap-southeast-2", 1), spec("b", "eu-west-1", 2)];
        let watch = AlarmWatch::new(source.clone(), &config(alarms, None), tx);
        let cancel = CancellationToken::new();
        let (started_tx, _started_rx) = oneshot::channel();
        let start = Instant::now();
        let task = tokio::spawn(watch.run(cancel.clone(), started_tx));
        let (detail, after) = first_fire(&mut rx, start).await;
        assert_eq!(detail["alarm"], "b");
        // Polls at 0, 10 and 20 s: the second ALARM poll in a row fires.
        assert_eq!(after, Duration::from_secs(20));
        assert_eq!(source.alarm_calls_in("eu-west-1"), 3);
        assert_eq!(
            source.alarm_calls_in("ap-southeast-2"),
            1,
            "still waiting for its answer"
        );
        cancel.cancel();
        task.await.unwrap();
    }
}
