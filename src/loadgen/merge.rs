//! The loader's machine-readable outputs and how N shards' outputs become one loader's.
//!
//! Two files: the per-second CSV of `--out` ([`SecondRow`]: `t_s,publisher,profile,broker,sent`)
//! and the summary JSON of `--summary-out` ([`LoadRecord`]). Shards hold disjoint publishers,
//! so merging is a union with checks: same seed and shard count, every shard exactly once, no
//! publisher twice. Merged rows come in a canonical order, the same whatever the number of
//! shards: CSV rows by `t_s`, then publisher (profile name, then its number `k` of
//! `<profile>-<k>`), a publisher's rows within one second as its loader wrote them; summary
//! publishers by arrival index. One loader streams its CSV rows as its timers fire, so within a
//! second its order is not reproducible: `mqdispatch load-merge OUT.csv ONE.csv` puts a single
//! loader's file in the canonical order, and then it compares line by line with merged shards.

use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::arrival::PlannedPublisher;
use super::shard::Shard;
use super::{Lateness, LoadSummary, PublisherSummary};
use crate::InputError;

/// What `mqdispatch load --summary-out FILE.json` writes.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadRecord {
    /// The trial seed every shard drew the plan from.
    pub seed: u64,
    /// N of `--shard K/N` (1 without `--shard`).
    pub shard_count: usize,
    /// The shards whose publishers this file holds: `[K]` from one shard, 1..=N once merged.
    pub shards: Vec<usize>,
    /// Epoch ms of join offset 0 (`--start-at`, or when the loader started); merged: the
    /// lowest shard's.
    pub start_ms: u64,
    pub cancelled: bool,
    pub sent_total: u64,
    pub target_total: u64,
    /// In arrival order.
    pub publishers: Vec<PublisherRecord>,
}

/// One publisher's line of a [`LoadRecord`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublisherRecord {
    /// Arrival index in the whole (unsharded) plan, from 0.
    pub index: usize,
    pub name: String,
    pub profile: String,
    /// The broker it was last connected to.
    pub broker: Option<String>,
    /// Epoch ms of its first CONNACK, on its loader's clock.
    pub joined_ms: Option<u64>,
    /// Seconds from its loader's `start_ms` to its first CONNACK (comparable across hosts
    /// whose clocks differ, when each got its own `--start-at`).
    pub join_s: Option<f64>,
    pub redirect_ms: Option<f64>,
    pub sent_total: u64,
    pub target_total: u64,
    pub downtime_ms: u64,
    pub reconnects: u32,
    pub skipped: u64,
    /// How late each message was handed to the client (the histogram, so shards merge as one
    /// loader's publishers do); empty in files written before it was recorded.
    #[serde(default)]
    pub lateness: Lateness,
}

/// The per-second CSV's header (`mqdispatch load --out`).
pub const SECONDS_HEADER: [&str; 5] = ["t_s", "publisher", "profile", "broker", "sent"];

/// One row of the per-second CSV.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SecondRow {
    pub t_s: u64,
    pub publisher: String,
    pub profile: String,
    pub broker: String,
    pub sent: u64,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum MergeError {
    #[error("nothing to merge: give at least one input file")]
    Empty,
    #[error("inputs disagree on {what}: {a} and {b} (were they shards of one load?)")]
    Mismatch {
        what: &'static str,
        a: String,
        b: String,
    },
    #[error("shard {k} of {n} appears in two inputs")]
    ShardTwice { k: usize, n: usize },
    #[error("shard {k} is outside 1..={n}")]
    ShardOutOfRange { k: usize, n: usize },
    #[error("shard(s) {missing:?} of {n} missing: merge every shard's file")]
    Missing { missing: Vec<usize>, n: usize },
    #[error("publisher `{0}` appears in two inputs (the same shard twice?)")]
    PublisherTwice(String),
}

