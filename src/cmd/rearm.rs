//! `kms-killswitch rearm`: placeholder until its issue lands.

use crate::cli::*;
use crate::cmd::{Context, Exit};

#[allow(unused_variables)]
pub fn run(ctx: &Context, args: &RearmArgs) -> anyhow::Result<Exit> {
    anyhow::bail!("`rearm` is not yet implemented")
}
