//! Broker-side counters: cumulative "messages received" and connected clients, read from the
//! embedded broker's stats port or Mosquitto's `$SYS` tree, and turned into per-second rates.
//!
//! Both sources update coarsely (rumqttd once a second, Mosquitto every ~2 s), so a rate is the
//! counter's change between two *updates*, divided by the time between those updates, and not
//! the change seen within one agent interval (which would alias to 0, 1× or 2× the true rate).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::addr::HostPort;
use crate::backoff::Backoff;

/// Where the agent reads a broker's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CounterSource {
    /// `mqdispatch broker`'s stats port (`stats on ADDR`): JSON [`CounterReading`] lines.
    Rumqttd { stats_addr: String },
    /// A Mosquitto broker's `$SYS/broker/publish/messages/received` and
    /// `$SYS/broker/clients/connected`, subscribed to with an MQTT client.
    MosquittoSys { addr: String },
}

impl std::str::FromStr for CounterSource {
    type Err = String;
    /// `rumqttd=HOST:PORT` or `mosquitto=HOST:PORT` (command line).
    fn from_str(text: &str) -> Result<Self, String> {
        let valid = |addr: &str| {
            addr.parse::<HostPort>()
                .map(|a| a.to_string())
                .map_err(|e| e.to_string())
        };
        match text.split_once('=') {
            Some(("rumqttd", addr)) if !addr.is_empty() => Ok(CounterSource::Rumqttd {
                stats_addr: valid(addr)?,
            }),
            Some(("mosquitto", addr)) if !addr.is_empty() => {
                Ok(CounterSource::MosquittoSys { addr: valid(addr)? })
            }
            _ => Err(format!(
                "`{text}`: expected rumqttd=HOST:PORT (the broker's `stats on` address) \
                 or mosquitto=HOST:PORT"
            )),
        }
    }
}

/// The command-line form [`std::str::FromStr`] reads (`agent --counters`).
impl std::fmt::Display for CounterSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CounterSource::Rumqttd { stats_addr } => write!(f, "rumqttd={stats_addr}"),
            CounterSource::MosquittoSys { addr } => write!(f, "mosquitto={addr}"),
        }
    }
}

/// A counter update: cumulative messages received since broker start, and connected clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterReading {
    /// When the broker's counter was updated, epoch ms.
    pub t_ms: u64,
    pub received_total: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
}

/// Rate between successive counter updates.
#[derive(Debug, Default)]
pub struct RateTracker {
    last: Option<CounterReading>,
    rate: Option<f64>,
}

impl RateTracker {
    /// Feeds the latest reading (the same one repeatedly until the broker updates it); returns
    /// msgs/s between the two most recent distinct updates.
    pub fn update(&mut self, reading: CounterReading) -> Option<f64> {
        match self.last {
            Some(prev) if reading.t_ms > prev.t_ms => {
                self.rate = if reading.received_total >= prev.received_total {
                    let dt_s = (reading.t_ms - prev.t_ms) as f64 / 1000.0;
                    Some((reading.received_total - prev.received_total) as f64 / dt_s)
                } else {
                    None // counter reset: the broker restarted
                };
                self.last = Some(reading);
            }
            Some(_) => {}
            None => self.last = Some(reading),
        }
        self.rate
    }
}

/// Keeps the latest reading of `source` in the returned channel (`None` while disconnected),
/// reconnecting with backoff until `cancel`.
pub fn spawn_reader(
    source: CounterSource,
    cancel: CancellationToken,
) -> (
    watch::Receiver<Option<CounterReading>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(async move {
        let mut backoff = Backoff::default();
        loop {
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = read_once(&source, &tx) => r,
            };
            tx.send_replace(None);
            if let Err(e) = result {
                debug!(?source, error = %e, "counter source disconnected");
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = backoff.wait() => {}
            }
        }
    });
    (rx, task)
}

/// The broker's cumulative count once it has been updated at or after `after_ms` (epoch ms) and
/// then holds still: the first such update can still be short, either because a broker starved
/// of CPU is still reading what was sent before `after_ms`, or because it is the retained `$SYS`
/// snapshot Mosquitto hands a new subscriber (up to one `sys_interval` old). The count is taken
/// once two updates in a row agree. `None` if that does not happen within `within` (an
/// unreachable stats port or `$SYS` tree, or a count still moving).
pub async fn total_after(
    source: &CounterSource,
    after_ms: u64,
    within: Duration,
) -> Option<CounterReading> {
    let cancel = CancellationToken::new();
    let (mut rx, task) = spawn_reader(source.clone(), cancel.clone());
    let settled = async {
        let mut prev = (*rx
            .wait_for(|r| r.is_some_and(|r| r.t_ms >= after_ms))
            .await
            .ok()?)?;
        loop {
            let next = (*rx
                .wait_for(|r| r.is_some_and(|r| r.t_ms > prev.t_ms))
                .await
                .ok()?)?;
            if next.received_total == prev.received_total {
                return Some(next);
            }
            prev = next;
        }
    };
    let reading = tokio::time::timeout(within, settled).await.ok().flatten();
    cancel.cancel();
    let _ = task.await;
    reading
}

