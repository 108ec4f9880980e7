//! A scenario's roles on hosts: `mqdispatch run scenarios/hosts-quick.yaml` on a three-host
//! test bed (brokers on h1 and h2, the publishers on h3, the dispatcher here), as shipped: the
//! scenario includes `results/testbed/hosts.yaml` relative to the working directory, which is
//! where the bed is made. Where namespaces are not permitted the tests skip with a message,
//! except under `CI`, which must run them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use mqdispatch::testbed::{self, Options, net};
use tokio::process::{Child, Command};

use crate::testbed::{
    down_off_runtime, options, pids_in_namespace_mentioning, until, up_off_runtime,
};
use crate::util::bin;

pub(crate) fn scenario() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/hosts-quick.yaml")
}

/// `mqdispatch run` from `cwd` (where `results/testbed` is the bed), its output in files.
pub(crate) fn start_run(cwd: &Path) -> Child {
    start_run_of(cwd, &scenario(), &[])
}

/// [`start_run`] of `scenario` with `extra` arguments.
pub(crate) fn start_run_of(cwd: &Path, scenario: &Path, extra: &[&str]) -> Child {
    let log = std::fs::File::create(cwd.join("run.log")).unwrap();
    Command::new(bin())
        .arg("run")
        .arg(scenario)
        .args(["--out", "out"])
        .args(extra)
        .current_dir(cwd)
        // Builds and run folders on the hosts (this machine's file system) stay in the test's.
        .env("MQDISPATCH_HOST_CACHE", cwd.join("host-cache"))
        .env("MQDISPATCH_BIN", bin())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("mqdispatch run starts")
}

/// Roles seen in each host's namespace: (host, role) for every `mqdispatch broker`, `agent`,
/// `load` and `dispatcher` found there, and (host, `--token`) for a command line that shows a
/// token (roles read it from a file).
pub(crate) fn roles_in(
    netns_of: &[(String, String)],
    binary: &str,
    seen: &mut BTreeSet<(String, String)>,
) {
    for (host, netns) in netns_of {
        for role in ["broker", "agent", "load", "dispatcher"] {
            let needle = format!("{binary} {role} ");
            if !pids_in_namespace_mentioning(netns, &needle).is_empty() {
                seen.insert((host.clone(), role.to_owned()));
            }
        }
        if !pids_in_namespace_mentioning(netns, " --token ").is_empty() {
            seen.insert((host.clone(), "--token".to_owned()));
        }
    }
}

/// Waits for `run` (started in `cwd`) to end, at most `limit`, calling `look` every 100 ms
/// meanwhile; asserts it succeeded and returns its log.
pub(crate) async fn succeeds_watched(
    run: &mut Child,
    cwd: &Path,
    limit: Duration,
    mut look: impl FnMut(),
) -> String {
    let began = Instant::now();
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        assert!(
            began.elapsed() < limit,
            "the run took over {limit:?}: {}",
            read(&cwd.join("run.log"))
        );
        look();
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = read(&cwd.join("run.log"));
    assert!(status.success(), "{status}: {log}");
    log
}

/// `(host, role)` pairs as [`roles_in`] collects them.
pub(crate) fn host_roles(pairs: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    pairs
        .iter()
        .map(|(h, r)| (h.to_string(), r.to_string()))
        .collect()
}

/// Nothing but each host's sshd left in its namespace.
pub(crate) fn leftovers(netns_of: &[(String, String)]) -> Vec<String> {
    let mut left = Vec::new();
    for (_, netns) in netns_of {
        for pid in net::netns_pids(netns).unwrap() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if net::is_running(pid) && !cmdline.starts_with("sshd") && !cmdline.contains("/sshd ") {
                left.push(format!("{netns} {pid} {cmdline}"));
            }
        }
    }
    left
}

pub(crate) fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The one run folder under `out/hosts-quick/`.
pub(crate) fn run_dir(cwd: &Path) -> PathBuf {
    cwd.join("out/hosts-quick/latest")
        .canonicalize()
        .expect("a results folder")
}

/// A bed of `hosts` hosts made where the shipped scenario's include finds it
/// (`results/testbed` of `tmp`), and each host's (name, namespace); `None` (after a message)
/// where a bed cannot be made here.
pub(crate) async fn bed_in(
    test: &str,
    tag: u8,
    hosts: u16,
    tmp: &Path,
) -> Option<(testbed::DownOnDrop, Options, Vec<(String, String)>)> {
    let mut opts = options(tag, hosts, tmp);
    opts.dir = tmp.join("results/testbed");
    let bed = up_off_runtime(test, &opts).await?;
    let netns_of = bed
        .hosts()
        .iter()
        .map(|h| (h.name.clone(), h.netns.clone()))
        .collect();
    Some((bed, opts, netns_of))
}

