//! shardd: the per-node storage daemon for tensor shards.
//!
//! One daemon per training node owns the node's NVMe space and a pinned
//! host-memory arena, and serves put / fetch / prefetch / evict requests for
//! tensor shards to trainer processes, over a Unix socket (same node, with
//! zero-copy fetches from the shared arena) and TCP (other nodes), speaking
//! the protocol of the `shardd-protocol` crate.
//!
//! # Layout
//!
//! * [`daemon`]: start, serve, graceful stop ([`daemon::Daemon`], [`daemon::run`]).
//! * [`config`]: defaults, the TOML file and flags, validated once.
//! * [`cli`]: the `shardd` command line.
//! * [`server`]: listeners, the hello, connections, the dispatch table.
//! * [`access`]: who a peer is and what the access table lets it do.
//! * [`auth`]: the keys TCP peers authenticate with.
//! * [`tls`]: TLS on TCP, and the identity of a client certificate.
//! * [`service`]: the request path below the sockets: arena or drive, put
//!   sessions, fetch streams, leased views, stat/list/delete, hints.
//! * [`cache`]: the hot tier in the arena: hits, loads, write-back,
//!   eviction, prefetch, leases.
//! * [`arena`]: the pinned memory itself and its block allocator.
//! * [`store`]: the NVMe tier: shard files, index, recovery.
//! * [`io`]: the only door to files: io_uring and thread-pool engines.
//! * [`logging`]: log output.
//! * [`metrics`]: the Prometheus metrics.
//! * [`http`]: `/metrics`, `/healthz`, `/readyz`, `/v1/status`.
//! * [`notify`]: readiness, watchdog and the descriptor store of systemd
//!   (`Type=notify`).
//! * [`keep`]: restarting with a warm arena, kept by systemd meanwhile.
//! * [`ctl`]: the `shardctl` operator CLI and its benchmark.

pub mod access;
pub mod arena;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod http;
pub mod io;
pub mod keep;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;

pub use config::Config;
pub use daemon::{Daemon, run};
