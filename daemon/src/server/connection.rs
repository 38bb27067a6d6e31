//! One client connection, Unix or TCP alike.
//!
//! After the hello ([`super::handshake`]), the reading side takes frames in
//! order: it checks each header against the limits before reading anything
//! else, streams put payloads straight into the buffers of their put
//! session ([`crate::service::put`]: arena blocks when the shard can stay
//! cached), and hands every other request to the dispatch table
//! ([`super::dispatch`]), which answers it at once or in its own task; a
//! batch of puts ([`put_batch`]) reads each member's bytes from a region or
//! from the payload in the same way. Answers go through a channel to the
//! writing side, which writes
//! whole frames in the order they are ready, so answers to pipelined
//! requests may overtake each other and a large fetch never blocks a small
//! one.
//!
//! Before the hello, the peer is identified ([`crate::access::Identity`]);
//! every request is checked against the access table as it is decoded
//! ([`super::gate`]).
//!
//! Back-pressure: at most `max_inflight_requests` requests run at once per
//! connection (the reader waits beyond that), and chunk buffers count
//! against the connection's share of the buffer budget. A client that stops
//! reading its answers stalls only its own connection; after `io_timeout`
//! without progress the connection is closed and everything it held is
//! released: leases of zero-copy views [`LEASE_GRACE`] after the socket
//! closed, so that the client can stop reading them first. A connection
//! with no request and nothing in flight for `idle_timeout` is closed the
//! same way, and a lease held for `lease_timeout` is revoked.

mod put_batch;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use shardd_protocol::frame::io::FrameReader;
use shardd_protocol::{FrameHeader, Opcode, ProtocolError, PutRequest, PutResponse, Status};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::ServerContext;
use super::dispatch::{self, Handled};
use super::frame::OutFrame;
use super::gate::admit;
use super::handshake::{self, Transport};
use super::responder::{Responder, answer, error_frame};
use crate::access::{Identity, Peer};
use crate::metrics::RequestMetrics;
use crate::service::Session;
use crate::service::regions::PassedFds;

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

    fn any(&self) -> bool {
        !self.0.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    fn take(&self, id: u64) -> Option<Instant> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&id)
    }
}

/// Serves one connection until the peer closes it, it breaks, or the daemon
/// shuts down (then in-flight requests finish first).
pub async fn serve<S: Transport>(ctx: Arc<ServerContext>, mut stream: S, peer: Peer, certificate: Option<String>) {
    let conn_id = ctx.next_connection_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("conn", id = conn_id, transport = S::NAME, peer = %peer);
    async move {
        tracing::debug!("connection opened");
        // A Unix peer's user and groups come from the system's user database,
        // which may block; a TCP peer is its address.
        let mut identity = match peer {
            Peer::Unix { .. } => match tokio::task::spawn_blocking(move || Identity::resolve(peer)).await {
                Ok(identity) => identity,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot resolve who the peer is; closing");
                    return;
                }
            },
            _ => Identity::resolve(peer),
        };
        identity.certificate = certificate;
        let hello = match handshake::handshake(&ctx, &mut stream, &mut identity).await {
            Ok(hello) => hello,
            Err(failure) => {
                refused(&ctx, S::NAME, &peer, failure);
                return;
            }
        };
        let metrics = ctx.metrics.for_transport(S::NAME);
        let _open = metrics.connection();
        let arrivals = Arc::new(Arrivals::default());
        let passed = Arc::new(PassedFds::default());
        let (reader, writer) = stream.split(&passed);
        let (tx, rx) = mpsc::channel(OUT_QUEUE);
        let broken = CancellationToken::new();
        let out = Outbound {
            timeout: ctx.config.io_timeout,
            broken: broken.clone(),
            metrics: metrics.clone(),
            arrivals: arrivals.clone(),
        };
        let writer_task = tokio::spawn(write_loop(writer, rx, out).in_current_span());
        let scope = ctx.service.store().buffers().scope(ctx.config.connection_buffer_memory);
        let mut conn = Connection {
            session: Arc::new(Session::new(
                identity,
                scope,
                hello.arena_mapped,
                ctx.lease_limits(),
                ctx.region_limits(),
                S::PASSES_FDS.then_some(passed),
            )),
            inflight: Arc::new(Semaphore::new(ctx.config.max_inflight_requests as usize)),
            responder: Responder::new(tx, metrics.clone()),
            metrics,
            arrivals,
            frames: FrameReader::new(reader, SOCKET_BUFFER, ctx.limits(), ctx.config.io_timeout),
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
        let session = conn.session.clone();
        drop(conn);
        let _ = writer_task.await;
        // The socket is closed now, so the client learns that its views are
        // void; their blocks are reused only after it had time to.
        session.retire_leases(LEASE_GRACE);
    }
    .instrument(span)
    .await
}

