//! The hosts' clocks against this machine's: a `clock serve` in this process on the local
//! address, probed from each host over its ssh connection (`mqdispatch clock probe`). The
//! service only tells the time; it takes no input that could steer a run.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::clock::Estimate;
use crate::remote::Connection;
use crate::remote::ssh::shell_quote;

/// Exchanges per probe (the one with the smallest round trip counts).
const SAMPLES: u32 = 20;
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// One measurement of a host's clock.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ClockRecord {
    /// When it was measured, epoch ms on this machine's clock.
    pub t_ms: u64,
    /// The host's clock minus this machine's.
    pub offset_us: i64,
    /// The true offset lies within `offset_us ± uncertainty_us` (half the best round trip).
    pub uncertainty_us: i64,
    pub rtt_us: i64,
}

impl ClockRecord {
    /// From a probe run on the host against this machine's service (whose estimate is this
    /// machine's clock minus the host's).
    fn from_host_probe(e: Estimate, t_ms: u64) -> ClockRecord {
        ClockRecord {
            t_ms,
            offset_us: -e.offset_us,
            uncertainty_us: e.uncertainty_us,
            rtt_us: e.rtt_us,
        }
    }
}

pub(super) struct ClockServer {
    addr: SocketAddr,
    cancel: CancellationToken,
    _task: AbortOnDropHandle<()>,
}

impl ClockServer {
    pub(super) async fn start(ip: IpAddr) -> anyhow::Result<ClockServer> {
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .with_context(|| format!("clock service on {ip}"))?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let task = tokio::spawn(crate::clock::serve(listener, cancel.clone()));
        Ok(ClockServer {
            addr,
            cancel,
            _task: AbortOnDropHandle::new(task),
        })
    }

    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(super) fn stop(&self) {
        self.cancel.cancel();
    }
}

/// Runs `binary clock probe ADDR` on the host.
pub(super) async fn probe_from(
    conn: &Connection,
    binary: &str,
    addr: &str,
) -> anyhow::Result<ClockRecord> {
    let line = format!(
        "{} clock probe {} --samples {SAMPLES}",
        shell_quote(binary),
        shell_quote(addr)
    );
    let out = conn.run(&line, PROBE_TIMEOUT).await?;
    let estimate: Estimate = serde_json::from_str(out.trim())
        .with_context(|| format!("clock probe printed `{}`", out.trim()))?;
    Ok(ClockRecord::from_host_probe(estimate, crate::now_ms()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_probe_is_turned_round() {
        // The host measured this machine 700 µs ahead of it: the host is 700 µs behind.
        let e = Estimate {
            offset_us: 700,
            uncertainty_us: 30,
            rtt_us: 60,
        };
        let r = ClockRecord::from_host_probe(e, 5);
        assert_eq!((r.offset_us, r.uncertainty_us, r.rtt_us), (-700, 30, 60));
    }
}
