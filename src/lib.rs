//! mqdispatch: balancing MQTT clients across brokers with MQTT v5 server redirection, and the
//! harness that measures it against DNS round-robin.
//!
//! Roles (each a subcommand, each usable alone or started by [`run`]):
//! - [`dispatcher`]: answers every v5 CONNECT with CONNACK 0x9C/0x9D + Server Reference.
//! - [`agent`]: samples a broker's CPU (and counters) every second, reports to the dispatcher.
//! - [`broker`]: the brokers under test (embedded rumqttd, Mosquitto, external).
//! - [`loadgen`]: fixed-rate publishers that follow redirects.
//! - [`run`]: one experiment from a [`scenario`] file; [`report`] writes CSVs, summaries, plots.
//!
//! [`client`]: redirect-following connect for your own rumqttc v5 devices.
//! [`clock`]: clock offsets between hosts (a time service and an NTP-style probe), for loader
//! shards on hosts whose clocks differ.
//! [`testbed`]: hosts on one machine (network namespaces with sshd) for multi-host runs.
//!
//! Shared pieces: [`proto`] (the redirect handshake), [`load_report`] (the agent wire format),
//! [`duration`] (`5s`/`100ms` parsing), [`addr`] (`HOST:PORT` parsing), [`backoff`] (reconnect
//! delays), [`shutdown`] (SIGINT/SIGTERM/SIGHUP), [`process`] (child processes that never
//! outlive us), [`fdlimit`] (the open-file limit raised for fleets), [`affinity`] (CPU pinning of brokers), [`prom_server`] (a real
//! Prometheus for runs and tests), [`metrics`] (`/metrics` for any role), [`seeds`] (one trial
//! seed → independent, value-stable random streams), [`tls`] (rustls configurations, throwaway
//! CAs), [`payload`] (the send time and sequence number at the front of every payload).

pub mod addr;
pub mod affinity;
pub mod agent;
pub mod backoff;
pub mod broker;
pub mod cli;
pub mod client;
pub mod clock;
pub mod dispatcher;
pub mod duration;
pub mod fdlimit;
pub mod load_report;
pub mod loadgen;
pub mod metrics;
pub mod payload;
pub mod process;
pub mod prom_server;
pub mod proto;
pub mod remote;
pub mod report;
pub mod run;
pub mod scenario;
pub mod seeds;
pub mod shutdown;
pub mod testbed;
pub mod tls;

/// Bad input from the user (scenario, flags): reported in one line, exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// Milliseconds since the Unix epoch: the one clock every role stamps its records with, so the
/// runner can align broker samples, publisher counts and decisions to the same seconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
