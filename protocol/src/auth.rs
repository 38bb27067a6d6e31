//! Pre-shared keys and the proofs of the TCP key exchange (feature `auth`).
//!
//! A key is an id (what the access table calls the peer) and a secret of 32
//! to 128 random bytes, kept in a small TOML file readable only by its
//! owner:
//!
//! ```toml
//! id = "trainers"
//! secret = "9c0e...64 to 256 hex digits..."
//! ```
//!
//! In the hello the client offers a key id, the key's fingerprint and a
//! nonce ([`AuthOffer`]); the daemon answers with its own nonce and its
//! proof; the client checks that proof and sends its own. Each proof is an
//! HMAC-SHA256 under the secret over a [`Transcript`]: both nonces, the
//! key, the protocol version and both sides' names, and which side proves.
//! The secret never crosses the wire, and a recorded exchange proves
//! nothing on a new connection, whose daemon nonce is new. The byte layout
//! is in `docs/PROTOCOL.md` ("Authentication").

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::message::{AuthOffer, HelloRequest, HelloResponse, NONCE_LEN, PROOF_LEN};

/// Fewest bytes of a secret (256 bits).
pub const MIN_SECRET_LEN: usize = 32;
/// Most bytes of a secret.
pub const MAX_SECRET_LEN: usize = 128;
/// Longest key id, in bytes.
pub const MAX_KEY_ID_LEN: usize = 64;
/// Bytes of a key's fingerprint.
pub const FINGERPRINT_LEN: usize = 8;

/// What starts every transcript; a new layout gets a new label.
const TRANSCRIPT_LABEL: &[u8] = b"shardd-auth-v1";
/// What the fingerprint is the HMAC of.
const FINGERPRINT_LABEL: &[u8] = b"shardd-key-fingerprint-v1";

/// Why a key could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("key file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// Others than its owner may read or write the file.
    #[error(
        "key file {} may be read or written by others than its owner (mode {mode:04o}); \
         run `chmod 600 {}`", path.display(), path.display()
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is not a key file.
    #[error("key file {}: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An id or secret that no key may have.
    #[error("{0}")]
    Invalid(String),
    /// The system's random source failed.
    #[error("the system's random source failed")]
    Random,
}

/// Which side a proof is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client, in [`crate::AuthenticateRequest`].
    Client,
    /// The daemon, in [`crate::AuthChallenge`].
    Server,
}

impl Side {
    fn label(self) -> &'static [u8] {
        match self {
            Side::Client => b"client",
            Side::Server => b"server",
        }
    }
}

/// What a proof is over: everything both sides have said by the time it
/// is sent.
#[derive(Clone, Copy, Debug)]
pub struct Transcript<'a> {
    /// The protocol version the daemon answered with.
    pub version: u16,
    /// The client's offer: key id, fingerprint and nonce.
    pub offer: &'a AuthOffer,
    /// The daemon's nonce.
    pub server_nonce: &'a [u8; NONCE_LEN],
    /// The client's name from its hello.
    pub client: &'a str,
    /// The daemon's name from its answer.
    pub server: &'a str,
}

impl<'a> Transcript<'a> {
    /// The transcript a client checks the daemon's proof against and makes
    /// its own over: its `hello` and the daemon's `answer`. `None` unless
    /// the hello offered a key and the answer took it.
    pub fn of_exchange(
        hello: &'a HelloRequest,
        answer: &'a HelloResponse,
    ) -> Option<(Transcript<'a>, &'a [u8; PROOF_LEN])> {
        let (offer, challenge) = (hello.auth.as_ref()?, answer.auth.as_ref()?);
        let transcript = Transcript {
            version: answer.version,
            offer,
            server_nonce: &challenge.nonce,
            client: &hello.client,
            server: &answer.server,
        };
        Some((transcript, &challenge.proof))
    }

    /// The bytes `side`'s proof is the HMAC of (see `docs/PROTOCOL.md`).
    pub fn bytes(&self, side: Side) -> Vec<u8> {
        let mut out = Vec::with_capacity(160 + self.client.len() + self.server.len());
        put_field(&mut out, TRANSCRIPT_LABEL);
        put_field(&mut out, side.label());
        out.extend_from_slice(&self.version.to_le_bytes());
        put_field(&mut out, self.offer.key_id.as_bytes());
        out.extend_from_slice(&self.offer.fingerprint);
        out.extend_from_slice(&self.offer.nonce);
        out.extend_from_slice(self.server_nonce);
        put_field(&mut out, self.client.as_bytes());
        put_field(&mut out, self.server.as_bytes());
        out
    }
}

/// A variable-length field: its length (u32, little-endian), then its bytes.
fn put_field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Fresh random bytes for a nonce.
pub fn nonce() -> Result<[u8; NONCE_LEN], KeyError> {
    let mut bytes = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut bytes).map_err(|_| KeyError::Random)?;
    Ok(bytes)
}

