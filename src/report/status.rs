//! What a run says about itself in `manifest.json`, beyond the scenario and the host: whether it
//! completed, its errors, each trial's full-load window and seed, each method run's outcome and
//! late per-second contributions. The runner writes these keys (flattened into its manifest);
//! `mqdispatch plot` reads them back, so a redraw uses the same windows as the run.
//!
//! Keys: `completed`, `incomplete_reason`, `errors: [{stage, message}]`,
//! `trials_detail: [{trial, seed, window_start_s, window_end_s, window_rule, publishers_active,
//! publishers_planned, methods: [{method, outcome, late_contributions, late_msgs}]}]`,
//! `late_contributions`, `late_msgs`. Manifests written before `trials_detail` existed read as
//! `None` there (the report then falls back to windows from `brokers.csv`, and says so).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ReportError;
use super::window::PlanWindow;

pub const MANIFEST_JSON: &str = "manifest.json";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    #[serde(default)]
    pub completed: bool,
    /// Why the run stopped early or is not to be trusted, when so.
    #[serde(default)]
    pub incomplete_reason: Option<String>,
    #[serde(default)]
    pub errors: Vec<RunError>,
    /// One entry per trial, written before the first method runs.
    #[serde(default)]
    pub trials_detail: Option<Vec<TrialDetail>>,
    /// Totals over `trials_detail[].methods[]`.
    #[serde(default)]
    pub late_contributions: u64,
    #[serde(default)]
    pub late_msgs: u64,
    /// Broker CPU against message rate on this host, written before the first method runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<super::calibration::Calibration>,
    /// Read back from the manifest's scenario (written by the runner's own `scenario` key).
    #[serde(default, skip_serializing)]
    pub scenario: Option<ScenarioSampler>,
    /// Read back from the manifest's `hosts` (written by the runner's own record): the loader
    /// hosts' clocks.
    #[serde(default, skip_serializing)]
    pub hosts: Option<super::clocks::ManifestHosts>,
}

/// The part of the manifest's scenario the summary states: what `cpu_pct` measures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ScenarioSampler {
    #[serde(default)]
    pub cpu: Option<String>,
}

/// One trial: its seed and full-load window (the same for every method), and its method runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialDetail {
    pub trial: u32,
    pub seed: u64,
    /// `None` when the arrival plan has no publisher.
    #[serde(flatten)]
    pub window: Option<PlanWindow>,
    /// Method runs in the order they ran; a method not listed never started.
    #[serde(default)]
    pub methods: Vec<MethodRunDetail>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodRunDetail {
    pub method: String,
    pub outcome: Outcome,
    /// Per-second contributions (a publisher's count, a CPU sample) that arrived after their
    /// second's row was written, and the messages they carried: not in `brokers.csv`.
    pub late_contributions: u64,
    pub late_msgs: u64,
    /// The harness's own measure of the machine: mean and lowest idle share of all cores
    /// (`/proc/stat`, per second) over the trial's full-load window. A figure made with the
    /// host near 0 % idle measures the host's saturation, not the brokers.
    #[serde(default)]
    pub host_idle_pct: Option<f64>,
    #[serde(default)]
    pub host_idle_min_pct: Option<f64>,
    /// How late the load generator handed messages to the client against their deadlines
    /// (p50, p99, in ms; per-message sending aims at p99 ≤ 1 ms).
    #[serde(default)]
    pub lateness_p50_ms: Option<f64>,
    #[serde(default)]
    pub lateness_p99_ms: Option<f64>,
    /// Harness cost and wave placement of this method run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harness: Option<super::harness::HarnessMeasures>,
    /// Messages sent against the brokers' own count of messages received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<super::delivery::Delivery>,
}

impl MethodRunDetail {
    /// The statement summary.md makes about the host and the generator for this method run.
    pub fn describe_host(&self, trial: u32) -> Option<String> {
        let idle = self.host_idle_pct?;
        let mut line = format!(
            "trial {trial}, {}: host idle {idle:.0} % of all cores over the full-load window (lowest second {:.0} %)",
            self.method,
            self.host_idle_min_pct.unwrap_or(idle)
        );
        if let (Some(p50), Some(p99)) = (self.lateness_p50_ms, self.lateness_p99_ms) {
            line.push_str(&format!(
                "; generator lateness p50 {p50:.2} ms, p99 {p99:.2} ms"
            ));
        }
        if idle < HOST_IDLE_FLOOR_PCT {
            line.push_str(&format!(
                " — below {HOST_IDLE_FLOOR_PCT:.0} %: the host was close to saturated, read these figures with care"
            ));
        }
        Some(line)
    }
}

/// Below this mean idle share over the window a run is flagged as made on a saturated host.
pub const HOST_IDLE_FLOOR_PCT: f64 = 25.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Ran to its end: it must have rows in `brokers.csv`.
    Ok,
    Failed,
    Interrupted,
}

/// An error that makes a run incomplete; listed in `summary.md`'s "Errors" section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunError {
    pub stage: Stage,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// A method run failed.
    Method,
    /// A fault could not be injected (or recorded).
    Fault,
    /// Found while summarising: a method without rows, unreadable files, a failed write.
    Summary,
    /// A plot could not be drawn.
    Plot,
    /// Broker CPU against message rate could not be measured before the first method.
    Calibration,
}

