//! Integration tests: report. A synthetic results directory with the paper's workload and
//! numbers known by construction goes through `build`, `draw_all` and `mqdispatch plot`.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use mqdispatch::report::status::{MethodRunDetail, Outcome, TrialDetail};
use mqdispatch::report::{
    self, BrokerRow, DecisionRow, FaultRow, PublisherRow, ResultsWriter, RunStatus,
    online_optimum_gap, window,
};

use crate::util::bin;

const BROKERS: [&str; 2] = ["b1", "b2"];
const LIGHT: f64 = 2000.0;
const HEAVY: f64 = 10000.0;
/// Publisher i joins at 5·i s and runs 100 s; rows cover 0..150 s. All ten are active on 45..=99,
/// so the window from the rows (trimmed) is 46..=98; the arrival plan's is 47..=99.
const SECONDS: u64 = 150;

/// Arrival rates of a trial whose heavy publisher arrives at `heavy_pos` (1-based).
fn rates(heavy_pos: usize) -> Vec<f64> {
    (1..=10)
        .map(|i| if i == heavy_pos { HEAVY } else { LIGHT })
        .collect()
}

/// `dns-rr`: arrival i → broker i mod 2. `greedy`: each arrival to the broker with the least
/// total rate (a dispatcher that knows the rates).
fn assign(method: &str, rates: &[f64]) -> Vec<usize> {
    let mut totals = [0.0; 2];
    rates
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let b = match method {
                "dns-rr" => i % 2,
                _ => usize::from(totals[1] < totals[0]),
            };
            totals[b] += r;
            b
        })
        .collect()
}

/// `last_late_s`: the last publisher starts that much after its planned join (a slow connect),
/// so the rows alone would give this method a later window.
fn write_trial(w: &mut ResultsWriter, trial: u32, method: &str, rates: &[f64], last_late_s: u64) {
    let brokers = assign(method, rates);
    let n = rates.len();
    let active = |i: usize, t: u64| {
        let join = 5 * i as u64 + if i + 1 == n { last_late_s } else { 0 };
        (join..join + 100).contains(&t)
    };
    for (i, (&rate, &b)) in rates.iter().zip(&brokers).enumerate() {
        let join_s = 5.0 * i as f64 + 0.05;
        if method != "dns-rr" {
            w.decision_row(&DecisionRow {
                trial,
                method: method.into(),
                t_s: join_s,
                client_id: format!("p{i}"),
                broker: BROKERS[b].into(),
                loads: vec![1.0, 2.0],
                predicted: vec![0.0, 0.0],
                sample_ages_ms: vec![Some(300), Some(700)],
                source: "reports".into(),
                role: "publisher".into(),
                group: String::new(),
            })
            .expect("decision row");
        }
        w.publisher_row(&PublisherRow {
            trial,
            method: method.into(),
            publisher: format!("p{i}"),
            profile: if rate == HEAVY { "heavy" } else { "light" }.into(),
            join_s,
            broker: BROKERS[b].into(),
            redirect_ms: (method != "dns-rr").then_some(1.5),
            target_msgs_per_s: rate,
            achieved_msgs_per_s: rate * 0.999,
            sent_total: (rate * 99.9) as u64,
            downtime_s: 0.0,
            target_total: (rate * 100.0) as u64,
        })
        .expect("publisher row");
    }
    for t in 0..SECONDS {
        for (bi, name) in BROKERS.iter().enumerate() {
            let mine = (0..rates.len()).filter(|&i| brokers[i] == bi && active(i, t));
            let (n, sent) = mine.fold((0, 0.0), |(n, s), i| (n + 1, s + rates[i]));
            w.broker_row(&BrokerRow {
                trial,
                method: method.into(),
                t_s: t,
                broker: (*name).into(),
                // 1 % CPU per 1000 msg/s plus a wiggle shared by both brokers; one missing sample.
                cpu_pct: (t != 60).then(|| sent / 1000.0 + 0.3 * (t as f64).sin()),
                sent_msgs_per_s: sent,
                received_msgs_per_s: Some(sent * 0.995),
                publishers: n,
            })
            .expect("broker row");
        }
        w.flush().expect("flush");
    }
}

