//! The TLS client port beside the plain one. Certificates come from a
//! throwaway CA made per test; Paho (Python) checks interoperability.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mqdispatch::dispatcher::tls::TlsListener;
use mqdispatch::dispatcher::{
    BrokerEntry, DispatcherConfig, Extras, Policy, bind_listener, run_with,
};
use mqdispatch::proto::{self, ProtoError};
use mqdispatch::tls::ThrowawayCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

const PLAIN_REF: &str = "127.0.0.1:1884";
const TLS_REF: &str = "127.0.0.1:8884";
/// Failure guard only.
const GUARD: Duration = Duration::from_secs(15);

struct Tls {
    _dir: tempfile::TempDir,
    ca: ThrowawayCa,
    plain: String,
    tls: String,
    cancel: CancellationToken,
}

impl Drop for Tls {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn brokers() -> Vec<BrokerEntry> {
    vec![BrokerEntry {
        id: "b1".into(),
        addr: PLAIN_REF.into(),
        tls_addr: Some(TLS_REF.into()),
    }]
}

async fn start(handshake_timeout: Duration, max_connections: usize) -> Tls {
    start_with(handshake_timeout, max_connections, false).await
}

/// With `client_ca`, clients must present a certificate signed by the test CA.
async fn start_with(handshake_timeout: Duration, max_connections: usize, client_ca: bool) -> Tls {
    let dir = tempfile::tempdir().unwrap();
    let ca = ThrowawayCa::create(dir.path()).unwrap();
    let mut cfg = DispatcherConfig::new(brokers(), Policy::RoundRobin);
    cfg.handshake_timeout = handshake_timeout;
    cfg.max_connections = max_connections;
    let listener = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let tls_listener = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let t = Tls {
        plain: listener.local_addr().unwrap().to_string(),
        tls: tls_listener.local_addr().unwrap().to_string(),
        ca: ca.clone(),
        _dir: dir,
        cancel: CancellationToken::new(),
    };
    let tls = TlsListener {
        listener: tls_listener,
        acceptor: TlsAcceptor::from(
            mqdispatch::tls::server_config(
                &ca.server_cert,
                &ca.server_key,
                client_ca.then_some(ca.ca_cert.as_path()),
            )
            .unwrap(),
        ),
    };
    tokio::spawn(run_with(
        listener,
        None,
        cfg,
        None,
        Extras {
            tls: Some(tls),
            ..Extras::default()
        },
        t.cancel.clone(),
    ));
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_plain_clients_side_by_side_each_get_their_own_reference() {
    let t = start(Duration::from_secs(3), 64).await;
    let config = t.ca.client_config().unwrap();
    let over_tls = proto::request_redirect_via(&t.tls, Some(&config), "tls-1", GUARD)
        .await
        .unwrap();
    assert_eq!(over_tls.server_reference, TLS_REF);
    let plain = proto::request_redirect(&t.plain, "plain-1", GUARD)
        .await
        .unwrap();
    assert_eq!(plain.server_reference, PLAIN_REF);
    // A client that does not trust the dispatcher's CA never gets a CONNACK.
    let other = tempfile::tempdir().unwrap();
    let stranger = ThrowawayCa::create(other.path()).unwrap();
    let err =
        proto::request_redirect_via(&t.tls, Some(&stranger.client_config().unwrap()), "x", GUARD)
            .await
            .unwrap_err();
    assert!(matches!(err, ProtoError::Io(_)), "{err:?}");
    // Plain MQTT on the TLS port is not answered as MQTT.
    let err = proto::request_redirect(&t.tls, "plain-on-tls", GUARD)
        .await
        .unwrap_err();
    assert!(
        !matches!(err, ProtoError::Timeout(_)),
        "closed, not hung: {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_only_devices_with_its_certificates_are_redirected() {
    let t = start_with(Duration::from_secs(3), 64, true).await;
    let config = t.ca.client_config().unwrap();
    let err = proto::request_redirect_via(&t.tls, Some(&config), "no-cert", GUARD)
        .await
        .unwrap_err();
    assert!(matches!(err, ProtoError::Io(_)), "{err:?}");
    // A device certificate signed by the client CA: served.
    let device = t.ca.device_config().unwrap();
    let r = proto::request_redirect_via(&t.tls, Some(&device), "device-1", GUARD)
        .await
        .unwrap();
    assert_eq!(r.server_reference, TLS_REF);
    // A device certificate from another CA (the dispatcher's server certificate still trusted):
    // refused.
    let other = tempfile::tempdir().unwrap();
    let stranger = ThrowawayCa::create(other.path()).unwrap();
    let forged = mqdispatch::tls::client_config_with_identity(
        &t.ca.ca_cert,
        Some((&stranger.device_cert, &stranger.device_key)),
    )
    .unwrap();
    let err = proto::request_redirect_via(&t.tls, Some(&forged), "forged", GUARD)
        .await
        .unwrap_err();
    assert!(matches!(err, ProtoError::Io(_)), "{err:?}");
    // The plain port is not affected.
    let plain = proto::request_redirect(&t.plain, "plain", GUARD)
        .await
        .unwrap();
    assert_eq!(plain.server_reference, PLAIN_REF);
}

/// Opens TCP to `addr` and sends the first bytes of a TLS ClientHello record, then nothing.
async fn stall_mid_handshake(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // Handshake record header announcing 512 bytes, and the start of a ClientHello.
    s.write_all(&[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ])
    .await
    .unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_mid_handshake_is_closed_at_the_timeout_while_others_are_served() {
    const TIMEOUT: Duration = Duration::from_secs(1);
    const CAP: usize = 8;
    let t = start(TIMEOUT, CAP).await;
    let config = t.ca.client_config().unwrap();
    // Stallers hold half the slots (a slot is taken before the TLS handshake).
    let opened = Instant::now();
    let mut stallers = Vec::new();
    for _ in 0..CAP / 2 {
        stallers.push(stall_mid_handshake(&t.tls).await);
    }
    // Meanwhile honest TLS clients, one at a time, are served through the other slots.
    for k in 0..5 {
        let r = proto::request_redirect_via(&t.tls, Some(&config), &format!("ok-{k}"), GUARD)
            .await
            .unwrap_or_else(|e| panic!("honest client {k} not served while others stall: {e}"));
        assert_eq!(r.server_reference, TLS_REF);
    }
    // Each staller is closed by the dispatcher, not before the handshake timeout.
    for mut s in stallers {
        let mut buf = [0u8; 64];
        let n = timeout(GUARD, s.read(&mut buf))
            .await
            .expect("a stalled TLS handshake is closed by the dispatcher")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
    }
    let closed_after = opened.elapsed();
    assert!(
        closed_after >= TIMEOUT,
        "closed after {closed_after:?}, before the timeout"
    );
    // Their slots are free again: a full set of concurrent clients is served. A slot is given
    // back just after its socket closes, so a batch may start a moment early: retry the batch
    // (with the stallers' slots never given back, every batch would fail).
    let end = Instant::now() + GUARD;
    loop {
        let mut clients = JoinSet::new();
        for k in 0..CAP {
            let (addr, config) = (t.tls.clone(), Arc::clone(&config));
            clients.spawn(async move {
                let id = format!("after-{k}");
                proto::request_redirect_via(&addr, Some(&config), &id, GUARD).await
            });
        }
        let mut served = 0;
        while let Some(r) = clients.join_next().await {
            if let Ok(redirect) = r.unwrap() {
                assert_eq!(redirect.server_reference, TLS_REF);
                served += 1;
            }
        }
        if served == CAP {
            break;
        }
        assert!(
            Instant::now() < end,
            "only {served} of {CAP} concurrent clients served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Paho (Python) over TLS with the test CA: CONNACK 0x9C with the TLS Server Reference. Under
/// CI (`CI` set, as `.ci/run` does) a missing Paho fails the test instead of skipping it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_python_over_tls_gets_0x9c_and_the_tls_reference_with_and_without_a_device_certificate()
 {
    let has_paho = Command::new("python3")
        .args(["-c", "import paho.mqtt.client"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_paho {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI: python3 with paho-mqtt is required (apt-get install python3-paho-mqtt)"
        );
        eprintln!("SKIPPED paho_python_over_tls: python3 -c 'import paho.mqtt.client' failed");
        return;
    }
    // Server authentication only; then a dispatcher requiring device certificates, which Paho
    // presents from the test CA's device files.
    for require_device_cert in [false, true] {
        let t = start_with(Duration::from_secs(3), 64, require_device_cert).await;
        let (host, port) = t.tls.rsplit_once(':').unwrap();
        let mut cmd = tokio::process::Command::new("python3");
        cmd.args([
            "-c",
            PAHO_SCRIPT,
            host,
            port,
            t.ca.ca_cert.to_str().unwrap(),
        ]);
        if require_device_cert {
            cmd.args([
                t.ca.device_cert.to_str().unwrap(),
                t.ca.device_key.to_str().unwrap(),
            ]);
        }
        cmd.kill_on_drop(true);
        let out = timeout(GUARD, cmd.output())
            .await
            .expect("paho script finished")
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert_eq!(
            stdout.trim(),
            format!("CONNACK 156 {TLS_REF}"),
            "device certificate required: {require_device_cert}; {stderr}"
        );
    }
}

/// Connects with MQTT v5 over TLS (CA file given, and optionally a device certificate and its
/// key), prints `CONNACK <code> <server reference>`. Works with paho-mqtt 1.6 (Debian 12's
/// python3-paho-mqtt) and 2.x.
const PAHO_SCRIPT: &str = r#"
import sys
import paho.mqtt.client as mqtt
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
certfile, keyfile = (sys.argv[4], sys.argv[5]) if len(sys.argv) > 5 else (None, None)
args = dict(client_id="paho-tls", protocol=mqtt.MQTTv5)
if hasattr(mqtt, "CallbackAPIVersion"):
    args["callback_api_version"] = mqtt.CallbackAPIVersion.VERSION2
client = mqtt.Client(**args)
client.tls_set(ca_certs=ca, certfile=certfile, keyfile=keyfile)
seen = []
def on_connect(client, userdata, flags, reason_code, properties=None, *rest):
    code = reason_code.value if hasattr(reason_code, "value") else int(reason_code)
    ref = getattr(properties, "ServerReference", None)
    seen.append(f"CONNACK {code} {ref}")
client.on_connect = on_connect
client.connect(host, port)
for _ in range(100):
    client.loop(timeout=0.1)
    if seen:
        break
print(seen[0] if seen else "no CONNACK")
sys.exit(0 if seen else 1)
"#;

/// The command line: `tls on ADDR` after `listening on ADDR`, the TLS reference over the TLS
/// port; a broker without a TLS address is refused before anything is announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_announces_the_tls_port_and_refuses_brokers_without_tls_addresses() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let ca = ThrowawayCa::create(dir.path()).unwrap();
    let args = |broker: &str| {
        [
            "dispatcher",
            "--listen",
            "127.0.0.1:0",
            "--policy",
            "round-robin",
            "--broker",
            broker,
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            ca.server_cert.to_str().unwrap(),
            "--tls-key",
            ca.server_key.to_str().unwrap(),
        ]
        .map(str::to_owned)
    };
    let out = Command::new(crate::util::bin())
        .args(args(&format!("b1={PLAIN_REF}")))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broker b1 has no TLS address"), "{err}");
    assert!(out.stdout.is_empty(), "nothing announced");

    let child = Command::new(crate::util::bin())
        .args(args(&format!("b1={PLAIN_REF},tls={TLS_REF}")))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = crate::util::ChildGuard {
        child,
        addr: String::new(),
    };
    let mut lines = BufReader::new(guard.child.stdout.take().unwrap()).lines();
    let mut next = |prefix: &str| {
        let line = lines.next().unwrap().unwrap();
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected `{prefix}ADDR`, got {line:?}"))
            .to_owned()
    };
    let plain = next("listening on ");
    let tls = next("tls on ");
    let config = ca.client_config().unwrap();
    let r = proto::request_redirect_via(&tls, Some(&config), "cli-tls", GUARD)
        .await
        .unwrap();
    assert_eq!(r.server_reference, TLS_REF);
    let r = proto::request_redirect(&plain, "cli-plain", GUARD)
        .await
        .unwrap();
    assert_eq!(r.server_reference, PLAIN_REF);
}
