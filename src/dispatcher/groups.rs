//! Subscriber placement: the subscriber policies (pure) and the dispatcher's record of which
//! group members it sent to which broker.
//!
//! The brokers are not clustered: a message published on broker `b` reaches only `b`'s
//! subscribers, and a shared group's messages on `b` are split among the group's members on
//! `b`. So a group needs a member on every broker with inflow, and the members per broker in
//! proportion to the inflow. A group is one topic filter as the client wrote it: a shared
//! subscription `$share/G/FILTER` (share name with filter, as MQTT defines one), or a plain
//! filter, which is a group of its own.
//!
//! Counts come from the dispatcher's own placements; it does not see disconnects. A member is
//! known by its client id: a client id placed again (a reconnect, a move) replaces its earlier
//! placement, so it is counted once, where it was last sent. Otherwise a member is kept for the
//! dispatcher's lifetime; a group whose last member is forgotten is dropped. Memory is bounded
//! against unauthenticated clients: at most [`MAX_MEMBERS`] client ids of at most
//! [`MAX_RECORDED_BYTES`] bytes, each in at most [`MAX_GROUPS_PER_MEMBER`] groups whose filters
//! are at most [`MAX_RECORDED_BYTES`] long. A member beyond these bounds is still placed, by the
//! counts so far, but not recorded.

use std::collections::{BTreeMap, HashMap};

/// Client ids recorded at most (memory bound against a flood of distinct ids).
pub const MAX_MEMBERS: usize = 65_536;
/// Groups one member is recorded in at most (its first distinct filters).
pub const MAX_GROUPS_PER_MEMBER: usize = 8;
/// Longest client id or filter recorded.
pub const MAX_RECORDED_BYTES: usize = 256;

/// How subscribers are spread over the brokers.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum SubscriberPolicy {
    /// Members per broker in proportion to its inflow (reported `msgs_in_per_s`): a new member
    /// goes to a live broker without one first, then to the broker with the most inflow per
    /// member.
    #[default]
    Inflow,
    /// The k-th member of a group goes to broker k mod n (the baseline).
    RoundRobin,
}

/// What the subscriber policy knows of one broker for one group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slot {
    /// Live by the load table's rule (reported recently, or never reported).
    pub live: bool,
    /// Window average of the broker's received msgs/s (0 when it reports none).
    pub inflow: f64,
    /// The group's members placed on it.
    pub members: u32,
}

/// Chooses the broker for a group's next member; `joined` = members of the group placed so far
/// (round-robin's k). `None` when no broker is live.
pub fn choose(policy: SubscriberPolicy, slots: &[Slot], joined: u64) -> Option<usize> {
    match policy {
        SubscriberPolicy::RoundRobin => {
            let n = slots.len();
            let k = usize::try_from(joined % n.max(1) as u64).unwrap_or(0);
            (0..n).map(|d| (k + d) % n).find(|&i| slots[i].live)
        }
        SubscriberPolicy::Inflow => {
            let mut best: Option<usize> = None;
            for (i, s) in slots.iter().enumerate().filter(|(_, s)| s.live) {
                if best.is_none_or(|b| before(s, &slots[b])) {
                    best = Some(i);
                }
            }
            best
        }
    }
}

/// The inflow each of the group's members on `s` carries now (infinite for a broker with
/// inflow and no member: the group's messages there are dropped).
pub fn per_member(s: &Slot) -> f64 {
    match (s.members, s.inflow > 0.0) {
        (0, true) => f64::INFINITY,
        (0, false) => 0.0,
        (m, _) => s.inflow / f64::from(m),
    }
}

/// Whether `a` takes the next member before `b` (which comes earlier in broker order): a broker
/// without a member first (the one with more inflow first: a publisher may be sent to any live
/// broker at any moment, and a broker without a member drops the group's messages); then the
/// higher load per member, then fewer members; a full tie keeps `b`.
fn before(a: &Slot, b: &Slot) -> bool {
    match (a.members == 0, b.members == 0) {
        (true, false) => true,
        (false, true) => false,
        (true, true) => a.inflow > b.inflow,
        (false, false) => {
            let (la, lb) = (per_member(a), per_member(b));
            la > lb || (la == lb && a.members < b.members)
        }
    }
}

