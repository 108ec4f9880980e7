//! Subscribers: each member a consumer on its own thread, connected and subscribed before the
//! first publisher, measuring what arrives (latency, loss, order) from the payload header.
//!
//! A member reads the receive time (`payload::now_us`) when rumqttc's event loop hands it the
//! PUBLISH, before any per-message work, so a member's own backlog counts in its latencies as
//! it would in a real backend's. Members of one shared group count each publisher's sequence
//! numbers together (one [`SeqTracker`] per group and publisher); a plain subscriber counts its
//! own. Every second each member reports its count and latency histogram
//! ([`SubscriberEvent::Second`]); at the end, its whole-run histogram and the sequence counts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::anyhow;
use hdrhistogram::Histogram;
use tokio::sync::{mpsc::UnboundedSender, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::placement::{Connector, DEFAULT_MAX_HOPS, Entry};
use super::receipts::{SeqStats, SeqTracker, latency_histogram, latency_us};
use super::subscriber_direct::Dropped;
use super::subscriber_session::{self as session, Subscribed};
use super::subscriber_work::Work;
use super::subscription::{MemberPlacement, SubscriberSpec};
use crate::payload::{Header, now_us};
use crate::proto::RedirectReason;

/// Bound on one member's CONNECT + SUBSCRIBE + SUBACK.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything [`start`] needs.
#[derive(Clone, Debug)]
pub struct SubscriberConfig {
    pub specs: Vec<SubscriberSpec>,
    /// `(id, address)` of every broker, `b1`..`bn` in order.
    pub brokers: Vec<(String, String)>,
    /// Publisher topic → publisher name: whose sequence numbers a message carries. A topic
    /// not listed is a stream of its own, named by the topic.
    pub publishers_by_topic: HashMap<String, String>,
    /// Publisher name → its clock minus this machine's, in µs, for publishers sending from
    /// another host: their send times are moved onto this clock before a latency is taken. A
    /// publisher not listed shares this clock.
    pub sender_clocks_us: HashMap<String, i64>,
    /// Client id = prefix + member name.
    pub client_id_prefix: String,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Where members connect.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Via {
    /// The brokers of [`SubscriberConfig::brokers`], by each entry's placement.
    #[default]
    Brokers,
    /// Through these dispatchers (tried in order), each member naming its filter in its
    /// CONNECT's `subscribe` user property ([`crate::proto::SUBSCRIBE_PROPERTY`]); broker
    /// labels are then the addresses the dispatcher sent the members to.
    Dispatchers { addrs: Vec<String>, max_hops: u8 },
}

/// What members report while they run (times are epoch ms, see [`crate::now_ms`]).
#[derive(Clone, Debug)]
pub enum SubscriberEvent {
    /// Messages received by `member` on `broker` during the wall-clock second starting at `t_ms`,
    /// and their latencies (µs).
    Second {
        member: String,
        entry: String,
        broker: String,
        t_ms: u64,
        received: u64,
        latency_us: Box<Histogram<u64>>,
        /// Moves of the member so far (server DISCONNECT 0x9C/0x9D followed).
        moves: u32,
    },
}

/// One member at the end.
#[derive(Clone, Debug)]
pub struct MemberSummary {
    pub member: String,
    pub entry: String,
    pub broker: String,
    pub received: u64,
    /// Messages too short to carry a header (not the loader's).
    pub foreign: u64,
    pub latency_us: Histogram<u64>,
    /// Reconnections, moves included.
    pub reconnects: u32,
    /// Reconnections to where a server DISCONNECT 0x9C/0x9D sent the member.
    pub moves: u32,
}

/// One delivery unit's view of one publisher's stream: a shared group's (`unit` = the group's
/// entry name) or one plain subscriber's (`unit` = the member's name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSummary {
    pub entry: String,
    pub unit: String,
    pub publisher: String,
    pub stats: SeqStats,
}

#[derive(Clone, Debug, Default)]
pub struct SubscribersSummary {
    pub members: Vec<MemberSummary>,
    pub streams: Vec<StreamSummary>,
}

type Streams = Arc<Mutex<HashMap<String, SeqTracker>>>;

/// Running members; [`Subscribers::finish`] stops them.
pub struct Subscribers {
    members: Vec<std::thread::JoinHandle<anyhow::Result<MemberSummary>>>,
    /// `(entry, unit, its trackers)`.
    units: Vec<(String, String, Streams)>,
    received: Arc<AtomicU64>,
    stop: CancellationToken,
}

/// Connects and subscribes every member to its broker; returns once each has its SUBACK (or the
/// first error, with every member stopped).
pub async fn start(
    cfg: SubscriberConfig,
    events: UnboundedSender<SubscriberEvent>,
    cancel: CancellationToken,
) -> anyhow::Result<Subscribers> {
    start_via(cfg, Via::Brokers, events, cancel).await
}

/// [`start`], the members connecting as `via` says.
pub async fn start_via(
    cfg: SubscriberConfig,
    via: Via,
    events: UnboundedSender<SubscriberEvent>,
    cancel: CancellationToken,
) -> anyhow::Result<Subscribers> {
    let broker_ids: Vec<String> = cfg.brokers.iter().map(|(id, _)| id.clone()).collect();
    let id_of: Arc<HashMap<String, String>> = Arc::new(
        (cfg.brokers.iter())
            .map(|(id, addr)| (addr.clone(), id.clone()))
            .collect(),
    );
    let stop = cancel.child_token();
    let received = Arc::new(AtomicU64::new(0));
    let topics = Arc::new(cfg.publishers_by_topic);
    let sender_clocks = Arc::new(cfg.sender_clocks_us);
    let mut subs = Subscribers {
        members: Vec::new(),
        units: Vec::new(),
        received: received.clone(),
        stop: stop.clone(),
    };
    let mut ready = Vec::new();
    for spec in &cfg.specs {
        spec.validate().map_err(crate::InputError)?;
        let shared: Option<Streams> = spec.group().map(|_| Streams::default());
        if let Some(streams) = &shared {
            subs.units
                .push((spec.name.clone(), spec.name.clone(), streams.clone()));
        }
        for k in 0..spec.count {
            let entry = match &via {
                Via::Brokers => {
                    let b = spec.broker_of(k, &broker_ids).map_err(crate::InputError)?;
                    Entry::Broker {
                        addr: cfg.brokers[b].1.clone(),
                        max_hops: DEFAULT_MAX_HOPS,
                    }
                }
                Via::Dispatchers { .. } if spec.placement != MemberPlacement::EachBroker => {
                    return Err(crate::InputError(format!(
                        "subscriber `{}`: broker=ID needs --broker addresses; through a \
                         dispatcher the dispatcher places the members",
                        spec.name
                    ))
                    .into());
                }
                Via::Dispatchers { addrs, max_hops } => Entry::Dispatchers {
                    addrs: addrs.clone(),
                    max_hops: *max_hops,
                },
            };
            let member = spec.member_name(k);
            let streams = shared.clone().unwrap_or_else(|| {
                let own = Streams::default();
                subs.units
                    .push((spec.name.clone(), member.clone(), own.clone()));
                own
            });
            let ctx = MemberCtx {
                connector: Connector {
                    client_id: format!("{}{member}", cfg.client_id_prefix),
                    inflight_limit: 100,
                    tcp_nodelay: true,
                    tls: cfg.tls.clone(),
                    declared_rate: None,
                    // Plain TCP: our own reads (see `subscriber_direct`); TLS: rumqttc.
                    direct: true,
                },
                member,
                spec: spec.clone(),
                entry,
                id_of: id_of.clone(),
                topics: topics.clone(),
                sender_clocks: sender_clocks.clone(),
                streams,
                received: received.clone(),
                events: events.clone(),
            };
            let (ready_tx, ready_rx) = oneshot::channel();
            let stop = stop.clone();
            let handle = std::thread::Builder::new()
                .name(format!("sub-{}", ctx.member))
                .spawn(move || {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(anyhow::Error::from)
                        .and_then(|rt| rt.block_on(run_member(ctx, ready_tx, stop)))
                })?;
            subs.members.push(handle);
            ready.push(ready_rx);
        }
    }
    for r in ready {
        let outcome = tokio::select! {
            _ = cancel.cancelled() => Err(anyhow!("cancelled while subscribing")),
            r = r => r.unwrap_or_else(|_| Err(anyhow!("a subscriber thread stopped before subscribing"))),
        };
        if let Err(e) = outcome {
            subs.stop.cancel();
            let _ = subs.join().await;
            return Err(e);
        }
    }
    Ok(subs)
}

impl Subscribers {
    /// Messages received so far by every member together.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Waits until no member has received anything for `quiet` (what was in flight has
    /// arrived) or `within` has passed, then stops every member and sums up.
    pub async fn finish(
        self,
        quiet: Duration,
        within: Duration,
    ) -> anyhow::Result<SubscribersSummary> {
        let deadline = tokio::time::Instant::now() + within;
        let mut last = self.received();
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep(quiet) => {}
            }
            let now = self.received();
            if now == last || tokio::time::Instant::now() >= deadline {
                break;
            }
            last = now;
        }
        self.stop.cancel();
        self.join().await
    }

    async fn join(mut self) -> anyhow::Result<SubscribersSummary> {
        let members = std::mem::take(&mut self.members);
        let units = std::mem::take(&mut self.units);
        let summaries = tokio::task::spawn_blocking(move || {
            members
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| anyhow!("a subscriber thread panicked"))?
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .await??;
        let mut streams = Vec::new();
        for (entry, unit, trackers) in units {
            let trackers = trackers.lock().unwrap_or_else(PoisonError::into_inner);
            let mut by_publisher: Vec<_> = trackers.iter().collect();
            by_publisher.sort_by(|a, b| a.0.cmp(b.0));
            for (publisher, t) in by_publisher {
                streams.push(StreamSummary {
                    entry: entry.clone(),
                    unit: unit.clone(),
                    publisher: publisher.clone(),
                    stats: t.stats,
                });
            }
        }
        Ok(SubscribersSummary {
            members: summaries,
            streams,
        })
    }
}

