//! Namespace policies: quotas and idle lifetimes, by pattern in the
//! configuration, or set for one namespace by an admin request (kept in
//! the first data directory, so they outlive restarts, and preferred to
//! the configured ones).
//!
//! A put that would bring its namespace's bytes on the drives above the
//! namespace's `max_drive_bytes` is refused with `no space`, naming the
//! quota; a namespace at its `max_arena_bytes` evicts its own shards first
//! (see [`crate::cache`]). A namespace with an `idle_ttl` (scratch: swap data of a job that
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
    /// The policy of `namespace` and its place in the configuration (the
    /// `N` of `namespaces[N]`), if one matches.
    pub fn of(&self, namespace: &Namespace) -> Option<(usize, &NamespacePolicy)> {
        self.0
            .iter()
            .enumerate()
            .find(|(_, p)| p.pattern.matches(namespace.as_str()))
    }

    /// Whether any policy has an idle lifetime.
    pub fn any_ttl(&self) -> bool {
        self.0.iter().any(|p| p.idle_ttl.is_some())
    }
}

/// Quotas an admin set for one namespace (`None`: the configured one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SetQuota {
    /// Bytes on the drives.
    pub max_drive_bytes: Option<u64>,
    /// Bytes of the arena.
    pub max_arena_bytes: Option<u64>,
}

/// A quota in force, and where it was set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Bytes at most.
    pub max: u64,
    /// Where it was set.
    pub source: QuotaSource,
}

/// Where a quota was set, as messages name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaSource {
    /// By an admin request (`shardctl ns quota`).
    Admin,
    /// By `namespaces[index].field` in the configuration.
    Policy {
        /// Its place in `[[namespaces]]`.
        index: usize,
        /// The key.
        field: &'static str,
    },
}

impl std::fmt::Display for QuotaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuotaSource::Admin => f.write_str("set for it by an admin: shardctl ns quota"),
            QuotaSource::Policy { index, field } => write!(f, "namespaces[{index}].{field}"),
        }
    }
}

/// A namespace's limits in force.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes on the drives.
    pub drive: Option<Quota>,
    /// Bytes of the arena.
    pub arena: Option<Quota>,
    /// Idle lifetime.
    pub idle_ttl: Option<Duration>,
}

/// The configured policies and the quotas set by admin requests.
#[derive(Debug, Default)]
pub struct Quotas {
    configured: NamespacePolicies,
    set: RwLock<std::collections::BTreeMap<String, SetQuota>>,
    /// Where set quotas are kept.
    file: Option<std::path::PathBuf>,
}

impl Quotas {
    /// `configured`, and the quotas kept in `file` (if it exists).
    pub fn load(configured: NamespacePolicies, file: Option<std::path::PathBuf>) -> anyhow::Result<Quotas> {
        use anyhow::Context;
        let set = match &file {
            Some(path) => match crate::io::fs::read_file(path) {
                Ok(bytes) => serde_json::from_slice(&bytes)
                    .with_context(|| format!("read namespace quotas from {}", path.display()))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
                Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
            },
            None => Default::default(),
        };
        Ok(Quotas {
            configured,
            set: RwLock::new(set),
            file,
        })
    }

    /// What applies to `namespace`: a quota set for it, else its policy's.
    pub fn limits(&self, namespace: &Namespace) -> Limits {
        let policy = self.configured.of(namespace);
        let set = self
            .set
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(namespace.as_str())
            .copied()
            .unwrap_or_default();
        let pick = |admin: Option<u64>, configured: fn(&NamespacePolicy) -> Option<u64>, field| {
            let admin = admin.map(|max| Quota {
                max,
                source: QuotaSource::Admin,
            });
            admin.or_else(|| {
                let (index, policy) = policy?;
                configured(policy).map(|max| Quota {
                    max,
                    source: QuotaSource::Policy { index, field },
                })
            })
        };
        Limits {
            drive: pick(set.max_drive_bytes, |p| p.max_drive_bytes, "max_drive_bytes"),
            arena: pick(set.max_arena_bytes, |p| p.max_arena_bytes, "max_arena_bytes"),
            idle_ttl: policy.and_then(|(_, p)| p.idle_ttl),
        }
    }

