//! Alarm state over time: every state change as a `StateUpdate` history item, SetAlarmState's
//! temporary state on a metric alarm that returns to the evaluated state after the alarm's
//! revert time (settled lazily, under the lock, before anything reads alarms), and the
//! DescribeAlarmHistory operation for both CloudWatch protocols; composite alarms re-evaluated
//! by their rule (`alarm_rule`) when a child changes. Never sees HTTP or signatures; does not
//! evaluate metrics.

use serde_json::{Value as Json, json};

use crate::SimError;
use crate::alarm_rule::Rule;
use crate::input::Input;
use crate::protocol::ApiError;
use crate::state::{AlarmRecord, Sim, State, now_us, us_to_secs};
use crate::value::Value;
use crate::world::{AlarmDecl, AlarmKind, AlarmState, Settings};

/// History items kept per alarm (AWS keeps 30 days); the oldest are dropped past this.
const HISTORY_CAPACITY: usize = 1000;
/// DescribeAlarmHistory: 1..=100 items per page, 100 when MaxRecords is absent.
const MAX_RECORDS: i64 = 100;
const HISTORY_ITEM_TYPES: [&str; 5] = [
    "ConfigurationUpdate",
    "StateUpdate",
    "Action",
    "AlarmContributorStateUpdate",
    "AlarmContributorAction",
];

/// One recorded state change.
#[derive(Debug, Clone)]
pub(crate) struct StateChange {
    pub at_us: u64,
    pub old: (AlarmState, String, Option<String>),
    pub new: (AlarmState, String, Option<String>),
}

/// What an alarm's state is made of besides its current state: what its own evaluation gives,
/// a pending SetAlarmState revert, how long a SetAlarmState lasts, and its history.
#[derive(Debug, Clone)]
pub(crate) struct Timeline {
    /// The state the alarm's own evaluation gives (world, control API, `set_state`); a state set
    /// with SetAlarmState on a metric alarm returns to it at `revert_at_us`.
    pub evaluated: AlarmState,
    pub evaluated_reason: String,
    pub revert_at_us: Option<u64>,
    /// How long a SetAlarmState lasts on this (metric) alarm.
    pub revert_ms: u64,
    /// Every state change, oldest first (bounded).
    pub history: Vec<StateChange>,
    /// Composite alarms: child changes up to this time are accounted for (the rule was
    /// evaluated, or the state was set after them).
    pub rule_checked_us: u64,
}

impl Timeline {
    pub(crate) fn new(decl: &AlarmDecl, settings: &Settings) -> Timeline {
        Timeline {
            evaluated: decl.state,
            evaluated_reason: decl
                .state_reason
                .clone()
                .unwrap_or_else(|| "initial state from the kms-sim world".to_owned()),
            revert_at_us: None,
            revert_ms: decl
                .set_state_revert_ms
                .unwrap_or(settings.alarm_set_state_revert_ms),
            history: Vec::new(),
            rule_checked_us: 0,
        }
    }
}

impl AlarmRecord {
    /// Move to `state` at `at_us`, recording a history item when the value changes.
    pub(crate) fn transition(
        &mut self,
        at_us: u64,
        state: AlarmState,
        reason: String,
        data: Option<String>,
    ) {
        let at = us_to_secs(at_us);
        if state != self.state {
            self.state_transitioned = at;
            self.timeline.history.push(StateChange {
                at_us,
                old: (
                    self.state,
                    self.state_reason.clone(),
                    self.state_reason_data.clone(),
                ),
                new: (state, reason.clone(), data.clone()),
            });
            if self.timeline.history.len() > HISTORY_CAPACITY {
                self.timeline.history.remove(0);
            }
        }
        self.state = state;
        self.state_reason = reason;
        self.state_reason_data = data;
        self.state_updated = at;
    }

    /// Apply a SetAlarmState revert that is due by `now_us`, at the time it was due.
    pub(crate) fn settle(&mut self, now_us: u64) {
        if let Some(at) = self.timeline.revert_at_us.filter(|at| *at <= now_us) {
            self.timeline.revert_at_us = None;
            let reason = self.timeline.evaluated_reason.clone();
            self.transition(at, self.timeline.evaluated, reason, None);
        }
    }

    /// CloudWatch SetAlarmState: the state holds until the next evaluation. A metric alarm is
    /// evaluated again `revert_ms` later and returns to its evaluated state; a composite alarm
    /// keeps the set state until one of its children changes, when its rule is evaluated again
    /// (`settle_alarms`).
    pub(crate) fn set_by_api(&mut self, state: AlarmState, reason: String, data: Option<String>) {
        let now = now_us();
        self.settle(now);
        self.transition(now, state, reason, data);
        self.timeline.rule_checked_us = now;
        self.timeline.revert_at_us = match self.kind {
            AlarmKind::Metric if state != self.timeline.evaluated => {
                Some(now + self.timeline.revert_ms.saturating_mul(1000))
            }
            _ => None,
        };
    }
}

