//! The subscriber half's files and figures.
//!
//! - `subscribers.csv`: per member and second, messages received, latency p50/p99/max and the
//!   member's moves so far.
//! - `latency.csv`: per broker and second, the same over every member on that broker.
//! - `receipts.csv`: per delivery unit and publisher, expected/received/lost/duplicates/out of
//!   order, from the sequence numbers.
//! - `latency-<method>-t<k>.hlog`: the method run's whole latency histogram per broker (tag =
//!   broker id) and over all brokers (tag `all`), in HdrHistogram's interval-log format (µs), so
//!   any HdrHistogram tool reads them.
//!
//! [`figures`] reads them back into per-(trial, method) [`SubscriberFigures`]: the summary's
//! columns and its Subscribers section.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriterBuilder, LogEntry, Tag,
};
use hdrhistogram::serialization::{Deserializer, V2Serializer};
use serde::{Deserialize, Serialize};

use super::ReportError;
use super::records::{HeaderSample, header_of, open_append, optional_rows};
use crate::loadgen::receipts::{latency_histogram, max_ms, quantile_ms};
use crate::loadgen::streams::StreamRow;

pub const SUBSCRIBERS_CSV: &str = "subscribers.csv";
pub const LATENCY_CSV: &str = "latency.csv";
pub const RECEIPTS_CSV: &str = "receipts.csv";
/// The hlog tag of the histogram over every broker.
pub const ALL_BROKERS: &str = "all";

/// `latency-<method>-t<k>.hlog`.
pub fn hlog_name(trial: u32, method: &str) -> String {
    format!("latency-{method}-t{trial}.hlog")
}

/// One member's second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriberRow {
    pub trial: u32,
    pub method: String,
    pub t_s: u64,
    pub subscriber: String,
    pub broker: String,
    pub received: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    /// The member's moves so far (server DISCONNECT 0x9C/0x9D followed); 0 in files written
    /// before the column existed.
    #[serde(default)]
    pub moves: u32,
}

/// One broker's second, over every member on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyRow {
    pub trial: u32,
    pub method: String,
    pub t_s: u64,
    pub broker: String,
    pub received: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
}

impl LatencyRow {
    pub fn of(trial: u32, method: &str, t_s: u64, broker: &str, h: &Histogram<u64>) -> Self {
        Self {
            trial,
            method: method.to_owned(),
            t_s,
            broker: broker.to_owned(),
            received: h.len(),
            latency_p50_ms: round3(quantile_ms(h, 0.5)),
            latency_p99_ms: round3(quantile_ms(h, 0.99)),
            latency_max_ms: round3(max_ms(h)),
        }
    }
}

/// One delivery unit's view of one publisher, in one method run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptRow {
    pub trial: u32,
    pub method: String,
    pub subscriber: String,
    pub unit: String,
    pub publisher: String,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
}

impl ReceiptRow {
    pub fn of(trial: u32, method: &str, r: &StreamRow) -> Self {
        Self {
            trial,
            method: method.to_owned(),
            subscriber: r.subscriber.clone(),
            unit: r.unit.clone(),
            publisher: r.publisher.clone(),
            expected: r.expected,
            received: r.received,
            lost: r.lost,
            duplicates: r.duplicates,
            out_of_order: r.out_of_order,
        }
    }
}

pub fn round3(v: Option<f64>) -> Option<f64> {
    v.map(|v| (v * 1000.0).round() / 1000.0)
}

impl HeaderSample for SubscriberRow {
    fn sample() -> Self {
        SubscriberRow {
            trial: 0,
            method: String::new(),
            t_s: 0,
            subscriber: String::new(),
            broker: String::new(),
            received: 0,
            latency_p50_ms: None,
            latency_p99_ms: None,
            latency_max_ms: None,
            moves: 0,
        }
    }
}

impl HeaderSample for LatencyRow {
    fn sample() -> Self {
        LatencyRow::of(0, "", 0, "", &latency_histogram())
    }
}

impl HeaderSample for ReceiptRow {
    fn sample() -> Self {
        ReceiptRow::of(0, "", &StreamRow::default())
    }
}

/// The three CSVs, appended to as a run goes (created with their header on first use).
pub struct SubscriberFiles {
    dir: PathBuf,
    subscribers: csv::Writer<File>,
    latency: csv::Writer<File>,
    receipts: csv::Writer<File>,
}

impl SubscriberFiles {
    pub fn open(dir: &Path) -> Result<Self, ReportError> {
        Ok(Self {
            dir: dir.to_owned(),
            subscribers: open_append(&dir.join(SUBSCRIBERS_CSV), &header_of::<SubscriberRow>())?,
            latency: open_append(&dir.join(LATENCY_CSV), &header_of::<LatencyRow>())?,
            receipts: open_append(&dir.join(RECEIPTS_CSV), &header_of::<ReceiptRow>())?,
        })
    }

    pub fn subscriber_row(&mut self, row: &SubscriberRow) -> Result<(), ReportError> {
        self.subscribers
            .serialize(row)
            .map_err(|e| ReportError::csv(SUBSCRIBERS_CSV, e))
    }

