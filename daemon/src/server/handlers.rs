//! Request handlers, and the one place where store errors become wire
//! statuses (logged once, at the level they deserve).

use std::sync::atomic::Ordering;

use serde::de::DeserializeOwned;
use shardd_protocol::{
    DeleteRequest, DeleteResponse, FetchRequest, FetchResponse, ListRequest, ListResponse,
    MAX_CONTROL_LEN, MAX_LIST_LIMIT, Opcode, PutResponse, ShardMeta, StatRequest, StatResponse,
    Status, StatusResponse, codec,
};
use tracing::Instrument;

use super::ServerContext;
use super::connection::Responder;
use super::frame::OutFrame;
use crate::store::{BufferScope, ShardWriter, StoreError};

/// Runs one request that has no payload and answers it.
pub async fn handle(
    ctx: &ServerContext,
    op: Opcode,
    id: u64,
    control: &[u8],
    responder: &Responder,
    scope: BufferScope,
) {
    match op {
        Opcode::Ping => {
            responder.send(OutFrame::empty_ok(op, id)).await;
        }
        Opcode::Status => {
            let status = status(ctx).await;
            responder.send(OutFrame::ok(op, id, &status)).await;
        }
        Opcode::Stat => {
            let Some(req) = decode::<StatRequest>(op, id, control, responder).await else {
                return;
            };
            match ctx.store.stat(&req.namespace, &req.key) {
                Ok(meta) => {
                    responder
                        .send(OutFrame::ok(op, id, &StatResponse { meta }))
                        .await;
                }
                Err(e) => answer_store_error(ctx, responder, op, id, &e).await,
            }
        }
        Opcode::List => {
            let Some(req) = decode::<ListRequest>(op, id, control, responder).await else {
                return;
            };
            responder.send(OutFrame::ok(op, id, &list(ctx, req))).await;
        }
        Opcode::Delete => {
            let Some(req) = decode::<DeleteRequest>(op, id, control, responder).await else {
                return;
            };
            let span =
                tracing::debug_span!("delete", id, namespace = %req.namespace, key = %req.key);
            match ctx
                .store
                .delete(&req.namespace, &req.key, req.version)
                .instrument(span.clone())
                .await
            {
                Ok(version) => {
                    responder
                        .send(OutFrame::ok(op, id, &DeleteResponse { version }))
                        .await;
                }
                Err(e) => {
                    answer_store_error(ctx, responder, op, id, &e)
                        .instrument(span)
                        .await
                }
            }
        }
        Opcode::Fetch => {
            let Some(req) = decode::<FetchRequest>(op, id, control, responder).await else {
                return;
            };
            let span =
                tracing::debug_span!("fetch", id, namespace = %req.namespace, key = %req.key);
            fetch(ctx, id, req, responder, scope).instrument(span).await;
        }
        Opcode::Hello | Opcode::Put => {
            // Taken by the connection itself; never dispatched here.
            let message = format!("{op} cannot be handled here");
            responder
                .send(OutFrame::error(op, id, Status::Internal, message, None))
                .await;
        }
    }
}

async fn decode<T: DeserializeOwned>(
    op: Opcode,
    id: u64,
    control: &[u8],
    responder: &Responder,
) -> Option<T> {
    match codec::decode(control) {
        Ok(value) => Some(value),
        Err(e) => {
            tracing::debug!(%op, id, error = %e, "malformed request");
            responder
                .send(OutFrame::error(
                    op,
                    id,
                    Status::BadRequest,
                    e.to_string(),
                    None,
                ))
                .await;
            None
        }
    }
}

