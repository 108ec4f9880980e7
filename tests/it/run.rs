//! Integration tests: scenarios and the experiment runner, end to end.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{bin, run_scenario};

mod calibration;
mod fleet;
mod prometheus;
mod subscribers;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `mqdispatch validate` on `yaml`: (exit code, stderr).
fn validate(yaml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(bin())
        .arg("validate")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = "name: t
seed: 1
trials: 1
brokers: { kind: embedded, count: 2 }
publishers:
  - { name: light, count: 2, rate: 100, payload_bytes: 16, duration: 2s }
  - { name: heavy, count: 1, rate: 500, payload_bytes: 16, duration: 2s }
arrival: { order: random, interval: 1s }
methods:
  - { name: dns-rr, assign: dns-rr }
  - { name: proposed, assign: dispatcher, policy: least-cpu }
";

#[test]
fn shipped_scenarios_validate() {
    for name in [
        "paper",
        "paper-heavy-2nd",
        "paper-heavy-4th",
        "quick",
        "subscribers-quick",
        "burst",
        "policies",
        "broker-failure",
        "rebalance",
        "rebalance-random",
        "rebalance-mosquitto",
        "rebalance-quick",
        "rebalance-quick-mosquitto",
        "fleet",
        "fleet-small",
    ] {
        let path = repo_file(&format!("scenarios/{name}.yaml"));
        let out = Command::new(bin())
            .arg("validate")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_good_scenario_validates() {
    let (code, stderr) = validate(GOOD);
    assert_eq!(code, 0, "{stderr}");
}

/// Each broken file: exit code 2, one line naming file:line:column, and what to do.
#[test]
fn scenario_errors_name_line_column_and_exit_2() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "rebalance on dns-rr",
            &GOOD.replace(
                "{ name: dns-rr, assign: dns-rr }",
                "{ name: dns-rr, assign: dns-rr, rebalance: {} }",
            ),
            "dns-rr cannot rebalance",
        ),
        (
            "rebalance threshold",
            &GOOD.replace(
                "policy: least-cpu }",
                "policy: least-cpu, rebalance: { threshold: -5 } }",
            ),
            "rebalance threshold must be above 0",
        ),
        (
            "unknown key",
            &GOOD.replace("seed: 1", "seed: 1\nspeed: 3"),
            ":3:1: unknown field `speed`",
        ),
        (
            "wrong type",
            &GOOD.replace("trials: 1", "trials: many"),
            ":3:9: invalid u32",
        ),
        (
            "negative rate",
            &GOOD.replace("rate: 500", "rate: -5"),
            ":7:36: rate is messages per second and must be > 0",
        ),
        (
            "payload shorter than its header",
            &GOOD.replacen("payload_bytes: 16", "payload_bytes: 8", 1),
            ":6:56: payload_bytes must be at least 16",
        ),
        (
            "subscriber topic filter",
            &GOOD.replace(
                "arrival:",
                "subscribers:\n  - { name: s, count: 2, topic: \"a/#/b\" }\narrival:",
            ),
            ":9:33: subscriber `s`: topic `a/#/b`: `#` must be the last level",
        ),
        (
            "subscriber on an unknown broker",
            &GOOD.replace(
                "arrival:",
                "subscribers:\n  - { name: s, count: 2, topic: \"load/#\", broker: b3 }\narrival:",
            ),
            ":9:51: broker `b3`: brokers are b1..b2",
        ),
        (
            "subscribers need a topic per publisher",
            &GOOD
                .replace(
                    "payload_bytes: 16, duration: 2s }",
                    "payload_bytes: 16, duration: 2s, topic: same }",
                )
                .replace(
                    "arrival:",
                    "subscribers:\n  - { name: s, count: 2, topic: \"load/#\" }\narrival:",
                ),
            ":9:33: publishers `light-0` and `light-1` both publish to `same`",
        ),
        (
            "zero brokers",
            &GOOD.replace("count: 2 }", "count: 0 }"),
            ":4:35: zero brokers",
        ),
        (
            "duplicate publisher names",
            &GOOD.replace("name: heavy", "name: light"),
            ":7:13: duplicate publisher name `light`",
        ),
        (
            "duplicate method names",
            &GOOD.replace("name: proposed", "name: dns-rr"),
            ":11:13: duplicate method name `dns-rr`",
        ),
        (
            "order names an unknown profile",
            &GOOD.replace("order: random", "order: [light, medium, heavy]"),
            ":8:19: order names unknown profile `medium`",
        ),
        (
            "duration without unit",
            &GOOD.replace("interval: 1s", "interval: 1"),
            ":8:37: `1` has no unit",
        ),
        (
            "dispatcher without policy",
            &GOOD.replace(", policy: least-cpu", ""),
            ":11:13: assign: dispatcher needs a policy",
        ),
        (
            "tls on embedded brokers",
            &GOOD.replace("seed: 1", "seed: 1\ntls: true"),
            ":3:6: tls: true needs `brokers: { kind: mosquitto }`",
        ),
        (
            "unknown policy",
            &GOOD.replace("least-cpu", "least-cpuu"),
            ":11:51: unknown variant `least-cpuu`",
        ),
    ];
    for (what, yaml, expected) in cases {
        let (code, stderr) = validate(yaml);
        assert_eq!(code, 2, "{what}: exit code, stderr: {stderr}");
        assert!(
            stderr.contains(expected),
            "{what}: expected `{expected}` in: {stderr}"
        );
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{what}: the error should be one line: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    }
}