async fn read_once(
    source: &CounterSource,
    tx: &watch::Sender<Option<CounterReading>>,
) -> anyhow::Result<()> {
    match source {
        CounterSource::Rumqttd { stats_addr } => read_rumqttd(stats_addr, tx).await,
        CounterSource::MosquittoSys { addr } => read_mosquitto(addr, tx).await,
    }
}

async fn read_rumqttd(
    addr: &str,
    tx: &watch::Sender<Option<CounterReading>>,
) -> anyhow::Result<()> {
    let stream = TcpStream::connect(addr).await?;
    let mut lines = BufReader::new(stream).lines();
    while let Some(line) = lines.next_line().await? {
        match serde_json::from_str::<CounterReading>(&line) {
            Ok(reading) => {
                tx.send_replace(Some(reading));
            }
            Err(e) => warn!(addr, error = %e, "bad stats line"),
        }
    }
    anyhow::bail!("stats connection closed")
}

const SYS_RECEIVED: &str = "$SYS/broker/publish/messages/received";
const SYS_CONNECTED: &str = "$SYS/broker/clients/connected";
/// Published on every `$SYS` pass, changed or not: marks that a pass happened.
const SYS_UPTIME: &str = "$SYS/broker/uptime";
/// All messages of one `$SYS` pass arrive within a few ms; this closes a pass.
const SYS_PASS_SETTLE: Duration = Duration::from_millis(200);

async fn read_mosquitto(
    addr: &str,
    tx: &watch::Sender<Option<CounterReading>>,
) -> anyhow::Result<()> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let addr: HostPort = addr.parse()?;
    let client_id = format!(
        "mqdispatch-agent-{}-{}",
        std::process::id(),
        crate::now_ms()
    );
    let mut options = MqttOptions::new(client_id, addr.host(), addr.port());
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(options, 10);
    for topic in [SYS_RECEIVED, SYS_CONNECTED, SYS_UPTIME] {
        client.subscribe(topic, QoS::AtMostOnce).await?;
    }
    let mut received: Option<u64> = None;
    let mut connected: Option<u64> = None;
    // Start of the pass being collected: a reading is emitted once the pass has settled.
    let mut pass_started: Option<u64> = None;
    loop {
        let settle = tokio::time::sleep(SYS_PASS_SETTLE);
        tokio::select! {
            event = events.poll() => {
                let Event::Incoming(Packet::Publish(p)) = event? else { continue };
                let value = std::str::from_utf8(&p.payload)
                    .ok()
                    .and_then(|s| s.split_ascii_whitespace().next()?.parse::<u64>().ok());
                match p.topic.as_str() {
                    SYS_RECEIVED => received = value.or(received),
                    SYS_CONNECTED => connected = value.or(connected),
                    _ => {}
                }
                pass_started.get_or_insert_with(crate::now_ms);
            }
            _ = settle, if pass_started.is_some() => {
                if let (Some(t_ms), Some(total)) = (pass_started.take(), received) {
                    tx.send_replace(Some(CounterReading {
                        t_ms,
                        received_total: total,
                        // Our own subscription is one of the connected clients.
                        connections: connected.map(|c| c.saturating_sub(1)),
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(t_ms: u64, received_total: u64) -> CounterReading {
        CounterReading {
            t_ms,
            received_total,
            connections: None,
        }
    }

    #[test]
    fn rate_is_between_updates_not_between_samples() {
        let mut t = RateTracker::default();
        assert_eq!(t.update(r(1_000, 0)), None);
        // Mosquitto updates every 2 s; the agent samples every 1 s and sees each update twice.
        assert_eq!(t.update(r(3_000, 20_000)), Some(10_000.0));
        assert_eq!(t.update(r(3_000, 20_000)), Some(10_000.0));
        assert_eq!(t.update(r(5_000, 20_000)), Some(0.0));
    }

    #[test]
    fn counter_reset_gives_no_rate_then_recovers() {
        let mut t = RateTracker::default();
        t.update(r(1_000, 500));
        assert_eq!(t.update(r(2_000, 10)), None);
        assert_eq!(t.update(r(3_000, 110)), Some(100.0));
    }

    #[test]
    fn parses_counter_sources() {
        assert_eq!(
            "rumqttd=127.0.0.1:9".parse::<CounterSource>(),
            Ok(CounterSource::Rumqttd {
                stats_addr: "127.0.0.1:9".into()
            })
        );
        assert!("mosquitto=h:1".parse::<CounterSource>().is_ok());
        assert!("other=h:1".parse::<CounterSource>().is_err());
        assert!("rumqttd=".parse::<CounterSource>().is_err());
        for text in ["rumqttd=127.0.0.1:9", "mosquitto=198.18.0.11:1883"] {
            let source = text.parse::<CounterSource>().unwrap();
            assert_eq!(source.to_string(), text, "the command line it came from");
        }
        let bad = "mosquitto=::1:1883".parse::<CounterSource>().unwrap_err();
        assert!(bad.contains("needs brackets"), "{bad}");
    }
}
