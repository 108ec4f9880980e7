use std::time::Duration;

use proptest::prelude::*;

use super::*;

const S: Duration = Duration::from_secs(1);
const GROUP: &str = "$share/backend/load/#";

fn cfg() -> RebalanceConfig {
    RebalanceConfig {
        hysteresis: 3,
        cooldown: Duration::from_secs(6),
        max_moves_per_s: 2.0,
        hold: Duration::from_secs(60),
        ..RebalanceConfig::default()
    }
}

fn live(rates: &[f64]) -> Vec<BrokerInflow> {
    rates
        .iter()
        .map(|&rate| BrokerInflow { live: true, rate })
        .collect()
}

/// `counts[b]` members on broker b, named `m<b><k>`.
fn group(name: &str, counts: &[usize]) -> GroupMembers {
    GroupMembers {
        group: name.into(),
        on: (counts.iter().enumerate())
            .map(|(b, &n)| (0..n).map(|k| format!("m{b}{k}")).collect())
            .collect(),
    }
}

/// Every split of `m` members over `n` brokers (small n, m).
fn splits(n: usize, m: u32) -> Vec<Vec<u32>> {
    if n == 1 {
        return vec![vec![m]];
    }
    (0..=m)
        .flat_map(|first| {
            splits(n - 1, m - first).into_iter().map(move |mut rest| {
                rest.insert(0, first);
                rest
            })
        })
        .collect()
}

proptest! {
    /// Among the splits with a member on every live broker, none has a lower highest
    /// per-member load than the best split.
    #[test]
    fn best_split_is_as_good_as_any_split(
        rates in prop::collection::vec(prop_oneof![Just(0.0), 1.0..30_000.0f64], 1..4),
        members in 0u32..9,
    ) {
        let brokers = live(&rates);
        let greedy = best_split(&brokers, members);
        prop_assert_eq!(greedy.iter().sum::<u32>(), members);
        if members as usize >= rates.len() {
            prop_assert!(greedy.iter().all(|&m| m >= 1), "{greedy:?}");
            let optimum = splits(rates.len(), members)
                .iter()
                .filter(|s| s.iter().all(|&m| m >= 1))
                .map(|s| highest(&brokers, s))
                .fold(f64::INFINITY, f64::min);
            let got = highest(&brokers, &greedy);
            prop_assert!(got <= optimum * (1.0 + 1e-12), "{greedy:?}: {got} vs {optimum}");
        } else {
            // Too few for every broker: one each on those with the most inflow.
            let mut order: Vec<usize> = (0..rates.len()).collect();
            order.sort_by(|&a, &b| rates[b].total_cmp(&rates[a]).then(a.cmp(&b)));
            for (rank, &b) in order.iter().enumerate() {
                prop_assert_eq!(greedy[b], u32::from(rank < members as usize));
            }
        }
    }
}

#[test]
fn best_split_of_18000_and_10000_over_8_members_is_5_and_3() {
    let brokers = live(&[18_000.0, 10_000.0]);
    assert_eq!(best_split(&brokers, 8), [5, 3]);
    assert_eq!(highest(&brokers, &[4, 4]), 4500.0);
    assert_eq!(highest(&brokers, &[5, 3]), 3600.0);
    // A live broker without inflow keeps one member; a dead one gets none.
    assert_eq!(best_split(&live(&[0.0, 7.0]), 3), [1, 2]);
    let mut b = live(&[5.0, 5.0]);
    b[0].live = false;
    assert_eq!(best_split(&b, 2), [0, 2]);
    // No inflow anywhere: spread evenly.
    assert_eq!(best_split(&live(&[0.0, 0.0, 0.0]), 4), [2, 1, 1]);
}

#[test]
fn one_member_moves_to_the_heavy_broker_after_the_hysteresis() {
    let mut p = MemberPlanner::new(cfg());
    let t = Instant::now();
    let brokers = live(&[18_000.0, 10_000.0]);
    let g = [group(GROUP, &[4, 4])];
    assert!(p.step(t, true, &brokers, &g).is_empty());
    assert!(p.step(t + S, true, &brokers, &g).is_empty());
    let moves = p.step(t + 2 * S, true, &brokers, &g);
    assert_eq!(
        moves,
        [MemberMove {
            group: GROUP.into(),
            client_id: "m10".into(),
            from: 1,
            to: 0,
            load: 2500.0,
        }]
    );
    // Once at the best split, nothing more.
    let settled = [group(GROUP, &[5, 3])];
    for k in 3..20 {
        assert!(p.step(t + k * S, true, &brokers, &settled).is_empty());
    }
}

#[test]
fn steps_while_the_inflow_settles_do_not_count() {
    let mut p = MemberPlanner::new(cfg());
    let t = Instant::now();
    let brokers = live(&[18_000.0, 10_000.0]);
    let g = [group(GROUP, &[4, 4])];
    for k in 0..10 {
        let settled = k % 3 != 2;
        assert!(
            p.step(t + k * S, settled, &brokers, &g).is_empty(),
            "step {k}"
        );
    }
}

