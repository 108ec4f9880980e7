//! Live moves in the report: `moves.csv` per trial and method in `summary.md`, and the
//! outages that moves caused told apart from the ones faults caused (a move is not a fault).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::records::{MoveRow, OutageRow};
use crate::dispatcher::Role;

/// An outage belongs to a move when it starts this close after the move was ordered (s).
const AFTER_MOVE_S: f64 = 10.0;
const BEFORE_MOVE_S: f64 = 0.5;

/// The client id the runner gives a publisher (`run::method_run`): `t<trial>-<method>-<name>`.
fn client_id(o: &OutageRow) -> String {
    format!("t{}-{}-{}", o.trial, o.method, o.publisher)
}

/// Splits the outages into those a move caused (first outage of the moved publisher starting
/// within the move's span) and the rest (pure).
pub fn split_outages(
    moves: &[MoveRow],
    outages: Vec<OutageRow>,
) -> (Vec<OutageRow>, Vec<OutageRow>) {
    let mut claimed = vec![false; outages.len()];
    for m in moves {
        let best = outages
            .iter()
            .enumerate()
            .filter(|(k, o)| {
                !claimed[*k]
                    && o.trial == m.trial
                    && o.method == m.method
                    && client_id(o) == m.client_id
                    && o.down_s + BEFORE_MOVE_S >= m.t_s
                    && o.down_s <= m.t_s + AFTER_MOVE_S
            })
            .min_by(|a, b| a.1.down_s.total_cmp(&b.1.down_s))
            .map(|(k, _)| k);
        if let Some(k) = best {
            claimed[k] = true;
        }
    }
    let (mut by_move, mut rest) = (Vec::new(), Vec::new());
    for (o, c) in outages.into_iter().zip(claimed) {
        if c { by_move.push(o) } else { rest.push(o) }
    }
    (by_move, rest)
}

/// The `## Moves` section; empty when no move was made.
pub fn render_markdown(moves: &[MoveRow]) -> String {
    if moves.is_empty() {
        return String::new();
    }
    #[derive(Default)]
    struct Per {
        publishers: usize,
        members: usize,
        not_sent: u64,
        most: u64,
        unmatched: usize,
    }
    let mut per: BTreeMap<(u32, &str), Per> = BTreeMap::new();
    for m in moves {
        let e = per.entry((m.trial, m.method.as_str())).or_default();
        if m.role == Role::Subscriber.as_str() {
            e.members += 1;
            continue;
        }
        e.publishers += 1;
        if let Some(n) = m.not_sent {
            e.not_sent += n;
            e.most = e.most.max(n);
        } else {
            e.unmatched += 1;
        }
    }
    let mut md = String::from(
        "\n## Moves\n\nLive rebalancing moved connected publishers and members of shared \
         subscription groups (moves.csv). Messages not sent: what the moved publisher's \
         fixed-rate schedule owed between losing its broker and its next CONNACK (QoS 0 skips \
         them; QoS 1 resends what was not acknowledged). A publisher's move without a following \
         outage of one of the run's publishers (it had already finished) counts as unmatched. A \
         member's losses at its moves are in the Subscribers section.\n\n\
         | trial | method | publisher moves | member moves | messages not sent | most in one move | unmatched |\n\
         |---:|---|---:|---:|---:|---:|---:|\n",
    );
    for ((trial, method), p) in &per {
        let _ = writeln!(
            md,
            "| {trial} | {method} | {} | {} | {} | {} | {} |",
            p.publishers, p.members, p.not_sent, p.most, p.unmatched
        );
    }
    md.push_str(
        "\n| trial | method | t (s) | client | role | from | to | rate (msg/s) | not sent |\n\
         |---:|---|---:|---|---|---|---|---:|---:|\n",
    );
    for m in moves {
        let not_sent = m.not_sent.map_or("–".to_owned(), |n| n.to_string());
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} | {} | {} | {} | {} | {:.0} | {} |",
            m.trial,
            m.method,
            m.t_s,
            m.client_id,
            m.role,
            m.from,
            m.to,
            m.rate_msgs_per_s,
            not_sent
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mv(t_s: f64, client: &str) -> MoveRow {
        MoveRow {
            trial: 1,
            method: "rebalance".into(),
            t_s,
            client_id: client.into(),
            from: "b2".into(),
            to: "b1".into(),
            rate_msgs_per_s: 2000.0,
            not_sent: Some(3),
            role: "publisher".into(),
        }
    }

    fn outage(publisher: &str, down_s: f64) -> OutageRow {
        OutageRow {
            trial: 1,
            method: "rebalance".into(),
            publisher: publisher.into(),
            broker: "b2".into(),
            down_s,
            up_s: Some(down_s + 0.01),
            to_broker: Some("b1".into()),
            downtime_s: 0.01,
            not_sent: 3,
        }
    }

    #[test]
    fn outages_after_a_move_are_the_moves_and_the_others_stay_faults() {
        let moves = [mv(50.0, "t1-rebalance-light-3")];
        let outages = vec![
            outage("light-3", 20.0),  // a fault before
            outage("light-3", 50.02), // the move
            outage("light-4", 50.02), // someone else at the same time: a fault
        ];
        let (by_move, rest) = split_outages(&moves, outages);
        assert_eq!(by_move.len(), 1);
        assert_eq!(by_move[0].down_s, 50.02);
        assert_eq!(rest.len(), 2);
    }

    #[test]
    fn the_section_counts_moves_and_messages_per_trial() {
        let mut second = mv(51.0, "t1-rebalance-light-4");
        second.not_sent = None;
        let mut member = mv(52.0, "t1-rebalance-sub-backend-3");
        (member.role, member.not_sent) = ("subscriber".into(), None);
        let md = render_markdown(&[mv(50.0, "t1-rebalance-light-3"), second, member]);
        assert!(md.contains("| 1 | rebalance | 2 | 1 | 3 | 3 | 1 |"), "{md}");
        assert!(md.contains(
            "| 1 | rebalance | 50.00 | t1-rebalance-light-3 | publisher | b2 | b1 | 2000 | 3 |"
        ));
        assert!(
            md.contains("| t1-rebalance-sub-backend-3 | subscriber |"),
            "{md}"
        );
        assert!(render_markdown(&[]).is_empty());
    }
}