impl Stage {
    /// Errors of these stages are found again by every summary, so a redraw does not inherit
    /// them from the manifest.
    pub fn is_report(self) -> bool {
        matches!(self, Self::Summary | Self::Plot)
    }
}

impl RunError {
    pub fn new(stage: Stage, message: impl Into<String>) -> Self {
        Self {
            stage,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stage = match self.stage {
            Stage::Method => "method run",
            Stage::Fault => "fault injection",
            Stage::Summary => "summary",
            Stage::Plot => "plot",
            Stage::Calibration => "calibration",
        };
        write!(f, "{stage}: {}", self.message)
    }
}

impl RunStatus {
    /// Recomputes the late totals from the method runs.
    pub fn total_late(&mut self) {
        let runs = || self.trials_detail.iter().flatten().flat_map(|t| &t.methods);
        let contributions = runs().map(|m| m.late_contributions).sum();
        let msgs = runs().map(|m| m.late_msgs).sum();
        self.late_contributions = contributions;
        self.late_msgs = msgs;
    }

    /// The (trial, method) runs that ran to their end.
    pub fn finished_runs(&self) -> Vec<(u32, &str)> {
        self.trials_detail
            .iter()
            .flatten()
            .flat_map(|t| {
                t.methods
                    .iter()
                    .filter(|m| m.outcome == Outcome::Ok)
                    .map(move |m| (t.trial, m.method.as_str()))
            })
            .collect()
    }
}

/// The status keys of `dir/manifest.json`; an absent manifest reads as the default (no
/// `trials_detail`: a folder written before the manifest carried them, or by hand).
pub fn read(dir: &Path) -> Result<RunStatus, ReportError> {
    let path = dir.join(MANIFEST_JSON);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RunStatus::default()),
        Err(e) => return Err(ReportError::io(&path, e)),
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| ReportError::Invalid(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::window::WindowRule;

    #[test]
    fn keys_round_trip_and_old_manifests_read_as_legacy() {
        let status = RunStatus {
            completed: false,
            incomplete_reason: Some("errors".into()),
            errors: vec![RunError::new(Stage::Fault, "kill b2 failed")],
            trials_detail: Some(vec![TrialDetail {
                trial: 1,
                seed: 2,
                window: Some(PlanWindow {
                    window_start_s: 47,
                    window_end_s: 99,
                    window_rule: WindowRule::AllActive,
                    publishers_active: 10,
                    publishers_planned: 10,
                }),
                methods: vec![MethodRunDetail {
                    method: "dns-rr".into(),
                    outcome: Outcome::Ok,
                    late_contributions: 2,
                    late_msgs: 4000,
                    host_idle_pct: Some(41.5),
                    host_idle_min_pct: Some(30.0),
                    lateness_p50_ms: Some(0.06),
                    lateness_p99_ms: Some(0.5),
                    harness: None,
                    delivery: Some(crate::report::delivery::Delivery {
                        sent: 100,
                        received: Some(99),
                        received_by_broker: [("b1".into(), 99)].into(),
                        uncounted: None,
                        control_excluded: 0,
                    }),
                }],
            }]),
            late_contributions: 2,
            late_msgs: 4000,
            calibration: Some(super::super::calibration::Calibration {
                payload_bytes: 600,
                qos: 0,
                step_s: 4.0,
                kinds: vec![super::super::calibration::KindCalibration {
                    kind: "external".into(),
                    version: None,
                    capacity_cores: None,
                    steps: Vec::new(),
                    ratio: None,
                    skipped: Some("not the harness's".into()),
                    error: None,
                }],
            }),
            scenario: None,
            hosts: None,
        };
        let json = serde_json::to_value(&status).expect("json");
        assert_eq!(json["trials_detail"][0]["window_start_s"], 47);
        assert_eq!(json["trials_detail"][0]["window_rule"], "all-active");
        assert_eq!(json["trials_detail"][0]["methods"][0]["outcome"], "ok");
        assert_eq!(
            json["trials_detail"][0]["methods"][0]["host_idle_pct"],
            41.5
        );
        assert_eq!(
            json["trials_detail"][0]["methods"][0]["delivery"]["received_by_broker"]["b1"],
            99
        );
        let line = status.trials_detail.as_ref().unwrap()[0].methods[0]
            .describe_host(1)
            .unwrap();
        assert!(
            line.contains("host idle 42 %") && line.contains("p99 0.50 ms"),
            "{line}"
        );
        assert!(!line.contains("saturated"), "{line}");
        assert_eq!(json["errors"][0]["stage"], "fault");
        assert_eq!(json["calibration"]["kinds"][0]["kind"], "external");
        let back: RunStatus = serde_json::from_value(json).expect("back");
        assert_eq!(back, status);
        assert_eq!(back.finished_runs(), vec![(1, "dns-rr")]);

        // A trial whose plan had no publisher: no window keys, read back as `None`.
        let empty = TrialDetail {
            trial: 2,
            seed: 3,
            window: None,
            methods: Vec::new(),
        };
        let json = serde_json::to_string(&empty).expect("json");
        assert!(!json.contains("window"), "{json}");
        assert_eq!(
            serde_json::from_str::<TrialDetail>(&json).expect("back"),
            empty
        );

        let old: RunStatus =
            serde_json::from_str(r#"{"completed":true,"incomplete_reason":null,"trials":5}"#)
                .expect("old");
        assert_eq!(old.trials_detail, None);
        assert!(old.completed && old.errors.is_empty());
    }
}
