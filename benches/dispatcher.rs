//! Redirect handshakes per second and their latency, against Mosquitto's CONNECT→CONNACK in the
//! same run: `cargo bench --bench dispatcher` (or `make bench`).
//!
//! 200 client tasks in this process each loop CONNECT → CONNACK → close for a fixed time
//! (`MQDISPATCH_BENCH_SECS`, default 5 s) against
//! (a) the dispatcher in its own process: the `mqdispatch` binary cargo built for this bench
//!     (`CARGO_BIN_EXE_mqdispatch`, release profile under `cargo bench`), and
//! (b) Mosquitto on a free port with a generated config, when `mosquitto` is installed.
//! Both share the machine's cores with the clients, so the ratio is what matters. Each runs
//! twice: clients closing plainly (FIN) and abortively (RST): see [`Close`].

use std::io::{BufRead, BufReader};
use std::net::TcpListener as StdListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mqdispatch::proto;
use rumqttc::v5::mqttbytes::v5::ConnectReturnCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const CLIENTS: usize = 200;
/// Per handshake: a hung connection counts as a failure instead of stalling the bench.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Killed and reaped on drop, on every exit path (panics included).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Outcome {
    /// CPU time the server process used during the run (utime + stime): a per-handshake cost
    /// that, unlike the rate, does not depend on what else the shared cores were doing.
    server_cpu: Duration,
    /// The same for this process (the clients): on a small host the clients, not the server,
    /// may be what limits the rate.
    client_cpu: Duration,
    handshakes: usize,
    failures: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.handshakes as f64 / self.elapsed.as_secs_f64()
    }
}

/// One handshake; `expect` is the CONNACK reason a correct server sends.
/// How a client leaves after its CONNACK. The dispatcher closes first, so a client's plain close
/// costs it nothing; with a broker the client closes first and keeps the port in TIME_WAIT, and a
/// single load host then pays for finding free ephemeral ports on every connect. An abortive
/// close (RST) avoids that for both servers; both are measured.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Close {
    /// Plain close (FIN).
    Graceful,
    /// SO_LINGER 0: RST, no TIME_WAIT at the client.
    Abort,
}

async fn handshake(addr: &str, client_id: &str, expect: ConnectReturnCode, close: Close) -> bool {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(&proto::connect_packet(client_id)).await?;
        let connack = proto::read_connack(&mut s).await?;
        if close == Close::Abort {
            s.set_zero_linger()?;
        }
        Ok::<_, proto::ProtoError>(connack.code == expect)
    };
    matches!(
        tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange).await,
        Ok(Ok(true))
    )
}

/// utime + stime of `pid` from /proc (100 ticks per second).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

