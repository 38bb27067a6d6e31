//! The in-memory index: which shard version is current, where it lives,
//! and which keys were quarantined. Rebuilt from the data directories at
//! start; changed only by committed puts, deletes and quarantines.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use shardd_protocol::{Key, Namespace, ShardMeta};

use super::dir::FileId;
use super::format::ShardLayout;

/// One stored shard version.
#[derive(Debug)]
pub struct ShardEntry {
    /// Its metadata.
    pub meta: ShardMeta,
    /// Which data directory holds it.
    pub dir: usize,
    /// Its file name.
    pub file_id: FileId,
    /// Where the payload and chunk checksums are.
    pub layout: ShardLayout,
}

/// Why a key is quarantined, kept until it is overwritten or deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantined {
    /// The version that failed.
    pub version: u64,
    /// What failed.
    pub reason: String,
    /// Where the file was moved, if it could be.
    pub file: Option<std::path::PathBuf>,
}

#[derive(Debug, Default)]
struct Maps {
    live: HashMap<Namespace, BTreeMap<Key, Arc<ShardEntry>>>,
    /// Bytes of each namespace's live entries.
    bytes: HashMap<Namespace, u64>,
    quarantined: HashMap<(Namespace, Key), Quarantined>,
}

/// The index. Locks are held only for map operations, never across I/O.
#[derive(Debug, Default)]
pub struct Index {
    maps: RwLock<Maps>,
}

impl Index {
    fn read(&self) -> RwLockReadGuard<'_, Maps> {
        self.maps.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Maps> {
        self.maps.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current version of a key.
    pub fn get(&self, namespace: &Namespace, key: &Key) -> Option<Arc<ShardEntry>> {
        self.read().live.get(namespace)?.get(key).cloned()
    }

    /// Why a key is quarantined, if it is.
    pub fn quarantined(&self, namespace: &Namespace, key: &Key) -> Option<Quarantined> {
        self.read().quarantined.get(&(namespace.clone(), key.clone())).cloned()
    }

    /// Makes `entry` current for its key; returns the entry it replaced.
    /// Clears a quarantine record of the key.
    pub fn insert(&self, entry: Arc<ShardEntry>) -> Option<Arc<ShardEntry>> {
        let mut maps = self.write();
        let id = (entry.meta.namespace.clone(), entry.meta.key.clone());
        maps.quarantined.remove(&id);
        let added = entry.meta.len;
        let replaced = maps.live.entry(id.0.clone()).or_default().insert(id.1, entry);
        let bytes = maps.bytes.entry(id.0).or_default();
        *bytes = *bytes + added - replaced.as_ref().map_or(0, |r| r.meta.len);
        replaced
    }

    /// Bytes of a namespace's live entries.
    pub fn namespace_bytes(&self, namespace: &Namespace) -> u64 {
        self.read().bytes.get(namespace).copied().unwrap_or(0)
    }

    /// Removes `entry` if it is still the current version of its key.
    pub fn remove_if_current(&self, entry: &Arc<ShardEntry>) -> bool {
        let mut maps = self.write();
        let Some(keys) = maps.live.get_mut(&entry.meta.namespace) else {
            return false;
        };
        match keys.get(&entry.meta.key) {
            Some(current) if Arc::ptr_eq(current, entry) => {
                keys.remove(&entry.meta.key);
                if keys.is_empty() {
                    maps.live.remove(&entry.meta.namespace);
                    maps.bytes.remove(&entry.meta.namespace);
                } else if let Some(bytes) = maps.bytes.get_mut(&entry.meta.namespace) {
                    *bytes -= entry.meta.len;
                }
                true
            }
            _ => false,
        }
    }

    /// Records that a key's shard was quarantined.
    pub fn set_quarantined(&self, namespace: Namespace, key: Key, record: Quarantined) {
        self.write().quarantined.insert((namespace, key), record);
    }

    /// Forgets a quarantine record; returns it.
    pub fn clear_quarantined(&self, namespace: &Namespace, key: &Key) -> Option<Quarantined> {
        self.write().quarantined.remove(&(namespace.clone(), key.clone()))
    }

    /// Up to `limit` shards of `namespace` whose keys start with `prefix`,
    /// after `start_after`, in key order; and whether more follow.
    pub fn list(
        &self,
        namespace: &Namespace,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> (Vec<Arc<ShardEntry>>, bool) {
        let maps = self.read();
        let Some(keys) = maps.live.get(namespace) else {
            return (Vec::new(), false);
        };
        let lower = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let mut matching = keys
            .range::<str, _>((lower, Bound::Unbounded))
            .take_while(|(k, _)| k.as_str().starts_with(prefix))
            .map(|(_, entry)| entry.clone());
        let out: Vec<_> = matching.by_ref().take(limit).collect();
        let more = matching.next().is_some();
        (out, more)
    }

    /// Each namespace that holds shards, with its shard count and bytes
    /// (one step per namespace, not per shard).
    pub fn usage(&self) -> Vec<(Namespace, u64, u64)> {
        let maps = self.read();
        maps.live
            .iter()
            .map(|(ns, keys)| (ns.clone(), keys.len() as u64, maps.bytes.get(ns).copied().unwrap_or(0)))
            .collect()
    }

    /// Takes every entry and quarantine record of `namespace` out.
    pub fn remove_namespace(&self, namespace: &Namespace) -> (Vec<Arc<ShardEntry>>, Vec<Quarantined>) {
        let mut maps = self.write();
        maps.bytes.remove(namespace);
        let live = maps
            .live
            .remove(namespace)
            .map(|keys| keys.into_values().collect())
            .unwrap_or_default();
        let keys: Vec<(Namespace, Key)> = maps
            .quarantined
            .keys()
            .filter(|(ns, _)| ns == namespace)
            .cloned()
            .collect();
        let quarantined = keys.iter().filter_map(|id| maps.quarantined.remove(id)).collect();
        (live, quarantined)
    }

    /// Every live entry (for verification passes).
    pub fn all(&self) -> Vec<Arc<ShardEntry>> {
        self.read()
            .live
            .values()
            .flat_map(|keys| keys.values().cloned())
            .collect()
    }
}
