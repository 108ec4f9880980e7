//! Placeholder: being written.

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn cli_main(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}
