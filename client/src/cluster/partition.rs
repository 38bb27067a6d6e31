//! How a tensor is split over the nodes, and the manifest that says so.
//!
//! A tensor of `len` bytes on `n` nodes is cut into `n` partitions of
//! `size = align_up(ceil(len / n), align)` bytes; partition `i` holds bytes
//! `[i * size, min((i + 1) * size, len))` and is stored on node `i` under
//! the key `NAME#i/n`. Where `len` is small or does not divide evenly the
//! last partitions are shorter, or empty; empty ones are not stored.
//!
//! The tensor's **manifest** (its dtype, shape, length, node count,
//! partition size and version) is stored on node 0 under the tensor's own
//! name, written after every partition, so a reader that finds a manifest
//! finds its partitions. All partitions of one put carry the manifest's
//! version; a gather checks that the partitions it read agree. A tensor
//! stored again with another layout (another node count) has the partitions
//! of the old layout deleted from the nodes still in the cluster; those on
//! nodes it no longer lists are out of its reach and stay.

use std::ops::Range;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use shardd_protocol::{DType, Durability, Key, Status, codec};

use super::{Cluster, ClusterError};
use crate::{ClientError, FetchBuf, PutOptions};
use futures_util::future::join_all;

/// First bytes of a manifest shard.
const MANIFEST_MAGIC: &[u8; 8] = b"SHDDTNSR";
/// Version of the manifest's encoding.
const MANIFEST_FORMAT: u32 = 1;

/// How a tensor's bytes are cut into one partition per node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partitioning {
    /// Bytes of the tensor.
    pub len: u64,
    /// Nodes (partitions).
    pub nodes: u32,
    /// Bytes of every partition but the last non-empty one.
    pub size: u64,
}

impl Partitioning {
    /// The partitioning of `len` bytes over `nodes` nodes, each partition
    /// starting at a multiple of `align` (a power of two).
    pub fn new(len: u64, nodes: u32, align: u64) -> Partitioning {
        let nodes = nodes.max(1);
        let size = len.div_ceil(nodes as u64).next_multiple_of(align.max(1));
        Partitioning { len, nodes, size }
    }

    /// The bytes of the tensor that partition `index` holds (empty past the
    /// end of the tensor).
    pub fn range(&self, index: u32) -> Range<u64> {
        let start = (index as u64 * self.size).min(self.len);
        let end = (start + self.size).min(self.len);
        start..end
    }

    /// The non-empty partitions: (index, bytes of the tensor).
    pub fn parts(&self) -> impl Iterator<Item = (u32, Range<u64>)> + '_ {
        (0..self.nodes)
            .map(|i| (i, self.range(i)))
            .filter(|(_, r)| !r.is_empty())
    }
}

/// What is needed to find and reassemble a partitioned tensor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorManifest {
    /// The tensor's name (its manifest's key).
    pub name: String,
    /// Version of every partition.
    pub version: u64,
    /// Element type.
    pub dtype: DType,
    /// Shape (may be empty).
    pub shape: Vec<u64>,
    /// How it is cut.
    pub partitioning: Partitioning,
}

impl TensorManifest {
    /// Key of partition `index`.
    pub fn part_key(&self, index: u32) -> String {
        part_key(&self.name, index, self.partitioning.nodes)
    }

    fn encode(&self) -> Result<Vec<u8>, ClientError> {
        let body = codec::encode(&(MANIFEST_FORMAT, self)).map_err(|e| ClientError::Remote {
            status: Status::BadRequest,
            message: format!("cannot encode the manifest: {e}"),
            current_version: None,
        })?;
        Ok([MANIFEST_MAGIC.as_slice(), &body].concat())
    }

    fn decode(bytes: &[u8]) -> Result<TensorManifest, String> {
        let body = bytes
            .strip_prefix(MANIFEST_MAGIC.as_slice())
            .ok_or("it is not a partitioned tensor (no manifest under its name)")?;
        let (format, manifest): (u32, TensorManifest) =
            codec::decode(body).map_err(|e| format!("its manifest does not decode: {e}"))?;
        if format != MANIFEST_FORMAT {
            return Err(format!(
                "its manifest has format {format}; this client reads {MANIFEST_FORMAT}"
            ));
        }
        Ok(manifest)
    }
}

