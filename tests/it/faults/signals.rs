//! `mqdispatch run` stopped by SIGTERM (`kill`, a service manager) or SIGHUP (the
//! SSH session went away) ends as Ctrl-C does: it stops its brokers (and removes their cgroups),
//! keeps what it measured, says `completed: false` and exits non-zero by itself, rather than
//! dying of the signal and leaving its broker process groups running.

use std::path::Path;
use std::time::Duration;

use super::{
    Watched, assert_interrupted_manifest, assert_no_orphans, cgroups_of, interruptible_scenario,
    run_signalled, stat_of,
};

/// The signal comes once both brokers are up and sampled.
fn stopped_by(signal: i32, name: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (scenario, capped) = interruptible_scenario(tmp.path(), "signal", "");
    // brokers.csv has a row per broker and second once the brokers are up and sampled.
    let sampled = |dir: &Path| {
        std::fs::read_to_string(dir.join("brokers.csv")).map_or(0, |t| t.lines().count()) > 4
    };
    let w = run_signalled(
        &scenario,
        tmp.path(),
        &[],
        Duration::from_secs(30),
        signal,
        sampled,
    );
    let leftovers = kill_leftovers(&w);
    assert!(
        leftovers.is_empty(),
        "left behind after {name} (run {}): {leftovers:?}",
        w.status
    );

    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        w.status.signal(),
        None,
        "the run died of {name} instead of stopping itself; stderr:\n{}",
        w.stderr
    );
    assert_eq!(w.status.code(), Some(1), "stderr:\n{}", w.stderr);
    assert!(
        w.stderr.contains(&format!("interrupted ({name})")),
        "stderr:\n{}",
        w.stderr
    );
    assert_interrupted_manifest(&w);
    assert!(w.children.len() >= 2, "children seen: {:?}", w.children);
    if capped {
        assert!(w.cgroups_seen >= 2, "capped brokers but no cgroup seen");
    }
    assert_no_orphans(&w);
}

/// What the run left behind (its children's process groups, its cgroups), killed and removed
/// here so that a failing test does not leave brokers running on the machine.
fn kill_leftovers(w: &Watched) -> Vec<String> {
    let mut left = Vec::new();
    for p in &w.children {
        if stat_of(p.pid).is_some_and(|(_, _, start)| start == p.start) {
            left.push(format!("process {}", p.pid));
            // SAFETY: kill(2) on the process group our child's child leads (brokers lead theirs);
            // the start time check above makes sure the pid is still that process.
            unsafe { libc::kill(-(p.pid as i32), libc::SIGKILL) };
        }
    }
    for group in cgroups_of(w.pid) {
        left.push(format!("cgroup {}", group.display()));
        for _ in 0..50 {
            if std::fs::remove_dir(&group).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    left
}

#[test]
fn sigterm_stops_the_run_and_its_brokers() {
    stopped_by(libc::SIGTERM, "SIGTERM");
}

#[test]
fn sighup_stops_the_run_and_its_brokers() {
    stopped_by(libc::SIGHUP, "SIGHUP");
}