/// Settle every alarm of one account and region (call under the lock before reading them):
/// due SetAlarmState reverts, then the composite alarms whose children changed since their rule
/// was last evaluated (nested composites too).
pub(crate) fn settle_alarms(state: &mut State, account: &str, region: &str) {
    let now = now_us();
    let key = (account.to_owned(), region.to_owned());
    let Some(region_state) = state.regions.get_mut(&key) else {
        return;
    };
    let alarms = &mut region_state.alarms;
    for alarm in alarms.iter_mut() {
        alarm.settle(now);
    }
    // Each pass settles at least one composite for good, so as many passes as alarms suffice.
    for _ in 0..alarms.len() {
        if !evaluate_composites(alarms) {
            break;
        }
    }
}

/// An alarm's state at `at_us`, from its history.
fn state_at(alarm: &AlarmRecord, at_us: u64) -> AlarmState {
    let history = &alarm.timeline.history;
    match history.iter().rev().find(|h| h.at_us <= at_us) {
        Some(change) => change.new.0,
        None => history.first().map_or(alarm.state, |change| change.old.0),
    }
}

/// Re-evaluate each composite alarm whose children changed after its `rule_checked_us`, at each
/// such change in time order (so a child's ALARM that is over by now still shows in the
/// composite's history); a rule the simulator cannot parse leaves the alarm as it is.
/// Returns whether any composite changed state.
fn evaluate_composites(alarms: &mut [AlarmRecord]) -> bool {
    let mut changed = false;
    for i in 0..alarms.len() {
        if alarms[i].kind != AlarmKind::Composite {
            continue;
        }
        let Some(rule) = alarms[i].alarm_rule.as_deref().and_then(Rule::parse) else {
            continue;
        };
        let children = rule.children();
        let checked = alarms[i].timeline.rule_checked_us;
        let mut times: Vec<u64> = alarms
            .iter()
            .filter(|a| children.contains(&a.name.as_str()) && a.name != alarms[i].name)
            // Histories are in time order: read only the changes since `checked`.
            .flat_map(|a| {
                a.timeline
                    .history
                    .iter()
                    .rev()
                    .map(|h| h.at_us)
                    .take_while(|at| *at > checked)
            })
            .collect();
        times.sort_unstable();
        times.dedup();
        let outcomes: Vec<(u64, bool)> = times
            .iter()
            .map(|&at| {
                let state_of = |name: &str| {
                    alarms
                        .iter()
                        .find(|a| a.name == name)
                        .map(|a| state_at(a, at))
                };
                (at, rule.eval(&state_of))
            })
            .collect();
        let alarm = &mut alarms[i];
        for (at, value) in outcomes {
            alarm.timeline.rule_checked_us = at;
            let value = if value {
                AlarmState::Alarm
            } else {
                AlarmState::Ok
            };
            if value != alarm.state {
                let reason = format!(
                    "kms-sim evaluated the alarm rule {} as {}",
                    alarm.alarm_rule.as_deref().unwrap_or(""),
                    if value == AlarmState::Alarm {
                        "TRUE"
                    } else {
                        "FALSE"
                    }
                );
                alarm.transition(at, value, reason, None);
                changed = true;
            }
        }
    }
    changed
}

impl Sim {
    /// Change how long a SetAlarmState lasts on one metric alarm (a pending revert keeps its
    /// time).
    pub(crate) fn set_alarm_revert_ms(
        &self,
        account: &str,
        region: &str,
        alarm_name: &str,
        revert_ms: u64,
    ) -> Result<(), SimError> {
        let mut state = self.lock();
        let alarm = state
            .regions
            .get_mut(&(account.to_owned(), region.to_owned()))
            .and_then(|r| r.alarms.iter_mut().find(|a| a.name == alarm_name))
            .ok_or_else(|| SimError::AlarmNotFound {
                account: account.to_owned(),
                region: region.to_owned(),
                alarm_name: alarm_name.to_owned(),
            })?;
        alarm.timeline.revert_ms = revert_ms;
        Ok(())
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad("InvalidParameterValue", message)
}

/// What a DescribeAlarmHistory request asks for.
struct Query<'a> {
    name: Option<&'a str>,
    metric: bool,
    composite: bool,
    state_updates: bool,
    start: Option<f64>,
    end: Option<f64>,
    ascending: bool,
    max_records: usize,
    offset: usize,
}

fn opt_time(input: &Input<'_>, field: &str) -> Result<Option<f64>, ApiError> {
    match input.json.get(field) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(invalid(format!("{field} must be a timestamp"))),
    }
}

