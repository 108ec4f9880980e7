//! The move itself, one way per broker kind.
//!
//! - [`MoverKind::Takeover`] (the embedded rumqttd 0.20, or any broker without a control
//!   channel): the broker has no call to disconnect a chosen client, but a new connection with
//!   the same client id drops the old one (a bare TCP close, no DISCONNECT). The
//!   dispatcher pins the client to its new broker first, then connects to the donor with the
//!   client's id and leaves at once. The client sees its connection close, reconnects through the
//!   dispatcher (it has no Server Reference to follow) and is sent to the pinned broker. Cost: one
//!   dispatcher round trip more than the standard path, and the client cannot tell a move from a
//!   broker failure.
//! - [`MoverKind::MosquittoPlugin`]: the standard MQTT v5 way. The project's Mosquitto plugin
//!   takes a `move` order on its control topic ([`super::control`], CONTRACT-11) and sends the
//!   client DISCONNECT 0x9C with the Server Reference of its new broker: the client goes straight
//!   there. Where the broker only allows the public kick (DISCONNECT 0x98, no reference), the
//!   client comes back through the dispatcher like a takeover, and the pin sends it on.

use std::collections::HashMap;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Disconnect, DisconnectReasonCode, Packet};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::control::{ControlClient, ControlError, MoveResult};
use crate::dispatcher::BrokerEntry;
use crate::proto::{self, RedirectReason};

/// Bound on one takeover exchange.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum MoverKind {
    /// Client-id takeover at the donor; the client comes back through the dispatcher.
    Takeover,
    /// `move` orders to the project's Mosquitto plugin (DISCONNECT 0x9C + Server Reference).
    MosquittoPlugin,
}

#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("takeover at {addr}: {error}")]
    Takeover { addr: String, error: String },
    #[error("control of {broker}: {source}")]
    Control {
        broker: String,
        source: ControlError,
    },
}

/// What a move did, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Client-id takeover: the old connection was closed by the broker.
    Takeover,
    /// DISCONNECT 0x9C with a Server Reference.
    #[serde(rename = "disconnect-0x9c")]
    Disconnect9c,
    /// DISCONNECT 0x98 (public kick): the client comes back through the dispatcher.
    #[serde(rename = "kick-0x98")]
    Kick98,
    /// The broker did not know the client (it had left).
    NotConnected,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Takeover => "takeover",
            Outcome::Disconnect9c => "disconnect-0x9c",
            Outcome::Kick98 => "kick-0x98",
            Outcome::NotConnected => "not-connected",
        }
    }
}

/// Moves clients off brokers, one way per broker kind.
pub enum Mover {
    Takeover,
    /// One control connection per broker, config order.
    Mosquitto(Vec<ControlClient>),
}

impl Mover {
    /// Ready to move clients off `brokers` (for the plugin: control connections up, each plugin
    /// answered `hello`).
    pub async fn connect(kind: MoverKind, brokers: &[BrokerEntry]) -> Result<Self, MoveError> {
        match kind {
            MoverKind::Takeover => Ok(Mover::Takeover),
            MoverKind::MosquittoPlugin => {
                let mut clients = Vec::with_capacity(brokers.len());
                for b in brokers {
                    let control =
                        ControlClient::connect(&b.addr, &b.id)
                            .await
                            .map_err(|source| MoveError::Control {
                                broker: b.id.clone(),
                                source,
                            })?;
                    clients.push(control);
                }
                Ok(Mover::Mosquitto(clients))
            }
        }
    }

    /// Moves `client_id` from broker `from` (index into `brokers`) to `to`.
    pub async fn move_client(
        &self,
        client_id: &str,
        brokers: &[BrokerEntry],
        from: usize,
        to: usize,
        reason: RedirectReason,
    ) -> Result<Outcome, MoveError> {
        match self {
            Mover::Takeover => {
                takeover(&brokers[from].addr, client_id).await?;
                Ok(Outcome::Takeover)
            }
            Mover::Mosquitto(controls) => {
                let result = controls[from]
                    .move_client(client_id, &brokers[to].addr, reason)
                    .await
                    .map_err(|source| MoveError::Control {
                        broker: brokers[from].id.clone(),
                        source,
                    })?;
                Ok(match result {
                    MoveResult::Disconnect9c => Outcome::Disconnect9c,
                    MoveResult::Kick98 => Outcome::Kick98,
                    MoveResult::NotConnected => Outcome::NotConnected,
                })
            }
        }
    }

    /// Per-client msgs/s on broker `i`, where the broker can count them (the plugin's `rates`).
    pub async fn rates(&mut self, i: usize) -> Option<HashMap<String, f64>> {
        match self {
            Mover::Takeover => None,
            Mover::Mosquitto(controls) => match controls[i].rates().await {
                Ok(rates) => rates,
                Err(error) => {
                    tracing::warn!(broker = i, %error, "no per-client rates from the plugin");
                    None
                }
            },
        }
    }
}

/// Connects to `addr` as `client_id` (clean start), which makes the broker drop the client's
/// current connection, then leaves with a normal DISCONNECT.
pub async fn takeover(addr: &str, client_id: &str) -> Result<(), MoveError> {
    let fail = |error: String| MoveError::Takeover {
        addr: addr.to_owned(),
        error,
    };
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| fail(e.to_string()))?;
        stream.set_nodelay(true).map_err(|e| fail(e.to_string()))?;
        stream
            .write_all(&proto::connect_packet(client_id))
            .await
            .map_err(|e| fail(e.to_string()))?;
        let connack = proto::read_connack(&mut stream)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if connack.code != ConnectReturnCode::Success {
            return Err(fail(format!("CONNACK {:?}", connack.code)));
        }
        let mut buf = BytesMut::with_capacity(8);
        Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection))
            .write(&mut buf, None)
            .map_err(|e| fail(e.to_string()))?;
        stream
            .write_all(&buf)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let _ = stream.shutdown().await;
        Ok(())
    };
    tokio::time::timeout(TAKEOVER_TIMEOUT, exchange)
        .await
        .map_err(|_| fail(format!("no answer within {TAKEOVER_TIMEOUT:?}")))?
}
