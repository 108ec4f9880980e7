//! Subscriber kinds: how many consumers of one topic filter, where they sit, how fast they are.
//!
//! The same keys serve the scenario's `subscribers` entries (YAML) and `mqdispatch load
//! --subscriber name=backend,count=2,topic=$share/g/load/#[,qos=0][,broker=b2][,work_us=50]
//! [,work=busy|idle]`.
//!
//! A filter `$share/GROUP/FILTER` makes the entry's members one shared-subscription group: each
//! message reaches one member *on the broker it was published to* (the brokers are not
//! clustered). A plain filter gives every member its own copy of what its broker receives.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bound on one entry's members: each member is a thread of the harness.
const MAX_MEMBERS: usize = 256;
/// Upper bound on the per-message work: a typo (50 s) would stall a run.
const MAX_WORK: Duration = Duration::from_millis(100);

/// Where an entry's members connect.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemberPlacement {
    /// Member `k` on broker `k mod n`: every broker gets its share of the members.
    #[default]
    EachBroker,
    /// Every member on this broker (`b1`, `b2`, ... in the order brokers are listed).
    Broker(String),
    /// Where the scenario's method puts them: `dns-rr` as [`MemberPlacement::EachBroker`], a
    /// dispatcher method through the dispatcher (its subscriber policy). Scenarios only: a
    /// runner resolves it before connecting.
    Method,
}

/// How a member spends its per-message work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkMode {
    /// Spin on the CPU for `work_us` per message (a compute-bound backend).
    #[default]
    Busy,
    /// Stop reading for `work_us` per message without using the CPU (a backend waiting on
    /// something else): the same capacity, and the host's cores stay with the brokers.
    Idle,
}

impl std::str::FromStr for WorkMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "busy" => Ok(WorkMode::Busy),
            "idle" => Ok(WorkMode::Idle),
            other => Err(format!("work `{other}`: write `busy` or `idle`")),
        }
    }
}

/// One kind of subscriber; `count` members are started.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SubscriberSpec {
    /// Members are named `<name>-<k>`, k from 0.
    pub name: String,
    pub count: usize,
    /// Topic filter, `+`/`#` wildcards allowed, optionally `$share/GROUP/` in front.
    pub topic: String,
    /// 0 or 1.
    pub qos: u8,
    pub placement: MemberPlacement,
    /// Time each message occupies a member before it reads the next (zero: none).
    #[serde(serialize_with = "crate::duration::serialize")]
    pub work: Duration,
    pub work_mode: WorkMode,
}

