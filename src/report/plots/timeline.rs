//! Time plots of one (method, trial): `cpu-<method>-t<k>.png` (the paper's Figs. 7–10) and
//! `rate-<method>-t<k>.png`. Both mark each publisher's join (dotted line in the colour of the
//! broker it went to, labelled with its profile), the full-load window (shaded) and any fault
//! from `faults.csv` (red line), and each live move from `moves.csv` (a thin line in the colour of
//! the broker the client was moved to, labelled `→ <broker>`). With subscribers,
//! `latency-<method>-t<k>.png` draws each broker's latency p99 per second the same way, and
//! `members-<method>-t<k>.png` each member's receive rate per second.

use std::path::Path;

use plotters::prelude::*;

use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{Chart, DrawResult, FAULT, GREY, HEIGHT, Run, WIDTH, color, font, headroom};
use crate::report::records::{PublisherRow, first_seen};
use crate::report::subscribers::{LatencyRow, SubscriberRow};

/// Width of the right margin that holds the legend.
const LEGEND_PX: u32 = 290;

/// One line of a time plot.
struct Line {
    label: String,
    color: RGBColor,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

pub(crate) fn draw_cpu(path: &Path, run: &Run) -> DrawResult {
    let lines = run
        .brokers
        .iter()
        .enumerate()
        .map(|(i, b)| Line {
            label: format!("{b} CPU"),
            color: color(i),
            dashed: false,
            points: points(run, b, |r| r.cpu_pct),
        })
        .collect();
    let title = format!("Broker CPU usage — {}, trial {}", run.method, run.trial);
    draw(path, run, &title, "CPU (% of one core)", lines)
}

pub(crate) fn draw_rate(path: &Path, run: &Run) -> DrawResult {
    let mut lines = Vec::new();
    for (i, b) in run.brokers.iter().enumerate() {
        lines.push(Line {
            label: format!("{b} sent (publisher side)"),
            color: color(i),
            dashed: false,
            points: points(run, b, |r| Some(r.sent_msgs_per_s)),
        });
        let received = points(run, b, |r| r.received_msgs_per_s);
        if !received.is_empty() {
            lines.push(Line {
                label: format!("{b} received (broker side)"),
                color: color(i),
                dashed: true,
                points: received,
            });
        }
    }
    let title = format!(
        "Per-broker message rate — {}, trial {}",
        run.method, run.trial
    );
    draw(path, run, &title, "messages per second (msg/s)", lines)
}

/// `latency-<method>-t<k>.png`: each broker's latency p99 per second (latency.csv), over every
/// subscriber member on that broker, with the same join, move and fault marks.
pub(crate) fn draw_latency(path: &Path, run: &Run, rows: &[&LatencyRow]) -> DrawResult {
    let lines = run
        .brokers
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| &r.broker == b)
                .filter_map(|r| Some((r.t_s as f64, r.latency_p99_ms?)))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Line {
                label: format!("{b} latency p99"),
                color: color(i),
                dashed: false,
                points,
            }
        })
        .collect();
    let title = format!(
        "End-to-end latency p99 per broker — {}, trial {}",
        run.method, run.trial
    );
    draw(path, run, &title, "latency p99 (ms)", lines)
}

