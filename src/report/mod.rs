//! Placeholder: being written.

#[derive(Debug, clap::Args)]
pub struct PlotArgs {}

pub async fn cli_main(_args: PlotArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}
