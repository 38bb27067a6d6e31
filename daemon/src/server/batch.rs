//! Batched requests: each member is answered as a request of its own
//! would be (from the arena at once if it can be, else by a load or a read
//! of the drive), in parts that name it, as soon as it is ready. Members
//! that need waiting run together, at most [`MEMBERS_AT_ONCE`] of them;
//! the answer ends with `Done` once every member is answered.
//!
//! A fetch member with a place in a region the daemon mapped (Unix) is
//! written there by the daemon and answered `Placed`, without payload;
//! one in a region that stays in the client (TCP) is sent as any other.
//!
//! # Layout
//!
//! * [`frames`]: parts gathered into frames, and fetch members' bytes.
//! * [`place`]: members written into registered regions.

mod frames;
mod place;

use std::sync::Arc;

use futures_util::StreamExt;
use shardd_protocol::{
    BatchPart, FetchBatchRequest, FetchRequest, Opcode, PlacedHead, PrepareFetchResponse, RegionPlace,
    ReleasePreparedRequest, StatBatchRequest, ViewBatchRequest, ViewRequest,
};

use super::ServerContext;
use super::dispatch::{Handled, Task};
use super::responder::error_frame;
use crate::cache::ResidentHandle;
use crate::service::prepared::{PreparedFetch, bound_by_place, check_places};
use crate::service::{Fetch, Session};
use crate::store::StoreError;
use frames::{MemberFrames, send_member, single};
pub(super) use frames::{Parts, Tally, failed};
use place::{PLACE_AT_ONCE, Target, place_member, placed};

/// Members of one batch that wait (for a load, the drive, room in the
/// arena) at the same time. Members answered from the arena never wait.
const MEMBERS_AT_ONCE: usize = 16;

/// Bytes of one batch's members in the arena that the connection's reader
/// writes into their regions itself before it reads on; the rest are
/// written by the batch's task.
const PLACED_BY_READER: u64 = 16 << 20;

/// A fetch member that waits: to be fetched, or (in the arena, large) to
/// be written into its place off the connection's reader.
enum Waiting {
    Fetch(FetchRequest, Option<Target>),
    Place(Fetch, Target),
}

fn placed_part(op: Opcode, index: u32, id: u64, result: Result<PlacedHead, StoreError>) -> BatchPart {
    match result {
        Ok(head) => BatchPart::Placed { index, head },
        Err(e) => failed(op, id, index, &e),
    }
}

/// Answers a batch of fetches: members in the arena at once, the rest as
/// their loads (or reads of the drive) give their bytes.
pub(super) fn fetch_batch(task: Task<'_>, id: u64, req: FetchBatchRequest) -> Handled {
    let op = Opcode::FetchBatch;
    let FetchBatchRequest { mut members, places } = req;
    if let Err(e) = check_places(members.len(), places.len()) {
        return Handled::Now(vec![error_frame(op, id, &e)]);
    }
    for (member, place) in members.iter_mut().zip(&places) {
        bound_by_place(member, place);
    }
    fetch_members(task, op, id, &members, &places, None)
}

/// Keeps a fetch batch on the connection; its id. Its places are checked
/// now, so that a wrong one is refused once rather than at every run.
pub(super) fn prepare_fetch(session: &Session, req: FetchBatchRequest) -> Result<PrepareFetchResponse, StoreError> {
    let kept = PreparedFetch::new(req)?;
    let mut regions = session.regions.batch();
    for (index, place) in kept.places.iter().enumerate() {
        regions
            .place(place)
            .map_err(|e| StoreError::BadRequest(format!("member {index}: {e}")))?;
    }
    Ok(PrepareFetchResponse {
        batch: session.prepared.add(kept)?,
    })
}

/// Forgets a kept fetch batch (a run of it under way finishes: it holds it).
pub(super) fn release_prepared(session: &Session, req: &ReleasePreparedRequest) -> Result<(), StoreError> {
    if session.prepared.remove(req.batch) {
        Ok(())
    } else {
        Err(StoreError::BadRequest(format!(
            "batch {} is not prepared on this connection",
            req.batch
        )))
    }
}

/// Runs a kept fetch batch, answered as a `fetch_batch` of its members.
pub(super) fn fetch_prepared(task: Task<'_>, id: u64, kept: Arc<PreparedFetch>) -> Handled {
    let mut handles = kept.take_handles();
    let handled = fetch_members(
        task,
        Opcode::FetchPrepared,
        id,
        &kept.members,
        &kept.places,
        Some(&mut handles),
    );
    kept.put_handles(handles);
    handled
}

