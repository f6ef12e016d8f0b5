//! CloudWatch alarm operations: DescribeAlarms and SetAlarmState (DescribeAlarmHistory and the
//! revert of a set state live in `alarm_history`), for both wire protocols (the
//! caller decodes CBOR or JSON into JSON first and encodes the `Value` back). Metric and composite
//! alarms, AlarmTypes semantics, NextToken pagination. Never sees HTTP or signatures.

use serde_json::Value as Json;

use crate::input::Input;
use crate::protocol::{ApiError, Common, Protocol};
use crate::state::{AlarmRecord, Sim};
use crate::value::Value;
use crate::world::{AlarmKind, AlarmState};

/// DescribeAlarms: at most 100 names per call, 1..=100 records per page, 50 by default.
const MAX_ALARM_NAMES: usize = 100;
const MAX_RECORDS: i64 = 100;
const DEFAULT_RECORDS: i64 = 50;

/// Alarm name(s) a request names, for the request log.
pub(crate) fn target(input: &Json) -> Option<String> {
    if let Some(name) = input.get("AlarmName").and_then(Json::as_str) {
        return Some(name.to_owned());
    }
    let names: Vec<&str> = input
        .get("AlarmNames")?
        .as_array()?
        .iter()
        .filter_map(Json::as_str)
        .collect();
    (!names.is_empty()).then(|| names.join(","))
}

pub(crate) fn handle(
    sim: &Sim,
    protocol: Protocol,
    account: &str,
    region: &str,
    operation: &str,
    json: &Json,
) -> Result<Value, ApiError> {
    let input = Input {
        json,
        validation_code: "InvalidParameterValue",
    };
    match operation {
        "DescribeAlarms" => describe_alarms(sim, account, region, &input),
        "SetAlarmState" => set_alarm_state(sim, account, region, &input),
        "DescribeAlarmHistory" => {
            crate::alarm_history::describe_alarm_history(sim, account, region, &input)
        }
        other => Err(Common::UnknownOperation.error(
            protocol,
            format!("operation {other} is not supported by kms-sim"),
        )),
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad("InvalidParameterValue", message)
}

fn describe_alarms(
    sim: &Sim,
    account: &str,
    region: &str,
    input: &Input<'_>,
) -> Result<Value, ApiError> {
    let names = input.opt_str_list("AlarmNames")?;
    let prefix = input.opt_str("AlarmNamePrefix")?;
    if names.as_ref().is_some_and(|n| n.len() > MAX_ALARM_NAMES) {
        return Err(invalid(format!(
            "The collection AlarmNames must not have a size greater than {MAX_ALARM_NAMES}."
        )));
    }
    if names.is_some() && prefix.is_some() {
        return Err(ApiError::bad(
            "InvalidParameterCombination",
            "AlarmNames and AlarmNamePrefix cannot be used together",
        ));
    }
    let (want_metric, want_composite) = match input.opt_str_list("AlarmTypes")? {
        // Without AlarmTypes CloudWatch returns metric alarms only.
        None => (true, false),
        Some(types) => {
            for t in &types {
                if !matches!(*t, "MetricAlarm" | "CompositeAlarm") {
                    return Err(invalid(format!("AlarmTypes value {t} is not valid")));
                }
            }
            (
                types.contains(&"MetricAlarm"),
                types.contains(&"CompositeAlarm"),
            )
        }
    };
    let state_filter = match input.opt_str("StateValue")? {
        None => None,
        Some(text) => Some(
            AlarmState::parse(text)
                .ok_or_else(|| invalid(format!("StateValue {text} is not valid")))?,
        ),
    };
    let max_records = match input.opt_int("MaxRecords")? {
        None => DEFAULT_RECORDS,
        Some(n) if (1..=MAX_RECORDS).contains(&n) => n,
        Some(n) => {
            return Err(invalid(format!(
                "The value {n} for parameter MaxRecords is not between 1 and {MAX_RECORDS}"
            )));
        }
    } as usize;
    let start = match input.opt_str("NextToken")? {
        None => 0,
        Some(token) => decode_token(token).ok_or_else(|| {
            ApiError::bad(
                "InvalidNextToken",
                "The service returned an invalid NextToken",
            )
        })?,
    };
    let mut state = sim.lock();
    crate::alarm_history::settle_alarms(&mut state, account, region);
    let mut matches: Vec<&AlarmRecord> = state
        .region(account, region)
        .map(|r| r.alarms.iter().collect())
        .unwrap_or_default();
    matches.retain(|a| match a.kind {
        AlarmKind::Metric => want_metric,
        AlarmKind::Composite => want_composite,
    });
    matches.retain(|a| names.as_ref().is_none_or(|n| n.contains(&a.name.as_str())));
    matches.retain(|a| prefix.is_none_or(|p| a.name.starts_with(p)));
    matches.retain(|a| state_filter.is_none_or(|s| a.state == s));
    // Metric alarms first, then composite, each by name: a stable order for pagination.
    matches.sort_by(|a, b| {
        (a.kind == AlarmKind::Composite, &a.name).cmp(&(b.kind == AlarmKind::Composite, &b.name))
    });
    if start > matches.len() {
        return Err(ApiError::bad(
            "InvalidNextToken",
            "The service returned an invalid NextToken",
        ));
    }
    let end = (start + max_records).min(matches.len());
    let page = &matches[start..end];
    let metric = page
        .iter()
        .filter(|a| a.kind == AlarmKind::Metric)
        .map(|a| metric_alarm(a, account, region))
        .collect();
    let composite: Vec<Value> = page
        .iter()
        .filter(|a| a.kind == AlarmKind::Composite)
        .map(|a| composite_alarm(a, account, region))
        .collect();
    let mut output = vec![("MetricAlarms", Value::List(metric))];
    if want_composite {
        output.push(("CompositeAlarms", Value::List(composite)));
    }
    if end < matches.len() {
        output.push(("NextToken", Value::str(encode_token(end))));
    }
    Ok(Value::Map(output))
}

fn encode_token(offset: usize) -> String {
    hex::encode(format!("kms-sim:{offset}"))
}

fn decode_token(token: &str) -> Option<usize> {
    let bytes = hex::decode(token).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    text.strip_prefix("kms-sim:")?.parse().ok()
}

fn alarm_arn(name: &str, account: &str, region: &str) -> String {
    format!("arn:aws:cloudwatch:{region}:{account}:alarm:{name}")
}

fn common_fields(alarm: &AlarmRecord, account: &str, region: &str) -> Vec<(&'static str, Value)> {
    let mut fields = vec![
        ("AlarmName", Value::str(alarm.name.clone())),
        (
            "AlarmArn",
            Value::str(alarm_arn(&alarm.name, account, region)),
        ),
        (
            "AlarmConfigurationUpdatedTimestamp",
            Value::Time(alarm.configuration_updated),
        ),
        ("ActionsEnabled", Value::Bool(true)),
        ("OKActions", Value::List(vec![])),
        ("AlarmActions", Value::List(vec![])),
        ("InsufficientDataActions", Value::List(vec![])),
        ("StateValue", Value::str(alarm.state.as_str())),
        ("StateReason", Value::str(alarm.state_reason.clone())),
    ];
    if let Some(data) = &alarm.state_reason_data {
        fields.push(("StateReasonData", Value::str(data.clone())));
    }
    fields.push(("StateUpdatedTimestamp", Value::Time(alarm.state_updated)));
    fields.push((
        "StateTransitionedTimestamp",
        Value::Time(alarm.state_transitioned),
    ));
    fields
}

fn metric_alarm(alarm: &AlarmRecord, account: &str, region: &str) -> Value {
    let mut fields = common_fields(alarm, account, region);
    fields.extend([
        (
            "MetricName",
            Value::str(
                alarm
                    .metric_name
                    .clone()
                    .unwrap_or_else(|| "Errors".to_owned()),
            ),
        ),
        (
            "Namespace",
            Value::str(
                alarm
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "KmsKillswitch".to_owned()),
            ),
        ),
        ("Statistic", Value::str("Maximum")),
        ("Dimensions", Value::List(vec![])),
        ("Period", Value::Int(60)),
        ("EvaluationPeriods", Value::Int(1)),
        ("Threshold", Value::Float(alarm.threshold.unwrap_or(1.0))),
        (
            "ComparisonOperator",
            Value::str("GreaterThanOrEqualToThreshold"),
        ),
        ("TreatMissingData", Value::str("notBreaching")),
    ]);
    Value::Map(fields)
}

