//! Quickstart step (not yet implemented by its crate).

use crate::Context;

pub(crate) async fn run(_ctx: &mut Context) -> anyhow::Result<()> {
    println!("    (not yet available)");
    Ok(())
}
