//! TLS on TCP: the `[tls]` listener (see [`crate::config::tls`]).
//!
//! The daemon shows the certificate in `tls.cert`. With `tls.client_ca`,
//! every client must show a certificate that CA signed, and the common name
//! of its subject is the client's identity in the access table (rules name
//! it in `certificates = [...]`); it needs no key. Without it, TLS clients
//! prove a key in the hello as plain TCP clients do, inside the encrypted
//! stream. The certificate, key and CA files are read at start and again on
//! every SIGHUP.

use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::CertificateDer;

use crate::config::tls::TlsConfig;

/// A TLS acceptor built from the configured files.
#[derive(Clone)]
pub struct TlsServer {
    acceptor: tokio_rustls::TlsAcceptor,
    /// Clients must show a certificate.
    pub requires_client_cert: bool,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("requires_client_cert", &self.requires_client_cert)
            .finish_non_exhaustive()
    }
}

impl TlsServer {
    /// Reads the certificate, its key and the client CA that `config` names.
    pub fn load(config: &TlsConfig) -> anyhow::Result<TlsServer> {
        use shardd_client::tls::{certificates, private_key};
        let certs = certificates(&config.cert)
            .map_err(anyhow::Error::msg)
            .context("tls.cert")?;
        let key = private_key(&config.key)
            .map_err(anyhow::Error::msg)
            .context("tls.key")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = match &config.client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in certificates(ca).map_err(anyhow::Error::msg).context("tls.client_ca")? {
                    roots
                        .add(cert)
                        .with_context(|| format!("tls.client_ca: {}", ca.display()))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .context("tls.client_ca")?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let server = builder.with_single_cert(certs, key).with_context(|| {
            format!(
                "tls.cert and tls.key ({} and {})",
                config.cert.display(),
                config.key.display()
            )
        })?;
        Ok(TlsServer {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            requires_client_cert: config.client_ca.is_some(),
        })
    }

    /// Runs the TLS handshake on `stream`: the TLS stream, and the common
    /// name of the client certificate's subject when one was shown.
    pub async fn accept(
        &self,
        stream: tokio::net::TcpStream,
    ) -> std::io::Result<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, Option<String>)> {
        let tls = self.acceptor.accept(stream).await?;
        let subject = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| common_name(cert).unwrap_or_default());
        Ok((tls, subject))
    }
}

/// The common name of a certificate's subject (empty: none could be read).
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let name = parsed.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(name)
}
