//! Scenario files: YAML → a validated [`Scenario`] (docs/src/scenarios.md).
//!
//! Parsing keeps YAML locations ([`Spanned`]) on every value a later check may reject, so every
//! error names `file:line:column`, says what is wrong and how to fix it, and exits with code 2.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::InputError;
use crate::broker::BrokerKind;
use crate::dispatcher::rebalance::{MoverKind, RebalanceConfig};
use crate::dispatcher::{Metric, Policy, SubscriberPolicy};
use crate::loadgen::profile::{DEFAULT_BATCH_TICK, DEFAULT_TOPIC};
use crate::loadgen::{ArrivalOrder, ArrivalSpec, Profile, SendMode, SubscriberSpec};

mod brokers;
mod calibration;
mod faults;
pub mod hosts;
mod length;
mod rebalance;
mod sampler;
mod subscribers;

use brokers::RawBrokers;
pub use brokers::{BrokersPlan, check_host};
pub use calibration::CalibrationPlan;
use calibration::RawCalibration;
use faults::RawFault;
pub use faults::{FaultKind, FaultPlan};
pub use hosts::{HostSpec, HostsPlan};
use rebalance::RawRebalance;
use sampler::RawSampler;
pub use sampler::{CpuSampling, LoadSourceKind, check_prometheus};
use subscribers::RawSubscriber;

/// A scenario, checked and with its time scale applied: what the runner executes.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub name: String,
    pub seed: u64,
    pub trials: u32,
    pub brokers: BrokersPlan,
    #[serde(with = "duration_serde")]
    pub sample_interval: Duration,
    #[serde(with = "duration_serde")]
    pub window: Duration,
    /// What an agent's `cpu_pct` measures (`sampler.cpu`).
    pub cpu: CpuSampling,
    /// How often the run's Prometheus scrapes the agents, and the dispatcher queries it
    /// (`sampler.scrape_interval`; default: the sampler interval).
    #[serde(with = "duration_serde")]
    pub scrape_interval: Duration,
    pub profiles: Vec<Profile>,
    /// Consumers, connected and subscribed before the first publisher (`subscribers:`).
    pub subscribers: Vec<SubscriberSpec>,
    pub arrival: ArrivalSpec,
    pub methods: Vec<MethodPlan>,
    pub faults: Vec<FaultPlan>,
    pub time_scale: f64,
    /// Publishers speak TLS to the dispatcher and the brokers (Mosquitto gets a TLS listener
    /// with a throwaway CA made for the run).
    pub tls: bool,
    /// The run's broker-CPU calibration (`calibration:`; wall-clock, not time-scaled).
    pub calibration: CalibrationPlan,
    /// Machines and the roles placed on them (`hosts:`, `brokers.hosts`, `loaders`); `None`:
    /// everything runs here.
    pub hosts: Option<HostsPlan>,
}

mod duration_serde {
    pub use crate::duration::serialize;
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MethodPlan {
    pub name: String,
    pub assign: Assignment,
    /// Live rebalancing (dispatcher methods only): the planner's knobs, durations scaled.
    pub rebalance: Option<RebalanceConfig>,
    /// How moves are made; `None`: by broker kind (Mosquitto: its plugin; else takeover).
    pub mover: Option<MoverKind>,
    /// How the dispatcher learns the loads (`source:`, default `sampler.source`); always
    /// `agent` for `dns-rr`, which has no dispatcher.
    pub source: LoadSourceKind,
    /// How the dispatcher places the members of `placement: method` entries
    /// (`subscriber_policy:`, default `inflow`); `None` for `dns-rr` and when no entry says
    /// `placement: method` (no member goes through the dispatcher).
    pub subscriber_policy: Option<SubscriberPolicy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "assign")]
pub enum Assignment {
    /// The paper's baseline: publisher i in arrival order → broker i mod n, no dispatcher hop.
    DnsRr,
    /// Through the dispatcher with this policy and metric.
    Dispatcher { policy: Policy, metric: Metric },
}

