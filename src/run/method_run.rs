//! One method of one trial: brokers, agents, dispatcher and publishers up; record; all down.
//!
//! Everything started here is stopped on every exit path: the body runs in its own future and
//! the teardown runs after it whatever it returned (an error, a cancel, or success).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::agents::AgentSet;
use super::faults::{self, FaultLog};
use super::harness_meter::HarnessMeter;
use super::hosts::HostSession;
use super::hosts::brokers::RemoteBrokers;
use super::hosts::loaders::ShardedLoad;
use super::method_dispatcher::MethodDispatcher;
use super::prom_feed;
use super::recorder::Recorder;
use super::subscribers::SubscriberRun;
use crate::agent::{self, CpuSampler};
use crate::broker::RunningBroker;
use crate::dispatcher::rebalance::MoverKind;
use crate::dispatcher::source::LoadSource;
use crate::dispatcher::{BrokerEntry, DispatcherConfig};
use crate::loadgen::{self, LoadConfig, LoadEvent, Placement, PlannedPublisher};
use crate::report::ResultsWriter;
use crate::report::harness::HarnessMeasures;
use crate::scenario::{Assignment, LoadSourceKind, MethodPlan, Scenario};

/// What one method run needs to know.
pub struct MethodRun<'a> {
    pub scenario: &'a Scenario,
    pub trial: u32,
    pub seed: u64,
    pub method: &'a MethodPlan,
    pub plan: &'a [PlannedPublisher],
    pub workdir: &'a Path,
    /// The run's results folder (subscriber files are written here as the run goes).
    pub results: &'a Path,
    pub progress: &'a super::progress::Progress,
    /// `tls: true`: the run's CA; brokers, dispatcher and publishers use TLS.
    pub tls: Option<&'a crate::tls::ThrowawayCa>,
    /// The scenario's hosts, when it places roles on them.
    pub hosts: Option<&'a HostSession>,
}