#[test]
fn missing_scenario_file_is_a_clear_error() {
    let out = Command::new(bin())
        .args(["validate", "/nonexistent/s.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read scenario"));
}

fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let header = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    let rows = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect();
    (header, rows)
}

fn column(header: &[String], name: &str) -> usize {
    header
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name} in {header:?}"))
}

/// `make test` runs the quick scenario end to end and checks what it wrote, not only that it
/// wrote something.
#[test]
fn quick_scenario_end_to_end() {
    let out = tempfile::tempdir().unwrap();
    run_scenario(&repo_file("scenarios/quick.yaml"), out.path(), &[]);
    let runs: Vec<_> = std::fs::read_dir(out.path().join("quick"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.is_symlink())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let dir = &runs[0];

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["completed"], true);
    assert_eq!(manifest["trials"], 1);

    // brokers.csv: both methods, both brokers, every second of the ~30 s run.
    let (header, rows) = read_csv(&dir.join("brokers.csv"));
    assert_eq!(
        header,
        [
            "trial",
            "method",
            "t_s",
            "broker",
            "cpu_pct",
            "sent_msgs_per_s",
            "received_msgs_per_s",
            "publishers"
        ]
    );
    for method in ["dns-rr", "proposed"] {
        let n = rows.iter().filter(|r| r[1] == method).count();
        assert!((50..=80).contains(&n), "{method}: {n} broker rows");
        let with_cpu = rows
            .iter()
            .filter(|r| r[1] == method && !r[4].is_empty())
            .count();
        assert!(with_cpu >= n * 9 / 10, "{method}: cpu missing in many rows");
    }

    // publishers.csv: ten publishers per method, each delivered its target.
    let (header, rows) = read_csv(&dir.join("publishers.csv"));
    let (method_c, broker_c, join_c) = (
        column(&header, "method"),
        column(&header, "broker"),
        column(&header, "join_s"),
    );
    let (sent_c, target_c) = (
        column(&header, "sent_total"),
        column(&header, "target_msgs_per_s"),
    );
    for method in ["dns-rr", "proposed"] {
        let mut mine: Vec<&Vec<String>> = rows.iter().filter(|r| r[method_c] == method).collect();
        assert_eq!(mine.len(), 10, "{method}: publishers");
        for r in &mine {
            let target = r[target_c].parse::<f64>().unwrap() * 20.0;
            let sent: f64 = r[sent_c].parse().unwrap();
            assert!(
                (sent - target).abs() <= target * 0.005,
                "{method}: {r:?} sent {sent} of {target}"
            );
            assert!(r[broker_c] == "b1" || r[broker_c] == "b2", "{r:?}");
        }
        if method == "dns-rr" {
            // Arrival i → broker i mod 2.
            mine.sort_by(|a, b| {
                let (x, y): (f64, f64) = (a[join_c].parse().unwrap(), b[join_c].parse().unwrap());
                x.total_cmp(&y)
            });
            for (i, r) in mine.iter().enumerate() {
                assert_eq!(r[broker_c], format!("b{}", i % 2 + 1), "arrival {i}: {r:?}");
            }
        }
    }

    // decisions.csv: one per publisher placed by the dispatcher, none for dns-rr.
    let (header, rows) = read_csv(&dir.join("decisions.csv"));
    assert_eq!(
        header[5..],
        [
            "load_b1", "load_b2", "pred_b1", "pred_b2", "age_b1", "age_b2", "source", "role",
            "group"
        ]
    );
    assert_eq!(rows.iter().filter(|r| r[1] == "proposed").count(), 10);
    let source_c = column(&header, "source");
    assert!(rows.iter().all(|r| r[source_c] == "reports"), "{rows:?}");
    // The first publisher waits until the dispatcher holds a sample of every broker: every
    // decision, the first included, dates both brokers' inputs.
    for b in ["age_b1", "age_b2"] {
        let c = column(&header, b);
        assert!(
            rows.iter().all(|r| r[c].parse::<u64>().is_ok()),
            "{b}: {rows:?}"
        );
    }
    assert_eq!(rows.iter().filter(|r| r[1] == "dns-rr").count(), 0);

    // summary.csv: the DNS-RR gap is 8000 msg/s by construction (18000 vs 10000), ± 5 %.
    let (header, rows) = read_csv(&dir.join("summary.csv"));
    assert_eq!(rows.len(), 2);
    let gap_c = column(&header, "gap_msgs_per_s");
    for r in &rows {
        let gap: f64 = r[gap_c].parse().unwrap();
        assert!(gap >= 0.0, "{r:?}");
        let b1: f64 = r[column(&header, "mean_msgs_per_s_b1")].parse().unwrap();
        let b2: f64 = r[column(&header, "mean_msgs_per_s_b2")].parse().unwrap();
        assert!((b1 + b2 - 28_000.0).abs() < 28_000.0 * 0.02, "{r:?}");
        assert!(((b1 - b2).abs() - gap).abs() < 1.0, "{r:?}");
        if r[1] == "dns-rr" {
            assert!((gap - 8000.0).abs() <= 400.0, "dns-rr gap {gap}");
        }
    }
    // One window per trial, from the arrival plan, stored in the manifest and used for both
    // methods: arrivals every 1 s (the last at 9 s), 20 s each → 9 + 2 ..= 20 − 1.
    let detail = &manifest["trials_detail"][0];
    let window = (
        detail["window_start_s"].as_u64().unwrap(),
        detail["window_end_s"].as_u64().unwrap(),
    );
    assert_eq!(window, (11, 19), "{manifest}");
    let (start_c, end_c) = (
        column(&header, "window_start_s"),
        column(&header, "window_end_s"),
    );
    for r in &rows {
        let got: (u64, u64) = (r[start_c].parse().unwrap(), r[end_c].parse().unwrap());
        assert_eq!(got, window, "{r:?}");
    }
    let runs: Vec<(&str, &str)> = detail["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["method"].as_str().unwrap(),
                m["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(runs, [("dns-rr", "ok"), ("proposed", "ok")]);
    assert!(manifest["late_contributions"].is_u64() && manifest["late_msgs"].is_u64());
    assert_eq!(manifest["errors"], serde_json::json!([]));

    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(
        md.contains("| dns-rr |") && md.contains("| proposed |"),
        "{md}"
    );
    assert!(
        md.contains(
            "- full-load window: t = 11–19 s for every method of trial 1, from the arrival plan"
        ),
        "{md}"
    );
    // One trial: no confidence interval, so no winner, whatever the gaps.
    assert!(md.contains("**1 trial: no winner named**"), "{md}");
    assert!(!md.contains("Winner") && !md.contains("## Errors"), "{md}");
    for png in [
        "throughput.png",
        "gap.png",
        "cpu-dns-rr-t1.png",
        "cpu-proposed-t1.png",
        "rate-dns-rr-t1.png",
        "rate-proposed-t1.png",
    ] {
        let bytes = std::fs::read(dir.join(png)).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000,
            "{png}"
        );
    }
}
