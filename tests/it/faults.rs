//! End to end: a broker killed mid-run (dispatcher vs dns-rr), and no process or cgroup
//! left behind by `mqdispatch run`, whether it ends normally or is interrupted.
//!
//! Each test runs `mqdispatch run` as a child on a short scenario written to a tempdir, watches
//! which processes it starts (children of its pid, polled), and reads the CSVs it wrote.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::util::run_command;

#[path = "../../fuzz/connect_check.rs"]
#[allow(dead_code)]
mod connect_check;
mod dispatcher_down;
mod dispatcher_restart;
mod fuzz_replay;
mod hostile;
mod report_port;
mod signals;

/// Sampler interval of the short scenarios (s): the dispatcher calls a broker down after 3.
const INTERVAL_S: f64 = 0.2;
/// Backoff steps (0.1, 0.2, 0.4, 0.8 s ...) after detection, one redirect, one CONNECT.
const RECONNECT_MARGIN_S: f64 = 2.5;
const DURATION_S: f64 = 10.0;
const RATE: f64 = 500.0;

/// `count` publishers × 500 msg/s joining `interval` apart for 10 s; broker b2 (index 1) killed
/// at 4 s; the methods `dns-rr` and `lc` (dispatcher, least-connections).
fn broker_kill_scenario(count: usize, interval: &str) -> String {
    format!(
        "name: kill\n\
         seed: 7\n\
         trials: 1\n\
         brokers: {{ kind: embedded, count: 2 }}\n\
         sampler: {{ interval: 200ms, window: 1s }}\n\
         publishers:\n  \
           - {{ name: p, count: {count}, rate: {RATE}, payload_bytes: 100, duration: {DURATION_S}s, qos: 0 }}\n\
         arrival: {{ order: random, interval: {interval} }}\n\
         faults:\n  \
           - {{ at: 4s, kind: kill, broker: 1 }}\n\
         methods:\n  \
           - {{ name: dns-rr, assign: dns-rr }}\n  \
           - {{ name: lc, assign: dispatcher, policy: least-connections }}\n"
    )
}

// ---- running `mqdispatch run` as a watched child ------------------------------------------------

/// A process seen as a child of the run: pid and start time (field 22 of /proc/PID/stat), so a
/// recycled pid is never mistaken for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Proc {
    pid: u32,
    start: u64,
}

/// `(ppid, pgid, starttime)` from /proc/PID/stat (fields after the last `)`).
fn stat_of(pid: u32) -> Option<(u32, u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): ppid = 4, pgrp = 5, starttime = 22.
    Some((f[1].parse().ok()?, f[2].parse().ok()?, f[19].parse().ok()?))
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<Proc> {
    all_pids()
        .into_iter()
        .filter_map(|pid| {
            let (ppid, _, start) = stat_of(pid)?;
            (ppid == parent).then_some(Proc { pid, start })
        })
        .collect()
}

/// The tracked processes still alive (same pid and start time), and any process still in one of
/// their process groups (brokers lead their own group; a grandchild would stay in it).
fn survivors(seen: &HashSet<Proc>) -> Vec<String> {
    let groups: HashSet<u32> = seen.iter().map(|p| p.pid).collect();
    let mut out = Vec::new();
    for pid in all_pids() {
        let Some((_, pgid, start)) = stat_of(pid) else {
            continue;
        };
        // A zombie still has a /proc entry until reaped; the run reaps its children itself, and
        // once it exited the test (its parent) has reaped it, so any entry here is a real leak.
        if seen.contains(&Proc { pid, start }) || groups.contains(&pgid) {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            out.push(format!(
                "{pid}: {}",
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            ));
        }
    }
    out
}

