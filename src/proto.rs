//! The redirect handshake, on rumqttc's public `mqttbytes` packet types.
//!
//! Server side ([`read_hello`], [`redirect_connack`], [`redirect_disconnect`],
//! [`refusal_connack`], [`legacy_refusal`]): what the dispatcher reads and answers. Client side
//! ([`request_redirect`], [`Hints`]): what a client sends to a dispatcher to learn its broker. rumqttc's event loop cannot be used for the client
//! side because it drops a refused CONNACK's properties, Server Reference included.

use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::Error as CodecError;
use rumqttc::v5::mqttbytes::v5::{
    self as v5, ConnAck, ConnAckProperties, Connect, ConnectProperties, ConnectReturnCode,
    Disconnect, DisconnectProperties, DisconnectReasonCode, Packet,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest CONNECT the dispatcher accepts. A real CONNECT is a few hundred bytes; anything
/// claiming more is refused as soon as its fixed header is read, before its body arrives.
pub const DEFAULT_MAX_CONNECT_BYTES: u32 = 16 * 1024;

/// CONNECT user property in which a client may declare its publish rate (msgs/s, a decimal
/// number) to the dispatcher; the rebalancer weighs it by this when the broker cannot measure it
/// (`dispatcher::rebalance::rates`). The project's load generator sends its target rate.
pub const RATE_PROPERTY: &str = "mqdispatch-rate";

/// CONNECT user property by which a subscriber names a topic filter it will subscribe to
/// (repeatable, e.g. `$share/g/load/#`): the dispatcher places it by its subscriber policy.
pub const SUBSCRIBE_PROPERTY: &str = "subscribe";

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed packet: {0}")]
    Malformed(CodecError),
    #[error("packet of {claimed} bytes exceeds the limit of {limit} bytes")]
    TooLarge { claimed: usize, limit: u32 },
    #[error("first packet is not CONNECT (type byte {0:#04x})")]
    NotConnect(u8),
    #[error("unknown protocol name or level")]
    UnknownProtocol,
    #[error("connection closed before a whole packet arrived")]
    Truncated,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("expected CONNACK, got {0}")]
    UnexpectedPacket(String),
    #[error("connection refused with reason {0:?}")]
    Refused(ConnectReturnCode),
    #[error("redirect reason {0:?} carried no Server Reference")]
    MissingServerReference(ConnectReturnCode),
}

/// What a client's first packet says about it.
#[derive(Debug, Clone, PartialEq)]
pub enum Hello {
    /// An MQTT v5 CONNECT: it can be redirected.
    V5 {
        client_id: String,
        /// The [`RATE_PROPERTY`] user property, if present, finite and not negative.
        declared_rate: Option<f64>,
        /// Every [`SUBSCRIBE_PROPERTY`] user property, in order: a subscriber's filters.
        subscribe: Vec<String>,
    },
    /// MQTT 3.1.1 (level 4) or 3.1 (level 3): no redirection exists in these versions.
    Legacy { level: u8 },
}

/// Why a client is sent elsewhere (MQTT v5 reason codes 0x9C and 0x9D).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RedirectReason {
    /// 0x9C: use another server this time.
    UseAnotherServer,
    /// 0x9D: the server moved; the client should use the reference from now on.
    ServerMoved,
}

impl RedirectReason {
    fn code(self) -> ConnectReturnCode {
        match self {
            Self::UseAnotherServer => ConnectReturnCode::UseAnotherServer,
            Self::ServerMoved => ConnectReturnCode::ServerMoved,
        }
    }
}

/// Reads one whole packet from `stream` and classifies it as a v5 or legacy CONNECT.
///
/// A fixed header claiming more than `max_bytes` is refused at once. The caller bounds the time.
pub async fn read_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_bytes: u32,
) -> Result<Hello, ProtoError> {
    read_hello_into(stream, &mut BytesMut::with_capacity(512), max_bytes).await
}

/// [`read_hello`] through `buf`: whatever the client sent after its CONNECT stays in `buf`.
pub async fn read_hello_into<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max_bytes: u32,
) -> Result<Hello, ProtoError> {
    loop {
        // Only CONNECT may come first: refuse anything else from its first byte.
        if let Some(&first) = buf.first()
            && first != 0x10
        {
            return Err(ProtoError::NotConnect(first));
        }
        if let Some(frame_len) = whole_frame(buf, max_bytes)? {
            return classify(buf, frame_len);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(ProtoError::Truncated);
        }
    }
}

