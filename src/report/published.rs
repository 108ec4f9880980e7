//! Figures that trace to files: `mqdispatch publish RESULTS_DIR` copies a run's summary files
//! and the records its figures are drawn from into `results/published/<scenario>/` (committed),
//! and `mqdispatch readme` regenerates every table of README.md and the book (`docs/src/`) from
//! those copies, so no figure in the documentation is typed by hand.
//!
//! A table block is `<!-- table: NAME -->` … `<!-- /table -->`; its content is replaced by the
//! table of `results/published/NAME/`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::calibration::Calibration;
use super::stats::Estimate;

/// The files a published result keeps (each small).
pub const PUBLISHED_FILES: [&str; 3] = ["manifest.json", "summary.csv", "summary.md"];
/// Records published too when the run has them: the dispatcher's decisions (the tables'
/// decision-input ages come from them), the live moves, and what `mqdispatch plot` redraws the
/// per-second figures from (brokers, publishers, faults, outages).
pub const PUBLISHED_IF_PRESENT: [&str; 9] = [
    "decisions.csv",
    "moves.csv",
    "brokers.csv",
    "publishers.csv",
    "faults.csv",
    "outages.csv",
    "subscribers.csv",
    "latency.csv",
    "receipts.csv",
];

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// A run's results folder (results/<scenario>/<run-id>).
    pub results: PathBuf,
    /// Where published copies live.
    #[arg(long, default_value = "results/published")]
    pub to: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ReadmeArgs {
    /// The files whose `<!-- table: NAME -->` blocks are regenerated (default: README.md and
    /// every page of the book, docs/src/*.md).
    pub files: Vec<PathBuf>,
    #[arg(long, default_value = "results/published")]
    pub published: PathBuf,
}

/// README.md and the book's pages (`docs/src/*.md`, sorted), relative to the repository root:
/// every file that may hold generated tables.
pub fn documents(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root.join("docs/src"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    pages.sort();
    let mut out = vec![root.join("README.md")];
    out.extend(pages);
    Ok(out)
}

/// `YYYY-MM-DD HH:MM UTC` from Unix milliseconds.
fn utc_date(ms: u64) -> String {
    let s = crate::run::results_dir::utc_stamp(ms / 1000);
    format!(
        "{}-{}-{} {}:{} UTC",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13]
    )
}

/// The host as the manifest records it: cores, CPU model, kernel.
fn host(manifest: &serde_json::Value) -> String {
    let h = &manifest["host"];
    match (
        h["cores"].as_u64(),
        h["cpu_model"].as_str(),
        h["kernel"].as_str(),
    ) {
        (Some(cores), Some(model), Some(kernel)) => {
            format!("{cores} cores, {model}, Linux {kernel}")
        }
        _ => "host not recorded".to_owned(),
    }
}

/// Copies a completed run's summary files to `<to>/<scenario name>/`, replacing an earlier
/// published copy of the same scenario (git keeps the history).
pub fn publish(args: &PublishArgs) -> anyhow::Result<PathBuf> {
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(args.results.join("manifest.json"))
            .with_context(|| format!("{}: no manifest.json", args.results.display()))?,
    )?;
    if manifest["completed"] != serde_json::Value::Bool(true) {
        bail!(
            "{}: the run did not complete (manifest.json: completed is not true); only complete \
             runs are published",
            args.results.display()
        );
    }
    let name = manifest["scenario"]["name"]
        .as_str()
        .context("manifest.json has no scenario.name")?;
    let dest = args.to.join(name);
    std::fs::create_dir_all(&dest)?;
    for file in PUBLISHED_FILES {
        std::fs::copy(args.results.join(file), dest.join(file))
            .with_context(|| format!("copying {file} from {}", args.results.display()))?;
    }
    for file in PUBLISHED_IF_PRESENT {
        let from = args.results.join(file);
        if from.exists() {
            std::fs::copy(&from, dest.join(file))
                .with_context(|| format!("copying {}", from.display()))?;
        }
    }
    // The subscribers' latency histograms (`latency-<method>-t<k>.hlog`): the CDF redraws
    // from them.
    for entry in std::fs::read_dir(&args.results)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("latency-") && name.ends_with(".hlog") {
            std::fs::copy(args.results.join(&*name), dest.join(&*name))
                .with_context(|| format!("copying {name}"))?;
        }
    }
    Ok(dest)
}

