//! SQS as aws-sdk-sqs and the AWS CLI speak it (awsJson 1.0, `X-Amz-Target: AmazonSQS.<Op>`,
//! awsQueryCompatible error codes): CreateQueue, GetQueueUrl, SendMessage, ReceiveMessage (long
//! polling), DeleteMessage, ChangeMessageVisibility, GetQueueAttributes. Input arrives as JSON,
//! output leaves as a `Value`; never sees HTTP or signatures. The queue model is `queue.rs`.

mod queue;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value as Json;

pub use queue::{
    DeletionView, MessageAttribute, MessageView, QueueDecl, QueueFault, QueueFaultKind, QueueView,
};
pub(crate) use queue::{
    Message, Queue, QueueKey, Queues, key_from_arn, queue_arn, valid_queue_name, validate_world,
};

use crate::input::Input;
use crate::protocol::{ApiError, Common, Protocol};
use crate::state::{Sim, now_us};
use crate::value::Value;

/// ReceiveMessage bounds (SQS API reference).
const MAX_RECEIVE: i64 = 10;
const MAX_WAIT_S: i64 = 20;
const MAX_DELAY_S: i64 = 900;
/// At most 10 message attributes per message (SQS quotas).
const MAX_MESSAGE_ATTRIBUTES: usize = 10;

/// What a request can come to besides a success.
#[derive(Debug)]
pub(crate) enum Failure {
    Api(ApiError),
    /// Close the connection without answering (an unreachable queue).
    Drop,
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Failure {
        Failure::Api(error)
    }
}

/// The modelled error shape behind each awsQuery-compatible code, for the `__type` of the JSON
/// error body (the SDK and the CLI take the code from the `x-amzn-query-error` header).
pub(crate) fn error_type(code: &str) -> String {
    let shape = match code {
        "AWS.SimpleQueueService.NonExistentQueue" => "QueueDoesNotExist",
        "AWS.SimpleQueueService.MessageNotInflight" => "MessageNotInflight",
        "AWS.SimpleQueueService.UnsupportedOperation" => "UnsupportedOperation",
        "QueueAlreadyExists" => "QueueNameExists",
        "InvalidParameterValue" | "MissingParameter" => {
            return "com.amazon.coral.validate#ValidationException".to_owned();
        }
        other => other,
    };
    format!("com.amazonaws.sqs#{shape}")
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad("InvalidParameterValue", message)
}

fn no_queue() -> ApiError {
    ApiError::bad(
        "AWS.SimpleQueueService.NonExistentQueue",
        "The specified queue does not exist.",
    )
}

/// The queue URL a request names, for the request log.
pub(crate) fn target(input: &Json) -> Option<String> {
    input
        .get("QueueUrl")
        .or_else(|| input.get("QueueName"))
        .and_then(Json::as_str)
        .map(str::to_owned)
}

/// One SQS operation. `sender_id` is the caller's user id (the SenderId attribute).
pub(crate) async fn handle(
    sim: &Sim,
    account: &str,
    region: &str,
    sender_id: &str,
    operation: &str,
    json: &Json,
) -> Result<Value, Failure> {
    let input = Input {
        json,
        validation_code: "InvalidParameterValue",
    };
    let queues = &sim.queues;
    match operation {
        "CreateQueue" => Ok(create_queue(queues, account, region, &input)?),
        "GetQueueUrl" => Ok(get_queue_url(queues, account, region, &input)?),
        "SendMessage" => {
            let key = resolve(queues, region, &input)?;
            let body = input.req_str("MessageBody")?;
            let delay = bounded(&input, "DelaySeconds", 0, MAX_DELAY_S)?;
            let attributes = message_attributes(json)?;
            let sent = send(queues, &key, body, attributes, sender_id, delay)?;
            Ok(sent)
        }
        "ReceiveMessage" => receive_message(queues, region, &input).await,
        "DeleteMessage" => Ok(delete_message(queues, region, &input)?),
        "ChangeMessageVisibility" => Ok(change_visibility(queues, region, &input)?),
        "GetQueueAttributes" => Ok(get_queue_attributes(queues, region, &input)?),
        other => Err(Common::UnknownOperation
            .error(
                Protocol::SqsJson,
                format!("operation {other} is not supported by kms-sim"),
            )
            .into()),
    }
}

