//! The only door to files: positional I/O through an [`IoEngine`], and the
//! few blocking file-system calls (open, rename, fsync of directories) in
//! [`fs`].
//!
//! Two engines run the same operations:
//!
//! * `uring`: io_uring rings, each driven by a dedicated thread.
//! * `psync`: a pool of threads doing `pread`/`pwrite`/`fdatasync`, for
//!   kernels or sandboxes where io_uring is unavailable.
//!
//! Operations are submitted eagerly (the call returns once the operation is
//! queued) and complete through a [`Completion`] future. The buffer always
//! comes back with the result, also when the I/O fails. Reads are retried
//! until the requested length or end of file; writes until everything is
//! written; every error is returned to the caller.

pub mod buf;
pub mod fs;
mod psync;
mod uring;

use std::fs::File;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

pub use buf::{ALIGN, AlignedBuf, BufferPool, SharedSlice, align_up};

/// Which engine to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// io_uring if the kernel allows it, else `psync` with one warning.
    #[default]
    Auto,
    /// io_uring; fail at start if it is unavailable.
    Uring,
    /// Thread pool doing positional reads and writes.
    Psync,
}

impl std::str::FromStr for EngineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<EngineKind, String> {
        match s {
            "auto" => Ok(EngineKind::Auto),
            "uring" | "io_uring" => Ok(EngineKind::Uring),
            "psync" => Ok(EngineKind::Psync),
            other => Err(format!("unknown I/O engine {other:?}; expected auto, uring or psync")),
        }
    }
}

/// Settings of the I/O engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoConfig {
    /// Which engine.
    pub engine: EngineKind,
    /// io_uring: submission queue entries per ring (operations in flight).
    pub queue_depth: u32,
    /// io_uring: number of rings, each on its own thread.
    pub uring_threads: usize,
    /// psync: number of worker threads (operations in flight).
    pub psync_threads: usize,
}

impl Default for IoConfig {
    fn default() -> Self {
        IoConfig {
            engine: EngineKind::Auto,
            queue_depth: 128,
            uring_threads: 1,
            psync_threads: 16,
        }
    }
}

/// What an operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpKind {
    /// Read `want` bytes at `offset` into the buffer (fewer at end of file).
    Read,
    /// Write the buffer's valid bytes at `offset`.
    Write,
    /// `fdatasync` the file.
    SyncData,
}

/// The memory of an operation: a buffer it owns (reads and writes), or
/// shared read-only memory (writes only).
enum OpBuf {
    Owned(AlignedBuf),
    Shared(SharedSlice),
}

impl OpBuf {
    /// Where a read puts its bytes.
    ///
    /// # Panics
    /// For shared memory, which is never read into.
    fn read_ptr(&mut self) -> *mut u8 {
        match self {
            OpBuf::Owned(buf) => buf.as_mut_ptr(),
            OpBuf::Shared(_) => unreachable!("reads always go into owned buffers"),
        }
    }

    /// Where a write takes its bytes from.
    fn write_ptr(&self) -> *const u8 {
        match self {
            OpBuf::Owned(buf) => buf.as_ptr(),
            OpBuf::Shared(slice) => slice.as_ptr(),
        }
    }

    fn fixed_index(&self) -> Option<u16> {
        match self {
            OpBuf::Owned(buf) => buf.fixed_index(),
            OpBuf::Shared(slice) => slice.fixed_index(),
        }
    }

    /// The first `len` bytes to read into.
    fn read_target(&mut self, len: usize) -> &mut [u8] {
        match self {
            OpBuf::Owned(buf) => &mut buf.as_mut_capacity()[..len],
            OpBuf::Shared(_) => unreachable!("reads always go into owned buffers"),
        }
    }

    /// The first `len` bytes to write out.
    fn write_source(&self, len: usize) -> &[u8] {
        match self {
            OpBuf::Owned(buf) => &buf.as_capacity()[..len],
            OpBuf::Shared(slice) => &slice.as_slice()[..len],
        }
    }
}

