//! What the dispatcher knows about each broker's load: the samples agents report, their moving
//! average, liveness, and the predicted load of clients placed since the samples last showed them.
//!
//! Time is the dispatcher's own: a sample counts as taken when its report *arrives* (a monotonic
//! [`Instant`]), never at the agent's `t_ms`. An agent's clock can be skewed or lie; windowing by
//! `t_ms` let one report dated in the future push every later honest sample out of the window and
//! freeze the average. Arrival time cannot be forged, and report delay (milliseconds) is far below
//! the interval. `t_ms` stays in the wire format for the runner's records.
//!
//! Window: the samples that arrived within `window` of the newest one, counted in whole
//! intervals (age below `window - interval/2`, so arrival jitter cannot turn a 5 s window into 6
//! samples); the newest sample is always in.
//!
//! Prediction (used by `least-load` and `two-choices`): every placement adds the learned
//! per-client load to its broker's *pending* load. A sample can show a client only if it arrived
//! at least [`visibility_lag`] after the placement: one interval for cpu and connections (the
//! sample covers the interval before it), two for msg-rate and composite (the rate is the
//! difference of two counter updates, which both must postdate the client's first publish). With
//! `k` samples in the window of which `m` can show the client, `1 - m/k` of its increment is still
//! pending: the increment fades out as the window average takes it in, and retires only when
//! every sample in the window can show it. A burst of CONNECTs between two samples therefore
//! spreads instead of piling onto the broker that looked idlest.
//!
//! Per-client load is learned from every sample as `metric / clients` (clients = the reported
//! `connections`, else the placements this dispatcher made that the sample can show), as an
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

/// How long after a placement a sample must arrive before it can show the new client, in report
/// intervals. Pure; the rule behind every retirement of predicted load.
pub fn visibility_lag(metric: Metric) -> u32 {
    match metric {
        // A sample covers the interval before it: one whole interval after the placement.
        Metric::Cpu | Metric::Connections => 1,
        // A rate is the difference of two counter updates: both must come after the client's
        // first publish. Composite includes the rate, so it waits as long.
        Metric::MsgRate | Metric::Composite => 2,
    }
}

/// Whether a sample that arrived at `arrived` can show a client placed at `placed` (pure).
pub fn can_show(placed: Instant, arrived: Instant, lag: Duration) -> bool {
    arrived >= placed + lag
}

/// Whether a sample of age `age` is still in a moving window of `window` over reports every
/// `interval` (pure): the window holds whole intervals, with half an interval of slack for jitter.
pub fn in_window(age: Duration, window: Duration, interval: Duration) -> bool {
    age + interval / 2 < window
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
    arrived: Instant,
    cpu: f64,
    rate: Option<f64>,
    conns: Option<f64>,
}

/// Placements made between two samples: they share one retirement schedule, that of the latest
/// of them (conservative: an earlier one retires at most one interval late, never early).
#[derive(Debug, Clone)]
struct Bucket {
    /// Samples received before these placements (groups placements between two samples).
    seq: u64,
    /// The latest placement in the bucket.
    placed: Instant,
    count: u64,
    increment: Components,
}

#[derive(Debug, Default)]
struct BrokerLoad {
    samples: VecDeque<Sample>,
    received: u64,
    last_arrival: Option<Instant>,
    /// `t_ms` of the newest sample: when the agent (or Prometheus) says it measured it.
    last_sample_ms: Option<u64>,
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
    fn unseen_fraction(&self, bucket: &Bucket, lag: Duration) -> f64 {
        let k = self.samples.len();
        if k == 0 {
            // Nothing sampled yet: all of it is unseen.
            return f64::from(1u8);
        }
        let seen = self
            .samples
            .iter()
            .filter(|s| can_show(bucket.placed, s.arrived, lag))
            .count();
        1.0 - seen as f64 / k as f64
    }

    fn pending(&self, lag: Duration) -> Components {
        let mut total = Components::default();
        for b in &self.buckets {
            total.add_scaled(b.increment, self.unseen_fraction(b, lag));
        }
        total
    }

