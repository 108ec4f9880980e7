//! Load generator cost: CPU time per 1000 messages at the paper's 28,000 msg/s (9 × 2000 +
//! 1 × 10000 msg/s, 600 B, QoS 0, 10 publishers), and the maximum aggregate rate of one process
//! (10 publishers asking for far more than they can send). The broker is an embedded
//! `mqdispatch broker` child process, so its CPU is not counted; only this process's (getrusage
//! RUSAGE_SELF: every thread, including the tokio workers and the event drain).
//!
//! Run: `cargo bench --bench loadgen` (env LOADGEN_BENCH_SECS=N changes the 10 s measurement).

use std::time::{Duration, Instant};

use mqdispatch::loadgen::{self, LoadConfig, LoadSummary, Profile};
use tokio_util::sync::CancellationToken;

mod common;
use common::{config, cpu_time};

// The integration tests' child helper: `mqdispatch broker` killed and reaped on drop.
#[path = "../tests/it/util.rs"]
mod util;

/// Peak resident memory of this process (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Runs `cfg`, returning the summary, wall time and this process's CPU time.
fn measure(rt: &tokio::runtime::Runtime, cfg: LoadConfig) -> (LoadSummary, Duration, Duration) {
    rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let (cpu0, wall0) = (cpu_time(), Instant::now());
        let summary = loadgen::run(cfg, tx, CancellationToken::new())
            .await
            .expect("load run");
        let (cpu, wall) = (cpu_time() - cpu0, wall0.elapsed());
        let _ = drain.await;
        (summary, wall, cpu)
    })
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let secs: u64 = common::env_or("LOADGEN_BENCH_SECS", 10);
    let broker = util::spawn_listening(&["broker", "--listen", "127.0.0.1:0"]);
    let addr = broker.addr.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("command: cargo bench --bench loadgen   (LOADGEN_BENCH_SECS={secs})");
    println!("broker: embedded `mqdispatch broker` child at {addr} (its CPU not counted)");

    let paper = vec![
        Profile::parse_spec(&format!(
            "name=light,count=9,rate=2000,bytes=600,duration={secs}s"
        ))
        .expect("profile"),
        Profile::parse_spec(&format!(
            "name=heavy,count=1,rate=10000,bytes=600,duration={secs}s"
        ))
        .expect("profile"),
    ];
    let (s, wall, cpu) = measure(&rt, config(paper, &addr, "bench-rate-"));
    let sent = s.sent_total();
    println!(
        "fixed rate: 10 publishers, target {} msg in {secs} s (28,000 msg/s, 600 B, QoS 0): sent {} ({:.3} %), \
         wall {:.2} s",
        s.target_total(),
        sent,
        100.0 * sent as f64 / s.target_total() as f64,
        wall.as_secs_f64()
    );
    println!(
        "  generator CPU {:.3} s over {:.2} s wall = {:.1} % of one core; {:.3} ms CPU per 1000 messages",
        cpu.as_secs_f64(),
        wall.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e3 / (sent as f64 / 1000.0),
    );

    let rss = peak_rss_mib();
    println!(
        "  peak RSS of the generator process so far: {rss:.1} MiB (10 clients, in-flight limit 100)"
    );
    let fixed_row = format!(
        "| paper's 10 publishers, 28,000 msg/s per message, {secs} s | {sent} of {} | {:.1} | {:.2} ms | {rss:.1} MiB |",
        s.target_total(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e3 / (sent as f64 / 1000.0),
    );

    let max_secs = 3;
    let flat_out = vec![
        Profile::parse_spec(&format!(
            "name=max,count=10,rate=1000000,bytes=600,duration={max_secs}s"
        ))
        .expect("profile"),
    ];
    let (s, wall, cpu) = measure(&rt, config(flat_out, &addr, "bench-max-"));
    println!(
        "max rate: 10 publishers flat out for {max_secs} s (600 B, QoS 0): {} msg in {:.2} s = {:.0} msg/s, \
         generator CPU {:.1} % of one core",
        s.sent_total(),
        wall.as_secs_f64(),
        s.sent_total() as f64 / wall.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
    );
    println!("\n## loadgen\n");
    println!("| run | sent | generator CPU (% of one core) | CPU per 1000 messages | peak RSS |");
    println!("|---|---:|---:|---:|---:|");
    println!("{fixed_row}");
    println!(
        "| 10 publishers flat out, {max_secs} s | {} ({:.0} msg/s) | {:.1} | {:.2} ms | {:.1} MiB |",
        s.sent_total(),
        s.sent_total() as f64 / wall.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e3 / (s.sent_total() as f64 / 1000.0),
        peak_rss_mib(),
    );
}
