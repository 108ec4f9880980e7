//! Where the dispatcher's loads come from: agents' reports (the default) or a Prometheus
//! server's instant query (`--load-source prometheus`), and what a decision records about it.

use std::time::Duration;

use hyper::Uri;

use super::Metric;
use crate::InputError;

/// `--load-source`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SourceArg {
    /// Agents' JSON reports on `--report-listen`.
    #[default]
    Reports,
    /// An instant query against a Prometheus server every `--interval`.
    Prometheus,
}

/// `--stale`: what a broker whose series is missing from the answer for 3 intervals becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Stale {
    /// Down: no new clients until its series is back (the report path's rule).
    #[default]
    Down,
    /// Unknown and kept: it keeps its last known load and stays in service.
    Keep,
}

/// A validated Prometheus load source.
#[derive(Clone, Debug)]
pub struct PrometheusSource {
    /// `http://HOST:PORT[/prefix]` of the server.
    pub url: Uri,
    pub query: String,
    /// The label of each answer series that names its broker id.
    pub broker_label: String,
    pub stale: Stale,
    /// A second query whose series give, per broker, when the value was measured (Unix
    /// seconds; `mqdispatch_agent_sample_timestamp_seconds` for the agents). Without it a value
    /// counts as measured when Prometheus evaluated the query, which hides the scrape delay.
    pub time_query: Option<String>,
}

impl PrometheusSource {
    pub fn new(
        url: &str,
        query: &str,
        broker_label: &str,
        stale: Stale,
    ) -> Result<Self, InputError> {
        let bad = |why: &str| InputError(format!("--prometheus {url}: {why}"));
        let uri: Uri = url
            .parse()
            .map_err(|e| bad(&format!("not a URL ({e}); e.g. http://127.0.0.1:9090")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(bad(
                    "https is not supported: query a plain-http listener (e.g. on loopback, or \
                     through a local TLS-terminating proxy)",
                ));
            }
            _ => return Err(bad("expected http://HOST:PORT, e.g. http://127.0.0.1:9090")),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(bad("no host; e.g. http://127.0.0.1:9090"));
        }
        if uri.query().is_some() {
            return Err(bad("give the server's base URL, without a query string"));
        }
        if query.trim().is_empty() {
            return Err(InputError(
                "--query is empty: give a PromQL expression whose series carry the broker id, \
                 e.g. mqdispatch_agent_cpu_percent"
                    .into(),
            ));
        }
        if broker_label.is_empty() {
            return Err(InputError("--broker-label is empty".into()));
        }
        Ok(Self {
            url: uri,
            query: query.to_owned(),
            broker_label: broker_label.to_owned(),
            stale,
            time_query: None,
        })
    }

    /// Adds the query that dates each broker's value (`--prometheus-time-query`).
    pub fn with_time_query(mut self, time_query: Option<&str>) -> Result<Self, InputError> {
        if let Some(q) = time_query {
            if q.trim().is_empty() {
                return Err(InputError(
                    "--prometheus-time-query is empty: give a PromQL expression whose series \
                     carry the broker id and a Unix time in seconds, e.g. \
                     mqdispatch_agent_sample_timestamp_seconds"
                        .into(),
                ));
            }
            self.time_query = Some(q.to_owned());
        }
        Ok(self)
    }
}

#[derive(Clone, Debug, Default)]
pub enum LoadSource {
    #[default]
    Reports,
    Prometheus(PrometheusSource),
}

impl LoadSource {
    pub fn fed_by(&self) -> FedBy {
        match self {
            LoadSource::Reports => FedBy::Reports,
            LoadSource::Prometheus(_) => FedBy::Prometheus,
        }
    }

    /// Checks the source against the metric: a query yields one value per broker, so the
    /// two-valued `composite` metric cannot come from Prometheus.
    pub fn validate(&self, metric: Metric, interval: Duration) -> Result<(), InputError> {
        if let LoadSource::Prometheus(_) = self {
            if metric == Metric::Composite {
                return Err(InputError(
                    "--metric composite needs cpu and msg-rate from agents' reports; with \
                     --load-source prometheus choose cpu, msg-rate or connections (the query's \
                     value is that metric)"
                        .into(),
                ));
            }
            if interval < Duration::from_millis(100) {
                return Err(InputError(
                    "--interval below 100ms: Prometheus queries need at least that".into(),
                ));
            }
        }
        Ok(())
    }
}

/// What fed the loads a decision was made on (the `source` column of `--events`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum FedBy {
    Reports = 0,
    Prometheus = 1,
    /// Prometheus stopped answering: the last answer's loads, held.
    PrometheusLastKnown = 2,
}

impl FedBy {
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => FedBy::Prometheus,
            2 => FedBy::PrometheusLastKnown,
            _ => FedBy::Reports,
        }
    }

    /// The column value: `reports`, `prometheus` or `prometheus-last-known`.
    pub fn as_str(self) -> &'static str {
        match self {
            FedBy::Reports => "reports",
            FedBy::Prometheus => "prometheus",
            FedBy::PrometheusLastKnown => "prometheus-last-known",
        }
    }

    /// The configured source (`load_source_info` label).
    pub fn source_name(self) -> &'static str {
        match self {
            FedBy::Reports => "reports",
            FedBy::Prometheus | FedBy::PrometheusLastKnown => "prometheus",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let ok = PrometheusSource::new("http://127.0.0.1:9090", "up", "broker", Stale::Down);
        assert_eq!(ok.unwrap().url.port_u16(), Some(9090));
        for bad in [
            "https://h:9090",
            "127.0.0.1:9090",
            "http://h:9090/?x=1",
            "ftp://h",
        ] {
            assert!(
                PrometheusSource::new(bad, "up", "broker", Stale::Down).is_err(),
                "{bad}"
            );
        }
        assert!(PrometheusSource::new("http://h:1", " ", "broker", Stale::Down).is_err());
        let src = LoadSource::Prometheus(
            PrometheusSource::new("http://h:1", "up", "broker", Stale::Keep).unwrap(),
        );
        assert!(
            src.validate(Metric::Composite, Duration::from_secs(1))
                .is_err()
        );
        assert!(src.validate(Metric::Cpu, Duration::from_secs(1)).is_ok());
    }
}
