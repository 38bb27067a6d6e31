//! Batched requests: many shards in one request, one answer frame (or, for
//! a fetch's bytes, several) per member as soon as that member is ready.
//!
//! Every frame of a batch's answer but the last carries the MORE flag and
//! status ok; its control message is a list of [`BatchPart`]s, each naming
//! its member by index (its place in the request), so members are answered
//! in whatever order they become ready, and a frame's payload says where it
//! lands (member, byte offset) without the receiver keeping any other
//! state: the shape of an RDMA WRITE with immediate data. The last frame's
//! list ends with [`BatchPart::Done`]. A member that fails is answered by a
//! [`BatchPart::Failed`] with its status; the other members go on. A
//! request that cannot be taken at all (too many members, a malformed
//! control message) is answered by one error frame without MORE, like any
//! other request.

use serde::{Deserialize, Serialize};

use crate::dtype::DType;
use crate::names::{Key, Namespace};

use super::{FetchRequest, FetchResponse, PutRequest, ShardMeta, StatRequest, StatResponse, ViewResponse};

/// Most members one batched request may name.
pub const MAX_BATCH_MEMBERS: usize = 1024;

/// Many fetches at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchBatchRequest {
    /// The members; each member's `max_len` bounds its own answer.
    pub members: Vec<FetchRequest>,
    /// Where each member's bytes go, one per member, or empty: the bytes
    /// come in the answer's payloads. With places, over a Unix socket the
    /// daemon writes each member's bytes into its place itself and answers
    /// `Placed` (no payload); over TCP it sends them as without places, and
    /// the client's receiver puts them there. Either way each place is
    /// checked against its region's registration first.
    pub places: Vec<RegionPlace>,
}

/// Bytes of a registered region: `len` from `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionPlace {
    /// The region, as its registration answered.
    pub region: u32,
    /// Offset in the region.
    pub offset: u64,
    /// Bytes from there that the member may fill (its answer's length at
    /// most; a longer answer is `too large`).
    pub len: u64,
}

/// Register a region of the client's memory. Over a Unix socket the
/// region's memfd comes with the frame's first byte (SCM_RIGHTS): it must
/// be sealed against shrinking (`F_SEAL_SHRINK`), at least `len` bytes
/// long and wholly in memory. Over TCP nothing comes with it: the region
/// stays in the client, which places the bytes itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRegionRequest {
    /// Bytes of the region.
    pub len: u64,
}

/// Answer to a region registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRegionResponse {
    /// The region's id on this connection (its key, in RDMA terms), until
    /// released or the connection ends.
    pub region: u32,
    /// Whether the daemon mapped it and writes into it itself (Unix); if
    /// not, the bytes come in payloads for the client to place.
    pub mapped: bool,
}

/// Forget a registered region (the daemon unmaps it once no fetch into it
/// is under way).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRegionRequest {
    /// The region.
    pub region: u32,
}

/// Answer to `prepare_fetch`: the id of the kept batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepareFetchResponse {
    /// The batch's id on this connection, until released or the
    /// connection ends.
    pub batch: u32,
}

/// Run a kept fetch batch again: its members are fetched (into their
/// places) as a `FetchBatchRequest` of them would be, against the shards
/// and regions as they are now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchPreparedRequest {
    /// The batch, as `prepare_fetch` answered.
    pub batch: u32,
}

/// Forget a kept fetch batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasePreparedRequest {
    /// The batch.
    pub batch: u32,
}

/// Many zero-copy views at once (Unix socket, arena mapped).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewBatchRequest {
    /// The members.
    pub members: Vec<FetchRequest>,
    /// Leases to give back first.
    pub release: Vec<u64>,
    /// Answer each member only from what is in the arena now (`busy` for
    /// one that is not), as `ViewRequest::if_resident`.
    pub if_resident: bool,
}

/// Many puts at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutBatchRequest {
    /// The members, stored in order.
    pub members: Vec<PutMember>,
}

/// One put of a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutMember {
    /// What to store.
    pub put: PutRequest,
    /// Its bytes.
    pub len: u64,
    /// Where they are: a place in a region the daemon mapped (Unix), which
    /// it reads them from; `None`, or a region it did not map (TCP), and
    /// they are the next `len` bytes of the frame's payload. The payload is
    /// exactly the bytes of those members, in order.
    pub source: Option<RegionPlace>,
}

