//! The pinned-memory arena: one memfd-backed region, locked into RAM where
//! the memlock limit allows, carved into 4 KiB-aligned blocks for cached
//! shard chunks. Making memory resident takes about a second per GiB, so
//! only its first [`POPULATE_AT_START`] bytes are made so before the daemon
//! serves; a thread does the rest piece by piece, and blocks are handed
//! out only from what is ready. Once resident, it is registered with
//! io_uring as fixed buffers, so NVMe reads land in it and writes go out
//! from it with no bounce copy; and its memfd, sealed and read-only, can be
//! handed to local clients, who then read shards in place.
//!
//! # Layout
//!
//! * [`memory`]: the memfd: mapping, locking, sealing.
//! * [`alloc`]: the block allocator.

pub mod alloc;
pub mod memory;

use std::collections::HashSet;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use alloc::{Block, SlabAllocator};
pub use alloc::{Exhausted, FRAGMENTATION_BOUND};
use memory::ArenaMemory;
pub use memory::{HugePages, Locked};

use crate::io::{AlignedBuf, FixedMemory, SharedSlice};

/// Largest io_uring fixed buffer (a kernel limit).
const MAX_FIXED_REGION: usize = 1 << 30;

/// Bytes of the arena made resident before [`Arena::create`] returns (about
/// a quarter of a second): the rest is populated in the background.
pub const POPULATE_AT_START: u64 = 256 << 20;

/// Bytes the background thread makes resident at a time, before handing
/// them to the allocator.
const POPULATE_PIECE: u64 = 64 << 20;

/// Settings of the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArenaConfig {
    /// Bytes; rounded down to whole blocks.
    pub size: u64,
    /// Largest block (= the store's chunk size).
    pub max_block: u32,
    /// Huge pages.
    pub huge_pages: HugePages,
    /// To be handed to the next daemon at a restart (see [`memory`]).
    pub kept: bool,
}

/// The arena. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Arena {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    memory: ArenaMemory,
    alloc: Mutex<SlabAllocator>,
    /// Bytes per io_uring fixed buffer region.
    region: usize,
    /// Offsets of blocks to zero when they are freed (a deleted shard's).
    scrub: Mutex<HashSet<u64>>,
    /// Bytes zeroed that way, and the nanoseconds it took.
    scrubbed_bytes: AtomicU64,
    scrub_nanos: AtomicU64,
    /// Bytes from the start made resident and handed to the allocator.
    populated: AtomicU64,
    /// Woken when all of it is.
    populated_all: tokio::sync::Notify,
}

/// Gives a block back when the buffer holding it is dropped.
struct BlockGuard {
    shared: Arc<Shared>,
    block: Block,
}

impl Drop for BlockGuard {
    fn drop(&mut self) {
        let scrub = self
            .shared
            .scrub
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.block.offset);
        if scrub {
            let started = std::time::Instant::now();
            // SAFETY: the block lies inside the daemon's writable mapping and
            // nothing refers to it any more (this guard outlived every
            // buffer and lease over it); it is not in the allocator's free
            // lists until the `free` below, so nothing else writes it now.
            unsafe {
                std::ptr::write_bytes(
                    self.shared.memory.base().as_ptr().add(self.block.offset as usize),
                    0,
                    self.block.size as usize,
                );
            }
            let shared = &self.shared;
            shared
                .scrubbed_bytes
                .fetch_add(self.block.size as u64, Ordering::Relaxed);
            shared
                .scrub_nanos
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        self.shared
            .alloc
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .free(self.block);
    }
}

impl Arena {
    /// Creates the arena with its first [`POPULATE_AT_START`] bytes
    /// resident and starts a thread that makes the rest so. Once all of it
    /// is, logs how much is locked; if not all, one warning says how to fix
    /// that.
    pub fn create(config: ArenaConfig) -> anyhow::Result<Arena> {
        let size = Arena::rounded_size(&config)?;
        let memory = ArenaMemory::create(size as usize, config.huge_pages, config.kept)?;
        Arena::start(memory, config.max_block)
    }

    /// Like [`Arena::create`], over the memory of an arena a previous daemon
    /// kept (its memfd `fd`): nothing in it is in use until
    /// [`Arena::claim`]ed. Says why not if this configuration cannot use it.
    pub fn adopt(config: ArenaConfig, fd: std::os::fd::OwnedFd) -> Result<Arena, String> {
        let size = Arena::rounded_size(&config).map_err(|e| e.to_string())?;
        let memory = ArenaMemory::adopt(fd, size as usize, config.huge_pages)?;
        Arena::start(memory, config.max_block).map_err(|e| format!("{e:#}"))
    }

