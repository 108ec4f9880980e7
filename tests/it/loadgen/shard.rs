//! Loader shards end to end: two `mqdispatch load --shard K/2` processes and one unsharded
//! loader, all with the same seed and `--start-at`, against two embedded brokers (dns-rr);
//! `mqdispatch load-merge` of the shards' files against the unsharded loader's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mqdispatch::loadgen::merge::{LoadRecord, SecondRow, read_record, read_seconds};
use mqdispatch::loadgen::{ArrivalOrder, ArrivalSpec, Profile, plan_arrivals};

use super::fakes::Broker;
use crate::util::bin;

const PROFILES: [&str; 2] = [
    "name=p,count=4,rate=200,bytes=16,duration=2s",
    "name=q,count=3,rate=100,bytes=16,duration=2s",
];
const SEED: &str = "5";
const INTERVAL_MS: u64 = 250;
const JITTER_MS: u64 = 100;
/// How far apart the same publisher's first CONNACK may be in the two runs, and how late
/// against its planned join instant (a loopback connect on a busy 2-core host).
const JOIN_SLACK_S: f64 = 0.040;

/// A `mqdispatch load` child, killed and reaped on drop (a failing assertion leaves no orphan).
struct Loader {
    child: Child,
    stdout: PathBuf,
}

impl Drop for Loader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Loader {
    fn spawn(dir: &Path, tag: &str, brokers: &[String], extra: &[String]) -> Loader {
        let stdout = dir.join(format!("{tag}.stdout"));
        let mut cmd = Command::new(bin());
        cmd.arg("load");
        for b in brokers {
            cmd.args(["--broker", b]);
        }
        for p in PROFILES {
            cmd.args(["--profile", p]);
        }
        cmd.args(["--seed", SEED, "--order", "random"])
            .arg(format!("--arrival-interval={INTERVAL_MS}ms"))
            .arg(format!("--jitter={JITTER_MS}ms"))
            .arg("--out")
            .arg(dir.join(format!("{tag}.csv")))
            .arg("--summary-out")
            .arg(dir.join(format!("{tag}.json")))
            .args(extra)
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(Stdio::null());
        Loader {
            child: cmd.spawn().expect("spawn mqdispatch load"),
            stdout,
        }
    }

