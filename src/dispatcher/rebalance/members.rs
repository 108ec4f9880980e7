//! Live moves of shared-subscription members, pure: when a group's members no longer sit where
//! its messages arrive, which member to move where.
//!
//! The brokers are not clustered, so a group's messages published on broker `b` are split among
//! the group's members on `b`: each carries `I_b / m_b` (inflow over members; a broker with
//! inflow and no member drops the group's messages there). The best split of a group's members
//! keeps one on every live broker (a publisher may be sent to any of them at any moment) and
//! minimises the highest per-member load ([`best_split`]). Rules, per group, in
//! [`MemberPlanner::step`]:
//! - **When**: a live broker has no member though the best split gives it one, or the highest
//!   per-member load is more than [`TOLERANCE`] and more than `member_threshold` msgs/s above
//!   the best split's (members far below any consumer's capacity are not worth a move); for `hysteresis` consecutive steps, counted only while the inflow has settled
//!   (not while the publisher rebalancer's moves have yet to show in it).
//! - **Which**: one member at a time, from a broker with more members than its share in the best
//!   split to the broker short of its share whose members carry the most; on the donor, the
//!   member with the smallest client id that is not on hold.
//! - **Make-before-break**: the last member on a broker with inflow never moves, so such a
//!   broker keeps a member throughout; the moved member is subscribed at its new broker while
//!   the donor's others go on receiving.
//! - **Bounded**: a token bucket of `max_moves_per_s` for all groups together (burst: one
//!   second's worth, at least one); a moved member is held for `hold`; after a round of moves
//!   the group waits `cooldown`.
//!
//! Only shared groups (`$share/G/F`) are moved: a plain subscriber hears everything its broker
//! has, so moving it changes what it hears, not how a load is split.

use std::collections::HashMap;

use tokio::time::Instant;

use super::plan::RebalanceConfig;
use crate::dispatcher::groups::{self, Slot, SubscriberPolicy};

/// A group is unbalanced when its highest per-member load is above the best split's by more
/// than this share (and by more than the config's `member_threshold` msgs/s).
pub const TOLERANCE: f64 = 0.10;

/// One broker as the member planner sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BrokerInflow {
    pub live: bool,
    /// Window average of received msgs/s.
    pub rate: f64,
}

/// One group's members per broker (config order), as the dispatcher placed them.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupMembers {
    /// The filter as clients wrote it, e.g. `$share/backend/load/#`.
    pub group: String,
    /// Client ids per broker, sorted.
    pub on: Vec<Vec<String>>,
}

/// One chosen member move.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberMove {
    pub group: String,
    pub client_id: String,
    pub from: usize,
    pub to: usize,
    /// The load (msgs/s) each of the group's members on `from` carried before the move.
    pub load: f64,
}

/// Whether `filter` names a shared group.
pub fn is_shared(filter: &str) -> bool {
    filter.starts_with("$share/")
}

/// What each member on a broker with inflow `rate` and `members` members carries (infinite for
/// inflow and no member).
pub fn per_member(rate: f64, members: u32) -> f64 {
    groups::per_member(&slot(&BrokerInflow { live: true, rate }, members))
}

fn slot(b: &BrokerInflow, members: u32) -> Slot {
    Slot {
        live: b.live,
        inflow: b.rate,
        members,
    }
}

/// The highest per-member load of `counts` over live brokers.
pub fn highest(brokers: &[BrokerInflow], counts: &[u32]) -> f64 {
    (brokers.iter().zip(counts))
        .filter(|(b, _)| b.live)
        .map(|(b, &m)| per_member(b.rate, m))
        .fold(0.0, f64::max)
}

/// The split of `members` over the live brokers that the `inflow` subscriber policy reaches
/// placing them one by one ([`groups::choose`]): one on each live broker first (the one with
/// more inflow first), then each next member to the broker whose members carry the most. From
/// that floor, this highest-averages rule minimises the largest `I_b / m_b` (checked against
/// every split in the tests). Dead brokers get none.
pub fn best_split(brokers: &[BrokerInflow], members: u32) -> Vec<u32> {
    let mut slots: Vec<Slot> = brokers.iter().map(|b| slot(b, 0)).collect();
    for k in 0..members {
        match groups::choose(SubscriberPolicy::Inflow, &slots, u64::from(k)) {
            Some(b) => slots[b].members += 1,
            None => break,
        }
    }
    slots.iter().map(|s| s.members).collect()
}

#[derive(Debug, Default)]
struct GroupState {
    /// Consecutive unbalanced steps.
    over: u32,
    last_round: Option<Instant>,
}

