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
//!   fetches of the shard and counted. Write-back bytes not on the drive
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
//! * [`policy`]: eviction policies.
//! * [`prefetch`]: the prefetch queue.

pub mod policy;
pub mod prefetch;
pub mod shard;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use shardd_protocol::{
    ArenaStatus, EvictMode, EvictResponse, Key, Namespace, ShardMeta, Status, VerifyOutcome, VerifyResponse,
};
use tokio::sync::{Notify, Semaphore, watch};

use crate::arena::Arena;
use crate::io::{ALIGN, AlignedBuf, align_up};
use crate::store::buffers::BufferScope;
use crate::store::format::ShardLayout;
use crate::store::versions::Reservation;
use crate::store::{PutSpec, Store, StoreError};
use policy::{IdMap, Policy, PolicyKind, ShardId, ShardRef};
pub use shard::{CachedShard, Lease, WriteBack};

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

/// Counters of the hot tier.
#[derive(Debug, Default)]
struct Stats {
    hits: AtomicU64,
    misses: AtomicU64,
    bypassed: AtomicU64,
    loads: AtomicU64,
    evictions: AtomicU64,
    demoted: AtomicU64,
    prefetch_queued: AtomicU64,
    prefetch_completed: AtomicU64,
    prefetch_late: AtomicU64,
    prefetch_unused: AtomicU64,
    write_back_puts: AtomicU64,
    flush_failures: AtomicU64,
    flushes_superseded: AtomicU64,
    checksum_failures: AtomicU64,
}

type LoadResult = Result<Arc<CachedShard>, LoadFailure>;

/// How a fetch begins.
enum Begin {
    Hit(Lease),
    Join(Arc<Loading>),
    Load(ShardId, Arc<Loading>),
}

/// Why a load did not produce a cached shard (cloneable for every waiter).
#[derive(Clone, Debug)]
enum LoadFailure {
    Bypass { reason: String, too_large: bool },
    Error { status: Status, message: String },
}

fn full(reason: impl Into<String>) -> LoadFailure {
    LoadFailure::Bypass {
        reason: reason.into(),
        too_large: false,
    }
}

fn too_large(reason: String) -> LoadFailure {
    LoadFailure::Bypass {
        reason,
        too_large: true,
    }
}

impl LoadFailure {
    fn from_store(e: &StoreError) -> LoadFailure {
        LoadFailure::Error {
            status: e.status(),
            message: e.to_string(),
        }
    }
}

/// A load in progress; fetches watch its progress and result.
#[derive(Debug)]
struct Loading {
    progress: watch::Sender<Progress>,
    by_prefetch: bool,
    /// A fetch has joined it (so a prefetched shard counts as used).
    joined: AtomicBool,
}

impl Loading {
    fn new(by_prefetch: bool) -> Arc<Loading> {
        Arc::new(Loading {
            progress: watch::channel(Progress::default()).0,
            by_prefetch,
            joined: AtomicBool::new(false),
        })
    }

    /// Waits for the load's result.
    async fn result(mut rx: watch::Receiver<Progress>) -> LoadResult {
        match rx.wait_for(|p| p.result.is_some()).await {
            Ok(p) => p.result.clone().unwrap_or_else(|| Err(full("load abandoned"))),
            Err(_) => Err(full("load abandoned")),
        }
    }
}

/// Ends a load that stopped before its result: removes its slot (if still
/// its own) and sends its waiters to read the drive directly.
struct AbandonedLoad<'a> {
    cache: &'a Cache,
    id: &'a ShardId,
    loading: &'a Arc<Loading>,
    armed: bool,
}

impl Drop for AbandonedLoad<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        {
            let mut state = self.cache.state();
            if matches!(state.entries.get(self.id), Some(Slot::Loading(l)) if Arc::ptr_eq(l, self.loading)) {
                state.entries.remove(self.id);
            }
        }
        self.loading
            .progress
            .send_modify(|p| p.result = Some(Err(full("the load into the arena was abandoned"))));
    }
}

/// How far a load has got.
#[derive(Debug, Default)]
struct Progress {
    /// The shard's metadata and chunk size, once its arena blocks are held.
    started: Option<(ShardMeta, u32)>,
    /// Chunks read and verified so far, in order.
    chunks: Vec<Arc<AlignedBuf>>,
    /// The outcome, once the load is over.
    result: Option<LoadResult>,
}

/// Whether a request is a use of a shard of its own, or a further piece of
/// one whose first piece was counted already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Counted as a hit or a miss, and a use of the shard by the eviction
    /// policy.
    Fetch,
    /// Not counted again, nor another use by the eviction policy: the
    /// fetch's first request was (a drive read a later piece has to start
    /// shows in the loads).
    Continued,
}

impl Access {
    /// How a view request counts: once, unless it is a `continued` piece.
    pub fn of_view(continued: bool) -> Access {
        if continued { Access::Continued } else { Access::Fetch }
    }
}

/// What [`Cache::fetch_following`] gets.
#[derive(Debug)]
pub enum Followed {
    /// The shard is in the arena, held by this lease.
    Resident(Lease),
    /// The shard is being read into the arena: follow the load to send each
    /// chunk as soon as it is verified.
    Loading(Follow),
}

/// How a followed load begins.
#[derive(Debug)]
pub enum Started {
    /// The shard is being read into the arena: its metadata and chunk size.
    Loading(ShardMeta, u32),
    /// It will not be cached: read it from the drive directly.
    Bypass {
        /// Why.
        reason: String,
        /// It never fits (larger than the arena).
        too_large: bool,
    },
}