    /// The arena's size: `config.size` rounded down to whole blocks.
    fn rounded_size(config: &ArenaConfig) -> anyhow::Result<u64> {
        let block = config.max_block as u64;
        let size = config.size / block * block;
        anyhow::ensure!(size > 0, "the arena must hold at least one block of {block} bytes");
        Ok(size)
    }

    /// Makes the first [`POPULATE_AT_START`] bytes of `memory` resident and
    /// starts the thread that does the rest.
    fn start(memory: ArenaMemory, max_block: u32) -> anyhow::Result<Arena> {
        let block = max_block as u64;
        let size = memory.len() as u64;
        let region = MAX_FIXED_REGION / block as usize * block as usize;
        let arena = Arena {
            shared: Arc::new(Shared {
                alloc: Mutex::new(SlabAllocator::unavailable(size, max_block)),
                memory,
                region,
                scrub: Mutex::new(HashSet::new()),
                scrubbed_bytes: AtomicU64::new(0),
                scrub_nanos: AtomicU64::new(0),
                populated: AtomicU64::new(0),
                populated_all: tokio::sync::Notify::new(),
            }),
        };
        let started = std::time::Instant::now();
        let at_start = POPULATE_AT_START.max(block) / block * block;
        arena.populate(0, at_start.min(size));
        if at_start >= size {
            arena.populated_all(started);
        } else {
            // Holds the arena only while it works on a piece: an arena dropped
            // meanwhile (the daemon stopped) ends the thread.
            let background = Arc::downgrade(&arena.shared);
            std::thread::Builder::new()
                .name("shardd-arena-populate".into())
                .spawn(move || {
                    let piece = POPULATE_PIECE.max(block) / block * block;
                    let mut from = at_start;
                    while from < size {
                        let Some(shared) = background.upgrade() else { return };
                        let to = (from + piece).min(size);
                        Arena { shared }.populate(from, to);
                        from = to;
                    }
                    if let Some(shared) = background.upgrade() {
                        Arena { shared }.populated_all(started);
                    }
                })
                .map_err(|e| anyhow::anyhow!("start the thread that populates the arena: {e}"))?;
            tracing::info!(
                arena_bytes = size,
                ready_bytes = at_start,
                "pinned arena: serving from its first {at_start} bytes while the rest is made resident"
            );
        }
        Ok(arena)
    }

    /// Makes `[from, to)` resident and hands it to the allocator.
    fn populate(&self, from: u64, to: u64) {
        self.shared.memory.populate(from as usize..to as usize);
        self.alloc_state().make_available(to);
        self.shared.populated.store(to, Ordering::Release);
    }

    /// Logs how much is locked, once all of the arena is resident, and
    /// wakes [`Arena::populated`].
    fn populated_all(&self, started: std::time::Instant) {
        let size = self.capacity();
        let locked = self.locked();
        let seconds = started.elapsed().as_secs_f64();
        if locked.bytes < size {
            let limit = if locked.limit == u64::MAX {
                "unlimited".to_string()
            } else {
                format!("{} bytes", locked.limit)
            };
            tracing::warn!(
                arena_bytes = size,
                locked_bytes = locked.bytes,
                seconds,
                "pinned arena: only {} of {} bytes are locked in RAM (RLIMIT_MEMLOCK is {limit}); \
                 the rest may be swapped out. Raise the limit to lock all of it: \
                 LimitMEMLOCK=infinity in the systemd unit, or `ulimit -l unlimited`",
                locked.bytes,
                size
            );
        } else {
            tracing::info!(arena_bytes = size, seconds, "pinned arena allocated and locked");
        }
        self.shared.populated_all.notify_waiters();
    }

    /// Bytes of the arena resident and in use by the allocator (all of it
    /// once [`Arena::populated`] has returned).
    pub fn populated_bytes(&self) -> u64 {
        self.shared.populated.load(Ordering::Acquire)
    }

    /// Returns once all of the arena is resident.
    pub async fn populated(&self) {
        loop {
            let woken = self.shared.populated_all.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.populated_bytes() >= self.capacity() {
                return;
            }
            woken.await;
        }
    }

    fn alloc_state(&self) -> std::sync::MutexGuard<'_, SlabAllocator> {
        self.shared.alloc.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the arena has 4 KiB pages rather than huge ones.
    pub fn small_pages(&self) -> bool {
        self.shared.memory.small_pages()
    }

