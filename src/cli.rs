//! The command line's root: the global options, the list of subcommands, logging set-up and
//! dispatch to [`crate::cmd`]. Owns the mapping from a command's outcome or error to the process
//! exit code (DESIGN.md §4). Each subcommand's own arguments and logic live in its file under
//! `src/cmd/` (like cargo's `commands/`), which never imports this root back.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cmd::{self, Exit};
use crate::logging::{self, LogFormat};

/// Default policy path when neither `--config` nor `KMS_KILLSWITCH_CONFIG` is given.
pub const DEFAULT_CONFIG: &str = "/etc/kms-killswitch/policy.yaml";

/// What `--version` prints after the name: the crate version and the git commit it was built
/// from (`unknown` when built outside a git work tree; see build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("KMS_KILLSWITCH_GIT_COMMIT"),
    ")"
);

/// The clap definition of the whole command line, for generated man pages and completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Emergency kill switch for AWS KMS custom key stores (CloudHSM and external/XKS).
///
/// When a trigger fires it disconnects every key store its policy lists, verifies with KMS that
/// each reached DISCONNECTED, keeps them disconnected while latched, and writes a hash-chained
/// audit trail of every step.
#[derive(Debug, Parser)]
#[command(name = "kms-killswitch", version = VERSION, propagate_version = true)]
pub struct Cli {
    /// Policy file (YAML). Wins over KMS_KILLSWITCH_CONFIG, which wins over the default path.
    #[arg(long, global = true, env = "KMS_KILLSWITCH_CONFIG", default_value = DEFAULT_CONFIG, value_name = "PATH")]
    pub config: PathBuf,

    /// Accept a policy file that is writable by group/others or owned by another user
    /// (development only: prints a warning instead of refusing).
    #[arg(long, global = true)]
    pub insecure_policy_permissions: bool,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (systemd Type=notify).
    ///
    /// Watches the triggers of the policy (file flag, signal, CloudWatch alarms). When one fires,
    /// the latch is written, every listed key store is disconnected and verified DISCONNECTED, and
    /// the stores are kept disconnected until `kms-killswitch rearm`. SIGHUP reloads the policy;
    /// SIGTERM stops after any lockdown in flight has finished.
    Run,
    /// Validate the policy file; exit 0 if valid, 78 if not.
    ///
    /// Offline by default: syntax, schema, values and file permissions. With --online it also
    /// resolves every key store and alarm in AWS and checks the credentials can describe them
    /// (exit 1 if something is missing).
    Check(cmd::check::CheckArgs),
    /// Lock down now, without the daemon: disconnect every listed key store and wait for KMS to
    /// report each DISCONNECTED.
    ///
    /// Exit 0 only when every store is verified DISCONNECTED, 1 when some are not. Writes the latch
    /// and the audit log like the daemon does. --dry-run resolves and describes the stores and
    /// shows what would be disconnected, sending no Disconnect. When the switch is already
    /// latched, no second lockdown starts (the trip is audited with `latched: true` and only
    /// checks that every store is DISCONNECTED, exit 0 if so); --again locks down anyway.
    Trip(cmd::trip::TripArgs),
    /// Show the latch and each key store's ConnectionState as KMS reports it.
    Status(cmd::status::StatusArgs),
    /// Clear the latch after an incident, so the switch can fire again.
    ///
    /// Refuses while a trigger is still active (the flag file exists, or a watched alarm is in
    /// ALARM) and while a lockdown is in flight (the daemon's or a `trip`'s), so no Disconnect
    /// follows an accepted rearm. A running daemon is armed again within a second, without a
    /// restart.
    Rearm(cmd::rearm::RearmArgs),
    /// Audit log tools.
    #[command(subcommand)]
    Audit(cmd::audit_verify::AuditCommand),
}

/// Parse the command line, run the command and return its exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() {
                Exit::Usage as u8
            } else {
                0
            });
        }
    };
    let default_filter = match cli.command {
        Command::Run => logging::DAEMON_DEFAULT_FILTER,
        _ => logging::COMMAND_DEFAULT_FILTER,
    };
    logging::init(cli.log_format, default_filter);
    let exit = match dispatch(&cli) {
        Ok(exit) => exit,
        Err(err) => {
            // One readable sentence with its cause chain, never a Debug dump.
            eprintln!("kms-killswitch: error: {err:#}");
            cmd::exit_for_error(&err)
        }
    };
    ExitCode::from(exit as u8)
}

/// Run one subcommand. Each lives in its own file under `src/cmd/`.
pub fn dispatch(cli: &Cli) -> anyhow::Result<Exit> {
    let ctx = cmd::Context {
        config: cli.config.clone(),
        insecure_policy_permissions: cli.insecure_policy_permissions,
    };
    match &cli.command {
        Command::Run => cmd::run::run(&ctx),
        Command::Check(args) => cmd::check::run(&ctx, args),
        Command::Trip(args) => cmd::trip::run(&ctx, args),
        Command::Status(args) => cmd::status::run(&ctx, args),
        Command::Rearm(args) => cmd::rearm::run(&ctx, args),
        Command::Audit(audit) => cmd::audit_verify::run(&ctx, audit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
