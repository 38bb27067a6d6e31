//! A training job's daemons, one per node, used as one store: each tensor is
//! partitioned across all the nodes and a layer is gathered from all of them
//! at once, so that reading it uses every node's drives (ZeRO-Infinity's
//! bandwidth-centric partitioning).
//!
//! Membership comes from the trainer's launcher, not from us: a list of
//! daemon endpoints in rank order ([`Cluster::new`]) or a hostfile
//! ([`Cluster::from_hostfile`]). Node `i` of the list holds partition `i` of
//! every tensor, so every process of a job must use the same list in the same
//! order. The node on this machine can be reached through its daemon's Unix
//! socket ([`ClusterOptions::local`]): its partitions are then read from the
//! daemon's arena in place (one copy, into the caller's buffer).
//!
//! Connections are made when first needed, kept (several per node, so that
//! large transfers spread over them) and made again after a daemon restart.
//! A node that is down, slower than [`ClusterOptions::request_timeout`] or
//! answers an error fails the operation with a [`ClusterError`] naming the
//! node and the shard.
//!
//! # Layout
//!
//! * [`partition`]: how a tensor is split over the nodes, its manifest, and
//!   [`Cluster::put_partitioned`].
//! * [`gather`]: layers, and [`Cluster::gather`] into one buffer.
//! * `node`: the connections to one node's daemon.
//! * `split`: one caller buffer lent out as disjoint parts.

pub mod gather;
mod node;
pub mod partition;
mod split;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;

use crate::{ClientError, ClientOptions, Endpoint, EvictMode, EvictResponse, PrefetchItem, PrefetchResponse};
use node::Node;
use shardd_protocol::StatusResponse;

pub use gather::{GatheredTensor, Layer};
pub use partition::{PartitionRead, Partitioning, TensorManifest};

/// Tries of a demotion whose shards are still leased ([`Cluster::demote_on`]).
const DEMOTE_TRIES: u32 = 4;
/// Wait between them: a view's lease goes back within a millisecond.
const DEMOTE_RETRY: Duration = Duration::from_millis(5);

/// Port of a hostfile entry that gives none: the daemon's default TCP port.
pub const DEFAULT_PORT: u16 = 7070;

/// How a cluster connects and splits tensors.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Connections kept to each node; large partitions are fetched in pieces
    /// spread over them.
    pub connections_per_node: usize,
    /// Longest wait to connect to a node.
    pub connect_timeout: Duration,
    /// Longest wait for any one request to a node.
    pub request_timeout: Duration,
    /// Partitions start at multiples of this many bytes of the tensor (a
    /// power of two; 4 KiB keeps them aligned for direct I/O and for any
    /// element type).
    pub partition_align: u64,
    /// Partitions larger than this are fetched as ranges of at most this
    /// many bytes, over all of the node's connections at once.
    pub piece_size: u64,
    /// The node whose daemon runs on this machine, and its Unix socket
    /// (`unix:///run/shardd/shardd.sock`), used instead of the node's listed
    /// address so that its partitions are read in place from its arena.
    pub local: Option<(usize, String)>,
    /// Options of each connection (its timeouts are set from the above).
    pub client: ClientOptions,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            connections_per_node: 2,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            partition_align: 4096,
            piece_size: 16 << 20,
            local: None,
            client: ClientOptions::default(),
        }
    }
}

