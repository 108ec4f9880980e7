//! `mqdispatch run SCENARIO.yaml`: every trial × method of a scenario, recorded and plotted.
//!
//! Within a trial every method sees the same arrival order (seed + trial); each method run
//! starts fresh brokers so one method's leftovers never load the next. Every trial's full-load
//! window comes from its arrival plan and is stored in `manifest.json` before the first method
//! runs, so all methods of a trial are summarised over the same seconds.
//!
//! Before the first method, [`calibration`] measures how strongly a broker's CPU tracks its
//! message rate on this host, into `manifest.json` (`calibration`) and `summary.md`.
//!
//! Errors are errors: a failed method run, a fault that could not be injected, a method that
//! wrote no row, a failed summary or plot each appear under Errors in `summary.md`, make the
//! manifest say `completed: false` with the reason, and make `mqdispatch run` exit non-zero.

mod agents;
mod broker_spec;
mod calibration;
mod delivery;
mod dispatcher_slot;
mod faults;
mod harness_meter;
pub mod hosts;
mod method_dispatcher;
mod method_run;
mod moves;
mod progress;
mod prom_feed;
mod recorder;
pub mod results_dir;
mod subscribers;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::InputError;
use crate::loadgen::{PlannedPublisher, plan_arrivals};
use crate::report::status::{MethodRunDetail, Outcome, TrialDetail};
use crate::report::{self, ResultsWriter, RunError, RunStatus, Stage};
use crate::scenario::{self, Scenario};
use faults::FaultLog;
use method_run::MethodRun;
use results_dir::{Host, Manifest};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The scenario file (see scenarios/).
    pub scenario: PathBuf,
    /// Where results go: DIR/<scenario>/<run-id>/.
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Override the scenario's number of trials.
    #[arg(long)]
    pub trials: Option<u32>,
    /// Run only these methods (repeatable; names from the scenario).
    #[arg(long = "method")]
    pub methods: Vec<String>,
    /// Also copy the headline plots (throughput.png, gap.png) here.
    #[arg(long)]
    pub plots_dir: Option<PathBuf>,
}

pub async fn cli_main(args: Args) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.scenario).map_err(|e| {
        InputError(format!(
            "{}: cannot read scenario: {e}",
            args.scenario.display()
        ))
    })?;
    let mut scenario = scenario::parse(&text, &args.scenario.display().to_string())?;
    if let Some(trials) = args.trials {
        if trials == 0 {
            return Err(InputError("--trials must be at least 1".into()).into());
        }
        scenario.trials = trials;
    }
    if !args.methods.is_empty() {
        for m in &args.methods {
            if !scenario.methods.iter().any(|plan| &plan.name == m) {
                let known: Vec<_> = scenario.methods.iter().map(|p| p.name.as_str()).collect();
                return Err(InputError(format!(
                    "--method {m}: no such method in the scenario (it has {})",
                    known.join(", ")
                ))
                .into());
            }
        }
        scenario
            .methods
            .retain(|plan| args.methods.contains(&plan.name));
    }
    // The loader holds one socket per publisher plus two per CONNECT of a wave in flight
    // (redirect exchange and broker connection); a broker may get every publisher.
    let publishers: usize = scenario.profiles.iter().map(|p| p.count).sum();
    let wave = scenario.arrival.burst.unwrap_or(1).min(publishers);
    crate::fdlimit::raise(
        crate::fdlimit::needed_for((publishers + 2 * wave) as u64),
        &format!("{publishers} publishers in waves of {wave}"),
    )
    .map_err(|e| InputError(format!("{}: {e}", args.scenario.display())))?;
    crate::broker::check_available(scenario.brokers.kind)
        .and_then(|()| crate::scenario::check_host(&scenario))
        .map_err(|e| InputError(format!("{}: {e}", args.scenario.display())))?;
    crate::scenario::check_prometheus(&scenario)
        .map_err(|e| InputError(format!("{}: {e}", args.scenario.display())))?;
    if let Some(plan) = &scenario.hosts {
        crate::scenario::hosts::check_reachable(plan).await?;
    }

    let cancel = CancellationToken::new();
    let _signals = crate::shutdown::cancel_on_signal(&cancel, |signal| {
        eprintln!("\ninterrupted ({signal}): stopping everything, keeping what was measured")
    })?;

    let outcome = run(&scenario, &args.scenario, &text, &args.out, cancel).await?;
    println!("\n{}", report::tables::render_console(&outcome.report));
    if let Ok(md) = std::fs::read_to_string(outcome.dir.join("summary.md"))
        && let Some(faults) = md.split("\n## ").find(|s| s.starts_with("Faults"))
    {
        println!("## {}", faults.trim_end());
    }
    println!("full tables: {}", outcome.dir.join("summary.md").display());
    if let Some(plots) = &args.plots_dir {
        std::fs::create_dir_all(plots)?;
        for name in ["throughput.png", "gap.png"] {
            let from = outcome.dir.join(name);
            if from.exists() {
                std::fs::copy(&from, plots.join(name))
                    .with_context(|| format!("copying {name} to {}", plots.display()))?;
            }
        }
        for png in &outcome.report.pngs {
            let name = png.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.ends_with("-t1.png") {
                std::fs::copy(png, plots.join(name))?;
            }
        }
    }
    println!("results: {}", outcome.dir.display());
    if !outcome.completed {
        anyhow::bail!(
            "the run did not complete; what it measured is in {} (manifest.json says completed: false)",
            outcome.dir.display()
        );
    }
    Ok(())
}

