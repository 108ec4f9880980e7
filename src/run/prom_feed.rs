//! A method fed through Prometheus (`source: prometheus`): every agent serves
//! `/metrics` on a loopback port of its own, a real Prometheus server scrapes them every
//! `scrape_interval`, and the dispatcher queries it instead of taking reports.
//!
//! The ports are bound before the server starts (its config names them) and kept per broker,
//! so an agent restarted by a fault serves on the same target again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::InputError;
use crate::dispatcher::source::{PrometheusSource, Stale};
use crate::dispatcher::{Metric, prometheus};
use crate::load_report::LoadReport;
use crate::prom_server::PromServer;

/// The agents' `/metrics` ports, by broker id.
#[derive(Debug)]
pub(super) struct AgentPorts {
    /// The address, and the listener bound for it until its first agent takes it.
    ports: Mutex<HashMap<String, (SocketAddr, Option<std::net::TcpListener>)>>,
    targets: Vec<String>,
}

impl AgentPorts {
    /// One free loopback port per broker.
    pub(super) fn bind(broker_ids: &[String]) -> std::io::Result<Self> {
        let mut ports = HashMap::new();
        let mut targets = Vec::new();
        for id in broker_ids {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            targets.push(addr.to_string());
            ports.insert(id.clone(), (addr, Some(listener)));
        }
        Ok(Self {
            ports: Mutex::new(ports),
            targets,
        })
    }

    /// The scrape targets (`127.0.0.1:PORT`), one per broker.
    pub(super) fn targets(&self) -> &[String] {
        &self.targets
    }

    /// The listener for `broker`'s agent: the pre-bound one first, then the same address again
    /// (std binds with SO_REUSEADDR, so a port just closed can be taken back).
    pub(super) fn listener(&self, broker: &str) -> Option<tokio::net::TcpListener> {
        let mut ports = self.ports.lock().expect("invariant: lock not poisoned");
        let (addr, bound) = ports.get_mut(broker)?;
        let std_listener = match bound.take() {
            Some(l) => Ok(l),
            None => std::net::TcpListener::bind(*addr),
        };
        let listener = std_listener
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::TcpListener::from_std);
        match listener {
            Ok(l) => Some(l),
            Err(e) => {
                warn!(broker, %addr, error = %e, "agent metrics port unavailable: Prometheus loses this target");
                None
            }
        }
    }
}

/// When each agent measured the value it exposes: decisions log the true age of their inputs.
pub(super) const SAMPLE_TIME_QUERY: &str = "mqdispatch_agent_sample_timestamp_seconds";

/// The PromQL for a metric over the agents' gauges (broker id in the `broker` label).
pub(super) fn query_for(metric: Metric) -> Result<&'static str, InputError> {
    match metric {
        Metric::Cpu => Ok("mqdispatch_agent_cpu_percent"),
        Metric::MsgRate => Ok("mqdispatch_agent_msgs_in_per_second"),
        Metric::Connections => Ok("mqdispatch_agent_connections"),
        Metric::Composite => Err(InputError(
            "metric composite cannot be fed through Prometheus (validation refuses it)".into(),
        )),
    }
}

/// Starts the run's Prometheus (storage under `dir`) scraping `ports`, and the source that
/// queries it for `metric`.
pub(super) async fn start(
    dir: &Path,
    ports: &AgentPorts,
    scrape_interval: Duration,
    metric: Metric,
) -> anyhow::Result<(PromServer, PrometheusSource)> {
    let query = query_for(metric)?;
    let server = PromServer::start(dir, ports.targets(), scrape_interval).await?;
    let source = PrometheusSource::new(&server.url, query, "broker", Stale::Down)?
        .with_time_query(Some(SAMPLE_TIME_QUERY))?;
    Ok((server, source))
}

/// Waits until the server answers the query with a series for each of `brokers` (its scrape
/// manager applies new targets only every few seconds), meanwhile keeping the agents' latest
/// sample per broker in `early`; `false` when stopped or after `within`.
pub(super) async fn await_series(
    source: &PrometheusSource,
    brokers: &[String],
    samples: &mut mpsc::UnboundedReceiver<LoadReport>,
    early: &mut Vec<LoadReport>,
    within: Duration,
    stop: &CancellationToken,
) -> bool {
    let ready = async {
        loop {
            if let Ok(points) = prometheus::query(source, Duration::from_secs(2)).await
                && brokers
                    .iter()
                    .all(|b| points.iter().any(|p| &p.broker == b))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::pin!(ready);
    let deadline = tokio::time::sleep(within);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut ready => return true,
            Some(r) = samples.recv() => {
                early.retain(|e| e.broker != r.broker);
                early.push(r);
            }
            () = &mut deadline => {
                warn!(?within, "Prometheus has not answered for every broker yet: starting anyway");
                return true;
            }
            () = stop.cancelled() => return false,
        }
    }
}

/// Stops the server if one runs (teardown of every exit path).
pub(super) async fn stop(server: &mut Option<PromServer>) {
    if let Some(server) = server.take()
        && let Err(e) = server.stop().await
    {
        warn!(error = %e, "stopping Prometheus failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_port_is_taken_back_after_its_agent_stopped() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let ports = AgentPorts::bind(&["b1".into(), "b2".into()]).unwrap();
        assert_eq!(ports.targets().len(), 2);
        let first = ports.listener("b1").unwrap();
        let addr = first.local_addr().unwrap();
        assert_eq!(addr.to_string(), ports.targets()[0]);
        drop(first);
        let again = ports.listener("b1").unwrap();
        assert_eq!(again.local_addr().unwrap(), addr);
        assert!(ports.listener("b3").is_none());
        assert!(query_for(Metric::Composite).is_err());
    }
}
