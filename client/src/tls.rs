//! TLS on TCP: `tls://HOST:PORT` endpoints.
//!
//! The client checks the daemon's certificate against the CA certificates
//! in [`TlsOptions::ca_file`] (else the file `SHARDD_TLS_CA` names) and the
//! endpoint's host (or [`TlsOptions::server_name`]); a daemon that requires
//! client certificates gets the one in [`TlsOptions::cert_file`] and
//! [`TlsOptions::key_file`] (else `SHARDD_TLS_CERT` and `SHARDD_TLS_KEY`),
//! whose subject's common name is then the client's identity. Without a
//! client certificate, the key exchange of the hello runs inside TLS as it
//! does over plain TCP (see [`crate::auth`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::ClientError;

/// The environment variable naming the CA certificates file.
pub const TLS_CA_ENV: &str = "SHARDD_TLS_CA";
/// The environment variable naming the client certificate file.
pub const TLS_CERT_ENV: &str = "SHARDD_TLS_CERT";
/// The environment variable naming the client certificate's key file.
pub const TLS_KEY_ENV: &str = "SHARDD_TLS_KEY";

/// How a `tls://` connection checks the daemon and shows itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file of the CA certificates that sign daemons' certificates;
    /// `None` reads `SHARDD_TLS_CA`.
    pub ca_file: Option<PathBuf>,
    /// PEM file of this client's certificate chain, for daemons that
    /// require one; `None` reads `SHARDD_TLS_CERT`.
    pub cert_file: Option<PathBuf>,
    /// PEM file of its private key; `None` reads `SHARDD_TLS_KEY`.
    pub key_file: Option<PathBuf>,
    /// The name the daemon's certificate must carry; `None`: the
    /// endpoint's host.
    pub server_name: Option<String>,
}

fn or_env(path: &Option<PathBuf>, var: &str) -> Option<PathBuf> {
    path.clone()
        .or_else(|| std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from))
}

/// Connects TLS over `stream` to the daemon at `addr` (`host:port`).
pub(crate) async fn connect(
    stream: TcpStream,
    addr: &str,
    options: &TlsOptions,
    endpoint: &str,
) -> Result<TlsStream<TcpStream>, ClientError> {
    let refused = |reason: String| ClientError::Auth {
        endpoint: endpoint.to_string(),
        reason,
    };
    let config = client_config(options).map_err(refused)?;
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = options.server_name.clone().unwrap_or_else(|| host.to_string());
    let name = ServerName::try_from(name.clone()).map_err(|e| refused(format!("server name {name:?}: {e}")))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
        .map_err(|source| ClientError::Connect {
            endpoint: endpoint.to_string(),
            source,
        })
}

/// The rustls configuration `options` (and the environment) describe.
fn client_config(options: &TlsOptions) -> Result<rustls::ClientConfig, String> {
    let ca = or_env(&options.ca_file, TLS_CA_ENV).ok_or_else(|| {
        format!(
            "a tls:// endpoint needs the CA certificate that signs the daemon's: TlsOptions::ca_file, \
             {TLS_CA_ENV} or shardctl --tls-ca"
        )
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(&ca)? {
        roots.add(cert).map_err(|e| format!("CA file {}: {e}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let cert = or_env(&options.cert_file, TLS_CERT_ENV);
    let key = or_env(&options.key_file, TLS_KEY_ENV);
    match (cert, key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(certificates(&cert)?, private_key(&key)?)
            .map_err(|e| format!("client certificate {}: {e}", cert.display())),
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(format!(
            "a client certificate needs both its file and its key's ({TLS_CERT_ENV} and {TLS_KEY_ENV})"
        )),
    }
}

/// The certificates of a PEM file (at least one).
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("certificate file {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("certificate file {}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("key file {}: {e}", path.display()))
}