/// cgroup directories named after the run's pid (`mqdispatch-<pid>-...`) under any hierarchy.
fn cgroups_of(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("mqdispatch-{pid}-");
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(d) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(d.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    roots
        .iter()
        .filter_map(|r| std::fs::read_dir(r).ok())
        .flat_map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .collect()
}

struct Watched {
    status: ExitStatus,
    /// Every process seen as a child of the run while it ran.
    children: HashSet<Proc>,
    /// cgroups of the run seen while it ran.
    cgroups_seen: usize,
    pid: u32,
    /// The run's results directory (the one folder under `out/<scenario>/`).
    dir: PathBuf,
    stderr: String,
}

/// Kills and reaps the child if the test fails before it exits.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `mqdispatch run SCENARIO --out OUT [extra]`, polling its children every 50 ms; sends
/// SIGINT once `interrupt(dir)` says so (given the results dir once it exists).
fn run_watched(
    scenario: &Path,
    out: &Path,
    extra: &[&str],
    limit: Duration,
    interrupt: impl Fn(&Path) -> bool,
) -> Watched {
    run_signalled(scenario, out, extra, limit, libc::SIGINT, interrupt)
}

/// [`run_watched`], sending `signal` instead of SIGINT.
fn run_signalled(
    scenario: &Path,
    out: &Path,
    extra: &[&str],
    limit: Duration,
    signal: i32,
    interrupt: impl Fn(&Path) -> bool,
) -> Watched {
    let stderr_path = out.join("stderr.log");
    let child = run_command(scenario, out, extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("spawn mqdispatch run");
    let mut child = Reaper(child);
    let pid = child.0.id();
    let deadline = Instant::now() + limit;
    let mut children = HashSet::new();
    let mut cgroups = HashSet::new();
    let mut interrupted = false;
    let status = loop {
        children.extend(children_of(pid));
        cgroups.extend(cgroups_of(pid));
        if !interrupted
            && let Some(dir) = results_dir(out)
            && interrupt(&dir)
        {
            // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
            unsafe { libc::kill(pid as i32, signal) };
            interrupted = true;
        }
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "mqdispatch run still going after {limit:?}; stderr:\n{}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    Watched {
        status,
        children,
        cgroups_seen: cgroups.len(),
        pid,
        dir: results_dir(out).expect("a results directory"),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    }
}

fn results_dir(out: &Path) -> Option<PathBuf> {
    let scenario_dir = std::fs::read_dir(out)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.is_dir())?;
    std::fs::read_dir(scenario_dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.is_dir() && !p.is_symlink())
}

/// Whether this test may create CPU cgroups (so a scenario may use `cpu_limit`).
fn cgroups_writable() -> bool {
    match mqdispatch::broker::cgroup::CpuCgroup::create("probe", 0.5) {
        Ok(mut probe) => {
            let _ = probe.remove();
            true
        }
        Err(e) => {
            eprintln!("cgroups not writable here ({e}): checking processes only");
            false
        }
    }
}

/// Asserts nothing the run started is left: no process, no cgroup.
fn assert_no_orphans(w: &Watched) {
    assert!(
        !w.children.is_empty(),
        "the run was never seen starting a broker: the orphan check would prove nothing"
    );
    let left = survivors(&w.children);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    let groups = cgroups_of(w.pid);
    assert!(groups.is_empty(), "cgroups left behind: {groups:?}");
}

// ---- reading the results -------------------------------------------------------------------------

type Row = HashMap<String, String>;

fn read_rows(path: &Path) -> Vec<Row> {
    let mut r = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header: Vec<String> = r
        .headers()
        .expect("header")
        .iter()
        .map(String::from)
        .collect();
    r.records()
        .map(|rec| {
            let rec = rec.expect("record");
            header
                .iter()
                .cloned()
                .zip(rec.iter().map(String::from))
                .collect()
        })
        .collect()
}

fn num(row: &Row, col: &str) -> f64 {
    row[col]
        .parse()
        .unwrap_or_else(|_| panic!("{col} = {:?} in {row:?}", row[col]))
}

/// The kill's time (s) as faults.csv recorded it, for `method`.
fn kill_time(dir: &Path, method: &str) -> f64 {
    let faults: Vec<Row> = read_rows(&dir.join("faults.csv"))
        .into_iter()
        .filter(|f| f["method"] == method)
        .collect();
    assert_eq!(faults.len(), 1, "{faults:?}");
    assert_eq!(
        (faults[0]["kind"].as_str(), faults[0]["target"].as_str()),
        ("kill", "b2")
    );
    let t = num(&faults[0], "t_s");
    // Due at 4 s, injected on the runner's next 1 s tick.
    assert!((3.9..=5.5).contains(&t), "kill at {t} s");
    t
}

/// b2's rows from 2 s after the kill to the end: no message, no connected publisher.
fn assert_dead_broker_silent(brokers: &[Row], method: &str, t_kill: f64) {
    let after: Vec<&Row> = brokers
        .iter()
        .filter(|r| r["method"] == method && r["broker"] == "b2" && num(r, "t_s") >= t_kill + 2.0)
        .collect();
    assert!(
        after.len() >= 5,
        "{method}: b2 has {} rows after the kill",
        after.len()
    );
    for r in after {
        assert_eq!(num(r, "sent_msgs_per_s"), 0.0, "{method}: {r:?}");
        assert_eq!(num(r, "publishers"), 0.0, "{method}: {r:?}");
    }
}

fn write_scenario(dir: &Path, count: usize, interval: &str) -> PathBuf {
    let path = dir.join("kill.yaml");
    std::fs::write(&path, broker_kill_scenario(count, interval)).expect("write scenario");
    path
}

#[test]
fn dispatcher_moves_the_dead_brokers_publishers_within_detection_plus_reconnect() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let scenario = write_scenario(tmp.path(), 6, "1500ms");
    let w = run_watched(
        &scenario,
        tmp.path(),
        &["--method", "lc"],
        Duration::from_secs(40),
        |_| false,
    );
    assert!(w.status.success(), "run failed: {}\n{}", w.status, w.stderr);
    let dir = &w.dir;
    let t_kill = kill_time(dir, "lc");

    // Joins at 0, 1.5, 3 s: least-connections places b1, b2, b1. After the kill b2 has the fewest
    // placements, so only the dispatcher noticing its silence (3 report intervals) keeps the
    // publishers joining at 6 and 7.5 s off it.
    let decisions = read_rows(&dir.join("decisions.csv"));
    let mut first: HashMap<String, (String, f64)> = HashMap::new();
    for d in &decisions {
        first
            .entry(d["client_id"].clone())
            .or_insert((d["broker"].clone(), num(d, "t_s")));
    }
    let on_b2: HashSet<String> = first
        .iter()
        .filter(|(_, (b, t))| b == "b2" && *t < t_kill)
        .map(|(c, _)| c.trim_start_matches("t1-lc-").to_owned())
        .collect();
    assert!(
        !on_b2.is_empty(),
        "no publisher was on b2 at the kill: {decisions:?}"
    );

    // No new client goes to b2 once 3 silent intervals (+ one sample of slack) have passed.
    let detected = t_kill + 4.0 * INTERVAL_S + 0.2;
    let late: Vec<&Row> = decisions
        .iter()
        .filter(|d| d["broker"] == "b2" && num(d, "t_s") > detected)
        .collect();
    assert!(
        late.is_empty(),
        "sent to the dead b2 after {detected} s: {late:?}"
    );

    let outages = read_rows(&dir.join("outages.csv"));
    let publishers = read_rows(&dir.join("publishers.csv"));
    assert_eq!(publishers.len(), 6, "{publishers:?}");
    let bound = 3.0 * INTERVAL_S + RECONNECT_MARGIN_S;
    for p in &publishers {
        let name = &p["publisher"];
        let mine: Vec<&Row> = outages.iter().filter(|o| &o["publisher"] == name).collect();
        if on_b2.contains(name) {
            assert_eq!(mine.len(), 1, "{name}: {mine:?}");
            let o = mine[0];
            assert_eq!(o["broker"], "b2", "{o:?}");
            assert!(num(o, "down_s") >= t_kill - 0.5, "{o:?}");
            assert_eq!(o["to_broker"], "b1", "{name} reconnected elsewhere: {o:?}");
            let downtime = num(o, "downtime_s");
            assert!(
                downtime <= bound,
                "{name} was down {downtime} s, bound {bound} s"
            );
            assert_eq!(
                p["broker"], "b2",
                "publishers.csv names the broker it joined: {p:?}"
            );
            assert!((num(p, "downtime_s") - downtime).abs() < 1e-6, "{p:?}");
            // Only the outage's share of the schedule is missing.
            let target = RATE * DURATION_S;
            let missing = target - num(p, "sent_total");
            assert!(
                missing <= RATE * (downtime + 0.5) && missing >= RATE * downtime * 0.5,
                "{name}: {missing} of {target} missing for {downtime} s down"
            );
        } else {
            assert!(
                mine.is_empty(),
                "{name} was not on b2 but lost its broker: {mine:?}"
            );
            assert_eq!(num(p, "downtime_s"), 0.0, "{p:?}");
        }
    }

    // After the move b1 carries every publisher's messages.
    let brokers = read_rows(&dir.join("brokers.csv"));
    assert_dead_broker_silent(&brokers, "lc", t_kill);
    // Every whole second after the move in which no publisher starts or stops: b1 has them all.
    let spans: Vec<(f64, f64)> = publishers
        .iter()
        .map(|p| (num(p, "join_s"), num(p, "join_s") + DURATION_S))
        .collect();
    let mut checked = 0;
    for r in brokers.iter().filter(|r| r["broker"] == "b1") {
        let t = num(r, "t_s");
        if t < t_kill + bound + 1.0
            || spans
                .iter()
                .any(|&(a, b)| (a > t && a < t + 1.0) || (b > t && b < t + 1.0))
        {
            continue;
        }
        let active = spans
            .iter()
            .filter(|&&(a, b)| a <= t && b >= t + 1.0)
            .count() as f64;
        assert_eq!(num(r, "publishers"), active, "{r:?}");
        let sent = num(r, "sent_msgs_per_s");
        assert!(
            (sent - active * RATE).abs() <= active * RATE * 0.05 + 1.0,
            "{r:?}"
        );
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} steady seconds after the kill");

    let md = std::fs::read_to_string(dir.join("summary.md")).expect("summary.md");
    let line = format!(
        "| 1 | lc | kill b2 at {t_kill:.1} s | {n} | {n} | 0 |",
        n = on_b2.len()
    );
    assert!(
        md.contains("## Faults") && md.contains(&line),
        "{line} not in\n{md}"
    );
    // The plots are drawn (the fault line itself is checked by eye: see the report).
    let png = std::fs::read(dir.join("rate-lc-t1.png")).expect("rate plot");
    assert!(png.starts_with(b"\x89PNG"));
    assert_no_orphans(&w);
}

