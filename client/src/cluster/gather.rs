//! Layers, and gathering one from every node into one buffer, like an
//! allgather's output.
//!
//! A [`Layer`] is a named, ordered list of partitioned tensors, resolved once
//! (their manifests read from node 0). [`Cluster::gather`] then fetches
//! every partition of every tensor from all nodes at once, each straight
//! into its place in the caller's buffer: tensor `t` starts at
//! [`GatheredTensor::offset`] (a multiple of [`TENSOR_ALIGN`]), its
//! partitions back to back. Each node gets one batched request for all of
//! its partitions of the layer (or, for more than
//! [`super::ClusterOptions::piece_size`] bytes, one per connection kept to
//! it). Partitions larger than the piece size are fetched as ranges, spread
//! over those requests, and checked against the shard's CRC32C as a whole. The buffer comes back in every case; the gather is complete only
//! when it returns `Ok`.

use std::ops::Range;

use futures_util::future::join_all;
use shardd_protocol::{ByteRange, DType, MAX_BATCH_MEMBERS};

use super::node::connection_lost;
use super::partition::TensorManifest;
use super::split::{Part, SplitBuf};
use super::{Cluster, ClusterError};
use crate::{ClientError, FetchBuf, Wanted};

/// Each tensor of a gathered layer starts at a multiple of this many bytes
/// of the buffer.
pub const TENSOR_ALIGN: u64 = 256;

/// A named, ordered list of partitioned tensors, with where each goes in a
/// gather buffer.
#[derive(Clone, Debug)]
pub struct Layer {
    name: String,
    namespace: String,
    tensors: Vec<(TensorManifest, u64)>,
    len: u64,
}

/// Where a gather put one tensor, and what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatheredTensor {
    /// The tensor's name.
    pub name: String,
    /// Its first byte in the buffer.
    pub offset: u64,
    /// Its bytes.
    pub len: u64,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<u64>,
    /// The version every partition had.
    pub version: u64,
}

impl Layer {
    /// The layer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Bytes a gather buffer needs.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of its tensors (without alignment padding).
    pub fn bytes(&self) -> u64 {
        self.tensors.iter().map(|(m, _)| m.partitioning.len).sum()
    }

    /// Its tensors' manifests, in order.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorManifest> {
        self.tensors.iter().map(|(m, _)| m)
    }

    /// Keys of the partitions node `node` holds, in tensor order.
    pub fn keys_on(&self, node: usize) -> Vec<String> {
        self.tensors
            .iter()
            .filter(|(m, _)| !m.partitioning.range(node as u32).is_empty())
            .map(|(m, _)| m.part_key(node as u32))
            .collect()
    }
}

/// One fetch of a gather.
#[derive(Debug)]
struct Piece {
    tensor: usize,
    node: usize,
    key: String,
    /// Bytes of the whole partition.
    part_len: u64,
    /// The range of the partition, or `None` for all of it.
    range: Option<ByteRange>,
    /// Where it goes in the buffer.
    place: Range<usize>,
}

/// What one fetch found.
#[derive(Debug)]
struct PieceDone {
    version: u64,
    shard_crc: u32,
    /// CRC32C of the piece's bytes, for partitions fetched in ranges.
    crc: Option<u32>,
}

impl Cluster {
    /// Resolves a layer: reads the manifests of `tensors` (stored with
    /// [`Cluster::put_partitioned`]) and places them in a gather buffer.
    pub async fn layer(&self, namespace: &str, name: &str, tensors: &[&str]) -> Result<Layer, ClusterError> {
        let manifests = join_all(tensors.iter().map(|t| self.manifest(namespace, t))).await;
        let mut placed = Vec::with_capacity(tensors.len());
        let mut end = 0u64;
        for (tensor, manifest) in tensors.iter().zip(manifests) {
            let bad = |reason: String| ClusterError::Tensor {
                namespace: namespace.to_string(),
                tensor: tensor.to_string(),
                reason,
            };
            let manifest = manifest?.ok_or_else(|| bad("not found (store it with put_partitioned)".into()))?;
            if manifest.partitioning.nodes as usize != self.len() {
                return Err(bad(format!(
                    "stored across {} nodes; this cluster has {}",
                    manifest.partitioning.nodes,
                    self.len()
                )));
            }
            let offset = end.next_multiple_of(TENSOR_ALIGN);
            end = offset + manifest.partitioning.len;
            placed.push((manifest, offset));
        }
        Ok(Layer {
            name: name.to_string(),
            namespace: namespace.to_string(),
            tensors: placed,
            len: end,
        })
    }

