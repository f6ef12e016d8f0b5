//! `kms-killswitch check [--online]`: load and validate the policy (syntax, schema, values, file
//! permissions) and print a one-line summary; exit 0, or 78 through the CLI edge when the policy is
//! missing, unreadable, insecure or invalid, and 78 too for what `run` would refuse (state, audit
//! or metrics paths others can change, an unsafe webhook secret, an untrusted flag directory) or
//! a squatted flag. With `--online` it then hands the valid policy to
//! [`crate::cmd::check_online`], which owns everything that talks to AWS. Nothing here calls AWS.

use clap::Args;

use crate::cmd::{Context, Exit, untrusted_state_path};
use crate::policy::{self, Policy};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also resolve every key store and alarm in AWS and check the credentials can describe them.
    #[arg(long)]
    pub online: bool,
}

pub fn run(ctx: &Context, args: &CheckArgs) -> anyhow::Result<Exit> {
    let policy = ctx.load_policy()?;
    if let Some(problem) = local_problem(&policy) {
        eprintln!(
            "kms-killswitch: error: policy {}: {problem}",
            policy.path.display()
        );
        return Ok(Exit::Config);
    }
    println!("{}", summary(&policy));
    if args.online {
        return crate::cmd::check_online::run(ctx, &policy);
    }
    Ok(Exit::Success)
}

/// What `run` would refuse at start (78), or a flag already squatted: state, audit and metrics
/// paths in directories others can change or not regular files, a webhook secret that is
/// unsafe or unreadable, an untrusted flag directory, a flag at the path that would be rejected
/// (then root's `touch` fires nothing).
fn local_problem(policy: &Policy) -> Option<String> {
    if let Some(refusal) = untrusted_state_path(policy) {
        return Some(refusal);
    }
    // The webhook secrets, read as `run` reads them (never shown).
    if let Err(err) = crate::notify::sinks(policy) {
        return Some(err.to_string());
    }
    let file = policy.triggers.file.as_ref()?;
    if let Err(err) = crate::trigger::file::check_flag_dir(file) {
        return Some(crate::error_chain(&err));
    }
    crate::trigger::file::squatted_flag(file).map(|reason| {
        format!(
            "the file trigger cannot fire: {reason}; remove it (`rm {}`)",
            file.path.display()
        )
    })
}

/// `policy /etc/kms-killswitch/policy.yaml OK: 6 key stores in 2 accounts/3 regions, triggers:
/// file /run/kms-killswitch, signal SIGUSR1, 2 alarms`.
pub fn summary(policy: &Policy) -> String {
    let (accounts, regions) = policy::key_store_spread(policy);
    let mut triggers = Vec::new();
    if let Some(file) = &policy.triggers.file {
        triggers.push(format!("file {}", file.path.display()));
    }
    if let Some(signal) = &policy.triggers.signal {
        triggers.push(format!("signal {}", signal.name));
    }
    if !policy.triggers.alarms.is_empty() {
        triggers.push(crate::count(policy.triggers.alarms.len(), "alarm"));
    }
    // Keys are named only when listed, so a policy without them reads as before.
    let keys = match policy.keys.len() {
        0 => String::new(),
        n => format!(" and {}", crate::count(n, "key")),
    };
    format!(
        "policy {} OK: {}{keys} in {}/{}, triggers: {}",
        policy.path.display(),
        crate::count(policy.key_stores.len(), "key store"),
        crate::count(accounts, "account"),
        crate::count(regions, "region"),
        triggers.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn summary_counts_stores_accounts_regions_and_triggers() {
        let policy = policy::parse(
            "version: 1
aws:
  region: eu-west-1
key_stores:
  - id: cks-1234567890abcdef0
  - name: b
    region: us-east-1
    role_arn: arn:aws:iam::444455556666:role/k
triggers:
  alarms:
    - name: a
    - name: b
",
            Path::new("/etc/p.yaml"),
        )
        .expect("valid policy");
        assert_eq!(
            summary(&policy),
            "policy /etc/p.yaml OK: 2 key stores in 2 accounts/2 regions, triggers: \
             file /run/kms-killswitch, signal SIGUSR1, 2 alarms"
        );
    }

    #[test]
    fn summary_of_a_single_store_with_only_a_signal() {
        let policy = policy::parse(
            "version: 1\naws:\n  region: eu-west-1\nkey_stores:\n  - id: cks-1234567890abcdef0\ntriggers:\n  file: none\n",
            Path::new("/p.yaml"),
        )
        .expect("valid policy");
        assert_eq!(
            summary(&policy),
            "policy /p.yaml OK: 1 key store in 1 account/1 region, triggers: signal SIGUSR1"
        );
    }
}
