//! `ibot eval linear` — placeholder, owned by the linear-probe work (issue 6).

use clap::Args;

#[derive(Args)]
pub struct LinearArgs {}

#[derive(Args)]
pub struct BenchLinearArgs {}

pub fn run(_args: LinearArgs) -> anyhow::Result<()> {
    anyhow::bail!("ibot eval linear is not built yet")
}

pub fn run_bench(_args: BenchLinearArgs) -> anyhow::Result<()> {
    anyhow::bail!("ibot bench linear is not built yet")
}
