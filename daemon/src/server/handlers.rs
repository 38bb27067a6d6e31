//! Request handlers, and the one place where store errors become wire
//! statuses (logged once, at the level they deserve).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;
use shardd_protocol::{
    DeleteRequest, DeleteResponse, EvictRequest, Extent, FetchRequest, FetchResponse, ListRequest, ListResponse,
    MAX_CONTROL_LEN, MAX_LIST_LIMIT, Opcode, PrefetchRequest, PutResponse, ReleaseRequest, ReleaseResponse,
    ScheduleRequest, ScheduleResponse, ShardMeta, StatRequest, StatResponse, Status, StatusResponse, VerifyRequest,
    ViewRequest, ViewResponse, codec,
};
use tracing::Instrument;

use super::ServerContext;
use super::connection::Responder;
use super::frame::{OutFrame, Payload};
use crate::cache::shard::pieces;
use crate::cache::{Access, Cache, Follow, Followed, Lease, Lookup, Started};
use crate::io::AlignedBuf;
use crate::store::{BufferScope, ShardWriter, StoreError};

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

/// What a connection's requests share.
#[derive(Debug)]
pub struct ConnShared {
    /// The connection's share of the buffer budget.
    pub scope: BufferScope,
    /// Whether the client mapped the arena (zero-copy fetches allowed).
    pub arena_mapped: bool,
    /// Leases of zero-copy views the client holds, by id; all go
    /// [`super::connection::LEASE_GRACE`] after the connection closed.
    pub leases: Mutex<HashMap<u64, Held>>,
    next_lease: AtomicU64,
}

