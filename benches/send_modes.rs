//! Per-message (MQTTLoader's) vs batched sending: what each costs the generator, how precise the
//! per-message deadlines are, whether each PUBLISH leaves as its own TCP segment, and what each
//! pattern costs the broker (embedded rumqttd and, when installed, Mosquitto).
//!
//! Run: `cargo bench --bench send_modes` (env SEND_MODES_SECS=N changes the 10 s runs).
//!
//! - Generator: the paper's 10 publishers (9 × 2000 + 1 × 10000 msg/s, 600 B, QoS 0) to one
//!   embedded broker child; CPU of this process (getrusage), lateness of every message against
//!   its deadline, and the kernel's own counters of the publishers' sockets (TCP_INFO:
//!   data segments sent and bytes sent, read from this process's fds while they run).
//!   `send=per-message` (the loader's send thread writes each publisher's pre-encoded
//!   PUBLISHes) is measured against the floor (one plain thread: sleep to the deadline + write;
//!   goal: at most 1.25× its CPU) and against the same schedule through a rumqttc client
//!   (`send=per-message-via-client`, the path TLS publishers take), in the same run.
//! - Receive: the same 28,000 msg/s into one broker, read by a plain read loop (raw CONNECT and
//!   SUBSCRIBE, `read`s counting frames) and by a rumqttc v5 subscriber decoding each payload
//!   header, both subscribed to `load/#` at once; CPU of each one's thread per 1000 messages.
//! - Broker: one publisher at 2000 and at 10000 msg/s; the broker child's CPU (all threads,
//!   /proc schedstat) over the middle of the run, in % of one core.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mqdispatch::agent::cpu::{CpuSampler, CpuSource};
use mqdispatch::broker::{BrokerKind, BrokerSpec, RunningBroker};
use mqdispatch::loadgen::{self, LoadSummary, Profile};
use tokio_util::sync::CancellationToken;

mod common;
use common::{bare_sender, config, cpu_time, receivers};

/// One socket's kernel counters (TCP_INFO), keyed by its local port.
#[derive(Clone, Copy, Default)]
struct SegmentCount {
    data_segs_out: u64,
    bytes_sent: u64,
}

/// TCP_INFO of every socket of this process connected to `peer_port`.
fn sockets_to(peer_port: u16) -> HashMap<u16, SegmentCount> {
    let mut found = HashMap::new();
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return found;
    };
    for fd in fds.flatten() {
        let Some(fd) = fd.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: getpeername/getsockname/getsockopt write only into the buffers given, with
        // their lengths; a non-socket fd makes them fail, which we skip.
        unsafe {
            let mut peer: libc::sockaddr_in = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            if libc::getpeername(fd, (&raw mut peer).cast(), &mut len) != 0
                || i32::from(peer.sin_family) != libc::AF_INET
                || u16::from_be(peer.sin_port) != peer_port
            {
                continue;
            }
            let mut local: libc::sockaddr_in = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            if libc::getsockname(fd, (&raw mut local).cast(), &mut len) != 0 {
                continue;
            }
            let mut info: libc::tcp_info = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            if libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &mut len,
            ) != 0
            {
                continue;
            }
            found.insert(
                u16::from_be(local.sin_port),
                SegmentCount {
                    data_segs_out: u64::from(info.tcpi_data_segs_out),
                    bytes_sent: info.tcpi_bytes_sent,
                },
            );
        }
    }
    found
}

