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
    /// PUBLISH packets the brokers counted, all brokers together (`None`: see `uncounted`).
    /// On Mosquitto with the rebalancer this includes its few control messages.
    pub received: Option<u64>,
    /// Per broker id, its own count.
    pub received_by_broker: BTreeMap<String, u64>,
    /// Why `received` is missing: a broker without counters, one restarted by a fault (its
    /// count began again), or a counter that did not update in time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncounted: Option<String>,
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
            (Some(received), Some(ratio)) => format!(
                "trial {trial}, {method}: brokers received {received} of {} messages sent ({:.2} %)",
                self.sent,
                ratio * 100.0
            ),
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
        };
        assert_eq!(
            counted.describe(1, "dns-rr"),
            "trial 1, dns-rr: brokers received 14471 of 14500 messages sent (99.80 %)"
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
