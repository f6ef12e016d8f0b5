//! kms-sim: a local, wire-faithful simulator of AWS KMS custom key stores, CloudWatch alarms and
//! STS, on one loopback port, for tests, the benchmark and the demo.
//!
//! Map (a request flows top to bottom):
//! - `server`   — hyper server: recognise, authenticate (`sigv4`), apply `faults` and quotas,
//!   dispatch, respond, log; `control` serves the `/_sim/` JSON API.
//! - `protocol` — the wire formats (awsJson 1.0/1.1, RPC v2 CBOR via `value`, awsQuery XML) and
//!   the AWS error shapes; `input` reads operation inputs.
//! - `kms`, `keys`, `cloudwatch`, `alarm_history`, `sts` — the operations (custom key stores,
//!   standard keys, alarms, alarm history and SetAlarmState's revert, STS); `alarm_rule` —
//!   composite alarm rules.
//! - `state`    — the running world behind one lock (lazy, timestamped state machine);
//!   `world` — the YAML world file.
//! - `sqs`, `sns` (topics fanning out to queues), `metrics` (PutMetricData) — the second
//!   round's operations, each with its own state and lock; `control/messaging` steers them.
//!
//! This crate must not depend on the kms-killswitch crate: it stands in for AWS.
#![forbid(unsafe_code)]

mod alarm_history;
mod alarm_rule;
mod cloudwatch;
mod control;
mod error;
mod faults;
mod input;
mod keys;
mod kms;
mod metrics;
mod protocol;
mod server;
pub mod sigv4;
mod sns;
mod sqs;
mod state;
mod sts;
mod value;
mod world;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

pub use error::SimError;
pub use faults::{FaultRule, Faults};
pub use keys::KeyView;
pub use state::{AlarmView, RequestRecord, StoreView};
pub use world::{
    AlarmDecl, AlarmKind, AlarmState, ConnectionState, Credential, KeyDecl, KeyManager, KeyState,
    KeyStoreDecl, KeyStoreType, RegionWorld, Role, Settings, World,
};

// SQS, SNS and PutMetricData (second round).
pub use metrics::MetricDatumRecord;
pub use sns::{
    PublishRecord, SubscriptionDecl, SubscriptionView, TopicDecl, TopicFault, TopicView,
};
pub use sqs::{
    DeletionView, MessageAttribute, MessageView, QueueDecl, QueueFault, QueueFaultKind, QueueView,
};

use state::Sim;

/// Worker threads of the runtime `spawn` starts: the machine has 2 cores, and the benchmark
/// needs both; tests need far less.
const SPAWN_WORKER_THREADS: usize = 2;

