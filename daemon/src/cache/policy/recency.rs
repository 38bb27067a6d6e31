//! Resident shards from the least to the most recently used: a doubly
//! linked list kept in a slab, so that a hit moves its shard to the end by
//! relinking two neighbours, without allocating or rebalancing a tree.

use super::ShardId;

const NIL: u32 = u32::MAX;

#[derive(Debug)]
struct Node {
    /// `None` while the slot is free.
    id: Option<ShardId>,
    prev: u32,
    next: u32,
}

/// The list. A shard's slot, returned when it is pushed, names it until it
/// is removed.
#[derive(Debug)]
pub(super) struct Recency {
    nodes: Vec<Node>,
    free: Vec<u32>,
    /// The least recently used.
    oldest: u32,
    /// The most recently used.
    newest: u32,
}

impl Default for Recency {
    fn default() -> Recency {
        Recency {
            nodes: Vec::new(),
            free: Vec::new(),
            oldest: NIL,
            newest: NIL,
        }
    }
}

impl Recency {
    /// Adds `id` as the most recently used; its slot.
    pub(super) fn push(&mut self, id: ShardId) -> u32 {
        let node = Node {
            id: Some(id),
            prev: self.newest,
            next: NIL,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.nodes[slot as usize] = node;
                slot
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        self.link_last(slot);
        slot
    }

    /// Makes the shard in `slot` the most recently used.
    pub(super) fn touch(&mut self, slot: u32) {
        // A free slot is linked nowhere: relinking it would break the list.
        if self.newest == slot || self.nodes.get(slot as usize).is_none_or(|node| node.id.is_none()) {
            return;
        }
        self.unlink(slot);
        self.nodes[slot as usize].prev = self.newest;
        self.nodes[slot as usize].next = NIL;
        self.link_last(slot);
    }

    /// Whether `slot` holds `id`.
    pub(super) fn holds(&self, slot: u32, id: super::ShardRef<'_>) -> bool {
        self.nodes
            .get(slot as usize)
            .and_then(|node| node.id.as_ref())
            .is_some_and(|held| held.0 == *id.0 && held.1 == *id.1)
    }

    /// Takes the shard in `slot` out; the slot is free again.
    pub(super) fn remove(&mut self, slot: u32) -> Option<ShardId> {
        let id = self.nodes.get_mut(slot as usize)?.id.take()?;
        self.unlink(slot);
        self.free.push(slot);
        Some(id)
    }

    /// The shards, least recently used first.
    pub(super) fn iter(&self) -> impl Iterator<Item = &ShardId> + '_ {
        let mut at = self.oldest;
        std::iter::from_fn(move || {
            let node = self.nodes.get(at as usize)?;
            at = node.next;
            node.id.as_ref()
        })
    }

    /// Links `slot`, whose `prev` is the current newest, at the end.
    fn link_last(&mut self, slot: u32) {
        match self.newest {
            NIL => self.oldest = slot,
            newest => self.nodes[newest as usize].next = slot,
        }
        self.newest = slot;
    }

    fn unlink(&mut self, slot: u32) {
        let (prev, next) = {
            let node = &self.nodes[slot as usize];
            (node.prev, node.next)
        };
        match prev {
            NIL => self.oldest = next,
            prev => self.nodes[prev as usize].next = next,
        }
        match next {
            NIL => self.newest = prev,
            next => self.nodes[next as usize].prev = prev,
        }
    }
}

#[cfg(test)]
mod tests {
    use shardd_protocol::{Key, Namespace};

    use super::*;

    fn id(key: &str) -> ShardId {
        (Namespace::new("job").unwrap(), Key::new(key).unwrap())
    }

    fn keys(list: &Recency) -> Vec<String> {
        list.iter().map(|(_, key)| key.to_string()).collect()
    }

    #[test]
    fn touched_shards_move_to_the_end_and_removed_slots_are_reused() {
        let mut list = Recency::default();
        let a = list.push(id("a"));
        let b = list.push(id("b"));
        let c = list.push(id("c"));
        assert_eq!(keys(&list), ["a", "b", "c"]);
        list.touch(a);
        assert_eq!(keys(&list), ["b", "c", "a"]);
        list.touch(a);
        list.touch(c);
        assert_eq!(keys(&list), ["b", "a", "c"]);
        assert_eq!(list.remove(a), Some(id("a")));
        assert_eq!(list.remove(a), None, "a slot is removed once");
        assert_eq!(keys(&list), ["b", "c"]);
        let d = list.push(id("d"));
        assert_eq!(d, a, "the free slot is reused");
        assert_eq!(keys(&list), ["b", "c", "d"]);
        list.remove(b);
        list.remove(d);
        assert_eq!(keys(&list), ["c"]);
        list.remove(c);
        assert!(keys(&list).is_empty());
        let e = list.push(id("e"));
        assert_eq!(keys(&list), ["e"]);
        list.touch(e);
        assert_eq!(keys(&list), ["e"]);
    }
}
