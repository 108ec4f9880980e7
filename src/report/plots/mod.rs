//! PNG plots drawn from a results directory's CSVs alone (blocking: call from
//! `spawn_blocking`). Text uses DejaVu Sans embedded in the binary and registered as
//! "sans-serif", so no system font or fontconfig is needed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::ReportError;
use super::records::{self, BrokerRow, FaultRow, MoveRow, PublisherRow, first_seen};
use super::subscribers;
use super::summary::SummaryRow;

mod gap;
mod latency_cdf;
mod throughput;
mod timeline;

pub const WIDTH: u32 = 1280;
pub const HEIGHT: u32 = 720;
pub const THROUGHPUT_PNG: &str = "throughput.png";
pub const GAP_PNG: &str = "gap.png";
pub const LATENCY_CDF_PNG: &str = "latency-cdf.png";

const FONT: &str = "sans-serif";
static DEJAVU_SANS: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");

/// Registers the embedded font once per process.
fn ensure_font() -> Result<(), ReportError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, DEJAVU_SANS).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(ReportError::Invalid(
            "the embedded DejaVu Sans font did not load".into(),
        ))
    }
}

/// Series colours (Tableau 10 without red, which marks faults).
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
    RGBColor(188, 189, 34),
];
pub(crate) const FAULT: RGBColor = RGBColor(214, 39, 40);
pub(crate) const GREY: RGBColor = RGBColor(110, 110, 110);

pub(crate) fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

pub(crate) fn font(size: u32) -> TextStyle<'static> {
    (FONT, size).into_font().color(&BLACK)
}

/// The error type every figure function returns; mapped to [`ReportError::Plot`] with its path.
pub(crate) type DrawResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn plot_err(path: &Path, e: impl std::fmt::Display) -> ReportError {
    ReportError::Plot {
        path: path.to_owned(),
        msg: e.to_string(),
    }
}

/// File-name-safe method name: anything but ASCII alphanumerics, `-` and `_` becomes `_`.
pub fn file_stem(method: &str) -> String {
    method
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// One trial of one method: what the time plots need.
pub(crate) struct Run<'a> {
    pub trial: u32,
    pub method: &'a str,
    pub brokers: &'a [String],
    pub rows: Vec<&'a BrokerRow>,
    pub joins: Vec<&'a PublisherRow>,
    pub faults: Vec<&'a FaultRow>,
    /// Live moves (moves.csv), marked in the recipient broker's colour.
    pub moves: Vec<&'a MoveRow>,
    pub window: Option<(u64, u64)>,
}

/// The figures `summary.csv` alone gives, for a published folder (which keeps no per-second
/// rows): `throughput.png` and `gap.png`, drawn into `dir`.
pub fn draw_summary(dir: &Path, summary: &[SummaryRow]) -> Result<Vec<PathBuf>, ReportError> {
    ensure_font()?;
    if summary.is_empty() {
        return Err(ReportError::Invalid(format!(
            "{}: summary.csv has no rows, nothing to plot",
            dir.display()
        )));
    }
    let mut out = Vec::new();
    let path = dir.join(THROUGHPUT_PNG);
    throughput::draw(&path, summary).map_err(|e| plot_err(&path, e))?;
    out.push(path);
    let path = dir.join(GAP_PNG);
    gap::draw(&path, summary).map_err(|e| plot_err(&path, e))?;
    out.push(path);
    Ok(out)
}

