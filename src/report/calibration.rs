//! The run's calibration (`manifest.json` → `calibration`): how strongly a broker's CPU tracks
//! its message rate on this host, measured before the first method with one per-message
//! publisher at two rates. The least-CPU method relies on that link, and it differs between
//! hosts of the same kind (one wake-up costs 4× more on some), so every run states it.
//! `summary.md` and the published tables print [`Calibration::describe`].

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The one publisher: payload size (the scenario's first publisher's), QoS 0, one write per
    /// message.
    pub payload_bytes: usize,
    pub qos: u8,
    /// Length of each rate step; the broker's CPU is measured over its middle half.
    pub step_s: f64,
    /// One entry per broker kind the scenario uses.
    pub kinds: Vec<KindCalibration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KindCalibration {
    /// `embedded`, `mosquitto`, `external`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// What 100 % means in `cpu_pct`: one core, or the broker's CPU cap in cores (as the
    /// agents report it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_cores: Option<f64>,
    /// The rates in the order they ran (lower first).
    #[serde(default)]
    pub steps: Vec<Step>,
    /// CPU at the higher rate ÷ CPU at the lower one; `None` unless both were measured.
    #[serde(default)]
    pub ratio: Option<f64>,
    /// Why this kind was not measured (an external broker is not the harness's to sample).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Why the measurement failed; also listed under Errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub rate_msgs_per_s: f64,
    /// The broker's CPU (its process, or its cgroup when capped) over `measured_s`.
    pub cpu_pct: f64,
    /// Wall time between the two CPU readings.
    pub measured_s: f64,
    /// Messages the publisher wrote in the whole step, against its schedule.
    pub sent_msgs: u64,
    pub target_msgs: u64,
}

impl KindCalibration {
    /// `high ÷ low` CPU; `None` when the low figure is not positive (a ratio over zero means
    /// nothing: the caller records that as an error, never as a number).
    pub fn ratio_of(low: &Step, high: &Step) -> Option<f64> {
        (low.cpu_pct > 0.0 && high.cpu_pct.is_finite()).then(|| high.cpu_pct / low.cpu_pct)
    }

    fn describe(&self) -> String {
        let name = match self.kind.as_str() {
            "mosquitto" => "Mosquitto".to_owned(),
            "embedded" => "embedded rumqttd".to_owned(),
            other => other.to_owned(),
        };
        if let Some(why) = &self.skipped {
            return format!("{name} not measured ({why})");
        }
        if let Some(e) = &self.error {
            return format!("{name} failed ({e})");
        }
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|s| format!("{:.1} % at {:.0} msg/s", s.cpu_pct, s.rate_msgs_per_s))
            .collect();
        let ratio = self
            .ratio
            .map_or_else(String::new, |r| format!(" ({r:.1}x)"));
        let of = match self.capacity_cores {
            Some(c) if c != 1.0 => format!(" of its {c}-core cap"),
            _ => String::new(),
        };
        format!("{name} {}{of}{ratio}", steps.join(", "))
    }
}

impl Calibration {
    /// One line: "broker CPU for one per-message publisher (600 B, QoS 0) on this host:
    /// Mosquitto 2.7 % at 2000 msg/s, 23.5 % at 10000 msg/s (8.8x); measured over 2.0 s per rate".
    pub fn describe(&self) -> String {
        let kinds: Vec<String> = self.kinds.iter().map(KindCalibration::describe).collect();
        format!(
            "broker CPU for one per-message publisher ({} B, QoS {}) on this host: {}; measured \
             over the middle {:.1} s of each {:.1} s step",
            self.payload_bytes,
            self.qos,
            kinds.join("; "),
            self.step_s / 2.0,
            self.step_s
        )
    }

    /// The failures, for the run's Errors.
    pub fn errors(&self) -> impl Iterator<Item = String> + '_ {
        self.kinds
            .iter()
            .filter_map(|k| k.error.as_ref().map(|e| format!("{}: {e}", k.kind)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(rate: f64, cpu_pct: f64) -> Step {
        Step {
            rate_msgs_per_s: rate,
            cpu_pct,
            measured_s: 2.0,
            sent_msgs: 8000,
            target_msgs: 8000,
        }
    }

    #[test]
    fn the_ratio_is_high_over_low_and_never_over_zero() {
        let r = KindCalibration::ratio_of(&step(2000.0, 2.5), &step(10000.0, 22.0));
        assert_eq!(r, Some(8.8));
        assert_eq!(
            KindCalibration::ratio_of(&step(2000.0, 0.0), &step(10000.0, 5.0)),
            None
        );
    }

    #[test]
    fn the_line_names_every_kind_and_what_became_of_it() {
        let measured = KindCalibration {
            kind: "mosquitto".into(),
            version: Some("mosquitto 2.0.11".into()),
            capacity_cores: Some(1.0),
            steps: vec![step(2000.0, 2.7), step(10000.0, 23.5)],
            ratio: Some(23.5 / 2.7),
            skipped: None,
            error: None,
        };
        let cal = Calibration {
            payload_bytes: 600,
            qos: 0,
            step_s: 4.0,
            kinds: vec![
                measured.clone(),
                KindCalibration {
                    kind: "external".into(),
                    steps: vec![],
                    ratio: None,
                    version: None,
                    capacity_cores: None,
                    skipped: Some("not started by the harness".into()),
                    error: None,
                },
                KindCalibration {
                    kind: "embedded".into(),
                    error: Some("broker did not start".into()),
                    skipped: None,
                    ..measured
                },
            ],
        };
        assert_eq!(
            cal.describe(),
            "broker CPU for one per-message publisher (600 B, QoS 0) on this host: Mosquitto \
             2.7 % at 2000 msg/s, 23.5 % at 10000 msg/s (8.7x); external not measured (not \
             started by the harness); embedded rumqttd failed (broker did not start); measured \
             over the middle 2.0 s of each 4.0 s step"
        );
        assert_eq!(
            cal.errors().collect::<Vec<_>>(),
            ["embedded: broker did not start"]
        );
    }
}
