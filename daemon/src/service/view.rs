//! Zero-copy fetches: the shard is made resident (or the chunks asked for
//! are read into the arena) and leased to the session; the answer says
//! where its bytes are in the shared arena. A lease keeps what it holds
//! from being evicted or reused until the client releases it.

use shardd_protocol::{
    Extent, FetchRequest, ReleaseRequest, ReleaseResponse, ShardMeta, Status, ViewRequest, ViewResponse,
};

use super::fetch::fetch_range;
use super::session::Held;
use super::{Service, Session};
use crate::cache::policy::ShardRef;
use crate::cache::shard::pieces;
use crate::cache::{Access, Cache, Follow, Followed, Lease, Lookup, Started};
use crate::store::StoreError;

impl Service {
    /// A view of a shard in the arena, at once; `None` when it is not
    /// resident (then [`Service::view`] loads it). Never waits. The leases
    /// the request gives back are released first, whatever the answer.
    pub fn view_resident(&self, req: &ViewRequest, session: &Session) -> Option<Result<ViewResponse, StoreError>> {
        session.release(&req.release);
        let cache = self.cache()?;
        let lease = cache.try_hit(&req.fetch.namespace, &req.fetch.key, Access::of_view(req.continued))?;
        Some(lease.and_then(|lease| view(cache, &req.fetch, session, lease)))
    }

    /// [`Service::view_resident`] of each member of a batch (whose leases to
    /// give back the caller released), under one taking of the cache's
    /// lock.
    pub fn view_resident_many(
        &self,
        members: &[FetchRequest],
        session: &Session,
    ) -> Vec<Option<Result<ViewResponse, StoreError>>> {
        let Some(cache) = self.cache() else {
            return members.iter().map(|_| None).collect();
        };
        let ids = members.iter().map(|m| Some(ShardRef(&m.namespace, &m.key)));
        cache
            .try_hit_many(ids)
            .into_iter()
            .zip(members)
            .map(|(hit, member)| Some(hit?.and_then(|lease| view(cache, member, session, lease))))
            .collect()
    }

    /// A view of a shard [`Service::view_resident`] did not find resident
    /// (and whose leases to give back it released): waits for the shard's
    /// load (or, for a range, for the chunks it covers); `busy` when the
    /// arena cannot place it now and `if_resident` asked not to load.
    pub async fn view(&self, req: ViewRequest, session: &Session) -> Result<ViewResponse, StoreError> {
        let cache = self.arena()?;
        require_mapped(session)?;
        let ViewRequest {
            fetch: req,
            if_resident,
            continued,
            ..
        } = req;
        let access = Access::of_view(continued);
        if if_resident {
            return match cache.try_hit(&req.namespace, &req.key, access) {
                Some(lease) => view(cache, &req, session, lease?),
                None => Err(StoreError::Other {
                    status: Status::Busy,
                    message: format!("{}/{} is not in the arena now", req.namespace, req.key),
                }),
            };
        }
        let unplaceable = |reason: String, too_large: bool| {
            // Too large never fits; otherwise the arena is full of shards in use.
            let (status, when) = if too_large {
                (Status::TooLarge, "")
            } else {
                (Status::Busy, " now")
            };
            StoreError::Other {
                status,
                message: format!(
                    "{}/{} cannot be placed in the arena{when}: {reason}",
                    req.namespace, req.key
                ),
            }
        };
        if req.range.is_none() {
            // A whole shard waits for its load, and its lease keeps it resident.
            return match cache.fetch(&req.namespace, &req.key).await? {
                Lookup::Resident(lease) => view(cache, &req, session, lease),
                Lookup::Bypass { reason, too_large } => Err(unplaceable(reason, too_large)),
            };
        }
        match cache.fetch_following(&req.namespace, &req.key, access)? {
            Followed::Resident(lease) => view(cache, &req, session, lease),
            Followed::Loading(mut load) => match load.started().await? {
                Started::Loading(meta, chunk_size) => view_loading(cache, &req, session, meta, chunk_size, load).await,
                Started::Bypass { reason, too_large } => Err(unplaceable(reason, too_large)),
            },
        }
    }

    /// Gives back the session's leases a release names.
    pub fn release(&self, req: &ReleaseRequest, session: &Session) -> ReleaseResponse {
        ReleaseResponse {
            released: session.release(&req.leases),
        }
    }
}

/// A view of a range of a shard still loading: answered as soon as the
/// chunks it covers are read and verified (a view of the first piece of a
/// large shard does not wait for the rest), its lease holding those chunks
/// (the shard, once loaded, may leave the arena under it; the chunks stay).
async fn view_loading(
    cache: &Cache,
    req: &FetchRequest,
    session: &Session,
    meta: ShardMeta,
    chunk_size: u32,
    mut load: Follow,
) -> Result<ViewResponse, StoreError> {
    let (offset, len) = fetch_range(&meta, req)?;
    let arena = cache.arena();
    let mut held = Vec::new();
    let mut extents = Vec::new();
    for (chunk, range) in pieces(meta.len, chunk_size, offset, len) {
        let block = load.chunk(chunk).await?;
        push_extent(
            &mut extents,
            Extent {
                offset: arena.offset_of(block.as_ptr()) + range.start as u64,
                len: range.len() as u64,
            },
        );
        held.push(block);
    }
    Ok(ViewResponse {
        meta,
        offset,
        len,
        lease: session.lease(Held::Chunks(held))?,
        extents,
    })
}

/// Adds `extent`, merged into the last one if it continues it (the chunks
/// of a shard placed in one range of the arena make one extent).
fn push_extent(extents: &mut Vec<Extent>, extent: Extent) {
    match extents.last_mut() {
        Some(last) if last.offset + last.len == extent.offset => last.len += extent.len,
        _ => extents.push(extent),
    }
}

fn require_mapped(session: &Session) -> Result<(), StoreError> {
    if session.arena_mapped {
        return Ok(());
    }
    Err(StoreError::BadRequest(
        "zero-copy fetches need the arena mapped: ask for it in the hello, over the Unix socket".into(),
    ))
}

/// A view of a leased shard: where its bytes are in the arena; the lease
/// goes to the session until released.
fn view(cache: &Cache, req: &FetchRequest, session: &Session, lease: Lease) -> Result<ViewResponse, StoreError> {
    require_mapped(session)?;
    let (offset, len) = fetch_range(&lease.meta, req)?;
    let arena = cache.arena();
    let mut extents = Vec::new();
    for (chunk, range) in lease.pieces(offset, len) {
        let extent = Extent {
            offset: arena.offset_of(lease.chunks()[chunk].as_ptr()) + range.start as u64,
            len: range.len() as u64,
        };
        push_extent(&mut extents, extent);
    }
    let meta = lease.meta.clone();
    Ok(ViewResponse {
        meta,
        offset,
        len,
        lease: session.lease(Held::Shard(lease))?,
        extents,
    })
}
