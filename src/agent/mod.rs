//! The load agent: every interval, one CPU sample (plus broker-side counters when the broker
//! kind has them) as a [`LoadReport`] JSON line to each dispatcher's report port.
//!
//! - [`cpu`]: CPU sources (process, cgroup, host) and percentages.
//! - [`proc_stat`]: pure parsers for the /proc and cgroup files.
//! - [`counters`]: broker-side received-messages and connection counters, as rates.
//! - [`sender`]: the reconnecting, never-blocking report connection.

pub mod counters;
pub mod cpu;
pub mod metrics;
pub mod proc_stat;
pub mod sender;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use counters::{CounterReading, CounterSource};
pub use cpu::{CpuSampler, CpuSource, SampleError};

use crate::load_report::LoadReport;
use sender::ReportSender;

/// Everything one agent needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub broker_id: String,
    pub cpu: CpuSource,
    /// What 100 % means for a process or cgroup: 1 core unless the broker is capped.
    pub capacity_cores: Option<f64>,
    pub counters: Option<CounterSource>,
    pub interval: Duration,
    /// Report ports (`HOST:PORT`) of the dispatchers to feed; may be empty.
    pub dispatchers: Vec<String>,
    pub token: Option<String>,
    /// The broker's MQTT address (`HOST:PORT`), when the agent should check each interval that
    /// it accepts connections and send dispatchers nothing while it does not: a dead broker on
    /// a live host then goes quiet like a dead host, and the dispatcher takes it out of service.
    pub probe: Option<String>,
    /// Where each sample is also exposed for `/metrics` (`--metrics-listen`).
    pub metrics: Option<Arc<metrics::AgentMetrics>>,
}