/// The queue a QueueUrl names: `http://HOST/ACCOUNT/NAME` (the simulator's own) or the AWS form
/// `https://sqs.REGION.amazonaws.com/ACCOUNT/NAME`, whose region must be the caller's. A fault on
/// the queue answers here.
fn resolve(queues: &Queues, region: &str, input: &Input<'_>) -> Result<QueueKey, Failure> {
    let url = input.req_str("QueueUrl")?;
    let key = key_from_url(url, region).ok_or_else(no_queue)?;
    let now = now_us();
    let mut state = queues.lock();
    let queue = state.queues.get_mut(&key).ok_or_else(no_queue)?;
    match queue.active_fault(now) {
        Some(QueueFaultKind::DropConnection) => Err(Failure::Drop),
        Some(QueueFaultKind::InternalError) => Err(Common::Internal
            .error(
                Protocol::SqsJson,
                "We encountered an internal error. Please try again.",
            )
            .into()),
        None => Ok(key),
    }
}

pub(crate) fn key_from_url(url: &str, region: &str) -> Option<QueueKey> {
    let (scheme_host, path) = url.split_once("://").map(|(_, rest)| {
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        (host, path)
    })?;
    if let Some(url_region) = scheme_host
        .strip_prefix("sqs.")
        .and_then(|h| h.split('.').next())
        && scheme_host.ends_with(".amazonaws.com")
        && url_region != region
    {
        return None;
    }
    let mut segments = path.trim_end_matches('/').rsplit('/');
    let name = segments.next()?;
    let account = segments.next()?;
    (crate::world::is_account_id(account) && queue::valid_queue_name(name))
        .then(|| (account.to_owned(), region.to_owned(), name.to_owned()))
}

fn bounded(input: &Input<'_>, field: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
    match input.opt_int(field)? {
        Some(v) if !(min..=max).contains(&v) => Err(invalid(format!(
            "Value {v} for parameter {field} is invalid. Reason: Must be between {min} and {max}, if provided."
        ))),
        other => Ok(other),
    }
}

fn create_queue(
    queues: &Queues,
    account: &str,
    region: &str,
    input: &Input<'_>,
) -> Result<Value, ApiError> {
    let name = input.req_str("QueueName")?;
    if name.ends_with(".fifo") {
        return Err(ApiError::bad(
            "AWS.SimpleQueueService.UnsupportedOperation",
            "kms-sim models standard queues only",
        ));
    }
    if !queue::valid_queue_name(name) {
        return Err(invalid(
            "Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length",
        ));
    }
    let mut fresh = Queue::new();
    if let Some(attributes) = input.json.get("Attributes").and_then(Json::as_object) {
        for (attribute, value) in attributes {
            let text = value.as_str().ok_or_else(|| {
                ApiError::bad(
                    "InvalidAttributeValue",
                    format!("Invalid value for the parameter {attribute}."),
                )
            })?;
            apply_attribute(&mut fresh, attribute, text)?;
        }
    }
    let key = (account.to_owned(), region.to_owned(), name.to_owned());
    let mut state = queues.lock();
    match state.queues.get(&key) {
        Some(existing)
            if existing.attributes != fresh.attributes && !fresh.attributes.is_empty() =>
        {
            return Err(ApiError::bad(
                "QueueAlreadyExists",
                "A queue already exists with the same name and a different value for attribute(s)",
            ));
        }
        Some(_) => {}
        None => {
            state.queues.insert(key, fresh);
        }
    }
    Ok(Value::Map(vec![(
        "QueueUrl",
        Value::str(queues.queue_url(account, name)),
    )]))
}

