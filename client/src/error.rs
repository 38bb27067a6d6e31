//! The client's error type.

use shardd_protocol::{NameError, ProtocolError, Status};

/// What went wrong; each variant says what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint string is malformed: fix the address.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// What was given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A namespace or key is not valid: fix the name (see `shardd_protocol::names`).
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// A batched request is not well formed (no members or too many,
    /// destinations outside the buffer or overlapping): fix the call.
    #[error("invalid batch: {reason}")]
    InvalidBatch {
        /// What is wrong with it.
        reason: String,
    },
    /// The daemon cannot be reached: is it running, is the address right?
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The error.
        source: std::io::Error,
    },
    /// The key exchange of a TCP connection failed on the client's side:
    /// the key file cannot be used, or the daemon did not prove it holds
    /// the key. (A daemon that refuses the client's key answers
    /// [`ClientError::Remote`] with status `unauthorized`.)
    #[error(
        "cannot authenticate{}: {reason}",
        if endpoint.is_empty() { String::new() } else { format!(" with {endpoint}") }
    )]
    Auth {
        /// The endpoint (empty when no connection was involved).
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The daemon answered with an error status. `status` says which; busy
    /// and shutting-down may succeed when retried.
    #[error("{message}")]
    Remote {
        /// The status.
        status: Status,
        /// The daemon's explanation.
        message: String,
        /// With a version conflict: the stored version.
        current_version: Option<u64>,
    },
    /// The connection broke; requests in flight did not complete. Connect again.
    #[error("connection to {endpoint} lost: {reason}")]
    Disconnected {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The daemon sent something this client does not understand (a bug or
    /// a version mismatch); the connection is closed.
    #[error("protocol error from {endpoint}: {source}")]
    Protocol {
        /// The endpoint.
        endpoint: String,
        /// The error.
        source: ProtocolError,
    },
    /// Zero-copy fetches need a Unix-socket connection to a daemon that has
    /// an arena and shares it (`server.zero_copy`); use `fetch_into`.
    #[error("zero-copy fetches are not available on this connection")]
    ZeroCopyUnavailable,
    /// The shard is larger than the daemon accepts (it said so in the
    /// handshake); nothing was sent. Split it, or raise the daemon's
    /// `storage.max_shard_size`.
    #[error("shard of {len} bytes exceeds the daemon's limit of {max} bytes")]
    TooLarge {
        /// The shard's length.
        len: u64,
        /// The daemon's limit.
        max: u64,
    },
    /// The caller's buffer is smaller than the shard or range: pass a larger one.
    #[error("buffer of {capacity} bytes is too small for {needed} bytes")]
    BufferTooSmall {
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        capacity: u64,
    },
    /// The bytes received do not match the shard's checksum; nothing
    /// returned may be used. Fetch again. (The client's fetches have already
    /// reported it to the daemon, which checks its copy in memory and drops
    /// it if it is the culprit, and fetched once more.)
    #[error(
        "the received bytes of {shard} version {version} have CRC32C {actual:#010x}, the daemon stored {expected:#010x}"
    )]
    ChecksumMismatch {
        /// namespace/key.
        shard: String,
        /// The version read.
        version: u64,
        /// What the daemon recorded.
        expected: u32,
        /// What arrived.
        actual: u32,
    },
    /// A zero-copy view can no longer be read: its connection closed, and
    /// with it the daemon dropped the view's lease, so its memory may hold
    /// other bytes by now. Nothing read from it since may be used; fetch
    /// the shard again (on a new connection).
    #[error(
        "the view of {shard} can no longer be read: the daemon dropped its lease with the connection to {endpoint} ({reason})"
    )]
    LeaseLost {
        /// namespace/key.
        shard: String,
        /// The endpoint.
        endpoint: String,
        /// Why the connection ended.
        reason: String,
    },
    /// The request took longer than the configured timeout; its connection
    /// is still usable.
    #[error("{op} timed out after {after:?}")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The timeout.
        after: std::time::Duration,
    },
}

impl ClientError {
    /// The daemon's status, if the daemon answered with an error.
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Remote { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the shard (or namespace) does not exist.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(Status::NotFound)
    }
}
