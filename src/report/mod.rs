//! Results: the CSV rows a run records, the summary statistics drawn from them, and the PNG
//! plots. Everything downstream of the rows works from the files alone, so
//! `mqdispatch plot RESULTS_DIR` redraws a finished (or interrupted) run.
//!
//! - [`records`]: row types, the streaming [`ResultsWriter`], readers.
//! - [`stats`]: mean, sample sd, 95 % CI (Student t), Jain's index, gap.
//! - [`summary`]: full-load window, per-(trial, method) figures, `summary.csv`.
//! - [`tables`]: `summary.md` and the end-of-run console table.
//! - [`faults`]: the fault section of `summary.md` (faults injected, outages they caused).
//! - [`optimum`]: the online-optimum yardstick (issue 7).
//! - [`plots`]: `throughput.png`, `cpu-<method>-t<k>.png`, `rate-<method>-t<k>.png`, `gap.png`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub mod faults;
pub mod optimum;
pub mod plots;
pub mod records;
pub mod stats;
pub mod summary;
pub mod tables;

pub use optimum::online_optimum_gap;
pub use plots::draw_all;
pub use records::{BrokerRow, DecisionRow, FaultRow, OutageRow, PublisherRow, ResultsWriter};
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

/// Reads `brokers.csv` in `dir`, writes `summary.csv` and `summary.md`, returns the rows.
/// `optimum_gaps` (online-optimum gap per trial) fills the optimum column; trials missing from
/// it get an empty cell.
pub fn summarize(
    dir: &Path,
    optimum_gaps: &HashMap<u32, f64>,
) -> Result<Vec<SummaryRow>, ReportError> {
    let rows = records::read_brokers(dir)?;
    let summary = summary::compute(&rows, optimum_gaps);
    if summary.is_empty() {
        return Err(ReportError::Invalid(format!(
            "{}: no second with an active publisher, nothing to summarise",
            dir.join(records::BROKERS_CSV).display()
        )));
    }
    summary::write_csv(&dir.join(summary::SUMMARY_CSV), &summary)?;
    let title = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    let mut md = tables::render_markdown(&title, &summary);
    md.push_str(&faults::render_markdown(
        &records::read_faults(dir)?,
        &records::read_outages(dir)?,
    ));
    let md_path = dir.join(summary::SUMMARY_MD);
    std::fs::write(&md_path, md).map_err(|e| ReportError::io(&md_path, e))?;
    Ok(summary)
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
    /// A results directory (`results/<scenario>/<run-id>/`) holding at least brokers.csv.
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
    if !dir.join(records::BROKERS_CSV).exists() {
        return Err(crate::InputError(format!(
            "no {} in {}: pass a results directory written by `mqdispatch run`",
            records::BROKERS_CSV,
            dir.display()
        ))
        .into());
    }
    let paths = tokio::task::spawn_blocking(move || -> Result<Vec<PathBuf>, ReportError> {
        let optimum = known_optimum(&dir)?;
        summarize(&dir, &optimum)?;
        let mut paths = vec![
            dir.join(summary::SUMMARY_CSV),
            dir.join(summary::SUMMARY_MD),
        ];
        paths.extend(draw_all(&dir)?);
        Ok(paths)
    })
    .await??;
    for p in paths {
        println!("{}", p.display());
    }
    Ok(())
}
