//! One file per subcommand, each owning its clap arguments and its `run` (like cargo's
//! `commands/`): it takes the parsed arguments, does its job through the library modules, prints
//! for humans (or JSON), and returns an [`Exit`]. This file holds what they share: the exit codes,
//! the [`Context`] of the global options, loading the policy with them, a runtime, the AWS
//! clients and engine, and the plain text tables. `anyhow` is used here and in `cli.rs` only: this
//! is the CLI edge. Nothing here imports `crate::cli` (the root imports us), and nothing here
//! spawns long-lived tasks (that is `daemon`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;

use crate::aws::AwsClients;
use crate::lockdown::{Engine, KeyStatus, StoreStatus, UnprotectedStore};
use crate::model::{KeyStoreSelector, Target};
use crate::policy::{self, LoadOptions, Policy, PolicyError};

pub mod audit_verify;
pub mod check;
pub mod check_online;
pub mod rearm;
pub mod run;
pub mod status;
pub mod trip;

/// Process exit codes (DESIGN.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// The job is done (for `trip`: every store verified DISCONNECTED).
    Success = 0,
    /// The job ran but is incomplete: a store not verified, a broken audit chain, something
    /// missing in AWS for `check --online`, or a command refused (e.g. `rearm` with the flag set).
    Incomplete = 1,
    /// Bad usage.
    Usage = 2,
    /// EX_CONFIG: the policy is missing, unreadable, insecure or invalid.
    Config = 78,
}

/// What every subcommand gets from the global options.
#[derive(Debug, Clone)]
pub struct Context {
    /// The policy path after `--config` > `KMS_KILLSWITCH_CONFIG` > default.
    pub config: PathBuf,
    /// `--insecure-policy-permissions`: warn instead of refusing a loosely-permissioned policy.
    pub insecure_policy_permissions: bool,
}

impl Context {
    /// Load and validate the policy at `--config` with the global flags' options (the one
    /// `policy::load` call of the CLI, reload included).
    pub fn load_policy(&self) -> Result<Policy, PolicyError> {
        let options = LoadOptions {
            insecure_permissions: self.insecure_policy_permissions,
        };
        policy::load(&self.config, options)
    }
}

/// The exit code for an error that reached the CLI edge: 78 when the cause is the policy.
pub fn exit_for_error(err: &anyhow::Error) -> Exit {
    if err
        .chain()
        .any(|cause| cause.downcast_ref::<PolicyError>().is_some())
    {
        Exit::Config
    } else {
        Exit::Incomplete
    }
}

/// What `run` refuses at start (and `check` reports, 78 both): the latch, the audit log or the
/// metrics textfile in a directory others can change, or not a regular file (the daemon writes
/// them as its user, root: a symlink or a directory others control would let them aim its
/// writes). `refusing state_file PATH: why`.
pub(crate) fn untrusted_state_path(policy: &Policy) -> Option<String> {
    let metrics = policy
        .metrics
        .as_ref()
        .map(|m| ("metrics.textfile", &m.textfile));
    [
        ("state_file", &policy.state_file),
        ("audit_log", &policy.audit_log),
    ]
    .into_iter()
    .chain(metrics)
    .find_map(|(what, path)| {
        crate::fs_trust::check_state_file(path)
            .err()
            .map(|untrusted| format!("refusing {what} {}: {untrusted}", path.display()))
    })
}

/// A runtime for one command (no `#[tokio::main]`: most commands need none).
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Every account+region the policy talks to (key stores, keys and alarms), once: for client set-up
/// and credential warm-up.
pub(crate) fn targets(policy: &Policy) -> Vec<Target> {
    let mut targets: Vec<_> = policy
        .key_stores
        .iter()
        .map(|s| s.target.clone())
        .chain(policy.keys.iter().map(|k| k.target.clone()))
        .chain(policy.triggers.alarms.iter().map(|a| a.target.clone()))
        .chain(policy.triggers.queues.iter().map(|q| q.target.clone()))
        .collect();
    targets.sort();
    targets.dedup();
    targets
}

/// The AWS clients and the engine for a policy's targets.
pub(crate) async fn engine(policy: &Policy) -> Engine<AwsClients> {
    let clients = AwsClients::new(&policy.endpoints, targets(policy)).await;
    Engine::new(Arc::new(clients), policy.lockdown)
}

