//! The method's dispatcher on a host of its own (`dispatcher_host`): the proposed method of
//! `scenarios/hosts-quick.yaml` with its dispatcher on h4 of a four-host test bed (brokers on
//! h1 and h2, the publishers on h3). Skips like the other bed tests where namespaces are not
//! permitted.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::hosts::{
    bed_in, host_roles, leftovers, read, roles_in, run_dir, scenario, start_run_of,
    succeeds_watched,
};
use crate::testbed::down_off_runtime;

#[tokio::test]
async fn a_dispatcher_on_its_own_host_places_every_publisher_and_leaves_nothing() {
    let test = "a_dispatcher_on_its_own_host_places_every_publisher_and_leaves_nothing";
    let tmp = tempfile::tempdir().unwrap();
    let Some((bed, opts, netns_of)) = bed_in(test, b'i', 4, tmp.path()).await else {
        return;
    };
    let file = tmp.path().join("dispatcher-host.yaml");
    std::fs::write(&file, read(&scenario()) + "dispatcher_host: h4\n").unwrap();

    let mut run = start_run_of(tmp.path(), &file, &["--method", "proposed"]);
    let mut seen = BTreeSet::new();
    let log = succeeds_watched(&mut run, tmp.path(), Duration::from_secs(90), || {
        roles_in(&netns_of, "mqdispatch", &mut seen)
    })
    .await;
    let expected = host_roles(&[
        ("h1", "broker"),
        ("h1", "agent"),
        ("h2", "broker"),
        ("h2", "agent"),
        ("h3", "load"),
        ("h4", "dispatcher"),
    ]);
    assert_eq!(seen, expected, "roles seen in the namespaces\n{log}");

    // Every publisher was placed by the dispatcher on h4, when it joined (on this clock).
    let dir = run_dir(tmp.path());
    let publishers = read(&dir.join("publishers.csv"));
    let joins: HashMap<String, f64> = publishers
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect::<Vec<_>>())
        .map(|f| (format!("t1-proposed-{}", f[2]), f[4].parse().unwrap()))
        .collect();
    assert_eq!(joins.len(), 5, "{publishers}");
    let decisions = read(&dir.join("decisions.csv"));
    assert!(
        decisions.starts_with("trial,method,t_s,client_id,broker,"),
        "{decisions}"
    );
    let rows: Vec<Vec<&str>> = decisions
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 5, "{decisions}");
    for row in &rows {
        assert_eq!(row[..2], ["1", "proposed"], "{decisions}");
        assert!(["b1", "b2"].contains(&row[4]), "{decisions}");
        let t_s: f64 = row[2].parse().unwrap();
        let join_s = joins[row[3]];
        assert!(
            (t_s - join_s).abs() < 1.0,
            "{}: placed at {t_s} s, joined at {join_s} s\n{decisions}\n{publishers}",
            row[3]
        );
    }

    // The manifest lists the dispatcher on h4, its log came back, its CPU time was reported.
    let manifest: serde_json::Value =
        serde_json::from_str(&read(&dir.join("manifest.json"))).unwrap();
    assert_eq!(manifest["completed"], true, "{manifest}");
    let hosts = manifest["hosts"]["hosts"].as_array().unwrap();
    let h4 = hosts.iter().find(|h| h["name"] == "h4").expect("h4");
    assert_eq!(h4["roles"], serde_json::json!(["dispatcher"]), "{h4}");
    let dispatcher_log = dir.join("hosts/h4/t1-proposed-dispatcher.log");
    assert!(
        dispatcher_log.is_file(),
        "{} missing",
        dispatcher_log.display()
    );
    let harness = &manifest["trials_detail"][0]["methods"][0]["harness"];
    let cpu = harness["dispatcher_cpu_pct"].as_f64();
    assert!(cpu.is_some_and(|c| c > 0.0), "{harness}");

    assert!(
        leftovers(&netns_of).is_empty(),
        "{:?}",
        leftovers(&netns_of)
    );
    drop(run);
    down_off_runtime(bed, &opts).await;
}
