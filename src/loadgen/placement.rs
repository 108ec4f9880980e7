//! Where a publisher connects: a static broker (DNS round-robin) or wherever a dispatcher's
//! redirect leads, following chains of dispatchers up to a hop limit.
//!
//! Redirects are followed lazily: a Server Reference is assumed to be a broker and connected to
//! with a normal rumqttc client; only if that CONNECT is refused with 0x9C/0x9D is the address
//! treated as another dispatcher and asked for its reference (rumqttc drops the reference of a
//! refused CONNACK). So the usual one-hop case costs one redirect exchange and one
//! broker connection, and brokers never see probe connections.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{NetworkOptions, TlsConfiguration, Transport};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::addr::{AddrError, HostPort};
use crate::proto::{
    Hints, ProtoError, RedirectReason, connect_packet, read_connack, request_redirect_with,
};

/// Redirect hops followed when the broker list itself redirects (dns-rr against a dispatcher).
pub const DEFAULT_MAX_HOPS: u8 = 4;
/// Bound on one redirect exchange and on one broker CONNECT/CONNACK.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// rumqttc request channel: a few batches of back-pressure, small memory (payloads are shared).
const REQUEST_CAPACITY: usize = 64;
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// A direct link writes PINGREQ after this long without a write (its CONNECT asks for 60 s).
pub(crate) const PING_AFTER: Duration = Duration::from_secs(30);

/// How publishers are placed on brokers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Publisher `i` in arrival order connects straight to `brokers[i % n]`.
    DnsRoundRobin { brokers: Vec<String> },
    /// Every (re)connection asks the dispatchers, in order, and follows the redirect.
    Dispatcher {
        dispatchers: Vec<String>,
        max_hops: u8,
    },
}

impl Placement {
    pub fn validate(&self) -> Result<(), String> {
        let (what, addrs) = match self {
            Placement::DnsRoundRobin { brokers } => ("broker", brokers),
            Placement::Dispatcher {
                dispatchers,
                max_hops,
            } => {
                if *max_hops == 0 {
                    return Err("max_hops must be at least 1".into());
                }
                ("dispatcher", dispatchers)
            }
        };
        if addrs.is_empty() {
            return Err(format!("no {what} address given"));
        }
        for a in addrs {
            a.parse::<HostPort>().map_err(|e| format!("{what} {e}"))?;
        }
        Ok(())
    }

    /// Where publisher `index` (arrival position) starts each connection.
    pub(crate) fn entry_for(&self, index: usize) -> Entry {
        match self {
            Placement::DnsRoundRobin { brokers } => Entry::Broker {
                addr: brokers[index % brokers.len()].clone(),
                max_hops: DEFAULT_MAX_HOPS,
            },
            Placement::Dispatcher {
                dispatchers,
                max_hops,
            } => Entry::Dispatchers {
                addrs: dispatchers.clone(),
                max_hops: *max_hops,
            },
        }
    }
}

/// The starting point of one connection attempt.
#[derive(Clone, Debug)]
pub(crate) enum Entry {
    /// Connect straight to this broker (static placement, or one remembered from 0x9D).
    Broker { addr: String, max_hops: u8 },
    /// Ask these dispatchers, first to last, until one leads to a broker.
    Dispatchers { addrs: Vec<String>, max_hops: u8 },
}

impl Entry {
    pub fn max_hops(&self) -> u8 {
        match self {
            Entry::Broker { max_hops, .. } | Entry::Dispatchers { max_hops, .. } => *max_hops,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("redirect loop: {chain} → {target} again")]
    Loop { chain: String, target: String },
    #[error("{addr} answered {reason:?} without a Server Reference")]
    MissingReference {
        addr: String,
        reason: ConnectReturnCode,
    },
    #[error("more than {max_hops} redirect hops: {chain}")]
    TooManyHops { max_hops: u8, chain: String },
    #[error("{0} answered CONNACK Success: it is a broker, not a dispatcher (use --broker)")]
    NotADispatcher(String),
    #[error("invalid Server Reference from {from}: {error}")]
    BadReference { from: String, error: AddrError },
    #[error("dispatcher {addr}: {source}")]
    Dispatcher { addr: String, source: ProtoError },
    #[error("broker {addr}: {error}")]
    Broker { addr: String, error: String },
}

impl PlacementError {
    /// A configuration mistake that retrying cannot fix (as opposed to a broker or dispatcher
    /// that is down or busy).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            PlacementError::Loop { .. }
                | PlacementError::MissingReference { .. }
                | PlacementError::TooManyHops { .. }
                | PlacementError::NotADispatcher(_)
                | PlacementError::BadReference { .. }
        )
    }
}