/// A fetch following a load into the arena. The load runs on its own, so a
/// slow follower never holds it up for the others.
#[derive(Debug)]
pub struct Follow {
    rx: watch::Receiver<Progress>,
    cache: Cache,
}

impl Follow {
    /// Waits until the load holds its arena blocks (or fails or is bypassed).
    pub async fn started(&mut self) -> Result<Started, StoreError> {
        let progress = self
            .rx
            .wait_for(|p| p.started.is_some() || p.result.is_some())
            .await
            .map_err(|_| load_abandoned())?;
        if let Some((meta, chunk_size)) = &progress.started {
            return Ok(Started::Loading(meta.clone(), *chunk_size));
        }
        match progress.result.clone() {
            // A load that ends without starting fails or bypasses, except one
            // that found nothing to read (it never publishes its start).
            Some(Ok(shard)) => Ok(Started::Loading(shard.meta.clone(), shard.chunk_size())),
            Some(Err(LoadFailure::Bypass { reason, too_large })) => {
                self.cache.inner.stats.bypassed.fetch_add(1, Ordering::Relaxed);
                Ok(Started::Bypass { reason, too_large })
            }
            Some(Err(LoadFailure::Error { status, message })) => Err(StoreError::Other { status, message }),
            None => Err(load_abandoned()),
        }
    }

    /// Chunk `index` once it is read and verified (its length is the
    /// chunk's); an error if the load fails first.
    pub async fn chunk(&mut self, index: usize) -> Result<Arc<AlignedBuf>, StoreError> {
        let progress = self
            .rx
            .wait_for(|p| p.chunks.len() > index || p.result.is_some())
            .await
            .map_err(|_| load_abandoned())?;
        if let Some(chunk) = progress.chunks.get(index) {
            return Ok(chunk.clone());
        }
        match &progress.result {
            Some(Ok(shard)) if index < shard.chunks().len() => Ok(shard.chunks()[index].clone()),
            Some(Err(LoadFailure::Error { status, message })) => Err(StoreError::Other {
                status: *status,
                message: message.clone(),
            }),
            _ => Err(load_abandoned()),
        }
    }
}

fn load_abandoned() -> StoreError {
    StoreError::Other {
        status: Status::Internal,
        message: "the load of the shard into the arena was abandoned".to_string(),
    }
}

#[derive(Debug)]
enum Slot {
    Loading(Arc<Loading>),
    Ready(Arc<CachedShard>),
}