/// One row of `summary.csv`, as far as the README tables need it.
#[derive(Debug, Clone)]
struct Row {
    trial: u32,
    method: String,
    gap: f64,
    jain: Option<f64>,
    cpu_diff: Option<f64>,
    optimum: Option<f64>,
}

fn read_rows(path: &Path) -> anyhow::Result<Vec<Row>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let headers = reader.headers()?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("{}: no column {name}", path.display()))
    };
    let (trial, method, gap) = (col("trial")?, col("method")?, col("gap_msgs_per_s")?);
    let (jain, cpu, optimum) = (
        col("jain_index")?,
        col("mean_abs_cpu_diff_pct")?,
        col("optimum_gap_msgs_per_s")?,
    );
    let mut rows = Vec::new();
    for rec in reader.records() {
        let rec = rec?;
        let num = |i: usize| rec.get(i).and_then(|v| v.parse::<f64>().ok());
        rows.push(Row {
            trial: rec[trial].parse()?,
            method: rec[method].to_owned(),
            gap: num(gap).with_context(|| format!("{}: a row without a gap", path.display()))?,
            jain: num(jain),
            cpu_diff: num(cpu),
            optimum: num(optimum),
        });
    }
    Ok(rows)
}

fn est(xs: &[f64], decimals: usize) -> String {
    Estimate::of(xs).map_or_else(|| "–".into(), |e| e.display(decimals))
}

/// The markdown table (and its source line) for one published scenario folder.
pub fn table(dir: &Path) -> anyhow::Result<String> {
    let rows = read_rows(&dir.join("summary.csv"))?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json"))?)?;
    let mut methods: Vec<String> = Vec::new();
    for r in &rows {
        if !methods.contains(&r.method) {
            methods.push(r.method.clone());
        }
    }
    let by_trial: HashMap<(u32, &str), &Row> = rows
        .iter()
        .map(|r| ((r.trial, r.method.as_str()), r))
        .collect();
    let idle = host_idle(&manifest);
    let baseline = methods.first().cloned().unwrap_or_default();
    let mut md = String::new();
    md.push_str(
        "| method | trials | gap (msg/s) | gap per trial | online optimum (msg/s) | Jain index \
         | mean abs CPU diff (points) | CPU diff below the baseline's in every trial | host idle, mean (lowest s) |\n\
         |---|---:|---:|---|---:|---:|---:|---|---:|\n",
    );
    for m in &methods {
        let mine: Vec<&Row> = rows.iter().filter(|r| &r.method == m).collect();
        let gaps: Vec<f64> = mine.iter().map(|r| r.gap).collect();
        let per_trial: Vec<String> = gaps.iter().map(|g| format!("{g:.0}")).collect();
        let optimum: Vec<f64> = mine.iter().filter_map(|r| r.optimum).collect();
        let jain: Vec<f64> = mine.iter().filter_map(|r| r.jain).collect();
        let cpu: Vec<f64> = mine.iter().filter_map(|r| r.cpu_diff).collect();
        let below = if *m == baseline {
            "(baseline)".to_owned()
        } else {
            let pairs: Vec<bool> = mine
                .iter()
                .filter_map(|r| {
                    let base = by_trial.get(&(r.trial, baseline.as_str()))?;
                    Some(r.cpu_diff? < base.cpu_diff?)
                })
                .collect();
            let yes = pairs.iter().filter(|b| **b).count();
            format!("{yes} of {}", pairs.len())
        };
        let host = idle.get(m.as_str()).map_or_else(
            || "–".into(),
            |(mean, min)| format!("{mean:.0} % ({min:.0} %)"),
        );
        let _ = writeln!(
            md,
            "| {m} | {} | {} | {} | {} | {} | {} | {below} | {host} |",
            mine.len(),
            est(&gaps, 0),
            per_trial.join(", "),
            est(&optimum, 0),
            est(&jain, 3),
            est(&cpu, 2),
        );
    }
    md.push_str(&harness_table(&manifest));
    let received = crate::report::subscribers::figures(dir)?;
    if !received.is_empty() {
        let present: Vec<&String> = methods.iter().collect();
        let _ = write!(
            md,
            "\nSubscribers (receipts.csv; latency over every message, the run's hlogs):\n\n{}",
            crate::report::subscriber_tables::render_tables(&received, &present)
        );
    }
    let decided = crate::report::decisions::read_optional(dir)?;
    let inputs = crate::report::decisions::input_age_table(&decided);
    if !inputs.is_empty() {
        let _ = write!(
            md,
            "\nAge of the load information behind each placement (the oldest \
             broker's newest sample, measured to decided; decisions.csv `age_<broker>`):\n\n{inputs}"
        );
    }
    let _ = writeln!(
        md,
        "\nMean ± 95 % CI over trials (Student t). Source: `{}/` (run started {}, commit {}, \
         broker kind {}, CPU per {}; host: {}).",
        dir.display(),
        manifest["start_ms"]
            .as_u64()
            .map_or_else(|| "?".into(), utc_date),
        manifest["git_commit"].as_str().unwrap_or("unknown"),
        manifest["broker_kind"].as_str().unwrap_or("?"),
        manifest["scenario"]["cpu"].as_str().unwrap_or("process"),
        host(&manifest),
    );
    let calibration = manifest
        .get("calibration")
        .map(|c| serde_json::from_value::<Calibration>(c.clone()))
        .transpose()
        .with_context(|| format!("{}: manifest.json `calibration`", dir.display()))?;
    if let Some(cal) = calibration {
        let _ = writeln!(md, "\nCalibration: {}.", cal.describe());
    }
    Ok(md)
}

