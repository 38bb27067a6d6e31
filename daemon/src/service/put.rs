//! Put sessions. A put begins ([`Service::begin_put`]), takes its payload
//! chunk by chunk into buffers the session hands out (the transport fills
//! each straight from the socket), and commits.
//!
//! * **Write-back** (and scratch): acknowledged once the bytes are in arena
//!   blocks and checked against the sender's CRC32C; the cache flushes the
//!   shard later. Beyond the write-back budget the put first waits for
//!   flushes to make room (its payload waits in the socket meanwhile), up
//!   to the I/O timeout; one that cannot get room is written through.
//! * **Durable**: written to the drive as it arrives and acknowledged once
//!   published. Into arena blocks when the arena can hold it, so that the
//!   shard stays cached after the put; else into pool buffers.
//!
//! A put dropped before its commit (the client vanished mid-payload)
//! leaves nothing behind: the writer's drop removes its temp file, and the
//! arena blocks and the write-back room go back.

use shardd_protocol::{Durability, PutRequest, ShardMeta};

use super::{Service, Session};
use crate::cache::{Cache, WriteBackRoom};
use crate::io::AlignedBuf;
use crate::store::versions::Reservation;
use crate::store::{BufferScope, PutSpec, ShardWriter, StoreError};

/// A put taking in its payload.
#[derive(Debug)]
pub struct PutSession {
    len: u64,
    received: u64,
    target: Target,
}

#[derive(Debug)]
enum Target {
    Durable {
        writer: Box<ShardWriter>,
        /// Arena blocks the chunks go into (kept as the cached copy), or
        /// `None` for pool buffers.
        blocks: Option<std::vec::IntoIter<AlignedBuf>>,
        scope: BufferScope,
        cache: Option<Cache>,
    },
    WriteBack(Box<WriteBack>),
}

#[derive(Debug)]
struct WriteBack {
    spec: PutSpec,
    cache: Cache,
    /// The put's version, held until the shard is on the drive.
    reservation: Reservation,
    /// Its room in the write-back budget, until the shard is installed.
    room: WriteBackRoom,
    blocks: std::vec::IntoIter<AlignedBuf>,
    chunks: Vec<AlignedBuf>,
    crc: u32,
    chunk_size: u64,
    scratch: bool,
}

impl Service {
    /// Begins a put of `len` payload bytes; chunk buffers from the pool
    /// count against `session`'s share of the budget.
    pub async fn begin_put(&self, request: PutRequest, len: u64, session: &Session) -> Result<PutSession, StoreError> {
        self.check_quota(&request.namespace, &request.key, len)?;
        let cache = self.cache().cloned();
        let spec = PutSpec {
            newer_than: cache
                .as_ref()
                .and_then(|c| c.unflushed_version(&request.namespace, &request.key)),
            namespace: request.namespace,
            key: request.key,
            version: request.version,
            dtype: request.dtype,
            shape: request.shape,
            len,
            crc32c: request.crc32c,
        };
        // Scratch puts are write-back puts whose writing is never synced.
        let scratch = request.durability == Durability::Scratch;
        if let (Durability::WriteBack | Durability::Scratch, Some(cache)) = (request.durability, &cache) {
            if let Some(room) = cache.room_for_write_back(len, self.io_timeout).await {
                // Acknowledged from memory only if a drive can take it (and
                // every write-back byte before it): a full drive refuses the
                // put through the write-through path below, in so many words.
                let drive_room = self.store().has_room_for(cache.unflushed_bytes());
                if let Some(blocks) = drive_room.then(|| cache.blocks_for_put(&spec.namespace, len)).flatten() {
                    let reservation = self.store().check_put(&spec)?;
                    return Ok(PutSession {
                        len,
                        received: 0,
                        target: Target::WriteBack(Box::new(WriteBack {
                            spec,
                            cache: cache.clone(),
                            reservation,
                            room,
                            chunks: Vec::with_capacity(blocks.len()),
                            blocks: blocks.into_iter(),
                            crc: 0,
                            chunk_size: self.store().config().chunk_size as u64,
                            scratch,
                        })),
                    });
                }
            }
            tracing::debug!("write-back put does not fit the arena now; writing it through");
        }
        let namespace = spec.namespace.clone();
        let mut writer = self.store().begin_put(spec).await?;
        if scratch {
            writer.without_sync();
        }
        // Arena blocks keep the shard cached after the put.
        let blocks = cache.as_ref().and_then(|c| c.blocks_for_put(&namespace, len));
        if blocks.is_some() {
            writer.keep_chunks();
        }
        Ok(PutSession {
            len,
            received: 0,
            target: Target::Durable {
                writer: Box::new(writer),
                blocks: blocks.map(Vec::into_iter),
                scope: session.scope.clone(),
                cache,
            },
        })
    }
}

