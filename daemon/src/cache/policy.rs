//! Which resident shard to evict.
//!
//! * [`PolicyKind::Lru`]: the least recently used.
//! * [`PolicyKind::Schedule`]: when a namespace has registered the access
//!   order of a training step (a sequence of keys that repeats every step),
//!   the shard whose next use in that order is furthest away (Belady's
//!   choice, exact for a repeating order). Shards outside any registered
//!   order go first, least recently used first.
//!
//! Each fetch advances the namespace's position in its order to the next
//! occurrence of the fetched key, so the position follows the trainer even
//! when a step starts late or skips a key.

mod recency;

use std::collections::HashMap;
use std::hash::RandomState;

use serde::Deserialize;
use shardd_protocol::{Key, Namespace};

use recency::Recency;

/// A shard's identity in the cache.
pub type ShardId = (Namespace, Key);

/// A shard's identity borrowed from a request, to look up an [`IdMap`]
/// without cloning the names (the hit path does this on every fetch). It
/// hashes exactly as the [`ShardId`] it stands for.
#[derive(Clone, Copy, Debug, Hash)]
pub struct ShardRef<'a>(pub &'a Namespace, pub &'a Key);

impl<'a> From<&'a ShardId> for ShardRef<'a> {
    fn from(id: &'a ShardId) -> ShardRef<'a> {
        ShardRef(&id.0, &id.1)
    }
}

impl hashbrown::Equivalent<ShardId> for ShardRef<'_> {
    fn equivalent(&self, id: &ShardId) -> bool {
        *self.0 == id.0 && *self.1 == id.1
    }
}

/// A map keyed by [`ShardId`] that a [`ShardRef`] can look up too. The
/// standard library's keyed hasher, as keys come from clients.
pub type IdMap<V> = hashbrown::HashMap<ShardId, V, RandomState>;

/// The eviction policy in use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// Least recently used.
    Lru,
    /// Furthest next use in a registered step order, LRU otherwise.
    #[default]
    Schedule,
}

impl PolicyKind {
    /// `lru` or `schedule`.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Lru => "lru",
            PolicyKind::Schedule => "schedule",
        }
    }
}

/// A registered step order and where the trainer is in it.
#[derive(Debug)]
pub struct Schedule {
    len: u32,
    /// Positions of each key in the order (a key may occur more than once,
    /// e.g. in the forward and the backward pass).
    positions: HashMap<Key, Vec<u32>>,
    /// Position of the last access.
    cursor: u32,
}

impl Schedule {
    /// The order `order`, indexed (built before the cache's lock is taken:
    /// a long order takes a while).
    pub fn new(order: &[Key]) -> Schedule {
        let mut positions: HashMap<Key, Vec<u32>> = HashMap::new();
        for (i, key) in order.iter().enumerate() {
            positions.entry(key.clone()).or_default().push(i as u32);
        }
        Schedule {
            len: order.len() as u32,
            positions,
            // Before the first key of a step.
            cursor: order.len().saturating_sub(1) as u32,
        }
    }

    /// Steps from the cursor to the next occurrence of `key` (1..=len), or
    /// `None` if the key is not in the order.
    fn distance(&self, key: &Key) -> Option<u32> {
        let positions = self.positions.get(key)?;
        positions
            .iter()
            .map(|&p| (p + self.len - self.cursor - 1) % self.len + 1)
            .min()
    }

    fn advance_to(&mut self, key: &Key) {
        if let Some(d) = self.distance(key) {
            self.cursor = (self.cursor + d) % self.len;
        }
    }
}

/// Recency and schedules of the resident shards.
#[derive(Debug)]
pub struct Policy {
    kind: PolicyKind,
    /// Each resident shard's slot in `recency`.
    slots: IdMap<u32>,
    recency: Recency,
    schedules: HashMap<Namespace, Schedule>,
    /// Keys in all schedules together.
    schedule_keys: u64,
}

impl Policy {
    /// An empty policy of `kind`.
    pub fn new(kind: PolicyKind) -> Policy {
        Policy {
            kind,
            slots: IdMap::default(),
            recency: Recency::default(),
            schedules: HashMap::new(),
            schedule_keys: 0,
        }
    }

    /// The kind.
    pub fn kind(&self) -> PolicyKind {
        self.kind
    }

    /// Registers (or replaces) the step order of `namespace`; an empty
    /// order removes it.
    pub fn set_schedule(&mut self, namespace: Namespace, order: &[Key]) {
        let schedule = (!order.is_empty()).then(|| Schedule::new(order));
        let _ = self.install_schedule(namespace, schedule, u64::MAX);
    }