    /// Sets (or, with `None`s, clears) the quotas of `namespace`, and keeps
    /// them before it returns (blocking: call it off the async threads).
    pub fn set(&self, namespace: &Namespace, quota: SetQuota) -> std::io::Result<()> {
        let mut set = self.set.write().unwrap_or_else(|p| p.into_inner());
        let mut next = set.clone();
        if quota == SetQuota::default() {
            next.remove(namespace.as_str());
        } else {
            next.insert(namespace.as_str().to_string(), quota);
        }
        if let Some(path) = &self.file {
            let bytes = serde_json::to_vec_pretty(&next).map_err(std::io::Error::other)?;
            crate::io::fs::replace_file_synced(path, &bytes)?;
        }
        *set = next;
        Ok(())
    }

    /// The namespaces an admin set quotas for.
    pub fn namespaces_with_set_quotas(&self) -> Vec<Namespace> {
        self.set
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .filter_map(|name| Namespace::new(name).ok())
            .collect()
    }

    /// Whether any namespace has an idle lifetime.
    pub fn any_ttl(&self) -> bool {
        self.configured.any_ttl()
    }

    /// The shortest idle lifetime configured.
    pub fn shortest_ttl(&self) -> Option<Duration> {
        self.configured.0.iter().filter_map(|p| p.idle_ttl).min()
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
        let Some(Quota { max, source }) = self.quotas.limits(namespace).drive else {
            return Ok(());
        };
        let store = self.store();
        let held = store.namespace_bytes(namespace);
        let replaced = store.stat(namespace, key).map_or(0, |m| m.len);
        let after = held - replaced.min(held) + len;
        if after > max {
            return Err(StoreError::NoSpace(format!(
                "namespace {namespace} would hold {after} bytes on the drives, above its quota of {max} bytes \
                 ({source}); remove shards (shardctl ns rm, rm) or raise the quota"
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
            let Some(ttl) = self.quotas.limits(&namespace).idle_ttl else {
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
        if self.quotas.any_ttl() {
            self.last_use.touch(namespace);
        }
    }

    /// How often idle namespaces are looked for: a tenth of the shortest
    /// idle lifetime, between one second and a minute; `None` if no policy
    /// has one.
    pub fn expiry_interval(&self) -> Option<Duration> {
        let shortest = self.quotas.shortest_ttl()?;
        Some((shortest / 10).clamp(Duration::from_secs(1), Duration::from_secs(60)))
    }
}

impl Service {
    /// The quotas and lifetimes of namespaces.
    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// Sets (or clears) the quotas an admin gives one namespace; kept on
    /// the drive before it returns. Returns what is in force then.
    pub async fn set_quota(&self, namespace: &Namespace, quota: SetQuota) -> Result<Limits, StoreError> {
        let quotas = self.quotas.clone();
        let ns = namespace.clone();
        crate::io::fs::blocking(move || quotas.set(&ns, quota))
            .await
            .map_err(|e| StoreError::io(format!("keep the quotas of {namespace}"), e))?;
        tracing::info!(%namespace, ?quota, "namespace quotas set");
        Ok(self.quotas.limits(namespace))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(name: &str) -> Namespace {
        Namespace::new(name).unwrap()
    }

    #[test]
    fn set_quotas_are_kept_preferred_to_policies_and_a_corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("namespace-quotas.json");
        let policies = NamespacePolicies(vec![NamespacePolicy {
            pattern: Pattern::parse("job-*").unwrap(),
            max_drive_bytes: Some(100),
            max_arena_bytes: None,
            idle_ttl: None,
        }]);
        let quotas = Quotas::load(policies.clone(), Some(file.clone())).unwrap();
        let drive = |q: &Quotas| q.limits(&ns("job-a")).drive.map(|q| (q.max, q.source.to_string()));
        assert_eq!(drive(&quotas), Some((100, "namespaces[0].max_drive_bytes".to_string())));
        let admin = SetQuota {
            max_drive_bytes: Some(7),
            max_arena_bytes: None,
        };
        quotas.set(&ns("job-a"), admin).unwrap();

        let again = Quotas::load(policies.clone(), Some(file.clone())).unwrap();
        assert_eq!(
            drive(&again),
            Some((7, "set for it by an admin: shardctl ns quota".to_string()))
        );
        again.set(&ns("job-a"), SetQuota::default()).unwrap();
        assert_eq!(
            drive(&Quotas::load(policies.clone(), Some(file.clone())).unwrap())
                .unwrap()
                .0,
            100
        );

        std::fs::write(&file, b"{ not json").unwrap();
        let err = format!("{:#}", Quotas::load(policies, Some(file.clone())).unwrap_err());
        assert!(err.contains(&file.display().to_string()), "{err}");
    }
}
