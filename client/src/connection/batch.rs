//! Receiving a batch's answer: every frame names its member, so members
//! are taken in whatever order the daemon answers them, and each fetch
//! member's bytes go straight to its place (in the caller's buffer, a
//! buffer of its own, or a vector) as they arrive.

use std::time::Duration;

use bytes::Bytes;

use shardd_protocol::frame::io::FrameReader;
use shardd_protocol::{
    BatchPart, FetchResponse, FrameHeader, Opcode, PlacedHead, ShardMeta, StatResponse, Status, ViewResponse, codec,
};
use tokio::io::AsyncRead;
use tokio::sync::oneshot;

use super::{Connection, ErasedBuf, Pending, Shared, protocol, remote_error};
use crate::ClientError;

/// Where a fetch member's bytes go.
#[derive(Debug)]
pub(crate) enum Place {
    /// `len` bytes of the caller's buffer from `at`.
    In { at: usize, len: usize },
    /// A vector of the answer's length (at most the connection's largest
    /// allocation).
    Alloc(Option<Vec<u8>>),
    /// Nowhere: a view, stat or put member.
    None,
    /// The daemon writes the bytes into a region itself (Unix).
    Daemon,
    /// A buffer of the member's own, from its start.
    Own(Box<dyn ErasedBuf>),
}

impl std::fmt::Debug for Box<dyn ErasedBuf> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ErasedBuf")
    }
}

/// One member of a batch on its way in.
#[derive(Debug)]
pub(crate) struct Member {
    place: Place,
    head: Option<FetchResponse>,
    filled: u64,
    /// Running CRC32C of the bytes received, when the member is checked.
    crc: Option<u32>,
    outcome: Option<Result<Answer, ClientError>>,
}

impl Member {
    /// The member's own buffer, if it has one.
    pub(crate) fn into_own(self) -> Option<Box<dyn ErasedBuf>> {
        match self.place {
            Place::Own(buf) => Some(buf),
            _ => None,
        }
    }

    /// A member whose bytes go to `place`; `verify` checks a whole shard's
    /// bytes against its CRC32C as they arrive.
    pub(crate) fn new(place: Place, verify: bool) -> Member {
        Member {
            place,
            head: None,
            filled: 0,
            crc: verify.then_some(0),
            outcome: None,
        }
    }
}

/// A member's answer.
#[derive(Debug)]
pub(crate) enum Answer {
    /// A fetch: what came, and its bytes if they went to a vector.
    Fetch(FetchResponse, Option<Vec<u8>>),
    /// A fetch the daemon wrote into the member's place itself.
    Placed(PlacedHead),
    /// A view.
    View(ViewResponse),
    /// A stat.
    Stat(StatResponse),
    /// A put, stored.
    Stored(ShardMeta),
}

/// The end of a batch: the caller's buffers always come back.
pub(crate) struct BatchDone {
    pub buf: Option<Box<dyn ErasedBuf>>,
    /// Each member's own buffer ([`Place::Own`]), in member order.
    pub own: Vec<Option<Box<dyn ErasedBuf>>>,
    pub result: Result<Vec<Result<Answer, ClientError>>, ClientError>,
}

impl BatchDone {
    /// A batch that could not be sent: every buffer back, and why.
    pub(crate) fn failed(mut members: Vec<Member>, error: impl Into<ClientError>) -> BatchDone {
        BatchDone {
            buf: None,
            own: own_buffers(&mut members),
            result: Err(error.into()),
        }
    }
}

/// Takes the members' own buffers out.
fn own_buffers(members: &mut [Member]) -> Vec<Option<Box<dyn ErasedBuf>>> {
    members
        .iter_mut()
        .map(|m| match std::mem::replace(&mut m.place, Place::None) {
            Place::Own(buf) => Some(buf),
            other => {
                m.place = other;
                None
            }
        })
        .collect()
}

pub(super) struct BatchState {
    op: Opcode,
    buf: Option<Box<dyn ErasedBuf>>,
    members: Vec<Member>,
    reply: oneshot::Sender<BatchDone>,
}

impl BatchState {
    /// Hands everything back with `error` (the connection closed, or the
    /// caller gave up).
    pub(super) fn fail(mut self, error: ClientError) {
        let own = own_buffers(&mut self.members);
        let _ = self.reply.send(BatchDone {
            buf: self.buf,
            own,
            result: Err(error),
        });
    }
}

impl Connection {
    /// Sends batch request `op` and waits, at most `timeout`, until every
    /// member is answered. `buf` is the caller's buffer that members placed
    /// [`Place::In`] go to; it comes back in every case.
    pub(crate) async fn batch(
        &self,
        op: Opcode,
        control: Vec<u8>,
        members: Vec<Member>,
        buf: Option<Box<dyn ErasedBuf>>,
        timeout: Option<Duration>,
    ) -> BatchDone {
        self.batch_with_payload(op, control, Vec::new(), members, buf, timeout)
            .await
    }

