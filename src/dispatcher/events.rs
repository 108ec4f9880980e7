//! `--events FILE.csv`: one row per placement, columns in this order:
//! `t_s,client_id,broker,load_<id>...,pred_<id>...,age_<id>...,source,role,group`
//! (`decisions.csv` without the runner's `trial,method`), one `load_`, one `pred_` and one `age_`
//! column per broker in config order; `source` says what fed the loads: `reports`, `prometheus`, or `prometheus-last-known`
//! (Prometheus not answering: its last answer held).
//! `load_` is the metric's window average, `pred_` the predicted load of clients placed there
//! that its samples cannot show yet, both as the policy saw them before this client; `age_` the
//! age in ms of the broker's newest sample (empty before its first): the inputs' decision lag.
//! `broker` is empty when the client was refused with 0x88; `t_s` is seconds since the
//! dispatcher started. `role` is `publisher` (placed by `--policy`) or `subscriber` (by
//! `--subscriber-policy`, from the brokers' inflow, not the `load_` columns); `group` is the
//! subscriber's filter it was placed by (empty for a publisher).

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio::task::JoinHandle;

use super::Decision;

/// The header row for brokers `ids` (config order).
pub fn header(ids: &[String]) -> Vec<String> {
    let mut row = vec![
        "t_s".to_owned(),
        "client_id".to_owned(),
        "broker".to_owned(),
    ];
    row.extend(ids.iter().map(|id| format!("load_{id}")));
    row.extend(ids.iter().map(|id| format!("pred_{id}")));
    row.extend(ids.iter().map(|id| format!("age_{id}")));
    row.push("source".to_owned());
    row.push("role".to_owned());
    row.push("group".to_owned());
    row
}

/// One data row; `start_ms` is the dispatcher's start on the [`crate::now_ms`] clock.
pub fn record(d: &Decision, start_ms: u64) -> Vec<String> {
    let t_s = d.t_ms.saturating_sub(start_ms) as f64 / 1000.0;
    let mut row = vec![
        format!("{t_s:.3}"),
        d.client_id.clone(),
        d.broker.clone().unwrap_or_default(),
    ];
    row.extend(d.loads.iter().map(|(_, load)| format!("{load}")));
    row.extend(d.predicted.iter().map(|(_, pred)| format!("{pred}")));
    row.extend(
        d.sample_ages_ms
            .iter()
            .map(|(_, age)| age.map(|ms| ms.to_string()).unwrap_or_default()),
    );
    row.push(d.fed_by.as_str().to_owned());
    row.push(d.role.as_str().to_owned());
    row.push(d.group.clone().unwrap_or_default());
    row
}

/// Creates `path` and writes every decision sent to the returned sender until all senders are
/// dropped. The file is flushed whenever the queue runs empty, so it is readable while running.
pub fn csv_writer(
    path: &Path,
    ids: &[String],
    start_ms: u64,
) -> anyhow::Result<(UnboundedSender<Decision>, JoinHandle<anyhow::Result<()>>)> {
    use anyhow::Context as _;
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = csv::Writer::from_writer(BufWriter::new(file));
    out.write_record(header(ids))?;
    out.flush()?;
    let (tx, mut rx) = unbounded_channel::<Decision>();
    let handle = tokio::task::spawn_blocking(move || {
        while let Some(d) = rx.blocking_recv() {
            out.write_record(record(&d, start_ms))?;
            if rx.is_empty() {
                out.flush()?;
            }
        }
        out.flush()?;
        Ok(())
    });
    Ok((tx, handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_header_and_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.csv");
        let ids = vec!["b1".to_owned(), "b2".to_owned()];
        let (tx, handle) = csv_writer(&path, &ids, 1_000).unwrap();
        let loads = vec![("b1".to_owned(), 12.5), ("b2".to_owned(), 0.0)];
        let predicted = vec![("b1".to_owned(), 0.25), ("b2".to_owned(), 1.5)];
        tx.send(Decision {
            t_ms: 3_500,
            client_id: "p1".into(),
            broker: Some("b2".into()),
            loads: loads.clone(),
            predicted: predicted.clone(),
            sample_ages_ms: vec![("b1".to_owned(), Some(250)), ("b2".to_owned(), None)],
            fed_by: crate::dispatcher::FedBy::Reports,
            role: crate::dispatcher::Role::Publisher,
            group: None,
        })
        .unwrap();
        tx.send(Decision {
            t_ms: 4_000,
            client_id: "p2".into(),
            broker: None,
            loads,
            predicted,
            sample_ages_ms: vec![("b1".to_owned(), Some(4_000)), ("b2".to_owned(), Some(3))],
            fed_by: crate::dispatcher::FedBy::PrometheusLastKnown,
            role: crate::dispatcher::Role::Subscriber,
            group: Some("$share/g/load/#".into()),
        })
        .unwrap();
        drop(tx);
        handle.await.unwrap().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "t_s,client_id,broker,load_b1,load_b2,pred_b1,pred_b2,age_b1,age_b2,source,role,group\n\
             2.500,p1,b2,12.5,0,0.25,1.5,250,,reports,publisher,\n\
             3.000,p2,,12.5,0,0.25,1.5,4000,3,prometheus-last-known,subscriber,$share/g/load/#\n"
        );
    }
}
