//! Test doubles for the load generator tests: an embedded broker child with its counter, a
//! scripted dispatcher, a connection-cutting proxy, and a broker that moves its client away.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use mqdispatch::payload::{Header, now_us, template};
use mqdispatch::proto::{self, Hello, RedirectReason};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, Disconnect, DisconnectProperties, DisconnectReasonCode, Packet, PingResp,
    Publish,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::util::{ChildGuard, bin};

/// An embedded broker child: its MQTT address and its stats port (broker-side counter).
pub struct Broker {
    guard: ChildGuard,
    stats: String,
}

impl Broker {
    pub fn spawn() -> Broker {
        let mut child = Command::new(bin())
            .args(["broker", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn broker");
        let mut reader = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = |prefix: &str| {
            let mut text = String::new();
            reader.read_line(&mut text).expect("read broker banner");
            text.trim()
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("broker printed {text:?}, expected `{prefix}ADDR`"))
                .to_owned()
        };
        let addr = line("listening on ");
        let stats = line("stats on ");
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        Broker {
            guard: ChildGuard { child, addr },
            stats,
        }
    }

    pub fn addr(&self) -> String {
        self.guard.addr.clone()
    }

    /// The broker's received-message counter once it has stopped moving (two consecutive
    /// updates equal and at least `at_least`, or the deadline).
    pub async fn settled_received(&self, at_least: u64, within: Duration) -> u64 {
        let stream = TcpStream::connect(&self.stats).await.expect("stats port");
        let mut lines = tokio::io::BufReader::new(stream).lines();
        let deadline = Instant::now() + within;
        let mut last = None;
        loop {
            let line = match tokio::time::timeout_at(deadline, lines.next_line()).await {
                Ok(Ok(Some(line))) => line,
                _ => return last.unwrap_or(0),
            };
            let reading: serde_json::Value = serde_json::from_str(&line).expect("stats json");
            let total = reading["received_total"].as_u64().expect("received_total");
            if last == Some(total) && total >= at_least {
                return total;
            }
            last = Some(total);
        }
    }
}

/// What a fake dispatcher answers to the n-th CONNECT (from client id `id`).
pub type Answer = Box<dyn Fn(usize, &str) -> Reply + Send + Sync>;

#[derive(Clone)]
pub enum Reply {
    Redirect(RedirectReason, String),
    /// The redirect reason code without a Server Reference.
    NoReference,
}

/// A TcpListener answering every v5 CONNECT from `answer`, recording (client id, reference).
pub struct FakeDispatcher {
    pub addr: String,
    seen: Arc<Mutex<Vec<(String, String)>>>,
    _task: AbortOnDropHandle<()>,
}

impl FakeDispatcher {
    pub async fn start(answer: Answer) -> FakeDispatcher {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, answer)
    }

    pub fn serve(listener: TcpListener, answer: Answer) -> FakeDispatcher {
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            let mut n = 0;
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let Ok(Ok(Hello::V5 { client_id, .. })) =
                    timeout(Duration::from_secs(5), proto::read_hello(&mut stream, 4096)).await
                else {
                    continue;
                };
                let bytes = match answer(n, &client_id) {
                    Reply::Redirect(reason, reference) => {
                        log.lock().unwrap().push((client_id, reference.clone()));
                        proto::redirect_connack(reason, &reference)
                    }
                    Reply::NoReference => {
                        log.lock().unwrap().push((client_id, String::new()));
                        proto::refusal_connack(ConnectReturnCode::UseAnotherServer)
                    }
                };
                n += 1;
                let _ = stream.write_all(&bytes).await;
            }
        });
        FakeDispatcher {
            addr,
            seen,
            _task: AbortOnDropHandle::new(task),
        }
    }

    pub fn seen(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().clone()
    }
}

/// A TCP forwarder in front of a broker whose live connections can be cut (a broker restart as
/// the client sees it), while it keeps accepting new ones.
pub struct Proxy {
    pub addr: String,
    cut: Arc<Mutex<CancellationToken>>,
    _task: AbortOnDropHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cut = Arc::new(Mutex::new(CancellationToken::new()));
        let current = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let token = current.lock().unwrap().clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            cut,
            _task: AbortOnDropHandle::new(task),
        }
    }

    pub fn cut_connections(&self) {
        let mut token = self.cut.lock().unwrap();
        token.cancel();
        *token = CancellationToken::new();
    }
}

/// A fake broker: accepts one v5 client, lets it publish for a moment, then sends DISCONNECT
/// `reason` with a Server Reference (how a broker moves a connected client).
pub async fn fake_broker_that_moves_us(
    reason: DisconnectReasonCode,
    to: String,
) -> (String, AbortOnDropHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let hello = proto::read_hello(&mut stream, 4096).await.unwrap();
        assert!(matches!(hello, Hello::V5 { .. }));
        stream
            .write_all(&proto::refusal_connack(ConnectReturnCode::Success))
            .await
            .unwrap();
        // Let some publishes arrive (and be discarded) first.
        let mut sink = vec![0u8; 64 * 1024];
        let until = Instant::now() + Duration::from_millis(300);
        while let Ok(Ok(n)) = tokio::time::timeout_at(until, stream.read(&mut sink)).await {
            if n == 0 {
                return;
            }
        }
        let disconnect = Disconnect {
            reason_code: reason,
            properties: Some(DisconnectProperties {
                session_expiry_interval: None,
                reason_string: None,
                user_properties: Vec::new(),
                server_reference: Some(to),
            }),
        };
        let mut buf = bytes::BytesMut::new();
        Packet::Disconnect(disconnect)
            .write(&mut buf, None)
            .unwrap();
        stream.write_all(&buf).await.unwrap();
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                return;
            }
        }
    });
    (addr, AbortOnDropHandle::new(task))
}

/// Publishes `n` loader-format messages (sequence 0..n) on `topic` at `broker`, QoS 0, stamped
/// by a clock `clock_us` ahead of this machine's, and waits for a PINGRESP behind them (the
/// broker has read them all).
pub async fn publish_sequence(broker: &str, topic: &str, n: u64, clock_us: i64) {
    let mut s = TcpStream::connect(broker).await.unwrap();
    s.write_all(&proto::connect_packet("seq-pub"))
        .await
        .unwrap();
    let connack = proto::read_connack(&mut s).await.unwrap();
    assert_eq!(connack.code, ConnectReturnCode::Success);
    let mut out = BytesMut::new();
    for seq in 0..n {
        let mut payload = template(32);
        let header = Header {
            sent_us: now_us().saturating_add_signed(clock_us),
            seq,
        };
        header.write(&mut payload);
        Publish::new(topic, QoS::AtMostOnce, payload, None)
            .write(&mut out)
            .unwrap();
    }
    out.extend_from_slice(&[0xC0, 0x00]);
    s.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    loop {
        match Packet::read(&mut buf, None) {
            Ok(Packet::PingResp(PingResp)) => return,
            Ok(_) => {}
            Err(_) => assert!(s.read_buf(&mut buf).await.unwrap() > 0, "broker closed"),
        }
    }
}