/// The length of the packet at the front of `buf` once it is all there (`None`: read more). A
/// fixed header claiming more than `max_bytes` is refused at once.
pub fn whole_frame(buf: &BytesMut, max_bytes: u32) -> Result<Option<usize>, ProtoError> {
    match v5::check(buf.iter(), Some(max_bytes)) {
        Ok(header) => Ok(Some(header.frame_length())),
        Err(CodecError::InsufficientBytes(_)) => Ok(None),
        Err(CodecError::PayloadSizeLimitExceeded { pkt_size, max }) => Err(ProtoError::TooLarge {
            claimed: pkt_size,
            limit: max,
        }),
        Err(e) => Err(ProtoError::Malformed(e)),
    }
}

/// Length of a checked frame's fixed header: the type byte plus the variable-length remaining
/// length, whose last byte is the first without the continuation bit (FixedHeader keeps its own
/// copy private).
fn fixed_header_len(frame: &[u8]) -> usize {
    let length_bytes = frame[1..]
        .iter()
        .position(|b| b & 0x80 == 0)
        .expect("invariant: v5::check accepted this frame's remaining length");
    2 + length_bytes
}

/// Picks the parser from the protocol name and level, which precede everything else in a
/// CONNECT's variable header (a v5 parser rejects a 3.1.1 CONNECT without saying which it was).
fn classify(buf: &mut BytesMut, frame_len: usize) -> Result<Hello, ProtoError> {
    let frame = &buf[..frame_len];
    let body = &frame[fixed_header_len(frame)..];
    let name_len = match body {
        [hi, lo, ..] => usize::from(u16::from_be_bytes([*hi, *lo])),
        _ => return Err(ProtoError::UnknownProtocol),
    };
    let name = body.get(2..2 + name_len).map(<[u8]>::to_vec);
    let level = body.get(2 + name_len).copied();
    match (name.as_deref(), level) {
        (Some(b"MQTT"), Some(5)) => match Packet::read(buf, None) {
            Ok(Packet::Connect(connect, _, _)) => Ok(Hello::V5 {
                declared_rate: declared_rate(&connect),
                subscribe: user_properties(&connect, SUBSCRIBE_PROPERTY)
                    .map(str::to_owned)
                    .collect(),
                client_id: connect.client_id,
            }),
            Ok(other) => Err(ProtoError::UnexpectedPacket(format!("{other:?}"))),
            Err(e) => Err(ProtoError::Malformed(e)),
        },
        (Some(b"MQTT"), Some(4)) => Ok(Hello::Legacy { level: 4 }),
        (Some(b"MQIsdp"), Some(3)) => Ok(Hello::Legacy { level: 3 }),
        _ => Err(ProtoError::UnknownProtocol),
    }
}

