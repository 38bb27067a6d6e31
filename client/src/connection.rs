//! One connection to a daemon: a writer task sends request frames in the
//! order they are issued; a reader task matches answers to requests by id
//! and reads fetch payloads straight into the request's destination buffer.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use shardd_protocol::frame::io::{FrameError, FrameReader};
use shardd_protocol::{
    ErrorResponse, FetchResponse, FrameHeader, HEADER_LEN, Limits, MAX_CONTROL_LEN, Opcode, ProtocolError,
    ServerLimits, Status, codec,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter, Interest};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::ClientError;
use crate::progress::Progress;

mod batch;

pub(crate) use batch::{Answer, BatchDone, Member, Place};

/// Bytes of the buffers around the socket.
const SOCKET_BUFFER: usize = 64 * 1024;

/// How long a dropped view's lease may wait for a view request to carry it
/// back before it is released by itself.
pub(crate) const RELEASE_DELAY: Duration = Duration::from_millis(1);

/// A caller's buffer for [`crate::Client::fetch_into`]: any owned byte
/// storage that can travel to the connection's reader task and back.
pub trait FetchBuf: AsMut<[u8]> + Send + 'static {}
impl<T: AsMut<[u8]> + Send + 'static> FetchBuf for T {}

/// A destination with its type erased, so that requests of different
/// buffer types share one pending map.
pub(crate) trait ErasedBuf: Send {
    fn bytes(&mut self) -> &mut [u8];
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

impl<T: FetchBuf> ErasedBuf for T {
    fn bytes(&mut self) -> &mut [u8] {
        self.as_mut()
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

/// Where a fetch's bytes go.
pub(crate) enum Dest {
    /// Allocate a vector of the answer's length (checked against limits).
    Alloc(Option<Vec<u8>>),
    /// The caller's buffer.
    Caller(Box<dyn ErasedBuf>),
}

impl Dest {
    pub(crate) fn caller<B: FetchBuf>(buf: B) -> Dest {
        Dest::Caller(Box::new(buf))
    }

    fn capacity(&mut self) -> Option<u64> {
        match self {
            Dest::Alloc(_) => None,
            Dest::Caller(buf) => Some(buf.bytes().len() as u64),
        }
    }

    fn bytes(&mut self) -> &mut [u8] {
        match self {
            Dest::Alloc(v) => v.as_deref_mut().unwrap_or_default(),
            Dest::Caller(buf) => buf.bytes(),
        }
    }

    /// Returns the vector (for `Alloc`).
    pub(crate) fn into_vec(self) -> Vec<u8> {
        match self {
            Dest::Alloc(v) => v.unwrap_or_default(),
            Dest::Caller(_) => Vec::new(),
        }
    }

    /// Returns the caller's buffer as its own type.
    pub(crate) fn into_caller<B: FetchBuf>(self) -> Option<B> {
        match self {
            Dest::Caller(buf) => buf.into_any().downcast::<B>().ok().map(|b| *b),
            Dest::Alloc(_) => None,
        }
    }
}

/// A whole answer of a request without payload.
pub(crate) struct Reply {
    pub control: Vec<u8>,
}

/// The end of a fetch: the destination always comes back.
pub(crate) struct FetchDone {
    pub dest: Dest,
    pub result: Result<FetchResponse, ClientError>,
}

enum Pending {
    Simple(oneshot::Sender<Result<Reply, ClientError>>),
    Fetch(Box<FetchState>),
    Batch(Box<batch::BatchState>),
}

struct FetchState {
    dest: Dest,
    head: Option<FetchResponse>,
    filled: u64,
    /// Running CRC32C of the bytes received, when the answer is checked.
    crc: Option<u32>,
    /// Set when the answer cannot be used; the rest of it is skipped.
    error: Option<ClientError>,
    reply: oneshot::Sender<FetchDone>,
}

struct Outgoing {
    header: [u8; HEADER_LEN],
    control: Vec<u8>,
    payload: Option<Bytes>,
    /// Told of the payload's bytes as they are written.
    progress: Option<Arc<dyn Progress>>,
    /// Sent with the frame's first byte (a region's memfd, Unix only).
    fd: Option<OwnedFd>,
    /// More payload, after `payload` (the members of a batched put).
    rest: Vec<Bytes>,
}

/// A connection's writing half, which can also send a descriptor with a
/// frame where the transport carries them.
pub(crate) trait FrameWrite: AsyncWrite + Unpin + Send + 'static {
    /// Writes `bytes`, `fd` attached to the first of them.
    fn write_with_fd(&mut self, bytes: &[u8], fd: BorrowedFd<'_>) -> impl Future<Output = io::Result<()>> + Send;
}

impl FrameWrite for tokio::net::unix::OwnedWriteHalf {
    async fn write_with_fd(&mut self, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
        let sent = {
            let stream: &tokio::net::UnixStream = self.as_ref();
            let socket = stream.as_raw_fd();
            loop {
                stream.writable().await?;
                let sent = stream.try_io(Interest::WRITABLE, || {
                    shardd_protocol::fdpass::send_with_fd(socket, bytes, fd.as_raw_fd())
                });
                match sent {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
        };
        self.write_all(&bytes[sent..]).await
    }
}

impl FrameWrite for tokio::net::tcp::OwnedWriteHalf {
    async fn write_with_fd(&mut self, _: &[u8], _: BorrowedFd<'_>) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "TCP cannot carry descriptors",
        ))
    }
}

impl FrameWrite for tokio::io::WriteHalf<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    async fn write_with_fd(&mut self, _: &[u8], _: BorrowedFd<'_>) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "TLS cannot carry descriptors",
        ))
    }
}

