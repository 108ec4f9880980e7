//! Brokers on hosts: `mqdispatch broker` or Mosquitto listening on the host's address (their
//! counters too, read by the runner for the delivery count), then, once the method's dispatcher is up, an
//! `mqdispatch agent` beside it that reports to the dispatcher's report port on the local
//! address with the run's token and prints every report, which the runner reads for the
//! recorder.

use std::time::Duration;

use std::path::Path;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::ChildStdout;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::task::AbortOnDropHandle;
use tracing::warn;

use super::{Host, HostSession, to_local_ms};
use crate::agent::CounterSource;
use crate::broker::{BrokerKind, QUIET_BROKER_LOG, RunningBroker, mosquitto};
use crate::load_report::LoadReport;
use crate::remote::RemoteRole;
use crate::remote::ssh::shell_quote;
use crate::scenario::{CpuSampling, Scenario};

const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The brokers (and agents) one method run placed on hosts.
#[derive(Default)]
pub(crate) struct RemoteBrokers {
    brokers: Vec<RemoteBroker>,
    agents: Vec<(RemoteRole, AbortOnDropHandle<()>)>,
}

/// A started broker's role, pid, address, counters, (kind, version) and stdout drain.
type Started = (
    RemoteRole,
    u32,
    String,
    CounterSource,
    (BrokerKind, String),
    AbortOnDropHandle<()>,
);

/// `sh -c` says its pid and becomes the broker (exec): the pid the agent samples.
const SAY_PID_AND_EXEC: &str = "echo \"pid $$\"; exec \"$0\" \"$@\"";
/// Ports tried for a Mosquitto broker on a host before giving up.
const MOSQUITTO_ATTEMPTS: usize = 3;

