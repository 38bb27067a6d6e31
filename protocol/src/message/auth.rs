//! The messages of the key exchange in the hello (TCP): the client offers a
//! key and a nonce, the daemon answers with its nonce and its proof, the
//! client proves it holds the key. The proofs are computed by
//! `shardd_protocol::auth` (feature `auth`); here are only the bytes.

use serde::{Deserialize, Serialize};

/// Bytes of each side's nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes of a proof (an HMAC-SHA256).
pub const PROOF_LEN: usize = 32;

/// In [`crate::HelloRequest`]: which key the client holds and its nonce.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthOffer {
    /// The key's id, as in its key file.
    pub key_id: String,
    /// The first 8 bytes of the key's fingerprint, which tell two secrets
    /// of one id apart while a key is rotated (it reveals nothing of the
    /// secret).
    pub fingerprint: [u8; 8],
    /// Fresh random bytes.
    pub nonce: [u8; NONCE_LEN],
}

/// In [`crate::HelloResponse`]: the daemon's nonce and its proof that it
/// holds the offered key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthChallenge {
    /// Fresh random bytes.
    pub nonce: [u8; NONCE_LEN],
    /// The daemon's proof over both nonces and the connection's parameters.
    pub proof: [u8; PROOF_LEN],
}

/// The client's proof: the second request on a TCP connection whose hello
/// offered a key. Nothing else is read before it is checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthenticateRequest {
    /// The client's proof over both nonces and the connection's parameters.
    pub proof: [u8; PROOF_LEN],
}

/// The answer to a proof that holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthenticateResponse {
    /// Who the daemon now takes the client for (the key id), as the access
    /// table names it.
    pub identity: String,
}
