//! Were the messages sent also received? One method run's whole-run count: what the load
//! generator wrote against what the brokers themselves counted (rumqttd's router meter,
//! Mosquitto's `$SYS/broker/publish/messages/received`), read once after the last publisher
//! finished. Kept in the manifest (`trials_detail[].methods[].delivery`) and stated in summary.md.
//!
//! `brokers.csv`'s `received_msgs_per_s` is a rate sampled on the agents' ticks and spread over
//! run seconds: good for plotting, but its sum is not a count (the first sample reaches back
//! before t = 0, a partly covered last second is averaged over its covered part). This is the
//! count.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// PUBLISH packets the load generator wrote, all publishers together.
    pub sent: u64,
    /// PUBLISH packets the brokers counted, all brokers together (`None`: see `uncounted`),
    /// without the harness's own control messages (`control_excluded`).
    pub received: Option<u64>,
    /// Per broker id, its own count, control messages taken out.
    pub received_by_broker: BTreeMap<String, u64>,
    /// PUBLISH packets the harness itself wrote to the brokers and they counted as received:
    /// the rebalancer's requests to the Mosquitto plugin (`$CONTROL/...`, one `rates` request per
    /// broker per interval, one per move). Taken out of `received` (runs made before this
    /// field existed include them).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub control_excluded: u64,
    /// Why `received` is missing: a broker without counters, one restarted by a fault (its
    /// count began again), or a counter that did not settle in time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncounted: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Delivery {
    /// Received ÷ sent (1 when nothing was sent), if counted.
    pub fn ratio(&self) -> Option<f64> {
        let received = self.received? as f64;
        Some(if self.sent == 0 {
            1.0
        } else {
            received / self.sent as f64
        })
    }

    /// One line for summary.md.
    pub fn describe(&self, trial: u32, method: &str) -> String {
        match (self.received, self.ratio()) {
            (Some(received), Some(ratio)) => {
                let control = match self.control_excluded {
                    0 => String::new(),
                    n => format!("; the harness's {n} control messages taken out"),
                };
                format!(
                    "trial {trial}, {method}: brokers received {received} of {} messages sent \
                     ({:.2} %{control})",
                    self.sent,
                    ratio * 100.0
                )
            }
            _ => format!(
                "trial {trial}, {method}: {} messages sent; brokers' count not available ({})",
                self.sent,
                self.uncounted.as_deref().unwrap_or("not read")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_a_counted_and_an_uncounted_run() {
        let counted = Delivery {
            sent: 14500,
            received: Some(14471),
            received_by_broker: [("b1".into(), 7000), ("b2".into(), 7471)].into(),
            uncounted: None,
            control_excluded: 0,
        };
        assert_eq!(
            counted.describe(1, "dns-rr"),
            "trial 1, dns-rr: brokers received 14471 of 14500 messages sent (99.80 %)"
        );
        let with_control = Delivery {
            control_excluded: 296,
            ..counted.clone()
        };
        assert_eq!(
            with_control.describe(1, "rebalance"),
            "trial 1, rebalance: brokers received 14471 of 14500 messages sent (99.80 %; the \
             harness's 296 control messages taken out)"
        );
        let restarted = Delivery {
            sent: 10,
            uncounted: Some("b2 was restarted by a fault".into()),
            ..Delivery::default()
        };
        assert_eq!(restarted.ratio(), None);
        assert_eq!(
            restarted.describe(2, "proposed"),
            "trial 2, proposed: 10 messages sent; brokers' count not available (b2 was restarted by a fault)"
        );
        assert_eq!(Delivery::default().ratio(), None);
    }

    #[test]
    fn nothing_sent_and_nothing_received_is_all_delivered() {
        let idle = Delivery {
            received: Some(0),
            ..Delivery::default()
        };
        assert_eq!(idle.ratio(), Some(1.0));
    }
}
