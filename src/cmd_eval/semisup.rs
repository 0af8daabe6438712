//! `ibot eval semisup` — placeholder, owned by the semi-supervised work (issue 6).

use clap::Args;

#[derive(Args)]
pub struct SemisupArgs {}

pub fn run(_args: SemisupArgs) -> anyhow::Result<()> {
    anyhow::bail!("ibot eval semisup is not built yet")
}
