//! `kms-killswitch check --online`: with a valid policy, confirm in AWS that the credentials work
//! for every target (AssumeRole included), that every listed key store exists and can be
//! described, that every watched alarm exists and can be read, and that every watched queue
//! exists and can be read (GetQueueAttributes). Lists every custom key store of the policy's
//! account-regions that no entry covers (a problem unless `lockdown.allow_unprotected: true`).
//! Reports each missing store, alarm, queue or permission; exit 1 if any. Changes nothing in AWS.

use crate::aws::{AlarmSource, AwsClients, ErrorKind, QueueSource};
use crate::cmd::{
    Context, Exit, engine, key_status_table, key_targets, runtime, status_table, unprotected_table,
};
use crate::lockdown::{Engine, LockdownError};
use crate::model::Target;
use crate::policy::Policy;
use crate::switch;

pub fn run(_ctx: &Context, policy: &Policy) -> anyhow::Result<Exit> {
    let problems: Vec<String> = runtime()?.block_on(async {
        let engine = engine(policy).await;
        let clients = engine.control();
        let mut problems = Vec::new();
        check_credentials(clients, &mut problems).await;
        check_key_stores(&engine, policy, &mut problems).await;
        check_keys(&engine, policy, &mut problems).await;
        check_unprotected(&engine, policy, &mut problems).await;
        check_alarms(clients, policy, &mut problems).await;
        check_queues(clients, policy, &mut problems).await;
        problems
    });

    if problems.is_empty() {
        println!("online check OK: every key store, alarm and queue found and readable");
        return Ok(Exit::Success);
    }
    for problem in &problems {
        eprintln!("kms-killswitch: {problem}");
    }
    eprintln!(
        "kms-killswitch: online check found {} problem(s)",
        problems.len()
    );
    Ok(Exit::Incomplete)
}

fn describe_target(target: &Target) -> String {
    match &target.role_arn {
        Some(role) => format!("{} as {role}", target.region),
        None => target.region.clone(),
    }
}

/// Every target's credentials (AssumeRole included) can be used.
async fn check_credentials(clients: &AwsClients, problems: &mut Vec<String>) {
    for (target, result) in clients.warm_up().await {
        if let Err(err) = result {
            problems.push(format!(
                "credentials for {} cannot be used: {err}",
                describe_target(&target)
            ));
        }
    }
}

/// Every listed key store exists and can be described (the table is printed).
async fn check_key_stores(
    engine: &Engine<AwsClients>,
    policy: &Policy,
    problems: &mut Vec<String>,
) {
    let statuses = engine.describe(&policy.key_stores).await;
    print!("{}", status_table(&statuses));
    for status in &statuses {
        if let Some(error) = &status.error {
            let what = match error.aws_kind() {
                Some(ErrorKind::NotFound) => "missing key store",
                Some(ErrorKind::AccessDenied) => "missing permission",
                _ => "cannot check key store",
            };
            problems.push(format!("{what}: {}", error.to_line()));
        }
    }
}

/// Every listed standard key exists, can be described and is not AWS managed.
async fn check_keys(engine: &Engine<AwsClients>, policy: &Policy, problems: &mut Vec<String>) {
    let keys = engine.describe_keys(&policy.keys).await;
    if !keys.is_empty() {
        print!("{}", key_status_table(&keys));
    }
    for key in &keys {
        if let Some(error) = &key.error {
            let what = match error {
                LockdownError::AwsManagedKey { .. } => "AWS managed key",
                _ => match error.aws_kind() {
                    Some(ErrorKind::NotFound) => "missing key",
                    Some(ErrorKind::AccessDenied) => "missing permission",
                    _ => "cannot check key",
                },
            };
            problems.push(format!("{what}: {}", error.to_line()));
        }
    }
}

/// The custom key stores of the policy's account-regions that no entry covers.
async fn check_unprotected(
    engine: &Engine<AwsClients>,
    policy: &Policy,
    problems: &mut Vec<String>,
) {
    // Errors of this Describe are the ones the statuses above already reported.
    let (unprotected, _) = engine
        .unprotected(&policy.key_stores, &key_targets(policy))
        .await;
    if !unprotected.is_empty() {
        println!("custom key stores that no entry of key_stores covers:");
        print!("{}", unprotected_table(&unprotected));
    }
    if !policy.allow_unprotected {
        for store in &unprotected {
            problems.push(format!(
                "unprotected key store: {} ({}) in account {}, region {} is covered by no \
                 entry of key_stores; list it, add `all: true` for its account-region, or set \
                 `lockdown.allow_unprotected: true`",
                store.key_store.custom_key_store_id,
                store
                    .key_store
                    .custom_key_store_name
                    .as_deref()
                    .unwrap_or("no name"),
                store.account.as_deref().unwrap_or("unknown"),
                store.target.region,
            ));
        }
    }
}

/// Every watched alarm exists and can be read.
async fn check_alarms(clients: &AwsClients, policy: &Policy, problems: &mut Vec<String>) {
    let alarms = switch::alarm_names_by_target(policy);
    for (target, names) in &alarms {
        match clients.describe_alarms(target, names).await {
            Ok(states) => {
                for name in names {
                    match states.iter().find(|s| &s.alarm_name == name) {
                        Some(state) => {
                            println!("alarm {name} in {}: {}", target.region, state.state_value)
                        }
                        None => problems.push(format!(
                            "missing alarm: {name} not found in {}",
                            describe_target(target)
                        )),
                    }
                }
            }
            Err(err) => {
                let what = if err.kind == ErrorKind::AccessDenied {
                    "missing permission"
                } else {
                    "cannot check alarms"
                };
                problems.push(format!(
                    "{what}: alarms {} in {}: {err}",
                    names.join(", "),
                    describe_target(target)
                ));
            }
        }
    }
}

/// Every watched queue exists and can be read (GetQueueAttributes).
async fn check_queues(clients: &AwsClients, policy: &Policy, problems: &mut Vec<String>) {
    for queue in &policy.triggers.queues {
        match clients.queue_depth(&queue.target, &queue.url).await {
            Ok(depth) => println!("queue {}: {depth} message(s) waiting", queue.url),
            Err(err) => {
                let what = match err.kind {
                    ErrorKind::AccessDenied => "missing permission",
                    _ if err.code.contains("NonExistentQueue")
                        || err.code.contains("QueueDoesNotExist") =>
                    {
                        "missing queue"
                    }
                    _ => "cannot check queue",
                };
                problems.push(format!(
                    "{what}: queue {} in {}: {err}",
                    queue.url,
                    describe_target(&queue.target)
                ));
            }
        }
    }
}
