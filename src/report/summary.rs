//! Per (trial, method) figures over the full-load window, and `summary.csv` (the cross-trial
//! tables are in [`super::tables`]).
//!
//! `summary.csv` columns: `trial,method,window_start_s,window_end_s,gap_msgs_per_s,jain_index,
//! mean_abs_cpu_diff_pct,optimum_gap_msgs_per_s`, then `mean_msgs_per_s_<broker>` per broker in
//! `brokers.csv` order (raw broker ids; the tables and plots rank brokers per trial instead).
//! Empty cells: Jain undefined (all zero), no CPU pairs, optimum not given.
//!
//! Full-load window: one per trial from the arrival plan ([`super::window`]), stored by the
//! runner in `manifest.json`, the same for every method. Only for results folders written
//! before that ([`Windows::FromRows`]) is it derived per (trial, method) from `brokers.csv`:
//! the seconds whose Σ `publishers` over brokers equals that (trial, method)'s maximum, from the
//! first such second to the last, minus one second at each edge (the untrimmed span if trimming
//! leaves nothing).

use std::collections::{BTreeMap, HashMap};

use super::records::{BrokerRow, first_seen};
use super::stats;
use super::status::TrialDetail;

pub use super::summary_csv::{SUMMARY_CSV, read_csv, read_optimum, write_csv};
pub const SUMMARY_MD: &str = "summary.md";

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

/// Where the full-load windows come from.
#[derive(Debug, Clone, Copy)]
pub enum Windows<'a> {
    /// One per trial, from the arrival plan (`manifest.json`'s `trials_detail`).
    Plan(&'a [TrialDetail]),
    /// A results folder written before windows were stored: per (trial, method) from the rows.
    FromRows,
}

/// The summary rows, and what stopped a (trial, method) from having one.
#[derive(Debug, Default)]
pub struct Computed {
    pub rows: Vec<SummaryRow>,
    /// A (trial, method) that should have a row and has none (or none in its window).
    pub errors: Vec<String>,
    /// Caveats on rows that exist (a window only partly recorded, a trial without a plan).
    pub notes: Vec<String>,
}

