//! Checking the arena's copies again, and taking one that fails its
//! checksum out of service.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use shardd_protocol::{Key, Namespace, Status, VerifyOutcome, VerifyResponse};

use super::policy::ShardRef;
use super::{Cache, CachedShard, Slot, WriteBack};

impl Cache {
    /// Checks the arena's copy of a key (of `version`, if given) against
    /// its CRC32C again; a copy that fails is never served again.
    pub async fn verify(&self, namespace: &Namespace, key: &Key, version: Option<u64>) -> VerifyResponse {
        let shard = match self.state().entries.get(&ShardRef(namespace, key)) {
            Some(Slot::Ready(shard)) if version.is_none_or(|v| v == shard.meta.version) => shard.clone(),
            _ => {
                return VerifyResponse {
                    version: None,
                    outcome: VerifyOutcome::NotResident,
                };
            }
        };
        let version = Some(shard.meta.version);
        // A whole shard at memory speed: milliseconds, off the runtime's threads.
        let check = shard.clone();
        let actual = tokio::task::spawn_blocking(move || check.crc32c())
            .await
            .unwrap_or_else(|_| shard.crc32c());
        if actual == shard.meta.crc32c && !shard.is_corrupt() {
            return VerifyResponse {
                version,
                outcome: VerifyOutcome::Intact,
            };
        }
        let reason = format!(
            "its bytes in memory have CRC32C {actual:#010x}, not {:#010x}",
            shard.meta.crc32c
        );
        VerifyResponse {
            version,
            outcome: self.discard_corrupt(&shard, Some(&reason)),
        }
    }

    /// Takes a copy that failed its checksum out of service: a clean one
    /// leaves the arena (the next fetch reads the drive again); one not on
    /// the drive yet is marked failed, so that fetches answer with the error
    /// instead of its bytes. Counted and logged once per copy.
    pub(super) fn discard_corrupt(&self, shard: &Arc<CachedShard>, reason: Option<&str>) -> VerifyOutcome {
        let meta = &shard.meta;
        if shard.mark_corrupt() {
            self.inner.stats.checksum_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                namespace = %meta.namespace, key = %meta.key, version = meta.version,
                reason = reason.unwrap_or("unknown"),
                "the arena's copy of a shard failed its checksum (memory corruption); it is not served again"
            );
        }
        let id = (meta.namespace.clone(), meta.key.clone());
        let removed = {
            let mut state = self.state();
            if !shard.is_clean() {
                shard.set_write_back(WriteBack::Failed {
                    status: Status::ChecksumMismatch,
                    reason: "its copy in memory failed its checksum before it reached the drive".into(),
                });
                return VerifyOutcome::Lost;
            }
            if !shard.is_listed() {
                return VerifyOutcome::Dropped;
            }
            state.policy.removed(&id);
            state.entries.remove(&id)
        };
        // Its blocks go back once the last lease on it ends.
        drop(removed);
        VerifyOutcome::Dropped
    }

    /// Flips every bit of the byte at `offset` of the arena's copy of a key,
    /// as failing memory would; returns whether the arena holds a copy.
    /// For tests of what follows.
    #[cfg(any(test, feature = "testing"))]
    pub fn corrupt_for_tests(&self, namespace: &Namespace, key: &Key, offset: u64) -> bool {
        let shard = match self.state().entries.get(&ShardRef(namespace, key)) {
            Some(Slot::Ready(shard)) => shard.clone(),
            _ => return false,
        };
        let chunk = (offset / shard.chunk_size() as u64) as usize;
        let within = (offset % shard.chunk_size() as u64) as usize;
        let Some(block) = shard.chunks().get(chunk).filter(|_| within < shard.chunk_len(chunk)) else {
            return false;
        };
        // SAFETY: the byte lies inside the block (checked above), which the
        // shard holds, in the daemon's own writable mapping of the arena; it
        // is changed atomically, so a reader sees the old or the new value.
        unsafe {
            let byte = block.as_ptr().cast_mut().add(within);
            std::sync::atomic::AtomicU8::from_ptr(byte).fetch_xor(0xff, Ordering::SeqCst);
        }
        true
    }
}
