//! `[server]`: listeners and connections.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::units::{Size, Span};
use super::{DEFAULT_HTTP, DEFAULT_SOCKET, DEFAULT_TCP, Listen, Overrides, invalid, within};
use crate::server::ServerConfig;
use crate::store::StoreConfig;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileServer {
    socket: Option<String>,
    socket_mode: Option<String>,
    socket_group: Option<String>,
    socket_send_buffer: Option<Size>,
    zero_copy: Option<bool>,
    tcp: Option<String>,
    http: Option<String>,
    max_connections: Option<usize>,
    max_connections_per_peer: Option<usize>,
    unix_reserved_connections: Option<usize>,
    idle_timeout: Option<Span>,
    max_leases: Option<u32>,
    max_lease_bytes: Option<Size>,
    lease_timeout: Option<Span>,
    max_regions: Option<u32>,
    max_region_bytes: Option<Size>,
    max_inflight_requests: Option<u32>,
    connection_buffer_memory: Option<Size>,
    io_timeout: Option<Span>,
    handshake_timeout: Option<Span>,
    shutdown_timeout: Option<Span>,
}

/// The flag's value if given, else the file's parsed (naming `key` if it
/// does not parse), else `default`.
fn listen<T: Clone>(
    flag: &Option<Listen<T>>,
    file: Option<String>,
    key: &str,
    default: &str,
) -> anyhow::Result<Option<T>>
where
    Listen<T>: std::str::FromStr<Err = String>,
{
    let listen = match (flag, file) {
        (Some(flag), _) => flag.clone(),
        (None, Some(text)) => text.parse::<Listen<T>>().map_err(|e| invalid(key, e))?,
        (None, None) => default.parse::<Listen<T>>().map_err(|e| invalid(key, e))?,
    };
    Ok(match listen {
        Listen::Off => None,
        Listen::At(at) => Some(at),
    })
}

impl FileServer {
    /// `[server]` with the flags that override it, checked against the
    /// storage settings its buffers depend on.
    pub(super) fn resolve(self, flags: &Overrides, store: &StoreConfig) -> anyhow::Result<ServerConfig> {
        let socket_key = if flags.socket.is_some() {
            "--socket"
        } else {
            "server.socket"
        };
        let socket: Option<PathBuf> = listen(&flags.socket, self.socket, socket_key, DEFAULT_SOCKET)?;
        if socket.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(invalid(socket_key, "empty path (use off to disable the Unix socket)"));
        }
        let tcp = listen(&flags.tcp, self.tcp, "server.tcp", DEFAULT_TCP)?;
        let http = listen(&flags.http, self.http, "server.http", DEFAULT_HTTP)?;
        let socket_mode = match self.socket_mode {
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
        let socket_group = match self.socket_group {
            Some(name) => Some(super::access::group_id(&name).map_err(|e| invalid("server.socket_group", e))?),
            None => None,
        };
        let chunk_size = store.chunk_size as u64;
        let connection_buffer_memory = self.connection_buffer_memory.map_or(64 << 20, |s| s.0);
        if connection_buffer_memory < 2 * chunk_size {
            return Err(invalid(
                "server.connection_buffer_memory",
                format!(
                    "{connection_buffer_memory} bytes; it must hold at least two chunks ({} bytes)",
                    2 * chunk_size
                ),
            ));
        }
        if store.buffer_memory < connection_buffer_memory {
            return Err(invalid(
                "storage.buffer_memory",
                format!(
                    "{} bytes is less than server.connection_buffer_memory ({connection_buffer_memory})",
                    store.buffer_memory
                ),
            ));
        }
        let max_connections = self.max_connections.unwrap_or(1024);
        if max_connections == 0 {
            return Err(invalid("server.max_connections", "must be above 0"));
        }
        let max_connections_per_peer = within(
            "server.max_connections_per_peer",
            self.max_connections_per_peer.unwrap_or(256.min(max_connections)),
            1..=max_connections,
        )?;
        let unix_reserved_connections = within(
            "server.unix_reserved_connections",
            self.unix_reserved_connections.unwrap_or(16.min(max_connections / 2)),
            0..=max_connections - 1,
        )?;
        let max_inflight_requests = within(
            "server.max_inflight_requests",
            self.max_inflight_requests.unwrap_or(64),
            1..=65536,
        )?;
        let positive = |key: &str, span: Option<Span>, default: Duration| -> anyhow::Result<Duration> {
            let d = span.map_or(default, |s| s.0);
            if d.is_zero() {
                return Err(invalid(key, "must be above 0"));
            }
            Ok(d)
        };
        Ok(ServerConfig {
            socket,
            socket_mode,
            socket_group,
            unix_send_buffer: self.socket_send_buffer.map_or(4 << 20, |s| s.0.min(1 << 30) as usize),
            zero_copy: self.zero_copy.unwrap_or(true),
            tcp,
            tls: None,
            http,
            max_connections,
            max_connections_per_peer,
            unix_reserved_connections,
            idle_timeout: positive("server.idle_timeout", self.idle_timeout, Duration::from_secs(300))?,
            max_leases: within("server.max_leases", self.max_leases.unwrap_or(4096), 1..=1 << 20)?,
            max_lease_bytes: self.max_lease_bytes.map(|s| s.0),
            lease_timeout: positive("server.lease_timeout", self.lease_timeout, Duration::from_secs(600))?,
            max_regions: within("server.max_regions", self.max_regions.unwrap_or(64), 1..=4096)?,
            max_region_bytes: self.max_region_bytes.map_or(64 << 30, |s| s.0),
            max_inflight_requests,
            connection_buffer_memory,
            io_timeout: positive("server.io_timeout", self.io_timeout, Duration::from_secs(30))?,
            handshake_timeout: positive(
                "server.handshake_timeout",
                self.handshake_timeout,
                Duration::from_secs(10),
            )?,
            shutdown_timeout: positive(
                "server.shutdown_timeout",
                self.shutdown_timeout,
                Duration::from_secs(30),
            )?,
        })
    }
}