/// The member rebalancer's memory between steps.
#[derive(Debug)]
pub struct MemberPlanner {
    cfg: RebalanceConfig,
    groups: HashMap<String, GroupState>,
    /// Client id → when it was last moved.
    moved_at: HashMap<String, Instant>,
    tokens: f64,
    last_step: Option<Instant>,
}

impl MemberPlanner {
    pub fn new(cfg: RebalanceConfig) -> Self {
        let tokens = cfg.max_moves_per_s.max(1.0);
        Self {
            cfg,
            groups: HashMap::new(),
            moved_at: HashMap::new(),
            tokens,
            last_step: None,
        }
    }

    /// One decision at `now`: the member moves to make (possibly none). `settled` is false while
    /// the brokers' inflow may not yet show publisher moves; such a step does not count.
    pub fn step(
        &mut self,
        now: Instant,
        settled: bool,
        brokers: &[BrokerInflow],
        groups: &[GroupMembers],
    ) -> Vec<MemberMove> {
        let burst = self.cfg.max_moves_per_s.max(1.0);
        if let Some(last) = self.last_step {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.cfg.max_moves_per_s).min(burst);
        }
        self.last_step = Some(now);
        let hold = self.cfg.hold;
        self.moved_at
            .retain(|_, t| now.saturating_duration_since(*t) < hold);
        // Groups that left are forgotten.
        self.groups
            .retain(|name, _| groups.iter().any(|g| &g.group == name));
        let mut moves = Vec::new();
        for g in groups.iter().filter(|g| is_shared(&g.group)) {
            let state = self.groups.entry(g.group.clone()).or_default();
            let cooling = state
                .last_round
                .is_some_and(|t| now.saturating_duration_since(t) < self.cfg.cooldown);
            let mut counts: Vec<u32> = (g.on.iter().zip(brokers))
                .map(|(on, b)| if b.live { on.len() as u32 } else { 0 })
                .collect();
            let target = best_split(brokers, counts.iter().sum());
            let (now_max, best_max) = (highest(brokers, &counts), highest(brokers, &target));
            // A live broker without a member that the best split would give one.
            let bare = (0..brokers.len()).any(|b| counts[b] == 0 && target[b] > 0);
            let unbalanced = bare
                || (now_max > best_max * (1.0 + TOLERANCE)
                    && now_max - best_max > self.cfg.member_threshold);
            if !settled || cooling || !unbalanced {
                state.over = 0;
                continue;
            }
            state.over += 1;
            if state.over < self.cfg.hysteresis {
                continue;
            }
            let mut taken: Vec<String> = Vec::new();
            let before = moves.len();
            while self.tokens >= 1.0 {
                let Some(order) = next_move(brokers, g, &counts, &target, |id| {
                    !self.moved_at.contains_key(id) && !taken.iter().any(|t| t == id)
                }) else {
                    break;
                };
                counts[order.from] -= 1;
                counts[order.to] += 1;
                self.tokens -= 1.0;
                taken.push(order.client_id.clone());
                moves.push(order);
            }
            if moves.len() > before {
                state.over = 0;
                state.last_round = Some(now);
            }
        }
        for m in &moves {
            self.moved_at.insert(m.client_id.clone(), now);
        }
        moves
    }
}

/// The next move of group `g` from `counts` towards `target`, if one is allowed.
fn next_move(
    brokers: &[BrokerInflow],
    g: &GroupMembers,
    counts: &[u32],
    target: &[u32],
    movable: impl Fn(&str) -> bool,
) -> Option<MemberMove> {
    let live = |b: usize| brokers[b].live;
    let to = (0..brokers.len())
        .filter(|&b| live(b) && counts[b] < target[b])
        .max_by(|&a, &b| {
            per_member(brokers[a].rate, counts[a])
                .total_cmp(&per_member(brokers[b].rate, counts[b]))
                .then(b.cmp(&a))
        })?;
    let mut donors: Vec<usize> = (0..brokers.len())
        .filter(|&b| live(b) && counts[b] > target[b])
        // Make-before-break: a broker with inflow keeps its last member.
        .filter(|&b| !(brokers[b].rate > 0.0 && counts[b] <= 1))
        .collect();
    // The donor whose remaining members carry least after giving one up.
    donors.sort_by(|&a, &b| {
        per_member(brokers[a].rate, counts[a] - 1)
            .total_cmp(&per_member(brokers[b].rate, counts[b] - 1))
            .then(a.cmp(&b))
    });
    donors.into_iter().find_map(|from| {
        let client_id = g.on[from].iter().find(|id| movable(id))?;
        Some(MemberMove {
            group: g.group.clone(),
            client_id: client_id.clone(),
            from,
            to,
            load: per_member(brokers[from].rate, counts[from]),
        })
    })
}

#[cfg(test)]
mod tests;
