//! The dispatcher's TLS client port: `--tls-listen ADDR --tls-cert PEM --tls-key PEM
//! [--tls-client-ca PEM]`, served beside the plain port. Clients that come over TLS are sent to
//! each broker's TLS address (`--broker ID=HOST:PORT,tls=HOST:PORT`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::BrokerEntry;
use crate::InputError;

#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// TLS client port, served beside --listen (port 0: any free port, printed as `tls on ADDR`).
    #[arg(long, value_name = "ADDR", requires_all = ["tls_cert", "tls_key"])]
    pub tls_listen: Option<SocketAddr>,
    /// Server certificate chain (PEM) of the TLS port.
    #[arg(long, value_name = "PEM", requires = "tls_listen")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_listen")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM) on the TLS port.
    #[arg(long, value_name = "PEM", requires = "tls_listen")]
    pub tls_client_ca: Option<PathBuf>,
}

/// A bound TLS client port and its acceptor.
pub struct TlsListener {
    pub listener: TcpListener,
    pub acceptor: TlsAcceptor,
}

/// Every broker needs a TLS address once clients may come over TLS: sending a TLS client to a
/// plain port would fail its connection, or downgrade it.
pub fn check_brokers(brokers: &[BrokerEntry]) -> Result<(), InputError> {
    match brokers.iter().find(|b| b.tls_addr.is_none()) {
        None => Ok(()),
        Some(b) => Err(InputError(format!(
            "--tls-listen: broker {} has no TLS address; give --broker {}={},tls=HOST:PORT",
            b.id, b.id, b.addr
        ))),
    }
}

impl TlsArgs {
    /// Loads the certificates and binds the port; `None` without `--tls-listen`.
    pub fn bind(&self, brokers: &[BrokerEntry]) -> anyhow::Result<Option<TlsListener>> {
        let (Some(addr), Some(cert), Some(key)) = (self.tls_listen, &self.tls_cert, &self.tls_key)
        else {
            return Ok(None);
        };
        check_brokers(brokers)?;
        let config = crate::tls::server_config(cert, key, self.tls_client_ca.as_deref())
            .context("cannot set up TLS")?;
        let listener = super::bind_listener(addr)
            .with_context(|| format!("cannot listen on {addr} for TLS clients"))?;
        Ok(Some(TlsListener {
            listener,
            acceptor: TlsAcceptor::from(config),
        }))
    }
}
