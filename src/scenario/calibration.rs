//! The scenario's optional `calibration:` block: how long each rate step of the run's
//! calibration lasts (broker CPU at 2000 and 10000 msg/s, measured before the first method).
//! It is wall-clock time on the host: `time_scale` does not shorten it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::Checker;
use crate::InputError;

/// Each step's length when the scenario sets none: the CPU is measured over its middle 2 s.
pub const DEFAULT_STEP: Duration = Duration::from_secs(4);
const MIN_STEP: Duration = Duration::from_secs(1);
/// Two steps of this plus a broker's start and stop stay under ~15 s per broker kind.
const MAX_STEP: Duration = Duration::from_secs(6);

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CalibrationPlan {
    #[serde(with = "super::duration_serde")]
    pub step: Duration,
}

impl Default for CalibrationPlan {
    fn default() -> Self {
        Self { step: DEFAULT_STEP }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCalibration {
    #[serde(default)]
    step: Option<Spanned<String>>,
}

impl Checker<'_> {
    pub(super) fn calibration(
        &self,
        raw: Option<&Spanned<RawCalibration>>,
    ) -> Result<CalibrationPlan, InputError> {
        let mut plan = CalibrationPlan::default();
        if let Some(step) = raw.and_then(|r| r.value.step.as_ref()) {
            plan.step = self.duration(step, 1.0)?;
            if !(MIN_STEP..=MAX_STEP).contains(&plan.step) {
                return Err(self.at(
                    step,
                    "calibration step must be 1s to 6s (default 4s; time_scale does not apply)",
                ));
            }
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(extra: &str) -> Result<super::super::Scenario, InputError> {
        let yaml = format!(
            "name: t\ntime_scale: 0.5\nbrokers: {{ kind: embedded, count: 2 }}\n{extra}\
             publishers:\n  - {{ name: p, count: 2, rate: 10, payload_bytes: 16, duration: 5s }}\n\
             arrival: {{ order: random, interval: 1s }}\n\
             methods:\n  - {{ name: d, assign: dns-rr }}\n"
        );
        super::super::parse(&yaml, "t.yaml")
    }

    #[test]
    fn the_step_defaults_to_4s_and_ignores_time_scale() {
        assert_eq!(scenario("").unwrap().calibration.step, DEFAULT_STEP);
        let s = scenario("calibration: { step: 2s }\n").unwrap();
        assert_eq!(s.calibration.step, Duration::from_secs(2));
    }

    #[test]
    fn bad_steps_name_their_line_and_column() {
        let e = scenario("calibration: { step: 500ms }\n").unwrap_err();
        assert!(e.0.starts_with("t.yaml:4:22: calibration step"), "{}", e.0);
        let e = scenario("calibration: { step: 10s }\n").unwrap_err();
        assert!(e.0.starts_with("t.yaml:4:22:"), "{}", e.0);
        let e = scenario("calibration: { step: soon }\n").unwrap_err();
        assert!(e.0.starts_with("t.yaml:4:22:"), "{}", e.0);
        let e = scenario("calibration: { steps: 2s }\n").unwrap_err();
        assert!(e.0.starts_with("t.yaml:4:"), "{}", e.0);
        assert!(e.0.contains("steps"), "{}", e.0);
    }
}
