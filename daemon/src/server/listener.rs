//! Binding the Unix socket, the TCP port and the TLS port, and accepting
//! connections.

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shardd_protocol::{Opcode, Status};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use super::ServerContext;
use super::connection;
use super::frame::OutFrame;
use super::handshake::Transport;
use crate::access::Peer;

/// The bound sockets.
#[derive(Debug)]
pub struct Listeners {
    unix: Option<(UnixListener, PathBuf)>,
    tcp: Option<TcpListener>,
    tls: Option<TcpListener>,
}

impl Listeners {
    /// Binds what `ctx.config` asks for. A socket file left by a daemon that
    /// is gone is replaced; one with a live daemon behind it is an error.
    pub async fn bind(ctx: &ServerContext) -> anyhow::Result<Listeners> {
        let config = &ctx.config;
        let unix = match &config.socket {
            Some(path) => {
                remove_stale_socket(path).await?;
                let listener =
                    UnixListener::bind(path).with_context(|| format!("bind Unix socket {}", path.display()))?;
                if let Some(gid) = config.socket_group {
                    std::os::unix::fs::chown(path, None, Some(gid))
                        .with_context(|| format!("give {} to group {gid} (server.socket_group)", path.display()))?;
                }
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(config.socket_mode))
                    .with_context(|| format!("set permissions of {}", path.display()))?;
                Some((listener, path.clone()))
            }
            None => None,
        };
        let mut tcp_listeners = Vec::new();
        for (what, addr) in [("TCP", config.tcp), ("TLS", config.tls)] {
            let bound = match addr {
                Some(addr) => match TcpListener::bind(addr).await {
                    Ok(listener) => Some(listener),
                    Err(e) => {
                        // Leave no socket file behind for a daemon that does not start.
                        if let Some((_, path)) = &unix {
                            let _ = std::fs::remove_file(path);
                        }
                        return Err(e).with_context(|| format!("bind {what} {addr}"));
                    }
                },
                None => None,
            };
            tcp_listeners.push(bound);
        }
        let tls = tcp_listeners.pop().flatten();
        let tcp = tcp_listeners.pop().flatten();
        Ok(Listeners { unix, tcp, tls })
    }

    /// The bound TCP address (useful when the port was 0).
    pub fn tcp_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound TLS address.
    pub fn tls_addr(&self) -> Option<std::net::SocketAddr> {
        self.tls.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The Unix socket path.
    pub fn socket_path(&self) -> Option<&Path> {
        self.unix.as_ref().map(|(_, p)| p.as_path())
    }

    /// Accepts until shutdown; then removes the socket file.
    pub async fn accept_until_shutdown(self, ctx: Arc<ServerContext>) {
        let Listeners { unix, tcp, tls } = self;
        let tasks = [
            unix.map(|(listener, path)| tokio::spawn(accept_loop(ctx.clone(), UnixAcceptor { listener, path }))),
            tcp.map(|listener| tokio::spawn(accept_loop(ctx.clone(), TcpAcceptor(listener)))),
            tls.map(|listener| tokio::spawn(accept_loop(ctx.clone(), TlsAcceptor(listener)))),
        ];
        for task in tasks.into_iter().flatten() {
            let _ = task.await;
        }
    }
}

/// One kind of listening socket.
trait Acceptor: Send + 'static {
    /// The connection as accepted.
    type Raw: Send + 'static;
    /// The stream served over it.
    type Stream: Transport;
    /// The next connection, set up, and its peer.
    fn accept(&self, ctx: &ServerContext) -> impl Future<Output = io::Result<(Self::Raw, Peer)>> + Send;
    /// Turns an admitted connection into the stream served, in the
    /// connection's own task (TLS: the TLS handshake); with the common
    /// name of the certificate the peer showed, if any.
    fn establish(
        ctx: &ServerContext,
        raw: Self::Raw,
    ) -> impl Future<Output = io::Result<(Self::Stream, Option<String>)>> + Send;
    /// Tells a peer refused a slot why, where a frame can reach it.
    fn refuse(raw: Self::Raw, reason: String) -> impl Future<Output = ()> + Send;
}

/// Answers `busy` on a stream that carries frames as they are.
async fn refuse_plain<S: Transport>(mut stream: S, reason: String) {
    let frame = OutFrame::error(Opcode::Hello, 0, Status::Busy, reason, None);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        frame.write_to(&mut stream).await?;
        stream.shutdown().await
    })
    .await;
}

/// The Unix listener; dropping it removes the socket file.
struct UnixAcceptor {
    listener: UnixListener,
    path: PathBuf,
}

impl Acceptor for UnixAcceptor {
    type Raw = UnixStream;
    type Stream = UnixStream;

    async fn accept(&self, ctx: &ServerContext) -> io::Result<(UnixStream, Peer)> {
        let (stream, _) = self.listener.accept().await?;
        set_send_buffer(&stream, ctx.config.unix_send_buffer);
        let peer = Peer::of_unix(&stream);
        Ok((stream, peer))
    }

