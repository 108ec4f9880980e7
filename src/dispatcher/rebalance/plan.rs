//! The rebalancer's choice, pure: given each broker's load and each client's rate, which clients
//! to move where, so that the gap between the busiest and the idlest broker shrinks most.
//!
//! Rules, in the order [`Planner::step`] applies them:
//! - **Threshold and hysteresis**: nothing moves until the gap (max − min over live brokers) has
//!   stayed above `threshold` for `hysteresis` consecutive steps (one step per load sample).
//! - **Cool-down**: after a round of moves, no step counts until `cooldown` has passed (the
//!   samples must first show the moves; the broker-side rate needs two of them).
//! - **Greedy choice, weighted by rate**: each move takes, from the busiest broker to the idlest,
//!   the client whose rate `r` brings the pair's gap `g` closest to zero (`|g − 2r|`), and only if
//!   that shrinks the gap by at least half the threshold. Loads are updated with the estimate and
//!   the next move is chosen the same way, until the gap is under the threshold.
//! - **Bounded move rate**: a token bucket of `max_moves_per_s` (burst: one second's worth, at
//!   least one move).
//! - **No back and forth**: a moved client is held for `hold`, and never goes back to a broker it
//!   was moved away from.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// The rebalancer's knobs (scenario key `rebalance:`, dispatcher flag `--rebalance`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RebalanceConfig {
    /// Gap (max − min, msgs/s) above which brokers count as unbalanced.
    pub threshold: f64,
    /// Consecutive samples the gap must stay above the threshold before a move.
    pub hysteresis: u32,
    /// Quiet time after a round of moves.
    #[serde(serialize_with = "crate::duration::serialize")]
    pub cooldown: Duration,
    /// Moves per second at most (token bucket; burst one second's worth, at least 1).
    pub max_moves_per_s: f64,
    /// A moved client is not moved again for this long.
    #[serde(serialize_with = "crate::duration::serialize")]
    pub hold: Duration,
    /// Move publishers to close the brokers' rate gap.
    pub publishers: bool,
    /// Move shared-subscription members to where their group's messages arrive
    /// ([`super::members`]).
    pub members: bool,
    /// msgs/s by which a group's highest per-member load must exceed its best split's before a
    /// member moves.
    pub member_threshold: f64,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        Self {
            threshold: 1000.0,
            hysteresis: 3,
            cooldown: Duration::from_secs(6),
            max_moves_per_s: 2.0,
            hold: Duration::from_secs(60),
            publishers: true,
            members: true,
            member_threshold: 250.0,
        }
    }
}

impl RebalanceConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            return Err(format!(
                "rebalance threshold must be above 0 msgs/s, got {}",
                self.threshold
            ));
        }
        if self.hysteresis == 0 {
            return Err("rebalance hysteresis must be at least 1 sample".into());
        }
        if !(self.member_threshold.is_finite() && self.member_threshold >= 0.0) {
            return Err(format!(
                "rebalance member_threshold must be 0 msgs/s or more, got {}",
                self.member_threshold
            ));
        }
        if !(self.publishers || self.members) {
            return Err("rebalance moves neither publishers nor members: turn one on".into());
        }
        if !(self.max_moves_per_s.is_finite() && self.max_moves_per_s > 0.0) {
            return Err(format!(
                "rebalance max_moves_per_s must be above 0, got {}",
                self.max_moves_per_s
            ));
        }
        Ok(())
    }

    fn burst(&self) -> f64 {
        self.max_moves_per_s.max(1.0)
    }
}

/// One broker as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BrokerLoad {
    pub live: bool,
    /// msgs/s.
    pub load: f64,
}

/// One connected client: where it is and what it brings (msgs/s, measured or estimated).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientLoad {
    pub id: String,
    pub broker: usize,
    pub rate: f64,
}

/// One chosen move.
#[derive(Debug, Clone, PartialEq)]
pub struct MoveOrder {
    pub client_id: String,
    pub from: usize,
    pub to: usize,
    pub rate: f64,
}

#[derive(Debug, Clone)]
struct History {
    moved_at: Instant,
    left: Vec<usize>,
}

