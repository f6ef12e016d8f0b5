//! `kms-killswitch status [--json]`: the latch, and each listed key store's ConnectionState as
//! KMS reports it now (one Describe per account and region; nothing is changed). Exit 1 when a
//! store could not be described.

use anyhow::Context as _;
use clap::Args;
use serde_json::json;

use crate::cmd::{Context, Exit, engine, runtime, status_table};
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
