//! The put path: stream chunks into a temp file, then publish it.
//!
//! 1. `ShardWriter::begin` validates the request, checks the version and
//!    reserves it until the put ends (see [`super::versions`]), picks a
//!    data dir with room, creates `tmp/<id>.partial` and reserves its full
//!    size (a full disk is reported before any byte is written).
//! 2. [`ShardWriter::write_chunk`] checksums each chunk and writes it at
//!    its place, keeping a few writes in flight.
//! 3. [`ShardWriter::commit`] waits for the writes, checks the sender's
//!    checksum, writes the header, `fdatasync`s, and then, under the key's
//!    lock, renames the file into place (over the previous version when that
//!    lives in the same dir) and fsyncs the directory. Only then is the put
//!    acknowledged.
//!
//! A writer dropped before commit removes its temp file.

use std::collections::VecDeque;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

use shardd_protocol::{MAX_CHOSEN_VERSION, ShardMeta, codec};

use super::buffers::BufferScope;
use super::crc::CrcCombiner;
use super::dir::{self, FileId};
use super::format::{self, ShardLayout};
use super::index::ShardEntry;
use super::metrics::IoOp;
use super::versions::Reservation;
use super::{PutSpec, Store, StoreError};
use crate::io::{AlignedBuf, Completion, SharedSlice, fs};

/// A put in progress.
#[derive(Debug)]
pub struct ShardWriter {
    store: Store,
    spec: PutSpec,
    version: u64,
    /// Holds `version` for this put until it is dropped.
    _reservation: Reservation,
    dir: usize,
    file_id: FileId,
    temp_path: PathBuf,
    file: Arc<File>,
    layout: ShardLayout,
    crc: u32,
    /// Folds a full chunk's CRC into `crc`.
    full_chunk: CrcCombiner,
    received: u64,
    pending: VecDeque<Completion>,
    /// With `keep_chunks`: the written chunk buffers, in order.
    kept: Option<Vec<AlignedBuf>>,
    failed: Option<StoreError>,
    published: bool,
    /// Whether commit syncs the file and its directory (false: scratch).
    sync: bool,
}

/// A condition checked under the key's lock right before publishing.
pub type PublishCondition = Box<dyn FnOnce() -> bool + Send>;