impl LoadRecord {
    /// The record of one loader's run: `plan` is what it ran (its shard's publishers, in the
    /// order of `summary.publishers`).
    pub fn new(
        summary: &LoadSummary,
        plan: &[PlannedPublisher],
        seed: u64,
        shard: Shard,
    ) -> LoadRecord {
        debug_assert_eq!(summary.publishers.len(), plan.len());
        let publishers = plan
            .iter()
            .zip(&summary.publishers)
            .map(|(planned, p)| PublisherRecord::new(planned.index, p, summary.start_ms))
            .collect();
        LoadRecord {
            seed,
            shard_count: shard.n(),
            shards: vec![shard.k()],
            start_ms: summary.start_ms,
            cancelled: summary.cancelled,
            sent_total: summary.sent_total(),
            target_total: summary.target_total(),
            publishers,
        }
    }
}

impl PublisherRecord {
    fn new(index: usize, p: &PublisherSummary, start_ms: u64) -> PublisherRecord {
        PublisherRecord {
            index,
            name: p.name.clone(),
            profile: p.profile.clone(),
            broker: p.broker.clone(),
            joined_ms: p.joined_ms,
            join_s: p.joined_ms.map(|ms| (ms as f64 - start_ms as f64) / 1000.0),
            redirect_ms: p.redirect_ms,
            sent_total: p.sent_total,
            target_total: p.target_total,
            downtime_ms: p.downtime_ms,
            reconnects: p.reconnects,
            skipped: p.skipped,
            lateness: p.lateness.clone(),
        }
    }
}

/// A record's publisher as its loader summed it up (`joined_ms` on that loader's clock).
impl From<PublisherRecord> for PublisherSummary {
    fn from(p: PublisherRecord) -> Self {
        PublisherSummary {
            name: p.name,
            profile: p.profile,
            broker: p.broker,
            joined_ms: p.joined_ms,
            redirect_ms: p.redirect_ms,
            sent_total: p.sent_total,
            target_total: p.target_total,
            downtime_ms: p.downtime_ms,
            reconnects: p.reconnects,
            skipped: p.skipped,
            lateness: p.lateness,
        }
    }
}

/// N shards' records as one loader's. Errors when they are not exactly the shards 1..=N of one
/// load (seed, shard count), or share a publisher.
pub fn merge_records(mut parts: Vec<LoadRecord>) -> Result<LoadRecord, MergeError> {
    let first = parts.first().ok_or(MergeError::Empty)?;
    let (seed, n) = (first.seed, first.shard_count);
    let mut shards = BTreeSet::new();
    for part in &parts {
        if part.seed != seed {
            return Err(mismatch("seed", seed, part.seed));
        }
        if part.shard_count != n {
            return Err(mismatch("shard count", n, part.shard_count));
        }
        for &k in &part.shards {
            if k == 0 || k > n {
                return Err(MergeError::ShardOutOfRange { k, n });
            }
            if !shards.insert(k) {
                return Err(MergeError::ShardTwice { k, n });
            }
        }
    }
    let missing: Vec<usize> = (1..=n).filter(|k| !shards.contains(k)).collect();
    if !missing.is_empty() {
        return Err(MergeError::Missing { missing, n });
    }
    parts.sort_by_key(|p| p.shards.iter().min().copied());
    let mut names = BTreeSet::new();
    let mut indices = BTreeSet::new();
    let mut publishers = Vec::new();
    for p in parts.iter().flat_map(|part| &part.publishers) {
        if !names.insert(p.name.as_str()) || !indices.insert(p.index) {
            return Err(MergeError::PublisherTwice(p.name.clone()));
        }
        publishers.push(p.clone());
    }
    publishers.sort_by_key(|p| p.index);
    Ok(LoadRecord {
        seed,
        shard_count: n,
        shards: shards.into_iter().collect(),
        start_ms: parts[0].start_ms,
        cancelled: parts.iter().any(|p| p.cancelled),
        sent_total: parts.iter().map(|p| p.sent_total).sum(),
        target_total: parts.iter().map(|p| p.target_total).sum(),
        publishers,
    })
}