/// Metadata of many shards at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatBatchRequest {
    /// The members.
    pub members: Vec<StatRequest>,
}

/// What the daemon wrote into a member's place: the shard's metadata but
/// for the names the request already gave (a `Placed` part is the status
/// of a write, the immediate data of an RDMA WRITE, kept small).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedHead {
    /// The version written.
    pub version: u64,
    /// Element type.
    pub dtype: DType,
    /// Tensor shape; may be empty.
    pub shape: Vec<u64>,
    /// The shard's length in bytes.
    pub shard_len: u64,
    /// CRC32C of the whole shard.
    pub crc32c: u32,
    /// When the daemon stored it, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Offset in the shard of the first byte written.
    pub offset: u64,
    /// Bytes written, from the start of the member's place.
    pub len: u64,
}

impl PlacedHead {
    /// What a fetch of `len` bytes from `offset` of the shard `meta`
    /// describes wrote.
    pub fn of(meta: &ShardMeta, offset: u64, len: u64) -> PlacedHead {
        PlacedHead {
            version: meta.version,
            dtype: meta.dtype,
            shape: meta.shape.clone(),
            shard_len: meta.len,
            crc32c: meta.crc32c,
            created_unix_ms: meta.created_unix_ms,
            offset,
            len,
        }
    }

    /// The fetch answer it stands for, with the names the request gave.
    pub fn named(self, namespace: Namespace, key: Key) -> FetchResponse {
        FetchResponse {
            meta: ShardMeta {
                namespace,
                key,
                version: self.version,
                dtype: self.dtype,
                shape: self.shape,
                len: self.shard_len,
                crc32c: self.crc32c,
                created_unix_ms: self.created_unix_ms,
            },
            offset: self.offset,
            len: self.len,
        }
    }
}

/// `BatchPart::Placed { index, head: PlacedHead::of(meta, offset, len) }`
/// as the daemon sends it, encoded from the shard's metadata in place
/// (its shape is not copied): the same bytes on the wire.
#[derive(Clone, Copy, Debug)]
pub struct PlacedPart<'a> {
    /// The member's place in the request.
    pub index: u32,
    /// The shard written.
    pub meta: &'a ShardMeta,
    /// Offset in the shard of the first byte written.
    pub offset: u64,
    /// Bytes written.
    pub len: u64,
}

impl Serialize for PlacedPart<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStructVariant;

        /// [`PlacedHead`], field for field, borrowing the shape.
        #[derive(Serialize)]
        struct Head<'a> {
            version: u64,
            dtype: DType,
            shape: &'a [u64],
            shard_len: u64,
            crc32c: u32,
            created_unix_ms: u64,
            offset: u64,
            len: u64,
        }
        let meta = self.meta;
        // `Placed` is the third variant of `BatchPart`.
        let mut part = serializer.serialize_struct_variant("BatchPart", 2, "Placed", 2)?;
        part.serialize_field("index", &self.index)?;
        part.serialize_field(
            "head",
            &Head {
                version: meta.version,
                dtype: meta.dtype,
                shape: &meta.shape,
                shard_len: meta.len,
                crc32c: meta.crc32c,
                created_unix_ms: meta.created_unix_ms,
                offset: self.offset,
                len: self.len,
            },
        )?;
        part.end()
    }
}

