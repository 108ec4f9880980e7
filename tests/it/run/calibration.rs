//! Every run measures how strongly broker CPU tracks message rate on its host before its first
//! method, and records it in `manifest.json` and `summary.md`.

use crate::util::run_scenario;

const SCENARIO: &str = "name: calibrated
trials: 1
brokers: { kind: embedded, count: 1 }
calibration: { step: 2s }
publishers:
  - { name: p, count: 1, rate: 50, payload_bytes: 32, duration: 2s }
arrival: { order: random, interval: 1s }
methods:
  - { name: dns-rr, assign: dns-rr }
";

#[test]
fn a_run_records_broker_cpu_at_both_rates() {
    let work = tempfile::tempdir().unwrap();
    let scenario = work.path().join("calibrated.yaml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    run_scenario(&scenario, work.path(), &[]);
    let dir = work.path().join("calibrated/latest");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["completed"], true, "{manifest}");
    assert_eq!(manifest["errors"], serde_json::json!([]));

    let cal = &manifest["calibration"];
    assert_eq!(
        cal["payload_bytes"], 32,
        "the scenario's first payload size"
    );
    assert_eq!(
        (cal["qos"].as_u64(), cal["step_s"].as_f64()),
        (Some(0), Some(2.0))
    );
    let kinds = cal["kinds"].as_array().unwrap();
    assert_eq!(kinds.len(), 1, "{cal}");
    let embedded = &kinds[0];
    assert_eq!(embedded["kind"], "embedded");
    assert!(
        embedded["version"].as_str().unwrap().contains("rumqttd"),
        "{cal}"
    );
    let steps = embedded["steps"].as_array().unwrap();
    let rates: Vec<f64> = steps
        .iter()
        .map(|s| s["rate_msgs_per_s"].as_f64().unwrap())
        .collect();
    assert_eq!(rates, [2000.0, 10000.0]);
    let cores = std::thread::available_parallelism().unwrap().get() as f64;
    let mut cpu = Vec::new();
    for s in steps {
        let pct = s["cpu_pct"].as_f64().unwrap();
        assert!(
            pct > 0.0 && pct < 100.0 * cores,
            "implausible broker CPU: {s}"
        );
        // Read over the middle half of each 2 s step (a sleep never ends early).
        assert!(s["measured_s"].as_f64().unwrap() >= 1.0, "{s}");
        assert!(s["sent_msgs"].as_u64().unwrap() > 0, "{s}");
        assert_eq!(
            s["target_msgs"].as_f64().unwrap(),
            s["rate_msgs_per_s"].as_f64().unwrap() * 2.0
        );
        cpu.push(pct);
    }
    let ratio = embedded["ratio"].as_f64().unwrap();
    assert!((ratio - cpu[1] / cpu[0]).abs() < 1e-9 * ratio, "{cal}");

    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    let line = format!(
        "Calibration: broker CPU for one per-message publisher (32 B, QoS 0) on this host: \
         embedded rumqttd {:.1} % at 2000 msg/s, {:.1} % at 10000 msg/s ({ratio:.1}x)",
        cpu[0], cpu[1]
    );
    assert!(md.contains(&line), "{line}\nnot in\n{md}");
}
