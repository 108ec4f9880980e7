//! The agent's `/metrics` (`--metrics-listen`): the samples it sends the dispatcher, labelled
//! by broker id, so a Prometheus server can scrape them and a dispatcher can query them
//! (`--load-source prometheus --query mqdispatch_agent_cpu_percent`).
//!
//! - `mqdispatch_agent_cpu_percent{broker}`: CPU over the last interval (as `cpu_pct`);
//! - `mqdispatch_agent_msgs_in_per_second{broker}`: broker-side received msg/s, when known;
//! - `mqdispatch_agent_connections{broker}`: clients connected to the broker, when known;
//! - `mqdispatch_agent_samples_total{broker}`: samples taken;
//! - `mqdispatch_agent_sample_timestamp_seconds{broker}`: when the exposed sample was measured
//!   (Unix seconds, the report's `t_ms`), so a dispatcher fed through Prometheus can tell how old
//!   its inputs are (`--prometheus-time-query`).
//!
//! While the broker refuses connections (`--probe`) the gauges are removed, as its reports
//! stop: the series goes stale in Prometheus and a dispatcher fed by it takes the broker out.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::load_report::LoadReport;

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BrokerLabel {
    broker: String,
}

#[derive(Debug)]
pub struct AgentMetrics {
    registry: Registry,
    cpu: Family<BrokerLabel, FloatGauge>,
    rate: Family<BrokerLabel, FloatGauge>,
    connections: Family<BrokerLabel, Gauge>,
    samples: Family<BrokerLabel, Counter>,
    sampled_at: Family<BrokerLabel, FloatGauge>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mqdispatch_agent");
        let cpu = Family::default();
        registry.register(
            "cpu_percent",
            "Broker CPU over the last interval, percent of the measured capacity",
            cpu.clone(),
        );
        let rate = Family::default();
        registry.register(
            "msgs_in_per_second",
            "Messages the broker received per second over the last interval",
            rate.clone(),
        );
        let connections = Family::default();
        registry.register(
            "connections",
            "Clients connected to the broker",
            connections.clone(),
        );
        let samples = Family::default();
        registry.register("samples", "Samples taken", samples.clone());
        let sampled_at = Family::default();
        registry.register(
            "sample_timestamp_seconds",
            "When the exposed sample was measured, Unix seconds",
            sampled_at.clone(),
        );
        Self {
            registry,
            cpu,
            rate,
            connections,
            samples,
            sampled_at,
        }
    }
}

impl AgentMetrics {
    /// Exposes one sample (the same values the report carries).
    pub fn observe(&self, report: &LoadReport) {
        let label = BrokerLabel {
            broker: report.broker.clone(),
        };
        self.cpu.get_or_create(&label).set(report.cpu_pct);
        match report.msgs_in_per_s {
            Some(r) => {
                self.rate.get_or_create(&label).set(r);
            }
            None => {
                self.rate.remove(&label);
            }
        }
        match report.connections {
            Some(c) => {
                self.connections
                    .get_or_create(&label)
                    .set(i64::try_from(c).unwrap_or(i64::MAX));
            }
            None => {
                self.connections.remove(&label);
            }
        }
        self.samples.get_or_create(&label).inc();
        self.sampled_at
            .get_or_create(&label)
            .set(report.t_ms as f64 / 1000.0);
    }

    /// Removes the load gauges (the broker refuses connections: no load to show).
    pub fn withdraw(&self) {
        self.cpu.clear();
        self.rate.clear();
        self.connections.clear();
        self.sampled_at.clear();
    }
}

impl crate::metrics::Exposition for AgentMetrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Exposition as _;

    #[test]
    fn exposes_the_report_values_by_broker() {
        let m = AgentMetrics::default();
        m.observe(&LoadReport {
            broker: "b1".into(),
            t_ms: 1_700_000_000_250,
            cpu_pct: 37.5,
            msgs_in_per_s: Some(14012.0),
            connections: Some(5),
            token: None,
        });
        let text = m.render();
        for line in [
            "mqdispatch_agent_cpu_percent{broker=\"b1\"} 37.5",
            "mqdispatch_agent_msgs_in_per_second{broker=\"b1\"} 14012.0",
            "mqdispatch_agent_connections{broker=\"b1\"} 5",
            "mqdispatch_agent_samples_total{broker=\"b1\"} 1",
            "mqdispatch_agent_sample_timestamp_seconds{broker=\"b1\"} 1700000000.25",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        m.withdraw();
        let text = m.render();
        assert!(!text.contains("cpu_percent{"), "{text}");
        assert!(!text.contains("sample_timestamp_seconds{"), "{text}");
    }
}