pub struct RunOutcome {
    pub dir: PathBuf,
    pub completed: bool,
    /// The summary, the PNGs drawn, and every error.
    pub report: report::Report,
}

/// Adds `found` to the run's errors; any error makes the run incomplete, and the reason names
/// the first unless the run already stopped for one (a failure, an interrupt).
fn settle(status: &mut RunStatus, found: impl IntoIterator<Item = RunError>) {
    status.errors.extend(found);
    let Some(first) = status.errors.first() else {
        return;
    };
    status.completed = false;
    if status.incomplete_reason.is_none() {
        status.incomplete_reason = Some(format!(
            "{} error(s), listed under Errors in summary.md; the first: {first}",
            status.errors.len()
        ));
    }
}

/// The arrival plan of every trial (seed + trial), and each trial's entry for the manifest.
fn plan_trials(
    scenario: &Scenario,
) -> Result<Vec<(Vec<PlannedPublisher>, TrialDetail)>, InputError> {
    (1..=scenario.trials)
        .map(|trial| {
            let seed = scenario.seed + u64::from(trial);
            let plan =
                plan_arrivals(&scenario.profiles, &scenario.arrival, seed).map_err(InputError)?;
            let spans: Vec<(f64, f64)> = plan
                .iter()
                .map(|p| {
                    let join = p.join_at.as_secs_f64();
                    (
                        join,
                        join + scenario.profiles[p.profile].duration.as_secs_f64(),
                    )
                })
                .collect();
            let detail = TrialDetail {
                trial,
                seed,
                window: report::window::plan_window(&spans),
                methods: Vec::new(),
            };
            Ok((plan, detail))
        })
        .collect()
}