/// Account, region, id, name, type, state and error code of every store, aligned.
pub(crate) fn status_table(statuses: &[StoreStatus]) -> String {
    let dash = || "-".to_string();
    let rows: Vec<Vec<String>> = statuses
        .iter()
        .map(|status| {
            let store = status.key_store.as_ref();
            let (id, name) = match &status.spec.selector {
                KeyStoreSelector::Id(id) => (
                    id.clone(),
                    store.and_then(|s| s.custom_key_store_name.clone()),
                ),
                KeyStoreSelector::Name(name) => (
                    store.map_or_else(dash, |s| s.custom_key_store_id.clone()),
                    Some(name.clone()),
                ),
                KeyStoreSelector::All => (
                    store.map_or_else(|| "all".to_string(), |s| s.custom_key_store_id.clone()),
                    store.and_then(|s| s.custom_key_store_name.clone()),
                ),
            };
            vec![
                status.account.clone().unwrap_or_else(dash),
                status.spec.target.region.clone(),
                id,
                name.unwrap_or_else(dash),
                store
                    .and_then(|s| s.custom_key_store_type.clone())
                    .unwrap_or_else(dash),
                match (store, &status.error) {
                    (Some(s), _) => s.connection_state.to_string(),
                    (None, Some(_)) => "ERROR".to_string(),
                    (None, None) => dash(),
                },
                store
                    .and_then(|s| s.connection_error_code.clone())
                    .unwrap_or_else(dash),
            ]
        })
        .collect();
    table(
        &[
            "ACCOUNT",
            "REGION",
            "KEY STORE",
            "NAME",
            "TYPE",
            "STATE",
            "ERROR CODE",
        ],
        &rows,
    )
}

/// Account, region, key, entry, manager and state of every standard key, aligned.
pub(crate) fn key_status_table(statuses: &[KeyStatus]) -> String {
    let dash = || "-".to_string();
    let rows: Vec<Vec<String>> = statuses
        .iter()
        .map(|status| {
            let metadata = status.metadata.as_ref();
            vec![
                status.account.clone().unwrap_or_else(dash),
                status.spec.target.region.clone(),
                metadata.map_or_else(dash, |m| m.key_id.clone()),
                status.spec.selector.to_string(),
                metadata
                    .and_then(|m| m.key_manager.clone())
                    .unwrap_or_else(dash),
                match (metadata, &status.error) {
                    (Some(m), _) => m.key_state.to_string(),
                    (None, Some(_)) => "ERROR".to_string(),
                    (None, None) => dash(),
                },
            ]
        })
        .collect();
    table(
        &["ACCOUNT", "REGION", "KEY", "ENTRY", "MANAGER", "STATE"],
        &rows,
    )
}

/// `status --json`'s entry for one standard key.
pub(crate) fn key_status_json(status: &KeyStatus) -> serde_json::Value {
    let metadata = status.metadata.as_ref();
    serde_json::json!({
        "key_id": metadata.map(|m| m.key_id.clone()),
        "arn": metadata.and_then(|m| m.arn.clone()),
        "entry": status.spec.selector.to_string(),
        "account": status.account,
        "region": status.spec.target.region,
        "key_manager": metadata.and_then(|m| m.key_manager.clone()),
        "key_state": metadata.map(|m| m.key_state.to_string()),
        "multi_region": metadata.map(|m| m.multi_region),
        "error": status.error.as_ref().map(|e| e.to_line()),
    })
}

/// The targets of the policy's standard keys (account-regions the unprotected-store report
/// covers too).
pub(crate) fn key_targets(policy: &Policy) -> Vec<Target> {
    let mut targets: Vec<Target> = policy.keys.iter().map(|k| k.target.clone()).collect();
    targets.sort();
    targets.dedup();
    targets
}

/// The custom key stores no policy entry covers: account, region, id, name, type, state.
pub(crate) fn unprotected_table(stores: &[UnprotectedStore]) -> String {
    let dash = || "-".to_string();
    let rows: Vec<Vec<String>> = stores
        .iter()
        .map(|u| {
            let store = &u.key_store;
            vec![
                u.account.clone().unwrap_or_else(dash),
                u.target.region.clone(),
                store.custom_key_store_id.clone(),
                store.custom_key_store_name.clone().unwrap_or_else(dash),
                store.custom_key_store_type.clone().unwrap_or_else(dash),
                store.connection_state.to_string(),
            ]
        })
        .collect();
    table(
        &["ACCOUNT", "REGION", "KEY STORE", "NAME", "TYPE", "STATE"],
        &rows,
    )
}

/// `status --json`'s entry for a store no policy entry covers (the fields of `key_stores`).
pub(crate) fn unprotected_json(u: &UnprotectedStore) -> serde_json::Value {
    let store = &u.key_store;
    serde_json::json!({
        "key_store_id": store.custom_key_store_id,
        "name": store.custom_key_store_name,
        "account": u.account,
        "region": u.target.region,
        "type": store.custom_key_store_type,
        "connection_state": store.connection_state.to_string(),
        "connection_error_code": store.connection_error_code,
    })
}

/// A plain text table: columns padded to their widest cell, two spaces apart.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let padded: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}
