//! Control messages: the small bincode part of a frame, between the header
//! and the raw payload.
//!
//! Which message a frame carries follows from its opcode and direction:
//!
//! | opcode | request control | response control (status ok) | payload |
//! |---|---|---|---|
//! | hello  | [`HelloRequest`]  | [`HelloResponse`]  | none |
//! | ping   | none              | none               | none |
//! | put    | [`PutRequest`]    | [`PutResponse`]    | request: the shard bytes |
//! | fetch  | [`FetchRequest`]  | [`FetchResponse`] in the first frame, none in the rest | response: the bytes, split over frames |
//! | stat   | [`StatRequest`]   | [`StatResponse`]   | none |
//! | list   | [`ListRequest`]   | [`ListResponse`]   | none |
//! | delete | [`DeleteRequest`] | [`DeleteResponse`] | none |
//! | status | none              | [`StatusResponse`] | none |
//! | prefetch | [`PrefetchRequest`] | [`PrefetchResponse`] | none |
//! | evict  | [`EvictRequest`]  | [`EvictResponse`]  | none |
//! | schedule | [`ScheduleRequest`] | [`ScheduleResponse`] | none |
//! | fetch_view | [`ViewRequest`] | [`ViewResponse`] | none |
//! | release | [`ReleaseRequest`] | [`ReleaseResponse`] | none |
//! | verify | [`VerifyRequest`] | [`VerifyResponse`] | none |
//! | namespaces | [`NamespacesRequest`] | [`NamespacesResponse`] | none |
//! | drop_namespace | [`DropNamespaceRequest`] | [`DropNamespaceResponse`] | none |
//! | set_quota | [`SetQuotaRequest`] | [`SetQuotaResponse`] | none |
//! | fetch_batch | [`FetchBatchRequest`] | a [`BatchPart`] in every frame | response: each member's bytes, in its `Head` and `Data` frames |
//! | view_batch | [`ViewBatchRequest`] | a [`BatchPart`] in every frame | none |
//! | stat_batch | [`StatBatchRequest`] | a [`BatchPart`] in every frame | none |
//! | register_region | [`RegisterRegionRequest`] | [`RegisterRegionResponse`] | none (Unix: the memfd as SCM_RIGHTS) |
//! | release_region | [`ReleaseRegionRequest`] | none | none |
//! | put_batch | [`PutBatchRequest`] | a [`BatchPart`] list in every frame | request: the bytes of the members not read from regions |
//! | authenticate | [`AuthenticateRequest`] | [`AuthenticateResponse`] | none |
//! | prepare_fetch | [`FetchBatchRequest`] | [`PrepareFetchResponse`] | none |
//! | fetch_prepared | [`FetchPreparedRequest`] | as fetch_batch | as fetch_batch |
//! | release_prepared | [`ReleasePreparedRequest`] | none | none |
//!
//! A response with any other status carries an [`ErrorResponse`].
//!
//! Until shardd 1.0, version 1 may still gain fields; from 1.0 on, new
//! fields come only with a new protocol version.

use serde::{Deserialize, Serialize};

use crate::{DType, Key, Namespace};

mod auth;
mod batch;

pub use auth::{AuthChallenge, AuthOffer, AuthenticateRequest, AuthenticateResponse, NONCE_LEN, PROOF_LEN};

pub use batch::{
    BatchPart, FetchBatchRequest, FetchPreparedRequest, MAX_BATCH_MEMBERS, PlacedHead, PlacedPart,
    PrepareFetchResponse, PutBatchRequest, PutMember, RegionPlace, RegisterRegionRequest, RegisterRegionResponse,
    ReleasePreparedRequest, ReleaseRegionRequest, StatBatchRequest, ViewBatchRequest,
};

/// First request on every connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloRequest {
    /// Oldest protocol version the client speaks.
    pub min_version: u16,
    /// Newest protocol version the client speaks.
    pub max_version: u16,
    /// Free-form client name and version, for the daemon's logs.
    pub client: String,
    /// Over a Unix socket: ask for the arena's memfd (sent with the answer
    /// as SCM_RIGHTS ancillary data) to use zero-copy fetches.
    pub want_arena: bool,
    /// Over TCP: the key the client will prove it holds, and its nonce.
    pub auth: Option<AuthOffer>,
}

