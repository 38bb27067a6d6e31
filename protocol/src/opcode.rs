//! Operation codes carried in the frame header.

/// What a frame asks for. Responses carry the opcode of their request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Opcode {
    /// Version handshake; must be the first request on a connection.
    Hello,
    /// Liveness check; no control message, no payload.
    Ping,
    /// Store a shard: `PutRequest` control, the shard bytes as payload.
    Put,
    /// Read a shard or a byte range of it: `FetchRequest`.
    Fetch,
    /// Metadata of a shard: `StatRequest`.
    Stat,
    /// Shards of a namespace, optionally by key prefix: `ListRequest`.
    List,
    /// Remove a shard: `DeleteRequest`.
    Delete,
    /// The daemon's state: no control message; answered with `StatusResponse`.
    Status,
    /// Load shards into the pinned arena ahead of use: `PrefetchRequest`.
    Prefetch,
    /// Free arena copies, or delete shards: `EvictRequest`.
    Evict,
    /// Register the access order of a training step: `ScheduleRequest`.
    Schedule,
    /// Zero-copy fetch over the Unix socket: `ViewRequest`, answered with
    /// where the bytes are in the shared arena (`ViewResponse`) and a lease.
    FetchView,
    /// Give back leases of zero-copy views: `ReleaseRequest`.
    Release,
    /// Check the arena's copy of a shard against its CRC32C again (a client
    /// saw a mismatch, or an operator asks): `VerifyRequest`. A copy that
    /// fails is never served again.
    Verify,
    /// The namespaces the daemon holds, with their usage:
    /// `NamespacesRequest`, answered with `NamespacesResponse`.
    Namespaces,
    /// Remove a whole namespace, durably: `DropNamespaceRequest`.
    DropNamespace,
    /// Set or clear a namespace's quotas: `SetQuotaRequest`.
    SetQuota,
    /// Many fetches in one request: `FetchBatchRequest`, answered by
    /// `BatchPart` frames as each member's bytes are ready.
    FetchBatch,
    /// Many zero-copy views in one request: `ViewBatchRequest`, answered by
    /// a `BatchPart::View` (or `Failed`) frame per member.
    ViewBatch,
    /// Metadata of many shards: `StatBatchRequest`, answered by a
    /// `BatchPart::Stat` (or `Failed`) frame per member.
    StatBatch,
    /// Register a region of the client's memory as a destination of
    /// fetches: `RegisterRegionRequest` (over a Unix socket with the
    /// region's sealed memfd attached), answered with `RegisterRegionResponse`.
    RegisterRegion,
    /// Forget a registered region: `ReleaseRegionRequest`.
    ReleaseRegion,
    /// Many puts in one request: `PutBatchRequest`, each member's bytes
    /// read by the daemon from a registered region (Unix) or in the payload;
    /// answered by `BatchPart::Stored` (or `Failed`) parts.
    PutBatch,
    /// The client's proof of its key (TCP): `AuthenticateRequest`, the
    /// second request of a connection whose hello offered a key.
    Authenticate,
    /// Keep a fetch batch on the connection to run again by its id: a
    /// `FetchBatchRequest`, answered with `PrepareFetchResponse`.
    PrepareFetch,
    /// Run a kept fetch batch: `FetchPreparedRequest`, answered as the
    /// `FetchBatch` it keeps is.
    FetchPrepared,
    /// Forget a kept fetch batch: `ReleasePreparedRequest`.
    ReleasePrepared,
}

impl Opcode {
    /// Every opcode, in code order.
    pub const ALL: [Opcode; 27] = [
        Opcode::Hello,
        Opcode::Ping,
        Opcode::Put,
        Opcode::Fetch,
        Opcode::Stat,
        Opcode::List,
        Opcode::Delete,
        Opcode::Status,
        Opcode::Prefetch,
        Opcode::Evict,
        Opcode::Schedule,
        Opcode::FetchView,
        Opcode::Release,
        Opcode::Verify,
        Opcode::Namespaces,
        Opcode::DropNamespace,
        Opcode::SetQuota,
        Opcode::FetchBatch,
        Opcode::ViewBatch,
        Opcode::StatBatch,
        Opcode::RegisterRegion,
        Opcode::ReleaseRegion,
        Opcode::PutBatch,
        Opcode::Authenticate,
        Opcode::PrepareFetch,
        Opcode::FetchPrepared,
        Opcode::ReleasePrepared,
    ];

    /// The wire code.
    pub const fn code(self) -> u16 {
        match self {
            Opcode::Hello => 1,
            Opcode::Ping => 2,
            Opcode::Put => 3,
            Opcode::Fetch => 4,
            Opcode::Stat => 5,
            Opcode::List => 6,
            Opcode::Delete => 7,
            Opcode::Status => 8,
            Opcode::Prefetch => 9,
            Opcode::Evict => 10,
            Opcode::Schedule => 11,
            Opcode::FetchView => 12,
            Opcode::Release => 13,
            Opcode::Verify => 14,
            Opcode::Namespaces => 15,
            Opcode::DropNamespace => 16,
            Opcode::SetQuota => 17,
            Opcode::FetchBatch => 18,
            Opcode::ViewBatch => 19,
            Opcode::StatBatch => 20,
            Opcode::RegisterRegion => 21,
            Opcode::ReleaseRegion => 22,
            Opcode::PutBatch => 23,
            Opcode::Authenticate => 24,
            Opcode::PrepareFetch => 25,
            Opcode::FetchPrepared => 26,
            Opcode::ReleasePrepared => 27,
        }
    }

    /// The opcode for a wire code, if it is known.
    pub fn from_code(code: u16) -> Option<Opcode> {
        Opcode::ALL.into_iter().find(|op| op.code() == code)
    }

    /// A short lowercase name, for logs and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Opcode::Hello => "hello",
            Opcode::Ping => "ping",
            Opcode::Put => "put",
            Opcode::Fetch => "fetch",
            Opcode::Stat => "stat",
            Opcode::List => "list",
            Opcode::Delete => "delete",
            Opcode::Status => "status",
            Opcode::Prefetch => "prefetch",
            Opcode::Evict => "evict",
            Opcode::Schedule => "schedule",
            Opcode::FetchView => "fetch_view",
            Opcode::Release => "release",
            Opcode::Verify => "verify",
            Opcode::Namespaces => "namespaces",
            Opcode::DropNamespace => "drop_namespace",
            Opcode::SetQuota => "set_quota",
            Opcode::FetchBatch => "fetch_batch",
            Opcode::ViewBatch => "view_batch",
            Opcode::StatBatch => "stat_batch",
            Opcode::RegisterRegion => "register_region",
            Opcode::ReleaseRegion => "release_region",
            Opcode::PutBatch => "put_batch",
            Opcode::Authenticate => "authenticate",
            Opcode::PrepareFetch => "prepare_fetch",
            Opcode::FetchPrepared => "fetch_prepared",
            Opcode::ReleasePrepared => "release_prepared",
        }
    }
}

impl std::fmt::Display for Opcode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_pinned() {
        let codes: Vec<u16> = Opcode::ALL.iter().map(|op| op.code()).collect();
        assert_eq!(codes, (1..=27).collect::<Vec<u16>>());
        for op in Opcode::ALL {
            assert_eq!(Opcode::from_code(op.code()), Some(op));
        }
        assert_eq!(Opcode::from_code(0), None);
        assert_eq!(Opcode::from_code(28), None);
    }
}
