//! `decisions.csv`: one `load_<broker>` and one `pred_<broker>` column per broker, then the
//! `source` that fed the loads; written and read by hand because the columns depend on the run.

use std::fs::File;
use std::path::Path;

use super::ReportError;
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
    /// What fed the loads (the dispatcher's `FedBy`: `reports`, `prometheus`,
    /// `prometheus-last-known`); empty in files written before the column existed.
    pub source: String,
}

pub(super) fn decision_header(brokers: &[String]) -> Vec<String> {
    let mut h: Vec<String> = ["trial", "method", "t_s", "client_id", "broker"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    h.extend(brokers.iter().map(|b| format!("load_{b}")));
    h.extend(brokers.iter().map(|b| format!("pred_{b}")));
    h.push("source".into());
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
    fields.push(row.source.clone());
    fields
}

/// `decisions.csv`: the broker order (from the `load_<broker>` columns) and the rows; files
/// without the `pred_<broker>` or `source` columns read with those empty.
pub fn read_decisions(dir: &Path) -> Result<(Vec<String>, Vec<DecisionRow>), ReportError> {
    let path = dir.join(DECISIONS_CSV);
    let file = File::open(&path).map_err(|e| ReportError::io(&path, e))?;
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(file);
    let headers = reader.headers().map_err(|e| ReportError::csv(&path, e))?;
    let brokers: Vec<String> = headers
        .iter()
        .skip(5)
        .filter_map(|h| h.strip_prefix("load_").map(str::to_owned))
        .collect();
    let n = brokers.len();
    let with_predictions = headers.iter().any(|h| h.starts_with("pred_"));
    let with_source = headers.iter().next_back() == Some("source");
    let numbers_end = if with_predictions { 5 + 2 * n } else { 5 + n };
    let fields = numbers_end + usize::from(with_source);
    let mut rows = Vec::new();
    for rec in reader.records() {
        let rec = rec.map_err(|e| ReportError::csv(&path, e))?;
        let bad = || ReportError::Invalid(format!("{}: malformed row {:?}", path.display(), rec));
        if rec.len() != fields {
            tracing::warn!(file = %path.display(), "dropping a row with the wrong field count");
            continue;
        }
        let numbers = rec
            .iter()
            .take(numbers_end)
            .skip(5)
            .map(|v| v.parse::<f64>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad())?;
        let (loads, predicted) = numbers.split_at(n);
        rows.push(DecisionRow {
            trial: rec[0].parse().map_err(|_| bad())?,
            method: rec[1].to_owned(),
            t_s: rec[2].parse().map_err(|_| bad())?,
            client_id: rec[3].to_owned(),
            broker: rec[4].to_owned(),
            loads: loads.to_vec(),
            predicted: predicted.to_vec(),
            source: if with_source {
                rec[numbers_end].to_owned()
            } else {
                String::new()
            },
        });
    }
    Ok((brokers, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_is_the_last_column_and_old_files_read_without_it() {
        assert_eq!(
            decision_header(&["b1".into(), "b2".into()]).join(","),
            "trial,method,t_s,client_id,broker,load_b1,load_b2,pred_b1,pred_b2,source"
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
    }
}
