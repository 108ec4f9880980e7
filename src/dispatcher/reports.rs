//! The report port: agents send one JSON [`LoadReport`] per line.
//!
//! Handling of bad input, per report connection:
//! - a line longer than [`MAX_REPORT_LINE_BYTES`] closes the connection (the rest of it cannot be
//!   framed reliably);
//! - a wrong or missing token (when one is configured) closes the connection at once;
//! - an unparsable line, or a report naming a broker that is not configured, is logged and
//!   ignored; after [`MAX_BAD_LINES`] of them the connection is closed;
//! - a connection that sends no complete line for 10 intervals (at least 10 s) is closed.
//!
//! At most [`MAX_REPORT_CONNECTIONS`] report connections are served at once; more are closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::listener::{Admitted, accept_capped};
use super::placer::Placer;
use crate::load_report::{LoadReport, MAX_REPORT_LINE_BYTES};

pub const MAX_BAD_LINES: u32 = 5;
pub const MAX_REPORT_CONNECTIONS: usize = 64;

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
    #[error("no report for {0:?}")]
    Idle(Duration),
}

#[derive(Clone)]
pub struct ReportPort {
    pub placer: Arc<Placer>,
    pub token: Option<Arc<str>>,
    pub idle_timeout: Duration,
}

impl ReportPort {
    pub fn idle_timeout_for(interval: Duration) -> Duration {
        (interval * 10).max(Duration::from_secs(10))
    }

    pub async fn accept_loop(
        self,
        listener: TcpListener,
        tracker: TaskTracker,
        cancel: CancellationToken,
    ) {
        let permits = Arc::new(Semaphore::new(MAX_REPORT_CONNECTIONS));
        while let Some(Admitted {
            stream,
            peer,
            permit,
        }) = accept_capped(&listener, &permits, &cancel, "reports", || {}).await
        {
            let port = self.clone();
            let cancel = cancel.clone();
            tracker.spawn(async move {
                if let Some(Err(why)) = cancel.run_until_cancelled(port.serve(stream)).await {
                    match why {
                        Closed::Eof => tracing::debug!(%peer, "report connection closed"),
                        why => tracing::warn!(%peer, reason = %why, "report connection closed"),
                    }
                }
                drop(permit);
            });
        }
    }

    async fn serve(&self, mut stream: TcpStream) -> Result<(), Closed> {
        let mut buf = BytesMut::with_capacity(1024);
        let mut bad_lines = 0u32;
        loop {
            while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                let line = buf.split_to(end + 1);
                if !self.handle_line(&line[..end])? {
                    bad_lines += 1;
                    if bad_lines >= MAX_BAD_LINES {
                        return Err(Closed::TooManyBadLines);
                    }
                }
            }
            if buf.len() > MAX_REPORT_LINE_BYTES {
                return Err(Closed::LineTooLong);
            }
            let read = tokio::time::timeout(self.idle_timeout, stream.read_buf(&mut buf)).await;
            match read {
                Err(_) => return Err(Closed::Idle(self.idle_timeout)),
                Ok(Ok(0)) => return Err(Closed::Eof),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// `Ok(true)` for a report taken in, `Ok(false)` for a bad line to count.
    fn handle_line(&self, raw: &[u8]) -> Result<bool, Closed> {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Ok(true);
        }
        let report = match std::str::from_utf8(raw)
            .map_err(|e| e.to_string())
            .and_then(|s| LoadReport::parse_line(s).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(error) => {
                tracing::warn!(%error, "bad report line ignored");
                return Ok(false);
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
                Ok(true)
            }
            Err(error) => {
                tracing::warn!(%error, "report ignored");
                Ok(false)
            }
        }
    }
}

/// Compares without stopping at the first difference, so timing does not leak the prefix.
fn same_secret(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
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
}
