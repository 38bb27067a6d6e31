//! Requests about the arena rather than the bytes: prefetch hints, explicit
//! eviction, step schedules for the eviction policy, and checking a copy
//! again. Each needs a daemon with an arena.

use shardd_protocol::{
    EvictRequest, EvictResponse, PrefetchRequest, PrefetchResponse, ScheduleRequest, ScheduleResponse, VerifyRequest,
    VerifyResponse,
};

use super::Service;
use crate::store::StoreError;

impl Service {
    /// Queues loads of the shards a client will need.
    pub fn prefetch(&self, req: PrefetchRequest) -> Result<PrefetchResponse, StoreError> {
        Ok(self.arena()?.prefetch(&req.namespace, req.items))
    }

    /// Takes shards out of the arena (`demote`) or out of every tier (`drop`).
    pub async fn evict(&self, req: &EvictRequest) -> Result<EvictResponse, StoreError> {
        Ok(self.arena()?.evict(&req.namespace, &req.keys, req.mode).await)
    }

    /// Registers a namespace's step order for the schedule policy; only a
    /// namespace that holds shards may have one (an empty order, which
    /// removes a schedule, is always allowed).
    pub fn schedule(&self, req: ScheduleRequest) -> Result<ScheduleResponse, StoreError> {
        let cache = self.arena()?;
        if !req.keys.is_empty() && !self.holds_shards(&req.namespace) {
            return Err(StoreError::Other {
                status: shardd_protocol::Status::NotFound,
                message: format!(
                    "namespace {} holds no shards: a schedule is kept only for a namespace with shards",
                    req.namespace
                ),
            });
        }
        let len = req.keys.len() as u32;
        cache.set_schedule(req.namespace, &req.keys)?;
        Ok(ScheduleResponse { len })
    }

    /// Checks the arena's copy of a key against its checksum again.
    pub async fn verify(&self, req: &VerifyRequest) -> Result<VerifyResponse, StoreError> {
        Ok(self.arena()?.verify(&req.namespace, &req.key, req.version).await)
    }
}
