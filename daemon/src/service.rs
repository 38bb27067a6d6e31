//! The request path below the sockets: what each request does, whichever
//! transport brought it.
//!
//! [`crate::server`] reads frames, decodes their control messages and calls
//! the methods here; it turns what they return into answer frames. Here is
//! where a request chooses between the arena and the drive, where a put's
//! bytes go while they arrive and how it is committed, and what a client's
//! leases hold. Below are the tiers ([`crate::cache`], [`crate::store`])
//! and the one door to files ([`crate::io`]). Errors are [`StoreError`]s,
//! which the server maps to wire statuses in one place.
//!
//! # Layout
//!
//! * [`session`]: what one client's requests share: its buffer budget and
//!   the leases of its zero-copy views.
//! * [`fetch`]: fetches over the socket: from the arena, following a load
//!   into it, or straight from the drive.
//! * [`view`]: zero-copy fetches (views of the arena) and their leases.
//! * [`put`]: put sessions, durable and write-back alike.
//! * [`catalog`]: stat, list and delete, shards not yet flushed included.
//! * [`hints`]: prefetch, evict, schedules and verify.
//! * [`namespaces`]: what each namespace holds; dropping one.
//! * [`quota`]: namespace policies: drive quotas and idle lifetimes.

pub mod catalog;
pub mod fetch;
pub mod hints;
pub mod namespaces;
pub mod prepared;
pub mod put;
pub mod quota;
pub mod regions;
pub mod session;
pub mod view;

use std::time::Duration;

use crate::cache::Cache;
use crate::store::{Store, StoreError};
pub use fetch::{Fetch, Piece, Resident};
pub use put::PutSession;
pub use session::Session;

/// The request path over the daemon's tiers.
#[derive(Debug)]
pub struct Service {
    store: Store,
    cache: Option<Cache>,
    /// How long a write-back put may wait for room in the budget.
    io_timeout: Duration,
    /// Quotas and idle lifetimes of namespaces.
    quotas: std::sync::Arc<quota::Quotas>,
    last_use: quota::LastUse,
    /// Namespaces dropped for being idle (`shardd_namespaces_expired_total`).
    expired: prometheus::IntCounter,
}

impl Service {
    /// The request path over `store`, with `cache` in front of it if the
    /// daemon has an arena. A write-back put waits at most `io_timeout` for
    /// room (its payload waits in the socket meanwhile).
    pub fn new(
        store: Store,
        cache: Option<Cache>,
        io_timeout: Duration,
        quotas: std::sync::Arc<quota::Quotas>,
    ) -> Service {
        Service {
            store,
            cache,
            io_timeout,
            quotas,
            last_use: quota::LastUse::default(),
            expired: prometheus::IntCounter::new(
                "shardd_namespaces_expired_total",
                "Namespaces dropped because no request named them for their idle_ttl.",
            )
            .expect("valid metric definition"),
        }
    }

    /// The NVMe tier.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The arena tier, if the daemon has an arena.
    pub fn cache(&self) -> Option<&Cache> {
        self.cache.as_ref()
    }

    /// The arena tier, for requests that need one.
    fn arena(&self) -> Result<&Cache, StoreError> {
        self.cache
            .as_ref()
            .ok_or_else(|| StoreError::BadRequest("this daemon has no pinned-memory arena (arena.size = 0)".into()))
    }
}
