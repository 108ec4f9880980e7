//! `decisions.csv`: one `load_<broker>`, one `pred_<broker>` and one `age_<broker>` column per
//! broker, then the `source` that fed the loads, the client's `role` (`publisher` or
//! `subscriber`) and a subscriber's `group` (the filter it was placed by); written and read by
//! hand because the columns depend on the run. The reader finds columns by name, so files from
//! before `pred_`, `age_`, `source`, `role` or `group` existed read with those empty.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::path::Path;

use super::ReportError;
use super::harness::quantile;
use super::records::DECISIONS_CSV;

/// One placement decision by the dispatcher.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionRow {
    pub trial: u32,
    pub method: String,
    pub t_s: f64,
    pub client_id: String,
    /// The broker chosen; empty = refused (no broker alive).
    pub broker: String,
    /// The load of every broker when chosen, in the writer's broker order.
    pub loads: Vec<f64>,
    /// The predicted load of clients placed but not yet visible in the reports (least-load,
    /// two-choices), per broker in the same order, before this client was added; empty in
    /// files written before the `pred_` columns existed.
    pub predicted: Vec<f64>,
    /// Age in ms of every broker's newest sample when chosen (same order; `None`: no sample
    /// yet): the decision lag of the inputs. Empty in files written before `age_` existed.
    pub sample_ages_ms: Vec<Option<u64>>,
    /// What fed the loads (the dispatcher's `FedBy`: `reports`, `prometheus`,
    /// `prometheus-last-known`); empty in files written before the column existed.
    pub source: String,
    /// `publisher` (placed by `--policy`) or `subscriber` (by the subscriber policy); empty in
    /// files written before the column existed.
    pub role: String,
    /// A subscriber's group, the filter it was placed by; empty for a publisher.
    pub group: String,
}

impl DecisionRow {
    /// The oldest input among the brokers that had one: how stale the comparison was.
    pub fn oldest_input_ms(&self) -> Option<u64> {
        self.sample_ages_ms.iter().flatten().copied().max()
    }
}

pub(super) fn decision_header(brokers: &[String]) -> Vec<String> {
    let mut h: Vec<String> = ["trial", "method", "t_s", "client_id", "broker"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    h.extend(brokers.iter().map(|b| format!("load_{b}")));
    h.extend(brokers.iter().map(|b| format!("pred_{b}")));
    h.extend(brokers.iter().map(|b| format!("age_{b}")));
    h.extend(["source", "role", "group"].map(String::from));
    h
}

/// The CSV fields of one row, in [`decision_header`] order.
pub(super) fn decision_fields(row: &DecisionRow) -> Vec<String> {
    let mut fields = vec![
        row.trial.to_string(),
        row.method.clone(),
        row.t_s.to_string(),
        row.client_id.clone(),
        row.broker.clone(),
    ];
    fields.extend(row.loads.iter().map(f64::to_string));
    fields.extend(row.predicted.iter().map(f64::to_string));
    fields.extend(
        row.sample_ages_ms
            .iter()
            .map(|a| a.map(|ms| ms.to_string()).unwrap_or_default()),
    );
    fields.extend([row.source.clone(), row.role.clone(), row.group.clone()]);
    fields
}

/// The rows of `decisions.csv`, none when the run has no such file (no dispatcher method).
pub fn read_optional(dir: &Path) -> Result<Vec<DecisionRow>, ReportError> {
    if dir.join(DECISIONS_CSV).exists() {
        Ok(read_decisions(dir)?.1)
    } else {
        Ok(Vec::new())
    }
}

/// summary.md's section on the age of the dispatcher's inputs; empty without ages.
pub fn render_markdown(rows: &[DecisionRow]) -> String {
    let table = input_age_table(rows);
    if table.is_empty() {
        return table;
    }
    format!(
        "## Decision inputs\n\nAge of the load information behind each placement: for each \
         decision, the oldest of the brokers' newest samples, from when it was measured (the \
         agent's sample time) to the decision (`age_<broker>` in decisions.csv). Through \
         Prometheus it includes the scrape and query delays; the 5 s window average adds its \
         own lag on top, the same for every source.\n\n{table}\n"
    )
}

/// `decisions.csv`: the broker order (from the `load_<broker>` columns) and the rows.
pub fn read_decisions(dir: &Path) -> Result<(Vec<String>, Vec<DecisionRow>), ReportError> {
    let path = dir.join(DECISIONS_CSV);
    let file = File::open(&path).map_err(|e| ReportError::io(&path, e))?;
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(file);
    let headers = reader
        .headers()
        .map_err(|e| ReportError::csv(&path, e))?
        .clone();
    let columns = |prefix: &str| -> Vec<(String, usize)> {
        headers
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.strip_prefix(prefix).map(|b| (b.to_owned(), i)))
            .collect()
    };
    let loads = columns("load_");
    let brokers: Vec<String> = loads.iter().map(|(b, _)| b.clone()).collect();
    // Per broker in load order, the column of `prefix`, if the file has it for every broker.
    let aligned = |prefix: &str| -> Option<Vec<usize>> {
        let found: HashMap<String, usize> = columns(prefix).into_iter().collect();
        brokers.iter().map(|b| found.get(b).copied()).collect()
    };
    let (pred, age) = (aligned("pred_"), aligned("age_"));
    let named = |name: &str| headers.iter().position(|h| h == name);
    let (source, role, group) = (named("source"), named("role"), named("group"));
    let load_cols: Vec<usize> = loads.iter().map(|(_, i)| *i).collect();
    let mut rows = Vec::new();
    for rec in reader.records() {
        let rec = rec.map_err(|e| ReportError::csv(&path, e))?;
        let bad = || ReportError::Invalid(format!("{}: malformed row {:?}", path.display(), rec));
        if rec.len() != headers.len() {
            tracing::warn!(file = %path.display(), "dropping a row with the wrong field count");
            continue;
        }
        let numbers = |cols: &[usize]| -> Result<Vec<f64>, ReportError> {
            cols.iter()
                .map(|&i| rec[i].parse::<f64>().map_err(|_| bad()))
                .collect()
        };
        rows.push(DecisionRow {
            trial: rec[0].parse().map_err(|_| bad())?,
            method: rec[1].to_owned(),
            t_s: rec[2].parse().map_err(|_| bad())?,
            client_id: rec[3].to_owned(),
            broker: rec[4].to_owned(),
            loads: numbers(&load_cols)?,
            predicted: pred
                .as_deref()
                .map(numbers)
                .transpose()?
                .unwrap_or_default(),
            sample_ages_ms: match &age {
                Some(cols) => cols
                    .iter()
                    .map(|&i| match &rec[i] {
                        "" => Ok(None),
                        v => v.parse::<u64>().map(Some).map_err(|_| bad()),
                    })
                    .collect::<Result<_, _>>()?,
                None => Vec::new(),
            },
            source: source.map(|i| rec[i].to_owned()).unwrap_or_default(),
            role: role.map(|i| rec[i].to_owned()).unwrap_or_default(),
            group: group.map(|i| rec[i].to_owned()).unwrap_or_default(),
        });
    }
    Ok((brokers, rows))
}

