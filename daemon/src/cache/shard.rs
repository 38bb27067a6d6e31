//! A shard held in the arena, and leases on it.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use shardd_protocol::{ShardMeta, Status};

use crate::io::AlignedBuf;

/// Whether a shard's bytes are on the drive yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteBack {
    /// On the drive (or loaded from it).
    Clean,
    /// Acknowledged from memory; the flush to the drive has not finished.
    Dirty,
    /// The flush failed; the bytes are only in memory.
    Failed {
        /// Status of the failure.
        status: Status,
        /// What failed.
        reason: String,
    },
}

/// One shard version in the arena: one block per chunk, immutable once
/// built. Its memory goes back to the arena when the last holder (the cache
/// map, a lease) drops it, so a reader never sees it reused.
#[derive(Debug)]
pub struct CachedShard {
    /// Its metadata.
    pub meta: ShardMeta,
    chunk_size: u32,
    /// Shared, so that a fetch can send a chunk while the shard is still
    /// loading (before this exists).
    chunks: Vec<Arc<AlignedBuf>>,
    leases: AtomicU64,
    /// Loaded by a prefetch and not fetched since.
    prefetched: AtomicBool,
    /// Found not to match its CRC32C: never served again.
    corrupt: AtomicBool,
    write_back: Mutex<WriteBack>,
    /// Counted in the arena's bytes not yet on the drive (a dirty shard,
    /// until it is flushed, replaced or forgotten).
    counted_dirty: AtomicBool,
    /// Bytes it still counts against the write-back budget: all of a dirty
    /// shard's at first, given back when it is flushed, replaced or
    /// forgotten (a scratch shard's as its flush writes them).
    budgeted: AtomicU64,
    /// A scratch put's: written to the drive without syncing.
    scratch: bool,
    /// Its key's entry in the cache's map: set and cleared under the
    /// cache's lock, by [`super::entries::Entries`] only.
    listed: AtomicBool,
}

impl CachedShard {
    /// A shard whose chunk `i` holds bytes `i * chunk_size ..` of the shard.
    pub fn new(meta: ShardMeta, chunk_size: u32, chunks: Vec<Arc<AlignedBuf>>, write_back: WriteBack) -> CachedShard {
        debug_assert_eq!(chunks.len() as u64, meta.len.div_ceil(chunk_size as u64));
        let dirty = write_back == WriteBack::Dirty;
        let budgeted = AtomicU64::new(if dirty { meta.len } else { 0 });
        CachedShard {
            meta,
            chunk_size,
            chunks,
            leases: AtomicU64::new(0),
            prefetched: AtomicBool::new(false),
            corrupt: AtomicBool::new(false),
            write_back: Mutex::new(write_back),
            counted_dirty: AtomicBool::new(dirty),
            budgeted,
            scratch: false,
            listed: AtomicBool::new(false),
        }
    }

    /// Stops counting it as not yet on the drive; whether it was counted.
    pub fn undirty(&self) -> bool {
        self.counted_dirty.swap(false, Ordering::AcqRel)
    }