    /// [`Connection::batch`] with a payload, in pieces (a batched put's).
    pub(crate) async fn batch_with_payload(
        &self,
        op: Opcode,
        control: Vec<u8>,
        payload: Vec<Bytes>,
        members: Vec<Member>,
        buf: Option<Box<dyn ErasedBuf>>,
        timeout: Option<Duration>,
    ) -> BatchDone {
        let _permit = self.inflight.acquire().await;
        let (reply, mut rx) = oneshot::channel();
        let state = BatchState {
            op,
            buf,
            members,
            reply,
        };
        let pending = Pending::Batch(Box::new(state));
        let id = match self.send_frame(op, control, payload, None, None, pending).await {
            Ok(id) => id,
            Err((pending, error)) => {
                let (buf, own) = match pending {
                    Pending::Batch(mut state) => (state.buf.take(), own_buffers(&mut state.members)),
                    _ => (None, Vec::new()),
                };
                return BatchDone {
                    buf,
                    own,
                    result: Err(error),
                };
            }
        };
        let deadline = timeout.map(|t| (tokio::time::Instant::now() + t, t));
        loop {
            let received = match deadline {
                None => (&mut rx).await,
                Some((at, after)) => match tokio::time::timeout_at(at, &mut rx).await {
                    Ok(received) => received,
                    Err(_) => {
                        if let Some(Pending::Batch(mut state)) = self.shared.lock().remove(&id) {
                            return BatchDone {
                                buf: state.buf.take(),
                                own: own_buffers(&mut state.members),
                                result: Err(ClientError::Timeout { op: op.name(), after }),
                            };
                        }
                        // The reader is filling it; look again shortly.
                        match tokio::time::timeout(Duration::from_millis(5), &mut rx).await {
                            Ok(received) => received,
                            Err(_) => continue,
                        }
                    }
                },
            };
            return received.unwrap_or_else(|_| BatchDone {
                buf: None,
                own: Vec::new(),
                result: Err(self.shared.disconnected("reader stopped")),
            });
        }
    }
}

/// Takes one frame of a batch's answer. `Ok(true)` when it was the last.
/// An error is a broken answer: the connection closes.
pub(super) async fn take_batch_frame<R: AsyncRead + Unpin>(
    shared: &Shared,
    frames: &mut FrameReader<R>,
    max_alloc: u64,
    header: &FrameHeader,
    control: &[u8],
    state: &mut BatchState,
) -> Result<bool, String> {
    if !header.has_more() && header.status != Status::Ok {
        // The whole batch was refused.
        frames.skip(header.payload_len).await.map_err(|e| e.to_string())?;
        return Ok(true);
    }
    let parts: Vec<BatchPart> = codec::decode(control).map_err(|e| protocol(shared, e))?;
    let carries_bytes = |p: &BatchPart| matches!(p, BatchPart::Head { .. } | BatchPart::Data { .. });
    if header.payload_len > 0 && !(parts.len() == 1 && carries_bytes(&parts[0])) {
        return Err(format!(
            "the daemon sent a {} answer frame with bytes that are not one member's",
            state.op
        ));
    }
    let mut done = false;
    for part in parts {
        if done {
            return Err(format!("the daemon answered a {} batch after its end", state.op));
        }
        done = take_part(frames, max_alloc, header, state, part).await?;
    }
    if done == header.has_more() {
        return Err(format!("the daemon's {} answer ended without saying so", state.op));
    }
    Ok(done)
}