#[test]
fn dns_rr_publishers_of_the_dead_broker_stay_down() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let scenario = write_scenario(tmp.path(), 4, "1s");
    let w = run_watched(
        &scenario,
        tmp.path(),
        &["--method", "dns-rr"],
        Duration::from_secs(40),
        |_| false,
    );
    assert!(w.status.success(), "run failed: {}\n{}", w.status, w.stderr);
    let dir = &w.dir;
    let t_kill = kill_time(dir, "dns-rr");

    let mut publishers = read_rows(&dir.join("publishers.csv"));
    assert_eq!(publishers.len(), 4);
    publishers.sort_by(|a, b| num(a, "join_s").total_cmp(&num(b, "join_s")));
    let outages = read_rows(&dir.join("outages.csv"));
    for (i, p) in publishers.iter().enumerate() {
        let name = &p["publisher"];
        let mine: Vec<&Row> = outages.iter().filter(|o| &o["publisher"] == name).collect();
        if i % 2 == 0 {
            assert_eq!(p["broker"], "b1", "{p:?}");
            assert!(mine.is_empty(), "{mine:?}");
            continue;
        }
        // Arrival 1 and 3 → b2: cut off at the kill, retrying the dead address to the end.
        assert_eq!(p["broker"], "b2", "{p:?}");
        assert_eq!(mine.len(), 1, "{name}: {mine:?}");
        let o = mine[0];
        assert_eq!(
            (o["up_s"].as_str(), o["to_broker"].as_str()),
            ("", ""),
            "{o:?}"
        );
        let rest_of_run = num(p, "join_s") + DURATION_S - num(o, "down_s");
        let downtime = num(o, "downtime_s");
        assert!(
            (downtime - rest_of_run).abs() <= 1.0 && downtime >= DURATION_S + 1.0 - t_kill - 1.0,
            "{name}: down {downtime} s, the rest of its run was {rest_of_run} s"
        );
        assert!((num(p, "downtime_s") - downtime).abs() < 1e-6, "{p:?}");
        let sent_after = num(p, "sent_total") - RATE * (num(o, "down_s") - num(p, "join_s"));
        assert!(
            sent_after.abs() <= RATE,
            "{name} sent {sent_after} after its broker died"
        );
        assert!((num(o, "not_sent") - RATE * downtime).abs() <= 1.0, "{o:?}");
    }
    let brokers = read_rows(&dir.join("brokers.csv"));
    assert_dead_broker_silent(&brokers, "dns-rr", t_kill);

    let md = std::fs::read_to_string(dir.join("summary.md")).expect("summary.md");
    let line = format!("| 1 | dns-rr | kill b2 at {t_kill:.1} s | 2 | 0 | 2 |");
    assert!(md.contains(&line), "{line} not in\n{md}");
    assert_no_orphans(&w);
}

