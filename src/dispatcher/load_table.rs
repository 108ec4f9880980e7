//! What the dispatcher knows about each broker's load: the samples agents report, their moving
//! average, liveness, and the predicted load of clients placed since the samples last showed them.
//!
//! Prediction (used by `least-load` and `two-choices`): every placement adds the learned
//! per-client load to its broker's *pending* load. A 1 s sample covers the second before it, so a
//! client placed after sample `j` is only fully visible from sample `j + 2` on; with `k` samples
//! in the window of which `m` show the client, `1 - m/k` of its increment is still pending. The
//! increment therefore fades out exactly as the window average takes it in, and a burst of
//! CONNECTs between two samples spreads instead of piling onto the broker that looked idlest.
//!
//! Per-client load is learned from every sample as `metric / clients` (clients = the reported
//! `connections`, else the placements this dispatcher made that the sample already shows), as an
//! exponentially weighted average starting from a prior.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::Metric;
use super::policy::BrokerView;
use crate::load_report::LoadReport;

/// Samples kept per broker at most, whatever the window: bounds memory against a report flood.
const MAX_SAMPLES: usize = 256;
/// Weight of a new per-client observation in the running estimate.
const EWMA_ALPHA: f64 = 0.3;
/// Prior per-client load before any sample: half a percent of CPU and 1000 msg/s.
const PRIOR: Components = Components {
    cpu: 0.5,
    rate: 1000.0,
    conns: 1.0,
};
/// The estimate never drops below 1 % of the prior: a zero increment would let equal brokers tie
/// on every placement of a burst, and ties go to the first broker.
const FLOOR_FRACTION: f64 = 0.01;

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("report names unknown broker `{0}`")]
    UnknownBroker(String),
}

/// One value per metric the agents report.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Components {
    cpu: f64,
    rate: f64,
    conns: f64,
}

impl Components {
    fn add_scaled(&mut self, other: Components, factor: f64) {
        self.cpu += other.cpu * factor;
        self.rate += other.rate * factor;
        self.conns += other.conns * factor;
    }
}

#[derive(Debug, Clone)]
struct Sample {
    seq: u64,
    t_ms: u64,
    cpu: f64,
    rate: Option<f64>,
    conns: Option<f64>,
}

/// Placements made between two samples: they share one retirement schedule.
#[derive(Debug, Clone)]
struct Bucket {
    /// Samples received before these placements; sample `seq + 1` is the first to show them.
    seq: u64,
    count: u64,
    increment: Components,
}

#[derive(Debug, Default)]
struct BrokerLoad {
    samples: VecDeque<Sample>,
    received: u64,
    last_arrival: Option<Instant>,
    placed: u64,
    buckets: VecDeque<Bucket>,
}

impl BrokerLoad {
    fn average(&self) -> Components {
        let mean = |values: &mut dyn Iterator<Item = f64>| {
            let (sum, n) = values.fold((0.0, 0u32), |(s, n), v| (s + v, n + 1));
            if n == 0 { 0.0 } else { sum / f64::from(n) }
        };
        Components {
            cpu: mean(&mut self.samples.iter().map(|s| s.cpu)),
            rate: mean(&mut self.samples.iter().filter_map(|s| s.rate)),
            conns: mean(&mut self.samples.iter().filter_map(|s| s.conns)),
        }
    }

    /// Share of a bucket's increment the window average does not show yet.
    fn unseen_fraction(&self, bucket: &Bucket) -> f64 {
        let k = self.samples.len();
        if k == 0 {
            return 1.0;
        }
        let seen = self.samples.iter().filter(|s| s.seq > bucket.seq).count();
        1.0 - seen as f64 / k as f64
    }

    fn pending(&self) -> Components {
        let mut total = Components::default();
        for b in &self.buckets {
            total.add_scaled(b.increment, self.unseen_fraction(b));
        }
        total
    }

    fn retire_seen_buckets(&mut self) {
        while let Some(b) = self.buckets.front() {
            if self.unseen_fraction(b) > 0.0 {
                break;
            }
            self.buckets.pop_front();
        }
    }
}

#[derive(Debug)]
pub struct LoadTable {
    ids: Vec<String>,
    index: HashMap<String, usize>,
    brokers: Vec<BrokerLoad>,
    metric: Metric,
    window_ms: u64,
    down_after: Duration,
    per_client: Components,
}

