//! The NVMe tier: shards in one or more data directories (one per drive),
//! each in its own checksummed file, indexed in memory.
//!
//! * A put streams into a temp file, then (header written, data synced)
//!   renames it into place and fsyncs the directory before it is
//!   acknowledged. A newer version is renamed over the old file, so readers
//!   see the whole old or the whole new shard.
//! * A fetch reads and verifies chunk by chunk; a chunk whose checksum fails
//!   is never served and its shard is quarantined.
//! * At start the index is rebuilt from the shard headers, temp files of
//!   interrupted puts are removed and broken files are quarantined.
//!
//! # Layout
//!
//! * [`format`](mod@format): the shard file format.
//! * [`dir`]: a data directory and its layout.
//! * [`index`]: the in-memory index.
//! * [`buffers`]: chunk buffers under a memory budget.
//! * [`crc`]: combining chunk checksums into the shard's.
//! * [`writer`]: the put path.
//! * [`reader`]: the fetch path.
//! * [`recovery`]: rebuilding the index at start.
//! * [`metrics`]: drive bytes, latency and errors per data dir.

pub mod buffers;
pub mod crc;
pub mod dir;
pub mod format;
pub mod index;
pub mod metrics;
pub mod reader;
pub mod recovery;
pub mod versions;
pub mod writer;

use std::hash::{Hash, Hasher};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use shardd_protocol::{DType, DataDirStatus, Key, Namespace, ShardMeta, Status};
use tokio::sync::{Mutex, MutexGuard};

use crate::io::{IoEngine, fs};
pub use buffers::{BufferScope, Buffers};
use dir::DataDir;
use index::{Index, Quarantined, ShardEntry};
pub use reader::{Chunk, ChunkStream, ShardReader};
pub use writer::ShardWriter;

/// How much of each shard is verified at start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMode {
    /// Headers only (fast); payload chunks are verified on every read.
    #[default]
    Metadata,
    /// Every payload byte too, before the daemon serves.
    Full,
}

/// Settings of the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Data directories, one per drive.
    pub data_dirs: Vec<PathBuf>,
    /// Bytes per checksummed chunk of new shards, and per fetch frame.
    pub chunk_size: u32,
    /// Chunks a single put or fetch keeps in flight to the drive.
    pub chunks_in_flight: usize,
    /// Free bytes each data dir keeps; a put that would go below is refused.
    pub min_free_bytes: u64,
    /// Largest shard accepted.
    pub max_shard_bytes: u64,
    /// Memory for chunk buffers of all requests together.
    pub buffer_memory: u64,
    /// How much to verify at start.
    pub verify_on_start: VerifyMode,
    /// Use O_DIRECT where the file system allows it (else buffered I/O
    /// through the page cache everywhere).
    pub direct_io: bool,
}

/// Why a store operation failed. Each variant maps to one wire status.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such shard.
    #[error("shard {namespace}/{key} not found")]
    NotFound {
        /// Namespace.
        namespace: Namespace,
        /// Key.
        key: Key,
    },
    /// The shard failed verification and was moved aside.
    #[error("shard {namespace}/{key} version {version} is quarantined: {reason}")]
    Quarantined {
        /// Namespace.
        namespace: Namespace,
        /// Key.
        key: Key,
        /// The version that failed.
        version: u64,
        /// What failed.
        reason: String,
    },
    /// A put's version is not newer, or a delete's expected version differs.
    #[error("{namespace}/{key}: {message}")]
    VersionConflict {
        /// Namespace.
        namespace: Namespace,
        /// Key.
        key: Key,
        /// The version stored now.
        current: u64,
        /// What is wrong.
        message: String,
    },
    /// No data dir has room.
    #[error("no space: {0}")]
    NoSpace(String),
    /// Bytes do not match their checksum.
    #[error("checksum mismatch: {0}")]
    ChecksumMismatch(String),
    /// A length beyond a limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// A request that cannot be valid.
    #[error("{0}")]
    BadRequest(String),
    /// A failure reported elsewhere (a load another request ran, a
    /// background flush), passed on with its status.
    #[error("{message}")]
    Other {
        /// Its status.
        status: Status,
        /// What failed.
        message: String,
    },
    /// An I/O error; ENOSPC and EDQUOT are reported as no space.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: io::Error,
    },
}