/// A large payload is handed to the socket in pieces of this many bytes,
/// each reported to the request's progress.
const PROGRESS_PIECE: usize = 4 << 20;

struct Shared {
    endpoint: String,
    pending: Mutex<HashMap<u64, Pending>>,
    /// Why the connection is closed, once it is.
    closed: Mutex<Option<String>>,
    /// Cleared once it is closed: from then on the daemon no longer holds
    /// the leases of this connection's views (checked on every view read).
    open: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn disconnected(&self, reason: &str) -> ClientError {
        ClientError::Disconnected {
            endpoint: self.endpoint.clone(),
            reason: reason.to_string(),
        }
    }

    /// Makes new requests fail with `reason` (the first reason given wins).
    fn mark_closed(&self, reason: String) {
        let mut closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        if closed.is_none() {
            *closed = Some(reason);
        }
        self.open.store(false, Ordering::SeqCst);
    }

    /// Marks the connection closed and fails every pending request.
    fn close(&self, reason: String) {
        self.mark_closed(reason.clone());
        let pending: Vec<Pending> = self.lock().drain().map(|(_, p)| p).collect();
        for p in pending {
            match p {
                Pending::Simple(reply) => {
                    let _ = reply.send(Err(self.disconnected(&reason)));
                }
                Pending::Fetch(state) => {
                    let _ = state.reply.send(FetchDone {
                        dest: state.dest,
                        result: Err(self.disconnected(&reason)),
                    });
                }
                Pending::Batch(state) => state.fail(self.disconnected(&reason)),
            }
        }
    }

    fn closed_reason(&self) -> Option<String> {
        self.closed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The sending side of a connection, shared by all clones of a client.
pub(crate) struct Connection {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Outgoing>,
    /// Leases of dropped views, given back with the next view request (or
    /// by a `release` shortly after, if none comes).
    releases: Arc<Releases>,
    next_id: Arc<AtomicU64>,
    inflight: Arc<Semaphore>,
    /// How long a lease of a view lasts (`None`: until given back).
    lease_timeout: Option<Duration>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.releases.close();
    }
}

/// Leases of dropped views waiting to be given back, and the task that
/// gives them back when no view request carries them within RELEASE_DELAY.
struct Releases {
    list: Mutex<Vec<u64>>,
    wake: tokio::sync::Notify,
    closed: std::sync::atomic::AtomicBool,
    /// Weak: the task must not keep the connection's writer open.
    tx: mpsc::WeakSender<Outgoing>,
    next_id: Arc<AtomicU64>,
}

impl Releases {
    fn start(tx: mpsc::WeakSender<Outgoing>, next_id: Arc<AtomicU64>) -> Arc<Releases> {
        let releases = Arc::new(Releases {
            list: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
            tx,
            next_id,
        });
        let task = releases.clone();
        tokio::spawn(async move {
            while !task.closed.load(Ordering::Acquire) {
                task.wake.notified().await;
                tokio::time::sleep(RELEASE_DELAY).await;
                task.flush();
            }
        });
        releases
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, lease: u64) {
        let first = {
            let mut list = self.lock();
            list.push(lease);
            list.len() == 1
        };
        if first {
            self.wake.notify_one();
        }
    }

    fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *self.lock())
    }

    /// The `release` frame of what is waiting (its answer is skipped), and
    /// the writer's queue to send it on; none if nothing waits.
    fn frame(&self) -> Option<(Outgoing, mpsc::Sender<Outgoing>)> {
        let leases = self.take();
        if leases.is_empty() {
            return None;
        }
        let control = codec::encode(&shardd_protocol::ReleaseRequest { leases }).ok()?;
        let tx = self.tx.upgrade()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let header = FrameHeader::request(Opcode::Release, id, control.len() as u32, 0).encode();
        let out = Outgoing {
            header,
            control,
            payload: None,
            progress: None,
            fd: None,
            rest: Vec::new(),
        };
        Some((out, tx))
    }

    /// Sends a `release` of what is waiting, without waiting for room in
    /// the writer's queue.
    fn flush(&self) {
        let Some((out, tx)) = self.frame() else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(out)) = tx.try_send(out) {
            tokio::spawn(async move {
                let _ = tx.send(out).await;
            });
        }
    }

    /// Queues a `release` of what is waiting ahead of any later request.
    async fn send(&self) {
        if let Some((out, tx)) = self.frame() {
            let _ = tx.send(out).await;
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("endpoint", &self.shared.endpoint)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Starts the reader and writer tasks on a connected stream. An owned
    /// fetch allocates at most `max_alloc` bytes for its answer; `server`
    /// (the hello's limits) sets how many requests go at once, how often an
    /// idle connection pings, and how long views' leases last.
    pub(crate) fn start<R, W>(
        endpoint: String,
        reader: R,
        writer: W,
        max_alloc: u64,
        io_timeout: Duration,
        server: &ServerLimits,
    ) -> Connection
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: FrameWrite,
    {
        let shared = Arc::new(Shared {
            endpoint,
            pending: Mutex::new(HashMap::new()),
            closed: Mutex::new(None),
            open: std::sync::atomic::AtomicBool::new(true),
        });
        let (tx, rx) = mpsc::channel(256);
        let next_id = Arc::new(AtomicU64::new(1));
        // Ping after a quarter of the daemon's idle timeout without a request.
        let keepalive = (server.idle_timeout_ms > 0).then(|| Duration::from_millis(server.idle_timeout_ms / 4));
        let keepalive = keepalive.map(|every| KeepAlive {
            every: every.max(Duration::from_millis(10)),
            next_id: next_id.clone(),
        });
        tokio::spawn(write_loop(shared.clone(), writer, rx, keepalive));
        let limits = Limits {
            max_control_len: MAX_CONTROL_LEN,
            // Payloads go into a destination sized beforehand, or are skipped;
            // nothing is allocated from a frame's payload length.
            max_payload_len: u64::MAX,
        };
        let frames = Incoming {
            frames: FrameReader::new(reader, SOCKET_BUFFER, limits, io_timeout),
            max_alloc,
        };
        tokio::spawn(read_loop(shared.clone(), frames));
        let releases = Releases::start(tx.downgrade(), next_id.clone());
        Connection {
            shared,
            tx,
            releases,
            next_id,
            inflight: Arc::new(Semaphore::new(server.max_inflight_requests.max(1) as usize)),
            lease_timeout: (server.lease_timeout_ms > 0).then(|| Duration::from_millis(server.lease_timeout_ms)),
        }
    }

    pub(crate) fn endpoint(&self) -> &str {
        &self.shared.endpoint
    }

    /// How long a lease of a view lasts, from when it was asked for.
    pub(crate) fn lease_timeout(&self) -> Option<Duration> {
        self.lease_timeout
    }

    /// Whether the connection has closed (its requests all fail).
    pub(crate) fn is_closed(&self) -> bool {
        !self.shared.open.load(Ordering::SeqCst)
    }

    /// Why the leases of this connection's views are gone, if they are:
    /// the daemon drops them when the connection ends, and may then reuse
    /// their memory.
    pub(crate) fn leases_lost(&self) -> Option<String> {
        if !self.is_closed() {
            return None;
        }
        Some(
            self.shared
                .closed_reason()
                .unwrap_or_else(|| "the connection closed".into()),
        )
    }

    async fn send(
        &self,
        op: Opcode,
        control: Vec<u8>,
        payload: Option<Bytes>,
        progress: Option<Arc<dyn Progress>>,
        pending: Pending,
    ) -> Result<u64, (Pending, ClientError)> {
        let payload = payload.into_iter().collect();
        self.send_frame(op, control, payload, progress, None, pending).await
    }

    /// [`Connection::send`], with `fd` attached to the frame, and a payload
    /// in pieces.
    async fn send_frame(
        &self,
        op: Opcode,
        control: Vec<u8>,
        payload: Vec<Bytes>,
        progress: Option<Arc<dyn Progress>>,
        fd: Option<OwnedFd>,
        pending: Pending,
    ) -> Result<u64, (Pending, ClientError)> {
        if let Some(reason) = self.shared.closed_reason() {
            return Err((pending, self.shared.disconnected(&reason)));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let payload_len = payload.iter().map(|p| p.len() as u64).sum();
        let header = FrameHeader::request(op, id, control.len() as u32, payload_len).encode();
        self.shared.lock().insert(id, pending);
        let mut pieces = payload.into_iter();
        let out = Outgoing {
            header,
            control,
            payload: pieces.next(),
            progress,
            fd,
            rest: pieces.collect(),
        };
        if self.tx.send(out).await.is_err() {
            let reason = self.shared.closed_reason().unwrap_or_else(|| "writer stopped".into());
            if let Some(pending) = self.shared.lock().remove(&id) {
                return Err((pending, self.shared.disconnected(&reason)));
            }
            // The reader already failed it.
        }
        Ok(id)
    }

    /// Gives a view's lease back: with the next view request, or after
    /// [`RELEASE_DELAY`] by itself if no view request comes by then.
    pub(crate) fn defer_release(&self, lease: u64) {
        self.releases.push(lease);
    }

    /// The leases waiting to be given back (for a view request to carry).
    pub(crate) fn take_releases(&self) -> Vec<u64> {
        self.releases.take()
    }

    /// Gives back the leases waiting for a view request now.
    pub(crate) fn flush_releases(&self) {
        self.releases.flush();
    }

    /// Queues a `release` of the leases waiting ahead of any request sent
    /// after it returns.
    pub(crate) async fn send_releases(&self) {
        self.releases.send().await;
    }

    /// Sends a request and waits for its (single-frame) answer, at most
    /// `timeout`.
    pub(crate) async fn call(
        &self,
        op: Opcode,
        control: Vec<u8>,
        payload: Option<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<Reply, ClientError> {
        self.call_reporting(op, control, payload, timeout, None).await
    }

    /// [`Connection::call`] with `fd` sent along with the request (Unix).
    pub(crate) async fn call_with_fd(
        &self,
        op: Opcode,
        control: Vec<u8>,
        fd: OwnedFd,
        timeout: Option<Duration>,
    ) -> Result<Reply, ClientError> {
        let _permit = self.inflight.acquire().await;
        let (reply, rx) = oneshot::channel();
        if let Err((_, e)) = self
            .send_frame(op, control, Vec::new(), None, Some(fd), Pending::Simple(reply))
            .await
        {
            return Err(e);
        }
        let received = match timeout {
            None => rx.await,
            Some(after) => tokio::time::timeout(after, rx)
                .await
                .map_err(|_| ClientError::Timeout { op: op.name(), after })?,
        };
        received.unwrap_or_else(|_| Err(self.shared.disconnected("reader stopped")))
    }

    /// Sends a request whose answer no one waits for (it is skipped), from
    /// anywhere (a `Drop`, a thread outside the runtime).
    pub(crate) fn send_and_forget(&self, op: Opcode, control: Vec<u8>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let header = FrameHeader::request(op, id, control.len() as u32, 0).encode();
        let out = Outgoing {
            header,
            control,
            payload: None,
            progress: None,
            fd: None,
            rest: Vec::new(),
        };
        if let Err(mpsc::error::TrySendError::Full(out)) = self.tx.try_send(out) {
            // Outside the runtime (a blocking client's thread) nothing can
            // wait for room: what it asked ends with the connection anyway.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let tx = self.tx.clone();
                runtime.spawn(async move {
                    let _ = tx.send(out).await;
                });
            }
        }
    }

    /// [`Connection::call`], telling `progress` of the payload's bytes as
    /// they are handed to the socket.
    pub(crate) async fn call_reporting(
        &self,
        op: Opcode,
        control: Vec<u8>,
        payload: Option<Bytes>,
        timeout: Option<Duration>,
        progress: Option<Arc<dyn Progress>>,
    ) -> Result<Reply, ClientError> {
        let _permit = self.inflight.acquire().await;
        let (reply, rx) = oneshot::channel();
        let id = match self.send(op, control, payload, progress, Pending::Simple(reply)).await {
            Ok(id) => id,
            Err((_, e)) => return Err(e),
        };
        let received = match timeout {
            None => rx.await,
            Some(after) => match tokio::time::timeout(after, rx).await {
                Ok(received) => received,
                Err(_) => {
                    // Forget the request; its answer, if it comes, is skipped.
                    self.shared.lock().remove(&id);
                    return Err(ClientError::Timeout { op: op.name(), after });
                }
            },
        };
        received.unwrap_or_else(|_| Err(self.shared.disconnected("reader stopped")))
    }

    /// Sends a fetch and waits until its bytes are in `dest`, or `timeout`
    /// passes. The destination comes back in every case: after a timeout it
    /// is taken back from the pending request (if the reader is filling it
    /// right now, once the current frame is in).
    ///
    /// With `verify`, the bytes are checksummed as they arrive (while they
    /// are still in cache) and the whole answer is checked against the
    /// shard's CRC32C; use it for whole-shard fetches only.
    pub(crate) async fn fetch(
        &self,
        control: Vec<u8>,
        dest: Dest,
        verify: bool,
        timeout: Option<Duration>,
    ) -> FetchDone {
        let _permit = self.inflight.acquire().await;
        let (reply, mut rx) = oneshot::channel();
        let state = FetchState {
            dest,
            head: None,
            filled: 0,
            crc: verify.then_some(0),
            error: None,
            reply,
        };
        let id = match self
            .send(Opcode::Fetch, control, None, None, Pending::Fetch(Box::new(state)))
            .await
        {
            Ok(id) => id,
            Err((pending, error)) => {
                let dest = match pending {
                    Pending::Fetch(state) => state.dest,
                    _ => Dest::Alloc(None),
                };
                return FetchDone {
                    dest,
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
                        if let Some(Pending::Fetch(state)) = self.shared.lock().remove(&id) {
                            return FetchDone {
                                dest: state.dest,
                                result: Err(ClientError::Timeout { op: "fetch", after }),
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
            return match received {
                Ok(done) => done,
                // The reader never drops a fetch without answering it.
                Err(_) => FetchDone {
                    dest: Dest::Alloc(None),
                    result: Err(self.shared.disconnected("reader stopped")),
                },
            };
        }
    }
}

/// Pings that keep an idle connection open.
struct KeepAlive {
    /// Sent after this long without a request.
    every: Duration,
    next_id: Arc<AtomicU64>,
}

impl KeepAlive {
    /// A ping, whose answer the reader skips (no one waits for its id).
    fn ping(&self) -> Outgoing {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Outgoing {
            header: FrameHeader::request(Opcode::Ping, id, 0, 0).encode(),
            control: Vec::new(),
            payload: None,
            progress: None,
            fd: None,
            rest: Vec::new(),
        }
    }
}

async fn write_loop<W: FrameWrite>(
    shared: Arc<Shared>,
    writer: W,
    mut rx: mpsc::Receiver<Outgoing>,
    keepalive: Option<KeepAlive>,
) {
    let mut out = BufWriter::with_capacity(SOCKET_BUFFER, writer);
    loop {
        let next = match &keepalive {
            Some(keepalive) => match tokio::time::timeout(keepalive.every, rx.recv()).await {
                Ok(next) => next,
                Err(_) => Some(keepalive.ping()),
            },
            None => rx.recv().await,
        };
        let Some(frame) = next else { break };
        let result = async {
            if let Some(fd) = &frame.fd {
                // What is buffered goes first; the descriptor rides on the
                // frame's first byte.
                out.flush().await?;
                let mut bytes = frame.header.to_vec();
                bytes.extend_from_slice(&frame.control);
                out.get_mut().write_with_fd(&bytes, fd.as_fd()).await?;
            } else {
                out.write_all(&frame.header).await?;
                out.write_all(&frame.control).await?;
            }
            match (&frame.payload, &frame.progress) {
                (Some(payload), None) => out.write_all(payload).await?,
                (Some(payload), Some(progress)) => {
                    for piece in payload.chunks(PROGRESS_PIECE) {
                        out.write_all(piece).await?;
                        progress.advance(piece.len() as u64);
                    }
                }
                (None, _) => {}
            }
            for piece in &frame.rest {
                out.write_all(piece).await?;
            }
            if rx.is_empty() {
                out.flush().await?;
            }
            Ok::<(), std::io::Error>(())
        }
        .await;
        if let Err(e) = result {
            // New requests fail from now on. Those in flight are failed by the
            // reader when the connection ends, after it has read whatever the
            // daemon answered before (often the reason it closed).
            shared.mark_closed(format!("cannot send: {e}"));
            return;
        }
    }
    // Every client handle is gone: tell the daemon we are done.
    let _ = out.shutdown().await;
}

/// The receiving side: frames, and the largest answer an owned fetch
/// allocates for.
struct Incoming<R> {
    frames: FrameReader<R>,
    max_alloc: u64,
}

async fn read_loop<R: AsyncRead + Unpin>(shared: Arc<Shared>, mut incoming: Incoming<R>) {
    let reason = match read_frames(&shared, &mut incoming).await {
        Ok(()) => "the daemon closed the connection".to_string(),
        Err(e) => e,
    };
    shared.close(reason);
}

async fn read_frames<R: AsyncRead + Unpin>(shared: &Shared, incoming: &mut Incoming<R>) -> Result<(), String> {
    let max_alloc = incoming.max_alloc;
    let frames = &mut incoming.frames;
    loop {
        // Between frames the connection may idle as long as it likes.
        let header = match frames.next_header().await {
            Ok(Some(header)) => header,
            Ok(None) => return Ok(()),
            Err(FrameError::Protocol(e)) => return Err(protocol(shared, e)),
            Err(e) => return Err(e.to_string()),
        };
        if !header.is_response() {
            return Err("the daemon sent a request frame".into());
        }
        let control = frames.control(&header).await.map_err(|e| e.to_string())?;

        if header.request_id == 0 {
            // A connection-level error: the daemon closes after it.
            let message = codec::decode::<ErrorResponse>(&control)
                .map(|e| e.message)
                .unwrap_or_else(|_| "no reason given".into());
            return Err(format!("{}: {message}", header.status));
        }
        let pending = shared.lock().remove(&header.request_id);
        match pending {
            None => {
                // Answer to a request whose caller gave up: skip it.
                frames.skip(header.payload_len).await.map_err(|e| e.to_string())?;
            }
            Some(Pending::Simple(reply)) => {
                frames.skip(header.payload_len).await.map_err(|e| e.to_string())?;
                let result = if header.status == Status::Ok {
                    Ok(Reply { control })
                } else {
                    Err(remote_error(header.status, &control))
                };
                let _ = reply.send(result);
            }
            Some(Pending::Fetch(mut state)) => {
                if let Err(e) = take_fetch_frame(shared, frames, max_alloc, &header, &control, &mut state).await {
                    // Hand the destination back before the connection closes.
                    let _ = state.reply.send(FetchDone {
                        dest: state.dest,
                        result: Err(shared.disconnected(&e)),
                    });
                    return Err(e);
                }
                if header.has_more() && header.status == Status::Ok {
                    shared.lock().insert(header.request_id, Pending::Fetch(state));
                } else {
                    finish_fetch(*state, &header, &control);
                }
            }
            Some(Pending::Batch(mut state)) => {
                match batch::take_batch_frame(shared, frames, max_alloc, &header, &control, &mut state).await {
                    Ok(false) => {
                        shared.lock().insert(header.request_id, Pending::Batch(state));
                    }
                    Ok(true) => batch::finish_batch(*state, &header, &control),
                    Err(e) => {
                        // Hand the buffer back before the connection closes.
                        state.fail(shared.disconnected(&e));
                        return Err(e);
                    }
                }
            }
        }
    }
}

fn protocol(shared: &Shared, e: ProtocolError) -> String {
    ClientError::Protocol {
        endpoint: shared.endpoint.clone(),
        source: e,
    }
    .to_string()
}

fn remote_error(status: Status, control: &[u8]) -> ClientError {
    match codec::decode::<ErrorResponse>(control) {
        Ok(body) => ClientError::Remote {
            status,
            message: body.message,
            current_version: body.current_version,
        },
        Err(_) => ClientError::Remote {
            status,
            message: status.to_string(),
            current_version: None,
        },
    }
}

/// Takes one frame of a fetch answer: the first one's control message says
/// how many bytes come; every frame's payload goes to the next place in the
/// destination.
async fn take_fetch_frame<R: AsyncRead + Unpin>(
    shared: &Shared,
    frames: &mut FrameReader<R>,
    max_alloc: u64,
    header: &FrameHeader,
    control: &[u8],
    state: &mut FetchState,
) -> Result<(), String> {
    if header.status != Status::Ok {
        return frames.skip(header.payload_len).await.map_err(|e| e.to_string());
    }
    if state.head.is_none() {
        let head: FetchResponse = codec::decode(control).map_err(|e| protocol(shared, e))?;
        match state.dest.capacity() {
            Some(capacity) if capacity < head.len => {
                state.error = Some(ClientError::BufferTooSmall {
                    needed: head.len,
                    capacity,
                });
            }
            Some(_) => {}
            None if head.len > max_alloc => {
                state.error = Some(ClientError::BufferTooSmall {
                    needed: head.len,
                    capacity: max_alloc,
                });
            }
            None => state.dest = Dest::Alloc(Some(vec![0u8; head.len as usize])),
        }
        state.head = Some(head);
    }
    let total = state.head.as_ref().map_or(0, |h| h.len);
    let end = state.filled + header.payload_len;
    if end > total {
        return Err(format!("the daemon sent {end} bytes for a {total}-byte answer"));
    }
    if state.error.is_some() {
        return frames.skip(header.payload_len).await.map_err(|e| e.to_string());
    }
    let place = &mut state.dest.bytes()[state.filled as usize..end as usize];
    frames.read_exact(place).await.map_err(|e| e.to_string())?;
    if let Some(crc) = &mut state.crc {
        *crc = crc32c::crc32c_append(*crc, place);
    }
    state.filled = end;
    Ok(())
}

fn finish_fetch(state: FetchState, header: &FrameHeader, control: &[u8]) {
    let result = if header.status != Status::Ok {
        Err(remote_error(header.status, control))
    } else if let Some(error) = state.error {
        Err(error)
    } else {
        match state.head {
            Some(head) if state.filled == head.len => match state.crc {
                Some(actual) if actual != head.meta.crc32c => Err(ClientError::ChecksumMismatch {
                    shard: format!("{}/{}", head.meta.namespace, head.meta.key),
                    version: head.meta.version,
                    expected: head.meta.crc32c,
                    actual,
                }),
                _ => Ok(head),
            },
            Some(head) => Err(ClientError::Remote {
                status: Status::Internal,
                message: format!("the answer ended after {} of {} bytes", state.filled, head.len),
                current_version: None,
            }),
            None => Err(ClientError::Remote {
                status: Status::Internal,
                message: "the answer had no fetch header".into(),
                current_version: None,
            }),
        }
    };
    let _ = state.reply.send(FetchDone {
        dest: state.dest,
        result,
    });
}