/// Draws every PNG of `dir` from its CSVs and `summary` (its windows and figures, see
/// [`super::build`]) and returns their paths: `throughput.png`, `gap.png`, and
/// `cpu-<method>-t<k>.png` + `rate-<method>-t<k>.png` per summarised method and trial (with
/// subscribers also `latency-<method>-t<k>.png` and `members-<method>-t<k>.png`).
pub fn draw_all(dir: &Path, summary: &[SummaryRow]) -> Result<Vec<PathBuf>, ReportError> {
    ensure_font()?;
    if summary.is_empty() {
        return Err(ReportError::Invalid(format!(
            "{}: no (trial, method) summarised, nothing to plot",
            dir.display()
        )));
    }
    let rows = records::read_brokers(dir)?;
    let publishers = records::read_publishers(dir)?;
    let faults = records::read_faults(dir)?;
    let moves = records::read_moves(dir)?;
    let brokers = first_seen(rows.iter().map(|r| r.broker.as_str()));
    let latency = subscribers::read_latency(dir)?;
    let member_seconds = subscribers::read_subscribers(dir)?;
    let mut out = draw_summary(dir, summary)?;

    for s in summary {
        let run = Run {
            trial: s.trial,
            method: &s.method,
            brokers: &brokers,
            rows: rows
                .iter()
                .filter(|r| r.trial == s.trial && r.method == s.method)
                .collect(),
            joins: publishers
                .iter()
                .filter(|p| p.trial == s.trial && p.method == s.method)
                .collect(),
            faults: faults
                .iter()
                .filter(|f| f.trial == s.trial && f.method == s.method)
                .collect(),
            moves: moves
                .iter()
                .filter(|m| m.trial == s.trial && m.method == s.method)
                .collect(),
            window: Some((s.window_start_s, s.window_end_s)),
        };
        let stem = format!("{}-t{}.png", file_stem(&s.method), s.trial);
        let path = dir.join(format!("cpu-{stem}"));
        timeline::draw_cpu(&path, &run).map_err(|e| plot_err(&path, e))?;
        out.push(path);
        let path = dir.join(format!("rate-{stem}"));
        timeline::draw_rate(&path, &run).map_err(|e| plot_err(&path, e))?;
        out.push(path);
        let seconds: Vec<&subscribers::LatencyRow> = latency
            .iter()
            .filter(|r| r.trial == s.trial && r.method == s.method)
            .collect();
        if !seconds.is_empty() {
            let path = dir.join(format!("latency-{stem}"));
            timeline::draw_latency(&path, &run, &seconds).map_err(|e| plot_err(&path, e))?;
            out.push(path);
        }
        let members: Vec<&subscribers::SubscriberRow> = member_seconds
            .iter()
            .filter(|r| r.trial == s.trial && r.method == s.method)
            .collect();
        if !members.is_empty() {
            let path = dir.join(format!("members-{stem}"));
            timeline::draw_members(&path, &run, &members).map_err(|e| plot_err(&path, e))?;
            out.push(path);
        }
    }
    if let Some(per_method) = latency_by_method(dir, summary)? {
        let path = dir.join(LATENCY_CDF_PNG);
        latency_cdf::draw(&path, &per_method).map_err(|e| plot_err(&path, e))?;
        out.push(path);
    }
    Ok(out)
}

/// A method's name and its latency histogram (µs) over all its trials.
type MethodLatency = (String, hdrhistogram::Histogram<u64>);

/// Each summarised method's latency over all its trials (the hlogs' `all` histograms), in
/// method order; `None` when no method run wrote an hlog.
fn latency_by_method(
    dir: &Path,
    summary: &[SummaryRow],
) -> Result<Option<Vec<MethodLatency>>, ReportError> {
    let mut found = false;
    let mut out = Vec::new();
    for method in first_seen(summary.iter().map(|s| s.method.as_str())) {
        let mut merged = crate::loadgen::receipts::latency_histogram();
        for s in summary.iter().filter(|s| s.method == method) {
            let path = dir.join(subscribers::hlog_name(s.trial, &s.method));
            if !path.exists() {
                continue;
            }
            found = true;
            for (tag, h) in subscribers::read_hlog(&path)? {
                if tag == subscribers::ALL_BROKERS {
                    let _ = merged.add(&h);
                }
            }
        }
        out.push((method, merged));
    }
    Ok(found.then_some(out))
}

/// Category labels under an x axis whose categories sit at 0, 1, 2, … (plotters' tick labels
/// would land on "nice" fractional values instead): each a name and an optional grey second line.
/// Past seven categories the labels alternate between two heights so long names do not collide.
pub(crate) fn category_labels<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    chart: &ChartContext<DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    labels: &[(String, String)],
    y_min: f64,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let size = category_font(labels.len());
    let line = size as i32 + 4;
    let rows = if labels.iter().any(|(_, sub)| !sub.is_empty()) {
        2
    } else {
        1
    };
    for (i, (name, sub)) in labels.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(i as f64, y_min));
        let top = py
            + 8
            + if staggered(labels.len()) && i % 2 == 1 {
                rows * line
            } else {
                0
            };
        let style = font(size).pos(Pos::new(HPos::Center, VPos::Top));
        root.draw(&Text::new(name.clone(), (px, top), style))?;
        if !sub.is_empty() {
            let style = font(size - 2)
                .color(&GREY)
                .pos(Pos::new(HPos::Center, VPos::Top));
            root.draw(&Text::new(sub.clone(), (px, top + line), style))?;
        }
    }
    Ok(())
}

