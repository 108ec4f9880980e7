//! Publisher profiles: how many publishers of one kind, how fast, how big, for how long.
//!
//! The same keys serve the scenario's `publishers` entries (YAML) and `mqdispatch load --profile
//! name=light,count=9,rate=2000,bytes=600,duration=100s[,qos=0][,topic=load/{publisher}]
//! [,send=per-message|batched][,batch_tick=5ms]`.

use std::time::Duration;

/// The topic pattern used when a profile names none: one topic per publisher.
pub const DEFAULT_TOPIC: &str = "load/{publisher}";

/// Upper bounds that catch typos (a rate of 2e9) before they become a runaway load.
const MAX_RATE: f64 = 1_000_000.0;
const MAX_PAYLOAD_BYTES: usize = 16 * 1024 * 1024;
const MAX_COUNT: usize = 100_000;

/// How often a `batched` publisher wakes to write what it owes, unless set.
pub const DEFAULT_BATCH_TICK: Duration = Duration::from_millis(5);

fn default_topic() -> String {
    DEFAULT_TOPIC.to_owned()
}

fn default_batch_tick() -> Duration {
    DEFAULT_BATCH_TICK
}

/// How a publisher turns its schedule into writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SendMode {
    /// MQTTLoader's way (the paper's load tool: `scheduleAtFixedRate`, one Paho publish per
    /// tick): message `i` is written on its own at `start + i/rate`, as its own TCP segment.
    #[default]
    PerMessage,
    /// Wake every `batch_tick` and write everything owed by then back to back: cheaper for the
    /// generator, but a broker then reads many messages per wake-up and spends less CPU per
    /// message than under the paper's load.
    Batched,
    /// `per-message` through a rumqttc client (the path TLS publishers take) instead of the
    /// publisher's own socket: kept to measure one against the other (`benches/send_modes.rs`).
    #[doc(hidden)]
    #[serde(skip_deserializing)]
    PerMessageViaClient,
}

impl std::str::FromStr for SendMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "per-message" => Ok(SendMode::PerMessage),
            "batched" => Ok(SendMode::Batched),
            "per-message-via-client" => Ok(SendMode::PerMessageViaClient),
            other => Err(format!(
                "send mode `{other}`: write `per-message` (MQTTLoader's) or `batched`"
            )),
        }
    }
}

/// One kind of publisher; `count` of them are started.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Short name (`light`, `heavy`): publishers are named `<name>-<k>`.
    pub name: String,
    /// Number of publishers with this profile.
    pub count: usize,
    /// Messages per second, per publisher.
    pub rate: f64,
    /// Payload size of every message, in bytes.
    pub payload_bytes: usize,
    /// How long each publisher publishes, from its first CONNACK.
    #[serde(
        deserialize_with = "crate::duration::deserialize",
        serialize_with = "crate::duration::serialize"
    )]
    pub duration: Duration,
    /// 0 (at most once) or 1 (at least once).
    #[serde(default)]
    pub qos: u8,
    /// Topic pattern; `{publisher}` and `{profile}` are replaced by the publisher's and the
    /// profile's name.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// One write per message (the faithful default) or what is owed every `batch_tick`.
    #[serde(default)]
    pub send: SendMode,
    /// Wake-up period of `send: batched`.
    #[serde(
        default = "default_batch_tick",
        deserialize_with = "crate::duration::deserialize",
        serialize_with = "crate::duration::serialize"
    )]
    pub batch_tick: Duration,
}

/// A profile's or subscriber's name becomes part of client ids and file names: letters,
/// digits, `_` and `-` only (`kind` names it in the error).
pub(crate) fn check_name(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "{kind} name `{name}` must be non-empty letters, digits, `_` or `-`"
        ));
    }
    Ok(())
}