struct RemoteBroker {
    id: String,
    tag: String,
    host: String,
    pid: u32,
    counters: CounterSource,
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
        let name = format!("{tag}-broker-{id}");
        let log = self.files.join(host).join(format!("{name}.log"));
        let workdir = format!("{}/{name}", h.workdir);
        let started = match &h.mosquitto {
            None => self.start_embedded(h, &name, &workdir, &log).await,
            Some((binary, version)) => {
                self.start_mosquitto(h, (binary, version), &name, &workdir, &log)
                    .await
            }
        };
        let (role, pid, addr, counters, kind, drain) = started.map_err(|e| {
            anyhow::anyhow!("broker {id} on host {host}: {e:#} (log: {})", log.display())
        })?;
        tracing::info!(broker = id, host, %addr, pid, "broker started on its host");
        into.brokers.push(RemoteBroker {
            id: id.to_owned(),
            tag: tag.to_owned(),
            host: host.to_owned(),
            pid,
            counters: counters.clone(),
            role,
            _drain: drain,
        });
        let (kind, version) = kind;
        Ok(RunningBroker::on_host(
            id,
            host,
            (kind, &version),
            addr,
            counters,
        ))
    }

    /// `mqdispatch broker` on the host's address, its counters on a stats port.
    async fn start_embedded(
        &self,
        h: &Host,
        name: &str,
        workdir: &str,
        log: &Path,
    ) -> anyhow::Result<Started> {
        let listen = std::net::SocketAddr::from((h.spec.address, 0)).to_string();
        let script = format!(
            "RUST_LOG=\"${{RUST_LOG:-{QUIET_BROKER_LOG}}}\"; export RUST_LOG; {SAY_PID_AND_EXEC}"
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
        let (role, stdout) =
            RemoteRole::start_piped(&h.conn, name, &h.binary, &command, workdir, log)?;
        let mut lines = BufReader::new(stdout).lines();
        let banner = async {
            let pid = next_line(&mut lines, "pid ").await?.trim().parse::<u32>()?;
            let addr = next_line(&mut lines, "listening on ").await?;
            let stats = next_line(&mut lines, "stats on ").await?;
            anyhow::Ok((pid, addr, stats))
        };
        let (pid, addr, stats_addr) = match tokio::time::timeout(START_TIMEOUT, banner).await {
            Ok(Ok(started)) => started,
            failed => {
                role.stop().await;
                match failed {
                    Ok(Err(e)) => return Err(e),
                    _ => anyhow::bail!("no address within {} s", START_TIMEOUT.as_secs()),
                }
            }
        };
        let counters = CounterSource::Rumqttd { stats_addr };
        let kind = (
            BrokerKind::Embedded,
            crate::broker::embedded::VERSION.to_owned(),
        );
        Ok((role, pid, addr, counters, kind, drain(lines)))
    }

    /// Mosquitto with the config a local one gets, listening on the host's address on a port
    /// picked at random (a taken one makes it exit at once: then another); its counters are
    /// its `$SYS` topics, read over the network as a local one's are.
    async fn start_mosquitto(
        &self,
        h: &Host,
        (binary, version): (&str, &str),
        name: &str,
        workdir: &str,
        log: &Path,
    ) -> anyhow::Result<Started> {
        let ip = h.spec.address;
        let config = format!("{workdir}/mosquitto.conf");
        let mut last = None;
        for _ in 0..MOSQUITTO_ATTEMPTS {
            let port: u16 = rand::random_range(20_000..32_000);
            let text = mosquitto::config_text_on(ip, port, None, None);
            let write = format!(
                "mkdir -p -- {dir} && printf %s {text} > {config}",
                dir = shell_quote(workdir),
                text = shell_quote(&text),
                config = shell_quote(&config),
            );
            h.conn.run(&write, super::QUICK).await?;
            let command: Vec<String> = ["sh", "-c", SAY_PID_AND_EXEC, binary, "-c", &config]
                .map(str::to_owned)
                .to_vec();
            let (role, stdout) =
                RemoteRole::start_piped(&h.conn, name, &h.binary, &command, workdir, log)?;
            let mut lines = BufReader::new(stdout).lines();
            let addr = std::net::SocketAddr::from((ip, port));
            let ready = async {
                let pid = next_line(&mut lines, "pid ").await?.trim().parse::<u32>()?;
                while tokio::net::TcpStream::connect(addr).await.is_err() {
                    anyhow::ensure!(!role.has_ended(), "mosquitto exited at start");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                anyhow::Ok(pid)
            };
            match tokio::time::timeout(START_TIMEOUT, ready).await {
                Ok(Ok(pid)) => {
                    let counters = CounterSource::MosquittoSys {
                        addr: addr.to_string(),
                    };
                    let kind = (BrokerKind::Mosquitto, version.to_owned());
                    return Ok((role, pid, addr.to_string(), counters, kind, drain(lines)));
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    role.stop().await;
                    anyhow::bail!(
                        "{addr} accepts nothing within {} s",
                        START_TIMEOUT.as_secs()
                    );
                }
            }
            role.stop().await;
        }
        Err(last.expect("invariant: at least one attempt"))
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
                b.counters.to_string(),
            ];
            match scenario.cpu {
                // The paper's way: the busy share of the whole host.
                CpuSampling::Host => command.push("--host".into()),
                _ => command.extend(["--pid".into(), b.pid.to_string()]),
            }
            if let Some(addr) = &report {
                command.extend(["--dispatcher".into(), addr.clone()]);
            }
            let command = h.with_token(command);
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

/// The next line of a role's stdout, which must start with `prefix`: the rest of it.
async fn next_line(
    lines: &mut Lines<BufReader<ChildStdout>>,
    prefix: &str,
) -> anyhow::Result<String> {
    let line = lines.next_line().await?.unwrap_or_default();
    line.strip_prefix(prefix)
        .map(str::to_owned)
        .with_context(|| format!("expected `{prefix}...`, got `{line}`"))
}

/// Reads (and drops) the rest of a broker's stdout, so it never blocks on a full pipe.
fn drain(mut lines: Lines<BufReader<ChildStdout>>) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(async move {
        while let Ok(Some(_)) = lines.next_line().await {}
    }))
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
