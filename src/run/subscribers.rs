//! A method run's subscribers: started (every SUBACK in) before the first publisher, their
//! seconds recorded as they come, their receipts and histograms written at the end.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio_util::sync::CancellationToken;

use crate::loadgen::placement::DEFAULT_MAX_HOPS;
use crate::loadgen::receipts::latency_histogram;
use crate::loadgen::receipts::{max_ms, quantile_ms};
use crate::loadgen::streams::{SentByBroker, publishers_by_topic, stream_rows};
use crate::loadgen::subscriber::Via;
use crate::loadgen::subscription::MemberPlacement;
use crate::loadgen::{
    LoadEvent, PlannedPublisher, SubscriberConfig, SubscriberEvent, SubscriberSpec, Subscribers,
    SubscribersSummary,
};
use crate::report::subscribers::{
    ALL_BROKERS, LatencyRow, ReceiptRow, SubscriberFiles, SubscriberRow, round3,
};
use crate::scenario::Scenario;

/// After the last publisher: this long without a message means nothing is in flight ...
const QUIET: Duration = Duration::from_secs(1);
/// ... and the subscribers get at most this long to work off their backlog.
const DRAIN_WITHIN: Duration = Duration::from_secs(15);
/// A broker's second is written once every member's report of it can have arrived.
const SETTLE_MS: u64 = 2_000;

pub(super) struct SubscriberRun {
    /// Members connected straight to brokers, and members placed by the dispatcher (entries
    /// with `placement: method` in a dispatcher method); taken by [`SubscriberRun::finish`].
    subscribers: Vec<Subscribers>,
    events: UnboundedReceiver<SubscriberEvent>,
    files: SubscriberFiles,
    specs: Vec<SubscriberSpec>,
    /// `(publisher, topic)` of the plan.
    publishers: Vec<(String, String)>,
    trial: u32,
    method: String,
    /// Start of the run's second 0 (epoch ms, whole second), as in brokers.csv; `None` until
    /// the publishers start.
    t0_ms: Option<u64>,
    started_ms: u64,
    /// Per (second, broker): every member's latencies of that second, until settled.
    pending: BTreeMap<(u64, String), Histogram<u64>>,
    /// Broker address → id (publishers report addresses).
    broker_of_addr: HashMap<String, String>,
    sent: SentByBroker,
}

/// What the caller passes in to start a method run's subscribers.
pub(super) struct Start<'a> {
    pub scenario: &'a Scenario,
    pub plan: &'a [PlannedPublisher],
    pub trial: u32,
    pub method: &'a str,
    /// `(id, address publishers use)` of every broker.
    pub brokers: &'a [(String, String)],
    /// The method's dispatcher (where members connect): `placement: method` entries go
    /// through it; `None` for `dns-rr`, whose method-placed members sit on each broker.
    pub dispatcher: Option<String>,
    pub client_id_prefix: String,
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    pub dir: &'a Path,
    /// Publisher → its host's clock minus this machine's (µs), for publishers on loader hosts.
    pub sender_clocks_us: HashMap<String, i64>,
}

impl SubscriberRun {
    /// `None` for a scenario without subscribers.
    pub(super) async fn start(
        s: Start<'_>,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Option<SubscriberRun>> {
        if s.scenario.subscribers.is_empty() {
            return Ok(None);
        }
        let publishers: Vec<(String, String)> = s
            .plan
            .iter()
            .map(|p| {
                let topic = s.scenario.profiles[p.profile].topic_for(&p.name);
                (p.name.clone(), topic)
            })
            .collect();
        let (tx, events) = unbounded_channel();
        let cfg = |specs: Vec<SubscriberSpec>| -> anyhow::Result<SubscriberConfig> {
            Ok(SubscriberConfig {
                specs,
                brokers: s.brokers.to_vec(),
                publishers_by_topic: publishers_by_topic(&publishers).map_err(crate::InputError)?,
                sender_clocks_us: s.sender_clocks_us.clone(),
                client_id_prefix: format!("{}sub-", s.client_id_prefix),
                tls: s.tls.clone(),
            })
        };
        let (via_dispatcher, direct) =
            split_by_via(&s.scenario.subscribers, s.dispatcher.as_deref());
        let mut subscribers = Vec::new();
        if !direct.is_empty() {
            let started =
                crate::loadgen::subscriber::start(cfg(direct)?, tx.clone(), cancel.child_token())
                    .await
                    .context("starting subscribers")?;
            subscribers.push(started);
        }
        if let (Some(addr), false) = (&s.dispatcher, via_dispatcher.is_empty()) {
            let via = Via::Dispatchers {
                addrs: vec![addr.clone()],
                max_hops: DEFAULT_MAX_HOPS,
            };
            let started = crate::loadgen::subscriber::start_via(
                cfg(via_dispatcher)?,
                via,
                tx,
                cancel.child_token(),
            )
            .await
            .context("starting subscribers through the dispatcher")?;
            subscribers.push(started);
        }
        let now = crate::now_ms();
        Ok(Some(SubscriberRun {
            subscribers,
            events,
            files: SubscriberFiles::open(s.dir)?,
            specs: s.scenario.subscribers.clone(),
            publishers,
            trial: s.trial,
            method: s.method.to_owned(),
            t0_ms: None,
            started_ms: now,
            pending: BTreeMap::new(),
            broker_of_addr: s
                .brokers
                .iter()
                .map(|(id, a)| (a.clone(), id.clone()))
                .collect(),
            sent: SentByBroker::new(),
        }))
    }

