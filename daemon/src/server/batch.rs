//! Batched requests: each member is answered as a request of its own
//! would be (from the arena at once if it can be, else by a load or a read
//! of the drive), in frames that name it, as soon as it is ready. Members
//! that need waiting run together, at most [`MEMBERS_AT_ONCE`] of them;
//! the answer ends with a `Done` frame once every member is answered.
//!
//! A fetch member with a place in a region the daemon mapped (Unix) is
//! written there by the daemon and answered `Placed`, without payload;
//! one in a region that stays in the client (TCP) is sent as any other.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use futures_util::StreamExt;
use shardd_protocol::{
    BatchPart, FetchBatchRequest, FetchRequest, FetchResponse, Opcode, RegionPlace, StatBatchRequest, Status,
    ViewBatchRequest, ViewRequest, codec,
};

use super::dispatch::Handled;
use super::frame::OutFrame;
use super::responder::{Responder, log_refusal};
use super::{ServerContext, dispatch::Task};
use crate::service::regions::Region;
use crate::service::{Fetch, Piece, Session};
use crate::store::StoreError;

/// Members of one batch that wait (for a load, the drive, room in the
/// arena) at the same time. Members answered from the arena never wait.
const MEMBERS_AT_ONCE: usize = 16;

/// A member in the arena with at most this many bytes is written into its
/// region by the connection's reader at once; a larger one by a blocking
/// thread, piece by piece, so that the reader goes on reading.
const PLACE_AT_ONCE: u64 = 256 << 10;

/// Where the daemon writes a member's bytes itself.
#[derive(Clone, Debug)]
struct Target {
    region: Arc<Region>,
    offset: u64,
}

impl Target {
    /// Writes `piece`, `at` bytes into the member's answer.
    fn write(&self, at: u64, piece: &Piece) {
        self.region.write(self.offset + at, piece.bytes());
    }
}

/// A fetch member that waits: to be fetched, or (in the arena, large) to
/// be written into its place by blocking threads.
enum Waiting {
    Fetch(FetchRequest, Option<Target>),
    Place(Fetch, Target),
}

/// Checks a member's place: the region it names, if the daemon writes into
/// it itself, and the member with its answer bounded by the place.
fn placed(
    session: &Session,
    mut member: FetchRequest,
    place: Option<&RegionPlace>,
) -> Result<(FetchRequest, Option<Target>), StoreError> {
    let Some(place) = place else {
        return Ok((member, None));
    };
    let region = session.regions.place(place)?;
    member.max_len = Some(member.max_len.map_or(place.len, |max| max.min(place.len)));
    let target = region.is_mapped().then(|| Target {
        region,
        offset: place.offset,
    });
    Ok((member, target))
}

/// Writes a member's bytes into its place as they come; what was written.
async fn place_member(mut fetch: Fetch, target: Target) -> Result<FetchResponse, StoreError> {
    let mut at = 0;
    while let Some(piece) = fetch.next().await {
        let piece = piece?;
        let len = piece.bytes().len() as u64;
        if len <= PLACE_AT_ONCE {
            target.write(at, &piece);
        } else {
            let target = target.clone();
            tokio::task::spawn_blocking(move || target.write(at, &piece))
                .await
                .map_err(|e| StoreError::io("write into a region", std::io::Error::other(e)))?;
        }
        at += len;
    }
    Ok(fetch.head)
}

fn placed_frame(id: u64, index: u32, result: Result<FetchResponse, StoreError>) -> OutFrame {
    match result {
        Ok(head) => part(
            Opcode::FetchBatch,
            id,
            Status::Ok,
            &BatchPart::Placed { index, head },
            None,
        ),
        Err(e) => failed(Opcode::FetchBatch, id, index, &e),
    }
}

/// How many members were answered ok and how many failed.
#[derive(Debug, Default)]
struct Tally {
    ok: AtomicU32,
    failed: AtomicU32,
}

