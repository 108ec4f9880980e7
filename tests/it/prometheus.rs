//! Prometheus in and out: `/metrics` checked by `promtool`, counters against what clients saw,
//! and a dispatcher fed by a real Prometheus server scraping real agent `/metrics` endpoints.
//!
//! These tests need Debian's `prometheus` package (`.ci/run` installs it); without it they
//! print why and return.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use mqdispatch::agent::metrics::AgentMetrics;
use mqdispatch::dispatcher::{
    BrokerEntry, Decision, DispatcherConfig, Extras, FedBy, LoadSource, Metric, Policy,
    PrometheusSource, Stale, bind_listener, run_with,
};
use mqdispatch::load_report::LoadReport;
use mqdispatch::prom_server::{self, PromServer};
use mqdispatch::proto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::util;

const B1: &str = "127.0.0.1:1884";
const B2: &str = "127.0.0.1:1885";
const BOUND: Duration = Duration::from_secs(5);
const INTERVAL: Duration = Duration::from_secs(1);

fn skip_without(tool: &str) -> bool {
    if prom_server::find(tool).is_none() {
        eprintln!(
            "SKIPPED: `{tool}` is not installed (apt-get install -y prometheus); .ci/run installs it"
        );
        return true;
    }
    false
}

/// `GET /metrics` on `addr`: the body.
async fn scrape(addr: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_owned()
}

/// The value of the series `name{labels}` exactly as written in an exposition.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn promtool_accepts(text: &str, what: &str) {
    let tool = prom_server::find("promtool").expect("checked before");
    let mut child = std::process::Command::new(tool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused the {what}'s /metrics:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn brokers() -> Vec<BrokerEntry> {
    [("b1", B1), ("b2", B2)]
        .map(|(id, addr)| BrokerEntry {
            id: id.into(),
            addr: addr.into(),
            tls_addr: None,
        })
        .to_vec()
}

/// A dispatcher in this process with `/metrics`; cancelled when dropped.
struct Running {
    addr: String,
    metrics: String,
    decisions: UnboundedReceiver<Decision>,
    cancel: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    fn start(cfg: DispatcherConfig) -> Self {
        let listener = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let metrics = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let metrics_addr = metrics.local_addr().unwrap().to_string();
        let (tx, decisions) = tokio::sync::mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let extras = Extras {
            metrics: Some(metrics),
            ..Extras::default()
        };
        let task = tokio::spawn(run_with(
            listener,
            None,
            cfg,
            Some(tx),
            extras,
            cancel.clone(),
        ));
        Self {
            addr,
            metrics: metrics_addr,
            decisions,
            cancel,
            task: Some(task),
        }
    }

    async fn redirect(&self, client_id: &str) -> String {
        proto::request_redirect(&self.addr, client_id, BOUND)
            .await
            .unwrap_or_else(|e| panic!("{client_id}: {e}"))
            .server_reference
    }

