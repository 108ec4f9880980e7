//! Latency across hosts. Subscribers run on the runner's machine; when publishers run on loader
//! hosts, each message's send time was read on the loader host's clock and is moved onto this
//! machine's by the host's offset measured at the start of the run (see `run::hosts`). How far
//! that can be trusted: a host's uncertainty is its probes' (half the best round trip, the
//! larger of start and end) plus how far its offset drifted by the end, since the start offset
//! was applied throughout. A method run whose latency p50 is not at least 1 / [`SHARE`] times
//! the largest uncertainty gets a warning: its latencies are within the clocks' error.

use serde::Deserialize;

use super::summary::SubscriberFiguresByRun;

/// The largest share of a latency p50 the clocks' uncertainty may be before a run warns.
pub const SHARE: f64 = 0.1;
/// The role (in `manifest.json` `hosts[].roles`) of a host that sends messages.
pub const LOADER_ROLE: &str = "loader shard";

/// A loader host's clock as the run used it.
#[derive(Debug, Clone, PartialEq)]
pub struct SenderClock {
    pub host: String,
    /// Its clock minus this machine's at the start: what was taken out of its send times.
    pub offset_us: i64,
    /// How far the offset moved by the end; `None` when the end probe failed.
    pub drift_us: Option<i64>,
    /// The probes' uncertainty plus the drift.
    pub uncertainty_us: i64,
}

/// The manifest's `hosts` as the report reads it back (the runner writes it from its own
/// record, `run::hosts::HostsRecord`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ManifestHosts {
    hosts: Vec<Host>,
    /// Set only for a test bed's hosts, whose namespaces share this machine's clock.
    link_delay_emulated: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Host {
    name: String,
    roles: Vec<String>,
    clock_start: Option<Probe>,
    clock_end: Option<Probe>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
struct Probe {
    offset_us: i64,
    uncertainty_us: i64,
}

/// The loader hosts' clocks of a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SenderClocks {
    pub hosts: Vec<SenderClock>,
    /// The hosts are a test bed's namespaces: one kernel, one clock, a true offset of 0.
    pub test_bed: bool,
}

/// The loader hosts' clocks from the manifest's `hosts`; none for a run without loader hosts.
pub fn of(hosts: Option<&ManifestHosts>) -> SenderClocks {
    let Some(hosts) = hosts else {
        return SenderClocks::default();
    };
    let test_bed = hosts.link_delay_emulated.is_some();
    let hosts = hosts
        .hosts
        .iter()
        .filter(|h| h.roles.iter().any(|r| r.starts_with(LOADER_ROLE)))
        .filter_map(|h| {
            let start = h.clock_start?;
            let drift_us = h.clock_end.map(|end| end.offset_us - start.offset_us);
            let probes = h
                .clock_end
                .map_or(start.uncertainty_us, |end| end.uncertainty_us)
                .max(start.uncertainty_us);
            Some(SenderClock {
                host: h.name.clone(),
                offset_us: start.offset_us,
                drift_us,
                uncertainty_us: probes + drift_us.map_or(0, i64::abs),
            })
        })
        .collect();
    SenderClocks { hosts, test_bed }
}

