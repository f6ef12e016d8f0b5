//! kms-killswitch: the emergency brake for AWS KMS custom key stores.
//!
//! Data flows one way, and no module reaches back up the chain:
//!
//! ```text
//!   trigger::{file, signal, alarm} ──TriggerEvent──▶ daemon ──▶ lockdown ──▶ aws
//!                                                      │           │
//!                                                      ▼           ▼
//!                                                   latch        audit  (hash-chained JSONL)
//! ```
//!
//! - [`policy`]: YAML text → validated, immutable [`policy::Policy`]. Pure: no tokio, no AWS.
//! - [`aws`]: the only module that imports `aws_sdk_*`. Client construction per (region, role),
//!   credential warm-up, and the adapters behind [`aws::KeyStoreControl`] / [`aws::AlarmSource`].
//! - [`lockdown`]: the disconnect + verify engine (pacing, retries, deadlines, the report). It knows
//!   nothing of triggers or file paths; it talks to AWS only through the traits above.
//! - [`audit`]: the event vocabulary and the hash-chained, fsync'd writer and verifier.
//! - [`trigger`]: file flag, signal and CloudWatch alarm watchers; each only sends
//!   [`trigger::TriggerEvent`]s on a channel and never calls AWS for KMS or exits the process.
//! - [`fs_trust`]: the one judge of path trust (sshd StrictModes for every directory up to `/`,
//!   regular files only, opened without following symlinks or blocking on FIFOs).
//! - [`latch`]: the on-disk latch (written atomically before the first Disconnect).
//! - [`daemon`]: the one place that spawns long-lived tasks and owns shutdown, reload and
//!   enforcement, and talks to systemd.
//! - [`cli`] and [`cmd`]: clap types, dispatch, and one file per subcommand.
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
pub mod policy;
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
