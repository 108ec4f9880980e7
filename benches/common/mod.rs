//! Pieces shared by the load-generator benchmarks: smoke or measuring run, settings from the
//! environment, the binary children run, this process's CPU time, and a load config that sends
//! every publisher straight to one broker.
#![allow(dead_code, unused_imports)] // each bench uses a part

pub mod bare_sender;
pub mod receivers;

use std::time::Duration;

use mqdispatch::loadgen::{self, ArrivalOrder, ArrivalSpec, LoadConfig, Placement, Profile};

/// User + system CPU time of this whole process.
pub use mqdispatch::agent::cpu::own_process_cpu as cpu_time;

/// `cargo bench` passes `--bench`; `cargo test --all-targets` (make test) runs a bench binary
/// without it, as a short smoke test of the bench itself.
pub fn smoke_run() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// Environment variable `name` parsed, else `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Children started as `mqdispatch <role>` (brokers, generators) run the binary cargo built with
/// this bench (release under `cargo bench`, debug under `cargo test`), unless `MQDISPATCH_BIN`
/// names another.
pub fn use_built_binary() {
    if std::env::var_os("MQDISPATCH_BIN").is_none() {
        mqdispatch::process::set_self_exe(env!("CARGO_BIN_EXE_mqdispatch"));
    }
}

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
