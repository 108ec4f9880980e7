//! The dispatcher: answers every MQTT v5 CONNECT with CONNACK 0x9C/0x9D and the Server Reference
//! of the broker a [`Policy`] chose from the load agents report; then closes.
//!
//! - [`listener`]: backlog-4096 listener, connection cap, one task per client.
//! - [`connection`]: one client's handshake (timeout, size cap, v5 / legacy / malformed).
//! - [`placer`]: the shared state behind a short lock; precomputed answers.
//! - [`load_table`]: window averages, liveness, predicted (pending) load.
//! - [`policy`]: the placement policies, pure functions of a load-table snapshot.
//! - [`reports`]: the agents' report port ([`report_slots`]: who may hold its slots).
//! - [`source`], [`prometheus`]: loads from a Prometheus server's instant query instead.
//! - [`metrics`]: `/metrics` (`--metrics-listen`).  [`events`]: `--events` CSV.
//! - [`tls`]: the TLS client port.
//! - [`rebalance`]: live rebalancing of connected clients (opt-in, `--rebalance`).

pub mod connection;
pub mod events;
pub mod listener;
pub mod load_table;
pub mod metrics;
pub mod placer;
pub mod policy;
pub mod prometheus;
pub mod rebalance;
pub mod report_slots;
pub mod reports;
pub mod source;
pub mod tls;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use listener::bind_listener;
pub use source::{FedBy, LoadSource, PrometheusSource, SourceArg, Stale};

use crate::InputError;
use crate::proto::{self, RedirectReason};

/// A broker clients may be sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerEntry {
    pub id: String,
    /// `host:port`, sent verbatim as the Server Reference.
    pub addr: String,
    /// `host:port` of the broker's TLS listener: the Server Reference for clients that came to
    /// the dispatcher over TLS.
    pub tls_addr: Option<String>,
}

impl std::str::FromStr for BrokerEntry {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let form = || {
            format!(
                "`{text}`: expected ID=HOST:PORT[,tls=HOST:PORT], e.g. b1=127.0.0.1:1884 or \
                 b1=127.0.0.1:1884,tls=127.0.0.1:8884"
            )
        };
        let (id, rest) = text.split_once('=').ok_or_else(form)?;
        if id.is_empty() {
            return Err(form());
        }
        let (addr, tls_addr) = match rest.split_once(',') {
            None => (rest, None),
            Some((addr, tls)) => (addr, Some(tls.strip_prefix("tls=").ok_or_else(form)?)),
        };
        for a in std::iter::once(addr).chain(tls_addr) {
            a.parse::<crate::addr::HostPort>()
                .map_err(|e| format!("broker {id}: {e}"))?;
        }
        Ok(Self {
            id: id.to_owned(),
            addr: addr.to_owned(),
            tls_addr: tls_addr.map(str::to_owned),
        })
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Live brokers in turn.
    RoundRobin,
    /// A live broker uniformly at random.
    Random,
    /// Fewest clients placed by this dispatcher.
    LeastConnections,
    /// Lowest window average of the metric (the paper; ties → first broker).
    LeastCpu,
    /// Best of two random live brokers by metric + pending load.
    TwoChoices,
    /// Lowest window average + predicted load of clients not yet in the samples (burst-safe).
    LeastLoad,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// `cpu_pct` (the paper).
    Cpu,
    /// `msgs_in_per_s`, broker-side received messages per second.
    MsgRate,
    /// `connections` reported by the agent.
    Connections,
    /// Mean of cpu and msg-rate, each as a share of the busiest live broker's value.
    Composite,
}

#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    pub brokers: Vec<BrokerEntry>,
    pub policy: Policy,
    pub metric: Metric,
    /// Moving-average window over the reports' arrival times (the paper: 5 s).
    pub window: Duration,
    /// The agents' sampling interval; a broker silent for 3 of them is down.
    pub report_interval: Duration,
    pub reason: RedirectReason,
    pub max_connections: usize,
    /// Time a client has to send its whole CONNECT (and to take its CONNACK).
    pub handshake_timeout: Duration,
    pub max_packet_bytes: u32,
    /// Shared secret every report must carry, when set.
    pub token: Option<String>,
    /// The trial seed: `random` and `two-choices` draw from its dispatcher stream
    /// ([`crate::seeds`]), independent of the arrival order drawn from the same seed.
    pub seed: u64,
    /// Live rebalancing of connected clients, when set.
    pub rebalance: Option<rebalance::RebalanceConfig>,
    /// How the rebalancer moves a client (per broker kind).
    pub mover: rebalance::MoverKind,
    /// Agents' reports (default) or a Prometheus query every `report_interval`.
    pub load_source: LoadSource,
    /// Set to `true` once every broker has a sample: an embedding harness waits for it so that
    /// no client is placed on a broker the dispatcher knows nothing about.
    pub fed: Option<Arc<tokio::sync::watch::Sender<bool>>>,
}

