//! Namespace policies: drive quotas and idle lifetimes, by pattern.
//!
//! A put that would bring its namespace's bytes on the drives above the
//! namespace's `max_drive_bytes` is refused with `no space`, naming the
//! quota. A namespace with an `idle_ttl` (scratch: swap data of a job that
//! may die) is dropped whole once no request named it for that long; the
//! drop is logged and counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use shardd_protocol::Namespace;

use super::Service;
use crate::access::Pattern;
use crate::store::StoreError;

/// What applies to the namespaces that match a pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespacePolicy {
    /// Where it was configured (`namespaces[N]`), for messages.
    pub key: String,
    /// The namespaces it applies to.
    pub pattern: Pattern,
    /// Bytes the namespace may hold on the drives.
    pub max_drive_bytes: Option<u64>,
    /// Bytes of the arena the namespace's shards may take: beyond it, its
    /// own shards are evicted first (or, if they cannot go, its new ones
    /// are not kept in the arena).
    pub max_arena_bytes: Option<u64>,
    /// After this long with no request naming it, the namespace is dropped.
    pub idle_ttl: Option<Duration>,
}

/// The policies in the configuration's order; the first that matches a
/// namespace applies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespacePolicies(pub Vec<NamespacePolicy>);

impl NamespacePolicies {
    /// The policy of `namespace`, if one matches.
    pub fn of(&self, namespace: &Namespace) -> Option<&NamespacePolicy> {
        self.0.iter().find(|p| p.pattern.matches(namespace.as_str()))
    }

    /// Whether any policy has an idle lifetime.
    pub fn any_ttl(&self) -> bool {
        self.0.iter().any(|p| p.idle_ttl.is_some())
    }
}

/// When each namespace was last named by a request.
#[derive(Debug)]
pub struct LastUse {
    start: Instant,
    /// Milliseconds after `start`.
    by_namespace: RwLock<HashMap<Namespace, Arc<AtomicU64>>>,
}

impl Default for LastUse {
    fn default() -> Self {
        LastUse {
            start: Instant::now(),
            by_namespace: RwLock::new(HashMap::new()),
        }
    }
}

impl LastUse {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// A request named `namespace` now.
    pub fn touch(&self, namespace: &Namespace) {
        let now = self.now();
        if let Some(at) = self
            .by_namespace
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(namespace)
        {
            at.store(now, Ordering::Relaxed);
            return;
        }
        self.by_namespace
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(namespace.clone())
            .or_default()
            .store(now, Ordering::Relaxed);
    }

    /// How long ago a request named `namespace`; since the daemon started
    /// if none did.
    pub fn idle(&self, namespace: &Namespace) -> Duration {
        let at = self
            .by_namespace
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(namespace)
            .map_or(0, |at| at.load(Ordering::Relaxed));
        Duration::from_millis(self.now().saturating_sub(at))
    }

    fn forget(&self, namespace: &Namespace) {
        self.by_namespace
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(namespace);
    }
}

impl Service {
    /// Refuses a put of `len` bytes to `namespace/key` that would bring the
    /// namespace's bytes on the drives above its quota (the version it
    /// replaces is counted out). Puts running at once are each checked
    /// against what is stored, so together they may pass the quota by at
    /// most their sizes.
    pub fn check_quota(&self, namespace: &Namespace, key: &shardd_protocol::Key, len: u64) -> Result<(), StoreError> {
        let Some(policy) = self.policies.of(namespace) else {
            return Ok(());
        };
        let Some(max) = policy.max_drive_bytes else {
            return Ok(());
        };
        let store = self.store();
        let held = store.namespace_bytes(namespace);
        let replaced = store.stat(namespace, key).map_or(0, |m| m.len);
        let after = held - replaced.min(held) + len;
        if after > max {
            return Err(StoreError::NoSpace(format!(
                "namespace {namespace} would hold {after} bytes on the drives, above its quota of {max} bytes \
                 ({}.max_drive_bytes); remove shards (shardctl ns rm, rm) or raise the quota",
                policy.key
            )));
        }
        Ok(())
    }

    /// Drops every namespace idle for longer than its policy's `idle_ttl`;
    /// returns how many it dropped.
    pub async fn expire_idle_namespaces(&self) -> usize {
        let mut expired = 0;
        let mut names: Vec<Namespace> = self.store().namespaces().into_iter().map(|u| u.namespace).collect();
        if let Some(cache) = self.cache() {
            names.extend(cache.namespace_usage().into_keys());
        }
        names.sort();
        names.dedup();
        for namespace in names {
            let Some(ttl) = self.policies.of(&namespace).and_then(|p| p.idle_ttl) else {
                continue;
            };
            let idle = self.last_use.idle(&namespace);
            if idle < ttl {
                continue;
            }
            let request = shardd_protocol::DropNamespaceRequest {
                namespace: namespace.clone(),
            };
            match self.drop_namespace(&request).await {
                Ok(dropped) => {
                    tracing::warn!(
                        %namespace, idle = ?idle, shards = dropped.shards, bytes = dropped.bytes,
                        "dropped a namespace idle for longer than its idle_ttl ({ttl:?})"
                    );
                    self.last_use.forget(&namespace);
                    self.expired.inc();
                    expired += 1;
                }
                Err(e) => tracing::error!(%namespace, error = %e, "cannot drop an expired namespace"),
            }
        }
        expired
    }

    /// Namespaces dropped for being idle past their `idle_ttl`, so far.
    pub fn expired_namespaces(&self) -> u64 {
        self.expired.get()
    }

    /// The service's own metrics, for the registry.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![Box::new(self.expired.clone())]
    }

    /// A request named `namespace` now (for idle lifetimes).
    pub fn touch(&self, namespace: &Namespace) {
        if self.policies.any_ttl() {
            self.last_use.touch(namespace);
        }
    }

    /// How often idle namespaces are looked for: a tenth of the shortest
    /// idle lifetime, between one second and a minute; `None` if no policy
    /// has one.
    pub fn expiry_interval(&self) -> Option<Duration> {
        let shortest = self.policies.0.iter().filter_map(|p| p.idle_ttl).min()?;
        Some((shortest / 10).clamp(Duration::from_secs(1), Duration::from_secs(60)))
    }
}
