//! Turns the event streams of one method run into per-second rows.
//!
//! Publishers count their messages per wall-clock second, agents sample on their own ticks;
//! run second `k` is `[t0 + k s, t0 + (k+1) s)` with `t0` floored to a whole second. Each
//! contribution carries the interval it covers: a publisher count its second, a CPU sample the
//! time since that broker's previous sample (one nominal interval for the first sample, or
//! after a gap of more than 3 intervals, e.g. an agent restarted after a fault). It is spread
//! over the run seconds that interval overlaps: counts in proportion to the overlap, CPU and
//! broker-side rates as an average weighted by the overlap's length, so a per-second value
//! never shows the 0-or-2 artefacts of rounding a phase-shifted tick into one bucket.
//!
//! Rows are cut on a timer: second `k`'s row is written once the clock passes its end +
//! [`Recorder::grace_ms`], whatever arrived meanwhile. A contribution that arrives later (a
//! stalled publisher task, a delayed sample) is not credited to another second nor silently
//! dropped: it is counted as late ([`Late`]), handed to the writer with the rows, and the
//! runner reports the totals in `manifest.json` and `summary.md`.

mod grid;

use std::collections::HashMap;

use crate::dispatcher::Decision;
use crate::load_report::LoadReport;
use crate::loadgen::{LoadEvent, Profile};
use crate::report::{BrokerRow, DecisionRow, Late, OutageRow, PublisherRow, ResultsWriter};
use grid::Grid;

/// How long after a second ends its row waits, beyond one sample interval, before it is
/// written: publisher counts are sent at the second's end and a CPU sample covering it
/// arrives within one sample interval of it, but on a busy 2-core host tasks run late.
const GRACE_MS: u64 = 2_000;

#[derive(Default)]
struct PublisherState {
    join_ms: Option<u64>,
    broker: String,
    redirect_ms: Option<f64>,
    outages: Vec<Outage>,
}

/// A `Down` and, once it came, the matching `Up` (epoch ms; broker ids).
struct Outage {
    broker: String,
    down_ms: u64,
    up: Option<(u64, String)>,
}