/// An answer (or part of one) about a member of a batch. The control
/// message of every frame of a batch's answer is a list of them
/// (`Vec<BatchPart>`): a frame with a payload carries exactly one, the
/// `Head` or `Data` its payload belongs to; a frame without a payload
/// carries one or more answers that need no bytes, so that many small
/// members share a frame. The last frame's list ends with `Done`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchPart {
    /// A fetch member begins: which bytes of which shard. This frame's
    /// payload, and the payloads of the member's `Data` frames, are its
    /// bytes; an empty answer has no payload and no `Data` frames.
    Head {
        /// The member's place in the request.
        index: u32,
        /// The shard and which of its bytes come.
        head: FetchResponse,
    },
    /// More bytes of a fetch member: this frame's payload, `at` bytes into
    /// the member's answer (after its `Head`, in order for each member).
    Data {
        /// The member's place in the request.
        index: u32,
        /// Offset of this payload in the member's answer.
        at: u64,
    },
    /// A fetch member the daemon wrote into its place itself: what it
    /// wrote (no payload). The bytes are there when this frame is read.
    Placed {
        /// The member's place in the request.
        index: u32,
        /// Which version and which of its bytes were written.
        head: PlacedHead,
    },
    /// A put member, stored.
    Stored {
        /// The member's place in the request.
        index: u32,
        /// What was stored.
        meta: ShardMeta,
    },
    /// A view member's answer.
    View {
        /// The member's place in the request.
        index: u32,
        /// Where its bytes are in the arena, and its lease.
        view: ViewResponse,
    },
    /// A stat member's answer.
    Stat {
        /// The member's place in the request.
        index: u32,
        /// The shard's metadata and arena state.
        stat: StatResponse,
    },
    /// The member failed (a fetch member may fail after its `Head` and some
    /// of its bytes).
    Failed {
        /// The member's place in the request.
        index: u32,
        /// How: a `Status` code.
        status: u16,
        /// Why, for a person.
        message: String,
        /// For `version conflict`: the stored version.
        current_version: Option<u64>,
    },
    /// The last frame of the answer: every member has been answered.
    Done {
        /// Members answered ok.
        ok: u32,
        /// Members that failed.
        failed: u32,
    },
}

impl BatchPart {
    /// The member the part is about (`None` for `Done`).
    pub fn index(&self) -> Option<u32> {
        match self {
            BatchPart::Head { index, .. }
            | BatchPart::Data { index, .. }
            | BatchPart::Placed { index, .. }
            | BatchPart::Stored { index, .. }
            | BatchPart::View { index, .. }
            | BatchPart::Stat { index, .. }
            | BatchPart::Failed { index, .. } => Some(*index),
            BatchPart::Done { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    /// The bytes of a batch answer's last frame, as docs/PROTOCOL.md shows
    /// them: a list (u64 count), each part its u32 variant index then its
    /// fields.
    #[test]
    fn a_list_of_parts_has_the_documented_bytes() {
        let parts = vec![
            BatchPart::Data { index: 2, at: 4096 },
            BatchPart::Done { ok: 1, failed: 2 },
        ];
        let bytes = codec::encode(&parts).unwrap();
        let mut expected = Vec::new();
        expected.extend_from_slice(&2u64.to_le_bytes());
        expected.extend_from_slice(&1u32.to_le_bytes()); // Data
        expected.extend_from_slice(&2u32.to_le_bytes());
        expected.extend_from_slice(&4096u64.to_le_bytes());
        expected.extend_from_slice(&7u32.to_le_bytes()); // Done
        expected.extend_from_slice(&1u32.to_le_bytes());
        expected.extend_from_slice(&2u32.to_le_bytes());
        assert_eq!(bytes, expected);
        assert_eq!(codec::decode::<Vec<BatchPart>>(&bytes).unwrap(), parts);
    }

    #[test]
    fn a_placed_part_encoded_in_place_is_the_placed_part_it_stands_for() {
        let meta = ShardMeta {
            namespace: Namespace::new("job").unwrap(),
            key: Key::new("layers.3.w").unwrap(),
            version: 7,
            dtype: DType::BF16,
            shape: vec![1024, 64],
            len: 131_072,
            crc32c: 0xdead_beef,
            created_unix_ms: 1_700_000_000_000,
        };
        let part = BatchPart::Placed {
            index: 9,
            head: PlacedHead::of(&meta, 4096, 8192),
        };
        let in_place = PlacedPart {
            index: 9,
            meta: &meta,
            offset: 4096,
            len: 8192,
        };
        let bytes = codec::encode(&in_place).unwrap();
        assert_eq!(bytes, codec::encode(&part).unwrap());
        assert_eq!(codec::decode::<BatchPart>(&bytes).unwrap(), part);
    }

    /// The kept-batch messages are a `u32` each, little-endian.
    #[test]
    fn prepared_batch_messages_are_their_id() {
        let id = 0x0102_0304u32;
        let expected = id.to_le_bytes().to_vec();
        assert_eq!(codec::encode(&PrepareFetchResponse { batch: id }).unwrap(), expected);
        assert_eq!(codec::encode(&FetchPreparedRequest { batch: id }).unwrap(), expected);
        assert_eq!(codec::encode(&ReleasePreparedRequest { batch: id }).unwrap(), expected);
        assert_eq!(
            codec::decode::<FetchPreparedRequest>(&expected).unwrap(),
            FetchPreparedRequest { batch: id }
        );
    }
}
