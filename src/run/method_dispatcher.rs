//! The method's dispatcher: in this process ([`DispatcherSlot`]), or on the host the scenario's
//! `dispatcher_host` names ([`RemoteDispatcher`]). Either fills the same decision and move
//! channels and says when it has a sample of every broker (`cfg.fed`).

use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::dispatcher_slot::DispatcherSlot;
use super::hosts::HostSession;
use super::hosts::dispatcher::RemoteDispatcher;
use crate::dispatcher::rebalance::MoveRecord;
use crate::dispatcher::{Decision, DispatcherConfig};

pub(super) enum MethodDispatcher {
    Here(DispatcherSlot),
    Host(RemoteDispatcher),
}

/// Where a dispatcher's placements and moves go.
pub(super) type Outputs = (UnboundedSender<Decision>, UnboundedSender<MoveRecord>);

impl MethodDispatcher {
    /// Starts `cfg`'s dispatcher where the scenario puts it; `tag` (`t1-proposed`) names its
    /// log on a host; `tls` is for one here (a host's has none: the scenario check refuses it).
    pub(super) async fn start(
        hosts: Option<&HostSession>,
        tag: &str,
        mut cfg: DispatcherConfig,
        tls: Option<std::sync::Arc<rustls::ServerConfig>>,
        (decisions, moves): Outputs,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        if let Some(hosts) = hosts.filter(|h| h.dispatcher_host().is_some()) {
            anyhow::ensure!(tls.is_none(), "a dispatcher on a host has no TLS port");
            let remote = hosts.start_dispatcher(tag, cfg, decisions, moves).await?;
            return Ok(Self::Host(remote));
        }
        let bind = super::hosts::dispatcher_side(hosts, &mut cfg);
        let slot = DispatcherSlot::start(cfg, tls, bind, decisions, moves, stop)?;
        Ok(Self::Here(slot))
    }

    /// Where publishers and subscribers connect.
    pub(super) fn listen_addr(&self) -> String {
        match self {
            Self::Here(slot) => slot.listen_addr(),
            Self::Host(remote) => remote.listen_addr(),
        }
    }

    /// Where agents report.
    pub(super) fn report_addr(&self) -> String {
        match self {
            Self::Here(slot) => slot.report_addr(),
            Self::Host(remote) => remote.report_addr(),
        }
    }

    /// The in-process one, which a `restart-dispatcher` fault restarts.
    pub(super) fn here(&mut self) -> Option<&mut DispatcherSlot> {
        match self {
            Self::Here(slot) => Some(slot),
            Self::Host(_) => None,
        }
    }

    /// Stops it; the CPU time it used (its thread's here, its process's on a host), if known.
    pub(super) async fn stop(&mut self) -> Option<Duration> {
        match self {
            Self::Here(slot) => {
                slot.stop().await;
                Some(slot.cpu_time())
            }
            Self::Host(remote) => remote.stop().await,
        }
    }
}
