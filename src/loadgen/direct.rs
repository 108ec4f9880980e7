//! The lean per-message send path: after placement the publisher's own task owns the broker
//! socket. The task the timer wakes stamps the pre-encoded PUBLISH ([`PublishFrame`]) and
//! writes it with one `write(2)`: no channel, no second task, no encoding or allocation per
//! message. The same task reads what the broker sends (PUBACK at QoS 1, PINGRESP, a server
//! DISCONNECT 0x9C/0x9D with its Server Reference) and pings after a quiet spell.
//!
//! The payload header's send time is taken immediately before the `write(2)` of that PUBLISH;
//! its sequence number is the publisher's count of messages issued so far ([`Pacer::sequence`]).
//! A message counts as sent once that write has returned. At QoS 1 at most `inflight_limit`
//! PUBLISHes await their PUBACK: a slow broker slows the publisher, it never queues without
//! bound.
//!
//! [`Pacer::sequence`]: super::schedule::Pacer::sequence

use std::io;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::frame::PublishFrame;
use super::placement::PING_AFTER;
use super::publisher::{
    CANCEL_GRACE, DISCONNECT_GRACE, PACE_OVERRUN, Pacing, PublisherCtx, Seconds, SessionEnd,
    start_periodic,
};
use crate::payload::{Header, now_us};
use crate::proto::RedirectReason;

/// DISCONNECT, reason 0x00 (normal), no properties.
const DISCONNECT: [u8; 2] = [0xE0, 0x00];
const PINGREQ: [u8; 2] = [0xC0, 0x00];
/// Largest packet read from the broker (it sends only acks, PINGRESP and DISCONNECT).
const MAX_INCOMING_BYTES: u32 = 64 * 1024;

