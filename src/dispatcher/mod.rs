//! The dispatcher: answers every MQTT v5 CONNECT with CONNACK 0x9C/0x9D and the Server Reference
//! of the broker a [`Policy`] chose from the load agents report; then closes.
//!
//! - [`listener`]: backlog-4096 listener, connection cap, one task per client.
//! - [`connection`]: one client's handshake (timeout, size cap, v5 / legacy / malformed).
//! - [`first_request`]: an accepted client without a hint: its first SUBSCRIBE or PUBLISH.
//! - [`groups`]: subscriber policies (pure) and the members placed per group.
//! - [`placer`]: the shared state behind a short lock; precomputed answers.
//! - [`load_table`]: window averages, liveness, predicted (pending) load.
//! - [`policy`]: the placement policies, pure functions of a load-table snapshot.
//! - [`reports`]: the agents' report port ([`report_slots`]: who may hold its slots).
//! - [`source`], [`prometheus`]: loads from a Prometheus server's instant query instead.
//! - [`metrics`]: `/metrics` (`--metrics-listen`).  [`events`]: `--events` CSV.
//! - [`stream`]: `--events-out` JSON lines (what a runner reads from a remote dispatcher).
//! - [`tls`]: the TLS client port.
//! - [`rebalance`]: live rebalancing of connected clients (opt-in, `--rebalance`).
//! - `cli`: the `mqdispatch dispatcher` command line and its wiring ([`Args`], [`cli_main`]).

mod cli;
pub mod connection;
pub mod events;
pub mod first_request;
pub mod groups;
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
pub mod stream;
pub mod tls;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use cli::{Args, ReasonArg, cli_main};
pub use groups::SubscriberPolicy;
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
    /// How subscribers (clients naming a filter) are spread: independent of `policy`.
    pub subscriber_policy: SubscriberPolicy,
    /// What a v5 client that names no filter and declares no rate gets.
    pub unhinted: Unhinted,
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
            subscriber_policy: SubscriberPolicy::default(),
            unhinted: Unhinted::default(),
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

/// What the dispatcher does with a v5 client whose CONNECT gives no hint (no `subscribe` filter,
/// no declared rate).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Unhinted {
    /// A publisher: CONNACK 0x9C/0x9D to the `--policy` choice (the paper's method).
    #[default]
    Redirect,
    /// CONNACK 0x00, then its first SUBSCRIBE (a subscriber) or PUBLISH (a publisher) decides:
    /// DISCONNECT 0x9C/0x9D to the subscriber or publisher policy's choice.
    Accept,
}

/// Whom a placement was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Publisher,
    Subscriber,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Publisher => "publisher",
            Role::Subscriber => "subscriber",
        }
    }
}

/// One placement, as sent to the `decisions` channel of [`run`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// Placed by `--policy` (publisher) or `--subscriber-policy` (subscriber).
    pub role: Role,
    /// A subscriber's group: the filter it was placed by.
    pub group: Option<String>,
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
            members: rcfg
                .members
                .then(|| rebalance::MemberPlanner::new(rcfg.clone())),
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
