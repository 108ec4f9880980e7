//! The client ports (plain and TLS): a large accept backlog, a cap on concurrent connections per
//! port, one task each.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection;
use super::metrics::Refusal;
use super::placer::Placer;

/// tokio's `TcpListener::bind` uses a backlog of 128, which overflowed under 200 concurrent
/// connectors (1 s SYN retransmits).
const BACKLOG: u32 = 4096;

/// Binds `addr` with a backlog of 4096 (port 0 picks a free port).
pub fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// A connection accepted under a cap, with the permit it holds for its lifetime.
pub struct Admitted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub permit: OwnedSemaphorePermit,
}

/// The next accepted connection; `None` once `cancel` fires. Accept errors (EMFILE and
/// friends) are logged and retried after a short pause instead of spinning. `what` names the
/// port in log lines.
pub async fn accept_next(
    listener: &TcpListener,
    cancel: &CancellationToken,
    what: &'static str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(conn) => return Some(conn),
            Err(e) => {
                tracing::warn!(port = what, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The next connection that fits under `permits`; `None` once `cancel` fires. Over the cap a
/// connection is closed at once: queuing would let a flood of idle sockets grow memory without
/// bound and delay every honest client behind them. `what` names the port in log lines;
/// `over_cap` is called for each connection closed over the cap.
pub async fn accept_capped(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    cancel: &CancellationToken,
    what: &'static str,
    over_cap: impl Fn(),
) -> Option<Admitted> {
    loop {
        let (stream, peer) = accept_next(listener, cancel, what).await?;
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                return Some(Admitted {
                    stream,
                    peer,
                    permit,
                });
            }
            Err(_) => {
                over_cap();
                tracing::warn!(port = what, %peer, "connection cap reached: closed");
            }
        }
    }
}

/// Serves clients until `cancel`, at most `max_connections` at once, one task each; over TLS
/// when `tls` is given (the slot is taken before the TLS handshake starts).
pub async fn accept_loop(
    listener: TcpListener,
    placer: Arc<Placer>,
    max_connections: usize,
    tls: Option<TlsAcceptor>,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    let what = if tls.is_some() {
        "tls clients"
    } else {
        "clients"
    };
    while let Some(Admitted {
        stream,
        peer,
        permit,
    }) = accept_capped(&listener, &permits, &cancel, what, || {
        placer.metrics.refused(Refusal::OverCap)
    })
    .await
    {
        let placer = placer.clone();
        let cancel = cancel.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            placer.metrics.open_connections.inc();
            match &tls {
                None => {
                    cancel
                        .run_until_cancelled(connection::serve(stream, peer, &placer))
                        .await
                }
                Some(tls) => {
                    cancel
                        .run_until_cancelled(connection::serve_tls(stream, peer, &placer, tls))
                        .await
                }
            };
            placer.metrics.open_connections.dec();
            drop(permit);
        });
    }
}
