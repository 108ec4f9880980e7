//! `summary.csv`: written from the summary rows (with the subscriber and member columns when
//! the run has them) and read back, whole (a published folder redraws from it) or for the
//! online optimum alone. Its columns are listed in [`super::summary`].

use std::collections::HashMap;
use std::path::Path;

use super::ReportError;
use super::summary::{SubscriberFiguresByRun, SummaryRow};

pub const SUMMARY_CSV: &str = "summary.csv";
const OPTIMUM_COL: &str = "optimum_gap_msgs_per_s";

/// Writes `summary.csv`: `trial,method,window_start_s,window_end_s,gap_msgs_per_s,jain_index,
/// mean_abs_cpu_diff_pct,optimum_gap_msgs_per_s,mean_msgs_per_s_<broker>...`.
///
/// With subscribers (`subscribers` not empty) each row also carries
/// [`super::subscribers::csv_columns`]: delivered/expected/lost and latency quantiles; with
/// shared groups, [`super::members::csv_columns`] per group after them.
pub fn write_csv(
    path: &Path,
    rows: &[SummaryRow],
    subscribers: &SubscriberFiguresByRun,
    members: &super::members::MemberFiguresByRun,
) -> Result<(), ReportError> {
    let mut w = csv::Writer::from_path(path).map_err(|e| ReportError::csv(path, e))?;
    let broker_ids: Vec<&str> = rows
        .first()
        .map(|r| r.brokers.iter().map(|(b, _)| b.as_str()).collect())
        .unwrap_or_default();
    let mut header: Vec<String> = [
        "trial",
        "method",
        "window_start_s",
        "window_end_s",
        "gap_msgs_per_s",
        "jain_index",
        "mean_abs_cpu_diff_pct",
        OPTIMUM_COL,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    header.extend(broker_ids.iter().map(|b| format!("mean_msgs_per_s_{b}")));
    let broker_names: Vec<String> = broker_ids.iter().map(|b| b.to_string()).collect();
    if !subscribers.is_empty() {
        header.extend(super::subscribers::csv_columns(&broker_names));
    }
    let groups = super::members::groups(members);
    header.extend(super::members::csv_columns(&groups));
    w.write_record(&header)
        .map_err(|e| ReportError::csv(path, e))?;
    let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    for r in rows {
        let mut rec = vec![
            r.trial.to_string(),
            r.method.clone(),
            r.window_start_s.to_string(),
            r.window_end_s.to_string(),
            r.gap_msgs_per_s.to_string(),
            opt(r.jain_index),
            opt(r.mean_abs_cpu_diff_pct),
            opt(r.optimum_gap_msgs_per_s),
        ];
        rec.extend(r.brokers.iter().map(|(_, x)| x.to_string()));
        if !subscribers.is_empty() {
            let key = (r.trial, r.method.clone());
            rec.extend(super::subscribers::csv_values(
                subscribers.get(&key),
                &broker_names,
            ));
        }
        let key = (r.trial, r.method.clone());
        rec.extend(super::members::csv_values(members.get(&key), &groups));
        w.write_record(&rec)
            .map_err(|e| ReportError::csv(path, e))?;
    }
    w.flush().map_err(|e| ReportError::io(path, e))
}

/// Reads `summary.csv` back into rows (a published folder keeps it without `brokers.csv`).
pub fn read_csv(path: &Path) -> Result<Vec<SummaryRow>, ReportError> {
    let mut r = csv::Reader::from_path(path).map_err(|e| ReportError::csv(path, e))?;
    let headers = r.headers().map_err(|e| ReportError::csv(path, e))?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| ReportError::Invalid(format!("{}: no column {name}", path.display())))
    };
    let (trial, method) = (col("trial")?, col("method")?);
    let (start, end, gap) = (
        col("window_start_s")?,
        col("window_end_s")?,
        col("gap_msgs_per_s")?,
    );
    let (jain, cpu, optimum) = (
        col("jain_index")?,
        col("mean_abs_cpu_diff_pct")?,
        col(OPTIMUM_COL)?,
    );
    let brokers: Vec<(usize, String)> = headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| {
            h.strip_prefix("mean_msgs_per_s_")
                .map(|b| (i, b.to_owned()))
        })
        .collect();
    let mut rows = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| ReportError::csv(path, e))?;
        let bad = |what: &str| {
            ReportError::Invalid(format!("{}: a row with no valid {what}", path.display()))
        };
        let num = |i: usize| rec.get(i).and_then(|v| v.parse::<f64>().ok());
        let int = |i: usize, what: &str| {
            rec.get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| bad(what))
        };
        rows.push(SummaryRow {
            trial: u32::try_from(int(trial, "trial")?).map_err(|_| bad("trial"))?,
            method: rec.get(method).ok_or_else(|| bad("method"))?.to_owned(),
            window_start_s: int(start, "window_start_s")?,
            window_end_s: int(end, "window_end_s")?,
            gap_msgs_per_s: num(gap).ok_or_else(|| bad("gap_msgs_per_s"))?,
            jain_index: num(jain),
            mean_abs_cpu_diff_pct: num(cpu),
            optimum_gap_msgs_per_s: num(optimum),
            brokers: brokers
                .iter()
                .map(|(i, b)| (b.clone(), num(*i).unwrap_or(0.0)))
                .collect(),
        });
    }
    Ok(rows)
}

/// The optimum gap per trial from an existing `summary.csv` (empty if absent or no column).
pub fn read_optimum(path: &Path) -> Result<HashMap<u32, f64>, ReportError> {
    let mut out = HashMap::new();
    if !path.exists() {
        return Ok(out);
    }
    let mut r = csv::Reader::from_path(path).map_err(|e| ReportError::csv(path, e))?;
    let headers = r.headers().map_err(|e| ReportError::csv(path, e))?.clone();
    let (Some(ti), Some(oi)) = (
        headers.iter().position(|h| h == "trial"),
        headers.iter().position(|h| h == OPTIMUM_COL),
    ) else {
        return Ok(out);
    };
    for rec in r.records() {
        let rec = rec.map_err(|e| ReportError::csv(path, e))?;
        let trial = rec.get(ti).and_then(|v| v.parse::<u32>().ok());
        let gap = rec.get(oi).and_then(|v| v.parse::<f64>().ok());
        if let (Some(t), Some(g)) = (trial, gap) {
            out.insert(t, g);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_csv_round_trips_the_optimum() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(SUMMARY_CSV);
        let r = SummaryRow {
            trial: 3,
            method: "dns-rr".into(),
            window_start_s: 1,
            window_end_s: 2,
            gap_msgs_per_s: 5.0,
            jain_index: None,
            mean_abs_cpu_diff_pct: None,
            optimum_gap_msgs_per_s: Some(4000.0),
            brokers: vec![("b1".into(), 5.0), ("b2".into(), 0.0)],
        };
        write_csv(
            &path,
            std::slice::from_ref(&r),
            &SubscriberFiguresByRun::new(),
            &Default::default(),
        )
        .expect("write");
        assert_eq!(read_csv(&path).expect("rows read back"), vec![r]);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            text.starts_with(
                "trial,method,window_start_s,window_end_s,gap_msgs_per_s,jain_index,\
             mean_abs_cpu_diff_pct,optimum_gap_msgs_per_s,mean_msgs_per_s_b1,mean_msgs_per_s_b2\n\
             3,dns-rr,1,2,5,,,4000,5,0\n"
            ),
            "{text}"
        );
        assert_eq!(
            read_optimum(&path).expect("optimum"),
            HashMap::from([(3, 4000.0)])
        );
    }
}
