//! The daemon's configuration: embedded defaults, then the TOML file, then
//! command-line flags, validated once into a [`Config`]. Every error names
//! the key or flag at fault, and nothing starts until all of it is valid.
//!
//! The keys are documented in `docs/CONFIGURATION.md` and in the example
//! `deploy/shardd.toml`.

//! # Layout
//!
//! One module per section, each with its part of the file and the checks of
//! its keys (a section that depends on another gets that one's validated
//! settings):
//!
//! * [`storage`]: `[storage]`, data directories and the data path.
//! * [`server`]: `[server]`, listeners and connections.
//! * [`arena`]: `[arena]`, the pinned-memory arena and the hot tier.
//! * [`io`]: `[io]`, the I/O engine.
//! * [`log`]: `[log]`, the log filter and format.
//! * [`access`]: `[access]`, the access table.
//! * [`auth`]: `[auth]`, the keys TCP peers authenticate with.
//! * [`tls`]: `[tls]`, the TLS listener.
//! * [`namespaces`]: `[[namespaces]]`, quotas and idle lifetimes.
//! * [`units`]: sizes and durations as written in the file and flags.

pub mod access;
pub mod arena;
pub mod auth;
pub mod io;
pub mod log;
pub mod namespaces;
pub mod server;
pub mod storage;
pub mod tls;
pub mod units;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::Context;
use serde::Deserialize;

use crate::access::AccessTable;
use crate::arena::HugePages;
use crate::cache::CacheConfig;
use crate::io::{ALIGN, EngineKind, IoConfig};
use crate::server::ServerConfig;
use crate::store::StoreConfig;

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

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?}; use human or json")),
        }
    }
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
    /// Whether to hand it to systemd at a stop and take it back at the
    /// next start (see [`crate::keep`]).
    pub keep_on_restart: KeepOnRestart,
    /// The hot tier in it.
    pub cache: CacheConfig,
}

/// `arena.keep_on_restart`: `true`, `false`, or `"auto"` (the default):
/// when systemd started the daemon as a notify service with room in its
/// file descriptor store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeepOnRestart {
    /// When `$NOTIFY_SOCKET` is set and `$FDSTORE` (systemd 254 and later)
    /// is not 0.
    #[default]
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

impl KeepOnRestart {
    /// Whether the arena is kept, in this process's environment.
    pub fn keeps(self) -> bool {
        match self {
            KeepOnRestart::On => true,
            KeepOnRestart::Off => false,
            KeepOnRestart::Auto => {
                std::env::var_os("NOTIFY_SOCKET").is_some()
                    && std::env::var("FDSTORE").map_or(true, |max| max.trim() != "0")
            }
        }
    }
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
    /// Who may do what.
    pub access: AccessTable,
    /// How TCP peers authenticate.
    pub auth: auth::AuthConfig,
    /// The TLS listener, if any.
    pub tls: Option<tls::TlsConfig>,
    /// Quotas and idle lifetimes of namespaces.
    pub namespaces: crate::service::quota::NamespacePolicies,
}

/// An endpoint that can be turned off (`off`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen<T> {
    /// Disabled.
    Off,
    /// Served at this address or path.
    At(T),
}

impl FromStr for Listen<SocketAddr> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Listen::Off),
            addr => addr
                .parse()
                .map(Listen::At)
                .map_err(|e| format!("{addr:?} is not an address like {DEFAULT_TCP}, or off ({e})")),
        }
    }
}

impl FromStr for Listen<PathBuf> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "off" => Listen::Off,
            path => Listen::At(PathBuf::from(path)),
        })
    }
}

/// Command-line values that override the file, typed (the command line
/// parses them; see [`crate::cli`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--data-dir`, repeatable; replaces `storage.data_dirs` when given.
    pub data_dirs: Vec<PathBuf>,
    /// `--socket PATH|off`.
    pub socket: Option<Listen<PathBuf>>,
    /// `--tcp ADDR|off`.
    pub tcp: Option<Listen<SocketAddr>>,
    /// `--http ADDR|off`.
    pub http: Option<Listen<SocketAddr>>,
    /// `--io-engine auto|uring|psync`.
    pub io_engine: Option<EngineKind>,
    /// `--pinned-memory SIZE`, in bytes.
    pub pinned_memory: Option<u64>,
    /// `--log-level FILTER`.
    pub log_level: Option<String>,
    /// `--log-format human|json`.
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    server: server::FileServer,
    storage: storage::FileStorage,
    arena: arena::FileArena,
    io: io::FileIo,
    log: log::FileLog,
    access: access::FileAccess,
    auth: Option<auth::FileAuth>,
    tls: tls::FileTls,
    namespaces: Vec<namespaces::FileNamespace>,
}

