//! The Mosquitto plugin (`mosquitto-plugin/`) inside a real Mosquitto: `hello` says which
//! mechanism a move uses and a `move` does exactly that to a connected rumqttc v5 client; `rates`
//! counts each publish; malformed orders get an error answer and the broker keeps serving.
//! Needs mosquitto (skipped with a message when it is not installed, like the other Mosquitto
//! tests) and the plugin built (`cargo build -p mqdispatch-mosquitto-plugin`; `make test` does).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use mqdispatch::broker::{BrokerKind, BrokerSpec, RunningBroker, mosquitto};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Disconnect, DisconnectReasonCode, Packet};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::timeout;

const CONTROL: &str = "$CONTROL/mqdispatch/v1";
const RESPONSE: &str = "$CONTROL/mqdispatch/v1/response";
const GUARD: Duration = Duration::from_secs(15);

pub(crate) fn mosquitto_missing(test: &str) -> bool {
    match mqdispatch::broker::check_available(BrokerKind::Mosquitto) {
        Ok(()) => false,
        Err(e) => {
            eprintln!("SKIPPED {test}: {e}");
            true
        }
    }
}

/// A Mosquitto with the plugin, started the way a scenario with `plugin: true` starts it.
pub(crate) async fn start_with_plugin(dir: &Path) -> RunningBroker {
    let plugin = mosquitto::find_plugin().unwrap_or_else(|e| panic!("{e}"));
    let spec = BrokerSpec {
        mosquitto_plugin: Some(plugin),
        ..BrokerSpec::new("m1", BrokerKind::Mosquitto)
    };
    let broker = RunningBroker::start(&spec, dir)
        .await
        .expect("start mosquitto");
    assert!(broker.has_plugin());
    assert!(
        broker.version().ends_with("+ mqdispatch plugin"),
        "{}",
        broker.version()
    );
    broker
}

