//! Delivery per publisher stream: what a delivery unit should have received, against what its
//! sequence numbers say it did (pure).
//!
//! The brokers are not clustered: a message reaches only subscribers on the broker it was
//! published to. So a shared group should receive every message of every matching publisher
//! once (a broker with none of its members drops them: lost), and a plain subscriber every
//! matching message its own broker received.

use std::collections::HashMap;

use super::subscriber::SubscribersSummary;
use super::subscription::SubscriberSpec;

/// One row of `receipts.csv`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamRow {
    /// The `subscribers` entry.
    pub subscriber: String,
    /// The shared group's entry name, or the plain member's name.
    pub unit: String,
    pub publisher: String,
    /// Messages the publisher wrote to the brokers this unit should hear from.
    pub expected: u64,
    /// Distinct sequence numbers received.
    pub received: u64,
    /// `expected − received` (never below 0).
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
}

/// Messages each publisher wrote to each broker: `(publisher, broker) → count`.
pub type SentByBroker = HashMap<(String, String), u64>;

/// One row per delivery unit and matching publisher (`publishers`: `(name, topic)`), in the
/// order of `specs`, then members, then publishers.
pub fn stream_rows(
    specs: &[SubscriberSpec],
    summary: &SubscribersSummary,
    publishers: &[(String, String)],
    sent: &SentByBroker,
) -> Vec<StreamRow> {
    let sent_to = |publisher: &str, broker: Option<&str>| -> u64 {
        sent.iter()
            .filter(|((p, b), _)| p == publisher && broker.is_none_or(|want| want == b))
            .map(|(_, n)| n)
            .sum()
    };
    let mut rows = Vec::new();
    for spec in specs {
        // (unit, the broker it hears from: None = every broker, as a group)
        let units: Vec<(String, Option<String>)> = if spec.group().is_some() {
            vec![(spec.name.clone(), None)]
        } else {
            summary
                .members
                .iter()
                .filter(|m| m.entry == spec.name)
                .map(|m| (m.member.clone(), Some(m.broker.clone())))
                .collect()
        };
        for (unit, broker) in units {
            for (publisher, _) in publishers.iter().filter(|(_, t)| spec.matches(t)) {
                let stats = summary
                    .streams
                    .iter()
                    .find(|s| s.entry == spec.name && s.unit == unit && &s.publisher == publisher)
                    .map(|s| s.stats)
                    .unwrap_or_default();
                let expected = sent_to(publisher, broker.as_deref());
                rows.push(StreamRow {
                    subscriber: spec.name.clone(),
                    unit: unit.clone(),
                    publisher: publisher.clone(),
                    expected,
                    received: stats.distinct,
                    lost: expected.saturating_sub(stats.distinct),
                    duplicates: stats.duplicates,
                    out_of_order: stats.out_of_order,
                });
            }
        }
    }
    rows
}

/// Publisher topic → publisher; two publishers on one topic cannot be told apart.
pub fn publishers_by_topic(
    publishers: &[(String, String)],
) -> Result<HashMap<String, String>, String> {
    let mut map = HashMap::new();
    for (name, topic) in publishers {
        if let Some(other) = map.insert(topic.clone(), name.clone()) {
            return Err(format!(
                "publishers `{other}` and `{name}` both publish to `{topic}`: subscribers tell \
                 publishers apart by topic, so give each its own (a topic with `{{publisher}}`)"
            ));
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::super::receipts::{SeqStats, latency_histogram};
    use super::super::subscriber::{MemberSummary, StreamSummary};
    use super::*;

    fn member(entry: &str, member: &str, broker: &str) -> MemberSummary {
        MemberSummary {
            member: member.into(),
            entry: entry.into(),
            broker: broker.into(),
            received: 0,
            foreign: 0,
            latency_us: latency_histogram(),
            reconnects: 0,
            moves: 0,
        }
    }

    fn stream(entry: &str, unit: &str, publisher: &str, distinct: u64) -> StreamSummary {
        StreamSummary {
            entry: entry.into(),
            unit: unit.into(),
            publisher: publisher.into(),
            stats: SeqStats {
                distinct,
                ..SeqStats::default()
            },
        }
    }

    #[test]
    fn a_group_expects_everything_and_a_plain_member_its_brokers_share() {
        let group = SubscriberSpec::parse_spec("name=g,count=2,topic=$share/g/load/#").unwrap();
        let plain = SubscriberSpec::parse_spec("name=p,count=2,topic=load/a").unwrap();
        let summary = SubscribersSummary {
            members: vec![
                member("g", "g-0", "b1"),
                member("g", "g-1", "b2"),
                member("p", "p-0", "b1"),
                member("p", "p-1", "b2"),
            ],
            streams: vec![
                stream("g", "g", "a", 100),
                stream("g", "g", "b", 48),
                stream("p", "p-0", "a", 60),
            ],
        };
        let publishers = vec![
            ("a".to_owned(), "load/a".to_owned()),
            ("b".to_owned(), "load/b".to_owned()),
        ];
        let sent: SentByBroker = [
            (("a".into(), "b1".into()), 60),
            (("a".into(), "b2".into()), 40),
            (("b".into(), "b2".into()), 50),
        ]
        .into();
        let rows = stream_rows(&[group, plain], &summary, &publishers, &sent);
        let got: Vec<(&str, &str, u64, u64, u64)> = rows
            .iter()
            .map(|r| {
                (
                    r.unit.as_str(),
                    r.publisher.as_str(),
                    r.expected,
                    r.received,
                    r.lost,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("g", "a", 100, 100, 0),
                ("g", "b", 50, 48, 2),
                ("p-0", "a", 60, 60, 0),
                ("p-1", "a", 40, 0, 40),
            ]
        );
    }
}