/// Takes one part of a batch's answer (and the frame's payload, for a
/// `Head` or `Data`); `Ok(true)` for `Done`.
async fn take_part<R: AsyncRead + Unpin>(
    frames: &mut FrameReader<R>,
    max_alloc: u64,
    header: &FrameHeader,
    state: &mut BatchState,
    part: BatchPart,
) -> Result<bool, String> {
    let Some(index) = part.index() else {
        return Ok(true);
    };
    let count = state.members.len();
    let Some(member) = state.members.get_mut(index as usize) else {
        return Err(format!(
            "the daemon answered member {index} of a {} batch of {count}",
            state.op
        ));
    };
    match part {
        BatchPart::Head { head, .. } => {
            if member.head.is_some() {
                return Err(format!("the daemon began member {index} of a {} batch twice", state.op));
            }
            match &mut member.place {
                Place::In { len, .. } if (*len as u64) < head.len => {
                    member.outcome = Some(Err(ClientError::BufferTooSmall {
                        needed: head.len,
                        capacity: *len as u64,
                    }));
                }
                Place::Alloc(_) if head.len > max_alloc => {
                    member.outcome = Some(Err(ClientError::BufferTooSmall {
                        needed: head.len,
                        capacity: max_alloc,
                    }));
                }
                Place::Own(buf) => {
                    let capacity = buf.bytes().len() as u64;
                    if capacity < head.len {
                        member.outcome = Some(Err(ClientError::BufferTooSmall {
                            needed: head.len,
                            capacity,
                        }));
                    }
                }
                Place::Alloc(v) => *v = Some(vec![0u8; head.len as usize]),
                Place::In { .. } => {}
                Place::None | Place::Daemon => {
                    return Err(format!(
                        "the daemon sent bytes of member {index} of a {} batch",
                        state.op
                    ));
                }
            }
            member.head = Some(head);
            take_bytes(frames, header, member, &mut state.buf, index, 0).await?;
        }
        BatchPart::Data { at, .. } => take_bytes(frames, header, member, &mut state.buf, index, at).await?,
        BatchPart::Placed { head, .. } => {
            if !matches!(member.place, Place::Daemon) {
                return Err(format!(
                    "the daemon placed member {index} of a {} batch it was to send",
                    state.op
                ));
            }
            member.filled = head.len;
            member.outcome = Some(Ok(Answer::Placed(head)));
        }
        BatchPart::View { view, .. } => member.outcome = Some(Ok(Answer::View(view))),
        BatchPart::Stored { meta, .. } => member.outcome = Some(Ok(Answer::Stored(meta))),
        BatchPart::Stat { stat, .. } => member.outcome = Some(Ok(Answer::Stat(stat))),
        BatchPart::Failed {
            status,
            message,
            current_version,
            ..
        } => {
            member.outcome = Some(Err(ClientError::Remote {
                status: Status::from_code(status),
                message,
                current_version,
            }));
        }
        BatchPart::Done { .. } => unreachable!("Done names no member"),
    }
    Ok(false)
}

/// Reads a frame's payload: bytes of member `index` at `at` in its answer.
async fn take_bytes<R: AsyncRead + Unpin>(
    frames: &mut FrameReader<R>,
    header: &FrameHeader,
    member: &mut Member,
    buf: &mut Option<Box<dyn ErasedBuf>>,
    index: u32,
    at: u64,
) -> Result<(), String> {
    let Some(head) = &member.head else {
        return Err(format!("the daemon sent bytes of batch member {index} before its head"));
    };
    let end = at + header.payload_len;
    if at != member.filled || end > head.len {
        return Err(format!(
            "the daemon sent bytes {at}..{end} of batch member {index} after {} of its {} bytes",
            member.filled, head.len
        ));
    }
    if member.outcome.is_some() {
        // Refused already (too large for its place): the bytes are skipped.
        member.filled = end;
        return frames.skip(header.payload_len).await.map_err(|e| e.to_string());
    }
    let place: &mut [u8] = match &mut member.place {
        Place::In { at: start, .. } => match buf {
            Some(buf) => &mut buf.bytes()[*start + at as usize..*start + end as usize],
            None => return Err("a batch member placed in a buffer that is not there".into()),
        },
        Place::Alloc(v) => &mut v.as_deref_mut().unwrap_or_default()[at as usize..end as usize],
        Place::Own(buf) => &mut buf.bytes()[at as usize..end as usize],
        Place::None | Place::Daemon => return Err("the daemon sent bytes for a member that takes none".into()),
    };
    frames.read_exact(place).await.map_err(|e| e.to_string())?;
    if let Some(crc) = &mut member.crc {
        *crc = crc32c::crc32c_append(*crc, place);
    }
    member.filled = end;
    Ok(())
}

/// Ends a batch: the answer of each member, or why it has none.
pub(super) fn finish_batch(mut state: BatchState, header: &FrameHeader, control: &[u8]) {
    if header.status != Status::Ok {
        let error = remote_error(header.status, control);
        return state.fail(error);
    }
    let own = own_buffers(&mut state.members);
    let results = state
        .members
        .into_iter()
        .enumerate()
        .map(|(index, member)| finish_member(index, member));
    let _ = state.reply.send(BatchDone {
        buf: state.buf,
        own,
        result: Ok(results.collect()),
    });
}

fn finish_member(index: usize, member: Member) -> Result<Answer, ClientError> {
    if let Some(outcome) = member.outcome {
        return outcome;
    }
    let internal = |message: String| ClientError::Remote {
        status: Status::Internal,
        message,
        current_version: None,
    };
    let Some(head) = member.head else {
        return Err(internal(format!("the daemon did not answer batch member {index}")));
    };
    if member.filled != head.len {
        return Err(internal(format!(
            "batch member {index} ended after {} of {} bytes",
            member.filled, head.len
        )));
    }
    match member.crc {
        Some(actual) if actual != head.meta.crc32c => {
            return Err(ClientError::ChecksumMismatch {
                shard: format!("{}/{}", head.meta.namespace, head.meta.key),
                version: head.meta.version,
                expected: head.meta.crc32c,
                actual,
            });
        }
        _ => {}
    }
    let bytes = match member.place {
        Place::Alloc(v) => Some(v.unwrap_or_default()),
        _ => None,
    };
    Ok(Answer::Fetch(head, bytes))
}
