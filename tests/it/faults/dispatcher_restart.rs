//! A `restart-dispatcher` fault from a scenario file, end to end through `mqdispatch run`.

use std::time::Duration;

use super::{assert_no_orphans, num, read_rows, run_watched};

/// `kind: restart-dispatcher` in a scenario: the dispatcher goes down at 2.5 s and a fresh one
/// comes up on the same ports 1.5 s later. Publishers already on their brokers never notice;
/// the one arriving while it is down retries and joins once it is back; all deliver in full.
#[test]
fn restarting_the_dispatcher_mid_run_loses_no_publisher() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scenario = dir.path().join("restart.yaml");
    std::fs::write(
        &scenario,
        "name: restart\n\
         seed: 3\n\
         trials: 1\n\
         brokers: { kind: embedded, count: 2 }\n\
         sampler: { interval: 200ms, window: 1s }\n\
         publishers:\n  \
           - { name: p, count: 4, rate: 500, payload_bytes: 100, duration: 6s, qos: 0 }\n\
         arrival: { order: random, interval: 1s }\n\
         faults:\n  \
           - { at: 2500ms, kind: restart-dispatcher, restore_after: 1500ms }\n\
         methods:\n  \
           - { name: lc, assign: dispatcher, policy: least-connections }\n",
    )
    .expect("write scenario");
    let out = dir.path().join("out");
    std::fs::create_dir(&out).expect("out dir");
    let w = run_watched(&scenario, &out, &[], Duration::from_secs(60), |_| false);
    assert!(w.status.success(), "run failed: {}", w.stderr);
    assert_no_orphans(&w);

    let faults = read_rows(&w.dir.join("faults.csv"));
    let at = |kind: &str| {
        faults
            .iter()
            .find(|f| f["kind"] == kind && f["target"] == "dispatcher")
            .map(|f| num(f, "t_s"))
            .unwrap_or_else(|| panic!("no {kind} row in {faults:?}"))
    };
    let (down, up) = (at("dispatcher-down"), at("dispatcher-up"));
    assert!(up - down >= 1.4, "down {down}, up {up}");

    let publishers = read_rows(&w.dir.join("publishers.csv"));
    assert_eq!(publishers.len(), 4, "{publishers:?}");
    for p in &publishers {
        let target = 500.0 * 6.0;
        let sent = num(p, "sent_total");
        assert!((sent - target).abs() <= target * 0.01, "{p:?}");
        assert_eq!(
            num(p, "downtime_s"),
            0.0,
            "a connected publisher was cut off: {p:?}"
        );
        let join = num(p, "join_s");
        assert!(
            !(down + 0.1..up - 0.1).contains(&join),
            "joined at {join} while the dispatcher was down ({down}..{up}): {p:?}"
        );
    }
    // Arrivals at about 0, 1, 2, 3 s: the 4th came while the dispatcher was down and waited.
    let last_join = publishers
        .iter()
        .map(|p| num(p, "join_s"))
        .fold(0.0, f64::max);
    assert!(
        last_join >= up - 0.1,
        "last join {last_join}, dispatcher back at {up}"
    );
    let decisions = read_rows(&w.dir.join("decisions.csv"));
    assert_eq!(decisions.len(), 4, "{decisions:?}");
}