/// The rebalancer's memory between steps.
#[derive(Debug)]
pub struct Planner {
    cfg: RebalanceConfig,
    over: u32,
    last_round: Option<Instant>,
    tokens: f64,
    last_step: Option<Instant>,
    history: HashMap<String, History>,
}

impl Planner {
    pub fn new(cfg: RebalanceConfig) -> Self {
        let tokens = cfg.burst();
        Self {
            cfg,
            over: 0,
            last_round: None,
            tokens,
            last_step: None,
            history: HashMap::new(),
        }
    }

    pub fn config(&self) -> &RebalanceConfig {
        &self.cfg
    }

    /// Whether the last round of moves is within its cool-down at `now`.
    pub fn cooling(&self, now: Instant) -> bool {
        self.last_round
            .is_some_and(|t| now.saturating_duration_since(t) < self.cfg.cooldown)
    }

    /// One decision at `now`, after a new load sample: the moves to make (possibly none).
    pub fn step(
        &mut self,
        now: Instant,
        brokers: &[BrokerLoad],
        clients: &[ClientLoad],
    ) -> Vec<MoveOrder> {
        if let Some(last) = self.last_step {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.cfg.max_moves_per_s).min(self.cfg.burst());
        }
        self.last_step = Some(now);
        let Some((_, _, gap)) = extremes(brokers, &loads(brokers)) else {
            self.over = 0;
            return Vec::new();
        };
        if gap <= self.cfg.threshold {
            self.over = 0;
            return Vec::new();
        }
        if self.cooling(now) {
            // These samples may not show the last round yet: they do not count.
            self.over = 0;
            return Vec::new();
        }
        self.over += 1;
        if self.over < self.cfg.hysteresis {
            return Vec::new();
        }
        let moves = self.choose(now, brokers, clients);
        if !moves.is_empty() {
            self.over = 0;
            self.last_round = Some(now);
            self.tokens -= moves.len() as f64;
            for m in &moves {
                let h = self.history.entry(m.client_id.clone()).or_insert(History {
                    moved_at: now,
                    left: Vec::new(),
                });
                h.moved_at = now;
                h.left.push(m.from);
            }
        }
        moves
    }

    fn may_move(&self, now: Instant, client: &str, to: usize) -> bool {
        match self.history.get(client) {
            None => true,
            Some(h) => {
                now.saturating_duration_since(h.moved_at) >= self.cfg.hold && !h.left.contains(&to)
            }
        }
    }

    /// Greedy moves from the busiest to the idlest broker while they shrink the gap enough.
    fn choose(
        &self,
        now: Instant,
        brokers: &[BrokerLoad],
        clients: &[ClientLoad],
    ) -> Vec<MoveOrder> {
        let mut loads = loads(brokers);
        let mut taken = vec![false; clients.len()];
        let mut moves = Vec::new();
        let min_gain = self.cfg.threshold / 2.0;
        while (moves.len() as f64) + 1.0 <= self.tokens {
            let Some((donor, recipient, gap)) = extremes(brokers, &loads) else {
                break;
            };
            if gap <= self.cfg.threshold {
                break;
            }
            let best = clients
                .iter()
                .enumerate()
                .filter(|(k, c)| {
                    !taken[*k]
                        && c.broker == donor
                        && c.rate > 0.0
                        && self.may_move(now, &c.id, recipient)
                })
                .map(|(k, c)| (k, (gap - 2.0 * c.rate).abs()))
                .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            let Some((k, new_gap)) = best else { break };
            if gap - new_gap < min_gain {
                break;
            }
            let c = &clients[k];
            taken[k] = true;
            loads[donor] -= c.rate;
            loads[recipient] += c.rate;
            moves.push(MoveOrder {
                client_id: c.id.clone(),
                from: donor,
                to: recipient,
                rate: c.rate,
            });
        }
        moves
    }
}

fn loads(brokers: &[BrokerLoad]) -> Vec<f64> {
    brokers.iter().map(|b| b.load).collect()
}

