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
pub mod latch;
pub mod lockdown;
pub mod logging;
pub mod policy;
pub mod trigger;
