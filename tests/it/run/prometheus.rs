//! `source: prometheus` end to end: the quick scenario with the least-CPU dispatcher
//! fed by agent reports and through a real Prometheus server the runner starts and stops.

use super::{column, read_csv, repo_file};
use crate::util::run_scenario;

/// Skips (with a message) where Prometheus is not installed, except in CI, which installs it.
fn prometheus_missing() -> bool {
    if mqdispatch::prom_server::find("prometheus").is_some() {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install Prometheus (apt-get install -y prometheus)"
    );
    eprintln!("SKIPPED: `prometheus` is not installed (apt-get install -y prometheus)");
    true
}

/// Command lines of live processes that mention `needle` (a Prometheus left behind names its
/// config and storage, which are under the run's folder).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains("prometheus") && cmdline.contains(needle) {
            found.push(cmdline);
        }
    }
    found
}

#[test]
fn prometheus_quick_feeds_the_dispatcher_through_a_real_prometheus() {
    if prometheus_missing() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    run_scenario(
        &repo_file("scenarios/prometheus-quick.yaml"),
        out.path(),
        &[],
    );
    // The runner stopped and reaped its Prometheus servers (they lived under `out`).
    let left = processes_mentioning(&out.path().display().to_string());
    assert!(left.is_empty(), "Prometheus left running: {left:?}");

    let dir = out.path().join("prometheus-quick/latest");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["completed"], true);

    // Every decision names what fed it: reports for the agent method, Prometheus for the other.
    let (header, rows) = read_csv(&dir.join("decisions.csv"));
    assert_eq!(header[header.len() - 3..], ["source", "role", "group"]);
    let (method_c, source_c) = (column(&header, "method"), column(&header, "source"));
    let sources = |method: &str| -> Vec<&str> {
        rows.iter()
            .filter(|r| r[method_c] == method)
            .map(|r| r[source_c].as_str())
            .collect()
    };
    assert_eq!(sources("proposed"), ["reports"; 4]);
    assert_eq!(sources("proposed-prometheus"), ["prometheus"; 4]);

    // Every decision dates its inputs: both brokers' newest samples have an age, in ms, from the
    // agent's sample time (through Prometheus: its time query). 30 s would be a unit error (the
    // run waits for both sources before the first publisher), not a slow scrape.
    for b in ["b1", "b2"] {
        let age_c = column(&header, &format!("age_{b}"));
        for r in &rows {
            let age: u64 = r[age_c]
                .parse()
                .unwrap_or_else(|_| panic!("age_{b} of {r:?}"));
            assert!(age < 30_000, "age_{b} {age} ms in {r:?}");
        }
    }
    let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(summary.contains("## Decision inputs"), "{summary}");

    // Fed through Prometheus, the least-CPU dispatcher still spreads clients over both brokers
    // (a dispatcher that saw no loads would keep choosing the first).
    let (header, rows) = read_csv(&dir.join("publishers.csv"));
    let (method_c, broker_c) = (column(&header, "method"), column(&header, "broker"));
    let mut used: Vec<&str> = rows
        .iter()
        .filter(|r| r[method_c] == "proposed-prometheus")
        .map(|r| r[broker_c].as_str())
        .collect();
    assert_eq!(used.len(), 4, "{rows:?}");
    used.sort_unstable();
    used.dedup();
    assert_eq!(used, ["b1", "b2"]);
}

/// The shipped comparison scenarios parse (without needing Prometheus installed) and compare
/// the two sources in one scenario.
#[test]
fn prometheus_scenarios_compare_both_sources() {
    use mqdispatch::scenario::LoadSourceKind::{Agent, Prometheus};
    for name in ["prometheus", "prometheus-quick"] {
        let s = mqdispatch::scenario::load(&repo_file(&format!("scenarios/{name}.yaml")))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let sources: Vec<_> = s.methods.iter().map(|m| m.source).collect();
        assert!(
            sources.contains(&Agent) && sources.contains(&Prometheus),
            "{name}"
        );
    }
}