impl ShardWriter {
    pub(super) async fn begin(store: Store, spec: PutSpec) -> Result<ShardWriter, StoreError> {
        let reservation = check_put(&store, &spec)?;
        let version = reservation.version();
        let config = store.config();
        let current = store.inner.index.get(&spec.namespace, &spec.key);
        let chunk_size = config.chunk_size;
        let chunks = ShardLayout::chunk_count(spec.len, chunk_size);
        let meta_len = codec::encode(&spec.meta(version, 0))
            .map_err(|e| StoreError::BadRequest(e.to_string()))?
            .len();
        let payload_offset = ShardLayout::header_len(meta_len, chunks);
        let file_len = ShardLayout::file_len(payload_offset, spec.len);

        // Prefer the dir of the current version (so the new file replaces it
        // with one rename), else spread keys over dirs by hash.
        let dirs = &store.inner.dirs;
        let preferred = current.as_ref().map(|e| e.dir).unwrap_or_else(|| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            spec.namespace.hash(&mut h);
            spec.key.hash(&mut h);
            h.finish() as usize % dirs.len()
        });
        let min_free = config.min_free_bytes;
        // Failed drives take no new shards.
        let candidates: Vec<(usize, PathBuf)> = dirs
            .iter()
            .filter(|d| !d.health.is_failed())
            .map(|d| (d.index, d.path.clone()))
            .collect();
        if candidates.is_empty() {
            let failed: Vec<String> = dirs.iter().map(|d| d.path.display().to_string()).collect();
            return Err(StoreError::io(
                format!("every data dir failed ({})", failed.join(", ")),
                std::io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        let dir = fs::blocking(move || choose_dir(&candidates, preferred, file_len, min_free))
            .await
            .map_err(|e| StoreError::io("read free space of the data dirs", e))?
            .map_err(StoreError::NoSpace)?;

        let data_dir = &dirs[dir];
        let file_id = data_dir.new_file_id();
        let temp_path = data_dir.temp_path(file_id);
        let direct = data_dir.direct_io;
        let path = temp_path.clone();
        let file = fs::blocking(move || {
            let file = fs::create_new(&path, direct)?;
            if let Err(e) = fs::preallocate(&file, file_len) {
                let _ = fs::remove_file(&path);
                return Err(e);
            }
            Ok(file)
        })
        .await
        .map_err(|e| {
            store.io_failed(dir, IoOp::Metadata, &e);
            StoreError::io(format!("create {}", temp_path.display()), e)
        })?;

        Ok(ShardWriter {
            store,
            spec,
            version,
            _reservation: reservation,
            dir,
            file_id,
            temp_path,
            file: Arc::new(file),
            layout: ShardLayout {
                payload_offset,
                chunk_size,
                chunk_crcs: Vec::with_capacity(chunks as usize),
            },
            crc: 0,
            full_chunk: CrcCombiner::new(chunk_size as u64),
            received: 0,
            pending: VecDeque::new(),
            kept: None,
            failed: None,
            published: false,
            sync: true,
        })
    }

    /// The version this put stores.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Length of the next chunk to write (0 when all bytes are in).
    pub fn next_chunk_len(&self) -> usize {
        (self.spec.len - self.received).min(self.layout.chunk_size as u64) as usize
    }

    /// A buffer for the next chunk, taken under `scope`'s budget. When the
    /// budget is spent, waits for this put's own oldest write to finish
    /// (which frees its buffer) rather than for other requests, so that a
    /// put never waits on budget only it could release.
    pub async fn next_buffer(&mut self, scope: &BufferScope) -> Result<AlignedBuf, StoreError> {
        let size = self.layout.chunk_size as usize;
        loop {
            let buffers = self.store.buffers();
            if let Some(buf) = buffers.try_take(scope, size) {
                return Ok(buf);
            }
            if self.pending.is_empty() {
                return Ok(buffers.take(scope, size).await);
            }
            self.wait_oldest().await?;
        }
    }

    /// Commits without `fdatasync` and without syncing the directory: the
    /// put is scratch (see `Durability::Scratch`). The store remembers to
    /// sync its file systems at a graceful stop.
    pub fn without_sync(&mut self) {
        self.sync = false;
    }

    /// Keeps the chunk buffers after they are written, for
    /// [`Self::commit_keeping_chunks`] (a put into the arena keeps its
    /// blocks as the cached copy).
    pub fn keep_chunks(&mut self) {
        self.kept = Some(Vec::new());
    }

    /// Writes the next chunk: `buf` must hold exactly [`Self::next_chunk_len`]
    /// bytes (its capacity may be larger). After an error every further chunk
    /// is discarded and the error is returned again by [`Self::commit`].
    pub async fn write_chunk(&mut self, mut buf: AlignedBuf) -> Result<(), StoreError> {
        let (offset, want) = self.account_chunk(buf.as_slice())?;
        let padded = buf.zero_pad();
        debug_assert!(padded >= want);
        let completion = self.store.engine().write(&self.file, offset, buf, padded);
        self.queue(completion).await
    }

    /// Writes the next chunk straight from shared memory (a cached shard):
    /// the slice holds the chunk's bytes and then zeros up to the next
    /// [`crate::io::ALIGN`] boundary.
    pub async fn write_shared_chunk(&mut self, slice: SharedSlice) -> Result<(), StoreError> {
        let want = self.next_chunk_len();
        let (offset, _) = self.account_chunk(&slice.as_slice()[..want.min(slice.len())])?;
        let padded = slice.len();
        let completion = self.store.engine().write_shared(&self.file, offset, slice, padded);
        self.queue(completion).await
    }

    /// Checks the chunk's length, folds its checksum in; returns where it
    /// goes and its length.
    fn account_chunk(&mut self, bytes: &[u8]) -> Result<(u64, usize), StoreError> {
        if let Some(e) = &self.failed {
            return Err(StoreError::BadRequest(format!("put already failed: {e}")));
        }
        let want = self.next_chunk_len();
        if bytes.len() != want || want == 0 {
            let e = StoreError::BadRequest(format!("chunk of {} bytes where {want} were expected", bytes.len()));
            self.failed = Some(StoreError::BadRequest(e.to_string()));
            return Err(e);
        }
        let chunk_crc = crc32c::crc32c(bytes);
        self.layout.chunk_crcs.push(chunk_crc);
        let combiner = if want == self.layout.chunk_size as usize {
            self.full_chunk
        } else {
            CrcCombiner::new(want as u64)
        };
        self.crc = combiner.combine(self.crc, chunk_crc);
        let offset = self.layout.payload_offset + self.received;
        self.received += want as u64;
        Ok((offset, want))
    }

    async fn queue(&mut self, completion: Completion) -> Result<(), StoreError> {
        self.pending.push_back(completion);
        while self.pending.len() >= self.store.config().chunks_in_flight.max(1) {
            self.wait_oldest().await?;
        }
        Ok(())
    }

    async fn wait_oldest(&mut self) -> Result<(), StoreError> {
        let Some(completion) = self.pending.pop_front() else {
            return Ok(());
        };
        let submitted = completion.submitted();
        let outcome = completion.await;
        let metrics = self.store.metrics();
        match &outcome.result {
            Ok(written) => metrics.written(self.dir, *written, submitted),
            Err(e) => self.store.io_failed(self.dir, IoOp::Write, e),
        }
        if let Some(kept) = &mut self.kept {
            kept.push(outcome.buf);
        }
        if let Err(e) = outcome.result {
            let context = format!("write {}", self.temp_path.display());
            self.failed = Some(StoreError::io(context.clone(), io_clone(&e)));
            return Err(StoreError::io(context, e));
        }
        Ok(())
    }

    /// Finishes the put: see the module documentation. Returns what is stored.
    pub async fn commit(self) -> Result<ShardMeta, StoreError> {
        let (meta, _) = self.commit_keeping_chunks().await?;
        Ok(meta)
    }

    /// Like [`Self::commit`], and returns the chunk buffers kept since
    /// [`Self::keep_chunks`], in order, their lengths the chunks' lengths.
    pub async fn commit_keeping_chunks(self) -> Result<(ShardMeta, Vec<AlignedBuf>), StoreError> {
        self.finish(None)
            .await?
            .ok_or_else(|| StoreError::io("publish", std::io::Error::other("unconditional publish skipped")))
    }

    /// Like [`Self::commit`], but publishes only if `condition` holds when
    /// checked under the key's lock (deletes and other puts of the key take
    /// the same lock); `None` when it did not, and nothing was published.
    pub async fn commit_if(self, condition: PublishCondition) -> Result<Option<ShardMeta>, StoreError> {
        Ok(self.finish(Some(condition)).await?.map(|(meta, _)| meta))
    }

    async fn finish(
        mut self,
        condition: Option<PublishCondition>,
    ) -> Result<Option<(ShardMeta, Vec<AlignedBuf>)>, StoreError> {
        while !self.pending.is_empty() {
            // Keep waiting after an error: buffers must come back before the
            // temp file is removed.
            let _ = self.wait_oldest().await;
        }
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if self.received != self.spec.len {
            return Err(StoreError::BadRequest(format!(
                "put ended after {} of {} bytes",
                self.received, self.spec.len
            )));
        }
        if let Some(expected) = self.spec.crc32c
            && expected != self.crc
        {
            return Err(StoreError::ChecksumMismatch(format!(
                "{}/{}: the sender's CRC32C {expected:#010x} does not match the received bytes' {:#010x}",
                self.spec.namespace, self.spec.key, self.crc
            )));
        }
        let meta = self.spec.meta(self.version, self.crc);
        let header = format::encode_header(&meta, &self.layout)
            .map_err(|e| StoreError::io("encode shard header", std::io::Error::other(e)))?;
        let mut buf = AlignedBuf::new(header.len());
        buf.fill_padded(&header);
        let engine = self.store.engine();
        let metrics = self.store.metrics();
        let write = engine.write(&self.file, 0, buf, header.len());
        let submitted = write.submitted();
        let store = &self.store;
        let written = write
            .await
            .result
            .inspect_err(|e| store.io_failed(self.dir, IoOp::Write, e));
        let written =
            written.map_err(|e| StoreError::io(format!("write header of {}", self.temp_path.display()), e))?;
        metrics.written(self.dir, written, submitted);
        if self.sync {
            let sync = engine.sync_data(&self.file);
            let submitted = sync.submitted();
            sync.await
                .result
                .inspect_err(|e| store.io_failed(self.dir, IoOp::Sync, e))
                .map_err(|e| StoreError::io(format!("fdatasync {}", self.temp_path.display()), e))?;
            metrics.synced(self.dir, submitted);
        } else {
            self.store.inner.dirs[self.dir].mark_unsynced();
        }
        self.publish(meta, condition).await
    }

    /// Renames the synced temp file into place and updates the index.
    async fn publish(
        mut self,
        meta: ShardMeta,
        condition: Option<PublishCondition>,
    ) -> Result<Option<(ShardMeta, Vec<AlignedBuf>)>, StoreError> {
        let store = self.store.clone();
        let _guard = store.lock_key(&meta.namespace, &meta.key).await;
        if let Some(condition) = condition
            && !condition()
        {
            return Ok(None);
        }
        let current = store.inner.index.get(&meta.namespace, &meta.key);
        if let Some(current) = &current
            && current.meta.version >= meta.version
        {
            return Err(version_conflict(&self.spec, current.meta.version, meta.version));
        }
        let dir = &store.inner.dirs[self.dir];
        let replace_in_place = current.as_ref().filter(|c| c.dir == self.dir);
        let file_id = replace_in_place.map(|c| c.file_id).unwrap_or(self.file_id);
        let temp = self.temp_path.clone();
        let final_path = dir.shard_path(&meta.namespace, file_id);
        let dirs_to_create = dir.shard_parent_chain(&meta.namespace, file_id);
        let replace = replace_in_place.is_some();
        let sync = self.sync;
        let swapped = fs::blocking(move || {
            let parent = dir::ensure_dirs(&dirs_to_create, sync)?;
            let swapped = if !replace {
                fs::rename_noreplace(&temp, &final_path)?;
                false
            } else if sync {
                fs::rename_replace(&temp, &final_path)?;
                false
            } else {
                // Unsynced (scratch): the replaced file comes back at the
                // temp path and is removed below, off this put's path.
                fs::rename_exchange(&temp, &final_path)?
            };
            if sync {
                fs::sync_dir(&parent)?;
            }
            Ok(swapped)
        })
        .await
        .map_err(|e| {
            store.io_failed(self.dir, IoOp::Metadata, &e);
            StoreError::io(format!("publish {}/{}", meta.namespace, meta.key), e)
        })?;
        self.published = true;
        if swapped {
            // Should this not happen before a crash, the start removes it
            // with the rest of tmp/.
            let replaced = self.temp_path.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = fs::remove_file(&replaced) {
                    tracing::warn!(path = %replaced.display(), error = %e, "could not remove a replaced shard file");
                }
            });
        }

        let entry = Arc::new(ShardEntry {
            meta: meta.clone(),
            dir: self.dir,
            file_id,
            layout: std::mem::take(&mut self.layout),
        });
        dir.account_add(meta.len);
        if let Some(old) = store.inner.index.insert(entry) {
            let old_dir = &store.inner.dirs[old.dir];
            old_dir.account_remove(old.meta.len);
            if old.dir != self.dir {
                // The old version lives in another dir: remove it, durably
                // for a durable put (still under the key's lock), so that a
                // delete acknowledged after this cannot bring it back after a
                // power cut. Should the removal fail, recovery keeps the newer.
                let old_path = old_dir.shard_path(&old.meta.namespace, old.file_id);
                let old_parent = old_dir.shard_parent(&old.meta.namespace, old.file_id);
                let removed = fs::blocking(move || {
                    fs::remove_file(&old_path)?;
                    if sync { fs::sync_dir(&old_parent) } else { Ok(()) }
                })
                .await;
                if let Err(e) = removed {
                    tracing::warn!(error = %e, "could not remove the replaced shard file; recovery will");
                }
            }
        }
        let kept = self.kept.take().unwrap_or_default();
        Ok(Some((meta, kept)))
    }
}

