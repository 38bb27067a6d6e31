//! The daemon's configuration: embedded defaults, then the TOML file, then
//! command-line flags, validated once into a [`Config`]. Every error names
//! the key or flag at fault, and nothing starts until all of it is valid.
//!
//! The keys are documented in `docs/CONFIGURATION.md` and in the example
//! `deploy/shardd.toml`.

pub mod units;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use shardd_protocol::DEFAULT_MAX_PAYLOAD_LEN;

use crate::arena::HugePages;
use crate::cache::policy::PolicyKind;
use crate::cache::{BounceIo, CacheConfig};
use crate::io::{ALIGN, EngineKind, IoConfig};
use crate::server::ServerConfig;
use crate::store::{StoreConfig, VerifyMode};
use units::{Size, Span};

/// Where data goes when nothing else is configured.
pub const DEFAULT_DATA_DIR: &str = "./shardd-data";
/// The Unix socket when nothing else is configured.
pub const DEFAULT_SOCKET: &str = "./shardd.sock";
/// The TCP address when nothing else is configured.
pub const DEFAULT_TCP: &str = "127.0.0.1:7070";
/// Default HTTP address (metrics, health, status): loopback only.
pub const DEFAULT_HTTP: &str = "127.0.0.1:9464";

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Logging settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `shardd=debug,info`.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

/// Settings of the pinned-memory tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArenaSettings {
    /// Bytes of the arena; 0 runs without one (every fetch reads the drive).
    pub size: u64,
    /// Huge pages for it.
    pub huge_pages: HugePages,
    /// The hot tier in it.
    pub cache: CacheConfig,
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Listeners and connections.
    pub server: ServerConfig,
    /// Data directories and the data path.
    pub store: StoreConfig,
    /// The pinned-memory arena and the hot tier in it.
    pub arena: ArenaSettings,
    /// The I/O engine.
    pub io: IoConfig,
    /// Logging.
    pub log: LogConfig,
}