/// (busiest, idlest, gap) over live brokers; `None` with fewer than two live. Ties: lowest index.
fn extremes(brokers: &[BrokerLoad], loads: &[f64]) -> Option<(usize, usize, f64)> {
    let live: Vec<usize> = (0..brokers.len()).filter(|&i| brokers[i].live).collect();
    if live.len() < 2 {
        return None;
    }
    let max = *live
        .iter()
        .max_by(|&&a, &&b| loads[a].total_cmp(&loads[b]).then(b.cmp(&a)))?;
    let min = *live
        .iter()
        .min_by(|&&a, &&b| loads[a].total_cmp(&loads[b]).then(a.cmp(&b)))?;
    Some((max, min, loads[max] - loads[min]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);

    fn cfg() -> RebalanceConfig {
        RebalanceConfig {
            threshold: 1000.0,
            hysteresis: 3,
            cooldown: Duration::from_secs(6),
            max_moves_per_s: 2.0,
            hold: Duration::from_secs(60),
            publishers: true,
            members: true,
            member_threshold: 250.0,
        }
    }

    /// The paper's workload with the heavy publisher last under least-cpu: 5 lights on b1,
    /// 4 lights and the heavy on b2.
    fn heavy_last() -> Vec<ClientLoad> {
        let mut clients: Vec<ClientLoad> = (0..9)
            .map(|k| ClientLoad {
                id: format!("light-{k}"),
                broker: k % 2,
                rate: 2000.0,
            })
            .collect();
        clients.push(ClientLoad {
            id: "heavy".into(),
            broker: 1,
            rate: 10_000.0,
        });
        clients
    }

    fn brokers_of(clients: &[ClientLoad], n: usize) -> Vec<BrokerLoad> {
        let mut b = vec![
            BrokerLoad {
                live: true,
                load: 0.0
            };
            n
        ];
        for c in clients {
            b[c.broker].load += c.rate;
        }
        b
    }

    fn apply(clients: &mut [ClientLoad], moves: &[MoveOrder]) {
        for m in moves {
            let c = clients.iter_mut().find(|c| c.id == m.client_id).unwrap();
            assert_eq!(c.broker, m.from);
            c.broker = m.to;
        }
    }

    #[test]
    fn heavy_last_is_balanced_by_two_light_moves_after_the_hysteresis() {
        let mut clients = heavy_last();
        let mut p = Planner::new(cfg());
        let t0 = Instant::now();
        let b = brokers_of(&clients, 2);
        assert_eq!((b[0].load, b[1].load), (10_000.0, 18_000.0));
        assert!(p.step(t0, &b, &clients).is_empty());
        assert!(p.step(t0 + S, &b, &clients).is_empty());
        let moves = p.step(t0 + 2 * S, &b, &clients);
        assert_eq!(moves.len(), 2, "{moves:?}");
        assert!(
            moves
                .iter()
                .all(|m| m.from == 1 && m.to == 0 && m.rate == 2000.0)
        );
        apply(&mut clients, &moves);
        let b = brokers_of(&clients, 2);
        assert_eq!(b[0].load, b[1].load);
        for k in 3..30 {
            assert!(p.step(t0 + k * S, &b, &clients).is_empty());
        }
    }

    #[test]
    fn a_balanced_or_briefly_unbalanced_load_never_moves() {
        let clients = heavy_last();
        let mut p = Planner::new(cfg());
        let t0 = Instant::now();
        let balanced = [
            BrokerLoad {
                live: true,
                load: 14_000.0,
            },
            BrokerLoad {
                live: true,
                load: 14_900.0,
            },
        ];
        let spike = [
            BrokerLoad {
                live: true,
                load: 10_000.0,
            },
            BrokerLoad {
                live: true,
                load: 18_000.0,
            },
        ];
        for k in 0..100u32 {
            // A spike of two samples in every five: never three in a row.
            let b = if k % 5 < 2 { &spike } else { &balanced };
            assert!(p.step(t0 + k * S, b, &clients).is_empty(), "step {k}");
        }
    }

    #[test]
    fn the_move_rate_is_bounded_and_the_cooldown_holds() {
        let mut c = cfg();
        c.max_moves_per_s = 1.0;
        c.hysteresis = 1;
        let clients: Vec<ClientLoad> = (0..20)
            .map(|k| ClientLoad {
                id: format!("c{k}"),
                broker: 0,
                rate: 400.0,
            })
            .collect();
        let b = brokers_of(&clients, 2);
        let mut p = Planner::new(c);
        let t0 = Instant::now();
        assert_eq!(p.step(t0, &b, &clients).len(), 1, "burst of one");
        for k in 1..6 {
            assert!(p.step(t0 + k * S, &b, &clients).is_empty(), "cooling down");
        }
        assert_eq!(p.step(t0 + 6 * S, &b, &clients).len(), 1);
    }

    #[test]
    fn a_move_that_would_not_shrink_the_gap_enough_is_not_made() {
        let clients = vec![
            ClientLoad {
                id: "a".into(),
                broker: 0,
                rate: 2000.0,
            },
            ClientLoad {
                id: "b".into(),
                broker: 0,
                rate: 2000.0,
            },
        ];
        let b = [
            BrokerLoad {
                live: true,
                load: 4000.0,
            },
            BrokerLoad {
                live: true,
                load: 1900.0,
            },
        ];
        let mut c = cfg();
        c.hysteresis = 1;
        // gap 2100: moving a 2000 client leaves 1900, a gain of 200 < 500.
        assert!(
            Planner::new(c)
                .step(Instant::now(), &b, &clients)
                .is_empty()
        );
    }

    #[test]
    fn down_brokers_neither_give_nor_take() {
        let clients = heavy_last();
        let mut b = brokers_of(&clients, 3);
        b[2].live = false; // idle, but down
        let mut c = cfg();
        c.hysteresis = 1;
        let moves = Planner::new(c).step(Instant::now(), &b, &clients);
        assert!(moves.iter().all(|m| m.to != 2 && m.from != 2), "{moves:?}");
        assert!(!moves.is_empty());
    }

    #[test]
    fn config_validation_names_the_key() {
        let mut c = cfg();
        c.threshold = 0.0;
        assert!(c.validate().unwrap_err().contains("threshold"));
        let mut c = cfg();
        c.hysteresis = 0;
        assert!(c.validate().unwrap_err().contains("hysteresis"));
        let mut c = cfg();
        c.max_moves_per_s = f64::NAN;
        assert!(c.validate().unwrap_err().contains("max_moves_per_s"));
    }

    proptest! {
        /// Whatever the loads and rates, with the brokers' loads following the moves (each
        /// measured with noise), no client ever returns to a broker it was moved away from, the
        /// move rate stays bounded, and the process stops moving.
        #[test]
        fn no_oscillation(
            rates in proptest::collection::vec(100.0f64..12_000.0, 2..16),
            placement in proptest::collection::vec(0usize..3, 16),
            noise in proptest::collection::vec(-400.0f64..400.0, 300),
        ) {
            let mut clients: Vec<ClientLoad> = rates.iter().enumerate().map(|(k, &rate)| ClientLoad {
                id: format!("c{k}"), broker: placement[k], rate,
            }).collect();
            let mut c = cfg();
            c.hysteresis = 2;
            let mut p = Planner::new(c.clone());
            let t0 = Instant::now();
            let mut left: HashMap<String, Vec<usize>> = HashMap::new();
            let mut total = 0usize;
            for (k, n) in noise.iter().enumerate() {
                let mut b = brokers_of(&clients, 3);
                b[k % 3].load = (b[k % 3].load + n).max(0.0);
                let moves = p.step(t0 + S * k as u32, &b, &clients);
                prop_assert!(moves.len() as f64 <= c.burst());
                total += moves.len();
                apply(&mut clients, &moves);
                for m in &moves {
                    let l = left.entry(m.client_id.clone()).or_default();
                    prop_assert!(!l.contains(&m.to), "{} back to {}", m.client_id, m.to);
                    l.push(m.from);
                }
            }
            // A client can leave at most 2 of 3 brokers: it can never enter one it left.
            prop_assert!(total <= clients.len() * 2, "{total} moves");
        }
    }
}
