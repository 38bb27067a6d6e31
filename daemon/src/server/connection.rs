//! One client connection, Unix or TCP alike.
//!
//! After the hello ([`super::handshake`]), the reading side takes frames in
//! order: it checks each header against the limits before reading anything
//! else, streams put payloads straight into chunk buffers (arena blocks when
//! the shard can stay cached), and hands every other request to its own
//! task. Answers go through a channel to the writing side, which writes
//! whole frames in the order they are ready, so answers to pipelined
//! requests may overtake each other and a large fetch never blocks a small
//! one.
//!
//! Back-pressure: at most `max_inflight_requests` requests run at once per
//! connection (the reader waits beyond that), and chunk buffers count
//! against the connection's share of the buffer budget. A client that stops
//! reading its answers stalls only its own connection; after `io_timeout`
//! without progress the connection is closed and everything it held is
//! released: leases of zero-copy views [`LEASE_GRACE`] after the socket
//! closed, so that the client can stop reading them first.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use shardd_protocol::{
    Durability, FrameHeader, Opcode, ProtocolError, PutRequest, PutResponse, ShardMeta, Status, codec,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::ServerContext;
use super::frame::{self, NextFrame, OutFrame};
use super::handlers::{self, ConnShared};
use super::handshake::{self, Transport};
use crate::cache::{Cache, WriteBackRoom};
use crate::io::AlignedBuf;
use crate::metrics::RequestMetrics;
use crate::store::{PutSpec, StoreError};

/// Bytes of the read and write buffers around the socket.
const SOCKET_BUFFER: usize = 64 * 1024;
/// Answers queued for the writer before handlers wait.
const OUT_QUEUE: usize = 256;
/// How long the blocks of a closed connection's leases stay untouched
/// after its socket closed. The client marks its views void as soon as it
/// reads the end of the connection, and a view checks that before and after
/// every read; this covers a read already under way when the end arrives,
/// and a client slow to be scheduled.
pub const LEASE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);
/// At shutdown, how long a connection may be quiet before it is closed.
const SHUTDOWN_QUIET: std::time::Duration = std::time::Duration::from_millis(200);
/// At shutdown, how long a connection that holds leases is given to read
/// its views and give them back (a fetch answered with a view is copied
/// out by the client after its answer arrived).
const SHUTDOWN_LEASES: std::time::Duration = std::time::Duration::from_secs(5);

/// What a request handler needs to answer.
#[derive(Clone, Debug)]
pub struct Responder {
    tx: mpsc::Sender<OutFrame>,
    metrics: RequestMetrics,
}

impl Responder {
    /// Queues a frame; returns false if the connection is gone.
    pub async fn send(&self, mut frame: OutFrame) -> bool {
        let payload = frame.payload_len() as u64;
        if payload > 0 {
            frame.track(self.metrics.inflight(payload));
        }
        self.tx.send(frame).await.is_ok()
    }
}

/// When each request in progress on a connection arrived, by request id
/// (for the latency metric, taken when its answer's last frame is written).
#[derive(Debug, Default)]
struct Arrivals(Mutex<HashMap<u64, Instant>>);

impl Arrivals {
    fn arrived(&self, id: u64) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Instant::now());
    }

    fn take(&self, id: u64) -> Option<Instant> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&id)
    }
}

