//! Turns the event streams of one method run into per-second rows.
//!
//! Publishers count their messages over their own one-second ticks, agents sample on theirs;
//! neither is aligned to the run's seconds. Each count is spread over the run seconds its
//! interval overlaps, in proportion to the overlap, so a per-second rate never shows the
//! 0-or-2 artefacts of rounding a phase-shifted tick into one bucket.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::dispatcher::Decision;
use crate::load_report::LoadReport;
use crate::loadgen::{LoadEvent, Profile};
use crate::report::{BrokerRow, DecisionRow, PublisherRow, ResultsWriter};

/// Seconds whose last event may still be in flight are held back this long before written.
const SETTLE_MS: u64 = 3_000;

#[derive(Default, Clone)]
struct Bucket {
    cpu_sum: f64,
    cpu_weight: f64,
    sent: f64,
    received_sum: f64,
    received_weight: f64,
    publishers: HashSet<String>,
}

#[derive(Default)]
struct PublisherState {
    join_ms: Option<u64>,
    broker: String,
    redirect_ms: Option<f64>,
}

pub struct Recorder {
    trial: u32,
    method: String,
    /// Start of the run, floored to a whole second: second `k` is `[t0 + k s, t0 + (k+1) s)`.
    t0_ms: u64,
    sample_interval_ms: u64,
    brokers: Vec<String>,
    /// Broker address → id, for publisher events that name the address they connected to.
    ids_by_addr: HashMap<String, String>,
    profiles: HashMap<String, Profile>,
    /// `seconds[k][broker index]`.
    seconds: BTreeMap<u64, Vec<Bucket>>,
    written_until: u64,
    latest_ms: u64,
    publishers: HashMap<String, PublisherState>,
}

impl Recorder {
    pub fn new(
        trial: u32,
        method: &str,
        t0_ms: u64,
        sample_interval_ms: u64,
        brokers: &[(String, String)],
        publisher_profiles: HashMap<String, Profile>,
    ) -> Self {
        Self {
            trial,
            method: method.to_owned(),
            t0_ms: t0_ms - t0_ms % 1000,
            sample_interval_ms: sample_interval_ms.max(1),
            brokers: brokers.iter().map(|(id, _)| id.clone()).collect(),
            ids_by_addr: brokers
                .iter()
                .map(|(id, addr)| (addr.clone(), id.clone()))
                .collect(),
            profiles: publisher_profiles,
            seconds: BTreeMap::new(),
            written_until: 0,
            latest_ms: t0_ms,
            publishers: HashMap::new(),
        }
    }

    fn broker_index(&self, name: &str) -> Option<usize> {
        let id = self.ids_by_addr.get(name).map_or(name, String::as_str);
        self.brokers.iter().position(|b| b == id)
    }

    /// Spreads `[start_ms, end_ms)` over run seconds; calls `f(second, broker, weight)`.
    fn spread(
        &mut self,
        start_ms: u64,
        end_ms: u64,
        broker: usize,
        mut f: impl FnMut(&mut Bucket, f64),
    ) {
        let start = start_ms.max(self.t0_ms);
        if end_ms <= start {
            return;
        }
        let total = (end_ms - start_ms) as f64;
        let n = self.brokers.len();
        let mut s = start;
        while s < end_ms {
            let k = (s - self.t0_ms) / 1000;
            let second_end = self.t0_ms + (k + 1) * 1000;
            let piece_end = second_end.min(end_ms);
            let weight = (piece_end - s) as f64 / total;
            if k >= self.written_until {
                let row = self
                    .seconds
                    .entry(k)
                    .or_insert_with(|| vec![Bucket::default(); n]);
                f(&mut row[broker], weight);
            }
            s = piece_end;
        }
        self.latest_ms = self.latest_ms.max(end_ms);
    }

    pub fn sample(&mut self, report: &LoadReport) {
        let Some(b) = self.broker_index(&report.broker) else {
            return;
        };
        let end = report.t_ms;
        let start = end.saturating_sub(self.sample_interval_ms);
        let cpu = report.cpu_pct;
        let received = report.msgs_in_per_s;
        self.spread(start, end, b, |bucket, w| {
            bucket.cpu_sum += cpu * w;
            bucket.cpu_weight += w;
            if let Some(r) = received {
                bucket.received_sum += r * w;
                bucket.received_weight += w;
            }
        });
    }

