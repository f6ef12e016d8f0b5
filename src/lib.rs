//! kms-killswitch: the emergency brake for AWS KMS custom key stores.
//!
//! Data flows one way, and no module reaches back up the chain:
//!
//! ```text
//!   trigger::{file, signal, alarm, queue} ─TriggerEvent─▶ daemon ──▶ switch ──▶ lockdown ──▶ aws
//!                                   cli ──▶ cmd::* ──┘           │            │
//!                                                                ▼            ▼
//!                                                              latch        audit  (hash-chained JSONL)
//! ```
//!
//! The modules, from the top down: each imports only from the ones listed after it (the CLI
//! edge first, the shared nouns last).
//!
//! - [`cli`]: the clap root (global options, the subcommand list), logging set-up, dispatch and
//!   exit codes. [`cmd`]: one file per subcommand, each owning its args; shared command helpers
//!   in `cmd/mod.rs`. Nothing in `cmd` imports `cli`.
//! - [`daemon`]: the one place that spawns long-lived tasks: one state enum, the run loop, reload,
//!   enforcement, shutdown, systemd.
//! - [`notify`]: after the fact, never in the lockdown's way: the audit decorator that queues
//!   notified events (DESIGN.md §9) once durable, SNS / webhook sinks with bounded retries, the
//!   health watch (`unhealthy` / `healthy`) and the CloudWatch heartbeat. Wired by `cmd::run`.
//! - [`switch`]: the switch's acts, once, for the daemon and the CLI: fire (id → latch →
//!   `trigger_fired` → lockdown), resume, the rearm checks, the operator's identity.
//! - [`trigger`]: file flag, signal, CloudWatch alarm and SQS queue watchers (with the pure
//!   queue-message classifier); each only sends [`trigger::TriggerEvent`]s on a channel and never
//!   calls AWS for KMS or exits the process.
//! - [`lockdown`]: the disconnect + verify engine (pacing, retries, deadlines, the report). It knows
//!   nothing of triggers or file paths; it talks to AWS only through the traits of [`aws`].
//! - [`aws`]: the only module that imports `aws_sdk_*`. Client construction per (region, role),
//!   credential warm-up, and the adapters behind [`aws::KeyStoreControl`] / [`aws::AlarmSource`].
//! - [`audit`]: the event vocabulary and the hash-chained, fsync'd writer and verifier.
//! - [`latch`]: the on-disk latch (written atomically before the first Disconnect).
//! - [`policy`]: YAML text → validated, immutable [`policy::Policy`]. Pure: no tokio, no AWS.
//! - [`fs_trust`]: the one judge of path trust (sshd StrictModes for every directory up to `/`,
//!   regular files only, opened without following symlinks or blocking on FIFOs).
//! - [`logging`]: the tracing subscriber and [`logging::LogFormat`]; imports nothing of the crate.
//! - [`model`]: the pure nouns every module shares ([`model::Target`], [`model::KeyStoreSpec`],
//!   [`model::ConnectionState`], [`model::TriggerSource`], [`model::LockdownId`]); imports nothing
//!   of the crate.
#![forbid(unsafe_code)]

pub mod audit;
pub mod aws;
pub mod cli;
pub mod cmd;
pub mod daemon;
#[doc(hidden)]
pub mod durability;
pub mod fs_trust;
pub mod latch;
pub mod lockdown;
pub mod logging;
pub mod model;
pub mod notify;
pub mod policy;
pub mod switch;
pub mod trigger;

/// `err` and its sources, `: `-separated (like anyhow's `{:#}`), for one log or audit field in
/// the library, where errors are typed and `anyhow` is not used.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `n` and a noun, pluralised with `s` unless `n` is 1: "1 alarm", "2 alarms", "0 key stores".
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}