fn mismatch(what: &'static str, a: impl ToString, b: impl ToString) -> MergeError {
    MergeError::Mismatch {
        what,
        a: a.to_string(),
        b: b.to_string(),
    }
}

/// N shards' per-second rows as one loader's, in the canonical order (module docs). Errors
/// when a publisher has rows in two inputs.
pub fn merge_seconds(parts: Vec<Vec<SecondRow>>) -> Result<Vec<SecondRow>, MergeError> {
    let mut owner: HashMap<String, usize> = HashMap::new();
    for (i, rows) in parts.iter().enumerate() {
        for row in rows {
            if *owner.entry(row.publisher.clone()).or_insert(i) != i {
                return Err(MergeError::PublisherTwice(row.publisher.clone()));
            }
        }
    }
    let mut all: Vec<SecondRow> = parts.into_iter().flatten().collect();
    // Stable: a publisher's two rows of one second (it moved) keep their written order.
    all.sort_by(|a, b| (a.t_s, name_key(&a.publisher)).cmp(&(b.t_s, name_key(&b.publisher))));
    Ok(all)
}

/// `<profile>-<k>` as (profile, k), so `p-10` follows `p-9`; other names sort after, by text.
fn name_key(name: &str) -> (&str, u64, &str) {
    match name.rsplit_once('-').map(|(p, k)| (p, k.parse::<u64>())) {
        Some((profile, Ok(k))) => (profile, k, ""),
        _ => (name, u64::MAX, name),
    }
}

/// Reads a per-second CSV written by `mqdispatch load --out`.
pub fn read_seconds(path: &Path) -> anyhow::Result<Vec<SecondRow>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, row) in reader.deserialize().enumerate() {
        // Line 1 is the header.
        rows.push(row.map_err(|e| InputError(format!("{}:{}: {e}", path.display(), i + 2)))?);
    }
    Ok(rows)
}

/// Reads a summary JSON written by `mqdispatch load --summary-out`.
pub fn read_record(path: &Path) -> anyhow::Result<LoadRecord> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        InputError(format!(
            "{}:{}:{}: {e}",
            path.display(),
            e.line(),
            e.column()
        ))
        .into()
    })
}

/// The summary JSON's bytes (pretty, one field a line, newline at the end).
pub fn record_json(record: &LoadRecord) -> Vec<u8> {
    let mut bytes =
        serde_json::to_vec_pretty(record).expect("invariant: a LoadRecord serialises to JSON");
    bytes.push(b'\n');
    bytes
}

/// The per-second CSV's bytes, header first.
pub fn seconds_csv(rows: &[SecondRow]) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    if rows.is_empty() {
        w.write_record(SECONDS_HEADER)?;
    }
    for row in rows {
        w.serialize(row)?;
    }
    Ok(w.into_inner()?)
}

