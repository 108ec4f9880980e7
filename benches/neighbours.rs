//! Is a broker's CPU its load's? The paper's heavy publisher (10000 msg/s, per message) alone on
//! broker b2, first with b1 idle, then with the 9 light publishers (2000 msg/s each) on b1, as in
//! the paper's runs once every publisher has joined. b2's load does not change; if its CPU does,
//! `least-cpu` sees a neighbour's load as b2's.
//!
//! Run: `cargo bench --bench neighbours` (env NEIGHBOURS_SECS=N changes the 10 s phases,
//! NEIGHBOURS_ROUNDS=N the 3 rounds, taken layout after layout so drift spreads over all). Needs
//! two online CPUs for the pinned layouts; Mosquitto rows when it is installed.
//!
//! Layouts (`brokers.cpus` in a scenario pins brokers the same way; the generator here is an
//! `mqdispatch load` child pinned alike):
//! - shared: nothing pinned, as `make experiment` runs;
//! - b2 alone: b2 on the last CPU, b1 and the generator on the others;
//! - brokers together: both brokers on the last CPU, the generator on the others.

use std::time::Duration;

use mqdispatch::affinity::{CpuSet, online_cpus};
use mqdispatch::agent::cpu::{CpuSampler, CpuSource};
use mqdispatch::broker::{BrokerKind, BrokerSpec, RunningBroker};
use mqdispatch::process::{ManagedChild, self_exe};

mod common;

struct Layout {
    name: &'static str,
    b1: Option<CpuSet>,
    b2: Option<CpuSet>,
    generator: Option<CpuSet>,
}

fn layouts(smoke: bool) -> Vec<Layout> {
    let mut all = vec![Layout {
        name: "shared (nothing pinned)",
        b1: None,
        b2: None,
        generator: None,
    }];
    let online = online_cpus().expect("online CPUs");
    let Some((last, rest)) = online.cpus().split_last() else {
        return all;
    };
    if smoke || rest.is_empty() {
        if !smoke {
            println!("(one online CPU: pinned layouts skipped)");
        }
        return all;
    }
    let set = |cpus: &[usize]| CpuSet::from_cpus(cpus.iter().copied()).expect("online CPUs");
    let (last, rest) = (set(&[*last]), set(rest));
    all.push(Layout {
        name: "b2 alone on a CPU",
        b1: Some(rest.clone()),
        b2: Some(last.clone()),
        generator: Some(rest.clone()),
    });
    all.push(Layout {
        name: "brokers together on a CPU",
        b1: Some(last.clone()),
        b2: Some(last),
        generator: Some(rest),
    });
    all
}

fn spec(id: &str, kind: BrokerKind, cpus: Option<CpuSet>) -> BrokerSpec {
    BrokerSpec {
        cpus,
        ..BrokerSpec::new(id, kind)
    }
}

/// CPU (% of one core) of the two brokers and the generator while `mqdispatch load` sends the
/// heavy publisher to b2 and, with `lights`, 9 light ones to b1; measured from 1 s after the
/// start to 1 s before the end.
async fn phase(
    b1: &RunningBroker,
    b2: &RunningBroker,
    generator: Option<&CpuSet>,
    lights: bool,
    secs: u64,
) -> [f64; 3] {
    let mut cmd = tokio::process::Command::new(self_exe());
    cmd.args(["load", "--broker", &b2.addr, "--arrival-interval", "0s"]);
    let profile = |name: &str, count: u32, rate: u32| {
        format!("name={name},count={count},rate={rate},bytes=600,duration={secs}s,send=per-message")
    };
    cmd.args(["--profile", &profile("heavy", 1, 10_000)]);
    if lights {
        // Arrival i goes to broker i mod 10: the heavy one (first) to b2, the lights to b1.
        for _ in 0..9 {
            cmd.args(["--broker", &b1.addr]);
        }
        cmd.args(["--profile", &profile("light", 9, 2000)]);
        let order = std::iter::once("heavy")
            .chain(std::iter::repeat_n("light", 9))
            .collect::<Vec<_>>()
            .join(",");
        cmd.args(["--order", &order]);
    }
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(cpus) = generator {
        cpus.apply_to(&mut cmd);
    }
    let child = ManagedChild::spawn(cmd, "generator").expect("mqdispatch load");
    let mut samplers = [
        b1.pid().expect("b1 pid"),
        b2.pid().expect("b2 pid"),
        child.pid(),
    ]
    .map(|pid| CpuSampler::new(CpuSource::Pid(pid), None));
    tokio::time::sleep(Duration::from_secs(1)).await;
    for s in &mut samplers {
        s.sample().expect("baseline");
    }
    tokio::time::sleep(Duration::from_secs(secs.saturating_sub(2).max(1))).await;
    let cpu = samplers
        .each_mut()
        .map(|s| s.sample().expect("sample").expect("a percentage"));
    // It ends by itself after its duration (plus its disconnect grace).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !child.has_exited() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = child.stop().await.expect("generator exit");
    assert!(status.success(), "mqdispatch load failed: {status}");
    cpu
}

