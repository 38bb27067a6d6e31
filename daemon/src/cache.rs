//! The hot tier: shards held in the pinned arena, in front of the NVMe store.
//!
//! * A fetch of a resident shard is served from the arena (a hit). A miss
//!   reads the shard once into arena blocks, verifying every chunk, and keeps
//!   it; concurrent fetches of the same shard, and a fetch of a shard being
//!   prefetched, share that one load. A fetch over the socket follows the
//!   load ([`Cache::fetch_following`]), sending each chunk once it is read
//!   and verified; a view of a range answers once its chunks are in. A
//!   client copying a large cold shard out of the arena asks for views of
//!   its pieces, counted as one fetch ([`Access`]).
//! * A put can keep its bytes in the arena after writing them (durable), or
//!   be acknowledged once they are in the arena and flushed in the
//!   background (write-back); a failed flush is reported by later stats and
//!   fetches of the shard, counted, and tried again (another drive, space
//!   come back) until it succeeds or the shard is replaced. Write-back bytes not on the drive
//!   are bounded by a budget; a scratch shard's flush gives its room back
//!   chunk by chunk as it writes.
//! * Under memory pressure the policy ([`policy`]) picks shards to evict.
//!   Shards under a lease (being sent, or mapped by a local client) and
//!   dirty shards are never evicted, and a shard's memory is only reused
//!   once nothing holds it.
//! * Prefetch hints load shards ahead of use, most urgent first, within a
//!   byte budget.
//! * A copy found not to match its CRC32C when checked again
//!   ([`Cache::verify`], on a client's report; or by a write-back flush,
//!   which checks every byte it writes) is never served again: a clean one
//!   leaves the arena and the next fetch reads the drive, one not yet on
//!   the drive answers every fetch with the error.
//!
//! # Layout
//!
//! * [`shard`]: a cached shard and leases on it.
//! * [`entries`]: the map of shards, which tells each whether it is still
//!   its key's entry.
//! * [`load`]: loads into the arena, shared and followed.
//! * [`residency`]: placing, installing, forgetting and evicting shards;
//!   stat and delete.
//! * [`write_back`]: write-back puts, their budget and their flushes.
//! * [`verify`]: checking copies again; corrupt copies out of service.
//! * [`policy`]: eviction policies.
//! * [`prefetch`]: the prefetch queue.
//! * [`stats`]: the tier's counters and sizes.
//! * [`namespaces`]: what each namespace holds in the arena; forgetting one.
//! * [`keep`]: what the arena holds, handed to the next daemon at a restart
//!   and checked against the drive when taken back.

mod entries;
pub mod keep;
pub mod load;
pub mod namespaces;
pub mod policy;
pub mod prefetch;
pub mod residency;
pub mod shard;
pub mod stats;
pub mod verify;
pub mod write_back;

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, Semaphore};

use crate::arena::Arena;
use crate::service::quota::Quotas;
use crate::store::Store;
use crate::store::buffers::BufferScope;
use entries::Entries;
use load::Loading;
pub use load::{Access, Follow, Followed, ResidentHandle, Started};
use policy::{Policy, PolicyKind};
pub use shard::{CachedShard, Lease, WriteBack};
use stats::Stats;
pub use write_back::WriteBackRoom;

/// Settings of the hot tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Eviction policy.
    pub policy: PolicyKind,
    /// Bytes of prefetch loads in flight at most.
    pub prefetch_memory: u64,
    /// Bytes of write-back shards not yet on the drive, at most; beyond it a
    /// write-back put is written through (acknowledged once durable).
    pub write_back_memory: u64,
    /// Write-back flushes running at once.
    pub flush_concurrency: usize,
    /// Whether loads and flushes go through chunk buffers in huge pages.
    pub bounce_io: BounceIo,
    /// Keys in all step schedules together, at most.
    pub max_schedule_keys: u64,
}

/// Whether loads into the arena and flushes out of it move their bytes
/// through the daemon's chunk buffers (transparent huge pages) and copy
/// them to or from the arena, rather than doing O_DIRECT on the arena
/// itself. A transfer into 4 KiB pages takes one memory segment per page,
/// and devices that take few per request (virtio disks: 254) split and slow
/// it; one copy in memory costs less than that.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BounceIo {
    /// When the arena has 4 KiB pages and the chunk buffers can have huge
    /// ones.
    #[default]
    Auto,
    /// Always.
    On,
    /// Never: O_DIRECT straight to and from the arena.
    Off,
}

