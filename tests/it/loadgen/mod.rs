//! Load generator against real brokers (embedded `mqdispatch broker` children) and fake
//! dispatchers in the test: rate accuracy checked on the broker side, placement by redirect,
//! hop following, reconnects.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use mqdispatch::loadgen::{
    self, ArrivalOrder, ArrivalSpec, LoadConfig, LoadEvent, LoadSummary, Placement, Profile,
};
use mqdispatch::proto::RedirectReason;
use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::util::bin;

pub mod fakes;
mod header;
mod interop_subscribers;
mod sender_clocks;
mod shard;
mod subscribers_via_dispatcher;
mod tls;
use fakes::{Broker, FakeDispatcher, Proxy, Reply, fake_broker_that_moves_us};

fn profile(spec: &str) -> Profile {
    Profile::parse_spec(spec).unwrap()
}

/// Everyone at once unless `interval` says otherwise, in the listed order.
fn config(profiles: Vec<Profile>, placement: Placement, prefix: &str) -> LoadConfig {
    let order = profiles
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.name.clone(), p.count))
        .collect();
    let spec = ArrivalSpec {
        order: ArrivalOrder::Explicit(order),
        interval: Duration::ZERO,
        jitter: Duration::ZERO,
        burst: None,
    };
    let publishers = loadgen::plan_arrivals(&profiles, &spec, 1).unwrap();
    LoadConfig {
        profiles,
        publishers,
        placement,
        inflight_limit: 100,
        client_id_prefix: format!("{prefix}-"),
        tls: None,
    }
}

/// Runs `cfg` to completion (bounded), returning the summary and every event.
async fn run_all(
    cfg: LoadConfig,
    limit: Duration,
) -> (anyhow::Result<LoadSummary>, Vec<LoadEvent>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let result = timeout(limit, loadgen::run(cfg, tx, CancellationToken::new()))
        .await
        .expect("load run exceeded its time limit");
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    (result, events)
}