/// The daemon's answer to [`HelloRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloResponse {
    /// The protocol version used from now on.
    pub version: u16,
    /// Daemon name and version, e.g. `shardd 0.1.0`.
    pub server: String,
    /// What the daemon accepts on this connection.
    pub limits: ServerLimits,
    /// Set when the arena's memfd came with this answer: map `size` bytes
    /// of it read-only to read zero-copy fetches.
    pub arena: Option<ArenaGrant>,
    /// Set when the daemon takes the client's [`AuthOffer`]: its nonce and
    /// its proof. The client checks the proof, then sends
    /// [`AuthenticateRequest`] before any other request.
    pub auth: Option<AuthChallenge>,
}

/// The arena a client may map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArenaGrant {
    /// Bytes to map.
    pub size: u64,
}

/// Limits a daemon announces in its hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerLimits {
    /// Largest shard (put payload), in bytes.
    pub max_payload_len: u64,
    /// Largest control message, in bytes.
    pub max_control_len: u32,
    /// Requests a connection may have in flight; the daemon stops reading
    /// beyond this until answers drain.
    pub max_inflight_requests: u32,
    /// Size of the payload frames a fetch answer is split into.
    pub chunk_size: u32,
    /// Milliseconds a connection may go without a request while nothing is
    /// in flight before the daemon closes it: a client pings well within
    /// it to keep an idle connection open.
    pub idle_timeout_ms: u64,
    /// Milliseconds a lease of a zero-copy view lasts, counted from when
    /// the view was asked for: a client must not read a view after it (the
    /// daemon may reuse its blocks a moment later).
    pub lease_timeout_ms: u64,
}

/// When a put is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Durability {
    /// Once the shard is on stable storage: it survives a crash of the daemon
    /// or the machine.
    #[default]
    Durable,
    /// Once the shard is in the daemon's memory; it is written to the drive
    /// in the background. A crash before that loses it; a failed write is
    /// reported by later stats and fetches of the shard.
    WriteBack,
    /// Like `WriteBack`, but the background write is never synced
    /// (`fdatasync`): once written it survives the daemon's crash, not the
    /// machine's (a power loss may lose it, leave an older version, or leave
    /// a torn copy that fails its checksum when read). For data a run
    /// recreates from its checkpoint, such as swap. A graceful stop syncs it.
    Scratch,
}

/// Metadata of one stored shard version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMeta {
    /// Its namespace.
    pub namespace: Namespace,
    /// Its key.
    pub key: Key,
    /// Its version (e.g. the training step); newer puts have larger versions.
    pub version: u64,
    /// Element type.
    pub dtype: DType,
    /// Tensor shape; may be empty.
    pub shape: Vec<u64>,
    /// Length in bytes.
    pub len: u64,
    /// CRC32C (Castagnoli) of all bytes.
    pub crc32c: u32,
    /// When the daemon stored it, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
}

/// Store a shard; the payload is its bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    /// Namespace to store into.
    pub namespace: Namespace,
    /// Key of the shard.
    pub key: Key,
    /// Version to store; must be newer than the stored one. `None` stores
    /// the stored version + 1 (or 1 for a new key).
    pub version: Option<u64>,
    /// Element type.
    pub dtype: DType,
    /// Tensor shape; may be empty. With a sized dtype it must match the length.
    pub shape: Vec<u64>,
    /// The CRC32C the sender computed; the daemon refuses the put with
    /// `checksum mismatch` if the bytes it received differ.
    pub crc32c: Option<u32>,
    /// When to acknowledge.
    pub durability: Durability,
}

/// Answer to a successful put.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    /// What is now stored.
    pub meta: ShardMeta,
}

/// A byte range of a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteRange {
    /// First byte.
    pub offset: u64,
    /// Number of bytes.
    pub len: u64,
}