impl LoadTable {
    /// `interval` is the agents' sampling interval: a broker silent for 3 of them is down.
    pub fn new(ids: Vec<String>, metric: Metric, window: Duration, interval: Duration) -> Self {
        let index = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i))
            .collect();
        let brokers = ids.iter().map(|_| BrokerLoad::default()).collect();
        Self {
            ids,
            index,
            brokers,
            metric,
            window_ms: window.as_millis() as u64,
            down_after: interval * 3,
            per_client: PRIOR,
        }
    }

    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    pub fn knows(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    /// Takes one report in: a new sample in the window, the broker alive again, a fresh
    /// observation of per-client load, and the pending increments it now shows retired.
    pub fn record(&mut self, report: &LoadReport, now: Instant) -> Result<(), TableError> {
        let &i = self
            .index
            .get(&report.broker)
            .ok_or_else(|| TableError::UnknownBroker(report.broker.clone()))?;
        let window_ms = self.window_ms;
        let b = &mut self.brokers[i];
        let seq = b.received;
        b.received += 1;
        b.last_arrival = Some(now);
        let sample = Sample {
            seq,
            t_ms: report.t_ms,
            cpu: report.cpu_pct,
            rate: report.msgs_in_per_s,
            conns: report.connections.map(|c| c as f64),
        };
        b.samples.push_back(sample.clone());
        let newest = b
            .samples
            .iter()
            .map(|s| s.t_ms)
            .max()
            .unwrap_or(report.t_ms);
        b.samples
            .retain(|s| s.t_ms.saturating_add(window_ms) > newest || s.seq == seq);
        while b.samples.len() > MAX_SAMPLES {
            b.samples.pop_front();
        }
        b.retire_seen_buckets();

        // Clients this sample shows: placements made before the previous sample arrived.
        let not_shown: u64 = b
            .buckets
            .iter()
            .filter(|k| k.seq >= seq)
            .map(|k| k.count)
            .sum();
        let clients = sample
            .conns
            .unwrap_or_else(|| b.placed.saturating_sub(not_shown) as f64);
        if clients >= 1.0 {
            let learn = |est: &mut f64, observed: f64, prior: f64| {
                *est += EWMA_ALPHA * (observed / clients - *est);
                *est = est.max(prior * FLOOR_FRACTION);
            };
            learn(&mut self.per_client.cpu, sample.cpu, PRIOR.cpu);
            if let Some(rate) = sample.rate {
                learn(&mut self.per_client.rate, rate, PRIOR.rate);
            }
        }
        Ok(())
    }

    /// Counts one client placed on broker `i` and adds its predicted load to the pending load.
    pub fn place(&mut self, i: usize) {
        let increment = self.per_client;
        let b = &mut self.brokers[i];
        b.placed += 1;
        match b.buckets.back_mut() {
            Some(k) if k.seq == b.received => {
                k.count += 1;
                k.increment.add_scaled(increment, 1.0);
            }
            _ => b.buckets.push_back(Bucket {
                seq: b.received,
                count: 1,
                increment,
            }),
        }
    }

    /// The policies' view of every broker at `now`, in config order, in the selected metric.
    pub fn views(&self, now: Instant, out: &mut Vec<BrokerView>) {
        out.clear();
        let raw: Vec<(bool, Components, Components, u64)> = self
            .brokers
            .iter()
            .map(|b| {
                let live = b
                    .last_arrival
                    .is_none_or(|t| now.saturating_duration_since(t) <= self.down_after);
                (live, b.average(), b.pending(), b.placed)
            })
            .collect();
        // Composite: each term is the broker's share of the busiest live broker's value
        // (average plus pending), so cpu % and msg/s weigh the same whatever their units.
        let scale = |f: fn(&Components) -> f64| {
            raw.iter()
                .filter(|r| r.0)
                .map(|r| f(&r.1) + f(&r.2))
                .fold(0.0f64, f64::max)
        };
        let (cpu_scale, rate_scale) = match self.metric {
            Metric::Composite => (scale(|c| c.cpu), scale(|c| c.rate)),
            _ => (0.0, 0.0),
        };
        let value = |c: &Components| match self.metric {
            Metric::Cpu => c.cpu,
            Metric::MsgRate => c.rate,
            Metric::Connections => c.conns,
            Metric::Composite => 0.5 * (share(c.cpu, cpu_scale) + share(c.rate, rate_scale)),
        };
        out.extend(raw.iter().map(|(live, avg, pending, placed)| BrokerView {
            live: *live,
            load: value(avg),
            pending: value(pending),
            placed: *placed,
        }));
    }
}

