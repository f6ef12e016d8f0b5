//! `kms-killswitch status [--json]`: the latch, and each listed key store's ConnectionState as
//! KMS reports it now (one Describe per account and region; nothing is changed). Also owns the
//! small helpers `trip` and `check --online` share to reach AWS from a command: building the
//! clients and the engine on a runtime of the command's own. Exit 1 when a store could not be
//! described.

use std::sync::Arc;

use anyhow::Context as _;
use serde_json::json;

use crate::aws::AwsClients;
use crate::cli::StatusArgs;
use crate::cmd::{Context, Exit};
use crate::latch;
use crate::lockdown::{Engine, StoreStatus};
use crate::model::{KeyStoreSelector, Target};
use crate::policy::{self, LoadOptions, Policy};

pub fn run(ctx: &Context, args: &StatusArgs) -> anyhow::Result<Exit> {
    let policy = policy::load(
        &ctx.config,
        LoadOptions {
            insecure_permissions: ctx.insecure_policy_permissions,
        },
    )?;
    let latch = latch::read(&policy.state_file)?;
    let runtime = runtime()?;
    let statuses = runtime.block_on(async {
        let engine = engine(&policy).await;
        engine.describe(&policy.key_stores).await
    });

    if args.json {
        let key_stores: Vec<serde_json::Value> = statuses.iter().map(status_json).collect();
        let out = json!({ "latched": latch.is_some(), "latch": latch, "key_stores": key_stores });
        println!(
            "{}",
            serde_json::to_string_pretty(&out).context("cannot encode the status")?
        );
    } else {
        match &latch {
            Some(l) => println!(
                "LATCHED: lockdown {} fired {} by {} ({})",
                l.lockdown_id, l.fired_at, l.trigger, l.detail
            ),
            None => println!("armed (not latched)"),
        }
        println!();
        print!("{}", status_table(&statuses));
    }
    let mut exit = Exit::Success;
    for status in &statuses {
        if let Some(error) = &status.error {
            eprintln!("kms-killswitch: {}", error.to_line());
            exit = Exit::Incomplete;
        }
    }
    Ok(exit)
}

/// A runtime for one command (no `#[tokio::main]`: most commands need none).
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Every target of the policy (key stores and alarms), once.
pub(crate) fn targets(policy: &Policy) -> Vec<Target> {
    let mut targets: Vec<_> = policy
        .key_stores
        .iter()
        .map(|s| s.target.clone())
        .chain(policy.triggers.alarms.iter().map(|a| a.target.clone()))
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

/// DESIGN.md §4: one object per listed store, `null` where KMS gave nothing.
fn status_json(status: &StoreStatus) -> serde_json::Value {
    let store = status.key_store.as_ref();
    let (id, name) = match &status.spec.selector {
        KeyStoreSelector::Id(id) => (
            Some(id.clone()),
            store.and_then(|s| s.custom_key_store_name.clone()),
        ),
        KeyStoreSelector::Name(name) => (
            store.map(|s| s.custom_key_store_id.clone()),
            Some(name.clone()),
        ),
    };
    json!({
        "key_store_id": id,
        "name": name,
        "account": status.account,
        "region": status.spec.target.region,
        "type": store.and_then(|s| s.custom_key_store_type.clone()),
        "connection_state": store.map(|s| s.connection_state.to_string()),
        "connection_error_code": store.and_then(|s| s.connection_error_code.clone()),
    })
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