    /// Registers `schedule` for `namespace` (`None` removes its schedule),
    /// if all schedules together then hold at most `max_keys` keys; returns
    /// the schedule it replaced (for the caller to drop outside its lock),
    /// or the keys the others hold when it would exceed `max_keys`.
    pub fn install_schedule(
        &mut self,
        namespace: Namespace,
        schedule: Option<Schedule>,
        max_keys: u64,
    ) -> Result<Option<Schedule>, u64> {
        let old_len = self.schedules.get(&namespace).map_or(0, |s| s.len as u64);
        let others = self.schedule_keys - old_len;
        let new_len = schedule.as_ref().map_or(0, |s| s.len as u64);
        if others + new_len > max_keys {
            return Err(others);
        }
        self.schedule_keys = others + new_len;
        Ok(match schedule {
            Some(schedule) => self.schedules.insert(namespace, schedule),
            None => self.schedules.remove(&namespace),
        })
    }

    /// Keys in all schedules together.
    pub fn schedule_keys(&self) -> u64 {
        self.schedule_keys
    }

    /// A fetch used `id`: it becomes the most recently used, and its
    /// namespace's position moves to it. Returns its slot, which names it
    /// to [`Policy::accessed_at`] until it is removed.
    pub fn accessed(&mut self, id: ShardRef<'_>) -> Option<u32> {
        self.advance_schedule(id);
        // The hot path of every hit: the id moves to the end without being
        // cloned.
        let slot = *self.slots.get(&id)?;
        self.recency.touch(slot);
        Some(slot)
    }

    /// [`Policy::accessed`] of `id`, whose slot the caller knows is still
    /// `slot` (it has not been removed since): no lookup of the id.
    pub fn accessed_at(&mut self, id: ShardRef<'_>, slot: u32) {
        self.advance_schedule(id);
        debug_assert!(
            self.recency.holds(slot, id),
            "slot {slot} no longer holds {}/{}",
            id.0,
            id.1
        );
        self.recency.touch(slot);
    }

    fn advance_schedule(&mut self, id: ShardRef<'_>) {
        // Most daemons have no schedule: no hashing of the namespace then.
        if let Some(schedule) = (!self.schedules.is_empty())
            .then(|| self.schedules.get_mut(id.0))
            .flatten()
        {
            schedule.advance_to(id.1);
        }
    }

    /// `id` became resident.
    pub fn inserted(&mut self, id: ShardId) {
        match self.slots.get(&ShardRef::from(&id)) {
            Some(&slot) => self.recency.touch(slot),
            None => {
                let slot = self.recency.push(id.clone());
                self.slots.insert(id, slot);
            }
        }
    }

    /// `id` is no longer resident.
    pub fn removed(&mut self, id: &ShardId) {
        if let Some(slot) = self.slots.remove(id) {
            self.recency.remove(slot);
        }
    }

