//! `kms-killswitch status [--json]`: the latch, each listed key store's ConnectionState as KMS
//! reports it now (one Describe per account and region; nothing is changed), and the custom key
//! stores of those account-regions that no entry covers (`unprotected_key_stores`). Exit 1 when
//! a store could not be described. With notify / heartbeat / metrics in the policy, it also shows
//! the running daemon's health, last heartbeat and last notification per sink (issue 13).

use anyhow::Context as _;
use clap::Args;
use serde_json::json;

use crate::cmd::{
    Context, Exit, engine, key_status_json, key_status_table, key_targets, runtime, status_table,
    unprotected_json, unprotected_table,
};
use crate::latch;
use crate::lockdown::StoreStatus;
use crate::model::KeyStoreSelector;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Context, args: &StatusArgs) -> anyhow::Result<Exit> {
    let policy = ctx.load_policy()?;
    let latch = latch::read(&policy.state_file)?;
    let runtime = runtime()?;
    let (statuses, keys, unprotected) = runtime.block_on(async {
        let engine = engine(&policy).await;
        let (statuses, keys) = tokio::join!(
            engine.describe(&policy.key_stores),
            engine.describe_keys(&policy.keys)
        );
        // Its Describe errors are the ones the statuses report.
        let (unprotected, _) = engine
            .unprotected(&policy.key_stores, &key_targets(&policy))
            .await;
        (statuses, keys, unprotected)
    });

    let notifier = read_notifier_status(&policy);
    if args.json {
        let key_stores: Vec<serde_json::Value> = statuses.iter().map(status_json).collect();
        let unprotected_key_stores: Vec<serde_json::Value> =
            unprotected.iter().map(unprotected_json).collect();
        let mut out = json!({
            "latched": latch.is_some(),
            "latch": latch,
            "key_stores": key_stores,
            "keys": keys.iter().map(key_status_json).collect::<Vec<_>>(),
            "unprotected_key_stores": unprotected_key_stores,
        });
        if let Some(notifier) = &notifier {
            out["health"] = json!({
                "healthy": notifier["healthy"],
                "reasons": notifier["reasons"],
                "last_heartbeat": notifier["last_heartbeat"],
            });
            out["notifications"] = notifier["notifications"].clone();
        }
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
        if !keys.is_empty() {
            println!();
            print!("{}", key_status_table(&keys));
        }
        if !unprotected.is_empty() {
            println!();
            println!("UNPROTECTED: custom key stores that no entry of key_stores covers:");
            print!("{}", unprotected_table(&unprotected));
        }
        if let Some(notifier) = &notifier {
            print!("{}", notifier_lines(notifier));
        }
    }
    let mut exit = Exit::Success;
    for status in &statuses {
        if let Some(error) = &status.error {
            eprintln!("kms-killswitch: {}", error.to_line());
            exit = Exit::Incomplete;
        }
    }
    for key in &keys {
        if let Some(error) = &key.error {
            eprintln!("kms-killswitch: {}", error.to_line());
            exit = Exit::Incomplete;
        }
    }
    Ok(exit)
}

/// The running daemon's notifier status (`notify.json` beside the latch: health, last
/// heartbeat, last notification per sink), when the policy has notify / heartbeat / metrics and
/// the file is there.
fn read_notifier_status(policy: &crate::policy::Policy) -> Option<serde_json::Value> {
    if policy.notify.is_empty() && policy.heartbeat.is_none() && policy.metrics.is_none() {
        return None;
    }
    let path = crate::notify::status_file(&policy.state_file);
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// The notifier's status as text lines below the table.
fn notifier_lines(notifier: &serde_json::Value) -> String {
    let mut out = String::from("\n");
    let reasons: Vec<&str> = notifier["reasons"]
        .as_array()
        .map(|r| r.iter().filter_map(|r| r.as_str()).collect())
        .unwrap_or_default();
    match notifier["healthy"].as_bool() {
        Some(true) => out.push_str("daemon health: healthy\n"),
        _ => out.push_str(&format!(
            "daemon health: UNHEALTHY ({})\n",
            reasons.join("; ")
        )),
    }
    let heartbeat = notifier["last_heartbeat"].as_str().unwrap_or("never");
    out.push_str(&format!("last heartbeat: {heartbeat}\n"));
    if let Some(sinks) = notifier["notifications"].as_object() {
        for (sink, last) in sinks {
            out.push_str(&format!(
                "last notification to {sink}: {} {} (attempt {}) at {}\n",
                last["notified"].as_str().unwrap_or("?"),
                last["result"].as_str().unwrap_or("?"),
                last["attempt"],
                last["ts"].as_str().unwrap_or("?"),
            ));
        }
    }
    out
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
        KeyStoreSelector::All => (
            store.map(|s| s.custom_key_store_id.clone()),
            store.and_then(|s| s.custom_key_store_name.clone()),
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
