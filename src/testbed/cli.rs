//! `mqdispatch testbed up|down`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use super::{DEFAULT_DIR, DEFAULT_PREFIX, Options, Subnet, Testbed, TestbedError};
use crate::InputError;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Create N hosts (network namespaces with sshd) and write hosts.yaml, ssh_config and
    /// testbed.json into DIR.
    Up {
        /// Number of hosts, h1..hN.
        #[arg(long)]
        hosts: u16,
        /// CPU cap per host, in cores (e.g. 0.5), for its sshd and all it starts.
        #[arg(long, value_name = "CORES")]
        cpu_limit: Option<f64>,
        #[arg(long, value_name = "DIR", default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// Prefix of the namespaces (PREFIX-hK), the bridge (PREFIX0) and the cgroups.
        #[arg(long, default_value = DEFAULT_PREFIX)]
        prefix: String,
        /// A /24 inside 198.18.0.0/15: .1 is this machine, host K is .(10+K).
        #[arg(long, default_value = "198.18.0.0/24")]
        subnet: Subnet,
    },
    /// Stop everything in the hosts and remove them, their cgroups, the bridge and DIR.
    Down {
        #[arg(long, value_name = "DIR", default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// Used when DIR has no testbed.json (the prefix in it wins otherwise).
        #[arg(long, default_value = DEFAULT_PREFIX)]
        prefix: String,
    },
}

pub async fn cli_main(args: Args) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || run(args.action))
        .await
        .context("testbed task")?
}

fn run(action: Action) -> anyhow::Result<()> {
    match action {
        Action::Up {
            hosts,
            cpu_limit,
            dir,
            prefix,
            subnet,
        } => {
            let opts = Options {
                hosts,
                cpu_limit,
                dir,
                prefix,
                subnet,
                sshd: None,
            };
            let bed = Testbed::up(&opts).map_err(user_error)?;
            let s = bed.state();
            println!(
                "test bed {} up: local {} on {}",
                s.prefix, s.local_address, s.bridge
            );
            for h in bed.hosts() {
                println!(
                    "{} {} rtt_min_us {:.1} (ssh {})",
                    h.name,
                    h.address,
                    h.rtt_min_us.unwrap_or(f64::NAN),
                    h.ssh_args().join(" ")
                );
            }
            println!("hosts for scenarios: {}", bed.hosts_yaml().display());
            Ok(())
        }
        Action::Down { dir, prefix } => {
            super::down(&dir, &prefix).map_err(user_error)?;
            println!("test bed down");
            Ok(())
        }
    }
}

/// Bad flags exit with code 2 like other input errors.
fn user_error(e: TestbedError) -> anyhow::Error {
    match e {
        TestbedError::BadOption(m) => InputError(m).into(),
        e => e.into(),
    }
}
