//! The verdict on a comparison of methods by gap: a winner is named only when the 95 % CI of
//! the paired (same-trial) difference in gap against every other method excludes 0. One trial
//! gives no CI, and a fault run names no winner by gap at all. Pure.

use std::collections::HashMap;

use super::stats::Estimate;
use super::summary::SummaryRow;

/// What the summary says about a winner.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Fewer than two methods: nothing to compare.
    Nothing,
    /// Faults or outages in the run: gaps over dead brokers name no winner.
    FaultRun,
    /// No method has two trials: no confidence interval.
    OneTrial { means: Vec<(String, f64)> },
    /// The smallest mean gap, and the methods against which its paired CI does not exclude 0.
    NoSignificantDifference {
        means: Vec<(String, f64)>,
        best: String,
        against: Vec<String>,
    },
    /// The paired 95 % CI of (other − best) gap is above 0 against every other method.
    Winner {
        means: Vec<(String, f64)>,
        best: String,
    },
}

/// The verdict over methods' gaps: a winner only when the 95 % CI of the paired (same-trial)
/// difference in gap against every other method excludes 0.
pub fn verdict(groups: &[(String, Vec<&SummaryRow>)], fault_run: bool) -> Verdict {
    let means: Vec<(String, f64)> = groups
        .iter()
        .filter_map(|(m, rs)| {
            Some((
                m.clone(),
                Estimate::of(&rs.iter().map(|r| r.gap_msgs_per_s).collect::<Vec<_>>())?.mean,
            ))
        })
        .collect();
    if means.len() < 2 {
        return Verdict::Nothing;
    }
    if fault_run {
        return Verdict::FaultRun;
    }
    if groups.iter().all(|(_, rs)| rs.len() < 2) {
        return Verdict::OneTrial { means };
    }
    let Some((best, _)) = means.iter().min_by(|a, b| a.1.total_cmp(&b.1)).cloned() else {
        return Verdict::Nothing;
    };
    let gaps_of = |m: &str| -> HashMap<u32, f64> {
        groups
            .iter()
            .filter(|(name, _)| name == m)
            .flat_map(|(_, rs)| rs.iter().map(|r| (r.trial, r.gap_msgs_per_s)))
            .collect()
    };
    let best_gaps = gaps_of(&best);
    let against: Vec<String> = means
        .iter()
        .filter(|(m, _)| *m != best)
        .filter(|(m, _)| {
            let diffs: Vec<f64> = gaps_of(m)
                .iter()
                .filter_map(|(t, g)| Some(g - best_gaps.get(t)?))
                .collect();
            let excludes = Estimate::of(&diffs)
                .and_then(|e| Some(e.mean - e.ci95?))
                .is_some_and(|low| low > 0.0);
            !excludes
        })
        .map(|(m, _)| m.clone())
        .collect();
    if against.is_empty() {
        Verdict::Winner { means, best }
    } else {
        Verdict::NoSignificantDifference {
            means,
            best,
            against,
        }
    }
}

impl Verdict {
    /// The line for `summary.md` (markdown bold; the console strips it).
    pub fn text(&self) -> Option<String> {
        let list = |means: &[(String, f64)]| {
            means
                .iter()
                .map(|(m, g)| format!("{m} {g:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        Some(match self {
            Self::Nothing => return None,
            Self::FaultRun => "**Fault run: no winner by gap**; compare delivery (sent / owed, \
                               downtime) instead."
                .to_owned(),
            Self::OneTrial { means } => format!(
                "**1 trial: no winner named** (mean gap {} msg/s; a confidence interval needs \
                 ≥ 2 trials).",
                list(means)
            ),
            Self::NoSignificantDifference {
                means,
                best,
                against,
            } => format!(
                "**No significant difference** in gap (mean gap {} msg/s): the 95 % CI of the \
                 paired (same-trial) difference between {best} and {} includes 0.",
                list(means),
                against.join(", ")
            ),
            Self::Winner { means, best } => format!(
                "**Winner: {best}** (mean gap {} msg/s): the 95 % CI of the paired (same-trial) \
                 difference in gap excludes 0 against every other method.",
                list(means)
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::summary::by_method;

    fn row(trial: u32, method: &str, gap: f64) -> SummaryRow {
        SummaryRow {
            trial,
            method: method.into(),
            window_start_s: 47,
            window_end_s: 99,
            gap_msgs_per_s: gap,
            jain_index: None,
            mean_abs_cpu_diff_pct: None,
            optimum_gap_msgs_per_s: None,
            brokers: vec![("b1".into(), gap), ("b2".into(), 0.0)],
        }
    }

    #[test]
    fn a_winner_needs_the_paired_ci_to_exclude_0_against_every_other_method() {
        // proposed: Δ vs dns-rr = 6000, 5000, 4000 → 5000 ± 2484 (t(2) = 4.303): excludes 0.
        // least-load: Δ vs proposed = 500, −500, 1500 → 500 ± 2484: includes 0.
        let mut rows = Vec::new();
        for (t, p, l) in [
            (1, 2000.0, 2500.0),
            (2, 3000.0, 2500.0),
            (3, 4000.0, 5500.0),
        ] {
            rows.push(row(t, "dns-rr", 8000.0));
            rows.push(row(t, "proposed", p));
            rows.push(row(t, "least-load", l));
        }
        let groups = by_method(&rows);
        let means = |ms: &[(&str, f64)]| ms.iter().map(|(m, g)| (m.to_string(), *g)).collect();
        assert_eq!(
            verdict(&groups[..2], false),
            Verdict::Winner {
                means: means(&[("dns-rr", 8000.0), ("proposed", 3000.0)]),
                best: "proposed".into(),
            }
        );
        assert_eq!(
            verdict(&groups, false),
            Verdict::NoSignificantDifference {
                means: means(&[
                    ("dns-rr", 8000.0),
                    ("proposed", 3000.0),
                    ("least-load", 3500.0)
                ]),
                best: "proposed".into(),
                against: vec!["least-load".into()],
            }
        );
        // The same numbers in a fault run name nobody; one method has nothing to compare.
        assert_eq!(verdict(&groups, true), Verdict::FaultRun);
        assert_eq!(verdict(&groups[..1], false), Verdict::Nothing);
    }

    #[test]
    fn a_tie_or_a_single_trial_is_no_win() {
        let tie: Vec<SummaryRow> = (1..=3)
            .flat_map(|t| [row(t, "dns-rr", 8000.0), row(t, "proposed", 8000.0)])
            .collect();
        assert!(matches!(
            verdict(&by_method(&tie), false),
            Verdict::NoSignificantDifference { .. }
        ));
        let one = [row(1, "dns-rr", 8000.0), row(1, "proposed", 0.0)];
        assert!(matches!(
            verdict(&by_method(&one), false),
            Verdict::OneTrial { .. }
        ));
    }
}
