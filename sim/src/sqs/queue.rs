//! The SQS queue model: messages with their visibility, receipt handles, redelivery, deletions
//! and per-queue faults, behind one lock, plus the `Notify` that wakes long polls. Pure state and
//! rules: no wire format (see `sqs/mod.rs`) and no HTTP.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, OnceLock};

use serde::{Deserialize, Serialize};

use crate::state::now_us;
use crate::world::World;

/// AWS defaults and bounds of the queue attributes the simulator models (SQS Developer Guide,
/// "Amazon SQS quotas" and the CreateQueue reference).
pub(crate) const DEFAULT_VISIBILITY_TIMEOUT_S: u64 = 30;
pub(crate) const MAX_VISIBILITY_TIMEOUT_S: u64 = 43_200;
/// The maximum (and, since August 2025, the default) message size: 1 MiB.
pub(crate) const MAX_MESSAGE_SIZE: u64 = 1_048_576;
pub(crate) const MIN_MESSAGE_SIZE: u64 = 1_024;
pub(crate) const DEFAULT_RETENTION_S: u64 = 345_600;
/// Receipt handles remembered (per simulator) so that a stale one is told from a made-up one;
/// the oldest are forgotten past this, which only turns a very old handle into an invalid one.
const REMEMBERED_HANDLES: usize = 200_000;
/// Deletions remembered per queue for the control API.
const REMEMBERED_DELETIONS: usize = 10_000;

/// (account, region, queue name): what identifies a queue.
pub(crate) type QueueKey = (String, String, String);

/// One queue declared in the world file, under an account and region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueDecl {
    pub name: String,
    /// Seconds a received message stays invisible (AWS default 30).
    #[serde(default)]
    pub visibility_timeout_seconds: Option<u64>,
    /// Default long-poll wait of ReceiveMessage (AWS default 0).
    #[serde(default)]
    pub receive_message_wait_time_seconds: Option<u64>,
    /// Largest accepted body in bytes (AWS default and maximum 1 MiB; 256 KiB before 2025).
    #[serde(default)]
    pub maximum_message_size: Option<u64>,
}

/// A message attribute as SQS stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageAttribute {
    pub data_type: String,
    #[serde(default)]
    pub string_value: Option<String>,
    /// Base64 text, as it travels in awsJson.
    #[serde(default)]
    pub binary_value: Option<String>,
}

/// What an injected queue fault does to every request naming the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueFaultKind {
    /// Close the connection without an answer (the queue is unreachable).
    DropConnection,
    /// 500 InternalFailure.
    InternalError,
}

/// A fault on one queue, for `for_ms` from when it is set (None: until cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueFault {
    pub kind: QueueFaultKind,
    #[serde(default)]
    pub for_ms: Option<u64>,
}

/// A queue as the control API and `SimHandle` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueView {
    pub account: String,
    pub region: String,
    pub queue_name: String,
    pub queue_url: String,
    pub queue_arn: String,
    /// Messages a ReceiveMessage could return now.
    pub visible: usize,
    /// Received, not deleted, visibility timeout running.
    pub in_flight: usize,
    /// Sent with DelaySeconds still running.
    pub delayed: usize,
    /// DeleteMessage calls that removed a message.
    pub deleted: usize,
    pub visibility_timeout_seconds: u64,
}

/// One message as the control API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    pub message_id: String,
    pub body: String,
    /// `visible` | `in_flight` | `delayed`
    pub state: String,
    pub sent_timestamp_ms: u64,
    /// ApproximateReceiveCount.
    pub receive_count: u32,
    /// The handle of the latest receive (the only one DeleteMessage honours).
    pub receipt_handle: Option<String>,
    pub message_attributes: BTreeMap<String, MessageAttribute>,
}

