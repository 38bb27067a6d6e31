//! The one dispatch table: each request's control message is decoded and
//! handed to the [`crate::service`], and what it returns is framed.
//!
//! What needs no waiting (ping, stat, list, release, prefetch, schedule,
//! and a fetch or view of a shard in the arena) is answered on the spot by
//! the connection's reader;
//! the rest runs as its own task, so that answers to pipelined requests can
//! overtake each other. Puts, whose payload the reader takes in, go through
//! [`super::connection`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use shardd_protocol::{
    DeleteRequest, DeleteResponse, DropNamespaceRequest, EvictRequest, FetchBatchRequest, FetchPreparedRequest,
    FetchRequest, ListRequest, NamespacesRequest, Opcode, PrefetchRequest, RegisterRegionRequest,
    ReleasePreparedRequest, ReleaseRegionRequest, ReleaseRequest, ScheduleRequest, SetQuotaRequest, SetQuotaResponse,
    StatBatchRequest, StatRequest, Status, VerifyRequest, ViewBatchRequest, ViewRequest, codec,
};
use tracing::Instrument;

use super::ServerContext;
use super::frame::OutFrame;
use super::gate::{admit, admit_batch, check_batch, may_read};
use super::responder::{Responder, answer, error_frame};
use super::{batch, regions};
use crate::service::quota::SetQuota;
use crate::service::{Fetch, Piece, Session};
use crate::store::StoreError;

/// How a request is answered.
pub enum Handled {
    /// At once: these frames.
    Now(Vec<OutFrame>),
    /// By this task, which sends its own frames.
    Later(Pin<Box<dyn Future<Output = ()> + Send>>),
}

impl std::fmt::Debug for Handled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Handled::Now(frames) => f.debug_tuple("Now").field(frames).finish(),
            Handled::Later(_) => f.write_str("Later(..)"),
        }
    }
}

fn now(frame: OutFrame) -> Handled {
    Handled::Now(vec![frame])
}