/// Whether `addr` completes a TCP handshake within half an interval (the connection is closed
/// at once; brokers may log it as a client that left before CONNECT).
async fn probe(addr: &str, interval: Duration) -> bool {
    matches!(
        tokio::time::timeout(interval / 2, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Samples until `cancel`. Each report goes to every dispatcher (dropped, never waited for, when
/// one is slow or down) and to `samples` if given. Fails when the measured process is gone.
pub async fn run(
    cfg: AgentConfig,
    samples: Option<UnboundedSender<LoadReport>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !cfg.interval.is_zero(),
        crate::InputError("the agent interval must be positive".into())
    );
    let tasks_cancel = cancel.child_token();
    // Dropping the JoinSet aborts the connection and counter tasks on every exit path.
    let mut tasks = JoinSet::new();
    let mut senders: Vec<ReportSender> = cfg
        .dispatchers
        .iter()
        .map(|d| ReportSender::spawn(d.clone(), tasks_cancel.clone(), &mut tasks))
        .collect();
    let counters = cfg.counters.clone().map(|source| {
        let (rx, task) = counters::spawn_reader(source, tasks_cancel.clone());
        tasks.spawn(async move {
            let _ = task.await;
        });
        rx
    });
    let mut rates = counters::RateTracker::default();

    let mut sampler = CpuSampler::new(cfg.cpu.clone(), cfg.capacity_cores);
    sampler.sample()?; // baseline
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + cfg.interval, cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut broker_reachable = true;
    let result = loop {
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            _ = ticker.tick() => {}
        }
        let (back, sample) = tokio::task::spawn_blocking(move || {
            let sample = sampler.sample();
            (sampler, sample)
        })
        .await?;
        sampler = back;
        let cpu_pct = match sample {
            Ok(Some(pct)) => pct,
            Ok(None) => continue,
            Err(e) => break Err(e.into()),
        };
        let reading = counters.as_ref().and_then(|rx| *rx.borrow());
        let report = LoadReport {
            broker: cfg.broker_id.clone(),
            t_ms: crate::now_ms(),
            cpu_pct,
            msgs_in_per_s: reading.and_then(|r| rates.update(r)),
            connections: reading.and_then(|r| r.connections),
            token: cfg.token.clone(),
        };
        let reachable = match &cfg.probe {
            Some(addr) => probe(addr, cfg.interval).await,
            None => true,
        };
        if reachable != broker_reachable {
            broker_reachable = reachable;
            match (reachable, &cfg.probe) {
                (false, Some(addr)) => {
                    warn!(broker = %cfg.broker_id, %addr, "broker refuses connections: reports to dispatchers paused")
                }
                _ => {
                    info!(broker = %cfg.broker_id, "broker accepts connections again: reports resumed")
                }
            }
        }
        if let Some(m) = &cfg.metrics {
            if reachable {
                m.observe(&report);
            } else {
                m.withdraw();
            }
        }
        if reachable {
            let line = report.to_line();
            for sender in &mut senders {
                sender.offer(line.clone());
            }
        }
        if let Some(samples) = &samples {
            let _ = samples.send(report);
        }
    };
    tasks_cancel.cancel();
    result
}

/// `mqdispatch agent`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["pid", "host", "cgroup"])))]
pub struct Args {
    /// Report port of a dispatcher (HOST:PORT); repeat for several. Without one, reports only go
    /// to stdout.
    #[arg(long, value_name = "HOST:PORT")]
    pub dispatcher: Vec<String>,
    /// Broker id as configured at the dispatcher (`--broker ID=HOST:PORT`).
    #[arg(long, value_name = "ID")]
    pub broker_id: String,
    /// Measure one process and all its threads (100 % = one core, or the --cpu-limit).
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Measure the whole host from /proc/stat (100 % = every core busy).
    #[arg(long)]
    pub host: bool,
    /// Measure a cgroup: a v1 cpuacct group directory or a v2 group directory.
    #[arg(long, value_name = "DIR")]
    pub cgroup: Option<PathBuf>,
    /// Sampling interval.
    #[arg(long, default_value = "1s", value_parser = crate::duration::parse_arg)]
    pub interval: Duration,
    /// Shared secret the dispatcher expects in each report.
    #[arg(long, env = "MQDISPATCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Capacity in cores that 100 % stands for (a capped broker's limit, e.g. 0.25).
    #[arg(long, value_name = "CORES")]
    pub cpu_limit: Option<f64>,
    /// Broker-side counters: `rumqttd=HOST:PORT` (the embedded broker's `stats on` address) or
    /// `mosquitto=HOST:PORT` (reads its `$SYS` tree).
    #[arg(long, value_name = "KIND=HOST:PORT")]
    pub counters: Option<CounterSource>,
    /// The broker's MQTT address: checked each interval; while it refuses connections no report
    /// goes to the dispatchers, so they stop sending clients there after 3 intervals.
    #[arg(long, value_name = "HOST:PORT")]
    pub probe: Option<String>,
    /// Serve `GET /metrics` (Prometheus text format) here, e.g. 127.0.0.1:9465.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

pub async fn cli_main(args: Args) -> anyhow::Result<()> {
    if let Some(limit) = args.cpu_limit
        && !(limit.is_finite() && limit > 0.0)
    {
        return Err(crate::InputError(format!(
            "--cpu-limit {limit}: must be a positive number of cores"
        ))
        .into());
    }
    let cpu = match (args.pid, args.cgroup) {
        (Some(pid), _) => CpuSource::Pid(pid),
        (None, Some(path)) => CpuSource::Cgroup { path },
        (None, None) => CpuSource::Host,
    };
    let metrics_listener = match args.metrics_listen {
        Some(addr) => Some(crate::metrics::bind(addr).await?),
        None => None,
    };
    let metrics = metrics_listener
        .as_ref()
        .map(|_| Arc::new(metrics::AgentMetrics::default()));
    let cfg = AgentConfig {
        broker_id: args.broker_id,
        cpu,
        capacity_cores: args.cpu_limit,
        counters: args.counters,
        interval: args.interval,
        dispatchers: args.dispatcher,
        token: args.token,
        probe: args.probe,
        metrics: metrics.clone(),
    };
    info!(broker = %cfg.broker_id, source = ?cfg.cpu, "agent started");
    let cancel = CancellationToken::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<LoadReport>();
    let printer = tokio::spawn(async move {
        while let Some(report) = rx.recv().await {
            print!("{}", report.to_line());
        }
    });
    let mut signals = crate::shutdown::Signals::install()?;
    let server = match (metrics_listener, metrics) {
        (Some(listener), Some(metrics)) => {
            println!("metrics on {}", listener.local_addr()?);
            Some(tokio::spawn(crate::metrics::serve(
                listener,
                metrics,
                cancel.clone(),
            )))
        }
        _ => None,
    };
    let mut agent = tokio::spawn(run(cfg, Some(tx), cancel.clone()));
    let result = tokio::select! {
        signal = signals.recv() => {
            info!(%signal, "shutting down");
            cancel.cancel();
            (&mut agent).await?
        }
        r = &mut agent => r?,
    };
    cancel.cancel();
    let _ = printer.await;
    if let Some(server) = server {
        let _ = server.await;
    }
    if let Err(e) = &result {
        warn!(error = %e, "agent stopped");
    }
    result
}