/// Trial 1: heavy arrives 2nd (optimum 0); trial 2: heavy arrives 9th (optimum 8000). No
/// manifest: a results folder from before windows were stored.
fn synthetic_dir(dir: &Path) -> HashMap<u32, f64> {
    let optimum = synthetic_rows(dir, 0);
    std::fs::write(
        dir.join("faults.csv"),
        "trial,method,t_s,kind,target\n2,greedy,70.0,kill,b2\n",
    )
    .expect("faults.csv");
    optimum
}

/// The rows of both trials and methods; greedy's last publisher starts `greedy_late_s` late.
fn synthetic_rows(dir: &Path, greedy_late_s: u64) -> HashMap<u32, f64> {
    let brokers: Vec<String> = BROKERS.iter().map(|b| b.to_string()).collect();
    let mut w = ResultsWriter::create(dir, &brokers).expect("writer");
    let mut optimum = HashMap::new();
    for (trial, heavy_pos) in [(1, 2), (2, 9)] {
        let r = rates(heavy_pos);
        optimum.insert(trial, online_optimum_gap(&r, 2));
        for method in ["dns-rr", "greedy"] {
            let late = if method == "greedy" { greedy_late_s } else { 0 };
            write_trial(&mut w, trial, method, &r, late);
        }
    }
    optimum
}

/// A manifest as the runner writes it: each trial's window from the plan (publisher i planned
/// at 5·i s for 100 s), and the method runs that finished.
fn write_manifest(dir: &Path, methods: &[&str]) -> (u64, u64) {
    let spans: Vec<(f64, f64)> = (0..10)
        .map(|i| (5.0 * i as f64, 5.0 * i as f64 + 100.0))
        .collect();
    let plan = window::plan_window(&spans).expect("window");
    let status = RunStatus {
        completed: true,
        trials_detail: Some(
            [1, 2]
                .map(|trial| TrialDetail {
                    trial,
                    seed: 1 + u64::from(trial),
                    window: Some(plan),
                    methods: methods
                        .iter()
                        .map(|m| MethodRunDetail {
                            method: (*m).into(),
                            outcome: Outcome::Ok,
                            late_contributions: 1,
                            late_msgs: 2000,
                            host_idle_pct: None,
                            host_idle_min_pct: None,
                            lateness_p50_ms: None,
                            lateness_p99_ms: None,
                            harness: None,
                            delivery: None,
                        })
                        .collect(),
                })
                .to_vec(),
        ),
        ..RunStatus::default()
    };
    let mut status = status;
    status.total_late();
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&status).expect("json"),
    )
    .expect("manifest");
    (plan.window_start_s, plan.window_end_s)
}

fn expected_pngs() -> Vec<String> {
    let mut v = vec!["throughput.png".to_owned(), "gap.png".to_owned()];
    for kind in ["cpu", "rate"] {
        for method in ["dns-rr", "greedy"] {
            for trial in [1, 2] {
                v.push(format!("{kind}-{method}-t{trial}.png"));
            }
        }
    }
    v.sort();
    v
}

/// Checks the PNG signature and the IHDR size, and that the image carries far more than a blank
/// canvas of the same size would (`blank_len`).
fn assert_png(path: &Path, blank_len: usize) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    assert_eq!(&bytes[12..16], b"IHDR", "{}", path.display());
    let width = u32::from_be_bytes(bytes[16..20].try_into().expect("4 bytes"));
    let height = u32::from_be_bytes(bytes[20..24].try_into().expect("4 bytes"));
    assert_eq!((width, height), (1280, 720), "{}", path.display());
    assert!(
        bytes.len() > 4 * blank_len,
        "{} is {} bytes, a blank image is {blank_len}",
        path.display(),
        bytes.len()
    );
}

/// The size of a white 1280×720 PNG from the same encoder.
fn blank_png_len(dir: &Path) -> usize {
    use plotters::prelude::*;
    let path = dir.join("blank.png");
    {
        let root = BitMapBackend::new(&path, (1280, 720)).into_drawing_area();
        root.fill(&WHITE).expect("fill");
        root.present().expect("present");
    }
    let len = std::fs::metadata(&path).expect("blank").len() as usize;
    std::fs::remove_file(&path).expect("remove blank");
    len
}