fn apply_attribute(queue: &mut Queue, attribute: &str, text: &str) -> Result<(), ApiError> {
    let number = |min: u64, max: u64| {
        text.parse::<u64>()
            .ok()
            .filter(|v| (min..=max).contains(v))
            .ok_or_else(|| {
                ApiError::bad(
                    "InvalidAttributeValue",
                    format!("Invalid value for the parameter {attribute}."),
                )
            })
    };
    match attribute {
        "VisibilityTimeout" => {
            queue.visibility_timeout_s = number(0, queue::MAX_VISIBILITY_TIMEOUT_S)?
        }
        "ReceiveMessageWaitTimeSeconds" => queue.wait_time_s = number(0, 20)?,
        "MaximumMessageSize" => {
            queue.maximum_message_size = number(queue::MIN_MESSAGE_SIZE, queue::MAX_MESSAGE_SIZE)?
        }
        "MessageRetentionPeriod" => queue.retention_s = number(60, 1_209_600)?,
        "DelaySeconds" => queue.delay_s = number(0, 900)?,
        "Policy"
        | "RedrivePolicy"
        | "RedriveAllowPolicy"
        | "KmsMasterKeyId"
        | "KmsDataKeyReusePeriodSeconds"
        | "SqsManagedSseEnabled" => {}
        other => {
            return Err(ApiError::bad(
                "InvalidAttributeName",
                format!("Unknown Attribute {other}."),
            ));
        }
    }
    queue
        .attributes
        .insert(attribute.to_owned(), text.to_owned());
    Ok(())
}

fn get_queue_url(
    queues: &Queues,
    account: &str,
    region: &str,
    input: &Input<'_>,
) -> Result<Value, ApiError> {
    let name = input.req_str("QueueName")?;
    let owner = input.opt_str("QueueOwnerAWSAccountId")?.unwrap_or(account);
    let key = (owner.to_owned(), region.to_owned(), name.to_owned());
    if !queues.lock().queues.contains_key(&key) {
        return Err(no_queue());
    }
    Ok(Value::Map(vec![(
        "QueueUrl",
        Value::str(queues.queue_url(owner, name)),
    )]))
}

fn message_attributes(json: &Json) -> Result<BTreeMap<String, MessageAttribute>, ApiError> {
    let mut out = BTreeMap::new();
    let Some(map) = json.get("MessageAttributes").and_then(Json::as_object) else {
        return Ok(out);
    };
    if map.len() > MAX_MESSAGE_ATTRIBUTES {
        return Err(invalid(format!(
            "Number of message attributes [{}] exceeds the allowed maximum [{MAX_MESSAGE_ATTRIBUTES}].",
            map.len()
        )));
    }
    for (name, value) in map {
        let field = |f: &str| value.get(f).and_then(Json::as_str).map(str::to_owned);
        let data_type = field("DataType").ok_or_else(|| {
            invalid(format!(
                "The message attribute '{name}' must contain a non-empty message attribute type."
            ))
        })?;
        let attribute = MessageAttribute {
            string_value: field("StringValue"),
            binary_value: field("BinaryValue"),
            data_type,
        };
        if attribute.string_value.is_none() && attribute.binary_value.is_none() {
            return Err(invalid(format!(
                "The message attribute '{name}' must contain a non-empty message attribute value."
            )));
        }
        out.insert(name.clone(), attribute);
    }
    Ok(out)
}

/// The characters SQS accepts in a body (W3C XML character ranges).
fn valid_body(body: &str) -> bool {
    body.chars().all(|c| {
        matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
    })
}

