//! `mqdispatch clock probe ADDR`: sequential exchanges with a `clock serve`, then the NTP
//! estimate of [`super::estimate`].

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{EXCHANGE_TIMEOUT, Estimate, REQUEST, Sample, estimate, realtime_us};
use crate::addr::HostPort;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot connect to clock service {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("clock service {addr} did not answer within {} s", EXCHANGE_TIMEOUT.as_secs())]
    Timeout { addr: String },
    #[error("clock service {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("clock service {addr}: local clock stepped back during every exchange")]
    NoSample { addr: String },
}

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// `HOST:PORT` of a `mqdispatch clock serve`.
    #[arg(value_name = "ADDR", value_parser = parse_addr)]
    addr: String,
    /// Exchanges to make (the one with the smallest round trip is used).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    samples: u32,
}

fn parse_addr(text: &str) -> Result<String, String> {
    text.parse::<HostPort>()
        .map(|_| text.to_owned())
        .map_err(|e| e.to_string())
}

pub(super) async fn cli_main(args: ProbeArgs) -> anyhow::Result<()> {
    let estimate = probe(&args.addr, args.samples as usize).await?;
    println!("{}", serde_json::to_string(&estimate)?);
    Ok(())
}

/// `samples` exchanges (at least one) over one connection to `addr`, one at a time.
pub async fn probe(addr: &str, samples: usize) -> Result<Estimate, ProbeError> {
    let timeout = |addr: &str| ProbeError::Timeout { addr: addr.into() };
    let stream = tokio::time::timeout(EXCHANGE_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| timeout(addr))?
        .map_err(|source| ProbeError::Connect {
            addr: addr.into(),
            source,
        })?;
    stream.set_nodelay(true).map_err(|source| ProbeError::Io {
        addr: addr.into(),
        source,
    })?;
    exchange(stream, addr, samples).await
}

/// The exchanges of [`probe`] over a connected `stream`.
async fn exchange(
    mut stream: TcpStream,
    addr: &str,
    samples: usize,
) -> Result<Estimate, ProbeError> {
    let timeout = |addr: &str| ProbeError::Timeout { addr: addr.into() };
    let io = |addr: &str, source| ProbeError::Io {
        addr: addr.into(),
        source,
    };
    let mut taken = Vec::with_capacity(samples);
    for _ in 0..samples.max(1) {
        let mut answer = [0u8; 8];
        let t0_us = realtime_us();
        let exchange = async {
            stream.write_all(&[REQUEST]).await?;
            stream.read_exact(&mut answer).await
        };
        tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
            .await
            .map_err(|_| timeout(addr))?
            .map_err(|e| io(addr, e))?;
        let t3_us = realtime_us();
        taken.push(Sample {
            t0_us,
            remote_us: i64::from_be_bytes(answer),
            t3_us,
        });
    }
    estimate(&taken).ok_or_else(|| ProbeError::NoSample { addr: addr.into() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn a_server_on_this_host_is_at_offset_zero_within_the_uncertainty() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cancel = CancellationToken::new();
        let server = tokio::spawn(super::super::serve(listener, cancel.clone()));
        let e = probe(&addr, 50).await.unwrap();
        cancel.cancel();
        server.await.unwrap();
        // Same clock: the true offset is 0, so |estimate| ≤ uncertainty, plus 1 µs of rounding
        // of the microsecond stamps on each side.
        assert!(e.rtt_us >= 0 && e.uncertainty_us * 2 >= e.rtt_us, "{e:?}");
        assert!(e.offset_us.abs() <= e.uncertainty_us + 2, "{e:?}");
    }

    #[tokio::test]
    async fn a_silent_or_absent_server_is_a_clear_error() {
        // Bound but never accepted from: connect succeeds (backlog), no answer comes. Connected
        // on the real clock, then paused so the answer timeout passes at once.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stream = TcpStream::connect(&addr).await.unwrap();
        tokio::time::pause();
        let err = exchange(stream, &addr, 3).await.unwrap_err();
        assert!(matches!(err, ProbeError::Timeout { .. }), "{err}");
        tokio::time::resume();
        drop(listener);
        let err = probe(&addr, 3).await.unwrap_err();
        assert!(
            matches!(err, ProbeError::Connect { .. }),
            "{err}: the port was closed"
        );
    }
}
