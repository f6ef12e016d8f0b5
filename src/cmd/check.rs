//! `kms-killswitch check`: placeholder until its issue lands.

use crate::cli::*;
use crate::cmd::{Context, Exit};

#[allow(unused_variables)]
pub fn run(ctx: &Context, args: &CheckArgs) -> anyhow::Result<Exit> {
    anyhow::bail!("`check` is not yet implemented")
}