fn user_properties<'a>(connect: &'a Connect, key: &'a str) -> impl Iterator<Item = &'a str> {
    let all = connect.properties.iter().flat_map(|p| &p.user_properties);
    all.filter(move |(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn declared_rate(connect: &Connect) -> Option<f64> {
    user_properties(connect, RATE_PROPERTY)
        .next()?
        .parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r >= 0.0)
}

/// CONNACK with a redirect reason and the Server Reference `host:port`.
pub fn redirect_connack(reason: RedirectReason, server_reference: &str) -> BytesMut {
    let mut props = empty_connack_properties();
    props.server_reference = Some(server_reference.to_owned());
    encode_v5_connack(reason.code(), Some(props))
}

/// A server DISCONNECT with a redirect reason and the Server Reference `host:port`: how a
/// connected client is sent elsewhere.
pub fn redirect_disconnect(reason: RedirectReason, server_reference: &str) -> BytesMut {
    let code = match reason {
        RedirectReason::UseAnotherServer => DisconnectReasonCode::UseAnotherServer,
        RedirectReason::ServerMoved => DisconnectReasonCode::ServerMoved,
    };
    let disconnect = Disconnect {
        reason_code: code,
        properties: Some(DisconnectProperties {
            session_expiry_interval: None,
            reason_string: None,
            user_properties: Vec::new(),
            server_reference: Some(server_reference.to_owned()),
        }),
    };
    let mut buf = BytesMut::with_capacity(64);
    Packet::Disconnect(disconnect)
        .write(&mut buf, None)
        .expect("invariant: a DISCONNECT with one short string property always encodes");
    buf
}

/// Where a server DISCONNECT sends its client: its reason (0x9C/0x9D) and Server Reference;
/// `None` for any other reason or without a reference.
pub fn disconnect_redirect(d: &Disconnect) -> Option<(RedirectReason, String)> {
    let reason = match d.reason_code {
        DisconnectReasonCode::UseAnotherServer => RedirectReason::UseAnotherServer,
        DisconnectReasonCode::ServerMoved => RedirectReason::ServerMoved,
        _ => return None,
    };
    let reference = d.properties.as_ref()?.server_reference.clone()?;
    Some((reason, reference))
}

/// A server DISCONNECT with `code` and an empty property list (e.g. 0x89 Server busy). Written by
/// hand: rumqttc 0.25 encodes it with remaining length 1 followed by two bytes, and cannot read
/// the spec's short form (remaining length 1, no property length) either.
pub fn disconnect_packet(code: DisconnectReasonCode) -> BytesMut {
    BytesMut::from(&[0xE0, 0x02, code as u8, 0x00][..])
}

/// A v5 CONNACK refusal without a reference, e.g. 0x88 Server unavailable; with `Success`, the
/// plain acceptance.
pub fn refusal_connack(code: ConnectReturnCode) -> BytesMut {
    encode_v5_connack(code, None)
}

/// The 3.1.1-format CONNACK `0x01 unacceptable protocol version`: the only refusal a 3.1.1 or 3.1
/// client understands (those versions have no redirection).
pub fn legacy_refusal() -> BytesMut {
    let mut buf = BytesMut::with_capacity(4);
    v4::ConnAck::new(v4::ConnectReturnCode::RefusedProtocolVersion, false)
        .write(&mut buf)
        .expect("invariant: a fixed 4-byte CONNACK always encodes");
    buf
}

fn encode_v5_connack(code: ConnectReturnCode, properties: Option<ConnAckProperties>) -> BytesMut {
    let mut buf = BytesMut::with_capacity(64);
    let connack = ConnAck {
        session_present: false,
        code,
        properties,
    };
    Packet::ConnAck(connack)
        .write(&mut buf, None)
        .expect("invariant: a CONNACK with one short string property always encodes");
    buf
}

// ConnAckProperties has no Default: every field is spelled out once, here.
fn empty_connack_properties() -> ConnAckProperties {
    ConnAckProperties {
        session_expiry_interval: None,
        receive_max: None,
        max_qos: None,
        retain_available: None,
        max_packet_size: None,
        assigned_client_identifier: None,
        topic_alias_max: None,
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: None,
        subscription_identifiers_available: None,
        shared_subscription_available: None,
        server_keep_alive: None,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}

/// What a client tells a dispatcher about itself in its CONNECT's user properties.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hints {
    /// Its publish rate ([`RATE_PROPERTY`]).
    pub rate: Option<f64>,
    /// The filters it will subscribe to ([`SUBSCRIBE_PROPERTY`], one property each).
    pub subscribe: Vec<String>,
}

impl Hints {
    fn user_properties(&self) -> Vec<(String, String)> {
        let rate = self.rate.map(|r| (RATE_PROPERTY.to_owned(), r.to_string()));
        let filters = (self.subscribe.iter()).map(|f| (SUBSCRIBE_PROPERTY.to_owned(), f.clone()));
        rate.into_iter().chain(filters).collect()
    }
}

/// A v5 CONNECT for `client_id` (clean start, 60 s keep-alive).
pub fn connect_packet(client_id: &str) -> BytesMut {
    connect_packet_with(client_id, &Hints::default())
}

/// A v5 CONNECT for `client_id` carrying `hints` as user properties (none when empty).
pub fn connect_packet_with(client_id: &str, hints: &Hints) -> BytesMut {
    let user_properties = hints.user_properties();
    let properties = (!user_properties.is_empty()).then(|| ConnectProperties {
        session_expiry_interval: None,
        receive_maximum: None,
        max_packet_size: None,
        topic_alias_max: None,
        request_response_info: None,
        request_problem_info: None,
        user_properties,
        authentication_method: None,
        authentication_data: None,
    });
    let connect = Connect {
        keep_alive: 60,
        client_id: client_id.to_owned(),
        clean_start: true,
        properties,
    };
    let mut buf = BytesMut::with_capacity(64);
    Packet::Connect(connect, None, None)
        .write(&mut buf, None)
        .expect("invariant: a CONNECT with a short client id always encodes");
    buf
}

/// What a dispatcher answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub reason: RedirectReason,
    /// `host:port` as the Server Reference carried it.
    pub server_reference: String,
}

/// Client side: CONNECT to `dispatcher`, read its CONNACK and return the redirect it carries.
///
/// A CONNACK 0x00 (a plain broker, not a dispatcher) or any other refusal is
/// [`ProtoError::Refused`]; a redirect without a reference is [`ProtoError::MissingServerReference`].
pub async fn request_redirect(
    dispatcher: &str,
    client_id: &str,
    timeout: Duration,
) -> Result<Redirect, ProtoError> {
    request_redirect_via(dispatcher, None, client_id, timeout).await
}

/// [`request_redirect`], over TLS when `tls` is given (verifying the dispatcher's certificate
/// for the host part of `dispatcher`). The TLS handshake counts against `timeout`.
pub async fn request_redirect_via(
    dispatcher: &str,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
    client_id: &str,
    timeout: Duration,
) -> Result<Redirect, ProtoError> {
    request_redirect_with(dispatcher, tls, client_id, &Hints::default(), timeout).await
}

/// [`request_redirect_via`], telling the dispatcher `hints` in the CONNECT's user properties.
pub async fn request_redirect_with(
    dispatcher: &str,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
    client_id: &str,
    hints: &Hints,
    timeout: Duration,
) -> Result<Redirect, ProtoError> {
    let exchange = async {
        let mut stream = TcpStream::connect(dispatcher).await?;
        stream.set_nodelay(true)?;
        match tls {
            None => redirect_exchange(&mut stream, client_id, hints).await,
            Some(config) => {
                let mut stream = crate::tls::connect(stream, dispatcher, config).await?;
                redirect_exchange(&mut stream, client_id, hints).await
            }
        }
    };
    let connack = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ProtoError::Timeout(timeout))??;
    let reason = match connack.code {
        ConnectReturnCode::UseAnotherServer => RedirectReason::UseAnotherServer,
        ConnectReturnCode::ServerMoved => RedirectReason::ServerMoved,
        other => return Err(ProtoError::Refused(other)),
    };
    let server_reference = connack
        .properties
        .and_then(|p| p.server_reference)
        .ok_or(ProtoError::MissingServerReference(connack.code))?;
    Ok(Redirect {
        reason,
        server_reference,
    })
}