/// `members-<method>-t<k>.png`: each subscriber member's messages received per second
/// (subscribers.csv), one line per member in the colour of the broker it is on (a member that
/// moves changes colour), with the same join, move and fault marks.
pub(crate) fn draw_members(path: &Path, run: &Run, rows: &[&SubscriberRow]) -> DrawResult {
    let mut lines: Vec<Line> = Vec::new();
    let mut labelled: Vec<&str> = Vec::new();
    for member in first_seen(rows.iter().map(|r| r.subscriber.as_str())) {
        let mut seconds: Vec<&&SubscriberRow> =
            rows.iter().filter(|r| r.subscriber == member).collect();
        seconds.sort_by_key(|r| r.t_s);
        // One segment per stay on a broker; the next one starts where this one ended.
        let mut last: Option<(&str, (f64, f64))> = None;
        for r in seconds {
            let point = (r.t_s as f64, r.received as f64);
            match (last, lines.last_mut()) {
                (Some((b, _)), Some(line)) if b == r.broker => line.points.push(point),
                _ => {
                    let i = run.brokers.iter().position(|b| *b == r.broker);
                    let label = if labelled.contains(&r.broker.as_str()) {
                        String::new()
                    } else {
                        labelled.push(&r.broker);
                        format!("a member on {}", r.broker)
                    };
                    let mut points: Vec<(f64, f64)> = last.map(|(_, p)| p).into_iter().collect();
                    points.push(point);
                    lines.push(Line {
                        label,
                        color: i.map_or(GREY, color),
                        dashed: false,
                        points,
                    });
                }
            }
            last = Some((&r.broker, point));
        }
    }
    let title = format!(
        "Per-member receive rate — {}, trial {}",
        run.method, run.trial
    );
    draw(path, run, &title, "messages received per second", lines)
}

fn points(
    run: &Run,
    broker: &str,
    f: impl Fn(&crate::report::BrokerRow) -> Option<f64>,
) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = run
        .rows
        .iter()
        .filter(|r| r.broker == broker)
        .filter_map(|r| Some((r.t_s as f64, f(r)?)))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    pts
}

/// A legend entry's symbol, drawn by hand in the right margin (plotters clips its own legend
/// to the plotting area).
enum Mark {
    Swatch(RGBColor),
    Line {
        colour: RGBColor,
        width: u32,
        dashed: bool,
    },
    Marker {
        colour: RGBColor,
        width: u32,
    },
}

fn draw(path: &Path, run: &Run, title: &str, y_desc: &str, lines: Vec<Line>) -> DrawResult {
    let t_max = run
        .rows
        .iter()
        .map(|r| r.t_s as f64)
        .chain(run.joins.iter().map(|p| p.join_s))
        .chain(run.faults.iter().map(|f| f.t_s))
        .fold(1.0, f64::max);
    let y_top = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    // Room above the data for four rows of join labels.
    let y_max = headroom(y_top, 5.0) * 1.2;

    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, font(26))
        .margin(20)
        .margin_right(LEGEND_PX)
        .x_label_area_size(50)
        .y_label_area_size(90)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("time since the method's start (s)")
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(font(18))
        .axis_desc_style(font(20))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;

    let mut legend: Vec<(String, Mark)> = Vec::new();
    if let Some((a, b)) = run.window {
        let shade = RGBColor(235, 235, 235);
        chart.draw_series(std::iter::once(Rectangle::new(
            [(a as f64, 0.0), (b as f64, y_max)],
            shade.filled(),
        )))?;
        legend.push(("full-load window (averaged)".into(), Mark::Swatch(shade)));
    }
    legend.extend(draw_joins(&mut chart, run, y_max)?);
    for f in &run.faults {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(f.t_s, 0.0), (f.t_s, y_max)],
            FAULT.stroke_width(3),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("{} {}", f.kind, f.target),
            (f.t_s + t_max * 0.004, y_max * 0.06),
            font(16).color(&FAULT),
        )))?;
    }
    if !run.faults.is_empty() {
        let mark = Mark::Marker {
            colour: FAULT,
            width: 3,
        };
        legend.push(("fault injected".into(), mark));
    }
    for (k, m) in run.moves.iter().enumerate() {
        let to = run.brokers.iter().position(|b| *b == m.to).unwrap_or(0);
        let colour = color(to);
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(m.t_s, 0.0), (m.t_s, y_max * 0.78)],
            colour.stroke_width(2),
        )))?;
        // Moves in one round share a time: stagger their labels.
        chart.draw_series(std::iter::once(Text::new(
            format!("→ {}", m.to),
            (
                m.t_s + t_max * 0.004,
                y_max * (0.74 - 0.04 * (k % 4) as f64),
            ),
            font(15).color(&colour),
        )))?;
    }
    if !run.moves.is_empty() {
        let mark = Mark::Marker {
            colour: GREY,
            width: 2,
        };
        legend.push((format!("client moved ({}) → broker", run.moves.len()), mark));
    }
    for line in lines {
        let style = line.color.stroke_width(3);
        if line.dashed {
            chart.draw_series(DashedLineSeries::new(line.points, 8, 6, style))?;
        } else {
            chart.draw_series(LineSeries::new(line.points, style))?;
        }
        // Unlabelled lines (further members on one broker) share the first one's entry.
        if !line.label.is_empty() {
            let mark = Mark::Line {
                colour: line.color,
                width: 3,
                dashed: line.dashed,
            };
            legend.push((line.label, mark));
        }
    }
    let (x0, y0) = chart.backend_coord(&(t_max, y_max));
    side_legend(&root, (x0 + 15, y0), &legend)?;
    root.present()?;
    Ok(())
}

