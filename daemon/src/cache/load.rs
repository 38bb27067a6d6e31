//! Loads into the arena: a fetch that misses starts one, concurrent fetches
//! (and a prefetch of the same shard) share it, and a fetch over the socket
//! follows it chunk by chunk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use shardd_protocol::{Key, Namespace, ShardMeta, Status};
use tokio::sync::watch;

use super::policy::{ShardId, ShardRef};
use super::{Cache, CachedShard, Lease, Lookup, Slot, State, WriteBack};
use crate::io::AlignedBuf;
use crate::store::StoreError;

type LoadResult = Result<Arc<CachedShard>, LoadFailure>;

/// How a fetch begins.
enum Begin {
    Hit(Lease),
    Join(Arc<Loading>),
    Load(ShardId, Arc<Loading>),
}

/// Why a load did not produce a cached shard (cloneable for every waiter).
#[derive(Clone, Debug)]
pub(super) enum LoadFailure {
    Bypass { reason: String, too_large: bool },
    Error { status: Status, message: String },
}

pub(super) fn full(reason: impl Into<String>) -> LoadFailure {
    LoadFailure::Bypass {
        reason: reason.into(),
        too_large: false,
    }
}

pub(super) fn too_large(reason: String) -> LoadFailure {
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

/// What a fetch of a resident shard leaves for the next fetch of the same
/// member (a kept batch's, [`Cache::try_hit_held`]). It does not hold the
/// shard: once evicted its memory goes back as it would.
#[derive(Debug)]
pub struct ResidentHandle {
    shard: Weak<CachedShard>,
    /// Its slot in the policy, which stays its own while it is listed.
    slot: u32,
}

/// A load in progress; fetches watch its progress and result.
#[derive(Debug)]
pub(super) struct Loading {
    progress: watch::Sender<Progress>,
    by_prefetch: bool,
    /// A fetch has joined it (so a prefetched shard counts as used).
    joined: AtomicBool,
}

impl Loading {
    pub(super) fn new(by_prefetch: bool) -> Arc<Loading> {
        Arc::new(Loading {
            progress: watch::channel(Progress::default()).0,
            by_prefetch,
            joined: AtomicBool::new(false),
        })
    }

    /// Waits until the load is over, however it ended.
    pub(super) async fn finished(&self) {
        let _ = Loading::result(self.progress.subscribe()).await;
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

impl Cache {
    /// The shard for a fetch if it is resident now: `None` when it is not
    /// (the caller then uses [`Cache::fetch`], which loads it). Never waits.
    pub fn try_hit(&self, namespace: &Namespace, key: &Key, access: Access) -> Option<Result<Lease, StoreError>> {
        let mut state = self.state();
        let hit = Self::hit_locked(&mut state, ShardRef(namespace, key), access);
        drop(state);
        self.counted(hit)
    }

    /// [`Cache::try_hit`] of each of `ids` (a fetch batch's members), under
    /// one taking of the cache's lock.
    pub fn try_hit_many<'a>(
        &self,
        ids: impl Iterator<Item = Option<ShardRef<'a>>>,
    ) -> Vec<Option<Result<Lease, StoreError>>> {
        let mut state = self.state();
        let hits: Vec<_> = ids
            .map(|id| Some(Self::hit_locked(&mut state, id?, Access::Fetch)?.0))
            .collect();
        drop(state);
        self.fetch_hits(hits)
    }

    /// [`Cache::try_hit_many`] of members fetched again and again (a kept
    /// batch's), each with its handle from the last time: a member whose
    /// shard is still its key's entry is taken through its handle, without
    /// looking its key up; the others are looked up, and their handles
    /// renewed (or cleared on a miss).
    pub fn try_hit_held<'a>(
        &self,
        ids: impl Iterator<Item = Option<ShardRef<'a>>>,
        handles: &mut [Option<ResidentHandle>],
    ) -> Vec<Option<Result<Lease, StoreError>>> {
        let mut state = self.state();
        let hits: Vec<_> = ids
            .zip(handles.iter_mut())
            .map(|(id, handle)| {
                let id = id?;
                let held = handle.as_ref().and_then(|h| Some((h.shard.upgrade()?, h.slot)));
                if let Some((shard, slot)) = held.filter(|(shard, _)| shard.is_listed()) {
                    let hit = Self::served(shard);
                    if hit.is_ok() {
                        state.policy.accessed_at(id, slot);
                    }
                    return Some(hit);
                }
                *handle = None;
                let Some(Slot::Ready(shard)) = state.entries.get(&id) else {
                    return None;
                };
                let hit = Self::served(shard.clone());
                if let Ok(lease) = &hit {
                    *handle = state.policy.accessed(id).map(|slot| ResidentHandle {
                        shard: Arc::downgrade(lease.shard()),
                        slot,
                    });
                }
                Some(hit)
            })
            .collect();
        drop(state);
        self.fetch_hits(hits)
    }

    /// A hit on `id` under the cache's lock: its lease, with the access
    /// told to the policy (a fetch's, not a view's); the hit is counted by
    /// [`Cache::counted`] once the lock is given back.
    fn hit_locked(state: &mut State, id: ShardRef<'_>, access: Access) -> Option<(Result<Lease, StoreError>, Access)> {
        let Some(Slot::Ready(shard)) = state.entries.get(&id) else {
            return None;
        };
        let hit = Self::served(shard.clone());
        if hit.is_ok() && access == Access::Fetch {
            state.policy.accessed(id);
        }
        Some((hit, access))
    }

    /// A lease on a resident `shard`, or why it cannot be served.
    fn served(shard: Arc<CachedShard>) -> Result<Lease, StoreError> {
        if let WriteBack::Failed { status, reason } = shard.write_back() {
            return Err(flush_failed(&shard.meta, status, &reason));
        }
        Ok(Lease::new(shard))
    }

    /// Counts the hits of fetches found under the cache's lock, once it
    /// is given back.
    fn fetch_hits(&self, hits: Vec<Option<Result<Lease, StoreError>>>) -> Vec<Option<Result<Lease, StoreError>>> {
        let mut served = 0;
        for lease in hits.iter().flatten().flatten() {
            served += 1;
            lease.take_prefetched();
        }
        self.inner.stats.hits.fetch_add(served, Ordering::Relaxed);
        hits
    }

    fn counted(&self, hit: Option<(Result<Lease, StoreError>, Access)>) -> Option<Result<Lease, StoreError>> {
        let (hit, access) = hit?;
        if let Ok(lease) = &hit {
            if access == Access::Fetch {
                self.inner.stats.hits.fetch_add(1, Ordering::Relaxed);
            }
            lease.take_prefetched();
        }
        Some(hit)
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
                self.inner.load_tasks.spawn(async move { cache.load(id, load).await });
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
    pub(super) async fn load(&self, id: ShardId, loading: Arc<Loading>) -> LoadResult {
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
        let blocks = self.alloc_blocks(&id.0, meta.len, chunk_size)?;
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
}

pub(super) fn flush_failed(meta: &ShardMeta, status: Status, reason: &str) -> StoreError {
    StoreError::Other {
        status,
        message: format!(
            "{}/{} version {}: the write-back to the drive failed ({reason}); put the shard again",
            meta.namespace, meta.key, meta.version
        ),
    }
}
