//! `shardd._native.Client`: one connection to a daemon, used from any
//! number of Python threads (requests are pipelined on it), every call
//! with the interpreter released while it waits.

use std::sync::RwLock;
use std::time::Duration;

use bytes::Bytes;
use numpy::PyArray1;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use shardd_client::protocol::Key;
use shardd_client::{ByteRange, ClientOptions, Durability, EvictMode, PrefetchItem, PutOptions};

use crate::batch::{Item, PreparedFetch, PutItemArgs, Region, RegisteredRegion};
use crate::buf::Lent;
use crate::errors::{self, IntoPy};
use crate::meta::{self, ShardMeta};
use crate::runtime::Io;
use crate::view::View;

/// A connection to one daemon.
#[pyclass(module = "shardd._native", frozen)]
#[derive(Debug)]
pub struct Client {
    inner: RwLock<Option<shardd_client::Client>>,
    pub(crate) io: Io,
}

fn seconds(value: Option<f64>, name: &str, py: Python<'_>) -> PyResult<Option<Duration>> {
    match value {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(errors::bad_request(
            py,
            format!("{name} must be a positive number of seconds, not {s}"),
        )),
    }
}

impl Client {
    /// The connection, unless closed.
    pub(crate) fn connection(&self, py: Python<'_>) -> PyResult<shardd_client::Client> {
        match &*self.inner.read().unwrap_or_else(|p| p.into_inner()) {
            Some(client) => Ok(client.clone()),
            None => Err(errors::raise(
                py,
                "Disconnected",
                "this client was closed".into(),
                None,
                None,
            )),
        }
    }

    /// Wraps a connected client.
    pub(crate) fn wrap(client: shardd_client::Client, io: Io) -> Client {
        Client {
            inner: RwLock::new(Some(client)),
            io,
        }
    }
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (endpoint, *, connect_timeout=10.0, request_timeout=None, io_timeout=60.0,
        verify_checksums=true, verify_views=false, zero_copy=true, max_fetch_alloc=None, client_name=None,
        auth_key_file=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        endpoint: &str,
        connect_timeout: f64,
        request_timeout: Option<f64>,
        io_timeout: f64,
        verify_checksums: bool,
        verify_views: bool,
        zero_copy: bool,
        max_fetch_alloc: Option<u64>,
        client_name: Option<String>,
        auth_key_file: Option<std::path::PathBuf>,
    ) -> PyResult<Client> {
        let defaults = ClientOptions::default();
        let auth_key = auth_key_file
            .map(|path| shardd_client::auth::load_key(&path))
            .transpose()
            .py(py)?;
        let options = ClientOptions {
            connect_timeout: seconds(Some(connect_timeout), "connect_timeout", py)?.unwrap_or(defaults.connect_timeout),
            request_timeout: seconds(request_timeout, "request_timeout", py)?,
            io_timeout: seconds(Some(io_timeout), "io_timeout", py)?.unwrap_or(defaults.io_timeout),
            verify_checksums,
            verify_views,
            max_fetch_alloc: max_fetch_alloc.unwrap_or(defaults.max_fetch_alloc),
            client_name: client_name.unwrap_or_else(|| format!("shardd-python {}", env!("CARGO_PKG_VERSION"))),
            zero_copy,
            auth_key,
            // tls:// endpoints read SHARDD_TLS_CA (and SHARDD_TLS_CERT, SHARDD_TLS_KEY).
            tls: shardd_client::tls::TlsOptions::default(),
        };
        let io = Io::current()?;
        let client = io
            .block(py, shardd_client::Client::connect_with(endpoint, options))?
            .py(py)?;
        Ok(Client::wrap(client, io))
    }

    /// The endpoint it is connected to.
    #[getter]
    fn endpoint(&self, py: Python<'_>) -> PyResult<String> {
        Ok(self.connection(py)?.endpoint().to_string())
    }