/// The full-load window of one (trial, method) from its rows alone (results folders written
/// before windows were stored), or `None` if no publisher was active.
pub fn window_from_rows(rows: &[&BrokerRow]) -> Option<(u64, u64)> {
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
/// first appearance. `finished` lists the method runs that ran to their end: each must have
/// rows, or it is an error.
pub fn compute(
    rows: &[BrokerRow],
    optimum_gaps: &HashMap<u32, f64>,
    windows: Windows,
    finished: &[(u32, &str)],
) -> Computed {
    let broker_ids = first_seen(rows.iter().map(|r| r.broker.as_str()));
    let methods = first_seen(rows.iter().map(|r| r.method.as_str()));
    let mut groups: BTreeMap<(u32, usize), Vec<&BrokerRow>> = BTreeMap::new();
    for r in rows {
        let m = methods.iter().position(|m| *m == r.method).unwrap_or(0);
        groups.entry((r.trial, m)).or_default().push(r);
    }
    let mut out = Computed::default();
    for &(trial, method) in finished {
        let has_rows = methods
            .iter()
            .position(|m| m == method)
            .is_some_and(|m| groups.contains_key(&(trial, m)));
        if !has_rows {
            out.errors.push(format!(
                "trial {trial}, method {method}: ran to its end but wrote no row to brokers.csv"
            ));
        }
    }
    for ((trial, m), group) in groups {
        let method = &methods[m];
        let window = match windows {
            Windows::FromRows => window_from_rows(&group),
            Windows::Plan(details) => {
                match details
                    .iter()
                    .find(|d| d.trial == trial)
                    .and_then(|d| d.window)
                {
                    Some(w) => Some((w.window_start_s, w.window_end_s)),
                    None => {
                        out.notes.push(format!(
                            "trial {trial}: no arrival-plan window in manifest.json, so method \
                             {method}'s window comes from its own brokers.csv rows"
                        ));
                        window_from_rows(&group)
                    }
                }
            }
        };
        let Some((start, end)) = window else {
            out.errors.push(format!(
                "trial {trial}, method {method}: no second with an active publisher in brokers.csv"
            ));
            continue;
        };
        let in_window: Vec<&BrokerRow> = group
            .into_iter()
            .filter(|r| (start..=end).contains(&r.t_s))
            .collect();
        let seconds = distinct_seconds(&in_window);
        if seconds == 0 {
            let msg = format!(
                "trial {trial}, method {method}: no row of brokers.csv in its full-load window \
                 t = {start}–{end} s"
            );
            // A method run cut short may stop before the window: that is the interruption's
            // doing (the run is already incomplete), not a second error.
            let ran_to_end = matches!(windows, Windows::FromRows)
                || finished
                    .iter()
                    .any(|&(t, m)| t == trial && m == method.as_str());
            if ran_to_end {
                out.errors.push(msg);
            } else {
                out.notes.push(format!("{msg} (it did not run to its end)"));
            }
            continue;
        }
        if seconds < end - start + 1 {
            out.notes.push(format!(
                "trial {trial}, method {method}: brokers.csv has {seconds} of the window's {} \
                 seconds; its means are over those",
                end - start + 1
            ));
        }
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
        out.rows.push(SummaryRow {
            trial,
            method: method.clone(),
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

/// Distinct seconds among `rows`.
fn distinct_seconds(rows: &[&BrokerRow]) -> u64 {
    let mut seconds: Vec<u64> = rows.iter().map(|r| r.t_s).collect();
    seconds.sort_unstable();
    seconds.dedup();
    seconds.len() as u64
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

/// Subscriber figures per (trial, method) ([`super::subscribers::figures`]).
pub type SubscriberFiguresByRun =
    std::collections::BTreeMap<(u32, String), super::subscribers::SubscriberFigures>;

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
        assert_eq!(window_from_rows(&refs), Some((3, 4)));
        // Too short to trim: keep it whole.
        assert_eq!(window_from_rows(&refs[..6]), Some((2, 2)));
        let idle = [row(0, "b1", 0.0, 0, None)];
        assert_eq!(window_from_rows(&[&idle[0]]), None);
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
        let c = compute(&rows, &opt, Windows::FromRows, &[(1, "m")]);
        assert!(c.errors.is_empty() && c.notes.is_empty(), "{c:?}");
        assert_eq!(c.rows.len(), 1);
        let s = &c.rows[0];
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

    fn plan(trial: u32, start: u64, end: u64) -> TrialDetail {
        use crate::report::window::{PlanWindow, WindowRule};
        TrialDetail {
            trial,
            seed: 1,
            window: Some(PlanWindow {
                window_start_s: start,
                window_end_s: end,
                window_rule: WindowRule::AllActive,
                publishers_active: 2,
                publishers_planned: 2,
            }),
            methods: Vec::new(),
        }
    }

    #[test]
    fn every_method_of_a_trial_gets_the_plan_window_whatever_its_rows_say() {
        let mut rows = Vec::new();
        for t in 0..20u64 {
            // "a" has both publishers on 2..=17, "b" only on 8..=11 (one stalled): from their
            // rows alone their windows would differ (3..=16 vs 9..=10).
            for (method, full) in [("a", (2..=17).contains(&t)), ("b", (8..=11).contains(&t))] {
                let n = if full { 2 } else { 1 };
                let sent = if t == 5 { 1000.0 } else { 100.0 };
                rows.push(BrokerRow {
                    method: method.into(),
                    ..row(t, "b1", sent, n, None)
                });
                rows.push(BrokerRow {
                    method: method.into(),
                    ..row(t, "b2", 100.0, 0, None)
                });
            }
        }
        let details = [plan(1, 4, 15)];
        let c = compute(&rows, &HashMap::new(), Windows::Plan(&details), &[]);
        let got: Vec<(&str, u64, u64, f64)> = c
            .rows
            .iter()
            .map(|r| {
                (
                    r.method.as_str(),
                    r.window_start_s,
                    r.window_end_s,
                    r.gap_msgs_per_s,
                )
            })
            .collect();
        // Second 5's 1000 msg/s on b1 is inside 4..=15 for both: (1000 + 11·100)/12 − 100.
        assert_eq!(got, vec![("a", 4, 15, 75.0), ("b", 4, 15, 75.0)]);
        let legacy = compute(&rows, &HashMap::new(), Windows::FromRows, &[]);
        assert_ne!(legacy.rows[0].window_start_s, legacy.rows[1].window_start_s);
    }

    #[test]
    fn a_finished_method_without_rows_is_an_error_and_a_partial_window_a_note() {
        let rows: Vec<BrokerRow> = (0..10u64)
            .flat_map(|t| [row(t, "b1", 10.0, 1, None), row(t, "b2", 10.0, 1, None)])
            .collect();
        let details = [plan(1, 5, 14)];
        let c = compute(
            &rows,
            &HashMap::new(),
            Windows::Plan(&details),
            &[(1, "m"), (1, "other")],
        );
        assert_eq!(c.rows.len(), 1);
        assert_eq!(
            c.errors,
            ["trial 1, method other: ran to its end but wrote no row to brokers.csv"]
        );
        assert_eq!(
            c.notes,
            [
                "trial 1, method m: brokers.csv has 5 of the window's 10 seconds; its means are over those"
            ]
        );
        // A window past every row: an error, not a row of zeros; only a note for a method run
        // that was cut short.
        let details = [plan(1, 50, 60)];
        let c = compute(&rows, &HashMap::new(), Windows::Plan(&details), &[(1, "m")]);
        assert!(c.rows.is_empty());
        assert_eq!(
            c.errors,
            ["trial 1, method m: no row of brokers.csv in its full-load window t = 50–60 s"]
        );
        let c = compute(&rows, &HashMap::new(), Windows::Plan(&details), &[]);
        assert!(c.rows.is_empty() && c.errors.is_empty());
        assert_eq!(c.notes.len(), 1, "{c:?}");
    }

    #[test]
    fn rank_labels() {
        assert_eq!(rank_label(0, 2), "busiest");
        assert_eq!(rank_label(1, 2), "least busy");
        let four: Vec<String> = (0..4).map(|i| rank_label(i, 4)).collect();
        assert_eq!(four, ["busiest", "2nd", "3rd", "least busy"]);
    }
}