async fn fetch(
    ctx: &ServerContext,
    id: u64,
    req: FetchRequest,
    responder: &Responder,
    scope: BufferScope,
) {
    let op = Opcode::Fetch;
    let reader = match ctx.store.open_reader(&req.namespace, &req.key).await {
        Ok(reader) => reader,
        Err(e) => return answer_store_error(ctx, responder, op, id, &e).await,
    };
    let meta = reader.meta().clone();
    let (offset, len): (u64, u64) = match req.range {
        None => (0, meta.len),
        Some(range) => match range.offset.checked_add(range.len) {
            Some(end) if end <= meta.len => (range.offset, range.len),
            _ => {
                let message = format!(
                    "range {}+{} lies outside {}/{} ({} bytes)",
                    range.offset, range.len, meta.namespace, meta.key, meta.len
                );
                return answer_store_error(
                    ctx,
                    responder,
                    op,
                    id,
                    &StoreError::BadRequest(message),
                )
                .await;
            }
        },
    };
    if let Some(max) = req.max_len {
        if len > max {
            let message = format!("the answer has {len} bytes, the client takes at most {max}");
            return answer_store_error(ctx, responder, op, id, &StoreError::TooLarge(message))
                .await;
        }
    }
    let head = match codec::encode(&FetchResponse { meta, offset, len }) {
        Ok(control) => control,
        Err(e) => {
            let error = StoreError::io("encode fetch answer", std::io::Error::other(e));
            return answer_store_error(ctx, responder, op, id, &error).await;
        }
    };
    if len == 0 {
        responder
            .send(OutFrame::new(op, id, Status::Ok, false, head, None))
            .await;
        return;
    }
    let mut head = Some(head);
    let mut chunks = reader.chunks(offset, len, scope);
    let mut sent = 0u64;
    while let Some(next) = chunks.next().await {
        let chunk = match next {
            Ok(chunk) => chunk,
            Err(e) => return answer_store_error(ctx, responder, op, id, &e).await,
        };
        sent += chunk.range.len() as u64;
        let more = sent < len;
        // The first frame carries the FetchResponse; the rest only bytes.
        let control = head.take().unwrap_or_default();
        if !responder
            .send(OutFrame::new(
                op,
                id,
                Status::Ok,
                more,
                control,
                Some(chunk),
            ))
            .await
        {
            return; // the connection is gone
        }
    }
    ctx.bytes_out.fetch_add(sent, Ordering::Relaxed);
}

/// Bytes a `ShardMeta` takes in a control message (fixed-width encoding).
fn encoded_meta_len(meta: &ShardMeta) -> usize {
    56 + meta.namespace.as_str().len() + meta.key.as_str().len() + 8 * meta.shape.len()
}

fn list(ctx: &ServerContext, req: ListRequest) -> ListResponse {
    let limit = req.limit.clamp(1, MAX_LIST_LIMIT) as usize;
    let (mut shards, mut more) = ctx.store.list(
        &req.namespace,
        &req.prefix,
        req.start_after.as_deref(),
        limit,
    );
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

async fn status(ctx: &ServerContext) -> StatusResponse {
    let store = ctx.store.status().await;
    StatusResponse {
        server: ctx.server_name.clone(),
        uptime_secs: ctx.started.elapsed().as_secs(),
        io_engine: ctx.store.engine().name().to_string(),
        shards: store.shards,
        bytes: store.bytes,
        quarantined: store.quarantined,
        connections: ctx.connections.load(Ordering::Relaxed),
        data_dirs: store.data_dirs,
    }
}

/// Finishes a put whose payload has been read and answers it.
pub async fn commit_put(ctx: &ServerContext, responder: &Responder, id: u64, writer: ShardWriter) {
    match writer.commit().await {
        Ok(meta) => {
            ctx.bytes_in.fetch_add(meta.len, Ordering::Relaxed);
            tracing::debug!(version = meta.version, "stored");
            responder
                .send(OutFrame::ok(Opcode::Put, id, &PutResponse { meta }))
                .await;
        }
        Err(e) => answer_store_error(ctx, responder, Opcode::Put, id, &e).await,
    }
}

/// Answers a failed request: maps the error to its status, logs it once
/// at a level that fits, and sends the error frame.
pub async fn answer_store_error(
    ctx: &ServerContext,
    responder: &Responder,
    op: Opcode,
    id: u64,
    e: &StoreError,
) {
    let status = e.status();
    match status {
        Status::Internal => tracing::error!(%op, id, error = %e, "request failed"),
        Status::NoSpace => tracing::warn!(%op, id, error = %e, "request refused"),
        // Quarantines are logged where they happen; the rest is the client's business.
        _ => tracing::debug!(%op, id, %status, error = %e, "request refused"),
    }
    ctx.errors.fetch_add(1, Ordering::Relaxed);
    responder
        .send(OutFrame::error(
            op,
            id,
            status,
            e.to_string(),
            e.current_version(),
        ))
        .await;
}
