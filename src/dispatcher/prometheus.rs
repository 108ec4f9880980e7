//! `--load-source prometheus`: every interval, one instant query (`GET /api/v1/query`) against a
//! Prometheus server; each series of the answer names its broker in `--broker-label`, and its
//! value is the metric the policy uses.
//!
//! Staleness, as sharp as the report path's (the load table ages every broker the same way):
//! - a broker whose series is in the answer gets a fresh sample;
//! - a broker missing from the answer gets none, so after 3 intervals it is down and gets no new
//!   clients until its series is back; with `--stale keep` it keeps its last known load instead;
//! - when Prometheus does not answer (refused, timeout, HTTP or query error), the brokers of the
//!   last answer keep their last known loads and stay in service: a monitoring outage must not
//!   refuse every client. The log says so once (and again when it answers), `/metrics` shows
//!   `mqdispatch_prometheus_up 0`, and decisions made meanwhile carry the source
//!   `prometheus-last-known`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode, Uri};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Metric;
use super::placer::Placer;
use super::source::{FedBy, PrometheusSource, Stale};
use crate::load_report::LoadReport;

/// Largest answer read; a vector of a few hundred series is far below.
const MAX_ANSWER_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("http: {0}")]
    Http(String),
    #[error("HTTP {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("not a Prometheus answer: {0}")]
    Json(#[from] serde_json::Error),
    #[error("query failed ({kind}): {error}")]
    Query { kind: String, error: String },
    #[error("the query answers a {0}, not an instant vector with one series per broker")]
    NotVector(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    result_type: String,
    result: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct Series {
    metric: HashMap<String, String>,
    value: (f64, String),
}

/// One series of an answer: the broker named in the label, the value, and the evaluation time
/// Prometheus stamped on it ([`crate::now_ms`] clock).
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub broker: String,
    pub value: f64,
    pub at_ms: u64,
}

/// Parses a `/api/v1/query` answer body (pure). Series without the label are skipped; so are
/// values that are not finite (NaN from a division by zero, for example).
pub fn parse_answer(body: &[u8], broker_label: &str) -> Result<Vec<Point>, QueryError> {
    let answer: Answer = serde_json::from_slice(body)?;
    if answer.status != "success" {
        return Err(QueryError::Query {
            kind: answer.error_type.unwrap_or_default(),
            error: answer.error.unwrap_or_default(),
        });
    }
    let data = answer
        .data
        .ok_or_else(|| QueryError::NotVector("nothing".into()))?;
    if data.result_type != "vector" {
        return Err(QueryError::NotVector(data.result_type));
    }
    let series: Vec<Series> = serde_json::from_value(data.result)?;
    Ok(series
        .into_iter()
        .filter_map(|s| {
            let broker = s.metric.get(broker_label)?.clone();
            let value: f64 = s.value.1.parse().ok()?;
            let at_ms = (s.value.0.max(0.0) * 1000.0).round() as u64;
            value.is_finite().then_some(Point {
                broker,
                value,
                at_ms,
            })
        })
        .collect())
}

/// `application/x-www-form-urlencoded` escaping of a query parameter.
fn escape(text: &str) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    const KEEP: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    utf8_percent_encode(text, KEEP).to_string()
}

/// Runs `source.query` once, within `timeout`.
pub async fn query(source: &PrometheusSource, timeout: Duration) -> Result<Vec<Point>, QueryError> {
    query_expr(source, &source.query, timeout).await
}

/// Runs the instant query `expr` against `source`'s server once, within `timeout`.
async fn query_expr(
    source: &PrometheusSource,
    expr: &str,
    timeout: Duration,
) -> Result<Vec<Point>, QueryError> {
    tokio::time::timeout(timeout, query_once(source, expr))
        .await
        .map_err(|_| QueryError::Timeout(timeout))?
}

async fn query_once(source: &PrometheusSource, expr: &str) -> Result<Vec<Point>, QueryError> {
    let prefix = source.url.path().trim_end_matches('/');
    let path = format!("{prefix}/api/v1/query?query={}", escape(expr));
    let (status, body) = get(&source.url, &path).await?;
    // A failed query answers 4xx/5xx with the error in the usual JSON.
    match parse_answer(&body, &source.broker_label) {
        Err(QueryError::Json(_)) if !status.is_success() => Err(QueryError::Status {
            status,
            body: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        }),
        other => other,
    }
}

