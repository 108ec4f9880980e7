//! Brokers on hosts: `mqdispatch broker` listening on the host's address (its counters too,
//! read by the runner for the delivery count), then, once the method's dispatcher is up, an
//! `mqdispatch agent` beside it that reports to the dispatcher's report port on the local
//! address with the run's token and prints every report, which the runner reads for the
//! recorder.

use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::ChildStdout;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::task::AbortOnDropHandle;
use tracing::warn;

use super::{HostSession, to_local_ms};
use crate::broker::{QUIET_BROKER_LOG, RunningBroker};
use crate::load_report::LoadReport;
use crate::remote::RemoteRole;
use crate::scenario::{CpuSampling, Scenario};

const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The brokers (and agents) one method run placed on hosts.
#[derive(Default)]
pub(crate) struct RemoteBrokers {
    brokers: Vec<RemoteBroker>,
    agents: Vec<(RemoteRole, AbortOnDropHandle<()>)>,
}

struct RemoteBroker {
    id: String,
    tag: String,
    host: String,
    pid: u32,
    stats: String,
    role: RemoteRole,
    _drain: AbortOnDropHandle<()>,
}

impl HostSession {
    /// Starts every broker on its host (`b1` on the first of `brokers.hosts`, ...), into
    /// `set`; `tag` (`t1-proposed`) names their logs and folders.
    pub(crate) async fn start_brokers(
        &self,
        tag: &str,
        set: &mut RemoteBrokers,
    ) -> anyhow::Result<Vec<RunningBroker>> {
        let mut started = Vec::new();
        for (i, host) in self.plan.broker_hosts.iter().enumerate() {
            let id = format!("b{}", i + 1);
            started.push(self.start_broker(&id, host, tag, set).await?);
        }
        Ok(started)
    }

    async fn start_broker(
        &self,
        id: &str,
        host: &str,
        tag: &str,
        into: &mut RemoteBrokers,
    ) -> anyhow::Result<RunningBroker> {
        let h = self.host(host)?;
        let ip = h.spec.address;
        let listen = std::net::SocketAddr::from((ip, 0)).to_string();
        // `sh` says its pid and becomes the broker (exec): the pid the agent samples.
        let script = format!(
            "echo \"pid $$\"; RUST_LOG=\"${{RUST_LOG:-{QUIET_BROKER_LOG}}}\"; export RUST_LOG; \
             exec \"$0\" \"$@\""
        );
        let command: Vec<String> = [
            "sh",
            "-c",
            &script,
            &h.binary,
            "broker",
            "--listen",
            &listen,
            "--stats-listen",
            &listen,
        ]
        .map(str::to_owned)
        .to_vec();
        let name = format!("{tag}-broker-{id}");
        let log = self.files.join(host).join(format!("{name}.log"));
        let workdir = format!("{}/{name}", h.workdir);
        let (role, stdout) =
            RemoteRole::start_piped(&h.conn, &name, &h.binary, &command, &workdir, &log)?;
        let mut lines = BufReader::new(stdout).lines();
        let banner = async {
            let mut next = async |prefix: &str| -> anyhow::Result<String> {
                let line = lines.next_line().await?.unwrap_or_default();
                line.strip_prefix(prefix)
                    .map(str::to_owned)
                    .with_context(|| format!("expected `{prefix}...`, got `{line}`"))
            };
            let pid: u32 = next("pid ").await?.trim().parse()?;
            let addr = next("listening on ").await?;
            let stats = next("stats on ").await?;
            anyhow::Ok((pid, addr, stats))
        };
        let (pid, addr, stats) = match tokio::time::timeout(START_TIMEOUT, banner).await {
            Ok(Ok(started)) => started,
            failed => {
                role.stop().await;
                let why = match failed {
                    Ok(Err(e)) => format!("{e:#}"),
                    _ => format!("no address within {} s", START_TIMEOUT.as_secs()),
                };
                anyhow::bail!("broker {id} on host {host}: {why} (log: {})", log.display());
            }
        };
        tracing::info!(broker = id, host, %addr, pid, "broker started on its host");
        let drain = AbortOnDropHandle::new(tokio::spawn(async move {
            while let Ok(Some(_)) = lines.next_line().await {}
        }));
        into.brokers.push(RemoteBroker {
            id: id.to_owned(),
            tag: tag.to_owned(),
            host: host.to_owned(),
            pid,
            stats: stats.clone(),
            role,
            _drain: drain,
        });
        Ok(RunningBroker::on_host(id, host, addr, stats))
    }

    /// Starts an agent beside each broker of `set`; their reports go to the dispatcher's
    /// report port `report` (if any, with the run's token) and, with times on this machine's
    /// clock, to `samples`.
    pub(crate) fn start_agents(
        &self,
        set: &mut RemoteBrokers,
        report: Option<String>,
        scenario: &Scenario,
        samples: &UnboundedSender<LoadReport>,
    ) -> anyhow::Result<()> {
        let interval = scenario.sample_interval;
        for b in &set.brokers {
            let h = self.host(&b.host)?;
            let mut command: Vec<String> = vec![
                h.binary.clone(),
                "agent".into(),
                "--broker-id".into(),
                b.id.clone(),
                "--interval".into(),
                crate::duration::format_exact(interval),
                "--counters".into(),
                format!("rumqttd={}", b.stats),
            ];
            match scenario.cpu {
                // The paper's way: the busy share of the whole host.
                CpuSampling::Host => command.push("--host".into()),
                _ => command.extend(["--pid".into(), b.pid.to_string()]),
            }
            if let Some(addr) = &report {
                let token = self.token.clone();
                command.extend(["--dispatcher".into(), addr.clone(), "--token".into(), token]);
            }
            let name = format!("{}-agent-{}", b.tag, b.id);
            let log = self.files.join(&b.host).join(format!("{name}.log"));
            let workdir = format!("{}/{name}", h.workdir);
            let (role, stdout) =
                RemoteRole::start_piped(&h.conn, &name, &h.binary, &command, &workdir, &log)?;
            let reader = forward_reports(stdout, h.offset_us, samples.clone());
            set.agents.push((role, AbortOnDropHandle::new(reader)));
        }
        Ok(())
    }
}

/// Each report line of an agent's stdout, its time moved onto this machine's clock.
fn forward_reports(
    stdout: ChildStdout,
    offset_us: i64,
    samples: UnboundedSender<LoadReport>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match LoadReport::parse_line(line.trim()) {
                Ok(mut report) => {
                    report.t_ms = to_local_ms(report.t_ms, offset_us);
                    report.token = None;
                    let _ = samples.send(report);
                }
                Err(e) => warn!(error = %e, "an agent on a host printed something else"),
            }
        }
    })
}

impl RemoteBrokers {
    /// Agents first (they sample the brokers), then the brokers; each waits for its session.
    pub(crate) async fn stop(self) {
        for (agent, _reader) in self.agents {
            agent.stop().await;
        }
        for b in self.brokers {
            b.role.stop().await;
        }
    }
}
