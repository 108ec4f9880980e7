//! How fast a silent broker is avoided, and publishing through a
//! dispatcher that dies: connected publishers carry on, new ones use the next dispatcher in
//! their list or retry with backoff until one is back.

use std::time::Duration;

use mqdispatch::dispatcher::{
    self, BrokerEntry, Decision, DispatcherConfig, Policy, bind_listener,
};
use mqdispatch::loadgen::{
    self, ArrivalOrder, ArrivalSpec, LoadConfig, LoadEvent, Placement, Profile,
};
use mqdispatch::proto;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use crate::util::spawn_listening;

/// A dispatcher in this process, on `listener`; `kill` cancels it and waits until it is gone.
struct Dispatcher {
    addr: String,
    decisions: UnboundedReceiver<Decision>,
    cancel: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Dispatcher {
    fn start(listener: TcpListener, reports: Option<TcpListener>, cfg: DispatcherConfig) -> Self {
        let addr = listener.local_addr().expect("addr").to_string();
        let (tx, decisions) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(dispatcher::run(
            listener,
            reports,
            cfg,
            Some(tx),
            cancel.clone(),
        ));
        Self {
            addr,
            decisions,
            cancel,
            task,
        }
    }

    async fn kill(self) -> UnboundedReceiver<Decision> {
        self.cancel.cancel();
        timeout(Duration::from_secs(5), self.task)
            .await
            .expect("dispatcher stops within 5 s")
            .expect("task")
            .expect("dispatcher result");
        self.decisions
    }
}

fn ids(rx: &mut UnboundedReceiver<Decision>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(d) = rx.try_recv() {
        out.push(d.client_id);
    }
    out
}

fn one_broker(addr: &str) -> DispatcherConfig {
    let broker = BrokerEntry {
        id: "b1".into(),
        addr: addr.into(),
        tls_addr: None,
    };
    DispatcherConfig::new(vec![broker], Policy::RoundRobin)
}

/// One publisher per `(name, join offset)`, 1000 msg/s for `duration`, placed by `dispatchers`.
fn load(
    dispatchers: Vec<String>,
    names: &[(&str, Duration)],
    duration: &str,
    prefix: &str,
) -> LoadConfig {
    let profiles: Vec<Profile> = names
        .iter()
        .map(|(n, _)| {
            Profile::parse_spec(&format!(
                "name={n},count=1,rate=1000,bytes=100,duration={duration}"
            ))
            .expect("profile")
        })
        .collect();
    let spec = ArrivalSpec {
        order: ArrivalOrder::Explicit(names.iter().map(|(n, _)| (*n).to_owned()).collect()),
        interval: Duration::ZERO,
        jitter: Duration::ZERO,
        burst: None,
    };
    let mut publishers = loadgen::plan_arrivals(&profiles, &spec, 1).expect("plan");
    for (p, (_, at)) in publishers.iter_mut().zip(names) {
        p.join_at = *at;
    }
    LoadConfig {
        profiles,
        publishers,
        placement: Placement::Dispatcher {
            dispatchers,
            max_hops: 3,
        },
        inflight_limit: 100,
        client_id_prefix: format!("{prefix}-"),
        tls: None,
    }
}

fn joined_ms(events: &[LoadEvent], who: &str) -> u64 {
    events
        .iter()
        .find_map(|e| match e {
            LoadEvent::Joined {
                publisher, t_ms, ..
            } if publisher.starts_with(who) => Some(*t_ms),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{who} never joined: {events:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_survives_the_dispatcher_and_newcomers_use_the_next_one_or_retry() {
    let broker = spawn_listening(&["broker", "--listen", "127.0.0.1:0"]);
    let l1 = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let d1_addr = l1.local_addr().unwrap();
    let d1 = Dispatcher::start(l1, None, one_broker(&broker.addr));
    let mut d2 = Dispatcher::start(
        bind_listener("127.0.0.1:0".parse().unwrap()).unwrap(),
        None,
        one_broker(&broker.addr),
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = Duration::from_secs;
    // `early` joins through d1 before it dies; `late` joins after, with [d1, d2] to try.
    let listed = load(
        vec![d1.addr.clone(), d2.addr.clone()],
        &[("early", s(0)), ("late", Duration::from_millis(1500))],
        "4s",
        "listed",
    );
    // `alone` knows only d1 and joins while it is down: it retries until d1 is back.
    let alone = load(
        vec![d1.addr.clone()],
        &[("alone", Duration::from_millis(1500))],
        "2s",
        "alone",
    );
    let started = mqdispatch::now_ms();
    let cancel = CancellationToken::new();
    let runs = tokio::spawn({
        let (tx2, cancel) = (tx.clone(), cancel.clone());
        async move {
            let (a, b) = tokio::join!(
                loadgen::run(listed, tx, cancel.clone()),
                loadgen::run(alone, tx2, cancel)
            );
            (a, b)
        }
    });

    // d1 dies once `early` is publishing.
    let deadline = Instant::now() + s(5);
    let mut events = Vec::new();
    while !events.iter().any(|e| matches!(e, LoadEvent::Second { publisher, sent, .. } if publisher.starts_with("early") && *sent > 0)) {
        let e = timeout(deadline - Instant::now(), rx.recv()).await.expect("early publishes").expect("event");
        events.push(e);
    }
    let mut d1_decisions = d1.kill().await;
    let killed_ms = mqdispatch::now_ms();
    assert!(
        killed_ms < started + 1500,
        "d1 died after the newcomers joined"
    );

    // Bring a dispatcher back on d1's address 1 s after the newcomers' join time.
    let restart_at = started + 2500;
    tokio::time::sleep(Duration::from_millis(
        restart_at.saturating_sub(mqdispatch::now_ms()),
    ))
    .await;
    let d1_again = Dispatcher::start(
        bind_listener(d1_addr).expect("rebind d1's port"),
        None,
        one_broker(&broker.addr),
    );
    let restarted_ms = mqdispatch::now_ms();

    let (listed_result, alone_result) = timeout(s(15), runs)
        .await
        .expect("load runs end")
        .expect("join");
    let (listed, alone) = (
        listed_result.expect("listed run"),
        alone_result.expect("alone run"),
    );
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    let mut d1_again_decisions = d1_again.kill().await;
    cancel.cancel();

    // The connected publisher never noticed: no drop, its whole schedule sent, and it kept
    // publishing in the seconds after the kill.
    let early = &listed.publishers[0];
    assert_eq!((early.reconnects, early.downtime_ms), (0, 0), "{early:?}");
    assert!(
        early.sent_total as f64 >= early.target_total as f64 * 0.99,
        "{early:?}"
    );
    // Whole wall-clock seconds from one second after the kill to the end of early's schedule
    // (1000 msg/s for 4 s from its CONNACK): what it still owed, and must have sent.
    let from_ms = (killed_ms + 1000).div_ceil(1000) * 1000;
    let end_ms = joined_ms(&events, "early") + 4000;
    let owed = end_ms.saturating_sub(from_ms) / 1000 * 1000;
    let after: u64 = events
        .iter()
        .filter_map(|e| match e {
            LoadEvent::Second {
                publisher,
                t_ms,
                sent,
                ..
            } if publisher.starts_with("early") && *t_ms >= from_ms && *t_ms + 1000 <= end_ms => {
                Some(*sent)
            }
            _ => None,
        })
        .sum();
    assert!(
        owed >= 1000,
        "too little of the run left after the kill to judge"
    );
    assert!(
        after as f64 >= owed as f64 * 0.98,
        "early sent {after} of the {owed} it owed in the whole seconds after the kill"
    );
    assert!(
        !events.iter().any(|e| matches!(e, LoadEvent::Down { .. })),
        "a connection dropped"
    );

    // `late` was placed by d2 (d1 refused the connection), and published its schedule.
    assert_eq!(ids(&mut d1_decisions), ["listed-early-0"]);
    assert_eq!(ids(&mut d2.decisions), ["listed-late-0"]);
    let late = &listed.publishers[1];
    assert!(
        late.sent_total as f64 >= late.target_total as f64 * 0.99,
        "{late:?}"
    );
    assert!(
        joined_ms(&events, "late") < started + 2000,
        "late joined late"
    );

    // `alone` kept retrying d1's address and got in once a dispatcher was back there.
    assert_eq!(ids(&mut d1_again_decisions), ["alone-alone-0"]);
    let alone_joined = joined_ms(&events, "alone");
    assert!(
        alone_joined >= restarted_ms.saturating_sub(50) && alone_joined <= restarted_ms + 2500,
        "alone joined at +{} ms, dispatcher back at +{} ms",
        alone_joined - started,
        restarted_ms - started
    );
    assert!(
        alone.publishers[0].sent_total as f64 >= alone.publishers[0].target_total as f64 * 0.99
    );
    let _ = d2.kill().await;
}

fn report(broker: &str, cpu: f64) -> String {
    crate::util::cpu_report(broker, cpu).to_line()
}

/// With the default 1 s report interval, a broker that stops reporting gets new clients for
/// 3 s (3 intervals), and none after: measured from its last report to the first redirect away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_is_avoided_three_intervals_after_its_last_report() {
    let entries = ["b1", "b2"]
        .map(|id| BrokerEntry {
            id: id.into(),
            addr: format!("{id}.invalid:1883"),
            tls_addr: None,
        })
        .to_vec();
    let cfg = DispatcherConfig::new(entries, Policy::LeastCpu);
    assert_eq!(
        cfg.report_interval,
        Duration::from_secs(1),
        "the default interval"
    );
    let reports = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let report_addr = reports.local_addr().unwrap();
    let d = Dispatcher::start(
        bind_listener("127.0.0.1:0".parse().unwrap()).unwrap(),
        Some(reports),
        cfg,
    );
    let mut agent = TcpStream::connect(report_addr).await.unwrap();
    // b2 busy and reporting all along; b1 idle, reporting once.
    let b2_agent = tokio::spawn(async move {
        let mut s = TcpStream::connect(report_addr).await.unwrap();
        loop {
            s.write_all(report("b2", 50.0).as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let redirect = |id: &'static str| {
        let addr = d.addr.clone();
        async move {
            proto::request_redirect(&addr, id, Duration::from_secs(2))
                .await
                .expect("redirect")
                .server_reference
        }
    };
    agent.write_all(report("b1", 1.0).as_bytes()).await.unwrap();
    let last_b1 = Instant::now();
    let end = last_b1 + Duration::from_secs(6);
    let mut last_to_b1 = None;
    let switched = loop {
        let to = redirect("probe").await;
        let now = Instant::now();
        if to.starts_with("b1") {
            last_to_b1 = Some(now - last_b1);
        } else if last_to_b1.is_some() {
            break now - last_b1;
        }
        assert!(
            now < end,
            "still sending clients to silent b1 after {:?}",
            now - last_b1
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let last_to_b1 = last_to_b1.expect("b1 was chosen while it reported");
    // Chosen until just before 3 s (it is the idle one), avoided from 3 s on (+ probe period).
    assert!(
        last_to_b1 >= Duration::from_millis(2700),
        "avoided already after {last_to_b1:?}"
    );
    assert!(
        switched <= Duration::from_millis(3200),
        "avoided only after {switched:?}"
    );
    // A fresh report brings it back at once.
    agent.write_all(report("b1", 1.0).as_bytes()).await.unwrap();
    let back = Instant::now() + Duration::from_secs(2);
    while !redirect("again").await.starts_with("b1") {
        assert!(Instant::now() < back, "b1 not back after a fresh report");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b2_agent.abort();
    d.kill().await;
}
