//! The subscriber scenarios end to end: `subscribers-quick.yaml` (a shared group with a member
//! on each broker receives every message once, with latency rows per member, per broker and per
//! method) and `subscribers-quick-moves.yaml` (members placed and moved by the method).

use super::{read_csv, repo_file};
use crate::util::run_scenario;

#[test]
fn subscriber_scenario_end_to_end_delivers_everything_with_latency_rows() {
    let out = tempfile::tempdir().unwrap();
    run_scenario(
        &repo_file("scenarios/subscribers-quick.yaml"),
        out.path(),
        &[],
    );
    let dir = std::fs::read_dir(out.path().join("subscribers-quick"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| !p.is_symlink())
        .expect("a run folder");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["completed"], true, "{manifest}");

    // Every publisher's messages reach the group once: nothing lost, per method.
    let (header, receipts) = read_csv(&dir.join("receipts.csv"));
    assert_eq!(
        header,
        [
            "trial",
            "method",
            "subscriber",
            "unit",
            "publisher",
            "expected",
            "received",
            "lost",
            "duplicates",
            "out_of_order"
        ]
    );
    for method in ["dns-rr", "least-cpu"] {
        let rows: Vec<_> = receipts.iter().filter(|r| r[1] == method).collect();
        assert_eq!(rows.len(), 10, "{method}: one row per publisher");
        let n = |r: &Vec<String>, i: usize| r[i].parse::<u64>().unwrap();
        let expected: u64 = rows.iter().map(|r| n(r, 5)).sum();
        let received: u64 = rows.iter().map(|r| n(r, 6)).sum();
        assert_eq!(
            expected, 560_000,
            "{method}: 9 × 2000 × 20 s + 10000 × 20 s"
        );
        assert_eq!(received, expected, "{method}: every message delivered");
        assert!(rows.iter().all(|r| n(r, 7) == 0), "{method}: {rows:?}");
    }

    // Per member and second, and per broker and second: counts and latency quantiles.
    let (header, members) = read_csv(&dir.join("subscribers.csv"));
    assert_eq!(
        header,
        [
            "trial",
            "method",
            "t_s",
            "subscriber",
            "broker",
            "received",
            "latency_p50_ms",
            "latency_p99_ms",
            "latency_max_ms",
            "moves"
        ]
    );
    for (member, broker) in [("backend-0", "b1"), ("backend-1", "b2")] {
        let rows: Vec<_> = members.iter().filter(|r| r[3] == member).collect();
        assert!(
            rows.len() >= 40,
            "{member}: {} seconds over two methods",
            rows.len()
        );
        assert!(
            rows.iter().all(|r| r[4] == broker),
            "{member} stays on {broker}"
        );
    }
    let (_, seconds) = read_csv(&dir.join("latency.csv"));
    let busy: Vec<_> = seconds
        .iter()
        .filter(|r| r[4].parse::<u64>().unwrap() > 1000)
        .collect();
    assert!(busy.len() >= 40, "{} busy broker-seconds", busy.len());
    for r in &busy {
        let p50: f64 = r[5].parse().unwrap();
        let p99: f64 = r[6].parse().unwrap();
        let max: f64 = r[7].parse().unwrap();
        assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{r:?}");
    }

    // summary.csv carries delivery and latency per method; the plots exist.
    let (header, summary) = read_csv(&dir.join("summary.csv"));
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    for row in &summary {
        assert_eq!(row[col("lost_msgs")], "0", "{row:?}");
        assert_eq!(row[col("delivered_msgs")], row[col("expected_msgs")]);
        let p99: f64 = row[col("latency_p99_ms")].parse().unwrap();
        assert!(p99 > 0.0, "{row:?}");
        assert!(!row[col("latency_p99_ms_b2")].is_empty());
    }
    for png in [
        "latency-cdf.png",
        "latency-dns-rr-t1.png",
        "latency-least-cpu-t1.png",
    ] {
        assert!(dir.join(png).exists(), "{png}");
    }
    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(md.contains("## Subscribers"), "{md}");
    assert!(md.contains("| dns-rr | 1 | 560000 of 560000 | 0 |"), "{md}");
}