impl Drop for Subscribers {
    fn drop(&mut self) {
        // A dropped handle (an error path) still stops its threads; they exit on their own.
        self.stop.cancel();
    }
}

struct MemberCtx {
    member: String,
    spec: SubscriberSpec,
    /// Where each connection starts when no server said where to go.
    entry: Entry,
    /// Broker address → id (`b1`, ...); an address not listed is its own label.
    id_of: Arc<HashMap<String, String>>,
    connector: Connector,
    topics: Arc<HashMap<String, String>>,
    sender_clocks: Arc<HashMap<String, i64>>,
    streams: Streams,
    received: Arc<AtomicU64>,
    events: UnboundedSender<SubscriberEvent>,
}

/// One member: connect and subscribe (then say so on `ready`), receive until `stop`; after a
/// dropped connection, subscribe again where a server DISCONNECT 0x9C/0x9D said (at once), else
/// from the entry (after a backoff). 0x9D's broker stays the start of later reconnections until
/// connecting there fails.
async fn run_member(
    ctx: MemberCtx,
    ready: oneshot::Sender<anyhow::Result<()>>,
    stop: CancellationToken,
) -> anyhow::Result<MemberSummary> {
    let first = tokio::select! {
        _ = stop.cancelled() => Err(anyhow!("stopped before subscribing")),
        r = tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribe(&ctx, None)) => {
            r.unwrap_or_else(|_| Err(anyhow!("no SUBACK within {SUBSCRIBE_TIMEOUT:?}")))
        }
    };
    let (mut session, broker) = match first {
        Ok(subscribed) => {
            let _ = ready.send(Ok(()));
            subscribed
        }
        Err(e) => {
            let e = e.context(format!("subscriber {} via {:?}", ctx.member, ctx.entry));
            let _ = ready.send(Err(anyhow!("{e:#}")));
            return Err(e);
        }
    };
    info!(member = %ctx.member, %broker, "subscribed");
    let mut summary = MemberSummary {
        member: ctx.member.clone(),
        entry: ctx.spec.name.clone(),
        broker: broker.clone(),
        received: 0,
        foreign: 0,
        latency_us: latency_histogram(),
        reconnects: 0,
        moves: 0,
    };
    let mut second = SecondWindow::new(broker);
    let mut work = Work::new(&ctx.spec);
    let mut backoff = crate::backoff::Backoff::default();
    let mut home: Option<String> = None;
    loop {
        let dropped = receive(
            &ctx,
            &mut session,
            &mut summary,
            &mut second,
            &mut work,
            &stop,
        )
        .await;
        let Some(dropped) = dropped else { break };
        let error = &dropped.error;
        warn!(member = %ctx.member, broker = %summary.broker, %error, "subscriber connection lost");
        let mut next = dropped.moved.map(|(reason, reference)| {
            info!(member = %ctx.member, %reference, ?reason, "server sent us elsewhere");
            if reason == RedirectReason::ServerMoved {
                home = Some(reference.clone());
            }
            reference
        });
        // A move counts once the member is subscribed at the broker it was sent to.
        let moved_to = next
            .as_ref()
            .map(|r| ctx.id_of.get(r).cloned().unwrap_or_else(|| r.clone()));
        let again = loop {
            if next.is_none() {
                tokio::select! {
                    _ = stop.cancelled() => break None,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
            if stop.is_cancelled() {
                break None;
            }
            let start = next.take().or_else(|| home.clone());
            match tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribe(&ctx, start.as_deref())).await {
                Ok(Ok(s)) => break Some(s),
                Ok(Err(e)) => warn!(member = %ctx.member, error = %e, "cannot subscribe again"),
                Err(_) => warn!(member = %ctx.member, "no SUBACK on resubscribing"),
            }
            if start.is_some() && start == home {
                home = None;
            }
        };
        let Some((s, broker)) = again else { break };
        session = s;
        summary.reconnects += 1;
        // A move: subscribed where a server sent it, or (a takeover closes without a
        // reference) placed again on another broker.
        let elsewhere = moved_to.is_none() && broker != summary.broker;
        summary.moves += u32::from(moved_to.as_ref() == Some(&broker) || elsewhere);
        info!(member = %ctx.member, %broker, moves = summary.moves, "subscribed again");
        summary.broker = broker.clone();
        second.broker = broker;
        second.moves = summary.moves;
        backoff = crate::backoff::Backoff::default();
    }
    second.emit(&ctx, crate::now_ms());
    let _ = tokio::time::timeout(Duration::from_millis(250), session.disconnect()).await;
    Ok(summary)
}