/// A connection to a broker that answered CONNACK Success.
pub(crate) struct Session {
    pub link: Link,
    pub broker: String,
}

/// How the publisher talks to its broker.
#[expect(
    clippy::large_enum_variant,
    reason = "one per publisher, boxed while placement hands it around"
)]
pub(crate) enum Link {
    /// A rumqttc client (TLS, batched sending).
    Client {
        client: AsyncClient,
        eventloop: EventLoop,
    },
    /// The bare socket, after our own CONNECT: the publisher writes pre-encoded PUBLISHes and
    /// reads what comes back itself (the lean per-message path, `super::direct`).
    Direct(TcpStream),
}

/// The outcome of a successful placement.
pub(crate) struct Placed {
    pub session: Session,
    /// Time spent in redirect exchanges (TCP connect to last CONNACK parsed); `None` without one.
    pub redirect_ms: Option<f64>,
    /// Redirect hops followed.
    pub hops: u8,
    /// Target of the last 0x9D (server moved) hop: reconnect straight there next time.
    pub moved_to: Option<String>,
}

/// Client identity and options shared by every connection of one publisher.
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    pub client_id: String,
    pub inflight_limit: u16,
    /// Disable Nagle, so that each PUBLISH written on its own leaves as its own TCP segment
    /// (per-message sending); with Nagle, writes made while a segment awaits its ACK coalesce.
    pub tcp_nodelay: bool,
    /// Connect to brokers with our own CONNECT and hand over the bare socket ([`Link::Direct`])
    /// instead of a rumqttc client. Ignored with TLS (always rumqttc).
    pub direct: bool,
    /// TLS to dispatchers and brokers alike (the addresses are then TLS ports).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Sent to dispatchers in the CONNECT's `mqdispatch-rate` user property, so a rebalancing
    /// dispatcher can weigh this client by its rate (`proto::RATE_PROPERTY`).
    pub declared_rate: Option<f64>,
}

/// One placement attempt from `entry`: for a dispatcher list, transient failures move on to the
/// next dispatcher; a fatal one (loop, missing reference, ...) is returned at once.
pub(crate) async fn place(entry: &Entry, conn: &Connector) -> Result<Placed, PlacementError> {
    let hints = Hints {
        rate: conn.declared_rate,
        subscribe: Vec::new(),
    };
    place_with(entry, conn, &hints).await
}

/// [`place`], telling every dispatcher on the way `hints` (a subscriber's filters).
pub(crate) async fn place_with(
    entry: &Entry,
    conn: &Connector,
    hints: &Hints,
) -> Result<Placed, PlacementError> {
    match entry {
        Entry::Broker { addr, max_hops } => {
            follow(Start::Broker(addr), *max_hops, conn, hints).await
        }
        Entry::Dispatchers { addrs, max_hops } => {
            let mut last = None;
            for addr in addrs {
                match follow(Start::Dispatcher(addr), *max_hops, conn, hints).await {
                    Ok(placed) => return Ok(placed),
                    Err(e) if e.is_fatal() => return Err(e),
                    Err(e) => {
                        tracing::debug!(client_id = %conn.client_id, dispatcher = %addr, error = %e, "dispatcher failed");
                        last = Some(e);
                    }
                }
            }
            Err(last.expect("invariant: validated placement has at least one dispatcher"))
        }
    }
}