    /// Waits (bounded) for a successful exit.
    fn finish(mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
                assert!(status.success(), "{status}: {out}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "load did not finish within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn merge(out: &Path, inputs: &[PathBuf]) {
    let status = Command::new(bin())
        .arg("load-merge")
        .arg(out)
        .args(inputs)
        .status()
        .unwrap();
    assert!(status.success(), "load-merge {}", out.display());
}

fn sent_by_publisher(rows: &[SecondRow]) -> BTreeMap<String, u64> {
    let mut sums = BTreeMap::new();
    for r in rows {
        *sums.entry(r.publisher.clone()).or_default() += r.sent;
    }
    sums
}

/// Planned join offsets (s) by publisher name: the library's plan for the same flags.
fn planned_join_s() -> BTreeMap<String, f64> {
    let profiles: Vec<Profile> = PROFILES
        .iter()
        .map(|p| Profile::parse_spec(p).unwrap())
        .collect();
    let spec = ArrivalSpec {
        order: ArrivalOrder::Random,
        interval: Duration::from_millis(INTERVAL_MS),
        jitter: Duration::from_millis(JITTER_MS),
        burst: None,
    };
    plan_arrivals(&profiles, &spec, SEED.parse().unwrap())
        .unwrap()
        .into_iter()
        .map(|p| (p.name, p.join_at.as_secs_f64()))
        .collect()
}

#[test]
fn two_shards_merged_make_the_unsharded_load() {
    let brokers = [Broker::spawn(), Broker::spawn()];
    let addrs: Vec<String> = brokers.iter().map(Broker::addr).collect();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // All three loaders count from one instant, far enough ahead for them all to start.
    let start_at = mqdispatch::now_ms() + 1_500;
    let at = format!("--start-at={start_at}");
    let one = Loader::spawn(d, "one", &addrs, std::slice::from_ref(&at));
    let s1 = Loader::spawn(d, "s1", &addrs, &[at.clone(), "--shard=1/2".into()]);
    let s2 = Loader::spawn(d, "s2", &addrs, &[at, "--shard=2/2".into()]);
    // Last join ≈ 6 × 250 ms + 100 ms, then 2 s of sending, after the 1.5 s lead.
    for loader in [one, s1, s2] {
        loader.finish(Duration::from_secs(30));
    }
    merge(
        &d.join("merged.json"),
        &[d.join("s2.json"), d.join("s1.json")],
    );
    merge(&d.join("merged.csv"), &[d.join("s1.csv"), d.join("s2.csv")]);
    merge(&d.join("one-sorted.csv"), &[d.join("one.csv")]);

    let one: LoadRecord = read_record(&d.join("one.json")).unwrap();
    let merged = read_record(&d.join("merged.json")).unwrap();
    let shard1 = read_record(&d.join("s1.json")).unwrap();
    assert_eq!((shard1.shard_count, shard1.shards.clone()), (2, vec![1]));
    assert!(
        shard1.publishers.iter().all(|p| p.index % 2 == 0),
        "{shard1:?}"
    );
    assert_eq!((merged.shard_count, merged.shards.clone()), (2, vec![1, 2]));
    assert_eq!((one.start_ms, merged.start_ms), (start_at, start_at));

    // Same publishers in the same arrival order, on the same dns-rr broker, same totals.
    let names = |r: &LoadRecord| -> Vec<(usize, String, Option<String>)> {
        r.publishers
            .iter()
            .map(|p| (p.index, p.name.clone(), p.broker.clone()))
            .collect()
    };
    assert_eq!(names(&merged), names(&one));
    assert_eq!(merged.publishers.len(), 7);
    for p in &merged.publishers {
        assert_eq!(
            p.broker.as_deref(),
            Some(addrs[p.index % 2].as_str()),
            "{p:?}"
        );
    }
    assert_eq!(merged.target_total, one.target_total);
    assert_eq!(merged.target_total, 4 * 400 + 3 * 200);
    assert_eq!(merged.sent_total, one.sent_total);
    assert_eq!(merged.sent_total, merged.target_total);

    // Each publisher joined at its planned instant in both runs.
    let planned = planned_join_s();
    let mut worst: f64 = 0.0;
    for (m, o) in merged.publishers.iter().zip(&one.publishers) {
        let (mj, oj) = (m.join_s.unwrap(), o.join_s.unwrap());
        let plan = planned[&m.name];
        assert!(
            mj >= plan - 0.001 && mj <= plan + JOIN_SLACK_S,
            "{}: {mj} vs {plan}",
            m.name
        );
        assert!(
            oj >= plan - 0.001 && oj <= plan + JOIN_SLACK_S,
            "{}: {oj} vs {plan}",
            o.name
        );
        worst = worst.max((mj - oj).abs());
    }
    assert!(
        worst <= JOIN_SLACK_S,
        "join times differ by up to {worst} s"
    );
    eprintln!(
        "shards vs one loader: join times differ by at most {:.1} ms",
        worst * 1e3
    );

    // Per-second rows: same messages per publisher, in the canonical order either way.
    let merged_rows = read_seconds(&d.join("merged.csv")).unwrap();
    let one_rows = read_seconds(&d.join("one-sorted.csv")).unwrap();
    assert_eq!(
        sent_by_publisher(&merged_rows),
        sent_by_publisher(&one_rows)
    );
    assert_eq!(
        sent_by_publisher(&merged_rows).values().sum::<u64>(),
        merged.sent_total
    );
    let key = |r: &SecondRow| {
        let (profile, k) = r.publisher.rsplit_once('-').unwrap();
        (r.t_s, profile.to_owned(), k.parse::<u64>().unwrap())
    };
    for rows in [&merged_rows, &one_rows] {
        assert!(
            rows.windows(2).all(|w| key(&w[0]) <= key(&w[1])),
            "{rows:?}"
        );
    }
}

#[test]
fn shard_flags_that_cannot_work_are_refused_before_anything_runs() {
    let now = mqdispatch::now_ms();
    let ahead = format!("--start-at={}", now + 5_000);
    let cases: [(Vec<String>, &str); 6] = [
        (
            vec!["--shard=3/2".into(), "--seed=1".into(), ahead.clone()],
            "K must be 1 to 2",
        ),
        (vec!["--shard=1/0".into()], "at least 1"),
        (vec!["--shard=1/2".into(), ahead.clone()], "needs --seed"),
        (
            vec!["--shard=1/2".into(), "--seed=1".into()],
            "needs --start-at",
        ),
        (vec![format!("--start-at={}", now - 10_000)], "in the past"),
        (
            vec![
                "--shard=1/2".into(),
                "--seed=1".into(),
                ahead,
                "--subscriber=name=s,count=1,topic=load/#".into(),
            ],
            "runs no subscribers",
        ),
    ];
    for (flags, says) in cases {
        let out = Command::new(bin())
            .args(["load", "--broker", "127.0.0.1:9", "--profile", PROFILES[0]])
            .args(&flags)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(says), "{flags:?}: {stderr}");
    }
}