    pub fn latency_row(&mut self, row: &LatencyRow) -> Result<(), ReportError> {
        self.latency
            .serialize(row)
            .map_err(|e| ReportError::csv(LATENCY_CSV, e))
    }

    pub fn receipt_row(&mut self, row: &ReceiptRow) -> Result<(), ReportError> {
        self.receipts
            .serialize(row)
            .map_err(|e| ReportError::csv(RECEIPTS_CSV, e))
    }

    pub fn flush(&mut self) -> Result<(), ReportError> {
        for (name, w) in [
            (SUBSCRIBERS_CSV, &mut self.subscribers),
            (LATENCY_CSV, &mut self.latency),
            (RECEIPTS_CSV, &mut self.receipts),
        ] {
            w.flush().map_err(|e| ReportError::io(Path::new(name), e))?;
        }
        Ok(())
    }

    /// Writes a method run's histograms (`(tag, histogram)`, tags without spaces or commas)
    /// to a new `latency-<method>-t<k>.hlog`; `start_ms`/`end_ms` bound the interval.
    pub fn write_hlog(
        &self,
        trial: u32,
        method: &str,
        start_ms: u64,
        end_ms: u64,
        histograms: &[(String, &Histogram<u64>)],
    ) -> Result<(), ReportError> {
        let path = self.dir.join(hlog_name(trial, method));
        let bytes = encode_hlog(start_ms, end_ms, histograms)
            .map_err(|e| ReportError::Invalid(format!("{}: {e}", path.display())))?;
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| ReportError::io(&path, e))?;
        std::io::Write::write_all(&mut file, &bytes).map_err(|e| ReportError::io(&path, e))
    }
}

fn encode_hlog(
    start_ms: u64,
    end_ms: u64,
    histograms: &[(String, &Histogram<u64>)],
) -> Result<Vec<u8>, String> {
    let start = std::time::UNIX_EPOCH + std::time::Duration::from_millis(start_ms);
    let length = std::time::Duration::from_millis(end_ms.saturating_sub(start_ms));
    let mut out = Vec::new();
    let mut serializer = V2Serializer::new();
    let mut log = IntervalLogWriterBuilder::new()
        .add_comment("mqdispatch end-to-end latency, microseconds; tag = broker id or `all`")
        .with_start_time(start)
        .with_base_time(start)
        .begin_log_with(&mut out, &mut serializer)
        .map_err(|e| e.to_string())?;
    for (tag, h) in histograms {
        let tag = Tag::new(tag).ok_or_else(|| format!("`{tag}` cannot be an hlog tag"))?;
        log.write_histogram(h, std::time::Duration::ZERO, length, Some(tag))
            .map_err(|e| format!("{e:?}"))?;
    }
    drop(log);
    Ok(out)
}

/// Every tagged histogram of an hlog file, in file order.
pub fn read_hlog(path: &Path) -> Result<Vec<(String, Histogram<u64>)>, ReportError> {
    let bytes = std::fs::read(path).map_err(|e| ReportError::io(path, e))?;
    let bad = |what: String| ReportError::Invalid(format!("{}: {what}", path.display()));
    let mut out = Vec::new();
    let mut deserializer = Deserializer::new();
    for entry in IntervalLogIterator::new(&bytes) {
        let LogEntry::Interval(interval) = entry.map_err(|e| bad(format!("{e:?}")))? else {
            continue;
        };
        let tag = interval
            .tag()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(interval.encoded_histogram())
            .map_err(|e| bad(e.to_string()))?;
        let h: Histogram<u64> = deserializer
            .deserialize(&mut raw.as_slice())
            .map_err(|e| bad(format!("{e:?}")))?;
        out.push((tag, h));
    }
    Ok(out)
}

pub fn read_subscribers(dir: &Path) -> Result<Vec<SubscriberRow>, ReportError> {
    optional_rows(&dir.join(SUBSCRIBERS_CSV))
}

pub fn read_latency(dir: &Path) -> Result<Vec<LatencyRow>, ReportError> {
    optional_rows(&dir.join(LATENCY_CSV))
}

pub fn read_receipts(dir: &Path) -> Result<Vec<ReceiptRow>, ReportError> {
    optional_rows(&dir.join(RECEIPTS_CSV))
}

/// Latency quantiles of a histogram, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Quantiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub count: u64,
}

impl Quantiles {
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        Some(Self {
            p50_ms: quantile_ms(h, 0.5)?,
            p99_ms: quantile_ms(h, 0.99)?,
            p999_ms: quantile_ms(h, 0.999)?,
            max_ms: max_ms(h)?,
            count: h.len(),
        })
    }
}

/// What the subscribers of one (trial, method) got.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SubscriberFigures {
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Over every broker; `None` when nothing arrived.
    pub latency: Option<Quantiles>,
    /// Per broker, in broker order.
    pub per_broker: Vec<(String, Option<Quantiles>)>,
}

