//! The brokers' own count of the messages they received in one method run, read once after the
//! last publisher finished (see [`crate::report::delivery`]).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::agent::counters;
use crate::broker::RunningBroker;
use crate::dispatcher::rebalance::control;
use crate::report::delivery::Delivery;

/// The brokers' counts: per broker id, messages from publishers, and the harness's own control
/// messages taken out of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counted {
    pub by_broker: BTreeMap<String, u64>,
    pub control_excluded: u64,
}

/// Forgets control messages counted for `brokers` before now (a method run starts clean even
/// where an earlier run's broker had the same address).
pub fn forget_control(brokers: &[RunningBroker]) {
    for b in brokers {
        control::take_published(&b.addr);
    }
}

/// Per broker id, the counter once updated at or after `after_ms`, less the control messages
/// the harness wrote to it (call once the rebalancer has stopped, with `after_ms` after that);
/// `Err` says why the total cannot be had (a broker without counters, one restarted by a
/// fault, a counter not settled within `within`).
pub async fn count_received(
    brokers: &[RunningBroker],
    after_ms: u64,
    within: Duration,
) -> Result<Counted, String> {
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
        let (id, addr) = (broker.id.clone(), broker.addr.clone());
        reads.spawn(async move {
            let reading = counters::total_after(&source, after_ms, within).await;
            (id, addr, reading)
        });
    }
    let mut counted = Counted::default();
    while let Some(joined) = reads.join_next().await {
        let (id, addr, reading) = joined.map_err(|e| e.to_string())?;
        let reading =
            reading.ok_or_else(|| format!("{id}'s counter did not settle within {within:?}"))?;
        let control = control::take_published(&addr);
        counted.control_excluded += control;
        counted
            .by_broker
            .insert(id, reading.received_total.saturating_sub(control));
    }
    Ok(counted)
}

/// What was sent against what the brokers counted.
pub fn delivery(sent: u64, counted: Result<Counted, String>) -> Delivery {
    match counted {
        Ok(c) => Delivery {
            sent,
            received: Some(c.by_broker.values().sum()),
            received_by_broker: c.by_broker,
            uncounted: None,
            control_excluded: c.control_excluded,
        },
        Err(why) => Delivery {
            sent,
            uncounted: Some(why),
            ..Delivery::default()
        },
    }
}