impl DispatcherConfig {
    pub fn new(brokers: Vec<BrokerEntry>, policy: Policy) -> Self {
        Self {
            brokers,
            policy,
            metric: Metric::Cpu,
            window: Duration::from_secs(5),
            report_interval: Duration::from_secs(1),
            reason: RedirectReason::UseAnotherServer,
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(3),
            max_packet_bytes: proto::DEFAULT_MAX_CONNECT_BYTES,
            token: None,
            seed: 0,
            rebalance: None,
            mover: rebalance::MoverKind::Takeover,
            load_source: LoadSource::Reports,
            fed: None,
        }
    }

    fn validate(&self) -> Result<(), InputError> {
        if self.brokers.is_empty() {
            return Err(InputError("no brokers: give at least one --broker".into()));
        }
        let mut seen = HashSet::new();
        for b in &self.brokers {
            if !seen.insert(b.id.as_str()) {
                return Err(InputError(format!("broker id `{}` given twice", b.id)));
            }
        }
        if self.max_connections == 0 {
            return Err(InputError("--max-connections must be at least 1".into()));
        }
        if self.report_interval.is_zero() || self.window.is_zero() {
            return Err(InputError(
                "--interval and --window must be above zero".into(),
            ));
        }
        if let Some(r) = &self.rebalance {
            r.validate().map_err(InputError)?;
        }
        self.load_source
            .validate(self.metric, self.report_interval)?;
        Ok(())
    }
}

/// One placement, as sent to the `decisions` channel of [`run`].
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// [`crate::now_ms`] when chosen.
    pub t_ms: u64,
    pub client_id: String,
    /// `None`: no live broker, 0x88 was sent.
    pub broker: Option<String>,
    /// The metric's window average of every broker when chosen, config order.
    pub loads: Vec<(String, f64)>,
    /// The predicted (pending) load of every broker when chosen, config order, in the metric's
    /// unit: clients placed there that its samples cannot show yet. `least-load` and
    /// `two-choices` chose by `loads + predicted`; the other policies ignore it.
    pub predicted: Vec<(String, f64)>,
    /// Age of every broker's newest sample when chosen (ms, config order; `None` before its
    /// first): how old the information behind `loads` was ([`load_table::LoadTable::sample_ages_ms`]).
    pub sample_ages_ms: Vec<(String, Option<u64>)>,
    /// What fed `loads`: agents' reports, Prometheus, or Prometheus's last answer held.
    pub fed_by: FedBy,
}

/// Serves clients on `listener` (and agents on `report_listener`) until `cancel`; then waits for
/// the connections in flight, each bounded by the handshake timeout.
pub async fn run(
    listener: TcpListener,
    report_listener: Option<TcpListener>,
    cfg: DispatcherConfig,
    decisions: Option<UnboundedSender<Decision>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    run_with(
        listener,
        report_listener,
        cfg,
        decisions,
        Extras::default(),
        cancel,
    )
    .await
}

/// What a dispatcher may serve or report beyond its client and report ports.
#[derive(Default)]
pub struct Extras {
    /// TLS clients, served beside the plain ones.
    pub tls: Option<tls::TlsListener>,
    /// `GET /metrics`.
    pub metrics: Option<TcpListener>,
    /// Where the rebalancer's moves go (if `cfg.rebalance` is set).
    pub moves: Option<UnboundedSender<rebalance::MoveRecord>>,
}