    /// Redirects clients until one is sent to `addr`; the decisions seen meanwhile are dropped.
    async fn until_redirected_to(&mut self, addr: &str, within: Duration, tag: &str) {
        let deadline = tokio::time::Instant::now() + within;
        let mut k = 0;
        loop {
            let got = self.redirect(&format!("{tag}-{k}")).await;
            k += 1;
            if got == addr {
                while self.decisions.try_recv().is_ok() {}
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{tag}: still sent to {got} after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn stop(mut self) {
        self.cancel.cancel();
        let task = self.task.take().unwrap();
        tokio::time::timeout(BOUND, task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[tokio::test]
async fn redirect_counters_equal_what_clients_saw_and_promtool_accepts_the_dispatcher() {
    if skip_without("promtool") {
        return;
    }
    let mut cfg = DispatcherConfig::new(brokers(), Policy::RoundRobin);
    cfg.seed = 1;
    let d = Running::start(cfg);
    let mut seen = [0u32; 2];
    for k in 0..7 {
        match d.redirect(&format!("c{k}")).await.as_str() {
            B1 => seen[0] += 1,
            B2 => seen[1] += 1,
            other => panic!("{other}"),
        }
    }
    // One MQTT 3.1.1 client: refused, counted as such.
    let legacy = [
        0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x01, b'x',
    ];
    let mut s = tokio::net::TcpStream::connect(&d.addr).await.unwrap();
    s.write_all(&legacy).await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(BOUND, s.read_to_end(&mut sink)).await;
    assert_eq!(sink.first(), Some(&0x20), "a CONNACK");

    let text = scrape(&d.metrics).await;
    for (i, id) in ["b1", "b2"].iter().enumerate() {
        let series =
            format!("mqdispatch_redirects_total{{broker=\"{id}\",reason=\"use_another_server\"}}");
        assert_eq!(
            value(&text, &series),
            Some(f64::from(seen[i])),
            "{series}\n{text}"
        );
    }
    assert_eq!(seen.iter().sum::<u32>(), 7);
    let refused = "mqdispatch_refusals_total{reason=\"legacy_protocol\"}";
    assert_eq!(value(&text, refused), Some(1.0), "{text}");
    // Every answered client: 7 redirects and the refused 3.1.1 client.
    assert_eq!(
        value(&text, "mqdispatch_handshake_seconds_count"),
        Some(8.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "mqdispatch_broker_up{broker=\"b1\"}"),
        Some(1.0),
        "{text}"
    );
    promtool_accepts(&text, "dispatcher");
    d.stop().await;
}

#[tokio::test]
async fn promtool_accepts_the_agents_metrics() {
    if skip_without("promtool") {
        return;
    }
    let agent = util::spawn_first_line(&[
        "agent",
        "--broker-id",
        "b1",
        "--host",
        "--interval",
        "100ms",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let addr = agent
        .line
        .strip_prefix("metrics on ")
        .unwrap_or_else(|| panic!("first line {:?}", agent.line))
        .to_owned();
    let deadline = tokio::time::Instant::now() + BOUND * 2;
    let text = loop {
        let text = scrape(&addr).await;
        if text.contains("mqdispatch_agent_cpu_percent{broker=\"b1\"}") {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "no sample:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(value(&text, "mqdispatch_agent_samples_total{broker=\"b1\"}").unwrap() >= 1.0);
    promtool_accepts(&text, "agent");
    agent.stop();
}

/// One agent's `/metrics` endpoint per broker, in this process, with loads the test sets.
struct Agents {
    metrics: Vec<Arc<AgentMetrics>>,
    addrs: Vec<String>,
    cancel: CancellationToken,
}

impl Agents {
    async fn start(n: usize) -> Self {
        let cancel = CancellationToken::new();
        let mut metrics = Vec::new();
        let mut addrs = Vec::new();
        for _ in 0..n {
            let m = Arc::new(AgentMetrics::default());
            let listener = mqdispatch::metrics::bind("127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            addrs.push(listener.local_addr().unwrap().to_string());
            tokio::spawn(mqdispatch::metrics::serve(
                listener,
                m.clone(),
                cancel.clone(),
            ));
            metrics.push(m);
        }
        Self {
            metrics,
            addrs,
            cancel,
        }
    }

    fn set(&self, i: usize, cpu: f64) {
        self.metrics[i].observe(&LoadReport {
            broker: format!("b{}", i + 1),
            t_ms: mqdispatch::now_ms(),
            cpu_pct: cpu,
            msgs_in_per_s: None,
            connections: None,
            token: None,
        });
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Waits until Prometheus answers `query` with exactly the brokers `want` (sorted).
async fn until_prometheus_shows(source: &PrometheusSource, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = mqdispatch::dispatcher::prometheus::query(source, BOUND).await;
        let mut brokers: Vec<String> = got.iter().flatten().map(|p| p.broker.clone()).collect();
        brokers.sort();
        if brokers == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Prometheus shows {got:?}, waiting for {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn prometheus_cfg(url: &str) -> (DispatcherConfig, PrometheusSource) {
    let source =
        PrometheusSource::new(url, "mqdispatch_agent_cpu_percent", "broker", Stale::Down).unwrap();
    let mut cfg = DispatcherConfig::new(brokers(), Policy::LeastCpu);
    cfg.metric = Metric::Cpu;
    // One sample per window: the placement follows the latest answer.
    cfg.window = INTERVAL;
    cfg.report_interval = INTERVAL;
    cfg.load_source = LoadSource::Prometheus(source.clone());
    (cfg, source)
}

/// A real Prometheus server scrapes two agent endpoints every second; the dispatcher queries it.
/// It steers new clients away from the loaded broker and back, drops a broker whose series
/// disappears within 3 intervals, and keeps serving on its last answer when Prometheus goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_fed_by_a_real_prometheus_follows_its_series() {
    if skip_without("prometheus") {
        return;
    }
    let agents = Agents::start(2).await;
    agents.set(0, 80.0);
    agents.set(1, 10.0);
    let dir = tempfile::tempdir().unwrap();
    let prom = PromServer::start(dir.path(), &agents.addrs, INTERVAL)
        .await
        .unwrap();
    let (cfg, source) = prometheus_cfg(&prom.url);
    until_prometheus_shows(&source, &["b1", "b2"]).await;
    let mut d = Running::start(cfg);

    // b1 loaded → clients go to b2; then b2 loaded → back to b1.
    d.until_redirected_to(B2, Duration::from_secs(20), "away")
        .await;
    let decision = {
        d.redirect("probe").await;
        d.decisions.recv().await.unwrap()
    };
    assert_eq!(decision.fed_by, FedBy::Prometheus);
    assert_eq!(decision.loads, [("b1".into(), 80.0), ("b2".into(), 10.0)]);
    agents.set(0, 5.0);
    agents.set(1, 90.0);
    d.until_redirected_to(B1, Duration::from_secs(20), "back")
        .await;

    // b1's series disappears (its agent withdraws it): no client for b1 within 3 intervals of
    // Prometheus no longer answering it, although it is the least loaded.
    agents.metrics[0].withdraw();
    until_prometheus_shows(&source, &["b2"]).await;
    tokio::time::sleep(INTERVAL * 4).await;
    for k in 0..5 {
        assert_eq!(d.redirect(&format!("gone-{k}")).await, B2, "b1 is down");
    }
    let text = scrape(&d.metrics).await;
    assert_eq!(
        value(&text, "mqdispatch_broker_up{broker=\"b1\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "mqdispatch_prometheus_up"),
        Some(1.0),
        "{text}"
    );

    // b1 back with a light load; then Prometheus goes away: the last answer is held.
    agents.set(0, 1.0);
    until_prometheus_shows(&source, &["b1", "b2"]).await;
    d.until_redirected_to(B1, Duration::from_secs(20), "again")
        .await;
    prom.stop().await.unwrap();
    // Well past 3 intervals: a stale source would have taken both brokers down by now.
    tokio::time::sleep(INTERVAL * 5).await;
    while d.decisions.try_recv().is_ok() {}
    for k in 0..5 {
        assert_eq!(
            d.redirect(&format!("held-{k}")).await,
            B1,
            "last known: b1 lighter"
        );
    }
    let decision = d.decisions.recv().await.unwrap();
    assert_eq!(decision.fed_by, FedBy::PrometheusLastKnown);
    assert_eq!(decision.loads, [("b1".into(), 1.0), ("b2".into(), 90.0)]);
    let text = scrape(&d.metrics).await;
    assert_eq!(
        value(&text, "mqdispatch_prometheus_up"),
        Some(0.0),
        "{text}"
    );
    assert!(
        value(
            &text,
            "mqdispatch_prometheus_queries_total{outcome=\"error\"}"
        )
        .unwrap()
            >= 1.0,
        "{text}"
    );
    assert_eq!(
        value(&text, "mqdispatch_broker_up{broker=\"b1\"}"),
        Some(1.0),
        "{text}"
    );
    d.stop().await;
}

/// The command line: `--load-source prometheus` against a server that does not answer says so
/// in its log, and keeps answering clients (no answer was ever known: brokers assumed up).
#[test]
fn the_log_says_when_prometheus_does_not_answer() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut child = std::process::Command::new(util::bin())
        .args([
            "dispatcher",
            "--listen",
            "127.0.0.1:0",
            "--broker",
            "b1=127.0.0.1:1884",
            "--policy",
            "least-cpu",
            "--load-source",
            "prometheus",
            "--prometheus",
            &url,
            "--query",
            "mqdispatch_agent_cpu_percent",
            "--interval",
            "200ms",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("Prometheus not answering: serving on the last known loads") {
                let _ = tx.send(());
            }
        }
    });
    let found = rx.recv_timeout(Duration::from_secs(20)).is_ok();
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    assert!(found, "no log line about Prometheus not answering");
}
