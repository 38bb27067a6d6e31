//! Reading shards in pieces into a sink: [`PIECES_IN_FLIGHT`] ranged
//! requests of at most [`PIECE`] bytes run ahead, and each piece is
//! written, in order, while the next ones arrive. On a zero-copy
//! connection a piece is a view of the daemon's arena, written out from
//! there (one copy, nothing through the socket; a view of a shard still
//! loading answers once its piece is in), and the daemon is asked to load
//! the next shards ahead; otherwise it is fetched into a buffer that is
//! reused. Every piece must come from the same version of
//! its shard, and the pieces of a shard together must match its CRC32C.

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use shardd_protocol::ByteRange;
use tokio::task::JoinHandle;

use super::FilesError;
use crate::progress::Progress;
use crate::{Client, ClientError, FetchInfo, ShardView};

/// Bytes of one piece.
pub const PIECE: u64 = 16 << 20;
/// Pieces fetched ahead of the one being written.
pub const PIECES_IN_FLIGHT: usize = 4;
/// On a zero-copy connection, bytes of the shards after the one being read
/// that the daemon is asked to load ahead (a prefetch hint), so that the
/// drive reads the next shards while this one is written out.
pub const LOAD_AHEAD: u64 = 384 << 20;

/// Where a shard (or a file of shards) goes.
#[derive(Clone, Debug)]
pub enum Output {
    /// A file, written under a temporary name in its directory and renamed
    /// once complete.
    File(PathBuf),
    /// Standard output, in order.
    Stdout,
}

impl Output {
    /// A sink for `len` bytes.
    pub(crate) fn open(&self, len: u64) -> Result<Sink, FilesError> {
        match self {
            Output::Stdout => Ok(Sink::Stdout),
            Output::File(path) => {
                let dir = match path.parent() {
                    Some(dir) if !dir.as_os_str().is_empty() => dir,
                    _ => Path::new("."),
                };
                let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
                let temp = tempfile::Builder::new()
                    .prefix(&format!(".{name}."))
                    .suffix(".partial")
                    .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
                    .tempfile_in(dir)
                    .map_err(|e| FilesError::io(path, e))?;
                temp.as_file().set_len(len).map_err(|e| FilesError::io(path, e))?;
                Ok(Sink::File {
                    temp,
                    path: path.clone(),
                })
            }
        }
    }
}

/// Where pieces are written.
#[derive(Debug)]
pub(crate) enum Sink {
    File {
        /// Removed if dropped before `finish`.
        temp: tempfile::NamedTempFile,
        path: PathBuf,
    },
    Stdout,
}

impl Sink {
    /// Writes `bytes` at `offset` (standard output: in order, offsets ignored).
    pub(crate) fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<(), FilesError> {
        match self {
            Sink::File { temp, path } => temp
                .as_file()
                .write_all_at(bytes, offset)
                .map_err(|e| FilesError::io(path, e)),
            Sink::Stdout => std::io::stdout()
                .lock()
                .write_all(bytes)
                .map_err(|e| FilesError::io(Path::new("standard output"), e)),
        }
    }

    /// Makes the output whole: renames the file into place, or flushes.
    pub(crate) fn finish(self) -> Result<(), FilesError> {
        match self {
            Sink::File { temp, path } => temp
                .persist(&path)
                .map(drop)
                .map_err(|e| FilesError::io(&path, e.error)),
            Sink::Stdout => std::io::stdout()
                .flush()
                .map_err(|e| FilesError::io(Path::new("standard output"), e)),
        }
    }
}

/// One shard to read, and where its bytes go in the sink.
#[derive(Clone, Debug)]
pub(crate) struct Part {
    pub key: String,
    /// The version every piece must have.
    pub version: u64,
    /// What the whole shard must match.
    pub crc32c: u32,
    pub len: u64,
    /// Offset in the sink of its first byte.
    pub at: u64,
}

/// One ranged fetch.
#[derive(Clone, Copy, Debug)]
struct Piece {
    part: usize,
    range: ByteRange,
}

/// A piece as it arrived: in a buffer, or in place in the daemon's arena.
enum Arrived {
    Copied(Vec<u8>, Result<FetchInfo, ClientError>),
    /// A zero-copy view (Unix socket): written out straight from the arena.
    Viewed(Result<ShardView, ClientError>),
}

impl Arrived {
    fn version(&self) -> Result<u64, ClientError> {
        match self {
            Arrived::Copied(_, Ok(info)) => Ok(info.meta.version),
            Arrived::Viewed(Ok(view)) => Ok(view.meta().version),
            Arrived::Copied(_, Err(e)) | Arrived::Viewed(Err(e)) => Err(clone_error(e)),
        }
    }
}

/// Errors are not `Clone`; the ones a piece can end with are re-made.
fn clone_error(e: &ClientError) -> ClientError {
    match e {
        ClientError::Remote {
            status,
            message,
            current_version,
        } => ClientError::Remote {
            status: *status,
            message: message.clone(),
            current_version: *current_version,
        },
        other => ClientError::Remote {
            status: shardd_protocol::Status::Internal,
            message: other.to_string(),
            current_version: None,
        },
    }
}

/// Whether a view's failure only means the arena cannot hold the shard:
/// its pieces then come over the socket.
fn unviewable(e: &ClientError) -> bool {
    matches!(
        e.status(),
        Some(shardd_protocol::Status::TooLarge) | Some(shardd_protocol::Status::Busy)
    )
}

