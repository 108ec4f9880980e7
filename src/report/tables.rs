//! The summary as tables: `summary.md` (errors first, the window of each trial, the delivery
//! headline of a fault run, per-method means ± 95 % CI, the verdict, paired differences against
//! the baseline, per-trial rows, faults, late contributions) and a short console table for the
//! end of a run. Pure: strings from a [`Report`].

use std::collections::HashMap;
use std::fmt::Write as _;

use super::Report;
use super::faults;
use super::stats::Estimate;
use super::summary::{SummaryRow, by_method, rank_label};
use super::verdict::verdict;

fn est(rows: &[&SummaryRow], f: impl Fn(&SummaryRow) -> Option<f64>) -> Option<Estimate> {
    let xs: Vec<f64> = rows.iter().filter_map(|r| f(r)).collect();
    Estimate::of(&xs)
}

fn cell(e: Option<Estimate>, decimals: usize) -> String {
    e.map(|e| e.display(decimals)).unwrap_or_else(|| "–".into())
}

/// `summary.md`.
pub fn render_markdown(report: &Report) -> String {
    let rows = &report.rows;
    let mut md = String::new();
    let groups = by_method(rows);
    let n_brokers = rows.first().map_or(0, |r| r.brokers.len());
    let _ = writeln!(md, "# Summary: {}\n", report.title);
    match report.cpu_source.as_deref() {
        Some("host") => md.push_str(
            "CPU (`cpu_pct`): the whole machine's busy share from /proc/stat, as the paper \
             measured it (`sampler.cpu: host`).\n\n",
        ),
        Some(_) => md.push_str(
            "CPU (`cpu_pct`): each broker's own process, all its threads, in % of one core (or \
             of its cap); the paper measured whole hosts from /proc/stat (`sampler.cpu: host`).\n\n",
        ),
        None => {}
    }
    if let Some(cal) = &report.calibration {
        let _ = writeln!(md, "Calibration: {}.\n", cal.describe());
    }
    write_errors(&mut md, report);
    for line in &report.window_lines {
        let _ = writeln!(md, "- {line}");
    }
    if !report.window_lines.is_empty() {
        md.push('\n');
    }
    for line in &report.clocks {
        let _ = writeln!(md, "{line}\n");
    }
    if !report.notes.is_empty() {
        let _ = writeln!(md, "Notes:\n");
        for n in &report.notes {
            let _ = writeln!(md, "- {n}");
        }
        md.push('\n');
    }
    let _ = writeln!(
        md,
        "Throughput = publisher-side sent msg/s per broker (`sent_msgs_per_s` in brokers.csv), \
         averaged over the window's recorded seconds. Gap = busiest − least busy broker's mean; \
         Jain index of the per-broker means; mean abs CPU diff = mean over the window's seconds \
         of |CPU difference| between brokers (mean over pairs), seconds with fewer than two CPU \
         samples skipped. Across trials: mean ± 95 % CI (Student t; a single trial shows its \
         value alone). Brokers are ranked by throughput within each trial. The online optimum \
         is the gap of placing each arrival on the broker with the least total rate, knowing \
         every rate: a yardstick for connect-time placement (a policy can beat it on a single \
         order by luck, so gap − optimum may be negative).\n"
    );
    if report.fault_run {
        md.push_str(&faults::render_delivery(&report.delivery));
    }
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
    if let Some(v) = verdict(&groups, report.fault_run).text() {
        let _ = writeln!(md, "{v}\n");
    }
    write_paired(&mut md, &groups, report.fault_run);
    write_per_trial(&mut md, rows);
    md.push('\n');
    let methods: Vec<String> = groups.iter().map(|(m, _)| m.clone()).collect();
    md.push_str(&super::subscriber_tables::render_markdown(
        &report.subscribers,
        &methods,
    ));
    md.push_str(&super::subscriber_tables::render_members(
        &report.members,
        &report.subscribers,
        &methods,
    ));
    md.push_str(&report.faults_md);
    md.push_str(&report.moves_md);
    md.push_str(&report.inputs_md);
    write_recording(&mut md, report);
    md
}

