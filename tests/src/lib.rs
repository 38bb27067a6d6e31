//! Test harness: start real daemons on temp dirs and ephemeral ports, in
//! this process, on either I/O engine, and reach them over either transport.
//!
//! Every test daemon accepts one key on TCP, the same for all daemons of a
//! test process (as the nodes of one cluster share theirs): [`test_key`].
//! Its clients ([`TestDaemon::options`]) authenticate with it; a test of
//! other keys writes its own `[auth]` (or `auth = "none"`) in `extra`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use shardd::Daemon;
use shardd::config::{Config, Listen, Overrides};
use shardd::io::{EngineKind, IoEngine};
use shardd_client::{AuthKey, Client, ClientOptions};

pub use shardd::ctl::bench::pattern;

pub mod ext4;
pub mod raw;
pub use raw::RawClient;

/// An I/O engine and a transport to run a test on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    /// Engine of the daemon.
    pub engine: EngineKind,
    /// Whether the client uses TCP (else the Unix socket).
    pub tcp: bool,
    /// Over the Unix socket: whether the client maps the arena (zero copy).
    pub zero_copy: bool,
}

/// The key every test daemon of this process accepts on TCP (unless the
/// test configures `[auth]` itself).
pub fn test_key() -> &'static AuthKey {
    static KEY: std::sync::OnceLock<AuthKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| AuthKey::generate("tests").expect("a random key"))
}

/// Client options that authenticate with [`test_key`].
pub fn client_options() -> ClientOptions {
    ClientOptions {
        auth_key: Some(test_key().clone()),
        ..ClientOptions::default()
    }
}

/// Says that part of a test was skipped, and why, where `cargo test` shows
/// it even when the test passes (its capture takes only `print!` and
/// `eprint!`, not writes to the standard error handle).
pub fn skipped(reason: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {reason}");
}

/// The engines this machine can run; io_uring is skipped, with a printed
/// reason, where the kernel or sandbox refuses it.
pub fn engines() -> Vec<EngineKind> {
    match IoEngine::uring_available() {
        Ok(()) => vec![EngineKind::Uring, EngineKind::Psync],
        Err(e) => {
            skipped(format!("the io_uring engine: io_uring is unavailable here ({e})"));
            vec![EngineKind::Psync]
        }
    }
}

/// Every engine with every transport: the Unix socket with zero-copy
/// fetches, the Unix socket with copying fetches, and TCP.
pub fn setups() -> Vec<Setup> {
    engines()
        .into_iter()
        .flat_map(|engine| {
            [(false, true), (false, false), (true, false)].map(|(tcp, zero_copy)| Setup { engine, tcp, zero_copy })
        })
        .collect()
}

/// A daemon in this process, on its own temp dir.
#[derive(Debug)]
pub struct TestDaemon {
    daemon: Option<Daemon>,
    config: Config,
    dir: tempfile::TempDir,
    /// The TCP address it last listened on.
    tcp_addr: Option<std::net::SocketAddr>,
}

