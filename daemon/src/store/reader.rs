//! The fetch path: read the chunks that cover a byte range, a few in flight
//! at once, and verify each against its checksum before handing it out.
//! A chunk that fails (or a file that ends early) quarantines the shard and
//! ends the stream with an error; none of its bytes are returned.

use std::collections::VecDeque;
use std::fs::File;
use std::ops::Range;
use std::sync::Arc;

use shardd_protocol::{Key, Namespace, ShardMeta};

use super::buffers::BufferScope;
use super::index::ShardEntry;
use super::metrics::IoOp;
use super::{Store, StoreError};
use crate::io::{AlignedBuf, Completion, align_up, fs};

/// An open shard version. Holding it keeps the file readable even if a
/// newer version replaces it meanwhile.
#[derive(Debug)]
pub struct ShardReader {
    store: Store,
    entry: Arc<ShardEntry>,
    file: Arc<File>,
}

/// Opens the file of `entry` (its key's lock held by the caller).
async fn open_file(store: &Store, entry: &ShardEntry) -> std::io::Result<File> {
    let dir = &store.inner.dirs[entry.dir];
    let path = dir.shard_path(&entry.meta.namespace, entry.file_id);
    let direct = dir.direct_io;
    fs::blocking(move || fs::open_read(&path, direct)).await
}

/// Verified bytes of one chunk: send `buf.as_slice()[range]`.
#[derive(Debug)]
pub struct Chunk {
    /// The chunk's buffer.
    pub buf: AlignedBuf,
    /// The part of it that belongs to the requested range.
    pub range: Range<usize>,
}

impl Chunk {
    /// The verified bytes of the requested range in this chunk.
    pub fn bytes(&self) -> &[u8] {
        &self.buf.as_slice()[self.range.clone()]
    }

    /// The same chunk with its bytes copied into `block` (which holds at
    /// least the chunk's length); the buffer read into goes back.
    fn copied_into(self, mut block: AlignedBuf) -> Chunk {
        let len = self.buf.len();
        block.as_mut_capacity()[..len].copy_from_slice(self.buf.as_slice());
        block.set_len(len);
        Chunk {
            buf: block,
            range: self.range,
        }
    }
}

impl ShardReader {
    /// Opens the current version of a shard. A replace in the same data
    /// dir renames the new version's file over the old one's path, under
    /// the key's lock: the version is looked up and its file opened under
    /// that lock too, so the file opened is the version looked up (and,
    /// once open, stays readable whatever replaces it).
    pub(super) async fn open_current(
        store: Store,
        namespace: &Namespace,
        key: &Key,
    ) -> Result<ShardReader, StoreError> {
        let (entry, opened) = {
            let _guard = store.lock_key(namespace, key).await;
            let entry = store.current(namespace, key)?;
            // A failed drive is not asked: it may take long to say no.
            store.check_dir(entry.dir)?;
            let opened = open_file(&store, &entry).await;
            (entry, opened)
        };
        ShardReader::opened(store, entry, opened).await
    }

    /// Opens `entry`'s file if it is still the current version (`None` if
    /// a newer version or a delete came first), as [`Self::open_current`].
    pub(super) async fn open_if_current(
        store: Store,
        entry: Arc<ShardEntry>,
    ) -> Option<Result<ShardReader, StoreError>> {
        let opened = {
            let _guard = store.lock_key(&entry.meta.namespace, &entry.meta.key).await;
            let current = store.inner.index.get(&entry.meta.namespace, &entry.meta.key);
            if !current.is_some_and(|c| Arc::ptr_eq(&c, &entry)) {
                return None;
            }
            if let Err(e) = store.check_dir(entry.dir) {
                return Some(Err(e));
            }
            open_file(&store, &entry).await
        };
        Some(ShardReader::opened(store, entry, opened).await)
    }

