//! The payload header on the wire: a recording broker decodes every PUBLISH the loader sends
//! (each send path, QoS 0 and 1, across a live move) and checks its send time and sequence.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use mqdispatch::loadgen::Placement;
use mqdispatch::payload::{Header, now_us};
use mqdispatch::proto::{self, Hello};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, Disconnect, DisconnectProperties, DisconnectReasonCode, Packet, PingResp,
    PubAck,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::AbortOnDropHandle;

use super::{config, profile, run_all};

/// One PUBLISH as the recording broker saw it.
#[derive(Clone, Debug)]
struct Got {
    header: Header,
    received_us: u64,
}

/// A broker that accepts every v5 client, acknowledges QoS 1, answers PINGREQ and records each
/// PUBLISH's header by client id. With `move_after`, its first connection is sent a DISCONNECT
/// 0x9C with that Server Reference after that many PUBLISHes.
struct Recorder {
    addr: String,
    got: Arc<Mutex<BTreeMap<String, Vec<Got>>>>,
    _task: AbortOnDropHandle<()>,
}

impl Recorder {
    async fn start(move_after: Option<(usize, String)>) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let got = Arc::new(Mutex::new(BTreeMap::new()));
        let log = got.clone();
        let task = tokio::spawn(async move {
            let mut move_after = move_after;
            let mut connections = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                let moving = move_after.take();
                connections.push(AbortOnDropHandle::new(tokio::spawn(serve(
                    stream, log, moving,
                ))));
            }
        });
        Recorder {
            addr,
            got,
            _task: AbortOnDropHandle::new(task),
        }
    }

    fn got(&self, client_id: &str) -> Vec<Got> {
        self.got
            .lock()
            .unwrap()
            .get(client_id)
            .cloned()
            .unwrap_or_default()
    }
}

