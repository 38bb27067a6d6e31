//! Namespaces as the unit an operator manages: what each holds, and
//! dropping one (every shard, on the drives and in the arena) in one
//! durable step.

use std::collections::BTreeMap;

use shardd_protocol::{
    DropNamespaceRequest, DropNamespaceResponse, Namespace, NamespaceUsage, NamespacesRequest, NamespacesResponse,
};

use super::Service;
use crate::store::StoreError;

impl Service {
    /// The namespaces whose names start with the request's prefix and that
    /// `visible` lets the client see, with what each holds (those that hold
    /// nothing but have quotas an admin set are listed too).
    pub fn namespaces(&self, req: &NamespacesRequest, visible: impl Fn(&Namespace) -> bool) -> NamespacesResponse {
        let mut by_name: BTreeMap<Namespace, NamespaceUsage> = BTreeMap::new();
        let empty = |namespace: &Namespace| NamespaceUsage {
            namespace: namespace.clone(),
            shards: 0,
            drive_bytes: 0,
            arena_shards: 0,
            arena_bytes: 0,
            unflushed: 0,
            max_drive_bytes: None,
            max_arena_bytes: None,
        };
        for drive in self.store().namespaces() {
            let entry = by_name
                .entry(drive.namespace.clone())
                .or_insert_with(|| empty(&drive.namespace));
            entry.shards = drive.shards;
            entry.drive_bytes = drive.bytes;
        }
        for namespace in self.quotas().namespaces_with_set_quotas() {
            by_name.entry(namespace.clone()).or_insert_with(|| empty(&namespace));
        }
        if let Some(cache) = self.cache() {
            for (namespace, arena) in cache.namespace_usage() {
                let entry = by_name.entry(namespace.clone()).or_insert_with(|| empty(&namespace));
                entry.arena_shards = arena.shards;
                entry.arena_bytes = arena.bytes;
                entry.unflushed = arena.unflushed;
            }
        }
        let mut namespaces: Vec<NamespaceUsage> = by_name
            .into_values()
            .filter(|u| u.namespace.as_str().starts_with(&req.prefix) && visible(&u.namespace))
            .collect();
        for usage in &mut namespaces {
            let limits = self.quotas().limits(&usage.namespace);
            usage.max_drive_bytes = limits.drive.map(|q| q.max);
            usage.max_arena_bytes = limits.arena.map(|q| q.max);
        }
        NamespacesResponse { namespaces }
    }

    /// Removes every shard of a namespace: first from the arena (so no
    /// write-back flush lands afterwards), then from the drives, durably.
    pub async fn drop_namespace(&self, req: &DropNamespaceRequest) -> Result<DropNamespaceResponse, StoreError> {
        let (unflushed, _) = match self.cache() {
            Some(cache) => cache.forget_namespace(&req.namespace),
            None => (0, 0),
        };
        let dropped = self.store().drop_namespace(&req.namespace).await?;
        if dropped.shards == 0 && unflushed == 0 && dropped.quarantined == 0 {
            return Err(StoreError::Other {
                status: shardd_protocol::Status::NotFound,
                message: format!("namespace {} holds no shards", req.namespace),
            });
        }
        Ok(DropNamespaceResponse {
            shards: dropped.shards,
            bytes: dropped.bytes,
            unflushed,
            quarantined: dropped.quarantined,
        })
    }
}
