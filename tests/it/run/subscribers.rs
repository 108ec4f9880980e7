//! `scenarios/subscribers-quick.yaml` end to end: a shared group with a member on each broker
//! receives every message once, with latency rows per member, per broker and per method.

use super::{read_csv, repo_file};
use crate::util::run_scenario;

#[test]
fn subscriber_scenario_end_to_end_delivers_everything_with_latency_rows() {
    let out = tempfile::tempdir().unwrap();
    run_scenario(
        &repo_file("scenarios/subscribers-quick.yaml"),
        out.path(),
        &[],
    );
    let dir = std::fs::read_dir(out.path().join("subscribers-quick"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| !p.is_symlink())
        .expect("a run folder");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["completed"], true, "{manifest}");

    // Every publisher's messages reach the group once: nothing lost, per method.
    let (header, receipts) = read_csv(&dir.join("receipts.csv"));
    assert_eq!(
        header,
        [
            "trial",
            "method",
            "subscriber",
            "unit",
            "publisher",
            "expected",
            "received",
            "lost",
            "duplicates",
            "out_of_order"
        ]
    );
    for method in ["dns-rr", "least-cpu"] {
        let rows: Vec<_> = receipts.iter().filter(|r| r[1] == method).collect();
        assert_eq!(rows.len(), 10, "{method}: one row per publisher");
        let n = |r: &Vec<String>, i: usize| r[i].parse::<u64>().unwrap();
        let expected: u64 = rows.iter().map(|r| n(r, 5)).sum();
        let received: u64 = rows.iter().map(|r| n(r, 6)).sum();
        assert_eq!(
            expected, 560_000,
            "{method}: 9 × 2000 × 20 s + 10000 × 20 s"
        );
        assert_eq!(received, expected, "{method}: every message delivered");
        assert!(rows.iter().all(|r| n(r, 7) == 0), "{method}: {rows:?}");
    }

    // Per member and second, and per broker and second: counts and latency quantiles.
    let (header, members) = read_csv(&dir.join("subscribers.csv"));
    assert_eq!(
        header,
        [
            "trial",
            "method",
            "t_s",
            "subscriber",
            "broker",
            "received",
            "latency_p50_ms",
            "latency_p99_ms",
            "latency_max_ms"
        ]
    );
    for (member, broker) in [("backend-0", "b1"), ("backend-1", "b2")] {
        let rows: Vec<_> = members.iter().filter(|r| r[3] == member).collect();
        assert!(
            rows.len() >= 40,
            "{member}: {} seconds over two methods",
            rows.len()
        );
        assert!(
            rows.iter().all(|r| r[4] == broker),
            "{member} stays on {broker}"
        );
    }
    let (_, seconds) = read_csv(&dir.join("latency.csv"));
    let busy: Vec<_> = seconds
        .iter()
        .filter(|r| r[4].parse::<u64>().unwrap() > 1000)
        .collect();
    assert!(busy.len() >= 40, "{} busy broker-seconds", busy.len());
    for r in &busy {
        let p50: f64 = r[5].parse().unwrap();
        let p99: f64 = r[6].parse().unwrap();
        let max: f64 = r[7].parse().unwrap();
        assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{r:?}");
    }

    // summary.csv carries delivery and latency per method; the plots exist.
    let (header, summary) = read_csv(&dir.join("summary.csv"));
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    for row in &summary {
        assert_eq!(row[col("lost_msgs")], "0", "{row:?}");
        assert_eq!(row[col("delivered_msgs")], row[col("expected_msgs")]);
        let p99: f64 = row[col("latency_p99_ms")].parse().unwrap();
        assert!(p99 > 0.0, "{row:?}");
        assert!(!row[col("latency_p99_ms_b2")].is_empty());
    }
    for png in [
        "latency-cdf.png",
        "latency-dns-rr-t1.png",
        "latency-least-cpu-t1.png",
    ] {
        assert!(dir.join(png).exists(), "{png}");
    }
    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(md.contains("## Subscribers"), "{md}");
    assert!(md.contains("| dns-rr | 1 | 560000 of 560000 | 0 |"), "{md}");
}
