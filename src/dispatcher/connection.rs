//! One client: read its CONNECT within the handshake timeout, answer, close. A subscriber (its
//! CONNECT names a `subscribe` filter) is placed by the subscriber policy; with `--unhinted
//! accept` a client that gives no hint is accepted and its first request decides
//! ([`first_request`]), all within the same timeout. Over TLS, the TLS
//! handshake counts against the same timeout: a client that opens TLS and stalls holds its slot
//! for at most that long.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use bytes::{Bytes, BytesMut};
use rumqttc::v5::mqttbytes::v5::ConnectReturnCode;

use super::Unhinted;
use super::first_request::{self, FirstRequest};
use super::metrics::Refusal;
use super::placer::{Answer, Client, Placer, Transport};
use crate::proto::{self, Hello};

/// After answering a client that sent more than its CONNECT, how long to wait for it to close.
const LINGER: Duration = Duration::from_millis(500);

pub async fn serve(mut stream: TcpStream, peer: SocketAddr, placer: &Placer) {
    let accepted = std::time::Instant::now();
    // No TCP_NODELAY needed: the CONNACK is the first data sent, which Nagle never holds back.
    let deadline = Instant::now() + placer.handshake_timeout;
    if !exchange(&mut stream, peer, placer, deadline, Transport::Plain).await {
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
        linger(&mut stream).await;
    }
}

/// A client of the TLS port: TLS handshake and CONNECT within one handshake timeout, the TLS
/// Server Reference, then close_notify and a bounded wait for the client's close (its TLS
/// records still in flight would otherwise turn our close into a RST).
pub async fn serve_tls(stream: TcpStream, peer: SocketAddr, placer: &Placer, tls: &TlsAcceptor) {
    let deadline = Instant::now() + placer.handshake_timeout;
    let mut stream = match tokio::time::timeout_at(deadline, tls.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake failed: closed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, timeout = ?placer.handshake_timeout, "TLS handshake not done in time: closed");
            return;
        }
    };
    if !exchange(&mut stream, peer, placer, deadline, Transport::Tls).await {
        return;
    }
    let _ = tokio::time::timeout(LINGER, stream.shutdown()).await;
    linger(&mut stream).await;
}

/// Reads the first packet by `deadline` and writes the answer; false when the client is gone.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
    placer: &Placer,
    deadline: Instant,
    transport: Transport,
) -> bool {
    let mut buf = BytesMut::with_capacity(512);
    let hello = tokio::time::timeout_at(
        deadline,
        proto::read_hello_into(&mut *stream, &mut buf, placer.max_packet_bytes),
    )
    .await;
    let answer = match hello {
        Ok(Ok(Hello::V5 {
            client_id,
            declared_rate,
            subscribe,
        })) => {
            if !subscribe.is_empty() {
                let who = Client::Subscriber {
                    filters: &subscribe,
                };
                placer.answer(&client_id, &who, transport, Answer::Connack)
            } else if declared_rate.is_none() && placer.unhinted == Unhinted::Accept {
                let accepted = Accepted {
                    peer,
                    client_id,
                    deadline,
                    transport,
                };
                match accept_then_redirect(stream, buf, placer, accepted).await {
                    Some(answer) => answer,
                    None => return false,
                }
            } else {
                placer.place_over(&client_id, declared_rate, transport)
            }
        }
        Ok(Ok(Hello::Legacy { level })) => {
            placer.metrics.refused(Refusal::LegacyProtocol);
            tracing::debug!(%peer, level, "MQTT 3.x client: refused (no redirection before v5)");
            proto::legacy_refusal().freeze()
        }
        Ok(Err(error)) => {
            placer.metrics.refused(Refusal::Malformed);
            tracing::debug!(%peer, %error, "bad first packet: closed");
            return false;
        }
        Err(_) => {
            placer.metrics.refused(Refusal::HandshakeTimeout);
            tracing::debug!(%peer, timeout = ?placer.handshake_timeout, "no CONNECT in time: closed");
            return false;
        }
    };
    write_answer(stream, peer, placer, &answer).await
}

async fn write_answer<S: AsyncWrite + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
    placer: &Placer,
    answer: &[u8],
) -> bool {
    let answered = tokio::time::timeout(placer.handshake_timeout, async {
        stream.write_all(answer).await?;
        stream.flush().await
    })
    .await;
    if !matches!(answered, Ok(Ok(()))) {
        tracing::debug!(%peer, "client went away before its answer was sent");
        return false;
    }
    true
}

/// A v5 client that gave no hint, with the deadline of its whole exchange.
struct Accepted {
    peer: SocketAddr,
    client_id: String,
    deadline: Instant,
    transport: Transport,
}

/// `--unhinted accept`: CONNACK 0x00, then the client's first SUBSCRIBE or PUBLISH (by the same
/// deadline as its CONNECT) chooses the policy; returns the DISCONNECT that redirects it, or
/// `None` when the connection is to be closed without one.
async fn accept_then_redirect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    mut buf: BytesMut,
    placer: &Placer,
    c: Accepted,
) -> Option<Bytes> {
    let peer = c.peer;
    let success = proto::refusal_connack(ConnectReturnCode::Success);
    if !write_answer(stream, peer, placer, &success).await {
        return None;
    }
    let max = placer.max_packet_bytes;
    let first = tokio::time::timeout_at(
        c.deadline,
        first_request::read_first_request(&mut *stream, &mut buf, max),
    )
    .await;
    let who = match first {
        Ok(Ok(FirstRequest::Subscribe(filters))) => filters,
        Ok(Ok(FirstRequest::Publish)) => {
            let who = Client::Publisher {
                declared_rate: None,
            };
            return Some(placer.answer(&c.client_id, &who, c.transport, Answer::Disconnect));
        }
        Ok(Ok(FirstRequest::Disconnect)) => return None,
        Ok(Err(error)) => {
            placer.metrics.refused(Refusal::Malformed);
            tracing::debug!(%peer, %error, "bad request after CONNACK: closed");
            return None;
        }
        Err(_) => {
            placer.metrics.refused(Refusal::HandshakeTimeout);
            tracing::debug!(%peer, "no SUBSCRIBE or PUBLISH in time: closed");
            return None;
        }
    };
    let who = Client::Subscriber { filters: &who };
    Some(placer.answer(&c.client_id, &who, c.transport, Answer::Disconnect))
}

/// Reads until the client closes, for at most [`LINGER`].
async fn linger<S: AsyncRead + Unpin>(stream: &mut S) {
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