/// Checks a put against the limits, its shape and the stored version, and
/// reserves the version it stores. An automatic version is one above the
/// stored version, `newer_than` and every version reserved by puts of the
/// key in progress; an explicit one must be above the first two (puts that
/// overlap with it are ordered when they publish).
pub(super) fn check_put(store: &Store, spec: &PutSpec) -> Result<Reservation, StoreError> {
    let config = store.config();
    if spec.len > config.max_shard_bytes {
        return Err(StoreError::TooLarge(format!(
            "shard of {} bytes exceeds the limit of {} bytes",
            spec.len, config.max_shard_bytes
        )));
    }
    spec.dtype
        .check_shape(&spec.shape, spec.len)
        .map_err(StoreError::BadRequest)?;
    store
        .inner
        .reservations
        .reserve(&spec.namespace, &spec.key, |in_progress| {
            // Read under the reservations' lock: a put publishing now holds its
            // reservation until the index has its version.
            let current = store.inner.index.get(&spec.namespace, &spec.key);
            let current_version = current.as_ref().map(|e| e.meta.version).max(spec.newer_than);
            match (spec.version, current_version) {
                (Some(v), Some(cur)) if v <= cur => Err(version_conflict(spec, cur, v)),
                (Some(0), None) => Err(StoreError::BadRequest(
                    "version 0 is reserved; versions start at 1".into(),
                )),
                (Some(v), _) if v > MAX_CHOSEN_VERSION => Err(StoreError::BadRequest(format!(
                    "version {v} is above the largest a put may name ({MAX_CHOSEN_VERSION}); \
                     the versions above it are kept for puts that name none"
                ))),
                (Some(v), _) => Ok(v),
                (None, cur) => cur.max(in_progress).unwrap_or(0).checked_add(1).ok_or_else(|| {
                    StoreError::BadRequest(format!("{}/{}: version overflow", spec.namespace, spec.key))
                }),
            }
        })
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        if !self.published {
            // Writes still in flight keep the file open; unlinking is safe.
            if let Err(e) = fs::remove_file(&self.temp_path) {
                tracing::warn!(path = %self.temp_path.display(), error = %e, "cannot remove temp file of an unfinished put");
            }
        }
    }
}

