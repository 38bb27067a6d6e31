//! Namespaces in the arena: what each holds there, and forgetting one.

use std::collections::HashMap;

use shardd_protocol::Namespace;

use super::{Cache, Slot};

/// What a namespace holds in the arena.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaUsage {
    /// Resident shards.
    pub shards: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Those not on a drive yet (write-back), and their bytes.
    pub unflushed: u64,
    /// Bytes of those.
    pub unflushed_bytes: u64,
}

impl Cache {
    /// What each namespace holds in the arena.
    pub fn namespace_usage(&self) -> HashMap<Namespace, ArenaUsage> {
        let mut usage: HashMap<Namespace, ArenaUsage> = HashMap::new();
        let state = self.state();
        for (id, slot) in state.entries.iter() {
            let Slot::Ready(shard) = slot else { continue };
            let entry = usage.entry(id.0.clone()).or_default();
            entry.shards += 1;
            entry.bytes += shard.meta.len;
            if !shard.is_clean() {
                entry.unflushed += 1;
                entry.unflushed_bytes += shard.meta.len;
            }
        }
        usage
    }

    /// Forgets every shard of `namespace` (write-back ones are not written:
    /// the namespace is being dropped), its queued prefetch hints and its
    /// schedule; their blocks are zeroed once freed. Returns the shards
    /// forgotten that were not on a drive yet, and their bytes.
    pub fn forget_namespace(&self, namespace: &Namespace) -> (u64, u64) {
        let ids: Vec<_> = {
            let mut state = self.state();
            // Loads in progress must not install what is being dropped.
            state
                .entries
                .retain(|id, slot| id.0 != *namespace || matches!(slot, Slot::Ready(_)));
            state.entries.keys().filter(|id| id.0 == *namespace).cloned().collect()
        };
        let (mut unflushed, mut bytes) = (0, 0);
        for id in &ids {
            self.inner.prefetch.forget(id);
            if let Some(shard) = self.forget(&id.0, &id.1)
                && !shard.is_clean()
            {
                unflushed += 1;
                bytes += shard.meta.len;
            }
        }
        let _ = self.set_schedule(namespace.clone(), &[]);
        (unflushed, bytes)
    }
}
