//! The in-process dispatcher of a method run, stoppable and restartable on the same ports so a
//! scenario can take it down (`kind: restart-dispatcher`) while publishers keep their brokers.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::dispatcher::rebalance::MoveRecord;
use crate::dispatcher::{self, Decision, DispatcherConfig};

pub(super) struct DispatcherSlot {
    listen: SocketAddr,
    reports: SocketAddr,
    cfg: DispatcherConfig,
    decisions: mpsc::UnboundedSender<Decision>,
    moves: mpsc::UnboundedSender<MoveRecord>,
    stop: CancellationToken,
    running: Option<(CancellationToken, JoinHandle<()>)>,
}

impl DispatcherSlot {
    /// Binds both ports (127.0.0.1, free ports) and starts the dispatcher.
    pub(super) fn start(
        cfg: DispatcherConfig,
        decisions: mpsc::UnboundedSender<Decision>,
        moves: mpsc::UnboundedSender<MoveRecord>,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let listener = dispatcher::bind_listener("127.0.0.1:0".parse()?)?;
        let reports = dispatcher::bind_listener("127.0.0.1:0".parse()?)?;
        let mut slot = Self {
            listen: listener.local_addr()?,
            reports: reports.local_addr()?,
            cfg,
            decisions,
            moves,
            stop,
            running: None,
        };
        slot.spawn(listener, reports);
        Ok(slot)
    }

    pub(super) fn listen_addr(&self) -> String {
        self.listen.to_string()
    }

    pub(super) fn report_addr(&self) -> String {
        self.reports.to_string()
    }

    fn spawn(&mut self, listener: tokio::net::TcpListener, reports: tokio::net::TcpListener) {
        let token = self.stop.child_token();
        let cfg = self.cfg.clone();
        let decisions = self.decisions.clone();
        let moves = self.moves.clone();
        let run_token = token.clone();
        let handle = tokio::spawn(async move {
            let run = dispatcher::run_with_moves(
                listener,
                Some(reports),
                cfg,
                Some(decisions),
                Some(moves),
                run_token,
            );
            if let Err(e) = run.await {
                warn!(error = %e, "dispatcher stopped with an error");
            }
        });
        self.running = Some((token, handle));
    }

    /// Stops the dispatcher and waits until its ports are closed.
    pub(super) async fn stop(&mut self) {
        if let Some((token, handle)) = self.running.take() {
            token.cancel();
            if tokio::time::timeout(Duration::from_secs(5), handle)
                .await
                .is_err()
            {
                warn!("the dispatcher did not stop within 5 s");
            }
        }
    }

    /// Starts a fresh dispatcher (empty load table, as after a process restart) on the same
    /// ports; agents reconnect to it by themselves.
    pub(super) async fn restart(&mut self) -> std::io::Result<()> {
        self.stop().await;
        let listener = dispatcher::bind_listener(self.listen)?;
        let reports = dispatcher::bind_listener(self.reports)?;
        self.spawn(listener, reports);
        Ok(())
    }
}
