//! `[tls]`: a TLS listener beside (or instead of) plain TCP (see
//! [`crate::tls`]).
//!
//! ```toml
//! [tls]
//! listen = "10.0.0.1:7443"
//! cert = "/etc/shardd/tls/node.crt"      # PEM, the chain the daemon shows
//! key = "/etc/shardd/tls/node.key"       # PEM, its private key
//! client_ca = "/etc/shardd/tls/ca.crt"   # optional: require client certificates it signed
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::invalid;

/// The validated `[tls]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// Where TLS connections are accepted.
    pub listen: SocketAddr,
    /// The certificate chain the daemon shows (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// When set, clients must show a certificate this CA signed; its
    /// subject's common name is their identity.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileTls {
    listen: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
}

impl FileTls {
    /// `None` when the section sets nothing; else every key it needs.
    pub(super) fn resolve(self) -> anyhow::Result<Option<TlsConfig>> {
        let FileTls {
            listen,
            cert,
            key,
            client_ca,
        } = self;
        if listen.is_none() && cert.is_none() && key.is_none() && client_ca.is_none() {
            return Ok(None);
        }
        let listen = listen.ok_or_else(|| invalid("tls.listen", "missing: the address TLS is served at"))?;
        let listen = listen.parse().map_err(|e| {
            invalid(
                "tls.listen",
                format!("{listen:?} is not an address like 0.0.0.0:7443 ({e})"),
            )
        })?;
        let cert = cert.ok_or_else(|| invalid("tls.cert", "missing: the PEM file of the daemon's certificate"))?;
        let key = key.ok_or_else(|| invalid("tls.key", "missing: the PEM file of the certificate's private key"))?;
        Ok(Some(TlsConfig {
            listen,
            cert,
            key,
            client_ca,
        }))
    }
}
