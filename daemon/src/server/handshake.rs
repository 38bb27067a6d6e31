//! The hello: the first frame of every connection, answered before the
//! connection starts pipelining. It negotiates the protocol version; over
//! TCP it runs the key exchange (see [`crate::auth`]): the daemon proves it
//! holds the key the client offered, and reads nothing but the client's
//! proof until that holds; over a Unix socket it may hand the client a
//! read-only descriptor of the arena's sealed memfd (SCM_RIGHTS ancillary
//! data on the answer) for zero-copy fetches.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;

use shardd_protocol::auth::{AuthKey, Side, Transcript};
use shardd_protocol::{
    ArenaGrant, AuthChallenge, AuthOffer, AuthenticateRequest, AuthenticateResponse, FrameHeader, HEADER_LEN,
    HelloRequest, HelloResponse, Opcode, PROTOCOL_VERSION, ProtocolError, ServerLimits, Status, codec,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::{TcpStream, UnixStream};

use super::ServerContext;
use super::frame::OutFrame;
use super::passing::PassingReader;
use crate::access::Identity;
use crate::auth::TcpAuth;
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
    /// Whether its peers authenticate with keys (peers of a Unix socket
    /// are known by their credentials instead).
    const AUTHENTICATES: bool;
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
    const AUTHENTICATES: bool = false;

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

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    type Reader = tokio::io::ReadHalf<Self>;
    type Writer = tokio::io::WriteHalf<Self>;
    const NAME: &'static str = "tls";
    const PASSES_FDS: bool = false;
    const AUTHENTICATES: bool = true;

    fn split(self, _: &Arc<PassedFds>) -> (Self::Reader, Self::Writer) {
        tokio::io::split(self)
    }

    async fn send_with_fd(&mut self, _: &[u8], _: BorrowedFd<'_>) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "TLS cannot pass file descriptors",
        ))
    }
}

impl Transport for TcpStream {
    type Reader = tokio::net::tcp::OwnedReadHalf;
    type Writer = tokio::net::tcp::OwnedWriteHalf;
    const NAME: &'static str = "tcp";
    const PASSES_FDS: bool = false;
    const AUTHENTICATES: bool = true;

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

/// Why a hello was refused: the label of `shardd_handshake_refusals_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No hello within `server.handshake_timeout`.
    Timeout,
    /// Not a hello, or one that does not decode.
    BadHello,
    /// No protocol version in common.
    Version,
    /// A TCP hello that offered no key, to a daemon that needs one.
    NoKey,
    /// A key the daemon does not hold.
    UnknownKey,
    /// A proof that does not hold (a wrong secret, or a replay).
    BadProof,
    /// Another request where the proof was due.
    NotAuthenticated,
    /// The TLS handshake failed (no client certificate where one is
    /// required, one the client CA did not sign, not TLS at all).
    Tls,
}

impl Refusal {
    /// Every reason, for the metric's zero series.
    pub const ALL: [Refusal; 8] = [
        Refusal::Timeout,
        Refusal::BadHello,
        Refusal::Version,
        Refusal::NoKey,
        Refusal::UnknownKey,
        Refusal::BadProof,
        Refusal::NotAuthenticated,
        Refusal::Tls,
    ];

    /// The metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Refusal::Timeout => "timeout",
            Refusal::BadHello => "bad_hello",
            Refusal::Version => "version",
            Refusal::NoKey => "no_key",
            Refusal::UnknownKey => "unknown_key",
            Refusal::BadProof => "bad_proof",
            Refusal::NotAuthenticated => "not_authenticated",
            Refusal::Tls => "tls",
        }
    }
}

/// Why a connection ends in its hello.
#[derive(Debug)]
pub struct Failure {
    /// The refusal, if the daemon refused (else the peer went away or the
    /// socket broke).
    pub refusal: Option<Refusal>,
    /// What happened, for the log.
    pub reason: String,
}

impl Failure {
    fn broken(reason: String) -> Failure {
        Failure { refusal: None, reason }
    }
}

/// What a TCP client that offers no key is told.
const NO_KEY: &str = "this daemon's TCP port needs a key: pass one with --auth-key-file, \
     SHARDD_AUTH_KEY_FILE or the client's options (the daemon logs where its key is; see docs/SECURITY.md)";

/// Longest control message of an authenticate request.
const MAX_AUTHENTICATE_LEN: u32 = 256;

