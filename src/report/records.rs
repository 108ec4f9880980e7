//! The result rows (docs/src/outputs.md), their streaming writer and their readers.
//!
//! Writing and reading live side by side so the column names exist once: the serde field names of
//! the row structs *are* the CSV headers. `decisions.csv` has one `load_<broker>` column per
//! broker, so it is written and read by hand ([`super::decisions`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ReportError;
pub use super::decisions::{DecisionRow, read_decisions};
use super::decisions::{decision_fields, decision_header};

pub const BROKERS_CSV: &str = "brokers.csv";
pub const PUBLISHERS_CSV: &str = "publishers.csv";
pub const DECISIONS_CSV: &str = "decisions.csv";
pub const FAULTS_CSV: &str = "faults.csv";
pub const OUTAGES_CSV: &str = "outages.csv";
pub const MOVES_CSV: &str = "moves.csv";

/// One broker during one second of one (trial, method).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerRow {
    pub trial: u32,
    pub method: String,
    /// Whole seconds since the start of this trial's method.
    pub t_s: u64,
    pub broker: String,
    /// Empty when no CPU sample fell into this second.
    pub cpu_pct: Option<f64>,
    /// Publisher-side count towards this broker (what MQTTLoader measures).
    pub sent_msgs_per_s: f64,
    /// Broker-side count, where the broker exposes one.
    pub received_msgs_per_s: Option<f64>,
    /// Publishers connected to this broker during this second.
    pub publishers: u32,
}

/// One publisher of one (trial, method), written when it ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublisherRow {
    pub trial: u32,
    pub method: String,
    pub publisher: String,
    /// Profile name from the scenario (`light`, `heavy`, ...).
    pub profile: String,
    pub join_s: f64,
    /// The broker it joined (first CONNACK). Where a lost connection took it next is in
    /// `outages.csv`.
    pub broker: String,
    /// Dispatcher round trip; empty for `dns-rr` (no dispatcher hop).
    pub redirect_ms: Option<f64>,
    pub target_msgs_per_s: f64,
    pub achieved_msgs_per_s: f64,
    pub sent_total: u64,
    /// Seconds this publisher could not publish
    /// (fault runs). Files without the column read as 0.
    #[serde(default)]
    pub downtime_s: f64,
    /// Contract extension: the messages its fixed-rate schedule owed (rate × duration), sent or
    /// not. Files without the column read as 0 (unknown).
    #[serde(default)]
    pub target_total: u64,
}

/// An injected fault (`faults.csv`, written by fault runs): drawn as a red marker on time plots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRow {
    pub trial: u32,
    pub method: String,
    pub t_s: f64,
    pub kind: String,
    pub target: String,
}

/// One time a publisher lost its broker (`outages.csv`, rows only in fault runs): when, for how
/// long, where it went next, and the messages its schedule owed meanwhile (skipped, not sent
/// late: the load generator paces on absolute deadlines).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutageRow {
    pub trial: u32,
    pub method: String,
    pub publisher: String,
    /// The broker it lost.
    pub broker: String,
    /// When the connection dropped (seconds since the start of this trial's method).
    pub down_s: f64,
    /// When it was connected again; empty if it never was before its end.
    pub up_s: Option<f64>,
    /// Where it reconnected; empty if it never did.
    pub to_broker: Option<String>,
    /// Until `up_s`, or until the publisher's scheduled end if it never reconnected.
    pub downtime_s: f64,
    /// Messages owed during the outage (rate × downtime), never sent.
    pub not_sent: u64,
}

/// One live move (`moves.csv`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveRow {
    pub trial: u32,
    pub method: String,
    /// When the move was ordered (seconds since the start of this trial's method).
    pub t_s: f64,
    pub client_id: String,
    pub from: String,
    pub to: String,
    /// The client's rate the rebalancer weighed it by.
    pub rate_msgs_per_s: f64,
    /// Messages the moved publisher owed while reconnecting and did not send (from its outage);
    /// empty when no outage of that publisher followed the move (it was not one of ours, or it
    /// had already finished).
    pub not_sent: Option<u64>,
    /// `publisher`, or `subscriber` for a member of a shared subscription group (empty in files
    /// written before members were moved).
    #[serde(default)]
    pub role: String,
}

/// Per-second contributions (a publisher's count, a CPU sample) that arrived after their
/// second's row was written: they are in no row. The recorder hands them to the writer with
/// its rows; the runner takes them after each method run for `manifest.json`.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Late {
    pub contributions: u64,
    /// Messages the late publisher counts carried.
    pub msgs: f64,
}

impl Late {
    pub fn add(&mut self, other: Late) {
        self.contributions += other.contributions;
        self.msgs += other.msgs;
    }
}