#[derive(Debug)]
struct State {
    entries: IdMap<Slot>,
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

/// Room in the write-back budget, held by a put from its admission until
/// its shard is installed or the put fails: puts admitted at the same
/// moment on several connections cannot together go beyond the budget.
#[derive(Debug)]
pub struct WriteBackRoom {
    cache: Cache,
    len: u64,
}

impl Drop for WriteBackRoom {
    fn drop(&mut self) {
        let mut state = self.cache.state();
        state.admitted_bytes = state.admitted_bytes.saturating_sub(self.len);
        self.cache.inner.write_back_room.notify_waiters();
    }
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
    prefetch: Arc<prefetch::Queue>,
    /// With [`BounceIo`] in effect: the budget scope of the chunk buffers
    /// that loads and flushes go through.
    bounce: Option<BufferScope>,
}

impl Cache {
    /// A hot tier over `arena` in front of `store`; starts its prefetcher.
    pub fn new(arena: Arena, store: Store, config: CacheConfig) -> Cache {
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
                flushes: Semaphore::new(config.flush_concurrency.max(1)),
                write_back_room: Notify::new(),
                flush_tasks: tokio_util::task::TaskTracker::new(),
                state: Mutex::new(State {
                    entries: IdMap::default(),
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

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The shard for a fetch if it is resident now: `None` when it is not
    /// (the caller then uses [`Cache::fetch`], which loads it). Never waits.
    pub fn try_hit(&self, namespace: &Namespace, key: &Key, access: Access) -> Option<Result<Lease, StoreError>> {
        let id = ShardRef(namespace, key);
        let mut state = self.state();
        let Some(Slot::Ready(shard)) = state.entries.get(&id) else {
            return None;
        };
        if let WriteBack::Failed { status, reason } = shard.write_back() {
            return Some(Err(flush_failed(&shard.meta, status, &reason)));
        }
        let lease = Lease::new(shard.clone());
        if access == Access::Fetch {
            state.policy.accessed(id);
            drop(state);
            self.inner.stats.hits.fetch_add(1, Ordering::Relaxed);
        }
        lease.take_prefetched();
        Some(Ok(lease))
    }

    /// The shard for a fetch: resident (loading it first on a miss), or to
    /// be read from the drive directly.
    pub async fn fetch(&self, namespace: &Namespace, key: &Key) -> Result<Lookup, StoreError> {
        let (id, loading) = match self.begin_fetch(namespace, key, Access::Fetch)? {
            Begin::Hit(lease) => return Ok(Lookup::Resident(lease)),
            Begin::Join(loading) => (None, loading),
            Begin::Load(id, loading) => (Some(id), loading),
        };
        let result = match id {
            Some(id) => self.load(id, loading).await,
            None => Loading::result(loading.progress.subscribe()).await,
        };
        match result {
            Ok(shard) => Ok(Lookup::Resident(Lease::new(shard))),
            Err(LoadFailure::Bypass { reason, too_large }) => {
                self.inner.stats.bypassed.fetch_add(1, Ordering::Relaxed);
                Ok(Lookup::Bypass { reason, too_large })
            }
            Err(LoadFailure::Error { status, message }) => Err(StoreError::Other { status, message }),
        }
    }

    /// Like [`Cache::fetch`], but on a miss returns at once with the load to
    /// follow, so that the caller can send each chunk as soon as it is read
    /// instead of after the whole shard.
    pub fn fetch_following(&self, namespace: &Namespace, key: &Key, access: Access) -> Result<Followed, StoreError> {
        let loading = match self.begin_fetch(namespace, key, access)? {
            Begin::Hit(lease) => return Ok(Followed::Resident(lease)),
            Begin::Join(loading) => loading,
            Begin::Load(id, loading) => {
                let cache = self.clone();
                let load = loading.clone();
                tokio::spawn(async move { cache.load(id, load).await });
                loading
            }
        };
        Ok(Followed::Loading(Follow {
            rx: loading.progress.subscribe(),
            cache: self.clone(),
        }))
    }

    /// A hit, a load to join, or a new load to run (already in the map).
    fn begin_fetch(&self, namespace: &Namespace, key: &Key, access: Access) -> Result<Begin, StoreError> {
        if let Some(hit) = self.try_hit(namespace, key, access) {
            return hit.map(Begin::Hit);
        }
        let id: ShardId = (namespace.clone(), key.clone());
        let stats = &self.inner.stats;
        let counted = access == Access::Fetch;
        let mut state = self.state();
        if counted {
            state.policy.accessed((&id).into());
        }
        match state.entries.get(&id) {
            // Became resident just now.
            Some(Slot::Ready(shard)) => {
                if let WriteBack::Failed { status, reason } = shard.write_back() {
                    return Err(flush_failed(&shard.meta, status, &reason));
                }
                if counted {
                    stats.hits.fetch_add(1, Ordering::Relaxed);
                }
                shard.take_prefetched();
                Ok(Begin::Hit(Lease::new(shard.clone())))
            }
            Some(Slot::Loading(loading)) => {
                if counted {
                    let late = loading.by_prefetch;
                    let counter = if late { &stats.prefetch_late } else { &stats.misses };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                loading.joined.store(true, Ordering::Relaxed);
                Ok(Begin::Join(loading.clone()))
            }
            None => {
                if counted {
                    stats.misses.fetch_add(1, Ordering::Relaxed);
                }
                let loading = Loading::new(false);
                state.entries.insert(id.clone(), Slot::Loading(loading.clone()));
                Ok(Begin::Load(id, loading))
            }
        }
    }

    /// Loads a shard into the arena for the `loading` slot of `id`, then
    /// installs it (if the slot is still this load's) and wakes the waiters.
    async fn load(&self, id: ShardId, loading: Arc<Loading>) -> LoadResult {
        // Should the read never finish (the future dropped, a panic), the
        // guard frees the slot and tells the waiters: no fetch hangs on it.
        let mut guard = AbandonedLoad {
            cache: self,
            id: &id,
            loading: &loading,
            armed: true,
        };
        let result = self.read_into_arena(&id, &loading.progress).await;
        guard.armed = false;
        drop(guard);
        let replaced = {
            let mut state = self.state();
            let ours = matches!(state.entries.get(&id), Some(Slot::Loading(l)) if Arc::ptr_eq(l, &loading));
            if ours {
                match &result {
                    Ok(shard) => {
                        // Unused until a fetch comes; one that joined the load
                        // was one (both decided under the lock).
                        if loading.by_prefetch && !loading.joined.load(Ordering::Relaxed) {
                            shard.mark_prefetched();
                        }
                        state.entries.insert(id.clone(), Slot::Ready(shard.clone()));
                        state.policy.inserted(id);
                    }
                    Err(_) => {
                        state.entries.remove(&id);
                    }
                }
            }
            ours
        };
        if !replaced {
            tracing::debug!("a newer version replaced the shard while it loaded");
        }
        loading.progress.send_modify(|p| p.result = Some(result.clone()));
        result
    }

    /// Reads a shard into arena blocks, publishing each chunk to `progress`
    /// as soon as it is verified.
    async fn read_into_arena(&self, id: &ShardId, progress: &watch::Sender<Progress>) -> LoadResult {
        let store = &self.inner.store;
        let reader = store
            .open_reader(&id.0, &id.1)
            .await
            .map_err(|e| LoadFailure::from_store(&e))?;
        let meta = reader.meta().clone();
        let chunk_size = reader.chunk_size();
        let blocks = self.alloc_blocks(meta.len, chunk_size)?;
        self.inner.stats.loads.fetch_add(1, Ordering::Relaxed);
        progress.send_modify(|p| p.started = Some((meta.clone(), chunk_size)));
        let mut stream = reader.read_into(blocks, self.inner.bounce.clone());
        let mut chunks = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = Arc::new(chunk.map_err(|e| LoadFailure::from_store(&e))?.buf);
            chunks.push(chunk.clone());
            progress.send_modify(|p| p.chunks.push(chunk));
        }
        Ok(Arc::new(CachedShard::new(meta, chunk_size, chunks, WriteBack::Clean)))
    }

    /// Arena blocks for a `len`-byte shard in chunks of `chunk_size`,
    /// evicting what the policy allows until they fit.
    fn alloc_blocks(&self, len: u64, chunk_size: u32) -> Result<Vec<AlignedBuf>, LoadFailure> {
        let arena = &self.inner.arena;
        if chunk_size > arena.max_block() {
            return Err(too_large(format!(
                "chunks of {chunk_size} bytes exceed the arena's blocks of {}",
                arena.max_block()
            )));
        }
        let chunks = ShardLayout::chunk_count(len, chunk_size);
        let needed: u64 = (0..chunks)
            .map(|i| align_up((len - i * chunk_size as u64).min(chunk_size as u64)))
            .sum();
        if needed > arena.capacity() {
            return Err(too_large(format!(
                "the shard ({len} bytes) is larger than the arena ({} bytes)",
                arena.capacity()
            )));
        }
        let mut blocks = Vec::with_capacity(chunks as usize);
        for i in 0..chunks {
            let size = align_up((len - i * chunk_size as u64).min(chunk_size as u64)).max(ALIGN as u64) as u32;
            loop {
                match arena.alloc(size) {
                    Ok(block) => {
                        blocks.push(block);
                        break;
                    }
                    Err(_) => {
                        if !self.evict_one() {
                            return Err(full("the arena is full of shards in use or not yet flushed"));
                        }
                    }
                }
            }
        }
        Ok(blocks)
    }

    /// Evicts the policy's victim among shards that may go; returns whether
    /// one went.
    fn evict_one(&self) -> bool {
        let victim = {
            let mut state = self.state();
            let State { entries, policy, .. } = &mut *state;
            let victim = policy.victim(|id| match entries.get(id) {
                Some(Slot::Ready(shard)) => shard.leases() == 0 && shard.is_clean(),
                _ => false,
            });
            let Some(id) = victim else {
                return false;
            };
            policy.removed(&id);
            match entries.remove(&id) {
                Some(Slot::Ready(shard)) => shard,
                _ => return false,
            }
        };
        self.inner.stats.evictions.fetch_add(1, Ordering::Relaxed);
        if victim.take_prefetched() {
            self.inner.stats.prefetch_unused.fetch_add(1, Ordering::Relaxed);
        }
        // Dropped here, outside the state lock: its blocks go back to the arena.
        drop(victim);
        true
    }

    /// Arena blocks to receive a put of `len` bytes into (so that they stay
    /// cached after it), or `None` if the arena cannot hold it now.
    pub fn blocks_for_put(&self, len: u64) -> Option<Vec<AlignedBuf>> {
        let chunk_size = self.inner.store.config().chunk_size;
        self.alloc_blocks(len, chunk_size).ok()
    }

    /// Makes `chunks` (arena blocks, as written by a durable put) the cached
    /// copy of the version `meta` describes, unless the arena holds a newer
    /// version of the key already.
    pub fn install(&self, meta: ShardMeta, chunks: Vec<AlignedBuf>) {
        let chunk_size = self.inner.store.config().chunk_size;
        let chunks = chunks.into_iter().map(Arc::new).collect();
        let shard = Arc::new(CachedShard::new(meta, chunk_size, chunks, WriteBack::Clean));
        let mut state = self.state();
        if let Err(newer) = self.replace(&mut state, shard) {
            tracing::debug!(version = newer, "the arena already holds a newer version; not kept");
        }
    }

    /// Puts `shard` in place of what the key has in the arena, unless that
    /// is a newer version (a put that overlapped with this one and was
    /// installed first); returns the version that stays if so.
    fn replace(&self, state: &mut State, shard: Arc<CachedShard>) -> Result<(), u64> {
        let id = (shard.meta.namespace.clone(), shard.meta.key.clone());
        if let Some(Slot::Ready(current)) = state.entries.get(&id) {
            if current.meta.version >= shard.meta.version {
                return Err(current.meta.version);
            }
        }
        let old = state.entries.insert(id.clone(), Slot::Ready(shard));
        state.policy.inserted(id);
        if let Some(Slot::Ready(old)) = &old {
            self.undirty(state, old);
        }
        Ok(())
    }

    /// Forgets a key (after it was deleted from the store, or to drop it).
    /// Returns the removed shard.
    fn forget(&self, namespace: &Namespace, key: &Key) -> Option<Arc<CachedShard>> {
        let id = (namespace.clone(), key.clone());
        let mut state = self.state();
        state.policy.removed(&id);
        match state.entries.remove(&id) {
            Some(Slot::Ready(shard)) => {
                self.undirty(&mut state, &shard);
                Some(shard)
            }
            _ => None,
        }
    }

    /// Drops the cached copy of a key if it is older than `version` (a newer
    /// version was written to the drive without going through the arena).
    pub fn forget_older(&self, namespace: &Namespace, key: &Key, version: u64) {
        let id = (namespace.clone(), key.clone());
        let removed = {
            let mut state = self.state();
            let older = match state.entries.get(&id) {
                Some(Slot::Ready(shard)) => shard.meta.version < version,
                // A load of what was there before: it must not be installed.
                Some(Slot::Loading(_)) => true,
                None => false,
            };
            if !older {
                return;
            }
            state.policy.removed(&id);
            let removed = state.entries.remove(&id);
            if let Some(Slot::Ready(shard)) = &removed {
                self.undirty(&mut state, shard);
            }
            removed
        };
        drop(removed);
    }

    /// The version a new put must exceed beyond the drive's: that of a
    /// shard acknowledged from memory and not yet on the drive.
    pub fn unflushed_version(&self, namespace: &Namespace, key: &Key) -> Option<u64> {
        let state = self.state();
        match state.entries.get(&ShardRef(namespace, key)) {
            Some(Slot::Ready(shard)) if !shard.is_clean() => Some(shard.meta.version),
            _ => None,
        }
    }

    /// Waits, at most `limit`, until a write-back put of `len` bytes fits
    /// the write-back budget, and takes that room: flushes in progress free
    /// it at the drive's pace. `None` at once when `len` is more than the
    /// whole budget or nothing is being flushed or admitted that could free
    /// it; `None` after `limit`.
    ///
    /// Waiting is what keeps a stream of write-back puts (a trainer
    /// swapping out more than the budget) at the drive's pace: writing the
    /// overflow through instead would put its `fdatasync`ed writes on the
    /// drive beside the flushes, each stream slowing the other.
    pub async fn room_for_write_back(&self, len: u64, limit: std::time::Duration) -> Option<WriteBackRoom> {
        let budget = self.inner.config.write_back_memory;
        if len > budget {
            return None;
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let freed = self.inner.write_back_room.notified();
            tokio::pin!(freed);
            // Registered before the check, so room freed between the check
            // and the wait still wakes it.
            freed.as_mut().enable();
            {
                let mut state = self.state();
                if state.unwritten_bytes + state.admitted_bytes + len <= budget {
                    state.admitted_bytes += len;
                    return Some(WriteBackRoom {
                        cache: self.clone(),
                        len,
                    });
                }
                if state.admitted_bytes == 0 && self.inner.flush_tasks.is_empty() {
                    return None;
                }
            }
            tokio::time::timeout_at(deadline, freed).await.ok()?;
        }
    }

    /// Takes `shard` off the write-back bytes not yet on the drive (it was
    /// flushed, replaced or forgotten), gives back the room it still held
    /// in the budget and wakes puts waiting for room. A shard counts once:
    /// a second call takes nothing.
    fn undirty(&self, state: &mut State, shard: &CachedShard) {
        if shard.undirty() {
            state.dirty_bytes = state.dirty_bytes.saturating_sub(shard.meta.len);
        }
        let len = shard.unbudget(u64::MAX);
        if len > 0 {
            state.unwritten_bytes = state.unwritten_bytes.saturating_sub(len);
            self.inner.write_back_room.notify_waiters();
        }
    }

    /// Gives back the room of `len` bytes of scratch `shard` its flush has
    /// written, so that a put waiting for room starts while the rest is
    /// written.
    fn undirty_written(&self, shard: &CachedShard, len: u64) {
        let len = shard.unbudget(len);
        if len > 0 {
            let mut state = self.state();
            state.unwritten_bytes = state.unwritten_bytes.saturating_sub(len);
            drop(state);
            self.inner.write_back_room.notify_waiters();
        }
    }

    /// Installs a write-back shard (its bytes only in the arena) and starts
    /// flushing it to the drive; refused with a version conflict if a put
    /// that overlapped with it stored a newer version first. The put's
    /// version stays reserved until the flush ends, so that a put of the key
    /// that read the arena's versions before this install still ends above.
    /// A `scratch` shard's flush is not synced (`Durability::Scratch`).
    pub fn install_dirty(
        &self,
        meta: ShardMeta,
        chunks: Vec<AlignedBuf>,
        reservation: Reservation,
        scratch: bool,
    ) -> Result<(), StoreError> {
        let chunk_size = self.inner.store.config().chunk_size;
        let chunks = chunks.into_iter().map(Arc::new).collect();
        let shard = Arc::new(CachedShard::new(meta, chunk_size, chunks, WriteBack::Dirty).scratch(scratch));
        {
            let mut state = self.state();
            // A put that overlapped with this one may have stored a newer
            // version meanwhile, on the drive or in the arena: this one must
            // not shadow it.
            let stored = self.inner.store.stat(&shard.meta.namespace, &shard.meta.key).ok();
            let newer = match stored.map(|m| m.version).filter(|&v| v >= shard.meta.version) {
                Some(version) => Err(version),
                None => self.replace(&mut state, shard.clone()),
            };
            if let Err(current) = newer {
                return Err(StoreError::VersionConflict {
                    namespace: shard.meta.namespace.clone(),
                    key: shard.meta.key.clone(),
                    current,
                    message: format!(
                        "version {} is not newer than version {current}, which a concurrent put stored first",
                        shard.meta.version
                    ),
                });
            }
            state.dirty_bytes += shard.meta.len;
            state.unwritten_bytes += shard.meta.len;
        }
        self.inner.stats.write_back_puts.fetch_add(1, Ordering::Relaxed);
        let cache = self.clone();
        self.inner.flush_tasks.spawn(async move {
            cache.flush(shard).await;
            drop(reservation);
        });
        Ok(())
    }

    /// At shutdown: waits up to `budget` for write-back shards to reach the
    /// drive; logs what did not (it is lost when the daemon exits).
    pub async fn finish_write_back(&self, budget: std::time::Duration) {
        let tasks = &self.inner.flush_tasks;
        tasks.close();
        if tokio::time::timeout(budget, tasks.wait()).await.is_err() {
            tracing::error!(
                remaining = tasks.len(),
                "write-back flushes still running after {budget:?}"
            );
        }
        let unflushed: Vec<String> = {
            let state = self.state();
            state
                .entries
                .values()
                .filter_map(|slot| match slot {
                    Slot::Ready(shard) if !shard.is_clean() => Some(format!(
                        "{}/{} v{}",
                        shard.meta.namespace, shard.meta.key, shard.meta.version
                    )),
                    _ => None,
                })
                .collect()
        };
        if !unflushed.is_empty() {
            tracing::error!(
                shards = ?unflushed,
                "write-back shards never reached the drive and are lost at exit"
            );
        }
    }

    /// Whether `shard` is still the cached version of its key.
    fn is_current(&self, shard: &Arc<CachedShard>) -> bool {
        let id = (shard.meta.namespace.clone(), shard.meta.key.clone());
        matches!(self.state().entries.get(&id), Some(Slot::Ready(s)) if Arc::ptr_eq(s, shard))
    }

    /// Writes a write-back shard to the drive, straight from the arena.
    async fn flush(&self, shard: Arc<CachedShard>) {
        let _permit = self.inner.flushes.acquire().await;
        let meta = &shard.meta;
        if !self.is_current(&shard) {
            // Replaced or deleted while waiting its turn: a swap rewritten
            // every step need not reach the drive each time.
            self.inner.stats.flushes_superseded.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let result = self.write_out(&shard).await;
        let current = self.is_current(&shard);
        match result {
            Ok(Some(_)) => {
                shard.set_write_back(WriteBack::Clean);
                self.undirty(&mut self.state(), &shard);
                // Found corrupt after its bytes were written (and checked): the
                // drive has the good copy.
                if shard.is_corrupt() {
                    self.discard_corrupt(&shard, None);
                }
                tracing::debug!(namespace = %meta.namespace, key = %meta.key, version = meta.version, "write-back flushed");
            }
            // Replaced or deleted meanwhile: nothing to keep.
            Ok(None) => {
                self.inner.stats.flushes_superseded.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) if !current => {}
            Err(StoreError::ChecksumMismatch(reason)) => {
                // What was written is not what was acknowledged: the arena's
                // copy changed since the put (the writer checks every byte
                // it writes against the put's CRC32C).
                self.inner.stats.flush_failures.fetch_add(1, Ordering::Relaxed);
                self.discard_corrupt(&shard, Some(&reason));
            }
            Err(e) => {
                self.inner.stats.flush_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    namespace = %meta.namespace, key = %meta.key, version = meta.version, error = %e,
                    "write-back flush failed; the shard is only in memory"
                );
                shard.set_write_back(WriteBack::Failed {
                    status: e.status(),
                    reason: e.to_string(),
                });
            }
        }
    }

    /// Checks the arena's copy of a key (of `version`, if given) against
    /// its CRC32C again; a copy that fails is never served again.
    pub async fn verify(&self, namespace: &Namespace, key: &Key, version: Option<u64>) -> VerifyResponse {
        let shard = match self.state().entries.get(&ShardRef(namespace, key)) {
            Some(Slot::Ready(shard)) if version.is_none_or(|v| v == shard.meta.version) => shard.clone(),
            _ => {
                return VerifyResponse {
                    version: None,
                    outcome: VerifyOutcome::NotResident,
                };
            }
        };
        let version = Some(shard.meta.version);
        // A whole shard at memory speed: milliseconds, off the runtime's threads.
        let check = shard.clone();
        let actual = tokio::task::spawn_blocking(move || check.crc32c())
            .await
            .unwrap_or_else(|_| shard.crc32c());
        if actual == shard.meta.crc32c && !shard.is_corrupt() {
            return VerifyResponse {
                version,
                outcome: VerifyOutcome::Intact,
            };
        }
        let reason = format!(
            "its bytes in memory have CRC32C {actual:#010x}, not {:#010x}",
            shard.meta.crc32c
        );
        VerifyResponse {
            version,
            outcome: self.discard_corrupt(&shard, Some(&reason)),
        }
    }

    /// Takes a copy that failed its checksum out of service: a clean one
    /// leaves the arena (the next fetch reads the drive again); one not on
    /// the drive yet is marked failed, so that fetches answer with the error
    /// instead of its bytes. Counted and logged once per copy.
    fn discard_corrupt(&self, shard: &Arc<CachedShard>, reason: Option<&str>) -> VerifyOutcome {
        let meta = &shard.meta;
        if shard.mark_corrupt() {
            self.inner.stats.checksum_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                namespace = %meta.namespace, key = %meta.key, version = meta.version,
                reason = reason.unwrap_or("unknown"),
                "the arena's copy of a shard failed its checksum (memory corruption); it is not served again"
            );
        }
        let id = (meta.namespace.clone(), meta.key.clone());
        let removed = {
            let mut state = self.state();
            if !shard.is_clean() {
                shard.set_write_back(WriteBack::Failed {
                    status: Status::ChecksumMismatch,
                    reason: "its copy in memory failed its checksum before it reached the drive".into(),
                });
                return VerifyOutcome::Lost;
            }
            if !matches!(state.entries.get(&id), Some(Slot::Ready(s)) if Arc::ptr_eq(s, shard)) {
                return VerifyOutcome::Dropped;
            }
            state.policy.removed(&id);
            state.entries.remove(&id)
        };
        // Its blocks go back once the last lease on it ends.
        drop(removed);
        VerifyOutcome::Dropped
    }

    /// Flips every bit of the byte at `offset` of the arena's copy of a key,
    /// as failing memory would; returns whether the arena holds a copy.
    /// For tests of what follows.
    #[cfg(any(test, feature = "testing"))]
    pub fn corrupt_for_tests(&self, namespace: &Namespace, key: &Key, offset: u64) -> bool {
        let shard = match self.state().entries.get(&ShardRef(namespace, key)) {
            Some(Slot::Ready(shard)) => shard.clone(),
            _ => return false,
        };
        let chunk = (offset / shard.chunk_size() as u64) as usize;
        let within = (offset % shard.chunk_size() as u64) as usize;
        let Some(block) = shard.chunks().get(chunk).filter(|_| within < shard.chunk_len(chunk)) else {
            return false;
        };
        // SAFETY: the byte lies inside the block (checked above), which the
        // shard holds, in the daemon's own writable mapping of the arena; it
        // is changed atomically, so a reader sees the old or the new value.
        unsafe {
            let byte = block.as_ptr().cast_mut().add(within);
            std::sync::atomic::AtomicU8::from_ptr(byte).fetch_xor(0xff, Ordering::SeqCst);
        }
        true
    }

    async fn write_out(&self, shard: &Arc<CachedShard>) -> Result<Option<ShardMeta>, StoreError> {
        let meta = &shard.meta;
        let spec = PutSpec {
            namespace: meta.namespace.clone(),
            key: meta.key.clone(),
            version: Some(meta.version),
            dtype: meta.dtype,
            shape: meta.shape.clone(),
            len: meta.len,
            crc32c: Some(meta.crc32c),
            newer_than: None,
        };
        let mut writer = self.inner.store.begin_put(spec).await?;
        if shard.is_scratch() {
            writer.without_sync();
        }
        for (i, chunk) in shard.chunks().iter().enumerate() {
            if i % 64 == 63 && !self.is_current(shard) {
                // Replaced meanwhile: the rest is not worth writing (the
                // writer's drop removes its temp file).
                return Ok(None);
            }
            match &self.inner.bounce {
                Some(scope) => {
                    let mut buf = writer.next_buffer(scope).await?;
                    buf.fill_padded(&chunk.as_capacity()[..shard.chunk_len(i)]);
                    writer.write_chunk(buf).await?;
                }
                None => {
                    let padded = align_up(shard.chunk_len(i) as u64) as usize;
                    let slice = self.inner.arena.shared_slice(chunk, padded, shard.clone());
                    writer.write_shared_chunk(slice).await?;
                }
            }
            if shard.is_scratch() {
                // Handed to the drive (the writer keeps a few chunks in
                // flight), and never to be synced: as far as a scratch
                // shard's bytes go, so its room goes to the next put.
                self.undirty_written(shard, shard.chunk_len(i) as u64);
            }
        }
        let cache = self.clone();
        let this = shard.clone();
        writer.commit_if(Box::new(move || cache.is_current(&this))).await
    }

    /// Metadata of a key's newest version: the cached one if it is not on the
    /// drive yet, else the store's; and the tier's state of it.
    pub fn stat(
        &self,
        namespace: &Namespace,
        key: &Key,
    ) -> Result<(ShardMeta, shardd_protocol::CacheState), StoreError> {
        let cached = match self.state().entries.get(&ShardRef(namespace, key)) {
            Some(Slot::Ready(shard)) => Some(shard.clone()),
            _ => None,
        };
        match cached {
            Some(shard) if !shard.is_clean() => Ok((shard.meta.clone(), cache_state(&shard))),
            cached => {
                let meta = self.inner.store.stat(namespace, key)?;
                let state = match cached {
                    Some(shard) if shard.meta.version == meta.version => cache_state(&shard),
                    _ => shardd_protocol::CacheState::default(),
                };
                Ok((meta, state))
            }
        }
    }

    /// Shards of `namespace` acknowledged from memory and not yet on the
    /// drive, for listings.
    pub fn unflushed(&self, namespace: &Namespace) -> Vec<ShardMeta> {
        self.state()
            .entries
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .filter_map(|(_, slot)| match slot {
                Slot::Ready(shard) if !shard.is_clean() => Some(shard.meta.clone()),
                _ => None,
            })
            .collect()
    }

    /// Deletes a key everywhere; returns the version removed.
    pub async fn delete(&self, namespace: &Namespace, key: &Key, expected: Option<u64>) -> Result<u64, StoreError> {
        if let Some(version) = self.unflushed_version(namespace, key) {
            if let Some(expected) = expected.filter(|&v| v != version) {
                return Err(StoreError::VersionConflict {
                    namespace: namespace.clone(),
                    key: key.clone(),
                    current: version,
                    message: format!("delete expected version {expected}, the stored version is {version}"),
                });
            }
            self.forget(namespace, key);
            // An older version may be on the drive.
            match self.inner.store.delete(namespace, key, None).await {
                Ok(_) | Err(StoreError::NotFound { .. }) => return Ok(version),
                Err(e) => return Err(e),
            }
        }
        let version = self.inner.store.delete(namespace, key, expected).await?;
        self.forget(namespace, key);
        Ok(version)
    }

    /// Explicit eviction: `Demote` frees the arena copy and keeps the
    /// drive's (flushing first if needed); `Drop` deletes the keys.
    pub async fn evict(&self, namespace: &Namespace, keys: &[Key], mode: EvictMode) -> EvictResponse {
        let mut response = EvictResponse::default();
        for key in keys {
            match mode {
                EvictMode::Drop => match self.delete(namespace, key, None).await {
                    Ok(_) => response.evicted.push(key.clone()),
                    Err(StoreError::NotFound { .. }) => response.not_resident.push(key.clone()),
                    Err(e) => response.failed.push((key.clone(), e.to_string())),
                },
                EvictMode::Demote => match self.demote(namespace, key).await {
                    Demoted::Yes => response.evicted.push(key.clone()),
                    Demoted::NotResident => response.not_resident.push(key.clone()),
                    Demoted::Leased => response.busy.push(key.clone()),
                    Demoted::Failed(reason) => response.failed.push((key.clone(), reason)),
                },
            }
        }
        response
    }

    async fn demote(&self, namespace: &Namespace, key: &Key) -> Demoted {
        let id = (namespace.clone(), key.clone());
        let shard = match self.state().entries.get(&id) {
            Some(Slot::Ready(shard)) => shard.clone(),
            Some(Slot::Loading(_)) => return Demoted::Leased,
            None => return Demoted::NotResident,
        };
        if shard.write_back() == WriteBack::Dirty {
            // Make the drive's copy first: flush now and wait for it.
            match self.write_out(&shard).await {
                Ok(Some(_)) => {
                    shard.set_write_back(WriteBack::Clean);
                    self.undirty(&mut self.state(), &shard);
                }
                Ok(None) => return Demoted::NotResident,
                // A concurrent background flush may have published it already.
                Err(StoreError::VersionConflict { current, .. }) if current >= shard.meta.version => {
                    shard.set_write_back(WriteBack::Clean);
                }
                Err(e) => return Demoted::Failed(e.to_string()),
            }
        }
        if let WriteBack::Failed { reason, .. } = shard.write_back() {
            return Demoted::Failed(format!("the shard is not on the drive: {reason}"));
        }
        let mut state = self.state();
        if shard.leases() > 0 {
            return Demoted::Leased;
        }
        if matches!(state.entries.get(&id), Some(Slot::Ready(s)) if Arc::ptr_eq(s, &shard)) {
            state.entries.remove(&id);
            state.policy.removed(&id);
            self.inner.stats.demoted.fetch_add(1, Ordering::Relaxed);
        }
        Demoted::Yes
    }

    /// Registers the step order of `namespace` for the schedule policy.
    pub fn set_schedule(&self, namespace: Namespace, order: &[Key]) {
        self.state().policy.set_schedule(namespace, order);
    }

    /// Queues prefetches (see [`prefetch`]).
    pub fn prefetch(
        &self,
        namespace: &Namespace,
        items: Vec<shardd_protocol::PrefetchItem>,
    ) -> shardd_protocol::PrefetchResponse {
        prefetch::enqueue(self, namespace, items)
    }

    /// Whether `id` is resident or loading.
    fn present(&self, id: &ShardId) -> bool {
        self.state().entries.contains_key(id)
    }

    /// Starts loading `id` for a prefetch unless it is present; returns the
    /// load to run, if any.
    fn begin_prefetch(&self, id: &ShardId) -> Option<Arc<Loading>> {
        let mut state = self.state();
        if state.entries.contains_key(id) {
            return None;
        }
        let loading = Loading::new(true);
        state.entries.insert(id.clone(), Slot::Loading(loading.clone()));
        Some(loading)
    }

    /// The tier's counters and sizes.
    pub fn status(&self) -> ArenaStatus {
        let (resident_shards, resident_bytes, dirty_bytes, leased_shards) = {
            let state = self.state();
            let ready = state.entries.values().filter_map(|slot| match slot {
                Slot::Ready(shard) => Some(shard),
                Slot::Loading(_) => None,
            });
            let (n, bytes, leased) = ready.fold((0u64, 0u64, 0u64), |(n, b, l), s| {
                (n + 1, b + s.meta.len, l + u64::from(s.leases() > 0))
            });
            (n, bytes, state.dirty_bytes, leased)
        };
        let arena = &self.inner.arena;
        let stats = &self.inner.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ArenaStatus {
            capacity_bytes: arena.capacity(),
            used_bytes: arena.used(),
            locked_bytes: arena.locked().bytes,
            fixed_buffers: self.inner.store.engine().fixed_buffers(),
            policy: self.inner.config.policy.name().to_string(),
            resident_shards,
            resident_bytes,
            dirty_bytes,
            leased_shards,
            hits: get(&stats.hits),
            misses: get(&stats.misses),
            bypassed: get(&stats.bypassed),
            loads: get(&stats.loads),
            evictions: get(&stats.evictions),
            demoted: get(&stats.demoted),
            prefetch_queued: get(&stats.prefetch_queued),
            prefetch_completed: get(&stats.prefetch_completed),
            prefetch_late: get(&stats.prefetch_late),
            prefetch_unused: get(&stats.prefetch_unused),
            write_back_puts: get(&stats.write_back_puts),
            flush_failures: get(&stats.flush_failures),
            flushes_superseded: get(&stats.flushes_superseded),
            checksum_failures: get(&stats.checksum_failures),
        }
    }
}

enum Demoted {
    Yes,
    NotResident,
    Leased,
    Failed(String),
}

fn cache_state(shard: &CachedShard) -> shardd_protocol::CacheState {
    let (dirty, flush_error) = match shard.write_back() {
        WriteBack::Clean => (false, None),
        WriteBack::Dirty => (true, None),
        WriteBack::Failed { reason, .. } => (true, Some(reason)),
    };
    shardd_protocol::CacheState {
        resident: true,
        dirty,
        flush_error,
    }
}

fn flush_failed(meta: &ShardMeta, status: Status, reason: &str) -> StoreError {
    StoreError::Other {
        status,
        message: format!(
            "{}/{} version {}: the write-back to the drive failed ({reason}); put the shard again",
            meta.namespace, meta.key, meta.version
        ),
    }
}

#[cfg(test)]
mod tests;
