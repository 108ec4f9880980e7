//! Placeholder: scenario files.

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {}

pub fn cli_main(_args: ValidateArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}