/// Connects from `start` (a broker a server named) or the member's entry, and subscribes;
/// returns the session and the broker's label.
async fn subscribe(ctx: &MemberCtx, start: Option<&str>) -> anyhow::Result<(Subscribed, String)> {
    let (session, addr) = session::subscribe(&ctx.entry, start, &ctx.connector, &ctx.spec).await?;
    let broker = ctx.id_of.get(&addr).cloned().unwrap_or(addr);
    Ok((session, broker))
}

/// Receives until `stop` (`None`) or the connection ends (why, and where to go if a server
/// said).
async fn receive(
    ctx: &MemberCtx,
    session: &mut Subscribed,
    summary: &mut MemberSummary,
    second: &mut SecondWindow,
    work: &mut Work,
    stop: &CancellationToken,
) -> Option<Dropped> {
    // One timer for the whole session, moved to each next second (not one per message).
    let tick = tokio::time::sleep(second.until_next());
    tokio::pin!(tick);
    loop {
        let mut on_publish = |p: &rumqttc::v5::mqttbytes::v5::Publish| {
            take(ctx, summary, second, work, &p.topic, &p.payload)
        };
        let received: Result<(), Dropped> = tokio::select! {
            biased;
            _ = stop.cancelled() => return None,
            () = &mut tick => {
                // Closes the second unless a message already did (and started the next).
                second.roll(ctx, crate::now_ms());
                tick.as_mut().reset(tokio::time::Instant::now() + second.until_next());
                Ok(())
            }
            r = session.receive_once(&mut on_publish) => r,
        };
        if let Err(e) = received {
            return Some(e);
        }
    }
}

