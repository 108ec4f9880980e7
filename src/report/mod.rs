//! Results: the CSV rows a run records, the summary statistics drawn from them, and the PNG
//! plots. Everything downstream of the rows works from the files alone (the CSVs and
//! `manifest.json`), so `mqdispatch plot RESULTS_DIR` redraws a finished (or interrupted) run
//! with the same windows.
//!
//! - [`records`]: row types, the streaming [`ResultsWriter`], readers.
//! - [`calibration`]: how strongly broker CPU tracks message rate on this host.
//! - [`status`]: the run's own keys in `manifest.json` (completed, errors, trial windows).
//! - [`window`]: the full-load window of a trial, from its arrival plan.
//! - [`stats`]: mean, sample sd, 95 % CI (Student t), Jain's index, gap.
//! - [`summary`]: per-(trial, method) figures over the window, `summary.csv`.
//! - [`tables`]: `summary.md` and the end-of-run console table.
//! - [`verdict`]: a winner only when the paired 95 % CI of the gap difference excludes 0.
//! - [`faults`]: the delivery headline and the fault section of `summary.md`.
//! - [`optimum`]: the online-optimum yardstick.
//! - [`subscribers`]: the subscriber half's files (`subscribers.csv`, `latency.csv`,
//!   `receipts.csv`, `latency-<method>-t<k>.hlog`) and the figures drawn from them.
//! - [`clocks`]: how far latencies across hosts can be trusted (loader hosts' clocks).
//! - [`members`]: per-member figures of shared groups (fairness, offered load against the best
//!   split, messages to brokers without a member, moves).
//! - [`plots`]: `throughput.png`, `cpu-<method>-t<k>.png`, `rate-<method>-t<k>.png`, `gap.png`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub mod calibration;
pub mod clocks;
pub mod decisions;
pub mod delivery;
pub mod faults;
pub mod harness;
pub mod members;
pub mod moves;
pub mod optimum;
pub mod plots;
pub mod published;
pub mod records;
pub mod stats;
pub mod status;
pub mod subscriber_tables;
pub mod subscribers;
pub mod summary;
mod summary_csv;
pub mod tables;
pub mod verdict;
pub mod window;

pub use optimum::online_optimum_gap;
pub use plots::draw_all;
pub use records::{
    BrokerRow, DecisionRow, FaultRow, Late, MoveRow, OutageRow, PublisherRow, ResultsWriter,
};
pub use status::{RunError, RunStatus, Stage};
pub use summary::SummaryRow;

/// Everything that can go wrong between the rows and the PNGs.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Csv { path: PathBuf, source: csv::Error },
    #[error(
        "{} not found: pass a results directory written by `mqdispatch run`",
        .0.display()
    )]
    Missing(PathBuf),
    #[error("{0}")]
    Invalid(String),
    #[error("drawing {}: {msg}", path.display())]
    Plot { path: PathBuf, msg: String },
}

impl ReportError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }

    pub(crate) fn csv(path: impl AsRef<Path>, source: csv::Error) -> Self {
        Self::Csv {
            path: path.as_ref().to_owned(),
            source,
        }
    }
}

/// Everything `summary.md` and the console say about a run.
#[derive(Debug, Default)]
pub struct Report {
    pub title: String,
    pub rows: Vec<SummaryRow>,
    /// One statement per trial of the window used.
    pub window_lines: Vec<String>,
    pub notes: Vec<String>,
    pub delivery: Vec<faults::Delivery>,
    /// Faults were injected or publishers lost their broker: delivery is the headline and no
    /// method is named winner by gap.
    pub fault_run: bool,
    /// The fault section (empty without faults or outages).
    pub faults_md: String,
    /// The live-moves section (empty without moves).
    pub moves_md: String,
    /// The decision-inputs section (empty without a dispatcher's decisions carrying ages).
    pub inputs_md: String,
    /// The run's errors (from `manifest.json`) and the ones found here ([`Stage::is_report`]).
    pub errors: Vec<RunError>,
    /// `manifest.json`'s `incomplete_reason` of a run that did not complete.
    pub incomplete: Option<String>,
    /// Late contributions and messages, for runs whose manifest counts them.
    pub late: Option<(u64, u64)>,
    /// What `cpu_pct` measures, from the manifest's scenario (`None` for older manifests).
    pub cpu_source: Option<String>,
    /// Per method run: host idle over the window and generator lateness (newer manifests).
    pub host_lines: Vec<String>,
    /// Broker CPU against message rate on this host, measured before the first method.
    pub calibration: Option<calibration::Calibration>,
    pub pngs: Vec<PathBuf>,
    /// What the subscribers got, per (trial, method); empty without subscribers.
    pub subscribers: summary::SubscriberFiguresByRun,
    /// Each shared group's per-member figures, per (trial, method); empty without groups.
    pub members: members::MemberFiguresByRun,
    /// The clock correction of latencies across hosts, and its warnings; empty without
    /// loader hosts or subscribers.
    pub clocks: Vec<String>,
}

