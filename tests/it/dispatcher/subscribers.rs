//! Subscribers placed by the dispatcher: the `subscribe` CONNECT property (CONNACK 0x9C to the
//! subscriber policy's broker), the no-hint path (`--unhinted accept`: CONNACK 0x00, then
//! DISCONNECT 0x9C on the first SUBSCRIBE or PUBLISH), and Paho doing both unmodified.

use std::process::Stdio;
use std::time::Duration;

use bytes::BytesMut;
use mqdispatch::dispatcher::{
    Decision, DispatcherConfig, Policy, Role, SubscriberPolicy, Unhinted,
};
use mqdispatch::proto::{self, Hints, ProtoError};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, DisconnectReasonCode, Filter, Packet, Subscribe,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::{B1, B2, BOUND, Running, brokers, closed_within, eventually};

const GROUP: &str = "$share/g/load/#";

/// A report of `msgs_in_per_s` (and `cpu`) for `broker`.
fn inflow(broker: &str, cpu: f64, msgs_in_per_s: f64) -> String {
    let mut r = crate::util::cpu_report(broker, cpu);
    r.msgs_in_per_s = Some(msgs_in_per_s);
    r.to_line()
}

/// What a publisher that declares its rate tells the dispatcher.
fn publisher() -> Hints {
    Hints {
        rate: Some(10.0),
        subscribe: vec![],
    }
}

/// A dispatcher whose brokers reported `b1`, `b2` inflows; returns once both reports are in
/// (probed with publishers under least-cpu: b2 reports the lower CPU).
async fn with_inflows(mut cfg: DispatcherConfig, b1: f64, b2: f64) -> Running {
    cfg.policy = Policy::LeastCpu;
    let d = Running::start(cfg).await;
    let mut agent = TcpStream::connect(&d.reports).await.unwrap();
    let lines = format!("{}{}", inflow("b1", 50.0, b1), inflow("b2", 1.0, b2));
    agent.write_all(lines.as_bytes()).await.unwrap();
    // A declared rate makes the probe a publisher under `--unhinted accept` too.
    eventually("both reports in", BOUND, || async {
        let hints = publisher();
        let r = proto::request_redirect_with(&d.addr, None, "probe", &hints, BOUND);
        (r.await.unwrap().server_reference == B2).then_some(())
    })
    .await;
    d
}