/// Command-line values that override the file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--data-dir`, repeatable; replaces `storage.data_dirs` when given.
    pub data_dirs: Vec<PathBuf>,
    /// `--socket PATH|off`.
    pub socket: Option<String>,
    /// `--tcp ADDR|off`.
    pub tcp: Option<String>,
    /// `--http ADDR|off`.
    pub http: Option<String>,
    /// `--io-engine auto|uring|psync`.
    pub io_engine: Option<String>,
    /// `--pinned-memory SIZE`.
    pub pinned_memory: Option<String>,
    /// `--log-level FILTER`.
    pub log_level: Option<String>,
    /// `--log-format human|json`.
    pub log_format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    server: FileServer,
    storage: FileStorage,
    arena: FileArena,
    io: FileIo,
    log: FileLog,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileArena {
    size: Option<Size>,
    huge_pages: Option<HugePages>,
    eviction: Option<PolicyKind>,
    prefetch_memory: Option<Size>,
    write_back_memory: Option<Size>,
    flush_concurrency: Option<usize>,
    bounce_io: Option<BounceIo>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileServer {
    socket: Option<String>,
    socket_mode: Option<String>,
    socket_send_buffer: Option<Size>,
    zero_copy: Option<bool>,
    tcp: Option<String>,
    http: Option<String>,
    max_connections: Option<usize>,
    max_inflight_requests: Option<u32>,
    connection_buffer_memory: Option<Size>,
    io_timeout: Option<Span>,
    handshake_timeout: Option<Span>,
    shutdown_timeout: Option<Span>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileStorage {
    data_dirs: Option<Vec<PathBuf>>,
    chunk_size: Option<Size>,
    chunks_in_flight: Option<usize>,
    min_free: Option<Size>,
    max_shard_size: Option<Size>,
    buffer_memory: Option<Size>,
    verify_on_start: Option<VerifyMode>,
    direct_io: Option<DirectIo>,
}

/// `storage.direct_io`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DirectIo {
    /// O_DIRECT where the file system allows it.
    #[default]
    Auto,
    /// Buffered I/O through the page cache.
    Off,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileIo {
    engine: Option<EngineKind>,
    queue_depth: Option<u32>,
    uring_threads: Option<usize>,
    psync_threads: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileLog {
    level: Option<String>,
    format: Option<LogFormat>,
}

fn invalid(key: &str, message: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("invalid {key}: {message}")
}

/// `off` disables an endpoint.
/// A listen address from a flag, else the file, else `default`; `off`
/// disables it. Errors name the flag or key it came from.
fn listen_address(
    flag: (&'static str, Option<String>),
    file: (&'static str, Option<String>),
    default: &str,
) -> anyhow::Result<Option<SocketAddr>> {
    let (key, text) = match (flag, file) {
        ((key, Some(text)), _) => (key, text),
        (_, (key, Some(text))) => (key, text),
        (_, (key, None)) => (key, default.to_string()),
    };
    match endpoint_or_off(text) {
        Some(addr) => addr
            .parse::<SocketAddr>()
            .map(Some)
            .map_err(|e| invalid(key, format!("{addr:?} is not an address like {default} or off ({e})"))),
        None => Ok(None),
    }
}

fn endpoint_or_off(value: String) -> Option<String> {
    (value != "off").then_some(value)
}

impl Config {
    /// Embedded defaults, overlaid by the file at `path` (if any), overlaid
    /// by `overrides`; then validated.
    pub fn load(path: Option<&Path>, overrides: Overrides) -> anyhow::Result<Config> {
        let file = match path {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("read config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| anyhow::anyhow!("config file {}: {}", path.display(), e.to_string().trim_end()))?
            }
            None => FileConfig::default(),
        };
        Config::resolve(file, overrides)
    }

    /// Parses config text (for tests and `--check-config`).
    pub fn from_toml(text: &str, overrides: Overrides) -> anyhow::Result<Config> {
        let file = toml::from_str::<FileConfig>(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        Config::resolve(file, overrides)
    }

    fn resolve(file: FileConfig, flags: Overrides) -> anyhow::Result<Config> {
        let FileConfig {
            server,
            storage,
            arena,
            io,
            log,
        } = file;

        // Endpoints: a flag wins over the file, which wins over the default.
        let (socket_key, socket) = match (flags.socket, server.socket) {
            (Some(flag), _) => ("--socket", flag),
            (None, Some(file)) => ("server.socket", file),
            (None, None) => ("server.socket", DEFAULT_SOCKET.to_string()),
        };
        let socket = endpoint_or_off(socket).map(PathBuf::from);
        if socket.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(invalid(socket_key, "empty path (use off to disable the Unix socket)"));
        }
        let tcp = listen_address(("--tcp", flags.tcp), ("server.tcp", server.tcp), DEFAULT_TCP)?;
        let http = listen_address(("--http", flags.http), ("server.http", server.http), DEFAULT_HTTP)?;
        if socket.is_none() && tcp.is_none() {
            anyhow::bail!("both the Unix socket and TCP are off: nothing would be served");
        }
        let socket_mode = match server.socket_mode {
            Some(text) => u32::from_str_radix(text.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                    invalid(
                        "server.socket_mode",
                        format!("{text:?} is not an octal mode like \"0660\""),
                    )
                })?,
            None => 0o660,
        };

        let data_dirs = if !flags.data_dirs.is_empty() {
            flags.data_dirs
        } else {
            storage
                .data_dirs
                .unwrap_or_else(|| vec![PathBuf::from(DEFAULT_DATA_DIR)])
        };
        if data_dirs.is_empty() {
            return Err(invalid("storage.data_dirs", "the list is empty"));
        }
        for (i, a) in data_dirs.iter().enumerate() {
            if data_dirs[..i].contains(a) {
                return Err(invalid("storage.data_dirs", format!("{} is listed twice", a.display())));
            }
        }
        let chunk_size = storage.chunk_size.map_or(1 << 20, |s| s.0);
        if !(64 << 10..=16 << 20).contains(&chunk_size) || !chunk_size.is_power_of_two() {
            return Err(invalid(
                "storage.chunk_size",
                format!("{chunk_size} bytes; use a power of two from 64KiB to 16MiB"),
            ));
        }
        let chunks_in_flight = storage.chunks_in_flight.unwrap_or(8);
        if !(1..=256).contains(&chunks_in_flight) {
            return Err(invalid(
                "storage.chunks_in_flight",
                format!("{chunks_in_flight}; use 1 to 256"),
            ));
        }
        let max_shard_bytes = storage.max_shard_size.map_or(DEFAULT_MAX_PAYLOAD_LEN, |s| s.0);
        if max_shard_bytes == 0 {
            return Err(invalid("storage.max_shard_size", "must be above 0"));
        }
        let buffer_memory = storage.buffer_memory.map_or(1 << 30, |s| s.0);
        let connection_buffer_memory = server.connection_buffer_memory.map_or(64 << 20, |s| s.0);
        if connection_buffer_memory < 2 * chunk_size {
            return Err(invalid(
                "server.connection_buffer_memory",
                format!(
                    "{connection_buffer_memory} bytes; it must hold at least two chunks ({} bytes)",
                    2 * chunk_size
                ),
            ));
        }
        if buffer_memory < connection_buffer_memory {
            return Err(invalid(
                "storage.buffer_memory",
                format!(
                    "{buffer_memory} bytes is less than server.connection_buffer_memory ({connection_buffer_memory})"
                ),
            ));
        }

        let arena_size = match flags.pinned_memory {
            Some(flag) => units::parse_size(&flag).map_err(|e| invalid("--pinned-memory", e))?,
            None => arena.size.map_or(1 << 30, |s| s.0),
        };
        if arena_size != 0 && arena_size < chunk_size {
            return Err(invalid(
                "arena.size",
                format!("{arena_size} bytes; use 0 (no arena) or at least one chunk ({chunk_size} bytes)"),
            ));
        }
        let write_back_memory = arena.write_back_memory.map_or(arena_size / 2, |s| s.0);
        if write_back_memory > arena_size {
            return Err(invalid(
                "arena.write_back_memory",
                format!("{write_back_memory} bytes is more than the arena ({arena_size} bytes)"),
            ));
        }
        let flush_concurrency = arena.flush_concurrency.unwrap_or(4);
        if !(1..=256).contains(&flush_concurrency) {
            return Err(invalid(
                "arena.flush_concurrency",
                format!("{flush_concurrency}; use 1 to 256"),
            ));
        }
        let arena = ArenaSettings {
            size: arena_size,
            huge_pages: arena.huge_pages.unwrap_or_default(),
            cache: CacheConfig {
                policy: arena.eviction.unwrap_or_default(),
                prefetch_memory: arena.prefetch_memory.map_or(256 << 20, |s| s.0).max(ALIGN as u64),
                write_back_memory,
                flush_concurrency,
                bounce_io: arena.bounce_io.unwrap_or_default(),
            },
        };

        let engine = match flags.io_engine {
            Some(flag) => flag.parse::<EngineKind>().map_err(|e| invalid("--io-engine", e))?,
            None => io.engine.unwrap_or_default(),
        };
        let queue_depth = io.queue_depth.unwrap_or(128);
        if !(2..=4096).contains(&queue_depth) {
            return Err(invalid("io.queue_depth", format!("{queue_depth}; use 2 to 4096")));
        }
        let uring_threads = io.uring_threads.unwrap_or(1);
        if !(1..=64).contains(&uring_threads) {
            return Err(invalid("io.uring_threads", format!("{uring_threads}; use 1 to 64")));
        }
        let psync_threads = io.psync_threads.unwrap_or(16);
        if !(1..=1024).contains(&psync_threads) {
            return Err(invalid("io.psync_threads", format!("{psync_threads}; use 1 to 1024")));
        }

        let max_connections = server.max_connections.unwrap_or(1024);
        if max_connections == 0 {
            return Err(invalid("server.max_connections", "must be above 0"));
        }
        let max_inflight_requests = server.max_inflight_requests.unwrap_or(64);
        if !(1..=65536).contains(&max_inflight_requests) {
            return Err(invalid(
                "server.max_inflight_requests",
                format!("{max_inflight_requests}; use 1 to 65536"),
            ));
        }
        let positive = |key: &str, span: Option<Span>, default: Duration| -> anyhow::Result<Duration> {
            let d = span.map_or(default, |s| s.0);
            if d.is_zero() {
                return Err(invalid(key, "must be above 0"));
            }
            Ok(d)
        };

        let level = flags
            .log_level
            .or_else(|| std::env::var("SHARDD_LOG").ok())
            .or(log.level)
            .unwrap_or_else(|| "info".to_string());
        tracing_subscriber::EnvFilter::try_new(&level).map_err(|e| invalid("log.level", format!("{level:?}: {e}")))?;
        let format = match flags.log_format.as_deref() {
            Some("human") => LogFormat::Human,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(invalid("--log-format", format!("{other:?}; use human or json")));
            }
            None => log.format.unwrap_or_default(),
        };

        Ok(Config {
            server: ServerConfig {
                socket,
                socket_mode,
                unix_send_buffer: server.socket_send_buffer.map_or(4 << 20, |s| s.0.min(1 << 30) as usize),
                zero_copy: server.zero_copy.unwrap_or(true),
                tcp,
                http,
                max_connections,
                max_inflight_requests,
                connection_buffer_memory,
                io_timeout: positive("server.io_timeout", server.io_timeout, Duration::from_secs(30))?,
                handshake_timeout: positive(
                    "server.handshake_timeout",
                    server.handshake_timeout,
                    Duration::from_secs(10),
                )?,
                shutdown_timeout: positive(
                    "server.shutdown_timeout",
                    server.shutdown_timeout,
                    Duration::from_secs(30),
                )?,
            },
            store: StoreConfig {
                data_dirs,
                chunk_size: chunk_size as u32,
                chunks_in_flight,
                min_free_bytes: storage.min_free.map_or(1 << 30, |s| s.0),
                max_shard_bytes,
                buffer_memory,
                verify_on_start: storage.verify_on_start.unwrap_or_default(),
                direct_io: storage.direct_io.unwrap_or_default() == DirectIo::Auto,
            },
            arena,
            io: IoConfig {
                engine,
                queue_depth,
                uring_threads,
                psync_threads,
            },
            log: LogConfig { level, format },
        })
    }
}

const _: () = assert!(ALIGN <= 64 << 10, "the smallest chunk size must be a multiple of ALIGN");

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        format!("{:#}", Config::from_toml(text, Overrides::default()).unwrap_err())
    }

    #[test]
    fn embedded_defaults() {
        let config = Config::from_toml("", Overrides::default()).unwrap();
        assert_eq!(config.store.data_dirs, [PathBuf::from("./shardd-data")]);
        assert_eq!(config.server.socket, Some(PathBuf::from("./shardd.sock")));
        assert_eq!(config.server.tcp, Some("127.0.0.1:7070".parse().unwrap()));
        assert_eq!(config.server.http, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(config.io.engine, EngineKind::Auto);
        assert_eq!(config.store.chunk_size, 1 << 20);
    }

    /// The example config documents every key with its default value.
    #[test]
    fn the_example_config_spells_out_the_defaults() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/shardd.toml");
        let from_file = Config::load(Some(&example), Overrides::default()).unwrap();
        assert_eq!(from_file, Config::from_toml("", Overrides::default()).unwrap());
        let text = std::fs::read_to_string(&example).unwrap();
        for key in [
            "http",
            "socket_mode",
            "socket_send_buffer",
            "max_connections",
            "max_inflight_requests",
            "connection_buffer_memory",
            "io_timeout",
            "handshake_timeout",
            "shutdown_timeout",
            "data_dirs",
            "chunk_size",
            "chunks_in_flight",
            "min_free",
            "max_shard_size",
            "buffer_memory",
            "verify_on_start",
            "engine",
            "queue_depth",
            "uring_threads",
            "psync_threads",
            "level",
            "format",
        ] {
            assert!(text.contains(&format!("\n{key} = ")), "deploy/shardd.toml lacks {key}");
        }
    }

    #[test]
    fn file_values_and_flags_that_override_them() {
        let text = r#"
            [server]
            tcp = "127.0.0.1:9000"
            socket = "/run/shardd/shardd.sock"
            [storage]
            data_dirs = ["/nvme0/shardd", "/nvme1/shardd"]
            chunk_size = "4MiB"
            verify_on_start = "full"
            [io]
            engine = "psync"
        "#;
        let config = Config::from_toml(text, Overrides::default()).unwrap();
        assert_eq!(config.store.data_dirs.len(), 2);
        assert_eq!(config.store.chunk_size, 4 << 20);
        assert_eq!(config.store.verify_on_start, VerifyMode::Full);
        assert_eq!(config.io.engine, EngineKind::Psync);
        let flags = Overrides {
            data_dirs: vec![PathBuf::from("/scratch")],
            tcp: Some("off".into()),
            io_engine: Some("uring".into()),
            ..Overrides::default()
        };
        let config = Config::from_toml(text, flags).unwrap();
        assert_eq!(config.store.data_dirs, [PathBuf::from("/scratch")]);
        assert_eq!(config.server.tcp, None);
        assert_eq!(config.io.engine, EngineKind::Uring);
        assert_eq!(config.server.socket, Some(PathBuf::from("/run/shardd/shardd.sock")));
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("[storage]\nchunk_size = \"3000\"").contains("storage.chunk_size"));
        assert!(err("[storage]\nchunk_size = \"1 parsec\"").contains("unknown size unit"));
        assert!(err("[server]\ntcp = \"localhost\"").contains("server.tcp"));
        assert!(err("[server]\nhttp = \"localhost\"").contains("server.http"));
        assert!(err("[server]\nsocket_mode = \"999\"").contains("server.socket_mode"));
        assert!(err("[server]\nio_timeout = \"30\"").contains("needs a unit"));
        assert!(err("[io]\nengine = \"aio\"").contains("engine"));
        assert!(err("[io]\nqueue_depth = 1").contains("io.queue_depth"));
        assert!(err("[storage]\ndata_dirs = []").contains("storage.data_dirs"));
        assert!(err("[storage]\ndata_dirs = [\"/a\", \"/a\"]").contains("listed twice"));
        assert!(err("[storage]\nbogus = 1").contains("bogus"));
        assert!(err("[server]\ntcp = \"off\"\nsocket = \"off\"").contains("nothing would be served"));
        assert!(err("[log]\nlevel = \"[[[\"").contains("log.level"));
        let e = Config::from_toml(
            "",
            Overrides {
                tcp: Some("nonsense".into()),
                ..Overrides::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("--tcp"), "{e}");
    }
}