/// A Mosquitto with the plugin forced to the public kick (`plugin_opt_mechanism kick`): the
/// fallback a broker without the exported internals gets. Killed when dropped.
async fn start_forced_kick(dir: &Path) -> (tokio::process::Child, String) {
    let plugin = mosquitto::find_plugin().unwrap_or_else(|e| panic!("{e}"));
    let port = mqdispatch::broker::free_port().unwrap();
    let config = dir.join("kick.conf");
    let text = mosquitto::config_text(port, None, Some(&plugin)) + "plugin_opt_mechanism kick\n";
    std::fs::write(&config, text).unwrap();
    let binary = mosquitto::check_available().unwrap();
    let child = tokio::process::Command::new(binary)
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mosquitto");
    let addr = format!("127.0.0.1:{port}");
    timeout(GUARD, async {
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("mosquitto did not listen");
    (child, addr)
}

fn options(addr: &str, id: &str) -> MqttOptions {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut o = MqttOptions::new(id, host, port.parse().unwrap());
    o.set_outgoing_inflight_upper_limit(100);
    o
}

/// Talks to the plugin: publishes orders, reads the answers.
struct Control {
    client: AsyncClient,
    answers: mpsc::UnboundedReceiver<Value>,
}

impl Control {
    async fn connect(addr: &str) -> Control {
        let (client, mut events) = AsyncClient::new(options(addr, "ctl"), 100);
        let (tx, answers) = mpsc::unbounded_channel();
        let (suback_tx, mut suback) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(event) = events.poll().await {
                match event {
                    Event::Incoming(Packet::Publish(p)) if p.topic == RESPONSE.as_bytes() => {
                        let v = serde_json::from_slice(&p.payload).expect("answers are JSON");
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                    Event::Incoming(Packet::SubAck(_)) => {
                        let _ = suback_tx.send(());
                    }
                    _ => {}
                }
            }
        });
        client.subscribe(RESPONSE, QoS::AtLeastOnce).await.unwrap();
        timeout(GUARD, suback.recv()).await.expect("no SUBACK");
        Control { client, answers }
    }

    async fn ask_raw(&mut self, payload: &[u8]) -> Value {
        self.client
            .publish(CONTROL, QoS::AtLeastOnce, false, payload.to_vec())
            .await
            .unwrap();
        timeout(GUARD, self.answers.recv())
            .await
            .expect("no answer from the plugin")
            .expect("control client ended")
    }

    async fn ask(&mut self, order: Value) -> Value {
        self.ask_raw(order.to_string().as_bytes()).await
    }

    async fn mechanism(&mut self) -> String {
        let hello = self.ask(json!({"op": "hello"})).await;
        assert_eq!(hello["op"], "hello", "{hello}");
        hello["mechanism"].as_str().expect("mechanism").to_owned()
    }
}

/// Client `id` on `addr` publishing `n` QoS 1 messages (all acknowledged), then polling on until
/// the server disconnects it: the DISCONNECT packet as rumqttc kept it in `state.events`, or the
/// error that ended the connection when rumqttc could not read one.
///
/// rumqttc 0.25 cannot parse a DISCONNECT whose remaining length is 1 (a reason code and no
/// property length, which MQTT 5 §3.14.2.2.1 allows and Mosquitto's kick sends): it waits for
/// more bytes and then reports "Connection closed by peer abruptly".
async fn publisher(
    addr: &str,
    id: &str,
    n: usize,
    published: mpsc::UnboundedSender<()>,
) -> Result<Disconnect, String> {
    let (client, mut eventloop) = AsyncClient::new(options(addr, id), 100);
    for i in 0..n {
        client
            .publish("load/x", QoS::AtLeastOnce, false, vec![b'x'; 10 + i])
            .await
            .unwrap();
    }
    let mut acked = 0;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                acked += 1;
                if acked == n {
                    let _ = published.send(());
                }
            }
            Ok(_) => {}
            Err(ConnectionError::MqttState(StateError::ServerDisconnect { .. })) => {
                let found = eventloop.state.events.iter().find_map(|e| match e {
                    Event::Incoming(Packet::Disconnect(d)) => Some(d.clone()),
                    _ => None,
                });
                eventloop.state.events.clear();
                return Ok(found.expect("the DISCONNECT packet is in state.events"));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Starts `X`, moves it, and checks the answer and what X received against what `hello` said.
async fn move_and_check(addr: &str) {
    let mut ctl = Control::connect(addr).await;
    let mechanism = ctl.mechanism().await;
    let (published_tx, mut published) = mpsc::unbounded_channel();
    let target = addr.to_owned();
    let x = tokio::spawn(async move { publisher(&target, "X", 3, published_tx).await });
    timeout(GUARD, published.recv())
        .await
        .expect("X did not publish");

    let answer = ctl
        .ask(json!({"op": "move", "id": "m1", "client_id": "X",
                    "server_reference": "127.0.0.1:1999", "reason_code": 156}))
        .await;
    assert_eq!(answer["result"], mechanism.as_str(), "{answer}");
    assert_eq!(
        (&answer["id"], &answer["client_id"]),
        (&json!("m1"), &json!("X"))
    );
    let ended = timeout(GUARD, x)
        .await
        .expect("X was not disconnected")
        .unwrap();
    match (mechanism.as_str(), ended) {
        ("disconnect-0x9c", Ok(disconnect)) => {
            assert_eq!(
                disconnect.reason_code,
                DisconnectReasonCode::UseAnotherServer
            );
            let reference = disconnect.properties.and_then(|p| p.server_reference);
            assert_eq!(reference.as_deref(), Some("127.0.0.1:1999"));
        }
        ("kick-0x98", Ok(disconnect)) => {
            assert_eq!(
                disconnect.reason_code,
                DisconnectReasonCode::AdministrativeAction
            );
            assert!(
                disconnect
                    .properties
                    .and_then(|p| p.server_reference)
                    .is_none()
            );
        }
        // rumqttc 0.25 cannot read the kick's 3-byte DISCONNECT (see `publisher`); the reason on
        // the wire is checked with mosquitto_pub in `kick_reaches_mosquitto_pub_as_0x98`.
        ("kick-0x98", Err(e)) => assert!(e.contains("closed by peer"), "{e}"),
        (m, ended) => panic!("mechanism {m}, but X saw {ended:?}"),
    }
    // X is gone: a second move finds nobody, and the rates no longer list it.
    let again = ctl
        .ask(json!({"op": "move", "id": "m2", "client_id": "X", "server_reference": "h:1"}))
        .await;
    assert_eq!(again["result"], "not-connected", "{again}");
    let rates = ctl.ask(json!({"op": "rates", "id": "r"})).await;
    assert!(rates["clients"].get("X").is_none(), "{rates}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_move_does_what_hello_says() {
    if mosquitto_missing("plugin_move_does_what_hello_says") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with_plugin(dir.path()).await;
    // Debian's mosquitto 2.0.11 exports the internals: the move is the real redirect.
    let mut ctl = Control::connect(&broker.addr).await;
    assert_eq!(ctl.mechanism().await, "disconnect-0x9c");
    move_and_check(&broker.addr).await;
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_kick_fallback_does_what_hello_says() {
    if mosquitto_missing("plugin_kick_fallback_does_what_hello_says") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = start_forced_kick(dir.path()).await;
    let mut ctl = Control::connect(&addr).await;
    assert_eq!(ctl.mechanism().await, "kick-0x98");
    move_and_check(&addr).await;
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_rates_count_each_publish() {
    if mosquitto_missing("plugin_rates_count_each_publish") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with_plugin(dir.path()).await;
    let mut ctl = Control::connect(&broker.addr).await;
    let n = 57;
    let (published_tx, mut published) = mpsc::unbounded_channel();
    let target = broker.addr.clone();
    let p = tokio::spawn(async move { publisher(&target, "P", n, published_tx).await });
    timeout(GUARD, published.recv())
        .await
        .expect("P did not publish");
    let rates = ctl.ask(json!({"op": "rates", "id": "r1"})).await;
    assert_eq!(rates["id"], "r1");
    assert!(
        rates["t_ms"].as_u64().unwrap() > 1_700_000_000_000,
        "{rates}"
    );
    // Payloads of 10, 11, ... 10+n-1 bytes; the control client's own orders are not counted.
    let bytes: usize = (0..n).map(|i| 10 + i).sum();
    assert_eq!(
        rates["clients"],
        json!({"P": {"msgs": n, "bytes": bytes}}),
        "{rates}"
    );
    p.abort();
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_answers_malformed_orders_and_keeps_serving() {
    if mosquitto_missing("plugin_answers_malformed_orders_and_keeps_serving") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with_plugin(dir.path()).await;
    let mut ctl = Control::connect(&broker.addr).await;
    for bad in [
        &b"{not json"[..],
        b"",
        b"\xff\xfe\x00",
        br#"{"op":"explode"}"#,
        br#"{"op":"move","client_id":"X"}"#,
        br#"{"op":"move","client_id":"X","server_reference":"h:1","reason_code":152}"#,
    ] {
        let answer = ctl.ask_raw(bad).await;
        assert_eq!(answer["op"], "error", "{answer}");
        assert!(
            answer["error"].as_str().unwrap().starts_with("bad request"),
            "{answer}"
        );
    }
    // A client cannot move itself through its own order.
    let own = ctl
        .ask(json!({"op": "move", "id": "m", "client_id": "ctl", "server_reference": "h:1"}))
        .await;
    assert_eq!(own["result"], "error", "{own}");
    // Still serving: orders are answered and ordinary clients relay.
    assert_eq!(ctl.mechanism().await, "disconnect-0x9c");
    drop(crate::broker::relay(&broker.addr, 5).await);
    broker.stop().await.unwrap();
}

/// libmosquitto's `mosquitto_pub -V 5 -d -l` as client `S` (one stdin line = one PUBLISH) is
/// moved; returns the plugin's answer and what mosquitto_pub printed (`Received DISCONNECT (N)`).
async fn move_mosquitto_pub(addr: &str) -> (Value, String) {
    let mosquitto_pub = which("mosquitto_pub").unwrap_or_else(|| {
        panic!("mosquitto_pub is missing: apt-get install -y mosquitto-clients")
    });
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut child = tokio::process::Command::new(mosquitto_pub)
        .args([
            "-V", "5", "-d", "-l", "-i", "S", "-h", host, "-p", port, "-t", "load/s",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, b"one\n")
        .await
        .unwrap();
    let mut ctl = Control::connect(addr).await;
    timeout(GUARD, async {
        while ctl.ask(json!({"op": "rates"})).await["clients"]
            .get("S")
            .is_none()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("S never published");
    let answer = ctl
        .ask(json!({"op": "move", "id": "s", "client_id": "S", "server_reference": "127.0.0.1:1999"}))
        .await;
    drop(stdin);
    let out = timeout(GUARD, child.wait_with_output())
        .await
        .expect("mosquitto_pub did not exit")
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (answer, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_move_reaches_mosquitto_pub() {
    if mosquitto_missing("plugin_move_reaches_mosquitto_pub") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with_plugin(dir.path()).await;
    let (answer, text) = move_mosquitto_pub(&broker.addr).await;
    assert_eq!(answer["result"], "disconnect-0x9c", "{answer}");
    assert!(text.contains("Received DISCONNECT (156)"), "{text}");
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kick_reaches_mosquitto_pub_as_0x98() {
    if mosquitto_missing("kick_reaches_mosquitto_pub_as_0x98") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = start_forced_kick(dir.path()).await;
    let (answer, text) = move_mosquitto_pub(&addr).await;
    assert_eq!(answer["result"], "kick-0x98", "{answer}");
    assert!(text.contains("Received DISCONNECT (152)"), "{text}");
    child.kill().await.unwrap();
}

#[test]
fn scenario_key_plugin_loads_it_into_mosquitto_only() {
    let yaml = |brokers: &str| {
        format!(
            "name: t\nseed: 1\ntrials: 1\nbrokers: {brokers}\n\
             sampler: {{ interval: 1s, window: 5s }}\n\
             publishers:\n  - {{ name: p, count: 1, rate: 10, payload_bytes: 16, duration: 5s }}\n\
             arrival: {{ order: random, interval: 1s }}\n\
             methods:\n  - {{ name: dns-rr, assign: dns-rr }}\n"
        )
    };
    let parse = |b: &str| mqdispatch::scenario::parse(&yaml(b), "t.yaml");
    let on = parse("{ kind: mosquitto, count: 2, plugin: true }").unwrap();
    assert!(on.brokers.plugin);
    assert!(
        !parse("{ kind: mosquitto, count: 2 }")
            .unwrap()
            .brokers
            .plugin
    );
    let e = parse("{ kind: embedded, count: 2, plugin: true }")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("t.yaml:4:") && e.contains("kind: mosquitto"),
        "{e}"
    );
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
