//! Fetch batches a client keeps on its connection and runs again by id
//! (`prepare_fetch`, `fetch_prepared`): a trainer gathers the same layer
//! every step, so its members are decoded, their names checked and their
//! places bounded once, and each step's request is a few bytes.
//!
//! What a kept batch holds is the request, and for each member a handle
//! on the shard its last run found in the arena (weak: it keeps none of
//! the shard's arena memory, only its record of a few hundred bytes until
//! the next run renews the handle). Every run checks the client's rights
//! and looks its regions up as a `fetch_batch` of the same members would,
//! and takes each shard through its handle only while the shard is still
//! its key's entry in the cache (looking the key up otherwise), so a
//! reload of the access table, a released region or a replaced, evicted
//! or deleted shard count at the next run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use shardd_protocol::{FetchBatchRequest, FetchRequest, RegionPlace};

use super::regions::busy;
use crate::cache::ResidentHandle;
use crate::store::StoreError;

/// Kept batches one connection may hold at once.
pub const MAX_PREPARED_BATCHES: usize = 64;

/// Members of kept batches one connection may hold at once (with names of
/// at most 320 bytes and a handle each, under 10 MiB of the daemon's
/// memory at the most).
pub const MAX_PREPARED_MEMBERS: usize = 16_384;

/// A kept fetch batch: its members, each bounded by its place, and the
/// places (one per member, or none).
#[derive(Debug)]
pub struct PreparedFetch {
    /// The members, `max_len` already bounded by their places.
    pub members: Vec<FetchRequest>,
    /// Where each goes; empty when the bytes come in payloads.
    pub places: Vec<RegionPlace>,
    /// Each member's shard as the last run found it in the arena: the next
    /// run takes a shard that is still its key's entry without looking the
    /// key up. Taken by a run while it looks (a run beside it looks up).
    handles: Mutex<Vec<Option<ResidentHandle>>>,
}

impl PreparedFetch {
    /// Keeps `req`: one place per member or none, as `fetch_batch` wants.
    pub fn new(req: FetchBatchRequest) -> Result<PreparedFetch, StoreError> {
        let FetchBatchRequest { mut members, places } = req;
        check_places(members.len(), places.len())?;
        for (member, place) in members.iter_mut().zip(&places) {
            bound_by_place(member, place);
        }
        let handles = Mutex::new(members.iter().map(|_| None).collect());
        Ok(PreparedFetch {
            members,
            places,
            handles,
        })
    }

    /// The members' handles, for a run to use and renew; one per member.
    pub fn take_handles(&self) -> Vec<Option<ResidentHandle>> {
        let mut handles = std::mem::take(&mut *self.handles.lock().unwrap_or_else(|p| p.into_inner()));
        handles.resize_with(self.members.len(), || None);
        handles
    }

    /// Gives back what [`PreparedFetch::take_handles`] took, renewed.
    pub fn put_handles(&self, handles: Vec<Option<ResidentHandle>>) {
        *self.handles.lock().unwrap_or_else(|p| p.into_inner()) = handles;
    }
}

/// A batch names one place per member, or none.
pub fn check_places(members: usize, places: usize) -> Result<(), StoreError> {
    if places == 0 || places == members {
        return Ok(());
    }
    Err(StoreError::BadRequest(format!(
        "a batch of {members} members names {places} places: one per member, or none"
    )))
}

/// A member's answer is bounded by its place as well as by its own
/// `max_len`.
pub fn bound_by_place(member: &mut FetchRequest, place: &RegionPlace) {
    member.max_len = Some(member.max_len.map_or(place.len, |max| max.min(place.len)));
}

/// One connection's kept batches.
#[derive(Debug)]
pub struct PreparedBatches {
    state: Mutex<State>,
    next: AtomicU32,
}

#[derive(Debug, Default)]
struct State {
    by_id: HashMap<u32, Arc<PreparedFetch>>,
    members: usize,
}

impl Default for PreparedBatches {
    fn default() -> PreparedBatches {
        PreparedBatches {
            state: Mutex::new(State::default()),
            next: AtomicU32::new(1),
        }
    }
}

