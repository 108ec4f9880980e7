//! `latency-cdf.png`: the distribution of end-to-end latency per method, every message of every
//! trial (the `all` histograms of the method's hlog files), on a log latency axis so the body
//! and the tail both show.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

use super::{DrawResult, HEIGHT, WIDTH, color, font};

/// `methods`: `(name, histogram over its trials)`, in the scenario's order.
pub(crate) fn draw(path: &Path, methods: &[(String, Histogram<u64>)]) -> DrawResult {
    let present: Vec<&(String, Histogram<u64>)> =
        methods.iter().filter(|(_, h)| !h.is_empty()).collect();
    // Axis in ms, from the smallest recorded value (at least 1 µs) to the largest.
    let lo = present
        .iter()
        .map(|(_, h)| h.min().max(1) as f64 / 1000.0)
        .fold(f64::INFINITY, f64::min);
    let hi = present
        .iter()
        .map(|(_, h)| h.max() as f64 / 1000.0)
        .fold(0.0, f64::max);
    let (lo, hi) = if present.is_empty() {
        (0.001, 1.0)
    } else {
        (lo * 0.8, (hi * 1.25).max(lo * 10.0))
    };
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("End-to-end latency, every message (CDF)", font(26))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("fraction of messages at or below")
        .x_label_formatter(&|x| format!("{x}"))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .label_style(font(18))
        .axis_desc_style(font(20))
        .draw()?;
    for (i, (name, h)) in methods.iter().enumerate() {
        if h.is_empty() {
            continue;
        }
        let points: Vec<(f64, f64)> = h
            .iter_quantiles(4)
            .map(|v| {
                let ms = (v.value_iterated_to().max(1) as f64 / 1000.0).max(lo);
                (ms, v.quantile_iterated_to())
            })
            .collect();
        let p99 = h.value_at_quantile(0.99) as f64 / 1000.0;
        let style = color(i).stroke_width(3);
        chart
            .draw_series(LineSeries::new(points, style))?
            .label(format!("{name} (p99 {p99:.2} ms, {} messages)", h.len()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(font(18))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
