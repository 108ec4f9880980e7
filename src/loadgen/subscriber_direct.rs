//! A subscriber member's own connection on a bare socket (plain TCP; TLS members use rumqttc):
//! SUBSCRIBE, then read PUBLISHes in bulk, acknowledge QoS 1, ping when quiet.
//!
//! Why not rumqttc here: brokers write to subscribers with Nagle's algorithm on (Mosquitto's
//! default, and rumqttd's), so a broker holds each next small PUBLISH until the previous one is
//! acknowledged, and the receiver's delayed ACK then sets the pace: measured through rumqttc,
//! p50 latency 8 ms on loopback where mosquitto_sub and Paho saw 0.05–0.1 ms on the same stream.
//! This path asks the kernel for an immediate ACK (`TCP_QUICKACK`) after every read, which the
//! kernel otherwise clears as it goes, so latency measures the broker, not the ACK timer.

use std::io;
use std::os::fd::AsRawFd;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PubAck, Publish, Subscribe, SubscribeReasonCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::placement::PING_AFTER;
use crate::proto::RedirectReason;

/// Largest packet accepted from the broker.
const MAX_PACKET_BYTES: u32 = 16 * 1024 * 1024;
const PINGREQ: [u8; 2] = [0xC0, 0x00];
/// Read buffer: many PUBLISHes per read when they queue up.
const READ_CAPACITY: usize = 64 * 1024;

/// Why a member's connection ended.
#[derive(Debug)]
pub(super) struct Dropped {
    pub error: String,
    /// A server DISCONNECT 0x9C/0x9D's reason and Server Reference.
    pub moved: Option<(RedirectReason, String)>,
}

impl From<String> for Dropped {
    fn from(error: String) -> Self {
        Dropped { error, moved: None }
    }
}

impl From<io::Error> for Dropped {
    fn from(e: io::Error) -> Self {
        Dropped::from(e.to_string())
    }
}

impl From<anyhow::Error> for Dropped {
    fn from(e: anyhow::Error) -> Self {
        Dropped::from(e.to_string())
    }
}

/// A subscribed bare connection.
pub(super) struct DirectSubscription {
    stream: TcpStream,
    buf: BytesMut,
    /// PUBACKs (QoS 1) owed after the current read, written in one go.
    acks: BytesMut,
    last_write: Instant,
}

impl DirectSubscription {
    /// Sends SUBSCRIBE (packet id 1) and reads up to its SUBACK.
    pub(super) async fn subscribe(
        mut stream: TcpStream,
        filter: &str,
        qos: QoS,
    ) -> anyhow::Result<DirectSubscription> {
        let mut out = BytesMut::new();
        let mut subscribe = Subscribe::new(Filter::new(filter, qos), None);
        subscribe.pkid = 1;
        subscribe.write(&mut out)?;
        stream.write_all(&out).await?;
        let mut sub = DirectSubscription {
            stream,
            buf: BytesMut::with_capacity(READ_CAPACITY),
            acks: BytesMut::new(),
            last_write: Instant::now(),
        };
        loop {
            sub.fill().await?;
            while let Some(packet) = sub.next_packet()? {
                if let Packet::SubAck(ack) = packet {
                    return match ack.return_codes.first() {
                        Some(SubscribeReasonCode::Success(_)) => Ok(sub),
                        other => Err(anyhow::anyhow!(
                            "broker refused SUBSCRIBE {filter}: {other:?}"
                        )),
                    };
                }
            }
        }
    }

    /// Waits for the next read (or the time to ping), and returns its PUBLISHes through `each`.
    /// `Err`: the connection is over (with where to go, if a server DISCONNECT said so).
    pub(super) async fn receive(&mut self, mut each: impl FnMut(&Publish)) -> Result<(), Dropped> {
        let ping_at = self.last_write + PING_AFTER;
        tokio::select! {
            r = self.fill() => r.map_err(Dropped::from)?,
            () = tokio::time::sleep_until(ping_at) => {
                self.write(&PINGREQ).await?;
                return Ok(());
            }
        }
        while let Some(packet) = self.next_packet()? {
            match packet {
                Packet::Publish(p) => {
                    each(&p);
                    if p.qos == QoS::AtLeastOnce {
                        PubAck::new(p.pkid, None)
                            .write(&mut self.acks)
                            .map_err(|e| Dropped::from(e.to_string()))?;
                    }
                }
                Packet::Disconnect(d) => {
                    return Err(Dropped {
                        error: format!("the broker sent DISCONNECT {:?}", d.reason_code),
                        moved: crate::proto::disconnect_redirect(&d),
                    });
                }
                _ => {}
            }
        }
        if !self.acks.is_empty() {
            let acks = self.acks.split();
            self.write(&acks).await?;
        }
        Ok(())
    }

    /// Sends DISCONNECT (normal), best effort.
    pub(super) async fn disconnect(&mut self) {
        let _ = self.write(&[0xE0, 0x00]).await;
    }

    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.last_write = Instant::now();
        Ok(())
    }

    /// Reads what the socket holds (waiting for at least one byte), then asks for an immediate
    /// ACK of what arrives next.
    async fn fill(&mut self) -> io::Result<()> {
        if self.buf.capacity() - self.buf.len() < READ_CAPACITY / 4 {
            self.buf.reserve(READ_CAPACITY);
        }
        loop {
            self.stream.readable().await?;
            match self.stream.try_read_buf(&mut self.buf) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed by the broker",
                    ));
                }
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        quickack(&self.stream);
        Ok(())
    }

    /// The next whole packet in the buffer, if any.
    fn next_packet(&mut self) -> anyhow::Result<Option<Packet>> {
        match Packet::read(&mut self.buf, Some(MAX_PACKET_BYTES)) {
            Ok(p) => Ok(Some(p)),
            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(anyhow::anyhow!("malformed packet from the broker: {e:?}")),
        }
    }
}

/// `TCP_QUICKACK` on: ACK what arrives without the delayed-ACK timer. The kernel leaves quick
/// mode on its own, so this is asked again after every read; failure only costs latency.
fn quickack(stream: &TcpStream) {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a socket fd we own, reading one c_int of the given length.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