    /// Bytes of the arena.
    pub fn capacity(&self) -> u64 {
        self.shared.memory.len() as u64
    }

    /// Bytes in allocated blocks.
    pub fn used(&self) -> u64 {
        self.alloc_state().used()
    }

    /// How much is locked in RAM.
    pub fn locked(&self) -> Locked {
        self.shared.memory.locked()
    }

    /// Largest block.
    pub fn max_block(&self) -> u32 {
        self.alloc_state().max_block()
    }

    /// Bytes a request for `size` bytes takes (its block size).
    pub fn block_size(&self, size: u32) -> Option<u32> {
        self.alloc_state().class_size(size)
    }

    /// A block of at least `size` bytes as a buffer; the block returns to
    /// the arena when the buffer is dropped.
    pub fn alloc(&self, size: u32) -> Result<AlignedBuf, Exhausted> {
        let block = self.alloc_state().alloc(size)?;
        Ok(self.buffer(block))
    }

    /// `count` whole blocks (each of [`Arena::max_block`] bytes) at
    /// consecutive offsets, one range of the arena, if a run that long is
    /// free now.
    pub fn alloc_run(&self, count: u32) -> Option<Vec<AlignedBuf>> {
        let blocks = self.alloc_state().alloc_run(count)?;
        Some(blocks.into_iter().map(|block| self.buffer(block)).collect())
    }

    /// The block of `size` bytes at `offset`, which holds data a previous
    /// daemon left (an adopted arena), as a buffer that frees it when
    /// dropped; an error if no such block could be allocated here or it is
    /// in use.
    pub fn claim(&self, offset: u64, size: u32) -> Result<AlignedBuf, String> {
        let block = self.alloc_state().claim(offset, size)?;
        Ok(self.buffer(block))
    }

