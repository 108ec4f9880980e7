//! One client: read its CONNECT within the handshake timeout, answer, close.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::metrics::Refusal;
use super::placer::Placer;
use crate::proto::{self, Hello};

/// After answering a client that sent more than its CONNECT, how long to wait for it to close.
const LINGER: Duration = Duration::from_millis(500);

pub async fn serve(mut stream: TcpStream, peer: SocketAddr, placer: &Placer) {
    let accepted = std::time::Instant::now();
    // No TCP_NODELAY needed: the CONNACK is the first data sent, which Nagle never holds back.
    let hello = tokio::time::timeout(
        placer.handshake_timeout,
        proto::read_hello(&mut stream, placer.max_packet_bytes),
    )
    .await;
    let answer = match hello {
        Ok(Ok(Hello::V5 { client_id })) => placer.place(&client_id),
        Ok(Ok(Hello::Legacy { level })) => {
            placer.metrics.refused(Refusal::LegacyProtocol);
            tracing::debug!(%peer, level, "MQTT 3.x client: refused (no redirection before v5)");
            proto::legacy_refusal().freeze()
        }
        Ok(Err(error)) => {
            placer.metrics.refused(Refusal::Malformed);
            tracing::debug!(%peer, %error, "bad first packet: closed");
            return;
        }
        Err(_) => {
            placer.metrics.refused(Refusal::HandshakeTimeout);
            tracing::debug!(%peer, timeout = ?placer.handshake_timeout, "no CONNECT in time: closed");
            return;
        }
    };
    let answered = tokio::time::timeout(placer.handshake_timeout, stream.write_all(&answer)).await;
    if !matches!(answered, Ok(Ok(()))) {
        tracing::debug!(%peer, "client went away before its CONNACK was sent");
        return;
    }
    placer
        .metrics
        .handshake
        .observe(accepted.elapsed().as_secs_f64());
    // Closing with unread input makes the kernel send RST, which can destroy the CONNACK before
    // the client reads it. The usual client sent nothing more: close at once. A client that
    // pipelined packets after its CONNECT gets a short, bounded wait for its own close.
    if drain_ready(&stream) {
        // Send our FIN now, then read until the client's.
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 512];
        let _ = tokio::time::timeout(LINGER, async {
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }
}

/// Reads whatever is already buffered without waiting; true if there was any.
fn drain_ready(stream: &TcpStream) -> bool {
    let mut sink = [0u8; 512];
    let mut any = false;
    while let Ok(n) = stream.try_read(&mut sink) {
        if n == 0 {
            break;
        }
        any = true;
    }
    any
}