fn composite_alarm(alarm: &AlarmRecord, account: &str, region: &str) -> Value {
    let mut fields = common_fields(alarm, account, region);
    fields.push((
        "AlarmRule",
        Value::str(
            alarm
                .alarm_rule
                .clone()
                .unwrap_or_else(|| "FALSE".to_owned()),
        ),
    ));
    Value::Map(fields)
}

fn set_alarm_state(
    sim: &Sim,
    account: &str,
    region: &str,
    input: &Input<'_>,
) -> Result<Value, ApiError> {
    let name = input.req_str("AlarmName")?;
    let value = input.req_str("StateValue")?;
    let reason = input.req_str("StateReason")?;
    let data = input.opt_str("StateReasonData")?;
    let state_value = AlarmState::parse(value).ok_or_else(|| {
        ApiError::bad(
            "InvalidFormat",
            format!("StateValue {value} is not OK, ALARM or INSUFFICIENT_DATA"),
        )
    })?;
    if let Some(data) = data
        && serde_json::from_str::<Json>(data).is_err()
    {
        return Err(ApiError::bad(
            "InvalidFormat",
            "StateReasonData is not valid JSON",
        ));
    }
    let mut state = sim.lock();
    let alarm = state
        .region_mut(account, region)
        .alarms
        .iter_mut()
        .find(|a| a.name == name)
        .ok_or_else(|| {
            ApiError::new(
                404,
                "ResourceNotFound",
                format!("Alarm {name} does not exist"),
            )
        })?;
    alarm.set_by_api(state_value, reason.to_owned(), data.map(str::to_owned));
    Ok(Value::Map(vec![]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_tokens_round_trip_and_reject_garbage() {
        assert_eq!(decode_token(&encode_token(42)), Some(42));
        assert_eq!(decode_token("zz"), None);
        assert_eq!(decode_token(&hex::encode("other:1")), None);
    }
}