impl PublisherState {
    fn is_down(&self) -> bool {
        self.outages.last().is_some_and(|o| o.up.is_none())
    }
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
    /// The per-second buckets, cut on the clock.
    grid: Grid,
    /// Per broker index: the end of its latest CPU sample.
    last_sample_ms: HashMap<usize, u64>,
    publishers: HashMap<String, PublisherState>,
    /// Outages of finished publishers, until [`Recorder::take_outages`].
    outage_rows: Vec<OutageRow>,
    /// When the run was cut short (interrupted): open outages end there, not at the schedule.
    cut_at_ms: Option<u64>,
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
            grid: Grid::new(t0_ms - t0_ms % 1000, brokers.len()),
            last_sample_ms: HashMap::new(),
            publishers: HashMap::new(),
            outage_rows: Vec::new(),
            cut_at_ms: None,
        }
    }

    /// The broker id for an address (or id); unknown names stay as they are.
    fn broker_id(&self, name: &str) -> String {
        self.broker_index(name)
            .map_or_else(|| name.to_owned(), |i| self.brokers[i].clone())
    }

    /// The run is being stopped early (first call wins).
    pub fn cut_short(&mut self, now_ms: u64) {
        self.cut_at_ms.get_or_insert(now_ms);
    }

    /// The outage rows of the publishers finished so far (each handed out once).
    pub fn take_outages(&mut self) -> Vec<OutageRow> {
        std::mem::take(&mut self.outage_rows)
    }

    fn broker_index(&self, name: &str) -> Option<usize> {
        let id = self.ids_by_addr.get(name).map_or(name, String::as_str);
        self.brokers.iter().position(|b| b == id)
    }

    /// How long after a second's end its row is written: one sample interval + [`GRACE_MS`].
    pub fn grace_ms(&self) -> u64 {
        self.sample_interval_ms + GRACE_MS
    }

    /// A CPU sample, covering the time since this broker's previous sample.
    pub fn sample(&mut self, report: &LoadReport) {
        let Some(b) = self.broker_index(&report.broker) else {
            return;
        };
        let end = report.t_ms;
        let nominal = end.saturating_sub(self.sample_interval_ms);
        let start = match self.last_sample_ms.get(&b) {
            Some(&prev) if prev < end && end - prev <= 3 * self.sample_interval_ms => prev,
            _ => nominal,
        };
        if self.last_sample_ms.get(&b).is_none_or(|&prev| prev < end) {
            self.last_sample_ms.insert(b, end);
        }
        let cpu = report.cpu_pct;
        let received = report.msgs_in_per_s;
        let (late, _) = self.grid.spread(start, end, b, |bucket, piece| {
            bucket.cpu_sum += cpu * piece.ms;
            bucket.cpu_weight += piece.ms;
            if let Some(r) = received {
                bucket.received_sum += r * piece.ms;
                bucket.received_weight += piece.ms;
            }
        });
        self.grid.add_late(Late {
            contributions: late,
            msgs: 0.0,
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
            predicted: d.predicted.iter().map(|(_, p)| *p).collect(),
            sample_ages_ms: d.sample_ages_ms.iter().map(|(_, a)| *a).collect(),
            source: d.fed_by.as_str().to_owned(),
            role: d.role.as_str().to_owned(),
            group: d.group.clone().unwrap_or_default(),
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
                publisher,
                broker,
                downtime_ms,
                ..
            } => {
                let id = self.broker_id(broker);
                // `broker` stays the one it joined (publishers.csv, join markers on the plots);
                // where it went after the outage is the outage's `to_broker`.
                let state = self.publishers.entry(publisher.clone()).or_default();
                if let Some(o) = state.outages.last_mut().filter(|o| o.up.is_none()) {
                    // The load generator's own measure of the gap (Down → CONNACK).
                    o.up = Some((o.down_ms + downtime_ms, id));
                }
                None
            }
            LoadEvent::Down {
                publisher,
                broker,
                t_ms,
                ..
            } => {
                let id = self.broker_id(broker);
                let state = self.publishers.entry(publisher.clone()).or_default();
                if !state.is_down() {
                    state.outages.push(Outage {
                        broker: id,
                        down_ms: *t_ms,
                        up: None,
                    });
                }
                None
            }
            LoadEvent::Second {
                publisher,
                broker,
                t_ms,
                sent,
            } => {
                let b = self.broker_index(broker)?;
                // A disconnected publisher still streams its (empty) seconds: it is not counted
                // as connected to the broker it lost, or a dead broker would look busy.
                let connected =
                    *sent > 0 || self.publishers.get(publisher).is_none_or(|s| !s.is_down());
                let sent = *sent as f64;
                let name = publisher.clone();
                let (late, fraction) = self.grid.spread(*t_ms, t_ms + 1000, b, |bucket, piece| {
                    let w = piece.fraction;
                    bucket.sent += sent * w;
                    if w >= 0.5 && connected {
                        *bucket.publishers.entry(name.clone()).or_default() += sent * w;
                    }
                });
                self.grid.add_late(Late {
                    contributions: late,
                    msgs: sent * fraction,
                });
                None
            }
            LoadEvent::Finished {
                publisher,
                sent_total,
                target_total,
                downtime_ms: _,
            } => {
                let mut state = self.publishers.remove(publisher).unwrap_or_default();
                let profile = self.profile_of(publisher).cloned();
                let (rate, duration_s) = profile
                    .as_ref()
                    .map(|p| (p.rate, p.duration.as_secs_f64()))
                    .unwrap_or((0.0, 0.0));
                if state.join_ms.is_none() && self.cut_at_ms.is_none() {
                    // Never got a broker in its whole duration (it gives up then, so that is
                    // now): one outage over all of it, the broker it never reached unknown.
                    state.outages.push(Outage {
                        broker: String::new(),
                        down_ms: crate::now_ms().saturating_sub((duration_s * 1000.0) as u64),
                        up: None,
                    });
                }
                // An outage still open at the end lasted until the publisher's scheduled end (it
                // stops retrying up to one backoff step earlier), or until the run was cut short.
                // The load generator counts only outages that ended in a reconnect, which would
                // hide exactly the publishers that never came back.
                let end_ms = state
                    .join_ms
                    .map_or_else(crate::now_ms, |j| j + (duration_s * 1000.0) as u64)
                    .min(self.cut_at_ms.unwrap_or(u64::MAX));
                let mut downtime_ms = 0;
                for o in &state.outages {
                    let until = o.up.as_ref().map_or(end_ms, |(up, _)| *up).max(o.down_ms);
                    downtime_ms += until - o.down_ms;
                    let secs = |ms: u64| ms.saturating_sub(self.t0_ms) as f64 / 1000.0;
                    self.outage_rows.push(OutageRow {
                        trial: self.trial,
                        method: self.method.clone(),
                        publisher: publisher.clone(),
                        broker: o.broker.clone(),
                        down_s: secs(o.down_ms),
                        up_s: o.up.as_ref().map(|(up, _)| secs(*up)),
                        to_broker: o.up.as_ref().map(|(_, b)| b.clone()),
                        downtime_s: (until - o.down_ms) as f64 / 1000.0,
                        not_sent: (rate * (until - o.down_ms) as f64 / 1000.0).round() as u64,
                    });
                }
                Some(PublisherRow {
                    trial: self.trial,
                    method: self.method.clone(),
                    publisher: publisher.clone(),
                    profile: profile.map(|p| p.name).unwrap_or_default(),
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
                    downtime_s: downtime_ms as f64 / 1000.0,
                    target_total: *target_total,
                })
            }
        }
    }

    fn profile_of(&self, publisher: &str) -> Option<&Profile> {
        self.profiles.get(publisher)
    }

    /// Writes every second whose deadline (its end + [`Recorder::grace_ms`]) has passed on
    /// the clock, or all of them with `all` (the run is over), and hands the late
    /// contributions to the writer.
    pub fn write_settled(&mut self, writer: &mut ResultsWriter, all: bool) -> anyhow::Result<()> {
        let now = (!all).then(crate::now_ms);
        self.write_due(writer, now)
    }

    /// [`Recorder::write_settled`] at `now_ms` (`None` = everything).
    fn write_due(&mut self, writer: &mut ResultsWriter, now_ms: Option<u64>) -> anyhow::Result<()> {
        // Second k is due once now ≥ t0 + (k + 1) s + grace, i.e. k < the horizon.
        let horizon = now_ms.map(|now| {
            now.saturating_sub(self.grace_ms())
                .saturating_sub(self.t0_ms)
                / 1000
        });
        for (k, buckets) in self.grid.take_due(horizon) {
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
        }
        writer.add_late(self.grid.take_late());
        writer.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const T0: u64 = 1_700_000_000_000;

    fn recorder() -> Recorder {
        let profile = Profile {
            name: "light".into(),
            count: 2,
            rate: 500.0,
            payload_bytes: 16,
            duration: Duration::from_secs(10),
            qos: 0,
            topic: "t".into(),
            send: crate::loadgen::SendMode::PerMessage,
            batch_tick: crate::loadgen::profile::DEFAULT_BATCH_TICK,
        };
        let profiles = ["p0", "p1"].map(|p| (p.to_owned(), profile.clone())).into();
        let brokers = [("b1", "127.0.0.1:1"), ("b2", "127.0.0.1:2")]
            .map(|(id, addr)| (id.to_owned(), addr.to_owned()));
        Recorder::new(1, "m", T0, 200, &brokers, profiles)
    }

    fn second(publisher: &str, broker: &str, s: u64, sent: u64) -> LoadEvent {
        LoadEvent::Second {
            publisher: publisher.into(),
            broker: broker.into(),
            t_ms: T0 + s * 1000,
            sent,
        }
    }

    fn finish(r: &mut Recorder, publisher: &str) -> PublisherRow {
        r.load_event(&LoadEvent::Finished {
            publisher: publisher.into(),
            sent_total: 1,
            target_total: 5000,
            downtime_ms: 0,
        })
        .expect("a finished publisher has a row")
    }

    fn writer() -> (tempfile::TempDir, ResultsWriter) {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = ResultsWriter::create(dir.path(), &["b1".into(), "b2".into()]).expect("w");
        (dir, w)
    }

    fn rows(dir: &tempfile::TempDir) -> Vec<BrokerRow> {
        crate::report::records::read_brokers(dir.path()).expect("read")
    }

    #[test]
    fn rows_are_cut_on_the_clock_and_late_counts_are_counted_not_credited() {
        let mut r = recorder();
        let (dir, mut w) = writer();
        // Grace = 200 ms sample interval + 2 s: second 0 is due at T0 + 3.2 s.
        assert_eq!(r.grace_ms(), 2_200);
        r.load_event(&second("p0", "b1", 0, 500));
        r.write_due(&mut w, Some(T0 + 3_199)).expect("write");
        assert!(rows(&dir).is_empty(), "written before its deadline");
        r.write_due(&mut w, Some(T0 + 3_200)).expect("write");
        let got: Vec<(u64, String, f64)> = rows(&dir)
            .into_iter()
            .map(|x| (x.t_s, x.broker, x.sent_msgs_per_s))
            .collect();
        assert_eq!(got, vec![(0, "b1".into(), 500.0), (0, "b2".into(), 0.0)]);
        // A stalled publisher's count for second 0 arrives after its row: counted as late, and
        // not credited to second 1.
        r.load_event(&second("p1", "b1", 0, 300));
        r.load_event(&second("p0", "b1", 1, 500));
        // The clock closes seconds 1 and 2 (second 2 had nothing yet): a count for second 2
        // that comes afterwards is late too, even though second 2 has no row.
        r.write_due(&mut w, Some(T0 + 5_200)).expect("write");
        r.load_event(&second("p0", "b1", 2, 200));
        r.load_event(&second("p0", "b1", 3, 400));
        r.write_settled(&mut w, true).expect("write all");
        let b1: Vec<(u64, f64)> = rows(&dir)
            .iter()
            .filter(|x| x.broker == "b1")
            .map(|x| (x.t_s, x.sent_msgs_per_s))
            .collect();
        assert_eq!(b1, vec![(0, 500.0), (1, 500.0), (3, 400.0)]);
        assert_eq!(
            w.take_late(),
            Late {
                contributions: 2,
                msgs: 500.0
            }
        );
        assert_eq!(w.take_late(), Late::default(), "taken once");
    }

    #[test]
    fn a_sample_covers_the_time_since_its_brokers_previous_sample() {
        let mut r = recorder();
        let (dir, mut w) = writer();
        let sample = |t_ms: u64, cpu: f64| LoadReport {
            broker: "b1".into(),
            t_ms,
            cpu_pct: cpu,
            msgs_in_per_s: None,
            connections: None,
            token: None,
        };
        // First sample: one nominal interval, [0.7 s, 0.9 s). The next covers [0.9 s, 1.4 s):
        // 100 ms of second 0 and 400 ms of second 1. Second 0's CPU is the mean weighted by
        // time: (10 × 200 + 40 × 100) / 300.
        r.sample(&sample(T0 + 900, 10.0));
        r.sample(&sample(T0 + 1_400, 40.0));
        // After a gap of more than 3 intervals (an agent restarted): one nominal interval again.
        r.sample(&sample(T0 + 4_500, 70.0));
        r.write_settled(&mut w, true).expect("write");
        let cpu: Vec<(u64, Option<f64>)> = rows(&dir)
            .iter()
            .filter(|x| x.broker == "b1")
            .map(|x| (x.t_s, x.cpu_pct.map(|c| (c * 1000.0).round() / 1000.0)))
            .collect();
        assert_eq!(cpu, vec![(0, Some(20.0)), (1, Some(40.0)), (4, Some(70.0))]);
    }

    #[test]
    fn outages_closed_by_a_reconnect_and_left_open_are_both_counted() {
        let mut r = recorder();
        for p in ["p0", "p1"] {
            r.load_event(&LoadEvent::Joined {
                publisher: p.into(),
                broker: "127.0.0.1:2".into(),
                t_ms: T0,
                redirect_ms: None,
            });
            r.load_event(&LoadEvent::Down {
                publisher: p.into(),
                broker: "127.0.0.1:2".into(),
                t_ms: T0 + 4_000,
                error: "reset".into(),
            });
        }
        // p0 comes back on b1 after 1.5 s; p1 never does.
        r.load_event(&LoadEvent::Up {
            publisher: "p0".into(),
            broker: "127.0.0.1:1".into(),
            t_ms: T0 + 5_500,
            downtime_ms: 1_500,
            redirect_ms: Some(1.0),
        });
        r.load_event(&second("p1", "127.0.0.1:2", 6, 0));
        r.load_event(&second("p0", "127.0.0.1:1", 6, 500));

        let p0 = finish(&mut r, "p0");
        assert_eq!(
            (p0.broker.as_str(), p0.downtime_s),
            ("b2", 1.5),
            "the broker it joined"
        );
        let o = r.take_outages();
        assert_eq!(o.len(), 1);
        assert_eq!((o[0].broker.as_str(), o[0].down_s), ("b2", 4.0));
        assert_eq!(
            (o[0].up_s, o[0].to_broker.as_deref()),
            (Some(5.5), Some("b1"))
        );
        assert_eq!(o[0].not_sent, 750);
        assert!(r.take_outages().is_empty(), "handed out once");

        // Open until its scheduled end: joined at 0 s, 10 s long, down at 4 s → 6 s.
        let p1 = finish(&mut r, "p1");
        assert_eq!((p1.broker.as_str(), p1.downtime_s), ("b2", 6.0));
        let o = r.take_outages();
        assert_eq!(
            (o[0].up_s, o[0].to_broker.clone(), o[0].not_sent),
            (None, None, 3000)
        );

        // A publisher down on b2 is not counted as connected to it; p0 on b1 is.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = ResultsWriter::create(dir.path(), &["b1".into(), "b2".into()]).expect("w");
        r.write_settled(&mut w, true).expect("write");
        let rows = crate::report::records::read_brokers(dir.path()).expect("read");
        let at = |b: &str| {
            rows.iter()
                .find(|x| x.t_s == 6 && x.broker == b)
                .expect("row")
        };
        assert_eq!((at("b1").publishers, at("b1").sent_msgs_per_s), (1, 500.0));
        assert_eq!((at("b2").publishers, at("b2").sent_msgs_per_s), (0, 0.0));
    }

    #[test]
    fn a_publisher_that_moved_mid_second_is_counted_once_and_cut_short_ends_outages() {
        let mut r = recorder();
        r.load_event(&second("p0", "b2", 4, 100));
        r.load_event(&second("p0", "b1", 4, 400));
        r.load_event(&second("p1", "b2", 4, 500));
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = ResultsWriter::create(dir.path(), &["b1".into(), "b2".into()]).expect("w");
        r.write_settled(&mut w, true).expect("write");
        let rows = crate::report::records::read_brokers(dir.path()).expect("read");
        let b = |id: &str| rows.iter().find(|x| x.broker == id).expect("row");
        assert_eq!((b("b1").publishers, b("b1").sent_msgs_per_s), (1, 400.0));
        assert_eq!((b("b2").publishers, b("b2").sent_msgs_per_s), (1, 600.0));

        // Interrupted 2 s after the drop: the open outage ends there, not at the schedule.
        r.load_event(&LoadEvent::Joined {
            publisher: "p1".into(),
            broker: "b2".into(),
            t_ms: T0,
            redirect_ms: None,
        });
        r.load_event(&LoadEvent::Down {
            publisher: "p1".into(),
            broker: "b2".into(),
            t_ms: T0 + 5_000,
            error: "reset".into(),
        });
        r.cut_short(T0 + 7_000);
        r.cut_short(T0 + 9_000);
        assert_eq!(finish(&mut r, "p1").downtime_s, 2.0);
    }
}