/// [`run`], with TLS clients, `/metrics` and the rebalancer's moves as `extras` says.
pub async fn run_with(
    listener: TcpListener,
    report_listener: Option<TcpListener>,
    cfg: DispatcherConfig,
    decisions: Option<UnboundedSender<Decision>>,
    extras: Extras,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    cfg.validate()?;
    if extras.tls.is_some() {
        tls::check_brokers(&cfg.brokers)?;
    }
    if let Some(rl) = &report_listener {
        reports::checked_bind_addr(rl.local_addr()?, cfg.token.as_deref())?;
    }
    let placer = Arc::new(placer::Placer::new(&cfg, decisions));
    let tracker = TaskTracker::new();
    if let Some(rl) = report_listener {
        let port =
            reports::ReportPort::new(placer.clone(), cfg.token.as_deref(), cfg.report_interval);
        tracker.spawn(port.accept_loop(rl, tracker.clone(), cancel.clone()));
    }
    if let Some(rcfg) = &cfg.rebalance {
        let mover = rebalance::Mover::connect(cfg.mover, &cfg.brokers)
            .await
            .context("rebalancer: cannot reach the brokers' move mechanism")?;
        let rebalancer = rebalance::Rebalancer {
            planner: rebalance::Planner::new(rcfg.clone()),
            mover,
            brokers: cfg.brokers.clone(),
            reason: cfg.reason,
            interval: cfg.report_interval,
            moves: extras.moves,
        };
        tracing::info!(config = ?rcfg, mover = ?cfg.mover, "rebalancing on");
        tracker.spawn(rebalancer.run(placer.clone(), cancel.clone()));
    }
    if let LoadSource::Prometheus(source) = &cfg.load_source {
        let poll = prometheus::poll(
            source.clone(),
            placer.clone(),
            cfg.metric,
            cfg.report_interval,
            cancel.clone(),
        );
        tracker.spawn(poll);
    }
    if let Some(ml) = extras.metrics {
        let exposition = Arc::new(metrics::PlacerExposition(placer.clone()));
        let cancel = cancel.clone();
        tracker.spawn(async move {
            if let Err(error) = crate::metrics::serve(ml, exposition, cancel).await {
                tracing::warn!(%error, "metrics endpoint stopped");
            }
        });
    }
    tracing::info!(
        policy = ?cfg.policy, metric = ?cfg.metric, brokers = cfg.brokers.len(), "dispatcher up"
    );
    if let Some(t) = extras.tls {
        let (placer, tracker_, cancel) = (placer.clone(), tracker.clone(), cancel.clone());
        let cap = cfg.max_connections;
        tracker.spawn(async move {
            let acceptor = Some(t.acceptor);
            listener::accept_loop(t.listener, placer, cap, acceptor, &tracker_, cancel).await;
        });
    }
    let cap = cfg.max_connections;
    listener::accept_loop(listener, placer, cap, None, &tracker, cancel).await;
    tracker.close();
    tracker.wait().await;
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReasonArg {
    /// 0x9C Use another server.
    UseAnotherServer,
    /// 0x9D Server moved.
    ServerMoved,
}

impl From<ReasonArg> for RedirectReason {
    fn from(r: ReasonArg) -> Self {
        match r {
            ReasonArg::UseAnotherServer => RedirectReason::UseAnotherServer,
            ReasonArg::ServerMoved => RedirectReason::ServerMoved,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Client port, e.g. 0.0.0.0:1883 (port 0: any free port, printed on stdout).
    #[arg(long)]
    pub listen: SocketAddr,
    /// A broker clients may be sent to (repeat for each); HOST:PORT is the Server Reference,
    /// `tls=HOST:PORT` the one for clients of the TLS port.
    #[arg(
        long = "broker",
        value_name = "ID=HOST:PORT[,tls=HOST:PORT]",
        required = true
    )]
    pub brokers: Vec<BrokerEntry>,
    #[arg(long, value_enum)]
    pub policy: Policy,
    #[arg(long, value_enum, default_value_t = Metric::Cpu)]
    pub metric: Metric,
    /// Port for the agents' load reports (loopback unless a token is set).
    #[arg(long)]
    pub report_listen: Option<SocketAddr>,
    /// Moving-average window of the load reports.
    #[arg(long, default_value = "5s", value_parser = crate::duration::parse_arg)]
    pub window: Duration,
    /// The agents' report interval; a broker silent for 3 intervals is down.
    #[arg(long, default_value = "1s", value_parser = crate::duration::parse_arg)]
    pub interval: Duration,
    #[arg(long, value_enum, default_value_t = ReasonArg::UseAnotherServer)]
    pub reason: ReasonArg,
    /// Write every placement to this CSV file.
    #[arg(long, value_name = "FILE.csv")]
    pub events: Option<PathBuf>,
    /// Shared secret the load reports must carry.
    #[arg(long, env = "MQDISPATCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Concurrent client connections at most; more are closed at once.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Time a client has to send its CONNECT.
    #[arg(long, default_value = "3s", value_parser = crate::duration::parse_arg)]
    pub handshake_timeout: Duration,
    /// Trial seed of the `random` and `two-choices` policies (they draw from a stream derived
    /// from it, independent of the arrival order `load --seed` draws from the same number).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub tls: tls::TlsArgs,
    /// Move connected clients when the brokers' msg rates stay unequal: `on`, or
    /// `threshold=1000,hysteresis=3,cooldown=6s,max-moves-per-s=2,hold=60s` (any subset).
    #[arg(long, value_name = "KEY=VALUE,...", value_parser = rebalance::parse_arg)]
    pub rebalance: Option<rebalance::RebalanceConfig>,
    /// How a client is moved: `takeover` (any broker; the client comes back through the
    /// dispatcher) or `mosquitto-plugin` (DISCONNECT 0x9C + Server Reference).
    #[arg(long, value_enum, default_value_t = rebalance::MoverKind::Takeover)]
    pub mover: rebalance::MoverKind,
    /// Serve `GET /metrics` (Prometheus text format) here, e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Where broker loads come from: agents' reports, or a Prometheus query every --interval.
    #[arg(long, value_enum, default_value_t = SourceArg::Reports)]
    pub load_source: SourceArg,
    /// Prometheus server for `--load-source prometheus`, e.g. http://127.0.0.1:9090.
    #[arg(long, value_name = "URL")]
    pub prometheus: Option<String>,
    /// PromQL instant query: one series per broker, the broker id in --broker-label, the value
    /// in the unit of --metric; e.g. mqdispatch_agent_cpu_percent.
    #[arg(long, value_name = "PROMQL")]
    pub query: Option<String>,
    /// The label of each answer series that names its broker.
    #[arg(long, value_name = "LABEL", default_value = "broker")]
    pub broker_label: String,
    /// PromQL whose series give, per broker (same label), when its value was measured, in Unix
    /// seconds: decisions then log the true age of their inputs (scrape delay included); e.g.
    /// mqdispatch_agent_sample_timestamp_seconds. Without it a value dates from the query.
    #[arg(long, value_name = "PROMQL")]
    pub prometheus_time_query: Option<String>,
    /// A broker missing from the answer for 3 intervals: down (default) or kept at its last
    /// known load.
    #[arg(long, value_enum, default_value_t = Stale::Down)]
    pub stale: Stale,
}

/// `--load-source` and its flags, checked together.
fn load_source(args: &Args) -> Result<LoadSource, InputError> {
    match (args.load_source, &args.prometheus, &args.query) {
        (SourceArg::Reports, None, None) if args.prometheus_time_query.is_none() => {
            Ok(LoadSource::Reports)
        }
        (SourceArg::Reports, _, _) => Err(InputError(
            "--prometheus, --query and --prometheus-time-query need --load-source prometheus"
                .into(),
        )),
        (SourceArg::Prometheus, Some(url), Some(query)) => {
            if args.report_listen.is_some() {
                return Err(InputError(
                    "--report-listen and --load-source prometheus exclude each other: loads \
                     come from one source"
                        .into(),
                ));
            }
            Ok(LoadSource::Prometheus(
                PrometheusSource::new(url, query, &args.broker_label, args.stale)?
                    .with_time_query(args.prometheus_time_query.as_deref())?,
            ))
        }
        (SourceArg::Prometheus, _, _) => Err(InputError(
            "--load-source prometheus needs --prometheus URL and --query PROMQL, e.g. \
             --prometheus http://127.0.0.1:9090 --query mqdispatch_agent_cpu_percent"
                .into(),
        )),
    }
}

pub async fn cli_main(args: Args) -> anyhow::Result<()> {
    let load_source = load_source(&args)?;
    let mut cfg = DispatcherConfig::new(args.brokers, args.policy);
    cfg.metric = args.metric;
    cfg.window = args.window;
    cfg.report_interval = args.interval;
    cfg.reason = args.reason.into();
    cfg.max_connections = args.max_connections;
    cfg.handshake_timeout = args.handshake_timeout;
    cfg.token = args.token.filter(|t| !t.is_empty());
    cfg.seed = args.seed;
    cfg.rebalance = args.rebalance;
    cfg.mover = args.mover;
    cfg.load_source = load_source;
    cfg.validate()?;
    if let Some(addr) = args.report_listen {
        reports::checked_bind_addr(addr, cfg.token.as_deref())?;
    }

    let listener =
        bind_listener(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    let metrics_listener = match args.metrics_listen {
        Some(addr) => Some(crate::metrics::bind(addr).await?),
        None => None,
    };
    let report_listener = match args.report_listen {
        Some(addr) => Some(
            bind_listener(addr).with_context(|| format!("cannot listen on {addr} for reports"))?,
        ),
        None => None,
    };
    let tls_listener = args.tls.bind(&cfg.brokers)?;
    // Before the announcement: a signal sent as soon as `listening on` is read stops us cleanly.
    let cancel = CancellationToken::new();
    let _signals = crate::shutdown::cancel_on_signal(
        &cancel,
        |signal| tracing::info!(%signal, "shutting down"),
    )?;
    println!("listening on {}", listener.local_addr()?);
    if let Some(rl) = &report_listener {
        println!("reports on {}", rl.local_addr()?);
    }
    if let Some(t) = &tls_listener {
        println!("tls on {}", t.listener.local_addr()?);
    }
    if let Some(ml) = &metrics_listener {
        println!("metrics on {}", ml.local_addr()?);
    }

    let ids: Vec<String> = cfg.brokers.iter().map(|b| b.id.clone()).collect();
    let (decisions, writer) = match &args.events {
        Some(path) => {
            let (tx, handle) = events::csv_writer(path, &ids, crate::now_ms())?;
            (Some(tx), Some(handle))
        }
        None => (None, None),
    };

    run_with(
        listener,
        report_listener,
        cfg,
        decisions,
        Extras {
            tls: tls_listener,
            metrics: metrics_listener,
            moves: None,
        },
        cancel,
    )
    .await?;
    if let Some(handle) = writer {
        handle.await.context("events writer")??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_entries_parse_and_refuse_bad_forms() {
        let b: BrokerEntry = "b1=127.0.0.1:1884".parse().unwrap();
        assert_eq!((b.id.as_str(), b.addr.as_str()), ("b1", "127.0.0.1:1884"));
        let b: BrokerEntry = "b2=broker.example:1883".parse().unwrap();
        assert_eq!((b.addr.as_str(), b.tls_addr), ("broker.example:1883", None));
        let b: BrokerEntry = "b3=h:1883,tls=h:8883".parse().unwrap();
        assert_eq!(
            (b.addr.as_str(), b.tls_addr.as_deref()),
            ("h:1883", Some("h:8883"))
        );
        for bad in [
            "b1",
            "=h:1",
            "b1=h",
            "b1=:1883",
            "b1=h:99999",
            "b1=::1:1883",
            "b1=h:1,h:2",
            "b1=h:1,tls=h",
            "b1=h:1,tls=",
        ] {
            assert!(bad.parse::<BrokerEntry>().is_err(), "{bad}");
        }
    }

    #[test]
    fn config_refuses_duplicates_and_empty() {
        let b = |id: &str| BrokerEntry {
            id: id.into(),
            addr: "h:1".into(),
            tls_addr: None,
        };
        assert!(
            DispatcherConfig::new(vec![], Policy::LeastCpu)
                .validate()
                .is_err()
        );
        assert!(
            DispatcherConfig::new(vec![b("x"), b("x")], Policy::LeastCpu)
                .validate()
                .is_err()
        );
        assert!(
            DispatcherConfig::new(vec![b("x"), b("y")], Policy::LeastCpu)
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn policy_names_match_the_design() {
        use clap::ValueEnum;
        let names: Vec<String> = Policy::value_variants()
            .iter()
            .map(|p| p.to_possible_value().unwrap().get_name().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "round-robin",
                "random",
                "least-connections",
                "least-cpu",
                "two-choices",
                "least-load"
            ]
        );
        let m: Metric = serde_json::from_str("\"msg-rate\"").unwrap();
        assert_eq!(m, Metric::MsgRate);
    }
}
