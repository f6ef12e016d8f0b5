//! `kms-killswitch check --online`: placeholder until issue 4 lands. Resolves every key store and
//! alarm of a valid policy in AWS and reports each one missing or not describable.

use crate::cmd::{Context, Exit};
use crate::policy::Policy;

#[allow(unused_variables)]
pub fn run(ctx: &Context, policy: &Policy) -> anyhow::Result<Exit> {
    anyhow::bail!("`check --online` is not yet implemented (it needs the lockdown engine, issue 4)")
}
