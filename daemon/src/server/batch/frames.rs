//! The frames of a batch's answer. Each carries a list of parts: a frame
//! with a payload carries exactly one part, the `Head` or `Data` that the
//! payload belongs to; a frame without one carries as many answers that
//! need no bytes (`Placed`, `View`, `Stat`, `Failed`) as come until they
//! reach [`PARTS_BYTES`], so that a batch of small members costs a frame or
//! two, not one per member. The last frame ends with `Done` and has no
//! MORE. Parts are encoded in place into their frame's list.

use std::sync::atomic::{AtomicU32, Ordering};

use serde::Serialize;
use shardd_protocol::codec::ListEncoder;
use shardd_protocol::{BatchPart, FetchResponse, Opcode, Status};

use super::super::frame::OutFrame;
use super::super::responder::{Responder, log_refusal};
use crate::service::{Fetch, Piece};
use crate::store::StoreError;

/// Bytes of parts gathered into one frame before another is started.
const PARTS_BYTES: usize = 64 << 10;

/// How many members were answered ok and how many failed.
#[derive(Debug, Default)]
pub(in crate::server) struct Tally {
    ok: AtomicU32,
    failed: AtomicU32,
}

impl Tally {
    pub(in crate::server) fn count(&self, ok: bool) {
        let counter = if ok { &self.ok } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn done(&self) -> BatchPart {
        BatchPart::Done {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// The part that says member `index` failed with `e` (logged as the
/// request path logs every error).
pub(in crate::server) fn failed(op: Opcode, id: u64, index: u32, e: &StoreError) -> BatchPart {
    log_refusal(op, id, e);
    BatchPart::Failed {
        index,
        status: e.status().code(),
        message: e.to_string(),
        current_version: e.current_version(),
    }
}

/// Answers without bytes, gathered into as few frames as fit.
pub(in crate::server) struct Parts {
    op: Opcode,
    id: u64,
    /// The parts of the frame being filled, encoded in place.
    list: ListEncoder,
    /// Frames filled so far.
    pub(super) frames: Vec<OutFrame>,
}

impl Parts {
    pub(in crate::server) fn new(op: Opcode, id: u64) -> Parts {
        Parts {
            op,
            id,
            list: ListEncoder::default(),
            frames: Vec::new(),
        }
    }

    /// Adds a part; a full frame goes to `frames`.
    pub(in crate::server) fn push(&mut self, part: &BatchPart) {
        self.push_part(part, part.index().unwrap_or(u32::MAX));
    }

    /// Adds a part of member `index` that encodes as a [`BatchPart`]
    /// (one encoded in place, as [`shardd_protocol::PlacedPart`]).
    pub(in crate::server) fn push_part(&mut self, part: &impl Serialize, index: u32) {
        // A full frame goes before the part comes, never after: the last
        // part, `Done`, is in the last frame.
        if self.list.len() >= PARTS_BYTES {
            self.flush(true);
        }
        if let Err(e) = self.list.push(part) {
            let e = StoreError::io("encode a batch answer", std::io::Error::other(e));
            // A short error: it fits.
            let _ = self.list.push(&failed(self.op, self.id, index, &e));
        }
    }

    /// Adds a frame of its own (one with a payload).
    pub(super) fn push_frame(&mut self, frame: OutFrame) {
        self.frames.push(frame);
    }

    fn flush(&mut self, more: bool) {
        // Parts are small: the list stays near PARTS_BYTES, well under the
        // control limit.
        let control = std::mem::take(&mut self.list).finish();
        self.frames
            .push(OutFrame::new(self.op, self.id, Status::Ok, more, control, None));
    }

    /// The frames so far, with the parts gathered (the answer goes on).
    pub(super) fn take(&mut self) -> Vec<OutFrame> {
        if !self.list.is_empty() {
            self.flush(true);
        }
        std::mem::take(&mut self.frames)
    }

    /// Every frame, the last ending with `Done`.
    pub(in crate::server) fn finish(mut self, tally: &Tally) -> Vec<OutFrame> {
        self.push(&tally.done());
        self.flush(false);
        self.frames
    }
}

/// A frame of one part (with the bytes it carries, if any).
pub(super) fn single(op: Opcode, id: u64, part: &BatchPart, payload: Option<Piece>) -> OutFrame {
    let mut parts = Parts::new(op, id);
    parts.push(part);
    OutFrame::new(op, id, Status::Ok, true, parts.list.finish(), payload)
}

/// Frames of one fetch member sent over the socket: its head with the
/// first piece, then the rest of its bytes, each piece saying where it goes.
pub(super) struct MemberFrames {
    op: Opcode,
    id: u64,
    index: u32,
    head: Option<FetchResponse>,
    at: u64,
}

impl MemberFrames {
    pub(super) fn new(op: Opcode, id: u64, index: u32, fetch: &Fetch) -> MemberFrames {
        MemberFrames {
            op,
            id,
            index,
            head: Some(fetch.head.clone()),
            at: 0,
        }
    }

    fn frame(&mut self, piece: Option<Piece>) -> OutFrame {
        let index = self.index;
        let part = match self.head.take() {
            Some(head) => BatchPart::Head { index, head },
            None => BatchPart::Data { index, at: self.at },
        };
        self.at += piece.as_ref().map_or(0, |p| p.bytes().len() as u64);
        single(self.op, self.id, &part, piece)
    }

    /// Every frame of a member whose pieces are all ready.
    pub(super) fn ready(mut self, fetch: Fetch) -> Vec<OutFrame> {
        let pieces = fetch.ready_pieces();
        if pieces.is_empty() {
            return vec![self.frame(None)];
        }
        pieces.into_iter().map(|p| self.frame(Some(p))).collect()
    }
}

/// Sends a fetch member as its pieces come; whether it was answered whole.
pub(super) async fn send_member(responder: &Responder, op: Opcode, id: u64, index: u32, mut fetch: Fetch) -> bool {
    let mut frames = MemberFrames::new(op, id, index, &fetch);
    if fetch.is_ready() || fetch.head.len == 0 {
        for frame in frames.ready(fetch) {
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
                responder.send(single(op, id, &failed(op, id, index, &e), None)).await;
                return false;
            }
        };
        if !responder.send(frame).await {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use shardd_protocol::codec;

    use super::*;

    /// Around the number of parts that fills a frame exactly, for parts of
    /// many sizes (so that `Done` too comes at each distance from the
    /// frame's end), every answer ends with `Done` in its last frame, the
    /// only one without MORE, and no frame is empty.
    #[test]
    fn parts_fill_frames_and_done_ends_the_last_one() {
        for message_len in 60..200 {
            let part = |index: u32| BatchPart::Failed {
                index,
                status: Status::NotFound.code(),
                message: "m".repeat(message_len),
                current_version: None,
            };
            let per_part = codec::encode(&part(0)).unwrap().len();
            let fill = PARTS_BYTES.div_ceil(per_part);
            for members in fill - 1..fill + 2 {
                let mut parts = Parts::new(Opcode::StatBatch, 7);
                let tally = Tally::default();
                for index in 0..members as u32 {
                    parts.push(&part(index));
                    tally.count(false);
                }
                let frames = parts.finish(&tally);
                let case = format!("{members} members of {per_part} bytes");
                let lists: Vec<Vec<BatchPart>> = frames
                    .iter()
                    .map(|frame| codec::decode(frame.control()).unwrap())
                    .collect();
                let more: Vec<bool> = frames.iter().map(|frame| frame.more).collect();
                assert_eq!(more.last(), Some(&false), "{case}");
                assert!(more[..more.len() - 1].iter().all(|m| *m), "{case}: {more:?}");
                assert!(lists.iter().all(|list| !list.is_empty()), "{case}: an empty frame");
                let all: Vec<BatchPart> = lists.into_iter().flatten().collect();
                assert_eq!(all.len(), members + 1, "{case}");
                assert_eq!(
                    all.last(),
                    Some(&BatchPart::Done {
                        ok: 0,
                        failed: members as u32
                    }),
                    "{case}"
                );
            }
        }
    }
}
