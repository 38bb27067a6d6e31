//! The keys TCP peers authenticate with.
//!
//! Every TCP connection proves in its hello that it holds one of the keys
//! in force (a mutual HMAC-SHA256 challenge-response, see
//! [`shardd_protocol::auth`] and [`crate::server::handshake`]); the key's id
//! is then the peer's identity in the access table. Unix peers are known by
//! their credentials and need no key.
//!
//! Where the keys come from ([`AuthConfig`]):
//!
//! * `[auth] keys = [...]`: the key files listed, read at start and again
//!   on every SIGHUP, so a new key can be added beside the old one and the
//!   old one removed once every client has the new one;
//! * nothing configured: the daemon's own key, `keys/default.key` in the
//!   first data directory, made at first start (only loopback TCP may run
//!   so; the configuration refuses a routable address without keys);
//! * `auth = "none"`: no authentication; the daemon warns at start and on
//!   every reload.

use std::path::{Path, PathBuf};

use anyhow::Context;
use shardd_protocol::AuthOffer;
use shardd_protocol::auth::AuthKey;

use crate::config::auth::AuthConfig;
use crate::io::fs::PRIVATE_DIR;

/// The id of the key a daemon makes for itself.
pub const GENERATED_KEY_ID: &str = "default";

/// Where a daemon keeps the key it made, under its first data directory.
pub fn generated_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("keys").join(format!("{GENERATED_KEY_ID}.key"))
}

/// How TCP peers are authenticated now.
#[derive(Debug)]
pub enum TcpAuth {
    /// They are not (`auth = "none"`).
    None,
    /// They prove they hold one of these keys.
    Keys(KeyRing),
}

impl TcpAuth {
    /// Reads the keys `config` names, or makes or reads the daemon's own in
    /// `data_dir`; says in the log what is in force.
    pub fn load(config: &AuthConfig, data_dir: &Path) -> anyhow::Result<TcpAuth> {
        let auth = match config {
            AuthConfig::None => TcpAuth::None,
            AuthConfig::Keys(paths) => {
                let keys = paths
                    .iter()
                    .map(|path| AuthKey::load(path).with_context(|| "auth.keys".to_string()))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                TcpAuth::Keys(KeyRing {
                    keys,
                    sources: paths.clone(),
                })
            }
            AuthConfig::Generated => {
                let path = generated_key_path(data_dir);
                let key = own_key(&path)?;
                TcpAuth::Keys(KeyRing {
                    keys: vec![key],
                    sources: vec![path],
                })
            }
        };
        auth.log();
        Ok(auth)
    }

    /// Says what is in force (at start and on every reload).
    pub fn log(&self) {
        match self {
            TcpAuth::None => tracing::warn!(
                "auth = \"none\": TCP peers are not authenticated; anyone who reaches the TCP port may do what \
                 [access] grants to tcp = true (everything, without rules); see docs/SECURITY.md"
            ),
            TcpAuth::Keys(ring) => {
                for (key, path) in ring.keys.iter().zip(&ring.sources) {
                    tracing::info!(
                        id = key.id(),
                        fingerprint = %key.fingerprint_hex(),
                        file = %path.display(),
                        "TCP clients authenticate with this key (shardctl --auth-key-file, SHARDD_AUTH_KEY_FILE)"
                    );
                }
            }
        }
    }
}

/// The keys in force.
#[derive(Debug)]
pub struct KeyRing {
    keys: Vec<AuthKey>,
    sources: Vec<PathBuf>,
}

impl KeyRing {
    /// The key a client offered, if it is in force.
    pub fn find(&self, offer: &AuthOffer) -> Option<&AuthKey> {
        self.keys.iter().find(|key| key.is_offered(offer))
    }

    /// The ids and fingerprints in force, for logs and refusals.
    pub fn describe(&self) -> String {
        let names: Vec<String> = self
            .keys
            .iter()
            .map(|k| format!("\"{}\" ({})", k.id(), k.fingerprint_hex()))
            .collect();
        names.join(", ")
    }
}

/// The daemon's own key at `path`: read if it is there, else made (the
/// directory private to the daemon's user, the file readable only by it).
fn own_key(path: &Path) -> anyhow::Result<AuthKey> {
    match AuthKey::load(path) {
        Ok(key) => return Ok(key),
        Err(shardd_protocol::auth::KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context("the daemon's own TCP key"),
    }
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR)
            .create(dir)
            .with_context(|| format!("create {}", dir.display()))?;
    }
    let key = AuthKey::generate(GENERATED_KEY_ID)?;
    key.create(path).context("write the daemon's own TCP key")?;
    tracing::info!(
        file = %path.display(),
        "made a key for TCP clients at first start: give them a copy (mode 0600) and pass it with \
         --auth-key-file or SHARDD_AUTH_KEY_FILE"
    );
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let TcpAuth::Keys(first) = TcpAuth::load(&AuthConfig::Generated, dir.path()).unwrap() else {
            panic!("no keys");
        };
        let TcpAuth::Keys(again) = TcpAuth::load(&AuthConfig::Generated, dir.path()).unwrap() else {
            panic!("no keys");
        };
        assert_eq!(first.keys, again.keys);
        use std::os::unix::fs::PermissionsExt;
        let path = generated_key_path(dir.path());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
    }

    #[test]
    fn configured_keys_are_all_in_force_and_a_bad_file_names_its_setting() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.key"), dir.path().join("b.key"));
        let (key_a, key_b) = (AuthKey::generate("a").unwrap(), AuthKey::generate("b").unwrap());
        key_a.create(&a).unwrap();
        key_b.create(&b).unwrap();
        let config = AuthConfig::Keys(vec![a.clone(), b]);
        let TcpAuth::Keys(ring) = TcpAuth::load(&config, dir.path()).unwrap() else {
            panic!("no keys");
        };
        assert_eq!(ring.find(&key_a.offer().unwrap()), Some(&key_a));
        assert_eq!(ring.find(&key_b.offer().unwrap()), Some(&key_b));
        let stranger = AuthKey::generate("a").unwrap();
        assert_eq!(ring.find(&stranger.offer().unwrap()), None);
        let missing = AuthConfig::Keys(vec![dir.path().join("gone.key")]);
        let e = format!("{:#}", TcpAuth::load(&missing, dir.path()).unwrap_err());
        assert!(e.contains("auth.keys") && e.contains("gone.key"), "{e}");
    }
}
