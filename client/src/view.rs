//! Zero-copy views of shards in the daemon's arena.
//!
//! A view's bytes stay put only while the daemon holds its lease, and the
//! daemon drops every lease of a connection when the connection ends (the
//! daemon shut down, or closed it after `io_timeout`). The client marks the
//! connection's views void as soon as it reads that end, and every read of
//! a view checks the mark before and after it: a read that could have seen
//! reused memory fails with [`ClientError::LeaseLost`] instead of returning
//! the bytes. (The daemon reuses a closed connection's leased blocks only a
//! while after the socket closed, so the client has time to see it.)

use std::sync::Arc;

use shardd_protocol::{Extent, ShardMeta};

use crate::ClientError;
use crate::arena::ArenaMap;
use crate::connection::Connection;

/// A shard (or a range of one) read in place from the daemon's arena,
/// without a copy. The daemon keeps the bytes where they are, unchanged,
/// until the view is dropped or its connection ends; its lease goes back
/// with the connection's next zero-copy fetch, or within a millisecond by
/// itself.
#[derive(Debug)]
pub struct ShardView {
    meta: ShardMeta,
    offset: u64,
    len: u64,
    extents: Vec<Extent>,
    lease: u64,
    arena: Arc<ArenaMap>,
    conn: Arc<Connection>,
}

impl ShardView {
    pub(crate) fn new(
        meta: ShardMeta,
        offset: u64,
        len: u64,
        extents: Vec<Extent>,
        lease: u64,
        arena: Arc<ArenaMap>,
        conn: Arc<Connection>,
    ) -> Option<ShardView> {
        let view = ShardView {
            meta,
            offset,
            len,
            extents,
            lease,
            arena,
            conn,
        };
        // Every extent must lie in the arena and they must add up.
        let total: u64 = view.extents.iter().map(|e| e.len).sum();
        let inside = view
            .extents
            .iter()
            // SAFETY: only checks bounds; the lease is held (we own `view`).
            .all(|e| unsafe { view.arena.bytes(e.offset, e.len) }.is_some());
        (total == view.len && inside).then_some(view)
    }

    /// The shard's metadata.
    pub fn meta(&self) -> &ShardMeta {
        &self.meta
    }

    /// Offset in the shard of the first byte.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes in the view.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the view has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the daemon still holds the view's lease: an error once the
    /// connection it came from has ended. Call it after reading through
    /// [`Self::pieces`] to know that what was read is the shard's.
    pub fn check(&self) -> Result<(), ClientError> {
        match self.conn.leases_lost() {
            None => Ok(()),
            Some(reason) => Err(ClientError::LeaseLost {
                shard: format!("{}/{}", self.meta.namespace, self.meta.key),
                endpoint: self.conn.endpoint().to_string(),
                reason,
            }),
        }
    }

    /// The bytes, in order, as the pieces the arena holds them in (one per
    /// chunk of the shard; a shard of one chunk is one piece). They are the
    /// shard's while the lease holds: an error if it is already gone, and a
    /// caller that reads them over a long time confirms with
    /// [`Self::check`] afterwards.
    pub fn pieces(&self) -> Result<impl Iterator<Item = &[u8]>, ClientError> {
        self.check()?;
        Ok(self.extents.iter().map(move |e| {
            // SAFETY: the view's lease keeps the bytes in place and unchanged
            // until it is released in `drop`, or (the connection ending)
            // until a grace period after the end that `check` reports;
            // bounds were checked in `new`.
            unsafe { self.arena.bytes(e.offset, e.len) }.unwrap_or_default()
        }))
    }

    /// Copies the bytes to the start of `dest` (the one copy a caller that
    /// needs them in its own buffer makes); returns their CRC32C when
    /// `checksum` is set. Fails, with `dest` holding unspecified bytes, if
    /// the lease was lost before the copy ended.
    ///
    /// # Panics
    /// If `dest` is shorter than the view.
    pub fn copy_to(&self, dest: &mut [u8], checksum: bool) -> Result<Option<u32>, ClientError> {
        assert!(dest.len() as u64 >= self.len, "destination too small");
        let mut at = 0;
        let mut crc = 0u32;
        for piece in self.pieces()? {
            // Checksum each piece right after copying it, while it is in cache.
            dest[at..at + piece.len()].copy_from_slice(piece);
            if checksum {
                crc = crc32c::crc32c_append(crc, &dest[at..at + piece.len()]);
            }
            at += piece.len();
        }
        self.check()?;
        Ok(checksum.then_some(crc))
    }

    /// The bytes in a new vector.
    pub fn to_vec(&self) -> Result<Vec<u8>, ClientError> {
        let mut out = vec![0u8; self.len as usize];
        self.copy_to(&mut out, false)?;
        Ok(out)
    }
}

impl Drop for ShardView {
    fn drop(&mut self) {
        self.conn.defer_release(self.lease);
    }
}
