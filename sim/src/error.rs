//! The simulator's one error type, for its Rust API (world loading, serving, the handle).
//! Errors that go back to an AWS client on the wire are not here: see `protocol::ApiError`.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can go wrong when loading a world, serving it, or steering it from a test.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("no queue {queue_name} in account {account} region {region}")]
    QueueNotFound {
        account: String,
        region: String,
        queue_name: String,
    },
    #[error("no topic {topic_arn}")]
    TopicNotFound { topic_arn: String },
    #[error("cannot read world file {path}")]
    WorldRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("world {origin} is not a valid kms-sim world")]
    WorldParse {
        origin: String,
        /// Boxed: the YAML error carries a source snippet and is large.
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    #[error("world is inconsistent: {reason}")]
    WorldInvalid { reason: String },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the simulator runtime")]
    Runtime {
        #[source]
        source: std::io::Error,
    },
    #[error("accepting a connection failed")]
    Accept {
        #[source]
        source: std::io::Error,
    },
    #[error("no custom key store {custom_key_store_id} in account {account} region {region}")]
    KeyStoreNotFound {
        account: String,
        region: String,
        custom_key_store_id: String,
    },
    #[error("no alarm {alarm_name} in account {account} region {region}")]
    AlarmNotFound {
        account: String,
        region: String,
        alarm_name: String,
    },
    #[error("no KMS key {key_id} in account {account} region {region}")]
    KeyNotFound {
        account: String,
        region: String,
        key_id: String,
    },
    #[error(
        "cannot add key store {custom_key_store_id} in account {account} region {region}: {reason}"
    )]
    KeyStoreRefused {
        account: String,
        region: String,
        custom_key_store_id: String,
        reason: String,
    },
    #[error("{value:?} is not a valid {field}")]
    InvalidValue { field: &'static str, value: String },
}
