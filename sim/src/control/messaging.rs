//! Steering SQS, SNS and the metric records from outside the AWS protocols: the `Sim` methods
//! behind both the `SimHandle` methods (in-process) and the `/_sim/sqs/…`, `/_sim/sns/…` and
//! `/_sim/metrics` control endpoints (JSON). Owns no service rules: those are `sqs`, `sns` and
//! `metrics`.

use std::collections::BTreeMap;

use hyper::Method;
use hyper::http::request::Parts;
use serde::Deserialize;

use super::{error, json, log_change, parse, query};
use crate::metrics::MetricDatumRecord;
use crate::protocol::HttpResponse;
use crate::sns::{PublishRecord, SubscriptionView, TopicFault, TopicView};
use crate::sqs::{DeletionView, MessageView, QueueFault, QueueKey, QueueView};
use crate::state::{Sim, now_us};
use crate::{SimError, SimHandle, sqs};

impl Sim {
    fn queue_key(&self, account: &str, region: &str, name: &str) -> Result<QueueKey, SimError> {
        let key = (account.to_owned(), region.to_owned(), name.to_owned());
        if self.queues.lock().queues.contains_key(&key) {
            Ok(key)
        } else {
            Err(SimError::QueueNotFound {
                account: account.to_owned(),
                region: region.to_owned(),
                queue_name: name.to_owned(),
            })
        }
    }

    pub(crate) fn create_queue(
        &self,
        account: &str,
        region: &str,
        name: &str,
    ) -> Result<QueueView, SimError> {
        if !sqs::valid_queue_name(name) {
            return Err(SimError::InvalidValue {
                field: "queue name",
                value: name.to_owned(),
            });
        }
        let key = (account.to_owned(), region.to_owned(), name.to_owned());
        let mut state = self.queues.lock();
        let queue = state
            .queues
            .entry(key.clone())
            .or_insert_with(sqs::Queue::new);
        Ok(self.queues.view(&key, queue, now_us()))
    }

    pub(crate) fn queues(&self, account: &str, region: &str) -> Vec<QueueView> {
        let now = now_us();
        let mut state = self.queues.lock();
        state
            .queues
            .iter_mut()
            .filter(|(key, _)| key.0 == account && key.1 == region)
            .map(|(key, queue)| {
                queue.expire(now);
                self.queues.view(key, queue, now)
            })
            .collect()
    }