impl PutSession {
    /// Payload bytes still to come.
    pub fn remaining(&self) -> u64 {
        self.len - self.received
    }

    /// Whether the put is acknowledged only once on the drive: its commit
    /// may take a while (the transport runs it on its own).
    pub fn is_durable(&self) -> bool {
        matches!(self.target, Target::Durable { .. })
    }

    /// The buffer for the next chunk of payload and how many bytes of it
    /// to fill; then [`PutSession::filled`].
    pub async fn next_buffer(&mut self) -> Result<(AlignedBuf, usize), StoreError> {
        let ran_out = || StoreError::BadRequest("arena blocks ran out".into());
        match &mut self.target {
            Target::Durable {
                writer, blocks, scope, ..
            } => {
                let n = writer.next_chunk_len();
                let buf = match blocks {
                    Some(blocks) => blocks.next().ok_or_else(ran_out)?,
                    None => writer.next_buffer(scope).await?,
                };
                Ok((buf, n))
            }
            Target::WriteBack(put) => {
                let n = (self.len - self.received).min(put.chunk_size) as usize;
                Ok((put.blocks.next().ok_or_else(ran_out)?, n))
            }
        }
    }

    /// Takes the buffer [`PutSession::next_buffer`] gave, with its `n`
    /// bytes filled.
    pub async fn filled(&mut self, mut buf: AlignedBuf, n: usize) -> Result<(), StoreError> {
        buf.set_len(n);
        self.received += n as u64;
        match &mut self.target {
            Target::Durable { writer, .. } => writer.write_chunk(buf).await,
            Target::WriteBack(put) => {
                // Zeros after the bytes: the block is written out whole-page.
                buf.zero_pad();
                put.crc = crc32c::crc32c_append(put.crc, buf.as_slice());
                put.chunks.push(buf);
                Ok(())
            }
        }
    }

    /// Commits the put once its whole payload is in; returns the stored
    /// shard's metadata.
    pub async fn commit(self) -> Result<ShardMeta, StoreError> {
        match self.target {
            Target::Durable {
                writer, blocks, cache, ..
            } => {
                // A put into arena blocks keeps them as the cached copy;
                // otherwise a cached older version is dropped.
                let meta = if blocks.is_some() {
                    let (meta, chunks) = writer.commit_keeping_chunks().await?;
                    if let Some(cache) = &cache {
                        cache.install(meta.clone(), chunks);
                    }
                    meta
                } else {
                    let meta = writer.commit().await?;
                    if let Some(cache) = &cache {
                        cache.forget_older(&meta.namespace, &meta.key, meta.version);
                    }
                    meta
                };
                tracing::debug!(version = meta.version, "stored");
                Ok(meta)
            }
            Target::WriteBack(put) => {
                let WriteBack {
                    spec,
                    cache,
                    reservation,
                    room,
                    chunks,
                    crc,
                    scratch,
                    ..
                } = *put;
                if let Some(expected) = spec.crc32c.filter(|&c| c != crc) {
                    return Err(StoreError::ChecksumMismatch(format!(
                        "{}/{}: the sender's CRC32C {expected:#010x} does not match the received bytes' {crc:#010x}",
                        spec.namespace, spec.key
                    )));
                }
                let meta = spec.meta(reservation.version(), crc);
                let installed = cache.install_dirty(meta.clone(), chunks, reservation, scratch);
                // Installed, the shard's bytes count as not on the drive yet.
                drop(room);
                installed.map(|()| meta)
            }
        }
    }
}
