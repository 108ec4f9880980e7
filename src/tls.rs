//! TLS, one home: rustls configurations from PEM files (ring provider, no OpenSSL), and a
//! throwaway CA with one server and one device certificate for a run or a test
//! ([`ThrowawayCa`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{0}: no certificate in the file (expected PEM `BEGIN CERTIFICATE` blocks)")]
    NoCertificate(PathBuf),
    #[error("{path}: {source}")]
    Rustls {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("client CA {path}: {source}")]
    Verifier {
        path: PathBuf,
        source: rustls::server::VerifierBuilderError,
    },
    #[error("rustls: {0}")]
    Config(#[from] rustls::Error),
    #[error("making a throwaway certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem {
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|source| TlsError::Rustls {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

/// A certificate chain and its private key, from two PEM files.
fn identity(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = load_certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Pem {
        path: key.to_owned(),
        source,
    })?;
    Ok((chain, key_der))
}

/// A server configuration: certificate chain `cert`, its key `key`, and, with `client_ca`, a
/// client certificate signed by that CA required from every client.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let (chain, key_der) = identity(cert, key)?;
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .build()
                    .map_err(|source| TlsError::Verifier {
                        path: ca.to_owned(),
                        source,
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config =
        builder
            .with_single_cert(chain, key_der)
            .map_err(|source| TlsError::Rustls {
                path: key.to_owned(),
                source,
            })?;
    // A redirect server sees each client once: resumption tickets would only cost bytes.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A client configuration trusting only the CA certificates in `ca`.
pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_with_identity(ca, None)
}

/// [`client_config`] that also presents a device certificate `(cert, key)` to servers that
/// ask for one (a dispatcher with `--tls-client-ca`, a broker with `require_certificate`).
pub fn client_config_with_identity(
    ca: &Path,
    device: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca)?);
    let config = match device {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let (chain, key_der) = identity(cert, key)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|source| TlsError::Rustls {
                    path: key.to_owned(),
                    source,
                })?
        }
    };
    Ok(Arc::new(config))
}

/// The server name to verify for `host` (a DNS name or an IP address).
pub fn server_name(host: &str) -> Result<rustls::pki_types::ServerName<'static>, String> {
    rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("`{host}` is not a valid TLS server name: {e}"))
}

/// Opens TLS over `stream` to `addr` (`host:port`; the certificate must name `host`).
pub async fn connect(
    stream: tokio::net::TcpStream,
    addr: &str,
    config: &Arc<ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let host = addr
        .parse::<crate::addr::HostPort>()
        .map_err(std::io::Error::other)?;
    let name = server_name(host.host()).map_err(std::io::Error::other)?;
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, stream)
        .await
}

/// A CA made for one run or test, one server certificate it signed for `localhost`,
/// `127.0.0.1` and `::1`, and one device (client) certificate, written as PEM files into a
/// directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrowawayCa {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub device_cert: PathBuf,
    pub device_key: PathBuf,
}

impl ThrowawayCa {
    /// Writes `ca.pem`, `server.pem`, `server-key.pem`, `device.pem` and `device-key.pem`
    /// into `dir` (which must exist). The
    /// files are world-readable, since a broker may drop privileges before reading them; the
    /// key protects nothing beyond the run.
    pub fn create(dir: &Path) -> Result<Self, TlsError> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "mqdispatch throwaway CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let names = ["localhost", "127.0.0.1", "::1"]
            .map(str::to_owned)
            .to_vec();
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "mqdispatch test server");
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;

        let mut device_params = CertificateParams::new(Vec::<String>::new())?;
        device_params
            .distinguished_name
            .push(DnType::CommonName, "mqdispatch test device");
        device_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let device_key = KeyPair::generate()?;
        let device_cert = device_params.signed_by(&device_key, &issuer)?;

        let out = Self {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            device_cert: dir.join("device.pem"),
            device_key: dir.join("device-key.pem"),
        };
        for (path, text) in [
            (&out.ca_cert, ca_cert.pem()),
            (&out.server_cert, cert.pem()),
            (&out.server_key, key.serialize_pem()),
            (&out.device_cert, device_cert.pem()),
            (&out.device_key, device_key.serialize_pem()),
        ] {
            std::fs::write(path, text).map_err(|source| TlsError::Io {
                path: path.clone(),
                source,
            })?;
        }
        Ok(out)
    }

    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        server_config(&self.server_cert, &self.server_key, None)
    }

    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        client_config(&self.ca_cert)
    }

    /// A client configuration that also presents this CA's device certificate.
    pub fn device_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        client_config_with_identity(&self.ca_cert, Some((&self.device_cert, &self.device_key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throwaway_ca_gives_configs_that_load_and_bad_files_name_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ThrowawayCa::create(dir.path()).unwrap();
        ca.server_config().unwrap();
        ca.client_config().unwrap();
        ca.device_config().unwrap();
        server_config(&ca.server_cert, &ca.server_key, Some(&ca.ca_cert)).unwrap();
        let err = client_config(&ca.server_key).unwrap_err().to_string();
        assert!(
            err.contains("server-key.pem") && err.contains("no certificate"),
            "{err}"
        );
        let missing = dir.path().join("nope.pem");
        let err = client_config(&missing).unwrap_err().to_string();
        assert!(err.contains("nope.pem"), "{err}");
    }
}
