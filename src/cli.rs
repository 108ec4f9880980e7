//! Command line: one subcommand per role.
//! Each role owns its `Args` and its `cli_main`; this file only wires them together.

use std::io::IsTerminal;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "mqdispatch",
    version,
    about = "MQTT v5 server-redirection dispatcher and experiment harness"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a whole experiment from a scenario file.
    Run(crate::run::Args),
    /// Check a scenario file without running it.
    Validate(crate::scenario::ValidateArgs),
    /// Redraw every PNG of a results directory from its CSV files.
    Plot(crate::report::PlotArgs),
    /// Copy a completed run's summary files and the records its figures need to results/published/.
    Publish(crate::report::published::PublishArgs),
    /// Regenerate the tables of README.md and the book (docs/src) from results/published/.
    Readme(crate::report::published::ReadmeArgs),
    /// Redirect every MQTT v5 CONNECT to the least loaded broker.
    Dispatcher(Box<crate::dispatcher::Args>),
    /// Sample a broker's CPU every interval and report it to a dispatcher.
    Agent(crate::agent::Args),
    /// Run the embedded broker (rumqttd) in this process.
    Broker(crate::broker::Args),
    /// Run fixed-rate publishers against a dispatcher or brokers.
    Load(Box<crate::loadgen::Args>),
    /// Merge the output files of `load --shard K/N` runs into one loader's.
    LoadMerge(crate::loadgen::merge::MergeArgs),
    /// Serve this host's clock, or measure another host's clock offset from this one.
    Clock(crate::clock::Args),
    /// Hosts on this machine for multi-host runs: network namespaces with sshd.
    Testbed(crate::testbed::Args),
    /// Run a command for as long as this process's stdin stays open (roles started over ssh).
    #[command(hide = true)]
    Lifeline(crate::remote::LifelineArgs),
}

pub async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(args) => crate::run::cli_main(args).await,
        Command::Validate(args) => crate::scenario::cli_main(args).await,
        Command::Plot(args) => crate::report::cli_main(args).await,
        Command::Publish(args) => crate::report::published::publish_main(args),
        Command::Readme(args) => crate::report::published::readme_main(args),
        Command::Dispatcher(args) => crate::dispatcher::cli_main(*args).await,
        Command::Agent(args) => crate::agent::cli_main(args).await,
        Command::Broker(args) => crate::broker::cli_main(args).await,
        Command::Load(args) => crate::loadgen::cli_main(*args).await,
        Command::LoadMerge(args) => crate::loadgen::merge::merge_main(args),
        Command::Clock(args) => crate::clock::cli_main(args).await,
        Command::Testbed(args) => crate::testbed::cli_main(args).await,
        Command::Lifeline(args) => crate::remote::lifeline::cli_main(args).await,
    }
}

/// Logs go to stderr (stdout carries `listening on ADDR` and data), filtered by `RUST_LOG`,
/// coloured only when stderr is a terminal (`make quick > log 2>&1` stays plain text).
/// Default `info`; for `run`, only the runner's own progress lines and warnings, since a run
/// starts hundreds of publishers whose every join would otherwise scroll past the progress bar.
pub fn init_tracing(command: &Command) {
    let default = match command {
        Command::Run(_) => "warn,mqdispatch::run=info",
        _ => "info",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