#[test]
fn summarize_gives_the_constructed_numbers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let optimum = synthetic_dir(tmp.path());
    assert_eq!(optimum, HashMap::from([(1, 0.0), (2, 8000.0)]));
    let built = report::build(tmp.path(), &optimum);
    assert!(built.errors.is_empty(), "{:?}", built.errors);
    let rows = built.rows;
    let got: Vec<(u32, &str, u64, u64, f64)> = rows
        .iter()
        .map(|r| {
            (
                r.trial,
                r.method.as_str(),
                r.window_start_s,
                r.window_end_s,
                r.gap_msgs_per_s,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "dns-rr", 46, 98, 8000.0),
            (1, "greedy", 46, 98, 0.0),
            (2, "dns-rr", 46, 98, 8000.0),
            (2, "greedy", 46, 98, 8000.0),
        ]
    );
    // dns-rr trial 1: heavy (2nd) on b2 → b1 = 5 × 2000, b2 = 4 × 2000 + 10000.
    assert_eq!(
        rows[0].brokers,
        vec![("b1".into(), 10000.0), ("b2".into(), 18000.0)]
    );
    let jain = rows[0].jain_index.expect("jain");
    assert!((jain - 28000.0_f64.powi(2) / (2.0 * (18000.0_f64.powi(2) + 1e8))).abs() < 1e-12);
    assert_eq!(rows[1].jain_index, Some(1.0));
    // CPU = sent/1000 + the same wiggle on both brokers: |diff| = gap / 1000.
    let cpu = rows[0].mean_abs_cpu_diff_pct.expect("cpu diff");
    assert!((cpu - 8.0).abs() < 1e-9, "{cpu}");
    assert_eq!(rows[3].optimum_gap_msgs_per_s, Some(8000.0));

    let csv = std::fs::read_to_string(tmp.path().join("summary.csv")).expect("summary.csv");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some(
            "trial,method,window_start_s,window_end_s,gap_msgs_per_s,jain_index,\
             mean_abs_cpu_diff_pct,optimum_gap_msgs_per_s,mean_msgs_per_s_b1,mean_msgs_per_s_b2"
        )
    );
    assert_eq!(lines.count(), 4);
    let md = std::fs::read_to_string(tmp.path().join("summary.md")).expect("summary.md");
    // No manifest: the old per-method window, said as much.
    assert!(md.contains(&format!("- {}", window::FROM_ROWS)), "{md}");
    // faults.csv has a kill in trial 2: a fault run names no winner by gap, delivery leads.
    assert!(!md.contains("Winner"), "{md}");
    assert!(md.contains("**Fault run: no winner by gap**"), "{md}");
    assert!(
        md.contains("| 2 | greedy | 2797200 / 2800000 | 0.1 | 0.00 | 0 |"),
        "{md}"
    );
    assert!(
        md.contains("## Against the baseline `dns-rr` (paired by trial)"),
        "{md}"
    );
    // Paired Δ gap: −8000 and 0 → mean −4000, sd 5657, t(1) = 12.706 → ± 50825.
    assert!(md.contains("| greedy | 2 | -4000 ± 50825 |"), "{md}");
}

#[test]
fn draw_all_writes_every_png() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let optimum = synthetic_dir(tmp.path());
    let built = report::build(tmp.path(), &optimum);
    let blank = blank_png_len(tmp.path());
    let paths = report::draw_all(tmp.path(), &built.rows).expect("draw_all");
    let mut names: Vec<String> = paths
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, expected_pngs());
    for p in &paths {
        assert_png(p, blank);
    }
}

#[test]
fn plot_subcommand_redraws_from_the_files_alone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    synthetic_dir(dir);
    // No summary.csv yet: the optimum comes from publishers.csv's join order.
    let out = Command::new(bin())
        .arg("plot")
        .arg(dir)
        .output()
        .expect("run plot");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in expected_pngs()
        .iter()
        .chain(["summary.csv".to_owned(), "summary.md".to_owned()].iter())
    {
        let path = dir.join(name);
        assert!(
            stdout.lines().any(|l| Path::new(l) == path),
            "{name} not listed:\n{stdout}"
        );
        assert!(path.exists(), "{name}");
    }
    let optimum = report::known_optimum(dir).expect("optimum");
    assert_eq!(optimum, HashMap::from([(1, 0.0), (2, 8000.0)]));
}

#[test]
fn plot_subcommand_rejects_a_dir_without_csvs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = Command::new(bin())
        .arg("plot")
        .arg(tmp.path())
        .output()
        .expect("run plot");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no brokers.csv in"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn faults_are_read() {
    let tmp = tempfile::tempdir().expect("tempdir");
    synthetic_dir(tmp.path());
    let faults = report::records::read_faults(tmp.path()).expect("faults");
    assert_eq!(
        faults,
        vec![FaultRow {
            trial: 2,
            method: "greedy".into(),
            t_s: 70.0,
            kind: "kill".into(),
            target: "b2".into(),
        }]
    );
}

