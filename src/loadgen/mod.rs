//! The load generator: MQTTLoader-like fixed-rate publishers that follow server redirection.
//!
//! - [`profile`]: publisher kinds (`--profile` specs, scenario `publishers` entries).
//! - [`arrival`]: who joins when, reproducible from a seed (pure).
//! - [`schedule`]: absolute-deadline pacing (pure); [`seconds`]: per-second counts (pure).
//! - [`precise_timer`]: sub-millisecond sleeps for per-message sending; [`lateness`]: how late
//!   messages went out.
//! - [`placement`]: dns-rr or dispatcher redirects (hop limit, loops, 0x9D memory).
//! - [`publisher`]: one publisher task; [`direct`]: its lean per-message path on its own
//!   socket, writing [`frame`]s; [`cli`]: `mqdispatch load` and its CSV.
//! - [`subscription`]: subscriber kinds (`--subscriber` specs, scenario `subscribers` entries);
//!   [`subscriber`]: the members, connected before the first publisher; [`receipts`]: latency
//!   histograms and sequence tracking (pure); [`streams`]: delivered against expected (pure).
//! - [`shard`]: one plan shared out over N loaders that start at an agreed instant;
//!   [`merge`]: their output files made into one loader's.
//!
//! [`run`] starts every planned publisher at its join time and streams [`LoadEvent`]s;
//! [`run_at`] does the same from an agreed start instant.

use std::sync::Arc;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub mod arrival;
mod cli;
mod direct;
mod frame;
pub mod lateness;
pub mod merge;
pub mod placement;
pub mod precise_timer;
pub mod profile;
mod publisher;
pub mod receipts;
pub mod schedule;
pub mod seconds;
mod send_job;
mod send_thread;
pub mod shard;
pub mod streams;
pub mod subscriber;
mod subscriber_cli;
mod subscriber_direct;
mod subscriber_session;
mod subscriber_work;
pub mod subscription;

pub use arrival::{ArrivalOrder, ArrivalSpec, PlannedPublisher, plan_arrivals};
pub use cli::{Args, cli_main};
pub use lateness::Lateness;
pub use merge::{LoadRecord, merge_shards};
pub use placement::{Placement, PlacementError};
pub use profile::{Profile, SendMode};
pub use publisher::PublisherSummary;
pub use shard::Shard;
pub use subscriber::{SubscriberConfig, SubscriberEvent, Subscribers, SubscribersSummary};
pub use subscription::SubscriberSpec;

/// Everything [`run`] needs.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub profiles: Vec<Profile>,
    /// From [`plan_arrivals`]; `profile` indexes `profiles`.
    pub publishers: Vec<PlannedPublisher>,
    pub placement: Placement,
    /// rumqttc outgoing in-flight limit per client (memory per client; 100 is plenty).
    pub inflight_limit: u16,
    /// Client id = prefix + publisher name.
    pub client_id_prefix: String,
    /// TLS to every dispatcher and broker, trusting this configuration's CAs; `None`: plain TCP.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl LoadConfig {
    pub fn validate(&self) -> Result<(), String> {
        for p in &self.profiles {
            p.validate()?;
        }
        self.placement.validate()?;
        if self.inflight_limit == 0 {
            return Err("inflight_limit must be at least 1".into());
        }
        let mut names = std::collections::HashSet::new();
        for p in &self.publishers {
            if p.profile >= self.profiles.len() {
                return Err(format!(
                    "publisher `{}` names profile #{}",
                    p.name, p.profile
                ));
            }
            if !names.insert(p.name.as_str()) {
                return Err(format!("two publishers are named `{}`", p.name));
            }
        }
        Ok(())
    }
}

/// What publishers report while they run (times are epoch ms, see [`crate::now_ms`]); one JSON
/// object per line with `mqdispatch load --events-out`, e.g.
/// `{"Joined":{"publisher":"light-1","broker":"198.18.0.11:40123","t_ms":1764930000123,"redirect_ms":0.4}}`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum LoadEvent {
    /// First CONNACK from a broker; `redirect_ms` when a dispatcher placed it.
    Joined {
        publisher: String,
        broker: String,
        t_ms: u64,
        redirect_ms: Option<f64>,
    },
    /// Messages written to `broker` during the wall-clock second starting at `t_ms`. One per
    /// publisher and second, or one per broker in a second where the publisher moved.
    Second {
        publisher: String,
        broker: String,
        t_ms: u64,
        sent: u64,
    },
    /// The connection to `broker` failed.
    Down {
        publisher: String,
        broker: String,
        t_ms: u64,
        error: String,
    },
    /// Connected again after a [`LoadEvent::Down`].
    Up {
        publisher: String,
        broker: String,
        t_ms: u64,
        downtime_ms: u64,
        redirect_ms: Option<f64>,
    },
    /// The publisher is done (last event of each publisher, always sent).
    Finished {
        publisher: String,
        sent_total: u64,
        target_total: u64,
        downtime_ms: u64,
    },
}

/// What [`run`] returns: one entry per planned publisher, in arrival order.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LoadSummary {
    pub publishers: Vec<PublisherSummary>,
    /// Epoch ms at which the run (join offset 0) started.
    pub start_ms: u64,
    pub cancelled: bool,
}

impl LoadSummary {
    pub fn sent_total(&self) -> u64 {
        self.publishers.iter().map(|p| p.sent_total).sum()
    }
    pub fn target_total(&self) -> u64 {
        self.publishers.iter().map(|p| p.target_total).sum()
    }
    /// Every publisher's lateness, merged.
    pub fn lateness(&self) -> Lateness {
        let mut all = Lateness::default();
        for p in &self.publishers {
            all.merge(&p.lateness);
        }
        all
    }
}

