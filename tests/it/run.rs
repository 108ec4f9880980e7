//! Integration tests: scenarios and the experiment runner, end to end.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::bin;

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
  - { name: light, count: 2, rate: 100, payload_bytes: 10, duration: 2s }
  - { name: heavy, count: 1, rate: 500, payload_bytes: 10, duration: 2s }
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
        "burst",
        "policies",
        "broker-failure",
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
