//! Chunk buffers under a memory budget.
//!
//! Every chunk buffer on the data path (a fetch chunk waiting to be sent, a
//! put chunk on its way to the drive) holds a share of two budgets: the
//! daemon-wide one and its connection's [`BufferScope`]. A connection whose
//! client stops reading therefore pins at most its own scope, and the daemon
//! as a whole never holds more than its budget in chunk buffers.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::io::{ALIGN, AlignedBuf, BufferPool, align_up};

/// A connection's share of the buffer budget.
pub type BufferScope = Arc<Semaphore>;

/// The daemon's chunk buffers.
#[derive(Debug)]
pub struct Buffers {
    pool: BufferPool,
    global: Arc<Semaphore>,
    budget_bytes: u64,
}

/// Budget units: one per ALIGN bytes, so a u32 permit count covers 16 TiB.
fn units(bytes: u64) -> u32 {
    (align_up(bytes) / ALIGN as u64).min(u32::MAX as u64) as u32
}

impl Buffers {
    /// Buffers of `chunk_size` bytes, at most `budget_bytes` in use at once.
    pub fn new(chunk_size: usize, budget_bytes: u64) -> Buffers {
        Buffers {
            pool: BufferPool::new(chunk_size),
            global: Arc::new(Semaphore::new(units(budget_bytes) as usize)),
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

    /// A new per-connection scope of `bytes`.
    pub fn scope(&self, bytes: u64) -> BufferScope {
        Arc::new(Semaphore::new(units(bytes) as usize))
    }

    /// A buffer of at least `size` bytes, waiting until both budgets allow it.
    pub async fn take(&self, scope: &BufferScope, size: usize) -> AlignedBuf {
        let n = units(size as u64);
        // Neither semaphore is ever closed, so acquiring cannot fail.
        let local = scope.clone().acquire_many_owned(n).await;
        let global = self.global.clone().acquire_many_owned(n).await;
        match (local, global) {
            (Ok(local), Ok(global)) => self.buffer(size, local, global),
            _ => unreachable!("buffer budget semaphores are never closed"),
        }
    }

    /// Like [`Buffers::take`] but returns `None` instead of waiting.
    pub fn try_take(&self, scope: &BufferScope, size: usize) -> Option<AlignedBuf> {
        let n = units(size as u64);
        let local = scope.clone().try_acquire_many_owned(n).ok()?;
        let global = self.global.clone().try_acquire_many_owned(n).ok()?;
        Some(self.buffer(size, local, global))
    }

    fn buffer(&self, size: usize, local: OwnedSemaphorePermit, global: OwnedSemaphorePermit) -> AlignedBuf {
        let mut buf = if size <= self.pool.buf_size() {
            self.pool.take()
        } else {
            AlignedBuf::new(size)
        };
        buf.set_guard((local, global));
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
}
