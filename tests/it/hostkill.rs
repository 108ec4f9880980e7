//! What a killed or cut-off run leaves behind: nothing. `mqdispatch run` SIGKILLed mid-run (it
//! cannot clean up after itself) leaves no process it started, here or on any host; a host
//! whose connection drops mid-run ends the run with an error, the rows measured until then
//! kept, and nothing left.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::process::Child;

use crate::hosts::{bed_in, leftovers, read, run_dir, start_run, start_run_of};
use crate::testbed::{down_off_runtime, pids_in_namespace_mentioning, until};

/// A process by pid and start time (so a reused pid is not mistaken for it).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Proc {
    pid: u32,
    start: u64,
    cmdline: String,
}

/// `/proc/PID/stat` after the command name: (state, ppid, start time).
fn stat_of(pid: u32) -> Option<(char, u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    Some((
        state,
        fields.get(1)?.parse().ok()?,
        fields.get(19)?.parse().ok()?,
    ))
}

/// Every live process descended from `root` (children, their children, ...).
fn descendants(root: u32) -> Vec<Proc> {
    let all: Vec<(u32, u32, u64)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| stat_of(pid).map(|(_, ppid, start)| (pid, ppid, start)))
        .collect();
    let mut found = Vec::new();
    let mut parents = vec![root];
    while let Some(parent) = parents.pop() {
        for &(pid, ppid, start) in &all {
            if ppid == parent {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                found.push(Proc {
                    pid,
                    start,
                    cmdline,
                });
                parents.push(pid);
            }
        }
    }
    found
}

/// Those of `procs` still running (a zombie counts as gone: this machine's pid 1 may not reap
/// orphans).
fn still_running(procs: &[Proc]) -> Vec<Proc> {
    procs
        .iter()
        .filter(|p| matches!(stat_of(p.pid), Some((state, _, start)) if start == p.start && state != 'Z'))
        .cloned()
        .collect()
}

