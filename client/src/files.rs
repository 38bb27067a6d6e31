//! Files in and out of a daemon, in bounded memory (feature `files`): a
//! file stored as one shard, a shard written to a file or standard output,
//! and `.safetensors` files imported as one shard per tensor and exported
//! back, byte for byte.
//!
//! Files are read through a memory mapping (never into a buffer of their
//! size): a file must not be truncated while it is read. Shards are read in
//! pieces of [`PIECE`] bytes, a few in flight (views of the daemon's arena
//! on a Unix socket, else fetches into buffers that are reused), each
//! checked to be of the same version, the whole checked against the
//! shard's CRC32C; a file is written under a temporary name and renamed
//! once complete, so a failed get never leaves a partial file behind.
//!
//! # Layout
//!
//! * [`pieces`]: reading shards in pieces into a sink, in order.
//! * [`safetensors`]: `.safetensors` import and export.

pub mod pieces;
pub mod safetensors;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use shardd_protocol::ShardMeta;

use crate::progress::Progress;
use crate::{Client, ClientError, PutOptions};
pub use pieces::{Output, PIECE};
pub use safetensors::{
    Exported, HEADER_KEY, Imported, export_safetensors, import_safetensors, import_safetensors_partitioned,
};

/// What went wrong moving a file; each variant says what to do.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A local file cannot be read or written: check the path and its
    /// permissions, and the space on its file system.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The daemon or the connection failed (see the error).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A node of a cluster failed (see the error).
    #[error(transparent)]
    Cluster(#[from] crate::ClusterError),
    /// A file is not what it should be (a `.safetensors` file that does not
    /// parse, a tensor name that is no valid key).
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A shard was replaced by a new version while it was being read, more
    /// often than reading again could catch up with.
    #[error("{shard} changed while it was read (version {from} then {to}); read it again")]
    Changed {
        /// namespace/key.
        shard: String,
        /// The version first read.
        from: u64,
        /// The version seen later.
        to: u64,
    },
}

impl FilesError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> FilesError {
        FilesError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The daemon's error, if that is what this is.
    pub fn client(&self) -> Option<&ClientError> {
        match self {
            FilesError::Client(e) => Some(e),
            _ => None,
        }
    }
}

/// Files up to this size are read into memory as they are mapped.
const POPULATE_UP_TO: u64 = 2 << 30;

/// The file at `path`, mapped (empty files are not mapped).
pub(crate) fn map_file(path: &Path) -> Result<Bytes, FilesError> {
    let file = std::fs::File::open(path).map_err(|e| FilesError::io(path, e))?;
    let len = file.metadata().map_err(|e| FilesError::io(path, e))?.len();
    if len == 0 {
        return Ok(Bytes::new());
    }
    let mut options = memmap2::MmapOptions::new();
    // Filling the page tables in one go costs less than a fault per page;
    // a file too large to sit in memory is faulted in as it is read.
    if len <= POPULATE_UP_TO {
        options.populate();
    }
    // SAFETY: a read-only private mapping of a file this process opened; the
    // module's contract (and the docs of every caller) say the file must not
    // be truncated while it is read, the one way this mapping could fault.
    let map = unsafe { options.map(&file) }.map_err(|e| FilesError::io(path, e))?;
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(Bytes::from_owner(map))
}

/// Stores the file at `path` as the shard `namespace/key`, straight from a
/// mapping of the file; `progress` hears of the bytes as they are sent.
pub async fn put_file(
    client: &Client,
    namespace: &str,
    key: &str,
    path: &Path,
    options: PutOptions,
    progress: Option<Arc<dyn Progress>>,
) -> Result<ShardMeta, FilesError> {
    let data = map_file(path)?;
    if let Some(progress) = &progress {
        progress.start(data.len() as u64);
    }
    Ok(client.put_reporting(namespace, key, data, options, progress).await?)
}

/// Writes the shard `namespace/key` to `output` in pieces; returns its
/// metadata. A file output appears only once complete and checked.
pub async fn get_file(
    client: &Client,
    namespace: &str,
    key: &str,
    output: Output,
    progress: Option<Arc<dyn Progress>>,
) -> Result<ShardMeta, FilesError> {
    let mut tries = 0;
    loop {
        let meta = client.stat(namespace, key).await?.meta;
        if let Some(progress) = &progress {
            progress.start(meta.len);
        }
        let plan = vec![pieces::Part {
            key: key.to_string(),
            version: meta.version,
            crc32c: meta.crc32c,
            len: meta.len,
            at: 0,
        }];
        let sink = output.open(meta.len)?;
        match pieces::fetch(client, namespace, &plan, sink, progress.clone()).await {
            Ok(sink) => {
                sink.finish()?;
                return Ok(meta);
            }
            // Replaced while read: read the new version, a few times at most
            // (a file only: what went to standard output cannot be taken back).
            Err(FilesError::Changed { .. }) if tries < 3 && matches!(output, Output::File(_)) => tries += 1,
            // Bytes that do not match: have the daemon check its copy in
            // memory (dropping it if it went bad) and read once more.
            Err(FilesError::Client(ClientError::ChecksumMismatch { version, .. }))
                if tries < 3 && matches!(output, Output::File(_)) =>
            {
                let _ = client.verify(namespace, key, Some(version)).await;
                tries = 3;
            }
            Err(e) => return Err(e),
        }
    }
}
