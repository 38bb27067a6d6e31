//! A batch of puts: each member's bytes are read by the daemon from a
//! region the client registered and the daemon mapped (Unix: nothing on the
//! socket), or are the member's part of the frame's payload, read here in
//! order. Members are stored one after another as their bytes come in;
//! durable ones are committed together, and the answer lists each member's
//! outcome once all are.

use std::sync::Arc;

use futures_util::future::join_all;
use shardd_protocol::{BatchPart, FrameHeader, Opcode, PutBatchRequest, RegionPlace, ShardMeta};
use tokio::io::AsyncRead;
use tracing::Instrument;

use super::super::batch::{Parts, Tally, failed};
use super::super::gate::admit_batch;
use super::super::responder::error_frame;
use super::{Closed, Connection};
use crate::service::PutSession;
use crate::service::regions::BatchPlaces;
use crate::service::regions::Region;
use crate::store::StoreError;

/// Where a member's bytes are.
enum Source {
    /// A place in a region the daemon mapped.
    Region(Arc<Region>, u64),
    /// The next bytes of the payload.
    Payload,
}

impl<R: AsyncRead + Unpin + Send + 'static> Connection<R> {
    /// Takes a `put_batch` whose header has arrived.
    pub(super) async fn take_put_batch(&mut self, header: FrameHeader, control: &[u8]) -> Result<(), Closed> {
        let op = Opcode::PutBatch;
        let id = header.request_id;
        let request: PutBatchRequest = match admit_batch(&self.ctx, &self.session, control) {
            Ok(request) => request,
            Err(e) => return self.refuse_put_batch(id, header.payload_len, &e).await,
        };
        // Where each member's bytes are, and what the payload must hold.
        let mut sources = Vec::with_capacity(request.members.len());
        let mut in_payload = 0u64;
        let mut places = self.session.regions.batch();
        for member in &request.members {
            let source = match &member.source {
                None => Ok(Source::Payload),
                Some(place) => match source(&mut places, place, member.len) {
                    Ok(source) => source,
                    Err(e) => return self.refuse_put_batch(id, header.payload_len, &e).await,
                },
            };
            if matches!(source, Ok(Source::Payload)) {
                in_payload += member.len;
            }
            sources.push(source);
        }
        if in_payload != header.payload_len {
            let e = StoreError::BadRequest(format!(
                "the payload holds {} bytes; the members sent in it hold {in_payload}",
                header.payload_len
            ));
            return self.refuse_put_batch(id, header.payload_len, &e).await;
        }
        let permit = self.permit().await?;
        let inflight = self.metrics.inflight(in_payload);
        let tally = Arc::new(Tally::default());
        let mut parts = Parts::new(op, id);
        let mut durable: Vec<(u32, PutSession)> = Vec::new();
        for (index, (member, source)) in request.members.into_iter().zip(sources).enumerate() {
            let index = index as u32;
            let len = member.len;
            let span = tracing::debug_span!(
                "put", id, index, namespace = %member.put.namespace, key = %member.put.key, bytes = len
            );
            let source = match source {
                Ok(source) => source,
                Err(e) => {
                    parts.push(&failed(op, id, index, &e));
                    tally.count(false);
                    continue;
                }
            };
            let begun = self.ctx.service.begin_put(member.put, len, &self.session);
            let mut put = match begun.instrument(span.clone()).await {
                Ok(put) => put,
                Err(e) => {
                    if matches!(source, Source::Payload) {
                        self.discard(len).await?;
                    }
                    parts.push(&failed(op, id, index, &e));
                    tally.count(false);
                    continue;
                }
            };
            if let Err(e) = self.fill(&mut put, &source, len).await? {
                let rest = put.remaining();
                drop(put);
                if matches!(source, Source::Payload) {
                    self.discard(rest).await?;
                }
                parts.push(&failed(op, id, index, &e));
                tally.count(false);
                continue;
            }
            if put.is_durable() {
                durable.push((index, put));
                continue;
            }
            let committed = put.commit().instrument(span).await;
            parts.push(&stored(id, index, committed, &tally));
        }
        if durable.is_empty() {
            self.responder.send_all(parts.finish(&tally)).await;
            return Ok(());
        }
        let responder = self.responder.clone();
        self.ctx.tasks.spawn(
            async move {
                let commits = durable
                    .into_iter()
                    .map(|(index, put)| async move { (index, put.commit().await) });
                for (index, committed) in join_all(commits).await {
                    parts.push(&stored(id, index, committed, &tally));
                }
                responder.send_all(parts.finish(&tally)).await;
                drop((permit, inflight));
            }
            .in_current_span(),
        );
        Ok(())
    }

    /// Fills a member's put session from its source. The outer error closes
    /// the connection (the payload broke off); the inner one fails the member.
    async fn fill(
        &mut self,
        put: &mut PutSession,
        source: &Source,
        len: u64,
    ) -> Result<Result<(), StoreError>, Closed> {
        while put.remaining() > 0 {
            let at = len - put.remaining();
            let (mut buf, n) = match put.next_buffer().await {
                Ok(next) => next,
                Err(e) => return Ok(Err(e)),
            };
            let dest = &mut buf.as_mut_capacity()[..n];
            match source {
                Source::Region(region, offset) => region.read(offset + at, dest),
                Source::Payload => {
                    if let Err(e) = self.frames.read_exact(dest).await {
                        return Err(format!("put payload ended after {at} of {len} bytes of a member: {e}"));
                    }
                    self.metrics.received(n as u64);
                }
            }
            if let Err(e) = put.filled(buf, n).await {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }

    /// Refuses a whole batch of puts, its payload read and thrown away.
    async fn refuse_put_batch(&mut self, id: u64, payload: u64, e: &StoreError) -> Result<(), Closed> {
        self.discard(payload).await?;
        self.responder.send(error_frame(Opcode::PutBatch, id, e)).await;
        Ok(())
    }
}

fn stored(id: u64, index: u32, committed: Result<ShardMeta, StoreError>, tally: &Tally) -> BatchPart {
    tally.count(committed.is_ok());
    match committed {
        Ok(meta) => BatchPart::Stored { index, meta },
        Err(e) => failed(Opcode::PutBatch, id, index, &e),
    }
}

/// Where a member whose source is `place` finds its `len` bytes: the
/// inner error fails the member (a place outside a region the daemon
/// mapped: its bytes are not in the payload); the outer one refuses the
/// batch (a region not registered: where its bytes are is unknown).
fn source(
    places: &mut BatchPlaces<'_>,
    place: &RegionPlace,
    len: u64,
) -> Result<Result<Source, StoreError>, StoreError> {
    let whole = RegionPlace {
        offset: 0,
        len: 0,
        ..*place
    };
    let region = places.place(&whole)?;
    if !region.is_mapped() {
        return Ok(Ok(Source::Payload));
    }
    if place.len != len {
        return Ok(Err(StoreError::BadRequest(format!(
            "a put of {len} bytes names a source of {} bytes",
            place.len
        ))));
    }
    Ok(places.place(place).map(|region| Source::Region(region, place.offset)))
}