impl SubscriberSpec {
    /// Parses `name=backend,count=2,topic=load/#[,qos=1][,broker=b2][,work_us=50][,work=idle]`.
    /// The result is validated.
    pub fn parse_spec(spec: &str) -> Result<SubscriberSpec, String> {
        let mut name = None;
        let mut count = 1usize;
        let mut topic = None;
        let mut qos = 0u8;
        let mut placement = MemberPlacement::EachBroker;
        let mut work = Duration::ZERO;
        let mut work_mode = WorkMode::default();
        // The filter may itself hold `=`-free commas only in theory: MQTT filters have none.
        for field in spec.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| format!("subscriber `{spec}`: `{field}` is not KEY=VALUE"))?;
            let bad = |what: &str| format!("subscriber `{spec}`: {key}=`{value}` is not {what}");
            match key.trim() {
                "name" => name = Some(value.to_owned()),
                "count" => count = value.parse().map_err(|_| bad("a whole number"))?,
                "topic" => topic = Some(value.to_owned()),
                "qos" => qos = value.parse().map_err(|_| bad("0 or 1"))?,
                "broker" => placement = MemberPlacement::Broker(value.to_owned()),
                "placement" if value == "each-broker" => placement = MemberPlacement::EachBroker,
                "placement" if value == "method" => {
                    return Err(format!(
                        "subscriber `{spec}`: placement=method is a scenario key (the scenario's \
                         method places the members); here give --dispatcher to have the \
                         dispatcher place every member, or --broker addresses for each-broker"
                    ));
                }
                "placement" => return Err(bad("`each-broker` (or use broker=ID)")),
                "work_us" => {
                    work = Duration::from_micros(
                        value.parse().map_err(|_| bad("a whole number of µs"))?,
                    )
                }
                "work" => {
                    work_mode = value
                        .parse()
                        .map_err(|e| format!("subscriber `{spec}`: {e}"))?
                }
                other => {
                    return Err(format!(
                        "subscriber `{spec}`: unknown key `{other}` (keys: name, count, topic, \
                         qos, broker, placement, work_us, work)"
                    ));
                }
            }
        }
        let spec = SubscriberSpec {
            name: name.ok_or_else(|| format!("subscriber `{spec}`: missing `name=`"))?,
            count,
            topic: topic.ok_or_else(|| format!("subscriber `{spec}`: missing `topic=`"))?,
            qos,
            placement,
            work,
            work_mode,
        };
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        super::profile::check_name("subscriber", name)?;
        let fail = |msg: String| Err(format!("subscriber `{name}`: {msg}"));
        if self.count == 0 || self.count > MAX_MEMBERS {
            return fail(format!(
                "count must be 1..={MAX_MEMBERS}, got {}",
                self.count
            ));
        }
        if self.qos > 1 {
            return fail(format!("qos must be 0 or 1, got {}", self.qos));
        }
        if self.work > MAX_WORK {
            return fail(format!(
                "work_us must be at most {} µs, got {}",
                MAX_WORK.as_micros(),
                self.work.as_micros()
            ));
        }
        check_filter(&self.topic).or_else(fail)
    }

    /// The shared-subscription group, if the filter names one.
    pub fn group(&self) -> Option<&str> {
        split_share(&self.topic).0
    }

    /// The filter without its `$share/GROUP/` prefix: what topics it matches.
    pub fn filter(&self) -> &str {
        split_share(&self.topic).1
    }

    /// Whether a message on `topic` is meant for this entry.
    pub fn matches(&self, topic: &str) -> bool {
        filter_matches(self.filter(), topic)
    }

    /// Member `k`'s name.
    pub fn member_name(&self, k: usize) -> String {
        format!("{}-{k}", self.name)
    }

    /// Index of the broker member `k` connects to, of `brokers` (ids `b1`..`bn` in order).
    pub fn broker_of(&self, k: usize, brokers: &[String]) -> Result<usize, String> {
        match &self.placement {
            MemberPlacement::EachBroker | MemberPlacement::Method => Ok(k % brokers.len().max(1)),
            MemberPlacement::Broker(id) => brokers.iter().position(|b| b == id).ok_or_else(|| {
                format!(
                    "subscriber `{}`: broker `{id}` is not one of {}",
                    self.name,
                    brokers.join(", ")
                )
            }),
        }
    }
}

/// `$share/GROUP/FILTER` → (`Some(GROUP)`, `FILTER`); anything else → (`None`, itself).
fn split_share(topic: &str) -> (Option<&str>, &str) {
    match topic
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
    {
        Some((group, filter)) => (Some(group), filter),
        None => (None, topic),
    }
}

/// MQTT 5 §4.7 rules for a filter: `#` only last and alone in its level, `+` alone in its level.
fn check_filter(topic: &str) -> Result<(), String> {
    if topic.starts_with("$share/") {
        match split_share(topic) {
            (Some(group), filter) if !group.is_empty() && !group.contains(['+', '#']) => {
                if filter.is_empty() {
                    return Err(format!("topic `{topic}`: no filter after the share group"));
                }
            }
            _ => {
                return Err(format!(
                    "topic `{topic}`: a shared subscription is `$share/GROUP/FILTER`"
                ));
            }
        }
    }
    let filter = split_share(topic).1;
    if filter.is_empty() || filter.contains('\0') {
        return Err(format!("topic `{topic}`: the filter is empty"));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        let wild = level.contains(['+', '#']);
        if wild && level.len() != 1 {
            return Err(format!(
                "topic `{topic}`: `+` and `#` must fill a whole level (e.g. `load/+/x`, `load/#`)"
            ));
        }
        if *level == "#" && i + 1 != levels.len() {
            return Err(format!("topic `{topic}`: `#` must be the last level"));
        }
    }
    Ok(())
}