/// Counts and logs a TLS handshake that failed, as [`refused`] does.
pub fn refused_tls(ctx: &ServerContext, peer: &Peer, e: &std::io::Error) {
    let span = tracing::info_span!("conn", transport = "tls", peer = %peer);
    let _entered = span.enter();
    let failure = handshake::Failure {
        refusal: Some(handshake::Refusal::Tls),
        reason: format!("TLS handshake: {e}"),
    };
    refused(ctx, "tls", peer, failure);
}

/// Counts a refused hello and logs it: at `warn` once a minute per peer,
/// else at `debug`; a peer that went away is logged at `debug`.
fn refused(ctx: &ServerContext, transport: &str, peer: &Peer, failure: handshake::Failure) {
    let reason = failure.reason;
    let Some(refusal) = failure.refusal else {
        tracing::debug!(%reason, "closing connection in its hello");
        return;
    };
    ctx.metrics
        .handshake_refusals
        .with_label_values(&[transport, refusal.label()])
        .inc();
    if ctx.refusal_log.should_log(peer.counted_as()) {
        tracing::warn!(
            %reason,
            "refused a connection in its hello (more refusals of this peer within a minute are logged at debug)"
        );
    } else {
        tracing::debug!(%reason, "refused a connection in its hello");
    }
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
    frames: FrameReader<R>,
    responder: Responder,
    session: Arc<Session>,
    inflight: Arc<Semaphore>,
    broken: CancellationToken,
}

