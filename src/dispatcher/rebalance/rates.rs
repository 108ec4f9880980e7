//! Per-client rates for the planner, pure: the best source available for each client.
//!
//! 1. **Reported** by the broker (the Mosquitto plugin's `rates`: PUBLISH packets counted per
//!    client on the broker, differenced between two answers). A measurement.
//! 2. **Declared** by the client in its CONNECT to the dispatcher: the user property
//!    [`crate::proto::RATE_PROPERTY`] (`mqdispatch-rate`, msgs/s). The project's load generator
//!    declares its target rate. A claim, not a measurement: a client that lies, or whose rate
//!    changes, is weighed wrongly.
//! 3. **Split**: the broker's measured `msgs_in_per_s` minus the rates known above, shared equally
//!    by its clients with no known rate (0 when nothing is left). Right only if those clients
//!    publish alike; it cannot tell a heavy client from a light one.
//!
//! The broker's load for the planner is its measured `msgs_in_per_s` when the agent reports one,
//! else the sum of its clients' rates.

use std::collections::HashMap;

use super::plan::{BrokerLoad, ClientLoad};

/// What the dispatcher knows about one client it placed.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownClient {
    pub id: String,
    pub broker: usize,
    /// From the CONNECT's `mqdispatch-rate` user property.
    pub declared: Option<f64>,
}

/// What is known about one broker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BrokerRates {
    pub live: bool,
    /// Broker-side msgs/s from the agent's newest sample.
    pub measured: Option<f64>,
    /// Per-client msgs/s reported by the broker itself (Mosquitto plugin), when it can.
    pub reported: Option<HashMap<String, f64>>,
}

/// Where a client's rate came from (logged with each move).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateSource {
    Reported,
    Declared,
    Split,
}

/// The planner's inputs from what is known, and each client's rate source.
pub fn estimate(
    brokers: &[BrokerRates],
    clients: &[KnownClient],
) -> (Vec<BrokerLoad>, Vec<ClientLoad>, Vec<RateSource>) {
    let mut loads = Vec::with_capacity(clients.len());
    let mut sources = Vec::with_capacity(clients.len());
    for c in clients {
        let reported = brokers
            .get(c.broker)
            .and_then(|b| b.reported.as_ref())
            .and_then(|r| r.get(&c.id).copied());
        let (rate, source) = match (reported, c.declared) {
            (Some(r), _) => (Some(r), RateSource::Reported),
            (None, Some(d)) => (Some(d), RateSource::Declared),
            (None, None) => (None, RateSource::Split),
        };
        loads.push(rate);
        sources.push(source);
    }
    // Split what the broker measured and no client accounts for among the unknown clients.
    for (i, b) in brokers.iter().enumerate() {
        let on_i = || (0..clients.len()).filter(move |&k| clients[k].broker == i);
        let unknown: Vec<usize> = on_i().filter(|&k| loads[k].is_none()).collect();
        if unknown.is_empty() {
            continue;
        }
        let known: f64 = on_i().filter_map(|k| loads[k]).sum();
        let share = b
            .measured
            .map_or(0.0, |m| (m - known).max(0.0) / unknown.len() as f64);
        for k in unknown {
            loads[k] = Some(share);
        }
    }
    let client_loads: Vec<ClientLoad> = clients
        .iter()
        .zip(&loads)
        .map(|(c, r)| ClientLoad {
            id: c.id.clone(),
            broker: c.broker,
            rate: r.unwrap_or(0.0),
        })
        .collect();
    let broker_loads = brokers
        .iter()
        .enumerate()
        .map(|(i, b)| BrokerLoad {
            live: b.live,
            load: b.measured.unwrap_or_else(|| {
                client_loads
                    .iter()
                    .filter(|c| c.broker == i)
                    .map(|c| c.rate)
                    .sum()
            }),
        })
        .collect();
    (broker_loads, client_loads, sources)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str, broker: usize, declared: Option<f64>) -> KnownClient {
        KnownClient {
            id: id.into(),
            broker,
            declared,
        }
    }

    #[test]
    fn reported_beats_declared_and_the_rest_is_split() {
        let brokers = vec![
            BrokerRates {
                live: true,
                measured: Some(9000.0),
                reported: None,
            },
            BrokerRates {
                live: true,
                measured: Some(5000.0),
                reported: Some(HashMap::from([("d".to_owned(), 4800.0)])),
            },
        ];
        let clients = vec![
            client("a", 0, Some(5000.0)),
            client("b", 0, None),
            client("c", 0, None),
            client("d", 1, Some(100.0)),
        ];
        let (b, c, s) = estimate(&brokers, &clients);
        let rates: Vec<f64> = c.iter().map(|c| c.rate).collect();
        assert_eq!(rates, [5000.0, 2000.0, 2000.0, 4800.0]);
        use RateSource::*;
        assert_eq!(s, [Declared, Split, Split, Reported]);
        assert_eq!((b[0].load, b[1].load), (9000.0, 5000.0));
    }

    #[test]
    fn without_a_measurement_the_load_is_the_sum_of_known_rates() {
        let brokers = vec![BrokerRates {
            live: true,
            measured: None,
            reported: None,
        }];
        let clients = vec![client("a", 0, Some(300.0)), client("b", 0, None)];
        let (b, c, _) = estimate(&brokers, &clients);
        assert_eq!(b[0].load, 300.0);
        assert_eq!(c[1].rate, 0.0, "nothing to split: unknown counts as 0");
    }
}
