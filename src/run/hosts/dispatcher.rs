//! The method's dispatcher on a host of its own (`dispatcher_host`): `mqdispatch dispatcher`
//! started there under the lifeline with the flags the in-process one would be configured
//! with, its client and report ports on the host's address (free ports, read from its first
//! lines), the report port taking only the run's token. It streams its placements, its moves,
//! the moment every broker has a sample and, as it ends, its CPU time (`--events-out -`); the
//! runner feeds them into the channels the in-process dispatcher would fill, times moved onto
//! this machine's clock.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::ChildStdout;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tracing::warn;

use super::{HostSession, to_local_ms};
use crate::dispatcher::rebalance::{self, MoveRecord};
use crate::dispatcher::stream::StreamEvent;
use crate::dispatcher::{Decision, DispatcherConfig, LoadSource};
use crate::proto::RedirectReason;
use crate::remote::RemoteRole;

const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long its last lines may take to arrive once its session has ended.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A dispatcher running on a host.
pub(crate) struct RemoteDispatcher {
    listen: String,
    reports: String,
    role: Option<RemoteRole>,
    /// Reads its stream until it ends; gives the CPU time of its `ended` line.
    reader: Option<JoinHandle<Option<Duration>>>,
}

impl RemoteDispatcher {
    /// Where clients connect.
    pub(crate) fn listen_addr(&self) -> String {
        self.listen.clone()
    }

    /// Where agents report (with the run's token).
    pub(crate) fn report_addr(&self) -> String {
        self.reports.clone()
    }

    /// Stops it (SIGTERM through its lifeline) and waits for its last lines; its CPU time, if
    /// it said.
    pub(crate) async fn stop(&mut self) -> Option<Duration> {
        if let Some(role) = self.role.take() {
            role.stop().await;
        }
        let reader = self.reader.take()?;
        match tokio::time::timeout(DRAIN_TIMEOUT, reader).await {
            Ok(Ok(cpu)) => cpu,
            _ => {
                warn!("the dispatcher on its host gave no CPU time");
                None
            }
        }
    }
}

impl HostSession {
    /// The host every dispatcher method's dispatcher runs on, if not here.
    pub(crate) fn dispatcher_host(&self) -> Option<&str> {
        self.plan.dispatcher.as_deref()
    }

    /// Starts `cfg`'s dispatcher on the dispatcher host; `tag` (`t1-proposed`) names its log.
    /// Its placements go to `decisions`, its moves to `moves`, and `cfg.fed` is set once it
    /// has a sample of every broker.
    pub(crate) async fn start_dispatcher(
        &self,
        tag: &str,
        mut cfg: DispatcherConfig,
        decisions: UnboundedSender<Decision>,
        moves: UnboundedSender<MoveRecord>,
    ) -> anyhow::Result<RemoteDispatcher> {
        let host = self
            .dispatcher_host()
            .context("invariant: a dispatcher host is set")?;
        let h = self.host(host)?;
        // The token comes from the host's token file, not the command line.
        cfg.token = None;
        let command = h.with_token(dispatcher_command(&h.binary, &cfg, h.spec.address)?);
        let name = format!("{tag}-dispatcher");
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
            let listen = next("listening on ").await?;
            let reports = next("reports on ").await?;
            anyhow::Ok((listen, reports))
        };
        let (listen, reports) = match tokio::time::timeout(START_TIMEOUT, banner).await {
            Ok(Ok(started)) => started,
            failed => {
                role.stop().await;
                let why = match failed {
                    Ok(Err(e)) => format!("{e:#}"),
                    _ => format!("no address within {} s", START_TIMEOUT.as_secs()),
                };
                anyhow::bail!("dispatcher on host {host}: {why} (log: {})", log.display());
            }
        };
        tracing::info!(host, %listen, %reports, "dispatcher started on its host");
        let sinks = Sinks {
            decisions,
            moves,
            fed: cfg.fed.clone(),
            offset_us: h.offset_us,
        };
        Ok(RemoteDispatcher {
            listen,
            reports,
            role: Some(role),
            reader: Some(tokio::spawn(sinks.read(lines))),
        })
    }
}

/// Where a remote dispatcher's stream goes.
struct Sinks {
    decisions: UnboundedSender<Decision>,
    moves: UnboundedSender<MoveRecord>,
    fed: Option<std::sync::Arc<tokio::sync::watch::Sender<bool>>>,
    /// Its host's clock minus this machine's.
    offset_us: i64,
}