/// The streaming CSVs of one run directory.
///
/// Rows are buffered; call [`ResultsWriter::flush`] after every batch (the runner does so every
/// second) so a killed run keeps what it recorded. Opening appends to existing files (after
/// checking their header), so a writer may be created once per run or once per trial.
pub struct ResultsWriter {
    brokers: csv::Writer<File>,
    publishers: csv::Writer<File>,
    decisions: csv::Writer<File>,
    outages: csv::Writer<File>,
    moves: csv::Writer<File>,
    broker_ids: Vec<String>,
    late: Late,
}

impl ResultsWriter {
    /// Opens (or creates) `brokers.csv`, `publishers.csv` and `decisions.csv` in `dir`;
    /// `brokers` fixes the `load_<broker>` columns of `decisions.csv`.
    pub fn create(dir: &Path, brokers: &[String]) -> Result<Self, ReportError> {
        std::fs::create_dir_all(dir).map_err(|e| ReportError::io(dir, e))?;
        let decision_header = decision_header(brokers);
        Ok(Self {
            brokers: open_append(&dir.join(BROKERS_CSV), &header_of::<BrokerRow>())?,
            publishers: open_append(&dir.join(PUBLISHERS_CSV), &header_of::<PublisherRow>())?,
            decisions: open_append(&dir.join(DECISIONS_CSV), &decision_header)?,
            outages: open_append(&dir.join(OUTAGES_CSV), &header_of::<OutageRow>())?,
            moves: open_append(&dir.join(MOVES_CSV), &header_of::<MoveRow>())?,
            broker_ids: brokers.to_vec(),
            late: Late::default(),
        })
    }

    pub fn broker_row(&mut self, row: &BrokerRow) -> Result<(), ReportError> {
        self.brokers
            .serialize(row)
            .map_err(|e| ReportError::csv(BROKERS_CSV, e))
    }

    pub fn publisher_row(&mut self, row: &PublisherRow) -> Result<(), ReportError> {
        self.publishers
            .serialize(row)
            .map_err(|e| ReportError::csv(PUBLISHERS_CSV, e))
    }

    pub fn outage_row(&mut self, row: &OutageRow) -> Result<(), ReportError> {
        self.outages
            .serialize(row)
            .map_err(|e| ReportError::csv(OUTAGES_CSV, e))
    }

    pub fn move_row(&mut self, row: &MoveRow) -> Result<(), ReportError> {
        self.moves
            .serialize(row)
            .map_err(|e| ReportError::csv(MOVES_CSV, e))
    }

    /// Adds contributions that came too late for their row.
    pub fn add_late(&mut self, late: Late) {
        self.late.add(late);
    }

    /// The late contributions added since the last call.
    pub fn take_late(&mut self) -> Late {
        std::mem::take(&mut self.late)
    }

    /// `row.loads` must hold one value per broker given to [`ResultsWriter::create`].
    pub fn decision_row(&mut self, row: &DecisionRow) -> Result<(), ReportError> {
        let n = self.broker_ids.len();
        if row.loads.len() != n || row.predicted.len() != n || row.sample_ages_ms.len() != n {
            return Err(ReportError::Invalid(format!(
                "decision for {} has {} loads, {} predictions and {} sample ages but the run has \
                 {n} brokers",
                row.client_id,
                row.loads.len(),
                row.predicted.len(),
                row.sample_ages_ms.len(),
            )));
        }
        self.decisions
            .write_record(decision_fields(row))
            .map_err(|e| ReportError::csv(DECISIONS_CSV, e))
    }

    /// Pushes every buffered row to the files.
    pub fn flush(&mut self) -> Result<(), ReportError> {
        for (name, w) in [
            (BROKERS_CSV, &mut self.brokers),
            (PUBLISHERS_CSV, &mut self.publishers),
            (DECISIONS_CSV, &mut self.decisions),
            (OUTAGES_CSV, &mut self.outages),
            (MOVES_CSV, &mut self.moves),
        ] {
            w.flush().map_err(|e| ReportError::io(Path::new(name), e))?;
        }
        Ok(())
    }
}

/// The CSV header of a row type: its serde field names, in order.
pub(crate) fn header_of<T: Serialize + HeaderSample>() -> Vec<String> {
    let mut w = csv::Writer::from_writer(vec![]);
    // Serialising one sample row makes csv emit the header line first; keep just that.
    let header = w
        .serialize(T::sample())
        .ok()
        .and_then(|_| w.into_inner().ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.lines().next().map(str::to_owned))
        .unwrap_or_default();
    header.split(',').map(str::to_owned).collect()
}

/// A value of a row type, used only to learn its header.
pub(crate) trait HeaderSample: Sized {
    fn sample() -> Self;
}