/// The legend in the right margin, top-aligned with the plot.
fn side_legend<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    (x, y): (i32, i32),
    entries: &[(String, Mark)],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    const ROW: i32 = 24;
    let w = LEGEND_PX as i32 - 30;
    let h = entries.len() as i32 * ROW + 12;
    root.draw(&Rectangle::new([(x, y), (x + w, y + h)], WHITE.filled()))?;
    root.draw(&Rectangle::new(
        [(x, y), (x + w, y + h)],
        BLACK.stroke_width(1),
    ))?;
    for (i, (label, mark)) in entries.iter().enumerate() {
        let cy = y + 6 + ROW / 2 + i as i32 * ROW;
        let sx = x + 10;
        match *mark {
            Mark::Swatch(c) => {
                root.draw(&Rectangle::new(
                    [(sx, cy - 7), (sx + 22, cy + 7)],
                    c.filled(),
                ))?;
                root.draw(&Rectangle::new(
                    [(sx, cy - 7), (sx + 22, cy + 7)],
                    GREY.stroke_width(1),
                ))?;
            }
            Mark::Line {
                colour,
                width,
                dashed,
            } => {
                let style = colour.stroke_width(width);
                if dashed {
                    root.draw(&PathElement::new(vec![(sx, cy), (sx + 8, cy)], style))?;
                    root.draw(&PathElement::new(vec![(sx + 14, cy), (sx + 22, cy)], style))?;
                } else {
                    root.draw(&PathElement::new(vec![(sx, cy), (sx + 22, cy)], style))?;
                }
            }
            Mark::Marker { colour, width } => {
                let style = colour.stroke_width(width);
                root.draw(&PathElement::new(
                    vec![(sx + 11, cy - 9), (sx + 11, cy + 9)],
                    style,
                ))?;
            }
        }
        let style = font(16).pos(Pos::new(HPos::Left, VPos::Center));
        root.draw(&Text::new(label.clone(), (sx + 32, cy), style))?;
    }
    Ok(())
}

/// Joins less than half a second after the previous one and within a second of the first: a
/// burst of CONNECTs, drawn as one marker (a fleet joining without pause gets one per second).
struct Cluster<'a> {
    t_s: f64,
    joins: Vec<&'a PublisherRow>,
}

fn clusters<'a>(run: &Run<'a>) -> Vec<Cluster<'a>> {
    let mut joins = run.joins.clone();
    joins.sort_by(|a, b| a.join_s.total_cmp(&b.join_s));
    let mut out: Vec<Cluster> = Vec::new();
    let mut last = f64::NEG_INFINITY;
    for p in joins {
        match out.last_mut() {
            Some(c) if p.join_s - last < 0.5 && p.join_s - c.t_s < 1.0 => c.joins.push(p),
            _ => out.push(Cluster {
                t_s: p.join_s,
                joins: vec![p],
            }),
        }
        last = p.join_s;
    }
    out
}

