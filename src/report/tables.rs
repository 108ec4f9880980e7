//! The summary as tables: `summary.md` (per-method means ± 95 % CI, the winner, paired
//! differences against the baseline, per-trial rows) and a short console table for the end of a
//! run. Pure: strings from [`SummaryRow`]s.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::stats::Estimate;
use super::summary::{SummaryRow, by_method, rank_label};

fn est(rows: &[&SummaryRow], f: impl Fn(&SummaryRow) -> Option<f64>) -> Option<Estimate> {
    let xs: Vec<f64> = rows.iter().filter_map(|r| f(r)).collect();
    Estimate::of(&xs)
}

fn cell(e: Option<Estimate>, decimals: usize) -> String {
    e.map(|e| e.display(decimals)).unwrap_or_else(|| "–".into())
}

/// `summary.md`: per-method means ± 95 % CI, the winner, paired differences against the first
/// method, and the per-trial rows.
pub fn render_markdown(title: &str, rows: &[SummaryRow]) -> String {
    let mut md = String::new();
    let groups = by_method(rows);
    let n_brokers = rows.first().map_or(0, |r| r.brokers.len());
    let _ = writeln!(md, "# Summary: {title}\n");
    let _ = writeln!(
        md,
        "Full-load window: the seconds in which every publisher is connected, one second trimmed \
         at each edge. Throughput = publisher-side sent msg/s per broker, averaged over the \
         window. Across trials: mean ± 95 % CI (Student t). Brokers are ranked by throughput \
         within each trial. The online optimum is the gap of placing each arrival on the broker \
         with the least total rate, knowing every rate: a yardstick for connect-time placement \
         (a policy can beat it on a single order by luck, so gap − optimum may be negative).\n"
    );
    let _ = write!(
        md,
        "| method | trials | gap (msg/s) | online-optimum gap (msg/s) | gap − optimum (msg/s) \
         | Jain index | mean abs CPU diff (%) |"
    );
    for i in 0..n_brokers {
        let _ = write!(md, " {} (msg/s) |", rank_label(i, n_brokers));
    }
    let _ = write!(md, "\n|---|---:|---:|---:|---:|---:|---:|");
    md.push_str(&"---:|".repeat(n_brokers));
    md.push('\n');
    for (method, rs) in &groups {
        let _ = write!(
            md,
            "| {method} | {} | {} | {} | {} | {} | {} |",
            rs.len(),
            cell(est(rs, |r| Some(r.gap_msgs_per_s)), 0),
            cell(est(rs, |r| r.optimum_gap_msgs_per_s), 0),
            cell(
                est(rs, |r| r
                    .optimum_gap_msgs_per_s
                    .map(|o| r.gap_msgs_per_s - o)),
                0
            ),
            cell(est(rs, |r| r.jain_index), 3),
            cell(est(rs, |r| r.mean_abs_cpu_diff_pct), 2),
        );
        for i in 0..n_brokers {
            let _ = write!(
                md,
                " {} |",
                cell(est(rs, |r| r.ranked().get(i).copied()), 0)
            );
        }
        md.push('\n');
    }
    md.push('\n');
    write_winner(&mut md, &groups);
    write_paired(&mut md, &groups);
    write_per_trial(&mut md, rows);
    md
}