/// One HTTP/1.1 `GET path` to the server of `base` (`http://HOST:PORT`): status and body.
pub async fn get(base: &Uri, path: &str) -> Result<(StatusCode, Bytes), QueryError> {
    let host = base.host().unwrap_or("127.0.0.1");
    let port = base.port_u16().unwrap_or(80);
    let addr = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let stream = TcpStream::connect(&addr)
        .await
        .map_err(|source| QueryError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let http = |e: hyper::Error| QueryError::Http(e.to_string());
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(http)?;
    let request = Request::get(path)
        .header(hyper::header::HOST, addr.as_str())
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| QueryError::Http(e.to_string()))?;
    let exchange = async move {
        let response = sender.send_request(request).await.map_err(http)?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| QueryError::Http(e.to_string()))?
            .to_bytes();
        Ok::<_, QueryError>((status, body))
    };
    // The connection future drives the exchange. It may finish first (the server closes after
    // the answer): what it read is then already buffered for the exchange.
    tokio::pin!(conn);
    tokio::pin!(exchange);
    tokio::select! {
        r = &mut exchange => r,
        r = &mut conn => {
            r.map_err(http)?;
            exchange.await
        }
    }
}

/// When each broker's value was measured, from `source.time_query` (broker → ms); empty
/// without one or when it fails (values then date from the query's evaluation).
async fn measured_at(source: &PrometheusSource, timeout: Duration) -> HashMap<String, u64> {
    let Some(expr) = &source.time_query else {
        return HashMap::new();
    };
    match query_expr(source, expr, timeout).await {
        Ok(points) => points
            .into_iter()
            .map(|p| (p.broker, (p.value.max(0.0) * 1000.0).round() as u64))
            .collect(),
        Err(error) => {
            debug!(%error, "time query failed: values date from the query");
            HashMap::new()
        }
    }
}

/// The sample a query value stands for: the value in the field of `metric`, measured at `t_ms`.
fn sample(broker: &str, value: f64, metric: Metric, t_ms: u64) -> LoadReport {
    let (cpu_pct, msgs_in_per_s, connections) = match metric {
        Metric::Cpu | Metric::Composite => (value, None, None),
        Metric::MsgRate => (0.0, Some(value), None),
        Metric::Connections => (0.0, None, Some(value.max(0.0).round() as u64)),
    };
    LoadReport {
        broker: broker.to_owned(),
        t_ms,
        cpu_pct: cpu_pct.max(0.0),
        msgs_in_per_s: msgs_in_per_s.map(|r| r.max(0.0)),
        connections,
        token: None,
    }
}

