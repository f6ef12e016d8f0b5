//! SNS in awsQuery (form in, XML out), as aws-sdk-sns and the AWS CLI speak it: CreateTopic,
//! Subscribe (protocol `sqs`), ListTopics and Publish, which fans out to every subscribed queue
//! in the SNS notification envelope (or raw). Topics, subscriptions, per-topic faults (refuse,
//! hang) and the record of every Publish live here; queues live in `sqs`. Never sees HTTP.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::protocol::{ApiError, Common, Protocol, xml_escape};
use crate::sqs::{self, Failure, MessageAttribute, QueueKey, Queues};
use crate::state::{Sim, now_us};
use crate::world::World;

pub(crate) const SNS_NAMESPACE: &str = "http://sns.amazonaws.com/doc/2010-03-31/";
/// Publish: 256 KiB for the message and its attributes together (SNS quotas).
const MAX_MESSAGE_BYTES: usize = 262_144;
/// ListTopics returns up to 100 topics per page.
const LIST_PAGE: usize = 100;
/// Publishes remembered for the control API.
const REMEMBERED_PUBLISHES: usize = 100_000;
/// The SenderId SQS shows on messages SNS delivered (SNS's own principal in AWS).
const SNS_SENDER_ID: &str = "AIDAIT2UOQQY3AUEKVGXU";

/// One topic declared in the world file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicDecl {
    pub name: String,
    #[serde(default)]
    pub subscriptions: Vec<SubscriptionDecl>,
}

/// An SQS subscription: `queue` is a queue name of the same account and region, or a queue ARN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionDecl {
    pub queue: String,
    #[serde(default)]
    pub raw_message_delivery: bool,
}

/// An injected fault on a topic: what every Publish to it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicFault {
    /// 403 AuthorizationError.
    AuthorizationError,
    /// 500 InternalError.
    InternalError,
    /// 429 Throttled.
    Throttled,
    /// No answer at all, until the client gives up.
    Hang,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionView {
    pub subscription_arn: String,
    pub queue_arn: String,
    pub raw_message_delivery: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicView {
    pub topic_arn: String,
    pub account: String,
    pub region: String,
    pub name: String,
    pub subscriptions: Vec<SubscriptionView>,
    pub fault: Option<TopicFault>,
}

/// One Publish call as the simulator saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRecord {
    /// Microseconds since the epoch, when it arrived.
    pub ts_us: u64,
    /// The caller's account.
    pub account: String,
    pub topic_arn: String,
    /// `delivered` (accepted and fanned out) | `refused` (a fault answered an error) | `hung` (a
    /// fault held it unanswered) | `rejected` (invalid or unknown topic).
    pub outcome: String,
    pub message_id: Option<String>,
    pub subject: Option<String>,
    pub message: Option<String>,
    pub message_attributes: BTreeMap<String, MessageAttribute>,
    pub error_code: Option<String>,
    /// The queue ARNs a copy went to.
    pub delivered_to: Vec<String>,
}

#[derive(Debug, Clone)]
struct Subscription {
    arn: String,
    queue: QueueKey,
    raw: bool,
}

#[derive(Debug, Clone)]
struct Topic {
    account: String,
    region: String,
    name: String,
    subscriptions: Vec<Subscription>,
    fault: Option<TopicFault>,
}

struct TopicsState {
    /// By topic ARN.
    topics: BTreeMap<String, Topic>,
    publishes: VecDeque<PublishRecord>,
}

/// Every topic of the simulator and the record of publishes.
pub(crate) struct Topics {
    state: Mutex<TopicsState>,
}

pub(crate) fn topic_arn(account: &str, region: &str, name: &str) -> String {
    format!("arn:aws:sns:{region}:{account}:{name}")
}

