//! One file per subcommand. Each takes the parsed arguments, does its job through the library
//! modules, prints for humans (or JSON), and returns an [`Exit`]. `anyhow` is used here and in
//! `cli.rs` only: this is the CLI edge. Nothing here spawns long-lived tasks (that is `daemon`).

use std::path::PathBuf;

use crate::cli::LogFormat;

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
    /// `--log-format`.
    pub log_format: LogFormat,
}

/// The exit code for an error that reached the CLI edge: 78 when the cause is the policy.
pub fn exit_for_error(err: &anyhow::Error) -> Exit {
    if err
        .chain()
        .any(|cause| cause.downcast_ref::<crate::policy::PolicyError>().is_some())
    {
        Exit::Config
    } else {
        Exit::Incomplete
    }
}