/// Queries every `interval` until `cancel`, feeding `placer` (module docs for the rules).
pub async fn poll(
    source: PrometheusSource,
    placer: Arc<Placer>,
    metric: Metric,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Loads of the brokers in the last answer (plus kept ones) and when they were measured: held
    // while Prometheus is down, their age growing.
    let mut held: HashMap<String, (f64, u64)> = HashMap::new();
    let mut missing: HashSet<String> = HashSet::new();
    let mut unknown_warned: HashSet<String> = HashSet::new();
    let mut failing = false;
    let ids: Vec<String> = placer.broker_ids();
    info!(url = %source.url, query = %source.query, "querying Prometheus for broker loads");
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let answer = tokio::select! {
            _ = cancel.cancelled() => return,
            a = query(&source, interval) => a,
        };
        placer.metrics.prometheus_query(answer.is_ok());
        match answer {
            Ok(points) => {
                if failing {
                    failing = false;
                    placer.set_fed_by(FedBy::Prometheus);
                    info!("Prometheus answers again: loads from its answers");
                }
                let dated = measured_at(&source, interval).await;
                let mut fresh: HashMap<String, (f64, u64)> = HashMap::new();
                for p in points {
                    if !placer.knows(&p.broker) {
                        if unknown_warned.insert(p.broker.clone()) {
                            warn!(broker = %p.broker, label = %source.broker_label, "series names a broker that is not configured: ignored");
                        }
                        continue;
                    }
                    let t_ms = dated.get(&p.broker).copied().unwrap_or(p.at_ms);
                    if fresh.insert(p.broker.clone(), (p.value, t_ms)).is_some() {
                        debug!(broker = %p.broker, "several series for one broker: the last counts");
                    }
                }
                for id in &ids {
                    match fresh.get(id) {
                        Some(&(v, t_ms)) => {
                            if missing.remove(id) {
                                info!(broker = %id, "broker's series is back");
                            }
                            let _ = placer.record(&sample(id, v, metric, t_ms));
                            held.insert(id.clone(), (v, t_ms));
                        }
                        None => {
                            if missing.insert(id.clone()) {
                                match source.stale {
                                    Stale::Down => {
                                        warn!(broker = %id, "no series for broker: down after 3 intervals unless it comes back")
                                    }
                                    Stale::Keep => {
                                        warn!(broker = %id, "no series for broker: kept at its last known load")
                                    }
                                }
                            }
                            match (source.stale, held.get(id)) {
                                (Stale::Keep, Some(&(v, t_ms))) => {
                                    let _ = placer.record(&sample(id, v, metric, t_ms));
                                }
                                _ => {
                                    held.remove(id);
                                }
                            }
                        }
                    }
                }
            }
            Err(error) => {
                if !failing {
                    failing = true;
                    placer.set_fed_by(FedBy::PrometheusLastKnown);
                    warn!(%error, brokers = held.len(), "Prometheus not answering: serving on the last known loads");
                } else {
                    debug!(%error, "Prometheus still not answering");
                }
                for (id, &(v, t_ms)) in &held {
                    let _ = placer.record(&sample(id, v, metric, t_ms));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_vector_answer() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"__name__":"x","broker":"b1","instance":"i"},"value":[1700000000.5,"12.5"]},
            {"metric":{"broker":"b2"},"value":[1700000000.5,"NaN"]},
            {"metric":{"instance":"i"},"value":[1700000000.5,"3"]},
            {"metric":{"broker":"b3"},"value":[1700000000.5,"1e3"]}]}}"#;
        let points = parse_answer(body, "broker").unwrap();
        assert_eq!(
            points,
            [
                Point {
                    broker: "b1".into(),
                    value: 12.5,
                    at_ms: 1_700_000_000_500,
                },
                Point {
                    broker: "b3".into(),
                    value: 1000.0,
                    at_ms: 1_700_000_000_500,
                }
            ]
        );
    }

    #[test]
    fn refuses_errors_and_non_vectors() {
        let err = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#;
        let e = parse_answer(err, "broker").unwrap_err().to_string();
        assert!(e.contains("bad_data") && e.contains("parse error"), "{e}");
        let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1,"2"]}}"#;
        assert!(matches!(
            parse_answer(scalar, "broker"),
            Err(QueryError::NotVector(t)) if t == "scalar"
        ));
        assert!(matches!(
            parse_answer(b"<html>", "broker"),
            Err(QueryError::Json(_))
        ));
    }

    #[test]
    fn escapes_promql() {
        assert_eq!(
            escape(r#"1 - avg by (instance)(rate(x{mode="idle"}[5s]))"#),
            "1%20-%20avg%20by%20%28instance%29%28rate%28x%7Bmode%3D%22idle%22%7D%5B5s%5D%29%29"
        );
    }

    #[test]
    fn a_value_lands_in_the_metric_field() {
        let cpu = sample("b", 7.0, Metric::Cpu, 42);
        assert_eq!((cpu.cpu_pct, cpu.t_ms), (7.0, 42));
        assert_eq!(
            sample("b", 7.0, Metric::MsgRate, 0).msgs_in_per_s,
            Some(7.0)
        );
        assert_eq!(
            sample("b", 6.6, Metric::Connections, 0).connections,
            Some(7)
        );
    }
}

#[cfg(test)]
mod get_tests {
    use super::*;

    #[tokio::test]
    async fn get_reads_a_local_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let m = std::sync::Arc::new(crate::agent::metrics::AgentMetrics::default());
        m.observe(&sample("b1", 12.5, Metric::Cpu, 1_000));
        let server = tokio::spawn(crate::metrics::serve(listener, m, cancel.clone()));
        let base: Uri = format!("http://{addr}").parse().unwrap();
        let (status, body) = tokio::time::timeout(Duration::from_secs(5), get(&base, "/metrics"))
            .await
            .expect("in time")
            .unwrap();
        assert!(status.is_success());
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("mqdispatch_agent_cpu_percent{broker=\"b1\"} 12.5"),
            "{text}"
        );
        cancel.cancel();
        server.await.unwrap().unwrap();
    }
}