impl Sinks {
    /// Every line until its stdout ends; the CPU time of the `ended` line.
    async fn read(self, mut lines: tokio::io::Lines<BufReader<ChildStdout>>) -> Option<Duration> {
        let mut cpu = None;
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<StreamEvent>(&line) {
                Ok(event) => match on_local_clock(event, self.offset_us) {
                    StreamEvent::Decision(d) => {
                        let _ = self.decisions.send(d);
                    }
                    StreamEvent::Move(m) => {
                        let _ = self.moves.send(m);
                    }
                    StreamEvent::Fed { .. } => {
                        if let Some(fed) = &self.fed {
                            fed.send_replace(true);
                        }
                    }
                    StreamEvent::Ended { cpu_us } => cpu = Some(Duration::from_micros(cpu_us)),
                },
                Err(e) => {
                    warn!(error = %e, line, "the dispatcher on its host printed something else")
                }
            }
        }
        cpu
    }
}

/// An event's times moved from its host's clock onto this machine's.
fn on_local_clock(mut event: StreamEvent, offset_us: i64) -> StreamEvent {
    match &mut event {
        StreamEvent::Fed { t_ms } => *t_ms = to_local_ms(*t_ms, offset_us),
        StreamEvent::Decision(d) => d.t_ms = to_local_ms(d.t_ms, offset_us),
        StreamEvent::Move(m) => m.t_ms = to_local_ms(m.t_ms, offset_us),
        StreamEvent::Ended { .. } => {}
    }
    event
}

/// `mqdispatch dispatcher` as `cfg` configures it, on free ports of `ip`, streaming on stdout.
fn dispatcher_command(
    binary: &str,
    cfg: &DispatcherConfig,
    ip: IpAddr,
) -> anyhow::Result<Vec<String>> {
    anyhow::ensure!(
        matches!(cfg.load_source, LoadSource::Reports),
        "a dispatcher on a host takes its loads from the agents' reports, not Prometheus"
    );
    let any_port = std::net::SocketAddr::from((ip, 0)).to_string();
    let d = crate::duration::format_exact;
    let mut c: Vec<String> = vec![binary.into(), "dispatcher".into()];
    c.extend(["--listen".into(), any_port.clone()]);
    c.extend(["--report-listen".into(), any_port]);
    for b in &cfg.brokers {
        anyhow::ensure!(
            b.tls_addr.is_none(),
            "a dispatcher on a host has no TLS port (broker {})",
            b.id
        );
        c.extend(["--broker".into(), format!("{}={}", b.id, b.addr)]);
    }
    c.extend(["--policy".into(), value(cfg.policy)]);
    c.extend(["--metric".into(), value(cfg.metric)]);
    c.extend(["--subscriber-policy".into(), value(cfg.subscriber_policy)]);
    c.extend(["--unhinted".into(), value(cfg.unhinted)]);
    c.extend(["--window".into(), d(cfg.window)]);
    c.extend(["--interval".into(), d(cfg.report_interval)]);
    let reason = match cfg.reason {
        RedirectReason::UseAnotherServer => "use-another-server",
        RedirectReason::ServerMoved => "server-moved",
    };
    c.extend(["--reason".into(), reason.into()]);
    c.extend(["--max-connections".into(), cfg.max_connections.to_string()]);
    c.extend(["--handshake-timeout".into(), d(cfg.handshake_timeout)]);
    c.extend(["--seed".into(), cfg.seed.to_string()]);
    if let Some(r) = &cfg.rebalance {
        c.extend(["--rebalance".into(), rebalance::to_arg(r)]);
    }
    c.extend(["--mover".into(), value(cfg.mover)]);
    if let Some(token) = &cfg.token {
        c.extend(["--token".into(), token.clone()]);
    }
    c.extend(["--events-out".into(), "-".into()]);
    Ok(c)
}

