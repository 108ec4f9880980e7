//! The dispatcher's `/metrics` (`--metrics-listen`): what it answered, how fast, and the load it
//! currently sees per broker. Names (README "Prometheus"):
//!
//! - `mqdispatch_redirects_total{broker,reason}`: CONNACK redirects sent (reason
//!   `use_another_server` = 0x9C, `server_moved` = 0x9D);
//! - `mqdispatch_refusals_total{reason}`: `server_unavailable` (0x88, no live broker),
//!   `legacy_protocol` (MQTT 3.x client), `malformed` (bad first packet), `handshake_timeout`,
//!   `over_cap` (closed at accept: too many open connections);
//! - `mqdispatch_handshake_seconds`: accept to CONNACK written, per answered client;
//! - `mqdispatch_open_connections`: client connections being served;
//! - per broker: `mqdispatch_broker_load` (window average of the metric),
//!   `mqdispatch_broker_predicted_load`, `mqdispatch_broker_up` (1/0) and
//!   `mqdispatch_broker_report_age_seconds` (absent before its first sample);
//! - the load source: `mqdispatch_load_source_info{source}`, and with `--load-source prometheus`
//!   `mqdispatch_prometheus_up` (1 when the last query answered) and
//!   `mqdispatch_prometheus_queries_total{outcome="ok|error"}`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use super::placer::Placer;
use crate::proto::RedirectReason;

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RedirectLabels {
    broker: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct BrokerLabel {
    pub broker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Why a client got no redirect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    ServerUnavailable,
    LegacyProtocol,
    Malformed,
    HandshakeTimeout,
    OverCap,
}

impl Refusal {
    const ALL: [Refusal; 5] = [
        Refusal::ServerUnavailable,
        Refusal::LegacyProtocol,
        Refusal::Malformed,
        Refusal::HandshakeTimeout,
        Refusal::OverCap,
    ];

    fn label(self) -> &'static str {
        match self {
            Refusal::ServerUnavailable => "server_unavailable",
            Refusal::LegacyProtocol => "legacy_protocol",
            Refusal::Malformed => "malformed",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::OverCap => "over_cap",
        }
    }
}

/// Every series the dispatcher exposes; counters are cloned handles (no lock on the hot path).
#[derive(Debug)]
pub struct DispatcherMetrics {
    registry: Registry,
    /// Redirect counter per broker, config order.
    redirects: Vec<Counter>,
    refusals: Vec<(Refusal, Counter)>,
    pub handshake: Histogram,
    pub open_connections: Gauge,
    pub(super) broker_load: Family<BrokerLabel, FloatGauge>,
    pub(super) broker_predicted: Family<BrokerLabel, FloatGauge>,
    pub(super) broker_up: Family<BrokerLabel, Gauge>,
    pub(super) broker_age: Family<BrokerLabel, FloatGauge>,
    pub prometheus_up: Gauge,
    prometheus_queries: Family<OutcomeLabel, Counter>,
}

impl DispatcherMetrics {
    pub fn new(ids: &[String], reason: RedirectReason, source: &'static str) -> Self {
        let mut registry = Registry::with_prefix("mqdispatch");
        let redirect_family = Family::<RedirectLabels, Counter>::default();
        let reason = match reason {
            RedirectReason::UseAnotherServer => "use_another_server",
            RedirectReason::ServerMoved => "server_moved",
        };
        let redirects = ids
            .iter()
            .map(|id| {
                redirect_family
                    .get_or_create(&RedirectLabels {
                        broker: id.clone(),
                        reason,
                    })
                    .clone()
            })
            .collect();
        registry.register("redirects", "CONNACK redirects sent", redirect_family);
        let refusal_family = Family::<ReasonLabel, Counter>::default();
        let refusals = Refusal::ALL
            .iter()
            .map(|&r| {
                let labels = ReasonLabel { reason: r.label() };
                (r, refusal_family.get_or_create(&labels).clone())
            })
            .collect();
        registry.register(
            "refusals",
            "Clients not redirected, by reason",
            refusal_family,
        );
        // 50 µs .. ~0.8 s.
        let handshake = Histogram::new(exponential_buckets(50e-6, 2.0, 15));
        registry.register(
            "handshake_seconds",
            "Time from accept to CONNACK written",
            handshake.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections being served",
            open_connections.clone(),
        );
        let broker_load = Family::default();
        registry.register(
            "broker_load",
            "Window average of the placement metric per broker",
            broker_load.clone(),
        );
        let broker_predicted = Family::default();
        registry.register(
            "broker_predicted_load",
            "Predicted load of clients placed that the samples cannot show yet",
            broker_predicted.clone(),
        );
        let broker_up = Family::default();
        registry.register(
            "broker_up",
            "1 if the broker gets new clients, 0 if its load source has gone stale",
            broker_up.clone(),
        );
        let broker_age = Family::default();
        registry.register(
            "broker_report_age_seconds",
            "Seconds since the broker's last load sample",
            broker_age.clone(),
        );
        let info = Family::<SourceLabel, Gauge>::default();
        info.get_or_create(&SourceLabel { source }).set(1);
        registry.register("load_source_info", "Where the loads come from", info);
        let prometheus_up = Gauge::default();
        let prometheus_queries = Family::<OutcomeLabel, Counter>::default();
        if source == "prometheus" {
            registry.register(
                "prometheus_up",
                "1 if the last Prometheus query answered, 0 while serving on last known loads",
                prometheus_up.clone(),
            );
            for outcome in ["ok", "error"] {
                let _ = prometheus_queries.get_or_create(&OutcomeLabel { outcome });
            }
            registry.register(
                "prometheus_queries",
                "Prometheus instant queries, by outcome",
                prometheus_queries.clone(),
            );
        }
        Self {
            registry,
            redirects,
            refusals,
            handshake,
            open_connections,
            broker_load,
            broker_predicted,
            broker_up,
            broker_age,
            prometheus_up,
            prometheus_queries,
        }
    }

    pub fn redirected(&self, broker: usize) {
        self.redirects[broker].inc();
    }

    pub fn refused(&self, why: Refusal) {
        if let Some((_, c)) = self.refusals.iter().find(|(r, _)| *r == why) {
            c.inc();
        }
    }

    pub fn prometheus_query(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.prometheus_queries
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        self.prometheus_up.set(i64::from(ok));
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// The `/metrics` view of a running dispatcher: per-broker gauges refreshed from the load table
/// at every scrape.
pub struct PlacerExposition(pub Arc<Placer>);

impl crate::metrics::Exposition for PlacerExposition {
    fn refresh(&self) {
        self.0.refresh_metrics();
    }

    fn registry(&self) -> &Registry {
        self.0.metrics.registry()
    }
}
