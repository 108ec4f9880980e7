//! Per (trial, method) figures over the full-load window, and `summary.csv` (the cross-trial
//! tables are in [`super::tables`]).
//!
//! `summary.csv` columns: `trial,method,window_start_s,window_end_s,gap_msgs_per_s,jain_index,
//! mean_abs_cpu_diff_pct,optimum_gap_msgs_per_s`, then `mean_msgs_per_s_<broker>` per broker in
//! `brokers.csv` order (raw broker ids; the tables and plots rank brokers per trial instead).
//! Empty cells: Jain undefined (all zero), no CPU pairs, optimum not given.
//!
//! Full-load window: derived from `brokers.csv` alone. The seconds whose Σ `publishers` over
//! brokers equals that (trial, method)'s maximum are "all publishers active"; the window runs from
//! the first such second to the last, minus one second at each edge (partial seconds while a
//! publisher connects or stops). If trimming leaves nothing the untrimmed span is used.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::ReportError;
use super::records::{BrokerRow, first_seen};
use super::stats;

pub const SUMMARY_CSV: &str = "summary.csv";
pub const SUMMARY_MD: &str = "summary.md";
const OPTIMUM_COL: &str = "optimum_gap_msgs_per_s";

/// One (trial, method): the row of `summary.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    pub trial: u32,
    pub method: String,
    /// Inclusive bounds of the full-load window, in `t_s`.
    pub window_start_s: u64,
    pub window_end_s: u64,
    /// Busiest minus least busy broker's mean sent msg/s over the window.
    pub gap_msgs_per_s: f64,
    /// Jain's index of the per-broker means; `None` if every broker sent nothing.
    pub jain_index: Option<f64>,
    /// Mean over the window's seconds of the mean |CPU difference| over broker pairs
    /// (|a − b| for two brokers); seconds with fewer than two CPU samples are skipped.
    pub mean_abs_cpu_diff_pct: Option<f64>,
    /// The online optimum's gap for this trial's arrival order (same for every method).
    pub optimum_gap_msgs_per_s: Option<f64>,
    /// Mean sent msg/s per broker over the window, in `brokers.csv` order.
    pub brokers: Vec<(String, f64)>,
}

impl SummaryRow {
    /// Per-broker means sorted busiest first: brokers are symmetric and which one gets the heavy
    /// publisher varies by trial, so cross-trial figures compare ranks, not broker ids.
    pub fn ranked(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.brokers.iter().map(|(_, x)| *x).collect();
        v.sort_by(|a, b| b.total_cmp(a));
        v
    }
}

/// "busiest", "2nd", …, "least busy" for rank `i` (0-based) of `n` brokers.
pub fn rank_label(i: usize, n: usize) -> String {
    match i {
        0 => "busiest".into(),
        _ if i + 1 == n => "least busy".into(),
        1 => "2nd".into(),
        2 => "3rd".into(),
        _ => format!("{}th", i + 1),
    }
}

/// The full-load window of one (trial, method)'s rows, or `None` if no publisher was active.
pub fn full_load_window(rows: &[&BrokerRow]) -> Option<(u64, u64)> {
    let mut active: BTreeMap<u64, u32> = BTreeMap::new();
    for r in rows {
        *active.entry(r.t_s).or_default() += r.publishers;
    }
    let max = active.values().copied().max().filter(|&m| m > 0)?;
    let mut full = active.iter().filter(|&(_, &n)| n == max).map(|(&t, _)| t);
    let first = full.next()?;
    let last = full.next_back().unwrap_or(first);
    if last >= first + 2 {
        Some((first + 1, last - 1))
    } else {
        Some((first, last))
    }
}