/// Per method (first-seen order), the age of the oldest input behind each decision that had
/// inputs: p50, p95 and max in ms, with the count and what fed them. Empty when no row carries
/// ages (files from before the `age_` columns).
pub fn input_age_table(rows: &[DecisionRow]) -> String {
    let mut methods: Vec<&str> = Vec::new();
    let mut ages: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut sources: HashMap<&str, Vec<&str>> = HashMap::new();
    for r in rows {
        let Some(age) = r.oldest_input_ms() else {
            continue;
        };
        if !methods.contains(&r.method.as_str()) {
            methods.push(&r.method);
        }
        ages.entry(&r.method).or_default().push(age as f64);
        let seen = sources.entry(&r.method).or_default();
        if !seen.contains(&r.source.as_str()) {
            seen.push(&r.source);
        }
    }
    if methods.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "| method | fed by | decisions | input age p50 (ms) | p95 (ms) | max (ms) |\n\
         |---|---|---:|---:|---:|---:|\n",
    );
    for m in methods {
        let mut xs = ages.remove(m).unwrap_or_default();
        let n = xs.len();
        let mut at =
            |q: f64| quantile(&mut xs, q).map_or_else(|| "–".into(), |v| format!("{v:.0}"));
        let _ = writeln!(
            md,
            "| {m} | {} | {} | {} | {} | {} |",
            sources.get(m).map(|s| s.join(", ")).unwrap_or_default(),
            n,
            at(0.5),
            at(0.95),
            at(1.0),
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_and_group_end_the_row_and_old_files_read_without_them() {
        assert_eq!(
            decision_header(&["b1".into(), "b2".into()]).join(","),
            "trial,method,t_s,client_id,broker,load_b1,load_b2,pred_b1,pred_b2,age_b1,age_b2,\
             source,role,group"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(DECISIONS_CSV),
            "trial,method,t_s,client_id,broker,load_b1,load_b2,pred_b1,pred_b2\n\
             1,p,5.25,c1,b2,1.5,2,0,0.5\n",
        )
        .expect("write");
        let (brokers, rows) = read_decisions(dir.path()).expect("read");
        assert_eq!(brokers, ["b1", "b2"]);
        assert_eq!(
            (rows[0].loads.clone(), rows[0].source.as_str()),
            (vec![1.5, 2.0], "")
        );
        assert_eq!((rows[0].role.as_str(), rows[0].group.as_str()), ("", ""));
    }

    #[test]
    fn ages_round_trip_and_the_table_takes_the_oldest_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let brokers = ["b1".to_owned(), "b2".to_owned()];
        let row = |method: &str, ages: [Option<u64>; 2], source: &str| DecisionRow {
            trial: 1,
            method: method.into(),
            t_s: 1.0,
            client_id: "c".into(),
            broker: "b1".into(),
            loads: vec![1.0, 2.0],
            predicted: vec![0.0, 0.5],
            sample_ages_ms: ages.to_vec(),
            source: source.into(),
            role: "publisher".into(),
            group: String::new(),
        };
        let rows = vec![
            row("proposed", [Some(10), Some(900)], "reports"),
            DecisionRow {
                role: "subscriber".into(),
                group: "$share/g/load/#".into(),
                ..row("proposed", [Some(20), Some(30)], "reports")
            },
            row("via-prom", [Some(1500), None], "prometheus"),
            row("via-prom", [None, None], "prometheus"),
        ];
        let mut text = decision_header(&brokers).join(",") + "\n";
        for r in &rows {
            text += &(decision_fields(r).join(",") + "\n");
        }
        std::fs::write(dir.path().join(DECISIONS_CSV), text).expect("write");
        let (read_brokers, read) = read_decisions(dir.path()).expect("read");
        assert_eq!((read_brokers.as_slice(), &read), (&brokers[..], &rows));
        assert_eq!(
            input_age_table(&read),
            "| method | fed by | decisions | input age p50 (ms) | p95 (ms) | max (ms) |\n\
             |---|---|---:|---:|---:|---:|\n\
             | proposed | reports | 2 | 30 | 900 | 900 |\n\
             | via-prom | prometheus | 1 | 1500 | 1500 | 1500 |\n"
        );
    }
}