/// Reads every part, piece by piece, into `sink`; returns the sink to be
/// finished. Fails if a piece comes from another version than its part's,
/// or a part does not match its CRC32C.
///
/// On a zero-copy connection each piece is a view of the daemon's arena
/// (a shard still loading answers as soon as the piece's chunks are in),
/// written out from there: one copy, and none through the socket. Pieces
/// of shards the arena cannot hold come over the socket.
pub(crate) async fn fetch(
    client: &Client,
    namespace: &str,
    parts: &[Part],
    mut sink: Sink,
    progress: Option<Arc<dyn Progress>>,
) -> Result<Sink, FilesError> {
    let mut pieces = parts.iter().enumerate().flat_map(|(i, part)| {
        (0..part.len.div_ceil(PIECE)).map(move |n| {
            let offset = n * PIECE;
            Piece {
                part: i,
                range: ByteRange {
                    offset,
                    len: PIECE.min(part.len - offset),
                },
            }
        })
    });
    let mut views = client.zero_copy();
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut running: VecDeque<(Piece, JoinHandle<Arrived>)> = VecDeque::new();
    let start = |piece: Piece, mut buf: Vec<u8>, view: bool| {
        let (client, namespace, key) = (client.clone(), namespace.to_string(), parts[piece.part].key.clone());
        let range = piece.range;
        let task = tokio::spawn(async move {
            if view {
                return Arrived::Viewed(client.fetch_view(&namespace, &key, Some(range)).await);
            }
            buf.resize(range.len as usize, 0);
            let (buf, result) = client.fetch_into(&namespace, &key, Some(range), buf).await;
            Arrived::Copied(buf, result)
        });
        (piece, task)
    };
    // Parts before `hinted` have been asked for or hinted.
    let mut hinted = 1;
    let mut hint = |part: usize, views: bool| {
        if !views || hinted > part + 1 {
            return;
        }
        let mut ahead = 0;
        let mut items = Vec::new();
        while hinted < parts.len() && ahead < LOAD_AHEAD {
            ahead += parts[hinted].len;
            if let Ok(key) = shardd_protocol::Key::new(parts[hinted].key.as_str()) {
                items.push(shardd_protocol::PrefetchItem {
                    key,
                    order: items.len() as u32,
                    deadline_unix_ms: None,
                });
            }
            hinted += 1;
        }
        if !items.is_empty() {
            let (client, namespace) = (client.clone(), namespace.to_string());
            // Only a hint: pieces of a shard the daemon did not load ahead
            // are served all the same.
            tokio::spawn(async move { client.prefetch(&namespace, items).await });
        }
    };
    for piece in pieces.by_ref().take(PIECES_IN_FLIGHT) {
        hint(piece.part, views);
        running.push_back(start(piece, Vec::new(), views));
    }
    let mut crc = 0u32;
    while let Some((piece, task)) = running.pop_front() {
        let mut arrived = task.await.map_err(|e| ClientError::Remote {
            status: shardd_protocol::Status::Internal,
            message: format!("a piece's fetch stopped: {e}"),
            current_version: None,
        })?;
        if let Arrived::Viewed(Err(e)) = &arrived
            && unviewable(e)
        {
            // Not in the arena: this piece, and the rest, over the socket.
            views = false;
            let (_, task) = start(piece, spare.pop().unwrap_or_default(), false);
            arrived = task
                .await
                .map_err(|e| FilesError::io(Path::new("output"), std::io::Error::other(e)))?;
        }
        let part = &parts[piece.part];
        let version = arrived.version()?;
        if version != part.version {
            return Err(FilesError::Changed {
                shard: format!("{namespace}/{}", part.key),
                from: part.version,
                to: version,
            });
        }
        // Write (and checksum) off the runtime's threads, while the
        // following pieces arrive.
        let at = part.at + piece.range.offset;
        let (back, buf, running_crc, written) = tokio::task::spawn_blocking(move || {
            let mut crc = crc;
            let written = match &arrived {
                Arrived::Copied(buf, _) => {
                    crc = crc32c::crc32c_append(crc, buf);
                    sink.write_at(at, buf)
                }
                Arrived::Viewed(Ok(view)) => write_view(&mut sink, at, view, &mut crc),
                Arrived::Viewed(Err(_)) => Ok(()),
            };
            let buf = match arrived {
                Arrived::Copied(buf, _) => Some(buf),
                Arrived::Viewed(_) => None,
            };
            (sink, buf, crc, written)
        })
        .await
        .map_err(|e| FilesError::io(Path::new("output"), std::io::Error::other(e)))?;
        written?;
        (sink, crc) = (back, running_crc);
        if let Some(progress) = &progress {
            progress.advance(piece.range.len);
        }
        if piece.range.offset + piece.range.len == part.len {
            if crc != part.crc32c {
                return Err(ClientError::ChecksumMismatch {
                    shard: format!("{namespace}/{}", part.key),
                    version: part.version,
                    expected: part.crc32c,
                    actual: crc,
                }
                .into());
            }
            crc = 0;
        }
        spare.extend(buf);
        if let Some(next) = pieces.next() {
            hint(next.part, views);
            let buf = spare.pop().unwrap_or_default();
            running.push_back(start(next, buf, views));
        }
    }
    Ok(sink)
}

/// Writes a view's bytes from the arena to `at`, folding them into `crc`;
/// fails if the view's lease was lost meanwhile (what was written may not
/// be the shard's).
fn write_view(sink: &mut Sink, at: u64, view: &ShardView, crc: &mut u32) -> Result<(), FilesError> {
    let mut offset = at;
    for piece in view.pieces()? {
        *crc = crc32c::crc32c_append(*crc, piece);
        sink.write_at(offset, piece)?;
        offset += piece.len() as u64;
    }
    view.check()?;
    Ok(())
}
