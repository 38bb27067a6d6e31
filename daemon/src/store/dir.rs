//! One data directory (one per drive) and its layout:
//!
//! ```text
//! <dir>/                    mode 0700, files in it 0600: the daemon's user only
//! <dir>/SHARDD_DATA_DIR     marker: this directory belongs to shardd
//! <dir>/lock                flock held while a daemon uses the directory
//! <dir>/tmp/                shards being written (removed at start)
//! <dir>/shards/<ns>/<xx>/<id>.shard
//! <dir>/quarantine/         shards that failed verification, for inspection
//! ```

use std::hash::{BuildHasher, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use shardd_protocol::Namespace;

use super::health::{DirHealth, PROBE_FILE};
use crate::io::fs;

const MARKER: &str = "SHARDD_DATA_DIR";
const MARKER_TEXT: &str = "shardd data directory, format 1\n";

/// A data directory in use by this daemon.
#[derive(Debug)]
pub struct DataDir {
    /// Position in the configured list.
    pub index: usize,
    /// Absolute path.
    pub path: PathBuf,
    /// Whether shard files use O_DIRECT.
    pub direct_io: bool,
    /// Shards stored here now.
    pub shards: AtomicU64,
    /// Payload bytes stored here now.
    pub bytes: AtomicU64,
    id_prefix: u64,
    id_counter: AtomicU64,
    /// A scratch put was published here without syncing since the last
    /// [`DataDir::sync_if_unsynced`].
    unsynced: std::sync::atomic::AtomicBool,
    /// Whether its drive works.
    pub health: DirHealth,
    _lock: std::fs::File,
}

/// A unique shard file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId(pub u128);

impl std::fmt::Display for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl FileId {
    /// Parses the 32 hex digits of a file name stem.
    pub fn parse(stem: &str) -> Option<FileId> {
        if stem.len() != 32 {
            return None;
        }
        u128::from_str_radix(stem, 16).ok().map(FileId)
    }
}

impl DataDir {
    /// Notes that a file here was published without syncing (scratch).
    pub fn mark_unsynced(&self) {
        self.unsynced.store(true, Ordering::Release);
    }

    /// Syncs the file system of the directory (`syncfs`) if a scratch put
    /// was published here without syncing; returns whether it did.
    pub fn sync_if_unsynced(&self) -> io::Result<bool> {
        if !self.unsynced.swap(false, Ordering::AcqRel) {
            return Ok(false);
        }
        let dir = std::fs::File::open(&self.path)?;
        // SAFETY: syncfs on a descriptor we own, open for the whole call.
        let rc = unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) };
        if rc != 0 {
            self.unsynced.store(true, Ordering::Release);
            return Err(io::Error::last_os_error());
        }
        Ok(true)
    }

    /// Opens (creating it if needed) and locks a data directory. Refuses a
    /// non-empty directory that shardd did not create, and one locked by
    /// another daemon.
    pub fn open(index: usize, path: &Path, allow_direct_io: bool) -> anyhow::Result<DataDir> {
        fs::create_dir_all(path).with_context(|| format!("create data dir {}", path.display()))?;
        let path = path
            .canonicalize()
            .with_context(|| format!("resolve data dir {}", path.display()))?;
        // Shards are the daemon's alone: clients reach them only through it.
        if let Some(was) =
            fs::make_private(&path).with_context(|| format!("make data dir {} private", path.display()))?
        {
            tracing::info!(dir = %path.display(), "data dir was mode {was:04o}; made it 0700 (the daemon's user only)");
        }
        let marker = path.join(MARKER);
        if !marker.exists() {
            let foreign: Vec<String> = fs::list_dir(&path)
                .with_context(|| format!("read data dir {}", path.display()))?
                .into_iter()
                .map(|(name, _)| name)
                // A file system's root has lost+found; hidden files are not data.
                .filter(|name| !name.starts_with('.') && name != "lost+found")
                .take(3)
                .collect();
            if !foreign.is_empty() {
                anyhow::bail!(
                    "data dir {} is not empty and has no {MARKER} marker (found {}); \
                     refusing to use a directory shardd did not create",
                    path.display(),
                    foreign.join(", ")
                );
            }
            fs::write_file_synced(&marker, MARKER_TEXT.as_bytes())
                .with_context(|| format!("write marker in data dir {}", path.display()))?;
            fs::sync_dir(&path).with_context(|| format!("fsync data dir {}", path.display()))?;
        }
        let lock = fs::lock_file(&path.join("lock")).map_err(|e| {
            if e.kind() == io::ErrorKind::WouldBlock {
                anyhow::anyhow!("data dir {} is in use by another shardd", path.display())
            } else {
                anyhow::Error::new(e).context(format!("lock data dir {}", path.display()))
            }
        })?;
        for sub in ["tmp", "shards", "quarantine"] {
            fs::create_dir_all(&path.join(sub))
                .with_context(|| format!("create {sub}/ in data dir {}", path.display()))?;
        }
        fs::sync_dir(&path).with_context(|| format!("fsync data dir {}", path.display()))?;
        let direct_io = allow_direct_io
            && fs::supports_direct_io(&path.join("tmp"))
                .with_context(|| format!("write to data dir {}", path.display()))?;
        if allow_direct_io && !direct_io {
            tracing::info!(
                dir = %path.display(),
                "file system refuses O_DIRECT (tmpfs?); using buffered I/O for this data dir"
            );
        }
        Ok(DataDir {
            index,
            path,
            direct_io,
            shards: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            id_prefix: random_u64(),
            id_counter: AtomicU64::new(0),
            unsynced: std::sync::atomic::AtomicBool::new(false),
            health: DirHealth::default(),
            _lock: lock,
        })
    }

    /// Where shards are written before they are complete.
    pub fn tmp_dir(&self) -> PathBuf {
        self.path.join("tmp")
    }

    /// Root of the complete shards.
    pub fn shards_dir(&self) -> PathBuf {
        self.path.join("shards")
    }

    /// Where shards that failed verification are moved.
    pub fn quarantine_dir(&self) -> PathBuf {
        self.path.join("quarantine")
    }

    /// A file id not used before by this daemon.
    pub fn new_file_id(&self) -> FileId {
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
        FileId(((self.id_prefix as u128) << 64) | n as u128)
    }

    /// Temp path of a shard being written.
    pub fn temp_path(&self, id: FileId) -> PathBuf {
        self.tmp_dir().join(format!("{id}.partial"))
    }

    /// Directory of a shard file, fanned out by the low byte of its id.
    pub fn shard_parent(&self, namespace: &Namespace, id: FileId) -> PathBuf {
        self.shards_dir()
            .join(namespace.as_str())
            .join(format!("{:02x}", id.0 as u8))
    }

    /// Final path of a shard file.
    pub fn shard_path(&self, namespace: &Namespace, id: FileId) -> PathBuf {
        self.shard_parent(namespace, id).join(format!("{id}.shard"))
    }

    /// The directories from `shards/` down to a shard file's parent, for
    /// [`ensure_dirs`].
    pub fn shard_parent_chain(&self, namespace: &Namespace, id: FileId) -> [PathBuf; 3] {
        let ns_dir = self.shards_dir().join(namespace.as_str());
        [self.shards_dir(), ns_dir, self.shard_parent(namespace, id)]
    }

    /// Writes, syncs and removes a small file in `tmp/`: whether the drive
    /// takes writes now (blocking).
    pub fn probe(&self) -> io::Result<()> {
        let path = self.tmp_dir().join(PROBE_FILE);
        fs::write_file_synced(&path, &[0u8; 4096])?;
        fs::remove_file(&path)
    }

    /// Size and free space of the directory's file system.
    pub fn space(&self) -> io::Result<fs::Space> {
        fs::space(&self.path)
    }

    pub(super) fn account_add(&self, len: u64) {
        self.shards.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(len, Ordering::Relaxed);
    }

    pub(super) fn account_remove(&self, len: u64) {
        self.shards.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(len, Ordering::Relaxed);
    }
}

/// 64 random bits, from the standard library's randomly keyed hasher mixed
/// with the clock; used to keep file ids of different daemon runs apart.
fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hasher.write_u128(now);
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// Creates each missing directory of `chain` (each the parent of the next)
/// and, with `sync`, fsyncs the parent of every directory it creates;
/// returns the last.
pub fn ensure_dirs(chain: &[PathBuf], sync: bool) -> io::Result<PathBuf> {
    for pair in chain.windows(2) {
        if fs::create_dir(&pair[1])? && sync {
            fs::sync_dir(&pair[0])?;
        }
    }
    Ok(chain.last().cloned().unwrap_or_default())
}
