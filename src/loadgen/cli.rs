//! `mqdispatch load`: the generator on its own, with a streamed per-second CSV
//! (`t_s,publisher,profile,broker,sent`), a final per-publisher summary on stdout and, on
//! request, in a JSON file; one shard of a load shared out over several loaders.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::ArgGroup;
use tokio_util::sync::CancellationToken;

use super::merge::{LoadRecord, SECONDS_HEADER, record_json};
use super::shard::{self, Shard};
use super::streams::SentByBroker;
use super::subscriber::Via;
use super::subscriber_cli;
use super::{
    ArrivalOrder, ArrivalSpec, LoadConfig, LoadEvent, LoadSummary, Placement, Profile,
    SubscriberSpec, plan_arrivals, run_at,
};
use crate::InputError;

#[derive(Debug, clap::Args)]
#[command(group(ArgGroup::new("target").required(true).args(["dispatcher", "broker"])))]
pub struct Args {
    /// Dispatcher to ask for a broker (repeatable: tried in order on failure).
    #[arg(long, value_name = "HOST:PORT")]
    dispatcher: Vec<String>,
    /// Broker to connect to directly (repeatable: arrival i goes to broker i mod n).
    #[arg(long, value_name = "HOST:PORT")]
    broker: Vec<String>,
    /// Publisher profile, e.g. `name=light,count=9,rate=2000,bytes=600,duration=100s[,qos=0]`
    /// (repeatable).
    #[arg(long = "profile", value_name = "SPEC", value_parser = Profile::parse_spec)]
    profiles: Vec<Profile>,
    /// Subscriber kind, e.g. `name=backend,count=2,topic=$share/g/load/#[,qos=0][,broker=b2]
    /// [,work_us=50][,work=busy|idle]` (repeatable). With `--broker`: b1, b2, ... in order;
    /// with `--dispatcher`: each member is placed by it (CONNECT user property `subscribe` =
    /// its topic) and follows a later DISCONNECT 0x9C/0x9D to the broker it names.
    /// Every member connects and subscribes before the first publisher.
    #[arg(long = "subscriber", value_name = "SPEC", value_parser = SubscriberSpec::parse_spec)]
    subscribers: Vec<SubscriberSpec>,
    /// Without any `--profile`: how long the subscribers receive before they stop.
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse_arg)]
    subscribe_for: Option<Duration>,
    /// Per-second subscriber CSV to create (never overwritten):
    /// `t_s,subscriber,broker,received,latency_p50_ms,latency_p99_ms,latency_max_ms,moves`
    /// (`moves`: the member's moves so far, server DISCONNECT 0x9C/0x9D followed).
    #[arg(long, value_name = "FILE.csv", requires = "subscribers")]
    subscribers_out: Option<PathBuf>,
    /// Time between two arrivals (or bursts).
    #[arg(long, default_value = "5s", value_parser = crate::duration::parse_arg)]
    arrival_interval: Duration,
    /// `random` (seeded) or profile names in arrival order, e.g. `light,heavy,light`.
    #[arg(long, default_value = "random", value_parser = ArrivalOrder::parse_arg)]
    order: ArrivalOrder,
    /// Random extra delay in [0, JITTER] for each arrival; below the interval.
    #[arg(long, default_value = "0s", value_parser = crate::duration::parse_arg)]
    jitter: Duration,
    /// Connect N publishers at the same instant per arrival.
    #[arg(long, value_name = "N")]
    burst: Option<usize>,
    /// Seed of the arrival order and jitter (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Per-second CSV to create (never overwritten).
    #[arg(long, value_name = "FILE.csv")]
    out: Option<PathBuf>,
    /// Summary JSON to create (never overwritten): seed, shard, start and one entry per
    /// publisher with its arrival index (`mqdispatch load-merge` joins shards' files).
    #[arg(long, value_name = "FILE.json")]
    summary_out: Option<PathBuf>,
    /// Every publisher event as one JSON line, as it happens (`-`: stdout, which then carries
    /// nothing else; the summary table goes to stderr): what `mqdispatch run` reads from its
    /// loader shards on other hosts.
    #[arg(long, value_name = "FILE.jsonl|-")]
    events_out: Option<PathBuf>,
    /// Run shard K of N of the arrival plan: the publishers whose arrival index i has
    /// i mod N = K-1, each with the join instant and broker the whole plan gives it. With
    /// N > 1 it needs --seed and --start-at, and subscribers run in a loader of their own.
    #[arg(long, value_name = "K/N", value_parser = Shard::parse_arg)]
    shard: Option<Shard>,
    /// Count join offsets from this instant (milliseconds since the Unix epoch) instead of
    /// from now; every shard of a load gets the same. Up to 3 s in the past is run (whoever's
    /// join instant has passed joins at once), further back is refused.
    #[arg(long, value_name = "UNIX_MS")]
    start_at: Option<u64>,
    /// QoS for every profile (overrides the profiles' `qos=`).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: Option<u8>,
    /// Most redirects followed per connection (dispatcher → dispatcher → broker is 2).
    #[arg(long, default_value_t = 4)]
    max_hops: u8,
    /// rumqttc outgoing in-flight limit per client.
    #[arg(long, default_value_t = 100)]
    inflight: u16,
    /// Client ids are PREFIX + publisher name (default `mqd<pid>-`).
    #[arg(long, value_name = "PREFIX")]
    client_id_prefix: Option<String>,
    /// Speak TLS to the dispatchers and brokers, trusting the CA certificates in this PEM file
    /// (the addresses given are then TLS ports).
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// With `--tls-ca`: present this device certificate (PEM chain) to servers that require
    /// one (a dispatcher with `--tls-client-ca`); `--tls-key` is its private key.
    #[arg(long, value_name = "PEM", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