impl ConnShared {
    /// State for a new connection.
    pub fn new(scope: BufferScope, arena_mapped: bool) -> ConnShared {
        ConnShared {
            scope,
            arena_mapped,
            leases: Mutex::new(HashMap::new()),
            next_lease: AtomicU64::new(1),
        }
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Held>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the connection holds leases.
    pub fn holds_leases(&self) -> bool {
        !self.leases().is_empty()
    }

    /// Gives back every lease of a closed connection, `grace` from now.
    pub fn retire_leases(&self, grace: std::time::Duration) {
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

/// Runs one request that has no payload and answers it.
pub async fn handle(
    ctx: &ServerContext,
    op: Opcode,
    id: u64,
    control: &[u8],
    responder: &Responder,
    conn: &Arc<ConnShared>,
) {
    let result = match op {
        Opcode::Ping => {
            responder.send(OutFrame::empty_ok(op, id)).await;
            return;
        }
        Opcode::Status => Ok(answer(op, id, &status(ctx).await)),
        Opcode::Stat => match decode::<StatRequest>(control) {
            Ok(req) => stat(ctx, &req).map(|r| answer(op, id, &r)),
            Err(e) => Err(e),
        },
        Opcode::List => decode::<ListRequest>(control).map(|req| answer(op, id, &list(ctx, req))),
        Opcode::Delete => match decode::<DeleteRequest>(control) {
            Ok(req) => {
                let span = tracing::debug_span!("delete", id, namespace = %req.namespace, key = %req.key);
                delete(ctx, &req)
                    .instrument(span)
                    .await
                    .map(|version| answer(op, id, &DeleteResponse { version }))
            }
            Err(e) => Err(e),
        },
        Opcode::Fetch => match decode::<FetchRequest>(control) {
            Ok(req) => {
                let span = tracing::debug_span!(
                    "fetch",
                    id,
                    namespace = %req.namespace,
                    key = %req.key,
                    bytes = tracing::field::Empty
                );
                fetch(ctx, id, req, responder, conn).instrument(span).await;
                return;
            }
            Err(e) => Err(e),
        },
        Opcode::FetchView => match decode::<ViewRequest>(control) {
            Ok(ViewRequest {
                fetch: req,
                release: done,
                if_resident,
                continued,
            }) => {
                release_leases(conn, &done);
                let span = tracing::debug_span!("fetch_view", id, namespace = %req.namespace, key = %req.key);
                fetch_view(ctx, req, if_resident, continued, conn)
                    .instrument(span)
                    .await
                    .map(|view| answer(op, id, &view))
            }
            Err(e) => Err(e),
        },
        Opcode::Release => decode::<ReleaseRequest>(control).map(|req| answer(op, id, &release(conn, &req))),
        Opcode::Prefetch => match (decode::<PrefetchRequest>(control), cache(ctx)) {
            (Ok(req), Ok(cache)) => Ok(answer(op, id, &cache.prefetch(&req.namespace, req.items))),
            (Err(e), _) | (_, Err(e)) => Err(e),
        },
        Opcode::Evict => match (decode::<EvictRequest>(control), cache(ctx)) {
            (Ok(req), Ok(cache)) => Ok(answer(op, id, &cache.evict(&req.namespace, &req.keys, req.mode).await)),
            (Err(e), _) | (_, Err(e)) => Err(e),
        },
        Opcode::Schedule => match (decode::<ScheduleRequest>(control), cache(ctx)) {
            (Ok(req), Ok(cache)) => {
                cache.set_schedule(req.namespace, &req.keys);
                Ok(answer(
                    op,
                    id,
                    &ScheduleResponse {
                        len: req.keys.len() as u32,
                    },
                ))
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        },
        Opcode::Verify => match (decode::<VerifyRequest>(control), cache(ctx)) {
            (Ok(req), Ok(cache)) => {
                let span = tracing::debug_span!("verify", id, namespace = %req.namespace, key = %req.key);
                let checked = cache
                    .verify(&req.namespace, &req.key, req.version)
                    .instrument(span)
                    .await;
                Ok(answer(op, id, &checked))
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        },
        Opcode::Hello | Opcode::Put => Err(StoreError::Other {
            status: Status::Internal,
            message: format!("{op} cannot be handled here"),
        }),
    };
    match result {
        Ok(frame) => {
            responder.send(frame).await;
        }
        Err(e) => answer_store_error(responder, op, id, &e).await,
    }
}

fn answer<T: Serialize>(op: Opcode, id: u64, message: &T) -> OutFrame {
    OutFrame::ok(op, id, message)
}

fn decode<T: DeserializeOwned>(control: &[u8]) -> Result<T, StoreError> {
    codec::decode(control).map_err(|e| StoreError::BadRequest(e.to_string()))
}

fn cache(ctx: &ServerContext) -> Result<&Cache, StoreError> {
    ctx.cache
        .as_ref()
        .ok_or_else(|| StoreError::BadRequest("this daemon has no pinned-memory arena (arena.size = 0)".into()))
}

fn stat(ctx: &ServerContext, req: &StatRequest) -> Result<StatResponse, StoreError> {
    match &ctx.cache {
        Some(cache) => {
            let (meta, cache) = cache.stat(&req.namespace, &req.key)?;
            Ok(StatResponse { meta, cache })
        }
        None => Ok(StatResponse {
            meta: ctx.store.stat(&req.namespace, &req.key)?,
            cache: Default::default(),
        }),
    }
}

async fn delete(ctx: &ServerContext, req: &DeleteRequest) -> Result<u64, StoreError> {
    match &ctx.cache {
        Some(cache) => cache.delete(&req.namespace, &req.key, req.version).await,
        None => ctx.store.delete(&req.namespace, &req.key, req.version).await,
    }
}

/// The part of the shard a fetch asks for, checked against the shard and
/// the client's limit.
fn fetch_range(meta: &ShardMeta, req: &FetchRequest) -> Result<(u64, u64), StoreError> {
    let (offset, len) = match req.range {
        None => (0, meta.len),
        Some(range) => match range.offset.checked_add(range.len) {
            Some(end) if end <= meta.len => (range.offset, range.len),
            _ => {
                return Err(StoreError::BadRequest(format!(
                    "range {}+{} lies outside {}/{} ({} bytes)",
                    range.offset, range.len, meta.namespace, meta.key, meta.len
                )));
            }
        },
    };
    match req.max_len {
        Some(max) if len > max => Err(StoreError::TooLarge(format!(
            "the answer has {len} bytes, the client takes at most {max}"
        ))),
        _ => Ok((offset, len)),
    }
}

async fn fetch(ctx: &ServerContext, id: u64, req: FetchRequest, responder: &Responder, conn: &ConnShared) {
    let op = Opcode::Fetch;
    let reader = match &ctx.cache {
        Some(cache) => match cache.fetch_following(&req.namespace, &req.key, Access::Fetch) {
            Ok(Followed::Resident(lease)) => {
                let frames = cached_frames(id, &req, lease).unwrap_or_else(|e| vec![error_frame(op, id, &e)]);
                send_all(responder, frames).await;
                return;
            }
            Ok(Followed::Loading(mut load)) => match load.started().await {
                Ok(Started::Loading(meta, chunk_size)) => {
                    return follow(id, &req, responder, load, meta, chunk_size).await;
                }
                Ok(Started::Bypass { reason, .. }) => {
                    tracing::debug!(%reason, "reading straight from the drive");
                    ctx.store.open_reader(&req.namespace, &req.key).await
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
        None => ctx.store.open_reader(&req.namespace, &req.key).await,
    };
    let reader = match reader {
        Ok(reader) => reader,
        Err(e) => return answer_store_error(responder, op, id, &e).await,
    };
    let (offset, len) = match fetch_range(reader.meta(), &req) {
        Ok(range) => range,
        Err(e) => return answer_store_error(responder, op, id, &e).await,
    };
    let head = match fetch_head(reader.meta(), offset, len) {
        Ok(head) => head,
        Err(e) => return answer_store_error(responder, op, id, &e).await,
    };
    if len == 0 {
        responder
            .send(OutFrame::new(op, id, Status::Ok, false, head, None))
            .await;
        return;
    }
    // The first frame carries the FetchResponse; the rest only bytes.
    let mut head = Some(head);
    let mut sent = 0u64;
    let mut chunks = reader.chunks(offset, len, conn.scope.clone());
    while let Some(next) = chunks.next().await {
        let chunk = match next {
            Ok(chunk) => chunk,
            Err(e) => return answer_store_error(responder, op, id, &e).await,
        };
        sent += chunk.range.len() as u64;
        let control = head.take().unwrap_or_default();
        let frame = OutFrame::new(op, id, Status::Ok, sent < len, control, Some(Payload::Chunk(chunk)));
        if !responder.send(frame).await {
            return; // the connection is gone
        }
    }
}

/// Answers a fetch from a shard loading into the arena, sending each chunk
/// as soon as the load has read and verified it.
async fn follow(
    id: u64,
    req: &FetchRequest,
    responder: &Responder,
    mut load: Follow,
    meta: ShardMeta,
    chunk_size: u32,
) {
    let op = Opcode::Fetch;
    let (offset, len) = match fetch_range(&meta, req) {
        Ok(range) => range,
        Err(e) => return answer_store_error(responder, op, id, &e).await,
    };
    let mut head = match fetch_head(&meta, offset, len) {
        Ok(head) => Some(head),
        Err(e) => return answer_store_error(responder, op, id, &e).await,
    };
    if len == 0 {
        let head = head.take().unwrap_or_default();
        responder
            .send(OutFrame::new(op, id, Status::Ok, false, head, None))
            .await;
        return;
    }
    let mut sent = 0u64;
    for (chunk, range) in pieces(meta.len, chunk_size, offset, len) {
        let block = match load.chunk(chunk).await {
            Ok(block) => block,
            Err(e) => return answer_store_error(responder, op, id, &e).await,
        };
        sent += range.len() as u64;
        let control = head.take().unwrap_or_default();
        let payload = Payload::Loading { block, range };
        if !responder
            .send(OutFrame::new(op, id, Status::Ok, sent < len, control, Some(payload)))
            .await
        {
            return; // the connection is gone
        }
    }
}

async fn send_all(responder: &Responder, frames: Vec<OutFrame>) {
    for frame in frames {
        if !responder.send(frame).await {
            return; // the connection is gone
        }
    }
}

/// The control message of a fetch answer's first frame.
fn fetch_head(meta: &ShardMeta, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
    tracing::Span::current().record("bytes", len);
    codec::encode(&FetchResponse {
        meta: meta.clone(),
        offset,
        len,
    })
    .map_err(|e| StoreError::io("encode fetch answer", std::io::Error::other(e)))
}

/// A zero-copy fetch: the shard is made resident and leased to the
/// connection; the answer says where its bytes are in the shared arena.
async fn fetch_view(
    ctx: &ServerContext,
    req: FetchRequest,
    if_resident: bool,
    continued: bool,
    conn: &ConnShared,
) -> Result<ViewResponse, StoreError> {
    let cache = cache(ctx)?;
    require_mapped(conn)?;
    let access = Access::of_view(continued);
    if if_resident {
        return match cache.try_hit(&req.namespace, &req.key, access) {
            Some(lease) => view(cache, &req, conn, lease?),
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
            Lookup::Resident(lease) => view(cache, &req, conn, lease),
            Lookup::Bypass { reason, too_large } => Err(unplaceable(reason, too_large)),
        };
    }
    match cache.fetch_following(&req.namespace, &req.key, access)? {
        Followed::Resident(lease) => view(cache, &req, conn, lease),
        Followed::Loading(mut load) => match load.started().await? {
            Started::Loading(meta, chunk_size) => view_loading(cache, &req, conn, meta, chunk_size, load).await,
            Started::Bypass { reason, too_large } => Err(unplaceable(reason, too_large)),
        },
    }
}

/// A view of a range of a shard still loading: answered as soon as the
/// chunks it covers are read and verified (a view of the first piece of a
/// large shard does not wait for the rest), its lease holding those chunks
/// (the shard, once loaded, may leave the arena under it; the chunks stay).
async fn view_loading(
    cache: &Cache,
    req: &FetchRequest,
    conn: &ConnShared,
    meta: ShardMeta,
    chunk_size: u32,
    mut load: Follow,
) -> Result<ViewResponse, StoreError> {
    require_mapped(conn)?;
    let (offset, len) = fetch_range(&meta, req)?;
    let arena = cache.arena();
    let mut held = Vec::new();
    let mut extents = Vec::new();
    for (chunk, range) in pieces(meta.len, chunk_size, offset, len) {
        let block = load.chunk(chunk).await?;
        extents.push(Extent {
            offset: arena.offset_of(block.as_ptr()) + range.start as u64,
            len: range.len() as u64,
        });
        held.push(block);
    }
    let id = conn.next_lease.fetch_add(1, Ordering::Relaxed);
    conn.leases().insert(id, Held::Chunks(held));
    Ok(ViewResponse {
        meta,
        offset,
        len,
        lease: id,
        extents,
    })
}

fn require_mapped(conn: &ConnShared) -> Result<(), StoreError> {
    if conn.arena_mapped {
        return Ok(());
    }
    Err(StoreError::BadRequest(
        "zero-copy fetches need the arena mapped: ask for it in the hello, over the Unix socket".into(),
    ))
}

/// A view of a leased shard: where its bytes are in the arena; the lease
/// goes to the connection until released.
fn view(cache: &Cache, req: &FetchRequest, conn: &ConnShared, lease: Lease) -> Result<ViewResponse, StoreError> {
    require_mapped(conn)?;
    let (offset, len) = fetch_range(&lease.meta, req)?;
    let arena = cache.arena();
    let extents = lease
        .pieces(offset, len)
        .map(|(chunk, range)| Extent {
            offset: arena.offset_of(lease.chunks()[chunk].as_ptr()) + range.start as u64,
            len: range.len() as u64,
        })
        .collect();
    let meta = lease.meta.clone();
    let id = conn.next_lease.fetch_add(1, Ordering::Relaxed);
    conn.leases().insert(id, Held::Shard(lease));
    Ok(ViewResponse {
        meta,
        offset,
        len,
        lease: id,
        extents,
    })
}

/// Bytes a `ShardMeta` takes in a control message (fixed-width encoding).
fn encoded_meta_len(meta: &ShardMeta) -> usize {
    56 + meta.namespace.as_str().len() + meta.key.as_str().len() + 8 * meta.shape.len()
}

fn list(ctx: &ServerContext, req: ListRequest) -> ListResponse {
    let limit = req.limit.clamp(1, MAX_LIST_LIMIT) as usize;
    let (mut shards, mut more) = ctx
        .store
        .list(&req.namespace, &req.prefix, req.start_after.as_deref(), limit);
    // Shards acknowledged from memory and not on the drive yet are listed
    // too, in place of the drive's older version.
    if let Some(cache) = &ctx.cache {
        let unflushed: Vec<ShardMeta> = cache
            .unflushed(&req.namespace)
            .into_iter()
            .filter(|m| m.key.as_str().starts_with(&req.prefix))
            .filter(|m| req.start_after.as_deref().is_none_or(|after| m.key.as_str() > after))
            .collect();
        if !unflushed.is_empty() {
            shards.retain(|m| !unflushed.iter().any(|u| u.key == m.key));
            shards.extend(unflushed);
            shards.sort_by(|a, b| a.key.cmp(&b.key));
            if shards.len() > limit {
                // Keep the page contiguous: what is cut comes on the next page.
                shards.truncate(limit);
                more = true;
            }
        }
    }
    // Keep the answer within the control limit, with room for the framing.
    let budget = MAX_CONTROL_LEN as usize - 64;
    let mut used = 16;
    let fits = shards
        .iter()
        .take_while(|m| {
            used += encoded_meta_len(m);
            used <= budget
        })
        .count();
    if fits < shards.len() {
        shards.truncate(fits);
        more = true;
    }
    ListResponse { shards, more }
}

/// The daemon's status (also served as JSON over HTTP).
pub async fn status(ctx: &ServerContext) -> StatusResponse {
    let store = ctx.store.status().await;
    StatusResponse {
        server: ctx.server_name.clone(),
        uptime_secs: ctx.started.elapsed().as_secs(),
        io_engine: ctx.store.engine().name().to_string(),
        shards: store.shards,
        bytes: store.bytes,
        quarantined: store.quarantined,
        connections: ctx.connections.load(Ordering::Relaxed),
        listen: ctx.listen.get().cloned().unwrap_or_default(),
        data_dirs: store.data_dirs,
        arena: ctx.cache.as_ref().map(Cache::status),
    }
}

/// Finishes a put whose payload has been read and answers it. A put into
/// arena blocks keeps them as the cached copy; otherwise a cached older
/// version is dropped.
pub async fn commit_put(ctx: &ServerContext, responder: &Responder, id: u64, writer: ShardWriter, kept: bool) {
    let result = if kept {
        writer.commit_keeping_chunks().await.map(|(meta, chunks)| {
            if let Some(cache) = &ctx.cache {
                cache.install(meta.clone(), chunks);
            }
            meta
        })
    } else {
        writer.commit().await.inspect(|meta| {
            if let Some(cache) = &ctx.cache {
                cache.forget_older(&meta.namespace, &meta.key, meta.version);
            }
        })
    };
    match result {
        Ok(meta) => {
            tracing::debug!(version = meta.version, "stored");
            responder
                .send(OutFrame::ok(Opcode::Put, id, &PutResponse { meta }))
                .await;
        }
        Err(e) => answer_store_error(responder, Opcode::Put, id, &e).await,
    }
}

/// Answers a failed request: maps the error to its status, logs it once
/// at a level that fits, and sends the error frame.
pub async fn answer_store_error(responder: &Responder, op: Opcode, id: u64, e: &StoreError) {
    responder.send(error_frame(op, id, e)).await;
}

/// The one place where an error becomes a status: logged once at a level
/// that fits, counted, and turned into the error frame.
fn error_frame(op: Opcode, id: u64, e: &StoreError) -> OutFrame {
    let status = e.status();
    match status {
        Status::Internal => tracing::error!(%op, id, error = %e, "request failed"),
        Status::NoSpace => tracing::warn!(%op, id, error = %e, "request refused"),
        // Quarantines are logged where they happen; the rest is the client's business.
        _ => tracing::debug!(%op, id, %status, error = %e, "request refused"),
    }
    OutFrame::error(op, id, status, e.to_string(), e.current_version())
}

/// Answers a request on the spot when that needs no waiting: a ping, a
/// stat, a release, or a fetch of a shard that is in the arena. `None`
/// means the request may wait (a load, the drive) and runs as its own task.
pub fn answer_now(
    ctx: &ServerContext,
    op: Opcode,
    id: u64,
    control: &[u8],
    conn: &ConnShared,
) -> Option<Vec<OutFrame>> {
    let result = match op {
        Opcode::Ping => return Some(vec![OutFrame::empty_ok(op, id)]),
        Opcode::Stat => decode::<StatRequest>(control)
            .and_then(|req| stat(ctx, &req))
            .map(|r| vec![answer(op, id, &r)]),
        Opcode::Release => decode::<ReleaseRequest>(control).map(|req| vec![answer(op, id, &release(conn, &req))]),
        Opcode::Fetch | Opcode::FetchView => {
            let cache = ctx.cache.as_ref()?;
            let decoded = if op == Opcode::Fetch {
                decode::<FetchRequest>(control).map(|req| (req, Access::Fetch))
            } else {
                decode::<ViewRequest>(control).map(|view| {
                    release_leases(conn, &view.release);
                    (view.fetch, Access::of_view(view.continued))
                })
            };
            let (req, access) = match decoded {
                Ok(decoded) => decoded,
                Err(e) => return Some(vec![error_frame(op, id, &e)]),
            };
            let lease = match cache.try_hit(&req.namespace, &req.key, access)? {
                Ok(lease) => lease,
                Err(e) => return Some(vec![error_frame(op, id, &e)]),
            };
            if op == Opcode::Fetch {
                cached_frames(id, &req, lease)
            } else {
                view(cache, &req, conn, lease).map(|v| vec![answer(op, id, &v)])
            }
        }
        _ => return None,
    };
    Some(result.unwrap_or_else(|e| vec![error_frame(op, id, &e)]))
}

/// The frames of a fetch answered from the arena.
fn cached_frames(id: u64, req: &FetchRequest, lease: Lease) -> Result<Vec<OutFrame>, StoreError> {
    let op = Opcode::Fetch;
    let (offset, len) = fetch_range(&lease.meta, req)?;
    let head = fetch_head(&lease.meta, offset, len)?;
    if len == 0 {
        return Ok(vec![OutFrame::new(op, id, Status::Ok, false, head, None)]);
    }
    let mut head = Some(head);
    let mut sent = 0;
    let frames = lease
        .pieces(offset, len)
        .map(|(chunk, range)| {
            sent += range.len() as u64;
            let payload = Payload::Cached {
                lease: lease.clone(),
                chunk,
                range,
            };
            OutFrame::new(
                op,
                id,
                Status::Ok,
                sent < len,
                head.take().unwrap_or_default(),
                Some(payload),
            )
        })
        .collect();
    Ok(frames)
}

fn release(conn: &ConnShared, req: &ReleaseRequest) -> ReleaseResponse {
    ReleaseResponse {
        released: release_leases(conn, &req.leases),
    }
}

/// Drops the connection's leases `ids` (unknown ids are ignored); returns
/// how many it held.
fn release_leases(conn: &ConnShared, ids: &[u64]) -> u32 {
    if ids.is_empty() {
        return 0;
    }
    let mut leases = conn.leases();
    ids.iter().filter(|l| leases.remove(l).is_some()).count() as u32
}