/// Whether `filter` (no `$share` prefix) matches the topic name `topic`.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    // Topics starting with `$` are not matched by a leading wildcard (MQTT 5 §4.7.2).
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_defaults_and_every_key() {
        let s = SubscriberSpec::parse_spec("name=s,topic=load/#").unwrap();
        assert_eq!((s.count, s.qos, s.work), (1, 0, Duration::ZERO));
        assert_eq!(s.placement, MemberPlacement::EachBroker);
        assert_eq!(s.group(), None);
        let s = SubscriberSpec::parse_spec(
            "name=backend,count=4,topic=$share/g/load/+,qos=1,broker=b2,work_us=50,work=idle",
        )
        .unwrap();
        assert_eq!(s.count, 4);
        assert_eq!(s.group(), Some("g"));
        assert_eq!(s.filter(), "load/+");
        assert_eq!(s.placement, MemberPlacement::Broker("b2".into()));
        assert_eq!(s.work, Duration::from_micros(50));
        assert_eq!(s.work_mode, WorkMode::Idle);
        assert_eq!(s.member_name(3), "backend-3");
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let err = |s: &str| SubscriberSpec::parse_spec(s).unwrap_err();
        assert!(err("topic=a").contains("missing `name=`"));
        assert!(err("name=s").contains("missing `topic=`"));
        assert!(err("name=s,topic=a,count=0").contains("count"));
        assert!(err("name=s,topic=a,qos=2").contains("qos"));
        assert!(err("name=s,topic=a/#/b").contains("last level"));
        assert!(err("name=s,topic=a/b+").contains("whole level"));
        assert!(err("name=s,topic=$share/g").contains("$share/GROUP/FILTER"));
        assert!(err("name=s,topic=a,colour=red").contains("unknown key"));
        assert!(err("name=s,topic=a,work_us=1000000").contains("work_us"));
        assert!(err("name=s,topic=a,work=lazy").contains("busy"));
        assert!(err("name=s,topic=a,placement=method").contains("--dispatcher"));
    }

    #[test]
    fn filters_match_like_a_broker() {
        assert!(filter_matches("load/#", "load/light-0"));
        assert!(filter_matches("load/#", "load"));
        assert!(filter_matches("load/+", "load/heavy-0"));
        assert!(!filter_matches("load/+", "load/a/b"));
        assert!(filter_matches("#", "x/y"));
        assert!(!filter_matches("#", "$SYS/x"));
        assert!(!filter_matches("load/light-0", "load/light-1"));
        assert!(filter_matches("load/light-0", "load/light-0"));
    }

    #[test]
    fn members_spread_over_brokers_or_sit_on_one() {
        let brokers = vec!["b1".to_owned(), "b2".to_owned()];
        let each = SubscriberSpec::parse_spec("name=s,count=3,topic=a").unwrap();
        let on: Vec<usize> = (0..3)
            .map(|k| each.broker_of(k, &brokers).unwrap())
            .collect();
        assert_eq!(on, vec![0, 1, 0]);
        let pinned = SubscriberSpec::parse_spec("name=s,count=2,topic=a,broker=b2").unwrap();
        assert_eq!(pinned.broker_of(0, &brokers), Ok(1));
        let wrong = SubscriberSpec::parse_spec("name=s,topic=a,broker=b9").unwrap();
        assert!(wrong.broker_of(0, &brokers).unwrap_err().contains("b9"));
    }
}