/// A scenario to interrupt, written to `dir/NAME.yaml`: two embedded brokers (capped, when
/// cgroups are writable here, so cgroups are checked too), two publishers that would run 30 s,
/// `faults` (YAML list entries, may be empty). Returns the file and whether brokers are capped.
fn interruptible_scenario(dir: &Path, name: &str, faults: &str) -> (PathBuf, bool) {
    let capped = cgroups_writable();
    let scenario = dir.join(format!("{name}.yaml"));
    let faults = if faults.is_empty() {
        String::new()
    } else {
        format!("faults:\n{faults}")
    };
    std::fs::write(
        &scenario,
        format!(
            "name: {name}\nseed: 1\ntrials: 1\n\
             brokers: {{ kind: embedded, count: 2{} }}\n\
             sampler: {{ interval: 200ms, window: 1s }}\n\
             publishers:\n  - {{ name: p, count: 2, rate: 200, payload_bytes: 100, duration: 30s }}\n\
             arrival: {{ order: random, interval: 500ms }}\n{faults}\
             methods:\n  - {{ name: rr, assign: dispatcher, policy: least-connections }}\n",
            if capped { ", cpu_limit: 0.5" } else { "" }
        ),
    )
    .expect("write scenario");
    (scenario, capped)
}

/// The manifest of an interrupted run: kept, `completed: false`, reason `interrupted`.
fn assert_interrupted_manifest(w: &Watched) {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.dir.join("manifest.json")).expect("manifest"))
            .expect("manifest json");
    assert_eq!(manifest["completed"], false, "{manifest}");
    assert_eq!(manifest["incomplete_reason"], "interrupted", "{manifest}");
}