/// Per trial and method, what the harness measured of waves, redirects, joins and itself
/// (`trials_detail[].methods[].harness`, fleets); empty when no method run carries it.
fn harness_table(manifest: &serde_json::Value) -> String {
    let mut rows = String::new();
    let fmt = |v: &serde_json::Value, scale: f64, decimals: usize| {
        v.as_f64()
            .map_or_else(|| "–".to_owned(), |x| format!("{:.*}", decimals, x * scale))
    };
    for trial in manifest["trials_detail"].as_array().into_iter().flatten() {
        for run in trial["methods"].as_array().into_iter().flatten() {
            let h = &run["harness"];
            if !h.is_object() {
                continue;
            }
            let delivered = match (
                run["delivery"]["received"].as_u64(),
                run["delivery"]["sent"].as_u64(),
            ) {
                (Some(received), Some(sent)) => format!("{received} / {sent}"),
                _ => "–".to_owned(),
            };
            let _ = writeln!(
                rows,
                "| {} | {} | {} | {} % | {} / {} ms | {} / {} ms | {} KiB | {} % | {} % | {} s | {} |",
                trial["trial"],
                run["method"].as_str().unwrap_or("?"),
                h["publishers_joined"],
                fmt(&h["largest_wave_share"], 100.0, 0),
                fmt(&h["redirect_p50_ms"], 1.0, 1),
                fmt(&h["redirect_p99_ms"], 1.0, 1),
                fmt(&h["connect_p50_ms"], 1.0, 0),
                fmt(&h["connect_p99_ms"], 1.0, 0),
                fmt(&h["loader_rss_kib_per_publisher"], 1.0, 1),
                fmt(&h["loader_cpu_pct"], 1.0, 0),
                fmt(&h["dispatcher_cpu_pct"], 1.0, 1),
                fmt(&h["overhead_s"], 1.0, 1),
                delivered,
            );
        }
    }
    if rows.is_empty() {
        return rows;
    }
    format!(
        "\n| trial | method | publishers | largest wave share on one broker | redirect p50 / p99 \
         | join → CONNACK p50 / p99 | harness RSS per publisher | harness CPU (% of a core) \
         | of which the dispatcher thread | overhead beyond the scenario \
         | brokers received / sent |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n{rows}"
    )
}

/// Per method: mean of the per-run mean host idle, and the lowest second, over all trials.
fn host_idle(manifest: &serde_json::Value) -> HashMap<&str, (f64, f64)> {
    let mut acc: HashMap<&str, (Vec<f64>, f64)> = HashMap::new();
    for trial in manifest["trials_detail"].as_array().into_iter().flatten() {
        for m in trial["methods"].as_array().into_iter().flatten() {
            let (Some(name), Some(mean)) = (m["method"].as_str(), m["host_idle_pct"].as_f64())
            else {
                continue;
            };
            let min = m["host_idle_min_pct"].as_f64().unwrap_or(mean);
            let entry = acc.entry(name).or_insert((Vec::new(), f64::INFINITY));
            entry.0.push(mean);
            entry.1 = entry.1.min(min);
        }
    }
    acc.into_iter()
        .map(|(m, (means, min))| (m, (means.iter().sum::<f64>() / means.len() as f64, min)))
        .collect()
}

