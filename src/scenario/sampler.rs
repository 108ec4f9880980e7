//! The scenario's `sampler:` block and a method's `source:` override: how often
//! brokers are sampled, over what window the dispatcher averages, what `cpu_pct` measures, and
//! whether the dispatcher hears the samples from the agents or through a Prometheus server.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::{Assignment, Checker};
use crate::InputError;
use crate::dispatcher::Metric;

/// `sampler.cpu`: the broker's own process (default), or the whole host from `/proc/stat`
/// as the paper measured it (meaningful when each broker has a host of its own).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CpuSampling {
    #[default]
    Process,
    Host,
}

/// `sampler.source` and a method's `source`: how the dispatcher learns the brokers' loads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadSourceKind {
    /// Agents report to the dispatcher over TCP (the paper's way).
    #[default]
    Agent,
    /// Agents expose `/metrics`; a Prometheus server started for the run scrapes them and the
    /// dispatcher queries it.
    Prometheus,
}

/// The checked `sampler:` block, durations scaled.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SamplerPlan {
    pub interval: Duration,
    pub window: Duration,
    pub cpu: CpuSampling,
    pub source: LoadSourceKind,
    pub scrape_interval: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSampler {
    #[serde(default)]
    interval: Option<Spanned<String>>,
    #[serde(default)]
    window: Option<Spanned<String>>,
    #[serde(default)]
    cpu: CpuSampling,
    #[serde(default)]
    source: LoadSourceKind,
    #[serde(default)]
    scrape_interval: Option<Spanned<String>>,
}

impl Checker<'_> {
    pub(super) fn sampler(
        &self,
        raw: Option<&Spanned<RawSampler>>,
        scale: f64,
    ) -> Result<SamplerPlan, InputError> {
        let mut plan = SamplerPlan {
            interval: Duration::from_secs(1).mul_f64(scale),
            window: Duration::from_secs(5).mul_f64(scale),
            cpu: CpuSampling::default(),
            source: LoadSourceKind::default(),
            scrape_interval: Duration::ZERO,
        };
        if let Some(s) = raw {
            let s = &s.value;
            plan.cpu = s.cpu;
            plan.source = s.source;
            if let Some(i) = &s.interval {
                plan.interval = self.duration(i, scale)?;
                if plan.interval < Duration::from_millis(50) {
                    return Err(
                        self.at(i, "sampler interval must be at least 50ms after time_scale")
                    );
                }
            }
            if let Some(w) = &s.window {
                plan.window = self.duration(w, scale)?;
                if plan.window < plan.interval {
                    return Err(self.at(w, "window must be at least one sampler interval"));
                }
            }
            if let Some(si) = &s.scrape_interval {
                plan.scrape_interval = self.duration(si, scale)?;
                // The dispatcher queries Prometheus every scrape interval: it refuses < 100ms.
                if plan.scrape_interval < Duration::from_millis(100) {
                    return Err(self.at(
                        si,
                        "scrape_interval must be at least 100ms after time_scale (e.g. 1s)",
                    ));
                }
            }
        }
        if plan.scrape_interval.is_zero() {
            plan.scrape_interval = plan.interval.max(Duration::from_millis(100));
        }
        Ok(plan)
    }

    /// A method's source: its own `source:`, else the scenario's; `dns-rr` has no dispatcher
    /// to feed, and Prometheus answers one value per broker (no two-valued `composite`).
    pub(super) fn method_source(
        &self,
        raw: Option<&Spanned<LoadSourceKind>>,
        assign: Assignment,
        default: LoadSourceKind,
    ) -> Result<LoadSourceKind, InputError> {
        match (assign, raw) {
            (Assignment::DnsRr, Some(s)) => Err(self.at(
                s,
                "dns-rr has no dispatcher to feed: `source` applies to assign: dispatcher",
            )),
            (Assignment::DnsRr, None) => Ok(LoadSourceKind::Agent),
            (Assignment::Dispatcher { metric, .. }, raw) => {
                let source = raw.map_or(default, |s| s.value);
                if source == LoadSourceKind::Prometheus && metric == Metric::Composite {
                    let msg = "metric composite needs agents' reports: with source prometheus \
                               use metric cpu, msg-rate or connections";
                    return Err(match raw {
                        Some(s) => self.at(s, msg),
                        None => InputError(format!("{}: {msg}", self.origin)),
                    });
                }
                Ok(source)
            }
        }
    }
}

impl super::Scenario {
    /// Whether any method runs a Prometheus server.
    pub fn uses_prometheus(&self) -> bool {
        self.methods
            .iter()
            .any(|m| m.source == LoadSourceKind::Prometheus)
    }
}

/// With a Prometheus-fed method, the `prometheus` binary must be installed (checked before
/// anything starts).
pub fn check_prometheus(scenario: &super::Scenario) -> Result<(), crate::prom_server::PromError> {
    if scenario.uses_prometheus() && crate::prom_server::find("prometheus").is_none() {
        return Err(crate::prom_server::PromError::NotInstalled);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(sampler: &str, method_extra: &str) -> Result<super::super::Scenario, InputError> {
        let yaml = format!(
            "name: t\nbrokers: {{ kind: embedded, count: 2 }}\n{sampler}\
             publishers:\n  - {{ name: p, count: 2, rate: 10, payload_bytes: 16, duration: 5s }}\n\
             arrival: {{ order: random, interval: 1s }}\n\
             methods:\n  - {{ name: d, assign: dispatcher, policy: least-cpu{method_extra} }}\n"
        );
        super::super::parse(&yaml, "t.yaml")
    }

    #[test]
    fn source_defaults_to_agent_and_scrape_interval_to_the_sampler_interval() {
        let s = scenario("sampler: { interval: 2s }\n", "").unwrap();
        assert_eq!(s.methods[0].source, LoadSourceKind::Agent);
        assert_eq!(s.scrape_interval, Duration::from_secs(2));
        let s = scenario("", "").unwrap();
        assert_eq!(s.scrape_interval, Duration::from_secs(1));
    }

    #[test]
    fn a_method_overrides_the_scenario_source() {
        let s = scenario(
            "sampler: { source: prometheus, scrape_interval: 500ms }\n",
            "",
        )
        .unwrap();
        assert_eq!(s.methods[0].source, LoadSourceKind::Prometheus);
        assert_eq!(s.scrape_interval, Duration::from_millis(500));
        let s = scenario("sampler: { source: prometheus }\n", ", source: agent").unwrap();
        assert_eq!(s.methods[0].source, LoadSourceKind::Agent);
        let s = scenario("", ", source: prometheus").unwrap();
        assert_eq!(s.methods[0].source, LoadSourceKind::Prometheus);
    }

    #[test]
    fn bad_values_name_their_line_and_column() {
        let e = scenario("sampler: { source: graphite }\n", "").unwrap_err();
        assert!(e.0.starts_with("t.yaml:3:"), "{}", e.0);
        let e = scenario("sampler: { scrape_interval: 10ms }\n", "").unwrap_err();
        assert!(e.0.starts_with("t.yaml:3:"), "{}", e.0);
        assert!(e.0.contains("scrape_interval"), "{}", e.0);
        let e = scenario("", ", source: statsd").unwrap_err();
        assert!(e.0.starts_with("t.yaml:7:"), "{}", e.0);
    }
}