    /// A reader of `entry` opened as `opened` says; a version whose file is
    /// missing is quarantined (outside the key's lock, which that takes).
    async fn opened(
        store: Store,
        entry: Arc<ShardEntry>,
        opened: std::io::Result<File>,
    ) -> Result<ShardReader, StoreError> {
        let path = || store.inner.dirs[entry.dir].shard_path(&entry.meta.namespace, entry.file_id);
        match opened {
            Ok(file) => Ok(ShardReader {
                store,
                entry,
                file: Arc::new(file),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let reason = format!("its file {} is missing", path().display());
                store.quarantine(&entry, reason.clone()).await;
                Err(StoreError::Quarantined {
                    namespace: entry.meta.namespace.clone(),
                    key: entry.meta.key.clone(),
                    version: entry.meta.version,
                    reason,
                })
            }
            Err(e) => {
                store.io_failed(entry.dir, IoOp::Metadata, &e);
                Err(StoreError::io(format!("open {}", path().display()), e))
            }
        }
    }

    /// The shard's metadata.
    pub fn meta(&self) -> &ShardMeta {
        &self.entry.meta
    }

    /// Bytes per chunk of this shard (the size of each piece a fetch sends).
    pub fn chunk_size(&self) -> u32 {
        self.entry.layout.chunk_size
    }

    /// Streams the verified bytes of `[offset, offset + len)`, which must lie
    /// within the shard. Buffers are taken under `scope`'s budget.
    pub fn chunks(self, offset: u64, len: u64, scope: BufferScope) -> ChunkStream {
        self.stream(offset, len, Buffers::Pool(scope))
    }

    /// Streams the whole shard's verified chunks read into `blocks` (one per
    /// chunk, each holding at least the chunk rounded up to
    /// [`crate::io::ALIGN`]), each with its length set to the chunk's.
    ///
    /// With `bounce`, each chunk is read into a pool buffer taken under that
    /// scope (memory in huge pages) and copied into its block once verified:
    /// one copy in memory instead of an O_DIRECT transfer split over the
    /// blocks' small pages.
    pub fn read_into(self, blocks: Vec<AlignedBuf>, bounce: Option<BufferScope>) -> ChunkStream {
        let len = self.entry.meta.len;
        let blocks = blocks.into();
        let buffers = match bounce {
            Some(scope) => Buffers::Bounced { blocks, scope },
            None => Buffers::Given(blocks),
        };
        self.stream(0, len, buffers)
    }

    fn stream(self, offset: u64, len: u64, buffers: Buffers) -> ChunkStream {
        let chunk_size = self.entry.layout.chunk_size as u64;
        let end = offset + len;
        let (first, last) = if len == 0 {
            (1, 0)
        } else {
            (offset / chunk_size, (end - 1) / chunk_size)
        };
        ChunkStream {
            reader: self,
            buffers,
            offset,
            end,
            next: first,
            last,
            in_flight: VecDeque::new(),
            done: false,
        }
    }
}

/// Where a stream's chunk buffers come from.
#[derive(Debug)]
enum Buffers {
    /// The buffer pool, under a budget.
    Pool(BufferScope),
    /// Given up front, one per chunk (arena blocks).
    Given(VecDeque<AlignedBuf>),
    /// Given blocks, filled by a copy from pool buffers taken under `scope`.
    Bounced {
        blocks: VecDeque<AlignedBuf>,
        scope: BufferScope,
    },
}

/// A pool buffer under `scope`: waiting for budget if `wait`, else only
/// if there is budget now.
async fn pool_buffer(pool: &super::Buffers, scope: &BufferScope, size: usize, wait: bool) -> Option<AlignedBuf> {
    if wait {
        Some(pool.take(scope, size).await)
    } else {
        pool.try_take(scope, size)
    }
}

/// Verified chunks of a byte range, in order.
#[derive(Debug)]
pub struct ChunkStream {
    reader: ShardReader,
    buffers: Buffers,
    offset: u64,
    end: u64,
    /// Next chunk index to submit.
    next: u64,
    /// Last chunk index of the range.
    last: u64,
    /// Chunk index, its read, and the block it is copied into (bounced).
    in_flight: VecDeque<(u64, Completion, Option<AlignedBuf>)>,
    done: bool,
}

impl ChunkStream {
    /// The next verified chunk, an error (after which the stream ends), or
    /// `None` at the end of the range.
    pub async fn next(&mut self) -> Option<Result<Chunk, StoreError>> {
        if self.done {
            return None;
        }
        self.submit_more().await;
        let (index, completion, block) = self.in_flight.pop_front()?;
        let submitted = completion.submitted();
        let outcome = completion.await;
        let metrics = self.reader.store.metrics();
        match &outcome.result {
            Ok(read) => metrics.read(self.reader.entry.dir, *read, submitted),
            Err(e) => self.reader.store.io_failed(self.reader.entry.dir, IoOp::Read, e),
        }
        let result = self
            .verify(index, outcome.buf, outcome.result)
            .await
            .map(|chunk| match block {
                Some(block) => chunk.copied_into(block),
                None => chunk,
            });
        if result.is_err() {
            self.done = true;
            self.in_flight.clear();
        }
        Some(result)
    }