/// Runs every publisher of `cfg` (join offsets from now) until all have finished or `cancel`
/// fires. Events stream to `events` (a closed receiver is fine). A fatal placement error (redirect
/// loop, missing Server Reference, hop limit) stops the whole run and is returned.
///
/// The publishers run on a single-threaded runtime of their own thread: a per-message
/// publisher's timer wakes that thread and the write happens on it, with no hand-off to another
/// thread per message, and the generator's work stays apart from the caller's tasks (the
/// harness's recorder, agents and dispatcher). Dropping the returned future cancels the run.
pub async fn run(
    cfg: LoadConfig,
    events: UnboundedSender<LoadEvent>,
    cancel: CancellationToken,
) -> anyhow::Result<LoadSummary> {
    run_at(cfg, None, events, cancel).await
}

/// [`run`] with join offsets counted from `start_ms` (epoch ms, the instant the shards of one
/// load agreed on) instead of from now. The caller checks the instant ([`shard::check_start`],
/// as `mqdispatch load` does before its subscribers connect): checked here, the time the
/// subscribers took would count against it.
pub async fn run_at(
    cfg: LoadConfig,
    start_ms: Option<u64>,
    events: UnboundedSender<LoadEvent>,
    cancel: CancellationToken,
) -> anyhow::Result<LoadSummary> {
    cfg.validate().map_err(crate::InputError)?;
    let stop = cancel.child_token();
    let _stop_on_drop = stop.clone().drop_guard();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("loadgen".into())
        .spawn(move || {
            raise_priority();
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(run_here(cfg, start_ms, events, stop, cancel)));
            let _ = done_tx.send(result);
        })?;
    done_rx
        .await
        .map_err(|_| anyhow::anyhow!("the load generator thread panicked"))?
}

/// Nice level of the generator thread. Per-message deadlines are missed when the thread waits
/// for a core behind a broker's threads (the paper ran publishers on their own machines): a
/// higher priority lets it run as soon as its timer fires. Needs root (or CAP_SYS_NICE);
/// without it the thread keeps its default priority.
const GENERATOR_NICE: libc::c_int = -10;

pub(super) fn raise_priority() {
    // SAFETY: gettid and setpriority on our own thread id change only this thread's nice.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, GENERATOR_NICE)
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "generator thread keeps its priority");
    }
}

/// [`run_at`] on the current runtime. `stop` ends the publishers; `cancel` is what the caller
/// cancelled (for [`LoadSummary::cancelled`]).
async fn run_here(
    cfg: LoadConfig,
    start_at: Option<u64>,
    events: UnboundedSender<LoadEvent>,
    stop: CancellationToken,
    cancel: CancellationToken,
) -> anyhow::Result<LoadSummary> {
    let (clock, start) = shard::anchor(start_at);
    let start_ms = clock.ms_at(start);
    let payloads: Vec<Bytes> = cfg
        .profiles
        .iter()
        .map(|p| Bytes::from(crate::payload::template(p.payload_bytes)))
        .collect();
    let profiles = Arc::new(cfg.profiles);
    // Joined when this function returns, after every publisher has handed its job back.
    let send_thread = send_thread::SendThread::spawn()?;
    let mut tasks = JoinSet::new();
    for planned in &cfg.publishers {
        let profile = &profiles[planned.profile];
        let ctx = publisher::PublisherCtx {
            name: planned.name.clone(),
            profile: profile.name.clone(),
            topic: profile.topic_for(&planned.name),
            payload: payloads[planned.profile].clone(),
            qos: if profile.qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            },
            rate: profile.rate,
            duration: profile.duration,
            send: profile.send,
            batch_tick: profile.batch_tick,
            join_at: start + planned.join_at,
            entry: cfg.placement.entry_for(planned.index),
            connector: placement::Connector {
                client_id: format!("{}{}", cfg.client_id_prefix, planned.name),
                // QoS 0 never takes an in-flight slot, and rumqttc preallocates one `Publish` per
                // slot: a fleet of QoS 0 clients keeps one each (less memory at rest).
                inflight_limit: if profile.qos == 0 {
                    1
                } else {
                    cfg.inflight_limit
                },
                // Batched keeps Nagle: it is what coalesces a tick's PUBLISHes into few segments
                // (rumqttc writes each on its own), at up to a delayed ACK of latency.
                tcp_nodelay: profile.send != SendMode::Batched,
                direct: profile.send == SendMode::PerMessage,
                tls: cfg.tls.clone(),
                declared_rate: Some(profile.rate),
            },
            clock,
            send_thread: send_thread.handle(),
        };
        let (events, stop) = (events.clone(), stop.clone());
        let index = planned.index;
        tasks.spawn(async move { (index, publisher::run_publisher(ctx, events, stop).await) });
    }
    let mut done = Vec::with_capacity(cfg.publishers.len());
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let (index, result) = joined?;
        match result {
            Ok(summary) => done.push((index, summary)),
            Err(e) => {
                tracing::error!(error = %e, "placement failed: stopping every publisher");
                stop.cancel();
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(anyhow::Error::new(e).context("load generator stopped"));
    }
    done.sort_by_key(|(index, _)| *index);
    Ok(LoadSummary {
        publishers: done.into_iter().map(|(_, s)| s).collect(),
        start_ms,
        cancelled: cancel.is_cancelled(),
    })
}
