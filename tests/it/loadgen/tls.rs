//! Publishers over TLS end to end. Two Mosquitto brokers with a TLS listener
//! from a throwaway CA, the dispatcher's TLS port with the same certificate: every publisher is
//! redirected over TLS to a broker's TLS listener and delivers its target there.

use std::time::Duration;

use mqdispatch::broker::{BrokerKind, BrokerSpec, RunningBroker};
use mqdispatch::dispatcher::tls::TlsListener;
use mqdispatch::dispatcher::{
    BrokerEntry, DispatcherConfig, Extras, Policy, bind_listener, run_with,
};
use mqdispatch::loadgen::Placement;
use mqdispatch::tls::ThrowawayCa;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_follow_a_tls_redirect_to_mosquitto_tls_listeners() {
    if let Err(e) = mqdispatch::broker::check_available(BrokerKind::Mosquitto) {
        eprintln!("SKIPPED publishers_follow_a_tls_redirect: {e}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = ThrowawayCa::create(dir.path()).unwrap();
    let mut brokers = Vec::new();
    for id in ["b1", "b2"] {
        let spec = BrokerSpec {
            tls: Some(ca.clone()),
            ..BrokerSpec::new(id, BrokerKind::Mosquitto)
        };
        brokers.push(RunningBroker::start(&spec, dir.path()).await.unwrap());
    }
    let tls_addrs: Vec<String> = brokers
        .iter()
        .map(|b| b.tls_addr.clone().expect("a TLS listener"))
        .collect();
    let entries = brokers
        .iter()
        .map(|b| BrokerEntry {
            id: b.id.clone(),
            addr: b.addr.clone(),
            tls_addr: b.tls_addr.clone(),
        })
        .collect();
    let listener = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let tls = TlsListener {
        listener: bind_listener("127.0.0.1:0".parse().unwrap()).unwrap(),
        acceptor: ca.server_config().unwrap().into(),
    };
    let dispatcher = tls.listener.local_addr().unwrap().to_string();
    let cancel = CancellationToken::new();
    let cfg = DispatcherConfig::new(entries, Policy::RoundRobin);
    let d = tokio::spawn(run_with(
        listener,
        None,
        cfg,
        None,
        Extras {
            tls: Some(tls),
            ..Extras::default()
        },
        cancel.clone(),
    ));

    let placement = Placement::Dispatcher {
        dispatchers: vec![dispatcher],
        max_hops: 2,
    };
    let profiles = vec![super::profile(
        "name=p,count=4,rate=200,bytes=100,duration=2s",
    )];
    let mut cfg = super::config(profiles, placement, "tls");
    cfg.tls = Some(ca.client_config().unwrap());
    let (summary, events) = super::run_all(cfg, Duration::from_secs(30)).await;
    let summary = summary.unwrap();
    cancel.cancel();
    let _ = d.await;
    for b in brokers {
        b.stop().await.unwrap();
    }

    let joined = super::joined(&events);
    assert_eq!(joined.len(), 4, "{joined:?}");
    for (publisher, broker) in &joined {
        assert!(
            tls_addrs.contains(broker),
            "{publisher} joined {broker}, not a TLS listener"
        );
    }
    // Round robin over TLS: two publishers on each broker's TLS listener.
    for addr in &tls_addrs {
        assert_eq!(
            joined.values().filter(|b| *b == addr).count(),
            2,
            "{joined:?}"
        );
    }
    for p in &summary.publishers {
        assert!(p.redirect_ms.is_some(), "{} was not redirected", p.name);
        // Delivery as the other loadgen tests check it: within 1 % of the target.
        assert!(
            p.sent_total * 100 >= p.target_total * 99,
            "{}: {} of {}",
            p.name,
            p.sent_total,
            p.target_total
        );
    }
}
