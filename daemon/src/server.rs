//! Serving the wire protocol on a Unix socket and on TCP.
//!
//! # Layout
//!
//! * [`listener`]: binding the sockets and accepting connections.
//! * [`handshake`]: the hello: versions, the key exchange of TCP peers,
//!   and the arena's memfd for local clients.
//! * [`refusals`]: refused hellos logged at most once a minute per peer.
//! * [`passing`]: a Unix connection's reads, which take in the memfds of
//!   regions clients register.
//! * [`connection`]: one connection: frames in, answers out; put payloads
//!   into the buffers of their put session.
//! * [`dispatch`]: the one dispatch table, from requests to the
//!   [`crate::service`] and back to frames.
//! * [`batch`]: batched requests, each member answered as it is ready.
//! * [`regions`]: registering regions of clients' memory.
//! * [`gate`]: the one check of each request against the access table.
//! * [`responder`]: answers queued for the writer; errors to statuses.
//! * [`slots`]: connection slots per peer and transport.
//! * [`frame`]: outgoing frames and bounded reads of incoming ones.

pub mod batch;
pub mod connection;
pub mod dispatch;
pub mod frame;
pub mod gate;
pub mod handshake;
pub mod listener;
pub mod passing;
pub mod refusals;
pub mod regions;
pub mod responder;
pub mod slots;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use shardd_protocol::{Limits, MAX_CONTROL_LEN};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use shardd_protocol::StatusResponse;

use crate::access::AccessTable;
use crate::auth::TcpAuth;
use crate::cache::Cache;
use crate::metrics::Metrics;
use crate::service::Service;
use crate::service::regions::RegionLimits;
use crate::service::session::LeaseLimits;
use crate::store::Store;

/// Settings of the listeners and connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Unix socket path; `None` disables it.
    pub socket: Option<PathBuf>,
    /// Permission bits of the socket file.
    pub socket_mode: u32,
    /// The group the socket file is given (the clients' group); `None`
    /// leaves the daemon's.
    pub socket_group: Option<u32>,
    /// Send buffer of Unix-socket connections, in bytes.
    pub unix_send_buffer: usize,
    /// Hand the arena's memfd to Unix-socket clients that ask (zero-copy
    /// fetches; they can then read every cached shard).
    pub zero_copy: bool,
    /// TCP address; `None` disables TCP.
    pub tcp: Option<SocketAddr>,
    /// The TLS listener's address (`tls.listen`); `None`: no TLS.
    pub tls: Option<SocketAddr>,
    /// HTTP address of /metrics, /healthz, /readyz and /v1/status; `None`
    /// disables it.
    pub http: Option<SocketAddr>,
    /// Open connections at most; more are answered `busy` and closed.
    pub max_connections: usize,
    /// Open connections of one peer at most (a uid on the Unix socket, an
    /// IP address on TCP).
    pub max_connections_per_peer: usize,
    /// Connections only Unix-socket clients may use: TCP gets at most
    /// `max_connections` minus these.
    pub unix_reserved_connections: usize,
    /// How long a connection may go without a request while nothing is in
    /// flight; then it is closed (clients ping to keep one open).
    pub idle_timeout: Duration,
    /// Leases of zero-copy views one connection may hold at once.
    pub max_leases: u32,
    /// Bytes of leased views one connection may hold at once; `None`: half
    /// the arena.
    pub max_lease_bytes: Option<u64>,
    /// How long a lease lasts: then it is revoked (the client's view says
    /// so), whether or not it was given back.
    pub lease_timeout: Duration,
    /// Regions of its memory one connection may register at once.
    pub max_regions: u32,
    /// Bytes of them.
    pub max_region_bytes: u64,
    /// Requests one connection may have in flight.
    pub max_inflight_requests: u32,
    /// Chunk-buffer memory one connection may hold.
    pub connection_buffer_memory: u64,
    /// Longest wait for progress inside a frame, or for the peer to take an answer.
    pub io_timeout: Duration,
    /// Longest wait for the hello of a new connection.
    pub handshake_timeout: Duration,
    /// Longest wait for in-flight requests at shutdown.
    pub shutdown_timeout: Duration,
}

