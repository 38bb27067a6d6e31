//! Zero-copy views of shards in the daemon's arena.

use std::sync::Arc;

use shardd_protocol::{Extent, ShardMeta};

use crate::arena::ArenaMap;
use crate::connection::Connection;

/// A shard (or a range of one) read in place from the daemon's arena,
/// without a copy. The daemon keeps the bytes where they are, unchanged,
/// until the view is dropped; its lease goes back with the connection's
/// next zero-copy fetch, or within a millisecond by itself.
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

    /// The bytes, in order, as the pieces the arena holds them in (one per
    /// chunk of the shard; a shard of one chunk is one piece).
    pub fn pieces(&self) -> impl Iterator<Item = &[u8]> {
        self.extents.iter().map(move |e| {
            // SAFETY: the lease this view holds keeps the bytes in place and
            // unchanged until it is released in `drop`; bounds were checked
            // in `new`.
            unsafe { self.arena.bytes(e.offset, e.len) }.unwrap_or_default()
        })
    }

    /// Copies the bytes to the start of `dest` (the one copy a caller that
    /// needs them in its own buffer makes); returns their CRC32C when
    /// `checksum` is set. `dest` must hold [`Self::len`] bytes.
    ///
    /// # Panics
    /// If `dest` is shorter than the view.
    pub fn copy_to(&self, dest: &mut [u8], checksum: bool) -> Option<u32> {
        assert!(dest.len() as u64 >= self.len, "destination too small");
        let mut at = 0;
        let mut crc = 0u32;
        for piece in self.pieces() {
            // Checksum each piece right after copying it, while it is in cache.
            dest[at..at + piece.len()].copy_from_slice(piece);
            if checksum {
                crc = crc32c::crc32c_append(crc, &dest[at..at + piece.len()]);
            }
            at += piece.len();
        }
        checksum.then_some(crc)
    }

    /// The bytes in a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.len as usize];
        self.copy_to(&mut out, false);
        out
    }
}

impl Drop for ShardView {
    fn drop(&mut self) {
        self.conn.defer_release(self.lease);
    }
}