/// One message: its latency and sequence number, then the member's work on it.
fn take(
    ctx: &MemberCtx,
    summary: &mut MemberSummary,
    second: &mut SecondWindow,
    work: &mut Work,
    topic: &[u8],
    payload: &[u8],
) {
    let at = now_us();
    second.roll(ctx, at / 1000);
    summary.received += 1;
    ctx.received.fetch_add(1, Ordering::Relaxed);
    match Header::read(payload) {
        Some(h) => {
            // A topic no planned publisher uses is its own stream (a subscriber run beside
            // publishers it was not told about).
            let topic = String::from_utf8_lossy(topic);
            let publisher = ctx
                .topics
                .get(topic.as_ref())
                .map_or(topic.as_ref(), String::as_str);
            let clock_us = ctx.sender_clocks.get(publisher).copied().unwrap_or(0);
            let lat = latency_us(at, on_receiver_clock(h.sent_us, clock_us));
            summary.latency_us.saturating_record(lat);
            second.record(lat);
            ctx.streams
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(publisher.to_owned())
                .or_default()
                .observe(h.seq);
        }
        None => {
            summary.foreign += 1;
            second.received += 1;
        }
    }
    work.spend();
}

/// A send time read on a clock `clock_us` ahead of the receiver's, on the receiver's clock.
fn on_receiver_clock(sent_us: u64, clock_us: i64) -> u64 {
    sent_us.saturating_add_signed(-clock_us)
}