impl StoreError {
    /// The wire status of this error.
    pub fn status(&self) -> Status {
        match self {
            StoreError::NotFound { .. } => Status::NotFound,
            StoreError::Quarantined { .. } | StoreError::ChecksumMismatch(_) => Status::ChecksumMismatch,
            StoreError::VersionConflict { .. } => Status::VersionConflict,
            StoreError::NoSpace(_) => Status::NoSpace,
            StoreError::TooLarge(_) => Status::TooLarge,
            StoreError::BadRequest(_) => Status::BadRequest,
            StoreError::Other { status, .. } => *status,
            StoreError::Io { source, .. } if is_no_space(source) => Status::NoSpace,
            StoreError::Io { .. } => Status::Internal,
        }
    }

    /// With a version conflict: the version stored now.
    pub fn current_version(&self) -> Option<u64> {
        match self {
            StoreError::VersionConflict { current, .. } => Some(*current),
            _ => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> StoreError {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// What a put stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutSpec {
    /// Namespace.
    pub namespace: Namespace,
    /// Key.
    pub key: Key,
    /// Explicit version, or `None` for stored + 1.
    pub version: Option<u64>,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<u64>,
    /// Exact length of the payload.
    pub len: u64,
    /// Checksum the sender computed, if any.
    pub crc32c: Option<u32>,
    /// A version newer than the drive's that the key already has elsewhere
    /// (in memory, waiting to be flushed): the put must be newer still.
    pub newer_than: Option<u64>,
}

impl PutSpec {
    /// The metadata of the shard this put stores as `version`, with
    /// checksum `crc32c`, created now.
    pub fn meta(&self, version: u64, crc32c: u32) -> ShardMeta {
        let created_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        ShardMeta {
            namespace: self.namespace.clone(),
            key: self.key.clone(),
            version,
            dtype: self.dtype,
            shape: self.shape.clone(),
            len: self.len,
            crc32c,
            created_unix_ms,
        }
    }
}

/// Counts of the store, for status and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreStatus {
    /// Live shards.
    pub shards: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Files in the quarantine directories.
    pub quarantined: u64,
    /// Per data dir.
    pub data_dirs: Vec<DataDirStatus>,
}

/// Handle to the store; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: StoreConfig,
    dirs: Vec<DataDir>,
    index: Index,
    engine: Arc<IoEngine>,
    buffers: Buffers,
    /// Serialises commits, deletes and quarantines of the same key.
    key_locks: Box<[Mutex<()>]>,
    /// Versions of puts in progress.
    reservations: versions::Reservations,
    quarantined_files: AtomicU64,
    metrics: metrics::StoreMetrics,
}

const KEY_LOCK_STRIPES: usize = 256;

impl Store {
    /// Opens the data directories, rebuilds the index and (with
    /// [`VerifyMode::Full`]) verifies every shard.
    pub async fn open(config: StoreConfig, engine: Arc<IoEngine>) -> anyhow::Result<Store> {
        anyhow::ensure!(!config.data_dirs.is_empty(), "no data directory configured");
        let dir_paths = config.data_dirs.clone();
        let direct_io = config.direct_io;
        let dirs = tokio::task::spawn_blocking(move || {
            dir_paths
                .iter()
                .enumerate()
                .map(|(i, path)| DataDir::open(i, path, direct_io))
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .await??;
        let buffers = Buffers::new(config.chunk_size as usize, config.buffer_memory);
        let dir_labels: Vec<String> = dirs.iter().map(|d| d.path.display().to_string()).collect();
        let store = Store {
            inner: Arc::new(Inner {
                config,
                dirs,
                index: Index::default(),
                engine,
                buffers,
                key_locks: (0..KEY_LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
                reservations: versions::Reservations::default(),
                quarantined_files: AtomicU64::new(0),
                metrics: metrics::StoreMetrics::new(&dir_labels),
            }),
        };
        let report = recovery::recover(&store).await?;
        tracing::info!(
            shards = report.shards,
            bytes = report.bytes,
            temp_removed = report.temp_removed,
            superseded_removed = report.superseded_removed,
            quarantined = report.quarantined,
            "index recovered"
        );
        if store.inner.config.verify_on_start == VerifyMode::Full {
            let failed = store.verify_all().await;
            tracing::info!(failed, "verified every shard");
        }
        Ok(store)
    }

    /// The store's settings.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// The I/O engine.
    pub fn engine(&self) -> &IoEngine {
        &self.inner.engine
    }

    /// Chunk buffers and their memory budget.
    pub fn buffers(&self) -> &Buffers {
        &self.inner.buffers
    }

    /// Its metrics (registered by the daemon).
    pub fn metrics(&self) -> &metrics::StoreMetrics {
        &self.inner.metrics
    }

    /// Syncs the file systems of the data directories where scratch puts
    /// were published without syncing (at a graceful stop): what a clean
    /// stop leaves behind survives a later power loss.
    pub async fn sync_scratch(&self) {
        for i in 0..self.inner.dirs.len() {
            let store = self.clone();
            let path = self.inner.dirs[i].path.clone();
            match fs::blocking(move || store.inner.dirs[i].sync_if_unsynced()).await {
                Ok(true) => tracing::info!(dir = %path.display(), "synced the scratch shards written without syncing"),
                Ok(false) => {}
                Err(e) => tracing::error!(
                    dir = %path.display(),
                    error = %e,
                    "could not sync the scratch shards written without syncing"
                ),
            }
        }
    }

    /// Starts a put; the caller then writes the payload chunk by chunk and commits.
    pub async fn begin_put(&self, spec: PutSpec) -> Result<ShardWriter, StoreError> {
        ShardWriter::begin(self.clone(), spec).await
    }

    /// Checks a put without starting it (limits, shape, version); returns
    /// the version it stores, reserved until the reservation is dropped.
    pub fn check_put(&self, spec: &PutSpec) -> Result<versions::Reservation, StoreError> {
        writer::check_put(self, spec)
    }

    /// Opens the current version of a shard for reading.
    pub async fn open_reader(&self, namespace: &Namespace, key: &Key) -> Result<ShardReader, StoreError> {
        let entry = self.current(namespace, key)?;
        ShardReader::open(self.clone(), entry).await
    }

    /// Metadata of the current version of a shard.
    pub fn stat(&self, namespace: &Namespace, key: &Key) -> Result<ShardMeta, StoreError> {
        Ok(self.current(namespace, key)?.meta.clone())
    }

    fn current(&self, namespace: &Namespace, key: &Key) -> Result<Arc<ShardEntry>, StoreError> {
        if let Some(entry) = self.inner.index.get(namespace, key) {
            return Ok(entry);
        }
        match self.inner.index.quarantined(namespace, key) {
            Some(Quarantined { version, reason, .. }) => Err(StoreError::Quarantined {
                namespace: namespace.clone(),
                key: key.clone(),
                version,
                reason,
            }),
            None => Err(StoreError::NotFound {
                namespace: namespace.clone(),
                key: key.clone(),
            }),
        }
    }

    /// A page of the shards of a namespace (see [`index::Index::list`]).
    pub fn list(
        &self,
        namespace: &Namespace,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> (Vec<ShardMeta>, bool) {
        let (entries, more) = self.inner.index.list(namespace, prefix, start_after, limit);
        (entries.iter().map(|e| e.meta.clone()).collect(), more)
    }

    /// Removes the current version of a shard (only `expected`, if given);
    /// returns the version removed. Also clears a quarantine record.
    pub async fn delete(&self, namespace: &Namespace, key: &Key, expected: Option<u64>) -> Result<u64, StoreError> {
        let _guard = self.lock_key(namespace, key).await;
        let Some(entry) = self.inner.index.get(namespace, key) else {
            return match self.inner.index.clear_quarantined(namespace, key) {
                Some(record) => {
                    // Deleting a quarantined key also discards its file.
                    if let Some(file) = record.file {
                        let removed = fs::blocking(move || fs::remove_file(&file)).await;
                        if removed.is_ok() {
                            self.inner.quarantined_files.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                    Ok(record.version)
                }
                None => Err(StoreError::NotFound {
                    namespace: namespace.clone(),
                    key: key.clone(),
                }),
            };
        };
        if let Some(expected) = expected {
            if expected != entry.meta.version {
                return Err(StoreError::VersionConflict {
                    namespace: namespace.clone(),
                    key: key.clone(),
                    current: entry.meta.version,
                    message: format!(
                        "delete expected version {expected}, the stored version is {}",
                        entry.meta.version
                    ),
                });
            }
        }
        let dir = &self.inner.dirs[entry.dir];
        let path = dir.shard_path(namespace, entry.file_id);
        let parent = dir.shard_parent(namespace, entry.file_id);
        fs::blocking(move || {
            fs::remove_file(&path)?;
            fs::sync_dir(&parent)
        })
        .await
        .map_err(|e| StoreError::io(format!("delete {namespace}/{key}"), e))?;
        self.inner.index.remove_if_current(&entry);
        dir.account_remove(entry.meta.len);
        Ok(entry.meta.version)
    }

    /// Counts and per-directory state.
    pub async fn status(&self) -> StoreStatus {
        let dirs: Vec<(String, bool, u64, u64, PathBuf)> = self
            .inner
            .dirs
            .iter()
            .map(|d| {
                (
                    d.path.display().to_string(),
                    d.direct_io,
                    d.shards.load(Ordering::Relaxed),
                    d.bytes.load(Ordering::Relaxed),
                    d.path.clone(),
                )
            })
            .collect();
        let data_dirs = fs::blocking(move || {
            Ok(dirs
                .into_iter()
                .map(|(path, direct_io, shards, bytes, fs_path)| {
                    let space = fs::space(&fs_path).unwrap_or(fs::Space {
                        capacity: 0,
                        available: 0,
                    });
                    DataDirStatus {
                        path,
                        direct_io,
                        shards,
                        bytes,
                        capacity_bytes: space.capacity,
                        free_bytes: space.available,
                    }
                })
                .collect::<Vec<_>>())
        })
        .await
        .unwrap_or_default();
        StoreStatus {
            shards: data_dirs.iter().map(|d| d.shards).sum(),
            bytes: data_dirs.iter().map(|d| d.bytes).sum(),
            quarantined: self.inner.quarantined_files.load(Ordering::Relaxed),
            data_dirs,
        }
    }

    /// Reads and verifies every chunk of every shard; quarantines failures.
    /// Returns how many failed.
    pub async fn verify_all(&self) -> u64 {
        let scope = self.buffers().scope(self.buffers().budget_bytes());
        let mut failed = 0;
        for entry in self.inner.index.all() {
            let len = entry.meta.len;
            let reader = match ShardReader::open(self.clone(), entry).await {
                Ok(reader) => reader,
                Err(_) => {
                    failed += 1;
                    continue;
                }
            };
            let mut chunks = reader.chunks(0, len, scope.clone());
            while let Some(chunk) = chunks.next().await {
                if chunk.is_err() {
                    failed += 1;
                    break;
                }
            }
        }
        failed
    }

    async fn lock_key(&self, namespace: &Namespace, key: &Key) -> MutexGuard<'_, ()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        namespace.hash(&mut hasher);
        key.hash(&mut hasher);
        let stripe = hasher.finish() as usize % self.inner.key_locks.len();
        self.inner.key_locks[stripe].lock().await
    }

    /// Moves a shard that failed verification aside, unless a newer version
    /// replaced it meanwhile. Logs and counts it once.
    pub(crate) async fn quarantine(&self, entry: &Arc<ShardEntry>, reason: String) {
        let namespace = &entry.meta.namespace;
        let key = &entry.meta.key;
        let _guard = self.lock_key(namespace, key).await;
        if !self.inner.index.remove_if_current(entry) {
            return;
        }
        let dir = &self.inner.dirs[entry.dir];
        dir.account_remove(entry.meta.len);
        let from = dir.shard_path(namespace, entry.file_id);
        let quarantine_dir = dir.quarantine_dir();
        let name = format!("{namespace}.{}.shard", entry.file_id);
        let moved = fs::blocking(move || recovery::move_to_quarantine(&from, &quarantine_dir, &name)).await;
        if moved.is_ok() {
            self.inner.quarantined_files.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.index.set_quarantined(
            namespace.clone(),
            key.clone(),
            Quarantined {
                version: entry.meta.version,
                reason: reason.clone(),
                file: moved.as_ref().ok().cloned(),
            },
        );
        match moved {
            Ok(path) => tracing::error!(
                namespace = %namespace, key = %key, version = entry.meta.version,
                moved_to = %path.display(), %reason,
                "shard failed verification and was quarantined"
            ),
            Err(e) => tracing::error!(
                namespace = %namespace, key = %key, version = entry.meta.version,
                %reason, error = %e,
                "shard failed verification; it is no longer served but could not be moved aside"
            ),
        }
    }
}

#[cfg(test)]
mod tests;