#[derive(Debug, Default)]
struct Group {
    /// Members per broker, config order.
    counts: Vec<u32>,
    /// Members ever placed (round-robin's k).
    joined: u64,
    /// Client id → broker index.
    members: BTreeMap<String, usize>,
}

/// The members this dispatcher placed, per group.
#[derive(Debug)]
pub struct Groups {
    brokers: usize,
    groups: HashMap<String, Group>,
    /// Client id → the groups it was recorded in.
    member_of: HashMap<String, Vec<String>>,
}

impl Groups {
    pub fn new(brokers: usize) -> Self {
        Self {
            brokers,
            groups: HashMap::new(),
            member_of: HashMap::new(),
        }
    }

    /// Members of `group` per broker (config order; zeros for an unknown group).
    pub fn counts(&self, group: &str) -> Vec<u32> {
        self.groups
            .get(group)
            .map_or_else(|| vec![0; self.brokers], |g| g.counts.clone())
    }

    /// Members of `group` per broker, not counting `client_id` (a member being placed again is
    /// placed as if it had left).
    pub fn counts_without(&self, group: &str, client_id: &str) -> Vec<u32> {
        let mut counts = self.counts(group);
        if let Some(&b) = (self.groups.get(group)).and_then(|g| g.members.get(client_id)) {
            counts[b] -= 1;
        }
        counts
    }

    /// Members of `group` placed so far, replacements included.
    pub fn joined(&self, group: &str) -> u64 {
        self.groups.get(group).map_or(0, |g| g.joined)
    }

    /// Client ids of `group`'s members on broker `broker` (sorted).
    pub fn members_on(&self, group: &str, broker: usize) -> Vec<String> {
        self.groups.get(group).map_or_else(Vec::new, |g| {
            let on = g.members.iter().filter(|&(_, &b)| b == broker);
            on.map(|(id, _)| id.clone()).collect()
        })
    }

