//! What stays in the arena: placing shards (evicting what the policy
//! allows), installing and forgetting versions, stat, delete and explicit
//! eviction.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use shardd_protocol::{EvictMode, EvictResponse, Key, Namespace, ShardMeta};

use super::load::{LoadFailure, full, too_large};
use super::policy::{Schedule, ShardRef};
use super::{Cache, CachedShard, Slot, State, WriteBack};
use crate::io::{ALIGN, AlignedBuf, align_up};
use crate::store::StoreError;
use crate::store::format::ShardLayout;

impl Cache {
    /// Arena blocks for a `len`-byte shard of `namespace` in chunks of
    /// `chunk_size`, evicting what the policy allows until they fit: first
    /// the namespace's own shards while it would pass its arena share
    /// (`max_arena_bytes`), then any.
    pub(super) fn alloc_blocks(
        &self,
        namespace: &Namespace,
        len: u64,
        chunk_size: u32,
    ) -> Result<Vec<AlignedBuf>, LoadFailure> {
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
        self.make_room_in_share(namespace, needed)?;
        // One range of the arena when a run of whole blocks is free and its
        // last block (a whole one, for the shard's tail) wastes at most an
        // eighth of the shard: a view of it is then one extent.
        let whole = chunks * chunk_size as u64;
        if chunks > 1 && chunk_size == arena.max_block() && (whole - needed) * 8 <= len {
            if let Some(run) = arena.alloc_run(chunks as u32) {
                self.inner.stats.contiguous.fetch_add(1, Ordering::Relaxed);
                return Ok(run);
            }
            self.inner.stats.scattered.fetch_add(1, Ordering::Relaxed);
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

    /// Evicts `namespace`'s own shards until it holds at most its arena
    /// share less `needed` bytes; an error naming the share if they cannot
    /// go (in use, or not yet flushed).
    fn make_room_in_share(&self, namespace: &Namespace, needed: u64) -> Result<(), LoadFailure> {
        let Some(crate::service::quota::Quota { max, source }) = self.inner.quotas.limits(namespace).arena else {
            return Ok(());
        };
        if needed > max {
            return Err(too_large(format!(
                "the shard ({needed} bytes in the arena) is larger than namespace {namespace}'s arena share \
                 ({max} bytes, {source})"
            )));
        }
        loop {
            let held: u64 = {
                let state = self.state();
                state
                    .entries
                    .iter()
                    .filter(|(id, _)| id.0 == *namespace)
                    .map(|(_, slot)| match slot {
                        Slot::Ready(shard) => shard.meta.len,
                        Slot::Loading(_) => 0,
                    })
                    .sum()
            };
            if held + needed <= max {
                return Ok(());
            }
            if !self.evict_one_where(|id| id.0 == *namespace) {
                return Err(full(format!(
                    "namespace {namespace}'s arena share is full ({held} of {max} bytes, {source}) \
                     of shards in use or not yet flushed"
                )));
            }
        }
    }

    /// Evicts the policy's victim among shards that may go; returns whether
    /// one went.
    fn evict_one(&self) -> bool {
        self.evict_one_where(|_| true)
    }

    /// Evicts the policy's victim among shards that may go and that `among`
    /// picks; returns whether one went.
    fn evict_one_where(&self, among: impl Fn(&super::policy::ShardId) -> bool) -> bool {
        let victim = {
            let mut state = self.state();
            let State { entries, policy, .. } = &mut *state;
            let victim = policy.victim(|id| match entries.get(id) {
                Some(Slot::Ready(shard)) => among(id) && shard.leases() == 0 && shard.is_clean(),
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
    pub fn blocks_for_put(&self, namespace: &Namespace, len: u64) -> Option<Vec<AlignedBuf>> {
        let chunk_size = self.inner.store.config().chunk_size;
        self.alloc_blocks(namespace, len, chunk_size).ok()
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
    pub(super) fn replace(&self, state: &mut State, shard: Arc<CachedShard>) -> Result<(), u64> {
        let id = (shard.meta.namespace.clone(), shard.meta.key.clone());
        if let Some(Slot::Ready(current)) = state.entries.get(&id)
            && current.meta.version >= shard.meta.version
        {
            return Err(current.meta.version);
        }
        let old = state.entries.insert(id.clone(), Slot::Ready(shard));
        state.policy.inserted(id);
        if let Some(Slot::Ready(old)) = &old {
            self.undirty(state, old);
        }
        Ok(())
    }

    /// Forgets a key (after it was deleted from the store, or to drop it).
    /// Returns the removed shard, whose blocks are zeroed once freed.
    pub(super) fn forget(&self, namespace: &Namespace, key: &Key) -> Option<Arc<CachedShard>> {
        let id = (namespace.clone(), key.clone());
        let mut state = self.state();
        state.policy.removed(&id);
        match state.entries.remove(&id) {
            Some(Slot::Ready(shard)) => {
                self.undirty(&mut state, &shard);
                drop(state);
                self.inner.arena.scrub_on_free(shard.chunks().iter().map(|c| &**c));
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
        if let Some(Slot::Ready(shard)) = &removed {
            self.inner.arena.scrub_on_free(shard.chunks().iter().map(|c| &**c));
        }
        drop(removed);
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
            // Hints still waiting for the key would bring it back.
            self.inner.prefetch.forget(&(namespace.clone(), key.clone()));
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
        let shard = loop {
            let loading = match self.state().entries.get(&id) {
                Some(Slot::Ready(shard)) => break shard.clone(),
                Some(Slot::Loading(loading)) => loading.clone(),
                None => return Demoted::NotResident,
            };
            // A load is no reader: a prefetch hint (or a fetch) is reading
            // the shard in. Let it end, then demote what it left; a fetch
            // still sending it holds a lease, and that answers "in use".
            loading.finished().await;
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
        if shard.is_listed() {
            state.entries.remove(&id);
            state.policy.removed(&id);
            self.inner.stats.demoted.fetch_add(1, Ordering::Relaxed);
        }
        Demoted::Yes
    }

    /// Registers the step order of `namespace` for the schedule policy (an
    /// empty order removes it), unless all schedules together would then
    /// hold more than `arena.max_schedule_keys` keys. The order is indexed
    /// before the lock is taken, and the one it replaces dropped after.
    pub fn set_schedule(&self, namespace: Namespace, order: &[Key]) -> Result<(), StoreError> {
        let max = self.inner.config.max_schedule_keys;
        let schedule = (!order.is_empty()).then(|| Schedule::new(order));
        let installed = self.state().policy.install_schedule(namespace, schedule, max);
        match installed {
            Ok(replaced) => {
                drop(replaced);
                Ok(())
            }
            Err(others) => Err(StoreError::Other {
                status: shardd_protocol::Status::TooLarge,
                message: format!(
                    "a schedule of {} keys would bring all schedules to {} keys, above arena.max_schedule_keys ({max})",
                    order.len(),
                    others + order.len() as u64
                ),
            }),
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