/// A partition read by [`Cluster::read_partition`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionRead {
    /// The tensor's manifest (its dtype, shape and how it is cut).
    pub manifest: TensorManifest,
    /// The node whose partition it is.
    pub node: usize,
    /// Bytes of the tensor it holds (empty: that node holds none of it).
    pub range: Range<u64>,
}

/// Key of partition `index` of `nodes` of tensor `name`.
pub fn part_key(name: &str, index: u32, nodes: u32) -> String {
    format!("{name}#{index}/{nodes}")
}

/// How to store a partitioned tensor.
#[derive(Clone, Debug, Default)]
pub struct TensorOptions {
    /// Element type.
    pub dtype: DType,
    /// Shape (may be empty); when given, the bytes must hold exactly its
    /// elements.
    pub shape: Vec<u64>,
    /// Version to store, newer than the stored one (e.g. the training
    /// step); `None` takes the newest version found on any node, plus one.
    pub version: Option<u64>,
    /// When each node acknowledges its partition.
    pub durability: Durability,
}

impl Cluster {
    /// Splits a tensor into one partition per node, stores each on its node
    /// (in parallel), then its manifest on node 0. Returns the manifest.
    pub async fn put_partitioned(
        &self,
        namespace: &str,
        tensor: &str,
        bytes: impl Into<Bytes>,
        dtype: DType,
        shape: Vec<u64>,
    ) -> Result<TensorManifest, ClusterError> {
        let options = TensorOptions {
            dtype,
            shape,
            ..TensorOptions::default()
        };
        self.put_partitioned_with(namespace, tensor, bytes, options).await
    }

    /// [`Cluster::put_partitioned`] with a version and durability.
    pub async fn put_partitioned_with(
        &self,
        namespace: &str,
        tensor: &str,
        bytes: impl Into<Bytes>,
        options: TensorOptions,
    ) -> Result<TensorManifest, ClusterError> {
        let bytes: Bytes = bytes.into();
        let bad = |reason: String| ClusterError::Tensor {
            namespace: namespace.to_string(),
            tensor: tensor.to_string(),
            reason,
        };
        let key = Key::new(tensor).map_err(|e| bad(e.to_string()))?;
        if key.shard_index().is_some() {
            return Err(bad(
                "a partitioned tensor's name has no #I/N suffix: the partitions get one".into(),
            ));
        }
        if let (Some(size), false) = (options.dtype.size(), options.shape.is_empty()) {
            let elements = options.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
            if elements.and_then(|e| e.checked_mul(size)) != Some(bytes.len() as u64) {
                return Err(bad(format!(
                    "{} bytes do not hold shape {:?} of {}",
                    bytes.len(),
                    options.shape,
                    options.dtype.name()
                )));
            }
        }
        let nodes = self.len() as u32;
        let partitioning = Partitioning::new(bytes.len() as u64, nodes, self.options().partition_align);
        let previous = self.manifest(namespace, tensor).await?;
        let version = match options.version {
            Some(v) => v,
            None => {
                self.next_version(namespace, tensor, &partitioning, previous.as_ref())
                    .await?
                    + 1
            }
        };
        let manifest = TensorManifest {
            name: tensor.to_string(),
            version,
            dtype: options.dtype,
            shape: options.shape.clone(),
            partitioning,
        };
        let puts = partitioning.parts().map(|(index, range)| {
            let data = bytes.slice(range.start as usize..range.end as usize);
            let shape = match options.dtype.size() {
                Some(size) if (data.len() as u64).is_multiple_of(size) => vec![data.len() as u64 / size],
                _ => Vec::new(),
            };
            let put = PutOptions {
                version: Some(version),
                dtype: options.dtype,
                shape,
                durability: options.durability,
            };
            self.put_part(namespace, index as usize, manifest.part_key(index), data, put)
        });
        for result in join_all(puts).await {
            result?;
        }
        let put = PutOptions {
            version: Some(version),
            dtype: DType::Raw,
            shape: Vec::new(),
            durability: options.durability,
        };
        let encoded = manifest
            .encode()
            .map_err(|e| self.node(0).error("encode manifest", e))?;
        self.put_part(namespace, 0, tensor.to_string(), Bytes::from(encoded), put)
            .await?;
        if let Some(previous) = previous {
            self.remove_stale_parts(namespace, &previous, &manifest).await;
        }
        Ok(manifest)
    }

