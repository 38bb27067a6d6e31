//! The daemon's life: start the I/O engine, recover the store, bind the
//! listeners, serve, and shut down gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinHandle;

use crate::access::AccessTable;
use crate::arena::{Arena, ArenaConfig};
use crate::auth::TcpAuth;
use crate::cache::Cache;
use crate::cache::keep::KeptShard;
use crate::config::Config;
use crate::http::HttpServer;
use crate::io::IoEngine;
use crate::logging::LogLevel;
use crate::server::ServerContext;
use crate::server::listener::Listeners;
use crate::service::quota::Quotas;
use crate::store::Store;
use crate::tls::TlsServer;
use crate::{keep, notify};

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    ctx: Arc<ServerContext>,
    tcp_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    socket_path: Option<PathBuf>,
    acceptor: JoinHandle<()>,
    http: Option<HttpServer>,
    watchdog: Option<JoinHandle<()>>,
    /// The configuration in force (a reload updates what it applies).
    config: std::sync::Mutex<Config>,
}

/// The file in the first data directory that keeps quotas set by admins.
const QUOTA_FILE: &str = "namespace-quotas.json";

/// Whether some listener's peers prove keys: plain TCP, or TLS without
/// client certificates.
fn needs_keys(config: &Config) -> bool {
    config.server.tcp.is_some() || config.tls.as_ref().is_some_and(|t| t.client_ca.is_none())
}

/// Says once what the access table lets peers do.
fn log_access(table: &AccessTable) {
    if table.is_open() {
        tracing::warn!(
            "no access rules ([access] in the configuration): every peer the Unix socket admits may read, \
             write and delete every namespace, and so may every TCP peer; see docs/SECURITY.md"
        );
    } else {
        tracing::info!(
            rules = table.rules.len(),
            "access table in force: peers get only the rights its rules grant (root and the daemon's user all)"
        );
    }
}

/// The arena: the one the previous daemon kept, if systemd passed it back
/// and this configuration can use it (with the shards it says are in it),
/// else a new one. Says why a kept arena is not used.
fn start_arena(config: &Config) -> anyhow::Result<(Option<Arena>, Option<Vec<KeptShard>>)> {
    let handed = keep::take_handed();
    let kept = config.arena.keep_on_restart.keeps();
    let arena_config = ArenaConfig {
        size: config.arena.size,
        max_block: config.store.chunk_size,
        huge_pages: config.arena.huge_pages,
        kept,
    };
    let cold = |why: &str| tracing::warn!("starting with a cold arena: {why}");
    let adopted = match handed {
        None => None,
        Some(Err(why)) => {
            cold(&why);
            None
        }
        Some(Ok(_)) if config.arena.size == 0 => {
            cold("systemd passed back a kept arena, but arena.size is 0");
            None
        }
        Some(Ok(_)) if !kept => {
            cold("systemd passed back a kept arena, but arena.keep_on_restart is off");
            None
        }
        Some(Ok(handed)) => match keep::adopt(handed, arena_config) {
            Ok(adopted) => Some(adopted),
            Err(why) => {
                cold(&why);
                None
            }
        },
    };
    if let Some((arena, shards)) = adopted {
        return Ok((Some(arena), Some(shards)));
    }
    if config.arena.size == 0 {
        return Ok((None, None));
    }
    let arena = Arena::create(arena_config).context("create the pinned-memory arena")?;
    if kept {
        tracing::info!(
            "the arena is kept across restarts (arena.keep_on_restart): its memfd is sealed against \
             resizing, and against writes only by its mode (0600, the daemon's user); see docs/SECURITY.md"
        );
    }
    Ok((Some(arena), None))
}

/// Takes back the shards of an adopted arena and says how it went.
fn adopt_shards(cache: &Cache, kept: Vec<KeptShard>) {
    let started = std::time::Instant::now();
    let adopted = cache.adopt(kept);
    for (shard, why) in adopted.discarded.iter().take(10) {
        tracing::info!(shard = %shard, "not taken back from the kept arena: {why}");
    }
    tracing::info!(
        shards = adopted.shards,
        bytes = adopted.bytes,
        discarded = adopted.discarded.len(),
        seconds = started.elapsed().as_secs_f64(),
        "warm restart: {} shards ({} bytes) served from the arena the previous daemon kept, each checked \
         against its drive; {} left out",
        adopted.shards,
        adopted.bytes,
        adopted.discarded.len()
    );
}

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Settings applied, as `key: old -> new`.
    pub applied: Vec<String>,
    /// Sections that changed but take effect only after a restart.
    pub need_restart: Vec<&'static str>,
    /// What could not be applied, and why (the running settings stay).
    pub failed: Vec<String>,
}

