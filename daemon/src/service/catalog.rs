//! What the daemon holds: stat, list and delete. A shard acknowledged from
//! the arena and not yet flushed to the drive counts as stored: stat shows
//! it, a listing includes it, a delete removes it.

use shardd_protocol::{
    DeleteRequest, ListRequest, ListResponse, MAX_CONTROL_LEN, MAX_LIST_LIMIT, ShardMeta, StatRequest, StatResponse,
};

use super::Service;
use crate::store::StoreError;

/// Bytes a `ShardMeta` takes in a control message (fixed-width encoding).
fn encoded_meta_len(meta: &ShardMeta) -> usize {
    56 + meta.namespace.as_str().len() + meta.key.as_str().len() + 8 * meta.shape.len()
}

impl Service {
    /// A key's newest version and the arena's state of it.
    pub fn stat(&self, req: &StatRequest) -> Result<StatResponse, StoreError> {
        match self.cache() {
            Some(cache) => {
                let (meta, cache) = cache.stat(&req.namespace, &req.key)?;
                Ok(StatResponse { meta, cache })
            }
            None => Ok(StatResponse {
                meta: self.store().stat(&req.namespace, &req.key)?,
                cache: Default::default(),
            }),
        }
    }

    /// Deletes a key from every tier; returns the version removed.
    pub async fn delete(&self, req: &DeleteRequest) -> Result<u64, StoreError> {
        match self.cache() {
            Some(cache) => cache.delete(&req.namespace, &req.key, req.version).await,
            None => self.store().delete(&req.namespace, &req.key, req.version).await,
        }
    }

    /// Whether `namespace` holds a shard, on the drive or not flushed yet.
    pub fn holds_shards(&self, namespace: &shardd_protocol::Namespace) -> bool {
        !self.store().list(namespace, "", None, 1).0.is_empty()
            || self.cache().is_some_and(|c| !c.unflushed(namespace).is_empty())
    }

    /// A page of a namespace's shards, in key order, within the control
    /// message limit.
    pub fn list(&self, req: &ListRequest) -> ListResponse {
        let limit = req.limit.clamp(1, MAX_LIST_LIMIT) as usize;
        let (mut shards, mut more) = self
            .store()
            .list(&req.namespace, &req.prefix, req.start_after.as_deref(), limit);
        // Shards acknowledged from memory and not on the drive yet are listed
        // too, in place of the drive's older version.
        if let Some(cache) = self.cache() {
            let unflushed: Vec<ShardMeta> = cache
                .unflushed(&req.namespace)
                .into_iter()
                .filter(|m| m.key.as_str().starts_with(&req.prefix))
                .filter(|m| req.start_after.as_deref().is_none_or(|after| m.key.as_str() > after))
                .collect();
            if !unflushed.is_empty() {
                shards.retain(|m| !unflushed.iter().any(|u| u.key == m.key));
                shards.extend(unflushed);
                shards.sort_by(|a, b| a.key.cmp(&b.key));
                if shards.len() > limit {
                    // Keep the page contiguous: what is cut comes on the next page.
                    shards.truncate(limit);
                    more = true;
                }
            }
        }
        // Keep the answer within the control limit, with room for the framing.
        let budget = MAX_CONTROL_LEN as usize - 64;
        let mut used = 16;
        let fits = shards
            .iter()
            .take_while(|m| {
                used += encoded_meta_len(m);
                used <= budget
            })
            .count();
        if fits < shards.len() {
            shards.truncate(fits);
            more = true;
        }
        ListResponse { shards, more }
    }
}