/// Read a shard, or a byte range of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    /// Namespace.
    pub namespace: Namespace,
    /// Key.
    pub key: Key,
    /// Part to read; `None` reads the whole shard. A range that ends past the
    /// shard is `bad request`.
    pub range: Option<ByteRange>,
    /// The most bytes the client can take; a longer answer is refused with
    /// `too large` before any byte is sent.
    pub max_len: Option<u64>,
}

/// First frame of a fetch answer. Its payload and the payloads of the
/// following frames (flag MORE on all but the last) are the bytes, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchResponse {
    /// The shard read.
    pub meta: ShardMeta,
    /// Offset in the shard of the first byte sent.
    pub offset: u64,
    /// Total bytes sent over all frames of this answer.
    pub len: u64,
}

/// Metadata of a shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatRequest {
    /// Namespace.
    pub namespace: Namespace,
    /// Key.
    pub key: Key,
}

/// Answer to a stat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatResponse {
    /// The stored shard.
    pub meta: ShardMeta,
    /// Its state in the daemon's memory.
    pub cache: CacheState,
}

/// A shard's state in the pinned arena.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheState {
    /// It is in the arena (a fetch is a hit).
    pub resident: bool,
    /// It was acknowledged from memory and is not on the drive yet.
    pub dirty: bool,
    /// Why writing it to the drive failed, if it did.
    pub flush_error: Option<String>,
}

/// Shards of a namespace in key order, one page at a time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRequest {
    /// Namespace.
    pub namespace: Namespace,
    /// Only keys starting with this (may be empty).
    pub prefix: String,
    /// Only keys after this one (the last key of the previous page).
    pub start_after: Option<String>,
    /// Most entries to return (at most `MAX_LIST_LIMIT`).
    pub limit: u32,
}

/// A page of a listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListResponse {
    /// Shards, in key order.
    pub shards: Vec<ShardMeta>,
    /// Whether more entries follow; ask again with `start_after` set to the
    /// last key of this page.
    pub more: bool,
}

/// Remove a shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRequest {
    /// Namespace.
    pub namespace: Namespace,
    /// Key.
    pub key: Key,
    /// Remove only if this is the stored version (`version conflict` otherwise).
    pub version: Option<u64>,
}

/// Answer to a delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteResponse {
    /// The version that was removed.
    pub version: u64,
}

/// The daemon's state, answer to `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResponse {
    /// Daemon name and version.
    pub server: String,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// The I/O engine in use: `uring` or `psync`.
    pub io_engine: String,
    /// Shards stored.
    pub shards: u64,
    /// Bytes stored (shard payloads).
    pub bytes: u64,
    /// Shards moved aside because they failed verification, since the
    /// data directories were created.
    pub quarantined: u64,
    /// Client connections open now.
    pub connections: u64,
    /// Where it listens: `unix://PATH`, `tcp://ADDR`.
    pub listen: Vec<String>,
    /// One entry per data directory.
    pub data_dirs: Vec<DataDirStatus>,
    /// The pinned-memory tier, if the daemon has one.
    pub arena: Option<ArenaStatus>,
}

