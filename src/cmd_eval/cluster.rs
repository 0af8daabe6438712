//! `ibot eval cluster` — placeholder, owned by the clustering work (issue 6).

use clap::Args;

#[derive(Args)]
pub struct ClusterArgs {}

#[derive(Args)]
pub struct BenchKmeansArgs {}

pub fn run(_args: ClusterArgs) -> anyhow::Result<()> {
    anyhow::bail!("ibot eval cluster is not built yet")
}

pub fn run_bench(_args: BenchKmeansArgs) -> anyhow::Result<()> {
    anyhow::bail!("ibot bench kmeans is not built yet")
}
