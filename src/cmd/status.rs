//! `kms-killswitch status`: placeholder until its issue lands.

use crate::cli::*;
use crate::cmd::{Context, Exit};

#[allow(unused_variables)]
pub fn run(ctx: &Context, args: &StatusArgs) -> anyhow::Result<Exit> {
    anyhow::bail!("`status` is not yet implemented")
}
