//! `kms-killswitch run`: placeholder until its issue lands.

use crate::cmd::{Context, Exit};

#[allow(unused_variables)]
pub fn run(ctx: &Context) -> anyhow::Result<Exit> {
    anyhow::bail!("`run` is not yet implemented")
}
