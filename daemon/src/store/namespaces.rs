//! Namespaces as a whole: what each holds, and dropping one in one step.
//!
//! A drop takes the namespace gate alone (every commit, delete and
//! quarantine holds a share of it with its key lock), so nothing lands in
//! the namespace while it goes. In each data directory the namespace's
//! directory is renamed into `tmp/` and `shards/` fsynced: the drop is
//! durable then, whatever the number of shards, and the files are removed
//! in the background (or by the next start, which empties `tmp/`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use shardd_protocol::Namespace;

use super::index::ShardEntry;
use super::{Store, StoreError};
use crate::io::fs;

/// What a namespace holds on the drives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceUsage {
    /// The namespace.
    pub namespace: Namespace,
    /// Its shards.
    pub shards: u64,
    /// Their bytes (payloads).
    pub bytes: u64,
}

/// What a drop removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Shards.
    pub shards: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Quarantined files.
    pub quarantined: u64,
}

impl Store {
    /// Every namespace that holds shards on the drives, by name.
    pub fn namespaces(&self) -> Vec<NamespaceUsage> {
        let mut usage: Vec<NamespaceUsage> = self
            .inner
            .index
            .usage()
            .into_iter()
            .map(|(namespace, shards, bytes)| NamespaceUsage {
                namespace,
                shards,
                bytes,
            })
            .collect();
        usage.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        usage
    }

    /// Bytes of `namespace`'s shards on the drives.
    pub fn namespace_bytes(&self, namespace: &Namespace) -> u64 {
        self.inner.index.namespace_bytes(namespace)
    }

    /// Removes every shard of `namespace` (and its quarantined files),
    /// durably, before it returns.
    pub async fn drop_namespace(&self, namespace: &Namespace) -> Result<Dropped, StoreError> {
        let _alone = self.inner.namespace_gate.write().await;
        let (entries, quarantined) = self.inner.index.remove_namespace(namespace);
        let mut dropped = Dropped::default();
        for entry in &entries {
            self.inner.dirs[entry.dir].account_remove(entry.meta.len);
            dropped.shards += 1;
            dropped.bytes += entry.meta.len;
        }
        let moves: Vec<(PathBuf, PathBuf, PathBuf)> = self
            .inner
            .dirs
            .iter()
            .map(|dir| {
                let from = dir.shards_dir().join(namespace.as_str());
                let to = dir.tmp_dir().join(format!("dropped-{namespace}-{}", dir.new_file_id()));
                (from, to, dir.shards_dir())
            })
            .collect();
        let files: Vec<PathBuf> = quarantined.into_iter().filter_map(|q| q.file).collect();
        let moved = fs::blocking(move || {
            let mut trash = Vec::new();
            for (from, to, shards) in moves {
                // `to` is a new name in tmp/, on the same file system.
                match fs::rename_replace(&from, &to) {
                    Ok(()) => {
                        fs::sync_dir(&shards)?;
                        trash.push(to);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            let mut parents = Vec::new();
            let mut removed = 0;
            for file in &files {
                match fs::remove_file(file) {
                    Ok(()) => {
                        removed += 1;
                        parents.extend(file.parent().map(PathBuf::from));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            parents.sort();
            parents.dedup();
            for parent in parents {
                fs::sync_dir(&parent)?;
            }
            Ok((trash, removed))
        })
        .await;
        let (moved, removed_files) = match moved {
            Ok(moved) => moved,
            Err(e) => {
                self.restore_unmoved(entries).await;
                return Err(StoreError::io(format!("drop namespace {namespace}"), e));
            }
        };
        self.inner.quarantined_files.fetch_sub(removed_files, Ordering::Relaxed);
        dropped.quarantined = removed_files;
        tokio::task::spawn_blocking(move || {
            for dir in moved {
                if let Err(e) = fs::remove_dir_all(&dir) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a dropped namespace's files; the next start will");
                }
            }
        });
        tracing::info!(
            %namespace, shards = dropped.shards, bytes = dropped.bytes, quarantined = dropped.quarantined,
            "namespace dropped"
        );
        Ok(dropped)
    }

    /// After a drop failed part way: puts back in the index the entries
    /// whose files are still in place (their data dir was not moved away),
    /// so that what the index serves is what the drives hold.
    async fn restore_unmoved(&self, entries: Vec<Arc<ShardEntry>>) {
        let paths: Vec<PathBuf> = entries
            .iter()
            .map(|e| self.inner.dirs[e.dir].shard_path(&e.meta.namespace, e.file_id))
            .collect();
        let present = fs::blocking(move || Ok(paths.iter().map(|p| p.exists()).collect::<Vec<bool>>()))
            .await
            .unwrap_or_default();
        for (entry, present) in entries.into_iter().zip(present) {
            if present {
                self.inner.dirs[entry.dir].account_add(entry.meta.len);
                self.inner.index.insert(entry);
            }
        }
    }
}