/// Samples [`sockets_to`] every 100 ms on its own thread; the last sample of each socket
/// (taken while it was open) is kept.
fn watch_segments(peer_port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<SegmentCount> {
    std::thread::spawn(move || {
        let mut last: HashMap<u16, SegmentCount> = HashMap::new();
        while !stop.load(Ordering::Relaxed) {
            last.extend(sockets_to(peer_port));
            std::thread::sleep(Duration::from_millis(100));
        }
        last.values()
            .fold(SegmentCount::default(), |a, s| SegmentCount {
                data_segs_out: a.data_segs_out + s.data_segs_out,
                bytes_sent: a.bytes_sent + s.bytes_sent,
            })
    })
}

/// Bytes of one MQTT v5 QoS 0 PUBLISH: fixed header, topic, empty properties, payload.
fn publish_len(topic_len: usize, payload: usize) -> usize {
    let remaining = 2 + topic_len + 1 + payload;
    let varint = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + varint + remaining
}

fn paper_profiles(secs: u64, send: &str) -> Vec<Profile> {
    [
        "name=light,count=9,rate=2000",
        "name=heavy,count=1,rate=10000",
    ]
    .iter()
    .map(|p| {
        Profile::parse_spec(&format!("{p},bytes=600,duration={secs}s,send={send}"))
            .expect("profile")
    })
    .collect()
}

/// One row of the generator table.
struct GeneratorRow {
    sender: String,
    sent: u64,
    wall: Duration,
    cpu: Duration,
    lateness: mqdispatch::loadgen::Lateness,
    segments: SegmentCount,
}

impl GeneratorRow {
    fn cpu_pct(&self) -> f64 {
        100.0 * self.cpu.as_secs_f64() / self.wall.as_secs_f64()
    }

    /// Segments per PUBLISH, and the share of PUBLISHes that certainly left alone in their
    /// segment (S segments carrying P packets leave at least 2S − P alone). Every topic here
    /// is 12 bytes (`load/<name>-<k>`, `load/floor-<k>`).
    fn segments(&self) -> (f64, f64) {
        let packets = self.segments.bytes_sent as f64 / publish_len(12, 600) as f64;
        let per_publish = self.segments.data_segs_out as f64 / packets;
        (
            per_publish,
            (100.0 * (2.0 * per_publish - 1.0)).clamp(0.0, 100.0),
        )
    }

    fn print_details(&self) {
        let (per_publish, alone) = self.segments();
        println!(
            "{}: sent {} in {:.2} s; CPU {:.1} % of one core ({:.3} ms per 1000 messages)",
            self.sender,
            self.sent,
            self.wall.as_secs_f64(),
            self.cpu_pct(),
            self.cpu.as_secs_f64() * 1e3 / (self.sent as f64 / 1000.0),
        );
        println!(
            "  lateness against each message's deadline: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            ms(self.lateness.quantile(0.5)),
            ms(self.lateness.quantile(0.99)),
            ms(Some(self.lateness.max())),
        );
        println!(
            "  TCP_INFO of its sockets: {} data segments for ≈ {:.0} PUBLISH packets = {per_publish:.3} \
             segments per PUBLISH; at least {alone:.1} % of PUBLISHes left as their own segment",
            self.segments.data_segs_out,
            self.segments.bytes_sent as f64 / publish_len(12, 600) as f64,
        );
    }

    fn table_row(&self) -> String {
        let (per_publish, alone) = self.segments();
        format!(
            "| {} | {:.1} | {:.1} ms | {:.2} / {:.2} / {:.1} ms | {per_publish:.3} (≥ {alone:.1} % alone in their segment) |",
            self.sender,
            self.cpu_pct(),
            self.cpu.as_secs_f64() * 1e3 / (self.sent as f64 / 1000.0),
            ms(self.lateness.quantile(0.5)),
            ms(self.lateness.quantile(0.99)),
            ms(Some(self.lateness.max())),
        )
    }
}

fn ms(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

fn broker_port(broker: &RunningBroker) -> u16 {
    broker
        .addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("broker port")
}

/// The project's generator (whole process CPU) at the paper's 28,000 msg/s in `send` mode.
fn generator_cost(
    rt: &tokio::runtime::Runtime,
    broker: &RunningBroker,
    secs: u64,
    send: &str,
) -> GeneratorRow {
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_segments(broker_port(broker), Arc::clone(&stop));
    let cfg = config(
        paper_profiles(secs, send),
        &broker.addr,
        &format!("gen-{send}-"),
    );
    let (summary, wall, cpu) = rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let (cpu0, wall0) = (cpu_time(), Instant::now());
        let summary: LoadSummary = loadgen::run(cfg, tx, CancellationToken::new())
            .await
            .expect("load run");
        let (cpu, wall) = (cpu_time() - cpu0, wall0.elapsed());
        let _ = drain.await;
        (summary, wall, cpu)
    });
    stop.store(true, Ordering::Relaxed);
    assert_eq!(
        summary.sent_total(),
        summary.target_total(),
        "{send}: messages missing"
    );
    GeneratorRow {
        sender: format!("mqdispatch load, send={send} (whole process)"),
        sent: summary.sent_total(),
        wall,
        cpu,
        lateness: summary.lateness(),
        segments: watcher.join().expect("segment watcher"),
    }
}

