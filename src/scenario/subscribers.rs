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
    /// `each-broker` (the default); or use `broker:`.
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
                    return Err(
                        self.at(p, "give `placement: each-broker` or `broker: ID`, not both")
                    );
                }
                (Some(p), None) if p.value == "each-broker" => MemberPlacement::EachBroker,
                (Some(p), None) => {
                    return Err(self.at(
                        p,
                        format!(
                            "placement `{}`: write `each-broker` (or `broker: b2`)",
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
