//! What one client's requests share: who it is, its share of the buffer budget,
//! whether it mapped the arena, and the leases of its zero-copy views.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shardd_protocol::Status;

use super::prepared::PreparedBatches;
use super::regions::{PassedFds, RegionLimits, Regions};
use crate::access::Identity;
use crate::cache::Lease;
use crate::io::AlignedBuf;
use crate::store::{BufferScope, StoreError};

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

impl Held {
    /// The arena blocks held: (address, bytes) of each.
    fn blocks(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        let blocks = match self {
            Held::Shard(lease) => lease.chunks(),
            Held::Chunks(blocks) => blocks,
        };
        blocks.iter().map(|b| (b.as_ptr() as usize, b.capacity() as u64))
    }
}

/// How many leases one client may hold, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct LeaseLimits {
    /// Leases at once (`server.max_leases`).
    pub count: u32,
    /// Bytes they pin at once (`server.max_lease_bytes`).
    pub bytes: u64,
    /// How long one lasts (`server.lease_timeout`).
    pub timeout: Duration,
}

/// A lease the client holds.
#[derive(Debug)]
struct Leased {
    /// Holding it keeps the blocks in place.
    held: Held,
    granted: Instant,
}

#[derive(Debug, Default)]
struct Leases {
    /// By id. Ids are given out under the same lock as the grant times, so
    /// the first entry is always the oldest lease (the next to expire).
    by_id: BTreeMap<u64, Leased>,
    /// The blocks the leases hold, by address: how many leases hold each.
    /// Views of pieces of one shard often share blocks (and a view of a
    /// resident shard holds all of them): a block is pinned once however
    /// many of the client's leases hold it.
    blocks: HashMap<usize, u32>,
    /// Bytes of the blocks held.
    bytes: u64,
}

impl Leases {
    /// Bytes `held` would add to what the leases pin.
    fn added_bytes(&self, held: &Held) -> u64 {
        held.blocks()
            .filter(|(addr, _)| !self.blocks.contains_key(addr))
            .map(|(_, bytes)| bytes)
            .sum()
    }

    fn insert(&mut self, id: u64, leased: Leased) {
        for (addr, bytes) in leased.held.blocks() {
            let holders = self.blocks.entry(addr).or_insert(0);
            if *holders == 0 {
                self.bytes += bytes;
            }
            *holders += 1;
        }
        self.by_id.insert(id, leased);
    }

    /// Forgets `leased`, just taken out of `by_id`.
    fn forget(&mut self, leased: &Leased) {
        for (addr, bytes) in leased.held.blocks() {
            if let std::collections::hash_map::Entry::Occupied(mut holders) = self.blocks.entry(addr) {
                *holders.get_mut() -= 1;
                if *holders.get() == 0 {
                    holders.remove();
                    self.bytes -= bytes;
                }
            }
        }
    }
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
    leases: Mutex<Leases>,
    limits: LeaseLimits,
    next_lease: AtomicU64,
    /// Regions of the client's memory it registered.
    pub regions: Regions,
    /// Fetch batches it keeps to run again by id.
    pub prepared: PreparedBatches,
    /// Descriptors the client sent (Unix socket only), each waiting for
    /// the region registration it came with.
    pub passed_fds: Option<Arc<PassedFds>>,
}

impl Session {
    /// State for a new client; `passed_fds` where descriptors can come.
    pub fn new(
        identity: Identity,
        scope: BufferScope,
        arena_mapped: bool,
        limits: LeaseLimits,
        regions: RegionLimits,
        passed_fds: Option<Arc<PassedFds>>,
    ) -> Session {
        Session {
            identity,
            scope,
            arena_mapped,
            leases: Mutex::new(Leases::default()),
            limits,
            next_lease: AtomicU64::new(1),
            regions: Regions::new(regions),
            prepared: PreparedBatches::default(),
            passed_fds,
        }
    }

    fn leases(&self) -> MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives `held` to the client under a new lease id, if the client stays
    /// within its lease limits.
    pub(super) fn lease(&self, held: Held) -> Result<u64, StoreError> {
        let mut leases = self.leases();
        let limits = &self.limits;
        if leases.by_id.len() >= limits.count as usize {
            return Err(StoreError::Other {
                status: Status::Busy,
                message: format!(
                    "this connection holds {} leases of views, the most it may (server.max_leases): release views first",
                    leases.by_id.len()
                ),
            });
        }
        let bytes = leases.added_bytes(&held);
        if leases.bytes + bytes > limits.bytes {
            return Err(StoreError::Other {
                status: Status::Busy,
                message: format!(
                    "this connection's views pin {} bytes; {bytes} more would pass server.max_lease_bytes ({}): \
                     release views first",
                    leases.bytes, limits.bytes
                ),
            });
        }
        let id = self.next_lease.fetch_add(1, Ordering::Relaxed);
        leases.insert(
            id,
            Leased {
                held,
                granted: Instant::now(),
            },
        );
        Ok(id)
    }

