//! Keeping the hot tier across a restart: which arena blocks hold which
//! shard, written down when the daemon stops ([`Cache::kept_shards`]), and
//! taken back by the next daemon over the same arena memory
//! ([`Cache::adopt`]), each shard only if it is still the drive's current
//! version and its bytes still match the drive's chunk checksums.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use shardd_protocol::ShardMeta;

use super::{Cache, CachedShard, Slot, WriteBack};
use crate::io::AlignedBuf;
use crate::store::format::ShardLayout;
use crate::store::index::ShardEntry;

/// A shard resident in the arena, as the next daemon needs to find it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptShard {
    /// Its metadata (as on the drive).
    pub meta: ShardMeta,
    /// Bytes per chunk.
    pub chunk_size: u32,
    /// Each chunk's arena block: (offset, block size).
    pub blocks: Vec<(u64, u32)>,
}

/// What [`Cache::adopt`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Adopted {
    /// Shards served from the arena again, and their bytes.
    pub shards: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Shards left out, each with why.
    pub discarded: Vec<(String, String)>,
}

impl Cache {
    /// The shards to hand to the next daemon: every resident shard whose
    /// bytes are on the drive (clean, not found corrupt), and how many
    /// resident shards are not (not yet flushed, or their flush failed).
    /// Call once nothing changes the tier any more (at the end of a stop).
    pub fn kept_shards(&self) -> (Vec<KeptShard>, u64) {
        let arena = &self.inner.arena;
        let state = self.state();
        let mut left_out = 0;
        let kept = state
            .entries
            .values()
            .filter_map(|slot| match slot {
                Slot::Ready(shard) => Some(shard),
                Slot::Loading(_) => None,
            })
            .filter(|shard| {
                let keep = shard.is_clean() && !shard.is_corrupt();
                left_out += u64::from(!keep);
                keep
            })
            .map(|shard| KeptShard {
                meta: shard.meta.clone(),
                chunk_size: shard.chunk_size(),
                blocks: shard
                    .chunks()
                    .iter()
                    .map(|c| (arena.offset_of(c.as_ptr()), c.capacity() as u32))
                    .collect(),
            })
            .collect();
        (kept, left_out)
    }

    /// Takes back `kept` (written down by the daemon that left this arena):
    /// claims each shard's blocks, checks that the store's current version
    /// of its key is the same shard and that every chunk still matches the
    /// drive's checksum of it (on all cores), and serves those that pass
    /// from the arena. Blocks of the rest are zeroed and freed. Call before
    /// serving, on a new tier over the adopted arena.
    pub fn adopt(&self, kept: Vec<KeptShard>) -> Adopted {
        let mut adopted = Adopted::default();
        let mut candidates = Vec::with_capacity(kept.len());
        for shard in kept {
            let name = format!("{}/{}", shard.meta.namespace, shard.meta.key);
            match self.claim(&shard) {
                Ok((entry, bufs)) => candidates.push((name, shard, entry, bufs)),
                Err(why) => adopted.discarded.push((name, why)),
            }
        }
        let verdicts = verify_all(&candidates);
        let arena = &self.inner.arena;
        let mut state = self.state();
        for ((name, shard, entry, bufs), verdict) in candidates.into_iter().zip(verdicts) {
            if let Err(why) = verdict {
                arena.scrub_on_free(&bufs);
                adopted.discarded.push((name, why));
                continue;
            }
            adopted.shards += 1;
            adopted.bytes += shard.meta.len;
            let chunks = bufs.into_iter().map(Arc::new).collect();
            let cached = CachedShard::new(entry.meta.clone(), shard.chunk_size, chunks, WriteBack::Clean);
            if let Err(newer) = self.replace(&mut state, Arc::new(cached)) {
                tracing::debug!(version = newer, "the arena already holds a newer version");
            }
        }
        drop(state);
        let stats = &self.inner.stats;
        stats.adopted_shards.store(adopted.shards, Ordering::Relaxed);
        stats.adopted_bytes.store(adopted.bytes, Ordering::Relaxed);
        stats
            .adoption_discarded
            .store(adopted.discarded.len() as u64, Ordering::Relaxed);
        adopted
    }

    /// The store's entry for `shard`'s key if it is the same version with
    /// the same layout, and `shard`'s blocks claimed from the arena.
    fn claim(&self, shard: &KeptShard) -> Result<(Arc<ShardEntry>, Vec<AlignedBuf>), String> {
        let meta = &shard.meta;
        let entry = self
            .inner
            .store
            .entry(&meta.namespace, &meta.key)
            .ok_or("no longer on the drive")?;
        // The same version, bytes and shape; the time it was stored may
        // differ (a write-back shard's flush stores it later).
        if !same_shard(&entry.meta, meta) {
            return Err(format!(
                "the drive holds version {} and the arena version {}",
                entry.meta.version, meta.version
            ));
        }
        let chunks = ShardLayout::chunk_count(meta.len, shard.chunk_size);
        if entry.layout.chunk_size != shard.chunk_size || shard.blocks.len() as u64 != chunks {
            return Err("its chunks on the drive differ from those in the arena".into());
        }
        let mut bufs = Vec::with_capacity(shard.blocks.len());
        for (i, &(offset, size)) in shard.blocks.iter().enumerate() {
            let len = (meta.len - i as u64 * shard.chunk_size as u64).min(shard.chunk_size as u64);
            if (size as u64) < len {
                return Err(format!("block {i} ({size} bytes) is shorter than its chunk"));
            }
            let mut buf = self.inner.arena.claim(offset, size)?;
            buf.set_len(len as usize);
            bufs.push(buf);
        }
        Ok((entry, bufs))
    }
}

/// Whether `a` and `b` describe the same version with the same bytes.
fn same_shard(a: &ShardMeta, b: &ShardMeta) -> bool {
    (a.version, a.len, a.crc32c, a.dtype, &a.shape) == (b.version, b.len, b.crc32c, b.dtype, &b.shape)
}

/// Checks every candidate's chunks against the drive's checksums, on as
/// many threads as there are cores.
fn verify_all(candidates: &[(String, KeptShard, Arc<ShardEntry>, Vec<AlignedBuf>)]) -> Vec<Result<(), String>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = candidates.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = candidates
            .chunks(per_thread)
            .map(|part| {
                let worker = scope.spawn(move || {
                    part.iter()
                        .map(|(_, _, entry, bufs)| verify(&entry.layout, bufs))
                        .collect::<Vec<_>>()
                });
                (part.len(), worker)
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|(len, worker)| {
                worker
                    .join()
                    .unwrap_or_else(|_| vec![Err("its check failed".to_string()); len])
            })
            .collect()
    })
}

/// Whether each chunk in `bufs` matches `layout`'s checksum of it.
fn verify(layout: &ShardLayout, bufs: &[AlignedBuf]) -> Result<(), String> {
    for (i, (buf, &expected)) in bufs.iter().zip(&layout.chunk_crcs).enumerate() {
        let actual = crc32c::crc32c(buf.as_slice());
        if actual != expected {
            return Err(format!(
                "chunk {i} in the arena has CRC32C {actual:#010x}, the drive's is {expected:#010x}"
            ));
        }
    }
    Ok(())
}