/// Reads the hello and answers it; over TCP, then reads and checks the
/// client's proof, and records the key in `identity`. On failure the client
/// gets an error frame (where it can be sent) and the reason to close is
/// returned.
pub async fn handshake<S: Transport>(
    ctx: &ServerContext,
    stream: &mut S,
    identity: &mut Identity,
) -> Result<Handshake, Failure> {
    let limit = ctx.config.handshake_timeout;
    match tokio::time::timeout(limit, exchange(ctx, stream, identity)).await {
        Ok(result) => result,
        Err(_) => Err(Failure {
            refusal: Some(Refusal::Timeout),
            reason: format!("no hello within {limit:?} (server.handshake_timeout)"),
        }),
    }
}

async fn exchange<S: Transport>(
    ctx: &ServerContext,
    stream: &mut S,
    identity: &mut Identity,
) -> Result<Handshake, Failure> {
    let mut bytes = [0u8; HEADER_LEN];
    stream
        .read_exact(&mut bytes)
        .await
        .map_err(|e| Failure::broken(format!("reading the hello: {e}")))?;
    let bad = Refusal::BadHello;
    let header = match FrameHeader::decode(&bytes) {
        Ok(header) => header,
        Err(e @ ProtocolError::UnsupportedVersion(_)) => {
            let status = Status::UnsupportedVersion;
            return refuse(stream, Opcode::Hello, 0, status, Refusal::Version, e.to_string()).await;
        }
        Err(ProtocolError::UnknownOpcode { request_id, .. }) => {
            let message = "the first request must be hello".to_string();
            return refuse(stream, Opcode::Hello, request_id, Status::BadRequest, bad, message).await;
        }
        Err(e) => return refuse(stream, Opcode::Hello, 0, Status::BadRequest, bad, e.to_string()).await,
    };
    let id = header.request_id;
    if header.opcode != Opcode::Hello || header.is_response() || header.has_more() {
        let message = format!("the first request must be hello, not {}", header.opcode);
        return refuse(stream, header.opcode, id, Status::BadRequest, bad, message).await;
    }
    if let Err(e) = header.check_limits(&ctx.limits()) {
        return refuse(stream, Opcode::Hello, id, Status::TooLarge, bad, e.to_string()).await;
    }
    if header.payload_len > 0 {
        let message = "hello takes no payload".to_string();
        return refuse(stream, Opcode::Hello, id, Status::BadRequest, bad, message).await;
    }
    let mut control = vec![0u8; header.control_len as usize];
    stream
        .read_exact(&mut control)
        .await
        .map_err(|e| Failure::broken(format!("reading the hello: {e}")))?;
    let hello: HelloRequest = match codec::decode(&control) {
        Ok(hello) => hello,
        Err(e) => {
            return refuse(stream, Opcode::Hello, id, Status::BadRequest, bad, e.to_string()).await;
        }
    };
    if !(hello.min_version..=hello.max_version).contains(&PROTOCOL_VERSION) {
        let message = format!(
            "client speaks protocol versions {}..={}, this daemon speaks {PROTOCOL_VERSION}",
            hello.min_version, hello.max_version
        );
        let status = Status::UnsupportedVersion;
        return refuse(stream, Opcode::Hello, id, status, Refusal::Version, message).await;
    }
    // A TLS peer that showed a certificate is known by it.
    let needs_key = S::AUTHENTICATES && identity.certificate.is_none();
    let key = match offered_key(ctx, needs_key, hello.auth.as_ref()) {
        Ok(key) => key,
        Err((refusal, message)) => {
            return refuse(stream, Opcode::Hello, id, Status::Unauthorized, refusal, message).await;
        }
    };
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
    let server_nonce = match key {
        Some(_) => Some(shardd_protocol::auth::nonce().map_err(|e| Failure::broken(e.to_string()))?),
        None => None,
    };
    let transcript = |offer, server_nonce| Transcript {
        version: PROTOCOL_VERSION,
        offer,
        server_nonce,
        client: &hello.client,
        server: &ctx.server_name,
    };
    let challenge = match (&key, &server_nonce, &hello.auth) {
        (Some(key), Some(nonce), Some(offer)) => Some(AuthChallenge {
            nonce: *nonce,
            proof: key.prove(Side::Server, &transcript(offer, nonce)),
        }),
        _ => None,
    };
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
        auth: challenge,
    };
    send(
        stream,
        OutFrame::ok(Opcode::Hello, id, &response),
        grant.map(|(fd, _)| fd),
    )
    .await?;
    if let (Some(key), Some(nonce), Some(offer)) = (key, server_nonce, &hello.auth) {
        let identity_key = authenticate(stream, &key, &transcript(offer, &nonce)).await?;
        identity.key = Some(identity_key);
    }
    Ok(Handshake {
        arena_mapped: grant.is_some(),
    })
}