/// What `summary.md` says about the clocks of a run whose subscribers timed messages from
/// loader hosts: the correction, then a warning per method run whose latencies the clocks'
/// error could distort. Empty without both.
pub fn describe(clocks: &SenderClocks, subscribers: &SubscriberFiguresByRun) -> Vec<String> {
    let (test_bed, clocks) = (clocks.test_bed, clocks.hosts.as_slice());
    if clocks.is_empty() || subscribers.is_empty() {
        return Vec::new();
    }
    let hosts: Vec<String> = clocks
        .iter()
        .map(|c| {
            let drift = c.drift_us.map_or("no end probe".to_owned(), |d| {
                format!("{d:+} µs by the end")
            });
            format!(
                "{} {:+} µs ({drift}; uncertain by ±{} µs)",
                c.host, c.offset_us, c.uncertainty_us
            )
        })
        .collect();
    let mut lines = vec![format!(
        "Latency across hosts: each message's send time was moved onto this machine's clock by \
         its loader host's offset at the start: {}.",
        hosts.join(", ")
    )];
    if test_bed {
        lines.push(
            "The hosts are a test bed's namespaces, which share this machine's clock: the true \
             offset is 0, so the offsets above are the probes' own error, and the warnings \
             below say what the same probes would leave uncertain between real hosts."
                .to_owned(),
        );
    }
    let worst = clocks.iter().map(|c| c.uncertainty_us).max().unwrap_or(0);
    if clocks.iter().any(|c| c.drift_us.is_none()) {
        lines.push(
            "**Warning**: a loader host's clock could not be probed at the end, so its drift \
             during the run is unknown and latencies across hosts may be off by more than stated."
                .to_owned(),
        );
    }
    for ((trial, method), f) in subscribers {
        let Some(p50_ms) = f.latency.as_ref().map(|q| q.p50_ms) else {
            continue;
        };
        if worst as f64 > SHARE * p50_ms * 1000.0 {
            lines.push(format!(
                "**Warning**: trial {trial}, method {method}: the clocks' uncertainty (±{worst} \
                 µs) is more than {:.0} % of the latency p50 ({p50_ms:.3} ms); its latencies \
                 are within the clocks' error.",
                SHARE * 100.0
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::subscribers::{Quantiles, SubscriberFigures};

    fn clock(uncertainty_us: i64, drift_us: Option<i64>) -> SenderClocks {
        SenderClocks {
            hosts: vec![SenderClock {
                host: "h3".into(),
                offset_us: 1_500,
                drift_us,
                uncertainty_us,
            }],
            test_bed: false,
        }
    }

    fn run(p50_ms: f64) -> SubscriberFigures {
        SubscriberFigures {
            latency: Some(Quantiles {
                p50_ms,
                p99_ms: p50_ms * 2.0,
                p999_ms: p50_ms * 3.0,
                max_ms: p50_ms * 4.0,
                count: 10,
            }),
            ..SubscriberFigures::default()
        }
    }

    #[test]
    fn a_run_warns_only_where_the_clocks_error_is_a_tenth_of_the_median_latency_or_more() {
        let subscribers = SubscriberFiguresByRun::from([
            ((1, "dns-rr".to_owned()), run(0.4)),
            ((1, "proposed".to_owned()), run(0.6)),
        ]);
        // ±50 µs: more than 10 % of 0.4 ms, less than 10 % of 0.6 ms.
        let lines = describe(&clock(50, Some(-3)), &subscribers);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("h3 +1500 µs (-3 µs by the end; uncertain by ±50 µs)"));
        assert!(lines[1].contains("trial 1, method dns-rr") && lines[1].contains("±50 µs"));
        assert!(describe(&clock(30, Some(0)), &subscribers).len() == 1);
    }

    #[test]
    fn on_a_test_bed_the_report_says_the_clocks_are_one() {
        let subscribers = SubscriberFiguresByRun::from([((1, "m".to_owned()), run(5.0))]);
        let mut clocks = clock(10, Some(0));
        clocks.test_bed = true;
        let lines = describe(&clocks, &subscribers);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[1].contains("share this machine's clock"), "{lines:?}");
    }

    #[test]
    fn nothing_is_said_without_loader_hosts_or_subscribers_and_a_missing_end_probe_warns() {
        let subscribers = SubscriberFiguresByRun::from([((1, "m".to_owned()), run(5.0))]);
        assert!(describe(&SenderClocks::default(), &subscribers).is_empty());
        assert!(describe(&clock(10, Some(0)), &SubscriberFiguresByRun::new()).is_empty());
        let lines = describe(&clock(10, None), &subscribers);
        assert!(lines[0].contains("no end probe"), "{lines:?}");
        assert!(
            lines[1].contains("drift during the run is unknown"),
            "{lines:?}"
        );
    }

    #[test]
    fn drift_adds_to_the_probes_uncertainty_and_only_loader_hosts_count() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = serde_json::json!({ "hosts": { "hosts": [
            { "name": "h1", "roles": ["broker b1 and its agent"],
              "clock_start": { "offset_us": 7, "uncertainty_us": 9 } },
            { "name": "h3", "roles": ["loader shard 1/1"],
              "clock_start": { "offset_us": 100, "uncertainty_us": 12 },
              "clock_end": { "offset_us": 80, "uncertainty_us": 15 } },
        ]}});
        std::fs::write(
            dir.path().join(crate::report::status::MANIFEST_JSON),
            manifest.to_string(),
        )
        .unwrap();
        let status = crate::report::status::read(dir.path()).unwrap();
        let clocks = of(status.hosts.as_ref());
        assert!(!clocks.test_bed);
        assert_eq!(
            clocks.hosts,
            vec![SenderClock {
                host: "h3".into(),
                offset_us: 100,
                drift_us: Some(-20),
                uncertainty_us: 35,
            }]
        );
        let empty = tempfile::tempdir().unwrap();
        let status = crate::report::status::read(empty.path()).unwrap();
        assert_eq!(of(status.hosts.as_ref()), SenderClocks::default());
    }
}