/// The markdown table under the line `## SECTION` of a committed benchmark output (`FILE#SECTION`
/// in a README marker): the `|` lines that follow it.
fn bench_section(file: &Path, section: &str) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let heading = format!("## {section}");
    let mut lines = text.lines().skip_while(|l| l.trim() != heading);
    if lines.next().is_none() {
        bail!("{}: no `{heading}` line", file.display());
    }
    // A sentence may stand between the heading and its table; the next heading ends the search.
    let table: String = lines
        .take_while(|l| !l.starts_with("## "))
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .map(|l| format!("{l}\n"))
        .collect();
    if table.is_empty() {
        bail!("{}: no table under `{heading}`", file.display());
    }
    Ok(table)
}

/// Replaces the content of every `<!-- table: NAME -->` … `<!-- /table -->` block: NAME is a
/// published scenario, or `FILE#SECTION` for a table in a committed benchmark output.
pub fn regenerate(text: &str, published: &Path) -> anyhow::Result<String> {
    const OPEN: &str = "<!-- table: ";
    const CLOSE: &str = "<!-- /table -->";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        let after_open = &rest[start + OPEN.len()..];
        let name_end = after_open
            .find(" -->")
            .context("an unterminated `<!-- table: NAME -->` marker")?;
        let name = after_open[..name_end].trim();
        let body_start = start + OPEN.len() + name_end + " -->".len();
        let close = rest[body_start..]
            .find(CLOSE)
            .with_context(|| format!("table {name}: no `{CLOSE}` after it"))?;
        out.push_str(&rest[..body_start]);
        out.push('\n');
        let body = match name.split_once('#') {
            Some((file, section)) => bench_section(&published.join(file), section),
            None => table(&published.join(name)),
        };
        out.push_str(&body.with_context(|| format!("table {name}"))?);
        out.push_str(CLOSE);
        rest = &rest[body_start + close + CLOSE.len()..];
    }
    out.push_str(rest);
    Ok(out)
}

pub fn publish_main(args: PublishArgs) -> anyhow::Result<()> {
    let dest = publish(&args)?;
    println!("published to {}", dest.display());
    Ok(())
}