/// `scenarios/subscribers-quick-moves.yaml`, the scaled `subscribers.yaml`: four members of one
/// shared group with `placement: method`. Under dns-rr they sit on each broker; under a
/// dispatcher method every member is placed by the dispatcher (its decisions carry
/// `role,group`), its broker still labelled by id; the methods that move members bring them to
/// the best split; the per-member figures reach summary.csv, summary.md and a plot.
#[test]
fn members_placed_and_moved_by_the_method_reach_the_best_split() {
    let out = tempfile::tempdir().unwrap();
    let scenario = repo_file("scenarios/subscribers-quick-moves.yaml");
    run_scenario(&scenario, out.path(), &[]);
    let dir = std::fs::read_dir(out.path().join("subscribers-quick-moves"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir() && !p.is_symlink())
        .expect("a run folder");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["completed"], true, "{manifest}");

    // The dispatcher placed every member (and the publishers), each row saying which; a member
    // moved by takeover comes back through it and is placed again.
    let (header, decisions) = read_csv(&dir.join("decisions.csv"));
    assert_eq!(&header[header.len() - 2..], ["role", "group"]);
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let of = |method: &str, role: &str| -> Vec<&Vec<String>> {
        (decisions.iter())
            .filter(|r| r[col("method")] == method && r[col("role")] == role)
            .collect()
    };
    assert_eq!(of("dns-rr", "subscriber").len(), 0);
    assert_eq!(of("least-cpu", "subscriber").len(), 4, "{decisions:?}");
    for method in ["rr-members", "rebalance"] {
        assert!(
            of(method, "subscriber").len() > 4,
            "{method}: {decisions:?}"
        );
    }
    for method in ["least-cpu", "rr-members", "rebalance"] {
        assert_eq!(of(method, "publisher").len(), 3, "{method}");
        for r in of(method, "subscriber") {
            assert_eq!(r[col("group")], "$share/backend/load/#");
            assert!(r[col("client_id")].contains("sub-backend-"), "{r:?}");
            assert!(["b1", "b2"].contains(&r[col("broker")].as_str()), "{r:?}");
        }
    }
    let subs = of("least-cpu", "subscriber");

    // The rebalancer moved members (not publishers) in the methods that move them: towards the
    // heavy publisher's broker (b1 under round-robin; least-cpu's choice under rebalance).
    let (header, moves) = read_csv(&dir.join("moves.csv"));
    assert_eq!(header.last().map(String::as_str), Some("role"));
    for method in ["rr-members", "rebalance"] {
        let mine: Vec<_> = moves.iter().filter(|m| m[1] == method).collect();
        assert!(!mine.is_empty(), "{method}: {moves:?}");
        for m in mine {
            assert_eq!(m[8], "subscriber", "{m:?}");
            assert_ne!(m[4], m[5], "{m:?}");
            if method == "rr-members" {
                assert_eq!((m[4].as_str(), m[5].as_str()), ("b2", "b1"), "{m:?}");
            }
        }
    }

    // Broker labels are ids on both paths; dns-rr puts member k on broker k mod 2.
    let (header, seconds) = read_csv(&dir.join("subscribers.csv"));
    assert_eq!(header.last().map(String::as_str), Some("moves"));
    assert!(
        seconds.iter().all(|r| r[4] == "b1" || r[4] == "b2"),
        "{seconds:?}"
    );
    for (k, broker) in ["b1", "b2", "b1", "b2"].iter().enumerate() {
        let member = format!("backend-{k}");
        let rows: Vec<_> = seconds
            .iter()
            .filter(|r| r[1] == "dns-rr" && r[3] == member)
            .collect();
        assert!(
            !rows.is_empty() && rows.iter().all(|r| r[4] == *broker),
            "{member}"
        );
    }
    // Where the dispatcher sent each member is where its seconds are reported.
    for r in &subs {
        let member = r[col("client_id")]
            .rsplit("sub-")
            .next()
            .unwrap()
            .to_owned();
        let on: Vec<_> = seconds
            .iter()
            .filter(|s| s[1] == "least-cpu" && s[3] == member)
            .collect();
        assert!(!on.is_empty(), "{member}");
        assert!(on.iter().all(|s| s[4] == r[col("broker")]), "{member}");
    }

    // The per-member columns: four members; 2 and 2 carry half again the best split's highest
    // load (1250 or 1125 against 833 or 750 msg/s) where nobody moves members, about the best
    // split where they are moved; no member-less loss anywhere (a member on each broker
    // throughout).
    let (header, summary) = read_csv(&dir.join("summary.csv"));
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no {name} in {header:?}"))
    };
    assert_eq!(summary.len(), 4);
    for row in &summary {
        assert_eq!(row[col("members_backend")], "4", "{row:?}");
        let num = |name: &str| {
            row[col(name)]
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("{name}: {row:?}"))
        };
        let jain = num("member_jain_index_backend");
        assert!(jain > 0.0 && jain <= 1.0, "{row:?}");
        assert!(num("member_msgs_per_s_backend") > 0.0, "{row:?}");
        assert!(num("member_load_best_msgs_per_s_backend") > 0.0, "{row:?}");
        assert_eq!(num("memberless_msgs_backend"), 0.0, "{row:?}");
        let (ratio, moves) = (
            num("member_load_ratio_backend"),
            num("member_moves_backend"),
        );
        match row[1].as_str() {
            "dns-rr" | "least-cpu" => {
                assert!(ratio > 1.3, "{row:?}");
                assert_eq!(moves, 0.0, "{row:?}");
            }
            _ => {
                assert!(ratio < 1.15, "{row:?}");
                assert!(moves >= 1.0, "{row:?}");
            }
        }
    }
    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(md.contains("| least-cpu | backend | 1 |"), "{md}");
    for png in [
        "members-dns-rr-t1.png",
        "members-least-cpu-t1.png",
        "members-rr-members-t1.png",
        "members-rebalance-t1.png",
    ] {
        assert!(dir.join(png).exists(), "{png}");
    }
}