fn joined(events: &[LoadEvent]) -> HashMap<String, String> {
    events
        .iter()
        .filter_map(|e| match e {
            LoadEvent::Joined {
                publisher, broker, ..
            } => Some((publisher.clone(), broker.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_publishers_at_28k_per_s_deliver_within_half_a_percent_broker_side() {
    let broker = Broker::spawn();
    let cfg = config(
        vec![
            profile("name=light,count=9,rate=2000,bytes=600,duration=10s"),
            profile("name=heavy,count=1,rate=10000,bytes=600,duration=10s"),
        ],
        Placement::DnsRoundRobin {
            brokers: vec![broker.addr()],
        },
        "rate",
    );
    let (summary, events) = run_all(cfg, Duration::from_secs(25)).await;
    let summary = summary.unwrap();
    let target = 280_000u64;
    assert_eq!(summary.target_total(), target);
    let received = broker
        .settled_received(summary.sent_total(), Duration::from_secs(5))
        .await;
    eprintln!(
        "target {target}, sent {}, broker received {received}",
        summary.sent_total()
    );
    let off = |n: u64| n.abs_diff(target) as f64 / target as f64;
    assert!(
        off(summary.sent_total()) <= 0.005,
        "sent {}",
        summary.sent_total()
    );
    assert!(
        off(received) <= 0.005,
        "broker received {received} of {target}"
    );
    // `sent` counts what went out: the broker saw exactly that many.
    assert_eq!(received, summary.sent_total());
    // The per-second stream adds up to the totals.
    let streamed: u64 = events
        .iter()
        .map(|e| match e {
            LoadEvent::Second { sent, .. } => *sent,
            _ => 0,
        })
        .sum();
    assert_eq!(streamed, summary.sent_total());
    let finished = events
        .iter()
        .filter(|e| matches!(e, LoadEvent::Finished { .. }))
        .count();
    assert_eq!(finished, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_publisher_lands_on_the_broker_the_dispatcher_named() {
    let (a, b) = (Broker::spawn(), Broker::spawn());
    let brokers = [a.addr(), b.addr()];
    let refs = brokers.clone();
    let dispatcher = FakeDispatcher::start(Box::new(move |n, _| {
        Reply::Redirect(RedirectReason::UseAnotherServer, refs[n % 2].clone())
    }))
    .await;
    let cfg = via_dispatcher(
        &dispatcher.addr,
        "name=p,count=6,rate=200,bytes=100,duration=1s",
        4,
        "placed",
    );
    let (summary, events) = run_all(cfg, Duration::from_secs(15)).await;
    let summary = summary.unwrap();
    let joined = joined(&events);
    let seen = dispatcher.seen();
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert_eq!(joined.len(), 6);
    for (client_id, reference) in &seen {
        let publisher = client_id.strip_prefix("placed-").unwrap();
        assert_eq!(&joined[publisher], reference, "{publisher}");
    }
    for broker in &brokers {
        assert_eq!(joined.values().filter(|j| *j == broker).count(), 3);
    }
    for p in &summary.publishers {
        assert!(p.redirect_ms.is_some_and(|ms| ms > 0.0), "{p:?}");
        assert_eq!(p.sent_total, 200, "{p:?}");
    }
    let received = a.settled_received(600, Duration::from_secs(5)).await
        + b.settled_received(600, Duration::from_secs(5)).await;
    assert_eq!(received, 1200);
}

/// `spec`'s publishers, placed through one dispatcher.
fn via_dispatcher(dispatcher: &str, spec: &str, max_hops: u8, prefix: &str) -> LoadConfig {
    config(
        vec![profile(spec)],
        Placement::Dispatcher {
            dispatchers: vec![dispatcher.to_owned()],
            max_hops,
        },
        prefix,
    )
}

fn one_publisher(dispatcher: &str, max_hops: u8, prefix: &str) -> LoadConfig {
    let spec = "name=p,count=1,rate=100,bytes=16,duration=300ms";
    via_dispatcher(dispatcher, spec, max_hops, prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_chains_are_followed_and_loops_and_missing_references_fail_clearly() {
    let broker = Broker::spawn();
    let target = broker.addr();
    let second = FakeDispatcher::start(Box::new(move |_, _| {
        Reply::Redirect(RedirectReason::UseAnotherServer, target.clone())
    }))
    .await;
    let hop = second.addr.clone();
    let first = FakeDispatcher::start(Box::new(move |_, _| {
        Reply::Redirect(RedirectReason::UseAnotherServer, hop.clone())
    }))
    .await;

    // dispatcher → dispatcher → broker.
    let (summary, events) = run_all(
        one_publisher(&first.addr, 4, "chain"),
        Duration::from_secs(10),
    )
    .await;
    let summary = summary.unwrap();
    assert_eq!(joined(&events)["p-0"], broker.addr());
    assert_eq!(summary.publishers[0].sent_total, 30);

    // The same chain with a hop limit of 1.
    let (result, _) = run_all(
        one_publisher(&first.addr, 1, "hops"),
        Duration::from_secs(10),
    )
    .await;
    let err = format!("{:#}", result.unwrap_err());
    assert!(err.contains("more than 1 redirect hops"), "{err}");

    // A loop: x → y → x.
    let x_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let x_addr = x_listener.local_addr().unwrap().to_string();
    let back = x_addr.clone();
    let y = FakeDispatcher::start(Box::new(move |_, _| {
        Reply::Redirect(RedirectReason::UseAnotherServer, back.clone())
    }))
    .await;
    let to_y = y.addr.clone();
    let _x = FakeDispatcher::serve(
        x_listener,
        Box::new(move |_, _| Reply::Redirect(RedirectReason::UseAnotherServer, to_y.clone())),
    );
    let (result, events) =
        run_all(one_publisher(&x_addr, 8, "loop"), Duration::from_secs(10)).await;
    let err = format!("{:#}", result.unwrap_err());
    assert!(
        err.contains("redirect loop") && err.contains(&x_addr),
        "{err}"
    );
    assert!(joined(&events).is_empty());

    // A redirect without a Server Reference.
    let bare = FakeDispatcher::start(Box::new(|_, _| Reply::NoReference)).await;
    let (result, _) = run_all(
        one_publisher(&bare.addr, 4, "bare"),
        Duration::from_secs(10),
    )
    .await;
    let err = format!("{:#}", result.unwrap_err());
    assert!(err.contains("without a Server Reference"), "{err}");
}

/// Waits for the first event matching `want`, collecting everything seen into `log`.
async fn wait_for(
    rx: &mut mpsc::UnboundedReceiver<LoadEvent>,
    log: &mut Vec<LoadEvent>,
    want: impl Fn(&LoadEvent) -> bool,
) -> LoadEvent {
    loop {
        let event = timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("event in time")
            .expect("run still going");
        log.push(event.clone());
        if want(&event) {
            return event;
        }
    }
}

fn second_with_messages_on(broker: &str) -> impl Fn(&LoadEvent) -> bool + '_ {
    move |e| matches!(e, LoadEvent::Second { broker: b, sent, .. } if b == broker && *sent > 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_broker_means_down_then_up_elsewhere_and_publishing_resumes() {
    let (a, b) = (Broker::spawn(), Broker::spawn());
    let (addr_a, addr_b) = (a.addr(), b.addr());
    let refs = [addr_a.clone(), addr_b.clone()];
    // 0x9C: not remembered, so the reconnect asks the dispatcher again and gets broker b.
    let dispatcher = FakeDispatcher::start(Box::new(move |n, _| {
        Reply::Redirect(RedirectReason::UseAnotherServer, refs[n.min(1)].clone())
    }))
    .await;
    let cfg = via_dispatcher(
        &dispatcher.addr,
        "name=p,count=1,rate=1000,bytes=100,duration=4s",
        4,
        "restart",
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let run = tokio::spawn(loadgen::run(cfg, tx, CancellationToken::new()));
    let mut log = Vec::new();
    wait_for(&mut rx, &mut log, second_with_messages_on(&addr_a)).await;
    drop(a); // kill -9 broker a
    let down = wait_for(&mut rx, &mut log, |e| matches!(e, LoadEvent::Down { .. })).await;
    assert!(
        matches!(&down, LoadEvent::Down { broker, .. } if *broker == addr_a),
        "{down:?}"
    );
    let up = wait_for(&mut rx, &mut log, |e| matches!(e, LoadEvent::Up { .. })).await;
    assert!(
        matches!(&up, LoadEvent::Up { broker, redirect_ms: Some(_), .. } if *broker == addr_b),
        "{up:?}"
    );
    wait_for(&mut rx, &mut log, second_with_messages_on(&addr_b)).await;
    let summary = timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let p = &summary.publishers[0];
    assert_eq!(p.reconnects, 1);
    assert_eq!(p.broker.as_deref(), Some(addr_b.as_str()));
    assert!(
        p.sent_total > 0 && p.sent_total + p.skipped <= p.target_total,
        "{p:?}"
    );
    assert_eq!(dispatcher.seen().len(), 2);
    // Broker b received exactly what was sent after the move.
    while let Ok(e) = rx.try_recv() {
        log.push(e);
    }
    let after_move: u64 = log
        .iter()
        .map(|e| match e {
            LoadEvent::Second { broker, sent, .. } if *broker == addr_b => *sent,
            _ => 0,
        })
        .sum();
    assert_eq!(
        b.settled_received(after_move, Duration::from_secs(5)).await,
        after_move
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_moved_is_remembered_and_reconnects_go_straight_back() {
    let broker = Broker::spawn();
    let proxy = Proxy::start(broker.addr()).await;
    let to = proxy.addr.clone();
    let dispatcher = FakeDispatcher::start(Box::new(move |_, _| {
        Reply::Redirect(RedirectReason::ServerMoved, to.clone())
    }))
    .await;
    let cfg = via_dispatcher(
        &dispatcher.addr,
        "name=p,count=1,rate=1000,bytes=100,duration=3s",
        4,
        "moved",
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let run = tokio::spawn(loadgen::run(cfg, tx, CancellationToken::new()));
    let mut log = Vec::new();
    wait_for(&mut rx, &mut log, second_with_messages_on(&proxy.addr)).await;
    proxy.cut_connections();
    wait_for(&mut rx, &mut log, |e| matches!(e, LoadEvent::Down { .. })).await;
    let up = wait_for(&mut rx, &mut log, |e| matches!(e, LoadEvent::Up { .. })).await;
    // Straight back to the remembered broker: no redirect this time.
    assert!(
        matches!(&up, LoadEvent::Up { broker, redirect_ms: None, .. } if *broker == proxy.addr),
        "{up:?}"
    );
    let summary = timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(summary.publishers[0].reconnects, 1);
    assert_eq!(dispatcher.seen().len(), 1);
    // Messages already written into the cut connection may be lost with it (QoS 0): `sent`
    // counts socket writes. Nothing else may be missing, and nothing may be extra.
    let sent = summary.sent_total();
    let received = broker.settled_received(sent, Duration::from_secs(5)).await;
    assert!(
        received <= sent && sent - received <= 50,
        "sent {sent}, received {received}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_disconnect_with_a_reference_moves_the_publisher_there() {
    let broker = Broker::spawn();
    let (fake, _task) =
        fake_broker_that_moves_us(DisconnectReasonCode::UseAnotherServer, broker.addr()).await;
    let cfg = config(
        vec![profile("name=p,count=1,rate=500,bytes=16,duration=1500ms")],
        Placement::DnsRoundRobin {
            brokers: vec![fake.clone()],
        },
        "evicted",
    );
    let (summary, events) = run_all(cfg, Duration::from_secs(10)).await;
    let summary = summary.unwrap();
    assert_eq!(joined(&events)["p-0"], fake);
    let down = events.iter().find(|e| matches!(e, LoadEvent::Down { .. }));
    assert!(
        matches!(down, Some(LoadEvent::Down { broker, .. }) if *broker == fake),
        "{events:?}"
    );
    let up = events.iter().find(|e| matches!(e, LoadEvent::Up { .. }));
    assert!(
        matches!(up, Some(LoadEvent::Up { broker: b, redirect_ms: None, .. }) if *b == broker.addr()),
        "{events:?}"
    );
    assert_eq!(
        summary.publishers[0].broker.as_deref(),
        Some(broker.addr().as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_writes_the_per_second_csv_and_never_overwrites_it() {
    let broker = Broker::spawn();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("load.csv");
    let args = |out: &std::path::Path| {
        let mut cmd = Command::new(bin());
        cmd.args(["load", "--broker", &broker.addr(), "--profile"])
            .arg("name=p,count=2,rate=100,bytes=16,duration=1500ms")
            .args(["--arrival-interval", "0s", "--seed", "3", "--out"])
            .arg(out)
            .stderr(Stdio::null());
        cmd
    };
    let output = tokio::task::spawn_blocking({
        let mut cmd = args(&out);
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("total: sent 300 of 300"), "{stdout}");
    let csv = std::fs::read_to_string(&out).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("t_s,publisher,profile,broker,sent"));
    let mut sent = 0;
    for line in lines {
        let cols: Vec<&str> = line.split(',').collect();
        assert_eq!(cols[2], "p");
        assert_eq!(cols[3], broker.addr());
        sent += cols[4].parse::<u64>().unwrap();
    }
    assert_eq!(sent, 300);
    let again = args(&out).stderr(Stdio::piped()).output().unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{again:?}"
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), csv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_every_publisher_promptly() {
    let broker = Broker::spawn();
    let mut cfg = config(
        vec![profile("name=p,count=3,rate=1000,bytes=16,duration=30s")],
        Placement::DnsRoundRobin {
            brokers: vec![broker.addr()],
        },
        "cancel",
    );
    // One joins now, the others in 20 s and 40 s: cancelled before they ever connect.
    for (i, p) in cfg.publishers.iter_mut().enumerate() {
        p.join_at = Duration::from_secs(20 * i as u64);
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(loadgen::run(cfg, tx, cancel.clone()));
    let mut log = Vec::new();
    wait_for(&mut rx, &mut log, second_with_messages_on(&broker.addr())).await;
    cancel.cancel();
    let summary = timeout(Duration::from_secs(1), run)
        .await
        .expect("run ends within 1 s of cancel")
        .unwrap()
        .unwrap();
    assert!(summary.cancelled);
    assert!(summary.publishers[0].sent_total > 0);
    assert_eq!(summary.publishers[1].sent_total, 0);
    while let Ok(e) = rx.try_recv() {
        log.push(e);
    }
    let finished = log
        .iter()
        .filter(|e| matches!(e, LoadEvent::Finished { .. }))
        .count();
    assert_eq!(finished, 3);
}