/// State and counters of the pinned-memory tier.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArenaStatus {
    /// Bytes of the arena.
    pub capacity_bytes: u64,
    /// Bytes in allocated blocks.
    pub used_bytes: u64,
    /// Bytes locked in RAM.
    pub locked_bytes: u64,
    /// Bytes from its start made resident and in use; below
    /// `capacity_bytes` while the daemon populates the rest after a start.
    pub populated_bytes: u64,
    /// Whether io_uring reads and writes it as registered (fixed) buffers.
    pub fixed_buffers: bool,
    /// Eviction policy: `lru` or `schedule`.
    pub policy: String,
    /// Shards in the arena.
    pub resident_shards: u64,
    /// Their bytes.
    pub resident_bytes: u64,
    /// Bytes acknowledged from memory and not on the drive yet.
    pub dirty_bytes: u64,
    /// Shards held by a lease now (being sent, or viewed in place by a
    /// local client): they are not evicted.
    pub leased_shards: u64,
    /// Fetches served from the arena.
    pub hits: u64,
    /// Fetches that had to read the drive.
    pub misses: u64,
    /// Misses read straight from the drive without caching.
    pub bypassed: u64,
    /// Shards read from the drive into the arena (by fetches and prefetches;
    /// concurrent requests for one shard share one load).
    pub loads: u64,
    /// Shards evicted under memory pressure.
    pub evictions: u64,
    /// Shards evicted on request (demote).
    pub demoted: u64,
    /// Prefetches queued.
    pub prefetch_queued: u64,
    /// Prefetches loaded.
    pub prefetch_completed: u64,
    /// Fetches that found their shard still being prefetched.
    pub prefetch_late: u64,
    /// Prefetched shards evicted before any fetch used them.
    pub prefetch_unused: u64,
    /// Puts acknowledged from memory.
    pub write_back_puts: u64,
    /// Write-back shards whose flush failed (counted once per shard).
    pub flush_failures: u64,
    /// Write-back shards replaced or deleted before their flush finished:
    /// not written to the drive, or the rest of their writing skipped.
    pub flushes_superseded: u64,
    /// Copies in the arena found not to match their CRC32C when checked
    /// again (on a client's report, or before a write-back reached the
    /// drive): dropped, never served again. Memory corruption.
    pub checksum_failures: u64,
    /// Bytes of arena blocks zeroed as they were freed, because the shard
    /// they held was deleted (dropped or replaced).
    pub scrubbed_bytes: u64,
    /// Shards of several chunks placed in one range of the arena (a view of
    /// one is a single extent).
    pub contiguous_shards: u64,
    /// Shards of several chunks that found no free range long enough and
    /// took blocks where they were (fragmentation).
    pub scattered_shards: u64,
    /// Shards taken back at start from an arena the previous daemon kept
    /// (a warm restart), served from it without reading the drive.
    pub adopted_shards: u64,
    /// Their bytes.
    pub adopted_bytes: u64,
    /// Shards of that arena left out (changed on the drive since, or no
    /// longer matching its checksums).
    pub adoption_discarded: u64,
    /// Failed write-back flushes tried again.
    pub flush_retries: u64,
    /// Write-back shards whose flush failed and that a later try wrote to
    /// a drive.
    pub flushes_recovered: u64,
}

/// One shard to prefetch, and how urgently.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefetchItem {
    /// Key.
    pub key: Key,
    /// Position in the order of use (lower first).
    pub order: u32,
    /// When it is needed, in milliseconds since the Unix epoch; items with a
    /// deadline go before items without, earliest first.
    pub deadline_unix_ms: Option<u64>,
}

/// Load shards into the arena ahead of use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefetchRequest {
    /// Namespace.
    pub namespace: Namespace,
    /// The shards.
    pub items: Vec<PrefetchItem>,
}

/// Answer to a prefetch: sent at once, the loads run in the background.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefetchResponse {
    /// Loads queued.
    pub queued: u32,
    /// Shards already in the arena (or loading).
    pub resident: u32,
    /// Keys with no shard.
    pub not_found: Vec<Key>,
}

/// What an eviction does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EvictMode {
    /// Free the arena copy, keep the drive's (written first if needed).
    #[default]
    Demote,
    /// Delete the shard.
    Drop,
}

/// Free arena copies of shards, or delete them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvictRequest {
    /// Namespace.
    pub namespace: Namespace,
    /// Keys.
    pub keys: Vec<Key>,
    /// What to do.
    pub mode: EvictMode,
}

/// What an eviction did, key by key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvictResponse {
    /// Evicted (or deleted).
    pub evicted: Vec<Key>,
    /// Not in the arena (or, with drop, not stored).
    pub not_resident: Vec<Key>,
    /// In use (leased or loading): not evicted.
    pub busy: Vec<Key>,
    /// Failed, with the reason.
    pub failed: Vec<(Key, String)>,
}

/// The access order of one training step (forward then backward, say),
/// repeated every step; the schedule eviction policy keeps the shards used
/// soonest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRequest {
    /// Namespace.
    pub namespace: Namespace,
    /// Keys in order of use; a key may occur more than once. Empty removes
    /// the order.
    pub keys: Vec<Key>,
}

/// Answer to a schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleResponse {
    /// Keys in the registered order.
    pub len: u32,
}

/// Where a zero-copy view's bytes are in the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    /// Offset in the arena.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
}