impl HeaderSample for BrokerRow {
    fn sample() -> Self {
        BrokerRow {
            trial: 0,
            method: String::new(),
            t_s: 0,
            broker: String::new(),
            cpu_pct: None,
            sent_msgs_per_s: 0.0,
            received_msgs_per_s: None,
            publishers: 0,
        }
    }
}

impl HeaderSample for PublisherRow {
    fn sample() -> Self {
        PublisherRow {
            trial: 0,
            method: String::new(),
            publisher: String::new(),
            profile: String::new(),
            join_s: 0.0,
            broker: String::new(),
            redirect_ms: None,
            target_msgs_per_s: 0.0,
            achieved_msgs_per_s: 0.0,
            sent_total: 0,
            downtime_s: 0.0,
            target_total: 0,
        }
    }
}

impl HeaderSample for OutageRow {
    fn sample() -> Self {
        OutageRow {
            trial: 0,
            method: String::new(),
            publisher: String::new(),
            broker: String::new(),
            down_s: 0.0,
            up_s: None,
            to_broker: None,
            downtime_s: 0.0,
            not_sent: 0,
        }
    }
}

impl HeaderSample for MoveRow {
    fn sample() -> Self {
        MoveRow {
            trial: 0,
            method: String::new(),
            t_s: 0.0,
            client_id: String::new(),
            from: String::new(),
            to: String::new(),
            rate_msgs_per_s: 0.0,
            not_sent: None,
            role: String::new(),
        }
    }
}