/// Answers `members` (each already bounded by its place in `places`, one
/// per member or none) as `op` of request `id`; a kept batch's members
/// come with their `handles` in the arena.
fn fetch_members(
    task: Task<'_>,
    op: Opcode,
    id: u64,
    members: &[FetchRequest],
    places: &[RegionPlace],
    handles: Option<&mut [Option<ResidentHandle>]>,
) -> Handled {
    let service = &task.ctx.service;
    let tally = Arc::new(Tally::default());
    let mut parts = Parts::new(op, id);
    let mut waiting: Vec<(u32, Waiting)> = Vec::new();
    let mut reader_budget = PLACED_BY_READER;
    let mut regions = task.session.regions.batch();
    let targets: Vec<_> = (0..members.len())
        .map(|index| placed(&mut regions, places.get(index)))
        .collect();
    let asked: Vec<Option<&FetchRequest>> = members
        .iter()
        .zip(&targets)
        .map(|(member, target)| target.is_ok().then_some(member))
        .collect();
    let hits = service.resident_many(&asked, handles);
    for (index, ((member, target), hit)) in members.iter().zip(targets).zip(hits).enumerate() {
        let index = index as u32;
        let target = match target {
            Ok(target) => target,
            Err(e) => {
                parts.push(&failed(op, id, index, &e));
                tally.count(false);
                continue;
            }
        };
        match hit {
            Some(Ok(resident)) => match target {
                Some(target) if resident.answer_len() <= PLACE_AT_ONCE.min(reader_budget) => {
                    reader_budget -= resident.answer_len();
                    parts.push_part(&target.write_resident(index, &resident), index);
                    tally.count(true);
                }
                // Larger: written by the batch's task, off the reader.
                Some(target) => waiting.push((index, Waiting::Place(resident.into_fetch(), target))),
                None => {
                    let fetch = resident.into_fetch();
                    for frame in MemberFrames::new(op, id, index, &fetch).ready(fetch) {
                        parts.push_frame(frame);
                    }
                    tally.count(true);
                }
            },
            Some(Err(e)) => {
                parts.push(&failed(op, id, index, &e));
                tally.count(false);
            }
            None => waiting.push((index, Waiting::Fetch(member.clone(), target))),
        }
    }
    if waiting.is_empty() {
        return Handled::Now(parts.finish(&tally));
    }
    let ready = parts.take();
    task.later(move |ctx, session, responder| async move {
        responder.send_all(ready).await;
        let members = futures_util::stream::iter(waiting);
        members
            .for_each_concurrent(MEMBERS_AT_ONCE, |(index, waiting)| {
                let (ctx, session, responder, tally) = (&ctx, &session, &responder, &tally);
                async move {
                    let (fetched, target) = match waiting {
                        Waiting::Fetch(member, target) => (ctx.service.fetch(&member, session).await, target),
                        Waiting::Place(fetch, target) => (Ok(fetch), Some(target)),
                    };
                    let ok = match (fetched, target) {
                        (Ok(fetch), Some(target)) => {
                            let part = placed_part(op, index, id, place_member(fetch, target).await);
                            let ok = matches!(part, BatchPart::Placed { .. });
                            responder.send(single(op, id, &part, None)).await;
                            ok
                        }
                        (Ok(fetch), None) => send_member(responder, op, id, index, fetch).await,
                        (Err(e), _) => {
                            responder.send(single(op, id, &failed(op, id, index, &e), None)).await;
                            false
                        }
                    };
                    tally.count(ok);
                }
            })
            .await;
        responder.send_all(Parts::new(op, id).finish(&tally)).await;
    })
}

/// Answers a batch of views: leases given back first, then each member
/// from the arena at once, or once loaded (unless only resident ones are
/// asked for).
pub(super) fn view_batch(task: Task<'_>, id: u64, req: ViewBatchRequest) -> Handled {
    let op = Opcode::ViewBatch;
    let service = &task.ctx.service;
    let session = task.session;
    session.release(&req.release);
    let tally = Arc::new(Tally::default());
    let mut parts = Parts::new(op, id);
    let mut waiting: Vec<(u32, ViewRequest)> = Vec::new();
    let hits = service.view_resident_many(&req.members, session);
    for (index, (member, hit)) in req.members.into_iter().zip(hits).enumerate() {
        let index = index as u32;
        match hit {
            Some(result) => parts.push(&view_part(id, index, result, &tally)),
            None => waiting.push((
                index,
                ViewRequest {
                    fetch: member,
                    release: Vec::new(),
                    if_resident: req.if_resident,
                    continued: false,
                },
            )),
        }
    }
    if waiting.is_empty() {
        return Handled::Now(parts.finish(&tally));
    }
    let ready = parts.take();
    task.later(move |ctx, session, responder| async move {
        responder.send_all(ready).await;
        futures_util::stream::iter(waiting)
            .for_each_concurrent(MEMBERS_AT_ONCE, |(index, member)| {
                let (ctx, session, responder, tally) = (&ctx, &session, &responder, &tally);
                async move {
                    let result = ctx.service.view(member, session).await;
                    let part = view_part(id, index, result, tally);
                    responder.send(single(op, id, &part, None)).await;
                }
            })
            .await;
        responder.send_all(Parts::new(op, id).finish(&tally)).await;
    })
}

fn view_part(
    id: u64,
    index: u32,
    result: Result<shardd_protocol::ViewResponse, StoreError>,
    tally: &Tally,
) -> BatchPart {
    tally.count(result.is_ok());
    match result {
        Ok(view) => BatchPart::View { index, view },
        Err(e) => failed(Opcode::ViewBatch, id, index, &e),
    }
}

/// Answers a batch of stats, all at once.
pub(super) fn stat_batch(ctx: &ServerContext, id: u64, req: StatBatchRequest) -> Handled {
    let op = Opcode::StatBatch;
    let tally = Tally::default();
    let mut parts = Parts::new(op, id);
    for (index, member) in req.members.iter().enumerate() {
        let index = index as u32;
        let result = ctx.service.stat(member);
        tally.count(result.is_ok());
        parts.push(&match result {
            Ok(stat) => BatchPart::Stat { index, stat },
            Err(e) => failed(op, id, index, &e),
        });
    }
    Handled::Now(parts.finish(&tally))
}