    /// The manifest of `tensor`, if one is stored.
    pub async fn manifest(&self, namespace: &str, tensor: &str) -> Result<Option<TensorManifest>, ClusterError> {
        let what = format!("fetch manifest {namespace}/{tensor}");
        let fetched = self
            .node(0)
            .call(&what, |client| async move { client.fetch(namespace, tensor).await })
            .await;
        match fetched {
            Ok(shard) => TensorManifest::decode(&shard.data)
                .map(Some)
                .map_err(|reason| ClusterError::Tensor {
                    namespace: namespace.to_string(),
                    tensor: tensor.to_string(),
                    reason,
                }),
            Err(ClusterError::Node { source, .. }) if source.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads node `node`'s partition of `tensor` from that node's daemon
    /// into the start of `buf` (on the rank whose node it is, the local
    /// daemon: one copy out of its arena). With `torch.distributed`, each
    /// rank reads its own partition so and an all-gather assembles the
    /// tensor. The buffer comes back in every case.
    pub async fn read_partition<B: FetchBuf>(
        &self,
        namespace: &str,
        tensor: &str,
        node: usize,
        mut buf: B,
    ) -> (B, Result<PartitionRead, ClusterError>) {
        let bad = |reason: String| ClusterError::Tensor {
            namespace: namespace.to_string(),
            tensor: tensor.to_string(),
            reason,
        };
        let manifest = match self.manifest(namespace, tensor).await {
            Ok(Some(manifest)) => manifest,
            Ok(None) => return (buf, Err(bad("not found (store it with put_partitioned)".into()))),
            Err(e) => return (buf, Err(e)),
        };
        if manifest.partitioning.nodes as usize != self.len() || node >= self.len() {
            let reason = format!(
                "stored across {} nodes; this cluster has {}, and node {node} was asked for",
                manifest.partitioning.nodes,
                self.len()
            );
            return (buf, Err(bad(reason)));
        }
        let range = manifest.partitioning.range(node as u32);
        if range.is_empty() {
            return (buf, Ok(PartitionRead { manifest, node, range }));
        }
        let key = manifest.part_key(node as u32);
        let what = format!("fetch {namespace}/{key}");
        let target = self.node(node);
        let slot = target.next_slot();
        let mut retried = false;
        loop {
            let (client, fresh) = match target.client(slot, &what).await {
                Ok(client) => client,
                Err(e) => return (buf, Err(e)),
            };
            let (back, result) = client.fetch_into(namespace, &key, None, buf).await;
            buf = back;
            let info = match result {
                Ok(info) => info,
                Err(e) if !fresh && !retried && super::node::connection_lost(&e) => {
                    retried = true;
                    continue;
                }
                Err(e) => return (buf, Err(target.error(&what, e))),
            };
            if info.meta.version != manifest.version || info.len != range.end - range.start {
                let reason = format!(
                    "partition {node} holds version {} ({} bytes) where the manifest says version {} ({} bytes): \
                     a put is in progress",
                    info.meta.version,
                    info.len,
                    manifest.version,
                    range.end - range.start
                );
                return (buf, Err(bad(reason)));
            }
            return (buf, Ok(PartitionRead { manifest, node, range }));
        }
    }

    /// The newest version stored of the manifest or any partition.
    async fn next_version(
        &self,
        namespace: &str,
        tensor: &str,
        partitioning: &Partitioning,
        previous: Option<&TensorManifest>,
    ) -> Result<u64, ClusterError> {
        let stats = partitioning.parts().map(|(index, _)| async move {
            let key = part_key(tensor, index, partitioning.nodes);
            let what = format!("stat {namespace}/{key}");
            let stat = self
                .node(index as usize)
                .call(&what, |client| {
                    let key = key.clone();
                    async move { client.stat(namespace, &key).await }
                })
                .await;
            match stat {
                Ok(stat) => Ok(stat.meta.version),
                Err(ClusterError::Node { source, .. }) if source.is_not_found() => Ok(0),
                Err(e) => Err(e),
            }
        });
        let mut newest = previous.map_or(0, |m| m.version);
        for version in join_all(stats).await {
            newest = newest.max(version?);
        }
        Ok(newest)
    }

    async fn put_part(
        &self,
        namespace: &str,
        node: usize,
        key: String,
        data: Bytes,
        options: PutOptions,
    ) -> Result<(), ClusterError> {
        let what = format!("put {namespace}/{key}");
        let version = options.version;
        let result = self
            .node(node)
            .call(&what, |client| {
                let (key, data, options) = (key.clone(), data.clone(), options.clone());
                async move { client.put(namespace, &key, data, options).await }
            })
            .await;
        let Err(error) = result else {
            return Ok(());
        };
        // Retried after the connection broke, and the first try had landed.
        if let ClusterError::Node { source, .. } = &error
            && let ClientError::Remote {
                status: Status::VersionConflict,
                current_version: Some(current),
                ..
            } = source.as_ref()
            && Some(*current) == version
            && self.landed(namespace, node, &key, &data).await
        {
            return Ok(());
        }
        Err(error)
    }

    /// Whether `key` on `node` holds exactly `data` (after a retried put).
    async fn landed(&self, namespace: &str, node: usize, key: &str, data: &Bytes) -> bool {
        let what = format!("stat {namespace}/{key}");
        let stat = self
            .node(node)
            .call(&what, |client| async move { client.stat(namespace, key).await })
            .await;
        stat.is_ok_and(|s| s.meta.len == data.len() as u64 && s.meta.crc32c == crc32c::crc32c(data))
    }

    /// Deletes partitions the previous layout had and the new one has not
    /// (another node count, or a partition that is now empty). Best effort:
    /// a failure is logged, and the manifest no longer points at them.
    async fn remove_stale_parts(&self, namespace: &str, previous: &TensorManifest, current: &TensorManifest) {
        let keep: Vec<String> = current.partitioning.parts().map(|(i, _)| current.part_key(i)).collect();
        let stale = previous
            .partitioning
            .parts()
            .map(|(i, _)| (i as usize, previous.part_key(i)))
            .filter(|(node, key)| !keep.contains(key) && *node < self.len());
        let deletes = stale.map(|(node, key)| async move {
            let what = format!("delete {namespace}/{key}");
            let result = self
                .node(node)
                .call(&what, |client| {
                    let key = key.clone();
                    async move { client.delete(namespace, &key, None).await }
                })
                .await;
            match result {
                Ok(_) => {}
                Err(ClusterError::Node { source, .. }) if source.is_not_found() => {}
                Err(e) => tracing::warn!(error = %e, "could not delete a partition of an older layout"),
            }
        });
        join_all(deletes).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(p: &Partitioning) -> u64 {
        let mut next = 0;
        for (i, range) in p.parts() {
            assert_eq!(range.start, next, "partition {i} follows the previous one");
            assert_eq!(range.start % 4096, 0);
            next = range.end;
        }
        next
    }

    #[test]
    fn partitions_cover_the_tensor_in_aligned_pieces() {
        for len in [0, 1, 4095, 4096, 4097, 3 * 4096 + 1, 1 << 20, (1 << 20) + 3, 10_000_000] {
            for nodes in 1..=5 {
                let p = Partitioning::new(len, nodes, 4096);
                assert_eq!(covered(&p), len, "len {len} nodes {nodes}");
                assert!(p.parts().count() <= nodes as usize);
                assert!(p.size * nodes as u64 >= len);
            }
        }
        let p = Partitioning::new(100, 3, 4096);
        assert_eq!(p.parts().collect::<Vec<_>>(), [(0, 0..100)]);
        assert_eq!(p.range(2), 100..100);
        let p = Partitioning::new(3 << 20, 3, 4096);
        assert_eq!(
            p.parts().map(|(_, r)| r.end - r.start).collect::<Vec<_>>(),
            [1 << 20; 3]
        );
    }

    #[test]
    fn manifests_round_trip_and_plain_shards_are_told_apart() {
        let manifest = TensorManifest {
            name: "layers.0.w".into(),
            version: 7,
            dtype: DType::BF16,
            shape: vec![3, 5],
            partitioning: Partitioning::new(30, 2, 4096),
        };
        let bytes = manifest.encode().unwrap();
        assert_eq!(TensorManifest::decode(&bytes).unwrap(), manifest);
        assert_eq!(manifest.part_key(1), "layers.0.w#1/2");
        assert!(
            TensorManifest::decode(b"plain bytes")
                .unwrap_err()
                .contains("not a partitioned tensor")
        );
    }
}