/// SendMessage (and SNS delivery): append a message; wakes long polls.
pub(crate) fn send(
    queues: &Queues,
    key: &QueueKey,
    body: &str,
    attributes: BTreeMap<String, MessageAttribute>,
    sender_id: &str,
    delay_s: Option<i64>,
) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(invalid(
            "The request must contain the parameter MessageBody.",
        ));
    }
    if !valid_body(body) {
        return Err(ApiError::bad(
            "InvalidMessageContents",
            "Invalid binary character in the message body",
        ));
    }
    let now = now_us();
    let id = new_uuid();
    let md5_body = md5_hex(body.as_bytes());
    let md5_attributes = (!attributes.is_empty()).then(|| md5_of_attributes(&attributes));
    {
        let mut state = queues.lock();
        let queue = state.queues.get_mut(key).ok_or_else(no_queue)?;
        let size = body.len() + attributes_size(&attributes);
        if size as u64 > queue.maximum_message_size {
            return Err(invalid(format!(
                "One or more parameters are invalid. Reason: Message must be shorter than {} bytes.",
                queue.maximum_message_size
            )));
        }
        queue.expire(now);
        let delay = delay_s.map_or(queue.delay_s, |d| d as u64);
        queue.messages.push_back(Message {
            id: id.clone(),
            body: body.to_owned(),
            attributes,
            sender_id: sender_id.to_owned(),
            sent_us: now,
            visible_at_us: now + delay * 1_000_000,
            receive_count: 0,
            first_receive_us: None,
            receipt_handle: None,
        });
    }
    queues.changed.notify_waiters();
    let mut output = vec![
        ("MD5OfMessageBody", Value::str(md5_body)),
        ("MessageId", Value::str(id)),
    ];
    if let Some(md5) = md5_attributes {
        output.push(("MD5OfMessageAttributes", Value::str(md5)));
    }
    Ok(Value::Map(output))
}

fn attributes_size(attributes: &BTreeMap<String, MessageAttribute>) -> usize {
    attributes
        .iter()
        .map(|(name, a)| {
            name.len()
                + a.data_type.len()
                + a.string_value.as_ref().map_or(0, String::len)
                + a.binary_value.as_ref().map_or(0, String::len)
        })
        .sum()
}

