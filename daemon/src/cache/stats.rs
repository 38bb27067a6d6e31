//! The hot tier's counters and sizes.

use std::sync::atomic::{AtomicU64, Ordering};

use shardd_protocol::ArenaStatus;

use super::{Cache, Slot};

/// Counters of the hot tier.
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) hits: AtomicU64,
    pub(super) misses: AtomicU64,
    pub(super) bypassed: AtomicU64,
    pub(super) loads: AtomicU64,
    pub(super) evictions: AtomicU64,
    pub(super) demoted: AtomicU64,
    pub(super) prefetch_queued: AtomicU64,
    pub(super) prefetch_completed: AtomicU64,
    pub(super) prefetch_late: AtomicU64,
    pub(super) prefetch_unused: AtomicU64,
    pub(super) write_back_puts: AtomicU64,
    pub(super) flush_failures: AtomicU64,
    pub(super) flush_retries: AtomicU64,
    pub(super) flushes_recovered: AtomicU64,
    pub(super) flushes_superseded: AtomicU64,
    pub(super) checksum_failures: AtomicU64,
    pub(super) contiguous: AtomicU64,
    pub(super) scattered: AtomicU64,
    pub(super) adopted_shards: AtomicU64,
    pub(super) adopted_bytes: AtomicU64,
    pub(super) adoption_discarded: AtomicU64,
}

impl Cache {
    /// The tier's counters and sizes.
    pub fn status(&self) -> ArenaStatus {
        let (resident_shards, resident_bytes, dirty_bytes, leased_shards) = {
            let state = self.state();
            let ready = state.entries.values().filter_map(|slot| match slot {
                Slot::Ready(shard) => Some(shard),
                Slot::Loading(_) => None,
            });
            let (n, bytes, leased) = ready.fold((0u64, 0u64, 0u64), |(n, b, l), s| {
                (n + 1, b + s.meta.len, l + u64::from(s.leases() > 0))
            });
            (n, bytes, state.dirty_bytes, leased)
        };
        let arena = &self.inner.arena;
        let stats = &self.inner.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ArenaStatus {
            capacity_bytes: arena.capacity(),
            used_bytes: arena.used(),
            locked_bytes: arena.locked().bytes,
            populated_bytes: arena.populated_bytes(),
            fixed_buffers: self.inner.store.engine().fixed_buffers(),
            policy: self.inner.config.policy.name().to_string(),
            resident_shards,
            resident_bytes,
            dirty_bytes,
            leased_shards,
            hits: get(&stats.hits),
            misses: get(&stats.misses),
            bypassed: get(&stats.bypassed),
            loads: get(&stats.loads),
            evictions: get(&stats.evictions),
            demoted: get(&stats.demoted),
            prefetch_queued: get(&stats.prefetch_queued),
            prefetch_completed: get(&stats.prefetch_completed),
            prefetch_late: get(&stats.prefetch_late),
            prefetch_unused: get(&stats.prefetch_unused),
            write_back_puts: get(&stats.write_back_puts),
            flush_failures: get(&stats.flush_failures),
            flush_retries: get(&stats.flush_retries),
            flushes_recovered: get(&stats.flushes_recovered),
            flushes_superseded: get(&stats.flushes_superseded),
            checksum_failures: get(&stats.checksum_failures),
            scrubbed_bytes: arena.scrubbed().0,
            contiguous_shards: get(&stats.contiguous),
            scattered_shards: get(&stats.scattered),
            adopted_shards: get(&stats.adopted_shards),
            adopted_bytes: get(&stats.adopted_bytes),
            adoption_discarded: get(&stats.adoption_discarded),
        }
    }
}