/// Runs every trial × method; always leaves a manifest saying whether it completed.
pub async fn run(
    scenario: &Scenario,
    scenario_path: &Path,
    scenario_text: &str,
    out: &Path,
    cancel: CancellationToken,
) -> anyhow::Result<RunOutcome> {
    // Before any folder or broker: a Prometheus-fed method needs the binary.
    crate::scenario::check_prometheus(scenario)?;
    let trials = plan_trials(scenario)?;
    let dir = results_dir::create(out, &scenario.name)
        .with_context(|| format!("creating a results folder under {}", out.display()))?;
    let workdir = dir.join("work");
    std::fs::create_dir_all(&workdir)?;
    // `tls: true`: one throwaway CA for the whole run (brokers, dispatcher, publishers).
    let tls = match scenario.tls {
        true => Some(crate::tls::ThrowawayCa::create(&workdir).context("TLS certificates")?),
        false => None,
    };
    let mut manifest = Manifest {
        scenario: scenario.clone(),
        scenario_file: scenario_path.display().to_string(),
        scenario_text: scenario_text.to_owned(),
        seeds: trials.iter().map(|(_, d)| d.seed).collect(),
        trials: scenario.trials,
        methods: scenario.methods.iter().map(|m| m.name.clone()).collect(),
        crate_version: env!("CARGO_PKG_VERSION"),
        git_commit: results_dir::git_commit(),
        host: Host::read(),
        broker_kind: format!("{:?}", scenario.brokers.kind).to_lowercase(),
        broker_versions: Vec::new(),
        start_ms: crate::now_ms(),
        end_ms: None,
        hosts: None,
        status: RunStatus {
            trials_detail: Some(trials.iter().map(|(_, d)| d.clone()).collect()),
            ..RunStatus::default()
        },
    };
    manifest.write(&dir)?;
    // Roles on hosts: connected, binary in place, clocks measured, before anything starts.
    let session = match scenario.hosts.as_ref().filter(|p| p.places_roles()) {
        None => None,
        Some(plan) => match hosts::HostSession::open(plan, scenario.brokers.kind, &dir).await {
            Ok(session) => {
                manifest.hosts = Some(session.record());
                Some(session)
            }
            Err(e) => {
                let e = e.context("connecting to the scenario's hosts");
                let status = &mut manifest.status;
                status
                    .errors
                    .push(RunError::new(Stage::Method, format!("{e:#}")));
                status.incomplete_reason = Some(format!("{e:#}"));
                manifest.end_ms = Some(crate::now_ms());
                manifest.write(&dir)?;
                return Err(e.context(format!("partial results kept in {}", dir.display())));
            }
        },
    };
    manifest.write(&dir)?;
    let calibrated = calibration::calibrate(scenario, &workdir, tls.as_ref(), &cancel).await;
    let status = &mut manifest.status;
    status.errors.extend(
        calibrated
            .errors()
            .map(|e| RunError::new(Stage::Calibration, e)),
    );
    status.calibration = Some(calibrated);
    manifest.write(&dir)?;

    let broker_ids: Vec<String> = (1..=scenario.brokers.count)
        .map(|i| format!("b{i}"))
        .collect();
    let mut writer = ResultsWriter::create(&dir, &broker_ids)?;
    let mut faults_log = FaultLog::create(&dir)?;
    let progress = progress::Progress::new(scenario, scenario.method_length());
    let mut optimum = HashMap::new();
    let mut failure: Option<anyhow::Error> = None;
    let mut broker_versions = Vec::new();

    let mut method_index = 0;
    'trials: for (i, (plan, detail)) in trials.iter().enumerate() {
        let trial = detail.trial;
        let rates: Vec<f64> = plan
            .iter()
            .map(|p| scenario.profiles[p.profile].rate)
            .collect();
        optimum.insert(
            trial,
            report::online_optimum_gap(&rates, scenario.brokers.count),
        );
        for method in &scenario.methods {
            if cancel.is_cancelled() {
                break 'trials;
            }
            progress.start_method(trial, &method.name, method_index);
            method_index += 1;
            let run = MethodRun {
                scenario,
                trial,
                seed: detail.seed,
                method,
                plan,
                workdir: &workdir,
                results: &dir,
                progress: &progress,
                tls: tls.as_ref(),
                hosts: session.as_ref(),
            };
            let result = run.execute(&mut writer, &mut faults_log, &cancel).await;
            let late = writer.take_late();
            let outcome = match &result {
                Err(_) => Outcome::Failed,
                Ok(_) if cancel.is_cancelled() => Outcome::Interrupted,
                Ok(_) => Outcome::Ok,
            };
            let status = &mut manifest.status;
            if let Some(details) = status.trials_detail.as_mut() {
                let measures = result.as_ref().ok().map(|r| &r.measures);
                let idle = measures
                    .zip(details[i].window.as_ref())
                    .and_then(|(m, w)| m.host_idle_over(w.window_start_s, w.window_end_s));
                let lateness = measures.and_then(|m| m.lateness.as_ref());
                let quantile_ms = |q: f64| {
                    lateness
                        .and_then(|l| l.quantile(q))
                        .map(|d| d.as_secs_f64() * 1e3)
                };
                details[i].methods.push(MethodRunDetail {
                    method: method.name.clone(),
                    outcome,
                    late_contributions: late.contributions,
                    late_msgs: late.msgs.round() as u64,
                    host_idle_pct: idle.map(|(mean, _)| mean),
                    host_idle_min_pct: idle.map(|(_, min)| min),
                    lateness_p50_ms: quantile_ms(0.5),
                    lateness_p99_ms: quantile_ms(0.99),
                    harness: measures.and_then(|m| m.harness.clone()),
                    delivery: measures.and_then(|m| m.delivery.clone()),
                });
            }
            status.total_late();
            status.errors.extend(
                faults_log
                    .take_failures()
                    .into_iter()
                    .map(|f| RunError::new(Stage::Fault, f)),
            );
            match result {
                Ok(done) => broker_versions = done.versions,
                Err(e) => {
                    let e = e.context(format!("trial {trial}, method {}", method.name));
                    status
                        .errors
                        .push(RunError::new(Stage::Method, format!("{e:#}")));
                    failure = Some(e);
                }
            }
            manifest.write(&dir)?;
            if failure.is_some() {
                break 'trials;
            }
        }
    }
    progress.done();
    if let Some(session) = session {
        manifest.hosts = Some(session.finish().await);
    }
    writer.flush()?;
    drop(writer);
    let _ = std::fs::remove_dir_all(&workdir);

    let status = &mut manifest.status;
    status.incomplete_reason = match (&failure, cancel.is_cancelled()) {
        (Some(e), _) => Some(format!("{e:#}")),
        (None, true) => Some("interrupted".into()),
        (None, false) => None,
    };
    status.completed = status.incomplete_reason.is_none();
    settle(status, []);
    manifest.end_ms = Some(crate::now_ms());
    manifest.broker_versions = broker_versions;
    manifest.write(&dir)?;

    // Summaries and plots from whatever was recorded, even for an incomplete run.
    let summary_dir = dir.clone();
    let report = tokio::task::spawn_blocking(move || report::build(&summary_dir, &optimum))
        .await
        .unwrap_or_else(|e| report::Report {
            errors: vec![RunError::new(
                Stage::Summary,
                format!("the summary task failed: {e}"),
            )],
            ..report::Report::default()
        });
    settle(&mut manifest.status, report.report_errors().cloned());
    manifest.write(&dir)?;
    if let Some(e) = failure {
        return Err(e.context(format!("partial results kept in {}", dir.display())));
    }
    Ok(RunOutcome {
        completed: manifest.status.completed,
        dir,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_error_makes_the_run_incomplete() {
        let mut status = RunStatus {
            completed: true,
            ..RunStatus::default()
        };
        settle(&mut status, []);
        assert!(status.completed && status.incomplete_reason.is_none());
        settle(
            &mut status,
            [RunError::new(Stage::Plot, "drawing gap.png: out of memory")],
        );
        assert!(!status.completed);
        assert_eq!(
            status.incomplete_reason.as_deref(),
            Some(
                "1 error(s), listed under Errors in summary.md; the first: plot: drawing gap.png: \
                 out of memory"
            )
        );
        // An interrupt stays the reason; the error is still listed.
        let mut status = RunStatus {
            incomplete_reason: Some("interrupted".into()),
            ..RunStatus::default()
        };
        settle(&mut status, [RunError::new(Stage::Fault, "kill b2 failed")]);
        assert_eq!(status.incomplete_reason.as_deref(), Some("interrupted"));
        assert_eq!(status.errors.len(), 1);
    }

    #[test]
    fn every_trial_gets_its_seed_and_plan_window() {
        let text = "name: t\nseed: 1\ntrials: 2\nbrokers: { kind: embedded, count: 2 }\n\
                    publishers:\n  - { name: p, count: 3, rate: 10, payload_bytes: 16, duration: 10s }\n\
                    arrival: { order: random, interval: 2s }\n\
                    methods:\n  - { name: dns-rr, assign: dns-rr }\n";
        let scenario = scenario::parse(text, "t.yaml").expect("scenario");
        let trials = plan_trials(&scenario).expect("plans");
        let windows: Vec<_> = trials
            .iter()
            .map(|(_, d)| {
                (
                    d.trial,
                    d.seed,
                    d.window.map(|w| (w.window_start_s, w.window_end_s)),
                )
            })
            .collect();
        // Arrivals at 0, 2, 4 s, 10 s each: 4 + 2 ..= 10 − 1.
        assert_eq!(windows, [(1, 2, Some((6, 9))), (2, 3, Some((6, 9)))]);
    }
}