impl Profile {
    /// Parses `name=light,count=9,rate=2000,bytes=600,duration=100s[,qos=0][,topic=PATTERN]`
    /// (`payload_bytes=` is accepted for `bytes=`). The result is validated.
    pub fn parse_spec(spec: &str) -> Result<Profile, String> {
        let mut name = None;
        let mut count = None;
        let mut rate = None;
        let mut payload_bytes = None;
        let mut duration = None;
        let mut qos = 0u8;
        let mut topic = default_topic();
        let mut send = SendMode::default();
        let mut batch_tick = None;
        for field in spec.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| format!("profile `{spec}`: `{field}` is not KEY=VALUE"))?;
            let bad = |what: &str| format!("profile `{spec}`: {key}=`{value}` is not {what}");
            match key.trim() {
                "name" => name = Some(value.to_owned()),
                "count" => count = Some(value.parse().map_err(|_| bad("a whole number"))?),
                "rate" => rate = Some(value.parse().map_err(|_| bad("a number (msg/s)"))?),
                "bytes" | "payload_bytes" => {
                    payload_bytes = Some(value.parse().map_err(|_| bad("a byte count"))?)
                }
                "duration" => {
                    duration = Some(
                        crate::duration::parse(value)
                            .map_err(|e| format!("profile `{spec}`: {e}"))?,
                    )
                }
                "qos" => qos = value.parse().map_err(|_| bad("0 or 1"))?,
                "topic" => topic = value.to_owned(),
                "send" => {
                    send = value
                        .parse()
                        .map_err(|e| format!("profile `{spec}`: {e}"))?
                }
                "batch_tick" => {
                    batch_tick = Some(
                        crate::duration::parse(value)
                            .map_err(|e| format!("profile `{spec}`: {e}"))?,
                    )
                }
                other => {
                    return Err(format!(
                        "profile `{spec}`: unknown key `{other}` (keys: name, count, rate, bytes, \
                         duration, qos, topic, send, batch_tick)"
                    ));
                }
            }
        }
        let missing = |key: &str| format!("profile `{spec}`: missing `{key}=`");
        let profile = Profile {
            name: name.ok_or_else(|| missing("name"))?,
            count: count.ok_or_else(|| missing("count"))?,
            rate: rate.ok_or_else(|| missing("rate"))?,
            payload_bytes: payload_bytes.ok_or_else(|| missing("bytes"))?,
            duration: duration.ok_or_else(|| missing("duration"))?,
            qos,
            topic,
            send,
            batch_tick: batch_tick.unwrap_or(DEFAULT_BATCH_TICK),
        };
        if batch_tick.is_some() && send != SendMode::Batched {
            return Err(format!(
                "profile `{spec}`: batch_tick only applies to send=batched"
            ));
        }
        profile.validate()?;
        Ok(profile)
    }

    /// The `--profile` spec [`Profile::parse_spec`] reads back as this profile (a topic with a
    /// comma cannot be written as one).
    pub fn to_spec(&self) -> String {
        let d = crate::duration::format_exact;
        let send = match self.send {
            SendMode::PerMessage => "per-message",
            SendMode::Batched => "batched",
            SendMode::PerMessageViaClient => "per-message-via-client",
        };
        let mut spec = format!(
            "name={},count={},rate={},bytes={},duration={},qos={},topic={},send={send}",
            self.name,
            self.count,
            self.rate,
            self.payload_bytes,
            d(self.duration),
            self.qos,
            self.topic
        );
        if self.send == SendMode::Batched {
            spec.push_str(&format!(",batch_tick={}", d(self.batch_tick)));
        }
        spec
    }

    /// Checks every field; the error names the profile and the field.
    pub fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        check_name("profile", name)?;
        let fail = |msg: String| Err(format!("profile `{name}`: {msg}"));
        if self.count == 0 || self.count > MAX_COUNT {
            return fail(format!("count must be 1..={MAX_COUNT}, got {}", self.count));
        }
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= MAX_RATE) {
            return fail(format!(
                "rate must be above 0 and at most {MAX_RATE} msg/s, got {}",
                self.rate
            ));
        }
        if self.payload_bytes < crate::payload::HEADER_BYTES {
            return fail(format!(
                "payload_bytes must be at least {} (the send time and sequence number every \
                 payload starts with), got {}",
                crate::payload::HEADER_BYTES,
                self.payload_bytes
            ));
        }
        if self.payload_bytes > MAX_PAYLOAD_BYTES {
            return fail(format!(
                "payload_bytes must be at most {MAX_PAYLOAD_BYTES}, got {}",
                self.payload_bytes
            ));
        }
        if self.duration.is_zero() {
            return fail("duration must be above zero".into());
        }
        if self.qos > 1 {
            return fail(format!("qos must be 0 or 1, got {}", self.qos));
        }
        if self.batch_tick.is_zero() || self.batch_tick > Duration::from_secs(1) {
            return fail(format!(
                "batch_tick must be above 0 and at most 1s, got {:?}",
                self.batch_tick
            ));
        }
        let sample = self.topic_for("x-0");
        if sample.is_empty() || sample.contains(['+', '#', '\0']) || sample.contains(['{', '}']) {
            return fail(format!(
                "topic `{}` must be a non-empty topic without `+`, `#` or unknown `{{...}}` \
                 placeholders (known: {{publisher}}, {{profile}})",
                self.topic
            ));
        }
        Ok(())
    }

    /// The topic for the publisher called `publisher`.
    pub fn topic_for(&self, publisher: &str) -> String {
        self.topic
            .replace("{publisher}", publisher)
            .replace("{profile}", &self.name)
    }

    /// Messages one publisher of this profile is meant to send: `rate × duration`, rounded.
    pub fn target_total(&self) -> u64 {
        (self.rate * self.duration.as_secs_f64()).round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_papers_light_profile() {
        let p =
            Profile::parse_spec("name=light,count=9,rate=2000,bytes=600,duration=100s").unwrap();
        assert_eq!(
            p,
            Profile {
                name: "light".into(),
                count: 9,
                rate: 2000.0,
                payload_bytes: 600,
                duration: Duration::from_secs(100),
                qos: 0,
                topic: DEFAULT_TOPIC.into(),
                send: SendMode::PerMessage,
                batch_tick: DEFAULT_BATCH_TICK,
            }
        );
        assert_eq!(p.target_total(), 200_000);
        assert_eq!(p.topic_for("light-3"), "load/light-3");
    }

    #[test]
    fn a_spec_reads_back_as_the_profile_it_was_written_from() {
        let scaled = |secs: u64, scale: f64| Duration::from_secs(secs).mul_f64(scale);
        let mut p =
            Profile::parse_spec("name=heavy,count=1,rate=10000,bytes=600,duration=100s").unwrap();
        for (duration, rate) in [
            (scaled(100, 0.05), 10000.0),
            (scaled(100, 0.013), 333.5),
            (Duration::from_nanos(1_234_567_891), 0.25),
        ] {
            p.duration = duration;
            p.rate = rate;
            assert_eq!(
                Profile::parse_spec(&p.to_spec()).unwrap(),
                p,
                "{}",
                p.to_spec()
            );
        }
        p.send = SendMode::Batched;
        p.batch_tick = Duration::from_micros(2500);
        p.qos = 1;
        p.topic = "t/{profile}/{publisher}".into();
        assert_eq!(
            Profile::parse_spec(&p.to_spec()).unwrap(),
            p,
            "{}",
            p.to_spec()
        );
    }

    #[test]
    fn optional_keys_and_alias() {
        let p = Profile::parse_spec(
            "name=h,count=1,rate=2.5,payload_bytes=16,duration=2s,qos=1,topic=t/{profile}/{publisher}",
        )
        .unwrap();
        assert_eq!(p.qos, 1);
        assert_eq!(p.topic_for("h-0"), "t/h/h-0");
        assert_eq!(p.target_total(), 5);
        let b = Profile::parse_spec(
            "name=b,count=1,rate=10,bytes=16,duration=1s,send=batched,batch_tick=20ms",
        )
        .unwrap();
        assert_eq!(b.send, SendMode::Batched);
        assert_eq!(b.batch_tick, Duration::from_millis(20));
    }

    #[test]
    fn errors_name_the_problem() {
        let err = |s: &str| Profile::parse_spec(s).unwrap_err();
        assert!(err("name=a,count=1,rate=1,bytes=16").contains("missing `duration=`"));
        assert!(
            err("name=a,count=1,rate=1,bytes=16,duration=1s,colour=red").contains("unknown key")
        );
        assert!(err("name=a,count=x,rate=1,bytes=16,duration=1s").contains("whole number"));
        assert!(err("name=a,count=0,rate=1,bytes=16,duration=1s").contains("count"));
        assert!(err("name=a,count=1,rate=0,bytes=16,duration=1s").contains("rate"));
        assert!(err("name=a,count=1,rate=1,bytes=15,duration=1s").contains("at least 16"));
        assert!(err("name=a,count=1,rate=1,bytes=16,duration=1s,qos=2").contains("qos"));
        assert!(err("name=a,count=1,rate=1,bytes=16,duration=5").contains("no unit"));
        assert!(err("name=a b,count=1,rate=1,bytes=16,duration=1s").contains("profile name"));
        assert!(err("name=a,count=1,rate=1,bytes=16,duration=1s,topic=x/#").contains("topic"));
        assert!(err("name=a,count=1,rate=1,bytes=16,duration=1s,topic={id}").contains("topic"));
        assert!(
            err("name=a,count=1,rate=1,bytes=16,duration=1s,send=burst").contains("per-message")
        );
        assert!(
            err("name=a,count=1,rate=1,bytes=16,duration=1s,batch_tick=5ms")
                .contains("only applies to send=batched")
        );
        assert!(
            err("name=a,count=1,rate=1,bytes=16,duration=1s,send=batched,batch_tick=0s")
                .contains("batch_tick")
        );
    }

    #[test]
    fn yaml_keys_match_the_scenario() {
        let p: Profile = serde_json::from_str(
            r#"{"name":"heavy","count":1,"rate":10000,"payload_bytes":600,"duration":"100s"}"#,
        )
        .unwrap();
        assert_eq!(p.rate, 10000.0);
        assert_eq!(p.topic, DEFAULT_TOPIC);
        let back: Profile = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        assert!(
            serde_json::from_str::<Profile>(
                r#"{"name":"h","count":1,"rate":1,"payload_bytes":1,"duration":"1s","x":1}"#
            )
            .is_err()
        );
    }
}
