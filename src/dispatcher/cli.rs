//! `mqdispatch dispatcher`: its command line, and the wiring from flags to a running
//! [`super::run_with`] (load source, TLS port, metrics, events, rebalancing).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::{
    BrokerEntry, DispatcherConfig, Extras, LoadSource, Metric, Policy, PrometheusSource, SourceArg,
    Stale, SubscriberPolicy, Unhinted, bind_listener, events, rebalance, reports, run_with, stream,
    tls,
};
use crate::InputError;
use crate::proto::RedirectReason;

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
    /// How subscribers are placed (clients whose CONNECT carries the user property
    /// `subscribe` = a topic filter): by the brokers' inflow, or round-robin per group.
    #[arg(long, value_enum, default_value_t = SubscriberPolicy::Inflow)]
    pub subscriber_policy: SubscriberPolicy,
    /// A v5 client whose CONNECT gives no hint: `redirect` it as a publisher (CONNACK 0x9C), or
    /// `accept` it (CONNACK 0x00) and redirect it by its first SUBSCRIBE or PUBLISH
    /// (DISCONNECT 0x9C).
    #[arg(long, value_enum, default_value_t = Unhinted::Redirect)]
    pub unhinted: Unhinted,
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
    /// Every placement and move, when every broker first has a sample, and the CPU time used
    /// at the end, as JSON lines (`-`: stdout, after the `listening on` lines): what
    /// `mqdispatch run` reads from a dispatcher it started on another host.
    #[arg(long, value_name = "FILE.jsonl|-")]
    pub events_out: Option<PathBuf>,
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
    /// Move connected clients when the brokers' msg rates stay unequal (and shared-subscription
    /// members to where their messages arrive): `on`, or
    /// `threshold=1000,hysteresis=3,cooldown=6s,max-moves-per-s=2,hold=60s,publishers=on,members=on,
    /// member-threshold=250` (any subset).
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
    cfg.subscriber_policy = args.subscriber_policy;
    cfg.unhinted = args.unhinted;
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
    let (mut decisions, writer) = match &args.events {
        Some(path) => {
            let (tx, handle) = events::csv_writer(path, &ids, crate::now_ms())?;
            (Some(tx), Some(handle))
        }
        None => (None, None),
    };
    let mut moves = None;
    let stream = match &args.events_out {
        Some(path) => {
            let out: Box<dyn std::io::Write + Send> = match path.to_str() {
                Some("-") => Box::new(std::io::stdout()),
                _ => Box::new(
                    std::fs::File::create_new(path)
                        .with_context(|| format!("cannot create {}", path.display()))?,
                ),
            };
            let stream = stream::EventStream::start(out, decisions.take());
            decisions = Some(stream.decisions.clone());
            moves = Some(stream.moves.clone());
            cfg.fed = Some(stream.fed.clone());
            Some(stream)
        }
        None => None,
    };

    run_with(
        listener,
        report_listener,
        cfg,
        decisions,
        Extras {
            tls: tls_listener,
            metrics: metrics_listener,
            moves,
        },
        cancel,
    )
    .await?;
    if let Some(stream) = stream {
        stream.finish().await.context("--events-out")?;
    }
    if let Some(handle) = writer {
        handle.await.context("events writer")??;
    }
    Ok(())
}
