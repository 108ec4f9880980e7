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
//!
//! Then the same over TLS, clients closing abortively: the dispatcher's TLS port
//! against Mosquitto's TLS listener, both with one server certificate from a throwaway CA made
//! for this run (ECDSA P-256, TLS 1.3, no session resumption: every handshake is a full one).

use std::io::{BufRead, BufReader};
use std::net::TcpListener as StdListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use mqdispatch::proto;
use mqdispatch::tls::ThrowawayCa;
use rumqttc::v5::mqttbytes::v5::ConnectReturnCode;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// TLS for the clients: `None` for plain TCP.
type Tls = Option<Arc<rustls::ClientConfig>>;

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

async fn handshake(
    addr: &str,
    client_id: &str,
    expect: ConnectReturnCode,
    close: Close,
    tls: &Tls,
) -> bool {
    async fn mqtt<S: AsyncRead + AsyncWrite + Unpin>(
        s: &mut S,
        client_id: &str,
    ) -> Result<ConnectReturnCode, proto::ProtoError> {
        s.write_all(&proto::connect_packet(client_id)).await?;
        s.flush().await?;
        Ok(proto::read_connack(s).await?.code)
    }
    let exchange = async {
        let s = TcpStream::connect(addr).await?;
        let code = match tls {
            None => {
                let mut s = s;
                let code = mqtt(&mut s, client_id).await?;
                if close == Close::Abort {
                    s.set_zero_linger()?;
                }
                code
            }
            Some(config) => {
                let mut s = mqdispatch::tls::connect(s, addr, config).await?;
                let code = mqtt(&mut s, client_id).await?;
                if close == Close::Abort {
                    s.get_ref().0.set_zero_linger()?;
                }
                code
            }
        };
        Ok::<_, proto::ProtoError>(code == expect)
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
    tls: &Tls,
) -> Outcome {
    let cpu_before = cpu_time(server);
    let client_before = cpu_time(std::process::id());
    let start = Instant::now();
    let deadline = start + run_for;
    let workers: Vec<_> = (0..CLIENTS)
        .map(|w| {
            let addr = addr.to_owned();
            let tls = tls.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failures = 0;
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    // Unique ids: a broker treats a repeated id as a session takeover.
                    let id = format!("bench-{w}-{i}");
                    if handshake(&addr, &id, expect, close, &tls).await {
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

/// The dispatcher child; with `tls`, its TLS port's address is returned instead of the plain one.
fn start_dispatcher(tls: Option<&ThrowawayCa>) -> (Guard, String, Vec<String>) {
    let bin = env!("CARGO_BIN_EXE_mqdispatch");
    let mut args: Vec<String> = [
        "dispatcher",
        "--listen",
        "127.0.0.1:0",
        "--broker",
        "b1=127.0.0.1:1884,tls=127.0.0.1:8884",
        "--broker",
        "b2=127.0.0.1:1885,tls=127.0.0.1:8885",
        "--policy",
        "least-load",
    ]
    .map(String::from)
    .to_vec();
    if let Some(ca) = tls {
        args.extend(["--tls-listen".into(), "127.0.0.1:0".into()]);
        args.extend(["--tls-cert".into(), ca.server_cert.display().to_string()]);
        args.extend(["--tls-key".into(), ca.server_key.display().to_string()]);
    }
    let mut child = Command::new(bin)
        .args(&args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the mqdispatch binary");
    let stdout = child.stdout.take().expect("piped stdout");
    let guard = Guard(child);
    let mut lines = BufReader::new(stdout);
    let mut next = |prefix: &str| {
        let mut line = String::new();
        lines.read_line(&mut line).expect("read a stdout line");
        line.trim()
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected `{prefix}ADDR`, got {line:?}"))
            .to_owned()
    };
    let mut addr = next("listening on ");
    if tls.is_some() {
        addr = next("tls on ");
    }
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

/// Mosquitto on a free port; with `tls`, a TLS listener only (server certificate of `tls`).
async fn start_mosquitto(
    bin: &str,
    dir: &Path,
    tls: Option<&ThrowawayCa>,
) -> (Guard, String, String) {
    let port = StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config = dir.join("mosquitto.conf");
    let mut text = format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n"
    );
    if let Some(ca) = tls {
        text.push_str(&format!(
            "cafile {}\ncertfile {}\nkeyfile {}\n",
            ca.ca_cert.display(),
            ca.server_cert.display(),
            ca.server_key.display()
        ));
    }
    let client_tls: Tls = tls.map(|ca| ca.client_config().expect("client TLS config"));
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
        &client_tls,
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
    let (dispatcher, addr, command) = start_dispatcher(None);
    println!("dispatcher:  {}", command.join(" "));
    let mut d = Vec::new();
    for close in MODES {
        let pid = dispatcher.0.id();
        let expect = ConnectReturnCode::UseAnotherServer;
        let o = load(&addr, pid, expect, close, run_for, &None).await;
        print(&format!("dispatcher, client close {close:?}"), &o);
        d.push(o);
    }
    drop(dispatcher);

    let mosquitto_bin = find_mosquitto();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rows = Vec::new();
    match mosquitto_bin {
        None => {
            println!("mosquitto:   not installed (apt-get install -y mosquitto): no comparison")
        }
        Some(bin) => {
            let (mosquitto, addr, command) = start_mosquitto(bin, dir.path(), None).await;
            println!("mosquitto:   {command}");
            let mut m = Vec::new();
            for close in MODES {
                let pid = mosquitto.0.id();
                let o = load(
                    &addr,
                    pid,
                    ConnectReturnCode::Success,
                    close,
                    run_for,
                    &None,
                )
                .await;
                print(&format!("mosquitto,  client close {close:?}"), &o);
                m.push(o);
            }
            drop(mosquitto);
            for (i, close) in MODES.iter().enumerate() {
                compare(&format!("client close {close:?}"), &d[i], &m[i], true);
                let label = match close {
                    Close::Abort => "plain TCP, an abortive close (RST)",
                    Close::Graceful => "plain TCP, a normal close (FIN)",
                };
                rows.push(table_row(label, &d[i], &m[i]));
            }
        }
    }

    rows.extend(tls_part(mosquitto_bin, run_for).await);
    println!("\n## handshakes\n");
    println!(
        "| transport, client closes with | dispatcher | Mosquitto | ratio | p50 / p99, dispatcher | p50 / p99, Mosquitto | server CPU per handshake, dispatcher / Mosquitto |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        println!("{row}");
    }
}

/// One row of the `## handshakes` table: the dispatcher against Mosquitto, same run.
fn table_row(label: &str, d: &Outcome, m: &Outcome) -> String {
    let per = |o: &Outcome| o.server_cpu.as_secs_f64() * 1e6 / o.handshakes.max(1) as f64;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "| {label} | {:.0} /s | {:.0} /s | {:.2}× | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.1} / {:.1} µs |",
        d.rate(),
        m.rate(),
        d.rate() / m.rate(),
        ms(d.p50),
        ms(d.p99),
        ms(m.p50),
        ms(m.p99),
        per(d),
        per(m),
    )
}

/// Dispatcher over Mosquitto: the ratio of handshake rates and of server CPU per handshake;
/// `targets`: the plain-TCP targets (≥ 3×, p99 ≤ 10 ms) apply.
fn compare(what: &str, d: &Outcome, m: &Outcome, targets: bool) {
    let per = |o: &Outcome| o.server_cpu.as_secs_f64() / o.handshakes.max(1) as f64;
    let (rate_target, p99_target) = match targets {
        true => (" (target >= 3x)", " (target <= 10 ms)"),
        false => ("", ""),
    };
    println!(
        "{what}: dispatcher/mosquitto {:.2}x handshakes/s{rate_target}, server CPU per \
         handshake mosquitto/dispatcher {:.2}x, p99 dispatcher {:.2} ms{p99_target}, mosquitto \
         {:.2} ms",
        d.rate() / m.rate(),
        per(m) / per(d),
        d.p99.as_secs_f64() * 1e3,
        m.p99.as_secs_f64() * 1e3
    );
}

/// The TLS redirect handshake (TCP + TLS + CONNECT/CONNACK) against Mosquitto's TLS
/// CONNECT/CONNACK, one certificate for both, clients closing abortively.
async fn tls_part(mosquitto_bin: Option<&str>, run_for: Duration) -> Option<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ThrowawayCa::create(dir.path()).expect("throwaway CA");
    let tls: Tls = Some(ca.client_config().expect("client TLS config"));
    let (dispatcher, addr, command) = start_dispatcher(Some(&ca));
    println!("dispatcher (TLS): {}", command.join(" "));
    let expect = ConnectReturnCode::UseAnotherServer;
    let pid = dispatcher.0.id();
    let d = load(&addr, pid, expect, Close::Abort, run_for, &tls).await;
    print("dispatcher TLS, client close Abort", &d);
    drop(dispatcher);
    let Some(bin) = mosquitto_bin else {
        println!("mosquitto (TLS): not installed: no comparison");
        return None;
    };
    let (mosquitto, addr, command) = start_mosquitto(bin, dir.path(), Some(&ca)).await;
    println!("mosquitto (TLS): {command}");
    let pid = mosquitto.0.id();
    let m = load(
        &addr,
        pid,
        ConnectReturnCode::Success,
        Close::Abort,
        run_for,
        &tls,
    )
    .await;
    print("mosquitto TLS,  client close Abort", &m);
    drop(mosquitto);
    compare("TLS, client close Abort", &d, &m, false);
    Some(table_row("TLS, an abortive close (RST)", &d, &m))
}
