//! Chunk buffers under a memory budget.
//!
//! Every chunk buffer on the data path (a fetch chunk waiting to be sent, a
//! put chunk on its way to the drive) holds a share of two budgets: the
//! daemon-wide one and its connection's [`BufferScope`]. A connection whose
//! client stops reading therefore pins at most its own scope, and the daemon
//! as a whole never holds more than its budget in chunk buffers.
//!
//! Slow readers must not slow the others: a quarter of the budget is kept
//! for floors, [`FLOOR_CHUNKS`] chunks that a connection gets for itself
//! when it opens (while the floors last). Its buffers come from its floor
//! first, from the shared rest beyond, so a connection with a floor always
//! has chunks to work with however many others hold theirs unread.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::io::{ALIGN, AlignedBuf, BufferPool, align_up};

/// Chunks of a connection's floor.
pub const FLOOR_CHUNKS: u64 = 2;

/// A connection's share of the buffer budget.
pub type BufferScope = Arc<Scope>;

/// What one connection (or one internal user) may hold in chunk buffers.
#[derive(Debug)]
pub struct Scope {
    /// At most this much at once.
    cap: Arc<Semaphore>,
    /// Its own part of the budget, if it got one.
    floor: Option<Floor>,
}

#[derive(Debug)]
struct Floor {
    units: Arc<Semaphore>,
    /// The floor's units, taken from the pool of floors until the scope ends.
    _reserved: OwnedSemaphorePermit,
}

impl Scope {
    /// Whether it has a floor of its own.
    pub fn has_floor(&self) -> bool {
        self.floor.is_some()
    }
}

/// The daemon's chunk buffers.
#[derive(Debug)]
pub struct Buffers {
    pool: BufferPool,
    /// The budget shared by all, beyond the floors.
    global: Arc<Semaphore>,
    /// What is kept for floors.
    floors: Arc<Semaphore>,
    floor_units: u32,
    budget_bytes: u64,
}

/// Budget units: one per ALIGN bytes, so a u32 permit count covers 16 TiB.
fn units(bytes: u64) -> u32 {
    (align_up(bytes) / ALIGN as u64).min(u32::MAX as u64) as u32
}

impl Buffers {
    /// Buffers of `chunk_size` bytes, at most `budget_bytes` in use at once.
    pub fn new(chunk_size: usize, budget_bytes: u64) -> Buffers {
        let floor_units = units(FLOOR_CHUNKS * chunk_size as u64);
        // A quarter of the budget for floors, in whole floors.
        let floors = units(budget_bytes / 4) / floor_units * floor_units;
        let shared = units(budget_bytes) - floors;
        Buffers {
            pool: BufferPool::new(chunk_size),
            global: Arc::new(Semaphore::new(shared as usize)),
            floors: Arc::new(Semaphore::new(floors as usize)),
            floor_units,
            budget_bytes,
        }
    }

    /// Size of the pooled buffers (the configured chunk size).
    pub fn pool_buf_size(&self) -> usize {
        self.pool.buf_size()
    }

    /// The daemon-wide budget in bytes.
    pub fn budget_bytes(&self) -> u64 {
        self.budget_bytes
    }

    /// A new scope of at most `bytes`, with a floor while floors last (a
    /// connection's).
    pub fn scope(&self, bytes: u64) -> BufferScope {
        let floor = self
            .floors
            .clone()
            .try_acquire_many_owned(self.floor_units)
            .ok()
            .map(|reserved| Floor {
                units: Arc::new(Semaphore::new(self.floor_units as usize)),
                _reserved: reserved,
            });
        Arc::new(Scope {
            cap: Arc::new(Semaphore::new(units(bytes) as usize)),
            floor,
        })
    }

    /// A buffer of at least `size` bytes, waiting until both budgets allow
    /// it: from the scope's floor if it has room, else from the shared
    /// budget, whichever frees first.
    pub async fn take(&self, scope: &BufferScope, size: usize) -> AlignedBuf {
        let n = units(size as u64);
        // Neither semaphore is ever closed, so acquiring cannot fail.
        let local = scope.cap.clone().acquire_many_owned(n).await;
        let Ok(local) = local else {
            unreachable!("buffer budget semaphores are never closed")
        };
        let share = match scope.floor.as_ref().filter(|_| n <= self.floor_units) {
            Some(floor) => tokio::select! {
                biased;
                own = floor.units.clone().acquire_many_owned(n) => own,
                shared = self.global.clone().acquire_many_owned(n) => shared,
            },
            None => self.global.clone().acquire_many_owned(n).await,
        };
        match share {
            Ok(share) => self.buffer(size, local, share),
            Err(_) => unreachable!("buffer budget semaphores are never closed"),
        }
    }

    /// Like [`Buffers::take`] but returns `None` instead of waiting.
    pub fn try_take(&self, scope: &BufferScope, size: usize) -> Option<AlignedBuf> {
        let n = units(size as u64);
        let local = scope.cap.clone().try_acquire_many_owned(n).ok()?;
        let own = scope
            .floor
            .as_ref()
            .and_then(|f| f.units.clone().try_acquire_many_owned(n).ok());
        let share = match own {
            Some(own) => own,
            None => self.global.clone().try_acquire_many_owned(n).ok()?,
        };
        Some(self.buffer(size, local, share))
    }

    fn buffer(&self, size: usize, local: OwnedSemaphorePermit, share: OwnedSemaphorePermit) -> AlignedBuf {
        let mut buf = if size <= self.pool.buf_size() {
            self.pool.take()
        } else {
            AlignedBuf::new(size)
        };
        buf.set_guard((local, share));
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn budget_is_released_when_buffers_drop() {
        let buffers = Buffers::new(8192, 16384);
        let scope = buffers.scope(1 << 20);
        let a = buffers.take(&scope, 8192).await;
        let b = buffers.take(&scope, 8192).await;
        assert!(buffers.try_take(&scope, 8192).is_none(), "global budget exhausted");
        drop(a);
        let c = buffers.try_take(&scope, 8192).expect("budget released");
        assert_eq!(c.capacity(), 8192);
        drop((b, c));

        let small_scope = buffers.scope(8192);
        let d = buffers.take(&small_scope, 8192).await;
        assert!(buffers.try_take(&small_scope, 4096).is_none(), "scope exhausted");
        drop(d);
        assert!(buffers.try_take(&small_scope, 4096).is_some());
    }

    #[tokio::test]
    async fn a_scope_with_a_floor_gets_buffers_when_others_hold_the_shared_budget() {
        // 64 KiB: 16 KiB (two floors of two 4 KiB chunks) kept for floors.
        let buffers = Buffers::new(4096, 64 << 10);
        let (a, b, c) = (buffers.scope(1 << 20), buffers.scope(1 << 20), buffers.scope(1 << 20));
        assert!(a.has_floor() && b.has_floor());
        assert!(!c.has_floor(), "floors last while the quarter kept for them does");
        // Slow readers hold the whole shared budget...
        let mut held = Vec::new();
        while let Some(buf) = buffers.try_take(&c, 4096) {
            held.push(buf);
        }
        assert_eq!(held.len(), 12);
        // ...and a scope with a floor still gets its two chunks, at once.
        let first = buffers.take(&a, 4096).await;
        let second = buffers.try_take(&a, 4096).expect("the floor's second chunk");
        assert!(
            buffers.try_take(&a, 4096).is_none(),
            "beyond its floor it waits like the others"
        );
        drop((first, second, held));
        drop(a);
        assert!(buffers.scope(1 << 20).has_floor(), "a closed scope's floor goes back");
    }
}