fn share(value: f64, scale: f64) -> f64 {
    if scale > 0.0 { value / scale } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn table(metric: Metric) -> LoadTable {
        LoadTable::new(vec!["b1".into(), "b2".into()], metric, 5 * SECOND, SECOND)
    }

    fn report(broker: &str, t_s: u64, cpu: f64) -> LoadReport {
        LoadReport {
            broker: broker.into(),
            t_ms: t_s * 1000,
            cpu_pct: cpu,
            msgs_in_per_s: None,
            connections: None,
            token: None,
        }
    }

    fn views(t: &LoadTable, now: Instant) -> Vec<BrokerView> {
        let mut out = Vec::new();
        t.views(now, &mut out);
        out
    }

    #[test]
    fn unknown_broker_is_rejected() {
        let mut t = table(Metric::Cpu);
        assert!(matches!(
            t.record(&report("nope", 1, 1.0), Instant::now()),
            Err(TableError::UnknownBroker(_))
        ));
    }

    #[test]
    fn never_reported_brokers_are_live_and_unloaded() {
        let t = table(Metric::Cpu);
        let v = views(&t, Instant::now());
        assert!(
            v.iter()
                .all(|b| b.live && b.load == 0.0 && b.pending == 0.0)
        );
    }

    #[test]
    fn average_covers_the_window_by_report_time() {
        let mut t = table(Metric::Cpu);
        let now = Instant::now();
        for (s, cpu) in [(1, 100.0), (2, 10.0), (3, 20.0), (4, 30.0), (5, 40.0)] {
            t.record(&report("b1", s, cpu), now).unwrap();
        }
        assert_eq!(views(&t, now)[0].load, 40.0, "mean of 100,10,20,30,40");
        t.record(&report("b1", 6, 50.0), now).unwrap();
        assert_eq!(views(&t, now)[0].load, 30.0, "t=1 fell out: mean of 10..50");
    }

    #[test]
    fn metrics_select_their_field_and_missing_fields_count_as_zero() {
        let mut r = report("b1", 1, 20.0);
        r.msgs_in_per_s = Some(3000.0);
        r.connections = Some(4);
        let now = Instant::now();
        let load_of = |m| {
            let mut t = table(m);
            t.record(&r, now).unwrap();
            t.record(&report("b2", 1, 10.0), now).unwrap();
            let v = views(&t, now);
            (v[0].load, v[1].load)
        };
        assert_eq!(load_of(Metric::Cpu), (20.0, 10.0));
        assert_eq!(load_of(Metric::MsgRate), (3000.0, 0.0));
        assert_eq!(load_of(Metric::Connections), (4.0, 0.0));
        // b1 is the busiest on both terms: 0.5*(1 + 1); b2 has half b1's cpu and no rate.
        assert_eq!(load_of(Metric::Composite), (1.0, 0.25));
    }

    #[test]
    fn silent_for_three_intervals_means_down_until_a_fresh_report() {
        // The table takes `now` as an argument: time is simulated, nothing sleeps.
        let mut t = table(Metric::Cpu);
        let start = Instant::now();
        t.record(&report("b1", 1, 5.0), start).unwrap();
        assert!(
            views(&t, start + 3 * SECOND)[0].live,
            "exactly 3 intervals: still up"
        );
        let later = start + 3 * SECOND + Duration::from_millis(1);
        let v = views(&t, later);
        assert!(!v[0].live && v[1].live, "b2 never reported: assumed up");
        t.record(&report("b1", 5, 5.0), later).unwrap();
        assert!(views(&t, later)[0].live);
    }

    #[test]
    fn pending_fades_as_the_window_takes_the_clients_in() {
        let mut t = table(Metric::Cpu);
        let now = Instant::now();
        for s in 1..=5 {
            t.record(&report("b1", s, 10.0), now).unwrap();
        }
        for _ in 0..4 {
            t.place(0);
        }
        let p0 = views(&t, now)[0].pending;
        assert_eq!(p0, 4.0 * PRIOR.cpu);
        // The next sample covers the second of the placements: shows nothing yet.
        t.record(&report("b1", 6, 10.0), now).unwrap();
        assert_eq!(views(&t, now)[0].pending, p0);
        // From then on each sample shows them: one fifth of the window per sample.
        t.record(&report("b1", 7, 12.0), now).unwrap();
        let p = views(&t, now)[0].pending;
        assert!(p > 0.0 && p < p0, "{p}");
        for s in 8..=11 {
            t.record(&report("b1", s, 12.0), now).unwrap();
        }
        assert_eq!(views(&t, now)[0].pending, 0.0, "fully shown: retired");
        assert!(t.brokers[0].buckets.is_empty());
    }

    #[test]
    fn per_client_load_is_learned_from_reported_connections() {
        let mut t = table(Metric::MsgRate);
        let now = Instant::now();
        let mut r = report("b1", 1, 10.0);
        r.msgs_in_per_s = Some(20_000.0);
        r.connections = Some(2);
        for s in 1..=20 {
            r.t_ms = s * 1000;
            t.record(&r, now).unwrap();
        }
        t.place(1);
        let learned = views(&t, now)[1].pending;
        assert!((learned - 10_000.0).abs() < 10.0, "{learned}");
    }

    #[test]
    fn idle_clients_never_drive_the_increment_to_zero() {
        let mut t = table(Metric::Cpu);
        let now = Instant::now();
        let mut r = report("b1", 1, 0.0);
        r.connections = Some(100);
        for s in 1..=50 {
            r.t_ms = s * 1000;
            t.record(&r, now).unwrap();
        }
        t.place(1);
        assert!(views(&t, now)[1].pending >= PRIOR.cpu * FLOOR_FRACTION);
    }

    #[test]
    fn a_report_flood_keeps_memory_bounded() {
        let mut t = table(Metric::Cpu);
        let now = Instant::now();
        for _ in 0..10_000 {
            t.record(&report("b1", 1, 1.0), now).unwrap();
        }
        assert!(t.brokers[0].samples.len() <= MAX_SAMPLES);
    }
}