#[test]
fn interrupted_run_keeps_its_data_and_leaves_no_process_or_cgroup() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (scenario, capped) = interruptible_scenario(
        tmp.path(),
        "interrupt",
        "  - { at: 1s, kind: kill, broker: 1, restore_after: 1s }\n",
    );
    // Interrupt once the killed broker is back (faults.csv has its restart) and seconds are on
    // disk: every kind of child (first brokers, the restarted one) has existed by then.
    let w = run_watched(&scenario, tmp.path(), &[], Duration::from_secs(30), |dir| {
        let restarted =
            std::fs::read_to_string(dir.join("faults.csv")).is_ok_and(|t| t.contains("restart"));
        let rows =
            std::fs::read_to_string(dir.join("brokers.csv")).map_or(0, |t| t.lines().count());
        restarted && rows > 6
    });
    assert!(!w.status.success(), "an interrupted run must exit non-zero");
    assert_interrupted_manifest(&w);
    assert!(!read_rows(&w.dir.join("brokers.csv")).is_empty());
    // Two first brokers and the restarted one.
    assert!(w.children.len() >= 3, "children seen: {:?}", w.children);
    if capped {
        assert!(w.cgroups_seen >= 2, "capped brokers but no cgroup seen");
    }
    assert_no_orphans(&w);
}
