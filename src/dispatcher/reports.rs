//! The report port: agents send one JSON [`LoadReport`] per line.
//!
//! Anyone who can reach this port can try to hold its slots (threat model: README, "Report port
//! and TLS"). Per report connection:
//! - it must deliver a valid report (with the right token, when one is configured) within
//!   [`ReportPort::first_report_deadline`] (one interval + 1 s) of connecting, or it is closed;
//!   bytes, blank lines and bad lines do not extend that deadline;
//! - afterwards, it is closed when no valid report arrives for 10 intervals (at least 10 s):
//!   only whole valid lines restart that timer, never single bytes;
//! - a wrong or missing token closes the connection at once (compared in constant time);
//! - a line longer than [`MAX_REPORT_LINE_BYTES`] closes the connection (the rest of it cannot be
//!   framed reliably);
//! - an unparsable line, or a report naming a broker that is not configured, is logged and
//!   ignored; after [`MAX_BAD_LINES`] of them the connection is closed.
//!
//! Slots ([`super::report_slots`]): at most [`MAX_REPORT_CONNECTIONS`] connections, at most
//! [`MAX_UNPROVEN_PER_ADDRESS`] not yet reporting per source address; a newcomer may push out
//! the oldest connection that has not reported yet, never one that has.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use subtle::ConstantTimeEq as _;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::listener::accept_next;
use super::placer::Placer;
use super::report_slots::{Slot, SlotLimits, Slots};
use crate::load_report::{LoadReport, MAX_REPORT_LINE_BYTES};

pub const MAX_BAD_LINES: u32 = 5;
pub const MAX_REPORT_CONNECTIONS: usize = 64;
pub const MAX_UNPROVEN_PER_ADDRESS: usize = 8;
/// Added to one report interval for a new connection's first report.
pub const FIRST_REPORT_GRACE: Duration = Duration::from_secs(1);

/// Why a report connection was closed (logged; tests read it through the log only).
#[derive(Debug, thiserror::Error)]
enum Closed {
    #[error("peer closed")]
    Eof,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("line longer than {MAX_REPORT_LINE_BYTES} bytes")]
    LineTooLong,
    #[error("wrong or missing token")]
    BadToken,
    #[error("{MAX_BAD_LINES} bad lines")]
    TooManyBadLines,
    #[error("no valid first report within {0:?}")]
    NoFirstReport(Duration),
    #[error("no report for {0:?}")]
    Idle(Duration),
    #[error("pushed out by a newcomer before its first report")]
    Evicted,
}

/// What one line was.
enum Line {
    Report,
    Blank,
    Bad,
}

#[derive(Clone)]
pub struct ReportPort {
    pub placer: Arc<Placer>,
    pub token: Option<Arc<str>>,
    pub idle_timeout: Duration,
    pub first_report_deadline: Duration,
    pub limits: SlotLimits,
}

impl ReportPort {
    pub fn new(placer: Arc<Placer>, token: Option<&str>, interval: Duration) -> Self {
        Self {
            placer,
            token: token.map(Arc::from),
            idle_timeout: Self::idle_timeout_for(interval),
            first_report_deadline: interval + FIRST_REPORT_GRACE,
            limits: SlotLimits {
                total: MAX_REPORT_CONNECTIONS,
                per_address: MAX_UNPROVEN_PER_ADDRESS,
            },
        }
    }

    pub fn idle_timeout_for(interval: Duration) -> Duration {
        (interval * 10).max(Duration::from_secs(10))
    }

    pub async fn accept_loop(
        self,
        listener: TcpListener,
        tracker: TaskTracker,
        cancel: CancellationToken,
    ) {
        let slots = Slots::new(self.limits);
        while let Some((stream, peer)) = accept_next(&listener, &cancel, "reports").await {
            let slot = match slots.admit(peer.ip()) {
                Ok(slot) => slot,
                Err(why) => {
                    tracing::warn!(%peer, reason = %why, "report connection refused");
                    continue;
                }
            };
            let port = self.clone();
            let cancel = cancel.clone();
            tracker.spawn(async move {
                let result = tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = slot.evicted.cancelled() => Err(Closed::Evicted),
                    r = port.serve(stream, &slot) => r,
                };
                if let Err(why) = result {
                    log_closed(peer, &why);
                }
            });
        }
    }

    async fn serve<S: AsyncRead + Unpin>(&self, mut stream: S, slot: &Slot) -> Result<(), Closed> {
        let mut buf = BytesMut::with_capacity(1024);
        let mut bad_lines = 0u32;
        let mut proven = false;
        let mut deadline = Instant::now() + self.first_report_deadline;
        loop {
            while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                let line = buf.split_to(end + 1);
                match self.handle_line(&line[..end])? {
                    Line::Report => {
                        if !proven {
                            proven = true;
                            slot.prove();
                        }
                        deadline = Instant::now() + self.idle_timeout;
                    }
                    Line::Blank => {}
                    Line::Bad => {
                        bad_lines += 1;
                        if bad_lines >= MAX_BAD_LINES {
                            return Err(Closed::TooManyBadLines);
                        }
                    }
                }
            }
            if buf.len() > MAX_REPORT_LINE_BYTES {
                return Err(Closed::LineTooLong);
            }
            match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
                Err(_) if proven => return Err(Closed::Idle(self.idle_timeout)),
                Err(_) => return Err(Closed::NoFirstReport(self.first_report_deadline)),
                Ok(Ok(0)) => return Err(Closed::Eof),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }

    fn handle_line(&self, raw: &[u8]) -> Result<Line, Closed> {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Ok(Line::Blank);
        }
        let report = match std::str::from_utf8(raw)
            .map_err(|e| e.to_string())
            .and_then(|s| LoadReport::parse_line(s).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(error) => {
                tracing::warn!(%error, "bad report line ignored");
                return Ok(Line::Bad);
            }
        };
        if let Some(expected) = &self.token
            && !report
                .token
                .as_deref()
                .is_some_and(|t| same_secret(t, expected))
        {
            return Err(Closed::BadToken);
        }
        match self.placer.record(&report) {
            Ok(()) => {
                tracing::trace!(broker = %report.broker, cpu_pct = report.cpu_pct, "report");
                Ok(Line::Report)
            }
            Err(error) => {
                tracing::warn!(%error, "report ignored");
                Ok(Line::Bad)
            }
        }
    }
}

