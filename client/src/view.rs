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
use std::time::Instant;

use shardd_protocol::{Extent, ShardMeta};

use crate::ClientError;
use crate::arena::ArenaMap;
use crate::connection::Connection;
use crate::copy::copy_streaming;

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
    /// The lease was given back ([`ShardView::release`]).
    released: bool,
    arena: Arc<ArenaMap>,
    conn: Arc<Connection>,
    /// When the lease runs out (the daemon's `server.lease_timeout` after
    /// the view was asked for), if it does.
    expires: Option<Instant>,
}

impl ShardView {
    /// A view asked for at `asked`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        asked: Instant,
        meta: ShardMeta,
        offset: u64,
        len: u64,
        extents: Vec<Extent>,
        lease: u64,
        arena: Arc<ArenaMap>,
        conn: Arc<Connection>,
    ) -> Option<ShardView> {
        let expires = conn.lease_timeout().map(|t| asked + t);
        let view = ShardView {
            expires,
            meta,
            offset,
            len,
            extents,
            lease,
            released: false,
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

    /// Where its bytes lie in the arena, in order.
    pub fn extents(&self) -> &[Extent] {
        &self.extents
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
        let expired = self.expires.filter(|at| Instant::now() >= *at);
        let reason = match self.conn.leases_lost() {
            None if self.released => "the view was released".to_string(),
            None => match (expired, self.conn.lease_timeout()) {
                (Some(_), Some(limit)) => format!(
                    "its lease ran out {limit:?} after it was asked for (the daemon's server.lease_timeout); \
                     fetch the view again"
                ),
                _ => return Ok(()),
            },
            Some(reason) => reason,
        };
        Err(ClientError::LeaseLost {
            shard: format!("{}/{}", self.meta.namespace, self.meta.key),
            endpoint: self.conn.endpoint().to_string(),
            reason,
        })
    }

    /// Gives the lease back now, before the view is dropped; reads fail
    /// from then on.
    pub fn release(&mut self) {
        if !self.released {
            self.released = true;
            self.conn.defer_release(self.lease);
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
    /// `checksum` is set. Without a checksum, large pieces are written with
    /// streaming stores ([`crate::copy`]). Fails, with `dest` holding
    /// unspecified bytes, if the lease was lost before the copy ended.
    ///
    /// # Panics
    /// If `dest` is shorter than the view.
    pub fn copy_to(&self, dest: &mut [u8], checksum: bool) -> Result<Option<u32>, ClientError> {
        self.copy_appending(dest, checksum.then_some(0))
    }

    /// [`Self::copy_to`], carrying on the CRC32C `crc` of bytes that came
    /// before (for a shard copied out of several views in order).
    pub(crate) fn copy_appending(&self, dest: &mut [u8], mut crc: Option<u32>) -> Result<Option<u32>, ClientError> {
        assert!(dest.len() as u64 >= self.len, "destination too small");
        let mut at = 0;
        for piece in self.pieces()? {
            let to = &mut dest[at..at + piece.len()];
            match crc.as_mut() {
                // Checksum each piece right after copying it, while it is in
                // cache (which a streaming copy would bypass).
                Some(crc) => {
                    to.copy_from_slice(piece);
                    *crc = crc32c::crc32c_append(*crc, to);
                }
                None => copy_streaming(to, piece),
            }
            at += piece.len();
        }
        self.check()?;
        Ok(crc)
    }

    /// The bytes in a new vector.
    pub fn to_vec(&self) -> Result<Vec<u8>, ClientError> {
        let mut out = vec![0u8; self.len as usize];
        self.copy_to(&mut out, false)?;
        Ok(out)
    }
}

impl ShardView {
    /// The view with its bytes in one run of memory, for callers that need
    /// a single array: where the arena holds the pieces side by side
    /// already, that run; otherwise the pieces mapped next to each other
    /// into a new range of this process's address space (the same pages of
    /// the arena, no copy). A view of a whole shard can always be laid out
    /// so, except in a hugetlb arena whose huge pages are larger than the
    /// daemon's chunks; a range must start on a chunk boundary or inside the
    /// first chunk. Gives the view back with the error otherwise.
    pub fn into_contiguous(self) -> Result<ContiguousView, Box<(ShardView, ClientError)>> {
        if let Err(e) = self.check() {
            return Err(Box::new((self, e)));
        }
        let pieces: Vec<(u64, u64)> = self.extents.iter().map(|e| (e.offset, e.len)).collect();
        let adjacent = pieces.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0);
        if adjacent {
            let start = pieces.first().map_or(0, |p| p.0);
            // SAFETY: only computes an address: `new` checked that every
            // extent lies inside the mapping, and these are adjacent.
            let ptr = unsafe { self.arena.bytes(start, 0) }.map_or(std::ptr::null(), <[u8]>::as_ptr);
            return Ok(ContiguousView {
                ptr,
                view: self,
                _map: None,
            });
        }
        match self.arena.map_pieces(&pieces) {
            Ok((map, lead)) => Ok(ContiguousView {
                // SAFETY: `lead` is inside the new mapping's first page.
                ptr: unsafe { map.base().add(lead) },
                view: self,
                _map: Some(map),
            }),
            Err(e) => {
                let error = ClientError::Remote {
                    status: shardd_protocol::Status::BadRequest,
                    message: format!(
                        "the view of {}/{} cannot be laid out in one run of memory ({e}); read it piece by piece \
                         or copy it",
                        self.meta.namespace, self.meta.key
                    ),
                    current_version: None,
                };
                Err(Box::new((self, error)))
            }
        }
    }
}

impl Drop for ShardView {
    fn drop(&mut self) {
        self.release();
    }
}

/// A [`ShardView`] whose bytes are one run of memory
/// ([`ShardView::into_contiguous`]). Like the view, it can be read only
/// while its lease holds.
#[derive(Debug)]
pub struct ContiguousView {
    ptr: *const u8,
    view: ShardView,
    _map: Option<Arc<crate::arena::PiecesMap>>,
}

// SAFETY: `ptr` points into a read-only mapping that this value (or the
// arena mapping its view holds) keeps; nothing depends on the thread.
unsafe impl Send for ContiguousView {}
// SAFETY: as above; no method mutates through `&self`.
unsafe impl Sync for ContiguousView {}

impl ContiguousView {
    /// The view.
    pub fn view(&self) -> &ShardView {
        &self.view
    }

    /// Gives the lease back now (see [`ShardView::release`]); the memory
    /// at [`Self::as_ptr`] stays readable while this value lives.
    pub fn release(&mut self) {
        self.view.release();
    }

    /// The first byte. The `len()` bytes from it are the view's while its
    /// lease holds ([`ShardView::check`]); the address stays readable as
    /// long as this value lives (after the lease ends it reads whatever
    /// the arena holds there, never a fault).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }

    /// Bytes in the view.
    pub fn len(&self) -> u64 {
        self.view.len
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.view.len == 0
    }

    /// The bytes, while the lease holds (see [`ShardView::pieces`]).
    pub fn bytes(&self) -> Result<&[u8], ClientError> {
        self.view.check()?;
        if self.view.len == 0 {
            return Ok(&[]);
        }
        // SAFETY: `len` readable bytes at `ptr`, unchanged while the lease
        // holds (checked above).
        Ok(unsafe { std::slice::from_raw_parts(self.ptr, self.view.len as usize) })
    }
}
