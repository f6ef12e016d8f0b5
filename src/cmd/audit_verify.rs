//! `kms-killswitch audit verify PATH`: placeholder until its issue lands.

use std::path::Path;

use crate::cmd::{Context, Exit};

#[allow(unused_variables)]
pub fn run(ctx: &Context, path: &Path) -> anyhow::Result<Exit> {
    anyhow::bail!("`audit verify` is not yet implemented")
}