pub fn readme_main(args: ReadmeArgs) -> anyhow::Result<()> {
    let files = if args.files.is_empty() {
        documents(Path::new(".")).context("listing docs/src (run from the repository root)")?
    } else {
        args.files
    };
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let new =
            regenerate(&text, &args.published).with_context(|| format!("{}", file.display()))?;
        if new != text {
            std::fs::write(&file, new)?;
            println!("{}: tables regenerated", file.display());
        } else {
            println!("{}: tables already up to date", file.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(dir: &Path) {
        let d = dir.join("demo");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("summary.csv"),
            "trial,method,window_start_s,window_end_s,gap_msgs_per_s,jain_index,mean_abs_cpu_diff_pct,optimum_gap_msgs_per_s,mean_msgs_per_s_b1,mean_msgs_per_s_b2\n\
             1,dns-rr,47,99,8000,0.925,10,0,18000,10000\n\
             1,proposed,47,99,4000,0.98,2,0,16000,12000\n\
             2,dns-rr,47,99,8000,0.925,12,0,18000,10000\n\
             2,proposed,47,99,2000,0.99,13,0,15000,13000\n",
        )
        .unwrap();
        std::fs::write(
            d.join("manifest.json"),
            r#"{"completed":true,"git_commit":"abc","broker_kind":"embedded","start_ms":1,
                "scenario":{"name":"demo","cpu":"process"},
                "trials_detail":[{"trial":1,"methods":[{"method":"dns-rr","host_idle_pct":40.0,"host_idle_min_pct":35.0}]},
                                 {"trial":2,"methods":[{"method":"dns-rr","host_idle_pct":50.0,"host_idle_min_pct":30.0}]}]}"#,
        )
        .unwrap();
    }

    #[test]
    fn tables_come_from_the_files() {
        let dir = tempfile::tempdir().unwrap();
        published(dir.path());
        let t = table(&dir.path().join("demo")).unwrap();
        assert!(t.contains("| dns-rr | 2 | 8000 ± 0 | 8000, 8000 |"), "{t}");
        assert!(
            t.contains("| proposed | 2 | 3000 ± 12706 | 4000, 2000 |"),
            "{t}"
        );
        // CPU diff 2 < 10 in trial 1, 13 > 12 in trial 2.
        assert!(t.contains("| 1 of 2 |"), "{t}");
        assert!(t.contains("45 % (30 %)"), "{t}");
        assert!(t.contains("commit abc"), "{t}");
        assert!(
            !t.contains("Calibration"),
            "no calibration in this manifest: {t}"
        );
        assert!(t.contains("run started 1970-01-01 00:00 UTC"), "{t}");
        assert!(t.contains("host: host not recorded"), "{t}");
    }

    #[test]
    fn a_calibrated_run_states_its_calibration() {
        let dir = tempfile::tempdir().unwrap();
        published(dir.path());
        let path = dir.path().join("demo/manifest.json");
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        manifest["calibration"] = serde_json::json!({
            "payload_bytes": 600, "qos": 0, "step_s": 4.0,
            "kinds": [{"kind": "mosquitto", "ratio": 8.8, "steps": [
                {"rate_msgs_per_s": 2000.0, "cpu_pct": 2.7, "measured_s": 2.0,
                 "sent_msgs": 8000, "target_msgs": 8000},
                {"rate_msgs_per_s": 10000.0, "cpu_pct": 23.5, "measured_s": 2.0,
                 "sent_msgs": 40000, "target_msgs": 40000}]}]
        });
        std::fs::write(&path, manifest.to_string()).unwrap();
        let t = table(&dir.path().join("demo")).unwrap();
        assert!(
            t.contains("Mosquitto 2.7 % at 2000 msg/s, 23.5 % at 10000 msg/s (8.8x)"),
            "{t}"
        );
    }

    #[test]
    fn dates_are_utc_and_the_host_is_as_recorded() {
        // 2026-11-27 05:18:08 UTC.
        assert_eq!(utc_date(1_795_756_688_081), "2026-11-27 05:18 UTC");
        let m: serde_json::Value =
            serde_json::from_str(r#"{"host":{"cores":2,"cpu_model":"Xeon","kernel":"6.1.0"}}"#)
                .unwrap();
        assert_eq!(host(&m), "2 cores, Xeon, Linux 6.1.0");
    }

    #[test]
    fn bench_tables_come_from_their_section() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bench")).unwrap();
        std::fs::write(
            dir.path().join("bench/out.txt"),
            "command: x\n## first\n| a |\n|---|\n| 1 |\nafter\n## second\n\nA sentence.\n\n| b |\n| 2 |\n## third\nno table\n",
        )
        .unwrap();
        let readme = "<!-- table: bench/out.txt#second -->\nold\n<!-- /table -->";
        assert_eq!(
            regenerate(readme, dir.path()).unwrap(),
            "<!-- table: bench/out.txt#second -->\n| b |\n| 2 |\n<!-- /table -->"
        );
        let first = regenerate(
            "<!-- table: bench/out.txt#first -->\n<!-- /table -->",
            dir.path(),
        );
        assert!(first.unwrap().contains("| 1 |\n<!--"));
        assert!(
            regenerate(
                "<!-- table: bench/out.txt#third -->\n<!-- /table -->",
                dir.path()
            )
            .is_err()
        );
    }

    #[test]
    fn regenerate_replaces_only_marked_blocks() {
        let dir = tempfile::tempdir().unwrap();
        published(dir.path());
        let readme = "intro\n<!-- table: demo -->\nold typed numbers\n<!-- /table -->\noutro\n";
        let new = regenerate(readme, dir.path()).unwrap();
        assert!(
            new.starts_with("intro\n<!-- table: demo -->\n| method |"),
            "{new}"
        );
        assert!(!new.contains("old typed numbers"));
        assert!(new.ends_with("<!-- /table -->\noutro\n"), "{new}");
        // Idempotent.
        assert_eq!(regenerate(&new, dir.path()).unwrap(), new);
        assert!(regenerate("<!-- table: missing -->\n<!-- /table -->", dir.path()).is_err());
    }
}