/// Per (trial, method): the figures of every method run that wrote receipts; empty for a run
/// without subscribers.
pub fn figures(dir: &Path) -> Result<BTreeMap<(u32, String), SubscriberFigures>, ReportError> {
    let mut out: BTreeMap<(u32, String), SubscriberFigures> = BTreeMap::new();
    for r in read_receipts(dir)? {
        let f = out.entry((r.trial, r.method.clone())).or_default();
        f.expected += r.expected;
        f.delivered += r.received;
        f.lost += r.lost;
        f.duplicates += r.duplicates;
        f.out_of_order += r.out_of_order;
    }
    for ((trial, method), f) in out.iter_mut() {
        let path = dir.join(hlog_name(*trial, method));
        if !path.exists() {
            continue;
        }
        for (tag, h) in read_hlog(&path)? {
            if tag == ALL_BROKERS {
                f.latency = Quantiles::of(&h);
            } else {
                f.per_broker.push((tag, Quantiles::of(&h)));
            }
        }
    }
    Ok(out)
}

/// The `summary.csv` columns these figures add, header first (per broker for `brokers`).
pub fn csv_columns(brokers: &[String]) -> Vec<String> {
    let mut h: Vec<String> = [
        "expected_msgs",
        "delivered_msgs",
        "lost_msgs",
        "duplicate_msgs",
        "out_of_order_msgs",
        "latency_p50_ms",
        "latency_p99_ms",
        "latency_p999_ms",
        "latency_max_ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for b in brokers {
        for q in ["p50", "p99", "p999", "max"] {
            h.push(format!("latency_{q}_ms_{b}"));
        }
    }
    h
}

/// The values of [`csv_columns`] for one (trial, method); empty strings where unknown.
pub fn csv_values(f: Option<&SubscriberFigures>, brokers: &[String]) -> Vec<String> {
    let Some(f) = f else {
        return vec![String::new(); csv_columns(brokers).len()];
    };
    let q = |q: Option<Quantiles>| -> [String; 4] {
        match q {
            Some(q) => [q.p50_ms, q.p99_ms, q.p999_ms, q.max_ms].map(|v| v.to_string()),
            None => Default::default(),
        }
    };
    let mut v = vec![
        f.expected.to_string(),
        f.delivered.to_string(),
        f.lost.to_string(),
        f.duplicates.to_string(),
        f.out_of_order.to_string(),
    ];
    v.extend(q(f.latency));
    for b in brokers {
        let per = f
            .per_broker
            .iter()
            .find(|(id, _)| id == b)
            .and_then(|(_, q)| *q);
        v.extend(q(per));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hlog_round_trips_tagged_histograms() {
        let dir = tempfile::tempdir().unwrap();
        let files = SubscriberFiles::open(dir.path()).unwrap();
        let mut b1 = latency_histogram();
        let mut all = latency_histogram();
        for us in [100, 200, 300, 40_000] {
            b1.record(us).unwrap();
            all.record(us).unwrap();
        }
        all.record(7).unwrap();
        files
            .write_hlog(
                2,
                "dns-rr",
                1_000,
                5_000,
                &[("b1".into(), &b1), ("all".into(), &all)],
            )
            .unwrap();
        let back = read_hlog(&dir.path().join(hlog_name(2, "dns-rr"))).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].0, "b1");
        assert_eq!(back[0].1.len(), 4);
        assert_eq!(back[0].1.max(), b1.max());
        assert_eq!(back[1].0, "all");
        assert_eq!(back[1].1.min(), 7);
        let again = files.write_hlog(2, "dns-rr", 0, 1, &[]);
        assert!(again.is_err(), "an hlog is never overwritten");
    }

    #[test]
    fn figures_sum_receipts_and_read_quantiles() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = SubscriberFiles::open(dir.path()).unwrap();
        for (publisher, expected, received) in [("p-0", 100, 100), ("p-1", 50, 47)] {
            let row = StreamRow {
                subscriber: "g".into(),
                unit: "g".into(),
                publisher: publisher.into(),
                expected,
                received,
                lost: expected - received,
                duplicates: 1,
                out_of_order: 0,
            };
            files.receipt_row(&ReceiptRow::of(1, "m", &row)).unwrap();
        }
        files.flush().unwrap();
        let mut all = latency_histogram();
        for us in 1..=1000 {
            all.record(us * 10).unwrap();
        }
        files
            .write_hlog(
                1,
                "m",
                0,
                1000,
                &[("b1".into(), &all), ("all".into(), &all)],
            )
            .unwrap();
        let f = figures(dir.path()).unwrap();
        let f = &f[&(1, "m".to_owned())];
        assert_eq!(
            (f.expected, f.delivered, f.lost, f.duplicates),
            (150, 147, 3, 2)
        );
        let q = f.latency.unwrap();
        assert!((q.p50_ms - 5.0).abs() < 0.05, "{q:?}");
        assert!((q.max_ms - 10.0).abs() < 0.05, "{q:?}");
        let brokers = vec!["b1".to_owned(), "b2".to_owned()];
        let cols = csv_columns(&brokers);
        let vals = csv_values(Some(f), &brokers);
        assert_eq!(cols.len(), vals.len());
        assert_eq!(vals[2], "3");
        assert_eq!(vals.last().unwrap(), "", "b2 has no histogram");
    }
}