/// Which system attributes a ReceiveMessage asked for (both the deprecated `AttributeNames` and
/// `MessageSystemAttributeNames`).
fn wanted_attributes(input: &Input<'_>) -> Result<Vec<String>, ApiError> {
    let mut names = Vec::new();
    for field in ["AttributeNames", "MessageSystemAttributeNames"] {
        for name in input.opt_str_list(field)?.unwrap_or_default() {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

async fn receive_message(
    queues: &Queues,
    region: &str,
    input: &Input<'_>,
) -> Result<Value, Failure> {
    let max = bounded(input, "MaxNumberOfMessages", 1, MAX_RECEIVE)?.unwrap_or(1) as usize;
    let visibility = bounded(
        input,
        "VisibilityTimeout",
        0,
        queue::MAX_VISIBILITY_TIMEOUT_S as i64,
    )?;
    let wait = bounded(input, "WaitTimeSeconds", 0, MAX_WAIT_S)?;
    let wanted = wanted_attributes(input)?;
    let wanted_message_attributes = input
        .opt_str_list("MessageAttributeNames")?
        .unwrap_or_default();
    let key = resolve(queues, region, input)?;
    let wait_s = match wait {
        Some(w) => w as u64,
        None => queues.lock().queues.get(&key).map_or(0, |q| q.wait_time_s),
    };
    let deadline = now_us() + wait_s * 1_000_000;
    loop {
        // Registered before looking, so a send between the look and the wait is not missed.
        let notified = queues.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = now_us();
        let (taken, next) = {
            let mut state = queues.lock();
            take_visible(&mut state, &key, max, visibility, now)?
        };
        if !taken.is_empty() || now >= deadline {
            let messages: Vec<Value> = taken
                .iter()
                .map(|m| received(m, &wanted, &wanted_message_attributes))
                .collect();
            // An empty receive answers `{}`, without a Messages list, as SQS does.
            if messages.is_empty() {
                return Ok(Value::Map(vec![]));
            }
            return Ok(Value::Map(vec![("Messages", Value::List(messages))]));
        }
        let wake = next.map_or(deadline, |at| at.min(deadline));
        let pause = Duration::from_micros(wake.saturating_sub(now));
        let _ = tokio::time::timeout(pause, notified).await;
        // A fault set while polling answers the poll as the next request would be answered.
        resolve(queues, region, input)?;
    }
}

/// Take up to `max` visible messages, each with a new receipt handle and its receive count
/// raised; also when the next invisible one becomes visible.
fn take_visible(
    state: &mut queue::QueuesState,
    key: &QueueKey,
    max: usize,
    visibility: Option<i64>,
    now: u64,
) -> Result<(Vec<Message>, Option<u64>), ApiError> {
    let queue = state.queues.get_mut(key).ok_or_else(no_queue)?;
    queue.expire(now);
    let timeout_s = visibility.map_or(queue.visibility_timeout_s, |v| v as u64);
    let mut taken = Vec::new();
    for message in queue.messages.iter_mut() {
        if taken.len() >= max {
            break;
        }
        if message.visible_at_us > now {
            continue;
        }
        let handle = new_receipt_handle();
        message.receipt_handle = Some(handle);
        message.receive_count += 1;
        message.first_receive_us.get_or_insert(now);
        message.visible_at_us = now + timeout_s * 1_000_000;
        taken.push(message.clone());
    }
    let next = queue.next_visible_at(now);
    for message in &taken {
        if let Some(handle) = &message.receipt_handle {
            state.remember_handle(handle.clone(), key.clone(), message.id.clone());
        }
    }
    Ok((taken, next))
}

fn received(message: &Message, wanted: &[String], wanted_attributes: &[&str]) -> Value {
    let all = wanted.iter().any(|n| n == "All");
    let want = |name: &str| all || wanted.iter().any(|n| n == name);
    let mut attributes = Vec::new();
    if want("SenderId") {
        attributes.push(("SenderId", Value::str(message.sender_id.clone())));
    }
    if want("SentTimestamp") {
        attributes.push((
            "SentTimestamp",
            Value::str((message.sent_us / 1000).to_string()),
        ));
    }
    if want("ApproximateReceiveCount") {
        attributes.push((
            "ApproximateReceiveCount",
            Value::str(message.receive_count.to_string()),
        ));
    }
    if want("ApproximateFirstReceiveTimestamp") {
        let first = message.first_receive_us.unwrap_or(message.sent_us) / 1000;
        attributes.push((
            "ApproximateFirstReceiveTimestamp",
            Value::str(first.to_string()),
        ));
    }
    let mut fields = vec![
        ("MessageId", Value::str(message.id.clone())),
        (
            "ReceiptHandle",
            Value::str(message.receipt_handle.clone().unwrap_or_default()),
        ),
        ("MD5OfBody", Value::str(md5_hex(message.body.as_bytes()))),
        ("Body", Value::str(message.body.clone())),
    ];
    if !attributes.is_empty() {
        fields.push(("Attributes", Value::Map(attributes)));
    }
    let all_attributes = wanted_attributes.iter().any(|n| *n == "All" || *n == ".*");
    let selected: BTreeMap<String, MessageAttribute> = message
        .attributes
        .iter()
        .filter(|(name, _)| {
            all_attributes
                || wanted_attributes.iter().any(|w| {
                    *w == name.as_str() || w.strip_suffix(".*").is_some_and(|p| name.starts_with(p))
                })
        })
        .map(|(n, a)| (n.clone(), a.clone()))
        .collect();
    if !selected.is_empty() {
        fields.push((
            "MD5OfMessageAttributes",
            Value::str(md5_of_attributes(&selected)),
        ));
        fields.push(("MessageAttributes", Value::Json(attributes_json(&selected))));
    }
    Value::Map(fields)
}

fn attributes_json(attributes: &BTreeMap<String, MessageAttribute>) -> Json {
    let mut map = serde_json::Map::new();
    for (name, a) in attributes {
        let mut entry = serde_json::Map::new();
        entry.insert("DataType".into(), Json::String(a.data_type.clone()));
        if let Some(s) = &a.string_value {
            entry.insert("StringValue".into(), Json::String(s.clone()));
        }
        if let Some(b) = &a.binary_value {
            entry.insert("BinaryValue".into(), Json::String(b.clone()));
        }
        map.insert(name.clone(), Json::Object(entry));
    }
    Json::Object(map)
}

fn invalid_handle(handle: &str) -> ApiError {
    ApiError::bad(
        "ReceiptHandleIsInvalid",
        format!("The input receipt handle \"{handle}\" is not a valid receipt handle."),
    )
}

fn delete_message(queues: &Queues, region: &str, input: &Input<'_>) -> Result<Value, Failure> {
    let key = resolve(queues, region, input)?;
    let handle = input.req_str("ReceiptHandle")?;
    let now = now_us();
    let mut state = queues.lock();
    let message_id = match state.handles.get(handle) {
        Some((issued_for, id)) if *issued_for == key => id.clone(),
        _ => return Err(invalid_handle(handle).into()),
    };
    let queue = state.queues.get_mut(&key).ok_or_else(no_queue)?;
    let Some(index) = queue.messages.iter().position(|m| m.id == message_id) else {
        // Already deleted (or expired): DeleteMessage is idempotent.
        return Ok(Value::Map(vec![]));
    };
    // Only the latest receive's handle deletes; an older one succeeds and keeps the message
    // (DeleteMessage reference: "otherwise, the request succeeds, but the message will not be
    // deleted").
    let current = queue.messages[index].receipt_handle.as_deref() == Some(handle);
    let message = if current {
        queue.messages.remove(index)
    } else {
        queue.messages.get(index).cloned()
    };
    if let Some(message) = message {
        queue.record_deletion(DeletionView {
            message_id,
            receipt_handle: handle.to_owned(),
            ts_us: now,
            deleted: current,
            receive_count: message.receive_count,
            body: message.body,
        });
    }
    Ok(Value::Map(vec![]))
}

fn change_visibility(queues: &Queues, region: &str, input: &Input<'_>) -> Result<Value, Failure> {
    let key = resolve(queues, region, input)?;
    let handle = input.req_str("ReceiptHandle")?;
    let timeout = bounded(
        input,
        "VisibilityTimeout",
        0,
        queue::MAX_VISIBILITY_TIMEOUT_S as i64,
    )?
    .ok_or_else(|| invalid("The request must contain the parameter VisibilityTimeout."))?;
    let now = now_us();
    {
        let mut state = queues.lock();
        let message_id = match state.handles.get(handle) {
            Some((issued_for, id)) if *issued_for == key => id.clone(),
            _ => return Err(invalid_handle(handle).into()),
        };
        let queue = state.queues.get_mut(&key).ok_or_else(no_queue)?;
        let expired = || {
            ApiError::bad(
                "ReceiptHandleIsInvalid",
                format!(
                    "Value {handle} for parameter ReceiptHandle is invalid. Reason: The receipt handle has expired."
                ),
            )
        };
        let message = queue
            .messages
            .iter_mut()
            .find(|m| m.id == message_id)
            .ok_or_else(expired)?;
        if message.visible_at_us <= now {
            return Err(ApiError::bad(
                "AWS.SimpleQueueService.MessageNotInflight",
                "Message does not exist or is not available for visibility timeout change.",
            )
            .into());
        }
        if message.receipt_handle.as_deref() != Some(handle) {
            return Err(expired().into());
        }
        message.visible_at_us = now + timeout as u64 * 1_000_000;
    }
    queues.changed.notify_waiters();
    Ok(Value::Map(vec![]))
}

/// Every attribute GetQueueAttributes knows, in the order `All` lists them.
const QUEUE_ATTRIBUTES: [&str; 13] = [
    "QueueArn",
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
    "CreatedTimestamp",
    "LastModifiedTimestamp",
    "VisibilityTimeout",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "DelaySeconds",
    "ReceiveMessageWaitTimeSeconds",
    "SqsManagedSseEnabled",
    "Policy",
];

fn get_queue_attributes(
    queues: &Queues,
    region: &str,
    input: &Input<'_>,
) -> Result<Value, Failure> {
    let key = resolve(queues, region, input)?;
    let names = input.opt_str_list("AttributeNames")?.unwrap_or_default();
    for name in &names {
        if *name != "All" && !QUEUE_ATTRIBUTES.contains(name) && !name.starts_with("Redrive") {
            return Err(ApiError::bad(
                "InvalidAttributeName",
                format!("Unknown Attribute {name}."),
            )
            .into());
        }
    }
    if names.is_empty() {
        return Ok(Value::Map(vec![]));
    }
    let all = names.contains(&"All");
    let now = now_us();
    let mut state = queues.lock();
    let queue = state.queues.get_mut(&key).ok_or_else(no_queue)?;
    queue.expire(now);
    let view = queues.view(&key, queue, now);
    let mut attributes = Vec::new();
    for name in QUEUE_ATTRIBUTES {
        if !all && !names.contains(&name) {
            continue;
        }
        let value = match name {
            "QueueArn" => view.queue_arn.clone(),
            "ApproximateNumberOfMessages" => view.visible.to_string(),
            "ApproximateNumberOfMessagesNotVisible" => view.in_flight.to_string(),
            "ApproximateNumberOfMessagesDelayed" => view.delayed.to_string(),
            "CreatedTimestamp" | "LastModifiedTimestamp" => queue.created_s.to_string(),
            "VisibilityTimeout" => queue.visibility_timeout_s.to_string(),
            "MaximumMessageSize" => queue.maximum_message_size.to_string(),
            "MessageRetentionPeriod" => queue.retention_s.to_string(),
            "DelaySeconds" => queue.delay_s.to_string(),
            "ReceiveMessageWaitTimeSeconds" => queue.wait_time_s.to_string(),
            "SqsManagedSseEnabled" => "true".to_owned(),
            _ => match queue.attributes.get(name) {
                Some(policy) => policy.clone(),
                None => continue,
            },
        };
        attributes.push((name, Value::str(value)));
    }
    Ok(Value::Map(vec![("Attributes", Value::Map(attributes))]))
}

pub(crate) fn md5_hex(bytes: &[u8]) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(bytes))
}

/// MD5OfMessageAttributes as SQS computes it: names sorted; for each, the length-prefixed
/// (4-byte big-endian) name, data type, a transport byte (1 string, 2 binary) and the value.
pub(crate) fn md5_of_attributes(attributes: &BTreeMap<String, MessageAttribute>) -> String {
    use base64::Engine as _;
    let mut buffer = Vec::new();
    let put = |bytes: &[u8], buffer: &mut Vec<u8>| {
        buffer.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        buffer.extend_from_slice(bytes);
    };
    for (name, attribute) in attributes {
        put(name.as_bytes(), &mut buffer);
        put(attribute.data_type.as_bytes(), &mut buffer);
        if let Some(text) = &attribute.string_value {
            buffer.push(1);
            put(text.as_bytes(), &mut buffer);
        } else if let Some(binary) = &attribute.binary_value {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(binary)
                .unwrap_or_default();
            buffer.push(2);
            put(&raw, &mut buffer);
        }
    }
    md5_hex(&buffer)
}

fn new_receipt_handle() -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = (0..96).map(|_| fastrand::u8(..)).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A lowercase UUID v4 (SQS MessageId, SNS MessageId).
pub(crate) fn new_uuid() -> String {
    crate::protocol::new_request_id().to_lowercase()
}
