//! Client of the shardd daemon, for trainers and tools.
//!
//! ```no_run
//! # async fn example() -> Result<(), shardd_client::ClientError> {
//! use shardd_client::{Client, PutOptions};
//!
//! let client = Client::connect("unix:///run/shardd/shardd.sock").await?;
//! client.put("job-42", "layers.0.attn.wq#0/8", vec![0u8; 4096], PutOptions::default()).await?;
//! let shard = client.fetch("job-42", "layers.0.attn.wq#0/8").await?;
//! assert_eq!(shard.data.len(), 4096);
//!
//! // Into a buffer the caller owns (e.g. pinned memory), without a copy:
//! let (buf, info) = client.fetch_into("job-42", "layers.0.attn.wq#0/8", None, vec![0u8; 1 << 20]).await;
//! let n = info?.len as usize;
//! # let _ = &buf[..n];
//! # Ok(()) }
//! ```
//!
//! A [`Client`] is one connection; clone it freely and issue requests from
//! many tasks at once: they are pipelined and answered as they complete.
//! Trainers that are not async use [`blocking::Client`].
//!
//! Over a Unix socket the client maps the daemon's pinned arena (unless
//! [`ClientOptions::zero_copy`] is off; once per process and daemon, however
//! many connections): [`Client::fetch_view`] then reads a
//! shard in place, and [`Client::fetch_into`] makes one copy, from the arena
//! into the caller's buffer (a shard of 4 MiB or more not yet in the arena
//! is copied out piece by piece as the daemon loads it; a smaller one comes
//! over the socket). [`Client::prefetch`], [`Client::evict`] and
//! [`Client::set_schedule`] steer what the daemon keeps in its arena.
//! The arena is mapped only if the daemon sent it as a sealed, read-only
//! memory file of the size it announced ([`Client::zero_copy_refused`] says
//! why not otherwise), and a [`ShardView`] fails every read once its
//! connection has ended, since the daemon then drops its lease.
//!
//! Many shards go in one request: [`Client::fetch_many`],
//! [`Client::fetch_many_into`] (each into its range of one buffer),
//! [`Client::view_many`] and [`Client::stat_many`] answer each member on its
//! own (one missing shard does not fail the others). A [`Region`] is memory
//! fetches fill in place: registered with [`Client::register_region`], a
//! [`Client::fetch_into_region`] names each shard's place in it, and over a
//! Unix socket the daemon writes the bytes there itself (nothing crosses
//! the socket); over TCP the receiver writes each payload there as it
//! arrives. A gather made every step can be kept on the daemon once
//! ([`Client::prepare_fetch_into_region`], a [`PreparedFetch`]) and run by
//! its id ([`Client::fetch_prepared`]): each run's request is a few bytes,
//! and fetches the shards as they are then. [`Client::put_many`] and
//! [`Client::put_from_region`] store many shards in one request, the latter
//! read by the daemon from the region.
//!
//! Over TCP the client authenticates with a pre-shared key
//! ([`ClientOptions::auth_key`], else the file `SHARDD_AUTH_KEY_FILE`
//! names) and checks that the daemon holds the same key; see [`auth`].
//! `tls://` endpoints speak the same protocol inside TLS, checking the
//! daemon's certificate ([`ClientOptions::tls`]); see [`tls`].
//!
//! A whole shard read that does not match its checksum is reported to the
//! daemon ([`Client::verify`]), which drops its copy in memory if that is
//! what went bad, and is read once more.
//!
//! A job that spans nodes, one daemon each, uses a [`Cluster`]:
//! [`Cluster::put_partitioned`] splits a tensor into one partition per node,
//! and [`Cluster::gather`] reads a layer's tensors from every node at once
//! into one buffer, with one batched request per node. A [`Trainer`] runs the step loop on top: it learns the
//! order layers are used in, keeps prefetch hints flowing ahead of the layer
//! in use, and reports the time each gather waited.
//!
//! # Layout
//!
//! * [`client`]: the async [`Client`] and its options.
//! * [`blocking`]: the same API, blocking.
//! * [`cluster`]: one daemon per node as one store: partitioned tensors and
//!   layer gathers.
//! * [`trainer`]: a training loop's gathers, with prefetch hints from a
//!   recorded or declared layer order and stall accounting.
//! * [`view`]: zero-copy views of shards in the daemon's arena.
//! * [`copy`]: copies of large pieces with streaming stores, into memory
//!   the copying thread does not read again (the daemon's writes into
//!   regions, copies out of views).
//! * [`region`]: memory fetches fill in place ([`Region`]), registered on
//!   a connection with [`Client::register_region`].
//! * [`endpoint`]: `unix://` and `tcp://` addresses.
//! * [`auth`]: the key a TCP connection authenticates with.
//! * [`tls`]: TLS on TCP (`tls://` endpoints).
//! * `connection`: pipelining: the reader and writer tasks of a connection.
//! * `arena`: the hello, and mapping the daemon's arena (Unix socket).
//! * [`files`] (feature `files`): files in and out, `.safetensors` import
//!   and export.
//! * [`progress`]: progress of long transfers.
//! * [`error`]: the error type, [`ClientError`].

mod arena;
pub mod auth;
pub mod blocking;
pub mod client;
pub mod cluster;
mod connection;
pub mod copy;
pub mod endpoint;
pub mod error;
#[cfg(feature = "files")]
pub mod files;
pub mod progress;
pub mod region;
pub mod tls;
pub mod trainer;
pub mod view;

pub use client::{
    BatchResult, Client, ClientOptions, FetchInfo, PreparedFetch, PutItem, PutOptions, RegisteredRegion, Shard, Wanted,
};
pub use cluster::{Cluster, ClusterError, ClusterOptions, GatheredTensor, Layer};
pub use connection::FetchBuf;
pub use endpoint::Endpoint;
pub use error::ClientError;
pub use progress::{NoProgress, Progress};
pub use region::{Region, RegionOptions};
pub use shardd_protocol as protocol;
pub use shardd_protocol::auth::AuthKey;
pub use shardd_protocol::{
    ByteRange, CacheState, DType, DropNamespaceResponse, Durability, EvictMode, EvictResponse, NamespaceUsage,
    PrefetchItem, PrefetchResponse, SetQuotaResponse, ShardMeta, StatResponse, Status, VerifyOutcome, VerifyResponse,
};
pub use trainer::{StepStats, Trainer, TrainerOptions};
pub use view::{ContiguousView, ShardView};
