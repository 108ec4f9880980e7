//! Per-member figures of each shared subscription group, per (trial, method), over the
//! method's full-load window: how evenly the members receive, how much each one is offered
//! against the best any integer split of the members over the brokers could do, what brokers
//! without a member dropped, and how often members moved.
//!
//! Inputs are the run's files: `subscribers.csv` (each member's second: `received`, the
//! `broker` it was on, its `moves` so far), `brokers.csv` (each broker's second: what the
//! publishers sent there, `sent_msgs_per_s`), `receipts.csv` (which entries are shared groups,
//! and which publishers each group's filter matches) and `publishers.csv` (every publisher).
//! A broker's inflow on a group's topics is its `sent_msgs_per_s`, which counts every
//! publisher: so the load figures are given only for a group whose filter matches every
//! publisher of the method run, and left empty for others.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::records::{BrokerRow, PublisherRow};
use super::stats;
use super::subscribers::{ReceiptRow, SubscriberRow};

/// One shared group's figures in one (trial, method).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GroupFigures {
    /// The subscriber entry's name.
    pub group: String,
    /// Members seen in `subscribers.csv`.
    pub members: usize,
    /// Mean over members of each member's mean receive rate over the window (msgs/s).
    pub rate_mean: f64,
    /// Jain's index of the members' mean receive rates; `None` if none received anything.
    pub jain: Option<f64>,
    /// Highest member's mean receive rate over the members' mean.
    pub max_over_mean: Option<f64>,
    /// The highest member's window mean of its offered load: each second, its broker's
    /// inflow divided by the group's members on that broker that second (msgs/s).
    pub load_max: Option<f64>,
    /// The same for the best integer split of the members over the window's mean inflows.
    pub best_split: Option<f64>,
    /// `load_max / best_split`: 1 is the best split.
    pub ratio: Option<f64>,
    /// Messages published to a broker in seconds when the group had no member reporting there
    /// (the whole method run, whole seconds).
    pub memberless_msgs: Option<f64>,
    /// Moves of all members (each member's last `moves`).
    pub moves: u64,
}

/// Per (trial, method), the figures of each shared group (in first-seen order).
pub type MemberFiguresByRun = BTreeMap<(u32, String), Vec<GroupFigures>>;

/// The best split of `members` over brokers with these mean inflows: the dispatcher's
/// ([`crate::dispatcher::rebalance::members::best_split`]): a member on every broker first (the
/// one with more inflow first, while members last), then each next member to the broker whose
/// members carry the most inflow each, which minimises the highest `inflow / members` from that
/// floor.
pub fn best_split(inflow: &[f64], members: usize) -> Vec<usize> {
    use crate::dispatcher::rebalance::members::{self, BrokerInflow};
    let brokers: Vec<BrokerInflow> = (inflow.iter())
        .map(|&rate| BrokerInflow { live: true, rate })
        .collect();
    let members = u32::try_from(members).unwrap_or(u32::MAX);
    (members::best_split(&brokers, members).into_iter())
        .map(|m| m as usize)
        .collect()
}

/// The highest `inflow / members` over the brokers a split gives members to.
pub fn highest_per_member(inflow: &[f64], split: &[usize]) -> f64 {
    inflow
        .iter()
        .zip(split)
        .filter(|(_, m)| **m > 0)
        .map(|(i, m)| i / *m as f64)
        .fold(0.0, f64::max)
}

/// Every second's inflow per broker of one (trial, method), from its `brokers.csv` rows.
pub type Inflow = BTreeMap<(u64, String), f64>;

