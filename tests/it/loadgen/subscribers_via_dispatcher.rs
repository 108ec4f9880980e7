//! The loader's subscribers through a dispatcher (`load --subscriber ... --dispatcher`), and a
//! member moved by a server DISCONNECT 0x9C: measurement carries on across the move.

use std::collections::{BTreeSet, HashMap};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use mqdispatch::loadgen::subscriber::{SubscriberConfig, SubscriberEvent, Via, start_via};
use mqdispatch::loadgen::subscription::SubscriberSpec;
use mqdispatch::proto::{self, Hello, RedirectReason};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, SubAck, SubscribeReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::fakes::{Broker, publish_sequence};
use crate::util::{bin, spawn_listening};

const BOUND: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_through_the_dispatcher_cover_every_broker_with_inflow_and_lose_nothing() {
    let (b1, b2) = (Broker::spawn(), Broker::spawn());
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.csv");
    let subs = dir.path().join("subs.csv");
    let dispatcher = spawn_listening(&[
        "dispatcher",
        "--listen",
        "127.0.0.1:0",
        "--broker",
        &format!("b1={}", b1.addr()),
        "--broker",
        &format!("b2={}", b2.addr()),
        "--policy",
        "round-robin",
        "--events",
        events.to_str().unwrap(),
    ]);
    let mut cmd = Command::new(bin());
    cmd.args(["load", "--dispatcher", &dispatcher.addr, "--profile"])
        .arg("name=p,count=4,rate=100,bytes=32,duration=1500ms")
        .args(["--arrival-interval", "0s", "--seed", "3", "--subscriber"])
        .arg("name=s,count=2,topic=$share/g/load/#,qos=1")
        .arg("--subscribers-out")
        .arg(&subs)
        .stderr(Stdio::inherit());
    let output = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    // `subscriber members expected received lost ...`: both members, all 600 messages.
    let row: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with("s "))
        .unwrap_or_else(|| panic!("no subscriber row in {stdout}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[1..5], ["2", "600", "600", "0"], "{stdout}");

    // Publishers alternate b1, b2 (round-robin): both brokers have inflow, and a member each.
    let csv = std::fs::read_to_string(&subs).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("t_s,subscriber,broker,received,latency_p50_ms,latency_p99_ms,latency_max_ms,moves")
    );
    let mut members_on: HashMap<String, BTreeSet<String>> = HashMap::new();
    for line in lines {
        let cols: Vec<&str> = line.split(',').collect();
        assert_eq!(cols[7], "0", "nobody moved: {line}");
        let on = members_on.entry(cols[2].to_owned()).or_default();
        on.insert(cols[1].to_owned());
    }
    assert_eq!(members_on.len(), 2, "{csv}");
    assert!(members_on[&b1.addr()].len() == 1 && members_on[&b2.addr()].len() == 1);

    // The dispatcher's events say which placements were the subscribers'.
    let events = std::fs::read_to_string(&events).unwrap();
    let header: Vec<&str> = events.lines().next().unwrap().split(',').collect();
    assert_eq!(header[header.len() - 2..], ["role", "group"]);
    let placed: BTreeSet<(String, String)> = events
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|c| c[c.len() - 2] == "subscriber")
        .map(|c| (c[2].to_owned(), c[c.len() - 1].to_owned()))
        .collect();
    let group = "$share/g/load/#".to_owned();
    assert_eq!(
        placed,
        BTreeSet::from([("b1".into(), group.clone()), ("b2".into(), group)])
    );
}

/// A fake broker for one subscriber: CONNACK, SUBACK, then (when `go` fires) DISCONNECT
/// 0x9C naming `to`. Publishes nothing.
async fn broker_that_moves_its_subscriber(
    to: String,
    go: oneshot::Receiver<()>,
) -> (String, AbortOnDropHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = BytesMut::new();
        let hello = proto::read_hello_into(&mut stream, &mut buf, 4096).await;
        assert!(matches!(hello, Ok(Hello::V5 { .. })), "{hello:?}");
        let connack = proto::refusal_connack(ConnectReturnCode::Success);
        stream.write_all(&connack).await.unwrap();
        let pkid = loop {
            match Packet::read(&mut buf, None) {
                Ok(Packet::Subscribe(s)) => break s.pkid,
                Ok(other) => panic!("expected SUBSCRIBE, got {other:?}"),
                Err(_) => assert!(stream.read_buf(&mut buf).await.unwrap() > 0),
            }
        };
        let ack = SubAck {
            pkid,
            return_codes: vec![SubscribeReasonCode::Success(QoS::AtMostOnce)],
            properties: None,
        };
        let mut out = BytesMut::new();
        Packet::SubAck(ack).write(&mut out, None).unwrap();
        stream.write_all(&out).await.unwrap();
        go.await.unwrap();
        let moved = proto::redirect_disconnect(RedirectReason::UseAnotherServer, &to);
        stream.write_all(&moved).await.unwrap();
        let mut sink = [0u8; 1024];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    (addr, AbortOnDropHandle::new(task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_moved_by_disconnect_0x9c_subscribes_there_and_keeps_counting() {
    let real = Broker::spawn();
    let (go, went) = oneshot::channel();
    let (fake, _fake_task) = broker_that_moves_its_subscriber(real.addr(), went).await;
    let cfg = SubscriberConfig {
        specs: vec![SubscriberSpec::parse_spec("name=s,count=1,topic=load/#").unwrap()],
        brokers: vec![("b1".into(), fake.clone())],
        publishers_by_topic: HashMap::from([("load/p".into(), "p".into())]),
        sender_clocks_us: HashMap::new(),
        client_id_prefix: "moved-".into(),
        tls: None,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let subs = timeout(
        BOUND,
        start_via(cfg, Via::Brokers, tx, CancellationToken::new()),
    )
    .await
    .unwrap()
    .unwrap();
    go.send(()).unwrap();
    // Its next second reports one move, on the broker the DISCONNECT named.
    timeout(BOUND, async {
        while let Some(SubscriberEvent::Second { moves, broker, .. }) = rx.recv().await {
            if moves == 1 {
                assert_eq!(broker, real.addr());
                return;
            }
        }
    })
    .await
    .expect("a second after the move");
    publish_sequence(&real.addr(), "load/p", 50, 0).await;
    let summary = subs
        .finish(Duration::from_millis(500), BOUND)
        .await
        .unwrap();
    let m = &summary.members[0];
    assert_eq!(
        (m.moves, m.reconnects, m.broker.as_str()),
        (1, 1, real.addr().as_str())
    );
    assert_eq!(summary.streams.len(), 1);
    let stats = summary.streams[0].stats;
    assert_eq!((stats.distinct, stats.duplicates), (50, 0), "{stats:?}");
}
