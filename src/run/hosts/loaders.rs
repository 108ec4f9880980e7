//! The publishers on loader hosts: shard k of N on the k-th loader host (`mqdispatch load
//! --shard k/N --start-at T`, T moved onto that host's clock), each streaming its events as
//! JSON lines (`--events-out -`) which the runner feeds to its recorder as if one loader ran
//! here; at the end each shard's files come back and its summary joins the others'
//! (`load-merge`'s logic) into the method's load summary.

use std::collections::HashMap;
use std::pin::Pin;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{HostSession, to_local_ms};
use crate::loadgen::merge::{LoadRecord, merge_records, read_record};
use crate::loadgen::{
    ArrivalOrder, LoadConfig, LoadEvent, LoadSummary, Placement, PlannedPublisher,
    PublisherSummary, Shard,
};
use crate::remote::RemoteRole;
use crate::remote::files::fetch_dir;
use crate::scenario::Scenario;

const SUMMARY: &str = "summary.json";

/// One method run's load, as the runner would have run it here.
pub(crate) struct ShardedLoad<'a> {
    scenario: &'a Scenario,
    seed: u64,
    placement: Placement,
    client_id_prefix: String,
    /// Join offset 0, epoch ms on this machine's clock.
    start_ms: u64,
    /// `t1-proposed`: names logs and folders.
    tag: String,
}

type LoadFuture<'a> = Pin<Box<dyn Future<Output = anyhow::Result<LoadSummary>> + Send + 'a>>;

impl<'a> ShardedLoad<'a> {
    pub(crate) fn new(scenario: &'a Scenario, seed: u64, start_ms: u64, tag: String) -> Self {
        ShardedLoad {
            scenario,
            seed,
            placement: Placement::DnsRoundRobin {
                brokers: Vec::new(),
            },
            client_id_prefix: String::new(),
            start_ms,
            tag,
        }
    }

    /// `cfg` on the loader hosts of `hosts` when there are some, else here. With hosts, the
    /// load fails if any host's connection is lost before it ends (stopped, and what it sent
    /// until then already streamed to `events`).
    pub(crate) fn run(
        mut self,
        hosts: Option<&'a HostSession>,
        cfg: LoadConfig,
        events: UnboundedSender<LoadEvent>,
        stop: CancellationToken,
    ) -> LoadFuture<'a> {
        let Some(hosts) = hosts else {
            return Box::pin(crate::loadgen::run(cfg, events, stop));
        };
        let load: LoadFuture<'a> = if hosts.has_loaders() {
            self.placement = cfg.placement;
            self.client_id_prefix = cfg.client_id_prefix;
            Box::pin(hosts.run_loaders(self, events, stop.clone()))
        } else {
            Box::pin(crate::loadgen::run(cfg, events, stop.clone()))
        };
        Box::pin(async move {
            tokio::pin!(load);
            tokio::select! {
                result = &mut load => result,
                lost = hosts.lost() => {
                    stop.cancel();
                    if let Err(e) = load.await {
                        warn!(error = %format!("{e:#}"), "the load, stopped for a lost host");
                    }
                    Err(lost)
                }
            }
        })
    }
}

impl HostSession {
    /// Each planned publisher's clock against this machine's: its loader host's offset at the
    /// start (shard k of N runs the arrival indices `i` with `i mod N = k - 1`); empty without
    /// loader hosts.
    pub(crate) fn sender_clocks_us(&self, plan: &[PlannedPublisher]) -> HashMap<String, i64> {
        let n = self.plan.loaders.len();
        plan.iter()
            .filter_map(|p| {
                let host = self.plan.loaders.get(p.index % n.max(1))?;
                Some((p.name.clone(), self.hosts.get(host)?.offset_us))
            })
            .collect()
    }

