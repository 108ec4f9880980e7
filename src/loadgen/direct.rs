//! The lean per-message send path: after placement the publisher's task keeps the broker
//! socket and reads what the broker sends (PUBACK at QoS 1, PINGRESP, a server DISCONNECT
//! 0x9C/0x9D with its Server Reference), while the loader's send thread
//! ([`super::send_thread`]) writes the publisher's pre-encoded PUBLISHes ([`PublishFrame`]) on
//! the same socket, one `send(2)` per message at its deadline, and pings after a
//! quiet spell. No channel, no encoding and no allocation per message.
//!
//! The payload header's send time is taken immediately before the `send(2)` of that PUBLISH;
//! its sequence number is the publisher's count of messages issued so far ([`Pacer::sequence`]).
//! A message counts as sent once the socket has taken all of it. At QoS 1 at most
//! `inflight_limit` PUBLISHes await their PUBACK: a slow broker slows the publisher, it never
//! queues without bound.
//!
//! [`Pacer::sequence`]: super::schedule::Pacer::sequence

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::frame::PublishFrame;
use super::publisher::{
    CANCEL_GRACE, DISCONNECT_GRACE, PACE_OVERRUN, Pacing, PublisherCtx, Seconds, SessionEnd,
};
use super::send_job::{Ended, Handback, Job, Window};
use super::send_thread::Ticket;
use crate::proto::RedirectReason;

/// DISCONNECT, reason 0x00 (normal), no properties.
const DISCONNECT: [u8; 2] = [0xE0, 0x00];
/// Largest packet read from the broker (it sends only acks, PINGRESP and DISCONNECT).
const MAX_INCOMING_BYTES: u32 = 64 * 1024;

/// One connection's life on a bare socket: the send thread paces and writes until the schedule
/// ends (or [`PACE_OVERRUN`] past `end`), then this task DISCONNECTs; on cancellation it
/// DISCONNECTs promptly.
pub(super) async fn drive(
    ctx: &PublisherCtx,
    stream: &mut TcpStream,
    pacing: &mut Pacing<'_>,
    seconds: &mut Seconds,
    end: Instant,
    cancel: &CancellationToken,
) -> SessionEnd {
    let inflight = Arc::new(AtomicU16::new(0));
    let mut incoming = Incoming::new(Arc::clone(&inflight));
    let mut ticket = ctx.send_thread.start(Job {
        socket: stream.as_raw_fd(),
        frame: PublishFrame::new(&ctx.topic, ctx.qos, &ctx.payload),
        pacer: pacing.pacer.clone(),
        lateness: std::mem::take(&mut pacing.lateness),
        seconds: seconds.clone(),
        window: Window::new(
            ctx.qos != QoS::AtMostOnce,
            ctx.connector.inflight_limit,
            inflight,
        ),
        stop_issuing_at: (end + PACE_OVERRUN).into_std(),
    });
    let (end_reason, back) = tokio::select! {
        biased;
        _ = cancel.cancelled() => (SessionEnd::Cancelled, take_back(&mut ticket).await),
        ended = read_while_lent(&mut ticket, stream, &mut incoming) => match ended {
            Ok(back) => match back.ended {
                Ended::WriteFailed(ref error) => {
                    let error = io::Error::new(error.kind(), error.to_string());
                    (incoming.after_write_error(stream, error), back)
                }
                _ => (SessionEnd::Done, back),
            },
            Err(end) => (end, take_back(&mut ticket).await),
        },
    };
    pacing.pacer = back.pacer;
    pacing.lateness = back.lateness;
    *seconds = back.seconds;
    let unsent = (back.unsent, back.unsent_is_publish);
    let grace = match end_reason {
        SessionEnd::Dropped { .. } => return end_reason,
        SessionEnd::Cancelled => CANCEL_GRACE,
        SessionEnd::Done => DISCONNECT_GRACE,
    };
    let close = async {
        // The rest of a packet the socket had not taken goes first: a DISCONNECT inside a
        // PUBLISH would be a malformed packet.
        let (rest, is_publish) = unsent;
        if !rest.is_empty() {
            stream.write_all(&rest).await?;
            if is_publish {
                seconds.written.fetch_add(1, Ordering::Relaxed);
            }
        }
        if matches!(end_reason, SessionEnd::Done) {
            // At QoS 1, the last PUBACKs come in first: a clean end leaves nothing unacknowledged.
            while incoming.inflight() > 0 && incoming.read_from(stream).await.is_ok() {}
        }
        stream.write_all(&DISCONNECT).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(grace, close).await;
    end_reason
}

/// Reads the broker's packets until the send thread hands the job back (`Ok`) or the connection
/// ends first (`Err`: the job is still lent).
async fn read_while_lent(
    ticket: &mut Ticket,
    stream: &TcpStream,
    incoming: &mut Incoming,
) -> Result<Handback, SessionEnd> {
    loop {
        tokio::select! {
            biased;
            back = ticket.handback() => return Ok(back),
            ready = stream.readable() => {
                match ready {
                    Ok(()) => incoming.try_read(stream)?,
                    Err(error) => return Err(dropped(error.to_string(), None)),
                }
                ticket.window_opened();
            }
        }
    }
}

/// Asks the send thread for the job and waits for it.
async fn take_back(ticket: &mut Ticket) -> Handback {
    ticket.stop();
    ticket.handback().await
}

fn dropped(error: String, moved: Option<(RedirectReason, String)>) -> SessionEnd {
    SessionEnd::Dropped { error, moved }
}

/// What the broker sends back, and the QoS 1 window.
struct Incoming {
    buf: BytesMut,
    /// PUBLISHes awaiting their PUBACK: the send thread counts up, PUBACKs count down.
    inflight: Arc<AtomicU16>,
}

impl Incoming {
    fn new(inflight: Arc<AtomicU16>) -> Incoming {
        Incoming {
            buf: BytesMut::with_capacity(4096),
            inflight,
        }
    }

    fn inflight(&self) -> u16 {
        self.inflight.load(Ordering::SeqCst)
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
                Ok(Packet::PubAck(_)) => {
                    let _ = self
                        .inflight
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
                }
                Ok(Packet::Disconnect(d)) => {
                    let moved = crate::proto::disconnect_redirect(&d);
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