/// `mqdispatch load-merge OUT IN...`: merges shards' files of one kind into `out` (created,
/// never overwritten). `.json` files are summaries, `.csv` files per-second rows.
pub fn merge_shards(out: &Path, inputs: &[PathBuf]) -> anyhow::Result<()> {
    if inputs.is_empty() {
        return Err(InputError(MergeError::Empty.to_string()).into());
    }
    let kind = kind_of(out)?;
    for input in inputs {
        if kind_of(input)? != kind {
            return Err(InputError(format!(
                "{} and {} are different kinds of file: merge .csv with .csv, .json with .json",
                out.display(),
                input.display()
            ))
            .into());
        }
    }
    let bytes = match kind {
        Kind::Summary => {
            let parts = inputs
                .iter()
                .map(|p| read_record(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            record_json(&merge_records(parts).map_err(|e| InputError(e.to_string()))?)
        }
        Kind::Seconds => {
            let parts = inputs
                .iter()
                .map(|p| read_seconds(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            seconds_csv(&merge_seconds(parts).map_err(|e| InputError(e.to_string()))?)?
        }
    };
    let mut file = super::cli::create_new(out)?;
    file.write_all(&bytes)
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Summary,
    Seconds,
}

fn kind_of(path: &Path) -> Result<Kind, InputError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => Ok(Kind::Summary),
        Some("csv") => Ok(Kind::Seconds),
        _ => Err(InputError(format!(
            "{}: name the file .json (summaries from --summary-out) or .csv (per-second rows \
             from --out)",
            path.display()
        ))),
    }
}

/// `mqdispatch load-merge`.
#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// The merged file to create (never overwritten): `.json` or `.csv`, like the inputs.
    out: PathBuf,
    /// Every shard's file of that kind (`--summary-out` JSON or `--out` CSV), in any order.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

pub fn merge_main(args: MergeArgs) -> anyhow::Result<()> {
    merge_shards(&args.out, &args.inputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publisher(index: usize, name: &str, sent: u64) -> PublisherRecord {
        PublisherRecord {
            index,
            name: name.into(),
            profile: name.split('-').next().unwrap().into(),
            broker: Some("b:1".into()),
            joined_ms: Some(1_000 + index as u64),
            join_s: Some(index as f64 / 1000.0),
            redirect_ms: None,
            sent_total: sent,
            target_total: 100,
            downtime_ms: 0,
            reconnects: 0,
            skipped: 0,
            lateness: Lateness::default(),
        }
    }

    fn record(k: usize, n: usize, publishers: Vec<PublisherRecord>) -> LoadRecord {
        LoadRecord {
            seed: 7,
            shard_count: n,
            shards: vec![k],
            start_ms: 1_000 + k as u64,
            cancelled: false,
            sent_total: publishers.iter().map(|p| p.sent_total).sum(),
            target_total: publishers.iter().map(|p| p.target_total).sum(),
            publishers,
        }
    }

    fn row(t_s: u64, publisher: &str, broker: &str, sent: u64) -> SecondRow {
        SecondRow {
            t_s,
            publisher: publisher.into(),
            profile: publisher.split('-').next().unwrap().into(),
            broker: broker.into(),
            sent,
        }
    }

    #[test]
    fn shards_merge_into_arrival_order_with_summed_totals() {
        let one = record(
            1,
            2,
            vec![publisher(0, "a-0", 90), publisher(2, "b-0", 100)],
        );
        let two = record(
            2,
            2,
            vec![publisher(1, "a-1", 80), publisher(3, "a-2", 100)],
        );
        let merged = merge_records(vec![two.clone(), one.clone()]).unwrap();
        let names: Vec<&str> = merged.publishers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a-0", "a-1", "b-0", "a-2"]);
        assert_eq!(merged.shards, [1, 2]);
        assert_eq!((merged.sent_total, merged.target_total), (370, 400));
        assert_eq!(merged.start_ms, one.start_ms);
        // Merging is a function of the set of shards: order of inputs does not matter, and a
        // merged record merges again to itself.
        assert_eq!(merge_records(vec![one, two]).unwrap(), merged);
        let mut whole = merged.clone();
        whole.shard_count = 2;
        assert_eq!(merge_records(vec![whole]).unwrap(), merged);
    }

    #[test]
    fn records_that_are_not_one_loads_shards_are_refused() {
        let one = record(1, 3, vec![publisher(0, "a-0", 1)]);
        let two = record(2, 3, vec![publisher(1, "a-1", 1)]);
        let three = record(3, 3, vec![publisher(2, "a-2", 1)]);
        assert_eq!(merge_records(vec![]), Err(MergeError::Empty));
        assert_eq!(
            merge_records(vec![one.clone(), three.clone()]),
            Err(MergeError::Missing {
                missing: vec![2],
                n: 3
            })
        );
        assert_eq!(
            merge_records(vec![one.clone(), one.clone(), two.clone()]),
            Err(MergeError::ShardTwice { k: 1, n: 3 })
        );
        let mut other_seed = two.clone();
        other_seed.seed = 8;
        let err = merge_records(vec![one.clone(), other_seed, three.clone()]).unwrap_err();
        assert!(err.to_string().contains("seed: 7 and 8"), "{err}");
        let mut other_n = two.clone();
        other_n.shard_count = 4;
        assert!(matches!(
            merge_records(vec![one.clone(), other_n, three.clone()]),
            Err(MergeError::Mismatch {
                what: "shard count",
                ..
            })
        ));
        let mut k9 = two.clone();
        k9.shards = vec![9];
        assert_eq!(
            merge_records(vec![one.clone(), k9, three.clone()]),
            Err(MergeError::ShardOutOfRange { k: 9, n: 3 })
        );
        let mut stolen = two;
        stolen.publishers.push(publisher(0, "a-0", 1));
        assert_eq!(
            merge_records(vec![one, stolen, three]),
            Err(MergeError::PublisherTwice("a-0".into()))
        );
    }

    #[test]
    fn rows_merge_by_second_then_publisher_keeping_a_moves_order() {
        let shard1 = vec![
            row(0, "p-10", "b1", 5),
            row(1, "p-10", "b2", 3),
            row(1, "p-10", "b1", 2),
            row(1, "p-2", "b1", 9),
        ];
        let shard2 = vec![row(1, "p-9", "b1", 7), row(0, "heavy-0", "b2", 1)];
        let merged = merge_seconds(vec![shard1.clone(), shard2.clone()]).unwrap();
        let order: Vec<(u64, &str, &str)> = merged
            .iter()
            .map(|r| (r.t_s, r.publisher.as_str(), r.broker.as_str()))
            .collect();
        assert_eq!(
            order,
            [
                (0, "heavy-0", "b2"),
                (0, "p-10", "b1"),
                (1, "p-2", "b1"),
                (1, "p-9", "b1"),
                (1, "p-10", "b2"),
                (1, "p-10", "b1"),
            ]
        );
        assert_eq!(
            merge_seconds(vec![shard2.clone(), shard1.clone()]).unwrap(),
            merged
        );
        assert_eq!(
            merge_seconds(vec![shard1.clone(), shard1]),
            Err(MergeError::PublisherTwice("p-10".into()))
        );
    }

    #[test]
    fn files_round_trip_and_bad_input_names_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let rows = vec![row(0, "p-0", "b1", 5), row(0, "p-1", "b1", 6)];
        let csv_path = dir.path().join("s.csv");
        std::fs::write(&csv_path, seconds_csv(&rows).unwrap()).unwrap();
        assert!(
            std::fs::read_to_string(&csv_path)
                .unwrap()
                .starts_with("t_s,publisher,profile,broker,sent\n")
        );
        assert_eq!(read_seconds(&csv_path).unwrap(), rows);
        let rec = record(1, 1, vec![publisher(0, "p-0", 5)]);
        let json_path = dir.path().join("s.json");
        std::fs::write(&json_path, record_json(&rec)).unwrap();
        assert_eq!(read_record(&json_path).unwrap(), rec);

        std::fs::write(
            &csv_path,
            "t_s,publisher,profile,broker,sent\n0,p-0,p,b1,x\n",
        )
        .unwrap();
        let err = read_seconds(&csv_path).unwrap_err().to_string();
        assert!(err.contains("s.csv:2"), "{err}");
        std::fs::write(&json_path, "{\n  \"seed\": 1,\n  \"extra\": 2\n}").unwrap();
        let err = read_record(&json_path).unwrap_err().to_string();
        assert!(
            err.contains("s.json:2:") || err.contains("s.json:3:"),
            "{err}"
        );

        let err = merge_shards(&dir.path().join("m.txt"), std::slice::from_ref(&json_path))
            .unwrap_err()
            .to_string();
        assert!(err.contains(".json"), "{err}");
        let err = merge_shards(&dir.path().join("m.json"), &[csv_path])
            .unwrap_err()
            .to_string();
        assert!(err.contains("different kinds"), "{err}");
    }
}