    /// Runs every shard until all have ended (or `stop`), then merges their summaries.
    async fn run_loaders(
        &self,
        load: ShardedLoad<'_>,
        events: UnboundedSender<LoadEvent>,
        stop: CancellationToken,
    ) -> anyhow::Result<LoadSummary> {
        let n = self.plan.loaders.len();
        let mut shards = Vec::new();
        let mut readers = tokio::task::JoinSet::new();
        for (k, host) in self.plan.loaders.iter().enumerate() {
            let shard = Shard::new(k + 1, n).map_err(anyhow::Error::msg)?;
            let h = self.host(host)?;
            let start = to_local_ms(load.start_ms, -h.offset_us);
            let command = load_command(&h.binary, &load, shard, start);
            let name = format!("{}-load-{}of{n}", load.tag, k + 1);
            let log = self.files.join(host).join(format!("{name}.log"));
            let workdir = format!("{}/{name}", h.workdir);
            let (role, stdout) =
                RemoteRole::start_piped(&h.conn, &name, &h.binary, &command, &workdir, &log)?;
            let (events, offset) = (events.clone(), h.offset_us);
            readers.spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<LoadEvent>(&line) {
                        Ok(e) => {
                            let _ = events.send(on_local_clock(e, offset));
                        }
                        Err(e) => warn!(error = %e, line, "a loader shard printed something else"),
                    }
                }
            });
            shards.push((host, name, workdir, log, role));
        }
        drop(events);
        // Every shard's stdout ends when its load does (or its session does).
        tokio::select! {
            _ = readers.join_all() => {}
            _ = stop.cancelled() => {}
        }
        let mut records = Vec::new();
        for (host, name, workdir, log, role) in shards {
            role.stop().await;
            let local = self.files.join(host).join(&name);
            let h = self.host(host)?;
            fetch_dir(&h.conn, &workdir, &local)
                .await
                .with_context(|| format!("fetching {name}'s files from host {host}"))?;
            let record = read_record(&local.join(SUMMARY)).with_context(|| {
                format!(
                    "{name} on host {host} left no summary (log: {})",
                    log.display()
                )
            })?;
            records.push((record, h.offset_us));
        }
        let merged = merge_records(records.iter().map(|(r, _)| r.clone()).collect())?;
        Ok(summary_of(merged, &records, load.start_ms))
    }
}

/// `mqdispatch load` for shard `shard` of the method's plan, started at `start_ms` (the host's
/// clock).
fn load_command(binary: &str, load: &ShardedLoad<'_>, shard: Shard, start_ms: u64) -> Vec<String> {
    let scenario = load.scenario;
    let mut c: Vec<String> = vec![binary.into(), "load".into()];
    match &load.placement {
        Placement::Dispatcher {
            dispatchers,
            max_hops,
        } => {
            for d in dispatchers {
                c.extend(["--dispatcher".into(), d.clone()]);
            }
            c.extend(["--max-hops".into(), max_hops.to_string()]);
        }
        Placement::DnsRoundRobin { brokers } => {
            for b in brokers {
                c.extend(["--broker".into(), b.clone()]);
            }
        }
    }
    for p in &scenario.profiles {
        c.extend(["--profile".into(), p.to_spec()]);
    }
    let a = &scenario.arrival;
    let d = crate::duration::format_exact;
    c.extend(["--arrival-interval".into(), d(a.interval)]);
    c.extend(["--jitter".into(), d(a.jitter)]);
    c.extend([
        "--order".into(),
        match &a.order {
            ArrivalOrder::Random => "random".into(),
            ArrivalOrder::Explicit(names) => names.join(","),
        },
    ]);
    if let Some(burst) = a.burst {
        c.extend(["--burst".into(), burst.to_string()]);
    }
    c.extend([
        "--seed".into(),
        load.seed.to_string(),
        "--shard".into(),
        shard.to_string(),
        "--start-at".into(),
        start_ms.to_string(),
        "--client-id-prefix".into(),
        load.client_id_prefix.clone(),
        "--inflight".into(),
        "100".into(),
        "--out".into(),
        "seconds.csv".into(),
        "--summary-out".into(),
        SUMMARY.into(),
        "--events-out".into(),
        "-".into(),
    ]);
    c
}

/// An event's times moved from its host's clock onto this machine's.
fn on_local_clock(mut event: LoadEvent, offset_us: i64) -> LoadEvent {
    match &mut event {
        LoadEvent::Joined { t_ms, .. }
        | LoadEvent::Second { t_ms, .. }
        | LoadEvent::Down { t_ms, .. }
        | LoadEvent::Up { t_ms, .. } => *t_ms = to_local_ms(*t_ms, offset_us),
        LoadEvent::Finished { .. } => {}
    }
    event
}

