//! What the fuzz targets share: every control message decoder, from the
//! list the protocol crate's property tests use, and the key and input
//! layout of the key exchange target.

#[path = "../../protocol/tests/support/messages.rs"]
mod messages;

pub use messages::{DECODERS, decode_control};

use shardd_protocol::auth::{AuthKey, Transcript};
use shardd_protocol::{AuthOffer, NONCE_LEN, PROOF_LEN};

/// The key the `hello` target's daemon holds (a fixed secret: the seeds
/// carry proofs made with it).
pub fn fuzz_key() -> AuthKey {
    AuthKey::new("fuzz", vec![0x5a; 32]).expect("a valid key")
}

/// The daemon's nonce in the `hello` target.
pub const SERVER_NONCE: [u8; NONCE_LEN] = [0x42; NONCE_LEN];

/// The transcript the daemon checks a client's proof against, for `offer`
/// from a client named `client`.
pub fn transcript<'a>(offer: &'a AuthOffer, client: &'a str) -> Transcript<'a> {
    Transcript {
        version: shardd_protocol::PROTOCOL_VERSION,
        offer,
        server_nonce: &SERVER_NONCE,
        client,
        server: "shardd fuzz",
    }
}

/// One input of the `hello` target that is a key exchange: a hello's
/// control message, then the client's proof.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// The encoded hello.
    pub hello: Vec<u8>,
    /// The proof that follows it.
    pub proof: [u8; PROOF_LEN],
}

impl Exchange {
    /// The fuzz input: selector 1, the hello, the proof last.
    pub fn to_input(&self) -> Vec<u8> {
        let mut out = vec![1u8];
        out.extend_from_slice(&self.hello);
        out.extend_from_slice(&self.proof);
        out
    }

    /// The exchange in a fuzz input after its selector: the last 32 bytes
    /// are the proof.
    pub fn from_input(rest: &[u8]) -> Option<Exchange> {
        let at = rest.len().checked_sub(PROOF_LEN)?;
        Some(Exchange {
            hello: rest[..at].to_vec(),
            proof: rest[at..].try_into().ok()?,
        })
    }
}
