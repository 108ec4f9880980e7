//! Live rebalancing beside the dispatcher: when the brokers' message rates stay unequal, move
//! already-connected clients, each weighed by its own rate.
//!
//! - [`plan`]: which clients to move where (pure: threshold, hysteresis, cool-down, move-rate
//!   bound, no back and forth).
//! - [`members`]: which shared-subscription members to move where, so that each group's members
//!   sit where its messages arrive (pure; make-before-break).
//! - [`rates`]: each client's rate from the best source available (broker-reported, declared in
//!   CONNECT, or the broker's rate split), pure.
//! - [`mover`]: the move, per broker kind (client-id takeover, or the Mosquitto plugin's DISCONNECT
//!   0x9C + Server Reference); [`control`]: the plugin's control topic.
//!
//! The load metric is the broker-side message rate (`msgs_in_per_s` in the agents' reports),
//! whatever metric placement uses: a client's rate adds up across brokers, CPU does not (with
//! rumqttd a broker's CPU depends on how its clients send, not only on how much; README), so a
//! move's effect on a rate gap can be predicted and its effect on a CPU gap cannot.

pub mod control;
pub mod members;
pub mod mover;
pub mod plan;
pub mod rates;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use members::MemberPlanner;
pub use mover::{MoveError, Mover, MoverKind, Outcome};
pub use plan::{Planner, RebalanceConfig};

use super::placer::Placer;
use super::{BrokerEntry, Role};
use crate::proto::RedirectReason;

/// One move made, as sent to the `moves` channel (the runner writes `moves.csv` from these).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MoveRecord {
    /// [`crate::now_ms`] when ordered.
    pub t_ms: u64,
    pub client_id: String,
    pub from: String,
    pub to: String,
    /// The client's rate the choice was made with (msgs/s).
    pub rate_msgs_per_s: f64,
    pub outcome: Outcome,
    /// A publisher, or a member of a shared subscription group.
    pub role: Role,
}

