//! Brokers: an off-the-shelf MQTT v5 client talks through each kind; broker-side counters and
//! rates; the `broker` subcommand's banner, v4 listener and clean exit; cgroup caps cleaned up.

use std::path::Path;
use std::time::Duration;

use mqdispatch::agent::{self, AgentConfig, CounterReading};
use mqdispatch::broker::{BrokerKind, BrokerSpec, RunningBroker};
use mqdispatch::load_report::LoadReport;
use mqdispatch::process::ManagedChild;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use crate::util::bin;

pub fn use_built_binary() {
    mqdispatch::process::set_self_exe(bin());
}

pub fn spec(id: &str, kind: BrokerKind, cpu_limit_cores: Option<f64>) -> BrokerSpec {
    BrokerSpec {
        cpu_limit_cores,
        ..BrokerSpec::new(id, kind)
    }
}

fn split(addr: &str) -> (String, u16) {
    let (host, port) = addr.rsplit_once(':').unwrap();
    (host.to_owned(), port.parse().unwrap())
}

/// A v5 client whose event loop runs in a task; incoming publish payloads go to the channel.
pub async fn v5_client(addr: &str, id: &str) -> (AsyncClient, mpsc::UnboundedReceiver<Packet>) {
    let (host, port) = split(addr);
    let mut options = MqttOptions::new(id, host, port);
    options.set_outgoing_inflight_upper_limit(100);
    let (client, mut events): (AsyncClient, EventLoop) = AsyncClient::new(options, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            if let Event::Incoming(p) = event
                && tx.send(p).is_err()
            {
                return;
            }
        }
    });
    (client, rx)
}