#[test]
fn small_or_tolerable_excess_moves_nobody() {
    let mut p = MemberPlanner::new(cfg());
    let t = Instant::now();
    // A few control messages a second: 50 % above the best split (7/1), by 0.25 msgs/s; and
    // 2000 msgs/s on one broker: 500 per member where the best split has 286 (by 214 msgs/s).
    let early = (live(&[2_000.0, 1.0]), group(GROUP, &[4, 4]));
    let quiet = (live(&[3.0, 0.5]), group(GROUP, &[4, 4]));
    // 10/10 over 10000/8500 carry 1000 each; the best, 11/9, 944: 5.9 % above it.
    let near = (live(&[10_000.0, 8_500.0]), group(GROUP, &[10, 10]));
    assert!(highest(&near.0, &best_split(&near.0, 20)) < 1000.0);
    for k in 0..10 {
        for (b, g) in [&quiet, &near, &early] {
            assert!(
                p.step(t + k * S, true, b, std::slice::from_ref(g))
                    .is_empty()
            );
        }
    }
}

#[test]
fn a_group_too_small_for_the_brokers_with_inflow_is_left_alone() {
    let mut p = MemberPlanner::new(cfg());
    let t = Instant::now();
    // Two members, three brokers with inflow: every split loses one broker's messages. The
    // best split would cover b1 and b3, but b2's only member stays (make-before-break).
    let brokers = live(&[10_000.0, 3_000.0, 9_000.0]);
    let g = [group(GROUP, &[0, 1, 1])];
    for k in 0..10 {
        assert!(p.step(t + k * S, true, &brokers, &g).is_empty(), "step {k}");
    }
    // With a third member on b3, one of b3's goes to b1: every broker then has one.
    let g = [group(GROUP, &[0, 1, 2])];
    let moves: Vec<MemberMove> = (0..3)
        .flat_map(|k| p.step(t + (20 + k) * S, true, &brokers, &g))
        .collect();
    assert_eq!(moves.len(), 1);
    assert_eq!((moves[0].from, moves[0].to), (2, 0));
}

proptest! {
    /// Make-before-break: no step takes the last member off a broker with inflow; and no
    /// member carries more after the moves than before or than in the best split.
    #[test]
    fn no_move_leaves_a_broker_with_inflow_without_a_member(
        rates in prop::collection::vec(prop_oneof![Just(0.0), 1.0..30_000.0f64], 2..4),
        counts in prop::collection::vec(0usize..5, 2..4),
    ) {
        let n = rates.len().min(counts.len());
        let brokers = live(&rates[..n]);
        let g = group(GROUP, &counts[..n]);
        let mut c = cfg();
        c.hysteresis = 1;
        c.max_moves_per_s = 10.0;
        let mut p = MemberPlanner::new(c);
        let mut now: Vec<u32> = counts[..n].iter().map(|&k| k as u32).collect();
        let before = highest(&brokers, &now);
        for m in p.step(Instant::now(), true, &brokers, std::slice::from_ref(&g)) {
            now[m.from] -= 1;
            now[m.to] += 1;
            prop_assert!(!(brokers[m.from].rate > 0.0 && now[m.from] == 0), "{m:?} {now:?}");
        }
        // Each move ends nearer the best split: no member carries more than it does there.
        let best = highest(&brokers, &best_split(&brokers, now.iter().sum()));
        prop_assert!(highest(&brokers, &now) <= before.max(best));
    }
}

#[test]
fn moves_are_bounded_held_and_cooled_down() {
    let mut c = cfg();
    c.max_moves_per_s = 1.0;
    c.hysteresis = 1;
    let mut p = MemberPlanner::new(c);
    let t = Instant::now();
    // All 6 on the idle broker: the best is 5/1, but one move per second at most.
    let brokers = live(&[12_000.0, 0.0]);
    let g = [group(GROUP, &[0, 6])];
    let first = p.step(t, true, &brokers, &g);
    assert_eq!(first.len(), 1, "{first:?}");
    // Cooling down: nothing for 6 s, whatever the tokens.
    for k in 1..6 {
        assert!(p.step(t + k * S, true, &brokers, &g).is_empty());
    }
    // The moved member (still listed on b2 by a stale view) is held: the next is another.
    let next = p.step(t + 6 * S, true, &brokers, &g);
    assert_eq!(next.len(), 1);
    assert_ne!(next[0].client_id, first[0].client_id);
}

#[test]
fn plain_filters_and_dead_brokers_are_left_alone() {
    let mut p = MemberPlanner::new(cfg());
    let t = Instant::now();
    let brokers = live(&[18_000.0, 0.0]);
    let plain = [group("load/#", &[0, 4])];
    for k in 0..5 {
        assert!(p.step(t + k * S, true, &brokers, &plain).is_empty());
    }
    // Members on a dead broker are not the dispatcher's to move; none goes to one either.
    let mut b = live(&[0.0, 18_000.0]);
    b[1].live = false;
    for k in 0..5 {
        assert!(
            p.step(t + k * S, true, &b, &[group(GROUP, &[2, 2])])
                .is_empty()
        );
    }
}