    /// The writable memfd to hand to the next daemon, if the arena was made
    /// to be kept.
    pub fn kept_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.shared.memory.kept_fd()
    }

    /// An allocated block as a buffer that frees it when dropped.
    fn buffer(&self, block: Block) -> AlignedBuf {
        let offset = block.offset as usize;
        // SAFETY: the block lies inside the mapping (the allocator only hands
        // out offsets below its capacity, the mapping's length).
        let ptr = unsafe { NonNull::new_unchecked(self.shared.memory.base().as_ptr().add(offset)) };
        let fixed = u16::try_from(offset / self.shared.region).ok();
        let guard = BlockGuard {
            shared: self.shared.clone(),
            block,
        };
        // SAFETY: the block is page aligned, `block.size` bytes long, inside
        // the mapping (initialised: a memfd reads as zeros until written), and
        // exclusively ours until the guard frees it.
        unsafe { AlignedBuf::from_external(ptr, block.size as usize, fixed, Box::new(guard)) }
    }

    /// The memory to register with io_uring: regions of at most 1 GiB.
    pub fn fixed_memory(&self) -> FixedMemory {
        let base = self.shared.memory.base();
        let len = self.shared.memory.len();
        let regions = (0..len)
            .step_by(self.shared.region)
            .map(|start| {
                // SAFETY: `start < len`, inside the mapping.
                let ptr = unsafe { NonNull::new_unchecked(base.as_ptr().add(start)) };
                (ptr, self.shared.region.min(len - start))
            })
            .collect();
        FixedMemory {
            regions,
            keepalive: self.shared.clone(),
        }
    }

    /// Marks the blocks of `bufs` (arena blocks) to be zeroed when they
    /// are freed, after the last buffer and lease over them is gone: the
    /// bytes of a deleted shard must not linger where every client that
    /// maps the arena can read them, nor reach the next owner of a block.
    pub fn scrub_on_free<'a>(&self, bufs: impl IntoIterator<Item = &'a AlignedBuf>) {
        let offsets: Vec<u64> = bufs.into_iter().map(|b| self.offset_of(b.as_ptr())).collect();
        self.shared
            .scrub
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(offsets);
    }

    /// Bytes zeroed for [`Arena::scrub_on_free`] so far, and the time it took.
    pub fn scrubbed(&self) -> (u64, std::time::Duration) {
        (
            self.shared.scrubbed_bytes.load(Ordering::Relaxed),
            std::time::Duration::from_nanos(self.shared.scrub_nanos.load(Ordering::Relaxed)),
        )
    }

    /// Offset in the arena of a pointer into it.
    ///
    /// # Panics
    /// If `ptr` is not inside the arena.
    pub fn offset_of(&self, ptr: *const u8) -> u64 {
        let base = self.shared.memory.base().as_ptr() as usize;
        let at = ptr as usize;
        assert!(
            at >= base && at < base + self.shared.memory.len(),
            "pointer outside the arena"
        );
        (at - base) as u64
    }

    /// A read-only view of `len` bytes of `buf` (an arena block held by
    /// `owner`), for writing out straight from the arena.
    pub fn shared_slice(
        &self,
        buf: &AlignedBuf,
        len: usize,
        owner: Arc<dyn std::any::Any + Send + Sync>,
    ) -> SharedSlice {
        assert!(len <= buf.capacity());
        // SAFETY: the caller's `owner` keeps `buf` (and so its block) alive
        // and unmodified while the slice lives: cached chunks are immutable.
        unsafe {
            SharedSlice::new(
                NonNull::new_unchecked(buf.as_ptr().cast_mut()),
                len,
                buf.fixed_index(),
                owner,
            )
        }
    }

    /// The descriptor to hand to local clients: the sealed memfd, read
    /// only; or why the arena cannot be shared.
    pub fn shared_fd(&self) -> Result<std::os::fd::BorrowedFd<'_>, &str> {
        self.shared.memory.shared_fd()
    }

    /// The largest request that would succeed now.
    pub fn largest_allocatable(&self) -> u32 {
        self.alloc_state().largest_allocatable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_arena_memory_and_come_back() {
        let arena = Arena::create(ArenaConfig {
            size: 8 << 20,
            max_block: 1 << 20,
            huge_pages: HugePages::Off,
            kept: false,
        })
        .unwrap();
        assert_eq!(arena.capacity(), 8 << 20);
        let mut a = arena.alloc(5000).unwrap();
        assert_eq!(a.capacity(), 8192);
        assert_eq!(a.fixed_index(), Some(0));
        a.fill_padded(b"in the arena");
        let offset = arena.offset_of(a.as_ptr());
        assert_eq!(offset % 4096, 0);
        assert_eq!(arena.used(), 8192);
        let whole: Vec<AlignedBuf> = (0..7).map(|_| arena.alloc(1 << 20).unwrap()).collect();
        assert!(arena.alloc(1 << 20).is_err(), "one superblock holds the small block");
        drop(a);
        assert!(
            arena.alloc(1 << 20).is_ok(),
            "the small block came back, its superblock too"
        );
        drop(whole);
        assert_eq!(arena.used(), 0);
        let memory = arena.fixed_memory();
        assert_eq!(memory.regions.len(), 1);
        assert_eq!(memory.regions[0].1, 8 << 20);
    }

    /// What zeroing a deleted shard's blocks costs, beside a copy of the
    /// same bytes measured in the same run (printed, not asserted: the
    /// machine is shared).
    #[test]
    fn scrubbed_blocks_read_as_zeros_and_what_it_costs() {
        let arena = Arena::create(ArenaConfig {
            size: 64 << 20,
            max_block: 1 << 20,
            huge_pages: HugePages::Off,
            kept: false,
        })
        .unwrap();
        let mut blocks: Vec<AlignedBuf> = (0..48).map(|_| arena.alloc(1 << 20).unwrap()).collect();
        for block in &mut blocks {
            block.as_mut_capacity().fill(0xa5);
        }
        let offsets: Vec<u64> = blocks.iter().map(|b| arena.offset_of(b.as_ptr())).collect();
        arena.scrub_on_free(blocks.iter().take(32));
        drop(blocks);
        let (bytes, took) = arena.scrubbed();
        assert_eq!(bytes, 32 << 20);
        let base = arena.shared.memory.base().as_ptr();
        for (i, offset) in offsets.iter().enumerate() {
            // SAFETY: reading inside the mapping, with no buffer over it.
            let first = unsafe { *base.add(*offset as usize + 4095) };
            assert_eq!(first, if i < 32 { 0 } else { 0xa5 }, "block {i}");
        }
        let source = vec![1u8; 32 << 20];
        let mut target = vec![0u8; 32 << 20];
        // Touched once first, as the arena's blocks were.
        target.copy_from_slice(&source);
        let started = std::time::Instant::now();
        target.copy_from_slice(&source);
        let copy = started.elapsed();
        std::hint::black_box(&target);
        let gbps = |d: std::time::Duration| bytes as f64 / d.as_secs_f64() / 1e9;
        println!(
            "zeroing 32 MiB of freed blocks: {took:?} ({:.1} GB/s); memcpy of as much: {copy:?} ({:.1} GB/s)",
            gbps(took),
            gbps(copy)
        );
    }
}
