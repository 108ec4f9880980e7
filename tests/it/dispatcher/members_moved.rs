//! Members moved live: the rebalancer sends a shared group's members to where the inflow is,
//! and the loader's members follow (embedded brokers: client-id takeover, back through the
//! dispatcher to the pinned broker).

use std::collections::HashMap;
use std::time::Duration;

use mqdispatch::client::connect_following_redirects;
use mqdispatch::dispatcher::rebalance::{MoveRecord, MoverKind, RebalanceConfig};
use mqdispatch::dispatcher::{
    BrokerEntry, DispatcherConfig, Extras, Policy, Role, bind_listener, run_with,
};
use mqdispatch::load_report::LoadReport;
use mqdispatch::loadgen::subscriber::{SubscriberConfig, SubscriberEvent, Via, start_via};
use mqdispatch::loadgen::subscription::SubscriberSpec;
use mqdispatch::proto::SUBSCRIBE_PROPERTY;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::loadgen::fakes::Broker;

const BOUND: Duration = Duration::from_secs(15);
const INTERVAL: Duration = Duration::from_millis(100);

/// A dispatcher in this process placing subscribers by inflow and moving members, with its
/// moves on a channel.
struct Running {
    addr: String,
    report_addr: std::net::SocketAddr,
    moves: tokio::sync::mpsc::UnboundedReceiver<MoveRecord>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn start_dispatcher(b1: &Broker, b2: &Broker) -> Running {
    start_dispatcher_for(b1.addr(), b2.addr(), MoverKind::Takeover)
}

fn start_dispatcher_for(b1: String, b2: String, mover: MoverKind) -> Running {
    let brokers: Vec<BrokerEntry> = [("b1", b1), ("b2", b2)]
        .map(|(id, addr)| BrokerEntry {
            id: id.into(),
            addr,
            tls_addr: None,
        })
        .to_vec();
    let mut cfg = DispatcherConfig::new(brokers, Policy::RoundRobin);
    cfg.mover = mover;
    cfg.report_interval = INTERVAL;
    cfg.window = 5 * INTERVAL;
    cfg.rebalance = Some(RebalanceConfig {
        hysteresis: 2,
        cooldown: 3 * INTERVAL,
        max_moves_per_s: 10.0,
        hold: Duration::from_secs(60),
        ..RebalanceConfig::default()
    });
    let listener = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let reports = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let (addr, report_addr) = (
        listener.local_addr().unwrap().to_string(),
        reports.local_addr().unwrap(),
    );
    let (moves_tx, moves) = tokio::sync::mpsc::unbounded_channel::<MoveRecord>();
    let cancel = CancellationToken::new();
    let extras = Extras {
        moves: Some(moves_tx),
        ..Extras::default()
    };
    let task = tokio::spawn(run_with(
        listener,
        Some(reports),
        cfg,
        None,
        extras,
        cancel.clone(),
    ));
    Running {
        addr,
        report_addr,
        moves,
        cancel,
        task,
    }
}

/// Reports `busy` receiving 10,000 msgs/s and the other broker nothing, every interval, until
/// aborted.
fn inflow_on(busy: &'static str, report_addr: std::net::SocketAddr) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut stream = TcpStream::connect(report_addr).await.unwrap();
        loop {
            for broker in ["b1", "b2"] {
                let rate = if broker == busy { 10_000.0 } else { 0.0 };
                let report = LoadReport {
                    broker: broker.into(),
                    t_ms: mqdispatch::now_ms(),
                    cpu_pct: 10.0,
                    msgs_in_per_s: Some(rate),
                    connections: None,
                    token: None,
                };
                stream.write_all(report.to_line().as_bytes()).await.unwrap();
            }
            tokio::time::sleep(INTERVAL).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_a_broker_without_inflow_move_to_the_one_with_it_but_one() {
    let (b1, b2) = (Broker::spawn(), Broker::spawn());
    let Running {
        addr,
        report_addr,
        mut moves,
        cancel,
        task: dispatcher,
    } = start_dispatcher(&b1, &b2);

    // Four members, placed before any inflow: two on each broker.
    let spec = SubscriberSpec::parse_spec("name=s,count=4,topic=$share/g/load/#").unwrap();
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let members = start_via(
        SubscriberConfig {
            specs: vec![spec],
            brokers: vec![("b1".into(), b1.addr()), ("b2".into(), b2.addr())],
            publishers_by_topic: HashMap::new(),
            sender_clocks_us: HashMap::new(),
            client_id_prefix: "t-".into(),
            tls: None,
        },
        Via::Dispatchers {
            addrs: vec![addr],
            max_hops: 3,
        },
        events_tx,
        cancel.child_token(),
    )
    .await
    .unwrap();

    // Then b1 receives 10,000 msgs/s and b2 nothing: the best split is three on b1 and the one
    // b2 keeps in case a publisher is sent there.
    let agent = inflow_on("b1", report_addr);

    let moved = vec![timeout(BOUND, moves.recv()).await.unwrap().unwrap()];
    for m in &moved {
        assert_eq!(
            (m.role, m.from.as_str(), m.to.as_str()),
            (Role::Subscriber, "b2", "b1"),
            "{m:?}"
        );
    }
    // Which two were on b2 depends on the order the members reached the dispatcher.
    let ids: Vec<&str> = moved.iter().map(|m| m.client_id.as_str()).collect();

    // Three members end up receiving on b1, the moved one with one move.
    let mut on: HashMap<String, (String, u32)> = HashMap::new();
    let on_b1 =
        |on: &HashMap<String, (String, u32)>| on.values().filter(|(b, _)| b == "b1").count();
    timeout(BOUND, async {
        while !(on.len() == 4 && on_b1(&on) == 3) {
            let Some(SubscriberEvent::Second {
                member,
                broker,
                moves,
                ..
            }) = events.recv().await
            else {
                panic!("members stopped");
            };
            on.insert(member, (broker, moves));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not three members on b1: {on:?}"));
    for (member, (_, moves)) in &on {
        let was_moved = ids.contains(&format!("t-{member}").as_str());
        assert_eq!(*moves, u32::from(was_moved), "{member}: {on:?}");
    }
    // Nothing more moves: the group is at its best split.
    tokio::time::sleep(10 * INTERVAL).await;
    assert!(moves.try_recv().is_err());

    agent.abort();
    cancel.cancel();
    members
        .finish(Duration::ZERO, Duration::ZERO)
        .await
        .unwrap();
    timeout(BOUND, dispatcher).await.unwrap().unwrap().unwrap();
}

/// The redirect-following library: a rumqttc subscriber naming its filter in its options is
/// placed as a member, and once moved it subscribes again at its new broker and receives there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_library_subscriber_is_placed_moved_and_subscribed_again() {
    let (b1, b2) = (Broker::spawn(), Broker::spawn());
    let mut d = start_dispatcher(&b1, &b2);
    let filter = "$share/g/load/#";
    let (got_tx, mut got) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let mut clients = Vec::new();
    for id in ["lib-0", "lib-1", "lib-2"] {
        let options = move |host: &str, port: u16| {
            let mut o = MqttOptions::new(id, host, port);
            o.set_outgoing_inflight_upper_limit(10)
                .set_user_properties(vec![(SUBSCRIBE_PROPERTY.into(), filter.into())]);
            o
        };
        let (client, mut events) = connect_following_redirects(&d.addr, options, 10)
            .await
            .unwrap();
        events.keep_subscribed(vec![Filter::new(filter, QoS::AtMostOnce)]);
        let tx = got_tx.clone();
        let poll = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = tx.send((id.into(), format!("suback {}", events.broker())));
                    }
                    Ok(Event::Incoming(Packet::Publish(_))) => {
                        let _ = tx.send((id.into(), format!("publish {}", events.broker())));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        clients.push((client, AbortOnDropHandle::new(poll)));
        // Subscribed before the next one asks: placements in a known order.
        let (who, what) = timeout(BOUND, got.recv()).await.unwrap().unwrap();
        assert_eq!(who, id);
        assert!(what.starts_with("suback"), "{what}");
    }
    // No inflow yet: b1, b2, b1. Then inflow on b2 only: one of b1's members moves there
    // (the smallest client id), b1 keeping one.
    let agent = inflow_on("b2", d.report_addr);
    let m = timeout(BOUND, d.moves.recv()).await.unwrap().unwrap();
    assert_eq!(
        (m.client_id.as_str(), m.from.as_str(), m.to.as_str(), m.role),
        ("lib-0", "b1", "b2", Role::Subscriber)
    );
    let resubscribed = format!("suback {}", b2.addr());
    timeout(BOUND, async {
        while got.recv().await.unwrap() != ("lib-0".into(), resubscribed.clone()) {}
    })
    .await
    .expect("the moved member did not subscribe at b2");
    // Messages published at b2 now reach the moved member too (the group's two members there).
    let publisher = AbortOnDropHandle::new(tokio::spawn(publish_every_10ms(b2.addr())));
    let on_b2 = format!("publish {}", b2.addr());
    timeout(BOUND, async {
        while got.recv().await.unwrap() != ("lib-0".into(), on_b2.clone()) {}
    })
    .await
    .expect("the moved member received nothing at b2");
    drop(publisher);
    agent.abort();
    d.cancel.cancel();
    timeout(BOUND, d.task).await.unwrap().unwrap().unwrap();
}

async fn publish_every_10ms(broker: String) {
    let (host, port) = broker.rsplit_once(':').unwrap();
    let mut o = MqttOptions::new("seq-pub", host, port.parse().unwrap());
    o.set_outgoing_inflight_upper_limit(10);
    let (client, mut eventloop) = AsyncClient::new(o, 10);
    let _poll = AbortOnDropHandle::new(tokio::spawn(async move {
        while eventloop.poll().await.is_ok() {}
    }));
    loop {
        let _ = client
            .publish("load/x", QoS::AtMostOnce, false, vec![0u8; 16])
            .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Unmodified Paho on Mosquitto with the plugin: placed by the `subscribe` property, moved live
/// by the plugin, and sent to its new broker either by the DISCONNECT's Server Reference (as
/// `on_disconnect` gets it) or, after the kick, by the dispatcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paho_member_is_moved_live_through_the_plugin() {
    if crate::mosquitto_plugin::mosquitto_missing("paho_member_move")
        || !super::subscribers::paho_available("paho_member_move")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (d1, d2) = (dir.path().join("m1"), dir.path().join("m2"));
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::create_dir_all(&d2).unwrap();
    let m1 = crate::mosquitto_plugin::start_with_plugin(&d1).await;
    let m2 = crate::mosquitto_plugin::start_with_plugin(&d2).await;
    let mut d = start_dispatcher_for(m1.addr.clone(), m2.addr.clone(), MoverKind::MosquittoPlugin);
    // Two loader members first (b1, b2), then Paho: the tie goes to b1.
    let spec = SubscriberSpec::parse_spec("name=s,count=2,topic=$share/g/load/#").unwrap();
    let (events_tx, _events) = tokio::sync::mpsc::unbounded_channel();
    let members = start_via(
        SubscriberConfig {
            specs: vec![spec],
            brokers: vec![
                ("b1".into(), m1.addr.clone()),
                ("b2".into(), m2.addr.clone()),
            ],
            publishers_by_topic: HashMap::new(),
            sender_clocks_us: HashMap::new(),
            client_id_prefix: "t-".into(),
            tls: None,
        },
        Via::Dispatchers {
            addrs: vec![d.addr.clone()],
            max_hops: 3,
        },
        events_tx,
        d.cancel.child_token(),
    )
    .await
    .unwrap();
    let (host, port) = d.addr.rsplit_once(':').unwrap();
    let mut paho = tokio::process::Command::new("python3")
        .args(["-c", PAHO_MEMBER, host, port, "$share/g/load/#"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(paho.stdout.take().unwrap()).lines();
    let mut next = async || {
        timeout(BOUND, lines.next_line())
            .await
            .expect("paho said nothing")
            .unwrap()
            .expect("paho ended")
    };
    assert_eq!(next().await, format!("CONNACK 156 {}", m1.addr));
    assert_eq!(next().await, format!("SUBSCRIBED {}", m1.addr));
    // Inflow on b2 only: one of b1's two members ("paho-member" sorts first) goes to b2.
    let agent = inflow_on("b2", d.report_addr);
    let m = timeout(BOUND, d.moves.recv()).await.unwrap().unwrap();
    assert_eq!(
        (m.client_id.as_str(), m.from.as_str(), m.to.as_str(), m.role),
        ("paho-member", "b1", "b2", Role::Subscriber)
    );
    // The plugin sends DISCONNECT 0x9C with the reference to a client whose connection it knows
    // from a PUBLISH; a pure subscriber gets the public kick (0x98, no reference) and comes
    // back through the dispatcher, which sends it to where it was pinned.
    match m.outcome.as_str() {
        "disconnect-0x9c" => assert_eq!(next().await, format!("DISCONNECT 156 {}", m2.addr)),
        "kick-0x98" => {
            assert_eq!(next().await, "DISCONNECT 152 None");
            assert_eq!(next().await, format!("CONNACK 156 {}", m2.addr));
        }
        other => panic!("move outcome {other}"),
    }
    assert!(
        timeout(BOUND, paho.wait())
            .await
            .unwrap()
            .unwrap()
            .success()
    );
    agent.abort();
    d.cancel.cancel();
    members
        .finish(Duration::ZERO, Duration::ZERO)
        .await
        .unwrap();
    timeout(BOUND, d.task).await.unwrap().unwrap().unwrap();
    m1.stop().await.unwrap();
    m2.stop().await.unwrap();
}

/// Paho (1.6 or 2.x): CONNECT to the dispatcher with `subscribe` = the filter, print the
/// CONNACK's code and reference, connect there and subscribe, print SUBSCRIBED, then print the
/// broker's DISCONNECT code and reference as `on_disconnect` gets them; after a kick (0x98, no
/// reference) ask the dispatcher again and print its CONNACK.
const PAHO_MEMBER: &str = r#"
import sys
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
host, port, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3]
args = dict(client_id="paho-member", protocol=mqtt.MQTTv5)
if hasattr(mqtt, "CallbackAPIVersion"):
    args["callback_api_version"] = mqtt.CallbackAPIVersion.VERSION2
state = {"ref": None, "moved": 0, "done": False}
def code_of(rc):
    return rc.value if hasattr(rc, "value") else int(rc)
def say(line):
    print(line, flush=True)
def on_connect(client, userdata, flags, reason_code, properties=None, *rest):
    if code_of(reason_code) == 156:
        state["ref"] = properties.ServerReference
        say(f"CONNACK 156 {state['ref']}")
    else:
        client.subscribe(topic, qos=0)
def on_subscribe(client, userdata, mid, *rest):
    say(f"SUBSCRIBED {state['ref']}")
def on_disconnect(client, userdata, *rest):
    reason = rest[-2] if len(rest) >= 2 else rest[0]
    props = rest[-1] if len(rest) >= 2 else None
    # At a broker (not the dispatcher's refusal): the move.
    if state["ref"] and client._port != port and code_of(reason) in (152, 156):
        say(f"DISCONNECT {code_of(reason)} {getattr(props, 'ServerReference', None)}")
        state["moved"] = code_of(reason)
client = mqtt.Client(**args)
client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_disconnect = on_disconnect
props = Properties(PacketTypes.CONNECT)
props.UserProperty = ("subscribe", topic)
client.connect(host, port, properties=props)
for _ in range(50):
    client.loop(timeout=0.1)
    if state["ref"]:
        break
client.disconnect()
rhost, rport = state["ref"].rsplit(":", 1)
client.connect(rhost, int(rport))
for _ in range(300):
    client.loop(timeout=0.1)
    if state["moved"]:
        break
if state["moved"] == 152:
    # The kick names no broker: ask the dispatcher again, with the same hint.
    state["ref"] = None
    client.connect(host, port, properties=props)
    for _ in range(50):
        client.loop(timeout=0.1)
        if state["ref"]:
            break
state["done"] = bool(state["moved"]) and bool(state["ref"])
sys.exit(0 if state["done"] else 1)
"#;