/// Serve `world` on `listener` until `shutdown` completes (for the binary, or a caller that owns
/// its runtime). Open connections are closed when it returns.
pub async fn serve(
    world: World,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SimError> {
    server::run(Arc::new(Sim::new(world)), listener, shutdown).await
}

/// Start the simulator on 127.0.0.1:0 on its own thread with its own tokio runtime, so it works
/// from a plain `#[test]` and from `#[tokio::test]` alike. Dropping the handle stops it.
pub fn spawn(world: World) -> Result<SimHandle, SimError> {
    world.validate()?;
    let wanted: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
    let listener = std::net::TcpListener::bind(wanted).map_err(|source| SimError::Bind {
        addr: wanted,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| SimError::Bind {
        addr: wanted,
        source,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| SimError::Bind { addr, source })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(SPAWN_WORKER_THREADS)
        .thread_name("kms-sim")
        .enable_all()
        .build()
        .map_err(|source| SimError::Runtime { source })?;
    let sim = Arc::new(Sim::new(world));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = Arc::clone(&sim);
    let thread = std::thread::Builder::new()
        .name("kms-sim".to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)
                    .map_err(|source| SimError::Bind { addr, source })?;
                server::run(served, listener, async {
                    // Either a stop message or the handle being dropped ends the server.
                    let _ = stopped.await;
                })
                .await
            })
        })
        .map_err(|source| SimError::Runtime { source })?;
    Ok(SimHandle {
        sim,
        addr,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// A running simulator started by [`spawn`]. Dropping it stops the server and its runtime.
pub struct SimHandle {
    /// The state the server thread serves, shared so the handle sees and changes it directly.
    sim: Arc<Sim>,
    addr: SocketAddr,
    /// Sending (or dropping) this stops the server loop.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The server thread; joined on drop so the port is free afterwards.
    thread: Option<JoinHandle<Result<(), SimError>>>,
}

impl SimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for `endpoint_url` / `--endpoint-url`.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The simulator's true current key stores of an account and region (no consistency lag).
    pub fn key_stores(&self, account: &str, region: &str) -> Vec<StoreView> {
        self.sim.key_stores(account, region)
    }

    /// The true current ConnectionState of one store.
    pub fn connection_state(
        &self,
        account: &str,
        region: &str,
        custom_key_store_id: &str,
    ) -> Option<String> {
        self.key_stores(account, region)
            .into_iter()
            .find(|s| s.custom_key_store_id == custom_key_store_id)
            .map(|s| s.connection_state)
    }

    /// Force a store's state now (e.g. an attacker reconnecting: "CONNECTED"); cancels any
    /// transition in flight. FAILED gets the store type's usual ConnectionErrorCode.
    pub fn set_connection_state(
        &self,
        account: &str,
        region: &str,
        custom_key_store_id: &str,
        state: &str,
    ) -> Result<(), SimError> {
        self.sim
            .set_connection_state(account, region, custom_key_store_id, state, None)
    }

    /// Set an alarm's StateValue ("OK" | "ALARM" | "INSUFFICIENT_DATA") and StateReason.
    pub fn set_alarm_state(
        &self,
        account: &str,
        region: &str,
        alarm_name: &str,
        state_value: &str,
        reason: &str,
    ) -> Result<(), SimError> {
        self.sim
            .set_alarm_state(account, region, alarm_name, state_value, reason)
    }

    /// How long a CloudWatch SetAlarmState lasts on one metric alarm before it returns to its
    /// evaluated state (world default: `settings.alarm_set_state_revert_ms`, 3 s).
    pub fn set_alarm_revert(
        &self,
        account: &str,
        region: &str,
        alarm_name: &str,
        after: std::time::Duration,
    ) -> Result<(), SimError> {
        let revert_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        self.sim
            .set_alarm_revert_ms(account, region, alarm_name, revert_ms)
    }

    /// The alarms of an account and region as they are now.
    pub fn alarms(&self, account: &str, region: &str) -> Vec<AlarmView> {
        self.sim.alarms(account, region)
    }

    /// Forget every assumed-role session issued so far (as after an outage or restart): requests
    /// signed with one are refused with UnrecognizedClientException (InvalidClientTokenId for
    /// STS) until the role is assumed again. Returns how many were forgotten.
    pub fn forget_sessions(&self) -> usize {
        self.sim.forget_sessions()
    }

    /// The secret parts (secret access key, session token) of every assumed-role session issued
    /// and not forgotten: for tests asserting that no secret reaches a log.
    pub fn issued_secrets(&self) -> Vec<String> {
        self.sim.issued_secrets()
    }

    /// The standard KMS keys of an account and region as they truly are now (no lag).
    pub fn keys(&self, account: &str, region: &str) -> Vec<KeyView> {
        self.sim.keys(account, region)
    }

    /// The true current KeyState ("Enabled", "Disabled", …) of one key, by key id, key ARN,
    /// alias name or alias ARN.
    pub fn key_state(&self, account: &str, region: &str, key_id: &str) -> Option<String> {
        let views = self.keys(account, region);
        views
            .iter()
            .find(|k| k.key_id == key_id || k.arn == key_id)
            .or_else(|| {
                let alias = key_id.rsplit_once(':').map_or(key_id, |(_, alias)| alias);
                views.iter().find(|k| k.aliases.iter().any(|a| a == alias))
            })
            .map(|k| k.key_state.clone())
    }

    /// Force a key's KeyState now, bypassing KMS's rules (e.g. an attacker's EnableKey:
    /// "Enabled").
    pub fn set_key_state(
        &self,
        account: &str,
        region: &str,
        key_id: &str,
        key_state: &str,
    ) -> Result<(), SimError> {
        self.sim
            .set_key_state(account, region, key_id, key_state, 0)
    }

    /// Schedule a KeyState change `after` from now (an attacker re-enabling a key later). Later
    /// DisableKey calls do not cancel it.
    pub fn schedule_key_state(
        &self,
        account: &str,
        region: &str,
        key_id: &str,
        key_state: &str,
        after: std::time::Duration,
    ) -> Result<(), SimError> {
        let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        self.sim
            .set_key_state(account, region, key_id, key_state, after_ms)
    }

    /// Add a custom key store now (one created after the daemon started). An empty `decl.id`
    /// gets a fresh random id; the store as it now is comes back.
    pub fn add_key_store(
        &self,
        account: &str,
        region: &str,
        decl: KeyStoreDecl,
    ) -> Result<StoreView, SimError> {
        self.sim.add_key_store(account, region, &decl)
    }

    /// Replace every fault rule.
    pub fn set_faults(&self, faults: Faults) {
        self.sim.set_faults(faults);
    }

    /// The request log, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.sim.requests()
    }

    pub fn clear_requests(&self) {
        self.sim.clear_requests();
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
