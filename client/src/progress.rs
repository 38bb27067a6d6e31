//! Progress of long transfers (a put of a large file, an import), for
//! callers that show it: `shardctl`'s progress bar, say.

/// What a long transfer reports as it goes. Called from the client's I/O
/// tasks: keep it cheap.
pub trait Progress: Send + Sync {
    /// `total` bytes are to be moved (called once, first).
    fn start(&self, total: u64) {
        let _ = total;
    }
    /// `bytes` more were moved.
    fn advance(&self, bytes: u64) {
        let _ = bytes;
    }
}

/// Reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}