/// Checks a key id: 1 to 64 bytes of ASCII letters, digits, `.`, `_`, `-`.
pub fn check_key_id(id: &str) -> Result<(), KeyError> {
    let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if id.is_empty() || id.len() > MAX_KEY_ID_LEN || !id.chars().all(fine) {
        return Err(KeyError::Invalid(format!(
            "key id {id:?}: use 1 to {MAX_KEY_ID_LEN} ASCII letters, digits, '.', '_' or '-'"
        )));
    }
    Ok(())
}

/// A pre-shared key. Its `Debug` shows the id and fingerprint, never the
/// secret.
#[derive(Clone)]
pub struct AuthKey {
    id: String,
    secret: Vec<u8>,
    hmac: hmac::Key,
    fingerprint: [u8; FINGERPRINT_LEN],
}

impl AuthKey {
    /// A key of `id` and `secret` (32 to 128 bytes).
    pub fn new(id: &str, secret: Vec<u8>) -> Result<AuthKey, KeyError> {
        check_key_id(id)?;
        if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&secret.len()) {
            return Err(KeyError::Invalid(format!(
                "a secret of {} bytes; use {MIN_SECRET_LEN} to {MAX_SECRET_LEN}",
                secret.len()
            )));
        }
        let hmac = hmac::Key::new(hmac::HMAC_SHA256, &secret);
        let mut fingerprint = [0u8; FINGERPRINT_LEN];
        fingerprint.copy_from_slice(&hmac::sign(&hmac, FINGERPRINT_LABEL).as_ref()[..FINGERPRINT_LEN]);
        Ok(AuthKey {
            id: id.to_string(),
            secret,
            hmac,
            fingerprint,
        })
    }

    /// A new key of `id` with a random 32-byte secret.
    pub fn generate(id: &str) -> Result<AuthKey, KeyError> {
        let mut secret = vec![0u8; MIN_SECRET_LEN];
        SystemRandom::new().fill(&mut secret).map_err(|_| KeyError::Random)?;
        AuthKey::new(id, secret)
    }

    /// The key's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key's fingerprint: the start of an HMAC under the secret of a
    /// fixed label. It names one secret in logs and offers.
    pub fn fingerprint(&self) -> [u8; FINGERPRINT_LEN] {
        self.fingerprint
    }

    /// The fingerprint in hex, for logs.
    pub fn fingerprint_hex(&self) -> String {
        hex(&self.fingerprint)
    }

    /// A key file's text.
    pub fn parse(text: &str, path: &Path) -> Result<AuthKey, KeyError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            id: String,
            secret: String,
        }
        let format = |message: String| KeyError::Format {
            path: path.to_path_buf(),
            message,
        };
        let file: File = toml::from_str(text).map_err(|e| format(e.message().to_string()))?;
        let secret = unhex(file.secret.trim()).ok_or_else(|| format("secret is not hex digits".to_string()))?;
        AuthKey::new(&file.id, secret).map_err(|e| format(e.to_string()))
    }

    /// Reads a key file; refuses one that others than its owner may read
    /// or write.
    pub fn load(path: &Path) -> Result<AuthKey, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(KeyError::Format {
                path: path.to_path_buf(),
                message: "not a regular file".to_string(),
            });
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(&file, 64 << 10), &mut text).map_err(io)?;
        AuthKey::parse(&text, path)
    }

    /// The key file's text.
    pub fn to_file_text(&self) -> String {
        format!(
            "# A shardd key. Anyone who reads this file can act as {:?} on the daemons that hold it.\n\
             id = \"{}\"\nsecret = \"{}\"\n",
            self.id,
            self.id,
            hex(&self.secret)
        )
    }

    /// Writes the key to a new file at `path`, readable only by its owner,
    /// and makes it durable. An existing file is never replaced.
    pub fn create(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        file.write_all(self.to_file_text().as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(())
    }

    /// An offer of this key with a fresh nonce, for a hello.
    pub fn offer(&self) -> Result<AuthOffer, KeyError> {
        Ok(AuthOffer {
            key_id: self.id.clone(),
            fingerprint: self.fingerprint,
            nonce: nonce()?,
        })
    }

    /// Whether this key is the one `offer` names.
    pub fn is_offered(&self, offer: &AuthOffer) -> bool {
        self.id == offer.key_id && self.fingerprint == offer.fingerprint
    }

    /// `side`'s proof over `transcript`.
    pub fn prove(&self, side: Side, transcript: &Transcript<'_>) -> [u8; PROOF_LEN] {
        let mut proof = [0u8; PROOF_LEN];
        proof.copy_from_slice(hmac::sign(&self.hmac, &transcript.bytes(side)).as_ref());
        proof
    }

    /// Whether `proof` is `side`'s over `transcript` (compared in constant
    /// time).
    pub fn holds(&self, side: Side, transcript: &Transcript<'_>, proof: &[u8; PROOF_LEN]) -> bool {
        hmac::verify(&self.hmac, &transcript.bytes(side), proof).is_ok()
    }
}

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthKey")
            .field("id", &self.id)
            .field("fingerprint", &self.fingerprint_hex())
            .finish_non_exhaustive()
    }
}