    /// Fetches every partition of every tensor of `layer` from all nodes at
    /// once, straight into `buf` (at least [`Layer::len`] bytes). The buffer
    /// comes back in every case; its contents are complete only with `Ok`.
    pub async fn gather<B: FetchBuf>(
        &self,
        layer: &Layer,
        mut buf: B,
    ) -> (B, Result<Vec<GatheredTensor>, ClusterError>) {
        let capacity = buf.as_mut().len() as u64;
        if capacity < layer.len {
            let error = ClusterError::BufferTooSmall {
                layer: layer.name.clone(),
                needed: layer.len,
                capacity,
            };
            return (buf, Err(error));
        }
        let pieces = self.pieces(layer);
        // A put racing with the gather can leave partitions of two versions:
        // read once more before calling the tensor torn.
        for attempt in 0..2 {
            let split = SplitBuf::new(buf);
            let places: Vec<Range<usize>> = pieces.iter().map(|p| p.place.clone()).collect();
            let mut parts: Vec<Option<Part<B>>> = split.parts(&places).into_iter().map(Some).collect();
            let batches = self.batches(&pieces);
            let fetches = batches.iter().map(|batch| {
                let batch_parts: Vec<Part<B>> = batch
                    .iter()
                    .map(|&i| parts[i].take().expect("each piece once"))
                    .collect();
                self.fetch_batch(&layer.namespace, &pieces, batch, batch_parts)
            });
            let fetched = join_all(fetches).await;
            drop(parts);
            buf = match split.into_inner() {
                Ok(buf) => buf,
                Err(_) => unreachable!("every part is dropped once its fetch is over"),
            };
            let mut done: Vec<Option<Result<PieceDone, ClusterError>>> = (0..pieces.len()).map(|_| None).collect();
            for (batch, results) in batches.iter().zip(fetched) {
                let results = match results {
                    Ok(results) => results,
                    Err(e) => return (buf, Err(e)),
                };
                for (&i, result) in batch.iter().zip(results) {
                    done[i] = Some(result);
                }
            }
            let done = done.into_iter().map(|d| d.expect("every piece is in a batch"));
            let mut results = Vec::with_capacity(pieces.len());
            for result in done {
                match result {
                    Ok(done) => results.push(done),
                    Err(e) => return (buf, Err(e)),
                }
            }
            match self.check(layer, &pieces, &results) {
                Ok(tensors) => return (buf, Ok(tensors)),
                Err(Check::Torn(_)) if attempt == 0 => continue,
                Err(Check::Corrupt { node, key, version, .. }) if attempt == 0 => {
                    self.report_mismatch(node, &layer.namespace, &key, version).await;
                    continue;
                }
                Err(Check::Torn(e) | Check::Corrupt { error: e, .. }) => return (buf, Err(e)),
            }
        }
        unreachable!("the second attempt returns")
    }

    fn pieces(&self, layer: &Layer) -> Vec<Piece> {
        let piece_size = self.options().piece_size;
        let mut pieces = Vec::new();
        for (tensor, (manifest, offset)) in layer.tensors.iter().enumerate() {
            for (index, range) in manifest.partitioning.parts() {
                let part_len = range.end - range.start;
                let base = (offset + range.start) as usize;
                let key = manifest.part_key(index);
                let mut from = 0;
                while from < part_len {
                    let len = (part_len - from).min(piece_size);
                    pieces.push(Piece {
                        tensor,
                        node: index as usize,
                        key: key.clone(),
                        part_len,
                        range: (len < part_len).then_some(ByteRange { offset: from, len }),
                        place: base + from as usize..base + (from + len) as usize,
                    });
                    from += len;
                }
            }
        }
        pieces
    }