/// Summary rows for every (trial, method) in `rows`, ordered by trial then by the methods'
/// first appearance. A (trial, method) with no active publisher is skipped with a warning.
pub fn compute(rows: &[BrokerRow], optimum_gaps: &HashMap<u32, f64>) -> Vec<SummaryRow> {
    let broker_ids = first_seen(rows.iter().map(|r| r.broker.as_str()));
    let methods = first_seen(rows.iter().map(|r| r.method.as_str()));
    let mut groups: BTreeMap<(u32, usize), Vec<&BrokerRow>> = BTreeMap::new();
    for r in rows {
        let m = methods.iter().position(|m| *m == r.method).unwrap_or(0);
        groups.entry((r.trial, m)).or_default().push(r);
    }
    let mut out = Vec::new();
    for ((trial, m), group) in groups {
        let Some((start, end)) = full_load_window(&group) else {
            tracing::warn!(trial, method = %methods[m], "no active publisher: not summarised");
            continue;
        };
        let in_window: Vec<&BrokerRow> = group
            .into_iter()
            .filter(|r| (start..=end).contains(&r.t_s))
            .collect();
        let brokers: Vec<(String, f64)> = broker_ids
            .iter()
            .map(|b| {
                let sent: Vec<f64> = in_window
                    .iter()
                    .filter(|r| r.broker == *b)
                    .map(|r| r.sent_msgs_per_s)
                    .collect();
                (b.clone(), stats::mean(&sent).unwrap_or(0.0))
            })
            .collect();
        let means: Vec<f64> = brokers.iter().map(|(_, x)| *x).collect();
        out.push(SummaryRow {
            trial,
            method: methods[m].clone(),
            window_start_s: start,
            window_end_s: end,
            gap_msgs_per_s: stats::gap(&means).unwrap_or(0.0),
            jain_index: stats::jain(&means),
            mean_abs_cpu_diff_pct: cpu_diff(&in_window),
            optimum_gap_msgs_per_s: optimum_gaps.get(&trial).copied(),
            brokers,
        });
    }
    out
}

/// Mean over seconds of the per-second mean |CPU difference| between broker pairs.
fn cpu_diff(rows: &[&BrokerRow]) -> Option<f64> {
    let mut per_second: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for r in rows {
        if let Some(cpu) = r.cpu_pct {
            per_second.entry(r.t_s).or_default().push(cpu);
        }
    }
    let diffs: Vec<f64> = per_second
        .values()
        .filter_map(|cpus| stats::mean_abs_pair_diff(cpus))
        .collect();
    stats::mean(&diffs)
}