async fn next_matching(
    rx: &mut mpsc::UnboundedReceiver<Packet>,
    what: &str,
    pred: impl Fn(&Packet) -> bool,
) -> Packet {
    timeout(Duration::from_secs(10), async {
        loop {
            let p = rx.recv().await.expect("event loop ended");
            if pred(&p) {
                return p;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} within 10 s"))
}

/// Subscriber and publisher (v5) on `addr`: every one of `n` QoS 1 messages arrives, in order.
/// Returns both clients with their event channels (still connected while held).
pub async fn relay(addr: &str, n: usize) -> Vec<(AsyncClient, mpsc::UnboundedReceiver<Packet>)> {
    let (sub, mut sub_rx) = v5_client(addr, "sub").await;
    next_matching(&mut sub_rx, "CONNACK", |p| matches!(p, Packet::ConnAck(_))).await;
    sub.subscribe("t/#", QoS::AtLeastOnce).await.unwrap();
    next_matching(&mut sub_rx, "SUBACK", |p| matches!(p, Packet::SubAck(_))).await;
    let (publisher, pub_rx) = v5_client(addr, "pub").await;
    for i in 0..n {
        publisher
            .publish("t/x", QoS::AtLeastOnce, false, i.to_string())
            .await
            .unwrap();
    }
    for i in 0..n {
        let Packet::Publish(p) =
            next_matching(&mut sub_rx, "PUBLISH", |p| matches!(p, Packet::Publish(_))).await
        else {
            unreachable!()
        };
        assert_eq!(p.payload, i.to_string().as_bytes(), "message {i}");
    }
    vec![(sub, sub_rx), (publisher, pub_rx)]
}

/// Waits until the broker-side counter reaches `total` and returns that reading.
async fn wait_counter(cfg: &AgentConfig, total: u64, within: Duration) -> CounterReading {
    let cancel = CancellationToken::new();
    let source = cfg.counters.clone().expect("this kind has counters");
    let (mut rx, _task) = agent::counters::spawn_reader(source, cancel.clone());
    let mut last = None;
    let result = timeout(within, async {
        loop {
            if let Some(r) = *rx.borrow_and_update() {
                last = Some(r);
                if r.received_total >= total {
                    return r;
                }
            }
            rx.changed().await.unwrap();
        }
    })
    .await;
    cancel.cancel();
    result.unwrap_or_else(|_| panic!("counter never reached {total}; last reading {last:?}"))
}

/// Publishes `rate` msg/s (100 B, QoS 0, topic `t/steady`) for `secs` on absolute deadlines,
/// then disconnects.
pub async fn publish_at_rate(addr: &str, client_id: &str, rate: u32, secs: u32) {
    let (publisher, _events) = v5_client(addr, client_id).await;
    let start = Instant::now();
    for i in 0..rate * secs {
        tokio::time::sleep_until(start + Duration::from_secs_f64(f64::from(i) / f64::from(rate)))
            .await;
        publisher
            .publish("t/steady", QoS::AtMostOnce, false, vec![0u8; 100])
            .await
            .unwrap();
    }
}

/// Publishes `rate` msg/s for `secs` while an agent samples the broker; returns its reports.
async fn steady_load(broker: &RunningBroker, rate: u32, secs: u32) -> Vec<LoadReport> {
    let cfg = broker.agent_config(Duration::from_millis(500)).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let agent = tokio::spawn(agent::run(cfg, Some(tx), cancel.clone()));
    publish_at_rate(&broker.addr, "steady", rate, secs).await;
    // Let the last counter update (up to ~2 s late for Mosquitto) reach the agent.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    cancel.cancel();
    agent.await.unwrap().unwrap();
    let mut reports = Vec::new();
    while let Ok(r) = rx.try_recv() {
        reports.push(r);
    }
    reports
}

/// The same checks for every kind we run ourselves.
async fn check_kind(kind: BrokerKind, workdir: &Path) {
    let broker = RunningBroker::start(&spec("b1", kind, None), workdir)
        .await
        .unwrap();
    assert!(broker.addr.starts_with("127.0.0.1:"), "{}", broker.addr);
    let pid = broker.pid().unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    let cfg = broker.agent_config(Duration::from_secs(1)).unwrap();
    assert_eq!(cfg.cpu, agent::CpuSource::Pid(pid));

    const N: usize = 300;
    let _clients = relay(&broker.addr, N).await;
    let reading = wait_counter(&cfg, N as u64, Duration::from_secs(10)).await;
    assert_eq!(reading.received_total, N as u64, "broker-side count");

    let reports = steady_load(&broker, 400, 5).await;
    let rates: Vec<f64> = reports.iter().filter_map(|r| r.msgs_in_per_s).collect();
    eprintln!("{kind:?} under 400 msg/s: rates {rates:?}");
    let peak = rates.iter().copied().fold(0.0, f64::max);
    assert!(
        (340.0..=460.0).contains(&peak),
        "broker-side rate at a steady 400 msg/s: {rates:?}"
    );
    // The relay's subscriber and publisher are still connected, plus the steady publisher
    // until it was dropped.
    let conns: Vec<u64> = reports.iter().filter_map(|r| r.connections).collect();
    assert!(
        conns.contains(&3) && conns.iter().all(|&c| (2..=3).contains(&c)),
        "connections {conns:?}"
    );
    broker.stop().await.unwrap();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "broker process left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_relays_v5_and_counts() {
    use_built_binary();
    let dir = tempfile::tempdir().unwrap();
    check_kind(BrokerKind::Embedded, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_broker_relays_v5_and_counts() {
    if let Err(e) = mqdispatch::broker::check_available(BrokerKind::Mosquitto) {
        eprintln!("SKIPPED mosquitto_broker_relays_v5_and_counts: {e}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    check_kind(BrokerKind::Mosquitto, dir.path()).await;
    assert!(dir.path().join("b1-mosquitto.conf").is_file());
}

#[tokio::test]
async fn broker_subcommand_serves_v4_and_v5_and_exits_on_sigterm() {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.args([
        "broker",
        "--listen",
        "127.0.0.1:0",
        "--listen-v4",
        "127.0.0.1:0",
    ])
    .stdout(std::process::Stdio::piped());
    let mut child = ManagedChild::spawn(cmd, "broker").unwrap();
    let mut lines = BufReader::new(child.take_stdout().unwrap()).lines();
    let mut next = async |prefix: &str| {
        let line = timeout(Duration::from_secs(10), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("{line:?} lacks {prefix:?}"))
            .to_owned()
    };
    let v5 = next("listening on ").await;
    let _stats = next("stats on ").await;
    let v4 = next("v4 on ").await;
    assert_ne!(split(&v5).1, 0);

    // A 3.1.1 publisher on the v4 port reaches a v5 subscriber on the v5 port.
    let (sub, mut sub_rx) = v5_client(&v5, "sub5").await;
    sub.subscribe("mixed", QoS::AtLeastOnce).await.unwrap();
    next_matching(&mut sub_rx, "SUBACK", |p| matches!(p, Packet::SubAck(_))).await;
    let (host, port) = split(&v4);
    let (client4, mut events4) =
        rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("pub4", host, port), 10);
    tokio::spawn(async move { while events4.poll().await.is_ok() {} });
    client4
        .publish("mixed", rumqttc::QoS::AtLeastOnce, false, "from v4")
        .await
        .unwrap();
    let Packet::Publish(p) =
        next_matching(&mut sub_rx, "PUBLISH", |p| matches!(p, Packet::Publish(_))).await
    else {
        unreachable!()
    };
    assert_eq!(p.payload, "from v4".as_bytes());

    use std::os::unix::process::ExitStatusExt;
    let status = child.stop().await.unwrap();
    assert!(
        status.success(),
        "SIGTERM should end the broker cleanly: {status:?} (signal {:?})",
        status.signal()
    );
}

#[tokio::test]
async fn broker_subcommand_refuses_a_busy_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = tokio::process::Command::new(bin())
        .args(["broker", "--listen", &addr])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen on"), "{stderr}");
}

#[tokio::test]
async fn external_broker_is_checked_not_managed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut s = spec("ext", BrokerKind::External, None);
    s.external_addr = Some(addr.clone());
    let dir = tempfile::tempdir().unwrap();
    let broker = RunningBroker::start(&s, dir.path()).await.unwrap();
    assert_eq!(broker.addr, addr);
    assert_eq!(broker.pid(), None);
    assert!(broker.agent_config(Duration::from_secs(1)).is_none());
    assert!(broker.signal(libc::SIGSTOP).is_err());
    broker.stop().await.unwrap();

    drop(listener);
    let err = RunningBroker::start(&s, dir.path()).await.unwrap_err();
    assert!(err.to_string().contains("not reachable"), "{err}");
    s.external_addr = None;
    assert!(RunningBroker::start(&s, dir.path()).await.is_err());
}

/// `brokers.cpus`: the broker process, and every thread it starts, runs only on its set, also
/// after a restart; a CPU this host does not have is refused before anything starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_broker_runs_only_on_its_cpus() {
    use_built_binary();
    let dir = tempfile::tempdir().unwrap();
    let last = *mqdispatch::affinity::online_cpus()
        .unwrap()
        .cpus()
        .last()
        .unwrap();
    let cpus: mqdispatch::affinity::CpuSet = last.to_string().parse().unwrap();
    let mut kinds = vec![BrokerKind::Embedded];
    if mqdispatch::broker::check_available(BrokerKind::Mosquitto).is_ok() {
        kinds.push(BrokerKind::Mosquitto);
    } else {
        eprintln!("pinned_broker_runs_only_on_its_cpus: Mosquitto not installed, embedded only");
    }
    for kind in kinds {
        let mut s = spec("pinned", kind, None);
        s.cpus = Some(cpus.clone());
        let mut broker = RunningBroker::start(&s, dir.path()).await.unwrap();
        let threads = |pid: u32| {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .unwrap()
                .map(|t| t.unwrap().file_name().into_string().unwrap())
                .collect::<Vec<_>>()
        };
        for _ in 0..2 {
            let pid = broker.pid().unwrap();
            for tid in threads(pid) {
                let allowed = mqdispatch::affinity::allowed_cpus(tid.parse().unwrap()).unwrap();
                assert_eq!(allowed, cpus, "{kind:?} thread {tid} of {pid}");
            }
            drop(relay(&broker.addr, 10).await);
            broker.restart().await.unwrap();
        }
        broker.stop().await.unwrap();
    }
    let mut s = spec("nowhere", BrokerKind::Embedded, None);
    s.cpus = Some("1023".parse().unwrap());
    let err = RunningBroker::start(&s, dir.path()).await.unwrap_err();
    assert!(err.to_string().contains("CPU 1023 is not online"), "{err}");
}

#[test]
fn scenario_key_cpus_gives_each_broker_its_set() {
    let yaml = |brokers: &str| {
        format!(
            "name: t\nseed: 1\ntrials: 1\nbrokers: {brokers}\n\
             publishers:\n  - {{ name: p, count: 1, rate: 10, payload_bytes: 16, duration: 5s }}\n\
             arrival: {{ order: random, interval: 1s }}\n\
             methods:\n  - {{ name: dns-rr, assign: dns-rr }}\n"
        )
    };
    let parse = |b: &str| mqdispatch::scenario::parse(&yaml(b), "t.yaml");
    let pinned = parse(r#"{ kind: embedded, count: 2, cpus: ["2", "0,3-4"] }"#).unwrap();
    let sets: Vec<String> = pinned.brokers.cpus.iter().map(|c| c.to_string()).collect();
    assert_eq!(sets, ["2", "0,3-4"]);
    assert!(
        parse("{ kind: embedded, count: 2 }")
            .unwrap()
            .brokers
            .cpus
            .is_empty()
    );
    for (brokers, says) in [
        (
            r#"{ kind: embedded, count: 2, cpus: ["1"] }"#,
            "one CPU list per broker (2)",
        ),
        (
            r#"{ kind: embedded, count: 2, cpus: ["1", "x"] }"#,
            "`x` is not a CPU list",
        ),
        (
            r#"{ kind: external, addresses: ["127.0.0.1:1"], cpus: ["1"] }"#,
            "external brokers",
        ),
    ] {
        let e = parse(brokers).unwrap_err().to_string();
        assert!(
            e.contains("t.yaml:4:") && e.contains(says),
            "{brokers}: {e}"
        );
    }
}

/// Cgroup tests need root and a writable cgroup mount; they are skipped, loudly, without.
pub fn cgroups_writable(test: &str) -> bool {
    match mqdispatch::broker::cgroup::CpuCgroup::create("probe", 0.5) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIPPED {test}: {e}");
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capped_broker_runs_in_its_cgroup_which_is_removed_after() {
    if !cgroups_writable("capped_broker_runs_in_its_cgroup_which_is_removed_after") {
        return;
    }
    use_built_binary();
    let dir = tempfile::tempdir().unwrap();
    let s = spec("capped", BrokerKind::Embedded, Some(0.25));

    // Graceful stop.
    let broker = RunningBroker::start(&s, dir.path()).await.unwrap();
    let group = broker.cgroup_dir().unwrap().to_owned();
    let procs = std::fs::read_to_string(group.join("cgroup.procs")).unwrap();
    assert!(
        procs
            .split_whitespace()
            .any(|p| p == broker.pid().unwrap().to_string()),
        "broker pid not in {}: {procs:?}",
        group.display()
    );
    let quota = std::fs::read_to_string(group.join("cpu.cfs_quota_us"))
        .or_else(|_| std::fs::read_to_string(group.join("cpu.max")))
        .unwrap();
    assert!(quota.starts_with("25000"), "quota {quota:?}");
    let cfg = broker.agent_config(Duration::from_secs(1)).unwrap();
    assert_eq!(cfg.capacity_cores, Some(0.25));
    assert!(matches!(cfg.cpu, agent::CpuSource::Cgroup { .. }));
    drop(relay(&broker.addr, 10).await);
    broker.stop().await.unwrap();
    assert!(
        !group.exists(),
        "{} left behind after stop",
        group.display()
    );

    // Dropped without stop (error path / Ctrl-C in the runner).
    let broker = RunningBroker::start(&s, dir.path()).await.unwrap();
    let group = broker.cgroup_dir().unwrap().to_owned();
    let pid = broker.pid().unwrap();
    drop(broker);
    assert!(
        !group.exists(),
        "{} left behind after drop",
        group.display()
    );
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

/// Redirects from `dispatcher` until `want` comes back `streak` times in a row (or the deadline
/// passes); returns the references seen.
async fn redirects_until(
    dispatcher: &str,
    want: &str,
    streak: usize,
    within: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut run = 0;
    while run < streak && Instant::now() < deadline {
        let r = mqdispatch::proto::request_redirect(dispatcher, "probe", Duration::from_secs(2))
            .await
            .unwrap();
        run = if r.server_reference == want {
            run + 1
        } else {
            0
        };
        seen.push(r.server_reference);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

/// Two real brokers, real agents reporting over the socket, the paper's `least-cpu`:
/// load one broker and new clients go to the other; then load the other and they come back.
async fn least_cpu_steers_away_from_the_loaded_broker(kind: BrokerKind) {
    use mqdispatch::dispatcher::{self, BrokerEntry, DispatcherConfig, Policy};
    use_built_binary();
    let dir = tempfile::tempdir().unwrap();
    let b1 = RunningBroker::start(&spec("b1", kind, None), dir.path())
        .await
        .unwrap();
    let b2 = RunningBroker::start(&spec("b2", kind, None), dir.path())
        .await
        .unwrap();
    let listener = dispatcher::bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let reports = dispatcher::bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let dispatcher_addr = listener.local_addr().unwrap().to_string();
    let report_addr = reports.local_addr().unwrap().to_string();
    let entries = [&b1, &b2]
        .iter()
        .map(|b| BrokerEntry {
            id: b.id.clone(),
            addr: b.addr.clone(),
            tls_addr: None,
        })
        .collect();
    let mut cfg = DispatcherConfig::new(entries, Policy::LeastCpu);
    cfg.window = Duration::from_secs(1);
    cfg.report_interval = Duration::from_millis(200);
    let cancel = CancellationToken::new();
    let server = tokio::spawn(dispatcher::run(
        listener,
        Some(reports),
        cfg,
        None,
        cancel.clone(),
    ));
    let mut agents = Vec::new();
    for b in [&b1, &b2] {
        let mut agent_cfg = b.agent_config(Duration::from_millis(200)).unwrap();
        agent_cfg.dispatchers = vec![report_addr.clone()];
        agents.push(tokio::spawn(agent::run(agent_cfg, None, cancel.clone())));
    }

    for (loaded, other) in [(&b1, &b2), (&b2, &b1)] {
        let addr = loaded.addr.clone();
        let load = tokio::spawn(async move { publish_at_rate(&addr, "heavy", 8000, 6).await });
        let seen = redirects_until(&dispatcher_addr, &other.addr, 5, Duration::from_secs(5)).await;
        load.abort();
        let tail = &seen[seen.len().saturating_sub(5)..];
        assert!(
            tail.len() == 5 && tail.iter().all(|r| r == &other.addr),
            "{kind:?}: with {} loaded, expected 5 redirects in a row to {}; saw {seen:?}",
            loaded.id,
            other.addr
        );
    }
    cancel.cancel();
    server.await.unwrap().unwrap();
    for a in agents {
        a.await.unwrap().unwrap();
    }
    b1.stop().await.unwrap();
    b2.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_cpu_with_real_agents_steers_embedded() {
    least_cpu_steers_away_from_the_loaded_broker(BrokerKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_cpu_with_real_agents_steers_mosquitto() {
    if mqdispatch::broker::check_available(BrokerKind::Mosquitto).is_err() {
        eprintln!("skipped: mosquitto is not installed (apt-get install -y mosquitto)");
        return;
    }
    least_cpu_steers_away_from_the_loaded_broker(BrokerKind::Mosquitto).await;
}

/// The embedded broker's measured process does no harness work: idle, with 10 idle clients
/// connected, it uses at most 0.5 % of a core (its connection count is
/// rumqttd's own, not a parse of /proc/net/tcp inside the broker process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_embedded_broker_with_idle_clients_costs_almost_nothing() {
    use_built_binary();
    let dir = tempfile::tempdir().unwrap();
    let broker = RunningBroker::start(&spec("b1", BrokerKind::Embedded, None), dir.path())
        .await
        .unwrap();
    let mut clients = Vec::new();
    for i in 0..10 {
        let (client, mut rx) = v5_client(&broker.addr, &format!("idle-{i}")).await;
        let connack = timeout(Duration::from_secs(5), async {
            while let Some(p) = rx.recv().await {
                if matches!(p, Packet::ConnAck(_)) {
                    return;
                }
            }
        })
        .await;
        assert!(connack.is_ok(), "client {i} got no CONNACK");
        clients.push((client, rx));
    }
    let mut cpu = agent::cpu::CpuSampler::new(agent::CpuSource::Pid(broker.pid().unwrap()), None);
    cpu.sample().unwrap();
    // Three stats ticks of the broker (its stats interval is 1 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pct = cpu.sample().unwrap().expect("a percentage");
    eprintln!("idle embedded broker, 10 idle clients: {pct:.3} % of one core");
    assert!(pct <= 0.5, "idle broker used {pct:.3} % of a core");
    broker.stop().await.unwrap();
}