fn read_query<'a>(input: &Input<'a>) -> Result<Query<'a>, ApiError> {
    let (metric, composite) = match input.opt_str_list("AlarmTypes")? {
        // As DescribeAlarms: without AlarmTypes only metric alarms are returned.
        None => (true, false),
        Some(types) => {
            if let Some(bad) = types
                .iter()
                .find(|t| !matches!(**t, "MetricAlarm" | "CompositeAlarm"))
            {
                return Err(invalid(format!("AlarmTypes value {bad} is not valid")));
            }
            (
                types.contains(&"MetricAlarm"),
                types.contains(&"CompositeAlarm"),
            )
        }
    };
    let state_updates = match input.opt_str("HistoryItemType")? {
        None | Some("StateUpdate") => true,
        Some(other) if HISTORY_ITEM_TYPES.contains(&other) => false,
        Some(other) => return Err(invalid(format!("HistoryItemType {other} is not valid"))),
    };
    let ascending = match input.opt_str("ScanBy")? {
        None | Some("TimestampDescending") => false,
        Some("TimestampAscending") => true,
        Some(other) => return Err(invalid(format!("ScanBy {other} is not valid"))),
    };
    let max_records = match input.opt_int("MaxRecords")? {
        None => MAX_RECORDS,
        Some(n) if (1..=MAX_RECORDS).contains(&n) => n,
        Some(n) => {
            return Err(invalid(format!(
                "The value {n} for parameter MaxRecords is not between 1 and {MAX_RECORDS}"
            )));
        }
    } as usize;
    let offset = match input.opt_str("NextToken")? {
        None => 0,
        Some(token) => decode_token(token).ok_or_else(invalid_token)?,
    };
    Ok(Query {
        name: input.opt_str("AlarmName")?,
        metric,
        composite,
        state_updates,
        start: opt_time(input, "StartDate")?,
        end: opt_time(input, "EndDate")?,
        ascending,
        max_records,
        offset,
    })
}

fn invalid_token() -> ApiError {
    ApiError::bad(
        "InvalidNextToken",
        "The service returned an invalid NextToken",
    )
}

fn encode_token(offset: usize) -> String {
    hex::encode(format!("kms-sim-history:{offset}"))
}

fn decode_token(token: &str) -> Option<usize> {
    let text = String::from_utf8(hex::decode(token).ok()?).ok()?;
    text.strip_prefix("kms-sim-history:")?.parse().ok()
}

pub(crate) fn describe_alarm_history(
    sim: &Sim,
    account: &str,
    region: &str,
    input: &Input<'_>,
) -> Result<Value, ApiError> {
    let query = read_query(input)?;
    let mut state = sim.lock();
    settle_alarms(&mut state, account, region);
    let alarms = state
        .region(account, region)
        .map(|r| r.alarms.as_slice())
        .unwrap_or_default();
    let mut items: Vec<(&AlarmRecord, &StateChange)> = alarms
        .iter()
        .filter(|a| query.name.is_none_or(|n| a.name == n))
        .filter(|a| match a.kind {
            AlarmKind::Metric => query.metric,
            AlarmKind::Composite => query.composite,
        })
        .flat_map(|a| a.timeline.history.iter().map(move |h| (a, h)))
        .filter(|_| query.state_updates)
        .filter(|(_, h)| query.start.is_none_or(|s| us_to_secs(h.at_us) >= s))
        .filter(|(_, h)| query.end.is_none_or(|e| us_to_secs(h.at_us) <= e))
        .collect();
    items.sort_by_key(|(a, h)| (h.at_us, a.name.clone()));
    if !query.ascending {
        items.reverse();
    }
    if query.offset > items.len() {
        return Err(invalid_token());
    }
    let end = (query.offset + query.max_records).min(items.len());
    let page = items[query.offset..end]
        .iter()
        .map(|(alarm, change)| history_item(alarm, change))
        .collect();
    let mut output = vec![("AlarmHistoryItems", Value::List(page))];
    if end < items.len() {
        output.push(("NextToken", Value::str(encode_token(end))));
    }
    Ok(Value::Map(output))
}

fn state_json(state: &(AlarmState, String, Option<String>)) -> Json {
    let mut out = json!({ "stateValue": state.0.as_str(), "stateReason": state.1 });
    if let Some(data) = state
        .2
        .as_deref()
        .and_then(|d| serde_json::from_str(d).ok())
    {
        out["stateReasonData"] = data;
    }
    out
}

fn history_item(alarm: &AlarmRecord, change: &StateChange) -> Value {
    let alarm_type = match alarm.kind {
        AlarmKind::Metric => "MetricAlarm",
        AlarmKind::Composite => "CompositeAlarm",
    };
    let data = json!({
        "version": "1.0",
        "oldState": state_json(&change.old),
        "newState": state_json(&change.new),
    });
    Value::Map(vec![
        ("AlarmName", Value::str(alarm.name.clone())),
        ("AlarmType", Value::str(alarm_type)),
        ("Timestamp", Value::Time(us_to_secs(change.at_us))),
        ("HistoryItemType", Value::str("StateUpdate")),
        (
            "HistorySummary",
            Value::str(format!(
                "Alarm updated from {} to {}",
                change.old.0.as_str(),
                change.new.0.as_str()
            )),
        ),
        ("HistoryData", Value::str(data.to_string())),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_tokens_round_trip_and_reject_garbage() {
        assert_eq!(decode_token(&encode_token(7)), Some(7));
        assert_eq!(decode_token(&hex::encode("kms-sim:7")), None);
        assert_eq!(decode_token("nothex"), None);
    }
}