fn staggered(n: usize) -> bool {
    n > 7
}

fn category_font(n: usize) -> u32 {
    if n > 4 { 16 } else { 20 }
}

/// Height of the x label area [`category_labels`] needs.
pub(crate) fn category_area(n: usize, with_sub: bool) -> u32 {
    let line = category_font(n) + 4;
    let rows = if with_sub { 2 } else { 1 } * if staggered(n) { 2 } else { 1 };
    16 + rows * line
}

/// An upper y bound that leaves the top of the plot free for a legend of `entries` lines (plus
/// `extra_px` of labels above the data), so the legend never covers data.
pub(crate) fn legend_headroom(top: f64, entries: usize, extra_px: u32) -> f64 {
    // Approximate plotting height: the image minus caption, margins and axis label area.
    const PLOT_PX: f64 = HEIGHT as f64 - 170.0;
    let needed = (entries as f64 * 24.0 + 30.0 + extra_px as f64) / PLOT_PX;
    (top / (1.0 - needed.min(0.6))).max(headroom(top, 10.0))
}

/// Axes of a chart whose x axis holds `n` categories (methods) at 0, 1, …, n − 1.
pub(crate) struct CategoryAxes<'a> {
    pub caption: String,
    pub n: usize,
    pub y: std::ops::Range<f64>,
    /// Height of the x label area (see [`category_area`]).
    pub label_area: u32,
    pub x_desc: Option<String>,
    pub y_desc: &'a str,
}

pub(crate) type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Builds a category chart and draws its mesh; x tick labels are left to [`category_labels`].
pub(crate) fn category_chart<'a, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, plotters::coord::Shift>,
    axes: CategoryAxes,
) -> Result<Chart<'a, DB>, DrawingAreaErrorKind<DB::ErrorType>> {
    let mut chart = ChartBuilder::on(root)
        .caption(axes.caption, font(26))
        .margin(20)
        .x_label_area_size(axes.label_area)
        .y_label_area_size(90)
        .build_cartesian_2d(-0.5..axes.n as f64 - 0.5, axes.y)?;
    let mut mesh = chart.configure_mesh();
    mesh.disable_x_mesh()
        .x_labels(0)
        // Blank below 0: some charts start a little under 0 so markers at 0 clear the axis.
        .y_label_formatter(&|y| {
            if *y < 0.0 {
                String::new()
            } else {
                format!("{y:.0}")
            }
        })
        .y_desc(axes.y_desc)
        .label_style(font(18))
        .axis_desc_style(font(20));
    if let Some(x_desc) = axes.x_desc {
        mesh.x_desc(x_desc);
    }
    mesh.draw()?;
    Ok(chart)
}

/// The legend inside the plot's upper right corner (charts leave headroom for it).
pub(crate) fn inside_legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    size: u32,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .margin(10)
        .label_font(font(size))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
}

/// Text centred horizontally on its anchor point, bottom at the anchor.
pub(crate) fn centred(size: u32) -> TextStyle<'static> {
    font(size).pos(Pos::new(HPos::Center, VPos::Bottom))
}

/// An upper axis bound a little above `max` (never 0, so an idle series still gets an axis).
pub(crate) fn headroom(max: f64, floor: f64) -> f64 {
    (max * 1.15).max(floor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_stems_are_safe() {
        assert_eq!(file_stem("least-load/msg rate"), "least-load_msg_rate");
        assert_eq!(file_stem("dns-rr"), "dns-rr");
    }

    #[test]
    fn the_embedded_font_registers() {
        ensure_font().expect("font");
        ensure_font().expect("idempotent");
    }
}
