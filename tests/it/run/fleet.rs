//! The scaled-down fleet: 1,000 publishers in waves of 250 on four brokers, end to
//! end, with every publisher accounted for.

use std::collections::HashMap;

use super::{column, read_csv, repo_file};
use crate::util::run_scenario;

/// Methods run in `make test` (all four would take over a minute on a loaded 2-core machine):
/// the static baseline and the burst-safe dispatcher policy.
const METHODS: [&str; 2] = ["dns-rr", "least-load"];

#[test]
fn fleet_small_accounts_for_every_publisher() {
    let out = tempfile::tempdir().unwrap();
    let methods = METHODS.map(|m| ["--method", m]).concat();
    run_scenario(
        &repo_file("scenarios/fleet-small.yaml"),
        out.path(),
        &methods,
    );
    let dir = std::fs::read_dir(out.path().join("fleet-small"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| !p.is_symlink())
        .expect("a run folder");

    // publishers.csv stays complete: one row per publisher and method, each sent its target
    // (10 s at 0.5 or 10 msg/s: 5 or 100 messages).
    let (header, rows) = read_csv(&dir.join("publishers.csv"));
    let (method_c, profile_c, sent_c) = (
        column(&header, "method"),
        column(&header, "profile"),
        column(&header, "sent_total"),
    );
    let mut sent_by_method: HashMap<&str, f64> = HashMap::new();
    for method in METHODS {
        let mine: Vec<_> = rows.iter().filter(|r| r[method_c] == method).collect();
        assert_eq!(mine.len(), 1000, "{method}: publishers in publishers.csv");
        for r in &mine {
            let target = if r[profile_c] == "chatty" { 100 } else { 5 };
            assert_eq!(r[sent_c].parse::<u64>().unwrap(), target, "{method}: {r:?}");
        }
        let devices = mine.iter().filter(|r| r[profile_c] == "device").count();
        assert_eq!(devices, 900, "{method}");
        sent_by_method.insert(method, (900 * 5 + 100 * 100) as f64);
    }

    // brokers.csv's publisher-side counts add up to what was sent.
    let (header, rows) = read_csv(&dir.join("brokers.csv"));
    let (method_c, sent_c) = (
        column(&header, "method"),
        column(&header, "sent_msgs_per_s"),
    );
    for method in METHODS {
        let total_sent: f64 = rows
            .iter()
            .filter(|r| r[method_c] == method)
            .map(|r| r[sent_c].parse::<f64>().unwrap())
            .sum();
        let expected = sent_by_method[method];
        assert!(
            (total_sent - expected).abs() <= expected * 0.005,
            "{method}: brokers.csv counts {total_sent} sent of {expected}"
        );
    }

    // The manifest states each method run's wave placement and harness cost.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["completed"], true, "{manifest}");
    for m in manifest["trials_detail"][0]["methods"].as_array().unwrap() {
        // sent = broker-received within 0.5 %: the brokers' own whole-run counts.
        let delivery = &m["delivery"];
        let method = m["method"].as_str().unwrap();
        assert_eq!(delivery["sent"], sent_by_method[method] as u64, "{m}");
        let received = delivery["received"]
            .as_u64()
            .unwrap_or_else(|| panic!("{m}"));
        let by_broker = delivery["received_by_broker"].as_object().unwrap();
        assert_eq!(by_broker.len(), 4, "{m}");
        let summed: u64 = by_broker.values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(summed, received, "{m}");
        let sent = sent_by_method[method];
        assert!(
            (received as f64 - sent).abs() <= sent * 0.005,
            "{method}: brokers received {received} of {sent} sent"
        );
        let h = &m["harness"];
        assert_eq!(h["publishers_joined"], 1000, "{m}");
        assert_eq!(h["waves"], 4, "{m}");
        let share = h["largest_wave_share"].as_f64().unwrap();
        assert!((0.25..=1.0).contains(&share), "{m}");
        assert!(h["overhead_s"].as_f64().unwrap() >= 0.0, "{m}");
        assert!(h["loader_rss_kib_per_publisher"].as_f64().is_some(), "{m}");
        if m["method"] == "dns-rr" {
            // Arrival i → broker i mod 4: a wave of 250 splits 63/63/62/62.
            assert!((share - 63.0 / 250.0).abs() < 1e-9, "{m}");
            assert!(h["redirect_p50_ms"].is_null(), "{m}");
        } else {
            assert!(h["redirect_p99_ms"].as_f64().is_some(), "{m}");
        }
    }
    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(
        md.contains("largest share of one wave on one broker"),
        "{md}"
    );
    assert!(md.contains("brokers received "), "{md}");
}