impl PartialEq for AuthKey {
    fn eq(&self, other: &AuthKey) -> bool {
        self.id == other.id && self.secret == other.secret
    }
}

impl Eq for AuthKey {}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn transcript<'a>(offer: &'a AuthOffer, server_nonce: &'a [u8; NONCE_LEN]) -> Transcript<'a> {
        Transcript {
            version: 1,
            offer,
            server_nonce,
            client: "shardd-client 0.1.0",
            server: "shardd 0.1.0",
        }
    }

    #[test]
    fn proofs_hold_only_for_their_side_key_and_nonces() {
        let key = AuthKey::generate("trainers").unwrap();
        let offer = key.offer().unwrap();
        let server_nonce = nonce().unwrap();
        let t = transcript(&offer, &server_nonce);
        let proof = key.prove(Side::Client, &t);
        assert!(key.holds(Side::Client, &t, &proof));
        // The daemon's proof cannot stand in for the client's.
        assert!(!key.holds(Side::Server, &t, &proof));
        // Another daemon nonce (a replay on a new connection) fails.
        let other_nonce = nonce().unwrap();
        assert!(!key.holds(Side::Client, &transcript(&offer, &other_nonce), &proof));
        // So does another key of the same id.
        let other = AuthKey::generate("trainers").unwrap();
        assert_ne!(other.fingerprint(), key.fingerprint());
        assert!(!other.holds(Side::Client, &t, &proof));
        // And any change to the parameters.
        let renamed = Transcript { client: "other", ..t };
        assert!(!key.holds(Side::Client, &renamed, &proof));
    }

    /// The transcript layout is pinned: a daemon and a client of different
    /// builds must compute the same bytes (the layout in docs/PROTOCOL.md).
    #[test]
    fn transcript_bytes_are_pinned() {
        let offer = AuthOffer {
            key_id: "k".into(),
            fingerprint: [1; 8],
            nonce: [2; 32],
        };
        let t = Transcript {
            version: 1,
            offer: &offer,
            server_nonce: &[3; 32],
            client: "c",
            server: "s",
        };
        let mut want = Vec::new();
        want.extend_from_slice(&14u32.to_le_bytes());
        want.extend_from_slice(b"shardd-auth-v1");
        want.extend_from_slice(&6u32.to_le_bytes());
        want.extend_from_slice(b"client");
        want.extend_from_slice(&1u16.to_le_bytes());
        want.extend_from_slice(&1u32.to_le_bytes());
        want.extend_from_slice(b"k");
        want.extend_from_slice(&[1; 8]);
        want.extend_from_slice(&[2; 32]);
        want.extend_from_slice(&[3; 32]);
        want.extend_from_slice(&1u32.to_le_bytes());
        want.extend_from_slice(b"c");
        want.extend_from_slice(&1u32.to_le_bytes());
        want.extend_from_slice(b"s");
        assert_eq!(t.bytes(Side::Client), want);
        // HMAC-SHA256 as RFC 4231 test case 2 gives it, so the proofs are
        // the standard construction.
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let tag = hmac::sign(&key, b"what do ya want for nothing?");
        assert_eq!(
            hex(tag.as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn key_files_round_trip_and_refuse_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trainers.key");
        let key = AuthKey::generate("trainers").unwrap();
        key.create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(AuthKey::load(&path).unwrap(), key);
        // Never replaced.
        assert!(matches!(key.create(&path), Err(KeyError::Io { .. })));
        // Readable by the group: refused, saying how to fix it.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = AuthKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");

        let parse = |text: &str| AuthKey::parse(text, Path::new("k")).unwrap_err().to_string();
        assert!(parse("id = \"a\"\nsecret = \"00ff\"").contains("2 bytes"));
        assert!(parse(&format!("id = \"a b\"\nsecret = \"{}\"", "00".repeat(32))).contains("key id"));
        assert!(parse(&format!("id = \"a\"\nsecret = \"{}\"", "zz".repeat(32))).contains("hex"));
        assert!(parse("id = \"a\"").contains("secret"));
        let with_more = format!("id = \"a\"\nsecret = \"{}\"\nmore = 1", "00".repeat(32));
        assert!(parse(&with_more).contains("more"));
        // The secret never shows in Debug.
        let shown = format!("{key:?}");
        assert!(!shown.contains(&hex(&key.secret)), "{shown}");
    }
}
