//! The cache's map from shard to slot, which keeps each resident shard's
//! `listed` flag true exactly while the shard is its key's entry: every
//! way a shard leaves the map (evicted, replaced, forgotten, demoted,
//! quarantined, a namespace dropped) goes through here. With the flag a
//! holder of the shard can tell, under the cache's lock, that it is still
//! the key's current version without looking the key up
//! ([`super::load::ResidentHandle`]).

use std::hash::Hash;

use hashbrown::Equivalent;

use super::Slot;
use super::policy::{IdMap, ShardId};

/// The map. Read access is the map's own; changes go through the methods
/// below.
#[derive(Debug, Default)]
pub(super) struct Entries {
    map: IdMap<Slot>,
}

impl std::ops::Deref for Entries {
    type Target = IdMap<Slot>;

    fn deref(&self) -> &IdMap<Slot> {
        &self.map
    }
}

fn listed(slot: &Slot, listed: bool) {
    if let Slot::Ready(shard) = slot {
        shard.set_listed(listed);
    }
}

impl Entries {
    /// Puts `slot` in for `id`; returns what it displaced.
    pub(super) fn insert(&mut self, id: ShardId, slot: Slot) -> Option<Slot> {
        listed(&slot, true);
        let old = self.map.insert(id, slot);
        if let Some(old) = &old {
            listed(old, false);
        }
        old
    }

    /// Takes `id`'s slot out.
    pub(super) fn remove<Q: Hash + Equivalent<ShardId> + ?Sized>(&mut self, id: &Q) -> Option<Slot> {
        let old = self.map.remove(id);
        if let Some(old) = &old {
            listed(old, false);
        }
        old
    }

    /// Keeps only the slots `keep` says to.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&ShardId, &Slot) -> bool) {
        self.map.retain(|id, slot| {
            let kept = keep(id, slot);
            if !kept {
                listed(slot, false);
            }
            kept
        });
    }
}
