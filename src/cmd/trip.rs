//! `kms-killswitch trip`: placeholder until its issue lands.

use crate::cli::*;
use crate::cmd::{Context, Exit};

#[allow(unused_variables)]
pub fn run(ctx: &Context, args: &TripArgs) -> anyhow::Result<Exit> {
    anyhow::bail!("`trip` is not yet implemented")
}
