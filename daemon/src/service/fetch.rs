//! Fetches over the socket. A shard in the arena is sent from it; a miss
//! starts (or joins) its load into the arena and sends each chunk as soon
//! as the load has read and verified it; a shard the arena cannot place,
//! or a daemon without an arena, is read straight from the drive.

use std::ops::Range;
use std::sync::Arc;

use shardd_protocol::{FetchRequest, FetchResponse, ShardMeta};

use super::{Service, Session};
use crate::cache::policy::ShardRef;
use crate::cache::shard::pieces;
use crate::cache::{Access, Follow, Followed, Lease, ResidentHandle, Started};
use crate::io::AlignedBuf;
use crate::store::{Chunk, ChunkStream, StoreError};

/// Bytes of a shard on their way to the client, held in memory until sent.
#[derive(Debug)]
pub enum Piece {
    /// A verified chunk read from the drive.
    Drive(Chunk),
    /// Part of a chunk of a shard in the arena, held by a lease until sent.
    Resident {
        /// Holds the shard.
        lease: Lease,
        /// Which chunk.
        chunk: usize,
        /// Which bytes of it.
        range: Range<usize>,
    },
    /// Part of a chunk just read into the arena for a shard still loading.
    Loaded {
        /// The chunk's arena block, kept until sent.
        block: Arc<AlignedBuf>,
        /// Which bytes of it.
        range: Range<usize>,
    },
}

impl Piece {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Piece::Drive(chunk) => chunk.bytes(),
            Piece::Resident { lease, chunk, range } => &lease.chunks()[*chunk].as_slice()[range.clone()],
            Piece::Loaded { block, range } => &block.as_slice()[range.clone()],
        }
    }
}

/// A fetch under way: what the answer says, then its bytes piece by piece.
#[derive(Debug)]
pub struct Fetch {
    /// The shard, and which of its bytes come.
    pub head: FetchResponse,
    body: Body,
}

#[derive(Debug)]
enum Body {
    /// From the arena: every piece is ready.
    Ready(std::vec::IntoIter<Piece>),
    /// Following a load: each chunk as it is verified.
    Following {
        load: Follow,
        pieces: std::vec::IntoIter<(usize, Range<usize>)>,
    },
    /// From the drive.
    Drive(ChunkStream),
}

impl Fetch {
    /// The next piece of the answer; `None` once all `head.len` bytes came.
    pub async fn next(&mut self) -> Option<Result<Piece, StoreError>> {
        match &mut self.body {
            Body::Ready(pieces) => pieces.next().map(Ok),
            Body::Following { load, pieces } => {
                let (chunk, range) = pieces.next()?;
                Some(load.chunk(chunk).await.map(|block| Piece::Loaded { block, range }))
            }
            Body::Drive(chunks) => chunks.next().await.map(|c| c.map(Piece::Drive)),
        }
    }

    /// A fetch from a leased, resident shard: every piece ready now.
    fn resident(req: &FetchRequest, lease: Lease) -> Result<Fetch, StoreError> {
        Ok(Resident::new(req, lease)?.into_fetch())
    }

    /// Whether every piece is ready (the answer needs no waiting).
    pub fn is_ready(&self) -> bool {
        matches!(self.body, Body::Ready(_))
    }

    /// Every piece of a ready fetch (empty for one that would wait).
    pub fn ready_pieces(self) -> Vec<Piece> {
        match self.body {
            Body::Ready(pieces) => pieces.collect(),
            _ => Vec::new(),
        }
    }
}

/// A fetch of a shard in the arena, its lease taken and its range checked,
/// before anything is built for the answer: written where it goes
/// straight from the arena, or made a [`Fetch`].
#[derive(Debug)]
pub struct Resident {
    lease: Lease,
    offset: u64,
    len: u64,
}

impl Resident {
    fn new(req: &FetchRequest, lease: Lease) -> Result<Resident, StoreError> {
        let (offset, len) = fetch_range(&lease.meta, req)?;
        Ok(Resident { lease, offset, len })
    }

    /// Bytes the answer carries.
    pub fn answer_len(&self) -> u64 {
        self.len
    }

    /// The shard.
    pub fn meta(&self) -> &ShardMeta {
        &self.lease.meta
    }

