//! `mqdispatch load --subscriber ...`: subscribers beside (or without) the publishers, their
//! per-second CSV and the table printed at the end.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::receipts::{latency_histogram, max_ms, quantile_ms};
use super::streams::{SentByBroker, StreamRow, publishers_by_topic, stream_rows};
use super::subscriber::{self, SubscriberConfig, SubscriberEvent, Subscribers, Via};
use super::{LoadConfig, Profile, SubscriberSpec};
use crate::InputError;

/// After the last publisher: how long without a new message means nothing is in flight ...
const QUIET: Duration = Duration::from_secs(1);
/// ... and the longest the subscribers are given to drain their backlog.
const DRAIN_WITHIN: Duration = Duration::from_secs(15);

/// The flag combinations that make sense, with the fix for those that do not.
pub(super) fn check_args(
    profiles: &[Profile],
    subscribers: &[SubscriberSpec],
    subscribe_for: Option<Duration>,
    brokers: &[String],
    via: &Via,
) -> Result<(), InputError> {
    let fail = |m: &str| Err(InputError(m.to_owned()));
    match (profiles.is_empty(), subscribers.is_empty(), subscribe_for) {
        (true, true, _) => fail("nothing to run: give a --profile (publishers) or a --subscriber"),
        (true, false, None) => {
            fail("subscribers alone need --subscribe-for DURATION (when to stop)")
        }
        (false, _, Some(_)) => fail(
            "--subscribe-for is for subscribers without publishers; with --profile they stop \
             once the publishers are done and what was in flight has arrived",
        ),
        (_, false, _) if brokers.is_empty() && *via == Via::Brokers => fail(
            "--subscriber needs --broker addresses (members connect to brokers b1, b2, ... in \
             the order the --broker flags are given) or --dispatcher (members are placed by it)",
        ),
        _ => Ok(()),
    }
}

/// Running subscribers and their CSV writer.
pub(super) struct Session {
    subscribers: Subscribers,
    specs: Vec<SubscriberSpec>,
    /// `(publisher, topic)` of every planned publisher.
    publishers: Vec<(String, String)>,
    writer: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Session {
    pub(super) async fn start(
        specs: Vec<SubscriberSpec>,
        brokers: &[String],
        via: Via,
        load: &LoadConfig,
        out: Option<&Path>,
        start_s: u64,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Session> {
        let publishers: Vec<(String, String)> = load
            .publishers
            .iter()
            .map(|p| {
                let topic = load.profiles[p.profile].topic_for(&p.name);
                (p.name.clone(), topic)
            })
            .collect();
        let publishers_by_topic = publishers_by_topic(&publishers).map_err(InputError)?;
        let cfg = SubscriberConfig {
            specs: specs.clone(),
            brokers: broker_ids(brokers),
            publishers_by_topic,
            sender_clocks_us: HashMap::new(),
            client_id_prefix: format!("{}sub-", load.client_id_prefix),
            tls: load.tls.clone(),
        };
        let out = out.map(super::cli::create_new).transpose()?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let writer = tokio::task::spawn_blocking(move || write_seconds(rx, out, start_s));
        let subscribers = subscriber::start_via(cfg, via, tx, cancel.child_token())
            .await
            .context("subscribers")?;
        tracing::info!(
            members = specs.iter().map(|s| s.count).sum::<usize>(),
            "subscribed"
        );
        Ok(Session {
            subscribers,
            specs,
            publishers,
            writer,
        })
    }

    /// Waits for what is in flight, stops the members, and renders the end-of-run table.
    pub(super) async fn finish(
        self,
        brokers: &[String],
        sent_by_address: &SentByBroker,
    ) -> anyhow::Result<String> {
        let summary = self.subscribers.finish(QUIET, DRAIN_WITHIN).await?;
        self.writer.await.context("subscriber csv writer")??;
        let ids: HashMap<String, String> = broker_ids(brokers)
            .into_iter()
            .map(|(id, addr)| (addr, id))
            .collect();
        let sent: SentByBroker = sent_by_address
            .iter()
            .map(|((p, addr), n)| {
                let id = ids.get(addr).cloned().unwrap_or_else(|| addr.clone());
                ((p.clone(), id), *n)
            })
            .collect();
        let rows = stream_rows(&self.specs, &summary, &self.publishers, &sent);
        Ok(render(&self.specs, &summary, &rows))
    }
}

/// `b1`, `b2`, ... for the addresses in order.
fn broker_ids(addrs: &[String]) -> Vec<(String, String)> {
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("b{}", i + 1), a.clone()))
        .collect()
}

fn write_seconds(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<SubscriberEvent>,
    out: Option<std::fs::File>,
    start_s: u64,
) -> anyhow::Result<()> {
    let Some(file) = out else {
        while rx.blocking_recv().is_some() {}
        return Ok(());
    };
    let mut w = csv::Writer::from_writer(file);
    w.write_record([
        "t_s",
        "subscriber",
        "broker",
        "received",
        "latency_p50_ms",
        "latency_p99_ms",
        "latency_max_ms",
        "moves",
    ])?;
    let ms = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_default();
    while let Some(SubscriberEvent::Second {
        member,
        broker,
        t_ms,
        received,
        latency_us,
        moves,
        ..
    }) = rx.blocking_recv()
    {
        w.write_record([
            (t_ms / 1000).saturating_sub(start_s).to_string(),
            member,
            broker,
            received.to_string(),
            ms(quantile_ms(&latency_us, 0.5)),
            ms(quantile_ms(&latency_us, 0.99)),
            ms(max_ms(&latency_us)),
            moves.to_string(),
        ])?;
        if rx.is_empty() {
            w.flush()?;
        }
    }
    w.flush()?;
    Ok(())
}

/// One line per subscriber entry: what arrived of what was expected, and how late.
fn render(
    specs: &[SubscriberSpec],
    summary: &subscriber::SubscribersSummary,
    rows: &[StreamRow],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:>7} {:>10} {:>10} {:>8} {:>6} {:>6}  latency mean / p50 / p99 / p99.9 / max (ms)",
        "subscriber", "members", "expected", "received", "lost", "dup", "ooo"
    );
    for spec in specs {
        let mut latency = latency_histogram();
        let members: Vec<_> = summary
            .members
            .iter()
            .filter(|m| m.entry == spec.name)
            .collect();
        for m in &members {
            let _ = latency.add(&m.latency_us);
        }
        let mine = rows.iter().filter(|r| r.subscriber == spec.name);
        let sum = |f: fn(&StreamRow) -> u64| mine.clone().map(f).sum::<u64>();
        // Without planned publishers nothing is expected: count what arrived.
        let (expected, received, lost) = if rows.is_empty() {
            let got = members.iter().map(|m| m.received).sum::<u64>();
            ("-".to_owned(), got, "-".to_owned())
        } else {
            (
                sum(|r| r.expected).to_string(),
                sum(|r| r.received),
                sum(|r| r.lost).to_string(),
            )
        };
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
        let _ = writeln!(
            out,
            "{:<12} {:>7} {:>10} {:>10} {:>8} {:>6} {:>6}  {} / {} / {} / {} / {}",
            spec.name,
            members.len(),
            expected,
            received,
            lost,
            sum(|r| r.duplicates),
            sum(|r| r.out_of_order),
            ms((!latency.is_empty()).then(|| latency.mean() / 1000.0)),
            ms(quantile_ms(&latency, 0.5)),
            ms(quantile_ms(&latency, 0.99)),
            ms(quantile_ms(&latency, 0.999)),
            ms(max_ms(&latency)),
        );
    }
    out
}