/// The key in force that `offer` names, `None` where no key is needed, or
/// why the hello is refused.
fn offered_key(
    ctx: &ServerContext,
    authenticates: bool,
    offer: Option<&AuthOffer>,
) -> Result<Option<AuthKey>, (Refusal, String)> {
    if !authenticates {
        return Ok(None);
    }
    let auth = ctx.tcp_auth();
    let TcpAuth::Keys(ring) = &*auth else {
        return Ok(None);
    };
    let Some(offer) = offer else {
        return Err((Refusal::NoKey, NO_KEY.to_string()));
    };
    match ring.find(offer) {
        Some(key) => Ok(Some(key.clone())),
        None => {
            let fingerprint: String = offer.fingerprint.iter().map(|b| format!("{b:02x}")).collect();
            Err((
                Refusal::UnknownKey,
                format!(
                    "key \"{}\" (fingerprint {fingerprint}) is not one this daemon accepts; \
                     ask its operator for the key listed in its [auth] keys",
                    offer.key_id
                ),
            ))
        }
    }
}

/// Reads the client's proof, which must come next, and answers it: the
/// key's id if it holds, else a refusal.
async fn authenticate<S: Transport>(
    stream: &mut S,
    key: &AuthKey,
    transcript: &Transcript<'_>,
) -> Result<String, Failure> {
    let mut bytes = [0u8; HEADER_LEN];
    stream
        .read_exact(&mut bytes)
        .await
        .map_err(|e| Failure::broken(format!("waiting for the client's proof: {e}")))?;
    let not_yet = Refusal::NotAuthenticated;
    let header = match FrameHeader::decode(&bytes) {
        Ok(header) => header,
        Err(e) => {
            let message = format!("authenticate before any other request: {e}");
            return refuse(stream, Opcode::Authenticate, 0, Status::Unauthorized, not_yet, message).await;
        }
    };
    let id = header.request_id;
    if header.opcode != Opcode::Authenticate
        || header.is_response()
        || header.has_more()
        || header.payload_len != 0
        || header.control_len > MAX_AUTHENTICATE_LEN
    {
        let message = format!(
            "authenticate before any other request: {} came where the proof of key \"{}\" was due",
            header.opcode,
            key.id()
        );
        return refuse(stream, header.opcode, id, Status::Unauthorized, not_yet, message).await;
    }
    let mut control = vec![0u8; header.control_len as usize];
    stream
        .read_exact(&mut control)
        .await
        .map_err(|e| Failure::broken(format!("reading the client's proof: {e}")))?;
    let request: AuthenticateRequest = match codec::decode(&control) {
        Ok(request) => request,
        Err(e) => {
            let status = Status::Unauthorized;
            return refuse(
                stream,
                Opcode::Authenticate,
                id,
                status,
                Refusal::BadProof,
                e.to_string(),
            )
            .await;
        }
    };
    if !key.holds(Side::Client, transcript, &request.proof) {
        let message = format!(
            "the proof of key \"{}\" does not hold: the client's secret is not the daemon's, \
             or it replayed an earlier exchange",
            key.id()
        );
        let status = Status::Unauthorized;
        return refuse(stream, Opcode::Authenticate, id, status, Refusal::BadProof, message).await;
    }
    let answer = AuthenticateResponse {
        identity: key.id().to_string(),
    };
    send(stream, OutFrame::ok(Opcode::Authenticate, id, &answer), None).await?;
    tracing::debug!(key = key.id(), fingerprint = %key.fingerprint_hex(), "authenticated");
    Ok(key.id().to_string())
}

/// Writes one answer, with the arena's descriptor where one goes with it.
async fn send<S: Transport>(stream: &mut S, frame: OutFrame, fd: Option<BorrowedFd<'_>>) -> Result<(), Failure> {
    let mut bytes = Vec::new();
    frame
        .write_to(&mut bytes)
        .await
        .map_err(|e| Failure::broken(e.to_string()))?;
    let sent = match fd {
        Some(fd) => stream.send_with_fd(&bytes, fd).await,
        None => stream.write_all(&bytes).await,
    };
    sent.map_err(|e| Failure::broken(format!("answering the hello: {e}")))
}

/// Sends an error frame and returns the refusal.
async fn refuse<S: Transport, T>(
    stream: &mut S,
    op: Opcode,
    id: u64,
    status: Status,
    refusal: Refusal,
    message: String,
) -> Result<T, Failure> {
    let mut frame = Vec::new();
    let _ = OutFrame::error(op, id, status, message.clone(), None)
        .write_to(&mut frame)
        .await;
    let _ = stream.write_all(&frame).await;
    let _ = stream.flush().await;
    Err(Failure {
        refusal: Some(refusal),
        reason: format!("{status}: {message}"),
    })
}
