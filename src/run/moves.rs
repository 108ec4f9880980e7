//! `moves.csv` rows of one method run: each move the rebalancer made, joined with the outage of
//! the moved publisher that followed it (for the messages it did not send), pure.

use crate::dispatcher::Role;
use crate::dispatcher::rebalance::MoveRecord;
use crate::report::{MoveRow, OutageRow};

/// An outage that starts this long before the move's record still belongs to it (the
/// publisher's clock and the dispatcher's are the same, but the two stamps are taken apart).
const SLACK_S: f64 = 0.5;

/// One row per move: the publisher is the one whose client id is `prefix + name`; its first
/// outage starting at or after the move (less [`SLACK_S`]), not already claimed by an earlier
/// move, gives `not_sent`.
pub fn rows(
    trial: u32,
    method: &str,
    t0_ms: u64,
    prefix: &str,
    moves: &[MoveRecord],
    outages: &[OutageRow],
) -> Vec<MoveRow> {
    let mut claimed = vec![false; outages.len()];
    moves
        .iter()
        .map(|m| {
            let t_s = m.t_ms.saturating_sub(t0_ms) as f64 / 1000.0;
            let publisher = m.client_id.strip_prefix(prefix);
            let outage = outages
                .iter()
                .enumerate()
                // A member owes no messages: only a publisher's outage is its move's.
                .filter(|(k, o)| {
                    m.role == Role::Publisher
                        && !claimed[*k]
                        && Some(o.publisher.as_str()) == publisher
                        && o.down_s + SLACK_S >= t_s
                })
                .min_by(|a, b| a.1.down_s.total_cmp(&b.1.down_s))
                .map(|(k, o)| (k, o.not_sent));
            if let Some((k, _)) = outage {
                claimed[k] = true;
            }
            MoveRow {
                trial,
                method: method.to_owned(),
                t_s,
                client_id: m.client_id.clone(),
                from: m.from.clone(),
                to: m.to.clone(),
                rate_msgs_per_s: m.rate_msgs_per_s,
                not_sent: outage.map(|(_, n)| n),
                role: m.role.as_str().to_owned(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatcher::rebalance::Outcome;

    fn outage(publisher: &str, down_s: f64, not_sent: u64) -> OutageRow {
        OutageRow {
            trial: 1,
            method: "rebalance".into(),
            publisher: publisher.into(),
            broker: "b2".into(),
            down_s,
            up_s: Some(down_s + 0.01),
            to_broker: Some("b1".into()),
            downtime_s: 0.01,
            not_sent,
        }
    }

    #[test]
    fn each_move_takes_the_next_outage_of_its_publisher() {
        let mv = |t_ms, id: &str| MoveRecord {
            t_ms,
            client_id: id.into(),
            from: "b2".into(),
            to: "b1".into(),
            rate_msgs_per_s: 2000.0,
            outcome: Outcome::Takeover,
            role: Role::Publisher,
        };
        let moves = [
            mv(51_000, "t1-rebalance-light-3"),
            mv(51_000, "t1-rebalance-light-4"),
            mv(80_000, "t1-rebalance-light-3"),
            mv(90_000, "someone-else"),
        ];
        let outages = [
            outage("light-3", 10.0, 99), // before the move: a broker fault, not the move
            outage("light-3", 41.02, 7),
            outage("light-4", 41.01, 5),
        ];
        let rows = rows(1, "rebalance", 10_000, "t1-rebalance-", &moves, &outages);
        let not_sent: Vec<Option<u64>> = rows.iter().map(|r| r.not_sent).collect();
        assert_eq!(not_sent, [Some(7), Some(5), None, None]);
        assert_eq!(rows[0].t_s, 41.0);
        assert_eq!((rows[0].from.as_str(), rows[0].to.as_str()), ("b2", "b1"));
    }
}