/// What went wrong in a cluster operation; each variant says where.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The node list or options are not usable: fix them.
    #[error("invalid cluster: {0}")]
    Invalid(String),
    /// A hostfile line is not an address.
    #[error("hostfile {path}, line {line}: {reason}")]
    Hostfile {
        /// The file.
        path: String,
        /// Its line, from 1.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A node failed the request: it is down, slower than the timeout, or
    /// answered an error (`source` says which). A node that comes back is
    /// used again by the next request.
    #[error("node {node} ({endpoint}): {what}: {source}")]
    Node {
        /// The node's index in the cluster.
        node: usize,
        /// Its endpoint.
        endpoint: String,
        /// The request, with the shard it was for.
        what: String,
        /// The error.
        source: Box<ClientError>,
    },
    /// A tensor is not what the request needs (not stored partitioned, laid
    /// out for another node count, torn by a concurrent put, ...).
    #[error("tensor {namespace}/{tensor}: {reason}")]
    Tensor {
        /// Namespace.
        namespace: String,
        /// Tensor name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// The caller's buffer cannot hold the layer: pass one of
    /// [`Layer::len`] bytes or more.
    #[error("buffer of {capacity} bytes is too small for layer {layer} ({needed} bytes)")]
    BufferTooSmall {
        /// The layer.
        layer: String,
        /// Bytes needed.
        needed: u64,
        /// Bytes given.
        capacity: u64,
    },
}

impl ClusterError {
    /// The node a [`ClusterError::Node`] names.
    pub fn node(&self) -> Option<usize> {
        match self {
            ClusterError::Node { node, .. } => Some(*node),
            _ => None,
        }
    }
}

/// The daemons of a job, one per node, in rank order. Cheap to clone; use it
/// from many tasks at once.
#[derive(Clone, Debug)]
pub struct Cluster {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    nodes: Vec<Node>,
    options: ClusterOptions,
}

impl Cluster {
    /// A cluster of the daemons at `endpoints` (`tcp://HOST:PORT` or
    /// `unix://PATH`), node `i` at `endpoints[i]`. Nothing is connected
    /// yet; see [`Cluster::connect`].
    pub fn new<S: AsRef<str>>(endpoints: &[S], options: ClusterOptions) -> Result<Cluster, ClusterError> {
        if endpoints.is_empty() {
            return Err(ClusterError::Invalid("no nodes given".into()));
        }
        if endpoints.len() > shardd_protocol::names::MAX_SHARD_COUNT as usize {
            return Err(ClusterError::Invalid(format!(
                "{} nodes; at most {} are supported",
                endpoints.len(),
                shardd_protocol::names::MAX_SHARD_COUNT
            )));
        }
        if options.connections_per_node == 0 {
            return Err(ClusterError::Invalid("connections_per_node must be at least 1".into()));
        }
        if !options.partition_align.is_power_of_two() {
            return Err(ClusterError::Invalid(format!(
                "partition_align {} is not a power of two",
                options.partition_align
            )));
        }
        if options.piece_size == 0 {
            return Err(ClusterError::Invalid("piece_size must be at least 1 byte".into()));
        }
        let mut addresses: Vec<String> = endpoints.iter().map(|e| e.as_ref().to_string()).collect();
        if let Some((node, socket)) = &options.local {
            let Some(address) = addresses.get_mut(*node) else {
                return Err(ClusterError::Invalid(format!(
                    "the local node {node} is not one of the {} nodes",
                    endpoints.len()
                )));
            };
            *address = socket.clone();
        }
        let mut client = options.client.clone();
        client.connect_timeout = options.connect_timeout;
        client.request_timeout = Some(options.request_timeout);
        let mut nodes = Vec::with_capacity(addresses.len());
        for (index, address) in addresses.iter().enumerate() {
            let endpoint = Endpoint::parse(address)
                .map_err(|e| ClusterError::Invalid(format!("node {index}: {e}")))?
                .to_string();
            nodes.push(Node::new(index, endpoint, client.clone(), options.connections_per_node));
        }
        Ok(Cluster {
            inner: Arc::new(Inner { nodes, options }),
        })
    }

    /// Like [`Cluster::new`], then connects to every node once, so that a
    /// wrong address or a daemon that is down is reported at once.
    pub async fn connect<S: AsRef<str>>(endpoints: &[S], options: ClusterOptions) -> Result<Cluster, ClusterError> {
        let cluster = Cluster::new(endpoints, options)?;
        let checks = cluster.inner.nodes.iter().map(|node| node.client(0, "connect"));
        for result in join_all(checks).await {
            result?;
        }
        Ok(cluster)
    }

    /// A cluster from a hostfile (see [`parse_hostfile`]).
    pub fn from_hostfile(path: impl AsRef<Path>, options: ClusterOptions) -> Result<Cluster, ClusterError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ClusterError::Hostfile {
            path: path.display().to_string(),
            line: 0,
            reason: format!("cannot read it: {e}"),
        })?;
        let endpoints = parse_hostfile(&text).map_err(|(line, reason)| ClusterError::Hostfile {
            path: path.display().to_string(),
            line,
            reason,
        })?;
        Cluster::new(&endpoints, options)
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.inner.nodes.len()
    }

    /// Always false: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.inner.nodes.is_empty()
    }

    /// Endpoint of node `node` (the local socket for the local node).
    pub fn endpoint(&self, node: usize) -> Option<&str> {
        self.inner.nodes.get(node).map(|n| n.endpoint.as_str())
    }

    /// The options it was built with.
    pub fn options(&self) -> &ClusterOptions {
        &self.inner.options
    }

    /// A connection to node `node`, made if needed.
    pub async fn client(&self, node: usize) -> Result<crate::Client, ClusterError> {
        let n = self.checked(node)?;
        Ok(n.client(n.next_slot(), "connect").await?.0)
    }

    /// Asks node `node` to load `items` into its arena ahead of use.
    pub async fn prefetch_on(
        &self,
        node: usize,
        namespace: &str,
        items: Vec<PrefetchItem>,
    ) -> Result<PrefetchResponse, ClusterError> {
        let what = format!("prefetch {} shards of {namespace}", items.len());
        self.checked(node)?
            .call(&what, |client| {
                let items = items.clone();
                async move { client.prefetch(namespace, items).await }
            })
            .await
    }

    /// Asks node `node` to evict `keys` from its arena (`Demote` keeps them
    /// on its drives). The leases of this cluster's views on the node are
    /// given back first; shards leased by other readers stay, in the
    /// answer's `busy` list.
    pub async fn evict_on(
        &self,
        node: usize,
        namespace: &str,
        keys: &[String],
        mode: EvictMode,
    ) -> Result<EvictResponse, ClusterError> {
        let what = format!("evict {} shards of {namespace}", keys.len());
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let node = self.checked(node)?;
        node.flush_releases();
        node.call(&what, |client| {
            let keys = &keys;
            async move { client.evict(namespace, keys, mode).await }
        })
        .await
    }

    /// Demotes `keys` from node `node`'s arena (they stay on its drives).
    /// The leases of this cluster's own views of them travel back within a
    /// millisecond, so keys found busy are tried again a few times; the
    /// answer gathers every try, with what is still busy (read by others).
    pub async fn demote_on(
        &self,
        node: usize,
        namespace: &str,
        keys: &[String],
    ) -> Result<EvictResponse, ClusterError> {
        let mut total = EvictResponse::default();
        let mut keys = keys.to_vec();
        for attempt in 0..DEMOTE_TRIES {
            if attempt > 0 {
                tokio::time::sleep(DEMOTE_RETRY).await;
            }
            let answer = self.evict_on(node, namespace, &keys, EvictMode::Demote).await?;
            total.evicted.extend(answer.evicted);
            total.not_resident.extend(answer.not_resident);
            total.failed.extend(answer.failed);
            keys = answer.busy.iter().map(|k| k.to_string()).collect();
            total.busy = answer.busy;
            if keys.is_empty() {
                break;
            }
        }
        Ok(total)
    }

    /// Registers with node `node` the order in which a training step uses
    /// its shards `keys`, for schedule-aware eviction (empty removes it).
    pub async fn set_schedule_on(&self, node: usize, namespace: &str, keys: &[String]) -> Result<(), ClusterError> {
        let what = format!("set the schedule of {namespace} ({} keys)", keys.len());
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.checked(node)?
            .call(&what, |client| {
                let keys = &keys;
                async move { client.set_schedule(namespace, keys).await }
            })
            .await
    }

    /// Node `node`'s status (arena counters among it).
    pub async fn status_of(&self, node: usize) -> Result<StatusResponse, ClusterError> {
        self.checked(node)?
            .call("status", |client| async move { client.status().await })
            .await
    }

    fn checked(&self, node: usize) -> Result<&Node, ClusterError> {
        self.inner
            .nodes
            .get(node)
            .ok_or_else(|| ClusterError::Invalid(format!("no node {node}; the cluster has {}", self.len())))
    }

    fn node(&self, node: usize) -> &Node {
        &self.inner.nodes[node]
    }
}