    /// The shard to evict among those `evictable` allows, if any.
    pub fn victim(&self, evictable: impl Fn(&ShardId) -> bool) -> Option<ShardId> {
        let mut candidates = self.recency.iter().filter(|id| evictable(id));
        match self.kind {
            PolicyKind::Lru => candidates.next().cloned(),
            PolicyKind::Schedule => {
                // Oldest first, so that among equals the least recently used wins.
                let mut best: Option<(u32, &ShardId)> = None;
                for id in candidates {
                    let distance = self
                        .schedules
                        .get(&id.0)
                        .and_then(|s| s.distance(&id.1))
                        .unwrap_or(u32::MAX);
                    if distance == u32::MAX {
                        return Some(id.clone());
                    }
                    if best.is_none_or(|(d, _)| distance > d) {
                        best = Some((distance, id));
                    }
                }
                best.map(|(_, id)| id.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn id(ns: &str, key: &str) -> ShardId {
        (Namespace::new(ns).unwrap(), Key::new(key).unwrap())
    }

    /// Replays `steps` passes of `order` through a cache of `capacity`
    /// shards; returns the hit ratio of all but the first pass.
    fn replay(kind: PolicyKind, order: &[Key], capacity: usize, steps: usize, register: bool) -> f64 {
        let ns = Namespace::new("job").unwrap();
        let mut policy = Policy::new(kind);
        if register {
            policy.set_schedule(ns.clone(), order);
        }
        let mut resident: HashSet<ShardId> = HashSet::new();
        let (mut hits, mut total) = (0, 0);
        for step in 0..steps {
            for key in order {
                let shard = (ns.clone(), key.clone());
                policy.accessed((&shard).into());
                let hit = resident.contains(&shard);
                if step > 0 {
                    total += 1;
                    hits += hit as u32;
                }
                if !hit {
                    if resident.len() == capacity {
                        let victim = policy.victim(|_| true).unwrap();
                        resident.remove(&victim);
                        policy.removed(&victim);
                    }
                    resident.insert(shard.clone());
                    policy.inserted(shard);
                }
            }
        }
        hits as f64 / total as f64
    }

    fn layers(n: usize) -> Vec<Key> {
        (0..n).map(|i| Key::new(format!("layers.{i}")).unwrap()).collect()
    }

    #[test]
    fn a_cyclic_scan_thrashes_lru_and_not_the_schedule() {
        let order = layers(10);
        let lru = replay(PolicyKind::Lru, &order, 8, 20, true);
        let schedule = replay(PolicyKind::Schedule, &order, 8, 20, true);
        eprintln!("cyclic scan of 10 shards through 8 slots: LRU hit ratio {lru:.2}, schedule {schedule:.2}");
        assert_eq!(lru, 0.0);
        assert!(schedule >= 0.65, "{schedule}");
        // Without a registered order the schedule policy is LRU.
        assert_eq!(replay(PolicyKind::Schedule, &order, 8, 20, false), 0.0);
    }

    /// Forward then backward is the pattern LRU handles best; following the
    /// order must do at least as well.
    #[test]
    fn forward_then_backward_order_is_no_worse_than_lru() {
        // Forward 0..8 then backward 7..0: each layer occurs twice per step.
        let fwd = layers(8);
        let order: Vec<Key> = fwd.iter().cloned().chain(fwd.iter().rev().cloned()).collect();
        let lru = replay(PolicyKind::Lru, &order, 5, 10, true);
        let schedule = replay(PolicyKind::Schedule, &order, 5, 10, true);
        eprintln!("forward+backward over 8 layers, 5 slots: LRU {lru:.2}, schedule {schedule:.2}");
        assert!(schedule >= lru, "schedule {schedule} vs lru {lru}");
    }

    #[test]
    fn schedules_together_stay_under_their_key_cap_and_a_replacement_counts_once() {
        let mut policy = Policy::new(PolicyKind::Schedule);
        let ns = |n: &str| Namespace::new(n).unwrap();
        let order = |n: usize| Some(Schedule::new(&layers(n)));
        assert!(policy.install_schedule(ns("a"), order(6), 10).is_ok());
        assert_eq!(policy.install_schedule(ns("b"), order(5), 10).unwrap_err(), 6);
        assert!(policy.install_schedule(ns("b"), order(4), 10).is_ok());
        // Replacing a's 6 keys with 6 others fits; with 7 it would not.
        assert!(policy.install_schedule(ns("a"), order(6), 10).unwrap().is_some());
        assert_eq!(policy.install_schedule(ns("a"), order(7), 10).unwrap_err(), 4);
        assert_eq!(policy.schedule_keys(), 10);
        policy.set_schedule(ns("a"), &[]);
        assert_eq!(policy.schedule_keys(), 4);
    }

    #[test]
    fn a_borrowed_id_finds_what_its_owned_id_stored() {
        let mut map: IdMap<u32> = IdMap::default();
        map.insert(id("job", "layers.0"), 0);
        map.insert(id("job", "layers.1"), 1);
        let (ns, key) = (Namespace::new("job").unwrap(), Key::new("layers.1").unwrap());
        assert_eq!(map.get(&ShardRef(&ns, &key)), Some(&1));
        let other = Namespace::new("other").unwrap();
        assert_eq!(map.get(&ShardRef(&other, &key)), None);
    }

    #[test]
    fn an_access_makes_a_shard_the_most_recently_used() {
        let mut policy = Policy::new(PolicyKind::Lru);
        for key in ["a", "b", "c"] {
            policy.inserted(id("job", key));
        }
        assert_eq!(policy.victim(|_| true), Some(id("job", "a")));
        policy.accessed((&id("job", "a")).into());
        assert_eq!(policy.victim(|_| true), Some(id("job", "b")));
        policy.accessed((&id("job", "b")).into());
        policy.removed(&id("job", "c"));
        assert_eq!(policy.victim(|_| true), Some(id("job", "a")));
        // A shard that is not resident is not tracked by an access.
        policy.accessed((&id("job", "gone")).into());
        policy.removed(&id("job", "a"));
        policy.removed(&id("job", "b"));
        assert_eq!(policy.victim(|_| true), None);
    }

    #[test]
    fn distance_and_unscheduled_shards_go_first() {
        let order = layers(4);
        let mut policy = Policy::new(PolicyKind::Schedule);
        policy.set_schedule(Namespace::new("job").unwrap(), &order);
        for i in 0..4 {
            policy.inserted(id("job", &format!("layers.{i}")));
        }
        policy.inserted(id("other", "x"));
        policy.accessed((&id("job", "layers.1")).into());
        // The unscheduled shard goes first, then the one used just now (next use a full step away).
        assert_eq!(policy.victim(|_| true), Some(id("other", "x")));
        policy.removed(&id("other", "x"));
        assert_eq!(policy.victim(|_| true), Some(id("job", "layers.1")));
        // Leased shards are skipped.
        assert_eq!(
            policy.victim(|s| s.1.as_str() != "layers.1"),
            Some(id("job", "layers.0"))
        );
    }
}
