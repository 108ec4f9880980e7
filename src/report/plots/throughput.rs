//! `throughput.png` (the paper's Fig. 6): per method, one bar per broker rank (busiest … least
//! busy) = mean sent msg/s over the full-load window across trials, with 95 % CI error bars.

use std::path::Path;

use plotters::prelude::*;

use super::{
    CategoryAxes, DrawResult, GREY, HEIGHT, WIDTH, category_area, category_chart, category_labels,
    centred, color, inside_legend, legend_headroom,
};
use crate::report::stats::Estimate;
use crate::report::summary::{SummaryRow, by_method, rank_label};

pub(crate) fn draw(path: &Path, rows: &[SummaryRow]) -> DrawResult {
    let groups = by_method(rows);
    let n_ranks = rows.first().map_or(0, |r| r.brokers.len());
    // bars[m][rank] = estimate across that method's trials.
    let bars: Vec<Vec<Option<Estimate>>> = groups
        .iter()
        .map(|(_, rs)| {
            (0..n_ranks)
                .map(|i| {
                    let xs: Vec<f64> = rs
                        .iter()
                        .filter_map(|r| r.ranked().get(i).copied())
                        .collect();
                    Estimate::of(&xs)
                })
                .collect()
        })
        .collect();
    let top = bars
        .iter()
        .flatten()
        .flatten()
        .map(|e| e.mean + e.ci95.unwrap_or(0.0))
        .fold(0.0, f64::max);
    let n = groups.len();
    // Value labels only where a bar is wide enough to carry one (~50 px).
    let bar_px = (WIDTH - 130) as f64 * 0.7 / (n * n_ranks).max(1) as f64;
    let value_labels = bar_px >= 50.0;
    let y_max = legend_headroom(top, n_ranks + 1, if value_labels { 24 } else { 0 });
    let trials = groups.iter().map(|(_, rs)| rs.len()).max().unwrap_or(0);

    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = category_chart(
        &root,
        CategoryAxes {
            caption: format!(
                "Per-broker mean throughput, full-load window (mean ± 95 % CI over {trials} trial(s))"
            ),
            n,
            y: 0.0..y_max,
            label_area: category_area(n, true),
            x_desc: None,
            y_desc: "publisher → broker throughput (msg/s)",
        },
    )?;

    // Bars of one group share 70 % of the slot.
    let slot = 0.7 / n_ranks.max(1) as f64;
    for rank in 0..n_ranks {
        let c = color(rank);
        let mut rects = Vec::new();
        for (m, est) in bars.iter().enumerate() {
            let Some(e) = est[rank] else { continue };
            let x0 = m as f64 - 0.35 + rank as f64 * slot;
            rects.push(Rectangle::new(
                [(x0 + 0.01, 0.0), (x0 + slot - 0.01, e.mean)],
                c.filled(),
            ));
        }
        chart
            .draw_series(rects)?
            .label(format!("{} broker", rank_label(rank, n_ranks)))
            .legend(move |(x, y)| Rectangle::new([(x, y - 7), (x + 18, y + 7)], c.filled()));
        for (m, est) in bars.iter().enumerate() {
            let Some(e) = est[rank] else { continue };
            let xc = m as f64 - 0.35 + (rank as f64 + 0.5) * slot;
            if let Some(ci) = e.ci95 {
                let (lo, hi) = ((e.mean - ci).max(0.0), e.mean + ci);
                let w = slot * 0.2;
                for seg in [
                    vec![(xc, lo), (xc, hi)],
                    vec![(xc - w, lo), (xc + w, lo)],
                    vec![(xc - w, hi), (xc + w, hi)],
                ] {
                    chart.draw_series(std::iter::once(PathElement::new(
                        seg,
                        BLACK.stroke_width(2),
                    )))?;
                }
            }
            if !value_labels {
                continue;
            }
            chart.draw_series(std::iter::once(Text::new(
                format!("{:.0}", e.mean),
                (xc, e.mean + e.ci95.unwrap_or(0.0) + y_max * 0.01),
                centred(15),
            )))?;
        }
    }
    // Under each method: its mean gap. The online optimum (same trials, so the same for every
    // method) goes once into the legend.
    let labels: Vec<(String, String)> = groups
        .iter()
        .map(|(m, rs)| {
            let gaps: Vec<f64> = rs.iter().map(|r| r.gap_msgs_per_s).collect();
            let sub = Estimate::of(&gaps)
                .map(|g| format!("gap {} msg/s", g.display(0)))
                .unwrap_or_default();
            (m.clone(), sub)
        })
        .collect();
    let opt: Vec<f64> = first_trial_rows(rows)
        .filter_map(|r| r.optimum_gap_msgs_per_s)
        .collect();
    if let Some(o) = Estimate::of(&opt) {
        chart
            .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())?
            .label(format!(
                "online-optimum gap, same trials: {} msg/s",
                o.display(0)
            ))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], GREY.stroke_width(3)));
    }
    category_labels(&root, &chart, &labels, 0.0)?;
    inside_legend(&mut chart, 18)?;
    root.present()?;
    Ok(())
}

/// One row per trial (the optimum depends on the trial only, not on the method).
fn first_trial_rows(rows: &[SummaryRow]) -> impl Iterator<Item = &SummaryRow> {
    let mut seen = std::collections::HashSet::new();
    rows.iter().filter(move |r| seen.insert(r.trial))
}