/// A short plain-text table for the end of a run: gap per method (mean ± 95 % CI), the online
/// optimum of the same trials, Jain's index, and the winner.
pub fn render_console(rows: &[SummaryRow]) -> String {
    let groups = by_method(rows);
    let width = groups
        .iter()
        .map(|(m, _)| m.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let mut out = format!(
        "{:<width$}  {:>6}  {:>22}  {:>22}  {:>15}\n",
        "method", "trials", "gap (msg/s)", "online optimum (msg/s)", "Jain index"
    );
    for (method, rs) in &groups {
        let _ = writeln!(
            out,
            "{method:<width$}  {:>6}  {:>22}  {:>22}  {:>15}",
            rs.len(),
            cell(est(rs, |r| Some(r.gap_msgs_per_s)), 0),
            cell(est(rs, |r| r.optimum_gap_msgs_per_s), 0),
            cell(est(rs, |r| r.jain_index), 3),
        );
    }
    let mut winner = String::new();
    write_winner(&mut winner, &groups);
    out.push_str(&winner.replace("**", "").replace(".\n\n", "\n"));
    out
}

fn write_winner(md: &mut String, groups: &[(String, Vec<&SummaryRow>)]) {
    let means: Vec<(&str, f64)> = groups
        .iter()
        .filter_map(|(m, rs)| Some((m.as_str(), est(rs, |r| Some(r.gap_msgs_per_s))?.mean)))
        .collect();
    let Some(&(best, best_gap)) = means.iter().min_by(|a, b| a.1.total_cmp(&b.1)) else {
        return;
    };
    let others: Vec<String> = means
        .iter()
        .filter(|(m, _)| *m != best)
        .map(|(m, g)| format!("{m} {g:.0}"))
        .collect();
    let _ = write!(
        md,
        "**Winner (smallest mean gap): {best}** with {best_gap:.0} msg/s"
    );
    if !others.is_empty() {
        let _ = write!(md, " (vs {})", others.join(", "));
    }
    md.push_str(".\n\n");
}

/// Paired differences against the first method: every method of a trial replays the same arrival
/// order, so per-trial differences remove the order's effect from the comparison.
fn write_paired(md: &mut String, groups: &[(String, Vec<&SummaryRow>)]) {
    let Some((base, base_rows)) = groups.first() else {
        return;
    };
    if groups.len() < 2 {
        return;
    }
    let _ = writeln!(md, "## Against the baseline `{base}` (paired by trial)\n");
    let _ = writeln!(
        md,
        "Δ = method − {base} within each trial, then mean ± 95 % CI over trials. A negative Δ gap \
         is a smaller gap; the difference is significant when the CI excludes 0.\n"
    );
    let _ = writeln!(
        md,
        "| method | paired trials | Δ gap (msg/s) | Δ Jain index | Δ mean abs CPU diff (%) | gap significant? |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---|");
    let base_of: HashMap<u32, &SummaryRow> = base_rows.iter().map(|r| (r.trial, *r)).collect();
    for (method, rs) in &groups[1..] {
        let pairs: Vec<(&SummaryRow, &SummaryRow)> = rs
            .iter()
            .filter_map(|r| Some((*r, *base_of.get(&r.trial)?)))
            .collect();
        let diff = |f: &dyn Fn(&SummaryRow) -> Option<f64>| {
            let xs: Vec<f64> = pairs
                .iter()
                .filter_map(|(a, b)| Some(f(a)? - f(b)?))
                .collect();
            Estimate::of(&xs)
        };
        let dgap = diff(&|r| Some(r.gap_msgs_per_s));
        let verdict = match dgap.and_then(|e| e.ci95.map(|ci| (e.mean, ci))) {
            Some((m, ci)) if m + ci < 0.0 => "yes, smaller",
            Some((m, ci)) if m - ci > 0.0 => "yes, larger",
            Some(_) => "no",
            None => "– (needs ≥ 2 trials)",
        };
        let _ = writeln!(
            md,
            "| {method} | {} | {} | {} | {} | {verdict} |",
            pairs.len(),
            cell(dgap, 0),
            cell(diff(&|r| r.jain_index), 3),
            cell(diff(&|r| r.mean_abs_cpu_diff_pct), 2),
        );
    }
    md.push('\n');
}

fn write_per_trial(md: &mut String, rows: &[SummaryRow]) {
    let _ = writeln!(md, "## Per trial\n");
    let brokers: Vec<&str> = rows
        .first()
        .map(|r| r.brokers.iter().map(|(b, _)| b.as_str()).collect())
        .unwrap_or_default();
    let _ = write!(
        md,
        "| trial | method | window (s) | gap (msg/s) | optimum gap (msg/s) | Jain index | mean abs CPU diff (%) |"
    );
    for b in &brokers {
        let _ = write!(md, " {b} (msg/s) |");
    }
    let _ = write!(md, "\n|---:|---|---|---:|---:|---:|---:|");
    md.push_str(&"---:|".repeat(brokers.len()));
    md.push('\n');
    let num = |v: Option<f64>, d: usize| v.map_or("–".into(), |x| format!("{x:.d$}"));
    for r in rows {
        let _ = write!(
            md,
            "| {} | {} | {}–{} | {:.0} | {} | {} | {} |",
            r.trial,
            r.method,
            r.window_start_s,
            r.window_end_s,
            r.gap_msgs_per_s,
            num(r.optimum_gap_msgs_per_s, 0),
            num(r.jain_index, 3),
            num(r.mean_abs_cpu_diff_pct, 2),
        );
        for (_, x) in &r.brokers {
            let _ = write!(md, " {x:.0} |");
        }
        md.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::stats;

    #[test]
    fn markdown_names_the_winner_and_the_paired_difference() {
        let mk = |trial: u32, method: &str, a: f64, b: f64| SummaryRow {
            trial,
            method: method.into(),
            window_start_s: 46,
            window_end_s: 99,
            gap_msgs_per_s: (a - b).abs(),
            jain_index: stats::jain(&[a, b]),
            mean_abs_cpu_diff_pct: Some(1.0),
            optimum_gap_msgs_per_s: Some(0.0),
            brokers: vec![("b1".into(), a), ("b2".into(), b)],
        };
        let rows = vec![
            mk(1, "dns-rr", 18000.0, 10000.0),
            mk(1, "proposed", 15000.0, 13000.0),
            mk(2, "dns-rr", 10000.0, 18000.0),
            mk(2, "proposed", 12000.0, 16000.0),
        ];
        let md = render_markdown("t", &rows);
        assert!(
            md.contains(
                "**Winner (smallest mean gap): proposed** with 3000 msg/s (vs dns-rr 8000)"
            ),
            "{md}"
        );
        // Paired Δ gap: −6000 and −4000 → mean −5000, sd √2·1000, t(1) = 12.706 → ± 12706.
        assert!(md.contains("| proposed | 2 | -5000 ± 12706 |"), "{md}");
        assert!(md.contains("| no |"), "{md}");
        // Ranked columns: busiest 18000 in both dns-rr trials regardless of broker id.
        assert!(md.contains("| dns-rr | 2 | 8000 ± 0 | 0 ± 0 | 8000 ± 0 | 0.925 ± 0.000 | 1.00 ± 0.00 | 18000 ± 0 | 10000 ± 0 |"), "{md}");
    }

    #[test]
    fn console_table_lists_every_method_and_the_winner() {
        let mk = |method: &str, gap: f64| SummaryRow {
            trial: 1,
            method: method.into(),
            window_start_s: 0,
            window_end_s: 1,
            gap_msgs_per_s: gap,
            jain_index: Some(1.0),
            mean_abs_cpu_diff_pct: None,
            optimum_gap_msgs_per_s: None,
            brokers: vec![("b1".into(), gap), ("b2".into(), 0.0)],
        };
        let text = render_console(&[mk("dns-rr", 8000.0), mk("least-load", 300.0)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[1].starts_with("dns-rr") && lines[1].contains("8000"),
            "{text}"
        );
        assert!(lines[2].contains("–"), "no optimum → dash: {text}");
        assert_eq!(
            lines[3],
            "Winner (smallest mean gap): least-load with 300 msg/s (vs dns-rr 8000)"
        );
    }
}