    async fn establish(_: &ServerContext, raw: UnixStream) -> io::Result<(UnixStream, Option<String>)> {
        Ok((raw, None))
    }

    async fn refuse(raw: UnixStream, reason: String) {
        refuse_plain(raw, reason).await
    }
}

impl Drop for UnixAcceptor {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

struct TcpAcceptor(TcpListener);

impl Acceptor for TcpAcceptor {
    type Raw = TcpStream;
    type Stream = TcpStream;

    async fn accept(&self, _: &ServerContext) -> io::Result<(TcpStream, Peer)> {
        let (stream, peer) = self.0.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, Peer::Tcp(peer)))
    }

    async fn establish(_: &ServerContext, raw: TcpStream) -> io::Result<(TcpStream, Option<String>)> {
        Ok((raw, None))
    }

    async fn refuse(raw: TcpStream, reason: String) {
        refuse_plain(raw, reason).await
    }
}

/// The TLS listener: TCP connections that start with a TLS handshake.
struct TlsAcceptor(TcpListener);

impl Acceptor for TlsAcceptor {
    type Raw = TcpStream;
    type Stream = tokio_rustls::server::TlsStream<TcpStream>;

    async fn accept(&self, _: &ServerContext) -> io::Result<(TcpStream, Peer)> {
        let (stream, peer) = self.0.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, Peer::Tcp(peer)))
    }

    async fn establish(ctx: &ServerContext, raw: TcpStream) -> io::Result<(Self::Stream, Option<String>)> {
        let server = ctx
            .tls_server()
            .ok_or_else(|| io::Error::other("no TLS certificate is loaded"))?;
        match tokio::time::timeout(ctx.config.handshake_timeout, server.accept(raw)).await {
            Ok(accepted) => accepted,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no TLS handshake within {:?} (server.handshake_timeout)",
                    ctx.config.handshake_timeout
                ),
            )),
        }
    }

    async fn refuse(_: TcpStream, _: String) {
        // A refusal in plain frames means nothing to a TLS client: it
        // sees the connection close.
    }
}

/// Accepts and serves connections until shutdown.
async fn accept_loop<A: Acceptor>(ctx: Arc<ServerContext>, acceptor: A) {
    loop {
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            accepted = acceptor.accept(&ctx) => accepted,
        };
        match accepted {
            Ok((raw, peer)) => spawn_connection::<A>(&ctx, raw, peer),
            Err(e) => accept_failed(&e).await,
        }
    }
}

/// Accept errors (out of file descriptors, aborted handshakes) are logged and
/// retried after a pause; they never stop the listener.
async fn accept_failed(e: &io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn spawn_connection<A: Acceptor>(ctx: &Arc<ServerContext>, raw: A::Raw, peer: Peer) {
    let transport = <A::Stream as Transport>::NAME;
    let slot = match ctx.slots.admit(&peer, ctx.slot_limits()) {
        Ok(slot) => slot,
        Err(reason) => {
            if refusals_to_log() {
                tracing::warn!(transport, %peer, %reason, "refusing a connection");
            } else {
                tracing::debug!(transport, %peer, %reason, "refusing a connection");
            }
            ctx.tasks.spawn(A::refuse(raw, reason));
            return;
        }
    };
    let ctx2 = ctx.clone();
    ctx.tasks.spawn(async move {
        match A::establish(&ctx2, raw).await {
            Ok((stream, certificate)) => connection::serve(ctx2, stream, peer, certificate).await,
            Err(e) => connection::refused_tls(&ctx2, &peer, &e),
        }
        drop(slot);
    });
}

/// Whether a refused connection is logged at warn: at most once a second,
/// so a flood of connections past a limit cannot flood the log (the rest go
/// to debug).
fn refusals_to_log() -> bool {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    LAST.swap(second, std::sync::atomic::Ordering::Relaxed) != second
}

/// Raises a Unix socket's send buffer so that fetch answers move in large
/// pieces (fewer wake-ups on both sides). The kernel caps the size at
/// `net.core.wmem_max`; a failure only costs throughput.
fn set_send_buffer(stream: &tokio::net::UnixStream, bytes: usize) {
    if let Err(e) = socket2::SockRef::from(stream).set_send_buffer_size(bytes) {
        tracing::debug!(error = %e, "cannot set the socket send buffer");
    }
}

async fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("inspect {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        anyhow::bail!("{} exists and is not a socket; refusing to replace it", path.display());
    }
    match tokio::net::UnixStream::connect(path).await {
        Ok(_) => anyhow::bail!("another daemon is serving on {}", path.display()),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused || e.kind() == io::ErrorKind::NotFound => {
            std::fs::remove_file(path).with_context(|| format!("remove stale socket {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("probe existing socket {}", path.display())),
    }
}
