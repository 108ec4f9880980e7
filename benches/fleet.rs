//! Fleet costs, bounded in time (about 30 s): what one wave of simultaneous CONNECTs
//! does to an embedded broker (rumqttd, its own `mqdispatch broker` child process), and what a
//! connected, mostly idle publisher costs the load generator in memory and CPU.
//!
//! Run: `cargo bench --bench fleet` (env FLEET_BENCH_WAVE=N changes the wave of 500,
//! FLEET_BENCH_PUBLISHERS=N the 2,000 publishers of the memory figure). Prints markdown under
//! `## <section>` headings for `mqdispatch readme`.

use std::time::{Duration, Instant};

use mqdispatch::loadgen::{self, ArrivalOrder, ArrivalSpec, LoadConfig, LoadEvent, Profile};
use tokio_util::sync::CancellationToken;

mod common;
use common::cpu_time;

#[path = "../tests/it/util.rs"]
mod util;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Resident memory of this process (`VmRSS`), in KiB.
fn rss_kib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .unwrap_or(f64::NAN)
}

/// `count` publishers of `rate` msg/s (200 B, QoS 0) for `secs`, all joining at t = 0, straight
/// to `broker`.
fn fleet(count: usize, rate: f64, secs: u64, broker: &str, prefix: &str) -> LoadConfig {
    let profile = Profile::parse_spec(&format!(
        "name=device,count={count},rate={rate},bytes=200,duration={secs}s"
    ))
    .expect("profile");
    let spec = ArrivalSpec {
        order: ArrivalOrder::Random,
        interval: Duration::from_secs(1),
        jitter: Duration::ZERO,
        burst: Some(count),
    };
    let mut cfg = common::config(vec![profile], broker, prefix);
    cfg.publishers = loadgen::plan_arrivals(&cfg.profiles, &spec, 1).expect("plan");
    cfg
}

/// What one run of `cfg` measured: CONNECT → CONNACK per publisher (ms, sorted), RSS growth
/// at the moment every publisher had joined (KiB), CPU and wall time after the joins.
struct Measured {
    connect_ms: Vec<f64>,
    rss_growth_kib: f64,
    steady_cpu: Duration,
    steady_wall: Duration,
    sent: u64,
    target: u64,
}

fn measure(rt: &tokio::runtime::Runtime, cfg: LoadConfig) -> Measured {
    let n = cfg.publishers.len();
    rt.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let rss0 = rss_kib();
        let load = tokio::spawn(loadgen::run(cfg, tx, CancellationToken::new()));
        let mut joined_ms = Vec::with_capacity(n);
        let mut steady = None;
        let mut rss_growth_kib = f64::NAN;
        while let Some(event) = rx.recv().await {
            if let LoadEvent::Joined { t_ms, .. } = event {
                joined_ms.push(t_ms);
                if joined_ms.len() == n {
                    rss_growth_kib = rss_kib() - rss0;
                    steady = Some((cpu_time(), Instant::now()));
                }
            }
        }
        let summary = load.await.expect("load task").expect("load run");
        let (cpu0, wall0) = steady.unwrap_or((cpu_time(), Instant::now()));
        // Every publisher's planned join is the run's start (one wave at offset 0).
        let mut connect_ms: Vec<f64> = joined_ms
            .iter()
            .map(|t| t.saturating_sub(summary.start_ms) as f64)
            .collect();
        connect_ms.sort_by(f64::total_cmp);
        Measured {
            connect_ms,
            rss_growth_kib,
            steady_cpu: cpu_time() - cpu0,
            steady_wall: wall0.elapsed(),
            sent: summary.sent_total(),
            target: summary.target_total(),
        }
    })
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn main() {
    let wave = env_or("FLEET_BENCH_WAVE", 500);
    let publishers = env_or("FLEET_BENCH_PUBLISHERS", 2000);
    mqdispatch::fdlimit::raise(
        mqdispatch::fdlimit::needed_for(publishers.max(wave) as u64),
        "the fleet bench",
    )
    .expect("open-file limit");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "command: cargo bench --bench fleet   (FLEET_BENCH_WAVE={wave}, FLEET_BENCH_PUBLISHERS={publishers})\n"
    );

    // A fresh broker per measurement, so the wave meets an empty accept queue and router.
    let broker = util::spawn_listening(&["broker", "--listen", "127.0.0.1:0"]);
    let m = measure(&rt, fleet(wave, 0.5, 4, &broker.addr, "wave-"));
    drop(broker);
    println!("## Connect wave\n");
    println!(
        "{wave} simultaneous CONNECTs to one embedded broker (rumqttd, own process, backlog 128), \
         straight (no dispatcher): CONNECT → CONNACK per client.\n"
    );
    println!("| clients | p50 | p90 | p99 | max | connected |");
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {wave} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {} |\n",
        quantile(&m.connect_ms, 0.5),
        quantile(&m.connect_ms, 0.9),
        quantile(&m.connect_ms, 0.99),
        m.connect_ms.last().copied().unwrap_or(f64::NAN),
        m.connect_ms.len()
    );

    let broker = util::spawn_listening(&["broker", "--listen", "127.0.0.1:0"]);
    let secs = 10;
    let m = measure(&rt, fleet(publishers, 0.5, secs, &broker.addr, "rest-"));
    drop(broker);
    println!("## Publisher cost\n");
    println!(
        "{publishers} publishers at 0.5 msg/s (200 B, QoS 0) for {secs} s to one embedded broker: \
         the generator process's resident memory growth once all are connected, and its CPU \
         from then to the end.\n"
    );
    println!("| publishers | RSS per publisher | generator CPU | sent / target |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| {publishers} | {:.1} KiB | {:.1} % of one core | {} / {} |",
        m.rss_growth_kib / publishers as f64,
        100.0 * m.steady_cpu.as_secs_f64() / m.steady_wall.as_secs_f64().max(1e-9),
        m.sent,
        m.target
    );
}
