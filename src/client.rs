//! Redirect-following connect for your own rumqttc v5 devices.
//!
//! No common MQTT client library follows a Server Reference by itself (rumqttc, Paho, MQTT.js,
//! HiveMQ and emqtt all hand it to the application). This module does it for rumqttc 0.25:
//!
//! - [`connect_following_redirects`] asks a dispatcher where to go (CONNECT → CONNACK 0x9C/0x9D
//!   with a Server Reference, read on a plain socket: rumqttc drops a refused CONNACK's
//!   properties) and returns a normal [`AsyncClient`] and a [`FollowingEventLoop`] aimed at that
//!   broker.
//! - [`FollowingEventLoop::poll`] is rumqttc's `poll`, plus: when the broker sends DISCONNECT
//!   0x9C/0x9D with a Server Reference, the next poll connects **there**; when the connection
//!   just closes (or a DISCONNECT carries no reference), the dispatcher is asked again first. The
//!   error is still returned, as rumqttc does, so your loop can log it and back off; keep
//!   polling. The same `AsyncClient` keeps working, and QoS 1 messages not yet acknowledged are
//!   sent again to the new broker (rumqttc would drop them: the new broker has no session).
//! - A subscriber says so in its options: the CONNECT user property `subscribe` = a filter
//!   ([`crate::proto::SUBSCRIBE_PROPERTY`]; `mqdispatch-rate` likewise) is passed on to the
//!   dispatcher, whose subscriber policy then places it. [`FollowingEventLoop::keep_subscribed`]
//!   makes the loop subscribe to its filters at every connection that starts without a session,
//!   so a member moved to another broker (which has no session for it) receives there too.
//!
//! ```no_run
//! use rumqttc::v5::mqttbytes::QoS;
//! use rumqttc::v5::MqttOptions;
//!
//! # async fn device() -> Result<(), mqdispatch::client::ClientError> {
//! let options = |host: &str, port: u16| {
//!     let mut o = MqttOptions::new("sensor-17", host, port);
//!     o.set_keep_alive(std::time::Duration::from_secs(30));
//!     o
//! };
//! let (client, mut events) =
//!     mqdispatch::client::connect_following_redirects("dispatcher.example:1883", options, 10)
//!         .await?;
//! client.publish("sensors/17", QoS::AtLeastOnce, false, b"21.5".to_vec()).await.ok();
//! loop {
//!     match events.poll().await {
//!         Ok(event) => println!("{event:?} at {}", events.broker()),
//!         Err(e) => {
//!             eprintln!("connection: {e}; next: {}", events.broker());
//!             tokio::time::sleep(std::time::Duration::from_millis(100)).await;
//!         }
//!     }
//! }
//! # }
//! ```
//! A runnable version: `examples/follow_redirects.rs`.

use std::collections::VecDeque;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, DisconnectReasonCode, Filter, Packet, Subscribe,
};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Request};

use crate::addr::HostPort;
use crate::proto::{self, ProtoError};

/// Bound on one exchange with the dispatcher.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("dispatcher {addr}: {source}")]
    Dispatcher { addr: String, source: ProtoError },
    #[error("bad Server Reference `{reference}`: {error}")]
    BadReference { reference: String, error: String },
}

/// Builds the client's options for a broker at `host:port` (called once per broker it goes to).
pub type OptionsFor = Box<dyn Fn(&str, u16) -> MqttOptions + Send + Sync>;

/// rumqttc's event loop, aimed at whatever broker the last redirect named.
pub struct FollowingEventLoop {
    /// The wrapped event loop (its `state` and `options` are rumqttc's own).
    pub inner: EventLoop,
    dispatcher: String,
    options_for: OptionsFor,
    broker: String,
    /// QoS 1 publishes not acknowledged when the last connection ended; resent after the next
    /// CONNACK.
    unacked: VecDeque<Request>,
    /// Redirects followed since connect (DISCONNECT references and dispatcher answers).
    pub redirects: u32,
    /// The hints of the client's CONNECT, told to the dispatcher each time it is asked.
    hints: proto::Hints,
    /// Subscribed to at every connection that starts without a session.
    subscriptions: Vec<Filter>,
}

/// Asks `dispatcher` where this client should go and returns a client connected (on first poll)
/// to that broker; `options_for(host, port)` builds the options (client id, keep-alive, ...).
/// A dispatcher that answers CONNACK Success is a plain broker: the client stays there.
pub async fn connect_following_redirects(
    dispatcher: &str,
    options_for: impl Fn(&str, u16) -> MqttOptions + Send + Sync + 'static,
    cap: usize,
) -> Result<(AsyncClient, FollowingEventLoop), ClientError> {
    let options_for: OptionsFor = Box::new(options_for);
    let probe = options_for("localhost", 1883);
    let client_id = probe.client_id();
    let hints = hints_of(&probe);
    let broker = ask(dispatcher, &client_id, &hints).await?;
    let options = options_at(&options_for, &broker)?;
    let (client, inner) = AsyncClient::new(options, cap);
    Ok((
        client,
        FollowingEventLoop {
            inner,
            dispatcher: dispatcher.to_owned(),
            options_for,
            broker,
            unacked: VecDeque::new(),
            redirects: 0,
            hints,
            subscriptions: Vec::new(),
        },
    ))
}