/// One queued operation, owned by the engine until it completes.
struct Op {
    kind: OpKind,
    file: Arc<File>,
    offset: u64,
    buf: OpBuf,
    /// Bytes to transfer.
    want: usize,
    reply: oneshot::Sender<IoOutcome>,
}

impl Op {
    fn complete(self, result: std::io::Result<usize>) {
        let buf = match self.buf {
            OpBuf::Owned(mut buf) => {
                if let (OpKind::Read, Ok(n)) = (self.kind, &result) {
                    buf.set_len(*n);
                }
                buf
            }
            OpBuf::Shared(_) => AlignedBuf::empty(),
        };
        // The submitter may have stopped waiting; the buffer is then dropped.
        let _ = self.reply.send(IoOutcome { buf, result });
    }
}

/// Memory registered with every io_uring ring as fixed buffers, so that
/// reads and writes of buffers lying in it skip the per-operation page
/// pinning. Region `i` is fixed buffer `i`.
pub struct FixedMemory {
    /// Start and length of each region.
    pub regions: Vec<(NonNull<u8>, usize)>,
    /// Keeps the memory mapped for as long as the engine runs.
    pub keepalive: Arc<dyn std::any::Any + Send + Sync>,
}

// SAFETY: the regions are plain memory kept alive by `keepalive`; the
// pointers are only handed to the kernel.
unsafe impl Send for FixedMemory {}
// SAFETY: as above; nothing is mutated through `FixedMemory`.
unsafe impl Sync for FixedMemory {}

impl std::fmt::Debug for FixedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FixedMemory")
            .field("regions", &self.regions.len())
            .finish()
    }
}

/// The result of an operation and its buffer.
#[derive(Debug)]
pub struct IoOutcome {
    /// The buffer, returned in every case. After a read its `len` is the
    /// number of bytes read.
    pub buf: AlignedBuf,
    /// Bytes transferred (0 for sync), or the error.
    pub result: std::io::Result<usize>,
}

/// Completes when the engine has finished an operation.
#[derive(Debug)]
pub struct Completion {
    rx: oneshot::Receiver<IoOutcome>,
    submitted: std::time::Instant,
}

impl Completion {
    /// When the operation was submitted (for latency metrics).
    pub fn submitted(&self) -> std::time::Instant {
        self.submitted
    }
}

impl Future for Completion {
    type Output = IoOutcome;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<IoOutcome> {
        Pin::new(&mut self.rx).poll(cx).map(|r| {
            r.unwrap_or_else(|_| IoOutcome {
                buf: AlignedBuf::empty(),
                result: Err(std::io::Error::other("the I/O engine stopped")),
            })
        })
    }
}

/// The I/O engine in use, chosen once at start.
#[derive(Debug)]
pub struct IoEngine {
    inner: EngineImpl,
}

#[derive(Debug)]
enum EngineImpl {
    Uring(uring::UringEngine),
    Psync(psync::PsyncEngine),
}