fn invalid(key: &str, message: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("invalid {key}: {message}")
}

/// `value` of `key` if it lies in `range`, else an error naming the key and
/// the range.
fn within<T>(key: &str, value: T, range: std::ops::RangeInclusive<T>) -> anyhow::Result<T>
where
    T: PartialOrd + std::fmt::Display,
{
    if range.contains(&value) {
        return Ok(value);
    }
    Err(invalid(
        key,
        format!("{value}; use {} to {}", range.start(), range.end()),
    ))
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

    /// Validates one section at a time: storage first, since the server's
    /// buffers and the arena are sized against its chunks.
    fn resolve(file: FileConfig, flags: Overrides) -> anyhow::Result<Config> {
        let store = file.storage.resolve(&flags)?;
        let server = file.server.resolve(&flags, &store)?;
        let arena = file.arena.resolve(&flags, &store)?;
        let io = file.io.resolve(&flags)?;
        let log = file.log.resolve(&flags)?;
        let access = file.access.resolve()?;
        let tls = file.tls.resolve()?;
        let server = ServerConfig {
            tls: tls.as_ref().map(|t| t.listen),
            ..server
        };
        if server.socket.is_none() && server.tcp.is_none() && server.tls.is_none() {
            anyhow::bail!("the Unix socket and TCP are off and [tls] is not set: nothing would be served");
        }
        // Peers that show no certificate prove a key: on plain TCP, and on
        // TLS unless client certificates are required.
        let key_listeners = [
            server.tcp.map(|addr| ("server.tcp", addr)),
            tls.as_ref()
                .filter(|t| t.client_ca.is_none())
                .map(|t| ("tls.listen", t.listen)),
        ];
        let auth = auth::resolve(file.auth, key_listeners.into_iter().flatten())?;
        let namespaces = namespaces::resolve(file.namespaces)?;
        Ok(Config {
            server,
            store,
            arena,
            io,
            log,
            access,
            auth,
            tls,
            namespaces,
        })
    }
}