/// One round of one layout: b2's CPU with b1 idle, then b2's, b1's and the generator's with the
/// lights on b1.
#[derive(Clone, Copy)]
struct Round {
    alone: f64,
    beside: f64,
    b1_busy: f64,
    generator: f64,
}

impl Round {
    fn change_pct(&self) -> f64 {
        100.0 * (self.beside - self.alone) / self.alone
    }
}

async fn round(kind: BrokerKind, layout: &Layout, secs: u64, workdir: &std::path::Path) -> Round {
    let b1 = RunningBroker::start(&spec("b1", kind, layout.b1.clone()), workdir)
        .await
        .expect("b1");
    let b2 = RunningBroker::start(&spec("b2", kind, layout.b2.clone()), workdir)
        .await
        .expect("b2");
    let gen_cpus = layout.generator.as_ref();
    let [_, alone, _] = phase(&b1, &b2, gen_cpus, false, secs).await;
    let [b1_busy, beside, generator] = phase(&b1, &b2, gen_cpus, true, secs).await;
    let _ = b1.stop().await;
    let _ = b2.stop().await;
    Round {
        alone,
        beside,
        b1_busy,
        generator,
    }
}

fn main() {
    let smoke = common::smoke_run();
    let secs: u64 = common::env_or("NEIGHBOURS_SECS", if smoke { 3 } else { 10 });
    let rounds: usize = common::env_or("NEIGHBOURS_ROUNDS", if smoke { 1 } else { 3 });
    common::use_built_binary();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let workdir = tempfile::tempdir().expect("temp dir");
    println!(
        "command: cargo bench --bench neighbours   (NEIGHBOURS_SECS={secs}, NEIGHBOURS_ROUNDS={rounds})"
    );
    println!(
        "b2 carries the heavy publisher (10000 msg/s, 600 B, QoS 0, per message) alone; b1 is idle, \
         then carries 9 × 2000 msg/s. CPU in % of one core, from 1 s after the start to 1 s before \
         the end of each {secs} s phase; mean of {rounds} rounds (the change: mean, and its \
         lowest and highest round). online CPUs: {}",
        online_cpus().expect("online CPUs")
    );
    println!("\n## neighbours\n");
    println!(
        "| broker | layout | b2 (heavy alone), b1 idle | b2 (heavy alone), b1 with 9 lights | b2 change | b1 with 9 lights | generator |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    let mut kinds = vec![("embedded (rumqttd 0.20)", BrokerKind::Embedded)];
    if smoke {
        // make test: one layout, embedded only (the table's shape, not its numbers).
    } else if mqdispatch::broker::check_available(BrokerKind::Mosquitto).is_ok() {
        kinds.push(("Mosquitto", BrokerKind::Mosquitto));
    } else {
        println!("(Mosquitto not installed: its rows skipped)");
    }
    for (name, kind) in kinds {
        let layouts = layouts(smoke);
        let mut rows: Vec<Vec<Round>> = vec![Vec::new(); layouts.len()];
        for _ in 0..rounds {
            for (layout, row) in layouts.iter().zip(&mut rows) {
                row.push(rt.block_on(round(kind, layout, secs, workdir.path())));
            }
        }
        for (layout, row) in layouts.iter().zip(&rows) {
            let mean = |f: fn(&Round) -> f64| row.iter().map(f).sum::<f64>() / row.len() as f64;
            let changes: Vec<f64> = row.iter().map(Round::change_pct).collect();
            let low = changes.iter().copied().fold(f64::INFINITY, f64::min);
            let high = changes.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            println!(
                "| {name} | {} | {:.1} | {:.1} | {:+.0} % ({low:+.0} to {high:+.0}) | {:.1} | {:.1} |",
                layout.name,
                mean(|r| r.alone),
                mean(|r| r.beside),
                mean(Round::change_pct),
                mean(|r| r.b1_busy),
                mean(|r| r.generator),
            );
        }
    }
}