/// Routes request `op` (not a put or a hello) with control message
/// `control` from a client with `session`.
pub fn dispatch(
    ctx: &Arc<ServerContext>,
    op: Opcode,
    id: u64,
    control: Vec<u8>,
    session: &Arc<Session>,
    responder: &Responder,
) -> Handled {
    let service = &ctx.service;
    // Every request's control message is decoded by `admit`, which checks
    // it against the access table.
    let task = Task {
        ctx,
        session,
        responder,
    };
    match op {
        Opcode::Ping => now(OutFrame::empty_ok(op, id)),
        Opcode::Stat => now(answer(
            op,
            id,
            admit::<StatRequest>(ctx, session, &control).and_then(|r| service.stat(&r)),
        )),
        Opcode::Release => now(answer(
            op,
            id,
            admit::<ReleaseRequest>(ctx, session, &control).map(|r| service.release(&r, session)),
        )),
        Opcode::Fetch => {
            let req = match admit::<FetchRequest>(ctx, session, &control) {
                Ok(req) => req,
                Err(e) => return now(error_frame(op, id, &e)),
            };
            match service.fetch_resident(&req) {
                Some(Ok(fetch)) => Handled::Now(FetchFrames::new(id, &fetch).ready(fetch)),
                Some(Err(e)) => now(error_frame(op, id, &e)),
                None => task.later(move |ctx, session, responder| async move {
                    let span = tracing::debug_span!(
                        "fetch",
                        id,
                        namespace = %req.namespace,
                        key = %req.key,
                        bytes = tracing::field::Empty
                    );
                    let sent = async {
                        match ctx.service.fetch(&req, &session).await {
                            Ok(fetch) => send_fetch(&responder, id, fetch).await,
                            Err(e) => {
                                responder.send(error_frame(op, id, &e)).await;
                            }
                        }
                    };
                    sent.instrument(span).await;
                }),
            }
        }
        Opcode::FetchView => {
            let req = match admit::<ViewRequest>(ctx, session, &control) {
                Ok(req) => req,
                Err(e) => return now(error_frame(op, id, &e)),
            };
            match service.view_resident(&req, session) {
                Some(result) => now(answer(op, id, result)),
                None => task.later(move |ctx, session, responder| async move {
                    let span =
                        tracing::debug_span!("fetch_view", id, namespace = %req.fetch.namespace, key = %req.fetch.key);
                    let result = ctx.service.view(req, &session).instrument(span).await;
                    responder.send(answer(op, id, result)).await;
                }),
            }
        }
        Opcode::List => now(answer(
            op,
            id,
            admit::<ListRequest>(ctx, session, &control).map(|r| service.list(&r)),
        )),
        Opcode::Prefetch => now(answer(
            op,
            id,
            admit::<PrefetchRequest>(ctx, session, &control).and_then(|r| service.prefetch(r)),
        )),
        Opcode::Schedule => now(answer(
            op,
            id,
            admit::<ScheduleRequest>(ctx, session, &control).and_then(|r| service.schedule(r)),
        )),
        Opcode::Status => task.later(move |ctx, _, responder| async move {
            let status = ctx.status().await;
            responder.send(OutFrame::ok(op, id, &status)).await;
        }),
        Opcode::Delete => match admit::<DeleteRequest>(ctx, session, &control) {
            Ok(req) => task.later(move |ctx, _, responder| async move {
                let span = tracing::debug_span!("delete", id, namespace = %req.namespace, key = %req.key);
                let deleted = ctx.service.delete(&req).instrument(span).await;
                let result = deleted.map(|version| DeleteResponse { version });
                responder.send(answer(op, id, result)).await;
            }),
            Err(e) => now(error_frame(op, id, &e)),
        },
        Opcode::Evict => match admit::<EvictRequest>(ctx, session, &control) {
            Ok(req) => task.later(move |ctx, _, responder| async move {
                let result = ctx.service.evict(&req).await;
                responder.send(answer(op, id, result)).await;
            }),
            Err(e) => now(error_frame(op, id, &e)),
        },
        Opcode::Verify => match admit::<VerifyRequest>(ctx, session, &control) {
            Ok(req) => task.later(move |ctx, _, responder| async move {
                let span = tracing::debug_span!("verify", id, namespace = %req.namespace, key = %req.key);
                let result = ctx.service.verify(&req).instrument(span).await;
                responder.send(answer(op, id, result)).await;
            }),
            Err(e) => now(error_frame(op, id, &e)),
        },
        Opcode::Namespaces => match admit::<NamespacesRequest>(ctx, session, &control) {
            Ok(req) => {
                let visible = |ns: &shardd_protocol::Namespace| may_read(ctx, session, ns);
                now(OutFrame::ok(op, id, &service.namespaces(&req, visible)))
            }
            Err(e) => now(error_frame(op, id, &e)),
        },
        Opcode::DropNamespace => match admit::<DropNamespaceRequest>(ctx, session, &control) {
            Ok(req) => task.later(move |ctx, _, responder| async move {
                let span = tracing::info_span!("drop_namespace", id, namespace = %req.namespace);
                let result = ctx.service.drop_namespace(&req).instrument(span).await;
                responder.send(answer(op, id, result)).await;
            }),
            Err(e) => now(error_frame(op, id, &e)),
        },
        Opcode::SetQuota => match admit::<SetQuotaRequest>(ctx, session, &control) {
            Ok(req) => task.later(move |ctx, _, responder| async move {
                let quota = SetQuota {
                    max_drive_bytes: req.max_drive_bytes,
                    max_arena_bytes: req.max_arena_bytes,
                };
                let result = ctx
                    .service
                    .set_quota(&req.namespace, quota)
                    .await
                    .map(|limits| SetQuotaResponse {
                        max_drive_bytes: limits.drive.map(|q| q.max),
                        max_arena_bytes: limits.arena.map(|q| q.max),
                    });
                responder.send(answer(op, id, result)).await;
            }),
            Err(e) => now(error_frame(op, id, &e)),
        },
        Opcode::FetchBatch => match admit_batch::<FetchBatchRequest>(ctx, session, &control) {
            Ok(req) => batch::fetch_batch(task, id, req),
            Err(e) => now(error_frame(op, id, &e)),
        },
        Opcode::ViewBatch => match admit_batch::<ViewBatchRequest>(ctx, session, &control) {
            Ok(req) => batch::view_batch(task, id, req),
            Err(e) => now(error_frame(op, id, &e)),
        },
        Opcode::StatBatch => match admit_batch::<StatBatchRequest>(ctx, session, &control) {
            Ok(req) => batch::stat_batch(ctx, id, req),
            Err(e) => now(error_frame(op, id, &e)),
        },
        Opcode::RegisterRegion => match admit::<RegisterRegionRequest>(ctx, session, &control) {
            Ok(req) => regions::register(task, id, req),
            Err(e) => {
                // The memfd that came with the refused frame goes too, so
                // that the next registration takes its own.
                regions::forget_passed(session);
                now(error_frame(op, id, &e))
            }
        },
        Opcode::PrepareFetch => now(answer(
            op,
            id,
            admit_batch::<FetchBatchRequest>(ctx, session, &control).and_then(|r| batch::prepare_fetch(session, r)),
        )),
        Opcode::FetchPrepared => {
            let kept = admit::<FetchPreparedRequest>(ctx, session, &control)
                .and_then(|r| session.prepared.get(r.batch))
                .and_then(|kept| check_batch(ctx, session, &*kept).map(|()| kept));
            match kept {
                Ok(kept) => batch::fetch_prepared(task, id, kept),
                Err(e) => now(error_frame(op, id, &e)),
            }
        }
        Opcode::ReleasePrepared => now(answer(
            op,
            id,
            admit::<ReleasePreparedRequest>(ctx, session, &control).and_then(|r| batch::release_prepared(session, &r)),
        )),
        Opcode::ReleaseRegion => now(answer(
            op,
            id,
            admit::<ReleaseRegionRequest>(ctx, session, &control).and_then(|r| regions::release(session, &r)),
        )),
        Opcode::Hello | Opcode::Authenticate | Opcode::Put | Opcode::PutBatch => now(OutFrame::error(
            op,
            id,
            Status::Internal,
            format!("{op} cannot be handled here"),
            None,
        )),
    }
}