impl Report {
    /// Errors found while summarising and plotting (not inherited from the run).
    pub fn report_errors(&self) -> impl Iterator<Item = &RunError> {
        self.errors.iter().filter(|e| e.stage.is_report())
    }
}

/// Summarises `dir` and draws its plots: `summary.csv`, every PNG, then `summary.md` (which
/// lists every error met on the way). Never fails: what went wrong is in `errors`, and a
/// `summary.md` that could not be written is one of them.
pub fn build(dir: &Path, optimum_gaps: &HashMap<u32, f64>) -> Report {
    let mut report = Report {
        title: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string()),
        ..Report::default()
    };
    let summary_err = |e: &dyn std::fmt::Display| RunError::new(Stage::Summary, e.to_string());
    let status = status::read(dir).unwrap_or_else(|e| {
        report.errors.push(summary_err(&e));
        RunStatus::default()
    });
    report.errors.extend(
        status
            .errors
            .iter()
            .filter(|e| !e.stage.is_report())
            .cloned(),
    );
    report.cpu_source = status.scenario.as_ref().and_then(|s| s.cpu.clone());
    report.calibration = status.calibration.clone();
    if !status.completed {
        report.incomplete = status.incomplete_reason.clone();
    }
    let windows = match &status.trials_detail {
        Some(details) => {
            report.window_lines = details.iter().map(window::describe).collect();
            report.late = Some((status.late_contributions, status.late_msgs));
            report.host_lines = details
                .iter()
                .flat_map(|d| {
                    d.methods.iter().flat_map(|m| {
                        let harness = m.harness.as_ref().map(|h| h.describe(d.trial, &m.method));
                        let delivery = m.delivery.as_ref().map(|x| x.describe(d.trial, &m.method));
                        m.describe_host(d.trial)
                            .into_iter()
                            .chain(harness)
                            .chain(delivery)
                    })
                })
                .collect();
            summary::Windows::Plan(details)
        }
        None => {
            report.window_lines = vec![window::FROM_ROWS.to_owned()];
            summary::Windows::FromRows
        }
    };
    let brokers = records::read_brokers(dir).unwrap_or_else(|e| {
        report.errors.push(summary_err(&e));
        Vec::new()
    });
    let computed = summary::compute(&brokers, optimum_gaps, windows, &status.finished_runs());
    report.errors.extend(
        computed
            .errors
            .iter()
            .map(|e| RunError::new(Stage::Summary, e)),
    );
    report.notes = computed.notes;
    report.rows = computed.rows;
    if report.rows.is_empty() && !report.errors.iter().any(|e| e.stage == Stage::Summary) {
        report.errors.push(RunError::new(
            Stage::Summary,
            format!(
                "{}: no (trial, method) to summarise",
                dir.join(records::BROKERS_CSV).display()
            ),
        ));
    }
    report.subscribers = subscribers::figures(dir).unwrap_or_else(|e| {
        report.errors.push(summary_err(&e));
        summary::SubscriberFiguresByRun::new()
    });
    report.clocks = clocks::describe(&clocks::of(status.hosts.as_ref()), &report.subscribers);
    let publishers = rows_or_error(records::read_publishers(dir), &mut report.errors);
    if !report.subscribers.is_empty() {
        let members = rows_or_error(subscribers::read_subscribers(dir), &mut report.errors);
        let receipts = rows_or_error(subscribers::read_receipts(dir), &mut report.errors);
        let windows = report
            .rows
            .iter()
            .map(|r| {
                (
                    (r.trial, r.method.clone()),
                    (r.window_start_s, r.window_end_s),
                )
            })
            .collect();
        report.members = members::figures(&members, &brokers, &receipts, &publishers, &windows);
    }
    if !report.rows.is_empty()
        && let Err(e) = summary::write_csv(
            &dir.join(summary::SUMMARY_CSV),
            &report.rows,
            &report.subscribers,
            &report.members,
        )
    {
        report.errors.push(summary_err(&e));
    }
    let faults = rows_or_error(records::read_faults(dir), &mut report.errors);
    let outages = rows_or_error(records::read_outages(dir), &mut report.errors);
    let moves = rows_or_error(records::read_moves(dir), &mut report.errors);
    // Outages that live moves caused are the moves' cost, not faults.
    let (_, outages) = moves::split_outages(&moves, outages);
    report.moves_md = moves::render_markdown(&moves);
    let decided = rows_or_error(decisions::read_optional(dir), &mut report.errors);
    report.inputs_md = decisions::render_markdown(&decided);
    report.delivery = faults::delivery(&publishers, &faults, &outages);
    report.fault_run = report.delivery.iter().any(faults::Delivery::faulted);
    report.faults_md = faults::render_markdown(&faults, &outages);
    if !report.rows.is_empty() {
        match draw_all(dir, &report.rows) {
            Ok(pngs) => report.pngs = pngs,
            Err(e) => report
                .errors
                .push(RunError::new(Stage::Plot, e.to_string())),
        }
    }
    let md_path = dir.join(summary::SUMMARY_MD);
    if let Err(e) = std::fs::write(&md_path, tables::render_markdown(&report)) {
        report
            .errors
            .push(summary_err(&ReportError::io(&md_path, e)));
    }
    report
}

