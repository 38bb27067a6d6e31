//! A blocking wrapper for trainers that are not async: the same operations,
//! run on a small private tokio runtime.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shardd_protocol::{
    ByteRange, EvictMode, EvictResponse, ListResponse, PrefetchItem, PrefetchResponse, ShardMeta, StatResponse,
    StatusResponse, VerifyResponse,
};

use crate::client::{
    BatchResult, ClientOptions, FetchInfo, PreparedFetch, PutItem, PutOptions, RegisteredRegion, Shard, Wanted,
};
use crate::connection::FetchBuf;
use crate::region::Region;
use crate::{ClientError, ShardView};

/// A blocking client. Cheap to clone; clones share the connection and the
/// runtime, and may be used from several threads at once (their requests
/// are pipelined on the one connection).
#[derive(Clone, Debug)]
pub struct Client {
    inner: crate::Client,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl Client {
    /// Connects with default options.
    pub fn connect(endpoint: &str) -> Result<Client, ClientError> {
        Client::connect_with(endpoint, ClientOptions::default())
    }

    /// Connects with `options`.
    pub fn connect_with(endpoint: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("shardd-client")
            .enable_all()
            .build()
            .map_err(|source| ClientError::Connect {
                endpoint: endpoint.to_string(),
                source,
            })?;
        let inner = runtime.block_on(crate::Client::connect_with(endpoint, options))?;
        Ok(Client {
            inner,
            runtime: Arc::new(runtime),
        })
    }

    /// The async client behind this one.
    pub fn as_async(&self) -> &crate::Client {
        &self.inner
    }

    /// See [`crate::Client::ping`].
    pub fn ping(&self) -> Result<Duration, ClientError> {
        self.runtime.block_on(self.inner.ping())
    }

    /// See [`crate::Client::return_leases`].
    pub fn return_leases(&self) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner.return_leases())
    }

    /// See [`crate::Client::put`].
    pub fn put(
        &self,
        namespace: &str,
        key: &str,
        data: impl Into<Bytes>,
        options: PutOptions,
    ) -> Result<ShardMeta, ClientError> {
        self.runtime.block_on(self.inner.put(namespace, key, data, options))
    }

    /// See [`crate::Client::fetch`].
    pub fn fetch(&self, namespace: &str, key: &str) -> Result<Shard, ClientError> {
        self.runtime.block_on(self.inner.fetch(namespace, key))
    }

    /// See [`crate::Client::fetch_range`].
    pub fn fetch_range(&self, namespace: &str, key: &str, offset: u64, len: u64) -> Result<Shard, ClientError> {
        self.runtime
            .block_on(self.inner.fetch_range(namespace, key, offset, len))
    }

    /// See [`crate::Client::fetch_into`].
    pub fn fetch_into<B: FetchBuf>(
        &self,
        namespace: &str,
        key: &str,
        range: Option<ByteRange>,
        buf: B,
    ) -> (B, Result<FetchInfo, ClientError>) {
        self.runtime.block_on(self.inner.fetch_into(namespace, key, range, buf))
    }

    /// See [`crate::Client::fetch_many`].
    pub fn fetch_many(&self, wanted: &[Wanted]) -> BatchResult<Shard> {
        self.runtime.block_on(self.inner.fetch_many(wanted))
    }

    /// See [`crate::Client::fetch_many_into`].
    pub fn fetch_many_into<B: FetchBuf>(
        &self,
        wanted: &[(Wanted, std::ops::Range<usize>)],
        buf: B,
    ) -> (B, BatchResult<FetchInfo>) {
        self.runtime.block_on(self.inner.fetch_many_into(wanted, buf))
    }

    /// See [`crate::Client::view_many`].
    pub fn view_many(&self, wanted: &[Wanted]) -> BatchResult<ShardView> {
        self.runtime.block_on(self.inner.view_many(wanted))
    }

    /// See [`crate::Client::stat_many`].
    pub fn stat_many(&self, shards: &[(&str, &str)]) -> BatchResult<StatResponse> {
        self.runtime.block_on(self.inner.stat_many(shards))
    }

    /// See [`crate::Client::fetch_many_into_each`].
    pub fn fetch_many_into_each<B: FetchBuf>(
        &self,
        wanted: &[Wanted],
        bufs: Vec<B>,
    ) -> (Vec<B>, BatchResult<FetchInfo>) {
        self.runtime.block_on(self.inner.fetch_many_into_each(wanted, bufs))
    }

    /// See [`crate::Client::put_many`].
    pub fn put_many(&self, items: &[(PutItem, Bytes)]) -> BatchResult<ShardMeta> {
        self.runtime.block_on(self.inner.put_many(items))
    }

    /// See [`crate::Client::register_region`].
    pub fn register_region(&self, region: &Region) -> Result<RegisteredRegion, ClientError> {
        self.runtime.block_on(self.inner.register_region(region))
    }

    /// See [`crate::Client::fetch_into_region`].
    pub fn fetch_into_region(
        &self,
        region: &RegisteredRegion,
        wanted: &[(Wanted, std::ops::Range<usize>)],
    ) -> BatchResult<FetchInfo> {
        self.runtime.block_on(self.inner.fetch_into_region(region, wanted))
    }

    /// See [`crate::Client::prepare_fetch_into_region`].
    pub fn prepare_fetch_into_region(
        &self,
        region: &RegisteredRegion,
        wanted: &[(Wanted, std::ops::Range<usize>)],
    ) -> Result<PreparedFetch, ClientError> {
        self.runtime
            .block_on(self.inner.prepare_fetch_into_region(region, wanted))
    }

    /// See [`crate::Client::fetch_prepared`].
    pub fn fetch_prepared(&self, prepared: &PreparedFetch) -> BatchResult<FetchInfo> {
        self.runtime.block_on(self.inner.fetch_prepared(prepared))
    }

    /// See [`crate::Client::put_from_region`].
    pub fn put_from_region(
        &self,
        region: &RegisteredRegion,
        items: &[(PutItem, std::ops::Range<usize>)],
    ) -> BatchResult<ShardMeta> {
        self.runtime.block_on(self.inner.put_from_region(region, items))
    }

    /// See [`crate::Client::stat`].
    pub fn stat(&self, namespace: &str, key: &str) -> Result<StatResponse, ClientError> {
        self.runtime.block_on(self.inner.stat(namespace, key))
    }

    /// See [`crate::Client::fetch_view`].
    pub fn fetch_view(&self, namespace: &str, key: &str, range: Option<ByteRange>) -> Result<ShardView, ClientError> {
        self.runtime.block_on(self.inner.fetch_view(namespace, key, range))
    }

    /// See [`crate::Client::verify`].
    pub fn verify(&self, namespace: &str, key: &str, version: Option<u64>) -> Result<VerifyResponse, ClientError> {
        self.runtime.block_on(self.inner.verify(namespace, key, version))
    }

    /// See [`crate::Client::prefetch`].
    pub fn prefetch(&self, namespace: &str, items: Vec<PrefetchItem>) -> Result<PrefetchResponse, ClientError> {
        self.runtime.block_on(self.inner.prefetch(namespace, items))
    }

    /// See [`crate::Client::evict`].
    pub fn evict(&self, namespace: &str, keys: &[&str], mode: EvictMode) -> Result<EvictResponse, ClientError> {
        self.runtime.block_on(self.inner.evict(namespace, keys, mode))
    }

    /// See [`crate::Client::set_schedule`].
    pub fn set_schedule(&self, namespace: &str, keys: &[&str]) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner.set_schedule(namespace, keys))
    }

    /// See [`crate::Client::list`].
    pub fn list(&self, namespace: &str, prefix: &str) -> Result<Vec<ShardMeta>, ClientError> {
        self.runtime.block_on(self.inner.list(namespace, prefix))
    }

    /// See [`crate::Client::list_page`].
    pub fn list_page(
        &self,
        namespace: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<ListResponse, ClientError> {
        self.runtime
            .block_on(self.inner.list_page(namespace, prefix, start_after, limit))
    }

    /// See [`crate::Client::delete`].
    pub fn delete(&self, namespace: &str, key: &str, version: Option<u64>) -> Result<u64, ClientError> {
        self.runtime.block_on(self.inner.delete(namespace, key, version))
    }

    /// See [`crate::Client::status`].
    pub fn status(&self) -> Result<StatusResponse, ClientError> {
        self.runtime.block_on(self.inner.status())
    }
}