impl IoEngine {
    /// Starts the engine `config` asks for. `auto` probes io_uring and falls
    /// back to psync with one warning naming the reason. `fixed` is memory to
    /// register with io_uring (the pinned arena); if registering fails (the
    /// memlock limit counts it), I/O into it still works, one warning says
    /// why it is slower.
    pub fn start(config: &IoConfig, fixed: Option<FixedMemory>) -> anyhow::Result<IoEngine> {
        let inner = match config.engine {
            EngineKind::Psync => EngineImpl::Psync(psync::PsyncEngine::start(config.psync_threads)?),
            EngineKind::Uring => {
                uring::probe()
                    .map_err(|e| anyhow::anyhow!("io_uring is unavailable ({e}); use --io-engine psync or auto"))?;
                EngineImpl::Uring(uring::UringEngine::start(
                    config.queue_depth,
                    config.uring_threads,
                    fixed,
                )?)
            }
            EngineKind::Auto => match uring::probe() {
                Ok(()) => EngineImpl::Uring(uring::UringEngine::start(
                    config.queue_depth,
                    config.uring_threads,
                    fixed,
                )?),
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "io_uring is unavailable; falling back to the psync thread-pool engine"
                    );
                    EngineImpl::Psync(psync::PsyncEngine::start(config.psync_threads)?)
                }
            },
        };
        Ok(IoEngine { inner })
    }

    /// Whether io_uring works here (the check `auto` makes).
    pub fn uring_available() -> Result<(), std::io::Error> {
        uring::probe()
    }

    /// Registers `fixed` with io_uring later than [`IoEngine::start`]: the
    /// arena, once all of it is resident (nothing for psync). Takes effect
    /// in each ring between two submissions.
    pub fn register_fixed(&self, fixed: FixedMemory) {
        if let EngineImpl::Uring(e) = &self.inner {
            e.register_fixed(fixed);
        }
    }

    /// Whether the fixed memory (given at start or registered since) is
    /// registered with every io_uring ring (always false for psync).
    pub fn fixed_buffers(&self) -> bool {
        match &self.inner {
            EngineImpl::Uring(e) => e.fixed_buffers(),
            EngineImpl::Psync(_) => false,
        }
    }

    /// `uring` or `psync`.
    pub fn name(&self) -> &'static str {
        match self.inner {
            EngineImpl::Uring(_) => "uring",
            EngineImpl::Psync(_) => "psync",
        }
    }

    fn submit(&self, kind: OpKind, file: &Arc<File>, offset: u64, buf: OpBuf, want: usize) -> Completion {
        let submitted = std::time::Instant::now();
        let (reply, rx) = oneshot::channel();
        let op = Op {
            kind,
            file: file.clone(),
            offset,
            buf,
            want,
            reply,
        };
        match &self.inner {
            EngineImpl::Uring(e) => e.submit(op),
            EngineImpl::Psync(e) => e.submit(op),
        }
        Completion { rx, submitted }
    }

    /// Reads up to `len` bytes at `offset` into `buf` (from its start).
    /// Short only at end of file. For O_DIRECT files, `offset`, `len` and the
    /// buffer must be [`ALIGN`]ed.
    ///
    /// # Panics
    /// If `len` exceeds the buffer's capacity.
    pub fn read(&self, file: &Arc<File>, offset: u64, buf: AlignedBuf, len: usize) -> Completion {
        assert!(
            len <= buf.capacity(),
            "read of {len} into a {} byte buffer",
            buf.capacity()
        );
        self.submit(OpKind::Read, file, offset, OpBuf::Owned(buf), len)
    }

    /// Writes the first `len` bytes of `buf` at `offset` (all of them, or an
    /// error). For O_DIRECT files `len` must be [`ALIGN`]ed: use
    /// [`AlignedBuf::zero_pad`].
    ///
    /// # Panics
    /// If `len` exceeds the buffer's capacity.
    pub fn write(&self, file: &Arc<File>, offset: u64, buf: AlignedBuf, len: usize) -> Completion {
        assert!(
            len <= buf.capacity(),
            "write of {len} from a {} byte buffer",
            buf.capacity()
        );
        self.submit(OpKind::Write, file, offset, OpBuf::Owned(buf), len)
    }

    /// Writes the first `len` bytes of shared memory at `offset`, straight
    /// from where they are. The outcome's buffer is empty.
    ///
    /// # Panics
    /// If `len` exceeds the slice.
    pub fn write_shared(&self, file: &Arc<File>, offset: u64, src: SharedSlice, len: usize) -> Completion {
        assert!(len <= src.len(), "write of {len} from a {} byte slice", src.len());
        self.submit(OpKind::Write, file, offset, OpBuf::Shared(src), len)
    }

    /// `fdatasync`: the file's data and the metadata needed to read it back
    /// are on stable storage when this completes without error.
    pub fn sync_data(&self, file: &Arc<File>) -> Completion {
        self.submit(OpKind::SyncData, file, 0, OpBuf::Owned(AlignedBuf::empty()), 0)
    }
}

#[cfg(test)]
mod tests;