    fn retire_seen_buckets(&mut self, lag: Duration) {
        while let Some(b) = self.buckets.front() {
            if self.unseen_fraction(b, lag) > 0.0 {
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
    window: Duration,
    interval: Duration,
    /// [`visibility_lag`] of the metric, as a duration.
    lag: Duration,
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
            window,
            interval,
            lag: interval * visibility_lag(metric),
            per_client: PRIOR,
        }
    }

    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    pub fn knows(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    /// Takes one report in, arrived at `now`: a new sample in the window, the broker alive again,
    /// a fresh observation of per-client load, and the pending increments it now shows retired.
    pub fn record(&mut self, report: &LoadReport, now: Instant) -> Result<(), TableError> {
        let &i = self
            .index
            .get(&report.broker)
            .ok_or_else(|| TableError::UnknownBroker(report.broker.clone()))?;
        let (window, interval, lag) = (self.window, self.interval, self.lag);
        let b = &mut self.brokers[i];
        b.received += 1;
        b.last_arrival = Some(now);
        b.last_sample_ms = Some(report.t_ms);
        let sample = Sample {
            arrived: now,
            cpu: report.cpu_pct,
            rate: report.msgs_in_per_s,
            conns: report.connections.map(|c| c as f64),
        };
        b.samples
            .retain(|s| in_window(now.saturating_duration_since(s.arrived), window, interval));
        b.samples.push_back(sample.clone());
        while b.samples.len() > MAX_SAMPLES {
            b.samples.pop_front();
        }
        b.retire_seen_buckets(lag);

        // Clients this sample can show: placements at least one lag before it arrived.
        let not_shown: u64 = b
            .buckets
            .iter()
            .filter(|k| !can_show(k.placed, now, lag))
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

    /// Counts one client placed on broker `i` at `now` and adds its predicted load to the
    /// pending load.
    pub fn place(&mut self, i: usize, now: Instant) {
        let increment = self.per_client;
        let b = &mut self.brokers[i];
        b.placed += 1;
        match b.buckets.back_mut() {
            Some(k) if k.seq == b.received => {
                k.count += 1;
                k.placed = k.placed.max(now);
                k.increment.add_scaled(increment, 1.0);
            }
            _ => b.buckets.push_back(Bucket {
                seq: b.received,
                placed: now,
                count: 1,
                increment,
            }),
        }
    }

    /// Reported recently, or never reported at all (assumed up).
    fn live(&self, b: &BrokerLoad, now: Instant) -> bool {
        b.last_arrival
            .is_none_or(|t| now.saturating_duration_since(t) <= self.interval * 3)
    }

    /// The rebalancer's view, config order: live, and the newest sample's broker-side msgs/s.
    pub fn latest_rates(&self, now: Instant) -> Vec<(bool, Option<f64>)> {
        self.brokers
            .iter()
            .map(|b| (self.live(b, now), b.samples.back().and_then(|s| s.rate)))
            .collect()
    }

    /// The subscriber policy's view, config order: live, and the window average of the
    /// broker-side received msgs/s (0 while it reports none).
    pub fn inflows(&self, now: Instant) -> Vec<(bool, f64)> {
        self.brokers
            .iter()
            .map(|b| (self.live(b, now), b.average().rate))
            .collect()
    }

    /// Time since broker `i`'s last sample arrived; `None` before its first.
    pub fn sample_age(&self, i: usize, now: Instant) -> Option<Duration> {
        self.brokers[i]
            .last_arrival
            .map(|t| now.saturating_duration_since(t))
    }

    /// Whether every broker has sent at least one sample.
    pub fn every_broker_sampled(&self) -> bool {
        self.brokers.iter().all(|b| b.last_sample_ms.is_some())
    }

    /// Age at `now_ms` ([`crate::now_ms`] clock) of each broker's newest sample by the time it
    /// was measured (its `t_ms`), config order; `None` before its first. This is the decision
    /// lag of the inputs: report delay, or scrape plus query delay through Prometheus. It trusts
    /// the sampler's clock, so it means something only when both share one host's clock.
    pub fn sample_ages_ms(&self, now_ms: u64) -> Vec<Option<u64>> {
        self.brokers
            .iter()
            .map(|b| b.last_sample_ms.map(|t| now_ms.saturating_sub(t)))
            .collect()
    }

    /// The policies' view of every broker at `now`, in config order, in the selected metric.
    pub fn views(&self, now: Instant, out: &mut Vec<BrokerView>) {
        out.clear();
        let raw: Vec<(bool, Components, Components, u64)> = self
            .brokers
            .iter()
            .map(|b| {
                let live = self.live(b, now);
                (live, b.average(), b.pending(self.lag), b.placed)
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
    fn average_covers_the_window_by_arrival_time() {
        let mut t = table(Metric::Cpu);
        let start = Instant::now();
        for (s, cpu) in [(1, 100.0), (2, 10.0), (3, 20.0), (4, 30.0), (5, 40.0)] {
            t.record(&report("b1", s, cpu), start + s as u32 * SECOND)
                .unwrap();
        }
        assert_eq!(views(&t, start)[0].load, 40.0, "mean of 100,10,20,30,40");
        // Arrival jitter does not turn the 5 s window into 6 samples.
        let jittered = start + 6 * SECOND - Duration::from_millis(30);
        t.record(&report("b1", 6, 50.0), jittered).unwrap();
        assert_eq!(
            views(&t, start)[0].load,
            30.0,
            "t=1 fell out: mean of 10..50"
        );
    }

    #[test]
    fn the_window_keeps_whole_intervals() {
        let (w, i) = (5 * SECOND, SECOND);
        assert!(in_window(Duration::from_millis(4_400), w, i));
        assert!(!in_window(Duration::from_millis(4_500), w, i));
        assert!(!in_window(5 * SECOND, w, i));
        assert!(
            in_window(Duration::ZERO, SECOND, SECOND),
            "window = interval: newest only"
        );
        assert!(!in_window(SECOND, SECOND, SECOND));
    }

    #[test]
    fn a_report_dated_in_the_future_cannot_freeze_the_window() {
        // Skewed or malicious: an hour ahead, or the end of time.
        for future_ms in [(3_600 + 6) * 1000, u64::MAX] {
            let mut t = table(Metric::Cpu);
            let start = Instant::now();
            let at = |s: u32| start + s * SECOND;
            for s in 1..=5 {
                t.record(&report("b1", u64::from(s), 50.0), at(s)).unwrap();
            }
            let mut future = report("b1", 0, 100.0);
            future.t_ms = future_ms;
            t.record(&future, at(6)).unwrap();
            // Honest reports at 10 % keep coming; the average must follow them.
            let loads: Vec<f64> = (7..=12)
                .map(|s| {
                    t.record(&report("b1", u64::from(s), 10.0), at(s)).unwrap();
                    views(&t, at(s))[0].load
                })
                .collect();
            assert_eq!(
                loads,
                [52.0, 44.0, 36.0, 28.0, 10.0, 10.0],
                "t_ms {future_ms}"
            );
        }
    }

    #[test]
    fn visibility_lag_is_one_interval_for_cpu_two_for_rates() {
        assert_eq!(visibility_lag(Metric::Cpu), 1);
        assert_eq!(visibility_lag(Metric::Connections), 1);
        assert_eq!(visibility_lag(Metric::MsgRate), 2);
        assert_eq!(visibility_lag(Metric::Composite), 2);
        let placed = Instant::now();
        let ms = Duration::from_millis;
        assert!(!can_show(placed, placed + ms(999), SECOND));
        assert!(can_show(placed, placed + SECOND, SECOND));
        assert!(!can_show(placed, placed + ms(1_999), 2 * SECOND));
        assert!(can_show(placed, placed + 2 * SECOND, 2 * SECOND));
    }

    /// Samples every second at t = 1..=5 s, one client placed at 5.2 s, then samples at 6, 7, ...
    /// Returns the pending load after each of those samples, as a share of the full increment.
    fn pending_after_each_sample(metric: Metric) -> Vec<f64> {
        let mut t = table(metric);
        let start = Instant::now();
        let at = |s: u32| start + s * SECOND;
        for s in 1..=5 {
            t.record(&report("b1", u64::from(s), 10.0), at(s)).unwrap();
        }
        t.place(0, at(5) + Duration::from_millis(200));
        let full = views(&t, at(5))[0].pending;
        assert!(full > 0.0);
        (6..=13)
            .map(|s| {
                t.record(&report("b1", u64::from(s), 10.0), at(s)).unwrap();
                views(&t, at(s))[0].pending / full
            })
            .collect()
    }

    #[test]
    fn cpu_prediction_fades_from_the_first_sample_one_interval_after_placement() {
        let shares = pending_after_each_sample(Metric::Cpu);
        // t=6 arrived 0.8 s after the placement: cannot show the client yet.
        assert_eq!(shares[0], 1.0, "{shares:?}");
        // t=7 can: one fifth of the window shows it; t=11 is the fifth such sample.
        assert!((shares[1] - 0.8).abs() < 1e-9, "{shares:?}");
        assert_eq!(&shares[5..], [0.0, 0.0, 0.0], "{shares:?}");
    }

    #[test]
    fn msg_rate_prediction_waits_two_intervals() {
        let shares = pending_after_each_sample(Metric::MsgRate);
        // t=7 arrived 1.8 s after the placement: a rate cannot include the client yet.
        assert_eq!(&shares[..2], [1.0, 1.0], "{shares:?}");
        assert!((shares[2] - 0.8).abs() < 1e-9, "{shares:?}");
        assert_eq!(&shares[6..], [0.0, 0.0], "{shares:?}");
    }

    #[test]
    fn a_retired_prediction_leaves_no_bucket() {
        let mut t = table(Metric::MsgRate);
        let start = Instant::now();
        t.place(1, start);
        for s in 1..=8u32 {
            t.record(&report("b2", u64::from(s), 1.0), start + s * SECOND)
                .unwrap();
        }
        assert!(t.brokers[1].buckets.is_empty());
        assert_eq!(views(&t, start + 8 * SECOND)[1].pending, 0.0);
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
        t.place(1, now);
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
        t.place(1, now);
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
