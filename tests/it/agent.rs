//! The agent: CPU figures against a known burner (uncapped and in a 0.25-core cgroup), reports
//! over TCP that survive a dispatcher restart, and the `agent` subcommand end to end.

use std::time::Duration;

use mqdispatch::agent::{self, AgentConfig, CpuSource};
use mqdispatch::broker::cgroup::CpuCgroup;
use mqdispatch::load_report::LoadReport;
use mqdispatch::process::ManagedChild;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::broker::cgroups_writable;
use crate::util::bin;

/// A shell busy loop: one full core when nothing else runs. Bounded: it ends itself after 60 s
/// even if every kill path failed.
fn burner(cgroup: Option<&CpuCgroup>) -> ManagedChild {
    let mut cmd = tokio::process::Command::new("timeout");
    cmd.args(["60", "sh", "-c", "while :; do :; done"]);
    if let Some(group) = cgroup {
        group.apply_to(&mut cmd).unwrap();
    }
    ManagedChild::spawn(cmd, "burner").unwrap()
}

fn config(cpu: CpuSource, capacity: Option<f64>, interval_ms: u64) -> AgentConfig {
    AgentConfig {
        broker_id: "b1".into(),
        cpu,
        capacity_cores: capacity,
        counters: None,
        interval: Duration::from_millis(interval_ms),
        dispatchers: Vec::new(),
        token: None,
        probe: None,
        metrics: None,
    }
}

/// Runs agents until each has produced `n` reports.
async fn collect(configs: Vec<AgentConfig>, n: usize) -> Vec<Vec<LoadReport>> {
    let cancel = CancellationToken::new();
    let mut out = Vec::new();
    let mut receivers = Vec::new();
    for cfg in configs {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(agent::run(cfg, Some(tx), cancel.clone()));
        receivers.push(rx);
    }
    for mut rx in receivers {
        let mut reports = Vec::new();
        while reports.len() < n {
            let r = timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap();
            reports.push(r);
        }
        out.push(reports);
    }
    cancel.cancel();
    out
}

