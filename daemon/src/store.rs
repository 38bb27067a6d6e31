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
//! * [`health`]: whether each data directory's drive works.
//! * [`index`]: the in-memory index.
//! * [`buffers`]: chunk buffers under a memory budget.
//! * [`crc`]: combining chunk checksums into the shard's.
//! * [`writer`]: the put path.
//! * [`reader`]: the fetch path.
//! * [`recovery`]: rebuilding the index at start.
//! * [`catalog`]: stat, list, delete, counts, verifying every shard.
//! * [`error`]: [`StoreError`], one variant per wire status.
//! * [`metrics`]: drive bytes, latency and errors per data dir.
//! * [`namespaces`]: what each namespace holds; dropping one in one step.

pub mod buffers;
pub mod catalog;
pub mod crc;
pub mod dir;
pub mod error;
pub mod format;
pub mod health;
pub mod index;
pub mod metrics;
pub mod namespaces;
pub mod reader;
pub mod recovery;
pub mod versions;
pub mod writer;

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};

use serde::{Deserialize, Serialize};
use shardd_protocol::{DType, DataDirStatus, Key, Namespace, ShardMeta};
use tokio::sync::Mutex;

use crate::io::{IoEngine, fs};
pub use buffers::{BufferScope, Buffers};
use dir::DataDir;
pub use error::StoreError;
use index::Index;
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
    /// Shared by every holder of a key lock (taken before it); a namespace
    /// drop takes it alone, so no commit lands in a namespace as it goes.
    namespace_gate: tokio::sync::RwLock<()>,
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
                namespace_gate: tokio::sync::RwLock::new(()),
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
        tokio::spawn(reprobe_failed_dirs(Arc::downgrade(&store.inner)));
        Ok(store)
    }

    /// Whether a working data dir has room for `bytes` of new shards (and a
    /// margin for their headers) while keeping `storage.min_free` free.
    pub fn has_room_for(&self, bytes: u64) -> bool {
        let need = bytes + bytes / 64 + (1 << 20);
        let min_free = self.inner.config.min_free_bytes;
        self.inner.dirs.iter().filter(|d| !d.health.is_failed()).any(|d| {
            d.space()
                .is_ok_and(|space| space.available.saturating_sub(min_free) >= need)
        })
    }

    /// The data dirs whose drive is failed, with why.
    pub fn failed_dirs(&self) -> Vec<(PathBuf, health::Failure)> {
        self.inner
            .dirs
            .iter()
            .filter_map(|d| Some((d.path.clone(), d.health.failure()?)))
            .collect()
    }

    /// Notes an I/O error of `op` on data dir `dir`: counts it and, when it
    /// says the drive may be gone, probes the dir (in the background; see
    /// [`health`]).
    pub(crate) fn io_failed(&self, dir: usize, op: metrics::IoOp, e: &std::io::Error) {
        self.inner.metrics.error(dir, op);
        if health::is_drive_failure(e) {
            self.probe(dir);
        }
    }

    /// Whether data dir `dir` is failed now; the error says which and why.
    pub(crate) fn check_dir(&self, dir: usize) -> Result<(), StoreError> {
        let data_dir = &self.inner.dirs[dir];
        if !data_dir.health.is_failed() {
            return Ok(());
        }
        let why = data_dir.health.failure().map(|f| f.error).unwrap_or_default();
        Err(StoreError::io(
            format!("data dir {} failed ({why})", data_dir.path.display()),
            std::io::Error::from_raw_os_error(libc::EIO),
        ))
    }

    /// Probes data dir `dir` in the background unless a probe of it runs.
    fn probe(&self, dir: usize) {
        if !self.inner.dirs[dir].health.begin_probe() {
            return;
        }
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let data_dir = &store.inner.dirs[dir];
            let outcome = data_dir.probe().map_err(|e| e.to_string());
            if !data_dir.health.end_probe(outcome) {
                return;
            }
            let path = data_dir.path.display();
            match data_dir.health.failure() {
                Some(failure) => tracing::error!(
                    dir = %path,
                    error = %failure.error,
                    "data dir failed: its shards cannot be read until it works again (the arena keeps \
                     serving those it holds); new shards go to the other data dirs"
                ),
                None => tracing::warn!(dir = %path, "data dir works again"),
            }
            store.inner.metrics.set_failed(dir, data_dir.health.is_failed());
        });
    }

    /// The data directories (resolved paths), in the configuration's order.
    pub fn data_dir_paths(&self) -> Vec<PathBuf> {
        self.inner.dirs.iter().map(|d| d.path.clone()).collect()
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
        ShardReader::open_current(self.clone(), namespace, key).await
    }
}

/// Probes every failed data dir each [`health::REPROBE_INTERVAL`], for as
/// long as the store lives.
async fn reprobe_failed_dirs(store: Weak<Inner>) {
    let mut tick = tokio::time::interval(health::REPROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = store.upgrade() else { return };
        let store = Store { inner };
        for dir in 0..store.inner.dirs.len() {
            if store.inner.dirs[dir].health.is_failed() {
                store.probe(dir);
            }
        }
    }
}

#[cfg(test)]
mod tests;