impl Daemon {
    /// Starts everything; returns once the index is recovered and the
    /// listeners are bound, i.e. when the daemon is ready to serve.
    pub async fn start(config: Config) -> anyhow::Result<Daemon> {
        let (arena, kept_shards) = start_arena(&config)?;
        if let Some(Err(reason)) = arena.as_ref().filter(|_| config.server.zero_copy).map(Arena::shared_fd) {
            tracing::warn!("zero-copy fetches are off: {reason}; local clients get copies over the socket");
        }
        // Registering memory with io_uring pins (faults in) all of it: an
        // arena still being populated is registered once it is resident.
        let resident = arena.as_ref().filter(|a| a.populated_bytes() >= a.capacity());
        let engine =
            Arc::new(IoEngine::start(&config.io, resident.map(Arena::fixed_memory)).context("start the I/O engine")?);
        tracing::info!(engine = engine.name(), "I/O engine started");
        if let Some(arena) = arena.as_ref().filter(|_| resident.is_none()) {
            let (arena, engine) = (arena.clone(), engine.clone());
            tokio::spawn(async move {
                arena.populated().await;
                engine.register_fixed(arena.fixed_memory());
            });
        }
        let store = Store::open(config.store.clone(), engine)
            .await
            .context("open the shard store")?;
        // Quotas set by admin requests are kept in the first data directory.
        let quota_file = store.data_dir_paths().first().map(|dir| dir.join(QUOTA_FILE));
        let quotas = Arc::new(Quotas::load(config.namespaces.clone(), quota_file)?);
        let cache = arena.map(|arena| Cache::new(arena, store.clone(), config.arena.cache, quotas.clone()));
        if let (Some(cache), Some(kept)) = (&cache, kept_shards) {
            adopt_shards(cache, kept);
        }
        log_access(&config.access);
        let tcp_auth = match needs_keys(&config) {
            true => TcpAuth::load(&config.auth, &config.store.data_dirs[0])?,
            false => TcpAuth::None,
        };
        let tls_server = config.tls.as_ref().map(TlsServer::load).transpose()?;
        let ctx = Arc::new(ServerContext::new(
            store,
            cache,
            config.server.clone(),
            config.access.clone(),
            tcp_auth,
            quotas,
        ));
        if let Some(server) = tls_server {
            ctx.set_tls_server(server);
        }
        if let Some(every) = ctx.service.expiry_interval() {
            let sweeper = ctx.clone();
            ctx.tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = sweeper.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(every) => {}
                    }
                    sweeper.service.expire_idle_namespaces().await;
                }
            });
        }
        // HTTP first: it answers /healthz at once and /readyz "not ready"
        // until the listeners are up, and a failure here leaves nothing bound.
        let http = match config.server.http {
            Some(addr) => {
                let http = HttpServer::start(ctx.clone(), addr).await?;
                tracing::info!(http = %http.addr(), "serving metrics and health");
                Some(http)
            }
            None => None,
        };
        let listeners = match Listeners::bind(&ctx).await {
            Ok(listeners) => listeners,
            Err(e) => {
                if let Some(http) = http {
                    http.stop().await;
                }
                return Err(e);
            }
        };
        let tcp_addr = listeners.tcp_addr();
        let tls_addr = listeners.tls_addr();
        let socket_path = listeners.socket_path().map(|p| p.to_path_buf());
        let listen = socket_path
            .iter()
            .map(|p| format!("unix://{}", p.display()))
            .chain(tcp_addr.map(|a| format!("tcp://{a}")))
            .chain(tls_addr.map(|a| format!("tls://{a}")))
            .collect();
        let _ = ctx.listen.set(listen);
        // Bound: this start serves, and a kept arena's index is out of date
        // from here on. Told before the "serving" line, so that whoever
        // reads that line finds systemd told.
        keep::release_handed();
        tracing::info!(
            socket = socket_path.as_ref().map(|p| p.display().to_string()),
            tcp = tcp_addr.map(|a| a.to_string()),
            tls = tls_addr.map(|a| a.to_string()),
            data_dirs = ?config.store.data_dirs,
            "serving"
        );
        let acceptor = tokio::spawn(listeners.accept_until_shutdown(ctx.clone()));
        notify::ready();
        let watchdog = notify::watchdog();
        Ok(Daemon {
            ctx,
            tcp_addr,
            tls_addr,
            socket_path,
            acceptor,
            http,
            watchdog,
            config: std::sync::Mutex::new(config),
        })
    }

    /// Applies what can change safely while running from `new` (the
    /// connection limit; the log level is the caller's, see
    /// [`crate::logging::LogLevel`]) and says what else changed.
    pub fn reload(&self, new: &Config) -> Reloaded {
        let mut current = self.config.lock().unwrap_or_else(|p| p.into_inner());
        let mut reloaded = Reloaded::default();
        let (old_max, new_max) = (current.server.max_connections, new.server.max_connections);
        if old_max != new_max {
            self.ctx
                .max_connections
                .store(new_max, std::sync::atomic::Ordering::Relaxed);
            current.server.max_connections = new_max;
            reloaded
                .applied
                .push(format!("server.max_connections: {old_max} -> {new_max}"));
        }
        if current.access != new.access {
            self.ctx.set_access(new.access.clone());
            current.access = new.access.clone();
            reloaded
                .applied
                .push(format!("access: {} rules", new.access.rules.len()));
            log_access(&new.access);
        }
        // Certificate and key files are read again on every reload, changed
        // or not: they are rotated by replacing or adding files.
        if let Some(tls) = current.tls.as_ref().filter(|_| current.tls == new.tls) {
            match TlsServer::load(tls) {
                Ok(server) => {
                    self.ctx.set_tls_server(server);
                    reloaded.applied.push("tls: certificate files read again".to_string());
                }
                Err(e) => reloaded
                    .failed
                    .push(format!("tls: {e:#}; the certificate in force stays")),
            }
        }
        if current.tls != new.tls {
            reloaded.need_restart.push("tls");
        }
        if needs_keys(&current) {
            match TcpAuth::load(&new.auth, &current.store.data_dirs[0]) {
                Ok(auth) => {
                    self.ctx.set_tcp_auth(auth);
                    current.auth = new.auth.clone();
                    reloaded.applied.push("auth: keys read again".to_string());
                }
                Err(e) => reloaded.failed.push(format!("auth: {e:#}; the keys in force stay")),
            }
        }
        if current.log.level != new.log.level {
            reloaded
                .applied
                .push(format!("log.level: {:?} -> {:?}", current.log.level, new.log.level));
            current.log.level = new.log.level.clone();
        }
        if current.server != new.server {
            reloaded.need_restart.push("server");
        }
        if current.store != new.store {
            reloaded.need_restart.push("storage");
        }
        if current.arena != new.arena {
            reloaded.need_restart.push("arena");
        }
        if current.io != new.io {
            reloaded.need_restart.push("io");
        }
        if current.log.format != new.log.format {
            reloaded.need_restart.push("log.format");
        }
        reloaded
    }

    /// The HTTP address being served (metrics, health, status).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(HttpServer::addr)
    }

    /// The TCP address being served (with the real port when 0 was asked).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The TLS address being served.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The Unix socket being served.
    pub fn socket_path(&self) -> Option<&std::path::Path> {
        self.socket_path.as_deref()
    }

    /// The store (for tests and tools in the same process).
    pub fn store(&self) -> &Store {
        self.ctx.service.store()
    }

    /// Flips every bit of the byte at `offset` of the arena's copy of a
    /// shard, as failing memory would; returns whether the arena holds one.
    /// For tests of how the daemon and its clients notice.
    #[cfg(feature = "testing")]
    pub fn corrupt_arena_copy(&self, namespace: &str, key: &str, offset: u64) -> bool {
        let (Ok(namespace), Ok(key)) = (
            shardd_protocol::Namespace::new(namespace),
            shardd_protocol::Key::new(key),
        ) else {
            return false;
        };
        self.ctx
            .service
            .cache()
            .is_some_and(|cache| cache.corrupt_for_tests(&namespace, &key, offset))
    }

    /// What a client that maps the arena reads at `offset`: `len` bytes
    /// (`None` without an arena that can be shared). For tests.
    #[cfg(feature = "testing")]
    pub fn arena_bytes(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let cache = self.ctx.service.cache()?;
        let fd = cache.arena().shared_fd().ok()?.try_clone_to_owned().ok()?;
        let mut bytes = vec![0u8; len];
        std::fs::File::from(fd).read_exact_at(&mut bytes, offset).ok()?;
        Some(bytes)
    }

    /// Graceful shutdown: stop accepting and reading new requests, let
    /// in-flight requests finish (at most `shutdown_timeout`), flush
    /// write-back shards, then stop the HTTP endpoint.
    pub async fn stop(self) -> anyhow::Result<()> {
        tracing::info!("shutting down: no new requests; finishing those in flight");
        notify::stopping();
        self.ctx.shutdown.cancel();
        let _ = self.acceptor.await;
        self.ctx.tasks.close();
        let budget = self.ctx.config.shutdown_timeout;
        if tokio::time::timeout(budget, self.ctx.tasks.wait()).await.is_err() {
            tracing::warn!(
                remaining = self.ctx.tasks.len(),
                "requests still running after {budget:?}; stopping without them"
            );
        }
        if let Some(cache) = self.ctx.service.cache() {
            cache.stop(budget).await;
        }
        self.ctx.service.store().sync_scratch().await;
        // An arena made to be kept (arena.keep_on_restart) is handed over.
        if let Some(cache) = self.ctx.service.cache().filter(|c| c.arena().kept_fd().is_some()) {
            match keep::hand_over(cache) {
                Ok(handed) => tracing::info!("{handed}"),
                Err(why) => tracing::warn!("the arena is not kept for the next start: {why}"),
            }
        }
        // Metrics and health last, so the stop can be watched to its end.
        if let Some(http) = self.http {
            http.stop().await;
        }
        if let Some(watchdog) = self.watchdog {
            watchdog.abort();
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// How a running daemon reads its configuration again on SIGHUP.
pub struct Reloader {
    /// Reads the configuration: the same file and flags as at start.
    pub load: Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>,
    /// The log filter to change when `log.level` changes (`None` when the
    /// caller set up logging itself).
    pub log_level: Option<LogLevel>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").field("log_level", &self.log_level).finish()
    }
}

impl Reloader {
    /// Reads the configuration again and applies what can change safely;
    /// says what it applied and what needs a restart.
    fn reload(&self, daemon: &Daemon) {
        tracing::info!("SIGHUP received: reloading the configuration");
        let new = match (self.load)() {
            Ok(new) => new,
            Err(e) => {
                tracing::error!("reload failed, keeping the running configuration: {e:#}");
                return;
            }
        };
        let reloaded = daemon.reload(&new);
        if reloaded.applied.iter().any(|a| a.starts_with("log.level"))
            && let Some(log_level) = &self.log_level
            && let Err(e) = log_level.set(&new.log.level)
        {
            tracing::error!("reload could not change the log level: {e:#}");
        }
        if reloaded.applied.is_empty() {
            tracing::info!("reloaded: nothing that can change while running has changed");
        } else {
            tracing::info!(applied = ?reloaded.applied, "reloaded");
        }
        for failure in &reloaded.failed {
            tracing::error!("reload could not apply {failure}");
        }
        if !reloaded.need_restart.is_empty() {
            tracing::warn!(
                sections = ?reloaded.need_restart,
                "these settings changed but take effect only after a restart"
            );
        }
    }
}

/// Runs the daemon until `shutdown` completes, reloading its configuration
/// with `reloader` on every SIGHUP, then stops it gracefully. The `shardd`
/// binary runs this with SIGINT and SIGTERM as `shutdown`.
pub async fn run(config: Config, reloader: Reloader, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let daemon = Daemon::start(config).await?;
    tokio::pin!(shutdown);
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(e) => {
            tracing::warn!(error = %e, "cannot install the SIGHUP handler; reloading is off");
            None
        }
    };
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(()) = async { hangup.as_mut()?.recv().await } => reloader.reload(&daemon),
        }
    }
    daemon.stop().await
}

/// Completes on the first SIGINT or SIGTERM; a second one exits at once.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
}
