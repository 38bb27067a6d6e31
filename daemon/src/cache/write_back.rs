//! Write-back: shards acknowledged once in the arena, flushed to the drive
//! in the background within a budget of bytes not yet written.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use shardd_protocol::{Key, Namespace, ShardMeta};

use super::policy::ShardRef;
use super::{Cache, CachedShard, Slot, State, WriteBack};
use crate::io::{AlignedBuf, align_up};
use crate::store::versions::Reservation;
use crate::store::{PutSpec, StoreError};

/// How long after a failed write-back flush it is tried again; doubled
/// after each failure up to [`FLUSH_RETRY_MAX`].
pub const FLUSH_RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(1);
/// The longest wait between tries of a failed flush.
pub const FLUSH_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(60);

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

impl Cache {
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

    /// Bytes of write-back puts acknowledged or admitted and not yet on a
    /// drive.
    pub fn unflushed_bytes(&self) -> u64 {
        let state = self.state();
        state.unwritten_bytes + state.admitted_bytes
    }

    /// Takes `shard` off the write-back bytes not yet on the drive (it was
    /// flushed, replaced or forgotten), gives back the room it still held
    /// in the budget and wakes puts waiting for room. A shard counts once:
    /// a second call takes nothing.
    pub(super) fn undirty(&self, state: &mut State, shard: &CachedShard) {
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
    pub(super) fn undirty_written(&self, shard: &CachedShard, len: u64) {
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
        // Failed flushes waiting to be tried again are tried once more now.
        self.inner.stopping.cancel();
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
    pub(super) fn is_current(&self, shard: &Arc<CachedShard>) -> bool {
        let _state = self.state();
        shard.is_listed()
    }

    /// Writes a write-back shard to the drive, straight from the arena. A
    /// flush that fails (a drive error, no space) marks the shard failed,
    /// which stat and fetch report, and is tried again after
    /// [`FLUSH_RETRY_FIRST`], backing off to [`FLUSH_RETRY_MAX`], while the
    /// shard is the key's current version: a drive marked failed meanwhile
    /// is no longer chosen, and space may come back. The daemon's stop makes
    /// one last try of each.
    async fn flush(&self, shard: Arc<CachedShard>) {
        let mut delay = FLUSH_RETRY_FIRST;
        let mut failed = false;
        loop {
            let permit = self.inner.flushes.acquire().await;
            if !self.is_current(&shard) {
                // Replaced or deleted while waiting its turn: a swap rewritten
                // every step need not reach the drive each time.
                self.inner.stats.flushes_superseded.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if failed {
                self.inner.stats.flush_retries.fetch_add(1, Ordering::Relaxed);
            }
            let result = self.write_out(&shard).await;
            drop(permit);
            let Some(error) = self.settle(&shard, result) else {
                if failed && shard.is_clean() {
                    self.inner.stats.flushes_recovered.fetch_add(1, Ordering::Relaxed);
                    let meta = &shard.meta;
                    tracing::info!(
                        namespace = %meta.namespace, key = %meta.key, version = meta.version,
                        "write-back flush succeeded when tried again; the shard is on a drive"
                    );
                }
                return;
            };
            let meta = &shard.meta;
            if !failed {
                failed = true;
                self.inner.stats.flush_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    namespace = %meta.namespace, key = %meta.key, version = meta.version, error = %error,
                    "write-back flush failed; the shard is only in memory; trying again in {delay:?}"
                );
                // The first failure is the one reported, however the next
                // tries fail.
                shard.set_write_back(WriteBack::Failed {
                    status: error.status(),
                    reason: error.to_string(),
                });
            } else {
                tracing::debug!(
                    namespace = %meta.namespace, key = %meta.key, error = %error,
                    "write-back flush failed again; trying again in {delay:?}"
                );
            }
            if self.inner.stopping.is_cancelled() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.inner.stopping.cancelled() => {}
            }
            delay = (delay * 2).min(FLUSH_RETRY_MAX);
        }
    }

    /// Applies the outcome of writing `shard` out; the error if it is worth
    /// trying again.
    fn settle(&self, shard: &Arc<CachedShard>, result: Result<Option<ShardMeta>, StoreError>) -> Option<StoreError> {
        let meta = &shard.meta;
        let current = self.is_current(shard);
        match result {
            Ok(Some(_)) => {
                shard.set_write_back(WriteBack::Clean);
                self.undirty(&mut self.state(), shard);
                // Found corrupt after its bytes were written (and checked): the
                // drive has the good copy.
                if shard.is_corrupt() {
                    self.discard_corrupt(shard, None);
                }
                tracing::debug!(namespace = %meta.namespace, key = %meta.key, version = meta.version, "write-back flushed");
                None
            }
            // Replaced or deleted meanwhile: nothing to keep.
            Ok(None) => {
                self.inner.stats.flushes_superseded.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(_) if !current => None,
            // A demote of the shard wrote it first (its own write-out, which
            // it waits for): this version is on the drive already.
            Err(StoreError::VersionConflict { current: stored, .. }) if stored >= meta.version => {
                shard.set_write_back(WriteBack::Clean);
                self.undirty(&mut self.state(), shard);
                None
            }
            Err(StoreError::ChecksumMismatch(reason)) => {
                // What was written is not what was acknowledged: the arena's
                // copy changed since the put (the writer checks every byte
                // it writes against the put's CRC32C).
                self.inner.stats.flush_failures.fetch_add(1, Ordering::Relaxed);
                self.discard_corrupt(shard, Some(&reason));
                None
            }
            Err(e) => Some(e),
        }
    }

    pub(super) async fn write_out(&self, shard: &Arc<CachedShard>) -> Result<Option<ShardMeta>, StoreError> {
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
}