/// Serves one connection until the peer closes it, it breaks, or the daemon
/// shuts down (then in-flight requests finish first).
pub async fn serve<S: Transport>(ctx: Arc<ServerContext>, mut stream: S, peer: String) {
    let conn_id = ctx.next_connection_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("conn", id = conn_id, transport = S::NAME, peer = %peer);
    async move {
        tracing::debug!("connection opened");
        let hello = match handshake::handshake(&ctx, &mut stream).await {
            Ok(hello) => hello,
            Err(reason) => {
                tracing::info!(%reason, "closing connection");
                return;
            }
        };
        let metrics = ctx.metrics.for_transport(S::NAME);
        let _open = metrics.connection();
        let arrivals = Arc::new(Arrivals::default());
        let (reader, writer) = stream.split();
        let (tx, rx) = mpsc::channel(OUT_QUEUE);
        let broken = CancellationToken::new();
        let out = Outbound {
            timeout: ctx.config.io_timeout,
            broken: broken.clone(),
            metrics: metrics.clone(),
            arrivals: arrivals.clone(),
        };
        let writer_task = tokio::spawn(write_loop(writer, rx, out).in_current_span());
        let scope = ctx.store.buffers().scope(ctx.config.connection_buffer_memory);
        let mut conn = Connection {
            shared: Arc::new(ConnShared::new(scope, hello.arena_mapped)),
            inflight: Arc::new(Semaphore::new(ctx.config.max_inflight_requests as usize)),
            responder: Responder {
                tx,
                metrics: metrics.clone(),
            },
            metrics,
            arrivals,
            reader: BufReader::with_capacity(SOCKET_BUFFER, reader),
            broken,
            ctx,
        };
        let outcome = conn.read_loop().await;
        match &outcome {
            Ok(()) => tracing::debug!("connection closed by the peer"),
            Err(reason) => tracing::info!(%reason, "closing connection"),
        }
        // Handlers still running hold clones of the sender; the writer ends
        // once they have answered and the queue is drained.
        let shared = conn.shared.clone();
        drop(conn);
        let _ = writer_task.await;
        // The socket is closed now, so the client learns that its views are
        // void; their blocks are reused only after it had time to.
        shared.retire_leases(LEASE_GRACE);
    }
    .instrument(span)
    .await
}

/// What the writing side of a connection needs besides the socket.
struct Outbound {
    timeout: std::time::Duration,
    broken: CancellationToken,
    metrics: RequestMetrics,
    arrivals: Arc<Arrivals>,
}

async fn write_loop<W: AsyncWrite + Unpin>(writer: W, mut rx: mpsc::Receiver<OutFrame>, outbound: Outbound) {
    let Outbound {
        timeout,
        broken,
        metrics,
        arrivals,
    } = outbound;
    let mut out = BufWriter::with_capacity(SOCKET_BUFFER, writer);
    while let Some(frame) = rx.recv().await {
        // A frame that fits the buffer is only copied: no timer for it. A
        // write that reaches the socket must make progress within `timeout`.
        let fits = frame.len() <= SOCKET_BUFFER - out.buffer().len();
        let flush = rx.is_empty();
        let result = if fits && !flush {
            frame.write_to(&mut out).await.map_err(|e| e.to_string())
        } else {
            let io = async {
                frame.write_to(&mut out).await?;
                if flush {
                    out.flush().await?;
                }
                Ok::<(), std::io::Error>(())
            };
            match tokio::time::timeout(timeout, io).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => Err(format!("the peer has not read its answers for {timeout:?}")),
            }
        };
        if result.is_ok() {
            metrics.sent(frame.payload_len() as u64);
            if !frame.more {
                metrics.answered(frame.opcode, frame.status, arrivals.take(frame.request_id));
            }
        }
        drop(frame);
        if let Err(error) = result {
            tracing::info!(reason = %error, "cannot write to the peer; closing the connection");
            broken.cancel();
            return;
        }
    }
    let _ = tokio::time::timeout(timeout, out.shutdown()).await;
}

/// Why the reading side stopped.
type Closed = String;

struct Connection<R> {
    ctx: Arc<ServerContext>,
    metrics: RequestMetrics,
    arrivals: Arc<Arrivals>,
    reader: BufReader<R>,
    responder: Responder,
    shared: Arc<ConnShared>,
    inflight: Arc<Semaphore>,
    broken: CancellationToken,
}

/// Where a put's chunks go while they arrive.
enum PutTarget {
    /// Pool buffers, freed once written.
    Pool,
    /// Arena blocks, kept as the cached copy.
    Arena(std::vec::IntoIter<AlignedBuf>),
}

