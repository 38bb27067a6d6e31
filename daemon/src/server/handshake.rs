//! The hello: the first frame of every connection, answered before the
//! connection starts pipelining. It negotiates the protocol version and,
//! over a Unix socket, may hand the client a read-only descriptor of the
//! arena's sealed memfd (SCM_RIGHTS ancillary data on the answer) for
//! zero-copy fetches.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;

use shardd_protocol::{
    ArenaGrant, FrameHeader, HEADER_LEN, HelloRequest, HelloResponse, Opcode, PROTOCOL_VERSION, ProtocolError,
    ServerLimits, Status, codec,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::{TcpStream, UnixStream};

use super::ServerContext;
use super::frame::OutFrame;
use super::passing::PassingReader;
use crate::access::Identity;
use crate::service::regions::PassedFds;

/// A connected stream of either transport.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The reading half.
    type Reader: AsyncRead + Unpin + Send + 'static;
    /// The writing half.
    type Writer: AsyncWrite + Unpin + Send + 'static;
    /// `unix` or `tcp`, for logs.
    const NAME: &'static str;
    /// Whether file descriptors can travel over it.
    const PASSES_FDS: bool;
    /// Splits into halves for the reading and writing tasks; descriptors
    /// that come (Unix) are kept in `passed`.
    fn split(self, passed: &Arc<PassedFds>) -> (Self::Reader, Self::Writer);
    /// Sends `bytes` with `fd` attached to the first of them.
    fn send_with_fd(&mut self, bytes: &[u8], fd: BorrowedFd<'_>) -> impl Future<Output = io::Result<()>> + Send;
}

impl Transport for UnixStream {
    type Reader = PassingReader;
    type Writer = tokio::net::unix::OwnedWriteHalf;
    const NAME: &'static str = "unix";
    const PASSES_FDS: bool = true;

    fn split(self, passed: &Arc<PassedFds>) -> (Self::Reader, Self::Writer) {
        let (reader, writer) = self.into_split();
        (PassingReader::new(reader, passed.clone()), writer)
    }

    async fn send_with_fd(&mut self, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
        let socket = self.as_raw_fd();
        let raw = fd.as_raw_fd();
        let sent = loop {
            self.writable().await?;
            match self.try_io(Interest::WRITABLE, || {
                shardd_protocol::fdpass::send_with_fd(socket, bytes, raw)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        self.write_all(&bytes[sent..]).await
    }
}

impl Transport for TcpStream {
    type Reader = tokio::net::tcp::OwnedReadHalf;
    type Writer = tokio::net::tcp::OwnedWriteHalf;
    const NAME: &'static str = "tcp";
    const PASSES_FDS: bool = false;

    fn split(self, _: &Arc<PassedFds>) -> (Self::Reader, Self::Writer) {
        self.into_split()
    }

    async fn send_with_fd(&mut self, _: &[u8], _: BorrowedFd<'_>) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "TCP cannot pass file descriptors",
        ))
    }
}

/// What the hello settled.
#[derive(Debug)]
pub struct Handshake {
    /// The client mapped the arena: zero-copy fetches are allowed.
    pub arena_mapped: bool,
}

/// Reads the hello and answers it. On failure the client gets an error
/// frame (where it can be sent) and the reason to close is returned.
pub async fn handshake<S: Transport>(
    ctx: &ServerContext,
    stream: &mut S,
    identity: &Identity,
) -> Result<Handshake, String> {
    let limit = ctx.config.handshake_timeout;
    match tokio::time::timeout(limit, exchange(ctx, stream, identity)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no hello within {limit:?}")),
    }
}

async fn exchange<S: Transport>(ctx: &ServerContext, stream: &mut S, identity: &Identity) -> Result<Handshake, String> {
    let mut bytes = [0u8; HEADER_LEN];
    stream
        .read_exact(&mut bytes)
        .await
        .map_err(|e| format!("reading the hello: {e}"))?;
    let header = match FrameHeader::decode(&bytes) {
        Ok(header) => header,
        Err(e @ ProtocolError::UnsupportedVersion(_)) => {
            return refuse(stream, Opcode::Hello, 0, Status::UnsupportedVersion, e.to_string()).await;
        }
        Err(ProtocolError::UnknownOpcode { request_id, .. }) => {
            let message = "the first request must be hello".to_string();
            return refuse(stream, Opcode::Hello, request_id, Status::BadRequest, message).await;
        }
        Err(e) => return refuse(stream, Opcode::Hello, 0, Status::BadRequest, e.to_string()).await,
    };
    let id = header.request_id;
    if header.opcode != Opcode::Hello || header.is_response() || header.has_more() {
        let message = format!("the first request must be hello, not {}", header.opcode);
        return refuse(stream, header.opcode, id, Status::BadRequest, message).await;
    }
    if let Err(e) = header.check_limits(&ctx.limits()) {
        return refuse(stream, Opcode::Hello, id, Status::TooLarge, e.to_string()).await;
    }
    if header.payload_len > 0 {
        let message = "hello takes no payload".to_string();
        return refuse(stream, Opcode::Hello, id, Status::BadRequest, message).await;
    }
    let mut control = vec![0u8; header.control_len as usize];
    stream
        .read_exact(&mut control)
        .await
        .map_err(|e| format!("reading the hello: {e}"))?;
    let hello: HelloRequest = match codec::decode(&control) {
        Ok(hello) => hello,
        Err(e) => {
            return refuse(stream, Opcode::Hello, id, Status::BadRequest, e.to_string()).await;
        }
    };
    if !(hello.min_version..=hello.max_version).contains(&PROTOCOL_VERSION) {
        let message = format!(
            "client speaks protocol versions {}..={}, this daemon speaks {PROTOCOL_VERSION}",
            hello.min_version, hello.max_version
        );
        return refuse(stream, Opcode::Hello, id, Status::UnsupportedVersion, message).await;
    }
    let grant = match ctx.service.cache() {
        // A mapped arena shows every cached shard: it goes only to peers
        // that may read every namespace.
        Some(cache)
            if hello.want_arena && ctx.config.zero_copy && S::PASSES_FDS && ctx.access().reads_everything(identity) =>
        {
            cache.arena().shared_fd().ok().map(|fd| (fd, cache.arena().capacity()))
        }
        _ => None,
    };
    tracing::debug!(client = %hello.client, arena = grant.is_some(), "hello");
    let store = ctx.service.store().config();
    let response = HelloResponse {
        version: PROTOCOL_VERSION,
        server: ctx.server_name.clone(),
        limits: ServerLimits {
            max_payload_len: store.max_shard_bytes,
            max_control_len: shardd_protocol::MAX_CONTROL_LEN,
            max_inflight_requests: ctx.config.max_inflight_requests,
            chunk_size: store.chunk_size,
            idle_timeout_ms: ctx.config.idle_timeout.as_millis() as u64,
            lease_timeout_ms: ctx.config.lease_timeout.as_millis() as u64,
        },
        arena: grant.map(|(_, size)| ArenaGrant { size }),
    };
    let mut frame = Vec::new();
    OutFrame::ok(Opcode::Hello, id, &response)
        .write_to(&mut frame)
        .await
        .map_err(|e| e.to_string())?;
    let sent = match grant {
        Some((fd, _)) => stream.send_with_fd(&frame, fd).await,
        None => stream.write_all(&frame).await,
    };
    sent.map_err(|e| format!("answering the hello: {e}"))?;
    Ok(Handshake {
        arena_mapped: grant.is_some(),
    })
}

/// Sends an error frame and returns the reason to close.
async fn refuse<S: Transport>(
    stream: &mut S,
    op: Opcode,
    id: u64,
    status: Status,
    message: String,
) -> Result<Handshake, String> {
    let mut frame = Vec::new();
    let _ = OutFrame::error(op, id, status, message.clone(), None)
        .write_to(&mut frame)
        .await;
    let _ = stream.write_all(&frame).await;
    let _ = stream.flush().await;
    Err(format!("{status}: {message}"))
}