/// Label and colour of a cluster: `profile→broker` in the broker's colour for a single join,
/// `×N: b1 13 · b2 12` in grey for a burst spread over brokers.
fn describe(c: &Cluster, brokers: &[String]) -> (String, RGBColor) {
    let colour_of = |b: &str| brokers.iter().position(|x| x == b).map_or(GREY, color);
    let first = c.joins[0];
    if c.joins
        .iter()
        .all(|p| p.broker == first.broker && p.profile == first.profile)
    {
        let n = c.joins.len();
        let count = if n > 1 {
            format!(" ×{n}")
        } else {
            String::new()
        };
        return (
            format!("{}→{}{count}", first.profile, first.broker),
            colour_of(&first.broker),
        );
    }
    let per_broker: Vec<String> = brokers
        .iter()
        .filter_map(|b| {
            let n = c.joins.iter().filter(|p| p.broker == *b).count();
            (n > 0).then(|| format!("{b} {n}"))
        })
        .collect();
    (
        format!("×{}: {}", c.joins.len(), per_broker.join(" · ")),
        GREY,
    )
}

/// Join markers: a dotted vertical line per join (or burst) in the colour of the broker it went
/// to; markers of the fastest profile's publishers are solid and thicker so the heavy publisher
/// stands out. Labels go in the first of four rows above the data where they do not overlap the
/// previous label. Returns the legend entries.
fn draw_joins<DB: DrawingBackend>(
    chart: &mut Chart<DB>,
    run: &Run,
    y_max: f64,
) -> Result<Vec<(String, Mark)>, DrawingAreaErrorKind<DB::ErrorType>> {
    const ROWS: [f64; 4] = [0.97, 0.935, 0.90, 0.865];
    let clusters = clusters(run);
    let rates = run.joins.iter().map(|p| p.target_msgs_per_s);
    let fastest = rates.clone().fold(0.0, f64::max);
    let slowest = rates.fold(f64::INFINITY, f64::min);
    let mut row_end = [i32::MIN; ROWS.len()];
    let style = font(14);
    for c in &clusters {
        let (label, colour) = describe(c, run.brokers);
        let line = vec![(c.t_s, 0.0), (c.t_s, y_max * 0.85)];
        let heavy = fastest > slowest && c.joins.iter().any(|p| p.target_msgs_per_s == fastest);
        if heavy {
            chart.draw_series(std::iter::once(PathElement::new(
                line,
                colour.stroke_width(3),
            )))?;
        } else {
            chart.draw_series(DashedLineSeries::new(line, 4, 4, colour.stroke_width(2)))?;
        }
        let x = chart.backend_coord(&(c.t_s, 0.0)).0;
        let width = chart
            .plotting_area()
            .estimate_text_size(&label, &style)
            .map_or(100, |(w, _)| w as i32);
        // First row with room, else the row whose last label ended earliest.
        let row = (0..ROWS.len())
            .find(|&r| row_end[r] + 6 <= x)
            .unwrap_or_else(|| (0..ROWS.len()).min_by_key(|&r| row_end[r]).unwrap_or(0));
        row_end[row] = x + width;
        chart.draw_series(std::iter::once(Text::new(
            label,
            (c.t_s, y_max * ROWS[row]),
            style.color(&colour),
        )))?;
    }
    let mut legend = Vec::new();
    if !clusters.is_empty() {
        let mark = Mark::Marker {
            colour: GREY,
            width: 1,
        };
        legend.push(("publisher join (→ broker)".into(), mark));
        if fastest > slowest {
            let mark = Mark::Marker {
                colour: GREY,
                width: 3,
            };
            legend.push((format!("join at {fastest:.0} msg/s (heaviest)"), mark));
        }
    }
    Ok(legend)
}