/// The current wall-clock second's count and latencies.
struct SecondWindow {
    /// Epoch ms of the second being counted.
    t_ms: u64,
    received: u64,
    latency_us: Histogram<u64>,
    /// Where the member is now: the second is reported under the broker it ends on.
    broker: String,
    moves: u32,
}

impl SecondWindow {
    fn new(broker: String) -> Self {
        Self {
            t_ms: crate::now_ms() / 1000 * 1000,
            received: 0,
            latency_us: latency_histogram(),
            broker,
            moves: 0,
        }
    }

    fn until_next(&self) -> Duration {
        let next = self.t_ms + 1000;
        Duration::from_millis(next.saturating_sub(crate::now_ms()).max(1))
    }

    fn record(&mut self, latency_us: u64) {
        self.received += 1;
        self.latency_us.saturating_record(latency_us);
    }

    /// Closes the second if `now_ms` is past it.
    fn roll(&mut self, ctx: &MemberCtx, now_ms: u64) {
        if now_ms >= self.t_ms + 1000 {
            self.emit(ctx, now_ms);
        }
    }

    /// Reports the second under way and starts the one holding `now_ms`.
    fn emit(&mut self, ctx: &MemberCtx, now_ms: u64) {
        let latency = std::mem::replace(&mut self.latency_us, latency_histogram());
        let _ = ctx.events.send(SubscriberEvent::Second {
            member: ctx.member.clone(),
            entry: ctx.spec.name.clone(),
            broker: self.broker.clone(),
            t_ms: self.t_ms,
            received: std::mem::take(&mut self.received),
            latency_us: Box::new(latency),
            moves: self.moves,
        });
        self.t_ms = (now_ms / 1000 * 1000).max(self.t_ms + 1000);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_time_from_a_clock_ahead_moves_back_onto_the_receiver_s() {
        // Sent at receiver time 1,000 µs by a host whose clock is 300 µs ahead: it reads 1,300.
        assert_eq!(on_receiver_clock(1_300, 300), 1_000);
        assert_eq!(on_receiver_clock(1_000, -250), 1_250);
        assert_eq!(on_receiver_clock(1_000, 0), 1_000);
        assert_eq!(on_receiver_clock(100, 500), 0);
    }
}