fn log_closed(peer: SocketAddr, why: &Closed) {
    match why {
        Closed::Eof => tracing::debug!(%peer, "report connection closed"),
        why => tracing::warn!(%peer, reason = %why, "report connection closed"),
    }
}

/// Constant-time (`subtle`): timing leaks neither the matching prefix nor, beyond the length,
/// anything else.
fn same_secret(given: &str, expected: &str) -> bool {
    given.as_bytes().ct_eq(expected.as_bytes()).into()
}

pub fn checked_bind_addr(addr: SocketAddr, token: Option<&str>) -> Result<(), crate::InputError> {
    if addr.ip().is_loopback() || token.is_some() {
        Ok(())
    } else {
        Err(crate::InputError(format!(
            "--report-listen {addr} is not a loopback address: anyone who can reach it could \
             steer placement; set --token (or MQDISPATCH_TOKEN), or listen on 127.0.0.1"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abd", "abc"));
        assert!(!same_secret("ab", "abc"));
        assert!(!same_secret("", "abc"));
    }

    #[test]
    fn non_loopback_report_port_needs_a_token() {
        let any: SocketAddr = "0.0.0.0:9000".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        assert!(checked_bind_addr(any, None).is_err());
        assert!(checked_bind_addr(any, Some("t")).is_ok());
        assert!(checked_bind_addr(lo, None).is_ok());
    }

    use crate::dispatcher::{BrokerEntry, DispatcherConfig, Policy};
    use tokio::io::AsyncWriteExt;

    fn port(token: Option<&str>) -> (ReportPort, Slots) {
        let cfg = DispatcherConfig::new(
            vec![BrokerEntry {
                id: "b1".into(),
                addr: "h:1".into(),
                tls_addr: None,
            }],
            Policy::LeastCpu,
        );
        let placer = Arc::new(Placer::new(&cfg, None));
        let port = ReportPort::new(placer, token, Duration::from_secs(1));
        let slots = Slots::new(port.limits);
        (port, slots)
    }

    fn report_line(token: Option<&str>) -> String {
        let mut r = LoadReport::parse_line(r#"{"broker":"b1","t_ms":1,"cpu_pct":5}"#).unwrap();
        r.t_ms = crate::now_ms();
        r.token = token.map(str::to_owned);
        r.to_line()
    }

    /// Writes `chunk` every 100 ms, forever (until the reader goes away).
    fn trickle(mut w: tokio::io::DuplexStream, chunk: &'static [u8]) {
        tokio::spawn(async move {
            while w.write_all(chunk).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_and_blank_lines_do_not_buy_time_before_the_first_report() {
        for chunk in [&b" "[..], b"\n", b"{\"broker\""] {
            let (port, slots) = port(None);
            let slot = slots.admit([127, 0, 0, 1].into()).unwrap();
            let (r, w) = tokio::io::duplex(64);
            trickle(w, chunk);
            let start = Instant::now();
            let why = port.serve(r, &slot).await.unwrap_err();
            assert!(matches!(why, Closed::NoFirstReport(_)), "{why}");
            assert_eq!(start.elapsed(), port.first_report_deadline, "{chunk:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn after_reports_only_whole_valid_lines_restart_the_idle_timer() {
        let (port, slots) = port(None);
        let slot = slots.admit([127, 0, 0, 1].into()).unwrap();
        let (r, mut w) = tokio::io::duplex(1024);
        w.write_all(report_line(None).as_bytes()).await.unwrap();
        trickle(w, b" ");
        let start = Instant::now();
        let why = port.serve(r, &slot).await.unwrap_err();
        assert!(matches!(why, Closed::Idle(_)), "{why}");
        assert_eq!(start.elapsed(), port.idle_timeout);
        assert_eq!(slots.counts(), (1, 0), "the report proved the slot");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wrong_or_missing_token_closes_at_once_and_the_right_one_is_taken() {
        for (given, closes) in [(None, true), (Some("guess"), true), (Some("s3cret"), false)] {
            let (port, slots) = port(Some("s3cret"));
            let slot = slots.admit([127, 0, 0, 1].into()).unwrap();
            let (r, mut w) = tokio::io::duplex(1024);
            w.write_all(report_line(given).as_bytes()).await.unwrap();
            drop(w);
            let start = Instant::now();
            let why = port.serve(r, &slot).await.unwrap_err();
            assert_eq!(start.elapsed(), Duration::ZERO);
            if closes {
                assert!(matches!(why, Closed::BadToken), "{given:?}: {why}");
                assert_eq!(slots.counts(), (0, 1));
            } else {
                assert!(matches!(why, Closed::Eof), "{why}");
                assert_eq!(slots.counts(), (1, 0));
            }
        }
    }
}