#[tokio::test]
async fn a_scenario_runs_its_roles_on_their_hosts_and_leaves_nothing() {
    let test = "a_scenario_runs_its_roles_on_their_hosts_and_leaves_nothing";
    let tmp = tempfile::tempdir().unwrap();
    let Some((bed, opts, netns_of)) = bed_in(test, b'g', 3, tmp.path()).await else {
        return;
    };

    let mut run = start_run(tmp.path());
    // Which roles run where, while the run goes on.
    let mut seen = BTreeSet::new();
    let log = succeeds_watched(&mut run, tmp.path(), Duration::from_secs(150), || {
        roles_in(&netns_of, "mqdispatch", &mut seen)
    })
    .await;
    let expected = host_roles(&[
        ("h1", "broker"),
        ("h1", "agent"),
        ("h2", "broker"),
        ("h2", "agent"),
        ("h3", "load"),
    ]);
    assert_eq!(seen, expected, "roles seen in the namespaces\n{log}");

    // The files of a local run, in the same form.
    let dir = run_dir(tmp.path());
    let brokers = read(&dir.join("brokers.csv"));
    assert!(brokers.starts_with(
        "trial,method,t_s,broker,cpu_pct,sent_msgs_per_s,received_msgs_per_s,publishers\n"
    ));
    for method in ["dns-rr", "proposed"] {
        for b in ["b1", "b2"] {
            let cpu_rows = brokers
                .lines()
                .filter(|l| l.starts_with(&format!("1,{method},")))
                .filter(|l| l.split(',').nth(3) == Some(b))
                .filter(|l| {
                    l.split(',')
                        .nth(4)
                        .is_some_and(|c| c.parse::<f64>().is_ok())
                })
                .count();
            assert!(
                cpu_rows >= 5,
                "{method} {b}: {cpu_rows} CPU rows\n{brokers}"
            );
        }
    }
    let publishers = read(&dir.join("publishers.csv"));
    assert!(publishers.starts_with("trial,method,publisher,profile,join_s,broker,"));
    for method in ["dns-rr", "proposed"] {
        let rows: Vec<&str> = publishers
            .lines()
            .filter(|l| l.starts_with(&format!("1,{method},")))
            .collect();
        assert_eq!(rows.len(), 5, "{method}\n{publishers}");
    }
    let summary = read(&dir.join("summary.csv"));
    assert!(summary.contains("\n1,dns-rr,") && summary.contains("\n1,proposed,"));
    // The subscribers here timed messages sent from h3: corrected by its clock, and said so.
    let receipts = read(&dir.join("receipts.csv"));
    assert!(receipts.lines().count() > 1, "{receipts}");
    let md = read(&dir.join("summary.md"));
    assert!(
        md.contains("Latency across hosts") && md.contains("h3 "),
        "{md}"
    );

    // The manifest names the hosts, their roles and clocks; every role's files came back.
    let manifest: serde_json::Value =
        serde_json::from_str(&read(&dir.join("manifest.json"))).unwrap();
    assert_eq!(manifest["completed"], true, "{manifest}");
    let hosts = manifest["hosts"]["hosts"]
        .as_array()
        .expect("hosts in the manifest");
    let names: Vec<&str> = hosts.iter().map(|h| h["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["h1", "h2", "h3"]);
    for h in hosts {
        for when in ["clock_start", "clock_end"] {
            assert!(h[when]["uncertainty_us"].as_i64().is_some(), "{h}");
        }
        assert!(h["testbed_rtt_min_us"].as_f64().is_some(), "{h}");
    }
    assert_eq!(manifest["hosts"]["link_delay_emulated"], false);
    for (host, file) in [
        ("h1", "t1-proposed-broker-b1.log"),
        ("h2", "t1-dns-rr-agent-b2.log"),
        ("h3", "t1-proposed-load-1of1/summary.json"),
        ("h3", "t1-dns-rr-load-1of1/seconds.csv"),
    ] {
        let path = dir.join("hosts").join(host).join(file);
        assert!(path.is_file(), "{} missing", path.display());
    }
    let delivery = &manifest["trials_detail"][0]["methods"][1]["delivery"];
    assert_eq!(delivery["sent"], delivery["received"], "{delivery}");
    // The loader shard's lateness came back with its summary.
    for m in manifest["trials_detail"][0]["methods"].as_array().unwrap() {
        let (p50, p99) = (&m["lateness_p50_ms"], &m["lateness_p99_ms"]);
        assert!(p50.as_f64().is_some() && p99.as_f64().is_some(), "{m}");
    }

    assert!(
        leftovers(&netns_of).is_empty(),
        "{:?}",
        leftovers(&netns_of)
    );
    drop(run);
    down_off_runtime(bed, &opts).await;
}

#[tokio::test]
async fn sigterm_to_the_runner_leaves_nothing_on_any_host() {
    let test = "sigterm_to_the_runner_leaves_nothing_on_any_host";
    let tmp = tempfile::tempdir().unwrap();
    let Some((bed, opts, netns_of)) = bed_in(test, b'h', 3, tmp.path()).await else {
        return;
    };
    let h3 = netns_of[2].1.clone();
    let mut run = start_run(tmp.path());
    // Mid-run: the publishers are running on h3.
    let began = Instant::now();
    while pids_in_namespace_mentioning(&h3, "mqdispatch load ").is_empty() {
        assert!(
            run.try_wait().unwrap().is_none(),
            "{}",
            read(&tmp.path().join("run.log"))
        );
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "no loader on h3 within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = run.id().unwrap() as libc::pid_t;
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(60), run.wait())
        .await
        .expect("the runner stops within 60 s of SIGTERM")
        .unwrap();
    let log = read(&tmp.path().join("run.log"));
    assert!(
        !status.success(),
        "an interrupted run must not succeed\n{log}"
    );
    assert!(log.contains("interrupted"), "{log}");
    until("nothing left in any host's namespace", || {
        leftovers(&netns_of).is_empty()
    })
    .await;
    let manifest: serde_json::Value =
        serde_json::from_str(&read(&run_dir(tmp.path()).join("manifest.json"))).unwrap();
    assert_eq!(manifest["completed"], false, "{manifest}");
    down_off_runtime(bed, &opts).await;
}

/// `kind: mosquitto` on hosts: each broker host runs Mosquitto (with the config a local one
/// gets, on the host's address), the agent beside it samples it, and the brokers' `$SYS`
/// counters, read over the network, count every message sent.
#[tokio::test]
async fn mosquitto_brokers_run_on_their_hosts() {
    let test = "mosquitto_brokers_run_on_their_hosts";
    if mqdispatch::broker::mosquitto::find_binary().is_none() {
        eprintln!("SKIPPED {test}: mosquitto is not installed (apt-get install -y mosquitto)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some((bed, opts, netns_of)) = bed_in(test, b'r', 3, tmp.path()).await else {
        return;
    };
    let shipped = read(&scenario());
    let text = shipped.replace("kind: embedded", "kind: mosquitto");
    assert_ne!(text, shipped);
    let path = tmp.path().join("hosts-quick.yaml");
    std::fs::write(&path, text).unwrap();
    let mut run = start_run_of(tmp.path(), &path, &[]);
    let mut seen = BTreeSet::new();
    let log = succeeds_watched(&mut run, tmp.path(), Duration::from_secs(150), || {
        for (host, netns) in &netns_of {
            for (role, needle) in [
                ("mosquitto", "mosquitto -c "),
                ("agent", "mqdispatch agent "),
            ] {
                if !pids_in_namespace_mentioning(netns, needle).is_empty() {
                    seen.insert((host.clone(), role.to_owned()));
                }
            }
        }
    })
    .await;
    let expected = host_roles(&[
        ("h1", "agent"),
        ("h1", "mosquitto"),
        ("h2", "agent"),
        ("h2", "mosquitto"),
    ]);
    assert_eq!(seen, expected, "roles seen in the namespaces\n{log}");

    let dir = run_dir(tmp.path());
    let manifest: serde_json::Value =
        serde_json::from_str(&read(&dir.join("manifest.json"))).unwrap();
    assert_eq!(manifest["completed"], true, "{manifest}");
    let versions = manifest.to_string();
    assert!(
        versions.contains("mosquitto 2") && versions.contains(" on h1"),
        "{manifest}"
    );
    for method in manifest["trials_detail"][0]["methods"].as_array().unwrap() {
        let delivery = &method["delivery"];
        assert!(
            delivery["sent"].as_u64().is_some_and(|n| n > 0),
            "{delivery}"
        );
        assert_eq!(delivery["sent"], delivery["received"], "{delivery}");
    }
    let brokers = read(&dir.join("brokers.csv"));
    for b in ["b1", "b2"] {
        let cpu_rows = brokers
            .lines()
            .filter(|l| l.split(',').nth(3) == Some(b))
            .filter(|l| {
                l.split(',')
                    .nth(4)
                    .is_some_and(|c| c.parse::<f64>().is_ok())
            })
            .count();
        assert!(cpu_rows >= 10, "{b}: {cpu_rows} CPU rows\n{brokers}");
    }
    assert!(
        leftovers(&netns_of).is_empty(),
        "{:?}",
        leftovers(&netns_of)
    );
    drop(run);
    down_off_runtime(bed, &opts).await;
}