impl PreparedBatches {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `batch`; its id. `busy` beyond [`MAX_PREPARED_BATCHES`] or
    /// [`MAX_PREPARED_MEMBERS`].
    pub fn add(&self, batch: PreparedFetch) -> Result<u32, StoreError> {
        let mut state = self.state();
        if state.by_id.len() >= MAX_PREPARED_BATCHES {
            return Err(busy(format!(
                "this connection keeps {} prepared batches, the most it may: release one first",
                state.by_id.len()
            )));
        }
        if state.members + batch.members.len() > MAX_PREPARED_MEMBERS {
            return Err(busy(format!(
                "this connection's prepared batches hold {} members; {} more would pass the {MAX_PREPARED_MEMBERS} \
                 it may keep: release one first",
                state.members,
                batch.members.len()
            )));
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        state.members += batch.members.len();
        state.by_id.insert(id, Arc::new(batch));
        Ok(id)
    }

    /// The batch `id`.
    pub fn get(&self, id: u32) -> Result<Arc<PreparedFetch>, StoreError> {
        self.state().by_id.get(&id).cloned().ok_or_else(|| {
            StoreError::BadRequest(format!(
                "batch {id} is not prepared on this connection (prepared batches end with their connection)"
            ))
        })
    }

    /// Forgets the batch `id`; whether it was kept. A run of it under way
    /// finishes.
    pub fn remove(&self, id: u32) -> bool {
        let mut state = self.state();
        let Some(batch) = state.by_id.remove(&id) else {
            return false;
        };
        state.members -= batch.members.len();
        true
    }
}

#[cfg(test)]
mod tests {
    use shardd_protocol::{Key, Namespace, Status};

    use super::*;

    fn member(key: &str, max_len: Option<u64>) -> FetchRequest {
        FetchRequest {
            namespace: Namespace::new("job").unwrap(),
            key: Key::new(key).unwrap(),
            range: None,
            max_len,
        }
    }

    fn batch(members: usize) -> FetchBatchRequest {
        FetchBatchRequest {
            members: (0..members).map(|i| member(&format!("k{i}"), None)).collect(),
            places: Vec::new(),
        }
    }

    #[test]
    fn a_kept_member_is_bounded_by_its_place_and_its_own_limit() {
        let place = |len| RegionPlace {
            region: 1,
            offset: 0,
            len,
        };
        let kept = PreparedFetch::new(FetchBatchRequest {
            members: vec![member("a", None), member("b", Some(100)), member("c", Some(10_000))],
            places: vec![place(4096), place(4096), place(4096)],
        })
        .unwrap();
        let bounds: Vec<_> = kept.members.iter().map(|m| m.max_len).collect();
        assert_eq!(bounds, [Some(4096), Some(100), Some(4096)]);
        let err = PreparedFetch::new(FetchBatchRequest {
            members: vec![member("a", None), member("b", None)],
            places: vec![place(1)],
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("a batch of 2 members names 1 places"), "{err}");
    }

    #[test]
    fn batches_are_kept_until_released_within_the_limits() {
        let kept = PreparedBatches::default();
        let first = kept.add(PreparedFetch::new(batch(3)).unwrap()).unwrap();
        assert_eq!(kept.get(first).unwrap().members.len(), 3);
        let unknown = kept.get(first + 100).unwrap_err().to_string();
        assert!(unknown.contains("is not prepared on this connection"), "{unknown}");
        assert!(kept.remove(first));
        assert!(!kept.remove(first));
        assert!(kept.get(first).is_err());

        // Members: up to the limit, and room again once one is released.
        let big = kept
            .add(PreparedFetch::new(batch(MAX_PREPARED_MEMBERS - 1)).unwrap())
            .unwrap();
        kept.add(PreparedFetch::new(batch(1)).unwrap()).unwrap();
        let full = kept.add(PreparedFetch::new(batch(1)).unwrap()).unwrap_err();
        assert_eq!(full.status(), Status::Busy);
        assert!(full.to_string().contains("release one first"), "{full}");
        assert!(kept.remove(big));

        // Batches: at most so many, whatever their size.
        while kept.state().by_id.len() < MAX_PREPARED_BATCHES {
            kept.add(PreparedFetch::new(batch(1)).unwrap()).unwrap();
        }
        let full = kept.add(PreparedFetch::new(batch(1)).unwrap()).unwrap_err();
        assert!(full.to_string().contains("keeps 64 prepared batches"), "{full}");
    }
}
