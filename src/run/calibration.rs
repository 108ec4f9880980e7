//! Before the first method: how strongly a broker's CPU tracks its message rate on this host.
//!
//! Per broker kind of the scenario, one fresh broker started as a method run starts one (same
//! CPU cap, pinning, TLS and plugin), one per-message publisher (the in-process loader, QoS 0,
//! the scenario's first payload size) at [`RATES`] in turn, each for the scenario's calibration
//! step; the broker's CPU is read as its agent reads it ([`crate::agent::cpu`]: its process, or
//! its cgroup when capped) over the middle half of each step. Then the broker is stopped. The
//! result goes into `manifest.json` ([`Calibration`]); a failure is recorded there and under
//! Errors, and the run goes on.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::agent::CpuSampler;
use crate::broker::{BrokerKind, RunningBroker};
use crate::loadgen::profile::{DEFAULT_BATCH_TICK, DEFAULT_TOPIC};
use crate::loadgen::{self, LoadConfig, LoadEvent, Placement, PlannedPublisher, Profile, SendMode};
use crate::report::calibration::{Calibration, KindCalibration, Step};
use crate::scenario::Scenario;

/// The two rates (msg/s), lower first: the paper's light and heavy publishers.
pub const RATES: [f64; 2] = [2000.0, 10000.0];
/// How long the publisher may take to get its CONNACK.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);

/// Measures every broker kind the scenario uses. Never fails: what went wrong is in the
/// returned kinds' `error` ([`Calibration::errors`]).
pub(super) async fn calibrate(
    scenario: &Scenario,
    workdir: &std::path::Path,
    tls: Option<&crate::tls::ThrowawayCa>,
    cancel: &CancellationToken,
) -> Calibration {
    let payload_bytes = scenario.profiles.first().map_or(600, |p| p.payload_bytes);
    let began = Instant::now();
    let step = scenario.calibration.step;
    let kind = scenario.brokers.kind;
    let name = format!("{kind:?}").to_lowercase();
    let on_hosts = scenario
        .hosts
        .as_ref()
        .is_some_and(|h| !h.broker_hosts.is_empty());
    let entry = match kind {
        _ if on_hosts => KindCalibration {
            skipped: Some(
                "brokers run on hosts: a calibration here would measure this machine, not them"
                    .into(),
            ),
            ..empty(name)
        },
        BrokerKind::External => KindCalibration {
            skipped: Some(
                "external brokers run elsewhere: their CPU is not the harness's to read".into(),
            ),
            ..empty(name)
        },
        _ => {
            info!(kind = %name, step_s = step.as_secs_f64(), "calibrating broker CPU against message rate");
            let mut entry = empty(name);
            if let Err(e) =
                measure_kind(scenario, workdir, tls, payload_bytes, &mut entry, cancel).await
            {
                warn!(kind = %entry.kind, error = %format!("{e:#}"), "calibration failed");
                entry.error = Some(format!("{e:#}"));
            }
            entry
        }
    };
    let calibration = Calibration {
        payload_bytes,
        qos: 0,
        step_s: step.as_secs_f64(),
        kinds: vec![entry],
    };
    info!(
        took_s = began.elapsed().as_secs_f64(),
        "{}",
        calibration.describe()
    );
    calibration
}

fn empty(kind: String) -> KindCalibration {
    KindCalibration {
        kind,
        version: None,
        capacity_cores: None,
        steps: Vec::new(),
        ratio: None,
        skipped: None,
        error: None,
    }
}