/// The same 28,000 msg/s, per message, from the bare floor sender (one thread: sleep, write).
fn floor_cost(broker: &RunningBroker, secs: u64) -> GeneratorRow {
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_segments(broker_port(broker), Arc::clone(&stop));
    let publishers: Vec<(String, f64)> = (0..9)
        .map(|k| (format!("floor-{k}"), 2000.0))
        .chain(std::iter::once(("floor-9".to_owned(), 10000.0)))
        .collect();
    let run = bare_sender::run(&broker.addr, &publishers, secs).expect("floor sender");
    stop.store(true, Ordering::Relaxed);
    GeneratorRow {
        sender: "floor: one plain thread, sleep + write (that thread)".to_owned(),
        sent: run.sent,
        wall: run.wall,
        cpu: run.cpu,
        lateness: run.lateness,
        segments: watcher.join().expect("segment watcher"),
    }
}

/// Broker CPU (% of one core) while one publisher sends at `rate` with `send`, measured from
/// 1 s after the start to 1 s before the end.
fn broker_cpu(
    rt: &tokio::runtime::Runtime,
    broker: &RunningBroker,
    secs: u64,
    rate: u32,
    send: &str,
) -> f64 {
    let profile = Profile::parse_spec(&format!(
        "name=p,count=1,rate={rate},bytes=600,duration={secs}s,send={send}"
    ))
    .expect("profile");
    let cfg = config(vec![profile], &broker.addr, &format!("cpu-{rate}-{send}-"));
    let pid = broker.pid().expect("a broker child");
    rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let load = tokio::spawn(loadgen::run(cfg, tx, CancellationToken::new()));
        let mut sampler = CpuSampler::new(CpuSource::Pid(pid), None);
        tokio::time::sleep(Duration::from_secs(1)).await;
        sampler.sample().expect("baseline");
        tokio::time::sleep(Duration::from_secs(secs.saturating_sub(2).max(1))).await;
        let pct = sampler.sample().expect("sample").expect("a percentage");
        load.await.expect("join").expect("load run");
        let _ = drain.await;
        pct
    })
}

/// What `send=per-message` may cost against the floor, in CPU.
const GOAL_RATIO: f64 = 1.25;