#[test]
fn every_method_of_a_trial_is_summarised_over_the_plan_window() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    // greedy's last publisher starts 3 s late: from its rows alone its window would start 3 s
    // after dns-rr's.
    let optimum = synthetic_rows(dir, 3);
    let legacy = report::build(dir, &optimum);
    let starts = |rows: &[report::SummaryRow], trial: u32| -> Vec<(u64, u64)> {
        rows.iter()
            .filter(|r| r.trial == trial)
            .map(|r| (r.window_start_s, r.window_end_s))
            .collect()
    };
    assert_eq!(starts(&legacy.rows, 1), [(46, 98), (49, 98)]);

    let window = write_manifest(dir, &["dns-rr", "greedy"]);
    assert_eq!(window, (47, 99));
    let out = Command::new(bin())
        .arg("plot")
        .arg(dir)
        .output()
        .expect("run plot");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_to_string(dir.join("summary.csv")).expect("summary.csv");
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let windows: Vec<(u32, String, u64, u64)> = reader
        .records()
        .map(|r| {
            let r = r.expect("record");
            (
                r[0].parse().expect("trial"),
                r[1].to_owned(),
                r[2].parse().expect("start"),
                r[3].parse().expect("end"),
            )
        })
        .collect();
    assert_eq!(
        windows,
        [
            (1, "dns-rr".into(), 47, 99),
            (1, "greedy".into(), 47, 99),
            (2, "dns-rr".into(), 47, 99),
            (2, "greedy".into(), 47, 99),
        ]
    );
    let md = std::fs::read_to_string(dir.join("summary.md")).expect("summary.md");
    for trial in [1, 2] {
        let line = format!(
            "- full-load window: t = 47–99 s for every method of trial {trial}, from the arrival \
             plan: last arrival + 2 s to first departure − 1 s"
        );
        assert!(md.contains(&line), "{line} not in\n{md}");
    }
    assert!(
        md.contains("Late contributions: 4 (8000 messages)."),
        "{md}"
    );
    // No fault here, two trials: the verdict follows the paired CI (Δ −8000 and 0: includes 0).
    assert!(md.contains("**No significant difference** in gap"), "{md}");
}

#[test]
fn a_method_that_ran_but_wrote_no_rows_is_an_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    synthetic_rows(dir, 0);
    write_manifest(dir, &["dns-rr", "greedy", "ghost"]);
    let out = Command::new(bin())
        .arg("plot")
        .arg(dir)
        .output()
        .expect("run plot");
    assert_eq!(
        out.status.code(),
        Some(1),
        "plot must fail on a method without rows"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("method ghost: ran to its end but wrote no row"),
        "{stderr}"
    );
    let md = std::fs::read_to_string(dir.join("summary.md")).expect("summary.md");
    for trial in [1, 2] {
        let line = format!(
            "- summary: trial {trial}, method ghost: ran to its end but wrote no row to brokers.csv"
        );
        assert!(md.contains(&line), "{line} not in\n{md}");
    }
    assert!(md.starts_with("# Summary"), "{md}");
    assert!(
        md.find("## Errors") < md.find("| method | trials | gap"),
        "{md}"
    );
    // What was recorded is still summarised and drawn.
    assert!(dir.join("throughput.png").exists());
}

/// Every generated table in README.md is what `mqdispatch readme` makes from the committed
/// files under results/published/: a hand-edited figure, or a published file changed without
/// regenerating README, fails here.
#[test]
fn readme_tables_are_generated_from_the_published_files() {
    // Relative, as `mqdispatch readme` is run from the repository root: each table names its
    // source folder. cargo runs integration tests in the package root.
    assert_eq!(
        std::env::current_dir().unwrap(),
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
    );
    let readme = std::fs::read_to_string("README.md").expect("README.md");
    let regenerated = mqdispatch::report::published::regenerate(
        &readme,
        std::path::Path::new("results/published"),
    )
    .expect("every README table has its published source");
    assert!(
        regenerated == readme,
        "README.md tables differ from results/published/: run `mqdispatch readme`"
    );
}