/// One DeleteMessage call that named a handle this queue issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionView {
    pub message_id: String,
    pub receipt_handle: String,
    /// Microseconds since the epoch.
    pub ts_us: u64,
    /// False when the handle was stale (an older receive's): AWS answers 200 and keeps the
    /// message.
    pub deleted: bool,
    pub receive_count: u32,
    pub body: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub id: String,
    pub body: String,
    pub attributes: BTreeMap<String, MessageAttribute>,
    pub sender_id: String,
    pub sent_us: u64,
    /// In flight or delayed until then; visible from then on.
    pub visible_at_us: u64,
    pub receive_count: u32,
    pub first_receive_us: Option<u64>,
    pub receipt_handle: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Queue {
    pub created_s: u64,
    pub attributes: BTreeMap<String, String>,
    pub visibility_timeout_s: u64,
    pub wait_time_s: u64,
    pub maximum_message_size: u64,
    pub retention_s: u64,
    pub delay_s: u64,
    pub messages: VecDeque<Message>,
    pub deletions: VecDeque<DeletionView>,
    /// The fault and when it ends (None: until cleared).
    pub fault: Option<(QueueFaultKind, Option<u64>)>,
}

impl Queue {
    pub(crate) fn new() -> Queue {
        Queue {
            created_s: now_us() / 1_000_000,
            attributes: BTreeMap::new(),
            visibility_timeout_s: DEFAULT_VISIBILITY_TIMEOUT_S,
            wait_time_s: 0,
            maximum_message_size: MAX_MESSAGE_SIZE,
            retention_s: DEFAULT_RETENTION_S,
            delay_s: 0,
            messages: VecDeque::new(),
            deletions: VecDeque::new(),
            fault: None,
        }
    }

    /// Forget messages past their retention period.
    pub(crate) fn expire(&mut self, now: u64) {
        let retention_us = self.retention_s * 1_000_000;
        self.messages.retain(|m| m.sent_us + retention_us > now);
    }

    /// The fault in force now, dropping one whose time is up.
    pub(crate) fn active_fault(&mut self, now: u64) -> Option<QueueFaultKind> {
        match self.fault {
            Some((_, Some(until))) if until <= now => {
                self.fault = None;
                None
            }
            Some((kind, _)) => Some(kind),
            None => None,
        }
    }

    /// When the next invisible message becomes visible, if any.
    pub(crate) fn next_visible_at(&self, now: u64) -> Option<u64> {
        self.messages
            .iter()
            .map(|m| m.visible_at_us)
            .filter(|at| *at > now)
            .min()
    }

    pub(crate) fn record_deletion(&mut self, deletion: DeletionView) {
        if self.deletions.len() >= REMEMBERED_DELETIONS {
            self.deletions.pop_front();
        }
        self.deletions.push_back(deletion);
    }

    pub(crate) fn message_view(message: &Message, now: u64) -> MessageView {
        let state = if message.visible_at_us <= now {
            "visible"
        } else if message.receipt_handle.is_some() {
            "in_flight"
        } else {
            "delayed"
        };
        MessageView {
            message_id: message.id.clone(),
            body: message.body.clone(),
            state: state.to_owned(),
            sent_timestamp_ms: message.sent_us / 1000,
            receive_count: message.receive_count,
            receipt_handle: message.receipt_handle.clone(),
            message_attributes: message.attributes.clone(),
        }
    }
}

pub(crate) struct QueuesState {
    pub queues: BTreeMap<QueueKey, Queue>,
    /// Every receipt handle issued → the queue and message it was issued for.
    pub handles: HashMap<String, (QueueKey, String)>,
    handle_order: VecDeque<String>,
}

impl QueuesState {
    pub(crate) fn remember_handle(&mut self, handle: String, key: QueueKey, message_id: String) {
        if self.handle_order.len() >= REMEMBERED_HANDLES
            && let Some(oldest) = self.handle_order.pop_front()
        {
            self.handles.remove(&oldest);
        }
        self.handle_order.push_back(handle.clone());
        self.handles.insert(handle, (key, message_id));
    }
}

/// Every queue of the simulator.
pub(crate) struct Queues {
    state: Mutex<QueuesState>,
    /// Woken on every change that can make a message visible (send, visibility change, fault
    /// change), so long polls look again at once.
    pub changed: tokio::sync::Notify,
    /// `http://127.0.0.1:PORT`, learnt when the server binds: the base of every queue URL.
    endpoint: OnceLock<String>,
}