    /// The daemon's name and version.
    #[getter]
    fn server(&self, py: Python<'_>) -> PyResult<String> {
        Ok(self.connection(py)?.server().server.clone())
    }

    /// Largest shard the daemon takes, in bytes.
    #[getter]
    fn max_shard_bytes(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(self.connection(py)?.server().limits.max_payload_len)
    }

    /// Whether fetches read in place from the daemon's mapped arena.
    #[getter]
    fn zero_copy(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.connection(py)?.zero_copy())
    }

    /// Why the arena the daemon offered was not mapped, if it was not.
    #[getter]
    fn zero_copy_refused(&self, py: Python<'_>) -> PyResult<Option<String>> {
        Ok(self.connection(py)?.zero_copy_refused().map(str::to_string))
    }

    /// Whether the connection is up (and not closed).
    fn is_connected(&self) -> bool {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|c| c.is_connected())
    }

    /// Closes the connection (once every view made from it is gone).
    fn close(&self, py: Python<'_>) {
        let client = self.inner.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(client) = client {
            // The leases of views already gone are given back first, so
            // that their shards can be evicted at once; a connection that
            // is down has none left to give back.
            let _ = self.io.block(py, async move { client.return_leases().await });
        }
    }

    /// A round trip to the daemon, in seconds.
    fn ping(&self, py: Python<'_>) -> PyResult<f64> {
        let client = self.connection(py)?;
        let rtt = self.io.block(py, async move { client.ping().await })?.py(py)?;
        Ok(rtt.as_secs_f64())
    }

    /// Stores `nbytes` at `address` (memory of `owner`) as a shard.
    #[pyo3(signature = (namespace, key, address, nbytes, owner, dtype, shape, durability, version))]
    #[allow(clippy::too_many_arguments)]
    fn put(
        &self,
        py: Python<'_>,
        namespace: String,
        key: String,
        address: usize,
        nbytes: usize,
        owner: Py<PyAny>,
        dtype: &str,
        shape: Vec<u64>,
        durability: &str,
        version: Option<u64>,
    ) -> PyResult<ShardMeta> {
        let client = self.connection(py)?;
        let dtype = meta::dtype(dtype).map_err(|e| errors::bad_request(py, e))?;
        let durability = durability_of(durability).map_err(|e| errors::bad_request(py, e))?;
        // SAFETY: the Python layer passes the address of `owner`'s live,
        // contiguous memory of `nbytes` bytes (shardd._buffers).
        let data = Bytes::from_owner(unsafe { Lent::new(address, nbytes, owner) });
        let options = PutOptions {
            version,
            dtype,
            shape,
            durability,
        };
        let stored = self
            .io
            .block(py, async move { client.put(&namespace, &key, data, options).await })?
            .py(py)?;
        Ok(ShardMeta::from(&stored))
    }

    /// The whole shard, in a new one-dimensional uint8 array (its memory is
    /// the buffer the bytes were received into: no copy).
    fn get<'py>(
        &self,
        py: Python<'py>,
        namespace: String,
        key: String,
    ) -> PyResult<(ShardMeta, Bound<'py, PyArray1<u8>>)> {
        let client = self.connection(py)?;
        let shard = self
            .io
            .block(py, async move { client.fetch(&namespace, &key).await })?
            .py(py)?;
        let meta = ShardMeta::from(&shard.meta);
        Ok((meta, PyArray1::from_vec(py, shard.data)))
    }

    /// Fetches the shard (or `range`, `(offset, length)` in the shard) into
    /// `nbytes` at `address` (writable memory of `owner`); returns the
    /// metadata and the bytes placed from `address` on.
    #[pyo3(signature = (namespace, key, address, nbytes, owner, range=None))]
    #[allow(clippy::too_many_arguments)]
    fn fetch_into(
        &self,
        py: Python<'_>,
        namespace: String,
        key: String,
        address: usize,
        nbytes: usize,
        owner: Py<PyAny>,
        range: Option<(u64, u64)>,
    ) -> PyResult<(ShardMeta, u64)> {
        let client = self.connection(py)?;
        // SAFETY: the Python layer passes the address of `owner`'s live,
        // contiguous, writable memory of `nbytes` bytes (shardd._buffers).
        let dest = unsafe { Lent::new(address, nbytes, owner) };
        let range = range.map(|(offset, len)| ByteRange { offset, len });
        let (dest, result) = self.io.block(
            py,
            async move { client.fetch_into(&namespace, &key, range, dest).await },
        )?;
        // The owner goes back while this thread holds the interpreter.
        drop(dest);
        let info = result.py(py)?;
        Ok((ShardMeta::from(&info.meta), info.len))
    }

    /// Fetches many shards of `namespace` in one request into `nbytes` at
    /// `address` (writable memory of `owner`), each item `(key, offset,
    /// nbytes, range)` at its own part; each member's `ShardMeta` or
    /// exception (returned, not raised).
    #[pyo3(signature = (namespace, items, address, nbytes, owner))]
    fn fetch_many_into(
        &self,
        py: Python<'_>,
        namespace: String,
        items: Vec<Item>,
        address: usize,
        nbytes: usize,
        owner: Py<PyAny>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        self.batch_fetch_into(py, namespace, items, address, nbytes, owner)
    }

    /// Stores many shards of `namespace` in one request, each item `(key,
    /// offset, nbytes, dtype, shape)` from its range of `region`; each
    /// member's `ShardMeta` or exception.
    #[pyo3(signature = (region, namespace, items, durability="durable"))]
    fn put_from_region(
        &self,
        py: Python<'_>,
        region: Py<RegisteredRegion>,
        namespace: String,
        items: Vec<PutItemArgs>,
        durability: &str,
    ) -> PyResult<Vec<Py<PyAny>>> {
        self.batch_put_from_region(py, region, namespace, items, durability)
    }

    /// Registers `region` on this connection.
    fn register_region(&self, py: Python<'_>, region: &Region) -> PyResult<RegisteredRegion> {
        self.batch_register_region(py, region)
    }

    /// Fetches many shards of `namespace` in one request into `region`, each
    /// item `(key, offset, nbytes, range)` at its place; each member's
    /// `ShardMeta` or exception.
    fn fetch_into_region(
        &self,
        py: Python<'_>,
        region: Py<RegisteredRegion>,
        namespace: String,
        items: Vec<Item>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        self.batch_fetch_into_region(py, region, namespace, items)
    }

    /// Keeps a fetch of `items` of `namespace` into `region` on the daemon,
    /// to run again with `fetch_prepared`.
    fn prepare_fetch_into_region(
        &self,
        py: Python<'_>,
        region: Py<RegisteredRegion>,
        namespace: String,
        items: Vec<Item>,
    ) -> PyResult<PreparedFetch> {
        self.batch_prepare_fetch_into_region(py, region, namespace, items)
    }

    /// Runs a fetch kept by `prepare_fetch_into_region`; each member's
    /// `ShardMeta` or exception.
    fn fetch_prepared(&self, py: Python<'_>, prepared: Py<PreparedFetch>) -> PyResult<Vec<Py<PyAny>>> {
        self.batch_fetch_prepared(py, prepared)
    }

    /// A zero-copy view of the shard (or `range` of it) in the daemon's arena.
    #[pyo3(signature = (namespace, key, range=None))]
    fn view(&self, py: Python<'_>, namespace: String, key: String, range: Option<(u64, u64)>) -> PyResult<View> {
        let client = self.connection(py)?;
        let range = range.map(|(offset, len)| ByteRange { offset, len });
        let view = self
            .io
            .block(py, async move { client.fetch_view(&namespace, &key, range).await })?
            .py(py)?;
        View::new(py, view)
    }

    /// Metadata of a shard and its state in the daemon's arena.
    fn stat<'py>(&self, py: Python<'py>, namespace: String, key: String) -> PyResult<Bound<'py, PyDict>> {
        let client = self.connection(py)?;
        let stat = self
            .io
            .block(py, async move { client.stat(&namespace, &key).await })?
            .py(py)?;
        meta::stat(py, &stat)
    }

    /// Every shard of `namespace` whose key starts with `prefix`.
    #[pyo3(signature = (namespace, prefix=String::new()))]
    fn ls(&self, py: Python<'_>, namespace: String, prefix: String) -> PyResult<Vec<ShardMeta>> {
        let client = self.connection(py)?;
        let shards = self
            .io
            .block(py, async move { client.list(&namespace, &prefix).await })?
            .py(py)?;
        Ok(shards.iter().map(ShardMeta::from).collect())
    }

    /// Removes a shard (only `version`, when given); returns the version
    /// removed.
    #[pyo3(signature = (namespace, key, version=None))]
    fn rm(&self, py: Python<'_>, namespace: String, key: String, version: Option<u64>) -> PyResult<u64> {
        let client = self.connection(py)?;
        self.io
            .block(py, async move { client.delete(&namespace, &key, version).await })?
            .py(py)
    }

    /// Hints shards to load into the arena: `(key, order, deadline_unix_ms)`.
    fn prefetch<'py>(
        &self,
        py: Python<'py>,
        namespace: String,
        items: Vec<(String, u32, Option<u64>)>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.connection(py)?;
        let items = items
            .into_iter()
            .map(|(key, order, deadline_unix_ms)| {
                Ok(PrefetchItem {
                    key: Key::new(key)?,
                    order,
                    deadline_unix_ms,
                })
            })
            .collect::<Result<Vec<_>, shardd_client::ClientError>>()
            .py(py)?;
        let answer = self
            .io
            .block(py, async move { client.prefetch(&namespace, items).await })?
            .py(py)?;
        meta::plain(py, &answer)
    }

    /// Frees arena copies of shards (`drop`: deletes the shards).
    #[pyo3(signature = (namespace, keys, drop=false))]
    fn evict<'py>(
        &self,
        py: Python<'py>,
        namespace: String,
        keys: Vec<String>,
        drop: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.connection(py)?;
        let mode = if drop { EvictMode::Drop } else { EvictMode::Demote };
        let answer = self
            .io
            .block(py, async move {
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                client.evict(&namespace, &keys, mode).await
            })?
            .py(py)?;
        meta::plain(py, &answer)
    }

    /// Registers the order a training step uses shards in.
    fn set_schedule(&self, py: Python<'_>, namespace: String, keys: Vec<String>) -> PyResult<()> {
        let client = self.connection(py)?;
        self.io
            .block(py, async move {
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                client.set_schedule(&namespace, &keys).await
            })?
            .py(py)
    }

    /// The daemon's state, as `shardctl status --json` prints it.
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.connection(py)?;
        let status = self.io.block(py, async move { client.status().await })?.py(py)?;
        meta::plain(py, &status)
    }

    /// Has the daemon check its copy in memory of a shard against its
    /// checksum again.
    #[pyo3(signature = (namespace, key, version=None))]
    fn verify<'py>(
        &self,
        py: Python<'py>,
        namespace: String,
        key: String,
        version: Option<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.connection(py)?;
        let answer = self
            .io
            .block(py, async move { client.verify(&namespace, &key, version).await })?
            .py(py)?;
        meta::plain(py, &answer)
    }
}

/// The durability named by the Python layer.
pub fn durability_of(name: &str) -> Result<Durability, String> {
    match name {
        "durable" => Ok(Durability::Durable),
        "write_back" => Ok(Durability::WriteBack),
        "scratch" => Ok(Durability::Scratch),
        other => Err(format!(
            "unknown durability {other:?}; expected durable, write_back or scratch"
        )),
    }
}
