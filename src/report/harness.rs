//! What one method run cost the harness and how its waves of CONNECTs were placed:
//! kept in the manifest (`trials_detail[].methods[].harness`) and stated in summary.md.

use serde::{Deserialize, Serialize};

/// Harness-side figures of one method run; `None` where nothing was measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HarnessMeasures {
    /// Wall time of the method run: brokers up, warm-up, publishing, teardown.
    pub wall_s: f64,
    /// `wall_s` beyond the scenario's own length (last join + its duration).
    pub overhead_s: f64,
    pub publishers_joined: u64,
    /// Growth of the harness process's resident memory (loader, in-process dispatcher,
    /// recorder) from before the first join to its highest, per joined publisher.
    pub loader_rss_kib_per_publisher: Option<f64>,
    /// CPU of the harness process while publishing, in % of one core (the in-process
    /// dispatcher's thread included).
    pub loader_cpu_pct: Option<f64>,
    /// CPU of the dispatcher over the same span, in % of one core: the in-process one's own
    /// thread, or the whole `mqdispatch dispatcher` process on `dispatcher_host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatcher_cpu_pct: Option<f64>,
    /// The host the dispatcher ran on (`dispatcher_host`); `None`: in the harness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatcher_host: Option<String>,
    /// Redirect exchanges (dispatcher TCP connect → CONNACK 0x9C parsed) of first placements.
    pub redirect_p50_ms: Option<f64>,
    pub redirect_p99_ms: Option<f64>,
    /// Planned join → CONNACK from the broker (redirect included): what a wave costs a client.
    pub connect_p50_ms: Option<f64>,
    pub connect_p99_ms: Option<f64>,
    /// Arrival groups (`arrival.burst`) of more than one publisher.
    pub waves: u64,
    /// The largest share of one wave that joined a single broker (0–1), over all waves.
    pub largest_wave_share: Option<f64>,
}

impl HarnessMeasures {
    /// One line for summary.md.
    pub fn describe(&self, trial: u32, method: &str) -> String {
        let ms = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.1} ms"));
        let mut line = format!(
            "trial {trial}, {method}: wall {:.1} s, {:.1} s beyond the scenario's length; {} publishers joined",
            self.wall_s, self.overhead_s, self.publishers_joined
        );
        if let Some(share) = self.largest_wave_share {
            line.push_str(&format!(
                "; largest share of one wave on one broker {:.0} % ({} waves)",
                share * 100.0,
                self.waves
            ));
        }
        if self.redirect_p50_ms.is_some() {
            line.push_str(&format!(
                "; redirect p50 {}, p99 {}",
                ms(self.redirect_p50_ms),
                ms(self.redirect_p99_ms)
            ));
        }
        line.push_str(&format!(
            "; join → CONNACK p50 {}, p99 {}",
            ms(self.connect_p50_ms),
            ms(self.connect_p99_ms)
        ));
        if let Some(kib) = self.loader_rss_kib_per_publisher {
            line.push_str(&format!("; harness RSS {kib:.1} KiB per publisher"));
        }
        if let Some(cpu) = self.loader_cpu_pct {
            line.push_str(&format!(", harness CPU {cpu:.0} % of one core"));
        }
        match (self.dispatcher_cpu_pct, &self.dispatcher_host) {
            (Some(cpu), None) => line.push_str(&format!(" (dispatcher thread {cpu:.1} %)")),
            (Some(cpu), Some(host)) => line.push_str(&format!(
                "; dispatcher on host {host} {cpu:.1} % of one core (not in the harness's)"
            )),
            (None, _) => {}
        }
        line
    }
}

/// The `q` quantile (nearest rank) of `xs`, sorted in place.
pub fn quantile(xs: &mut [f64], q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let rank = ((q.clamp(0.0, 1.0) * xs.len() as f64).ceil() as usize).max(1);
    Some(xs[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let mut xs: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(quantile(&mut xs, 0.5), Some(50.0));
        assert_eq!(quantile(&mut xs, 0.99), Some(99.0));
        assert_eq!(quantile(&mut xs, 1.0), Some(100.0));
        assert_eq!(quantile(&mut [], 0.5), None);
    }

    #[test]
    fn the_line_states_every_measured_figure() {
        let m = HarnessMeasures {
            wall_s: 23.4,
            overhead_s: 3.4,
            publishers_joined: 1000,
            loader_rss_kib_per_publisher: Some(41.0),
            loader_cpu_pct: Some(12.0),
            dispatcher_cpu_pct: Some(2.5),
            dispatcher_host: None,
            redirect_p50_ms: Some(1.0),
            redirect_p99_ms: Some(9.5),
            connect_p50_ms: Some(3.0),
            connect_p99_ms: Some(40.0),
            waves: 4,
            largest_wave_share: Some(0.264),
        };
        assert_eq!(
            m.describe(1, "least-load"),
            "trial 1, least-load: wall 23.4 s, 3.4 s beyond the scenario's length; 1000 publishers \
             joined; largest share of one wave on one broker 26 % (4 waves); redirect p50 1.0 ms, \
             p99 9.5 ms; join → CONNACK p50 3.0 ms, p99 40.0 ms; harness RSS 41.0 KiB per \
             publisher, harness CPU 12 % of one core (dispatcher thread 2.5 %)"
        );
        let remote = HarnessMeasures {
            dispatcher_host: Some("h4".into()),
            ..m
        };
        assert!(
            remote.describe(1, "m").ends_with(
                "harness CPU 12 % of one core; dispatcher on host h4 2.5 % of one core (not in \
                 the harness's)"
            ),
            "{}",
            remote.describe(1, "m")
        );
    }
}
