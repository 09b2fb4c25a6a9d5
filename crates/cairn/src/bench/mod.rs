//! `cairn bench ...`: benchmarks that run Cairn and a real peer side by side.

use clap::Args;

#[derive(Debug, Args)]
pub struct BenchArgs {}

pub fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet available")
}
