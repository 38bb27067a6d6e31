//! Length limits, checked before any buffer is reserved.

/// Largest control message either side accepts, in bytes. Control messages
/// are small (names, metadata, pages of listings); payload bytes never go
/// in them.
pub const MAX_CONTROL_LEN: u32 = 1 << 20;

/// Default largest payload (one shard), in bytes: 16 GiB.
pub const DEFAULT_MAX_PAYLOAD_LEN: u64 = 16 << 30;

/// Most entries a `list` answer carries; more are fetched page by page.
pub const MAX_LIST_LIMIT: u32 = 10_000;

/// Most dimensions a shard's shape may have.
pub const MAX_SHAPE_DIMS: usize = 32;

/// Largest version a put may name (2^63 - 1). The versions above it are
/// left to automatic versions (a put naming none), so that a client that
/// names a huge version cannot stop every later put of the key.
pub const MAX_CHOSEN_VERSION: u64 = u64::MAX >> 1;

/// The lengths a receiver accepts in a frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest control message, in bytes.
    pub max_control_len: u32,
    /// Largest payload, in bytes.
    pub max_payload_len: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_control_len: MAX_CONTROL_LEN,
            max_payload_len: DEFAULT_MAX_PAYLOAD_LEN,
        }
    }
}