    /// Offset in the shard of the answer's first byte.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Calls `write` with each piece of the answer in order, and how far
    /// into the answer it lies.
    pub fn write_to(&self, mut write: impl FnMut(u64, &[u8])) {
        let chunks = self.lease.chunks();
        let mut at = 0;
        for (chunk, range) in self.lease.pieces(self.offset, self.len) {
            let bytes = &chunks[chunk].as_slice()[range];
            write(at, bytes);
            at += bytes.len() as u64;
        }
    }

    /// The fetch it answers, piece by piece.
    pub fn into_fetch(self) -> Fetch {
        let Resident { lease, offset, len } = self;
        let pieces: Vec<Piece> = lease
            .pieces(offset, len)
            .map(|(chunk, range)| Piece::Resident {
                lease: lease.clone(),
                chunk,
                range,
            })
            .collect();
        Fetch {
            head: head(&lease.meta, offset, len),
            body: Body::Ready(pieces.into_iter()),
        }
    }
}

fn head(meta: &ShardMeta, offset: u64, len: u64) -> FetchResponse {
    FetchResponse {
        meta: meta.clone(),
        offset,
        len,
    }
}

/// The part of the shard a fetch asks for, checked against the shard and
/// the client's limit.
pub(super) fn fetch_range(meta: &ShardMeta, req: &FetchRequest) -> Result<(u64, u64), StoreError> {
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

impl Service {
    /// A fetch of a shard in the arena, at once; `None` when it is not
    /// resident (then [`Service::fetch`] loads it). Never waits.
    pub fn fetch_resident(&self, req: &FetchRequest) -> Option<Result<Fetch, StoreError>> {
        let lease = self.cache()?.try_hit(&req.namespace, &req.key, Access::Fetch)?;
        Some(lease.and_then(|lease| Fetch::resident(req, lease)))
    }

    /// The same for each of a batch's members (`None` for one left out),
    /// before anything is built for their answers, under one taking of the
    /// cache's lock. A kept batch passes its members' `handles` (one each),
    /// which this renews.
    pub fn resident_many(
        &self,
        reqs: &[Option<&FetchRequest>],
        handles: Option<&mut [Option<ResidentHandle>]>,
    ) -> Vec<Option<Result<Resident, StoreError>>> {
        let Some(cache) = self.cache() else {
            return reqs.iter().map(|_| None).collect();
        };
        let ids = reqs.iter().map(|req| req.map(|req| ShardRef(&req.namespace, &req.key)));
        let hits = match handles {
            Some(handles) => {
                debug_assert_eq!(handles.len(), reqs.len(), "one handle per member");
                cache.try_hit_held(ids, handles)
            }
            None => cache.try_hit_many(ids),
        };
        hits.into_iter()
            .zip(reqs)
            .map(|(hit, req)| {
                let (hit, req) = (hit?, (*req)?);
                Some(hit.and_then(|lease| Resident::new(req, lease)))
            })
            .collect()
    }

    /// A fetch: from the arena, following its load into the arena, or from
    /// the drive; chunks read from the drive take buffers from `session`'s
    /// share of the budget.
    pub async fn fetch(&self, req: &FetchRequest, session: &Session) -> Result<Fetch, StoreError> {
        let reader = match self.cache() {
            Some(cache) => match cache.fetch_following(&req.namespace, &req.key, Access::Fetch)? {
                Followed::Resident(lease) => return Fetch::resident(req, lease),
                Followed::Loading(mut load) => match load.started().await? {
                    Started::Loading(meta, chunk_size) => {
                        let (offset, len) = fetch_range(&meta, req)?;
                        let pieces: Vec<_> = pieces(meta.len, chunk_size, offset, len).collect();
                        return Ok(Fetch {
                            head: head(&meta, offset, len),
                            body: Body::Following {
                                load,
                                pieces: pieces.into_iter(),
                            },
                        });
                    }
                    Started::Bypass { reason, .. } => {
                        tracing::debug!(%reason, "reading straight from the drive");
                        self.store().open_reader(&req.namespace, &req.key).await?
                    }
                },
            },
            None => self.store().open_reader(&req.namespace, &req.key).await?,
        };
        let (offset, len) = fetch_range(reader.meta(), req)?;
        let head = head(reader.meta(), offset, len);
        Ok(Fetch {
            head,
            body: Body::Drive(reader.chunks(offset, len, session.scope.clone())),
        })
    }
}
