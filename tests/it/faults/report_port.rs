//! Strangers on the report port cannot starve the agents. The attack of the
//! issue (80 idle connections trickling a byte a second) runs against an in-process dispatcher
//! while two agents report: one connected before the attack, one joining during it from another
//! source address. Both stay effective; the attack never makes a broker look down.

use std::net::SocketAddr;
use std::time::Duration;

use mqdispatch::dispatcher::{BrokerEntry, Decision, DispatcherConfig, Policy, bind_listener, run};
use mqdispatch::proto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

const INTERVAL: Duration = Duration::from_secs(1);
const ATTACKERS: usize = 80;
/// Failure guard only (a loaded machine); the assertions are about outcomes.
const GUARD: Duration = Duration::from_secs(10);

struct Dispatcher {
    addr: String,
    reports: SocketAddr,
    decisions: UnboundedReceiver<Decision>,
    cancel: CancellationToken,
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn start(token: Option<&str>) -> Dispatcher {
    let brokers = [("b1", "127.0.0.1:1001"), ("b2", "127.0.0.1:1002")]
        .map(|(id, addr)| BrokerEntry {
            id: id.into(),
            addr: addr.into(),
            tls_addr: None,
        })
        .to_vec();
    let mut cfg = DispatcherConfig::new(brokers, Policy::LeastCpu);
    cfg.report_interval = INTERVAL;
    cfg.window = INTERVAL;
    cfg.token = token.map(str::to_owned);
    let listener = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let report_listener = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let (tx, decisions) = tokio::sync::mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let d = Dispatcher {
        addr: listener.local_addr().unwrap().to_string(),
        reports: report_listener.local_addr().unwrap(),
        decisions,
        cancel: cancel.clone(),
    };
    tokio::spawn(run(listener, Some(report_listener), cfg, Some(tx), cancel));
    d
}

impl Dispatcher {
    /// One client's redirect and the dispatcher's decision for it.
    async fn place(&mut self, id: &str) -> Decision {
        let _ = proto::request_redirect(&self.addr, id, GUARD).await;
        loop {
            let d = timeout(GUARD, self.decisions.recv())
                .await
                .expect("a decision per client")
                .expect("decisions open");
            if d.client_id == id {
                return d;
            }
        }
    }
}

impl Dispatcher {
    /// Places clients until one decision shows `broker` at `load`: its agent's report counted.
    async fn await_load(&mut self, broker: &str, load: f64) {
        let since = Instant::now();
        for k in 0.. {
            let decision = self.place(&format!("probe-{broker}-{k}")).await;
            if decision
                .loads
                .iter()
                .any(|(b, l)| b == broker && *l == load)
            {
                return;
            }
            assert!(
                since.elapsed() < GUARD,
                "{broker}'s report never counted: {decision:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A report connection from `source` (any 127.0.0.0/8 address works on Linux loopback).
async fn connect_from(source: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    socket.connect(to).await
}

/// An agent: `broker`'s cpu read from `cpu` every interval, over one connection it never
/// replaces (a lost connection fails the agent, which the test then notices). Like `mqdispatch
/// agent`, it sends its first report at its next tick, up to an interval after connecting.
fn agent(
    tasks: &mut JoinSet<()>,
    mut stream: TcpStream,
    broker: &'static str,
    cpu: tokio::sync::watch::Receiver<f64>,
) {
    tasks.spawn(async move {
        tokio::time::sleep(INTERVAL / 2).await;
        loop {
            let line = crate::util::cpu_report(broker, *cpu.borrow()).to_line();
            if stream.write_all(line.as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(INTERVAL).await;
        }
    });
}

/// The attacker: `ATTACKERS` connections from 127.0.0.1, each writing one space a second,
/// reconnecting a moment after being closed.
fn attack(tasks: &mut JoinSet<()>, to: SocketAddr) {
    for _ in 0..ATTACKERS {
        tasks.spawn(async move {
            loop {
                if let Ok(mut s) = TcpStream::connect(to).await {
                    while s.write_all(b" ").await.is_ok() {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eighty_idle_connections_leave_the_agents_reports_effective() {
    let mut d = start(None).await;
    let mut agents = JoinSet::new();
    let mut attackers = JoinSet::new();
    let (b1_cpu, b1_rx) = tokio::sync::watch::channel(80.0);
    let (_b2_cpu, b2_rx) = tokio::sync::watch::channel(20.0);

    // Agent A reports b1 before the attack (an unproven connection on the attackers' address
    // would be pushed out by their newcomers); then the attack; then agent B joins from another
    // source address while the attack runs.
    let a = connect_from([127, 0, 0, 1], d.reports).await.unwrap();
    agent(&mut agents, a, "b1", b1_rx);
    d.await_load("b1", 80.0).await;
    attack(&mut attackers, d.reports);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = connect_from([127, 0, 0, 2], d.reports).await.unwrap();
    agent(&mut agents, b, "b2", b2_rx);

    // More than 3 intervals of attack: without its reports a broker would now count as down.
    let attack_start = Instant::now();
    let mut n = 0;
    while attack_start.elapsed() < INTERVAL * 4 {
        n += 1;
        let decision = d.place(&format!("c{n}")).await;
        if decision.loads.iter().all(|(_, load)| *load > 0.0) {
            assert_eq!(decision.broker.as_deref(), Some("b2"), "{decision:?}");
            assert_eq!(decision.loads, [("b1".into(), 80.0), ("b2".into(), 20.0)]);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            agents.try_join_next().is_none(),
            "an agent lost its connection"
        );
    }
    let last = d.place("after-attack-window").await;
    assert_eq!(
        last.loads,
        [("b1".into(), 80.0), ("b2".into(), 20.0)],
        "both agents' reports are in the table"
    );
    assert_eq!(
        last.broker.as_deref(),
        Some("b2"),
        "b2 is live: agent B's reports count"
    );

    // Agent A's next report (b1 now at 5 %) takes over placement: b1 is live and its new load is
    // used, about one interval later (the guard only stops a hung test).
    b1_cpu.send(5.0).unwrap();
    let changed = Instant::now();
    let mut k = 0;
    loop {
        k += 1;
        let decision = d.place(&format!("late{k}")).await;
        if decision.broker.as_deref() == Some("b1") {
            break;
        }
        assert!(
            changed.elapsed() < GUARD,
            "b1's new load never used: {decision:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        agents.try_join_next().is_none(),
        "an agent lost its connection"
    );
    attackers.abort_all();
    agents.abort_all();
}

/// Reads until the peer closes; `Err` when it has not within the guard.
async fn closed_by_peer(s: &mut TcpStream) -> Result<(), &'static str> {
    let mut buf = [0u8; 64];
    let read = timeout(GUARD, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    read.await.map_err(|_| "still open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_or_no_first_report_gets_the_connection_closed() {
    let d = start(Some("s3cret")).await;
    // Silent: closed at the first-report deadline, although it keeps sending bytes.
    let mut silent = TcpStream::connect(d.reports).await.unwrap();
    silent.write_all(b" ").await.unwrap();
    // Wrong token: closed at its first line.
    let mut wrong = TcpStream::connect(d.reports).await.unwrap();
    let mut report = crate::util::cpu_report("b1", 10.0);
    report.token = Some("guess".into());
    wrong.write_all(report.to_line().as_bytes()).await.unwrap();
    // The right token: still open after both others were closed.
    let mut right = TcpStream::connect(d.reports).await.unwrap();
    report.token = Some("s3cret".into());
    right.write_all(report.to_line().as_bytes()).await.unwrap();

    closed_by_peer(&mut wrong).await.expect("bad token");
    closed_by_peer(&mut silent).await.expect("no report");
    let mut buf = [0u8; 8];
    assert!(
        timeout(Duration::from_millis(200), right.read(&mut buf))
            .await
            .is_err(),
        "a connection with the right token stays open"
    );
}

/// Strangers on the agent's own address (a shared host, a NAT) open 80 report connections and
/// hold them, writing a byte a second and never reporting; then the agent connects from that
/// address. Its connection pushes out the address's oldest unproven one, and its report counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_holding_the_agents_address_do_not_keep_it_out() {
    let mut d = start(None).await;
    let shared = [127, 0, 0, 3];
    let mut strangers = JoinSet::new();
    let mut opened = Vec::new();
    for _ in 0..ATTACKERS {
        opened.push(connect_from(shared, d.reports).await.unwrap());
    }
    for mut s in opened {
        strangers.spawn(async move {
            while s.write_all(b" ").await.is_ok() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    let mut agents = JoinSet::new();
    let (_cpu, cpu_rx) = tokio::sync::watch::channel(42.0);
    let stream = connect_from(shared, d.reports).await.unwrap();
    agent(&mut agents, stream, "b1", cpu_rx);
    d.await_load("b1", 42.0).await;
    assert!(
        agents.try_join_next().is_none(),
        "the agent lost its connection"
    );
    strangers.abort_all();
    agents.abort_all();
}
