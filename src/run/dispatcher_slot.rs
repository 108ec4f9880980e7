//! The in-process dispatcher of a method run, stoppable and restartable on the same ports so a
//! scenario can take it down (`kind: restart-dispatcher`) while publishers keep their brokers.
//!
//! It runs on a thread of its own with its own single-threaded runtime, as a dispatcher process
//! would: its handshakes are not queued behind the load generator's tasks (ten thousand of them
//! in a fleet), and its CPU time is its thread's, measured apart from the harness's.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::dispatcher::rebalance::MoveRecord;
use crate::dispatcher::tls::TlsListener;
use crate::dispatcher::{self, Decision, DispatcherConfig};

pub(super) struct DispatcherSlot {
    listen: SocketAddr,
    reports: SocketAddr,
    /// The TLS client port and its acceptor, for a `tls: true` scenario.
    tls: Option<(SocketAddr, tokio_rustls::TlsAcceptor)>,
    cfg: DispatcherConfig,
    decisions: mpsc::UnboundedSender<Decision>,
    moves: mpsc::UnboundedSender<MoveRecord>,
    stop: CancellationToken,
    /// The running dispatcher's stop token, and its thread's CPU time once it has ended.
    running: Option<(CancellationToken, oneshot::Receiver<Duration>)>,
    /// CPU time of the dispatcher threads that have ended (a restart starts another).
    cpu: Duration,
}

impl DispatcherSlot {
    /// Binds its ports (on `bind`: 127.0.0.1, or the address hosts reach this machine at;
    /// free ports; a TLS one too with `tls`) and starts the dispatcher.
    pub(super) fn start(
        cfg: DispatcherConfig,
        tls: Option<std::sync::Arc<rustls::ServerConfig>>,
        bind: std::net::IpAddr,
        decisions: mpsc::UnboundedSender<Decision>,
        moves: mpsc::UnboundedSender<MoveRecord>,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let any_port = SocketAddr::from((bind, 0));
        let listener = dispatcher::bind_listener(any_port)?;
        let reports = dispatcher::bind_listener(any_port)?;
        let tls = match tls {
            Some(config) => {
                let l = dispatcher::bind_listener(any_port)?;
                Some(TlsListener {
                    listener: l,
                    acceptor: config.into(),
                })
            }
            None => None,
        };
        let mut slot = Self {
            listen: listener.local_addr()?,
            reports: reports.local_addr()?,
            tls: match &tls {
                Some(t) => Some((t.listener.local_addr()?, t.acceptor.clone())),
                None => None,
            },
            cfg,
            decisions,
            moves,
            stop,
            running: None,
            cpu: Duration::ZERO,
        };
        slot.spawn(listener, tls, reports)?;
        Ok(slot)
    }

    /// Where publishers connect: the TLS port when there is one.
    pub(super) fn listen_addr(&self) -> String {
        self.tls
            .as_ref()
            .map_or(self.listen, |(addr, _)| *addr)
            .to_string()
    }

    pub(super) fn report_addr(&self) -> String {
        self.reports.to_string()
    }

    fn spawn(
        &mut self,
        listener: tokio::net::TcpListener,
        tls: Option<TlsListener>,
        reports: tokio::net::TcpListener,
    ) -> std::io::Result<()> {
        // A listener belongs to the runtime that registered it: hand plain sockets over.
        let listener = listener.into_std()?;
        let reports = reports.into_std()?;
        let tls = match tls {
            Some(t) => Some((t.listener.into_std()?, t.acceptor)),
            None => None,
        };
        let token = self.stop.child_token();
        let cfg = self.cfg.clone();
        let decisions = self.decisions.clone();
        let moves = self.moves.clone();
        let run_token = token.clone();
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("dispatcher".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                let result = runtime.map_err(anyhow::Error::from).and_then(|rt| {
                    rt.block_on(async move {
                        let listener = tokio::net::TcpListener::from_std(listener)?;
                        let reports = tokio::net::TcpListener::from_std(reports)?;
                        let tls = match tls {
                            Some((l, acceptor)) => Some(TlsListener {
                                listener: tokio::net::TcpListener::from_std(l)?,
                                acceptor,
                            }),
                            None => None,
                        };
                        let extras = dispatcher::Extras {
                            tls,
                            metrics: None,
                            moves: Some(moves),
                        };
                        dispatcher::run_with(
                            listener,
                            Some(reports),
                            cfg,
                            Some(decisions),
                            extras,
                            run_token,
                        )
                        .await
                    })
                });
                if let Err(e) = result {
                    warn!(error = %e, "dispatcher stopped with an error");
                }
                let _ = done_tx.send(crate::agent::cpu::own_thread_cpu());
            })?;
        self.running = Some((token, done_rx));
        Ok(())
    }

    /// CPU time the dispatcher's threads used so far (each counted once it has stopped).
    pub(super) fn cpu_time(&self) -> Duration {
        self.cpu
    }

    /// Stops the dispatcher and waits until its ports are closed.
    pub(super) async fn stop(&mut self) {
        if let Some((token, done)) = self.running.take() {
            token.cancel();
            match tokio::time::timeout(Duration::from_secs(5), done).await {
                Ok(Ok(cpu)) => self.cpu += cpu,
                Ok(Err(_)) => warn!("the dispatcher thread ended without a word"),
                Err(_) => warn!("the dispatcher did not stop within 5 s"),
            }
        }
    }

    /// Starts a fresh dispatcher (empty load table, as after a process restart) on the same
    /// ports; agents reconnect to it by themselves.
    pub(super) async fn restart(&mut self) -> std::io::Result<()> {
        self.stop().await;
        let listener = dispatcher::bind_listener(self.listen)?;
        let reports = dispatcher::bind_listener(self.reports)?;
        let tls = match &self.tls {
            Some((addr, acceptor)) => Some(TlsListener {
                listener: dispatcher::bind_listener(*addr)?,
                acceptor: acceptor.clone(),
            }),
            None => None,
        };
        self.spawn(listener, tls, reports)
    }
}