/// The figures of one group from its members' seconds (every second of the method run),
/// the window (inclusive `t_s` bounds) and, when known, the inflow on its topics.
pub fn group_figures(
    group: &str,
    seconds: &[&SubscriberRow],
    window: (u64, u64),
    inflow: Option<&Inflow>,
) -> GroupFigures {
    let (start, end) = window;
    let span = (end + 1).saturating_sub(start).max(1) as f64;
    let in_window = |t: u64| (start..=end).contains(&t);
    let members = super::records::first_seen(seconds.iter().map(|r| r.subscriber.as_str()));
    let rates: Vec<f64> = members
        .iter()
        .map(|m| {
            let got: u64 = seconds
                .iter()
                .filter(|r| r.subscriber == *m && in_window(r.t_s))
                .map(|r| r.received)
                .sum();
            got as f64 / span
        })
        .collect();
    let rate_mean = stats::mean(&rates).unwrap_or(0.0);
    let max_rate = rates.iter().copied().fold(0.0, f64::max);
    let moves = members
        .iter()
        .map(|m| {
            let last = seconds.iter().filter(|r| r.subscriber == *m);
            u64::from(last.map(|r| r.moves).max().unwrap_or(0))
        })
        .sum();
    let mut out = GroupFigures {
        group: group.to_owned(),
        members: members.len(),
        rate_mean,
        jain: stats::jain(&rates),
        max_over_mean: (rate_mean > 0.0).then(|| max_rate / rate_mean),
        moves,
        ..GroupFigures::default()
    };
    let Some(inflow) = inflow else {
        return out;
    };
    // Members on each broker, each second.
    let mut on: HashMap<(u64, &str), usize> = HashMap::new();
    for r in seconds {
        *on.entry((r.t_s, r.broker.as_str())).or_default() += 1;
    }
    let of = |t: u64, b: &str| inflow.get(&(t, b.to_owned())).copied().unwrap_or(0.0);
    let loads: Vec<f64> = members
        .iter()
        .filter_map(|m| {
            let per_second: Vec<f64> = seconds
                .iter()
                .filter(|r| r.subscriber == *m && in_window(r.t_s))
                .map(|r| of(r.t_s, &r.broker) / on[&(r.t_s, r.broker.as_str())] as f64)
                .collect();
            stats::mean(&per_second)
        })
        .collect();
    out.load_max = loads.iter().copied().reduce(f64::max);
    let brokers: Vec<&str> = inflow
        .keys()
        .map(|(_, b)| b.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let means: Vec<f64> = brokers
        .iter()
        .map(|b| (start..=end).map(|t| of(t, b)).sum::<f64>() / span)
        .collect();
    let best = highest_per_member(&means, &best_split(&means, members.len()));
    out.best_split = (best > 0.0).then_some(best);
    out.ratio = match (out.load_max, out.best_split) {
        (Some(load), Some(best)) => Some(load / best),
        _ => None,
    };
    out.memberless_msgs = Some(
        inflow
            .iter()
            .filter(|((t, b), _)| !on.contains_key(&(*t, b.as_str())))
            // fold, not sum: an empty f64 sum is -0.
            .fold(0.0, |total, (_, sent)| total + sent),
    );
    out
}

/// The entry a member belongs to: its name without the trailing `-<k>`.
fn entry_of(member: &str) -> &str {
    member.rsplit_once('-').map_or(member, |(entry, _)| entry)
}

/// Per (trial, method) with a window (`windows`: inclusive `t_s` bounds), the figures of every
/// shared group: an entry whose receipts have the entry itself as their delivery unit.
pub fn figures(
    subscribers: &[SubscriberRow],
    brokers: &[BrokerRow],
    receipts: &[ReceiptRow],
    publishers: &[PublisherRow],
    windows: &BTreeMap<(u32, String), (u64, u64)>,
) -> MemberFiguresByRun {
    let mut out = MemberFiguresByRun::new();
    for ((trial, method), window) in windows {
        let this = |t: u32, m: &str| t == *trial && m == method;
        let groups = super::records::first_seen(
            receipts
                .iter()
                .filter(|r| this(r.trial, &r.method) && r.unit == r.subscriber)
                .map(|r| r.subscriber.as_str()),
        );
        if groups.is_empty() {
            continue;
        }
        let inflow: Inflow = brokers
            .iter()
            .filter(|r| this(r.trial, &r.method))
            .map(|r| ((r.t_s, r.broker.clone()), r.sent_msgs_per_s))
            .collect();
        let all: BTreeSet<&str> = publishers
            .iter()
            .filter(|p| this(p.trial, &p.method))
            .map(|p| p.publisher.as_str())
            .collect();
        let mut figures = Vec::new();
        for group in groups {
            let heard: BTreeSet<&str> = receipts
                .iter()
                .filter(|r| this(r.trial, &r.method) && r.subscriber == group)
                .map(|r| r.publisher.as_str())
                .collect();
            let seconds: Vec<&SubscriberRow> = subscribers
                .iter()
                .filter(|r| this(r.trial, &r.method) && entry_of(&r.subscriber) == group)
                .collect();
            let known = (heard == all).then_some(&inflow);
            figures.push(group_figures(&group, &seconds, *window, known));
        }
        out.insert((*trial, method.clone()), figures);
    }
    out
}

/// The `summary.csv` columns these figures add, per group.
pub fn csv_columns(groups: &[String]) -> Vec<String> {
    let mut h = Vec::new();
    for g in groups {
        for c in [
            "members",
            "member_msgs_per_s",
            "member_jain_index",
            "member_max_over_mean",
            "member_load_max_msgs_per_s",
            "member_load_best_msgs_per_s",
            "member_load_ratio",
            "memberless_msgs",
            "member_moves",
        ] {
            h.push(format!("{c}_{g}"));
        }
    }
    h
}

/// The values of [`csv_columns`] for one (trial, method); empty strings where unknown.
pub fn csv_values(figures: Option<&Vec<GroupFigures>>, groups: &[String]) -> Vec<String> {
    let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    let mut v = Vec::new();
    for g in groups {
        match figures.and_then(|f| f.iter().find(|x| &x.group == g)) {
            Some(f) => v.extend([
                f.members.to_string(),
                f.rate_mean.to_string(),
                opt(f.jain),
                opt(f.max_over_mean),
                opt(f.load_max),
                opt(f.best_split),
                opt(f.ratio),
                opt(f.memberless_msgs),
                f.moves.to_string(),
            ]),
            None => v.extend(std::iter::repeat_n(String::new(), 9)),
        }
    }
    v
}

/// Every group named in `figures`, first seen first.
pub fn groups(figures: &MemberFiguresByRun) -> Vec<String> {
    super::records::first_seen(figures.values().flatten().map(|f| f.group.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(t_s: u64, member: &str, broker: &str, received: u64, moves: u32) -> SubscriberRow {
        SubscriberRow {
            trial: 1,
            method: "m".into(),
            t_s,
            subscriber: member.into(),
            broker: broker.into(),
            received,
            latency_p50_ms: None,
            latency_p99_ms: None,
            latency_max_ms: None,
            moves,
        }
    }

    #[test]
    fn best_split_is_the_dispatchers() {
        // Optimality against every split is tested with the dispatcher's function.
        assert_eq!(best_split(&[18000.0, 10000.0], 8), vec![5, 3]);
        assert_eq!(best_split(&[3000.0, 1000.0], 8), vec![6, 2]);
        // A broker without inflow keeps one member, as the dispatcher keeps one there.
        assert_eq!(best_split(&[7.0, 0.0, 2.0], 5), vec![3, 1, 1]);
        // Too few members: the busiest brokers get one each.
        assert_eq!(best_split(&[1.0, 9.0, 5.0], 2), vec![0, 1, 1]);
    }

    /// Two brokers, 18000 and 10000 msgs/s, four members on each throughout.
    fn four_and_four() -> (Vec<SubscriberRow>, Inflow) {
        let mut rows = Vec::new();
        let mut inflow = Inflow::new();
        for t in 0..10 {
            inflow.insert((t, "b1".into()), 18000.0);
            inflow.insert((t, "b2".into()), 10000.0);
            for k in 0..8 {
                let (broker, got) = if k < 4 { ("b1", 4500) } else { ("b2", 2500) };
                rows.push(second(t, &format!("g-{k}"), broker, got, 0));
            }
        }
        (rows, inflow)
    }

    #[test]
    fn four_and_four_over_18000_and_10000_is_a_quarter_above_the_best_split() {
        let (rows, inflow) = four_and_four();
        let refs: Vec<&SubscriberRow> = rows.iter().collect();
        let f = group_figures("g", &refs, (2, 7), Some(&inflow));
        assert_eq!(f.members, 8);
        assert_eq!(f.rate_mean, 3500.0);
        assert_eq!(f.load_max, Some(4500.0));
        assert_eq!(f.best_split, Some(3600.0));
        assert_eq!(f.ratio, Some(1.25));
        assert_eq!(f.max_over_mean, Some(4500.0 / 3500.0));
        let jain = 28000.0f64.powi(2) / (8.0 * (4.0 * 4500f64.powi(2) + 4.0 * 2500f64.powi(2)));
        assert!((f.jain.unwrap() - jain).abs() < 1e-12);
        assert_eq!(f.memberless_msgs, Some(0.0));
        assert_eq!(f.moves, 0);
        // Without the inflow the load figures stay empty.
        let f = group_figures("g", &refs, (2, 7), None);
        assert_eq!((f.load_max, f.ratio, f.memberless_msgs), (None, None, None));
    }

    #[test]
    fn a_member_that_moves_changes_its_load_and_leaves_a_broker_without_members() {
        // Two members: both on b1 until second 4, then g-1 moves to b2 (moves = 1 from then).
        let mut rows = Vec::new();
        let mut inflow = Inflow::new();
        for t in 0..8 {
            inflow.insert((t, "b1".into()), 600.0);
            inflow.insert((t, "b2".into()), 200.0);
            rows.push(second(t, "g-0", "b1", 300, 0));
            let (broker, moves) = if t < 4 { ("b1", 0) } else { ("b2", 1) };
            rows.push(second(t, "g-1", broker, 100, moves));
        }
        let refs: Vec<&SubscriberRow> = rows.iter().collect();
        let f = group_figures("g", &refs, (2, 5), Some(&inflow));
        // g-0: 300 (shared) in 2, 3, then 600 alone in 4, 5 → 450; g-1: 300, 300, 200, 200.
        assert_eq!(f.load_max, Some(450.0));
        assert_eq!(f.best_split, Some(600.0));
        assert_eq!(f.ratio, Some(0.75));
        // b2 had no member in seconds 0..=3: 4 × 200 published there went nowhere.
        assert_eq!(f.memberless_msgs, Some(800.0));
        assert_eq!(f.moves, 1);
    }

    #[test]
    fn groups_come_from_receipts_and_the_inflow_only_when_the_filter_hears_everyone() {
        let (rows, _) = four_and_four();
        let broker = |t: u64, b: &str, sent: f64| BrokerRow {
            trial: 1,
            method: "m".into(),
            t_s: t,
            broker: b.into(),
            cpu_pct: None,
            sent_msgs_per_s: sent,
            received_msgs_per_s: None,
            publishers: 1,
        };
        let brokers: Vec<BrokerRow> = (0..10)
            .flat_map(|t| [broker(t, "b1", 18000.0), broker(t, "b2", 10000.0)])
            .collect();
        let receipt = |entry: &str, unit: &str, publisher: &str| ReceiptRow {
            trial: 1,
            method: "m".into(),
            subscriber: entry.into(),
            unit: unit.into(),
            publisher: publisher.into(),
            expected: 1,
            received: 1,
            lost: 0,
            duplicates: 0,
            out_of_order: 0,
        };
        let publisher = |name: &str| PublisherRow {
            trial: 1,
            method: "m".into(),
            publisher: name.into(),
            profile: "light".into(),
            join_s: 0.0,
            broker: "b1".into(),
            redirect_ms: None,
            target_msgs_per_s: 1.0,
            achieved_msgs_per_s: 1.0,
            sent_total: 1,
            downtime_s: 0.0,
            target_total: 1,
        };
        let publishers = [publisher("p-0"), publisher("p-1")];
        let windows = BTreeMap::from([((1, "m".to_owned()), (2, 7))]);
        // `g` hears both publishers; `audit-0` is a plain subscriber's own unit.
        let receipts = [
            receipt("g", "g", "p-0"),
            receipt("g", "g", "p-1"),
            receipt("audit", "audit-0", "p-0"),
        ];
        let f = figures(&rows, &brokers, &receipts, &publishers, &windows);
        let got = &f[&(1, "m".to_owned())];
        assert_eq!(got.len(), 1, "only the shared group");
        assert_eq!((got[0].group.as_str(), got[0].ratio), ("g", Some(1.25)));
        assert_eq!(groups(&f), ["g"]);
        let cols = csv_columns(&groups(&f));
        let vals = csv_values(Some(got), &groups(&f));
        assert_eq!(cols.len(), vals.len());
        assert_eq!(cols[6], "member_load_ratio_g");
        assert_eq!(vals[6], "1.25");
        // A filter that hears only p-0: no load figures (brokers.csv counts p-1 too).
        let f = figures(&rows, &brokers, &receipts[..1], &publishers, &windows);
        let got = &f[&(1, "m".to_owned())][0];
        assert_eq!((got.members, got.ratio), (8, None));
    }
}
