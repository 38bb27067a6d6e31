//! `shardctl tls new`: a certificate authority and the certificates it
//! signs, for test and development set-ups (production sites use their
//! own CA). Private keys are written readable only by their owner.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// What [`generate`] wrote.
#[derive(Debug)]
pub struct Written {
    /// The CA's certificate: what clients (`--tls-ca`) and daemons
    /// (`tls.client_ca`) trust.
    pub ca: PathBuf,
    /// The daemon's certificate and key (`tls.cert`, `tls.key`).
    pub server: (PathBuf, PathBuf),
    /// Each client's certificate and key (`--tls-cert`, `--tls-key`).
    pub clients: Vec<(PathBuf, PathBuf)>,
}

/// Writes into `dir` (which must not hold these files yet) a new CA
/// (`ca.crt`, `ca.key`), a daemon certificate for `hosts` (names or IP
/// addresses; `server.crt`, `server.key`), and one client certificate per
/// name in `clients`, with that name as its common name (`NAME.crt`,
/// `NAME.key`).
pub fn generate(dir: &Path, hosts: &[String], clients: &[String]) -> anyhow::Result<Written> {
    anyhow::ensure!(!hosts.is_empty(), "name at least one host the daemon is reached by");
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "shardd CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca = dir.join("ca.crt");
    write_new(&ca, ca_cert.pem().as_bytes(), 0o644)?;
    write_new(&dir.join("ca.key"), ca_key.serialize_pem().as_bytes(), 0o600)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |name: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| -> anyhow::Result<(PathBuf, PathBuf)> {
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        let (crt, key_file) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        write_new(&crt, cert.pem().as_bytes(), 0o644)?;
        write_new(&key_file, key.serialize_pem().as_bytes(), 0o600)?;
        Ok((crt, key_file))
    };
    let server = leaf("server", hosts.to_vec(), ExtendedKeyUsagePurpose::ServerAuth)?;
    let clients = clients
        .iter()
        .map(|name| {
            anyhow::ensure!(
                !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                    && name != "ca"
                    && name != "server",
                "client name {name:?}: use ASCII letters, digits, '.', '_' and '-' (not ca or server)"
            );
            leaf(name, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Written { ca, server, clients })
}

/// Writes a new file (never replacing one) with `mode`, durably.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("write {}", path.display()))
}
