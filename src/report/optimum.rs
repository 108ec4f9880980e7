//! The online-optimum yardstick: the gap a connect-time placer would reach if it knew
//! every publisher's exact rate, placing each arrival, in order, on the broker with the least
//! total rate so far (greedy list scheduling). It is what "perfect load knowledge" buys a
//! placer that cannot see future arrivals, so each method's gap is reported beside it.
//!
//! It is a yardstick, not a lower bound: on a given order another placement can end more even
//! (heavy publisher 7th of the paper's ten: greedy ends 16000/12000, while stacking the early light
//! publishers on one broker ends 14000/14000), so a policy may beat it on some trials by luck.

use std::collections::HashMap;

use super::records::PublisherRow;

/// Greedy placement of `rates_in_arrival_order` over `brokers` brokers (ties → lowest index);
/// returns max − min of the final per-broker totals. No brokers → 0.
pub fn online_optimum_gap(rates_in_arrival_order: &[f64], brokers: usize) -> f64 {
    let totals = online_optimum_totals(rates_in_arrival_order, brokers);
    let max = totals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = totals.iter().copied().fold(f64::INFINITY, f64::min);
    if totals.is_empty() { 0.0 } else { max - min }
}

/// The per-broker totals of the greedy placement, in broker index order.
pub fn online_optimum_totals(rates_in_arrival_order: &[f64], brokers: usize) -> Vec<f64> {
    let mut totals = vec![0.0_f64; brokers];
    for &rate in rates_in_arrival_order {
        // min_by keeps the first of equal elements, so ties go to the lowest index.
        let least = totals
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i);
        if let Some(i) = least {
            totals[i] += rate;
        }
    }
    totals
}

/// Recovers each trial's arrival order from `publishers.csv` (ordered by `join_s`, using the
/// first method seen for that trial: every method of a trial replays the same order) and returns
/// the online-optimum gap per trial. Used by `mqdispatch plot` when `summary.csv` has no
/// optimum column; the runner, which knows the order exactly, passes its own values instead.
pub fn optimum_from_publishers(rows: &[PublisherRow], brokers: usize) -> HashMap<u32, f64> {
    let mut first_method: HashMap<u32, &str> = HashMap::new();
    for r in rows {
        first_method.entry(r.trial).or_insert(&r.method);
    }
    first_method
        .into_iter()
        .map(|(trial, method)| {
            let mut arrivals: Vec<&PublisherRow> = rows
                .iter()
                .filter(|r| r.trial == trial && r.method == method)
                .collect();
            arrivals.sort_by(|a, b| a.join_s.total_cmp(&b.join_s));
            let rates: Vec<f64> = arrivals.iter().map(|r| r.target_msgs_per_s).collect();
            (trial, online_optimum_gap(&rates, brokers))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paper's workload: 9 light publishers at 2000 msg/s, the heavy one (10000) at `pos`
    /// (1-based) in the arrival order.
    fn paper(pos: usize) -> Vec<f64> {
        (1..=10)
            .map(|i| if i == pos { 10000.0 } else { 2000.0 })
            .collect()
    }

    #[test]
    fn paper_workload_matches_the_issue() {
        for pos in 1..=6 {
            assert_eq!(online_optimum_gap(&paper(pos), 2), 0.0, "heavy at {pos}");
        }
        for pos in 7..=8 {
            assert_eq!(online_optimum_gap(&paper(pos), 2), 4000.0, "heavy at {pos}");
        }
        for pos in 9..=10 {
            assert_eq!(online_optimum_gap(&paper(pos), 2), 8000.0, "heavy at {pos}");
        }
        let mean: f64 = (1..=10)
            .map(|p| online_optimum_gap(&paper(p), 2))
            .sum::<f64>()
            / 10.0;
        assert_eq!(mean, 2400.0);
    }

    #[test]
    fn a_lucky_placement_can_beat_the_yardstick() {
        // Heavy 7th: six lights on b0, heavy on b1, then b0, b1, b1 → 14000 vs 14000.
        let placement = [0, 0, 0, 0, 0, 0, 1, 0, 1, 1];
        let mut totals = [0.0; 2];
        for (rate, b) in paper(7).iter().zip(placement) {
            totals[b] += rate;
        }
        assert_eq!(totals, [14000.0, 14000.0]);
        assert_eq!(online_optimum_gap(&paper(7), 2), 4000.0);
    }

    #[test]
    fn ties_go_to_the_lowest_index() {
        assert_eq!(
            online_optimum_totals(&[5.0, 3.0, 1.0], 3),
            vec![5.0, 3.0, 1.0]
        );
        assert_eq!(online_optimum_totals(&[1.0, 1.0, 1.0], 2), vec![2.0, 1.0]);
    }

    #[test]
    fn degenerate_inputs() {
        assert_eq!(online_optimum_gap(&[], 2), 0.0);
        assert_eq!(online_optimum_gap(&[7.0], 0), 0.0);
        assert_eq!(online_optimum_gap(&[7.0], 1), 0.0);
        assert_eq!(online_optimum_gap(&[7.0], 2), 7.0);
    }

    #[test]
    fn arrival_order_is_recovered_from_join_times() {
        let row = |method: &str, publisher: &str, join_s: f64, rate: f64| PublisherRow {
            trial: 1,
            method: method.into(),
            publisher: publisher.into(),
            profile: if rate > 5000.0 { "heavy" } else { "light" }.into(),
            join_s,
            broker: "b1".into(),
            redirect_ms: None,
            target_msgs_per_s: rate,
            achieved_msgs_per_s: rate,
            sent_total: 0,
            downtime_s: 0.0,
            target_total: 0,
        };
        // Written out of order; heavy joins last of three: greedy gives 2000+10000 vs 2000.
        let rows = vec![
            row("dns-rr", "p2", 10.0, 10000.0),
            row("dns-rr", "p0", 0.0, 2000.0),
            row("dns-rr", "p1", 5.0, 2000.0),
            row("other", "p9", 0.0, 10000.0),
        ];
        assert_eq!(optimum_from_publishers(&rows, 2)[&1], 10000.0);
    }
}
