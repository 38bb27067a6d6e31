//! What the store holds: stat, list, delete, its counts, and verifying
//! every shard.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use shardd_protocol::{DataDirStatus, Key, Namespace, ShardMeta};
use tokio::sync::MutexGuard;

use super::index::{Quarantined, ShardEntry};
use super::{ShardReader, Store, StoreError, StoreStatus, recovery};
use crate::io::fs;

/// Held while a key is committed, deleted or quarantined: the key's lock,
/// and a share of the gate a namespace drop closes.
pub(super) struct KeyGuard<'a> {
    _namespaces: tokio::sync::RwLockReadGuard<'a, ()>,
    _key: MutexGuard<'a, ()>,
}

impl Store {
    /// Metadata of the current version of a shard.
    pub fn stat(&self, namespace: &Namespace, key: &Key) -> Result<ShardMeta, StoreError> {
        Ok(self.current(namespace, key)?.meta.clone())
    }

    /// The index entry of the current version of a shard (where it is, and
    /// its chunk checksums), if there is one.
    pub fn entry(&self, namespace: &Namespace, key: &Key) -> Option<Arc<ShardEntry>> {
        self.inner.index.get(namespace, key)
    }

    pub(super) fn current(&self, namespace: &Namespace, key: &Key) -> Result<Arc<ShardEntry>, StoreError> {
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
                        let removed = fs::blocking(move || {
                            fs::remove_file(&file)?;
                            match file.parent() {
                                Some(parent) => fs::sync_dir(parent),
                                None => Ok(()),
                            }
                        })
                        .await;
                        match removed {
                            Ok(()) => {
                                self.inner.quarantined_files.fetch_sub(1, Ordering::Relaxed);
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => return Err(StoreError::io(format!("delete quarantined {namespace}/{key}"), e)),
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
        if let Some(expected) = expected
            && expected != entry.meta.version
        {
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
        self.check_dir(entry.dir)?;
        let dir = &self.inner.dirs[entry.dir];
        let path = dir.shard_path(namespace, entry.file_id);
        let parent = dir.shard_parent(namespace, entry.file_id);
        fs::blocking(move || {
            fs::remove_file(&path)?;
            fs::sync_dir(&parent)
        })
        .await
        .map_err(|e| {
            self.io_failed(entry.dir, super::metrics::IoOp::Metadata, &e);
            StoreError::io(format!("delete {namespace}/{key}"), e)
        })?;
        self.inner.index.remove_if_current(&entry);
        dir.account_remove(entry.meta.len);
        Ok(entry.meta.version)
    }

    /// Counts and per-directory state.
    pub async fn status(&self) -> StoreStatus {
        let dirs: Vec<(String, bool, u64, u64, PathBuf, Option<String>)> = self
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
                    d.health.failure().map(|f| f.to_string()),
                )
            })
            .collect();
        let data_dirs = fs::blocking(move || {
            Ok(dirs
                .into_iter()
                .map(|(path, direct_io, shards, bytes, fs_path, failed)| {
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
                        failed,
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
            let reader = match ShardReader::open_if_current(self.clone(), entry).await {
                // Replaced or deleted since the listing: nothing to check.
                None => continue,
                Some(Ok(reader)) => reader,
                Some(Err(_)) => {
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

    pub(super) async fn lock_key(&self, namespace: &Namespace, key: &Key) -> KeyGuard<'_> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        namespace.hash(&mut hasher);
        key.hash(&mut hasher);
        let stripe = hasher.finish() as usize % self.inner.key_locks.len();
        // Taken first, and shared: only a namespace drop takes it alone.
        let namespaces = self.inner.namespace_gate.read().await;
        KeyGuard {
            _namespaces: namespaces,
            _key: self.inner.key_locks[stripe].lock().await,
        }
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