/// One connection's life on a bare socket: pace and write until the schedule ends (or
/// [`PACE_OVERRUN`] past `end`), then DISCONNECT; on cancellation DISCONNECT promptly.
pub(super) async fn drive(
    ctx: &PublisherCtx,
    stream: &mut TcpStream,
    pacing: &mut Pacing<'_>,
    seconds: &mut Seconds<'_>,
    end: Instant,
    cancel: &CancellationToken,
) -> SessionEnd {
    let mut incoming = Incoming::new(ctx.qos, ctx.connector.inflight_limit);
    let end_reason = tokio::select! {
        biased;
        _ = cancel.cancelled() => SessionEnd::Cancelled,
        r = tokio::time::timeout_at(end + PACE_OVERRUN, pace(ctx, stream, &mut incoming, pacing, seconds)) => {
            r.unwrap_or(SessionEnd::Done)
        }
    };
    let grace = match end_reason {
        SessionEnd::Dropped { .. } => return end_reason,
        SessionEnd::Cancelled => CANCEL_GRACE,
        SessionEnd::Done => DISCONNECT_GRACE,
    };
    let close = async {
        if matches!(end_reason, SessionEnd::Done) {
            // At QoS 1, the last PUBACKs come in first: a clean end leaves nothing unacknowledged.
            while incoming.inflight > 0 && incoming.read_from(stream).await.is_ok() {}
        }
        stream.write_all(&DISCONNECT).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(grace, close).await;
    end_reason
}

async fn pace(
    ctx: &PublisherCtx,
    stream: &mut TcpStream,
    incoming: &mut Incoming,
    pacing: &mut Pacing<'_>,
    seconds: &mut Seconds<'_>,
) -> SessionEnd {
    let mut frame = PublishFrame::new(&ctx.topic, ctx.qos, &ctx.payload);
    let mut periodic = start_periodic(ctx, pacing);
    let Pacing {
        pacer,
        lateness,
        timer,
    } = pacing;
    let mut last_write = Instant::now();
    loop {
        let now = Instant::now();
        seconds.observe();
        for _ in 0..pacer.owed(now) {
            while incoming.window_full() {
                if let Err(end) = incoming.read_from(stream).await {
                    return end;
                }
            }
            if let Some(due) = pacer.next_due() {
                lateness.record(Instant::now().saturating_duration_since(due));
            }
            let pkid = incoming.next_pkid();
            let header = Header {
                sent_us: now_us(),
                seq: pacer.sequence(),
            };
            if let Err(error) = stream.write_all(frame.stamp(header, pkid)).await {
                return incoming.after_write_error(stream, error);
            }
            pacer.issue();
            seconds.written.fetch_add(1, Ordering::Relaxed);
            last_write = now;
        }
        if now.saturating_duration_since(last_write) >= PING_AFTER {
            if let Err(error) = stream.write_all(&PINGREQ).await {
                return incoming.after_write_error(stream, error);
            }
            last_write = now;
        }
        let Some(next_due) = pacer.next_due() else {
            return SessionEnd::Done;
        };
        let wake = next_due
            .min(ctx.clock.next_second(now))
            .min(last_write + PING_AFTER);
        let wait = async {
            match *timer {
                Some(timer) if periodic => {
                    // Each tick is one deadline (or several, after a late wake-up); the seconds
                    // are cut at the first tick after each boundary.
                    if let Err(error) = timer.tick().await {
                        warn!(publisher = %ctx.name, %error, "periodic timer failed: one-shot from now");
                        periodic = false;
                    }
                }
                Some(timer) if timer.sleep_until(wake.into_std()).await.is_ok() => {}
                _ => tokio::time::sleep_until(wake).await,
            }
        };
        tokio::select! {
            biased;
            () = wait => {}
            ready = stream.readable() => {
                let read = match ready {
                    Ok(()) => incoming.try_read(stream),
                    Err(error) => Err(dropped(error.to_string(), None)),
                };
                if let Err(end) = read {
                    return end;
                }
            }
        }
    }
}

fn dropped(error: String, moved: Option<(RedirectReason, String)>) -> SessionEnd {
    SessionEnd::Dropped { error, moved }
}

/// What the broker sends back, and the QoS 1 window.
struct Incoming {
    buf: BytesMut,
    qos1: bool,
    inflight: u16,
    inflight_limit: u16,
    last_pkid: u16,
}

impl Incoming {
    fn new(qos: QoS, inflight_limit: u16) -> Incoming {
        Incoming {
            buf: BytesMut::with_capacity(4096),
            qos1: qos != QoS::AtMostOnce,
            inflight: 0,
            inflight_limit: inflight_limit.max(1),
            last_pkid: 0,
        }
    }

    fn window_full(&self) -> bool {
        self.qos1 && self.inflight >= self.inflight_limit
    }

    /// The packet id of the next PUBLISH (1..=65535, cycling; 0 at QoS 0), counted in flight.
    fn next_pkid(&mut self) -> u16 {
        const NO_PACKET_ID: u16 = 0;
        if !self.qos1 {
            return NO_PACKET_ID;
        }
        self.inflight += 1;
        self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
        self.last_pkid
    }

    /// Waits for the socket to be readable and reads.
    async fn read_from(&mut self, stream: &TcpStream) -> Result<(), SessionEnd> {
        stream
            .readable()
            .await
            .map_err(|e| dropped(e.to_string(), None))?;
        self.try_read(stream)
    }

    /// Reads what is there without waiting and handles every whole packet. `Err`: the
    /// connection is over (closed, failed, or a server DISCONNECT, with its reference).
    fn try_read(&mut self, stream: &TcpStream) -> Result<(), SessionEnd> {
        loop {
            match stream.try_read_buf(&mut self.buf) {
                Ok(0) => {
                    self.handle_packets()?;
                    return Err(dropped("connection closed by the broker".into(), None));
                }
                Ok(_) => self.handle_packets()?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => {
                    self.handle_packets()?;
                    return Err(dropped(e.to_string(), None));
                }
            }
        }
    }

    fn handle_packets(&mut self) -> Result<(), SessionEnd> {
        use rumqttc::v5::mqttbytes::Error as CodecError;
        loop {
            match Packet::read(&mut self.buf, Some(MAX_INCOMING_BYTES)) {
                Ok(Packet::PubAck(_)) => self.inflight = self.inflight.saturating_sub(1),
                Ok(Packet::Disconnect(d)) => {
                    let moved = match d.reason_code {
                        DisconnectReasonCode::UseAnotherServer => {
                            Some(RedirectReason::UseAnotherServer)
                        }
                        DisconnectReasonCode::ServerMoved => Some(RedirectReason::ServerMoved),
                        _ => None,
                    }
                    .zip(d.properties.and_then(|p| p.server_reference));
                    return Err(dropped(
                        format!("server sent DISCONNECT {:?}", d.reason_code),
                        moved,
                    ));
                }
                Ok(_) => {} // PINGRESP, or anything else a broker may volunteer
                Err(CodecError::InsufficientBytes(_)) => return Ok(()),
                Err(e) => {
                    return Err(dropped(
                        format!("malformed packet from the broker: {e}"),
                        None,
                    ));
                }
            }
        }
    }

    /// A failed write usually means the broker closed: a DISCONNECT it sent first (with a
    /// Server Reference) may still be waiting in the socket, so read that before giving up.
    fn after_write_error(&mut self, stream: &TcpStream, error: io::Error) -> SessionEnd {
        match self.try_read(stream) {
            Err(end @ SessionEnd::Dropped { moved: Some(_), .. }) => end,
            _ => dropped(error.to_string(), None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_ids_cycle_and_fill_the_window() {
        let mut incoming = Incoming::new(QoS::AtLeastOnce, 2);
        assert_eq!(incoming.next_pkid(), 1);
        assert!(!incoming.window_full());
        assert_eq!(incoming.next_pkid(), 2);
        assert!(incoming.window_full());
        incoming.last_pkid = u16::MAX;
        incoming.inflight = 0;
        assert_eq!(incoming.next_pkid(), 1, "0 is not a packet id");
        let mut qos0 = Incoming::new(QoS::AtMostOnce, 1);
        for _ in 0..3 {
            assert_eq!(qos0.next_pkid(), 0);
        }
        assert!(!qos0.window_full());
    }
}