/// Parses a hostfile: one node per line in rank order, as `tcp://HOST:PORT`,
/// `unix://PATH`, `HOST:PORT` or `HOST` (port 7070). Anything after the first
/// word (such as MPI's `slots=8`), blank lines and `#` comments are
/// ignored. Errors carry the line number.
pub fn parse_hostfile(text: &str) -> Result<Vec<String>, (usize, String)> {
    let mut endpoints = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(word) = line.split_whitespace().next() else {
            continue;
        };
        let endpoint = if word.contains("://") || word.starts_with('/') {
            word.to_string()
        } else if word.starts_with('[') || word.matches(':').count() == 1 {
            format!("tcp://{word}")
        } else if word.contains(':') {
            // A bare IPv6 address.
            format!("tcp://[{word}]:{DEFAULT_PORT}")
        } else {
            format!("tcp://{word}:{DEFAULT_PORT}")
        };
        let endpoint = if endpoint.starts_with("tcp://[") && !endpoint.contains("]:") {
            format!("{endpoint}:{DEFAULT_PORT}")
        } else {
            endpoint
        };
        Endpoint::parse(&endpoint).map_err(|e| (n + 1, e.to_string()))?;
        endpoints.push(endpoint);
    }
    if endpoints.is_empty() {
        return Err((0, "no nodes listed".into()));
    }
    Ok(endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostfile_lines_become_endpoints() {
        let text = "# rank order\nnode-a slots=8\nnode-b:7171\n\n10.0.0.3  # third\ntcp://node-d:7072\nunix:///run/shardd/shardd.sock\n[::1]:7070\n::1\n";
        let endpoints = parse_hostfile(text).unwrap();
        assert_eq!(
            endpoints,
            [
                "tcp://node-a:7070",
                "tcp://node-b:7171",
                "tcp://10.0.0.3:7070",
                "tcp://node-d:7072",
                "unix:///run/shardd/shardd.sock",
                "tcp://[::1]:7070",
                "tcp://[::1]:7070",
            ]
        );
    }

    #[test]
    fn hostfile_errors_name_the_line() {
        assert_eq!(parse_hostfile("# nothing\n\n").unwrap_err().0, 0);
        let (line, reason) = parse_hostfile("node-a\nnode-b:99999\n").unwrap_err();
        assert_eq!(line, 2);
        assert!(reason.contains("port"), "{reason}");
    }

    #[test]
    fn a_hostfile_that_cannot_be_read_is_named() {
        let error = Cluster::from_hostfile("/nonexistent/hosts", ClusterOptions::default()).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("/nonexistent/hosts") && message.contains("cannot read"),
            "{message}"
        );
    }

    #[test]
    fn bad_cluster_options_are_refused() {
        let bad = |options: ClusterOptions| Cluster::new(&["tcp://127.0.0.1:1"], options).unwrap_err().to_string();
        assert!(
            bad(ClusterOptions {
                partition_align: 3000,
                ..Default::default()
            })
            .contains("power of two")
        );
        assert!(
            bad(ClusterOptions {
                local: Some((1, "unix:///x.sock".into())),
                ..Default::default()
            })
            .contains("local node 1")
        );
        let empty: [&str; 0] = [];
        assert!(Cluster::new(&empty, ClusterOptions::default()).is_err());
        assert!(
            Cluster::new(&["http://x"], ClusterOptions::default())
                .unwrap_err()
                .to_string()
                .contains("node 0")
        );
    }
}