/// Waits (bounded, 10 s) until none of `procs` runs; fails naming those that still do.
async fn all_gone(what: &str, procs: &[Proc]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !still_running(procs).is_empty() {
        assert!(
            Instant::now() < deadline,
            "{what}: still running after 10 s: {:#?}",
            still_running(procs)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until `run`'s process tree holds at least one process whose command line
/// contains each of `needles`, then returns that tree.
async fn tree_with(run: &mut Child, cwd: &Path, needles: &[&str]) -> Vec<Proc> {
    let began = Instant::now();
    loop {
        assert!(
            run.try_wait().unwrap().is_none(),
            "the run ended early: {}",
            read(&cwd.join("run.log"))
        );
        let tree = descendants(run.id().unwrap());
        if needles
            .iter()
            .all(|n| tree.iter().any(|p| p.cmdline.contains(n)))
        {
            return tree;
        }
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "no {needles:?} under the runner within 60 s: {tree:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGKILL to the runner; it is reaped.
async fn sigkill(run: &mut Child) {
    let pid = run.id().unwrap() as libc::pid_t;
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    run.wait().await.unwrap();
}

#[tokio::test]
async fn sigkill_to_a_hosts_run_leaves_nothing_here_or_on_any_host() {
    let test = "sigkill_to_a_hosts_run_leaves_nothing_here_or_on_any_host";
    let tmp = tempfile::tempdir().unwrap();
    let Some((bed, opts, netns_of)) = bed_in(test, b'p', 3, tmp.path()).await else {
        return;
    };
    let h3 = netns_of[2].1.clone();
    let mut run = start_run(tmp.path());
    // Mid-run: ssh masters and role sessions here, brokers and the loader on the hosts.
    let tree = tree_with(&mut run, tmp.path(), &["ControlMaster=yes", " lifeline "]).await;
    until("the loader runs on h3", || {
        !pids_in_namespace_mentioning(&h3, "mqdispatch load ").is_empty()
    })
    .await;
    let mut tree = [tree, descendants(run.id().unwrap())].concat();
    tree.sort_by_key(|p| (p.pid, p.start));
    tree.dedup();
    sigkill(&mut run).await;
    all_gone("what the run started here", &tree).await;
    until("nothing left in any host's namespace", || {
        leftovers(&netns_of).is_empty()
    })
    .await;
    down_off_runtime(bed, &opts).await;
}

/// A local run (brokers as child processes here) SIGKILLed mid-run leaves none of them, for
/// each broker kind this machine has.
#[tokio::test]
async fn sigkill_to_a_local_run_leaves_no_broker() {
    let mut kinds = vec![("embedded", "mqdispatch broker")];
    match which("mosquitto") {
        true => kinds.push(("mosquitto", "mosquitto")),
        false => eprintln!("mosquitto not installed: only the embedded broker is checked"),
    }
    for (kind, needle) in kinds {
        let tmp = tempfile::tempdir().unwrap();
        let scenario = tmp.path().join("killed.yaml");
        std::fs::write(
            &scenario,
            format!(
                "name: killed\nseed: 1\ntrials: 1\n\
                 brokers: {{ kind: {kind}, count: 2 }}\n\
                 sampler: {{ interval: 1s, window: 5s }}\n\
                 publishers:\n  - {{ name: light, count: 2, rate: 100, payload_bytes: 100, duration: 60s, qos: 0 }}\n\
                 arrival: {{ order: random, interval: 1s }}\n\
                 methods:\n  - {{ name: proposed, assign: dispatcher, policy: least-cpu }}\n"
            ),
        )
        .unwrap();
        let mut run = start_run_of(tmp.path(), &scenario, &[]);
        let tree = tree_with(&mut run, tmp.path(), &[needle]).await;
        let brokers = tree.iter().filter(|p| p.cmdline.contains(needle)).count();
        sigkill(&mut run).await;
        all_gone(&format!("{kind} ({brokers} brokers seen)"), &tree).await;
    }
}

fn which(program: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn a_dropped_connection_ends_the_run_with_an_error_and_leaves_nothing() {
    let test = "a_dropped_connection_ends_the_run_with_an_error_and_leaves_nothing";
    let tmp = tempfile::tempdir().unwrap();
    let Some((bed, opts, netns_of)) = bed_in(test, b'q', 3, tmp.path()).await else {
        return;
    };
    let h3 = netns_of[2].1.clone();
    let mut run = start_run(tmp.path());
    tree_with(&mut run, tmp.path(), &["ControlMaster=yes"]).await;
    until("the loader runs on h3", || {
        !pids_in_namespace_mentioning(&h3, "mqdispatch load ").is_empty()
    })
    .await;
    // A few seconds of measurements, then h3's connection goes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tree = descendants(run.id().unwrap());
    let master = tree
        .iter()
        .find(|p| p.cmdline.contains("ControlMaster=yes") && p.cmdline.contains("/h3.ctl"))
        .unwrap_or_else(|| panic!("no ssh master of h3 under the runner: {tree:?}"));
    // SAFETY: kill(2) on a process of our run.
    assert_eq!(
        unsafe { libc::kill(master.pid as libc::pid_t, libc::SIGKILL) },
        0
    );
    let status = tokio::time::timeout(Duration::from_secs(60), run.wait())
        .await
        .expect("the run ends within 60 s of losing a host")
        .unwrap();
    let log = read(&tmp.path().join("run.log"));
    assert!(!status.success(), "a run that lost a host must fail\n{log}");
    assert!(
        log.contains("lost the connection to host h3"),
        "the error names the host\n{log}"
    );
    let dir = run_dir(tmp.path());
    let manifest: serde_json::Value =
        serde_json::from_str(&read(&dir.join("manifest.json"))).unwrap();
    assert_eq!(manifest["completed"], false, "{manifest}");
    let reason = manifest["incomplete_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("lost the connection to host h3"),
        "{manifest}"
    );
    // What was measured before the drop is kept.
    let brokers = read(&dir.join("brokers.csv"));
    assert!(brokers.lines().count() > 1, "no rows kept\n{brokers}");
    all_gone("what the run started here", &tree).await;
    until("nothing left in any host's namespace", || {
        leftovers(&netns_of).is_empty()
    })
    .await;
    down_off_runtime(bed, &opts).await;
}