    pub(crate) fn queue_messages(
        &self,
        account: &str,
        region: &str,
        name: &str,
    ) -> Result<Vec<MessageView>, SimError> {
        let key = self.queue_key(account, region, name)?;
        let now = now_us();
        let mut state = self.queues.lock();
        Ok(state
            .queues
            .get_mut(&key)
            .map(|queue| {
                queue.expire(now);
                queue
                    .messages
                    .iter()
                    .map(|m| sqs::Queue::message_view(m, now))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// SendMessage from outside (as another producer would): the MessageId.
    pub(crate) fn send_message(
        &self,
        account: &str,
        region: &str,
        name: &str,
        body: &str,
    ) -> Result<String, SimError> {
        let key = self.queue_key(account, region, name)?;
        let sent = sqs::send(
            &self.queues,
            &key,
            body,
            BTreeMap::new(),
            "AIDAKMSSIMCONTROLAPI",
            None,
        )
        .map_err(|error| SimError::InvalidValue {
            field: "message body",
            value: error.message,
        })?;
        Ok(sent
            .to_json()
            .get("MessageId")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned())
    }

    pub(crate) fn deletions(
        &self,
        account: &str,
        region: &str,
        name: &str,
    ) -> Result<Vec<DeletionView>, SimError> {
        let key = self.queue_key(account, region, name)?;
        Ok(self
            .queues
            .lock()
            .queues
            .get(&key)
            .map(|q| q.deletions.iter().cloned().collect())
            .unwrap_or_default())
    }

    pub(crate) fn set_queue_fault(
        &self,
        account: &str,
        region: &str,
        name: &str,
        fault: Option<QueueFault>,
    ) -> Result<(), SimError> {
        let key = self.queue_key(account, region, name)?;
        if let Some(queue) = self.queues.lock().queues.get_mut(&key) {
            queue.fault = fault.map(|f| (f.kind, f.for_ms.map(|ms| now_us() + ms * 1000)));
        }
        // Long polls in progress answer as the fault says.
        self.queues.changed.notify_waiters();
        Ok(())
    }

    pub(crate) fn create_topic(
        &self,
        account: &str,
        region: &str,
        name: &str,
    ) -> Result<String, SimError> {
        let valid = (1..=256).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(SimError::InvalidValue {
                field: "topic name",
                value: name.to_owned(),
            });
        }
        Ok(self.topics.create_topic(account, region, name))
    }

    pub(crate) fn subscribe_queue(
        &self,
        topic_arn: &str,
        queue_arn: &str,
        raw_message_delivery: bool,
    ) -> Result<SubscriptionView, SimError> {
        self.topics
            .subscribe(topic_arn, queue_arn, raw_message_delivery)
            .map_err(|error| match error.code.as_str() {
                "NotFound" => SimError::TopicNotFound {
                    topic_arn: topic_arn.to_owned(),
                },
                _ => SimError::InvalidValue {
                    field: "queue arn",
                    value: queue_arn.to_owned(),
                },
            })
    }

    pub(crate) fn set_topic_fault(
        &self,
        topic_arn: &str,
        fault: Option<TopicFault>,
    ) -> Result<(), SimError> {
        if self.topics.set_fault(topic_arn, fault) {
            Ok(())
        } else {
            Err(SimError::TopicNotFound {
                topic_arn: topic_arn.to_owned(),
            })
        }
    }
}

/// SQS, SNS and metric data, in-process (the same as the control API's `/_sim/sqs`, `/_sim/sns`
/// and `/_sim/metrics`).
impl SimHandle {
    /// Create a standard queue (idempotent) with AWS default attributes; its URL.
    pub fn create_queue(
        &self,
        account: &str,
        region: &str,
        name: &str,
    ) -> Result<String, SimError> {
        self.sim
            .create_queue(account, region, name)
            .map(|q| q.queue_url)
    }

    /// The URL the simulator gives a queue: `http://127.0.0.1:PORT/ACCOUNT/NAME`.
    pub fn queue_url(&self, account: &str, name: &str) -> String {
        self.sim.queues.queue_url(account, name)
    }

    /// The queues of an account and region, with their visible / in-flight / delayed counts.
    pub fn queues(&self, account: &str, region: &str) -> Vec<QueueView> {
        self.sim.queues(account, region)
    }

    /// Every message a queue holds now (visible, in flight or delayed), oldest first.
    pub fn queue_messages(
        &self,
        account: &str,
        region: &str,
        name: &str,
    ) -> Result<Vec<MessageView>, SimError> {
        self.sim.queue_messages(account, region, name)
    }

    /// Send a message to a queue as another producer would (EventBridge, a script); its MessageId.
    pub fn send_message(
        &self,
        account: &str,
        region: &str,
        name: &str,
        body: &str,
    ) -> Result<String, SimError> {
        self.sim.send_message(account, region, name, body)
    }

    /// Every DeleteMessage that named a handle of this queue, oldest first (`deleted: false` for
    /// a stale handle, which AWS answers with success and ignores).
    pub fn deletions(
        &self,
        account: &str,
        region: &str,
        name: &str,
    ) -> Result<Vec<DeletionView>, SimError> {
        self.sim.deletions(account, region, name)
    }

    /// Make every request naming a queue fail (dropped connection or 500), for `for_ms` or until
    /// cleared with None.
    pub fn set_queue_fault(
        &self,
        account: &str,
        region: &str,
        name: &str,
        fault: Option<QueueFault>,
    ) -> Result<(), SimError> {
        self.sim.set_queue_fault(account, region, name, fault)
    }

    /// Create an SNS topic (idempotent); its ARN `arn:aws:sns:REGION:ACCOUNT:NAME`.
    pub fn create_topic(
        &self,
        account: &str,
        region: &str,
        name: &str,
    ) -> Result<String, SimError> {
        self.sim.create_topic(account, region, name)
    }

    pub fn topics(&self, account: &str, region: &str) -> Vec<TopicView> {
        self.sim.topics.topics(account, region)
    }

    /// Subscribe a queue (`arn:aws:sqs:REGION:ACCOUNT:NAME`) to a topic, as an SQS
    /// subscription confirmed at once (same-account subscriptions are).
    pub fn subscribe_queue(
        &self,
        topic_arn: &str,
        queue_arn: &str,
        raw_message_delivery: bool,
    ) -> Result<SubscriptionView, SimError> {
        self.sim
            .subscribe_queue(topic_arn, queue_arn, raw_message_delivery)
    }

    /// Make every Publish to a topic refuse or hang; None clears it.
    pub fn set_topic_fault(
        &self,
        topic_arn: &str,
        fault: Option<TopicFault>,
    ) -> Result<(), SimError> {
        self.sim.set_topic_fault(topic_arn, fault)
    }

    /// Every Publish call, oldest first, whatever its outcome.
    pub fn publishes(&self) -> Vec<PublishRecord> {
        self.sim.topics.publishes()
    }

    /// Every datum PutMetricData accepted, oldest first.
    pub fn metric_data(&self) -> Vec<MetricDatumRecord> {
        self.sim.metrics.data()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueBody {
    account: String,
    region: String,
    queue_name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    account: String,
    region: String,
    queue_name: String,
    message_body: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueFaultBody {
    account: String,
    region: String,
    queue_name: String,
    fault: Option<QueueFault>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicBody {
    account: String,
    region: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeBody {
    topic_arn: String,
    queue_arn: String,
    #[serde(default)]
    raw_message_delivery: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicFaultBody {
    topic_arn: String,
    fault: Option<TopicFault>,
}

/// True for the paths `control` serves.
pub(crate) fn is_control_path(path: &str) -> bool {
    path.starts_with("/_sim/sqs/") || path.starts_with("/_sim/sns/") || path == "/_sim/metrics"
}

fn status_for(err: &SimError) -> u16 {
    match err {
        SimError::InvalidValue { .. } => 400,
        _ => 404,
    }
}

fn answer<T: serde::Serialize>(result: Result<T, SimError>) -> HttpResponse {
    match result {
        Ok(value) => json(200, &value),
        Err(err) => error(status_for(&err), err.to_string()),
    }
}

/// Read a JSON body, act, log the change as a `sim` request and answer.
fn change<B: serde::de::DeserializeOwned, T: serde::Serialize>(
    sim: &Sim,
    body: &[u8],
    operation: &str,
    act: impl FnOnce(&Sim, B) -> Result<T, SimError>,
) -> HttpResponse {
    let body: B = match parse(body) {
        Ok(body) => body,
        Err(message) => return error(400, message),
    };
    let result = act(sim, body);
    let status = if result.is_ok() { 200 } else { 400 };
    log_change(sim, operation, None, None, None, status);
    answer(result)
}

pub(crate) fn control(sim: &Sim, parts: &Parts, path: &str, body: &[u8]) -> HttpResponse {
    let q = query(parts);
    let get = |name: &str| q.get(name).map(String::as_str).unwrap_or("");
    match (&parts.method, path) {
        (&Method::GET, "/_sim/sqs/queues") => json(200, &sim.queues(get("account"), get("region"))),
        (&Method::POST, "/_sim/sqs/queues") => {
            change(sim, body, "CreateQueue", |sim, b: QueueBody| {
                sim.create_queue(&b.account, &b.region, &b.queue_name)
            })
        }
        (&Method::GET, "/_sim/sqs/messages") => {
            answer(sim.queue_messages(get("account"), get("region"), get("queue_name")))
        }
        (&Method::POST, "/_sim/sqs/messages") => {
            change(sim, body, "SendMessage", |sim, b: SendBody| {
                sim.send_message(&b.account, &b.region, &b.queue_name, &b.message_body)
                    .map(|id| serde_json::json!({ "message_id": id }))
            })
        }
        (&Method::GET, "/_sim/sqs/deletions") => {
            answer(sim.deletions(get("account"), get("region"), get("queue_name")))
        }
        (&Method::POST, "/_sim/sqs/fault") => {
            change(sim, body, "SetQueueFault", |sim, b: QueueFaultBody| {
                sim.set_queue_fault(&b.account, &b.region, &b.queue_name, b.fault)
                    .map(|()| serde_json::json!({ "fault": b.fault }))
            })
        }
        (&Method::GET, "/_sim/sns/topics") => {
            json(200, &sim.topics.topics(get("account"), get("region")))
        }
        (&Method::POST, "/_sim/sns/topics") => {
            change(sim, body, "CreateTopic", |sim, b: TopicBody| {
                sim.create_topic(&b.account, &b.region, &b.name)
                    .map(|arn| serde_json::json!({ "topic_arn": arn }))
            })
        }
        (&Method::POST, "/_sim/sns/subscriptions") => {
            change(sim, body, "Subscribe", |sim, b: SubscribeBody| {
                sim.subscribe_queue(&b.topic_arn, &b.queue_arn, b.raw_message_delivery)
            })
        }
        (&Method::POST, "/_sim/sns/fault") => {
            change(sim, body, "SetTopicFault", |sim, b: TopicFaultBody| {
                sim.set_topic_fault(&b.topic_arn, b.fault)
                    .map(|()| serde_json::json!({ "fault": b.fault }))
            })
        }
        (&Method::GET, "/_sim/sns/publishes") => {
            let topic = q.get("topic_arn");
            let publishes: Vec<PublishRecord> = sim
                .topics
                .publishes()
                .into_iter()
                .filter(|p| topic.is_none_or(|t| *t == p.topic_arn))
                .collect();
            json(200, &publishes)
        }
        (&Method::GET, "/_sim/metrics") => {
            let namespace = q.get("namespace");
            let data: Vec<MetricDatumRecord> = sim
                .metrics
                .data()
                .into_iter()
                .filter(|d| namespace.is_none_or(|n| *n == d.namespace))
                .collect();
            json(200, &data)
        }
        _ => error(404, format!("no control endpoint {} {path}", parts.method)),
    }
}