    /// The pieces of each request: one per node, or for a node whose
    /// pieces add up to more than [`super::ClusterOptions::piece_size`],
    /// one per connection kept to it (at most), the pieces dealt out in
    /// turn, so that large partitions move over all of them at once.
    fn batches(&self, pieces: &[Piece]) -> Vec<Vec<usize>> {
        let options = self.options();
        let mut batches = Vec::new();
        for node in 0..self.len() {
            let mine: Vec<usize> = (0..pieces.len()).filter(|&i| pieces[i].node == node).collect();
            if mine.is_empty() {
                continue;
            }
            let bytes: u64 = mine
                .iter()
                .map(|&i| (pieces[i].place.end - pieces[i].place.start) as u64)
                .sum();
            let spread = bytes.div_ceil(options.piece_size.max(1)) as usize;
            let count = spread
                .clamp(1, options.connections_per_node.max(1))
                .max(mine.len().div_ceil(MAX_BATCH_MEMBERS));
            let mut node_batches = vec![Vec::new(); count];
            for (n, i) in mine.into_iter().enumerate() {
                node_batches[n % count].push(i);
            }
            batches.extend(node_batches);
        }
        batches
    }

    /// Fetches the pieces `batch` (all of one node) in one request, each
    /// into its part; the outcome of each.
    async fn fetch_batch<B: FetchBuf>(
        &self,
        namespace: &str,
        pieces: &[Piece],
        batch: &[usize],
        mut parts: Vec<Part<B>>,
    ) -> Result<Vec<Result<PieceDone, ClusterError>>, ClusterError> {
        let node_index = pieces[batch[0]].node;
        let node = self.node(node_index);
        let what = |piece: &Piece| match piece.range {
            Some(r) => format!(
                "fetch {namespace}/{} bytes {}..{}",
                piece.key,
                r.offset,
                r.offset + r.len
            ),
            None => format!("fetch {namespace}/{}", piece.key),
        };
        let wanted: Vec<Wanted> = batch
            .iter()
            .map(|&i| {
                let piece = &pieces[i];
                let w = Wanted::new(namespace, piece.key.as_str());
                match piece.range {
                    Some(range) => w.range(range),
                    None => w,
                }
            })
            .collect();
        // What the request was for, naming its first shards.
        let mut keys: Vec<&str> = batch.iter().map(|&i| pieces[i].key.as_str()).collect();
        keys.dedup();
        let named: Vec<String> = keys.iter().take(3).map(|k| format!("{namespace}/{k}")).collect();
        let batch_what = match keys.len() {
            0..=3 => format!("fetch {}", named.join(", ")),
            n => format!("fetch {} and {} more", named.join(", "), n - 3),
        };
        let slot = node.next_slot();
        let mut retried = false;
        let infos = loop {
            let (client, fresh) = node.client(slot, &batch_what).await?;
            let (back, result) = client.fetch_many_into_each(&wanted, parts).await;
            parts = back;
            match result {
                Ok(infos) => break infos,
                Err(e) if !fresh && !retried && connection_lost(&e) => retried = true,
                Err(e) => return Err(node.error(&batch_what, e)),
            }
        };
        Ok(batch
            .iter()
            .zip(infos)
            .zip(parts.iter_mut())
            .map(|((&i, info), part)| {
                let piece = &pieces[i];
                let info = info.map_err(|e| node.error(&what(piece), e))?;
                let expected = (piece.place.end - piece.place.start) as u64;
                if info.meta.len != piece.part_len || info.len != expected {
                    return Err(node.error(
                        &what(piece),
                        ClientError::Remote {
                            status: shardd_protocol::Status::BadRequest,
                            message: format!(
                                "the partition holds {} bytes where the layer expects {}: the tensor was stored \
                                 again with another size; resolve the layer again",
                                info.meta.len, piece.part_len
                            ),
                            current_version: Some(info.meta.version),
                        },
                    ));
                }
                let crc = piece
                    .range
                    .is_some()
                    .then(|| crc32c::crc32c(&part.as_mut()[..expected as usize]));
                Ok(PieceDone {
                    version: info.meta.version,
                    shard_crc: info.meta.crc32c,
                    crc,
                })
            })
            .collect())
    }