impl Queues {
    pub(crate) fn from_world(world: &World) -> Queues {
        let mut queues = BTreeMap::new();
        for (account, regions) in &world.accounts {
            for (region, contents) in regions {
                for decl in &contents.queues {
                    let mut queue = Queue::new();
                    if let Some(v) = decl.visibility_timeout_seconds {
                        queue.visibility_timeout_s = v;
                    }
                    if let Some(v) = decl.receive_message_wait_time_seconds {
                        queue.wait_time_s = v;
                    }
                    if let Some(v) = decl.maximum_message_size {
                        queue.maximum_message_size = v;
                    }
                    queues.insert((account.clone(), region.clone(), decl.name.clone()), queue);
                }
            }
        }
        Queues {
            state: Mutex::new(QueuesState {
                queues,
                handles: HashMap::new(),
                handle_order: VecDeque::new(),
            }),
            changed: tokio::sync::Notify::new(),
            endpoint: OnceLock::new(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, QueuesState> {
        // As `Sim::lock`: a panic mid-update cannot leave state that matters to a simulator.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Called once by the server with the address it listens on.
    pub(crate) fn set_endpoint(&self, endpoint: String) {
        let _ = self.endpoint.set(endpoint);
    }

    /// The simulator's base URL (`http://127.0.0.1` before the server has bound).
    pub(crate) fn endpoint(&self) -> &str {
        self.endpoint
            .get()
            .map(String::as_str)
            .unwrap_or("http://127.0.0.1")
    }

    pub(crate) fn queue_url(&self, account: &str, name: &str) -> String {
        format!("{}/{account}/{name}", self.endpoint())
    }

    pub(crate) fn view(&self, key: &QueueKey, queue: &Queue, now: u64) -> QueueView {
        let (mut visible, mut in_flight, mut delayed) = (0, 0, 0);
        for m in &queue.messages {
            match Queue::message_view(m, now).state.as_str() {
                "visible" => visible += 1,
                "in_flight" => in_flight += 1,
                _ => delayed += 1,
            }
        }
        QueueView {
            account: key.0.clone(),
            region: key.1.clone(),
            queue_name: key.2.clone(),
            queue_url: self.queue_url(&key.0, &key.2),
            queue_arn: queue_arn(key),
            visible,
            in_flight,
            delayed,
            deleted: queue.deletions.iter().filter(|d| d.deleted).count(),
            visibility_timeout_seconds: queue.visibility_timeout_s,
        }
    }
}

pub(crate) fn queue_arn(key: &QueueKey) -> String {
    format!("arn:aws:sqs:{}:{}:{}", key.1, key.0, key.2)
}

/// The queue an `arn:aws:sqs:REGION:ACCOUNT:NAME` names.
pub(crate) fn key_from_arn(arn: &str) -> Option<QueueKey> {
    let rest = arn.strip_prefix("arn:aws:sqs:")?;
    let mut parts = rest.splitn(3, ':');
    let region = parts.next()?;
    let account = parts.next()?;
    let name = parts.next()?;
    (!region.is_empty() && crate::world::is_account_id(account) && valid_queue_name(name))
        .then(|| (account.to_owned(), region.to_owned(), name.to_owned()))
}

/// 1 to 80 characters of letters, digits, hyphens and underscores (standard queues).
pub(crate) fn valid_queue_name(name: &str) -> bool {
    (1..=80).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Check the queues and topic subscriptions a world declares.
pub(crate) fn validate_world(world: &World) -> Result<(), String> {
    for (account, regions) in &world.accounts {
        for (region, contents) in regions {
            let mut names = std::collections::BTreeSet::new();
            for queue in &contents.queues {
                if !valid_queue_name(&queue.name) {
                    return Err(format!(
                        "queue name {:?} in {account}/{region} is not 1-80 letters, digits, - or _",
                        queue.name
                    ));
                }
                if !names.insert(queue.name.as_str()) {
                    return Err(format!(
                        "queue {} is declared twice in {account}/{region}",
                        queue.name
                    ));
                }
                if queue
                    .maximum_message_size
                    .is_some_and(|s| !(MIN_MESSAGE_SIZE..=MAX_MESSAGE_SIZE).contains(&s))
                    || queue
                        .visibility_timeout_seconds
                        .is_some_and(|v| v > MAX_VISIBILITY_TIMEOUT_S)
                    || queue
                        .receive_message_wait_time_seconds
                        .is_some_and(|v| v > 20)
                {
                    return Err(format!(
                        "queue {} in {account}/{region} has an attribute out of the AWS bounds",
                        queue.name
                    ));
                }
            }
        }
    }
    Ok(())
}