/// A flag's value as the command line spells it.
fn value(v: impl ValueEnum) -> String {
    v.to_possible_value()
        .expect("invariant: no value is hidden")
        .get_name()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatcher::rebalance::{MoverKind, RebalanceConfig};
    use crate::dispatcher::{BrokerEntry, Metric, Policy, SubscriberPolicy};

    fn configured() -> DispatcherConfig {
        let entries = ["b1=198.18.0.11:40001", "b2=198.18.0.12:40002"]
            .iter()
            .map(|e| e.parse::<BrokerEntry>().unwrap())
            .collect();
        let mut cfg = DispatcherConfig::new(entries, Policy::LeastLoad);
        cfg.metric = Metric::MsgRate;
        cfg.subscriber_policy = SubscriberPolicy::RoundRobin;
        cfg.window = Duration::from_millis(2_500);
        cfg.report_interval = Duration::from_millis(500);
        cfg.reason = RedirectReason::ServerMoved;
        cfg.seed = 42;
        cfg.rebalance = Some(RebalanceConfig {
            threshold: 300.0,
            cooldown: Duration::from_millis(600),
            ..RebalanceConfig::default()
        });
        cfg.mover = MoverKind::MosquittoPlugin;
        cfg.token = Some("ab12".into());
        cfg
    }

    /// The command line, parsed by the real CLI into the dispatcher's own arguments.
    fn parsed(command: &[String]) -> crate::dispatcher::Args {
        let mut args = vec!["mqdispatch".to_owned()];
        args.extend(command.iter().skip(1).cloned());
        let cli = <crate::cli::Cli as clap::Parser>::try_parse_from(&args)
            .unwrap_or_else(|e| panic!("{}: {e}", args.join(" ")));
        match cli.command {
            crate::cli::Command::Dispatcher(a) => *a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_command_line_configures_what_the_in_process_one_would_be() {
        let cfg = configured();
        let ip: IpAddr = "198.18.0.14".parse().unwrap();
        let command = dispatcher_command("/c/mqdispatch", &cfg, ip).unwrap();
        assert_eq!(command[..2], ["/c/mqdispatch", "dispatcher"]);
        let a = parsed(&command);
        assert_eq!(a.listen.to_string(), "198.18.0.14:0");
        assert_eq!(a.report_listen.unwrap().to_string(), "198.18.0.14:0");
        assert_eq!(a.brokers, cfg.brokers);
        assert_eq!(
            (a.policy, a.metric, a.subscriber_policy, a.unhinted),
            (cfg.policy, cfg.metric, cfg.subscriber_policy, cfg.unhinted)
        );
        assert_eq!((a.window, a.interval), (cfg.window, cfg.report_interval));
        assert_eq!(RedirectReason::from(a.reason), cfg.reason);
        assert_eq!(a.max_connections, cfg.max_connections);
        assert_eq!(a.handshake_timeout, cfg.handshake_timeout);
        assert_eq!(a.seed, 42);
        assert_eq!(a.rebalance, cfg.rebalance);
        assert_eq!(a.mover, cfg.mover);
        assert_eq!(a.token.as_deref(), Some("ab12"));
        assert_eq!(a.events_out.as_deref(), Some(std::path::Path::new("-")));

        let mut plain = configured();
        plain.rebalance = None;
        let a = parsed(&dispatcher_command("/c/mqdispatch", &plain, ip).unwrap());
        assert_eq!(a.rebalance, None);
    }

    #[test]
    fn what_a_remote_dispatcher_cannot_do_is_refused() {
        let ip: IpAddr = "198.18.0.14".parse().unwrap();
        let mut tls = configured();
        tls.brokers[0].tls_addr = Some("198.18.0.11:8883".into());
        let e = dispatcher_command("m", &tls, ip).unwrap_err();
        assert!(e.to_string().contains("no TLS port"), "{e}");
    }

    #[test]
    fn stream_times_move_onto_this_machine_s_clock() {
        let moved = MoveRecord {
            t_ms: 10_000,
            client_id: "c".into(),
            from: "b1".into(),
            to: "b2".into(),
            rate_msgs_per_s: 1.0,
            outcome: rebalance::Outcome::Takeover,
            role: crate::dispatcher::Role::Publisher,
        };
        match on_local_clock(StreamEvent::Move(moved), 2_000) {
            StreamEvent::Move(m) => assert_eq!(m.t_ms, 9_998),
            other => panic!("{other:?}"),
        }
        match on_local_clock(StreamEvent::Fed { t_ms: 10_000 }, -3_000) {
            StreamEvent::Fed { t_ms } => assert_eq!(t_ms, 10_003),
            other => panic!("{other:?}"),
        }
        let ended = StreamEvent::Ended { cpu_us: 7 };
        assert_eq!(on_local_clock(ended.clone(), 5_000), ended);
    }
}