/// utime+stime of `pid` in seconds (the kernel's own tick count: an independent check).
fn stat_cpu_s(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    mqdispatch::agent::proc_stat::pid_stat_ticks(&text).unwrap() as f64 / 100.0
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_measures_a_cpu_burner() {
    let burn = burner(None);
    // `timeout` execs nothing: the loop runs in its `sh` child, in the same process group.
    // Measure the group leader's child by finding it.
    let sh = child_of(burn.pid()).await;
    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(agent::run(
        config(CpuSource::Pid(sh), None, 250),
        Some(tx),
        cancel.clone(),
    ));
    let first = timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let cpu0 = stat_cpu_s(sh);
    let mut pcts = Vec::new();
    let mut last = first.clone();
    for _ in 0..8 {
        last = timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        pcts.push(last.cpu_pct);
    }
    let cpu1 = stat_cpu_s(sh);
    cancel.cancel();
    let wall_s = (last.t_ms - first.t_ms) as f64 / 1000.0;
    let truth = 100.0 * (cpu1 - cpu0) / wall_s;
    let measured = mean(&pcts);
    eprintln!("burner: agent {measured:.1} %, kernel ticks {truth:.1} %, samples {pcts:.1?}");
    assert!(
        (measured - truth).abs() < 6.0,
        "agent {measured:.1} % vs ticks {truth:.1} %"
    );
    // A busy loop gets most of a core even on a shared 2-core box, and never more than one.
    assert!(measured > 40.0, "a busy loop measured only {measured:.1} %");
    assert!(pcts.iter().all(|&p| p <= 105.0), "{pcts:?}");
}

/// The (first) child process of `pid`, from /proc.
async fn child_of(pid: u32) -> u32 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let path = format!("/proc/{pid}/task/{pid}/children");
        if let Some(child) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse().ok())
        {
            return child;
        }
        assert!(tokio::time::Instant::now() < deadline, "{pid} has no child");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroup_caps_a_burner_and_reports_relative_to_the_cap() {
    if !cgroups_writable("cgroup_caps_a_burner_and_reports_relative_to_the_cap") {
        return;
    }
    let group = CpuCgroup::create("burner", 0.25).unwrap();
    let burn = burner(Some(&group));
    let sh = child_of(burn.pid()).await;
    let reports = collect(
        vec![
            config(
                CpuSource::Cgroup {
                    path: group.usage_dir().to_owned(),
                },
                Some(0.25),
                500,
            ),
            config(CpuSource::Pid(sh), None, 500),
        ],
        6,
    )
    .await;
    let of_cap: Vec<f64> = reports[0].iter().map(|r| r.cpu_pct).collect();
    let of_core: Vec<f64> = reports[1].iter().map(|r| r.cpu_pct).collect();
    eprintln!("capped burner: {of_cap:.1?} % of 0.25 core; {of_core:.1?} % of a core");
    // A 500 ms window spans at most 6 CFS periods of 25 ms each: ≤ 30 % of a core.
    assert!(
        of_core.iter().all(|&p| p <= 31.0),
        "above the cap: {of_core:?}"
    );
    assert!(mean(&of_core) <= 26.5, "mean above the cap: {of_core:?}");
    assert!(
        of_cap.iter().all(|&p| p <= 124.0),
        "above the cap: {of_cap:?}"
    );
    // The cap, not the machine, is the limit: the burner uses (nearly) all of it.
    assert!(
        mean(&of_cap) > 70.0,
        "capped burner used little: {of_cap:?}"
    );
    let dir = group.dir().to_owned();
    drop(burn);
    drop(group);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reconnects_to_a_restarted_dispatcher() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = config(CpuSource::Pid(std::process::id()), None, 100);
    cfg.dispatchers = vec![addr.to_string()];
    cfg.token = Some("s3cret".into());
    let cancel = CancellationToken::new();
    let (tx, mut samples) = mpsc::unbounded_channel();
    let agent = tokio::spawn(agent::run(cfg, Some(tx), cancel.clone()));

    let r = accept_report(&listener).await;
    assert_eq!(r.broker, "b1");
    assert_eq!(r.token.as_deref(), Some("s3cret"));

    // The dispatcher goes away (connection and listener) and comes back on the same port.
    drop(listener);
    let before = drain(&mut samples);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Sampling went on meanwhile, unblocked by the dead dispatcher.
    let during = drain(&mut samples);
    assert!(
        during >= 2,
        "only {during} samples while the dispatcher was away ({before} before)"
    );
    let listener = TcpListener::bind(addr).await.unwrap();
    let r = accept_report(&listener).await;
    assert_eq!(r.broker, "b1");

    cancel.cancel();
    timeout(Duration::from_secs(5), agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// Accepts the agent's connection and reads its first report.
async fn accept_report(listener: &TcpListener) -> LoadReport {
    let (stream, _) = timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("agent did not connect")
        .unwrap();
    let mut lines = BufReader::new(stream).lines();
    let line = timeout(Duration::from_secs(5), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    LoadReport::parse_line(&line).unwrap()
}

fn drain(rx: &mut mpsc::UnboundedReceiver<LoadReport>) -> usize {
    let mut n = 0;
    while rx.try_recv().is_ok() {
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_subcommand_reports_and_exits_on_sigterm() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let burn = burner(None);
    let mut cmd = tokio::process::Command::new(bin());
    cmd.args([
        "agent",
        "--dispatcher",
        &listener.local_addr().unwrap().to_string(),
        "--broker-id",
        "b7",
        "--pid",
        &burn.pid().to_string(),
        "--interval",
        "200ms",
    ])
    .stdout(std::process::Stdio::piped());
    let mut child = ManagedChild::spawn(cmd, "agent").unwrap();
    assert_eq!(accept_report(&listener).await.broker, "b7");
    // Reports are echoed on stdout too.
    let mut out = BufReader::new(child.take_stdout().unwrap()).lines();
    let echoed = timeout(Duration::from_secs(5), out.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(LoadReport::parse_line(&echoed).is_ok(), "{echoed}");
    assert!(child.stop().await.unwrap().success());
}

#[tokio::test]
async fn agent_subcommand_fails_when_the_process_is_gone() {
    let out = tokio::process::Command::new(bin())
        .args(["agent", "--broker-id", "b", "--pid", "4294967294"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is gone"));
}

/// `probe`: while the broker's port refuses connections the agent sends the dispatchers nothing
/// (so they take the broker out of service), though its own samples go on; once the port
/// accepts again, reports resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_broker_port_pauses_reports_to_dispatchers() {
    // A port nobody listens on (bound, read, closed).
    let broker_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dispatcher = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = config(CpuSource::Host, None, 100);
    cfg.dispatchers = vec![dispatcher.local_addr().unwrap().to_string()];
    cfg.probe = Some(broker_addr.to_string());
    // Every line the dispatcher side receives, from any connection.
    let (line_tx, mut lines) = mpsc::unbounded_channel::<String>();
    let reader = tokio::spawn(async move {
        loop {
            let (conn, _) = dispatcher.accept().await.unwrap();
            let tx = line_tx.clone();
            tokio::spawn(async move {
                let mut conn_lines = BufReader::new(conn).lines();
                while let Ok(Some(line)) = conn_lines.next_line().await {
                    let _ = tx.send(line);
                }
            });
        }
    });
    let (tx, mut samples) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let agent = tokio::spawn(agent::run(cfg, Some(tx), cancel.clone()));

    for _ in 0..5 {
        timeout(Duration::from_secs(5), samples.recv())
            .await
            .expect("samples go on while the broker is down")
            .expect("agent alive");
    }
    assert!(
        lines.try_recv().is_err(),
        "a report reached the dispatcher while the broker refused connections"
    );

    let _broker = tokio::net::TcpListener::bind(broker_addr).await.unwrap();
    let line = timeout(Duration::from_secs(3), lines.recv())
        .await
        .expect("reports resume once the broker accepts")
        .expect("reader alive");
    assert_eq!(LoadReport::parse_line(&line).unwrap().broker, "b1");

    cancel.cancel();
    agent.await.unwrap().unwrap();
    reader.abort();
}
