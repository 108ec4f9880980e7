//! One subscriber member's connection: placed (straight to a broker, or through dispatchers
//! with the `subscribe` hint), subscribed, and read one batch at a time.

use anyhow::{Context, anyhow};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event};

use super::placement::{Connector, Entry, Link, place_with, server_moved_us};
use super::subscriber_direct::{DirectSubscription, Dropped};
use super::subscription::SubscriberSpec;
use crate::proto::Hints;

/// A member's connection with its SUBSCRIBE acknowledged.
pub(super) enum Subscribed {
    /// Plain TCP: our own reads ([`DirectSubscription`]).
    Direct(DirectSubscription),
    /// TLS: a rumqttc client (boxed: its event loop is large).
    Client(AsyncClient, Box<rumqttc::v5::EventLoop>),
}

impl Subscribed {
    /// One read's worth of messages (direct), or one event (rumqttc).
    pub(super) async fn receive_once(
        &mut self,
        on_publish: &mut impl FnMut(&Publish),
    ) -> Result<(), Dropped> {
        match self {
            Subscribed::Direct(d) => d.receive(on_publish).await,
            Subscribed::Client(_, eventloop) => match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    on_publish(&p);
                    Ok(())
                }
                Ok(_) => Ok(()),
                Err(e) => Err(Dropped {
                    error: e.to_string(),
                    moved: server_moved_us(eventloop),
                }),
            },
        }
    }

    pub(super) async fn disconnect(&mut self) {
        match self {
            Subscribed::Direct(d) => d.disconnect().await,
            Subscribed::Client(c, _) => {
                let _ = c.disconnect().await;
            }
        }
    }
}

/// Connects from `start` (a broker a server named) or else `entry`, and subscribes to the
/// entry's topic; returns the session and the broker's address.
pub(super) async fn subscribe(
    entry: &Entry,
    start: Option<&str>,
    connector: &Connector,
    spec: &SubscriberSpec,
) -> anyhow::Result<(Subscribed, String)> {
    let entry = match start {
        Some(addr) => Entry::Broker {
            addr: addr.to_owned(),
            max_hops: entry.max_hops(),
        },
        None => entry.clone(),
    };
    let hints = Hints {
        rate: None,
        subscribe: vec![spec.topic.clone()],
    };
    let placed = place_with(&entry, connector, &hints)
        .await
        .with_context(|| format!("connecting via {entry:?}"))?;
    let broker = placed.session.broker.clone();
    let qos = if spec.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let (client, mut eventloop) = match placed.session.link {
        Link::Direct(stream) => {
            let sub = DirectSubscription::subscribe(stream, &spec.topic, qos).await?;
            return Ok((Subscribed::Direct(sub), broker));
        }
        Link::Client { client, eventloop } => (client, eventloop),
    };
    client.subscribe(spec.topic.clone(), qos).await?;
    loop {
        if let Event::Incoming(Packet::SubAck(ack)) = eventloop.poll().await? {
            return match ack.return_codes.first() {
                Some(SubscribeReasonCode::Success(_)) => {
                    Ok((Subscribed::Client(client, Box::new(eventloop)), broker))
                }
                other => Err(anyhow!(
                    "broker refused SUBSCRIBE {}: {other:?}",
                    spec.topic
                )),
            };
        }
    }
}