fn valid_topic_name(name: &str) -> bool {
    (1..=256).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn subscription_arn(topic_arn: &str) -> String {
    format!("{topic_arn}:{}", sqs::new_uuid())
}

/// The queue a world subscription names.
fn decl_queue(decl: &SubscriptionDecl, account: &str, region: &str) -> Option<QueueKey> {
    if decl.queue.starts_with("arn:") {
        sqs::key_from_arn(&decl.queue)
    } else {
        Some((account.to_owned(), region.to_owned(), decl.queue.clone()))
    }
}

/// Check the topics a world declares.
pub(crate) fn validate_world(world: &World) -> Result<(), String> {
    for (account, regions) in &world.accounts {
        for (region, contents) in regions {
            let mut names = std::collections::BTreeSet::new();
            for topic in &contents.topics {
                if !valid_topic_name(&topic.name) || !names.insert(topic.name.as_str()) {
                    return Err(format!(
                        "topic {:?} in {account}/{region} is invalid or declared twice",
                        topic.name
                    ));
                }
                for subscription in &topic.subscriptions {
                    if decl_queue(subscription, account, region).is_none() {
                        return Err(format!(
                            "topic {} subscribes {:?}, which is not a queue name or ARN",
                            topic.name, subscription.queue
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

impl Topics {
    pub(crate) fn from_world(world: &World) -> Topics {
        let mut topics = BTreeMap::new();
        for (account, regions) in &world.accounts {
            for (region, contents) in regions {
                for decl in &contents.topics {
                    let arn = topic_arn(account, region, &decl.name);
                    let subscriptions = decl
                        .subscriptions
                        .iter()
                        .filter_map(|s| {
                            Some(Subscription {
                                arn: subscription_arn(&arn),
                                queue: decl_queue(s, account, region)?,
                                raw: s.raw_message_delivery,
                            })
                        })
                        .collect();
                    let topic = Topic {
                        account: account.clone(),
                        region: region.clone(),
                        name: decl.name.clone(),
                        subscriptions,
                        fault: None,
                    };
                    topics.insert(arn, topic);
                }
            }
        }
        Topics {
            state: Mutex::new(TopicsState {
                topics,
                publishes: VecDeque::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, TopicsState> {
        // As `Sim::lock`: a panic mid-update cannot leave state that matters to a simulator.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, record: PublishRecord) {
        let mut state = self.lock();
        if state.publishes.len() >= REMEMBERED_PUBLISHES {
            state.publishes.pop_front();
        }
        state.publishes.push_back(record);
    }

    pub(crate) fn publishes(&self) -> Vec<PublishRecord> {
        self.lock().publishes.iter().cloned().collect()
    }

    pub(crate) fn topics(&self, account: &str, region: &str) -> Vec<TopicView> {
        self.lock()
            .topics
            .iter()
            .filter(|(_, t)| t.account == account && t.region == region)
            .map(|(arn, t)| view(arn, t))
            .collect()
    }

    /// CreateTopic: idempotent; the ARN.
    pub(crate) fn create_topic(&self, account: &str, region: &str, name: &str) -> String {
        let arn = topic_arn(account, region, name);
        self.lock()
            .topics
            .entry(arn.clone())
            .or_insert_with(|| Topic {
                account: account.to_owned(),
                region: region.to_owned(),
                name: name.to_owned(),
                subscriptions: Vec::new(),
                fault: None,
            });
        arn
    }

    /// Subscribe a queue (idempotent per topic and queue); None if there is no such topic.
    pub(crate) fn subscribe(
        &self,
        topic_arn: &str,
        queue_arn: &str,
        raw: bool,
    ) -> Result<SubscriptionView, ApiError> {
        let queue = sqs::key_from_arn(queue_arn)
            .ok_or_else(|| invalid_parameter("Invalid parameter: SQS endpoint ARN"))?;
        let mut state = self.lock();
        let topic = state.topics.get_mut(topic_arn).ok_or_else(not_found)?;
        let subscription = match topic.subscriptions.iter_mut().find(|s| s.queue == queue) {
            Some(existing) => {
                existing.raw = raw;
                existing.clone()
            }
            None => {
                let created = Subscription {
                    arn: subscription_arn(topic_arn),
                    queue,
                    raw,
                };
                topic.subscriptions.push(created.clone());
                created
            }
        };
        Ok(subscription_view(&subscription))
    }

    pub(crate) fn set_fault(&self, topic_arn: &str, fault: Option<TopicFault>) -> bool {
        match self.lock().topics.get_mut(topic_arn) {
            Some(topic) => {
                topic.fault = fault;
                true
            }
            None => false,
        }
    }
}

fn subscription_view(s: &Subscription) -> SubscriptionView {
    SubscriptionView {
        subscription_arn: s.arn.clone(),
        queue_arn: sqs::queue_arn(&s.queue),
        raw_message_delivery: s.raw,
    }
}

fn view(arn: &str, topic: &Topic) -> TopicView {
    TopicView {
        topic_arn: arn.to_owned(),
        account: topic.account.clone(),
        region: topic.region.clone(),
        name: topic.name.clone(),
        subscriptions: topic.subscriptions.iter().map(subscription_view).collect(),
        fault: topic.fault,
    }
}

fn invalid_parameter(message: impl Into<String>) -> ApiError {
    ApiError::bad("InvalidParameter", message)
}

fn not_found() -> ApiError {
    ApiError::new(404, "NotFound", "Topic does not exist")
}

/// The topic ARN a request names, for the request log.
pub(crate) fn target(form: &HashMap<String, String>) -> Option<String> {
    form.get("TopicArn").or_else(|| form.get("Name")).cloned()
}

/// One SNS operation; the XML response document.
pub(crate) async fn handle(
    sim: &Sim,
    account: &str,
    region: &str,
    operation: &str,
    form: &HashMap<String, String>,
    request_id: &str,
) -> Result<String, Failure> {
    let result = match operation {
        "Publish" => publish(sim, account, region, form).await?,
        "CreateTopic" => create_topic(&sim.topics, account, region, form)?,
        "Subscribe" => subscribe(&sim.topics, form)?,
        "ListTopics" => list_topics(&sim.topics, account, region, form)?,
        other => {
            return Err(Common::UnknownOperation
                .error(
                    Protocol::SnsQuery,
                    format!("Could not find operation {other} for version 2010-03-31"),
                )
                .into());
        }
    };
    Ok(format!(
        "<{operation}Response xmlns=\"{SNS_NAMESPACE}\"><{operation}Result>{result}</{operation}Result><ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata></{operation}Response>",
        xml_escape(request_id)
    ))
}

fn create_topic(
    topics: &Topics,
    account: &str,
    region: &str,
    form: &HashMap<String, String>,
) -> Result<String, ApiError> {
    let name = form
        .get("Name")
        .ok_or_else(|| invalid_parameter("Invalid parameter: Name"))?;
    if name.ends_with(".fifo") {
        return Err(invalid_parameter(
            "Invalid parameter: kms-sim models standard topics only",
        ));
    }
    if !valid_topic_name(name) {
        return Err(invalid_parameter(
            "Invalid parameter: Topic Name must be made up of only uppercase and lowercase ASCII letters, numbers, underscores, and hyphens, and must be between 1 and 256 characters long.",
        ));
    }
    let arn = topics.create_topic(account, region, name);
    Ok(format!("<TopicArn>{}</TopicArn>", xml_escape(&arn)))
}

/// `PREFIX.entry.N.key` / `.value` pairs of a query-encoded map.
fn form_map(form: &HashMap<String, String>, prefix: &str, key: &str) -> Vec<(String, String)> {
    let mut entries = Vec::new();
    for n in 1.. {
        let Some(name) = form.get(&format!("{prefix}.entry.{n}.{key}")) else {
            break;
        };
        let value = form
            .get(&format!("{prefix}.entry.{n}.value"))
            .cloned()
            .unwrap_or_default();
        entries.push((name.clone(), value));
    }
    entries
}

fn subscribe(topics: &Topics, form: &HashMap<String, String>) -> Result<String, ApiError> {
    let topic = form
        .get("TopicArn")
        .ok_or_else(|| invalid_parameter("Invalid parameter: TopicArn"))?;
    let protocol = form
        .get("Protocol")
        .ok_or_else(|| invalid_parameter("Invalid parameter: Protocol"))?;
    if protocol != "sqs" {
        return Err(invalid_parameter(format!(
            "Invalid parameter: Protocol {protocol} (kms-sim models sqs subscriptions only)"
        )));
    }
    let endpoint = form
        .get("Endpoint")
        .ok_or_else(|| invalid_parameter("Invalid parameter: Endpoint"))?;
    let mut raw = false;
    for (name, value) in form_map(form, "Attributes", "key") {
        match name.as_str() {
            "RawMessageDelivery" => raw = value.eq_ignore_ascii_case("true"),
            other => {
                return Err(invalid_parameter(format!(
                    "Invalid parameter: Attributes Reason: kms-sim does not model {other}"
                )));
            }
        }
    }
    let subscription = topics.subscribe(topic, endpoint, raw)?;
    Ok(format!(
        "<SubscriptionArn>{}</SubscriptionArn>",
        xml_escape(&subscription.subscription_arn)
    ))
}

fn list_topics(
    topics: &Topics,
    account: &str,
    region: &str,
    form: &HashMap<String, String>,
) -> Result<String, ApiError> {
    let arns: Vec<String> = topics
        .topics(account, region)
        .into_iter()
        .map(|t| t.topic_arn)
        .collect();
    let start = match form.get("NextToken") {
        None => 0,
        Some(token) => token
            .parse::<usize>()
            .ok()
            .filter(|s| *s <= arns.len())
            .ok_or_else(|| invalid_parameter("Invalid parameter: NextToken"))?,
    };
    let end = (start + LIST_PAGE).min(arns.len());
    let mut xml = String::from("<Topics>");
    for arn in &arns[start..end] {
        xml.push_str(&format!(
            "<member><TopicArn>{}</TopicArn></member>",
            xml_escape(arn)
        ));
    }
    xml.push_str("</Topics>");
    if end < arns.len() {
        xml.push_str(&format!("<NextToken>{end}</NextToken>"));
    }
    Ok(xml)
}

/// Publish's message attributes (`MessageAttributes.entry.N.Name` / `.Value.DataType` / …).
fn publish_attributes(
    form: &HashMap<String, String>,
) -> Result<BTreeMap<String, MessageAttribute>, ApiError> {
    let mut attributes = BTreeMap::new();
    for n in 1.. {
        let prefix = format!("MessageAttributes.entry.{n}");
        let Some(name) = form.get(&format!("{prefix}.Name")) else {
            break;
        };
        let field = |f: &str| form.get(&format!("{prefix}.Value.{f}")).cloned();
        let data_type = field("DataType").ok_or_else(|| {
            invalid_parameter(format!(
                "Invalid parameter: The message attribute '{name}' must contain non-empty message attribute type."
            ))
        })?;
        attributes.insert(
            name.clone(),
            MessageAttribute {
                data_type,
                string_value: field("StringValue"),
                binary_value: field("BinaryValue"),
            },
        );
    }
    Ok(attributes)
}

/// What a Publish asked for, once its parameters are valid.
struct Publication {
    topic_arn: String,
    message: String,
    subject: Option<String>,
    attributes: BTreeMap<String, MessageAttribute>,
}

fn publication(form: &HashMap<String, String>, region: &str) -> Result<Publication, ApiError> {
    let topic_arn = form
        .get("TopicArn")
        .or_else(|| form.get("TargetArn"))
        .ok_or_else(|| {
            invalid_parameter(
                "Invalid parameter: TopicArn or TargetArn Reason: no value for required parameter",
            )
        })?;
    let arn_region = topic_arn
        .strip_prefix("arn:aws:sns:")
        .and_then(|rest| rest.split(':').next());
    if arn_region != Some(region) {
        return Err(invalid_parameter("Invalid parameter: TopicArn"));
    }
    let message = form
        .get("Message")
        .filter(|m| !m.is_empty())
        .ok_or_else(|| invalid_parameter("Invalid parameter: Empty message"))?;
    let subject = form.get("Subject").cloned();
    if subject.as_ref().is_some_and(|s| {
        s.is_empty() || s.chars().count() >= 100 || s.chars().any(char::is_control)
    }) {
        return Err(invalid_parameter("Invalid parameter: Subject"));
    }
    let attributes = publish_attributes(form)?;
    let size = message.len()
        + attributes
            .iter()
            .map(|(n, a)| {
                n.len() + a.data_type.len() + a.string_value.as_ref().map_or(0, String::len)
            })
            .sum::<usize>();
    if size > MAX_MESSAGE_BYTES {
        return Err(invalid_parameter("Invalid parameter: Message too long"));
    }
    Ok(Publication {
        topic_arn: topic_arn.clone(),
        message: message.clone(),
        subject,
        attributes,
    })
}

async fn publish(
    sim: &Sim,
    account: &str,
    region: &str,
    form: &HashMap<String, String>,
) -> Result<String, Failure> {
    let topics = &sim.topics;
    let mut record = PublishRecord {
        ts_us: now_us(),
        account: account.to_owned(),
        topic_arn: form.get("TopicArn").cloned().unwrap_or_default(),
        outcome: "rejected".to_owned(),
        message_id: None,
        subject: form.get("Subject").cloned(),
        message: form.get("Message").cloned(),
        message_attributes: BTreeMap::new(),
        error_code: None,
        delivered_to: Vec::new(),
    };
    let checked = publication(form, region).and_then(|p| {
        let topic = topics.lock().topics.get(&p.topic_arn).cloned();
        topic.map(|t| (p, t)).ok_or_else(not_found)
    });
    let (publication, topic) = match checked {
        Ok(found) => found,
        Err(error) => {
            record.error_code = Some(error.code.clone());
            topics.record(record);
            return Err(error.into());
        }
    };
    record.message_attributes = publication.attributes.clone();
    let refusal = match topic.fault {
        Some(TopicFault::Hang) => {
            record.outcome = "hung".to_owned();
            topics.record(record);
            // Held until the client closes the connection (or the simulator stops).
            std::future::pending::<()>().await;
            unreachable!("a pending future never completes");
        }
        Some(TopicFault::AuthorizationError) => Some(ApiError::new(
            403,
            "AuthorizationError",
            format!(
                "User: arn:aws:iam::{account}:user/kms-sim is not authorized to perform: SNS:Publish on resource: {} because of an injected fault",
                publication.topic_arn
            ),
        )),
        Some(TopicFault::InternalError) => {
            Some(ApiError::new(500, "InternalError", "Internal error"))
        }
        Some(TopicFault::Throttled) => Some(ApiError::new(429, "Throttled", "Rate exceeded")),
        None => None,
    };
    if let Some(error) = refusal {
        record.outcome = "refused".to_owned();
        record.error_code = Some(error.code.clone());
        topics.record(record);
        return Err(error.into());
    }
    let message_id = sqs::new_uuid();
    record.delivered_to = fan_out(&sim.queues, &topic, &publication, &message_id);
    record.outcome = "delivered".to_owned();
    record.message_id = Some(message_id.clone());
    topics.record(record);
    Ok(format!(
        "<MessageId>{}</MessageId>",
        xml_escape(&message_id)
    ))
}

/// Deliver one copy to every subscribed queue that exists; the queue ARNs reached.
fn fan_out(
    queues: &Queues,
    topic: &Topic,
    publication: &Publication,
    message_id: &str,
) -> Vec<String> {
    let mut reached = Vec::new();
    for subscription in &topic.subscriptions {
        let (body, attributes) = if subscription.raw {
            (publication.message.clone(), publication.attributes.clone())
        } else {
            (
                envelope(queues, publication, message_id, &subscription.arn),
                BTreeMap::new(),
            )
        };
        if sqs::send(
            queues,
            &subscription.queue,
            &body,
            attributes,
            SNS_SENDER_ID,
            None,
        )
        .is_ok()
        {
            reached.push(sqs::queue_arn(&subscription.queue));
        }
    }
    reached
}

/// The JSON document SNS delivers to an SQS subscriber without raw message delivery.
fn envelope(
    queues: &Queues,
    publication: &Publication,
    message_id: &str,
    subscription_arn: &str,
) -> String {
    use base64::Engine as _;
    use sha2::{Digest, Sha256};
    let timestamp = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let mut document = serde_json::Map::new();
    let mut put = |key: &str, value: String| {
        document.insert(key.to_owned(), serde_json::Value::String(value));
    };
    put("Type", "Notification".to_owned());
    put("MessageId", message_id.to_owned());
    put("TopicArn", publication.topic_arn.clone());
    if let Some(subject) = &publication.subject {
        put("Subject", subject.clone());
    }
    put("Message", publication.message.clone());
    put("Timestamp", timestamp.clone());
    put("SignatureVersion", "1".to_owned());
    // No private key stands behind the simulator: the signature is a digest of the signed
    // fields, base64 like AWS's, and verifies against nothing.
    let digest =
        Sha256::digest(format!("{message_id}\n{}\n{timestamp}", publication.message).as_bytes());
    put(
        "Signature",
        base64::engine::general_purpose::STANDARD.encode(digest),
    );
    let endpoint = queues.endpoint();
    put(
        "SigningCertURL",
        format!("{endpoint}/_sim/sns/SimpleNotificationService.pem"),
    );
    put(
        "UnsubscribeURL",
        format!("{endpoint}/?Action=Unsubscribe&SubscriptionArn={subscription_arn}"),
    );
    if !publication.attributes.is_empty() {
        let mut attributes = serde_json::Map::new();
        for (name, a) in &publication.attributes {
            let binary = a.data_type.starts_with("Binary");
            let value = if binary {
                &a.binary_value
            } else {
                &a.string_value
            };
            attributes.insert(
                name.clone(),
                serde_json::json!({
                    "Type": if binary { "Binary" } else { a.data_type.as_str() },
                    "Value": value.clone().unwrap_or_default(),
                }),
            );
        }
        document.insert(
            "MessageAttributes".to_owned(),
            serde_json::Value::Object(attributes),
        );
    }
    serde_json::Value::Object(document).to_string()
}