fn version_conflict(spec: &PutSpec, current: u64, requested: u64) -> StoreError {
    StoreError::VersionConflict {
        namespace: spec.namespace.clone(),
        key: spec.key.clone(),
        current,
        message: format!("version {requested} is not newer than the stored version {current}"),
    }
}

fn io_clone(e: &std::io::Error) -> std::io::Error {
    match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => std::io::Error::new(e.kind(), e.to_string()),
    }
}

/// Picks `preferred` if it keeps `min_free` bytes free after `need` more;
/// else the dir with the most room that does; else explains why none can.
fn choose_dir(
    dirs: &[(usize, PathBuf)],
    preferred: usize,
    need: u64,
    min_free: u64,
) -> std::io::Result<Result<usize, String>> {
    let mut best: Option<(usize, u64)> = None;
    let mut most_room = (0u64, PathBuf::new());
    for (index, path) in dirs {
        let available = fs::space(path)?.available;
        let room = available.saturating_sub(min_free);
        if room >= need {
            if *index == preferred {
                return Ok(Ok(*index));
            }
            if best.is_none_or(|(_, r)| room > r) {
                best = Some((*index, room));
            }
        }
        if available >= most_room.0 {
            most_room = (available, path.clone());
        }
    }
    Ok(best.map(|(i, _)| i).ok_or_else(|| {
        format!(
            "no data dir has room for {need} bytes while keeping {min_free} bytes free \
             (most available: {} bytes in {})",
            most_room.0,
            most_room.1.display()
        )
    }))
}