impl TestDaemon {
    /// Starts a daemon with `engine` and test-friendly limits; `extra` is
    /// TOML appended to the config (e.g. `[server]\nio_timeout = "1s"`).
    pub async fn start(engine: EngineKind, extra: &str) -> TestDaemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = test_config(dir.path(), engine, extra);
        let daemon = Daemon::start(config.clone()).await.expect("daemon starts");
        TestDaemon {
            tcp_addr: daemon.tcp_addr(),
            daemon: Some(daemon),
            config,
            dir,
        }
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("daemon is running")
    }

    /// The temp dir holding data dirs and the socket.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `unix://...` of the socket.
    pub fn unix_endpoint(&self) -> String {
        format!("unix://{}", self.daemon().socket_path().expect("socket").display())
    }

    /// `http://127.0.0.1:PORT` of metrics, health and status.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.daemon().http_addr().expect("http"))
    }

    /// `tcp://127.0.0.1:PORT`.
    pub fn tcp_endpoint(&self) -> String {
        format!("tcp://{}", self.daemon().tcp_addr().expect("tcp"))
    }

    /// `tls://127.0.0.1:PORT`, when `[tls]` is configured.
    pub fn tls_endpoint(&self) -> String {
        format!("tls://{}", self.daemon().tls_addr().expect("tls"))
    }

    /// The endpoint for `tcp` or not.
    pub fn endpoint(&self, tcp: bool) -> String {
        if tcp { self.tcp_endpoint() } else { self.unix_endpoint() }
    }

    /// Client options that authenticate with the key this daemon accepts.
    pub fn options(&self) -> ClientOptions {
        client_options()
    }

    /// The key file in its dir that holds [`test_key`].
    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("tests.key")
    }

    /// A connected client (zero copy over the Unix socket).
    pub async fn client(&self, tcp: bool) -> Client {
        Client::connect_with(&self.endpoint(tcp), self.options())
            .await
            .expect("client connects")
    }

    /// A client connected the way `setup` says.
    pub async fn connect(&self, setup: Setup) -> Client {
        let options = ClientOptions {
            zero_copy: setup.zero_copy,
            ..self.options()
        };
        let client = Client::connect_with(&self.endpoint(setup.tcp), options)
            .await
            .expect("client connects");
        assert_eq!(client.zero_copy(), setup.zero_copy && !setup.tcp, "{setup:?}");
        client
    }

    /// Flips every bit of the byte at `offset` of the arena's copy of a
    /// shard, as failing memory would; whether the arena holds one.
    pub fn corrupt_arena_copy(&self, namespace: &str, key: &str, offset: u64) -> bool {
        self.daemon().corrupt_arena_copy(namespace, key, offset)
    }

    /// What a client that maps the arena reads at `offset`.
    pub fn arena_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        self.daemon().arena_bytes(offset, len).expect("a shared arena")
    }

    /// The Unix socket's path.
    pub fn socket_path(&self) -> PathBuf {
        self.daemon().socket_path().expect("socket").to_path_buf()
    }

    /// Stops gracefully.
    pub async fn stop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.stop().await.expect("daemon stops");
        }
    }

    async fn start_again(&mut self) {
        let daemon = Daemon::start(self.config.clone()).await.expect("daemon restarts");
        self.tcp_addr = daemon.tcp_addr();
        self.daemon = Some(daemon);
    }

    /// Stops and starts again on the same data dir (a new TCP port).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }

    /// Stops and starts again on the same data dir, socket and TCP port, as
    /// a daemon restarted by its service manager comes back.
    pub async fn restart_in_place(&mut self) {
        self.stop().await;
        self.config.server.tcp = self.tcp_addr;
        self.start_again().await;
    }

    /// Applies `extra` as a SIGHUP applies a changed file: what it applied,
    /// and what failed or needs a restart.
    pub fn reload_with(&self, extra: &str) -> shardd::daemon::Reloaded {
        let config = test_config(self.dir.path(), self.config.io.engine, extra);
        self.daemon().reload(&config)
    }

    /// Restarts with a changed config (same dirs).
    pub async fn restart_with(&mut self, extra: &str) {
        self.stop().await;
        self.config = test_config(self.dir.path(), self.config.io.engine, extra);
        self.start_again().await;
    }
}

fn test_config(dir: &Path, engine: EngineKind, extra: &str) -> Config {
    // Test dirs live on whatever disk the machine has: keep no reserve.
    let mut text = if extra.contains("min_free") {
        extra.to_string()
    } else if extra.contains("[storage]\n") {
        extra.replacen("[storage]\n", "[storage]\nmin_free = 0\n", 1)
    } else {
        format!("{extra}\n[storage]\nmin_free = 0\n")
    };
    // A modest arena per test daemon (many run at once) unless the test sets one.
    if !text.contains("[arena]") {
        text.push_str("\n[arena]\nsize = \"128MiB\"\n");
    }
    // The process's test key, unless the test chooses how TCP peers
    // authenticate.
    if !text.contains("[auth]") && !text.contains("auth = ") {
        let key_file = dir.join("tests.key");
        if !key_file.exists() {
            test_key().create(&key_file).expect("write the test key");
        }
        text.push_str(&format!("\n[auth]\nkeys = [{:?}]\n", key_file.display().to_string()));
    }
    let loopback = Listen::At(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let overrides = Overrides {
        data_dirs: vec![dir.join("data")],
        socket: Some(Listen::At(dir.join("shardd.sock"))),
        tcp: Some(loopback.clone()),
        http: Some(loopback),
        io_engine: Some(engine),
        ..Overrides::default()
    };
    Config::from_toml(&text, overrides).expect("test config is valid")
}

/// Waits until `check` holds, up to `limit`.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A GET of `url` (`http://HOST:PORT/PATH`) over a plain HTTP/1.1
/// connection: the status code and the body. Panics if there is no answer.
pub async fn http_get(url: &str) -> (u16, String) {
    try_http_get(url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// Like [`http_get`], with an error where nothing answers.
pub async fn try_http_get(url: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let rest = url.strip_prefix("http://").ok_or_else(|| bad("not an http:// URL"))?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8(response).map_err(|_| bad("the answer is not text"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Err(bad("a chunked body (this helper reads only bodies with a length)"));
    }
    Ok((status, body.to_string()))
}

/// The value of the sample `series` (`name{label="value",...}` exactly as
/// the text format writes it: labels sorted by name) in Prometheus text
/// `text`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Flips one payload byte of a stored shard file (found by its key), as a
/// failing drive would.
pub fn flip_payload_byte(data_dir: &std::path::Path, key: &str, at: usize) {
    for file in files_under(&data_dir.join("shards")) {
        let mut bytes = std::fs::read(&file).unwrap();
        let needle = key.as_bytes();
        if bytes[..4096].windows(needle.len()).any(|w| w == needle) {
            let payload_offset = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
            bytes[payload_offset + at] ^= 0x20;
            std::fs::write(&file, bytes).unwrap();
            return;
        }
    }
    panic!("no shard file for {key}");
}