/// One broker, both rates, the broker stopped and reaped whatever happened.
async fn measure_kind(
    scenario: &Scenario,
    workdir: &std::path::Path,
    tls: Option<&crate::tls::ThrowawayCa>,
    payload_bytes: usize,
    entry: &mut KindCalibration,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let spec = super::broker_spec::broker_spec(scenario, 0, "calibration", tls)?;
    let broker = RunningBroker::start(&spec, workdir)
        .await
        .map_err(|e| anyhow::anyhow!("starting the broker: {e}"))?;
    entry.version = Some(broker.version());
    let client_tls = tls.map(|ca| ca.client_config()).transpose()?;
    let result = async {
        let agent = broker
            .agent_config(scenario.sample_interval)
            .ok_or_else(|| anyhow::anyhow!("the broker has no process to sample"))?;
        entry.capacity_cores = Some(agent.capacity_cores.unwrap_or(1.0));
        let addr = broker
            .tls_addr
            .clone()
            .unwrap_or_else(|| broker.addr.clone());
        for rate in RATES {
            let mut sampler = CpuSampler::new(agent.cpu.clone(), agent.capacity_cores);
            let profile = publisher(rate, payload_bytes, scenario.calibration.step);
            let step = run_step(&addr, profile, client_tls.clone(), &mut sampler, cancel).await?;
            entry.steps.push(step);
        }
        let (Some(low), Some(high)) = (entry.steps.first(), entry.steps.last()) else {
            anyhow::bail!("no step was measured");
        };
        entry.ratio = Some(KindCalibration::ratio_of(low, high).ok_or_else(|| {
            anyhow::anyhow!(
                "the broker's CPU at {} msg/s measured {} %: no ratio can be formed",
                low.rate_msgs_per_s,
                low.cpu_pct
            )
        })?);
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = broker.stop().await {
        warn!(error = %e, "stopping the calibration broker failed");
    }
    result
}

/// One per-message publisher at `rate` for `step`.
fn publisher(rate: f64, payload_bytes: usize, step: Duration) -> Profile {
    Profile {
        name: "calibration".into(),
        count: 1,
        rate,
        payload_bytes,
        duration: step,
        qos: 0,
        topic: DEFAULT_TOPIC.into(),
        send: SendMode::PerMessage,
        batch_tick: DEFAULT_BATCH_TICK,
    }
}

/// Publishes for the profile's duration from the publisher's CONNACK; reads the broker's CPU
/// from a quarter to three quarters of it.
async fn run_step(
    addr: &str,
    profile: Profile,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    sampler: &mut CpuSampler,
    cancel: &CancellationToken,
) -> anyhow::Result<Step> {
    let rate = profile.rate;
    let step = profile.duration;
    let cfg = LoadConfig {
        publishers: vec![PlannedPublisher {
            index: 0,
            name: format!("{rate:.0}"),
            profile: 0,
            join_at: Duration::ZERO,
        }],
        profiles: vec![profile],
        placement: Placement::DnsRoundRobin {
            brokers: vec![addr.to_owned()],
        },
        inflight_limit: 100,
        client_id_prefix: "calibration-".into(),
        tls,
    };
    let (tx, mut events) = mpsc::unbounded_channel();
    let stop = cancel.child_token();
    let load = loadgen::run(cfg, tx, stop.clone());
    tokio::pin!(load);
    let interrupted = || anyhow::anyhow!("interrupted");

    // From the CONNACK on, the publisher sends for `step`.
    let joined = async {
        while let Some(e) = events.recv().await {
            if let LoadEvent::Joined { .. } = e {
                return true;
            }
        }
        false
    };
    tokio::select! {
        r = tokio::time::timeout(CONNECT_WITHIN, joined) => match r {
            Ok(true) => {}
            Ok(false) => return Err(fail_load((&mut load).await, rate)),
            Err(_) => anyhow::bail!("the {rate:.0} msg/s publisher got no CONNACK within {CONNECT_WITHIN:?}"),
        },
        r = &mut load => return Err(fail_load(r, rate)),
        _ = cancel.cancelled() => return Err(interrupted()),
    }
    let measure = async {
        tokio::time::sleep(step / 4).await;
        sampler.sample()?;
        let from = Instant::now();
        tokio::time::sleep(step / 2).await;
        let pct = sampler.sample()?;
        let measured_s = from.elapsed().as_secs_f64();
        let pct = pct.ok_or_else(|| anyhow::anyhow!("no CPU reading over the step"))?;
        anyhow::Ok((pct, measured_s))
    };
    let (cpu_pct, measured_s) = tokio::select! {
        r = measure => r?,
        r = &mut load => return Err(fail_load(r, rate)),
        _ = cancel.cancelled() => return Err(interrupted()),
    };
    let summary = tokio::select! {
        r = tokio::time::timeout(step + CONNECT_WITHIN, &mut load) => match r {
            Ok(r) => r.map_err(|e| e.context(format!("the {rate:.0} msg/s publisher")))?,
            Err(_) => anyhow::bail!("the {rate:.0} msg/s publisher did not finish"),
        },
        _ = cancel.cancelled() => return Err(interrupted()),
    };
    if summary.sent_total() == 0 {
        anyhow::bail!("the {rate:.0} msg/s publisher sent nothing");
    }
    Ok(Step {
        rate_msgs_per_s: rate,
        cpu_pct,
        measured_s,
        sent_msgs: summary.sent_total(),
        target_msgs: summary.target_total(),
    })
}

fn fail_load(r: anyhow::Result<loadgen::LoadSummary>, rate: f64) -> anyhow::Error {
    match r {
        Err(e) => e.context(format!("the {rate:.0} msg/s publisher")),
        Ok(_) => anyhow::anyhow!("the {rate:.0} msg/s publisher finished before it connected"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_publisher_is_one_per_message_qos0_publisher() {
        let p = publisher(2000.0, 600, Duration::from_secs(4));
        assert_eq!((p.count, p.qos, p.send), (1, 0, SendMode::PerMessage));
        assert_eq!(p.target_total(), 8000);
        p.validate().expect("a valid profile");
    }
}