async fn serve(
    mut stream: TcpStream,
    log: Arc<Mutex<BTreeMap<String, Vec<Got>>>>,
    mut move_after: Option<(usize, String)>,
) {
    let Ok(Hello::V5 { client_id, .. }) = proto::read_hello(&mut stream, 4096).await else {
        return;
    };
    if stream
        .write_all(&proto::refusal_connack(ConnectReturnCode::Success))
        .await
        .is_err()
    {
        return;
    }
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut seen = 0;
    loop {
        let packet = match Packet::read(&mut buf, None) {
            Ok(packet) => packet,
            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {
                match stream.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
            // rumqttc's parser wants a body; a bare DISCONNECT (E0 00, valid MQTT 5) has none.
            // (rumqttc reports it as PayloadRequired, the only packet of length 0 it refuses.)
            Err(rumqttc::v5::mqttbytes::Error::PayloadRequired) => return,
            Err(e) => panic!("malformed packet from the loader: {e}"),
        };
        let reply = match packet {
            Packet::Publish(publish) => {
                let header = Header::read(&publish.payload).expect("a payload with a header");
                log.lock()
                    .unwrap()
                    .entry(client_id.clone())
                    .or_default()
                    .push(Got {
                        header,
                        received_us: now_us(),
                    });
                seen += 1;
                let mut reply = Vec::new();
                if publish.qos == QoS::AtLeastOnce {
                    reply.push(Packet::PubAck(PubAck::new(publish.pkid, None)));
                }
                if move_after.as_ref().is_some_and(|(n, _)| seen == *n) {
                    let (_, reference) = move_after.take().expect("checked");
                    reply.push(Packet::Disconnect(Disconnect {
                        reason_code: DisconnectReasonCode::UseAnotherServer,
                        properties: Some(DisconnectProperties {
                            session_expiry_interval: None,
                            reason_string: None,
                            user_properties: Vec::new(),
                            server_reference: Some(reference),
                        }),
                    }));
                }
                reply
            }
            Packet::PingReq(_) => vec![Packet::PingResp(PingResp)],
            Packet::Disconnect(_) => return,
            _ => Vec::new(),
        };
        let mut out = BytesMut::new();
        for packet in reply {
            packet.write(&mut out, None).unwrap();
        }
        // A loader that has closed makes this fail; what it sent before is still to be read.
        if !out.is_empty() {
            let _ = stream.write_all(&out).await;
        }
    }
}

/// Sequences 0, 1, 2, … in arrival order; send times no later than receipt and within a few
/// hundred milliseconds of it, never going back.
fn assert_header_sequence(who: &str, got: &[Got]) {
    assert!(!got.is_empty(), "{who}: nothing received");
    for (i, g) in got.iter().enumerate() {
        assert_eq!(
            g.header.seq, i as u64,
            "{who}: message {i} has sequence {}",
            g.header.seq
        );
        let age_us = g.received_us as i64 - g.header.sent_us as i64;
        assert!(
            (-1_000..300_000).contains(&age_us),
            "{who}: message {i} sent {age_us} µs before its receipt"
        );
        if i > 0 {
            assert!(
                g.header.sent_us >= got[i - 1].header.sent_us,
                "{who}: time went back at {i}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_send_path_stamps_send_time_and_sequence_on_every_publish() {
    let recorder = Recorder::start(None).await;
    let kinds = [
        ("direct0", "send=per-message,qos=0"),
        ("direct1", "send=per-message,qos=1"),
        ("client", "send=per-message-via-client,qos=0"),
        ("batched", "send=batched,qos=0"),
    ];
    let profiles = kinds
        .iter()
        .map(|(name, spec)| {
            profile(&format!(
                "name={name},count=1,rate=1000,bytes=64,duration=1s,{spec}"
            ))
        })
        .collect();
    let placement = Placement::DnsRoundRobin {
        brokers: vec![recorder.addr.clone()],
    };
    let (summary, _) = run_all(config(profiles, placement, "hdr"), Duration::from_secs(20)).await;
    let summary = summary.unwrap();
    for (p, (name, _)) in summary.publishers.iter().zip(kinds) {
        assert_eq!(p.sent_total, 1000, "{name}: {p:?}");
        // The loader's DISCONNECT follows its last PUBLISH on the same connection, so every
        // PUBLISH is in by the time the recorder's connection task has read it; allow it a
        // moment to get there.
        let id = format!("hdr-{name}-0");
        let mut got = recorder.got(&id);
        for _ in 0..100 {
            if got.len() >= 1000 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            got = recorder.got(&id);
        }
        let missing: Vec<u64> = (0..1000)
            .filter(|i| !got.iter().any(|g| g.header.seq == *i))
            .collect();
        assert_eq!(got.len(), 1000, "{name}: missing {missing:?}");
        assert_header_sequence(name, &got);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_numbers_run_on_without_gaps_across_a_live_move() {
    let second = Recorder::start(None).await;
    let first = Recorder::start(Some((200, second.addr.clone()))).await;
    let cfg = config(
        vec![profile(
            "name=m,count=1,rate=1000,bytes=32,duration=1500ms,send=per-message",
        )],
        Placement::DnsRoundRobin {
            brokers: vec![first.addr.clone()],
        },
        "hdr-move",
    );
    let (summary, _) = run_all(cfg, Duration::from_secs(20)).await;
    let summary = summary.unwrap();
    let p = &summary.publishers[0];
    assert_eq!(p.reconnects, 1, "{p:?}");
    assert_eq!(p.broker.as_deref(), Some(second.addr.as_str()));
    let id = "hdr-move-m-0";
    let before = first.got(id);
    let mut after = second.got(id);
    for _ in 0..100 {
        if (before.len() + after.len()) as u64 >= p.sent_total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = second.got(id);
    }
    assert!(
        before.len() >= 200 && !after.is_empty(),
        "{} then {}",
        before.len(),
        after.len()
    );
    // Messages owed while it was away were skipped and took no number: the two brokers'
    // messages together are 0..sent without a gap.
    let all: Vec<Got> = before.into_iter().chain(after).collect();
    assert_eq!(all.len() as u64, p.sent_total);
    assert_eq!(p.sent_total + p.skipped, p.target_total, "{p:?}");
    assert_header_sequence("moved publisher", &all);
}