/// What a fetch gets.
#[derive(Debug)]
pub enum Lookup {
    /// The shard is in the arena, held by this lease.
    Resident(Lease),
    /// The shard is not cached and cannot be: read it from the drive
    /// directly.
    Bypass {
        /// Why.
        reason: String,
        /// It never fits (larger than the arena); otherwise the arena is
        /// full of shards in use right now.
        too_large: bool,
    },
}

#[derive(Debug)]
enum Slot {
    Loading(Arc<Loading>),
    Ready(Arc<CachedShard>),
}

#[derive(Debug)]
struct State {
    entries: Entries,
    policy: Policy,
    /// Bytes of write-back shards not flushed yet (not all on the drive).
    dirty_bytes: u64,
    /// What counts against the write-back budget: the same bytes, less
    /// those of scratch shards their flushes have written already.
    unwritten_bytes: u64,
    /// Write-back bytes admitted (a [`WriteBackRoom`] held) and not yet
    /// installed: counted against the budget with `unwritten_bytes`.
    admitted_bytes: u64,
}

/// The hot tier. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Cache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    arena: Arena,
    store: Store,
    config: CacheConfig,
    state: Mutex<State>,
    stats: Stats,
    flushes: Semaphore,
    /// Woken whenever the count of write-back bytes not yet on the drive
    /// goes down (see [`Cache::room_for_write_back`]).
    write_back_room: Notify,
    /// Flush tasks, so that shutdown can wait for them.
    flush_tasks: tokio_util::task::TaskTracker,
    /// Cancelled at shutdown: failed flushes stop waiting to be tried again.
    stopping: tokio_util::sync::CancellationToken,
    /// Loads running on their own (started by prefetch hints, or by a
    /// fetch that follows them), so that shutdown can wait for them.
    load_tasks: tokio_util::task::TaskTracker,
    /// Arena shares of namespaces (`max_arena_bytes`).
    quotas: Arc<Quotas>,
    prefetch: Arc<prefetch::Queue>,
    /// With [`BounceIo`] in effect: the budget scope of the chunk buffers
    /// that loads and flushes go through.
    bounce: Option<BufferScope>,
}

impl Cache {
    /// A hot tier over `arena` in front of `store`; starts its prefetcher.
    pub fn new(arena: Arena, store: Store, config: CacheConfig, quotas: Arc<Quotas>) -> Cache {
        let bounce = match config.bounce_io {
            BounceIo::On => true,
            BounceIo::Off => false,
            BounceIo::Auto => arena.small_pages() && crate::arena::memory::anonymous_huge_pages(),
        };
        if bounce {
            tracing::info!(
                "the arena's loads and flushes go through chunk buffers in huge pages (arena.bounce_io); \
                 an arena of huge pages (arena.huge_pages) does its I/O in place"
            );
        }
        // Enough for a few loads and flushes at once, each with its reads or
        // writes in flight.
        let bounce_bytes = 4 * store.config().chunks_in_flight.max(1) as u64 * store.buffers().pool_buf_size() as u64;
        let bounce = bounce.then(|| store.buffers().scope(bounce_bytes));
        let cache = Cache {
            inner: Arc::new(Inner {
                prefetch: Arc::new(prefetch::Queue::new(config.prefetch_memory)),
                quotas,
                flushes: Semaphore::new(config.flush_concurrency.max(1)),
                write_back_room: Notify::new(),
                flush_tasks: tokio_util::task::TaskTracker::new(),
                stopping: tokio_util::sync::CancellationToken::new(),
                load_tasks: tokio_util::task::TaskTracker::new(),
                state: Mutex::new(State {
                    entries: Entries::default(),
                    policy: Policy::new(config.policy),
                    dirty_bytes: 0,
                    unwritten_bytes: 0,
                    admitted_bytes: 0,
                }),
                stats: Stats::default(),
                arena,
                store,
                config,
                bounce,
            }),
        };
        prefetch::spawn_worker(cache.clone());
        cache
    }

    /// The arena.
    pub fn arena(&self) -> &Arena {
        &self.inner.arena
    }

    /// The store behind the tier.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// At shutdown: drops the prefetch hints still waiting, waits for the
    /// loads under way and then for write-back shards to reach the drive,
    /// all within `budget`; logs what did not finish.
    pub async fn stop(&self, budget: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + budget;
        self.inner.prefetch.close();
        let loads = &self.inner.load_tasks;
        loads.close();
        if tokio::time::timeout_at(deadline, loads.wait()).await.is_err() {
            tracing::warn!(
                remaining = loads.len(),
                "loads into the arena still running after {budget:?}"
            );
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.finish_write_back(left).await;
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests;