impl Tally {
    fn count(&self, ok: bool) {
        let counter = if ok { &self.ok } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The answer's last frame.
    fn done(&self, op: Opcode, id: u64) -> OutFrame {
        let done = BatchPart::Done {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        };
        OutFrame::ok(op, id, &done)
    }
}

/// A frame of a batch's answer other than the last.
fn part(op: Opcode, id: u64, status: Status, part: &BatchPart, payload: Option<Piece>) -> OutFrame {
    match codec::encode(part) {
        Ok(control) => OutFrame::new(op, id, status, true, control, payload),
        Err(e) => failed(
            op,
            id,
            part.index().unwrap_or(u32::MAX),
            &StoreError::io("encode a batch answer", std::io::Error::other(e)),
        ),
    }
}

/// The frame that says member `index` failed with `e` (logged as the
/// request path logs every error).
fn failed(op: Opcode, id: u64, index: u32, e: &StoreError) -> OutFrame {
    log_refusal(op, id, e);
    let part = BatchPart::Failed {
        index,
        message: e.to_string(),
        current_version: e.current_version(),
    };
    let control = codec::encode(&part).unwrap_or_default();
    OutFrame::new(op, id, e.status(), true, control, None)
}

/// Frames of one fetch member: its head with the first piece, then the
/// rest of its bytes, each piece saying where it goes.
struct MemberFrames {
    id: u64,
    index: u32,
    head: Option<shardd_protocol::FetchResponse>,
    at: u64,
}

impl MemberFrames {
    fn new(id: u64, index: u32, fetch: &Fetch) -> MemberFrames {
        MemberFrames {
            id,
            index,
            head: Some(fetch.head.clone()),
            at: 0,
        }
    }

    fn frame(&mut self, piece: Option<Piece>) -> OutFrame {
        let index = self.index;
        let control = match self.head.take() {
            Some(head) => BatchPart::Head { index, head },
            None => BatchPart::Data { index, at: self.at },
        };
        self.at += piece.as_ref().map_or(0, |p| p.bytes().len() as u64);
        part(Opcode::FetchBatch, self.id, Status::Ok, &control, piece)
    }