pub async fn cli_main(args: Args) -> anyhow::Result<()> {
    let shard = args.shard.unwrap_or_else(Shard::whole);
    check_shard_args(&args, shard)?;
    let mut profiles = args.profiles;
    if let Some(qos) = args.qos {
        profiles.iter_mut().for_each(|p| p.qos = qos);
    }
    let via = match args.dispatcher.is_empty() {
        true => Via::Brokers,
        false => Via::Dispatchers {
            addrs: args.dispatcher.clone(),
            max_hops: args.max_hops,
        },
    };
    subscriber_cli::check_args(
        &profiles,
        &args.subscribers,
        args.subscribe_for,
        &args.broker,
        &via,
    )?;
    if let Some(ms) = args.start_at {
        shard::check_start(ms, crate::now_ms())
            .map_err(|e| InputError(format!("--start-at: {e}")))?;
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let spec = ArrivalSpec {
        order: args.order,
        interval: args.arrival_interval,
        jitter: args.jitter,
        burst: args.burst,
    };
    let publishers = if profiles.is_empty() {
        Vec::new()
    } else {
        shard.select(plan_arrivals(&profiles, &spec, seed).map_err(InputError)?)
    };
    if publishers.is_empty() && !profiles.is_empty() {
        tracing::warn!(%shard, "this shard has no publishers (more shards than publishers)");
    }
    let wave = args.burst.unwrap_or(1).min(publishers.len());
    crate::fdlimit::raise(
        crate::fdlimit::needed_for((publishers.len() + 2 * wave) as u64),
        &format!("{} publishers", publishers.len()),
    )
    .map_err(|e| InputError(e.to_string()))?;
    let broker_addrs = args.broker.clone();
    let placement = if args.dispatcher.is_empty() {
        Placement::DnsRoundRobin {
            brokers: args.broker,
        }
    } else {
        Placement::Dispatcher {
            dispatchers: args.dispatcher,
            max_hops: args.max_hops,
        }
    };
    let cfg = LoadConfig {
        profiles,
        publishers,
        placement,
        inflight_limit: args.inflight,
        client_id_prefix: args
            .client_id_prefix
            .unwrap_or_else(|| format!("mqd{}-", std::process::id())),
        tls: match &args.tls_ca {
            Some(ca) => {
                let device = args.tls_cert.as_deref().zip(args.tls_key.as_deref());
                Some(
                    crate::tls::client_config_with_identity(ca, device)
                        .context("--tls-ca / --tls-cert / --tls-key")?,
                )
            }
            None => None,
        },
    };
    cfg.validate().map_err(InputError)?;
    let out = match &args.out {
        Some(path) => Some(create_new(path)?),
        None => None,
    };
    let to_stdout = args.events_out.as_deref() == Some(Path::new("-"));
    let events_out: Option<Box<dyn Write + Send>> = match &args.events_out {
        Some(_) if to_stdout => Some(Box::new(std::io::stdout())),
        Some(path) => Some(Box::new(create_new(path)?)),
        None => None,
    };
    let summary_out = match &args.summary_out {
        Some(path) => Some((create_new(path)?, path.clone())),
        None => None,
    };
    tracing::info!(seed, %shard, publishers = cfg.publishers.len(), "load starting");
    let profile_of: HashMap<String, String> = cfg
        .publishers
        .iter()
        .map(|p| (p.name.clone(), cfg.profiles[p.profile].name.clone()))
        .collect();
    let start_s = args.start_at.unwrap_or_else(crate::now_ms) / 1000;
    let cancel = CancellationToken::new();
    let signals = crate::shutdown::cancel_on_signal(
        &cancel,
        |signal| tracing::warn!(%signal, "interrupted: stopping publishers and subscribers"),
    )?;
    // Subscribers first: every member has its SUBACK before the first publisher connects.
    let subscribers = match args.subscribers.is_empty() {
        true => None,
        false => Some(
            subscriber_cli::Session::start(
                args.subscribers,
                &broker_addrs,
                via,
                &cfg,
                args.subscribers_out.as_deref(),
                start_s,
                &cancel,
            )
            .await?,
        ),
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let writer =
        tokio::task::spawn_blocking(move || write_csv(rx, out, events_out, profile_of, start_s));
    let plan = cfg.publishers.clone();
    let result = if cfg.profiles.is_empty() {
        drop(tx);
        let listen = args.subscribe_for.unwrap_or_default();
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(listen) => {}
        }
        None
    } else {
        Some(run_at(cfg, args.start_at, tx, cancel.clone()).await)
    };
    // `run` has dropped every sender: the writer drains the rest and ends.
    let sent = writer.await.context("csv writer task")??;
    let received = match subscribers {
        Some(session) => Some(session.finish(&broker_addrs, &sent).await?),
        None => None,
    };
    drop(signals);
    if let Some(result) = result {
        let summary = match result {
            Ok(summary) => summary,
            Err(e) => {
                if let Some((_, path)) = &summary_out {
                    let _ = std::fs::remove_file(path);
                }
                return Err(e);
            }
        };
        if let Some((mut file, path)) = summary_out {
            file.write_all(&record_json(&LoadRecord::new(&summary, &plan, seed, shard)))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        match to_stdout {
            true => eprint!("{}", render_summary(&summary, seed)),
            false => print!("{}", render_summary(&summary, seed)),
        }
    }
    if let Some(table) = received {
        print!("{table}");
    }
    Ok(())
}

/// Shards of one load must draw one plan and start together; subscribers would count only
/// their own shard's publishers as expected.
fn check_shard_args(args: &Args, shard: Shard) -> Result<(), InputError> {
    if shard.n() == 1 {
        return Ok(());
    }
    let fail = |m: String| Err(InputError(m));
    if args.seed.is_none() {
        return fail(format!(
            "--shard {shard} needs --seed N: every shard must draw the same arrival plan"
        ));
    }
    if args.start_at.is_none() {
        return fail(format!(
            "--shard {shard} needs --start-at UNIX_MS: the instant all shards count join \
             offsets from"
        ));
    }
    if !args.subscribers.is_empty() {
        return fail(format!(
            "--shard {shard} runs no subscribers (they would expect only this shard's \
             messages): run them in a loader of their own, `mqdispatch load --broker ... \
             --subscriber ... --subscribe-for DURATION`"
        ));
    }
    if args.profiles.is_empty() {
        return fail(format!(
            "--shard {shard} needs --profile: shards share out publishers"
        ));
    }
    Ok(())
}

pub(super) fn create_new(path: &Path) -> anyhow::Result<File> {
    match File::options().write(true).create_new(true).open(path) {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(InputError(format!(
            "{} already exists: choose another --out (results are never overwritten)",
            path.display()
        ))
        .into()),
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}

/// Writes one row per [`LoadEvent::Second`], flushed as soon as no further event is waiting (so
/// a run stopped early keeps every second already counted).
///
/// Returns what each publisher wrote to each broker address (what subscribers should get).
fn write_csv(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<LoadEvent>,
    out: Option<File>,
    mut events: Option<Box<dyn Write + Send>>,
    profile_of: HashMap<String, String>,
    start_s: u64,
) -> anyhow::Result<SentByBroker> {
    let mut sent_by_broker = SentByBroker::new();
    let mut csv = out.map(csv::Writer::from_writer);
    if let Some(w) = csv.as_mut() {
        w.write_record(SECONDS_HEADER)?;
        w.flush()?;
    }
    while let Some(event) = rx.blocking_recv() {
        if let Some(w) = events.as_mut() {
            serde_json::to_writer(&mut *w, &event)?;
            w.write_all(b"\n")?;
            if rx.is_empty() {
                w.flush()?;
            }
        }
        if let LoadEvent::Second {
            publisher,
            broker,
            sent,
            ..
        } = &event
        {
            *sent_by_broker
                .entry((publisher.clone(), broker.clone()))
                .or_default() += sent;
        }
        if let (
            Some(w),
            LoadEvent::Second {
                publisher,
                broker,
                t_ms,
                sent,
            },
        ) = (csv.as_mut(), &event)
        {
            let t_s = (t_ms / 1000).saturating_sub(start_s);
            let profile = profile_of.get(publisher).map_or("", String::as_str);
            w.write_record([
                t_s.to_string(),
                publisher.clone(),
                profile.to_owned(),
                broker.clone(),
                sent.to_string(),
            ])?;
            if rx.is_empty() {
                w.flush()?;
            }
        }
    }
    if let Some(w) = csv.as_mut() {
        w.flush()?;
    }
    if let Some(w) = events.as_mut() {
        w.flush()?;
    }
    Ok(sent_by_broker)
}

/// The table printed at the end.
pub fn render_summary(summary: &LoadSummary, seed: u64) -> String {
    let mut out = Vec::new();
    let _ = writeln!(
        out,
        "{:<12} {:<8} {:<22} {:>7} {:>11} {:>10} {:>10} {:>8} {:>11}",
        "publisher",
        "profile",
        "broker",
        "join_s",
        "redirect_ms",
        "target",
        "sent",
        "sent_%",
        "downtime_ms"
    );
    for p in &summary.publishers {
        let join_s = p
            .joined_ms
            .map(|ms| format!("{:.1}", ms.saturating_sub(summary.start_ms) as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        let redirect = p
            .redirect_ms
            .map(|ms| format!("{ms:.2}"))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<12} {:<8} {:<22} {:>7} {:>11} {:>10} {:>10} {:>8.2} {:>11}",
            p.name,
            p.profile,
            p.broker.as_deref().unwrap_or("-"),
            join_s,
            redirect,
            p.target_total,
            p.sent_total,
            percent(p.sent_total, p.target_total),
            p.downtime_ms
        );
    }
    let _ = writeln!(
        out,
        "total: sent {} of {} ({:.2} %), seed {seed}{}",
        summary.sent_total(),
        summary.target_total(),
        percent(summary.sent_total(), summary.target_total()),
        if summary.cancelled {
            ", interrupted"
        } else {
            ""
        }
    );
    let lateness = summary.lateness();
    if let (Some(p50), Some(p99)) = (lateness.quantile(0.5), lateness.quantile(0.99)) {
        let _ = writeln!(
            out,
            "lateness against each message's deadline: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            lateness.max().as_secs_f64() * 1e3
        );
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}