impl<R: AsyncRead + Unpin + Send + 'static> Connection<R> {
    async fn read_loop(&mut self) -> Result<(), Closed> {
        let broken = self.broken.clone();
        let shutdown = self.ctx.shutdown.clone();
        let timeout = self.ctx.config.io_timeout;
        loop {
            let next = tokio::select! {
                biased;
                _ = broken.cancelled() => return Err("the peer stopped reading".into()),
                _ = shutdown.cancelled() => return self.refuse_until_quiet().await,
                next = frame::read_header(&mut self.reader, timeout) => next,
            };
            let bytes = match next.map_err(|e| e.to_string())? {
                NextFrame::Closed => return Ok(()),
                NextFrame::Header(bytes) => bytes,
            };
            self.take_frame(&bytes).await?;
        }
    }

    /// At shutdown: answer `shutting down` to requests that still arrive
    /// (so clients learn why, rather than seeing a cut connection) until the
    /// peer is quiet for a moment, while requests in flight finish. A peer
    /// that holds leases may first read its views and give them back (for
    /// at most [`SHUTDOWN_LEASES`]).
    async fn refuse_until_quiet(&mut self) -> Result<(), Closed> {
        let broken = self.broken.clone();
        let shutting_down = || Closed::from("the daemon is shutting down");
        let leases_until = Instant::now() + SHUTDOWN_LEASES;
        loop {
            let quiet = if self.shared.holds_leases() {
                leases_until
                    .saturating_duration_since(Instant::now())
                    .max(SHUTDOWN_QUIET)
            } else {
                SHUTDOWN_QUIET
            };
            let wait = tokio::time::timeout(quiet, frame::read_header(&mut self.reader, self.ctx.config.io_timeout));
            let next = tokio::select! {
                biased;
                _ = broken.cancelled() => return Err("the peer stopped reading".into()),
                next = wait => next,
            };
            let Ok(Ok(NextFrame::Header(bytes))) = next else {
                return Err(shutting_down());
            };
            let Ok(header) = FrameHeader::decode(&bytes) else {
                return Err(shutting_down());
            };
            if header.check_limits(&self.ctx.limits()).is_err() {
                return Err(shutting_down());
            }
            if header.opcode == Opcode::Release {
                // Views given back: taken as ever, answered at once.
                self.take_frame(&bytes).await?;
                continue;
            }
            self.discard(header.control_len as u64 + header.payload_len).await?;
            self.answer_error(
                header.opcode,
                header.request_id,
                Status::ShuttingDown,
                "the daemon is shutting down; send this request to it again once it is back".into(),
            )
            .await;
        }
    }

    /// Takes in one frame whose header bytes have arrived.
    async fn take_frame(&mut self, bytes: &[u8; shardd_protocol::HEADER_LEN]) -> Result<(), Closed> {
        let limits = self.ctx.limits();
        let header = match FrameHeader::decode(bytes) {
            Ok(header) => header,
            Err(ProtocolError::UnknownOpcode {
                opcode,
                request_id,
                control_len,
                payload_len,
            }) => {
                // Well formed but from a newer client: skip it and say so.
                let probe = FrameHeader::request(Opcode::Ping, request_id, control_len, payload_len);
                if let Err(e) = probe.check_limits(&limits) {
                    return self
                        .fatal(Opcode::Hello, request_id, Status::TooLarge, e.to_string())
                        .await;
                }
                self.discard(control_len as u64 + payload_len).await?;
                let message = format!("unknown opcode {opcode}");
                self.answer_error(Opcode::Ping, request_id, Status::BadRequest, message)
                    .await;
                return Ok(());
            }
            Err(e @ ProtocolError::UnsupportedVersion(_)) => {
                return self
                    .fatal(Opcode::Hello, 0, Status::UnsupportedVersion, e.to_string())
                    .await;
            }
            Err(e) => {
                return self.fatal(Opcode::Hello, 0, Status::BadRequest, e.to_string()).await;
            }
        };
        let id = header.request_id;
        let op = header.opcode;
        self.arrivals.arrived(id);
        if header.is_response() || header.has_more() {
            let message = "clients send requests only (no RESPONSE or MORE flag)".to_string();
            return self.fatal(op, id, Status::BadRequest, message).await;
        }
        if let Err(e) = header.check_limits(&limits) {
            return self.fatal(op, id, Status::TooLarge, e.to_string()).await;
        }
        let mut control = vec![0u8; header.control_len as usize];
        frame::read_exact(&mut self.reader, &mut control, self.ctx.config.io_timeout)
            .await
            .map_err(|e| format!("reading a control message: {e}"))?;

        if op == Opcode::Put {
            return self.take_put(header, &control).await;
        }
        if header.payload_len > 0 {
            self.discard(header.payload_len).await?;
            self.answer_error(op, id, Status::BadRequest, format!("{op} takes no payload"))
                .await;
            return Ok(());
        }
        if op == Opcode::Hello {
            self.answer_error(op, id, Status::BadRequest, "hello was already sent".into())
                .await;
            return Ok(());
        }
        let span = tracing::debug_span!("request", id, op = op.name());
        // Requests that need no waiting are answered right here: no task.
        let now = span.in_scope(|| handlers::answer_now(&self.ctx, op, id, &control, &self.shared));
        if let Some(frames) = now {
            for frame in frames {
                self.responder.send(frame).await;
            }
            return Ok(());
        }
        let permit = self.permit().await?;
        let ctx = self.ctx.clone();
        let responder = self.responder.clone();
        let shared = self.shared.clone();
        self.ctx.tasks.spawn(
            async move {
                handlers::handle(&ctx, op, id, &control, &responder, &shared).await;
                drop(permit);
            }
            .instrument(span),
        );
        Ok(())
    }

    async fn permit(&mut self) -> Result<OwnedSemaphorePermit, Closed> {
        self.inflight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Closed::from("request limiter closed"))
    }

    /// A put: the payload is read here, in order, straight into chunk
    /// buffers; the commit runs in its own task.
    async fn take_put(&mut self, header: FrameHeader, control: &[u8]) -> Result<(), Closed> {
        let id = header.request_id;
        let len = header.payload_len;
        let request: PutRequest = match codec::decode(control) {
            Ok(request) => request,
            Err(e) => {
                self.discard(len).await?;
                self.answer_error(Opcode::Put, id, Status::BadRequest, e.to_string())
                    .await;
                return Ok(());
            }
        };
        let permit = self.permit().await?;
        let inflight = self.metrics.inflight(len);
        let span = tracing::debug_span!("put", id, namespace = %request.namespace, key = %request.key, bytes = len);
        let cache = self.ctx.cache.clone();
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
        // Write-back: acknowledged once in the arena, if the arena can take
        // it. Over the write-back budget, the put waits for flushes to make
        // room (its payload waits in the socket meanwhile), up to io_timeout.
        // Scratch puts are write-back puts whose writing is never synced.
        let scratch = request.durability == Durability::Scratch;
        if let (Durability::WriteBack | Durability::Scratch, Some(cache)) = (request.durability, &cache) {
            if let Some(room) = cache.room_for_write_back(len, self.ctx.config.io_timeout).await {
                if let Some(blocks) = cache.blocks_for_put(len) {
                    return self
                        .take_write_back(id, spec, cache, blocks, room, scratch)
                        .instrument(span)
                        .await;
                }
            }
            tracing::debug!("write-back put does not fit the arena now; writing it through");
        }
        let mut writer = match self.ctx.store.begin_put(spec).instrument(span.clone()).await {
            Ok(writer) => writer,
            Err(e) => {
                self.discard(len).await?;
                handlers::answer_store_error(&self.responder, Opcode::Put, id, &e)
                    .instrument(span)
                    .await;
                return Ok(());
            }
        };
        if scratch {
            writer.without_sync();
        }
        // Arena blocks keep the shard cached after the put.
        let mut target = match cache.as_ref().and_then(|c| c.blocks_for_put(len)) {
            Some(blocks) => {
                writer.keep_chunks();
                PutTarget::Arena(blocks.into_iter())
            }
            None => PutTarget::Pool,
        };
        let timeout = self.ctx.config.io_timeout;
        let mut failed = None;
        let mut remaining = len;
        while remaining > 0 {
            let n = writer.next_chunk_len();
            let next = match &mut target {
                PutTarget::Arena(blocks) => blocks
                    .next()
                    .ok_or_else(|| StoreError::BadRequest("arena blocks ran out".into())),
                PutTarget::Pool => writer.next_buffer(&self.shared.scope).await,
            };
            let mut buf = match next {
                Ok(buf) => buf,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            let read = frame::read_exact(&mut self.reader, &mut buf.as_mut_capacity()[..n], timeout).await;
            if let Err(e) = read {
                // The client vanished mid-payload: the writer's drop removes the temp file.
                return Err(format!(
                    "put payload ended after {} of {len} bytes: {e}",
                    len - remaining
                ));
            }
            self.metrics.received(n as u64);
            buf.set_len(n);
            remaining -= n as u64;
            if let Err(e) = writer.write_chunk(buf).await {
                failed = Some(e);
                break;
            }
        }
        if let Some(e) = failed {
            self.discard(remaining).await?;
            drop(writer);
            handlers::answer_store_error(&self.responder, Opcode::Put, id, &e)
                .instrument(span)
                .await;
            return Ok(());
        }
        let kept = matches!(target, PutTarget::Arena(_));
        let ctx = self.ctx.clone();
        let responder = self.responder.clone();
        self.ctx.tasks.spawn(
            async move {
                handlers::commit_put(&ctx, &responder, id, writer, kept).await;
                drop((permit, inflight));
            }
            .instrument(span),
        );
        Ok(())
    }

    /// A write-back put: the payload goes into arena blocks, is checked, and
    /// the put is acknowledged; the cache writes it to the drive later.
    async fn take_write_back(
        &mut self,
        id: u64,
        spec: PutSpec,
        cache: &Cache,
        blocks: Vec<AlignedBuf>,
        room: WriteBackRoom,
        scratch: bool,
    ) -> Result<(), Closed> {
        let len = spec.len;
        let chunk_size = self.ctx.store.config().chunk_size as u64;
        // Held until the shard is on the drive (the cache keeps it).
        let reservation = match self.ctx.store.check_put(&spec) {
            Ok(reservation) => reservation,
            Err(e) => {
                self.discard(len).await?;
                handlers::answer_store_error(&self.responder, Opcode::Put, id, &e).await;
                return Ok(());
            }
        };
        let timeout = self.ctx.config.io_timeout;
        let mut chunks = Vec::with_capacity(blocks.len());
        let mut crc = 0u32;
        let mut received = 0u64;
        for mut block in blocks {
            let n = (len - received).min(chunk_size) as usize;
            let read = frame::read_exact(&mut self.reader, &mut block.as_mut_capacity()[..n], timeout).await;
            if let Err(e) = read {
                return Err(format!("put payload ended after {received} of {len} bytes: {e}"));
            }
            self.metrics.received(n as u64);
            block.set_len(n);
            // Zeros after the bytes: the block is written out whole-page.
            block.zero_pad();
            crc = crc32c::crc32c_append(crc, block.as_slice());
            received += n as u64;
            chunks.push(block);
        }
        if let Some(expected) = spec.crc32c.filter(|&c| c != crc) {
            let e = StoreError::ChecksumMismatch(format!(
                "{}/{}: the sender's CRC32C {expected:#010x} does not match the received bytes' {crc:#010x}",
                spec.namespace, spec.key
            ));
            handlers::answer_store_error(&self.responder, Opcode::Put, id, &e).await;
            return Ok(());
        }
        let meta = ShardMeta {
            namespace: spec.namespace,
            key: spec.key,
            version: reservation.version(),
            dtype: spec.dtype,
            shape: spec.shape,
            len,
            crc32c: crc,
            created_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        };
        let installed = cache.install_dirty(meta.clone(), chunks, reservation, scratch);
        // Installed, the shard's bytes count as not on the drive yet.
        drop(room);
        if let Err(e) = installed {
            handlers::answer_store_error(&self.responder, Opcode::Put, id, &e).await;
            return Ok(());
        }
        self.responder
            .send(OutFrame::ok(Opcode::Put, id, &PutResponse { meta }))
            .await;
        Ok(())
    }

    async fn discard(&mut self, len: u64) -> Result<(), Closed> {
        frame::discard(&mut self.reader, len, self.ctx.config.io_timeout)
            .await
            .map_err(|e| format!("skipping a refused payload: {e}"))
    }

    async fn answer_error(&mut self, op: Opcode, id: u64, status: Status, message: String) {
        tracing::debug!(%op, id, %status, %message, "refused request");
        self.responder
            .send(OutFrame::error(op, id, status, message, None))
            .await;
    }

    /// Answers a frame the connection cannot continue after, and closes it.
    async fn fatal(&mut self, op: Opcode, id: u64, status: Status, message: String) -> Result<(), Closed> {
        self.responder
            .send(OutFrame::error(op, id, status, message.clone(), None))
            .await;
        Err(format!("{status}: {message}"))
    }
}