/// The receive side: the paper's 28,000 msg/s (per message, as in the experiments) into `broker`,
/// read at once by the plain read loop and by a rumqttc subscriber decoding each header.
fn receive_cost(rt: &tokio::runtime::Runtime, broker: &RunningBroker, secs: u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut project = receivers::ProjectSubscriber::spawn(
        &broker.addr,
        "load/#",
        Duration::from_secs(secs + 5),
        dir.path(),
    )
    .expect("mqdispatch load --subscriber");
    let plain = receivers::plain_reader(&broker.addr, "sub-plain", "load/#").expect("plain reader");
    let client =
        receivers::rumqttc_reader(&broker.addr, "sub-rumqttc", "load/#").expect("rumqttc reader");
    let cfg = config(paper_profiles(secs, "per-message"), &broker.addr, "recv-");
    // The child subscribes within a second of starting (no line to wait for on its stdout).
    std::thread::sleep(Duration::from_millis(1500));
    project.measure_from();
    let summary = rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let summary = loadgen::run(cfg, tx, CancellationToken::new())
            .await
            .expect("load run");
        let _ = drain.await;
        // Let the broker forward what it still holds.
        tokio::time::sleep(Duration::from_millis(500)).await;
        summary
    });
    let plain = plain.stop().expect("plain reader");
    let client = client.stop().expect("rumqttc reader");
    let project = project.finish().expect("mqdispatch load --subscriber");
    println!(
        "\nreceive: {} messages published at 28,000 msg/s (send=per-message) to {}, three \
         subscribers on load/# at once; CPU of each reader's thread, of the whole \
         `mqdispatch load --subscriber name=s,count=1,topic=load/#,qos=0` process",
        summary.sent_total(),
        broker.addr
    );
    println!("\n## receive\n");
    println!(
        "| subscriber | messages received | CPU per 1000 messages | end-to-end latency p50 / p99 / max |"
    );
    println!("|---|---:|---:|---:|");
    let per_1000 =
        |r: &receivers::Received| r.cpu.as_secs_f64() * 1e3 / (r.messages as f64 / 1000.0);
    for (name, r) in [
        (
            "plain read loop (raw SUBSCRIBE, read, count frames)",
            &plain,
        ),
        ("rumqttc v5 subscriber decoding the header", &client),
        ("mqdispatch load --subscriber (whole process)", &project),
    ] {
        let latency = r.latency.as_ref().map_or("–".to_owned(), |l| {
            format!(
                "{:.2} / {:.2} / {:.1} ms",
                ms(l.quantile(0.5)),
                ms(l.quantile(0.99)),
                ms(Some(l.max()))
            )
        });
        println!(
            "| {name} | {} | {:.3} ms | {latency} |",
            r.messages,
            per_1000(r)
        );
    }
    println!(
        "per message, against the plain read loop: the project's subscriber {:.2}×, a rumqttc \
         subscriber {:.2}× (same run)",
        per_1000(&project) / per_1000(&plain),
        per_1000(&client) / per_1000(&plain)
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` (make test) runs this as a
    // smoke test, with short runs.
    let smoke = common::smoke_run();
    let secs: u64 = common::env_or("SEND_MODES_SECS", if smoke { 3 } else { 10 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("command: cargo bench --bench send_modes   (SEND_MODES_SECS={secs})");
    common::use_built_binary();
    let workdir = tempfile::tempdir().expect("temp dir");
    let start = |kind| {
        rt.block_on(RunningBroker::start(
            &BrokerSpec::new("b1", kind),
            workdir.path(),
        ))
    };

    let embedded = start(BrokerKind::Embedded).expect("embedded broker");
    println!(
        "generator: the paper's 10 publishers (28,000 msg/s, 600 B, QoS 0) to an embedded broker \
         child at {} for {secs} s",
        embedded.addr
    );
    let rows = vec![
        generator_cost(&rt, &embedded, secs, "per-message"),
        generator_cost(&rt, &embedded, secs, "per-message-via-client"),
        floor_cost(&embedded, secs),
        generator_cost(&rt, &embedded, secs, "batched"),
    ];
    for row in &rows {
        row.print_details();
    }
    let (ours, via_client, floor) = (&rows[0], &rows[1], &rows[2]);
    let ratio = ours.cpu_pct() / floor.cpu_pct();
    println!(
        "per-message: the generator costs {ratio:.2}× the floor's CPU (goal ≤ {GOAL_RATIO:.2}×: {}); \
         through a rumqttc client {:.2}× (same run)",
        if ratio <= GOAL_RATIO {
            "met"
        } else {
            "NOT met"
        },
        via_client.cpu_pct() / floor.cpu_pct(),
    );
    let p99 = |row: &GeneratorRow| ms(row.lateness.quantile(0.99));
    println!(
        "per-message lateness p99: {:.3} ms from the send thread vs {:.3} ms through rumqttc \
         ({}; floor {:.3} ms)",
        p99(ours),
        p99(via_client),
        if p99(ours) <= p99(via_client) {
            "no worse"
        } else {
            "WORSE"
        },
        p99(floor),
    );
    println!("\n## generator\n");
    println!(
        "| sender | CPU (% of one core) | CPU per 1000 messages | lateness p50 / p99 / max | TCP data segments per PUBLISH |"
    );
    println!("|---|---:|---:|---:|---:|");
    for row in &rows {
        println!("{}", row.table_row());
    }

    receive_cost(&rt, &embedded, secs);

    println!(
        "\nbroker CPU, % of one core, one publisher (600 B, QoS 0), {secs} s runs, middle {} s measured:",
        secs.saturating_sub(2).max(1)
    );
    println!("\n## broker-cpu\n");
    println!(
        "| broker | 2000 msg/s batched | 10000 msg/s batched | 2000 msg/s per-message | 10000 msg/s per-message | 10000 ÷ 2000, per-message |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let mut brokers = vec![("embedded (rumqttd 0.20)", embedded)];
    match start(BrokerKind::Mosquitto) {
        Ok(m) => brokers.push(("Mosquitto", m)),
        Err(e) => println!("(Mosquitto skipped: {e})"),
    }
    for (name, broker) in &brokers {
        let mut cells = Vec::new();
        for send in ["batched", "per-message"] {
            for rate in [2000, 10000] {
                cells.push(broker_cpu(&rt, broker, secs, rate, send));
            }
        }
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2}× |",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[3] / cells[2]
        );
    }
    for (_, broker) in brokers {
        let _ = rt.block_on(broker.stop());
    }
    drop(workdir);
}
