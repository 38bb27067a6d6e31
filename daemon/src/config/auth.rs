//! `[auth]`: how TCP peers authenticate (see [`crate::auth`]).
//!
//! Either a table naming key files, or the words `auth = "none"`:
//!
//! ```toml
//! [auth]
//! keys = ["/etc/shardd/keys/trainers.key", "/etc/shardd/keys/trainers-next.key"]
//! ```
//!
//! With neither, a daemon whose TCP port is on loopback makes its own key
//! in its data directory at first start; one that binds TCP to any other
//! address refuses to start.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::invalid;

/// How TCP peers authenticate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AuthConfig {
    /// Nothing configured: the daemon's own key, made at first start in
    /// its data directory (loopback TCP only).
    #[default]
    Generated,
    /// `auth = "none"`: TCP peers are not authenticated.
    None,
    /// Keys read from these files (at start and on every reload).
    Keys(Vec<PathBuf>),
}

/// `auth = "none"` or an `[auth]` table.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum FileAuth {
    Word(String),
    Table(FileAuthTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAuthTable {
    keys: Vec<PathBuf>,
}

/// What to write instead of a daemon without keys on a routable address.
const HOW_TO_FIX: &str = "create a key with `shardctl key new --id NAME --out FILE`, list the file in \
     [auth] keys = [\"FILE\"] and give it to the trainers (docs/SECURITY.md); or, on TLS, require \
     client certificates (tls.client_ca); or write auth = \"none\" to serve anyone who can reach it";

/// Validates `[auth]` against the listeners it guards (their setting and
/// address).
pub(super) fn resolve(
    file: Option<FileAuth>,
    mut listeners: impl Iterator<Item = (&'static str, SocketAddr)>,
) -> anyhow::Result<AuthConfig> {
    let auth = match file {
        None => AuthConfig::Generated,
        Some(FileAuth::Word(word)) if word == "none" => AuthConfig::None,
        Some(FileAuth::Word(word)) => {
            return Err(invalid(
                "auth",
                format!("{word:?}; write auth = \"none\", or an [auth] table with keys = [...]"),
            ));
        }
        Some(FileAuth::Table(table)) => {
            if table.keys.is_empty() {
                return Err(invalid("auth.keys", "empty; name at least one key file"));
            }
            if let Some(dup) = table
                .keys
                .iter()
                .enumerate()
                .find_map(|(i, k)| table.keys[..i].contains(k).then_some(k))
            {
                return Err(invalid("auth.keys", format!("{} listed twice", dup.display())));
            }
            AuthConfig::Keys(table.keys)
        }
    };
    if let AuthConfig::Generated = auth
        && let Some((setting, addr)) = listeners.find(|(_, addr)| !addr.ip().is_loopback())
    {
        return Err(invalid(
            setting,
            format!("{addr} can be reached from other hosts and [auth] names no keys: {HOW_TO_FIX}"),
        ));
    }
    Ok(auth)
}