/// Opens `path` for appending; writes `header` if the file is new or empty, otherwise checks
/// the existing header matches (appending rows under other columns would corrupt the file).
pub(crate) fn open_append(
    path: &Path,
    header: &[String],
) -> Result<csv::Writer<File>, ReportError> {
    let existing = match File::open(path) {
        Ok(f) => {
            let mut line = String::new();
            BufReader::new(f)
                .read_line(&mut line)
                .map_err(|e| ReportError::io(path, e))?;
            Some(line.trim_end().to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(ReportError::io(path, e)),
    };
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| ReportError::io(path, e))?;
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(file);
    match existing.as_deref() {
        None | Some("") => {
            w.write_record(header)
                .map_err(|e| ReportError::csv(path, e))?;
            w.flush().map_err(|e| ReportError::io(path, e))?;
        }
        Some(line) if line == header.join(",") => {}
        Some(line) => {
            return Err(ReportError::Invalid(format!(
                "{} already exists with header `{line}`, expected `{}`; write to a new run directory",
                path.display(),
                header.join(",")
            )));
        }
    }
    Ok(w)
}

/// Reads every row of a CSV into `T`. A malformed *last* row is dropped with a warning (a run
/// killed mid-write); a malformed row elsewhere is an error naming its line.
fn read_rows<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>, ReportError> {
    let file = File::open(path).map_err(|e| ReportError::io(path, e))?;
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(file);
    let headers = reader
        .headers()
        .map_err(|e| ReportError::csv(path, e))?
        .clone();
    let records: Vec<_> = reader.records().collect();
    let last = records.len().saturating_sub(1);
    let mut rows = Vec::with_capacity(records.len());
    for (i, rec) in records.into_iter().enumerate() {
        let parsed = rec.and_then(|r| r.deserialize::<T>(Some(&headers)));
        match parsed {
            Ok(row) => rows.push(row),
            Err(e) if i == last => {
                tracing::warn!(file = %path.display(), error = %e, "dropping a truncated last row");
            }
            Err(e) => return Err(ReportError::csv(path, e)),
        }
    }
    Ok(rows)
}

pub fn read_brokers(dir: &Path) -> Result<Vec<BrokerRow>, ReportError> {
    let path = dir.join(BROKERS_CSV);
    if !path.exists() {
        return Err(ReportError::Missing(path));
    }
    read_rows(&path)
}

/// `publishers.csv`; an absent file reads as no publishers (plots then lack join markers).
pub fn read_publishers(dir: &Path) -> Result<Vec<PublisherRow>, ReportError> {
    optional_rows(&dir.join(PUBLISHERS_CSV))
}

/// `faults.csv`, written only by fault runs; absent = no faults.
pub fn read_faults(dir: &Path) -> Result<Vec<FaultRow>, ReportError> {
    optional_rows(&dir.join(FAULTS_CSV))
}

/// `outages.csv`; absent (older runs) = no outages.
pub fn read_outages(dir: &Path) -> Result<Vec<OutageRow>, ReportError> {
    optional_rows(&dir.join(OUTAGES_CSV))
}

pub fn read_moves(dir: &Path) -> Result<Vec<MoveRow>, ReportError> {
    optional_rows(&dir.join(MOVES_CSV))
}

pub(crate) fn optional_rows<T: for<'de> Deserialize<'de>>(
    path: &Path,
) -> Result<Vec<T>, ReportError> {
    if path.exists() {
        read_rows(path)
    } else {
        Ok(Vec::new())
    }
}

/// Distinct values in order of first appearance (methods and brokers keep the file's order).
pub(crate) fn first_seen<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut seen = HashMap::new();
    let mut out = Vec::new();
    for v in values {
        if seen.insert(v, ()).is_none() {
            out.push(v.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(t_s: u64, broker: &str, cpu: Option<f64>) -> BrokerRow {
        BrokerRow {
            trial: 1,
            method: "dns-rr".into(),
            t_s,
            broker: broker.into(),
            cpu_pct: cpu,
            sent_msgs_per_s: 2000.0,
            received_msgs_per_s: None,
            publishers: 1,
        }
    }

    #[test]
    fn headers_match_the_contract() {
        assert_eq!(
            header_of::<BrokerRow>().join(","),
            "trial,method,t_s,broker,cpu_pct,sent_msgs_per_s,received_msgs_per_s,publishers"
        );
        assert_eq!(
            header_of::<PublisherRow>().join(","),
            "trial,method,publisher,profile,join_s,broker,redirect_ms,target_msgs_per_s,\
             achieved_msgs_per_s,sent_total,downtime_s,target_total"
        );
        assert_eq!(
            header_of::<OutageRow>().join(","),
            "trial,method,publisher,broker,down_s,up_s,to_broker,downtime_s,not_sent"
        );
    }

    #[test]
    fn rows_round_trip_with_empty_options() {
        let dir = tempfile::tempdir().expect("tempdir");
        let brokers = vec!["b1".to_owned(), "b2".to_owned()];
        let mut w = ResultsWriter::create(dir.path(), &brokers).expect("create");
        let rows = vec![broker(0, "b1", Some(3.5)), broker(0, "b2", None)];
        for r in &rows {
            w.broker_row(r).expect("row");
        }
        let d = DecisionRow {
            trial: 1,
            method: "proposed".into(),
            t_s: 5.25,
            client_id: "pub-1".into(),
            broker: String::new(),
            loads: vec![1.5, 2.0],
            predicted: vec![0.0, 0.5],
            sample_ages_ms: vec![Some(1_200), None],
            source: "prometheus".into(),
            role: "subscriber".into(),
            group: "$share/g/load/#".into(),
        };
        w.decision_row(&d).expect("decision");
        assert!(
            w.decision_row(&DecisionRow {
                loads: vec![1.0],
                ..d.clone()
            })
            .is_err()
        );
        w.flush().expect("flush");
        assert_eq!(read_brokers(dir.path()).expect("read"), rows);
        let text = std::fs::read_to_string(dir.path().join(BROKERS_CSV)).expect("text");
        assert!(text.contains("1,dns-rr,0,b2,,2000.0,,1"), "{text}");
        assert_eq!(
            read_decisions(dir.path()).expect("decisions"),
            (brokers.clone(), vec![d])
        );
        assert!(read_publishers(dir.path()).expect("pubs").is_empty());
        // Reopening appends under the same header instead of clobbering.
        drop(w);
        let mut w = ResultsWriter::create(dir.path(), &brokers).expect("reopen");
        w.broker_row(&broker(1, "b1", None)).expect("row");
        w.flush().expect("flush");
        assert_eq!(read_brokers(dir.path()).expect("read").len(), 3);
        // ...but refuses a different broker set for decisions.csv.
        assert!(ResultsWriter::create(dir.path(), &["x".to_owned()]).is_err());
    }

    #[test]
    fn truncated_last_row_is_dropped_but_a_bad_middle_row_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let header = header_of::<BrokerRow>().join(",");
        let good = "1,m,0,b1,1.0,10.0,,1";
        let path = dir.path().join(BROKERS_CSV);
        std::fs::write(&path, format!("{header}\n{good}\n1,m,1,b1,2.")).expect("write");
        assert_eq!(read_brokers(dir.path()).expect("read").len(), 1);
        std::fs::write(&path, format!("{header}\n1,m,x,b1\n{good}\n")).expect("write");
        assert!(read_brokers(dir.path()).is_err());
    }

    #[test]
    fn publishers_without_downtime_column_read_as_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(PUBLISHERS_CSV),
            "trial,method,publisher,profile,join_s,broker,redirect_ms,target_msgs_per_s,\
             achieved_msgs_per_s,sent_total\n1,dns-rr,p0,heavy,0.5,b1,,10000,9990.5,999050\n",
        )
        .expect("write");
        let rows = read_publishers(dir.path()).expect("read");
        assert_eq!((rows[0].downtime_s, rows[0].target_total), (0.0, 0));
        assert_eq!(rows[0].redirect_ms, None);
        assert_eq!(rows[0].sent_total, 999050);
    }
}