/// Writes `summary.csv`: `trial,method,window_start_s,window_end_s,gap_msgs_per_s,jain_index,
/// mean_abs_cpu_diff_pct,optimum_gap_msgs_per_s,mean_msgs_per_s_<broker>...`.
pub fn write_csv(path: &Path, rows: &[SummaryRow]) -> Result<(), ReportError> {
    let mut w = csv::Writer::from_path(path).map_err(|e| ReportError::csv(path, e))?;
    let broker_ids: Vec<&str> = rows
        .first()
        .map(|r| r.brokers.iter().map(|(b, _)| b.as_str()).collect())
        .unwrap_or_default();
    let mut header: Vec<String> = [
        "trial",
        "method",
        "window_start_s",
        "window_end_s",
        "gap_msgs_per_s",
        "jain_index",
        "mean_abs_cpu_diff_pct",
        OPTIMUM_COL,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    header.extend(broker_ids.iter().map(|b| format!("mean_msgs_per_s_{b}")));
    w.write_record(&header)
        .map_err(|e| ReportError::csv(path, e))?;
    let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    for r in rows {
        let mut rec = vec![
            r.trial.to_string(),
            r.method.clone(),
            r.window_start_s.to_string(),
            r.window_end_s.to_string(),
            r.gap_msgs_per_s.to_string(),
            opt(r.jain_index),
            opt(r.mean_abs_cpu_diff_pct),
            opt(r.optimum_gap_msgs_per_s),
        ];
        rec.extend(r.brokers.iter().map(|(_, x)| x.to_string()));
        w.write_record(&rec)
            .map_err(|e| ReportError::csv(path, e))?;
    }
    w.flush().map_err(|e| ReportError::io(path, e))
}

/// The optimum gap per trial from an existing `summary.csv` (empty if absent or no column).
pub fn read_optimum(path: &Path) -> Result<HashMap<u32, f64>, ReportError> {
    let mut out = HashMap::new();
    if !path.exists() {
        return Ok(out);
    }
    let mut r = csv::Reader::from_path(path).map_err(|e| ReportError::csv(path, e))?;
    let headers = r.headers().map_err(|e| ReportError::csv(path, e))?.clone();
    let (Some(ti), Some(oi)) = (
        headers.iter().position(|h| h == "trial"),
        headers.iter().position(|h| h == OPTIMUM_COL),
    ) else {
        return Ok(out);
    };
    for rec in r.records() {
        let rec = rec.map_err(|e| ReportError::csv(path, e))?;
        let trial = rec.get(ti).and_then(|v| v.parse::<u32>().ok());
        let gap = rec.get(oi).and_then(|v| v.parse::<f64>().ok());
        if let (Some(t), Some(g)) = (trial, gap) {
            out.insert(t, g);
        }
    }
    Ok(out)
}

/// Rows grouped by method, methods in first-appearance order (the first is the baseline).
pub fn by_method(rows: &[SummaryRow]) -> Vec<(String, Vec<&SummaryRow>)> {
    first_seen(rows.iter().map(|r| r.method.as_str()))
        .into_iter()
        .map(|m| {
            let rs = rows.iter().filter(|r| r.method == m).collect();
            (m, rs)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(t_s: u64, broker: &str, sent: f64, publishers: u32, cpu: Option<f64>) -> BrokerRow {
        BrokerRow {
            trial: 1,
            method: "m".into(),
            t_s,
            broker: broker.into(),
            cpu_pct: cpu,
            sent_msgs_per_s: sent,
            received_msgs_per_s: None,
            publishers,
        }
    }

    #[test]
    fn window_is_the_full_span_trimmed_by_one_second() {
        // Σ publishers per second: 1, 2, 3, 3, 3, 3, 2.
        let counts = [(1, 0), (1, 1), (2, 1), (2, 1), (2, 1), (2, 1), (1, 1)];
        let rows: Vec<BrokerRow> = counts
            .iter()
            .enumerate()
            .flat_map(|(t, &(a, b))| {
                [
                    row(t as u64, "b1", 0.0, a, None),
                    row(t as u64, "b2", 0.0, b, None),
                ]
            })
            .collect();
        let refs: Vec<&BrokerRow> = rows.iter().collect();
        assert_eq!(full_load_window(&refs), Some((3, 4)));
        // Too short to trim: keep it whole.
        assert_eq!(full_load_window(&refs[..6]), Some((2, 2)));
        let idle = [row(0, "b1", 0.0, 0, None)];
        assert_eq!(full_load_window(&[&idle[0]]), None);
    }

    #[test]
    fn compute_averages_over_the_window_only() {
        let mut rows = Vec::new();
        for t in 0..10u64 {
            // Full load on 2..=7 → window 3..=6; outside it the numbers are wild.
            let full = (2..=7).contains(&t);
            let n = if full { 2 } else { 1 };
            let (a, b) = if (3..=6).contains(&t) {
                (18000.0, 10000.0)
            } else {
                (1.0, 99999.0)
            };
            rows.push(row(t, "b1", a, n, Some(40.0)));
            rows.push(row(t, "b2", b, n, if t == 4 { None } else { Some(30.0) }));
        }
        let opt = HashMap::from([(1, 0.0)]);
        let s = compute(&rows, &opt);
        assert_eq!(s.len(), 1);
        let s = &s[0];
        assert_eq!((s.window_start_s, s.window_end_s), (3, 6));
        assert_eq!(s.gap_msgs_per_s, 8000.0);
        assert_eq!(
            s.brokers,
            vec![("b1".into(), 18000.0), ("b2".into(), 10000.0)]
        );
        assert!((s.jain_index.expect("jain") - 784.0 / 848.0).abs() < 1e-12);
        assert_eq!(s.mean_abs_cpu_diff_pct, Some(10.0));
        assert_eq!(s.optimum_gap_msgs_per_s, Some(0.0));
        assert_eq!(s.ranked(), vec![18000.0, 10000.0]);
    }

    #[test]
    fn rank_labels() {
        assert_eq!(rank_label(0, 2), "busiest");
        assert_eq!(rank_label(1, 2), "least busy");
        let four: Vec<String> = (0..4).map(|i| rank_label(i, 4)).collect();
        assert_eq!(four, ["busiest", "2nd", "3rd", "least busy"]);
    }

    #[test]
    fn summary_csv_round_trips_the_optimum() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(SUMMARY_CSV);
        let r = SummaryRow {
            trial: 3,
            method: "dns-rr".into(),
            window_start_s: 1,
            window_end_s: 2,
            gap_msgs_per_s: 5.0,
            jain_index: None,
            mean_abs_cpu_diff_pct: None,
            optimum_gap_msgs_per_s: Some(4000.0),
            brokers: vec![("b1".into(), 5.0), ("b2".into(), 0.0)],
        };
        write_csv(&path, &[r]).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            text.starts_with(
                "trial,method,window_start_s,window_end_s,gap_msgs_per_s,jain_index,\
             mean_abs_cpu_diff_pct,optimum_gap_msgs_per_s,mean_msgs_per_s_b1,mean_msgs_per_s_b2\n\
             3,dns-rr,1,2,5,,,4000,5,0\n"
            ),
            "{text}"
        );
        assert_eq!(
            read_optimum(&path).expect("optimum"),
            HashMap::from([(3, 4000.0)])
        );
    }
}