/// What every connection shares.
#[derive(Debug)]
pub struct ServerContext {
    /// The request path over the tiers.
    pub service: Service,
    /// Listener and connection settings.
    pub config: ServerConfig,
    /// `shardd <version>`.
    pub server_name: String,
    /// When the daemon started.
    pub started: Instant,
    /// Open connections, by peer and transport.
    pub slots: Arc<slots::Slots>,
    /// Where it listens, set once the listeners are bound.
    pub listen: std::sync::OnceLock<Vec<String>>,
    /// Ids for connection log spans.
    pub next_connection_id: AtomicU64,
    /// Cancelled when the daemon shuts down.
    pub shutdown: CancellationToken,
    /// Every connection and request task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// The Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Open connections at most (from `config`, changed by a reload).
    pub max_connections: std::sync::atomic::AtomicUsize,
    /// The access table in force (a reload replaces it).
    access: std::sync::RwLock<Arc<AccessTable>>,
    /// The keys TCP peers authenticate with (a reload reads them again).
    tcp_auth: std::sync::RwLock<Arc<TcpAuth>>,
    /// Which peers' refused hellos were logged lately.
    pub refusal_log: refusals::RefusalLog,
    /// The TLS acceptor in force (a reload reads its files again).
    tls_server: std::sync::RwLock<Option<Arc<crate::tls::TlsServer>>>,
}

impl ServerContext {
    /// A context for `store` (with `cache` in front of it) and `config`.
    pub fn new(
        store: Store,
        cache: Option<Cache>,
        config: ServerConfig,
        access: AccessTable,
        tcp_auth: TcpAuth,
        quotas: Arc<crate::service::quota::Quotas>,
    ) -> ServerContext {
        let service = Service::new(store.clone(), cache.clone(), config.io_timeout, quotas);
        let mut collectors = store.metrics().collectors();
        collectors.extend(service.collectors());
        let metrics = Metrics::new(collectors, cache, store.engine().name(), store.engine().fixed_buffers());
        ServerContext {
            metrics: Arc::new(metrics),
            max_connections: std::sync::atomic::AtomicUsize::new(config.max_connections),
            service,
            config,
            server_name: format!("shardd {}", env!("CARGO_PKG_VERSION")),
            started: Instant::now(),
            slots: Arc::new(slots::Slots::default()),
            listen: std::sync::OnceLock::new(),
            next_connection_id: AtomicU64::new(1),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            access: std::sync::RwLock::new(Arc::new(access)),
            tcp_auth: std::sync::RwLock::new(Arc::new(tcp_auth)),
            refusal_log: refusals::RefusalLog::default(),
            tls_server: std::sync::RwLock::new(None),
        }
    }

    /// The TLS acceptor in force.
    pub fn tls_server(&self) -> Option<Arc<crate::tls::TlsServer>> {
        self.tls_server.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `server` in force for every TLS connection from now on.
    pub fn set_tls_server(&self, server: crate::tls::TlsServer) {
        *self.tls_server.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(server));
    }

    /// How TCP peers authenticate now.
    pub fn tcp_auth(&self) -> Arc<TcpAuth> {
        self.tcp_auth.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `auth` in force for every hello from now on (connections
    /// already authenticated stay so).
    pub fn set_tcp_auth(&self, auth: TcpAuth) {
        *self.tcp_auth.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(auth);
    }

    /// The access table in force.
    pub fn access(&self) -> Arc<AccessTable> {
        self.access.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The lease limits of each connection.
    pub fn lease_limits(&self) -> LeaseLimits {
        let arena = self.service.cache().map_or(0, |c| c.arena().capacity());
        LeaseLimits {
            count: self.config.max_leases,
            bytes: self.config.max_lease_bytes.unwrap_or(arena / 2),
            timeout: self.config.lease_timeout,
        }
    }

    /// The region limits of each connection.
    pub fn region_limits(&self) -> RegionLimits {
        RegionLimits {
            count: self.config.max_regions,
            bytes: self.config.max_region_bytes,
        }
    }

    /// The limits new connections are admitted under.
    pub fn slot_limits(&self) -> slots::SlotLimits {
        slots::SlotLimits {
            max: self.max_connections.load(std::sync::atomic::Ordering::Relaxed),
            unix_reserved: self.config.unix_reserved_connections,
            per_peer: self.config.max_connections_per_peer,
        }
    }

    /// Puts `table` in force for every request from now on.
    pub fn set_access(&self, table: AccessTable) {
        *self.access.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
    }

    /// The lengths accepted in request headers.
    pub fn limits(&self) -> Limits {
        Limits {
            max_control_len: MAX_CONTROL_LEN,
            max_payload_len: self.service.store().config().max_shard_bytes,
        }
    }

    /// The daemon's status (`status` requests, and JSON over HTTP).
    pub async fn status(&self) -> StatusResponse {
        let store = self.service.store().status().await;
        StatusResponse {
            server: self.server_name.clone(),
            uptime_secs: self.started.elapsed().as_secs(),
            io_engine: self.service.store().engine().name().to_string(),
            shards: store.shards,
            bytes: store.bytes,
            quarantined: store.quarantined,
            connections: self.slots.open(),
            listen: self.listen.get().cloned().unwrap_or_default(),
            data_dirs: store.data_dirs,
            arena: self.service.cache().map(Cache::status),
        }
    }
}