impl MethodRun<'_> {
    /// `t1-proposed`: names this method run's files on hosts.
    fn tag(&self) -> String {
        format!("t{}-{}", self.trial, self.method.name)
    }

    fn broker_ids(&self) -> Vec<String> {
        (1..=self.scenario.brokers.count)
            .map(|i| format!("b{i}"))
            .collect()
    }

    pub async fn execute(
        &self,
        writer: &mut ResultsWriter,
        faults_log: &mut FaultLog,
        cancel: &CancellationToken,
    ) -> anyhow::Result<MethodResult> {
        let began = std::time::Instant::now();
        let mut brokers = Vec::new();
        let mut prom = None;
        let mut remote = RemoteBrokers::default();
        let started = self.start_brokers(&mut brokers, &mut remote).await;
        let tasks = TaskTracker::new();
        let stop = cancel.child_token();
        let result = match started {
            Ok(()) => {
                let on_hosts = &mut remote;
                self.drive(
                    &mut brokers,
                    on_hosts,
                    &mut prom,
                    writer,
                    faults_log,
                    &tasks,
                    &stop,
                )
                .await
            }
            Err(e) => Err(e),
        };
        // Teardown, whatever happened above.
        stop.cancel();
        tasks.close();
        if tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .is_err()
        {
            warn!("some agent or dispatcher tasks did not stop within 5 s");
        }
        prom_feed::stop(&mut prom).await;
        remote.stop().await;
        let versions = brokers.iter().map(RunningBroker::version).collect();
        for broker in brokers {
            if let Err(e) = broker.stop().await {
                warn!(error = %e, "stopping a broker failed");
            }
        }
        result.map(|mut measures| {
            let dispatcher_host = self.hosts.and_then(HostSession::dispatcher_host);
            measures.harness = measures.meter.take().map(|meter| {
                let mut harness =
                    meter.finish(began.elapsed(), self.length(), measures.dispatcher_cpu);
                if harness.dispatcher_cpu_pct.is_some() {
                    harness.dispatcher_host = dispatcher_host.map(str::to_owned);
                }
                harness
            });
            MethodResult { versions, measures }
        })
    }

    /// The scenario's own length for this plan: last join + its duration.
    fn length(&self) -> Duration {
        self.plan
            .iter()
            .map(|p| p.join_at + self.scenario.profiles[p.profile].duration)
            .max()
            .unwrap_or_default()
    }

    async fn start_brokers(
        &self,
        brokers: &mut Vec<RunningBroker>,
        remote: &mut RemoteBrokers,
    ) -> anyhow::Result<()> {
        if let Some(hosts) = self.hosts {
            brokers.extend(hosts.start_brokers(&self.tag(), remote).await?);
        }
        for (i, id) in self
            .broker_ids()
            .into_iter()
            .enumerate()
            .skip(brokers.len())
        {
            let spec = super::broker_spec::broker_spec(self.scenario, i, &id, self.tls)?;
            let broker = RunningBroker::start(&spec, self.workdir)
                .await
                .with_context(|| format!("starting broker {id}"))?;
            brokers.push(broker);
        }
        super::delivery::forget_control(brokers);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn drive(
        &self,
        brokers: &mut [RunningBroker],
        remote: &mut RemoteBrokers,
        prom: &mut Option<crate::prom_server::PromServer>,
        writer: &mut ResultsWriter,
        faults_log: &mut FaultLog,
        tasks: &TaskTracker,
        stop: &CancellationToken,
    ) -> anyhow::Result<Measures> {
        let scenario = self.scenario;
        let mut measures = Measures::default();
        // Where publishers connect (the TLS listeners in a TLS run), by broker id.
        let addresses: Vec<(String, String)> = brokers
            .iter()
            .map(|b| {
                (
                    b.id.clone(),
                    b.tls_addr.clone().unwrap_or_else(|| b.addr.clone()),
                )
            })
            .collect();
        let (decision_tx, mut decision_rx) = mpsc::unbounded_channel();
        let (sample_tx, mut sample_rx) = mpsc::unbounded_channel();
        let (event_tx, mut event_rx) = mpsc::unbounded_channel::<LoadEvent>();
        let (move_tx, mut move_rx) = mpsc::unbounded_channel();
        let mut moves = Vec::new();
        let mut outages = Vec::new();

        // Fed through Prometheus: agents' /metrics ports and the server, before the dispatcher.
        let agent_ports = match (self.method.source, self.method.assign) {
            (LoadSourceKind::Prometheus, Assignment::Dispatcher { .. }) => {
                let ids: Vec<String> = brokers.iter().map(|b| b.id.clone()).collect();
                Some(prom_feed::AgentPorts::bind(&ids)?)
            }
            _ => None,
        };

        let mut prom_source = None;
        // Dispatcher (here or on its host) and where agents report.
        let mut dispatcher_slot: Option<MethodDispatcher> = None;
        let mut dispatcher_fed: Option<tokio::sync::watch::Receiver<bool>> = None;
        let (placement, report_addr) = match self.method.assign {
            Assignment::DnsRr => (
                Placement::DnsRoundRobin {
                    brokers: addresses.iter().map(|(_, a)| a.clone()).collect(),
                },
                None,
            ),
            Assignment::Dispatcher { policy, metric } => {
                let entries = brokers
                    .iter()
                    .map(|b| BrokerEntry {
                        id: b.id.clone(),
                        addr: b.addr.clone(),
                        tls_addr: b.tls_addr.clone(),
                    })
                    .collect();
                let mut cfg = DispatcherConfig::new(entries, policy);
                let (fed_tx, fed_rx) = tokio::sync::watch::channel(false);
                cfg.fed = Some(std::sync::Arc::new(fed_tx));
                dispatcher_fed = Some(fed_rx);
                cfg.metric = metric;
                cfg.window = scenario.window;
                cfg.report_interval = scenario.sample_interval;
                cfg.seed = self.seed;
                cfg.rebalance = self.method.rebalance.clone();
                if let Some(policy) = self.method.subscriber_policy {
                    cfg.subscriber_policy = policy;
                }
                cfg.mover = self.method.mover.unwrap_or(match scenario.brokers.kind {
                    crate::broker::BrokerKind::Mosquitto => MoverKind::MosquittoPlugin,
                    _ => MoverKind::Takeover,
                });
                if let Some(ports) = &agent_ports {
                    let dir = self
                        .workdir
                        .join(format!("prometheus-t{}-{}", self.trial, self.method.name));
                    let (server, source) =
                        prom_feed::start(&dir, ports, scenario.scrape_interval, metric).await?;
                    *prom = Some(server);
                    cfg.load_source = LoadSource::Prometheus(source.clone());
                    prom_source = Some(source);
                    // Queried every scrape; 3 without a broker's series take it out.
                    cfg.report_interval = scenario.scrape_interval;
                }
                let tls = self.tls.map(|ca| ca.server_config()).transpose()?;
                let out = (decision_tx, move_tx);
                let slot =
                    MethodDispatcher::start(self.hosts, &self.tag(), cfg, tls, out, stop.clone())
                        .await?;
                let placement = Placement::Dispatcher {
                    dispatchers: vec![slot.listen_addr()],
                    max_hops: 3,
                };
                // Prometheus-fed: agents only expose their samples, they report to no one.
                let report_addr = agent_ports.is_none().then(|| slot.report_addr());
                dispatcher_slot = Some(slot);
                (placement, report_addr)
            }
        };

        // One agent per broker; each feeds the dispatcher (if any) and the recorder.
        let agents = AgentSet {
            report_addr: report_addr.clone(),
            metrics_ports: agent_ports,
            cpu: scenario.cpu,
            interval: scenario.sample_interval,
            samples: sample_tx.clone(),
            tasks: tasks.clone(),
            stop: stop.clone(),
        };
        let mut agent_tokens: Vec<Option<CancellationToken>> =
            brokers.iter().map(|b| agents.spawn(b)).collect();
        if let Some(hosts) = self.hosts {
            hosts.start_agents(remote, report_addr.clone(), scenario, &sample_tx)?;
        }
        drop(sample_tx);

        // Warm-up: every broker has reported once, so the dispatcher starts from real samples.
        let mut early = Vec::new();
        let mut reported = std::collections::HashSet::new();
        let warmup = tokio::time::sleep(scenario.sample_interval * 5);
        tokio::pin!(warmup);
        while reported.len() < brokers.len() {
            tokio::select! {
                Some(r) = sample_rx.recv() => { reported.insert(r.broker.clone()); early.push(r); }
                _ = &mut warmup => { warn!("not every agent reported during warm-up"); break; }
                _ = stop.cancelled() => return Ok(measures),
            }
        }
        // Through Prometheus: its scrapes must reach the dispatcher before publishers come.
        if let Some(source) = &prom_source {
            let ids: Vec<String> = brokers.iter().map(|b| b.id.clone()).collect();
            let within = Duration::from_secs(30);
            if !prom_feed::await_series(source, &ids, &mut sample_rx, &mut early, within, stop)
                .await
            {
                return Ok(measures);
            }
        }
        // The dispatcher itself has a sample of every broker: no first client is placed on a
        // broker it knows nothing about (it assumes those up at load 0).
        if let Some(fed) = &mut dispatcher_fed {
            let within = scenario.sample_interval * 10 + Duration::from_secs(10);
            tokio::select! {
                r = tokio::time::timeout(within, fed.wait_for(|f| *f)) => {
                    if !matches!(r, Ok(Ok(_))) {
                        warn!("the dispatcher has no sample of every broker yet: publishers start anyway");
                    }
                }
                _ = stop.cancelled() => return Ok(measures),
            }
        }

        let profiles_by_publisher: HashMap<String, loadgen::Profile> = self
            .plan
            .iter()
            .map(|p| (p.name.clone(), scenario.profiles[p.profile].clone()))
            .collect();
        // Subscribers before the first publisher: every member has its SUBACK.
        let mut subscribers = SubscriberRun::start(
            super::subscribers::Start {
                scenario,
                plan: self.plan,
                trial: self.trial,
                method: &self.method.name,
                brokers: &addresses,
                dispatcher: dispatcher_slot.as_ref().map(|d| d.listen_addr()),
                client_id_prefix: client_id_prefix(self.trial, &self.method.name),
                tls: self.tls.map(|ca| ca.client_config()).transpose()?,
                dir: self.results,
                sender_clocks_us: self
                    .hosts
                    .map(|h| h.sender_clocks_us(self.plan))
                    .unwrap_or_default(),
            },
            stop,
        )
        .await?;
        // Loader shards on hosts start at an agreed instant a little ahead.
        let loaders = self.hosts.filter(|h| h.has_loaders());
        let t0 = loaders.map_or_else(crate::now_ms, HostSession::loader_start_ms);
        if let Some(s) = subscribers.as_mut() {
            s.set_t0(t0);
        }
        let mut recorder = Recorder::new(
            self.trial,
            &self.method.name,
            t0,
            scenario.sample_interval.as_millis() as u64,
            &addresses,
            profiles_by_publisher,
        );
        for r in &early {
            recorder.sample(r);
        }
        let mut meter = HarnessMeter::start(self.plan, t0);

        let load_cfg = LoadConfig {
            profiles: scenario.profiles.clone(),
            publishers: self.plan.to_vec(),
            placement,
            inflight_limit: 100,
            client_id_prefix: client_id_prefix(self.trial, &self.method.name),
            tls: self.tls.map(|ca| ca.client_config()).transpose()?,
        };
        let sharded = ShardedLoad::new(scenario, self.seed, t0, self.tag());
        let load = sharded.run(self.hosts, load_cfg, event_tx, stop.child_token());
        tokio::pin!(load);
        let mut fault_clock = faults::Schedule::new(&scenario.faults, t0);
        let mut flush = tokio::time::interval(Duration::from_secs(1));
        // The machine's own idle share each second: is the host saturated? (in the harness,
        // outside every measured broker process)
        let mut host = CpuSampler::new(agent::CpuSource::Host, None);
        let _ = host.sample();
        let load_result = loop {
            // Faults fire on time, not on the next once-a-second flush.
            let next_fault = fault_clock
                .next_at_ms()
                .map(|at| Duration::from_millis(at.saturating_sub(crate::now_ms())));
            let fault_due = async {
                match next_fault {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                result = &mut load => break result,
                Some(r) = sample_rx.recv() => recorder.sample(&r),
                Some(e) = event_rx.recv() => {
                    if stop.is_cancelled() { recorder.cut_short(crate::now_ms()); }
                    meter.event(&e);
                    if let Some(s) = subscribers.as_mut() { s.load_event(&e); }
                    record_event(&mut recorder, writer, &mut outages, &e)?;
                }
                e = SubscriberRun::next(&mut subscribers) => {
                    if let Some(s) = subscribers.as_mut() { s.record(e)?; }
                }
                Some(d) = decision_rx.recv() => writer.decision_row(&recorder.decision(&d))?,
                Some(m) = move_rx.recv() => moves.push(m),
                _ = flush.tick() => {
                    if let Ok(Some(busy)) = host.sample() {
                        let t_s = crate::now_ms().saturating_sub(t0).saturating_sub(500) / 1000;
                        measures.host_idle.push((t_s, 100.0 - busy));
                    }
                    recorder.write_settled(writer, false)?;
                    if let Some(s) = subscribers.as_mut() { s.write_settled(false)?; }
                    meter.sample_memory();
                    let elapsed = Duration::from_millis(crate::now_ms().saturating_sub(t0));
                    self.progress.update(self.trial, &self.method.name, "publishing", elapsed);
                }
                () = fault_due => {
                    for fault in fault_clock.due(crate::now_ms()) {
                        let targets = faults::Targets {
                            brokers,
                            agent_tokens: &mut agent_tokens,
                            agents: &agents,
                            dispatcher: dispatcher_slot.as_mut().and_then(MethodDispatcher::here),
                        };
                        faults::inject(&fault, targets, self, faults_log, t0).await;
                    }
                }
            }
        };
        let load_end_ms = crate::now_ms();
        // Broker-side counters lag the publishers by up to a meter tick and a sample: take two
        // more intervals of samples, so the last seconds' broker-received counts are recorded.
        let tail = tokio::time::sleep(scenario.sample_interval * 2);
        tokio::pin!(tail);
        loop {
            tokio::select! {
                _ = &mut tail => break,
                _ = stop.cancelled() => break,
                Some(r) = sample_rx.recv() => recorder.sample(&r),
                Some(e) = event_rx.recv() => {
                    meter.event(&e);
                    if let Some(s) = subscribers.as_mut() { s.load_event(&e); }
                    record_event(&mut recorder, writer, &mut outages, &e)?;
                }
                e = SubscriberRun::next(&mut subscribers) => {
                    if let Some(s) = subscribers.as_mut() { s.record(e)?; }
                }
            }
        }
        // The dispatcher (and its rebalancer, whose control requests a Mosquitto broker counts
        // as received messages) stops first, so the count below sees all of them.
        if let Some(slot) = dispatcher_slot.as_mut() {
            measures.dispatcher_cpu = slot.stop().await;
        }
        // The brokers' whole-run count, once their counters include the last publisher's
        // messages and the last control request.
        let counted = if stop.is_cancelled() {
            Err("the run was interrupted".to_owned())
        } else {
            let after_ms = load_end_ms.max(crate::now_ms());
            // Broker counters tick on their own clock (rumqttd's meter: 1 s; Mosquitto's `$SYS`
            // passes: every 2 s even with `sys_interval 1`), not on a time-scaled sampler's,
            // and the count needs two agreeing updates (up to ~4 s on Mosquitto): give them
            // 5 s more.
            let within = scenario.sample_interval * 3 + Duration::from_secs(5);
            super::delivery::count_received(brokers, after_ms, within).await
        };
        // Drain what arrived after the last publisher finished.
        if stop.is_cancelled() {
            recorder.cut_short(crate::now_ms());
        }
        while let Ok(e) = event_rx.try_recv() {
            meter.event(&e);
            if let Some(s) = subscribers.as_mut() {
                s.load_event(&e);
            }
            record_event(&mut recorder, writer, &mut outages, &e)?;
        }
        // What was in flight reaches the subscribers (or is lost) before they stop.
        if let Some(s) = subscribers.take() {
            s.finish().await.context("subscribers")?;
        }
        while let Ok(m) = move_rx.try_recv() {
            moves.push(m);
        }
        let prefix = client_id_prefix(self.trial, &self.method.name);
        for row in super::moves::rows(self.trial, &self.method.name, t0, &prefix, &moves, &outages)
        {
            writer.move_row(&row)?;
        }
        while let Ok(d) = decision_rx.try_recv() {
            writer.decision_row(&recorder.decision(&d))?;
        }
        while let Ok(r) = sample_rx.try_recv() {
            recorder.sample(&r);
        }
        recorder.write_settled(writer, true)?;
        let summary = load_result.context("load generator failed")?;
        measures.lateness = Some(summary.lateness());
        measures.delivery = Some(super::delivery::delivery(summary.sent_total(), counted));
        measures.meter = Some(meter);
        info!(
            trial = self.trial,
            method = %self.method.name,
            sent = summary.sent_total(),
            target = summary.target_total(),
            "method run finished"
        );
        Ok(measures)
    }
}

/// What one method run returns to the runner besides its rows.
pub struct MethodResult {
    pub versions: Vec<String>,
    pub measures: Measures,
}

/// Harness-side measurements of one method run.
#[derive(Default)]
pub struct Measures {
    /// `(t_s, idle % of all cores)` per second, `t_s` as in brokers.csv.
    pub host_idle: Vec<(u64, f64)>,
    /// The generator's lateness against its deadlines (`None` if it did not finish).
    pub lateness: Option<loadgen::Lateness>,
    /// Wave placement and harness cost, while the run is under way ...
    meter: Option<HarnessMeter>,
    /// ... and when it is over (`None` if the load did not finish).
    pub harness: Option<HarnessMeasures>,
    /// CPU time of the dispatcher (its thread here, its process on a host), when known.
    dispatcher_cpu: Option<Duration>,
    /// Messages sent against the brokers' own count (`None` if the load did not finish).
    pub delivery: Option<crate::report::delivery::Delivery>,
}

impl Measures {
    /// Mean and lowest host idle % over `start..=end` (t_s), if any second was sampled.
    pub fn host_idle_over(&self, start: u64, end: u64) -> Option<(f64, f64)> {
        let idle: Vec<f64> = self
            .host_idle
            .iter()
            .filter(|(t, _)| (start..=end).contains(t))
            .map(|(_, idle)| *idle)
            .collect();
        (!idle.is_empty()).then(|| {
            let mean = idle.iter().sum::<f64>() / idle.len() as f64;
            (mean, idle.iter().copied().fold(f64::INFINITY, f64::min))
        })
    }
}

/// Client id = this prefix + publisher name (moves.csv joins on it).
fn client_id_prefix(trial: u32, method: &str) -> String {
    format!("t{trial}-{method}-")
}

/// A load event into the recorder; a finished publisher's row and outages into the files (and
/// the outages kept for `moves.csv`).
fn record_event(
    recorder: &mut Recorder,
    writer: &mut ResultsWriter,
    outages: &mut Vec<crate::report::OutageRow>,
    event: &LoadEvent,
) -> anyhow::Result<()> {
    if let Some(row) = recorder.load_event(event) {
        writer.publisher_row(&row)?;
        for outage in recorder.take_outages() {
            writer.outage_row(&outage)?;
            outages.push(outage);
        }
    }
    Ok(())
}