async fn redirect_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    client_id: &str,
    hints: &Hints,
) -> Result<ConnAck, ProtoError> {
    stream
        .write_all(&connect_packet_with(client_id, hints))
        .await?;
    stream.flush().await?;
    read_connack(stream).await
}

/// Reads one v5 packet and insists it is a CONNACK.
pub async fn read_connack<S: AsyncRead + Unpin>(stream: &mut S) -> Result<ConnAck, ProtoError> {
    let mut buf = BytesMut::with_capacity(128);
    loop {
        match Packet::read(&mut buf, Some(DEFAULT_MAX_CONNECT_BYTES)) {
            Ok(Packet::ConnAck(connack)) => return Ok(connack),
            Ok(other) => return Err(ProtoError::UnexpectedPacket(format!("{other:?}"))),
            Err(CodecError::InsufficientBytes(_)) => {}
            Err(e) => return Err(ProtoError::Malformed(e)),
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(ProtoError::Truncated);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn hello_of(bytes: &[u8]) -> Result<Hello, ProtoError> {
        let mut reader = bytes;
        read_hello(&mut reader, DEFAULT_MAX_CONNECT_BYTES).await
    }

    #[tokio::test]
    async fn v5_connect_round_trips_client_id() {
        let hello = hello_of(&connect_packet("pub-7")).await.unwrap();
        assert_eq!(
            hello,
            Hello::V5 {
                client_id: "pub-7".into(),
                declared_rate: None,
                subscribe: vec![],
            }
        );
        let rate = Hints {
            rate: Some(2000.0),
            subscribe: vec![],
        };
        let hello = hello_of(&connect_packet_with("pub-8", &rate))
            .await
            .unwrap();
        assert_eq!(
            hello,
            Hello::V5 {
                client_id: "pub-8".into(),
                declared_rate: Some(2000.0),
                subscribe: vec![],
            }
        );
        let hints = Hints {
            rate: None,
            subscribe: vec!["$share/g/load/#".into(), "other/+".into()],
        };
        let hello = hello_of(&connect_packet_with("sub-1", &hints))
            .await
            .unwrap();
        assert_eq!(
            hello,
            Hello::V5 {
                client_id: "sub-1".into(),
                declared_rate: None,
                subscribe: hints.subscribe.clone(),
            }
        );
    }

    #[tokio::test]
    async fn v311_connect_is_legacy_level_4() {
        let mut buf = BytesMut::new();
        v4::Connect::new("old")
            .write(&mut buf)
            .expect("v4 connect encodes");
        assert_eq!(hello_of(&buf).await.unwrap(), Hello::Legacy { level: 4 });
    }

    #[tokio::test]
    async fn v31_connect_is_legacy_level_3() {
        // MQTT 3.1: protocol name "MQIsdp", level 3, clean session, keep-alive 60, id "a".
        let packet = [
            0x10, 15, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60, 0, 1, b'a',
        ];
        assert_eq!(hello_of(&packet).await.unwrap(), Hello::Legacy { level: 3 });
    }

    #[tokio::test]
    async fn oversize_claim_is_refused_from_the_header_alone() {
        // Remaining length 0x0FFFFFFF (256 MiB - 1), no body at all.
        let packet = [0x10, 0xFF, 0xFF, 0xFF, 0x7F];
        assert!(matches!(
            hello_of(&packet).await,
            Err(ProtoError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn publish_first_is_refused() {
        let packet = [0x30, 0x05, 0, 1, b't', b'x', b'y'];
        assert!(matches!(
            hello_of(&packet).await,
            Err(ProtoError::NotConnect(0x30))
        ));
    }

    #[tokio::test]
    async fn truncated_connect_is_reported() {
        let full = connect_packet("abc");
        assert!(matches!(
            hello_of(&full[..full.len() - 2]).await,
            Err(ProtoError::Truncated)
        ));
    }

    #[tokio::test]
    async fn bad_remaining_length_is_malformed() {
        let packet = [0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
        assert!(matches!(
            hello_of(&packet).await,
            Err(ProtoError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn wrong_protocol_name_is_unknown() {
        let packet = [0x10, 10, 0, 4, b'H', b'T', b'T', b'P', 5, 0x02, 0, 60];
        assert!(matches!(
            hello_of(&packet).await,
            Err(ProtoError::UnknownProtocol)
        ));
    }

    #[tokio::test]
    async fn redirect_connack_carries_reason_and_reference() {
        let mut bytes = &redirect_connack(RedirectReason::ServerMoved, "127.0.0.1:1884")[..];
        let connack = read_connack(&mut bytes).await.unwrap();
        assert_eq!(connack.code, ConnectReturnCode::ServerMoved);
        assert_eq!(
            connack.properties.unwrap().server_reference.as_deref(),
            Some("127.0.0.1:1884")
        );
    }

    #[test]
    fn redirect_disconnect_carries_reason_and_reference() {
        let mut bytes = redirect_disconnect(RedirectReason::UseAnotherServer, "h:1884");
        let Ok(Packet::Disconnect(d)) = Packet::read(&mut bytes, None) else {
            panic!("not a DISCONNECT");
        };
        assert_eq!(
            disconnect_redirect(&d),
            Some((RedirectReason::UseAnotherServer, "h:1884".into()))
        );
        let mut bare = disconnect_packet(DisconnectReasonCode::ServerMoved);
        let read = Packet::read(&mut bare, None);
        let Ok(Packet::Disconnect(d)) = read else {
            panic!("not a DISCONNECT: {read:?}");
        };
        assert_eq!(disconnect_redirect(&d), None, "0x9D without a reference");
    }

    #[test]
    fn legacy_refusal_is_the_311_connack() {
        assert_eq!(&legacy_refusal()[..], &[0x20, 0x02, 0x00, 0x01]);
    }
}