// ---- the file as written ------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Spanned<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    trials: Option<Spanned<u32>>,
    brokers: Spanned<RawBrokers>,
    #[serde(default)]
    sampler: Option<Spanned<RawSampler>>,
    publishers: Spanned<Vec<Spanned<RawProfile>>>,
    #[serde(default)]
    subscribers: Vec<Spanned<RawSubscriber>>,
    arrival: RawArrival,
    methods: Spanned<Vec<Spanned<RawMethod>>>,
    #[serde(default)]
    faults: Vec<Spanned<RawFault>>,
    #[serde(default)]
    time_scale: Option<Spanned<f64>>,
    #[serde(default)]
    tls: Option<Spanned<bool>>,
    #[serde(default)]
    calibration: Option<Spanned<RawCalibration>>,
    #[serde(default)]
    hosts: Option<Spanned<hosts::RawHosts>>,
    #[serde(default)]
    loaders: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    dispatcher_host: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: Spanned<String>,
    #[serde(default)]
    count: Option<Spanned<usize>>,
    rate: Spanned<f64>,
    payload_bytes: Spanned<usize>,
    duration: Spanned<String>,
    #[serde(default)]
    qos: Option<Spanned<u8>>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    send: SendMode,
    #[serde(default)]
    batch_tick: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArrival {
    order: Spanned<RawOrder>,
    interval: Spanned<String>,
    #[serde(default)]
    jitter: Option<Spanned<String>>,
    #[serde(default)]
    burst: Option<Spanned<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawOrder {
    Word(String),
    Names(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMethod {
    name: Spanned<String>,
    assign: RawAssign,
    #[serde(default)]
    policy: Option<Spanned<Policy>>,
    #[serde(default)]
    metric: Option<Metric>,
    #[serde(default)]
    rebalance: Option<Spanned<RawRebalance>>,
    #[serde(default)]
    source: Option<Spanned<LoadSourceKind>>,
    #[serde(default)]
    subscriber_policy: Option<Spanned<SubscriberPolicy>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RawAssign {
    DnsRr,
    Dispatcher,
}

// ---- loading and checking -----------------------------------------------------------------

/// Reads and checks a scenario file. Every error is an [`InputError`] naming `file:line:col`.
pub fn load(path: &Path) -> Result<Scenario, InputError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| InputError(format!("{}: cannot read scenario: {e}", path.display())))?;
    parse(&text, &path.display().to_string())
}

/// Parses scenario text; `origin` names it in error messages.
pub fn parse(text: &str, origin: &str) -> Result<Scenario, InputError> {
    let raw: RawScenario = serde_saphyr::from_str(text).map_err(|e| yaml_error(origin, &e))?;
    Checker { origin }.check(raw)
}

fn yaml_error(origin: &str, err: &serde_saphyr::Error) -> InputError {
    // The crate's Display is "error: line L column C: message" plus a source snippet: keep the
    // message, put the location in the conventional file:line:col form.
    let rendered = err.to_string();
    let first = rendered.lines().next().unwrap_or("invalid YAML");
    let message = first
        .split_once(": ")
        .map(|(_, rest)| rest)
        .and_then(|rest| rest.split_once(": ").map(|(_, m)| m))
        .unwrap_or(first);
    match err.location() {
        Some(loc) if loc.line() > 0 => InputError(format!(
            "{origin}:{}:{}: {message}",
            loc.line(),
            loc.column()
        )),
        _ => InputError(format!("{origin}: {message}")),
    }
}

struct Checker<'a> {
    origin: &'a str,
}

impl Checker<'_> {
    fn at<T>(&self, spanned: &Spanned<T>, message: impl std::fmt::Display) -> InputError {
        self.at_location(spanned.referenced, message)
    }

    fn at_location(
        &self,
        loc: serde_saphyr::Location,
        message: impl std::fmt::Display,
    ) -> InputError {
        InputError(format!(
            "{}:{}:{}: {message}",
            self.origin,
            loc.line(),
            loc.column()
        ))
    }

    fn duration(&self, text: &Spanned<String>, scale: f64) -> Result<Duration, InputError> {
        let d = crate::duration::parse(&text.value).map_err(|e| self.at(text, e))?;
        Ok(d.mul_f64(scale))
    }

    fn check(&self, raw: RawScenario) -> Result<Scenario, InputError> {
        let _ = raw.description;
        let name = raw.name.value.trim().to_owned();
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(self.at(
                &raw.name,
                "name must be a plain word (it names the results folder): e.g. `name: paper`",
            ));
        }
        let trials = match &raw.trials {
            None => 1,
            Some(t) if t.value == 0 => return Err(self.at(t, "trials must be at least 1")),
            Some(t) => t.value,
        };
        let time_scale = match &raw.time_scale {
            None => 1.0,
            Some(s) if s.value.is_finite() && s.value > 0.0 && s.value <= 100.0 => s.value,
            Some(s) => {
                return Err(self.at(s, "time_scale must be > 0 (e.g. 0.2 for a 5× quicker run)"));
            }
        };
        let brokers = self.brokers(&raw.brokers)?;
        let tls = match &raw.tls {
            Some(t) if t.value && brokers.kind != BrokerKind::Mosquitto => {
                return Err(self.at(
                    t,
                    "tls: true needs `brokers: { kind: mosquitto }` (the harness gives Mosquitto \
                     a TLS listener; the embedded broker and external brokers have none here)",
                ));
            }
            t => t.as_ref().is_some_and(|t| t.value),
        };
        let sampler = self.sampler(raw.sampler.as_ref(), time_scale)?;
        let calibration = self.calibration(raw.calibration.as_ref())?;
        let profiles = self.profiles(&raw.publishers, time_scale)?;
        let subscribers = self.subscribers(&raw.subscribers, brokers.count, &profiles)?;
        let arrival = self.arrival(&raw.arrival, &profiles, time_scale)?;
        let method_placed = subscribers
            .iter()
            .any(|s| s.placement == crate::loadgen::subscription::MemberPlacement::Method);
        let methods = self.methods(&raw.methods, sampler.source, time_scale, method_placed)?;
        let faults = raw
            .faults
            .iter()
            .map(|f| self.fault(f, &brokers, time_scale))
            .collect::<Result<Vec<_>, _>>()?;
        let hosts = self.hosts(raw.hosts.as_ref(), self.placement(&raw, &methods))?;
        Ok(Scenario {
            name,
            seed: raw.seed,
            trials,
            brokers,
            sample_interval: sampler.interval,
            window: sampler.window,
            cpu: sampler.cpu,
            scrape_interval: sampler.scrape_interval,
            profiles,
            subscribers,
            arrival,
            methods,
            faults,
            time_scale,
            tls,
            calibration,
            hosts,
        })
    }

    /// Where the scenario puts roles, and what it sets that brokers on hosts cannot do.
    fn placement<'r>(&self, raw: &'r RawScenario, methods: &[MethodPlan]) -> hosts::Placement<'r> {
        let b = &raw.brokers.value;
        let mut conflicts = Vec::new();
        let mut conflict = |loc: Option<serde_saphyr::Location>, key| {
            if let Some(loc) = loc {
                conflicts.push((loc, key));
            }
        };
        let cap = "no brokers.cpu_limit (cap the host: `mqdispatch testbed up --cpu-limit 0.5`)";
        conflict(b.cpu_limit_at(), cap);
        conflict(b.cpus_at(), "no brokers.cpus");
        let plugin = "no brokers.plugin (the Mosquitto plugin is not put on hosts: moves on \
                      Mosquitto brokers on hosts are not supported)";
        conflict(b.plugin_at(), plugin);
        let plugin_moves = b.kind == BrokerKind::Mosquitto
            && methods.iter().any(|m| {
                m.rebalance.is_some()
                    && m.mover.unwrap_or(MoverKind::MosquittoPlugin) == MoverKind::MosquittoPlugin
            });
        conflict(
            plugin_moves.then_some(raw.methods.referenced),
            "no moves through the Mosquitto plugin (`mover: mosquitto-plugin`, the default on \
             Mosquitto): the plugin is not put on hosts",
        );
        let tls = raw.tls.as_ref().filter(|t| t.value);
        conflict(tls.map(|t| t.referenced), "no tls: true");
        conflict(raw.faults.first().map(|f| f.referenced), "no faults");
        let fed = methods
            .iter()
            .any(|m| m.source == LoadSourceKind::Prometheus);
        conflict(
            fed.then_some(raw.methods.referenced),
            "no Prometheus load source",
        );
        hosts::Placement {
            brokers: b.hosts.as_ref(),
            loaders: raw.loaders.as_ref(),
            dispatcher: raw.dispatcher_host.as_ref(),
            dispatcher_methods: methods
                .iter()
                .any(|m| matches!(m.assign, Assignment::Dispatcher { .. })),
            broker_count: raw.brokers.value.count_or_addresses(),
            broker_kind: b.kind,
            conflicts,
        }
    }

    fn profiles(
        &self,
        raw: &Spanned<Vec<Spanned<RawProfile>>>,
        scale: f64,
    ) -> Result<Vec<Profile>, InputError> {
        if raw.value.is_empty() {
            return Err(self.at(raw, "no publishers: add at least one profile"));
        }
        let mut names = HashSet::new();
        let mut profiles = Vec::new();
        for p in &raw.value {
            let p = &p.value;
            if !names.insert(p.name.value.clone()) {
                return Err(self.at(
                    &p.name,
                    format!("duplicate publisher name `{}`", p.name.value),
                ));
            }
            if !(p.rate.value.is_finite() && p.rate.value > 0.0) {
                return Err(self.at(&p.rate, "rate is messages per second and must be > 0"));
            }
            let count = p.count.as_ref().map_or(1, |c| c.value);
            if count == 0 {
                let c = p.count.as_ref().expect("invariant: count 0 was written");
                return Err(self.at(c, "count must be at least 1"));
            }
            let duration = self.duration(&p.duration, scale)?;
            if duration.is_zero() {
                return Err(self.at(&p.duration, "duration must be > 0"));
            }
            if p.payload_bytes.value < crate::payload::HEADER_BYTES {
                return Err(self.at(
                    &p.payload_bytes,
                    format!(
                        "payload_bytes must be at least {}: every payload starts with its send \
                         time and sequence number",
                        crate::payload::HEADER_BYTES
                    ),
                ));
            }
            let qos = p.qos.as_ref().map_or(0, |q| q.value);
            if qos > 1 {
                let q = p.qos.as_ref().expect("invariant: qos was written");
                return Err(self.at(q, "qos must be 0 or 1"));
            }
            // The batching tick is a property of the generator, not of the scenario's clock:
            // it is not scaled by time_scale.
            let batch_tick = match &p.batch_tick {
                None => DEFAULT_BATCH_TICK,
                Some(_) if p.send != SendMode::Batched => {
                    let t = p.batch_tick.as_ref().expect("invariant: matched Some");
                    return Err(self.at(t, "batch_tick only applies to `send: batched`"));
                }
                Some(t) => self.duration(t, 1.0)?,
            };
            let profile = Profile {
                name: p.name.value.clone(),
                count,
                rate: p.rate.value,
                payload_bytes: p.payload_bytes.value,
                duration,
                qos,
                topic: p.topic.clone().unwrap_or_else(|| DEFAULT_TOPIC.to_owned()),
                send: p.send,
                batch_tick,
            };
            profile.validate().map_err(|e| self.at(&p.name, e))?;
            profiles.push(profile);
        }
        Ok(profiles)
    }

    fn arrival(
        &self,
        raw: &RawArrival,
        profiles: &[Profile],
        scale: f64,
    ) -> Result<ArrivalSpec, InputError> {
        let order = match &raw.order.value {
            RawOrder::Word(w) if w == "random" => ArrivalOrder::Random,
            RawOrder::Word(w) => {
                return Err(self.at(
                    &raw.order,
                    format!("order `{w}`: write `random` or a list of profile names"),
                ));
            }
            RawOrder::Names(names) => {
                for n in names {
                    if !profiles.iter().any(|p| &p.name == n) {
                        return Err(
                            self.at(&raw.order, format!("order names unknown profile `{n}`"))
                        );
                    }
                }
                ArrivalOrder::Explicit(names.clone())
            }
        };
        let interval = self.duration(&raw.interval, scale)?;
        let jitter = match &raw.jitter {
            Some(j) => self.duration(j, scale)?,
            None => Duration::ZERO,
        };
        let burst = match &raw.burst {
            Some(b) if b.value == 0 => return Err(self.at(b, "burst must be at least 1")),
            Some(b) => Some(b.value),
            None => None,
        };
        let spec = ArrivalSpec {
            order,
            interval,
            jitter,
            burst,
        };
        // Counts in an explicit order must match the profiles: let the planner say how.
        crate::loadgen::plan_arrivals(profiles, &spec, 0).map_err(|e| self.at(&raw.order, e))?;
        Ok(spec)
    }

    fn methods(
        &self,
        raw: &Spanned<Vec<Spanned<RawMethod>>>,
        default_source: LoadSourceKind,
        scale: f64,
        method_placed: bool,
    ) -> Result<Vec<MethodPlan>, InputError> {
        if raw.value.is_empty() {
            return Err(self.at(
                raw,
                "no methods: add e.g. `- { name: dns-rr, assign: dns-rr }`",
            ));
        }
        let mut names = HashSet::new();
        let mut methods = Vec::new();
        for m in &raw.value {
            let m = &m.value;
            let name = m.name.value.clone();
            if name.is_empty() || name.contains(['/', '\\', ',']) {
                return Err(self.at(
                    &m.name,
                    "method name must be a plain word (used in file names)",
                ));
            }
            if !names.insert(name.clone()) {
                return Err(self.at(&m.name, format!("duplicate method name `{name}`")));
            }
            let assign = match (m.assign, &m.policy) {
                (RawAssign::DnsRr, None) => Assignment::DnsRr,
                (RawAssign::DnsRr, Some(p)) => {
                    return Err(self.at(p, "dns-rr takes no policy (it is a fixed assignment)"));
                }
                (RawAssign::Dispatcher, None) => {
                    return Err(self.at(
                        &m.name,
                        "assign: dispatcher needs a policy, e.g. `policy: least-cpu`",
                    ));
                }
                (RawAssign::Dispatcher, Some(p)) => Assignment::Dispatcher {
                    policy: p.value,
                    metric: m.metric.unwrap_or(Metric::Cpu),
                },
            };
            let (rebalance, mover) = match (&m.rebalance, assign) {
                (None, _) => (None, None),
                (Some(r), Assignment::DnsRr) => {
                    return Err(self.at(r, "dns-rr cannot rebalance: use assign: dispatcher"));
                }
                (Some(r), Assignment::Dispatcher { .. }) => {
                    let (cfg, mover) = self.rebalance(r, scale)?;
                    (Some(cfg), mover)
                }
            };
            let source = self.method_source(m.source.as_ref(), assign, default_source)?;
            let subscriber_policy = match (&m.subscriber_policy, assign) {
                (Some(p), Assignment::DnsRr) => {
                    return Err(self.at(
                        p,
                        "dns-rr has no dispatcher to place subscribers: subscriber_policy goes \
                         with assign: dispatcher",
                    ));
                }
                (Some(p), Assignment::Dispatcher { .. }) if !method_placed => {
                    return Err(self.at(
                        p,
                        "subscriber_policy places the members of `placement: method` entries, \
                         and no subscribers entry has one: add `placement: method` to an entry \
                         or drop this key",
                    ));
                }
                (p, Assignment::Dispatcher { .. }) if method_placed => {
                    Some(p.as_ref().map_or(SubscriberPolicy::default(), |p| p.value))
                }
                _ => None,
            };
            methods.push(MethodPlan {
                name,
                assign,
                rebalance,
                mover,
                source,
                subscriber_policy,
            });
        }
        Ok(methods)
    }
}

// ---- `mqdispatch validate` ------------------------------------------------------------------

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The scenario file to check.
    pub scenario: PathBuf,
}

pub async fn cli_main(args: ValidateArgs) -> anyhow::Result<()> {
    let scenario = load(&args.scenario)?;
    if let Some(plan) = &scenario.hosts {
        hosts::check_reachable(plan).await?;
    }
    crate::broker::check_available(scenario.brokers.kind)
        .and_then(|()| check_host(&scenario))
        .map_err(|e| InputError(format!("{}: {e}", args.scenario.display())))?;
    check_prometheus(&scenario)
        .map_err(|e| InputError(format!("{}: {e}", args.scenario.display())))?;
    let per_trial = scenario.method_length();
    println!(
        "{}: ok — {} trial(s) × {} method(s), {} publisher(s), about {} per method run",
        args.scenario.display(),
        scenario.trials,
        scenario.methods.len(),
        scenario.profiles.iter().map(|p| p.count).sum::<usize>(),
        crate::duration::format(per_trial)
    );
    Ok(())
}
