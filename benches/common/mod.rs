//! Pieces shared by the load-generator benchmarks: this process's CPU time, and a load config
//! that sends every publisher straight to one broker.
#![allow(dead_code)]

pub mod bare_sender;

use std::time::Duration;

use mqdispatch::loadgen::{self, ArrivalOrder, ArrivalSpec, LoadConfig, Placement, Profile};

/// User + system CPU time of this whole process.
pub use mqdispatch::agent::cpu::own_process_cpu as cpu_time;

/// Every publisher of `profiles` at once (no arrival spacing), straight to `broker`.
pub fn config(profiles: Vec<Profile>, broker: &str, prefix: &str) -> LoadConfig {
    let spec = ArrivalSpec {
        order: ArrivalOrder::Random,
        interval: Duration::ZERO,
        jitter: Duration::ZERO,
        burst: None,
    };
    LoadConfig {
        publishers: loadgen::plan_arrivals(&profiles, &spec, 1).expect("plan"),
        profiles,
        placement: Placement::DnsRoundRobin {
            brokers: vec![broker.to_owned()],
        },
        inflight_limit: 100,
        client_id_prefix: prefix.to_owned(),
        tls: None,
    }
}