/// What a request answered by its own task takes along: cloned only for
/// those (a request answered on the spot clones nothing).
pub(super) struct Task<'a> {
    pub ctx: &'a Arc<ServerContext>,
    pub session: &'a Arc<Session>,
    responder: &'a Responder,
}

impl Task<'_> {
    /// The request is answered by the task `answer` makes.
    pub(super) fn later<F, Fut>(self, answer: F) -> Handled
    where
        F: FnOnce(Arc<ServerContext>, Arc<Session>, Responder) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let task = answer(self.ctx.clone(), self.session.clone(), self.responder.clone());
        Handled::Later(Box::pin(task))
    }
}

/// Frames a fetch's answer: the first frame carries the `FetchResponse`,
/// every frame a piece, the last one without the MORE flag.
struct FetchFrames {
    id: u64,
    len: u64,
    sent: u64,
    head: Result<Vec<u8>, StoreError>,
}

impl FetchFrames {
    fn new(id: u64, fetch: &Fetch) -> FetchFrames {
        tracing::Span::current().record("bytes", fetch.head.len);
        FetchFrames {
            id,
            len: fetch.head.len,
            sent: 0,
            head: codec::encode(&fetch.head)
                .map_err(|e| StoreError::io("encode fetch answer", std::io::Error::other(e))),
        }
    }

    /// The frame of the next piece (or, for an empty answer, the only one).
    fn frame(&mut self, piece: Option<Piece>) -> Result<OutFrame, StoreError> {
        let control = match &mut self.head {
            Ok(head) => std::mem::take(head),
            Err(e) => {
                return Err(StoreError::Other {
                    status: e.status(),
                    message: e.to_string(),
                });
            }
        };
        self.sent += piece.as_ref().map_or(0, |p| p.bytes().len() as u64);
        let more = self.sent < self.len;
        Ok(OutFrame::new(Opcode::Fetch, self.id, Status::Ok, more, control, piece))
    }

    /// Every frame of a fetch whose pieces are ready.
    fn ready(mut self, fetch: Fetch) -> Vec<OutFrame> {
        let id = self.id;
        let frames: Result<Vec<OutFrame>, StoreError> = if self.len == 0 {
            self.frame(None).map(|f| vec![f])
        } else {
            fetch.ready_pieces().into_iter().map(|p| self.frame(Some(p))).collect()
        };
        frames.unwrap_or_else(|e| vec![error_frame(Opcode::Fetch, id, &e)])
    }
}

/// Sends a fetch's answer piece by piece as its pieces come.
async fn send_fetch(responder: &Responder, id: u64, mut fetch: Fetch) {
    let mut frames = FetchFrames::new(id, &fetch);
    if fetch.is_ready() {
        return responder.send_all(frames.ready(fetch)).await;
    }
    if frames.len == 0 {
        let frame = frames
            .frame(None)
            .unwrap_or_else(|e| error_frame(Opcode::Fetch, id, &e));
        responder.send(frame).await;
        return;
    }
    while let Some(next) = fetch.next().await {
        let frame = next
            .and_then(|piece| frames.frame(Some(piece)))
            .unwrap_or_else(|e| error_frame(Opcode::Fetch, id, &e));
        let failed = frame.status != Status::Ok;
        if !responder.send(frame).await || failed {
            return; // the connection is gone, or the answer ended in an error
        }
    }
}