fn write_errors(md: &mut String, report: &Report) {
    let why = report
        .incomplete
        .as_ref()
        .map_or(String::new(), |r| format!(" ({r})"));
    if report.errors.is_empty() {
        if report.incomplete.is_some() {
            let _ = writeln!(
                md,
                "## Incomplete run\n\nmanifest.json: `completed: false`{why}; the figures below \
                 cover only what was recorded.\n"
            );
        }
        return;
    }
    let _ = writeln!(
        md,
        "## Errors\n\nThese errors make the run incomplete{why}: `mqdispatch run` marks \
         manifest.json `completed: false` and exits non-zero, `mqdispatch plot` exits non-zero. \
         The figures below cover only what was recorded.\n"
    );
    for e in &report.errors {
        let _ = writeln!(md, "- {e}");
    }
    md.push('\n');
}

fn write_recording(md: &mut String, report: &Report) {
    if !report.host_lines.is_empty() {
        let _ = writeln!(md, "## Host, generator and delivery\n");
        for line in &report.host_lines {
            let _ = writeln!(md, "- {line}");
        }
        md.push('\n');
    }
    let Some((contributions, msgs)) = report.late else {
        return;
    };
    let _ = writeln!(
        md,
        "## Recording\n\nLate contributions: {contributions} ({msgs} messages). A second's row \
         in brokers.csv is written once the clock passes its end + one sampler interval + 2 s; \
         publisher counts and CPU samples for it that arrive later are in no row, and are \
         counted here (per method run in manifest.json).\n"
    );
}

/// A short plain-text table for the end of a run: gap per method (mean ± 95 % CI), the online
/// optimum of the same trials, Jain's index; the verdict; in a fault run the delivery; errors.
pub fn render_console(report: &Report) -> String {
    let groups = by_method(&report.rows);
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
    if let Some(v) = verdict(&groups, report.fault_run).text() {
        let _ = writeln!(out, "{}", v.replace("**", ""));
    }
    for warning in report
        .clocks
        .iter()
        .filter(|l| l.starts_with("**Warning**"))
    {
        let _ = writeln!(out, "{}", warning.replace("**", ""));
    }
    if report.fault_run {
        for d in &report.delivery {
            let _ = writeln!(
                out,
                "trial {} {}: sent {} of {} owed messages ({} % lost), max downtime {:.1} s, {} publisher(s) cut off",
                d.trial,
                d.method,
                d.sent,
                d.owed,
                d.lost_pct().map_or("–".into(), |x| format!("{x:.1}")),
                d.max_downtime_s,
                d.cut_off,
            );
        }
    }
    for e in &report.errors {
        let _ = writeln!(out, "error: {e}");
    }
    out
}

