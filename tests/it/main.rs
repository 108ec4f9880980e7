//! The one integration-test binary (ripgrep style): a module per role, shared helpers in `util`.

mod agent;
mod broker;
mod cli;
mod clock;
mod dispatcher;
mod docs;
mod faults;
mod hostkill;
mod hosts;
mod hosts_dispatcher;
mod loadgen;
mod mosquitto_plugin;
mod prometheus;
mod rebalance;
mod remote;
mod report;
mod run;
mod testbed;
mod util;