    /// Second 0 of the run (the recorder's `t0`, not yet floored).
    pub(super) fn set_t0(&mut self, t0_ms: u64) {
        self.t0_ms = Some(t0_ms - t0_ms % 1000);
    }

    /// The next member report; pending forever without subscribers (for `select!`).
    pub(super) async fn next(run: &mut Option<SubscriberRun>) -> SubscriberEvent {
        match run {
            Some(r) => match r.events.recv().await {
                Some(e) => e,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// A member's second: its row, and its latencies into its broker's second.
    pub(super) fn record(&mut self, event: SubscriberEvent) -> anyhow::Result<()> {
        let SubscriberEvent::Second {
            member,
            broker,
            t_ms,
            received,
            latency_us,
            moves,
            ..
        } = event;
        // Seconds before the first publisher (subscribed and waiting) are not part of the run.
        let Some(t0_ms) = self.t0_ms.filter(|t0| t_ms >= *t0) else {
            return Ok(());
        };
        let t_s = (t_ms - t0_ms) / 1000;
        self.files.subscriber_row(&SubscriberRow {
            trial: self.trial,
            method: self.method.clone(),
            t_s,
            subscriber: member,
            broker: broker.clone(),
            received,
            latency_p50_ms: round3(quantile_ms(&latency_us, 0.5)),
            latency_p99_ms: round3(quantile_ms(&latency_us, 0.99)),
            latency_max_ms: round3(max_ms(&latency_us)),
            moves,
        })?;
        let _ = self
            .pending
            .entry((t_s, broker))
            .or_insert_with(latency_histogram)
            .add(&*latency_us);
        Ok(())
    }

    /// Publishers' per-second counts: what each broker's subscribers should receive.
    pub(super) fn load_event(&mut self, event: &LoadEvent) {
        if let LoadEvent::Second {
            publisher,
            broker,
            sent,
            ..
        } = event
        {
            let id = self
                .broker_of_addr
                .get(broker)
                .cloned()
                .unwrap_or_else(|| broker.clone());
            *self.sent.entry((publisher.clone(), id)).or_default() += sent;
        }
    }

    /// Writes the broker seconds every member has reported (all of them when `all`).
    pub(super) fn write_settled(&mut self, all: bool) -> anyhow::Result<()> {
        let Some(t0_ms) = self.t0_ms else {
            return Ok(());
        };
        let horizon = crate::now_ms().saturating_sub(t0_ms + SETTLE_MS) / 1000;
        while let Some(entry) = self.pending.first_entry() {
            if !all && entry.key().0 >= horizon {
                break;
            }
            let ((t_s, broker), h) = entry.remove_entry();
            self.files
                .latency_row(&LatencyRow::of(self.trial, &self.method, t_s, &broker, &h))?;
        }
        self.files.flush()?;
        Ok(())
    }

    /// Lets what is in flight arrive, stops the members, writes the rest: the broker seconds,
    /// `receipts.csv` and the run's hlog.
    pub(super) async fn finish(mut self) -> anyhow::Result<()> {
        // Both sets drain at once, not one after the other.
        let mut finishing = tokio::task::JoinSet::new();
        for set in std::mem::take(&mut self.subscribers) {
            finishing.spawn(set.finish(QUIET, DRAIN_WITHIN));
        }
        let mut summary = SubscribersSummary::default();
        while let Some(part) = finishing.join_next().await {
            let part = part.context("a subscriber set's task")??;
            summary.members.extend(part.members);
            summary.streams.extend(part.streams);
        }
        while let Ok(e) = self.events.try_recv() {
            self.record(e)?;
        }
        self.write_settled(true)?;
        for row in stream_rows(&self.specs, &summary, &self.publishers, &self.sent) {
            self.files
                .receipt_row(&ReceiptRow::of(self.trial, &self.method, &row))?;
        }
        self.files.flush()?;
        let mut by_broker: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
        let mut all = latency_histogram();
        for m in &summary.members {
            let _ = by_broker
                .entry(m.broker.clone())
                .or_insert_with(latency_histogram)
                .add(&m.latency_us);
            let _ = all.add(&m.latency_us);
        }
        let mut tagged: Vec<(String, &Histogram<u64>)> =
            by_broker.iter().map(|(b, h)| (b.clone(), h)).collect();
        tagged.push((ALL_BROKERS.to_owned(), &all));
        self.files.write_hlog(
            self.trial,
            &self.method,
            self.started_ms,
            crate::now_ms(),
            &tagged,
        )?;
        Ok(())
    }
}

/// The entries whose members connect through `dispatcher` (`placement: method` in a method
/// with a dispatcher; handed over as `each-broker`, the one placement a dispatcher start takes)
/// and those that connect straight to brokers (a `placement: method` entry of `dns-rr` sits on
/// each broker).
fn split_by_via(
    specs: &[SubscriberSpec],
    dispatcher: Option<&str>,
) -> (Vec<SubscriberSpec>, Vec<SubscriberSpec>) {
    let (mut via, mut direct) = (Vec::new(), Vec::new());
    for spec in specs {
        let mut spec = spec.clone();
        let by_method = spec.placement == MemberPlacement::Method;
        if by_method {
            spec.placement = MemberPlacement::EachBroker;
        }
        if by_method && dispatcher.is_some() {
            via.push(spec);
        } else {
            direct.push(spec);
        }
    }
    (via, direct)
}