    /// Every group with a recorded member (sorted).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.groups.keys().cloned().collect();
        names.sort();
        names
    }

    /// `client_id` was sent to `broker` as a member of `groups`: any earlier placement of the
    /// same client id is replaced (and is not a new join). A filter named twice counts once.
    pub fn record(&mut self, client_id: &str, groups: &[String], broker: usize) {
        let replaced = self.forget(client_id);
        let mut names: Vec<&String> = Vec::new();
        for name in groups {
            if !names.contains(&name) && names.len() < MAX_GROUPS_PER_MEMBER {
                names.push(name);
            }
        }
        let recordable = client_id.len() <= MAX_RECORDED_BYTES
            && names.iter().all(|n| n.len() <= MAX_RECORDED_BYTES)
            && self.member_of.len() < MAX_MEMBERS;
        if !recordable {
            // Placed by the counts so far; round-robin still moves on in groups already known.
            for name in &names {
                if let Some(g) = self.groups.get_mut(name.as_str()) {
                    g.joined += 1;
                }
            }
            tracing::warn!(
                limit = MAX_MEMBERS,
                "subscriber not recorded: too many members, or a client id or filter over {MAX_RECORDED_BYTES} bytes"
            );
            return;
        }
        for name in &names {
            let brokers = self.brokers;
            let g = self.groups.entry((*name).clone()).or_insert_with(|| Group {
                counts: vec![0; brokers],
                ..Group::default()
            });
            g.counts[broker] += 1;
            g.members.insert(client_id.to_owned(), broker);
            if !replaced {
                g.joined += 1;
            }
        }
        self.member_of
            .insert(client_id.to_owned(), names.into_iter().cloned().collect());
    }

    /// `client_id` was moved to `broker` (by the rebalancer): it counts there in each of its
    /// groups, without joining anew. Unknown client ids are ignored.
    pub fn relocate(&mut self, client_id: &str, broker: usize) {
        for name in self.member_of.get(client_id).into_iter().flatten() {
            if let Some(g) = self.groups.get_mut(name)
                && let Some(at) = g.members.get_mut(client_id)
            {
                g.counts[*at] -= 1;
                g.counts[broker] += 1;
                *at = broker;
            }
        }
    }

    /// Drops `client_id` from every group it was recorded in (a group left without members is
    /// dropped); whether it was recorded.
    pub fn forget(&mut self, client_id: &str) -> bool {
        let Some(names) = self.member_of.remove(client_id) else {
            return false;
        };
        for name in names {
            if let Some(g) = self.groups.get_mut(&name)
                && let Some(b) = g.members.remove(client_id)
            {
                g.counts[b] -= 1;
                if g.members.is_empty() {
                    self.groups.remove(&name);
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(inflows: &[f64]) -> Vec<Slot> {
        inflows
            .iter()
            .map(|&inflow| Slot {
                live: true,
                inflow,
                members: 0,
            })
            .collect()
    }

    /// Places `n` members one after another, each seeing the counts so far.
    fn fill(policy: SubscriberPolicy, start: &[Slot], n: u64) -> Vec<u32> {
        let mut s = start.to_vec();
        for k in 0..n {
            let i = choose(policy, &s, k).expect("a live broker");
            s[i].members += 1;
        }
        s.iter().map(|s| s.members).collect()
    }

    #[test]
    fn inflow_splits_3_to_1_over_8_members_as_6_and_2() {
        assert_eq!(
            fill(SubscriberPolicy::Inflow, &slots(&[3.0, 1.0]), 8),
            [6, 2]
        );
        assert_eq!(
            fill(SubscriberPolicy::Inflow, &slots(&[3000.0, 1000.0]), 8),
            [6, 2]
        );
    }

    #[test]
    fn a_broker_without_a_member_always_comes_first() {
        // However lopsided, a broker without a member is served before anyone else, the one
        // with inflow first.
        let mut s = slots(&[1_000_000.0, 0.0, 1.0]);
        s[0].members = 1;
        assert_eq!(choose(SubscriberPolicy::Inflow, &s, 1), Some(2));
        s[2].members = 1;
        assert_eq!(choose(SubscriberPolicy::Inflow, &s, 2), Some(1));
        // And never a live broker without a member while another has two.
        for inflows in [[5.0, 1.0, 0.5], [1.0, 1.0, 1.0], [0.1, 90.0, 0.0]] {
            let mut s = slots(&inflows);
            for k in 0..12 {
                let i = choose(SubscriberPolicy::Inflow, &s, k).unwrap();
                s[i].members += 1;
                let bare = s.iter().any(|s| s.members == 0);
                assert!(!(bare && s.iter().any(|s| s.members >= 2)), "{s:?}");
            }
        }
    }

    #[test]
    fn inflow_ties_go_to_fewest_members_then_broker_order() {
        // No inflow reported anywhere: members spread evenly, in broker order.
        let picks: Vec<usize> = {
            let mut s = slots(&[0.0, 0.0, 0.0]);
            (0..6)
                .map(|k| {
                    let i = choose(SubscriberPolicy::Inflow, &s, k).unwrap();
                    s[i].members += 1;
                    i
                })
                .collect()
        };
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        // Equal load per member (2/1 vs 4/2): the one with fewer members.
        let mut s = slots(&[4.0, 2.0]);
        s[0].members = 2;
        s[1].members = 1;
        assert_eq!(choose(SubscriberPolicy::Inflow, &s, 3), Some(1));
        // A broker without inflow gets one member, in case a publisher is sent there, and no
        // more while another has inflow.
        assert_eq!(
            fill(SubscriberPolicy::Inflow, &slots(&[0.0, 7.0]), 5),
            [1, 4]
        );
    }

    #[test]
    fn round_robin_is_k_mod_n_skipping_down_brokers() {
        let s = slots(&[9.0, 0.0, 0.0]);
        let picks: Vec<_> = (0..5)
            .map(|k| choose(SubscriberPolicy::RoundRobin, &s, k).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1]);
        let mut s = s;
        s[1].live = false;
        assert_eq!(choose(SubscriberPolicy::RoundRobin, &s, 1), Some(2));
    }

    #[test]
    fn down_brokers_are_never_chosen() {
        let mut s = slots(&[100.0, 1.0]);
        s[0].live = false;
        assert_eq!(choose(SubscriberPolicy::Inflow, &s, 0), Some(1));
        s[1].live = false;
        for p in [SubscriberPolicy::Inflow, SubscriberPolicy::RoundRobin] {
            assert_eq!(choose(p, &s, 0), None);
            assert_eq!(choose(p, &[], 0), None);
        }
    }

    #[test]
    fn groups_count_a_client_id_once_where_it_was_last_sent() {
        let mut g = Groups::new(2);
        let share = vec!["$share/g/load/#".to_owned()];
        g.record("a", &share, 0);
        g.record("b", &share, 0);
        assert_eq!(g.counts(&share[0]), [2, 0]);
        g.record("a", &share, 1);
        assert_eq!(g.counts(&share[0]), [1, 1]);
        assert_eq!(
            g.joined(&share[0]),
            2,
            "a client id placed again is not a new member"
        );
        assert_eq!(g.members_on(&share[0], 1), ["a"]);
        assert_eq!(g.counts_without(&share[0], "a"), [1, 0]);
        assert_eq!(g.counts_without(&share[0], "stranger"), [1, 1]);
        assert_eq!(g.members_on(&share[0], 0), ["b"]);
        // A plain filter is a group of its own; one client may be in several.
        let two = vec!["$share/g/load/#".to_owned(), "alerts/#".to_owned()];
        g.record("c", &two, 1);
        assert_eq!(g.counts("alerts/#"), [0, 1]);
        assert_eq!(g.counts(&share[0]), [1, 2]);
        assert_eq!(g.names(), ["$share/g/load/#", "alerts/#"]);
        g.relocate("c", 0);
        assert_eq!(g.counts("alerts/#"), [1, 0]);
        assert_eq!(g.counts(&share[0]), [2, 1]);
        assert_eq!(g.joined("alerts/#"), 1, "a move is not a new member");
        g.relocate("stranger", 0);
        g.forget("c");
        assert_eq!(g.counts("alerts/#"), [0, 0]);
        assert_eq!(g.counts(&share[0]), [1, 1]);
        assert_eq!(g.counts("never"), [0, 0]);
    }

    #[test]
    fn duplicates_long_names_and_too_many_groups_are_bounded() {
        let mut g = Groups::new(2);
        let twice = vec!["t/#".to_owned(), "t/#".to_owned()];
        g.record("a", &twice, 0);
        assert_eq!(g.counts("t/#"), [1, 0], "a filter named twice counts once");
        assert!(g.forget("a"));
        assert_eq!(g.names(), Vec::<String>::new(), "an empty group is dropped");
        assert!(!g.forget("a"));
        let many: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
        g.record("b", &many, 1);
        assert_eq!(g.names().len(), MAX_GROUPS_PER_MEMBER);
        g.record(&"x".repeat(MAX_RECORDED_BYTES + 1), &many[..1], 0);
        g.record("c", &["y".repeat(MAX_RECORDED_BYTES + 1)], 0);
        assert_eq!(
            g.counts("f0"),
            [0, 1],
            "over-long names are placed, not recorded"
        );
        assert_eq!(g.names().len(), MAX_GROUPS_PER_MEMBER);
    }

    #[test]
    fn past_the_member_cap_a_new_group_still_gets_brokers() {
        let mut g = Groups::new(2);
        let share = vec!["$share/g/t".to_owned()];
        for i in 0..MAX_MEMBERS {
            g.record(&format!("m{i}"), &share, i % 2);
        }
        let fresh = vec!["$share/h/t".to_owned()];
        g.record("late", &fresh, 1);
        assert_eq!(g.counts(&fresh[0]), [0, 0]);
        let slots: Vec<Slot> = g
            .counts(&fresh[0])
            .iter()
            .map(|&members| Slot {
                live: true,
                inflow: 1.0,
                members,
            })
            .collect();
        assert!(choose(SubscriberPolicy::Inflow, &slots, g.joined(&fresh[0])).is_some());
    }
}