/// The placement hints among `options`' CONNECT user properties (`mqdispatch-rate`,
/// `subscribe`).
fn hints_of(options: &MqttOptions) -> proto::Hints {
    let mut hints = proto::Hints::default();
    for (key, value) in options.user_properties() {
        if key == proto::SUBSCRIBE_PROPERTY {
            hints.subscribe.push(value);
        } else if key == proto::RATE_PROPERTY {
            hints.rate = value.parse().ok();
        }
    }
    hints
}

async fn ask(
    dispatcher: &str,
    client_id: &str,
    hints: &proto::Hints,
) -> Result<String, ClientError> {
    match proto::request_redirect_with(dispatcher, None, client_id, hints, ASK_TIMEOUT).await {
        Ok(r) => Ok(r.server_reference),
        // Not a dispatcher: a broker that takes us as we are.
        Err(ProtoError::Refused(ConnectReturnCode::Success)) => Ok(dispatcher.to_owned()),
        Err(source) => Err(ClientError::Dispatcher {
            addr: dispatcher.to_owned(),
            source,
        }),
    }
}

fn options_at(options_for: &OptionsFor, reference: &str) -> Result<MqttOptions, ClientError> {
    // The MQTT 5 reference may be a space-separated list: take the first.
    let first = reference.split_whitespace().next().unwrap_or_default();
    let target: HostPort = first.parse().map_err(|e| ClientError::BadReference {
        reference: reference.to_owned(),
        error: format!("{e}"),
    })?;
    Ok(options_for(target.host(), target.port()))
}

/// The Server Reference of a server DISCONNECT 0x9C/0x9D among the events rumqttc kept, if that
/// is what ended the connection; clears them either way.
pub fn disconnect_reference(eventloop: &mut EventLoop) -> Option<(DisconnectReasonCode, String)> {
    let found = eventloop.state.events.iter().find_map(|event| match event {
        Event::Incoming(Packet::Disconnect(d))
            if matches!(
                d.reason_code,
                DisconnectReasonCode::UseAnotherServer | DisconnectReasonCode::ServerMoved
            ) =>
        {
            let reference = d.properties.as_ref()?.server_reference.clone()?;
            Some((d.reason_code, reference))
        }
        _ => None,
    });
    eventloop.state.events.clear();
    found
}

impl FollowingEventLoop {
    /// The broker (`host:port`) the next connection goes to, or the current one.
    pub fn broker(&self) -> &str {
        &self.broker
    }

    /// Subscribes to `filters` at every connection that starts without a session (the first
    /// one too, if it has not been made yet), wherever the client is sent: call it once instead
    /// of `AsyncClient::subscribe`.
    pub fn keep_subscribed(&mut self, filters: Vec<Filter>) {
        self.subscriptions = filters;
    }

    /// Like rumqttc's `EventLoop::poll`; after an error the next poll connects where the server
    /// or the dispatcher said.
    pub async fn poll(&mut self) -> Result<Event, ConnectionError> {
        match self.inner.poll().await {
            Ok(event) => {
                if let Event::Incoming(Packet::ConnAck(ack)) = &event {
                    // rumqttc cleared them (no session at the new broker): send them again.
                    self.inner.pending.extend(self.unacked.drain(..));
                    if !ack.session_present && !self.subscriptions.is_empty() {
                        let subscribe = Subscribe::new_many(self.subscriptions.clone(), None);
                        self.inner.pending.push_front(Request::Subscribe(subscribe));
                    }
                }
                Ok(event)
            }
            Err(error) => {
                let next = match disconnect_reference(&mut self.inner) {
                    Some((_, reference)) => Some(reference),
                    None => {
                        let client_id = self.inner.options.client_id();
                        match ask(&self.dispatcher, &client_id, &self.hints).await {
                            Ok(reference) => Some(reference),
                            Err(e) => {
                                tracing::debug!(error = %e, "dispatcher unreachable: retrying the same broker");
                                None
                            }
                        }
                    }
                };
                if let Some(reference) = next {
                    self.retarget(&reference);
                }
                Err(error)
            }
        }
    }

    fn retarget(&mut self, reference: &str) {
        let options = match options_at(&self.options_for, reference) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "ignored");
                return;
            }
        };
        let unacked = std::mem::take(&mut self.inner.pending)
            .into_iter()
            .filter(|r| matches!(r, Request::Publish(_)));
        self.unacked.extend(unacked);
        self.inner.options = options;
        self.broker = reference.to_owned();
        self.redirects += 1;
    }
}
