//! `gap.png`: the inter-broker gap per method across trials. Each trial is a dot (spread
//! sideways by trial number), the method's mean is a thick bar with its 95 % CI, and each trial's
//! online optimum is a grey cross beside that trial's dot, so a dot on its cross is optimal.

use std::path::Path;

use plotters::prelude::*;

use super::{
    CategoryAxes, DrawResult, GREY, HEIGHT, WIDTH, category_area, category_chart, category_labels,
    color, inside_legend, legend_headroom,
};
use crate::report::stats::Estimate;
use crate::report::summary::{SummaryRow, by_method};

pub(crate) fn draw(path: &Path, rows: &[SummaryRow]) -> DrawResult {
    let groups = by_method(rows);
    let mut trials: Vec<u32> = rows.iter().map(|r| r.trial).collect();
    trials.sort_unstable();
    trials.dedup();
    let top = rows
        .iter()
        .flat_map(|r| [Some(r.gap_msgs_per_s), r.optimum_gap_msgs_per_s])
        .flatten()
        .fold(0.0, f64::max);
    // Room above for the legend, and a little below 0 so dots at 0 clear the axis.
    let y_max = legend_headroom(top, groups.len() + 1, 0);
    let y_min = -0.04 * y_max;
    let n = groups.len();
    // Trial k's horizontal offset inside its method's slot.
    let offset = |trial: u32| -> f64 {
        let i = trials.iter().position(|t| *t == trial).unwrap_or(0);
        if trials.len() < 2 {
            0.0
        } else {
            -0.3 + 0.6 * i as f64 / (trials.len() - 1) as f64
        }
    };

    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_desc = if trials.len() > 1 {
        format!(
            "method (dots left to right: trials {} … {})",
            trials[0],
            trials[trials.len() - 1]
        )
    } else {
        "method".to_owned()
    };
    let mut chart = category_chart(
        &root,
        CategoryAxes {
            caption: format!(
                "Inter-broker throughput gap per method ({} trial(s), full-load window)",
                trials.len()
            ),
            n,
            y: y_min..y_max,
            label_area: category_area(n, false) + 30,
            x_desc: Some(x_desc),
            y_desc: "gap: busiest − least busy broker (msg/s)",
        },
    )?;

    let mut crosses = Vec::new();
    for (m, (method, rs)) in groups.iter().enumerate() {
        let c = color(m);
        let x = m as f64;
        let gaps: Vec<f64> = rs.iter().map(|r| r.gap_msgs_per_s).collect();
        if let Some(e) = Estimate::of(&gaps) {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(x - 0.38, e.mean), (x + 0.38, e.mean)],
                    c.stroke_width(5),
                )))?
                .label(format!("{method}: mean {} msg/s", e.display(0)))
                .legend(move |(px, py)| {
                    PathElement::new(vec![(px, py), (px + 18, py)], c.stroke_width(5))
                });
            if let Some(ci) = e.ci95 {
                let (lo, hi) = ((e.mean - ci).max(0.0), e.mean + ci);
                for seg in [
                    vec![(x + 0.4, lo), (x + 0.4, hi)],
                    vec![(x + 0.37, lo), (x + 0.43, lo)],
                    vec![(x + 0.37, hi), (x + 0.43, hi)],
                ] {
                    chart.draw_series(std::iter::once(PathElement::new(seg, c.stroke_width(2))))?;
                }
            }
        }
        chart.draw_series(
            rs.iter()
                .map(|r| Circle::new((x + offset(r.trial), r.gap_msgs_per_s), 6, c.filled())),
        )?;
        crosses.extend(rs.iter().filter_map(|r| {
            let o = r.optimum_gap_msgs_per_s?;
            Some(Cross::new(
                (x + offset(r.trial), o),
                8,
                GREY.stroke_width(2),
            ))
        }));
    }
    if !crosses.is_empty() {
        chart
            .draw_series(crosses)?
            .label("online optimum of that trial's arrival order")
            .legend(|(px, py)| Cross::new((px + 9, py), 7, GREY.stroke_width(2)));
    }
    let labels: Vec<(String, String)> = groups
        .iter()
        .map(|(m, _)| (m.clone(), String::new()))
        .collect();
    category_labels(&root, &chart, &labels, y_min)?;
    inside_legend(&mut chart, 16)?;
    root.present()?;
    Ok(())
}
