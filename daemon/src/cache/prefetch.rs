//! The prefetch queue: hints wait in a priority queue (earliest deadline,
//! then lowest order, then first come) and one worker starts their loads
//! while the bytes of loads in flight stay within the prefetch budget.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use shardd_protocol::{Namespace, PrefetchItem, PrefetchResponse};
use tokio::sync::{Notify, Semaphore};

use super::load::Loading;
use super::policy::ShardId;
use super::{Cache, Inner, Slot};

/// Queued hints at most; more are refused until the queue drains.
const MAX_QUEUED: usize = 1 << 20;

/// Budget unit: one per 4 KiB, so a u32 permit count covers 16 TiB.
const UNIT: u64 = 4096;

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Hint {
    deadline: u64,
    order: u32,
    seq: u64,
    id: ShardId,
}

/// Hints waiting for a load.
#[derive(Debug)]
pub struct Queue {
    heap: Mutex<BinaryHeap<Reverse<Hint>>>,
    wake: Notify,
    seq: AtomicU64,
    budget: Arc<Semaphore>,
    budget_units: u32,
    closed: AtomicBool,
}

impl Queue {
    /// A queue whose loads in flight hold at most `budget_bytes`.
    pub fn new(budget_bytes: u64) -> Queue {
        let units = (budget_bytes / UNIT).clamp(1, u32::MAX as u64) as u32;
        Queue {
            heap: Mutex::new(BinaryHeap::new()),
            wake: Notify::new(),
            seq: AtomicU64::new(0),
            budget: Arc::new(Semaphore::new(units as usize)),
            budget_units: units,
            closed: AtomicBool::new(false),
        }
    }

    fn heap(&self) -> std::sync::MutexGuard<'_, BinaryHeap<Reverse<Hint>>> {
        self.heap.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the hints for `id` still waiting (an evict or delete of it
    /// came first); returns how many there were.
    pub fn forget(&self, id: &ShardId) -> usize {
        let mut heap = self.heap();
        let before = heap.len();
        heap.retain(|Reverse(hint)| hint.id != *id);
        before - heap.len()
    }

    /// Stops the worker.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.prefetch.close();
    }
}

/// Queues hints for shards that exist and are not in the arena.
pub fn enqueue(cache: &Cache, namespace: &Namespace, items: Vec<PrefetchItem>) -> PrefetchResponse {
    let mut response = PrefetchResponse::default();
    let queue = &cache.inner.prefetch;
    let mut hints = Vec::new();
    for item in items {
        let id = (namespace.clone(), item.key);
        if cache.present(&id) {
            response.resident += 1;
            continue;
        }
        if cache.inner.store.stat(&id.0, &id.1).is_err() {
            response.not_found.push(id.1);
            continue;
        }
        hints.push(Reverse(Hint {
            deadline: item.deadline_unix_ms.unwrap_or(u64::MAX),
            order: item.order,
            seq: queue.seq.fetch_add(1, Ordering::Relaxed),
            id,
        }));
    }
    {
        let mut heap = queue.heap();
        for hint in hints {
            if heap.len() >= MAX_QUEUED {
                break;
            }
            heap.push(hint);
            response.queued += 1;
        }
    }
    cache
        .inner
        .stats
        .prefetch_queued
        .fetch_add(response.queued as u64, Ordering::Relaxed);
    queue.wake.notify_one();
    response
}

/// Starts the worker. It holds the cache weakly and ends when the cache
/// is dropped.
pub fn spawn_worker(cache: Cache) {
    let weak: Weak<Inner> = Arc::downgrade(&cache.inner);
    let queue = cache.inner.prefetch.clone();
    drop(cache);
    tokio::spawn(async move {
        loop {
            if queue.closed.load(Ordering::Acquire) {
                return;
            }
            let wake = queue.wake.notified();
            let next = queue.heap().pop();
            let Some(Reverse(hint)) = next else {
                // Idle: wait for hints, holding no reference to the cache.
                wake.await;
                continue;
            };
            let Some(inner) = weak.upgrade() else { return };
            start_load(&Cache { inner }, hint.id).await;
        }
    });
}

/// Starts the load of `id` once the budget allows it.
async fn start_load(cache: &Cache, id: ShardId) {
    let Some(loading) = cache.begin_prefetch(&id) else {
        return;
    };
    let len = cache.inner.store.stat(&id.0, &id.1).map_or(0, |m| m.len);
    let queue = &cache.inner.prefetch;
    let units = (len.div_ceil(UNIT).max(1)).min(queue.budget_units as u64) as u32;
    let Ok(permit) = queue.budget.clone().acquire_many_owned(units).await else {
        return;
    };
    let cache = cache.clone();
    let tasks = cache.inner.load_tasks.clone();
    tasks.spawn(async move {
        if cache.load(id, loading).await.is_ok() {
            cache.inner.stats.prefetch_completed.fetch_add(1, Ordering::Relaxed);
        }
        drop(permit);
    });
}

impl Cache {
    /// Queues prefetches (see [`prefetch`]).
    pub fn prefetch(
        &self,
        namespace: &Namespace,
        items: Vec<shardd_protocol::PrefetchItem>,
    ) -> shardd_protocol::PrefetchResponse {
        enqueue(self, namespace, items)
    }

    /// Whether `id` is resident or loading.
    fn present(&self, id: &ShardId) -> bool {
        self.state().entries.contains_key(id)
    }

    /// Starts loading `id` for a prefetch unless it is present; returns the
    /// load to run, if any.
    fn begin_prefetch(&self, id: &ShardId) -> Option<Arc<Loading>> {
        let mut state = self.state();
        if state.entries.contains_key(id) {
            return None;
        }
        let loading = Loading::new(true);
        state.entries.insert(id.clone(), Slot::Loading(loading.clone()));
        Some(loading)
    }
}
