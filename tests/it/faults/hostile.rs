//! The hostile-input cases tests/it/dispatcher.rs does not cover, against a
//! `mqdispatch dispatcher` child (so its memory can be read from /proc): thousands of idle
//! connections, and a report flood. Each checks the outcome, the memory, an honest client's
//! service meanwhile, and the log line.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mqdispatch::proto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use crate::util::bin;

/// A dispatcher child with its stderr in a file; killed and reaped on drop.
struct DispatcherChild {
    child: Child,
    addr: String,
    reports: Option<String>,
    log: tempfile::NamedTempFile,
}

impl Drop for DispatcherChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl DispatcherChild {
    fn spawn(extra: &[&str]) -> Self {
        let log = tempfile::NamedTempFile::new().expect("log file");
        let mut child = Command::new(bin())
            .args([
                "dispatcher",
                "--listen",
                "127.0.0.1:0",
                "--policy",
                "least-cpu",
            ])
            .args([
                "--broker",
                "b1=127.0.0.1:1001",
                "--broker",
                "b2=127.0.0.1:1002",
            ])
            .args(extra)
            .env("RUST_LOG", "mqdispatch=debug")
            .stdout(Stdio::piped())
            .stderr(log.reopen().expect("log"))
            .spawn()
            .expect("spawn dispatcher");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        let mut next = |prefix: &str| {
            line.clear();
            out.read_line(&mut line).expect("stdout line");
            line.trim()
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("expected `{prefix}ADDR`, got {line:?}"))
                .to_owned()
        };
        let addr = next("listening on ");
        let reports = extra
            .contains(&"--report-listen")
            .then(|| next("reports on "));
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Self {
            child,
            addr,
            reports,
            log,
        }
    }

    /// Resident memory of the child, in kB (VmRSS of /proc/PID/status).
    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    async fn redirect(&self, id: &str) -> (String, Duration) {
        let t = Instant::now();
        let r = proto::request_redirect(&self.addr, id, Duration::from_secs(2))
            .await
            .unwrap_or_else(|e| panic!("honest client {id} not served: {e}"));
        (r.server_reference, t.elapsed())
    }
}

/// Waits until `what` holds, polling every 20 ms, failing at `limit`.
async fn until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < end, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

const IDLE: usize = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_sockets_are_timed_out_with_bounded_memory_and_honest_clients_served() {
    let d = DispatcherChild::spawn(&["--handshake-timeout", "1s"]);
    d.redirect("warm-up").await;
    let before = d.rss_kb();
    let opened = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(&d.addr).await.expect("idle connect"));
    }
    // Held open and silent: an honest client is still answered at once.
    let (to, took) = d.redirect("honest").await;
    assert_eq!(to, "127.0.0.1:1001");
    assert!(
        took < Duration::from_millis(500),
        "honest client waited {took:?}"
    );
    let during = d.rss_kb();
    // Every idle socket is closed by the dispatcher (EOF) about 1 s after it connected.
    let closes = idle.into_iter().map(|mut s| async move {
        let mut b = [0u8; 16];
        timeout(Duration::from_secs(5), s.read(&mut b)).await
    });
    let results = futures_join_all(closes).await;
    let closed = results
        .iter()
        .filter(|r| matches!(r, Ok(Ok(0)) | Ok(Err(_))))
        .count();
    assert_eq!(closed, IDLE, "idle sockets the dispatcher closed");
    assert!(
        opened.elapsed() < Duration::from_secs(8),
        "closing took {:?}",
        opened.elapsed()
    );
    let grew_kb = during.saturating_sub(before);
    // ~2000 tasks with a 512 B buffer each: a few MB. 64 MB would mean per-socket waste.
    assert!(
        grew_kb < 64 * 1024,
        "RSS grew by {grew_kb} kB for {IDLE} idle sockets"
    );
    let (_, took) = d.redirect("after").await;
    assert!(took < Duration::from_millis(500));
    until("a log line per idle socket", Duration::from_secs(2), || {
        count(&d.log_text(), "no CONNECT in time") >= IDLE
    })
    .await;
    eprintln!("idle sockets: RSS {before} kB before, {during} kB with {IDLE} held (+{grew_kb} kB)");
}

/// `join_all` without the futures crate: spawn each, await in order.
async fn futures_join_all<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

fn line(broker: &str, cpu: f64) -> String {
    crate::util::cpu_report(broker, cpu).to_line()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_flood_is_bounded_and_other_agents_and_clients_are_unaffected() {
    let d = DispatcherChild::spawn(&["--report-listen", "127.0.0.1:0"]);
    let reports = d.reports.clone().expect("report port");
    let before = d.rss_kb();
    // The flood: one connection sending valid b1 reports (cpu 50) as fast as it can, 2 s.
    let flood_addr = reports.clone();
    let flood = tokio::spawn(async move {
        let mut s = TcpStream::connect(flood_addr).await.expect("flood connect");
        let end = Instant::now() + Duration::from_secs(2);
        let mut lines = 0u64;
        while Instant::now() < end {
            let batch = line("b1", 50.0).repeat(500);
            if s.write_all(batch.as_bytes()).await.is_err() {
                break;
            }
            lines += 500;
        }
        lines
    });
    // Meanwhile another agent says b2 is busier (90), then idle (1, window mean 45.5): each
    // report is applied promptly.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut agent = TcpStream::connect(&reports).await.expect("agent");
    agent.write_all(line("b2", 90.0).as_bytes()).await.unwrap();
    let mut worst = Duration::ZERO;
    let wait_for = |want: &'static str| {
        let d = &d;
        async move {
            let end = Instant::now() + Duration::from_secs(1);
            loop {
                let (to, took) = d.redirect("honest").await;
                if to == want {
                    return took;
                }
                assert!(
                    Instant::now() < end,
                    "report not applied within 1 s under the flood: still {to}\n{}",
                    d.log_text()
                );
            }
        }
    };
    worst = worst.max(wait_for("127.0.0.1:1001").await);
    agent.write_all(line("b2", 1.0).as_bytes()).await.unwrap();
    worst = worst.max(wait_for("127.0.0.1:1002").await);
    let during = d.rss_kb();
    let lines = timeout(Duration::from_secs(5), flood)
        .await
        .expect("flood ends")
        .expect("task");
    assert!(lines >= 10_000, "the flood was only {lines} lines");
    assert!(
        worst < Duration::from_millis(500),
        "an honest client waited {worst:?}"
    );
    // Each broker keeps at most 256 samples: a flood costs CPU, not memory.
    let grew_kb = during.saturating_sub(before);
    assert!(
        grew_kb < 32 * 1024,
        "RSS grew by {grew_kb} kB during the flood"
    );

    // A flood of reports for an unknown broker is cut off after 5 lines, with a log line.
    let mut s = TcpStream::connect(&reports).await.unwrap();
    let _ = s.write_all(line("b9", 1.0).repeat(10_000).as_bytes()).await;
    let mut b = [0u8; 64];
    let eof = timeout(Duration::from_secs(3), s.read(&mut b))
        .await
        .expect("closed");
    assert!(matches!(eof, Ok(0) | Err(_)), "{eof:?}");
    until("close logged", Duration::from_secs(2), || {
        let log = d.log_text();
        count(&log, "report connection closed") >= 1 && count(&log, "5 bad lines") >= 1
    })
    .await;
    eprintln!(
        "report flood: {lines} lines in 2 s ({} lines/s); RSS {before} → {during} kB; worst honest redirect {worst:?}",
        lines / 2
    );
}
