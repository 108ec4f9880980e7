//! The brokers' own count of the messages they received in one method run, read once after the
//! last publisher finished (see [`crate::report::delivery`]).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::agent::counters;
use crate::broker::RunningBroker;
use crate::report::delivery::Delivery;

/// Per broker id, the counter once updated at or after `after_ms`; `Err` says why the total
/// cannot be had (a broker without counters, one restarted by a fault, a counter not updated
/// within `within`).
pub async fn count_received(
    brokers: &[RunningBroker],
    after_ms: u64,
    within: Duration,
) -> Result<BTreeMap<String, u64>, String> {
    let mut reads = JoinSet::new();
    for broker in brokers {
        let Some(source) = broker.counters().cloned() else {
            return Err(format!("{} exposes no message counter", broker.id));
        };
        if broker.restarts() > 0 {
            return Err(format!(
                "{} was restarted by a fault and its count began again",
                broker.id
            ));
        }
        let id = broker.id.clone();
        reads.spawn(async move { (id, counters::total_after(&source, after_ms, within).await) });
    }
    let mut counts = BTreeMap::new();
    while let Some(joined) = reads.join_next().await {
        let (id, reading) = joined.map_err(|e| e.to_string())?;
        let reading =
            reading.ok_or_else(|| format!("{id}'s counter did not update within {within:?}"))?;
        counts.insert(id, reading.received_total);
    }
    Ok(counts)
}

/// What was sent against what the brokers counted.
pub fn delivery(sent: u64, counted: Result<BTreeMap<String, u64>, String>) -> Delivery {
    match counted {
        Ok(by_broker) => Delivery {
            sent,
            received: Some(by_broker.values().sum()),
            received_by_broker: by_broker,
            uncounted: None,
        },
        Err(why) => Delivery {
            sent,
            uncounted: Some(why),
            ..Delivery::default()
        },
    }
}