/// The Server Reference a subscriber naming `filters` is sent to (CONNACK 0x9C).
async fn subscriber_goes_to(d: &Running, client_id: &str, filters: &[&str]) -> String {
    let hints = Hints {
        rate: None,
        subscribe: filters.iter().map(|f| f.to_string()).collect(),
    };
    let r = proto::request_redirect_with(&d.addr, None, client_id, &hints, BOUND)
        .await
        .unwrap();
    r.server_reference
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_with_the_property_go_where_the_inflow_is_in_proportion() {
    let mut d = with_inflows(
        DispatcherConfig::new(brokers(), Policy::LeastCpu),
        0.0,
        3000.0,
    )
    .await;
    // b1 receives nothing: it gets one member (a publisher may be sent there), after b2, which
    // has inflow, and then every member goes to b2.
    let mut on = Vec::new();
    for k in 0..4 {
        on.push(subscriber_goes_to(&d, &format!("s{k}"), &[GROUP]).await);
    }
    assert_eq!(on, [B2, B1, B2, B2]);
    let mut last = None;
    while let Ok(dec) = d.decisions.try_recv() {
        last = Some(dec);
    }
    let last = last.expect("decisions were sent before the answers");
    assert_eq!(
        (last.role, last.group.as_deref()),
        (Role::Subscriber, Some(GROUP))
    );
    d.stop().await;

    // 1000 : 3000 msgs/s over 8 members of a new group: 2 and 6, each broker one first (b2,
    // with more inflow, before b1).
    let d = with_inflows(
        DispatcherConfig::new(brokers(), Policy::LeastCpu),
        1000.0,
        3000.0,
    )
    .await;
    let mut on = Vec::new();
    for k in 0..8 {
        on.push(subscriber_goes_to(&d, &format!("m{k}"), &["$share/h/load/#", "x/y"]).await);
    }
    assert_eq!(on[..2], [B2, B1], "each broker gets a member first");
    let count = |b: &str| on.iter().filter(|r| *r == b).count();
    assert_eq!((count(B1), count(B2)), (2, 6), "{on:?}");
    // The same client id again is one member, not two: m0 (on b2) placed anew sees b2 with
    // five other members (600/s each) against b1's two (500/s each) and goes back to b2; a
    // new member then ties at 500/s each and takes b1 (fewer members). Counted twice, m0
    // would have seen b2 at 500/s and tied to b1.
    let h = "$share/h/load/#";
    assert_eq!(on[0], B2);
    assert_eq!(subscriber_goes_to(&d, "m0", &[h]).await, B2);
    assert_eq!(subscriber_goes_to(&d, "m8", &[h]).await, B1);
    // The plain filter `x/y` is a group of its own, its members counted too (m0 left it when
    // placed anew without it): 500/s on b1's two against 600/s on b2's five.
    assert_eq!(subscriber_goes_to(&d, "y0", &["x/y"]).await, B2);
    d.stop().await;

    // round-robin per group: k mod n, whatever the inflow.
    let mut cfg = DispatcherConfig::new(brokers(), Policy::LeastCpu);
    cfg.subscriber_policy = SubscriberPolicy::RoundRobin;
    let d = with_inflows(cfg, 0.0, 3000.0).await;
    let mut on = Vec::new();
    for k in 0..4 {
        on.push(subscriber_goes_to(&d, &format!("r{k}"), &[GROUP]).await);
    }
    assert_eq!(on, [B1, B2, B1, B2]);
    d.stop().await;
}

fn subscribe_packet(filter: &str) -> BytesMut {
    let mut s = Subscribe::new(Filter::new(filter, QoS::AtLeastOnce), None);
    s.pkid = 7;
    let mut buf = BytesMut::new();
    s.write(&mut buf).unwrap();
    buf
}

/// CONNECT without hints, expecting CONNACK 0x00.
async fn accepted(d: &Running, client_id: &str) -> TcpStream {
    let mut s = TcpStream::connect(&d.addr).await.unwrap();
    s.write_all(&proto::connect_packet(client_id))
        .await
        .unwrap();
    let connack = timeout(BOUND, proto::read_connack(&mut s))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(connack.code, ConnectReturnCode::Success);
    s
}

/// Reads the dispatcher's DISCONNECT, then the close.
async fn disconnect_of(s: &mut TcpStream) -> (DisconnectReasonCode, Option<String>) {
    let mut buf = BytesMut::from(&closed_within(s, BOUND).await[..]);
    match Packet::read(&mut buf, None) {
        Ok(Packet::Disconnect(d)) => (d.reason_code, d.properties.and_then(|p| p.server_reference)),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
}

/// An accepted client sends `first`: DISCONNECT 0x9C naming `to`, and the decision behind it.
async fn redirected_by_disconnect(d: &mut Running, id: &str, first: &[u8], to: &str) -> Decision {
    let mut s = accepted(d, id).await;
    s.write_all(first).await.unwrap();
    let got = disconnect_of(&mut s).await;
    assert_eq!(
        got,
        (DisconnectReasonCode::UseAnotherServer, Some(to.into()))
    );
    let dec = timeout(BOUND, d.decisions.recv()).await.unwrap().unwrap();
    assert_eq!(dec.client_id, id);
    dec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_hint_the_first_subscribe_or_publish_decides_with_disconnect_0x9c() {
    let mut cfg = DispatcherConfig::new(brokers(), Policy::LeastCpu);
    cfg.unhinted = Unhinted::Accept;
    cfg.handshake_timeout = Duration::from_millis(500);
    let mut d = with_inflows(cfg, 0.0, 3000.0).await;
    while d.decisions.try_recv().is_ok() {}

    // A subscriber: no SUBACK, DISCONNECT 0x9C to the inflow broker.
    let subscribe = subscribe_packet(GROUP);
    let dec = redirected_by_disconnect(&mut d, "quiet-sub", &subscribe, B2).await;
    assert_eq!(dec.role, Role::Subscriber);
    // A publisher that gave no hint: the publisher policy (least-cpu: b2), its PUBLISH dropped.
    let publish = [
        0x30, 0x09, 0x00, 0x04, b'l', b'o', b'a', b'd', 0x00, b'h', b'i',
    ];
    let dec = redirected_by_disconnect(&mut d, "quiet-pub", &publish, B2).await;
    assert_eq!(dec.role, Role::Publisher);

    // A publisher that declared its rate is redirected at once, as ever.
    let r = proto::request_redirect_with(&d.addr, None, "loud-pub", &publisher(), BOUND)
        .await
        .unwrap();
    assert_eq!(r.server_reference, B2);

    // Silent after CONNACK: closed within the handshake timeout, nothing sent.
    let mut s = accepted(&d, "silent").await;
    assert!(closed_within(&mut s, BOUND).await.is_empty());
    // Garbage after CONNACK closes only that connection.
    let mut s = accepted(&d, "garbage").await;
    s.write_all(&[0x82, 0xFF, 0xFF, 0xFF, 0xFF, 0x01])
        .await
        .unwrap();
    assert!(closed_within(&mut s, BOUND).await.is_empty());
    let mut s = accepted(&d, "after").await;
    s.write_all(&subscribe_packet("plain/topic")).await.unwrap();
    assert_eq!(
        disconnect_of(&mut s).await.0,
        DisconnectReasonCode::UseAnotherServer
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_live_broker_means_0x88_with_a_hint_and_disconnect_0x89_without() {
    let mut cfg = DispatcherConfig::new(brokers()[..1].to_vec(), Policy::LeastCpu);
    cfg.report_interval = Duration::from_millis(100);
    cfg.unhinted = Unhinted::Accept;
    let d = Running::start(cfg).await;
    let mut agent = TcpStream::connect(&d.reports).await.unwrap();
    agent
        .write_all(inflow("b1", 1.0, 10.0).as_bytes())
        .await
        .unwrap();
    // b1 reported once and then went silent: after 3 intervals nothing is live.
    let hints = Hints {
        rate: None,
        subscribe: vec![GROUP.into()],
    };
    eventually("0x88 for a subscriber", BOUND, || async {
        let r = proto::request_redirect_with(&d.addr, None, "late-sub", &hints, BOUND).await;
        match r {
            Err(ProtoError::Refused(ConnectReturnCode::ServerUnavailable)) => Some(()),
            Ok(_) => None,
            Err(e) => panic!("{e}"),
        }
    })
    .await;
    let mut s = accepted(&d, "late-quiet").await;
    s.write_all(&subscribe_packet(GROUP)).await.unwrap();
    assert_eq!(
        disconnect_of(&mut s).await,
        (DisconnectReasonCode::ServerBusy, None)
    );
    d.stop().await;
}

/// True when `python3 -c 'import paho.mqtt.client'` works; under CI a missing Paho fails.
pub(crate) fn paho_available(test: &str) -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import paho.mqtt.client"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI: python3 with paho-mqtt is required (apt-get install python3-paho-mqtt)"
        );
        eprintln!("SKIPPED {test}: python3 -c 'import paho.mqtt.client' failed");
    }
    ok
}

async fn paho(mode: &str, addr: &str) -> String {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut cmd = tokio::process::Command::new("python3");
    cmd.args(["-c", PAHO_SUBSCRIBER, mode, host, port, GROUP]);
    cmd.kill_on_drop(true);
    let out = timeout(BOUND * 2, cmd.output())
        .await
        .expect("paho finished")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_subscribers_get_the_reference_by_connack_with_the_property_or_by_disconnect() {
    if !paho_available("paho_subscribers") {
        return;
    }
    let mut cfg = DispatcherConfig::new(brokers(), Policy::LeastCpu);
    cfg.unhinted = Unhinted::Accept;
    let d = with_inflows(cfg, 0.0, 3000.0).await;
    assert_eq!(paho("property", &d.addr).await, format!("CONNACK 156 {B2}"));
    // Paho 1.6 and 2.x hand on_disconnect the DISCONNECT's reason code and properties. The
    // group's second member goes to b1, which has none yet.
    assert_eq!(
        paho("subscribe", &d.addr).await,
        format!("CONNACK 0 None\nDISCONNECT 156 {B1}")
    );
    d.stop().await;
}

/// `property`: CONNECT with the user property `subscribe` = the filter, print the CONNACK.
/// `subscribe`: plain CONNECT, SUBSCRIBE on CONNACK, print CONNACK and the DISCONNECT (reason
/// code and Server Reference as on_disconnect gets them). Works with paho-mqtt 1.6 and 2.x.
const PAHO_SUBSCRIBER: &str = r#"
import sys
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
mode, host, port, topic = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
args = dict(client_id="paho-sub-" + mode, protocol=mqtt.MQTTv5)
if hasattr(mqtt, "CallbackAPIVersion"):
    args["callback_api_version"] = mqtt.CallbackAPIVersion.VERSION2
client = mqtt.Client(**args)
seen = []
done = []
def code_of(rc):
    return rc.value if hasattr(rc, "value") else int(rc)
def on_connect(client, userdata, flags, reason_code, properties=None, *rest):
    seen.append(f"CONNACK {code_of(reason_code)} {getattr(properties, 'ServerReference', None)}")
    if mode == "property" or code_of(reason_code) != 0:
        done.append(1)
    else:
        client.subscribe(topic, qos=1)
def on_disconnect(client, userdata, *rest):
    # 1.6: (rc, properties); 2.x: (flags, reason_code, properties)
    reason = rest[-2] if len(rest) >= 2 else rest[0]
    props = rest[-1] if len(rest) >= 2 else None
    if mode == "subscribe" and seen and seen[0].startswith("CONNACK 0"):
        seen.append(f"DISCONNECT {code_of(reason)} {getattr(props, 'ServerReference', None)}")
    done.append(1)
client.on_connect = on_connect
client.on_disconnect = on_disconnect
props = None
if mode == "property":
    props = Properties(PacketTypes.CONNECT)
    props.UserProperty = ("subscribe", topic)
client.connect(host, port, properties=props)
for _ in range(100):
    client.loop(timeout=0.1)
    if done:
        break
print("\n".join(seen) if seen else "nothing")
sys.exit(0 if done else 1)
"#;
