//! The load report: one JSON object per line, agent → dispatcher (docs/src/dispatcher.md, "Load reports").
//!
//! `{"broker":"b1","t_ms":1732550000123,"cpu_pct":37.5,"msgs_in_per_s":14012,"connections":5}`

use serde::{Deserialize, Serialize};

/// Longest line the dispatcher reads before closing a report connection.
pub const MAX_REPORT_LINE_BYTES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadReport {
    /// Broker id as configured at the dispatcher (`--broker ID=HOST:PORT`).
    pub broker: String,
    /// Wall-clock time of the sample, milliseconds since the Unix epoch. For the records only:
    /// the dispatcher windows reports by their arrival, so a skewed clock cannot steer it.
    pub t_ms: u64,
    /// CPU use over the last interval, percent of the measured capacity (one core = 100 when
    /// sampling a process; the whole host = 100 with `--host`; the cap with a cgroup limit).
    pub cpu_pct: f64,
    /// Messages the broker received per second over the last interval, when the broker kind
    /// exposes a counter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msgs_in_per_s: Option<f64>,
    /// Clients connected to the broker, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
    /// Shared secret, required by a dispatcher started with a report token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("not a load report: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cpu_pct {0} is not a finite, non-negative number")]
    BadCpu(f64),
    #[error("msgs_in_per_s {0} is not a finite, non-negative number")]
    BadRate(f64),
    #[error("empty broker id")]
    EmptyBroker,
}

impl LoadReport {
    /// Parses and checks one line (without its newline).
    pub fn parse_line(line: &str) -> Result<Self, ReportError> {
        let report: LoadReport = serde_json::from_str(line)?;
        if report.broker.is_empty() {
            return Err(ReportError::EmptyBroker);
        }
        if !report.cpu_pct.is_finite() || report.cpu_pct < 0.0 {
            return Err(ReportError::BadCpu(report.cpu_pct));
        }
        if let Some(rate) = report.msgs_in_per_s
            && (!rate.is_finite() || rate < 0.0)
        {
            return Err(ReportError::BadRate(rate));
        }
        Ok(report)
    }

    /// One line, newline included.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("invariant: a LoadReport serializes");
        line.push('\n');
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_design_example() {
        let line = r#"{"broker":"b1","t_ms":1732550000123,"cpu_pct":37.5,"msgs_in_per_s":14012,"connections":5}"#;
        let r = LoadReport::parse_line(line).unwrap();
        assert_eq!(r.broker, "b1");
        assert_eq!(r.msgs_in_per_s, Some(14012.0));
        assert_eq!(r.connections, Some(5));
    }

    #[test]
    fn rejects_negative_cpu_and_unknown_keys() {
        assert!(LoadReport::parse_line(r#"{"broker":"b","t_ms":1,"cpu_pct":-1}"#).is_err());
        assert!(LoadReport::parse_line(r#"{"broker":"b","t_ms":1,"cpu_pct":1,"x":2}"#).is_err());
        assert!(LoadReport::parse_line(r#"{"broker":"","t_ms":1,"cpu_pct":1}"#).is_err());
    }

    proptest! {
        #[test]
        fn any_line_parses_or_errors_without_panic(line in ".{0,300}") {
            let _ = LoadReport::parse_line(&line);
        }

        #[test]
        fn valid_reports_round_trip(
            broker in "[a-z0-9-]{1,12}",
            t_ms in 0u64..u64::MAX / 2,
            cpu in 0.0f64..10_000.0,
            rate in proptest::option::of(0.0f64..1e7),
            conns in proptest::option::of(0u64..1_000_000),
        ) {
            let r = LoadReport { broker, t_ms, cpu_pct: cpu, msgs_in_per_s: rate, connections: conns, token: None };
            let line = r.to_line();
            prop_assert!(line.ends_with('\n'));
            prop_assert_eq!(LoadReport::parse_line(line.trim_end()).unwrap(), r);
        }
    }
}