async fn load(
    addr: &str,
    server: u32,
    expect: ConnectReturnCode,
    close: Close,
    run_for: Duration,
) -> Outcome {
    let cpu_before = cpu_time(server);
    let client_before = cpu_time(std::process::id());
    let start = Instant::now();
    let deadline = start + run_for;
    let workers: Vec<_> = (0..CLIENTS)
        .map(|w| {
            let addr = addr.to_owned();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failures = 0;
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    // Unique ids: a broker treats a repeated id as a session takeover.
                    if handshake(&addr, &format!("bench-{w}-{i}"), expect, close).await {
                        latencies.push(t0.elapsed());
                    } else {
                        failures += 1;
                    }
                    i += 1;
                }
                (latencies, failures)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut failures = 0;
    for w in workers {
        let (l, f) = w.await.expect("bench worker panicked");
        all.extend(l);
        failures += f;
    }
    let elapsed = start.elapsed();
    let server_cpu = cpu_time(server).saturating_sub(cpu_before);
    let client_cpu = cpu_time(std::process::id()).saturating_sub(client_before);
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Outcome {
        server_cpu,
        client_cpu,
        handshakes: all.len(),
        failures,
        elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

fn print(name: &str, o: &Outcome) {
    println!(
        "{name:<34} {:>6.0} handshakes/s  p50 {:>7.2} ms  p99 {:>7.2} ms  CPU/handshake server {:>4.1} us, clients {:>4.1} us  ({} ok, {} failed, {:.1} s)",
        o.rate(),
        o.p50.as_secs_f64() * 1e3,
        o.p99.as_secs_f64() * 1e3,
        o.server_cpu.as_secs_f64() * 1e6 / o.handshakes.max(1) as f64,
        o.client_cpu.as_secs_f64() * 1e6 / o.handshakes.max(1) as f64,
        o.handshakes,
        o.failures,
        o.elapsed.as_secs_f64()
    );
}

fn start_dispatcher() -> (Guard, String, Vec<String>) {
    let bin = env!("CARGO_BIN_EXE_mqdispatch");
    let args: Vec<String> = [
        "dispatcher",
        "--listen",
        "127.0.0.1:0",
        "--broker",
        "b1=127.0.0.1:1884",
        "--broker",
        "b2=127.0.0.1:1885",
        "--policy",
        "least-load",
    ]
    .map(String::from)
    .to_vec();
    let mut child = Command::new(bin)
        .args(&args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the mqdispatch binary");
    let stdout = child.stdout.take().expect("piped stdout");
    let guard = Guard(child);
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("read `listening on ADDR`");
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    let mut command = vec![bin.to_owned()];
    command.extend(args);
    (guard, addr, command)
}

fn find_mosquitto() -> Option<&'static str> {
    [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
}

async fn start_mosquitto(bin: &str, dir: &Path) -> (Guard, String, String) {
    let port = StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config = dir.join("mosquitto.conf");
    let text = format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n"
    );
    std::fs::write(&config, &text).expect("write mosquitto.conf");
    let child = Command::new(bin)
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mosquitto");
    let guard = Guard(child);
    let addr = format!("127.0.0.1:{port}");
    let end = Instant::now() + Duration::from_secs(10);
    while !handshake(
        &addr,
        "bench-probe",
        ConnectReturnCode::Success,
        Close::Abort,
    )
    .await
    {
        assert!(Instant::now() < end, "mosquitto did not start on {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (
        guard,
        addr,
        format!(
            "{bin} -c {} # {}",
            config.display(),
            text.replace('\n', "; ")
        ),
    )
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it:
    // then only a short smoke run, so `make test` stays fast.
    let measuring = std::env::args().any(|a| a == "--bench");
    let secs: f64 = std::env::var("MQDISPATCH_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if measuring { 5.0 } else { 0.2 });
    let run_for = Duration::from_secs_f64(secs);
    if !measuring {
        println!("smoke run (no --bench): figures below are not measurements");
    }
    println!(
        "{CLIENTS} concurrent clients, CONNECT→CONNACK→close for {secs} s each, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // Abort first: a graceful run leaves ~70k client ports in TIME_WAIT for 60 s.
    const MODES: [Close; 2] = [Close::Abort, Close::Graceful];
    let (dispatcher, addr, command) = start_dispatcher();
    println!("dispatcher:  {}", command.join(" "));
    let mut d = Vec::new();
    for close in MODES {
        let pid = dispatcher.0.id();
        let o = load(
            &addr,
            pid,
            ConnectReturnCode::UseAnotherServer,
            close,
            run_for,
        )
        .await;
        print(&format!("dispatcher, client close {close:?}"), &o);
        d.push(o);
    }
    drop(dispatcher);

    let Some(bin) = find_mosquitto() else {
        println!("mosquitto:   not installed (apt-get install -y mosquitto): no comparison");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (mosquitto, addr, command) = start_mosquitto(bin, dir.path()).await;
    println!("mosquitto:   {command}");
    let mut m = Vec::new();
    for close in MODES {
        let pid = mosquitto.0.id();
        let o = load(&addr, pid, ConnectReturnCode::Success, close, run_for).await;
        print(&format!("mosquitto,  client close {close:?}"), &o);
        m.push(o);
    }
    drop(mosquitto);

    let per = |o: &Outcome| o.server_cpu.as_secs_f64() / o.handshakes.max(1) as f64;
    println!("\n## handshakes\n");
    println!(
        "| client closes with | dispatcher | Mosquitto | ratio | p50 / p99, dispatcher | p50 / p99, Mosquitto | server CPU per handshake, dispatcher / Mosquitto |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (i, close) in MODES.iter().enumerate() {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| {} | {:.0} /s | {:.0} /s | {:.2}× | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.1} / {:.1} µs |",
            match close {
                Close::Abort => "an abortive close (RST)",
                Close::Graceful => "a normal close (FIN)",
            },
            d[i].rate(),
            m[i].rate(),
            d[i].rate() / m[i].rate(),
            ms(d[i].p50),
            ms(d[i].p99),
            ms(m[i].p50),
            ms(m[i].p99),
            per(&d[i]) * 1e6,
            per(&m[i]) * 1e6,
        );
    }
    println!();
    for (i, close) in MODES.iter().enumerate() {
        println!(
            "client close {close:?}: dispatcher/mosquitto {:.2}x handshakes/s (target >= 3x), \
             server CPU per handshake mosquitto/dispatcher {:.2}x, dispatcher p99 {:.2} ms (target <= 10 ms)",
            d[i].rate() / m[i].rate(),
            per(&m[i]) / per(&d[i]),
            d[i].p99.as_secs_f64() * 1e3
        );
    }
}