impl<R: AsyncRead + Unpin + Send + 'static> Connection<R> {
    async fn read_loop(&mut self) -> Result<(), Closed> {
        let broken = self.broken.clone();
        let shutdown = self.ctx.shutdown.clone();
        let idle = self.ctx.config.idle_timeout;
        // Two timers made once and moved only when they fire, not per frame:
        // a frame only notes when it came.
        let mut last_frame = tokio::time::Instant::now();
        let idle_timer = tokio::time::sleep(idle);
        let lease_timer = tokio::time::sleep(idle);
        tokio::pin!(idle_timer, lease_timer);
        loop {
            let next_expiry = self.session.next_expiry().map(tokio::time::Instant::from_std);
            if let Some(at) = next_expiry.filter(|at| *at != lease_timer.deadline()) {
                lease_timer.as_mut().reset(at);
            }
            let arrived = tokio::select! {
                biased;
                _ = broken.cancelled() => return Err("the peer stopped reading".into()),
                _ = shutdown.cancelled() => return self.refuse_until_quiet().await,
                arrived = self.frames.wait_for_frame() => arrived,
                _ = &mut lease_timer, if next_expiry.is_some() => {
                    self.session.revoke_expired(LEASE_GRACE);
                    continue;
                }
                _ = &mut idle_timer => {
                    let now = tokio::time::Instant::now();
                    if last_frame + idle > now {
                        idle_timer.as_mut().reset(last_frame + idle);
                        continue;
                    }
                    if self.is_busy() {
                        idle_timer.as_mut().reset(now + idle / 4);
                        continue;
                    }
                    return Err(format!(
                        "no request for {idle:?} with nothing in flight (server.idle_timeout; clients ping to keep a \
                         connection open)"
                    ));
                }
            };
            last_frame = tokio::time::Instant::now();
            if !arrived.map_err(|e| e.to_string())? {
                return Ok(());
            }
            let Some(bytes) = self.frames.next_header_bytes().await.map_err(|e| e.to_string())? else {
                return Ok(());
            };
            self.take_frame(&bytes).await?;
        }
    }

    /// Whether requests of the connection are still being answered (an
    /// answer counts until its last frame is written).
    fn is_busy(&self) -> bool {
        self.arrivals.any()
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
            let quiet = if self.session.holds_leases() {
                leases_until
                    .saturating_duration_since(Instant::now())
                    .max(SHUTDOWN_QUIET)
            } else {
                SHUTDOWN_QUIET
            };
            let wait = tokio::time::timeout(quiet, self.frames.next_header_bytes());
            let next = tokio::select! {
                biased;
                _ = broken.cancelled() => return Err("the peer stopped reading".into()),
                next = wait => next,
            };
            let Ok(Ok(Some(bytes))) = next else {
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
        let control = self
            .frames
            .control(&header)
            .await
            .map_err(|e| format!("reading a control message: {e}"))?;

        if op == Opcode::Put {
            return self.take_put(header, &control).await;
        }
        if op == Opcode::PutBatch {
            return self.take_put_batch(header, &control).await;
        }
        if header.payload_len > 0 {
            self.discard(header.payload_len).await?;
            self.answer_error(op, id, Status::BadRequest, format!("{op} takes no payload"))
                .await;
            return Ok(());
        }
        if op == Opcode::Hello || op == Opcode::Authenticate {
            let message = format!("{op} belongs to the start of a connection, which is over");
            self.answer_error(op, id, Status::BadRequest, message).await;
            return Ok(());
        }
        let span = tracing::debug_span!("request", id, op = op.name());
        let handled = span.in_scope(|| dispatch::dispatch(&self.ctx, op, id, control, &self.session, &self.responder));
        match handled {
            Handled::Now(frames) => self.responder.send_all(frames).await,
            Handled::Later(task) => {
                let permit = self.permit().await?;
                self.ctx.tasks.spawn(
                    async move {
                        task.await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
        }
        Ok(())
    }

    async fn permit(&mut self) -> Result<OwnedSemaphorePermit, Closed> {
        self.inflight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Closed::from("request limiter closed"))
    }

    /// A put: the payload is read here, in order, straight into the
    /// buffers of its put session; a durable put's commit runs in its own
    /// task, a write-back put is answered once installed.
    async fn take_put(&mut self, header: FrameHeader, control: &[u8]) -> Result<(), Closed> {
        let op = Opcode::Put;
        let id = header.request_id;
        let len = header.payload_len;
        let request: PutRequest = match admit(&self.ctx, &self.session, control) {
            Ok(request) => request,
            Err(e) => {
                self.discard(len).await?;
                self.responder.send(error_frame(op, id, &e)).await;
                return Ok(());
            }
        };
        let permit = self.permit().await?;
        let inflight = self.metrics.inflight(len);
        let span = tracing::debug_span!("put", id, namespace = %request.namespace, key = %request.key, bytes = len);
        let begun = self.ctx.service.begin_put(request, len, &self.session);
        let mut put = match begun.instrument(span.clone()).await {
            Ok(put) => put,
            Err(e) => {
                self.discard(len).await?;
                self.responder.send(span.in_scope(|| error_frame(op, id, &e))).await;
                return Ok(());
            }
        };
        while put.remaining() > 0 {
            let (mut buf, n) = match put.next_buffer().await {
                Ok(next) => next,
                Err(e) => {
                    let rest = put.remaining();
                    drop(put);
                    return self.refuse_rest_of_put(id, rest, &e, &span).await;
                }
            };
            let read = self.frames.read_exact(&mut buf.as_mut_capacity()[..n]).await;
            if let Err(e) = read {
                // The client vanished mid-payload: dropping the put session
                // removes its temp file and gives back its blocks and room.
                let got = len - put.remaining();
                return Err(format!("put payload ended after {got} of {len} bytes: {e}"));
            }
            self.metrics.received(n as u64);
            if let Err(e) = put.filled(buf, n).await {
                let rest = put.remaining();
                drop(put);
                return self.refuse_rest_of_put(id, rest, &e, &span).await;
            }
        }
        if !put.is_durable() {
            let committed = put.commit().instrument(span.clone()).await;
            let frame = span.in_scope(|| answer(op, id, committed.map(|meta| PutResponse { meta })));
            self.responder.send(frame).await;
            return Ok(());
        }
        let responder = self.responder.clone();
        self.ctx.tasks.spawn(
            async move {
                let committed = put.commit().await;
                responder
                    .send(answer(op, id, committed.map(|meta| PutResponse { meta })))
                    .await;
                drop((permit, inflight));
            }
            .instrument(span),
        );
        Ok(())
    }

    /// A put that failed before its payload was all in: the rest is read
    /// and thrown away, and the error answered.
    async fn refuse_rest_of_put(
        &mut self,
        id: u64,
        rest: u64,
        e: &crate::store::StoreError,
        span: &tracing::Span,
    ) -> Result<(), Closed> {
        self.discard(rest).await?;
        self.responder
            .send(span.in_scope(|| error_frame(Opcode::Put, id, e)))
            .await;
        Ok(())
    }

    async fn discard(&mut self, len: u64) -> Result<(), Closed> {
        self.frames
            .skip(len)
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