const _: () = assert!(ALIGN <= 64 << 10, "the smallest chunk size must be a multiple of ALIGN");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::VerifyMode;

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
            "keep_on_restart",
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
    fn keeping_the_arena_is_true_false_or_auto() {
        let keep = |value: &str| {
            Config::from_toml(&format!("[arena]\nkeep_on_restart = {value}"), Overrides::default())
                .map(|c| c.arena.keep_on_restart)
        };
        assert_eq!(keep("true").unwrap(), KeepOnRestart::On);
        assert_eq!(keep("false").unwrap(), KeepOnRestart::Off);
        assert_eq!(keep("\"auto\"").unwrap(), KeepOnRestart::Auto);
        let why = format!("{:#}", keep("\"sometimes\"").unwrap_err());
        assert!(
            why.contains("arena.keep_on_restart") && why.contains("\"auto\""),
            "{why}"
        );
        assert_eq!(
            Config::from_toml("", Overrides::default())
                .unwrap()
                .arena
                .keep_on_restart,
            KeepOnRestart::Auto
        );
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
            tcp: Some(Listen::Off),
            io_engine: Some(EngineKind::Uring),
            ..Overrides::default()
        };
        let config = Config::from_toml(text, flags).unwrap();
        assert_eq!(config.store.data_dirs, [PathBuf::from("/scratch")]);
        assert_eq!(config.server.tcp, None);
        assert_eq!(config.io.engine, EngineKind::Uring);
        assert_eq!(config.server.socket, Some(PathBuf::from("/run/shardd/shardd.sock")));
    }

    #[test]
    fn a_routable_tcp_address_needs_keys_or_auth_none() {
        let open = err("[server]\ntcp = \"0.0.0.0:7070\"");
        assert!(
            open.contains("server.tcp") && open.contains("[auth] names no keys"),
            "{open}"
        );
        assert!(
            open.contains("shardctl key new") && open.contains("auth = \"none\""),
            "{open}"
        );
        let none = Config::from_toml(
            "auth = \"none\"\n[server]\ntcp = \"0.0.0.0:7070\"",
            Overrides::default(),
        );
        assert_eq!(none.unwrap().auth, auth::AuthConfig::None);
        let keys = "[server]\ntcp = \"0.0.0.0:7070\"\n[auth]\nkeys = [\"/etc/shardd/keys/a.key\"]";
        let keys = Config::from_toml(keys, Overrides::default()).unwrap();
        assert_eq!(
            keys.auth,
            auth::AuthConfig::Keys(vec![PathBuf::from("/etc/shardd/keys/a.key")])
        );
        // Loopback, or TCP off: the daemon's own key will do.
        for text in ["", "[server]\ntcp = \"[::1]:7070\"", "[server]\ntcp = \"off\""] {
            let config = Config::from_toml(text, Overrides::default()).unwrap();
            assert_eq!(config.auth, auth::AuthConfig::Generated, "{text}");
        }
    }

    #[test]
    fn tls_needs_its_files_and_keys_unless_it_requires_client_certificates() {
        let tls = |body: &str| format!("[tls]\nlisten = \"0.0.0.0:7443\"\n{body}");
        assert!(err(&tls("cert = \"/c\"")).contains("tls.key"));
        assert!(err(&tls("key = \"/k\"")).contains("tls.cert"));
        assert!(err("[tls]\nlisten = \"x\"\ncert = \"/c\"\nkey = \"/k\"").contains("tls.listen"));
        // Routable TLS without client certificates proves keys like TCP.
        let open = err(&format!(
            "[server]\ntcp = \"off\"\n{}",
            tls("cert = \"/c\"\nkey = \"/k\"")
        ));
        assert!(open.contains("tls.listen") && open.contains("tls.client_ca"), "{open}");
        let mutual = format!(
            "[server]\ntcp = \"off\"\nsocket = \"off\"\n{}",
            tls("cert = \"/c\"\nkey = \"/k\"\nclient_ca = \"/ca\"")
        );
        let config = Config::from_toml(&mutual, Overrides::default()).unwrap();
        assert_eq!(config.server.tls, Some("0.0.0.0:7443".parse().unwrap()));
        assert_eq!(config.tls.unwrap().client_ca, Some(PathBuf::from("/ca")));
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
        let rule = |body: &str| err(&format!("[[access.rules]]\n{body}"));
        assert!(
            rule("users = [\"no-such-user-x\"]\nnamespaces = [\"a\"]\nrights = [\"read\"]")
                .contains("access.rules[0].users")
        );
        assert!(
            rule("users = [\"0\"]\nnamespaces = [\"a*b\"]\nrights = [\"read\"]").contains("access.rules[0].namespaces")
        );
        assert!(rule("namespaces = [\"a\"]\nrights = [\"read\"]").contains("it is for no one"));
        assert!(rule("users = [\"0\"]\nnamespaces = [\"a\"]\nrights = [\"own\"]").contains("unknown variant"));
        assert!(err("[server]\nsocket_group = \"no-such-group-x\"").contains("server.socket_group"));
        assert!(err("[server]\nunix_reserved_connections = 2000").contains("server.unix_reserved_connections"));
        assert!(err("[[namespaces]]\npattern = \"*\"").contains("sets none of"));
        assert!(err("[[namespaces]]\npattern = \"a*b\"\nidle_ttl = \"1h\"").contains("namespaces[0].pattern"));
        assert!(err("[arena]\nmax_schedule_keys = 0").contains("arena.max_schedule_keys"));
        assert!(err("[server]\ntcp = \"off\"\nsocket = \"off\"").contains("nothing would be served"));
        assert!(err("[log]\nlevel = \"[[[\"").contains("log.level"));
        assert!(rule("keys = [\"a b\"]\nnamespaces = [\"a\"]\nrights = [\"read\"]").contains("access.rules[0].keys"));
        assert!(err("auth = \"keys\"").contains("invalid auth"));
        assert!(err("[auth]\nkeys = []").contains("auth.keys"));
        assert!(err("[auth]\nkeys = [\"/k\", \"/k\"]").contains("listed twice"));
        let e = Config::from_toml(
            "",
            Overrides {
                pinned_memory: Some(4096),
                ..Overrides::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("--pinned-memory"), "{e}");
    }
}
