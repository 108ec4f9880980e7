//! A scenario's `subscribers:`: consumers connected and subscribed before the first publisher.

use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::Checker;
use crate::InputError;
use crate::loadgen::Profile;
use crate::loadgen::subscription::{MemberPlacement, SubscriberSpec, WorkMode};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSubscriber {
    name: Spanned<String>,
    #[serde(default)]
    count: Option<Spanned<usize>>,
    topic: Spanned<String>,
    #[serde(default)]
    qos: Option<Spanned<u8>>,
    /// `each-broker` (the default) or `method`; or use `broker:`.
    #[serde(default)]
    placement: Option<Spanned<String>>,
    #[serde(default)]
    broker: Option<Spanned<String>>,
    /// Per-message work in µs; not scaled by `time_scale` (a property of the consumer).
    #[serde(default)]
    work_us: Option<Spanned<u64>>,
    #[serde(default)]
    work: Option<Spanned<WorkMode>>,
}

impl Checker<'_> {
    pub(super) fn subscribers(
        &self,
        raw: &[Spanned<RawSubscriber>],
        brokers: usize,
        profiles: &[Profile],
    ) -> Result<Vec<SubscriberSpec>, InputError> {
        let mut specs: Vec<SubscriberSpec> = Vec::new();
        for entry in raw {
            let s = &entry.value;
            if specs.iter().any(|other| other.name == s.name.value) {
                return Err(self.at(
                    &s.name,
                    format!("duplicate subscriber name `{}`", s.name.value),
                ));
            }
            let placement = match (&s.placement, &s.broker) {
                (Some(p), Some(_)) => {
                    return Err(self.at(p, "give `placement` or `broker: ID`, not both"));
                }
                (Some(p), None) if p.value == "each-broker" => MemberPlacement::EachBroker,
                (Some(p), None) if p.value == "method" => MemberPlacement::Method,
                (Some(p), None) => {
                    return Err(self.at(
                        p,
                        format!(
                            "placement `{}`: write `each-broker` or `method` (or `broker: b2`)",
                            p.value
                        ),
                    ));
                }
                (None, Some(b)) => {
                    let known = (1..=brokers).any(|i| b.value == format!("b{i}"));
                    if !known {
                        return Err(self.at(
                            b,
                            format!("broker `{}`: brokers are b1..b{brokers}", b.value),
                        ));
                    }
                    MemberPlacement::Broker(b.value.clone())
                }
                (None, None) => MemberPlacement::EachBroker,
            };
            let spec = SubscriberSpec {
                name: s.name.value.clone(),
                count: s.count.as_ref().map_or(1, |c| c.value),
                topic: s.topic.value.clone(),
                qos: s.qos.as_ref().map_or(0, |q| q.value),
                placement,
                work: Duration::from_micros(s.work_us.as_ref().map_or(0, |w| w.value)),
                work_mode: s.work.as_ref().map_or(WorkMode::default(), |w| w.value),
            };
            spec.validate().map_err(|e| match &e {
                e if e.contains("topic") => self.at(&s.topic, e),
                e if e.contains("count") => match &s.count {
                    Some(c) => self.at(c, e),
                    None => self.at(&s.name, e),
                },
                e if e.contains("qos") => match &s.qos {
                    Some(q) => self.at(q, e),
                    None => self.at(&s.name, e),
                },
                e if e.contains("work_us") => match &s.work_us {
                    Some(w) => self.at(w, e),
                    None => self.at(&s.name, e),
                },
                e => self.at(&s.name, e),
            })?;
            if spec.group().is_none() && spec.filter().starts_with('$') {
                return Err(self.at(&s.topic, "topics starting with `$` are the broker's own"));
            }
            specs.push(spec);
        }
        if let Some(first) = raw.first() {
            // Subscribers tell publishers apart by topic.
            let topics: Vec<(String, String)> = profiles
                .iter()
                .flat_map(|p| {
                    (0..p.count).map(move |k| {
                        let name = format!("{}-{k}", p.name);
                        (p.topic_for(&name), name)
                    })
                })
                .map(|(topic, name)| (name, topic))
                .collect();
            crate::loadgen::streams::publishers_by_topic(&topics)
                .map_err(|e| self.at(&first.value.topic, e))?;
        }
        Ok(specs)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Scenario, parse};
    use crate::InputError;
    use crate::dispatcher::SubscriberPolicy;
    use crate::loadgen::subscription::MemberPlacement;

    /// A scenario with one subscriber entry (`entry`, keys inside its braces) and a dns-rr and
    /// a dispatcher method (`extra_dns`, `extra_disp` appended inside their braces).
    fn scenario(entry: &str, extra_dns: &str, extra_disp: &str) -> Result<Scenario, InputError> {
        let yaml = format!(
            "name: t\nbrokers: {{ kind: embedded, count: 2 }}\n\
             publishers:\n  - {{ name: p, count: 2, rate: 10, payload_bytes: 16, duration: 5s }}\n\
             subscribers:\n  - {{ name: g, count: 4, topic: \"$share/g/load/#\"{entry} }}\n\
             arrival: {{ order: random, interval: 1s }}\n\
             methods:\n  - {{ name: rr, assign: dns-rr{extra_dns} }}\n  \
             - {{ name: d, assign: dispatcher, policy: least-cpu{extra_disp} }}\n"
        );
        parse(&yaml, "t.yaml")
    }

    #[test]
    fn placement_method_gives_dispatcher_methods_a_subscriber_policy() {
        let s = scenario(", placement: method", "", "").unwrap();
        assert_eq!(s.subscribers[0].placement, MemberPlacement::Method);
        assert_eq!(
            s.methods[0].subscriber_policy, None,
            "dns-rr has no dispatcher"
        );
        assert_eq!(
            s.methods[1].subscriber_policy,
            Some(SubscriberPolicy::Inflow),
            "the default"
        );
        let s = scenario(
            ", placement: method",
            "",
            ", subscriber_policy: round-robin",
        )
        .unwrap();
        assert_eq!(
            s.methods[1].subscriber_policy,
            Some(SubscriberPolicy::RoundRobin)
        );
        // Without a `placement: method` entry no member goes through the dispatcher.
        let s = scenario("", "", "").unwrap();
        assert_eq!(s.subscribers[0].placement, MemberPlacement::EachBroker);
        assert_eq!(s.methods[1].subscriber_policy, None);
    }

    #[test]
    fn a_subscriber_policy_without_effect_is_an_error_at_its_place() {
        let e = scenario(", placement: method", ", subscriber_policy: inflow", "").unwrap_err();
        assert!(e.0.starts_with("t.yaml:9:"), "{}", e.0);
        assert!(e.0.contains("dns-rr has no dispatcher"), "{}", e.0);
        let e = scenario("", "", ", subscriber_policy: inflow").unwrap_err();
        assert!(e.0.starts_with("t.yaml:10:"), "{}", e.0);
        assert!(e.0.contains("no subscribers entry"), "{}", e.0);
        let e = scenario(", placement: method", "", ", subscriber_policy: fastest").unwrap_err();
        assert!(e.0.starts_with("t.yaml:10:"), "{}", e.0);
        let e = scenario(", placement: nearest", "", "").unwrap_err();
        assert!(e.0.starts_with("t.yaml:6:"), "{}", e.0);
        assert!(e.0.contains("`each-broker` or `method`"), "{}", e.0);
        let e = scenario(", placement: method, broker: b1", "", "").unwrap_err();
        assert!(e.0.contains("not both"), "{}", e.0);
    }
}
