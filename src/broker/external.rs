//! External brokers: already running elsewhere (`host:port`); we only check they accept TCP.

use std::time::Duration;

use super::BrokerError;

/// How long an external broker may take to accept a TCP connection.
const REACH_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks that `addr` accepts a TCP connection.
pub async fn check_reachable(addr: &str) -> Result<(), BrokerError> {
    match tokio::time::timeout(REACH_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(BrokerError::Unreachable {
            addr: addr.to_owned(),
            why: e.to_string(),
        }),
        Err(_) => Err(BrokerError::Unreachable {
            addr: addr.to_owned(),
            why: format!(
                "no answer within {}",
                crate::duration::format(REACH_TIMEOUT)
            ),
        }),
    }
}
