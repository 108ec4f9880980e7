//! `mqdispatch clock serve`: answers each [`REQUEST`] byte with this host's clock.
//!
//! Bounded: at most [`MAX_CONNECTIONS`] at once (more are closed on accept), each closed after a
//! byte other than [`REQUEST`], [`IDLE`] without a request, or [`MAX_REQUESTS`] answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{REQUEST, realtime_us};

pub const MAX_CONNECTIONS: usize = 64;
pub const IDLE: Duration = Duration::from_secs(10);
pub const MAX_REQUESTS: u64 = 100_000;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0: any free port; the bound address is printed first as
    /// `listening on ADDR`).
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Stop after this long (default: only on SIGINT/SIGTERM/SIGHUP).
    #[arg(long = "for", value_name = "DURATION", value_parser = crate::duration::parse_arg)]
    run_for: Option<Duration>,
}

pub(super) async fn cli_main(args: ServeArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let cancel = CancellationToken::new();
    // Before the announcement: a signal sent as soon as `listening on` is read stops us cleanly.
    let _signals = crate::shutdown::cancel_on_signal(
        &cancel,
        |signal| tracing::info!(%signal, "clock service stopping"),
    )?;
    println!("listening on {}", listener.local_addr()?);
    if let Some(limit) = args.run_for {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(limit) => cancel.cancel(),
                _ = cancel.cancelled() => {}
            }
        });
    }
    serve(listener, cancel).await;
    Ok(())
}

/// Serves `listener` until `cancel`, then closes every connection and returns.
pub async fn serve(listener: TcpListener, cancel: CancellationToken) {
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: pause instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "clock service full: connection closed");
            continue;
        };
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = cancel.cancelled() => {}
                end = answer(stream) => tracing::debug!(%peer, %end, "clock connection closed"),
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum End {
    #[error("closed by the client")]
    Closed,
    #[error("idle")]
    Idle,
    #[error("sent {0:#04x}, not a request")]
    Unexpected(u8),
    #[error("answered the most requests one connection gets")]
    Enough,
    #[error("{0}")]
    Io(std::io::Error),
}

async fn answer(mut stream: TcpStream) -> End {
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; 64];
    let mut answered = 0u64;
    loop {
        let n = match tokio::time::timeout(IDLE, stream.read(&mut buf)).await {
            Err(_) => return End::Idle,
            Ok(Err(e)) => return End::Io(e),
            Ok(Ok(0)) => return End::Closed,
            Ok(Ok(n)) => n,
        };
        for &byte in &buf[..n] {
            if byte != REQUEST {
                return End::Unexpected(byte);
            }
            if answered == MAX_REQUESTS {
                return End::Enough;
            }
            // Stamped as late as possible: right before the write.
            let now = realtime_us().to_be_bytes();
            // Bounded like the read: a client that asks and never reads loses its slot.
            match tokio::time::timeout(IDLE, stream.write_all(&now)).await {
                Err(_) => return End::Idle,
                Ok(Err(e)) => return End::Io(e),
                Ok(Ok(())) => {}
            }
            answered += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn started() -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(listener, cancel.clone()));
        (addr, cancel, server)
    }

    async fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
            .await
            .expect("the server closes the connection")
            .unwrap();
        rest
    }

    #[tokio::test]
    async fn each_request_byte_gets_the_clock_and_any_other_byte_closes() {
        let (addr, cancel, server) = started().await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let before = realtime_us();
        // Two requests in one segment, then a stray byte, then a request that must go unanswered.
        stream.write_all(b"ttxt").await.unwrap();
        let answers = read_to_end(&mut stream).await;
        let after = realtime_us();
        assert_eq!(answers.len(), 16, "{answers:?}");
        for chunk in answers.chunks(8) {
            let t = i64::from_be_bytes(chunk.try_into().unwrap());
            assert!(before <= t && t <= after, "{before} <= {t} <= {after}");
        }
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("serve returns after cancel")
            .unwrap();
    }

    #[tokio::test]
    async fn cancel_closes_open_connections() {
        let (addr, cancel, server) = started().await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"t").await.unwrap();
        let mut first = [0u8; 8];
        stream.read_exact(&mut first).await.unwrap();
        cancel.cancel();
        assert!(read_to_end(&mut stream).await.is_empty());
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("serve returns after cancel")
            .unwrap();
    }
}