enum Start<'a> {
    Dispatcher(&'a str),
    Broker(&'a str),
}

/// Follows redirects from `start` until a broker accepts the CONNECT.
async fn follow(
    start: Start<'_>,
    max_hops: u8,
    conn: &Connector,
    hints: &Hints,
) -> Result<Placed, PlacementError> {
    let began = Instant::now();
    let mut visited: Vec<String> = Vec::new();
    let mut current = match start {
        Start::Dispatcher(addr) => addr.to_owned(),
        Start::Broker(addr) => match connect_broker(addr, conn).await? {
            Attempt::Connected(session) => {
                return Ok(Placed {
                    session: *session,
                    redirect_ms: None,
                    hops: 0,
                    moved_to: None,
                });
            }
            Attempt::Redirected => addr.to_owned(),
        },
    };
    let mut hops = 0u8;
    let mut moved_to = None;
    loop {
        // `current` redirects: ask it where to go.
        let redirect = ask(&current, conn, hints).await?;
        let resolved = began.elapsed();
        visited.push(current);
        hops += 1;
        let target = redirect.server_reference;
        let chain = || visited.join(" → ");
        if hops > max_hops {
            return Err(PlacementError::TooManyHops {
                max_hops,
                chain: format!("{} → {target}", chain()),
            });
        }
        target
            .parse::<HostPort>()
            .map_err(|error| PlacementError::BadReference {
                from: visited.last().cloned().unwrap_or_default(),
                error,
            })?;
        if visited.contains(&target) {
            return Err(PlacementError::Loop {
                chain: chain(),
                target,
            });
        }
        if redirect.reason == RedirectReason::ServerMoved {
            moved_to = Some(target.clone());
        }
        match connect_broker(&target, conn).await? {
            Attempt::Connected(session) => {
                return Ok(Placed {
                    session: *session,
                    redirect_ms: Some(resolved.as_secs_f64() * 1000.0),
                    hops,
                    moved_to,
                });
            }
            Attempt::Redirected => current = target,
        }
    }
}

/// One redirect exchange with `addr`, errors classified.
async fn ask(
    addr: &str,
    conn: &Connector,
    hints: &Hints,
) -> Result<crate::proto::Redirect, PlacementError> {
    request_redirect_with(
        addr,
        conn.tls.as_ref(),
        &conn.client_id,
        hints,
        CONNECT_TIMEOUT,
    )
    .await
    .map_err(|source| match source {
        ProtoError::Refused(ConnectReturnCode::Success) => {
            PlacementError::NotADispatcher(addr.to_owned())
        }
        ProtoError::MissingServerReference(reason) => PlacementError::MissingReference {
            addr: addr.to_owned(),
            reason,
        },
        source => PlacementError::Dispatcher {
            addr: addr.to_owned(),
            source,
        },
    })
}

enum Attempt {
    Connected(Box<Session>),
    /// CONNACK 0x9C/0x9D: the address is a dispatcher, not a broker.
    Redirected,
}

/// A connection to `addr` up to its CONNACK: our own CONNECT on a bare socket when
/// `conn.direct` (and no TLS), else a rumqttc v5 client.
async fn connect_broker(addr: &str, conn: &Connector) -> Result<Attempt, PlacementError> {
    let fail = |error: String| PlacementError::Broker {
        addr: addr.to_owned(),
        error,
    };
    let target: HostPort = addr.parse().map_err(|e: AddrError| fail(e.to_string()))?;
    if conn.direct && conn.tls.is_none() {
        return tokio::time::timeout(CONNECT_TIMEOUT, connect_direct(&target, conn))
            .await
            .map_err(|_| fail(format!("no CONNACK within {CONNECT_TIMEOUT:?}")))?
            .map_err(fail)
            .map(|attempt| attempt.at(addr));
    }
    let mut options = MqttOptions::new(conn.client_id.clone(), target.host(), target.port());
    options
        .set_keep_alive(KEEP_ALIVE)
        .set_clean_start(true)
        .set_connection_timeout(CONNECT_TIMEOUT.as_secs())
        // Without this the v5 event loop preallocates 65,536 in-flight slots (~14 MB).
        .set_outgoing_inflight_upper_limit(conn.inflight_limit);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(conn.tcp_nodelay);
    options.set_network_options(network);
    if let Some(tls) = &conn.tls {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
    }
    let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
    let first = tokio::time::timeout(CONNECT_TIMEOUT, eventloop.poll())
        .await
        .map_err(|_| fail(format!("no CONNACK within {CONNECT_TIMEOUT:?}")))?;
    match first {
        Ok(Event::Incoming(Packet::ConnAck(_))) => Ok(Attempt::Connected(Box::new(Session {
            link: Link::Client { client, eventloop },
            broker: addr.to_owned(),
        }))),
        Err(ConnectionError::ConnectionRefused(
            ConnectReturnCode::UseAnotherServer | ConnectReturnCode::ServerMoved,
        )) => Ok(Attempt::Redirected),
        Err(e) => Err(fail(e.to_string())),
        Ok(other) => Err(fail(format!("expected CONNACK, got {other:?}"))),
    }
}

/// A bare TCP connection with our CONNECT (clean start, 60 s keep-alive: the publisher pings
/// after [`PING_AFTER`] without a write) and the broker's CONNACK read.
async fn connect_direct(target: &HostPort, conn: &Connector) -> Result<DirectAttempt, String> {
    let mut stream = TcpStream::connect((target.host(), target.port()))
        .await
        .map_err(|e| e.to_string())?;
    stream
        .set_nodelay(conn.tcp_nodelay)
        .map_err(|e| e.to_string())?;
    stream
        .write_all(&connect_packet(&conn.client_id))
        .await
        .map_err(|e| e.to_string())?;
    let connack = read_connack(&mut stream).await.map_err(|e| e.to_string())?;
    match connack.code {
        ConnectReturnCode::Success => Ok(DirectAttempt::Connected(stream)),
        ConnectReturnCode::UseAnotherServer | ConnectReturnCode::ServerMoved => {
            Ok(DirectAttempt::Redirected)
        }
        code => Err(format!("connection refused: {code:?}")),
    }
}

enum DirectAttempt {
    Connected(TcpStream),
    Redirected,
}

impl DirectAttempt {
    fn at(self, addr: &str) -> Attempt {
        match self {
            DirectAttempt::Connected(stream) => Attempt::Connected(Box::new(Session {
                link: Link::Direct(stream),
                broker: addr.to_owned(),
            })),
            DirectAttempt::Redirected => Attempt::Redirected,
        }
    }
}

/// After a connection error: the Server Reference of a server DISCONNECT 0x9C/0x9D, if that is
/// what ended it (rumqttc keeps the packet in `state.events`).
pub(crate) fn server_moved_us(eventloop: &mut EventLoop) -> Option<(RedirectReason, String)> {
    use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode as Code;
    let (code, reference) = crate::client::disconnect_reference(eventloop)?;
    let reason = match code {
        Code::ServerMoved => RedirectReason::ServerMoved,
        _ => RedirectReason::UseAnotherServer,
    };
    Some((reason, reference))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_validation_and_entries() {
        let dns = Placement::DnsRoundRobin {
            brokers: vec!["a:1".into(), "b:2".into()],
        };
        assert!(dns.validate().is_ok());
        assert!(matches!(dns.entry_for(3), Entry::Broker { addr, .. } if addr == "b:2"));
        let v6 = Placement::DnsRoundRobin {
            brokers: vec!["[::1]:1".into(), "::1:2".into()],
        };
        assert_eq!(
            v6.validate().unwrap_err(),
            "broker `::1:2`: an IPv6 address needs brackets, e.g. [::1]:1883"
        );
        let none = Placement::Dispatcher {
            dispatchers: vec![],
            max_hops: 2,
        };
        assert!(none.validate().unwrap_err().contains("no dispatcher"));
        let zero = Placement::Dispatcher {
            dispatchers: vec!["d:1".into()],
            max_hops: 0,
        };
        assert!(zero.validate().unwrap_err().contains("max_hops"));
    }
}