    /// Reports a partition that did not match its checksum to its node, so
    /// that the daemon checks (and drops) its copy in memory before the
    /// partition is read again.
    async fn report_mismatch(&self, node: usize, namespace: &str, key: &str, version: u64) {
        let what = format!("verify {namespace}/{key}");
        let checked = self
            .node(node)
            .call(&what, |client| async move {
                client.verify(namespace, key, Some(version)).await
            })
            .await;
        match checked {
            Ok(answer) => tracing::warn!(
                node, shard = %format!("{namespace}/{key}"), version, outcome = ?answer.outcome,
                "a gathered partition did not match its checksum; the daemon checked its copy in memory; gathering again"
            ),
            Err(e) => tracing::warn!(
                node, error = %e,
                "a gathered partition did not match its checksum and its daemon could not check its copy; gathering again"
            ),
        }
    }

    /// Checks that each tensor's partitions agree on a version and that
    /// partitions read in ranges match their checksums.
    fn check(&self, layer: &Layer, pieces: &[Piece], done: &[PieceDone]) -> Result<Vec<GatheredTensor>, Check> {
        let mut versions: Vec<Option<u64>> = vec![None; layer.tensors.len()];
        let mut n = 0;
        while n < pieces.len() {
            let piece = &pieces[n];
            let (manifest, _) = &layer.tensors[piece.tensor];
            let torn = |versions: String| {
                Check::Torn(ClusterError::Tensor {
                    namespace: layer.namespace.clone(),
                    tensor: manifest.name.clone(),
                    reason: format!("its partitions hold different versions ({versions}): a put is in progress"),
                })
            };
            // The pieces of one partition are consecutive.
            let mut end = n;
            let mut crc: Option<u32> = None;
            while end < pieces.len() && pieces[end].tensor == piece.tensor && pieces[end].key == piece.key {
                if done[end].version != done[n].version {
                    return Err(torn(format!(
                        "{} and {} of {}",
                        done[n].version, done[end].version, piece.key
                    )));
                }
                if let Some(c) = done[end].crc {
                    let len = pieces[end].place.end - pieces[end].place.start;
                    crc = Some(crc.map_or(c, |sum| crc32c::crc32c_combine(sum, c, len)));
                }
                end += 1;
            }
            if let Some(actual) = crc
                && actual != done[n].shard_crc
            {
                let node = self.node(piece.node);
                let error = node.error(
                    &format!("fetch {}/{}", layer.namespace, piece.key),
                    ClientError::ChecksumMismatch {
                        shard: format!("{}/{}", layer.namespace, piece.key),
                        version: done[n].version,
                        expected: done[n].shard_crc,
                        actual,
                    },
                );
                return Err(Check::Corrupt {
                    node: piece.node,
                    key: piece.key.clone(),
                    version: done[n].version,
                    error,
                });
            }
            match versions[piece.tensor] {
                Some(v) if v != done[n].version => {
                    return Err(torn(format!("{v} and {} of {}", done[n].version, piece.key)));
                }
                _ => versions[piece.tensor] = Some(done[n].version),
            }
            n = end;
        }
        Ok(layer
            .tensors
            .iter()
            .zip(versions)
            .map(|((manifest, offset), version)| GatheredTensor {
                name: manifest.name.clone(),
                offset: *offset,
                len: manifest.partitioning.len,
                dtype: manifest.dtype,
                shape: manifest.shape.clone(),
                // An empty tensor has no partition: its manifest's version.
                version: version.unwrap_or(manifest.version),
            })
            .collect())
    }
}

/// Why a gather's check failed.
enum Check {
    /// Partitions of two versions: worth reading again.
    Torn(ClusterError),
    /// A partition read in ranges does not match its checksum: worth
    /// reporting to its node (which checks its copy in memory) and reading
    /// again.
    Corrupt {
        node: usize,
        key: String,
        version: u64,
        error: ClusterError,
    },
}