/// Parses `--rebalance threshold=1000,hysteresis=3,cooldown=6s,max-moves-per-s=2,hold=60s`
/// (every key optional; `--rebalance on` or an empty value: all defaults).
pub fn parse_arg(text: &str) -> Result<RebalanceConfig, String> {
    let mut cfg = RebalanceConfig::default();
    for part in text
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty() && *p != "on")
    {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}`: expected KEY=VALUE, e.g. threshold=1000"))?;
        let number = || {
            value
                .parse::<f64>()
                .map_err(|_| format!("{key}: `{value}` is not a number"))
        };
        match key.replace('_', "-").as_str() {
            "threshold" => cfg.threshold = number()?,
            "hysteresis" => {
                cfg.hysteresis = value
                    .parse()
                    .map_err(|_| format!("hysteresis: `{value}` is not a whole number"))?
            }
            "cooldown" => cfg.cooldown = crate::duration::parse(value)?,
            "max-moves-per-s" => cfg.max_moves_per_s = number()?,
            "hold" => cfg.hold = crate::duration::parse(value)?,
            "publishers" => cfg.publishers = on_off(key, value)?,
            "members" => cfg.members = on_off(key, value)?,
            "member-threshold" => cfg.member_threshold = number()?,
            other => {
                return Err(format!(
                    "unknown rebalance key `{other}` (threshold, hysteresis, cooldown, \
                     max-moves-per-s, hold, publishers, members, member-threshold)"
                ));
            }
        }
    }
    cfg.validate()?;
    Ok(cfg)
}

/// The `--rebalance` value [`parse_arg`] reads back as `cfg`.
pub fn to_arg(cfg: &RebalanceConfig) -> String {
    let d = crate::duration::format_exact;
    let on = |b: bool| if b { "on" } else { "off" };
    format!(
        "threshold={},hysteresis={},cooldown={},max-moves-per-s={},hold={},publishers={},\
         members={},member-threshold={}",
        cfg.threshold,
        cfg.hysteresis,
        d(cfg.cooldown),
        cfg.max_moves_per_s,
        d(cfg.hold),
        on(cfg.publishers),
        on(cfg.members),
        cfg.member_threshold
    )
}

fn on_off(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{key}: `{value}` is not `on` or `off`")),
    }
}

/// Everything the rebalancing task needs.
pub struct Rebalancer {
    pub planner: Planner,
    /// `None` when members are not moved (`members=off`).
    pub members: Option<MemberPlanner>,
    pub mover: Mover,
    pub brokers: Vec<BrokerEntry>,
    pub reason: RedirectReason,
    /// One step per agent sample interval.
    pub interval: Duration,
    pub moves: Option<UnboundedSender<MoveRecord>>,
}

impl Rebalancer {
    /// Steps once per interval until `cancel`.
    pub async fn run(mut self, placer: Arc<Placer>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.step(&placer).await;
        }
    }

    async fn step(&mut self, placer: &Placer) {
        let now = Instant::now();
        let (latest, clients) = placer.rebalance_inputs(now);
        let mut brokers = Vec::with_capacity(latest.len());
        for (i, (live, measured)) in latest.into_iter().enumerate() {
            brokers.push(rates::BrokerRates {
                live,
                measured,
                reported: self.mover.rates(i).await,
            });
        }
        let (broker_loads, client_loads, sources) = rates::estimate(&brokers, &clients);
        let orders = if self.planner.config().publishers {
            self.planner.step(now, &broker_loads, &client_loads)
        } else {
            Vec::new()
        };
        // Member moves wait until the brokers' inflow shows the publishers where they are.
        let settled = orders.is_empty() && !self.planner.cooling(now);
        for order in orders {
            let source = client_loads
                .iter()
                .position(|c| c.id == order.client_id)
                .map(|k| sources[k]);
            tracing::info!(client_id = %order.client_id, ?source, "moving a publisher");
            self.make_move(
                placer,
                &order.client_id,
                order.from,
                order.to,
                order.rate,
                Role::Publisher,
            )
            .await;
        }
        if let Some(members) = &mut self.members {
            let (inflows, groups) = placer.member_inputs(now);
            for m in members.step(now, settled, &inflows, &groups) {
                tracing::info!(client_id = %m.client_id, group = %m.group, "moving a member");
                self.make_move(placer, &m.client_id, m.from, m.to, m.load, Role::Subscriber)
                    .await;
            }
        }
    }

    /// Moves one client and records it.
    async fn make_move(
        &self,
        placer: &Placer,
        client_id: &str,
        from: usize,
        to: usize,
        rate: f64,
        role: Role,
    ) {
        // Pin first: a client dropped by the move may be back at the dispatcher at once.
        placer.pin(client_id, to);
        let (from_id, to_id) = (&self.brokers[from].id, &self.brokers[to].id);
        let t_ms = crate::now_ms();
        match (self.mover)
            .move_client(client_id, &self.brokers, from, to, self.reason)
            .await
        {
            Ok(outcome) => {
                tracing::info!(
                    %client_id, from = %from_id, to = %to_id, rate, role = role.as_str(),
                    outcome = outcome.as_str(), "moved"
                );
                if outcome == Outcome::NotConnected {
                    placer.forget(client_id);
                }
                if let Some(tx) = &self.moves {
                    let _ = tx.send(MoveRecord {
                        t_ms,
                        client_id: client_id.to_owned(),
                        from: from_id.clone(),
                        to: to_id.clone(),
                        rate_msgs_per_s: rate,
                        outcome,
                        role,
                    });
                }
            }
            Err(error) => {
                tracing::warn!(%client_id, from = %from_id, to = %to_id, %error, "move failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_written_as_a_flag_reads_back_the_same() {
        let cfg = RebalanceConfig {
            threshold: 412.5,
            hysteresis: 2,
            cooldown: Duration::from_millis(1_250),
            max_moves_per_s: 0.5,
            hold: Duration::from_secs(7),
            publishers: false,
            members: true,
            member_threshold: 33.25,
        };
        assert_eq!(parse_arg(&to_arg(&cfg)).unwrap(), cfg);
        let default = RebalanceConfig::default();
        assert_eq!(parse_arg(&to_arg(&default)).unwrap(), default);
    }

    #[test]
    fn the_flag_parses_keys_and_refuses_unknown_ones() {
        let c =
            parse_arg("threshold=500,cooldown=3s,max-moves-per-s=4,hysteresis=2,hold=30s").unwrap();
        assert_eq!(c.threshold, 500.0);
        assert_eq!(c.cooldown, Duration::from_secs(3));
        assert_eq!(c.max_moves_per_s, 4.0);
        assert_eq!(c.hysteresis, 2);
        assert_eq!(c.hold, Duration::from_secs(30));
        assert!(c.members);
        assert!(!parse_arg("members=off").unwrap().members);
        assert!(parse_arg("members=no").unwrap_err().contains("members"));
        assert!(!parse_arg("publishers=off").unwrap().publishers);
        assert_eq!(
            parse_arg("member-threshold=40").unwrap().member_threshold,
            40.0
        );
        assert!(
            parse_arg("publishers=off,members=off")
                .unwrap_err()
                .contains("neither")
        );
        assert_eq!(parse_arg("on").unwrap(), RebalanceConfig::default());
        assert!(
            parse_arg("gap=3")
                .unwrap_err()
                .contains("unknown rebalance key")
        );
        assert!(parse_arg("threshold=-1").unwrap_err().contains("threshold"));
        assert!(parse_arg("threshold").unwrap_err().contains("KEY=VALUE"));
    }
}
