//! The agents of a method run's local brokers: one per broker, feeding the dispatcher (if any)
//! and the recorder, started again when a fault brings a broker back. Brokers on hosts have
//! theirs beside them, started by the host session.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use super::prom_feed;
use crate::agent;
use crate::broker::RunningBroker;
use crate::scenario::CpuSampling;

/// Starts agents for brokers, at the start and again when a fault brings a broker back.
pub(super) struct AgentSet {
    pub(super) report_addr: Option<String>,
    /// Prometheus-fed: each agent serves `/metrics` on its broker's port.
    pub(super) metrics_ports: Option<prom_feed::AgentPorts>,
    pub(super) cpu: CpuSampling,
    pub(super) interval: Duration,
    pub(super) samples: mpsc::UnboundedSender<crate::load_report::LoadReport>,
    pub(super) tasks: TaskTracker,
    pub(super) stop: CancellationToken,
}

impl AgentSet {
    /// The agent's own stop token; `None` for a broker that cannot be sampled from here.
    pub(super) fn spawn(&self, broker: &RunningBroker) -> Option<CancellationToken> {
        if broker.host().is_some() {
            return None; // its agent runs beside it, started by the host session
        }
        let Some(mut cfg) = broker.agent_config(self.interval) else {
            warn!(broker = %broker.id, "no agent for an external broker: run `mqdispatch agent --host` on its machine");
            return None;
        };
        cfg.dispatchers = self.report_addr.iter().cloned().collect();
        if self.cpu == CpuSampling::Host {
            // The paper's way: busy share of the whole machine from /proc/stat.
            cfg.cpu = agent::CpuSource::Host;
            cfg.capacity_cores = None;
        }
        let exposed = self
            .metrics_ports
            .as_ref()
            .and_then(|ports| ports.listener(&broker.id))
            .map(|listener| (listener, Arc::new(agent::metrics::AgentMetrics::default())));
        cfg.metrics = exposed.as_ref().map(|(_, m)| m.clone());
        let token = self.stop.child_token();
        let tx = self.samples.clone();
        let id = broker.id.clone();
        let agent_token = token.clone();
        self.tasks.spawn(async move {
            // The port closes with its agent: Prometheus then sees the target down, as the
            // dispatcher would see its reports stop.
            let serve_token = agent_token.child_token();
            let serving = async {
                if let Some((listener, metrics)) = exposed {
                    let _ = crate::metrics::serve(listener, metrics, serve_token.clone()).await;
                }
            };
            let sampling = async {
                let result = agent::run(cfg, Some(tx), agent_token).await;
                serve_token.cancel();
                result
            };
            let (result, ()) = tokio::join!(sampling, serving);
            if let Err(e) = result {
                warn!(broker = %id, error = %e, "agent stopped");
            }
        });
        Some(token)
    }
}
