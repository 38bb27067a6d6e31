//! What one client's requests share: who it is, its share of the buffer budget,
//! whether it mapped the arena, and the leases of its zero-copy views.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::access::Identity;
use crate::cache::Lease;
use crate::io::AlignedBuf;
use crate::store::BufferScope;

/// What the lease of a zero-copy view holds.
#[derive(Debug)]
pub enum Held {
    /// The whole shard, resident: it is not evicted while held.
    Shard(Lease),
    /// The chunks a view of a shard still loading covers, each read and
    /// verified: their blocks are not reused while held (an eviction of
    /// the shard, once loaded, leaves them where they are until then).
    Chunks(Vec<Arc<AlignedBuf>>),
}

/// One client's state on the request path (one per connection).
#[derive(Debug)]
pub struct Session {
    /// Who the client is.
    pub identity: Identity,
    /// The client's share of the buffer budget.
    pub scope: BufferScope,
    /// Whether the client mapped the arena (zero-copy fetches allowed).
    pub arena_mapped: bool,
    /// Leases of zero-copy views the client holds, by id.
    leases: Mutex<HashMap<u64, Held>>,
    next_lease: AtomicU64,
}

impl Session {
    /// State for a new client.
    pub fn new(identity: Identity, scope: BufferScope, arena_mapped: bool) -> Session {
        Session {
            identity,
            scope,
            arena_mapped,
            leases: Mutex::new(HashMap::new()),
            next_lease: AtomicU64::new(1),
        }
    }

    fn leases(&self) -> MutexGuard<'_, HashMap<u64, Held>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives `held` to the client under a new lease id.
    pub(super) fn lease(&self, held: Held) -> u64 {
        let id = self.next_lease.fetch_add(1, Ordering::Relaxed);
        self.leases().insert(id, held);
        id
    }

    /// Drops the leases `ids` (unknown ids are ignored); returns how many
    /// the client held.
    pub fn release(&self, ids: &[u64]) -> u32 {
        if ids.is_empty() {
            return 0;
        }
        let mut leases = self.leases();
        ids.iter().filter(|l| leases.remove(l).is_some()).count() as u32
    }

    /// Whether the client holds leases.
    pub fn holds_leases(&self) -> bool {
        !self.leases().is_empty()
    }

    /// Gives back every lease of a client that has gone, `grace` from now
    /// (time for it to stop reading views it may still be reading).
    pub fn retire_leases(&self, grace: Duration) {
        let leases = std::mem::take(&mut *self.leases());
        if leases.is_empty() {
            return;
        }
        tracing::debug!(
            leases = leases.len(),
            "leases of the closed connection end in {grace:?}"
        );
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            drop(leases);
        });
    }
}
