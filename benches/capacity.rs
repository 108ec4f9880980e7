//! A capped broker's capacity curve: offered msg/s → delivered msg/s and end-to-end latency p99,
//! for the embedded broker and (when installed) Mosquitto, under `cpu_limit` caps. The curve
//! says where one broker stops keeping up, which is what `scenarios/paper-weak.yaml` sizes its
//! caps by.
//!
//! Run: `cargo bench --bench capacity` (env CAPACITY_SECS=N changes the 6 s steps,
//! CAPACITY_CAPS="0.1,0.2" the caps in cores).
//!
//! Each step: one fresh broker capped at `cap` cores, one subscriber on `load/#` (its own
//! socket, as in the harness), publishers at the paper's rates (2000 msg/s each, plus one at
//! 10000 from 12000 msg/s up), per message, 600 B, QoS 0, for the step's seconds; then up to 15 s
//! for the backlog. Delivered = distinct messages the subscriber got per second of the step;
//! latency over every message received.

use std::time::Duration;

use mqdispatch::broker::{BrokerKind, BrokerSpec, RunningBroker};
use mqdispatch::loadgen::receipts::{max_ms, quantile_ms};
use mqdispatch::loadgen::subscription::SubscriberSpec;
use mqdispatch::loadgen::{self, Profile, SubscriberConfig};
use tokio_util::sync::CancellationToken;

mod common;

/// Offered loads, msg/s: the balanced half of the paper's 28,000 is 14,000; dns-rr's heavy side
/// carries 18,000–20,000.
const OFFERED: [u64; 6] = [4000, 8000, 12000, 16000, 20000, 28000];

/// Publisher profiles that add up to `offered` msg/s: one 10000 msg/s publisher once that fits,
/// the rest at 2000 msg/s (the paper's two kinds).
fn profiles(offered: u64, secs: u64) -> Vec<Profile> {
    let heavy = u64::from(offered >= 12000);
    let light = (offered - heavy * 10000) / 2000;
    let spec = |name: &str, count: u64, rate: u64| {
        Profile::parse_spec(&format!(
            "name={name},count={count},rate={rate},bytes=600,duration={secs}s"
        ))
        .expect("invariant: a valid profile")
    };
    let mut out = Vec::new();
    if heavy > 0 {
        out.push(spec("heavy", 1, 10000));
    }
    if light > 0 {
        out.push(spec("light", light, 2000));
    }
    out
}

struct Step {
    offered: u64,
    sent: u64,
    delivered: u64,
    secs: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
}

async fn step(kind: BrokerKind, cap: f64, offered: u64, secs: u64) -> anyhow::Result<Step> {
    let workdir = tempfile::tempdir()?;
    let mut spec = BrokerSpec::new("b1", kind);
    spec.cpu_limit_cores = Some(cap);
    let broker = RunningBroker::start(&spec, workdir.path()).await?;
    let result = measure(&broker.addr, offered, secs).await;
    broker.stop().await?;
    result
}

async fn measure(addr: &str, offered: u64, secs: u64) -> anyhow::Result<Step> {
    let cancel = CancellationToken::new();
    let cfg = common::config(profiles(offered, secs), addr, "cap-");
    let topics: Vec<(String, String)> = cfg
        .publishers
        .iter()
        .map(|p| (p.name.clone(), cfg.profiles[p.profile].topic_for(&p.name)))
        .collect();
    let subs = SubscriberConfig {
        specs: vec![SubscriberSpec::parse_spec("name=sink,topic=load/#").expect("spec")],
        brokers: vec![("b1".to_owned(), addr.to_owned())],
        publishers_by_topic: loadgen::streams::publishers_by_topic(&topics)
            .map_err(anyhow::Error::msg)?,
        sender_clocks_us: Default::default(),
        client_id_prefix: "cap-sub-".to_owned(),
        tls: None,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let subscribers = loadgen::subscriber::start(subs, tx, cancel.clone()).await?;
    let (events, _drop) = tokio::sync::mpsc::unbounded_channel();
    let load = loadgen::run(cfg, events, cancel.clone()).await?;
    let summary = subscribers
        .finish(Duration::from_secs(1), Duration::from_secs(15))
        .await?;
    let distinct: u64 = summary.streams.iter().map(|s| s.stats.distinct).sum();
    let latency = &summary.members[0].latency_us;
    Ok(Step {
        offered,
        sent: load.sent_total(),
        delivered: distinct,
        secs: secs as f64,
        p50_ms: quantile_ms(latency, 0.5),
        p99_ms: quantile_ms(latency, 0.99),
        max_ms: max_ms(latency),
    })
}

fn main() -> anyhow::Result<()> {
    let smoke = common::smoke_run();
    common::use_built_binary();
    let secs = common::env_or("CAPACITY_SECS", if smoke { 1 } else { 6 });
    let caps: Vec<f64> = std::env::var("CAPACITY_CAPS")
        .unwrap_or_else(|_| {
            if smoke {
                "0.5".into()
            } else {
                "0.15,0.3".into()
            }
        })
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let offered: Vec<u64> = if smoke { vec![4000] } else { OFFERED.to_vec() };
    let mut kinds = vec![BrokerKind::Embedded];
    if !smoke && mqdispatch::broker::check_available(BrokerKind::Mosquitto).is_ok() {
        kinds.push(BrokerKind::Mosquitto);
    }
    let rt = tokio::runtime::Runtime::new()?;
    println!(
        "command: cargo bench --bench capacity   (CAPACITY_SECS={secs}, CAPACITY_CAPS={})",
        caps.iter()
            .map(f64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    println!(
        "one broker capped at `cap` cores, one subscriber on load/#, per-message publishers \
         (2000 msg/s each, one at 10000 from 12000 up), 600 B, QoS 0, {secs} s per step\n"
    );
    println!("## capacity\n");
    println!(
        "| broker | cap (cores) | offered (msg/s) | sent (msg/s) | delivered (msg/s) | delivered % \
         | latency p50 (ms) | p99 (ms) | max (ms) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
    for kind in kinds {
        let version = match kind {
            BrokerKind::Mosquitto => "Mosquitto",
            _ => "embedded (rumqttd)",
        };
        for &cap in &caps {
            for &o in &offered {
                let s = rt.block_on(step(kind, cap, o, secs))?;
                let per_s = |n: u64| n as f64 / s.secs;
                println!(
                    "| {} | {cap} | {} | {:.0} | {:.0} | {:.1} | {} | {} | {} |",
                    version,
                    s.offered,
                    per_s(s.sent),
                    per_s(s.delivered),
                    100.0 * s.delivered as f64 / s.sent.max(1) as f64,
                    ms(s.p50_ms),
                    ms(s.p99_ms),
                    ms(s.max_ms),
                );
            }
        }
    }
    Ok(())
}
