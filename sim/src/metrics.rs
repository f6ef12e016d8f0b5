//! CloudWatch PutMetricData, for both CloudWatch protocols (the caller decodes CBOR or JSON into
//! JSON first): the input rules AWS documents (namespace, MetricData, values, units,
//! timestamps) and the record of every accepted datum with its arrival time. Never sees HTTP.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::protocol::ApiError;
use crate::state::{now_us, us_to_secs};
use crate::value::Value;

/// PutMetricData quotas (CloudWatch API reference): 1,000 datums, 30 dimensions, 150 values.
const MAX_DATUMS: usize = 1000;
const MAX_DIMENSIONS: usize = 30;
const MAX_VALUES: usize = 150;
/// Timestamps are accepted from two weeks ago to two hours ahead.
const MAX_AGE_S: f64 = 14.0 * 86_400.0;
const MAX_AHEAD_S: f64 = 2.0 * 3_600.0;
/// Accepted magnitude range of a value (besides 0): 8.515920e-109 to 1.174271e+108.
const MIN_MAGNITUDE: f64 = 8.515_920e-109;
const MAX_MAGNITUDE: f64 = 1.174_271e108;
/// Datums remembered for the control API.
const REMEMBERED_DATUMS: usize = 200_000;

const UNITS: [&str; 27] = [
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

/// One metric datum as PutMetricData delivered it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricDatumRecord {
    /// Microseconds since the epoch, when the request arrived.
    pub ts_us: u64,
    pub account: String,
    pub region: String,
    pub namespace: String,
    pub metric_name: String,
    /// (Name, Value) pairs in request order.
    pub dimensions: Vec<(String, String)>,
    pub value: Option<f64>,
    pub values: Vec<f64>,
    pub counts: Vec<f64>,
    /// The datum's own Timestamp (epoch seconds), if it carried one.
    pub timestamp: Option<f64>,
    pub unit: Option<String>,
    pub storage_resolution: Option<i64>,
    /// The `StatisticValues` set, as sent.
    pub statistic_values: Option<Json>,
}

/// Every datum received.
#[derive(Default)]
pub(crate) struct MetricStore {
    data: Mutex<VecDeque<MetricDatumRecord>>,
}