    /// Keeps up to `chunks_in_flight` reads going. Waits for buffer budget
    /// only when nothing is in flight, so that streams sharing a budget
    /// cannot wait on each other.
    async fn submit_more(&mut self) {
        let depth = self.reader.store.config().chunks_in_flight.max(1);
        let layout = &self.reader.entry.layout;
        let chunk_size = layout.chunk_size as usize;
        while self.next <= self.last && self.in_flight.len() < depth {
            let pool = self.reader.store.buffers();
            // Waits for budget only when nothing is in flight (see above).
            let wait = self.in_flight.is_empty();
            let (buf, block) = match &mut self.buffers {
                Buffers::Given(given) => match given.pop_front() {
                    Some(buf) => (buf, None),
                    None => break,
                },
                Buffers::Pool(scope) => match pool_buffer(pool, scope, chunk_size, wait).await {
                    Some(buf) => (buf, None),
                    None => break,
                },
                Buffers::Bounced { blocks, scope } if !blocks.is_empty() => {
                    match pool_buffer(pool, scope, chunk_size, wait).await {
                        Some(buf) => (buf, blocks.pop_front()),
                        None => break,
                    }
                }
                Buffers::Bounced { .. } => break,
            };
            let index = self.next;
            let chunk_len = layout.chunk_len(index, self.reader.entry.meta.len);
            let file_offset = layout.payload_offset + index * layout.chunk_size as u64;
            let read_len = align_up(chunk_len) as usize;
            let completion = self
                .reader
                .store
                .engine()
                .read(&self.reader.file, file_offset, buf, read_len);
            self.in_flight.push_back((index, completion, block));
            self.next += 1;
        }
    }

    async fn verify(
        &self,
        index: u64,
        mut buf: AlignedBuf,
        result: std::io::Result<usize>,
    ) -> Result<Chunk, StoreError> {
        let entry = &self.reader.entry;
        let meta = &entry.meta;
        let layout = &entry.layout;
        let chunk_len = layout.chunk_len(index, meta.len) as usize;
        let chunk_start = index * layout.chunk_size as u64;
        let read =
            result.map_err(|e| StoreError::io(format!("read {}/{} chunk {index}", meta.namespace, meta.key), e))?;
        let failure = if read < chunk_len {
            Some(format!(
                "file ends inside chunk {index} (read {read} of {chunk_len} bytes)"
            ))
        } else {
            buf.set_len(chunk_len);
            let actual = crc32c::crc32c(buf.as_slice());
            let expected = layout.chunk_crcs[index as usize];
            if actual != expected {
                self.reader.store.metrics().checksum_failure();
            }
            (actual != expected).then(|| {
                format!(
                    "chunk {index} (bytes {chunk_start}..{}) has CRC32C {actual:#010x}, expected {expected:#010x}",
                    chunk_start + chunk_len as u64
                )
            })
        };
        if let Some(reason) = failure {
            self.reader.store.quarantine(entry, reason.clone()).await;
            return Err(StoreError::Quarantined {
                namespace: meta.namespace.clone(),
                key: meta.key.clone(),
                version: meta.version,
                reason,
            });
        }
        let from = self.offset.max(chunk_start) - chunk_start;
        let to = self.end.min(chunk_start + chunk_len as u64) - chunk_start;
        Ok(Chunk {
            buf,
            range: from as usize..to as usize,
        })
    }
}