    /// Drops the leases `ids` (unknown ids are ignored); returns how many
    /// the client held.
    pub fn release(&self, ids: &[u64]) -> u32 {
        if ids.is_empty() {
            return 0;
        }
        let mut leases = self.leases();
        let mut released = 0;
        for id in ids {
            if let Some(leased) = leases.by_id.remove(id) {
                leases.forget(&leased);
                released += 1;
            }
        }
        released
    }

    /// Whether the client holds leases.
    pub fn holds_leases(&self) -> bool {
        !self.leases().by_id.is_empty()
    }

    /// When the oldest lease runs out, if the client holds any.
    pub fn next_expiry(&self) -> Option<Instant> {
        let oldest = self.leases().by_id.first_key_value().map(|(_, l)| l.granted);
        oldest.map(|granted| granted + self.limits.timeout)
    }

    /// Revokes the leases held for `server.lease_timeout`: their blocks are
    /// reused `grace` from now (the client's views stop reading at the
    /// timeout counted from when they were asked for, which is earlier).
    /// Returns how many were revoked.
    pub fn revoke_expired(&self, grace: Duration) -> usize {
        let now = Instant::now();
        let timeout = self.limits.timeout;
        let revoked: Vec<Leased> = {
            let mut leases = self.leases();
            let mut revoked = Vec::new();
            // Oldest first: stop at the first that still runs.
            while let Some(entry) = leases.by_id.first_entry() {
                if entry.get().granted + timeout > now {
                    break;
                }
                let leased = entry.remove();
                leases.forget(&leased);
                revoked.push(leased);
            }
            revoked
        };
        let count = revoked.len();
        if count > 0 {
            tracing::info!(
                leases = count,
                "revoked leases of views held longer than server.lease_timeout ({timeout:?})"
            );
            release_after(revoked, grace);
        }
        count
    }

    /// Gives back every lease of a client that has gone, `grace` from now
    /// (time for it to stop reading views it may still be reading).
    pub fn retire_leases(&self, grace: Duration) {
        let leases = std::mem::take(&mut *self.leases());
        if leases.by_id.is_empty() {
            return;
        }
        tracing::debug!(
            leases = leases.by_id.len(),
            "leases of the closed connection end in {grace:?}"
        );
        release_after(leases.by_id.into_values().collect(), grace);
    }
}

/// Drops `leases` `grace` from now.
fn release_after(leases: Vec<Leased>, grace: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        drop(leases);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Peer;
    use crate::store::Buffers;

    fn session(max_bytes: u64) -> Session {
        let identity = Identity::resolve(Peer::UnixUnknown);
        let limits = LeaseLimits {
            count: 16,
            bytes: max_bytes,
            timeout: Duration::from_secs(60),
        };
        let regions = RegionLimits { count: 1, bytes: 1 };
        Session::new(
            identity,
            Buffers::new(4096, 1 << 20).scope(1 << 20),
            true,
            limits,
            regions,
            None,
        )
    }

    fn block() -> Arc<AlignedBuf> {
        Arc::new(AlignedBuf::new(4096))
    }

    #[test]
    fn a_block_held_by_several_leases_is_counted_once() {
        let session = session(3 * 4096);
        let (a, b, c, d) = (block(), block(), block(), block());
        let first = session.lease(Held::Chunks(vec![a.clone(), b.clone()])).unwrap();
        // The same blocks again, and one more: within three blocks.
        session.lease(Held::Chunks(vec![a.clone(), b.clone()])).unwrap();
        let third = session.lease(Held::Chunks(vec![b.clone(), c.clone()])).unwrap();
        assert_eq!(session.leases().bytes, 3 * 4096);
        // A fourth block would pass the limit, and says which.
        let refused = session.lease(Held::Chunks(vec![d.clone()])).unwrap_err();
        assert!(refused.to_string().contains("server.max_lease_bytes"), "{refused}");
        // `a` is still held by the second lease; `c` goes with the third.
        assert_eq!(session.release(&[first, third]), 2);
        assert_eq!(session.leases().bytes, 2 * 4096);
        session.lease(Held::Chunks(vec![d])).unwrap();
        assert_eq!(session.leases().bytes, 3 * 4096);
    }
}
