//! Latency across hosts: a subscriber told a publisher's clock is off moves that publisher's send
//! times onto its own clock before taking a latency; one not told measures the skew too.

use std::collections::HashMap;
use std::time::Duration;

use mqdispatch::loadgen::receipts::max_ms;
use mqdispatch::loadgen::subscriber::{SubscriberConfig, Via, start_via};
use mqdispatch::loadgen::subscription::SubscriberSpec;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::fakes::{Broker, publish_sequence};

const BOUND: Duration = Duration::from_secs(10);
/// The publisher's clock runs this far behind the subscribers' (a host 5 s behind).
const SKEW_US: i64 = -5_000_000;

fn config(broker: &str, name: &str, sender_clocks_us: HashMap<String, i64>) -> SubscriberConfig {
    SubscriberConfig {
        specs: vec![
            SubscriberSpec::parse_spec(&format!("name={name},count=1,topic=load/#")).unwrap(),
        ],
        brokers: vec![("b1".into(), broker.to_owned())],
        publishers_by_topic: HashMap::from([("load/p".into(), "p".into())]),
        sender_clocks_us,
        client_id_prefix: "clock-".into(),
        tls: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_s_clock_offset_is_taken_out_of_its_latencies() {
    let broker = Broker::spawn();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let told = config(
        &broker.addr(),
        "told",
        HashMap::from([("p".into(), SKEW_US)]),
    );
    let not_told = config(&broker.addr(), "blind", HashMap::new());
    let start = |cfg| start_via(cfg, Via::Brokers, tx.clone(), CancellationToken::new());
    let told = timeout(BOUND, start(told)).await.unwrap().unwrap();
    let not_told = timeout(BOUND, start(not_told)).await.unwrap().unwrap();
    publish_sequence(&broker.addr(), "load/p", 100, SKEW_US).await;
    let finish = |subs: mqdispatch::loadgen::Subscribers| async move {
        let summary = subs
            .finish(Duration::from_millis(500), BOUND)
            .await
            .unwrap();
        let m = &summary.members[0];
        assert_eq!(m.received, 100, "{}", m.member);
        max_ms(&m.latency_us).unwrap()
    };
    let (corrected, skewed) = (finish(told).await, finish(not_told).await);
    // On loopback a message takes well under a second; the skew is 5 s.
    assert!(corrected < 1_000.0, "corrected max latency {corrected} ms");
    assert!(skewed >= 5_000.0, "uncorrected max latency {skewed} ms");
}