/// Paired differences against the first method: every method of a trial replays the same arrival
/// order, so per-trial differences remove the order's effect from the comparison.
fn write_paired(md: &mut String, groups: &[(String, Vec<&SummaryRow>)], fault_run: bool) {
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
            _ if fault_run => "– (fault run)",
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

    fn mk(trial: u32, method: &str, a: f64, b: f64) -> SummaryRow {
        SummaryRow {
            trial,
            method: method.into(),
            window_start_s: 47,
            window_end_s: 99,
            gap_msgs_per_s: (a - b).abs(),
            jain_index: stats::jain(&[a, b]),
            mean_abs_cpu_diff_pct: Some(1.0),
            optimum_gap_msgs_per_s: Some(0.0),
            brokers: vec![("b1".into(), a), ("b2".into(), b)],
        }
    }

    fn report(rows: Vec<SummaryRow>) -> Report {
        Report {
            title: "t".into(),
            rows,
            ..Report::default()
        }
    }

    fn winner_lines(text: &str) -> Vec<&str> {
        // The verdict is the one bold line.
        text.lines().filter(|l| l.starts_with("**")).collect()
    }

    #[test]
    fn a_smaller_mean_gap_whose_paired_ci_includes_0_is_no_winner() {
        let rows = vec![
            mk(1, "dns-rr", 18000.0, 10000.0),
            mk(1, "proposed", 15000.0, 13000.0),
            mk(2, "dns-rr", 10000.0, 18000.0),
            mk(2, "proposed", 12000.0, 16000.0),
        ];
        let md = render_markdown(&report(rows));
        assert!(
            md.contains(
                "**No significant difference** in gap (mean gap dns-rr 8000, proposed 3000 \
                 msg/s): the 95 % CI of the paired (same-trial) difference between proposed and \
                 dns-rr includes 0."
            ),
            "{md}"
        );
        assert!(!md.contains("Winner"), "{md}");
        // Paired Δ gap: −6000 and −4000 → mean −5000, sd √2·1000, t(1) = 12.706 → ± 12706.
        assert!(md.contains("| proposed | 2 | -5000 ± 12706 |"), "{md}");
        assert!(md.contains("| no |"), "{md}");
        // Ranked columns: busiest 18000 in both dns-rr trials regardless of broker id.
        assert!(md.contains("| dns-rr | 2 | 8000 ± 0 | 0 ± 0 | 8000 ± 0 | 0.925 ± 0.000 | 1.00 ± 0.00 | 18000 ± 0 | 10000 ± 0 |"), "{md}");
    }

    #[test]
    fn a_winner_is_named_when_its_paired_ci_excludes_0() {
        // proposed: Δ vs dns-rr = 6000, 5000, 4000 → 5000 ± 2484 (t(2) = 4.303): excludes 0.
        let mut two = Vec::new();
        for (t, p) in [(1, 2000.0), (2, 3000.0), (3, 4000.0)] {
            two.push(mk(t, "dns-rr", 18000.0, 10000.0));
            two.push(mk(t, "proposed", 14000.0 + p / 2.0, 14000.0 - p / 2.0));
        }
        let md = render_markdown(&report(two));
        assert_eq!(
            winner_lines(&md),
            [
                "**Winner: proposed** (mean gap dns-rr 8000, proposed 3000 msg/s): the 95 % CI of \
              the paired (same-trial) difference in gap excludes 0 against every other method."
            ]
        );
    }

    #[test]
    fn one_trial_names_no_winner_even_for_a_tie_or_a_big_difference() {
        for (a, b) in [(8000.0, 8000.0), (8000.0, 300.0)] {
            let rows = vec![
                mk(1, "dns-rr", 10000.0 + a, 10000.0),
                mk(1, "proposed", 10000.0 + b, 10000.0),
            ];
            let text = render_console(&report(rows));
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 4, "{text}");
            assert!(
                lines[1].starts_with("dns-rr") && lines[1].contains(&format!("{a:.0}")),
                "{text}"
            );
            assert_eq!(
                lines[3],
                format!(
                    "1 trial: no winner named (mean gap dns-rr {a:.0}, proposed {b:.0} msg/s; a \
                     confidence interval needs ≥ 2 trials)."
                )
            );
        }
    }

    #[test]
    fn a_fault_run_leads_with_delivery_and_names_no_winner() {
        let delivery = vec![
            faults::Delivery {
                trial: 1,
                method: "dns-rr".into(),
                owed: 10000,
                owed_estimated: false,
                sent: 6800,
                max_downtime_s: 30.0,
                cut_off: 2,
                faults: 1,
            },
            faults::Delivery {
                trial: 1,
                method: "proposed".into(),
                owed: 10000,
                owed_estimated: false,
                sent: 9990,
                max_downtime_s: 1.5,
                cut_off: 2,
                faults: 1,
            },
        ];
        let r = Report {
            fault_run: true,
            delivery,
            errors: vec![crate::report::RunError::new(
                crate::report::Stage::Fault,
                "trial 1, proposed: kill b2 failed",
            )],
            ..report(vec![
                mk(1, "dns-rr", 0.0, 0.0),
                mk(1, "proposed", 9000.0, 9000.0),
            ])
        };
        let md = render_markdown(&r);
        assert!(!md.contains("Winner"), "{md}");
        let errors = md.find("## Errors").expect("errors section");
        let delivery = md.find("## Delivery").expect("delivery section");
        let gap_table = md.find("| method | trials | gap").expect("gap table");
        assert!(errors < delivery && delivery < gap_table, "{md}");
        assert!(
            md.contains("- fault injection: trial 1, proposed: kill b2 failed"),
            "{md}"
        );
        assert!(
            md.contains("| 1 | dns-rr | 6800 / 10000 | 32.0 | 30.00 | 2 |"),
            "{md}"
        );
        assert_eq!(
            winner_lines(&md),
            ["**Fault run: no winner by gap**; compare delivery (sent / owed, downtime) instead."]
        );
        let text = render_console(&r);
        assert!(!text.contains("Winner"), "{text}");
        assert!(
            text.contains(
                "trial 1 dns-rr: sent 6800 of 10000 owed messages (32.0 % lost), max downtime \
                 30.0 s, 2 publisher(s) cut off"
            ),
            "{text}"
        );
        assert!(text.contains("error: fault injection: trial 1, proposed: kill b2 failed"));
    }
}