    /// Takes up to `len` bytes off what it counts against the write-back
    /// budget; returns how many it took (none once all are given back).
    pub fn unbudget(&self, len: u64) -> u64 {
        let mut taken = 0;
        let _ = self.budgeted.fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
            taken = left.min(len);
            Some(left - taken)
        });
        taken
    }

    /// The same shard, put as scratch: its flush is not synced.
    pub fn scratch(mut self, scratch: bool) -> CachedShard {
        self.scratch = scratch;
        self
    }

    /// Whether it was put as scratch.
    pub fn is_scratch(&self) -> bool {
        self.scratch
    }

    /// Bytes per chunk.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// The chunks' buffers (arena blocks).
    pub fn chunks(&self) -> &[Arc<AlignedBuf>] {
        &self.chunks
    }

    /// Valid bytes of chunk `i`.
    pub fn chunk_len(&self, i: usize) -> usize {
        let start = i as u64 * self.chunk_size as u64;
        (self.meta.len - start).min(self.chunk_size as u64) as usize
    }

    /// The pieces of `[offset, offset + len)`: (chunk, range within it).
    pub fn pieces(&self, offset: u64, len: u64) -> impl Iterator<Item = (usize, Range<usize>)> + use<> {
        pieces(self.meta.len, self.chunk_size, offset, len)
    }

    /// The CRC32C of its bytes as they are in the arena now.
    pub fn crc32c(&self) -> u32 {
        self.chunks.iter().enumerate().fold(0, |crc, (i, chunk)| {
            crc32c::crc32c_append(crc, &chunk.as_capacity()[..self.chunk_len(i)])
        })
    }

    /// Whether it is its key's entry in the cache's map (the current
    /// version, resident). Meaningful under the cache's lock.
    pub(super) fn is_listed(&self) -> bool {
        self.listed.load(Ordering::Relaxed)
    }

    pub(super) fn set_listed(&self, listed: bool) {
        self.listed.store(listed, Ordering::Relaxed);
    }

    /// Marks it as failing its checksum; returns whether it was not yet.
    pub(super) fn mark_corrupt(&self) -> bool {
        !self.corrupt.swap(true, Ordering::SeqCst)
    }

    /// Whether it failed its checksum.
    pub fn is_corrupt(&self) -> bool {
        self.corrupt.load(Ordering::SeqCst)
    }

    /// Bytes of arena memory it holds.
    pub fn arena_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.capacity() as u64).sum()
    }

    /// Leases held now.
    pub fn leases(&self) -> u64 {
        self.leases.load(Ordering::Acquire)
    }

    /// Its write-back state.
    pub fn write_back(&self) -> WriteBack {
        self.write_back.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn set_write_back(&self, state: WriteBack) {
        *self.write_back.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }

    /// Whether the bytes are on the drive.
    pub fn is_clean(&self) -> bool {
        self.write_back() == WriteBack::Clean
    }

    pub(super) fn mark_prefetched(&self) {
        self.prefetched.store(true, Ordering::Release);
    }

    /// Clears the prefetched mark; returns whether it was set.
    pub(super) fn take_prefetched(&self) -> bool {
        // Read first: most hits are not of prefetched shards, and a swap
        // would take the shard's cache line from the other cores.
        self.prefetched.load(Ordering::Acquire) && self.prefetched.swap(false, Ordering::AcqRel)
    }
}

/// The pieces of bytes `[offset, offset + len)` of a `shard_len`-byte shard
/// in chunks of `chunk_size`: (chunk, range within it). The range must lie
/// within the shard.
pub fn pieces(
    shard_len: u64,
    chunk_size: u32,
    offset: u64,
    len: u64,
) -> impl Iterator<Item = (usize, Range<usize>)> + use<> {
    let end = offset + len;
    let cs = chunk_size as u64;
    let (first, last) = if len == 0 {
        (1, 0)
    } else {
        (offset / cs, (end - 1) / cs)
    };
    (first..=last).map(move |i| {
        let start = i * cs;
        let chunk_end = shard_len.min(start + cs);
        let from = offset.max(start) - start;
        let to = end.min(chunk_end) - start;
        (i as usize, from as usize..to as usize)
    })
}

/// A reader's hold on a cached shard: while any lease exists the shard is
/// not evicted, and its memory is not reused while anything holds it.
#[derive(Debug)]
pub struct Lease {
    shard: Arc<CachedShard>,
}

impl Lease {
    /// A new lease on `shard`.
    pub fn new(shard: Arc<CachedShard>) -> Lease {
        shard.leases.fetch_add(1, Ordering::AcqRel);
        Lease { shard }
    }

    /// The shard, as a shared owner (for views that outlive the lease's scope).
    pub fn shard(&self) -> &Arc<CachedShard> {
        &self.shard
    }
}

impl Clone for Lease {
    fn clone(&self) -> Lease {
        Lease::new(self.shard.clone())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.shard.leases.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::ops::Deref for Lease {
    type Target = CachedShard;
    fn deref(&self) -> &CachedShard {
        &self.shard
    }
}