/// The rows read, or none and a summary error.
fn rows_or_error<T>(read: Result<Vec<T>, ReportError>, errors: &mut Vec<RunError>) -> Vec<T> {
    read.unwrap_or_else(|e| {
        errors.push(RunError::new(Stage::Summary, e.to_string()));
        Vec::new()
    })
}

/// The optimum gaps to use when redrawing: an existing `summary.csv` column wins (the runner
/// wrote it knowing the exact arrival order), else the order recovered from `publishers.csv`.
pub fn known_optimum(dir: &Path) -> Result<HashMap<u32, f64>, ReportError> {
    let from_summary = summary::read_optimum(&dir.join(summary::SUMMARY_CSV))?;
    if !from_summary.is_empty() {
        return Ok(from_summary);
    }
    let brokers = records::read_brokers(dir)?;
    let n = records::first_seen(brokers.iter().map(|r| r.broker.as_str())).len();
    Ok(optimum::optimum_from_publishers(
        &records::read_publishers(dir)?,
        n,
    ))
}

/// `mqdispatch plot RESULTS_DIR`.
#[derive(Debug, clap::Args)]
pub struct PlotArgs {
    /// A results directory (`results/<scenario>/<run-id>/`) holding at least brokers.csv, or a
    /// published folder (`results/published/<scenario>/`): then only the figures its
    /// summary.csv gives (throughput.png, gap.png).
    pub results_dir: PathBuf,
}

/// Recomputes `summary.csv`/`summary.md` and redraws every PNG from the CSVs; prints each path.
pub async fn cli_main(args: PlotArgs) -> anyhow::Result<()> {
    let dir = args.results_dir;
    if !dir.is_dir() {
        return Err(crate::InputError(format!(
            "{} is not a directory: pass a results directory written by `mqdispatch run`",
            dir.display()
        ))
        .into());
    }
    let summary_csv = dir.join(summary::SUMMARY_CSV);
    if !dir.join(records::PUBLISHERS_CSV).exists() && summary_csv.exists() {
        // A published folder: the figures its summary gives, its summary files untouched.
        let redraw = dir.clone();
        let pngs = tokio::task::spawn_blocking(move || {
            plots::draw_summary(&redraw, &summary::read_csv(&summary_csv)?)
        })
        .await??;
        for p in &pngs {
            println!("{}", p.display());
        }
        return Ok(());
    }
    if !dir.join(records::BROKERS_CSV).exists() {
        return Err(crate::InputError(format!(
            "no {} in {}: pass a results directory written by `mqdispatch run`",
            records::BROKERS_CSV,
            dir.display()
        ))
        .into());
    }
    let redraw = dir.clone();
    let report = tokio::task::spawn_blocking(move || -> Result<Report, ReportError> {
        Ok(build(&redraw, &known_optimum(&redraw)?))
    })
    .await??;
    if !report.rows.is_empty() {
        println!("{}", dir.join(summary::SUMMARY_CSV).display());
    }
    println!("{}", dir.join(summary::SUMMARY_MD).display());
    for p in &report.pngs {
        println!("{}", p.display());
    }
    let found: Vec<String> = report.report_errors().map(|e| e.to_string()).collect();
    if !found.is_empty() {
        anyhow::bail!("{} (listed under Errors in summary.md)", found.join("; "));
    }
    Ok(())
}