/// The merged shards as the summary one loader here would have returned (join times moved
/// onto this machine's clock; each publisher's lateness histogram as its shard recorded it,
/// so the method's lateness merges every publisher's, as one loader's does).
fn summary_of(merged: LoadRecord, parts: &[(LoadRecord, i64)], start_ms: u64) -> LoadSummary {
    let offset_of = |name: &str| {
        parts
            .iter()
            .find(|(r, _)| r.publishers.iter().any(|p| p.name == name))
            .map_or(0, |(_, o)| *o)
    };
    let publishers = merged
        .publishers
        .into_iter()
        .map(|p| {
            let offset = offset_of(&p.name);
            let mut summary = PublisherSummary::from(p);
            summary.joined_ms = summary.joined_ms.map(|t| to_local_ms(t, offset));
            summary
        })
        .collect();
    LoadSummary {
        publishers,
        start_ms,
        cancelled: merged.cancelled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_s_command_line_is_one_mqdispatch_load_accepts() {
        let text = include_str!("../../../scenarios/quick.yaml");
        let scenario = crate::scenario::parse(text, "quick.yaml").unwrap();
        let placement = Placement::Dispatcher {
            dispatchers: vec!["198.18.0.1:40000".into()],
            max_hops: 3,
        };
        let mut load = ShardedLoad::new(&scenario, 7, 1_764_930_000_000, "t1-proposed".into());
        load.placement = placement;
        load.client_id_prefix = "t1-proposed-".into();
        let shard = Shard::new(2, 3).unwrap();
        let command = load_command("/bin/mqdispatch", &load, shard, 1_764_930_000_004);
        let line = command.join(" ");
        for part in [
            "--dispatcher 198.18.0.1:40000 --max-hops 3",
            "--seed 7 --shard 2/3 --start-at 1764930000004",
            "--events-out -",
        ] {
            assert!(line.contains(part), "{line}");
        }
        let mut args = vec!["mqdispatch".to_owned()];
        args.extend(command.into_iter().skip(1));
        let parsed = <crate::cli::Cli as clap::Parser>::try_parse_from(&args);
        assert!(parsed.is_ok(), "{line}: {parsed:?}");
    }

    #[test]
    fn shards_lateness_comes_back_merged_as_one_loader_s() {
        use crate::loadgen::Lateness;
        use crate::loadgen::merge::PublisherRecord;
        use std::time::Duration;
        let late = |us: &[u64]| {
            let mut l = Lateness::default();
            for &u in us {
                l.record(Duration::from_micros(u));
            }
            l
        };
        let publisher = |index: usize, name: &str, lateness: Lateness| PublisherRecord {
            index,
            name: name.into(),
            profile: "light".into(),
            broker: Some("b1".into()),
            joined_ms: Some(10_000),
            join_s: Some(0.0),
            redirect_ms: None,
            sent_total: lateness.count(),
            target_total: lateness.count(),
            downtime_ms: 0,
            reconnects: 0,
            skipped: 0,
            lateness,
        };
        let shard = |k: usize, publishers: Vec<PublisherRecord>| LoadRecord {
            seed: 1,
            shard_count: 2,
            shards: vec![k],
            start_ms: 10_000,
            cancelled: false,
            sent_total: publishers.iter().map(|p| p.sent_total).sum(),
            target_total: publishers.iter().map(|p| p.target_total).sum(),
            publishers,
        };
        // Through JSON, as the files come back from the hosts.
        let json = |r: LoadRecord| {
            serde_json::from_slice::<LoadRecord>(&crate::loadgen::merge::record_json(&r)).unwrap()
        };
        let a = json(shard(1, vec![publisher(0, "light-1", late(&[5, 15, 15]))]));
        let b = json(shard(
            2,
            vec![publisher(1, "light-2", late(&[2_500, 250_000]))],
        ));
        let merged = merge_records(vec![a.clone(), b.clone()]).unwrap();
        let summary = summary_of(merged, &[(a, 1_000), (b, -2_000)], 9_000);

        assert_eq!(summary.lateness(), late(&[5, 15, 15, 2_500, 250_000]));
        assert_eq!(
            summary.lateness().quantile(0.5),
            Some(Duration::from_micros(20))
        );
        let joined: Vec<_> = summary.publishers.iter().map(|p| p.joined_ms).collect();
        assert_eq!(joined, [Some(9_999), Some(10_002)]);
    }

    #[test]
    fn event_times_move_onto_this_machine_s_clock() {
        let e = LoadEvent::Second {
            publisher: "light-1".into(),
            broker: "b".into(),
            t_ms: 10_000,
            sent: 5,
        };
        match on_local_clock(e, 2_000) {
            LoadEvent::Second { t_ms, .. } => assert_eq!(t_ms, 9_998),
            other => panic!("{other:?}"),
        }
    }
}