/// A zero-copy fetch; it also gives back leases of views the client is
/// done with (saving a `release` request per view).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewRequest {
    /// What to fetch.
    pub fetch: FetchRequest,
    /// Leases to give back first.
    pub release: Vec<u64>,
    /// Answer only from what is in the arena now: a shard that is not
    /// resident is answered `busy` at once instead of being loaded first
    /// (for a copying fetch, which then reads it over the socket while it
    /// loads, rather than waiting for the whole load).
    pub if_resident: bool,
    /// A further piece of one fetch that asked for its first piece already
    /// (a client copying a large shard out of the arena as it loads): not
    /// counted again as a hit or a miss, nor as another use of the shard by
    /// the eviction policy.
    pub continued: bool,
}

/// Answer to a zero-copy fetch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewResponse {
    /// The shard.
    pub meta: ShardMeta,
    /// Offset in the shard of the first byte.
    pub offset: u64,
    /// Bytes in the view.
    pub len: u64,
    /// The lease to give back (`release`) when done reading; until then the
    /// bytes stay where they are, unchanged.
    pub lease: u64,
    /// The bytes, in order, as pieces of the arena.
    pub extents: Vec<Extent>,
}

/// Give back leases of zero-copy views.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRequest {
    /// Leases.
    pub leases: Vec<u64>,
}

/// Answer to a release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseResponse {
    /// Leases given back (unknown ids are ignored).
    pub released: u32,
}

/// Check the arena's copy of a shard against its CRC32C again. A client
/// sends it when the bytes it read did not match; an operator with
/// `shardctl verify`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyRequest {
    /// Namespace.
    pub namespace: Namespace,
    /// Key.
    pub key: Key,
    /// Only this version (the one the client read); `None` checks whichever
    /// version the arena holds.
    pub version: Option<u64>,
}

/// What checking an arena copy found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VerifyOutcome {
    /// The arena holds no copy (of that version): nothing to check; fetches
    /// read the drive, whose chunks are checked as they are read.
    NotResident,
    /// The copy matches its CRC32C.
    Intact,
    /// The copy did not match and was dropped; the next fetch reads the
    /// shard from the drive again.
    Dropped,
    /// The copy did not match and was not on the drive yet (a write-back
    /// put): that version is lost, and fetches of it answer `checksum
    /// mismatch` until the shard is put again.
    Lost,
}

/// Answer to a verify.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyResponse {
    /// The version checked, when the arena held one.
    pub version: Option<u64>,
    /// What the check found.
    pub outcome: VerifyOutcome,
}

/// State of one data directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataDirStatus {
    /// Absolute path.
    pub path: String,
    /// Whether shards are read and written with O_DIRECT (bypassing the
    /// page cache); false where the file system refuses it (e.g. tmpfs).
    pub direct_io: bool,
    /// Shards stored in it.
    pub shards: u64,
    /// Shard bytes stored in it.
    pub bytes: u64,
    /// Size of its file system, in bytes.
    pub capacity_bytes: u64,
    /// Bytes available to the daemon on its file system.
    pub free_bytes: u64,
    /// Why its drive is failed, if it is (an I/O error, then a failed
    /// probe): its shards cannot be read and new ones go elsewhere.
    pub failed: Option<String>,
}

/// Body of every response whose status is not `ok`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// What went wrong, in words, for people.
    pub message: String,
    /// With `version conflict`: the version stored now.
    pub current_version: Option<u64>,
}

/// The namespaces the daemon holds (those the asking peer may read).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespacesRequest {
    /// Only namespaces whose names start with this.
    pub prefix: String,
}

/// What one namespace holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceUsage {
    /// The namespace.
    pub namespace: Namespace,
    /// Shards on the drives.
    pub shards: u64,
    /// Their bytes.
    pub drive_bytes: u64,
    /// Shards in the arena.
    pub arena_shards: u64,
    /// Their bytes.
    pub arena_bytes: u64,
    /// Shards in the arena not on a drive yet (write-back).
    pub unflushed: u64,
    /// Its quota of bytes on the drives in force, if any.
    pub max_drive_bytes: Option<u64>,
    /// Its quota of bytes in the arena in force, if any.
    pub max_arena_bytes: Option<u64>,
}