impl MetricStore {
    pub(crate) fn data(&self) -> Vec<MetricDatumRecord> {
        self.lock().iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<MetricDatumRecord>> {
        // As `Sim::lock`: a panic mid-update cannot leave state that matters to a simulator.
        self.data
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad("InvalidParameterValue", message)
}

fn missing(field: &str) -> ApiError {
    ApiError::bad(
        "MissingParameter",
        format!("The parameter {field} is required."),
    )
}

fn number(json: &Json, field: &str) -> Result<Option<f64>, ApiError> {
    match json.get(field) {
        None | Some(Json::Null) => Ok(None),
        Some(value) => value
            .as_f64()
            .map(Some)
            .ok_or_else(|| invalid(format!("The parameter {field} must be a number."))),
    }
}

fn check_value(value: f64, field: &str) -> Result<f64, ApiError> {
    let magnitude = value.abs();
    if !value.is_finite()
        || (magnitude != 0.0 && !(MIN_MAGNITUDE..=MAX_MAGNITUDE).contains(&magnitude))
    {
        return Err(invalid(format!(
            "The value {value} for parameter {field} is invalid."
        )));
    }
    Ok(value)
}

fn numbers(json: &Json, field: &str, index: usize) -> Result<Vec<f64>, ApiError> {
    let Some(items) = json.get(field).and_then(Json::as_array) else {
        return Ok(Vec::new());
    };
    if items.len() > MAX_VALUES {
        return Err(invalid(format!(
            "The collection MetricData.member.{index}.{field} must not have a size greater than {MAX_VALUES}."
        )));
    }
    items
        .iter()
        .map(|v| {
            let n = v
                .as_f64()
                .ok_or_else(|| invalid(format!("{field} must hold numbers")))?;
            check_value(n, &format!("MetricData.member.{index}.{field}"))
        })
        .collect()
}

/// PutMetricData: validate every datum, then record them all (AWS accepts or refuses the
/// request whole).
pub(crate) fn put_metric_data(
    store: &MetricStore,
    account: &str,
    region: &str,
    input: &Json,
) -> Result<Value, ApiError> {
    let namespace = input
        .get("Namespace")
        .and_then(Json::as_str)
        .ok_or_else(|| missing("Namespace"))?;
    if namespace.is_empty() || namespace.len() > 255 || namespace.starts_with("AWS/") {
        return Err(invalid(format!(
            "The value {namespace} for parameter Namespace is invalid."
        )));
    }
    let items = input
        .get("MetricData")
        .and_then(Json::as_array)
        .filter(|items| !items.is_empty())
        .ok_or_else(|| missing("MetricData"))?;
    if items.len() > MAX_DATUMS {
        return Err(invalid(format!(
            "The collection MetricData must not have a size greater than {MAX_DATUMS}."
        )));
    }
    let ts_us = now_us();
    let records = items
        .iter()
        .enumerate()
        .map(|(i, item)| datum(item, i + 1, ts_us, account, region, namespace))
        .collect::<Result<Vec<_>, _>>()?;
    let mut data = store.lock();
    for record in records {
        if data.len() >= REMEMBERED_DATUMS {
            data.pop_front();
        }
        data.push_back(record);
    }
    Ok(Value::Map(vec![]))
}

fn datum(
    item: &Json,
    index: usize,
    ts_us: u64,
    account: &str,
    region: &str,
    namespace: &str,
) -> Result<MetricDatumRecord, ApiError> {
    let at = |field: &str| format!("MetricData.member.{index}.{field}");
    let metric_name = item
        .get("MetricName")
        .and_then(Json::as_str)
        .filter(|n| !n.is_empty() && n.len() <= 255)
        .ok_or_else(|| missing(&at("MetricName")))?;
    let mut dimensions = Vec::new();
    for dimension in item
        .get("Dimensions")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        let field = |f: &str| {
            dimension
                .get(f)
                .and_then(Json::as_str)
                .filter(|s| !s.is_empty())
        };
        let (Some(name), Some(value)) = (field("Name"), field("Value")) else {
            return Err(missing(&at("Dimensions.member.N.Name/Value")));
        };
        dimensions.push((name.to_owned(), value.to_owned()));
    }
    if dimensions.len() > MAX_DIMENSIONS {
        return Err(invalid(format!(
            "The collection {} must not have a size greater than {MAX_DIMENSIONS}.",
            at("Dimensions")
        )));
    }
    let value = number(item, "Value")?
        .map(|v| check_value(v, &at("Value")))
        .transpose()?;
    let values = numbers(item, "Values", index)?;
    let counts = numbers(item, "Counts", index)?;
    let statistic_values = item
        .get("StatisticValues")
        .filter(|v| !v.is_null())
        .cloned();
    let given = [
        value.is_some(),
        !values.is_empty(),
        statistic_values.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(ApiError::bad(
            "InvalidParameterCombination",
            format!(
                "The parameters {0}.Value, {0}.Values and {0}.StatisticValues are mutually exclusive.",
                format!("MetricData.member.{index}")
            ),
        ));
    }
    if !counts.is_empty() && counts.len() != values.len() {
        return Err(invalid(format!(
            "The parameters {} and {} must be of the same size.",
            at("Values"),
            at("Counts")
        )));
    }
    let timestamp = number(item, "Timestamp")?;
    let now = us_to_secs(ts_us);
    if let Some(t) = timestamp
        && (t < now - MAX_AGE_S || t > now + MAX_AHEAD_S)
    {
        return Err(invalid(format!(
            "The parameter {} must specify a time no more than two weeks in the past and no more than two hours in the future.",
            at("Timestamp")
        )));
    }
    let unit = item.get("Unit").and_then(Json::as_str);
    if let Some(unit) = unit
        && !UNITS.contains(&unit)
    {
        return Err(invalid(format!(
            "The value {unit} for parameter {} is invalid.",
            at("Unit")
        )));
    }
    let storage_resolution = item.get("StorageResolution").and_then(Json::as_i64);
    if storage_resolution.is_some_and(|r| r != 1 && r != 60) {
        return Err(invalid(format!(
            "The value for parameter {} must be 1 or 60.",
            at("StorageResolution")
        )));
    }
    Ok(MetricDatumRecord {
        ts_us,
        account: account.to_owned(),
        region: region.to_owned(),
        namespace: namespace.to_owned(),
        metric_name: metric_name.to_owned(),
        dimensions,
        value,
        values,
        counts,
        timestamp,
        unit: unit.map(str::to_owned),
        storage_resolution,
        statistic_values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(input: Json) -> Result<Vec<MetricDatumRecord>, ApiError> {
        let store = MetricStore::default();
        put_metric_data(&store, "111111111111", "eu-west-1", &input)?;
        Ok(store.data())
    }

    #[test]
    fn refuses_aws_namespaces_and_mixed_values() {
        let err = put(serde_json::json!({"Namespace": "AWS/EC2", "MetricData": [{"MetricName": "m", "Value": 1}]})).unwrap_err();
        assert_eq!(err.code, "InvalidParameterValue");
        let err = put(serde_json::json!({"Namespace": "N", "MetricData": [{"MetricName": "m", "Value": 1, "Values": [1]}]})).unwrap_err();
        assert_eq!(err.code, "InvalidParameterCombination");
        let err = put(serde_json::json!({"Namespace": "N", "MetricData": []})).unwrap_err();
        assert_eq!(err.code, "MissingParameter");
    }

    #[test]
    fn records_each_datum_with_its_dimensions() {
        let data = put(serde_json::json!({"Namespace": "KmsKillswitch", "MetricData": [
            {"MetricName": "Heartbeat", "Value": 1, "Unit": "Count", "Dimensions": [{"Name": "Host", "Value": "h1"}]},
            {"MetricName": "Other", "Values": [1, 2], "Counts": [3, 4]}
        ]}))
        .unwrap();
        assert_eq!(data.len(), 2);
        assert_eq!(data[0].dimensions, [("Host".to_owned(), "h1".to_owned())]);
        assert_eq!(
            (data[0].value, data[0].unit.as_deref()),
            (Some(1.0), Some("Count"))
        );
        assert_eq!(data[1].counts, [3.0, 4.0]);
    }
}