    pub fn decision(&self, d: &Decision) -> DecisionRow {
        DecisionRow {
            trial: self.trial,
            method: self.method.clone(),
            t_s: d.t_ms.saturating_sub(self.t0_ms) as f64 / 1000.0,
            client_id: d.client_id.clone(),
            broker: d.broker.clone().unwrap_or_default(),
            loads: d.loads.iter().map(|(_, load)| *load).collect(),
        }
    }

    /// Records a load-generator event; returns a finished publisher's row.
    pub fn load_event(&mut self, event: &LoadEvent) -> Option<PublisherRow> {
        match event {
            LoadEvent::Joined {
                publisher,
                broker,
                t_ms,
                redirect_ms,
            } => {
                let state = self.publishers.entry(publisher.clone()).or_default();
                state.join_ms = Some(*t_ms);
                state.broker = broker.clone();
                state.redirect_ms = *redirect_ms;
                None
            }
            LoadEvent::Up {
                publisher, broker, ..
            } => {
                self.publishers.entry(publisher.clone()).or_default().broker = broker.clone();
                None
            }
            LoadEvent::Down { .. } => None,
            LoadEvent::Second {
                publisher,
                broker,
                t_ms,
                sent,
            } => {
                let b = self.broker_index(broker)?;
                let sent = *sent as f64;
                let name = publisher.clone();
                self.spread(*t_ms, t_ms + 1000, b, |bucket, w| {
                    bucket.sent += sent * w;
                    if w >= 0.5 {
                        bucket.publishers.insert(name.clone());
                    }
                });
                None
            }
            LoadEvent::Finished {
                publisher,
                sent_total,
                target_total: _,
                downtime_ms,
            } => {
                let state = self.publishers.remove(publisher).unwrap_or_default();
                let profile = self.profile_of(publisher);
                let (rate, duration_s) = profile
                    .map(|p| (p.rate, p.duration.as_secs_f64()))
                    .unwrap_or((0.0, 0.0));
                Some(PublisherRow {
                    trial: self.trial,
                    method: self.method.clone(),
                    publisher: publisher.clone(),
                    profile: profile.map(|p| p.name.clone()).unwrap_or_default(),
                    join_s: state
                        .join_ms
                        .map_or(f64::NAN, |j| j.saturating_sub(self.t0_ms) as f64 / 1000.0),
                    broker: self
                        .broker_index(&state.broker)
                        .map_or(state.broker.clone(), |i| self.brokers[i].clone()),
                    redirect_ms: state.redirect_ms,
                    target_msgs_per_s: rate,
                    achieved_msgs_per_s: if duration_s > 0.0 {
                        *sent_total as f64 / duration_s
                    } else {
                        0.0
                    },
                    sent_total: *sent_total,
                    downtime_s: *downtime_ms as f64 / 1000.0,
                })
            }
        }
    }

    fn profile_of(&self, publisher: &str) -> Option<&Profile> {
        self.profiles.get(publisher)
    }

    /// Writes every second that can no longer change (or all of them with `all`).
    pub fn write_settled(&mut self, writer: &mut ResultsWriter, all: bool) -> anyhow::Result<()> {
        let horizon = if all {
            u64::MAX
        } else {
            self.latest_ms
                .saturating_sub(SETTLE_MS)
                .saturating_sub(self.t0_ms)
                / 1000
        };
        let ready: Vec<u64> = self.seconds.range(..horizon).map(|(k, _)| *k).collect();
        for k in ready {
            let buckets = self.seconds.remove(&k).expect("invariant: key just listed");
            for (i, bucket) in buckets.iter().enumerate() {
                writer.broker_row(&BrokerRow {
                    trial: self.trial,
                    method: self.method.clone(),
                    t_s: k,
                    broker: self.brokers[i].clone(),
                    cpu_pct: (bucket.cpu_weight > 0.0).then(|| bucket.cpu_sum / bucket.cpu_weight),
                    sent_msgs_per_s: bucket.sent,
                    received_msgs_per_s: (bucket.received_weight > 0.0)
                        .then(|| bucket.received_sum / bucket.received_weight),
                    publishers: bucket.publishers.len() as u32,
                })?;
            }
            self.written_until = k + 1;
        }
        writer.flush()?;
        Ok(())
    }
}