    /// Every frame of a member whose pieces are all ready.
    fn ready(mut self, fetch: Fetch) -> Vec<OutFrame> {
        let pieces = fetch.ready_pieces();
        if pieces.is_empty() {
            return vec![self.frame(None)];
        }
        pieces.into_iter().map(|p| self.frame(Some(p))).collect()
    }
}

/// Sends a fetch member as its pieces come; whether it was answered whole.
async fn send_member(responder: &Responder, id: u64, index: u32, mut fetch: Fetch) -> bool {
    let mut frames = MemberFrames::new(id, index, &fetch);
    if fetch.is_ready() || fetch.head.len == 0 {
        let all = frames.ready(fetch);
        for frame in all {
            if !responder.send(frame).await {
                return false;
            }
        }
        return true;
    }
    while let Some(next) = fetch.next().await {
        let frame = match next {
            Ok(piece) => frames.frame(Some(piece)),
            Err(e) => {
                responder.send(failed(Opcode::FetchBatch, id, index, &e)).await;
                return false;
            }
        };
        if !responder.send(frame).await {
            return false;
        }
    }
    true
}

/// Answers a batch of fetches: members in the arena at once, the rest as
/// their loads (or reads of the drive) give their bytes.
pub(super) fn fetch_batch(task: Task<'_>, id: u64, req: FetchBatchRequest) -> Handled {
    let op = Opcode::FetchBatch;
    let service = &task.ctx.service;
    let FetchBatchRequest { members, places } = req;
    if !places.is_empty() && places.len() != members.len() {
        let e = StoreError::BadRequest(format!(
            "a batch of {} members names {} places: one per member, or none",
            members.len(),
            places.len()
        ));
        return Handled::Now(vec![super::responder::error_frame(op, id, &e)]);
    }
    let tally = Arc::new(Tally::default());
    let mut frames = Vec::new();
    let mut waiting: Vec<(u32, Waiting)> = Vec::new();
    for (index, member) in members.into_iter().enumerate() {
        let index = index as u32;
        let (member, target) = match placed(task.session, member, places.get(index as usize)) {
            Ok(placed) => placed,
            Err(e) => {
                frames.push(failed(op, id, index, &e));
                tally.count(false);
                continue;
            }
        };
        match service.fetch_resident(&member) {
            Some(Ok(fetch)) => match target {
                Some(target) if fetch.head.len <= PLACE_AT_ONCE => {
                    let head = fetch.head.clone();
                    for (at, piece) in fetch.ready_pieces().into_iter().scan(0, |at, p| {
                        let here = *at;
                        *at += p.bytes().len() as u64;
                        Some((here, p))
                    }) {
                        target.write(at, &piece);
                    }
                    frames.push(placed_frame(id, index, Ok(head)));
                    tally.count(true);
                }
                // Larger: written by blocking threads, below.
                Some(target) => waiting.push((index, Waiting::Place(fetch, target))),
                None => {
                    frames.extend(MemberFrames::new(id, index, &fetch).ready(fetch));
                    tally.count(true);
                }
            },
            Some(Err(e)) => {
                frames.push(failed(op, id, index, &e));
                tally.count(false);
            }
            None => waiting.push((index, Waiting::Fetch(member, target))),
        }
    }
    if waiting.is_empty() {
        frames.push(tally.done(op, id));
        return Handled::Now(frames);
    }
    task.later(move |ctx, session, responder| async move {
        responder.send_all(frames).await;
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
                            let placed = place_member(fetch, target).await;
                            let ok = placed.is_ok();
                            responder.send(placed_frame(id, index, placed)).await;
                            ok
                        }
                        (Ok(fetch), None) => send_member(responder, id, index, fetch).await,
                        (Err(e), _) => {
                            responder.send(failed(op, id, index, &e)).await;
                            false
                        }
                    };
                    tally.count(ok);
                }
            })
            .await;
        responder.send(tally.done(op, id)).await;
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
    let mut frames = Vec::new();
    let mut waiting: Vec<(u32, ViewRequest)> = Vec::new();
    for (index, member) in req.members.into_iter().enumerate() {
        let index = index as u32;
        let member = ViewRequest {
            fetch: member,
            release: Vec::new(),
            if_resident: req.if_resident,
            continued: false,
        };
        match service.view_resident(&member, session) {
            Some(result) => frames.push(view_frame(id, index, result, &tally)),
            None => waiting.push((index, member)),
        }
    }
    if waiting.is_empty() {
        frames.push(tally.done(op, id));
        return Handled::Now(frames);
    }
    task.later(move |ctx, session, responder| async move {
        responder.send_all(frames).await;
        futures_util::stream::iter(waiting)
            .for_each_concurrent(MEMBERS_AT_ONCE, |(index, member)| {
                let (ctx, session, responder, tally) = (&ctx, &session, &responder, &tally);
                async move {
                    let result = ctx.service.view(member, session).await;
                    responder.send(view_frame(id, index, result, tally)).await;
                }
            })
            .await;
        responder.send(tally.done(op, id)).await;
    })
}

fn view_frame(
    id: u64,
    index: u32,
    result: Result<shardd_protocol::ViewResponse, StoreError>,
    tally: &Tally,
) -> OutFrame {
    let op = Opcode::ViewBatch;
    tally.count(result.is_ok());
    match result {
        Ok(view) => part(op, id, Status::Ok, &BatchPart::View { index, view }, None),
        Err(e) => failed(op, id, index, &e),
    }
}

/// Answers a batch of stats, all at once.
pub(super) fn stat_batch(ctx: &ServerContext, id: u64, req: StatBatchRequest) -> Handled {
    let op = Opcode::StatBatch;
    let tally = Tally::default();
    let mut frames: Vec<OutFrame> = req
        .members
        .iter()
        .enumerate()
        .map(|(index, member)| {
            let index = index as u32;
            let result = ctx.service.stat(member);
            tally.count(result.is_ok());
            match result {
                Ok(stat) => part(op, id, Status::Ok, &BatchPart::Stat { index, stat }, None),
                Err(e) => failed(op, id, index, &e),
            }
        })
        .collect();
    frames.push(tally.done(op, id));
    Handled::Now(frames)
}