/// The namespaces, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespacesResponse {
    /// One entry per namespace.
    pub namespaces: Vec<NamespaceUsage>,
}

/// Remove every shard of a namespace, on the drives and in the arena.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropNamespaceRequest {
    /// The namespace.
    pub namespace: Namespace,
}

/// What a namespace drop removed; durable when answered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropNamespaceResponse {
    /// Shards removed from the drives.
    pub shards: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Shards forgotten that were only in the arena (write-back, not yet on
    /// a drive).
    pub unflushed: u64,
    /// Quarantined files removed.
    pub quarantined: u64,
}

/// Set (or, with `None`, clear) the quotas an admin gives one namespace;
/// they are kept across restarts and preferred to the configured ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetQuotaRequest {
    /// The namespace.
    pub namespace: Namespace,
    /// Bytes it may hold on the drives.
    pub max_drive_bytes: Option<u64>,
    /// Bytes of the arena its shards may take.
    pub max_arena_bytes: Option<u64>,
}

/// The quotas in force for the namespace afterwards (a cleared one falls
/// back to the configuration's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetQuotaResponse {
    /// Bytes on the drives.
    pub max_drive_bytes: Option<u64>,
    /// Bytes of the arena.
    pub max_arena_bytes: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    fn meta() -> ShardMeta {
        ShardMeta {
            namespace: Namespace::new("job").unwrap(),
            key: Key::new("w#0/2").unwrap(),
            version: 3,
            dtype: DType::F32,
            shape: vec![2],
            len: 8,
            crc32c: 0xdead_beef,
            created_unix_ms: 1,
        }
    }

    #[test]
    fn messages_round_trip() {
        let put = PutRequest {
            namespace: Namespace::new("job").unwrap(),
            key: Key::new("w#0/2").unwrap(),
            version: Some(7),
            dtype: DType::BF16,
            shape: vec![4, 4],
            crc32c: None,
            durability: Durability::Durable,
        };
        let bytes = codec::encode(&put).unwrap();
        assert_eq!(codec::decode::<PutRequest>(&bytes).unwrap(), put);

        let fetch = FetchResponse {
            meta: meta(),
            offset: 4,
            len: 4,
        };
        let bytes = codec::encode(&fetch).unwrap();
        assert_eq!(codec::decode::<FetchResponse>(&bytes).unwrap(), fetch);
    }

    /// Pins the control encoding (fixed-width little-endian integers,
    /// u64 length prefixes) so that a change of codec settings is noticed.
    #[test]
    fn golden_bytes_of_a_stat_request() {
        let stat = StatRequest {
            namespace: Namespace::new("ns").unwrap(),
            key: Key::new("k").unwrap(),
        };
        let bytes = codec::encode(&stat).unwrap();
        assert_eq!(
            bytes,
            [2, 0, 0, 0, 0, 0, 0, 0, b'n', b's', 1, 0, 0, 0, 0, 0, 0, 0, b'k']
        );
        let delete = DeleteRequest {
            namespace: Namespace::new("ns").unwrap(),
            key: Key::new("k").unwrap(),
            version: Some(258),
        };
        let bytes = codec::encode(&delete).unwrap();
        assert_eq!(&bytes[19..], [1, 2, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn invalid_names_and_trailing_bytes_do_not_decode() {
        // A stat request whose key contains a space.
        let bytes = [2, 0, 0, 0, 0, 0, 0, 0, b'n', b's', 1, 0, 0, 0, 0, 0, 0, 0, b' '];
        let err = codec::decode::<StatRequest>(&bytes).unwrap_err();
        assert!(err.to_string().contains("key"), "{err}");

        let mut bytes = codec::encode(&StatRequest {
            namespace: Namespace::new("ns").unwrap(),
            key: Key::new("k").unwrap(),
        })
        .unwrap();
        bytes.push(0);
        assert!(codec::decode::<StatRequest>(&bytes).is_err());
        // A string length far beyond the buffer is refused without allocating it.
        let huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(codec::decode::<StatRequest>(&huge).is_err());
    }
}
