//! Batched fetches and regions: many shards in one request, each member's
//! outcome its own (a `ShardMeta`, or the exception it would have raised,
//! returned rather than raised), and `Region`, memory the daemon fills in
//! place.

use std::ops::Range;

use pyo3::prelude::*;
use shardd_client::{ByteRange, ClientError, FetchInfo, Wanted};

use crate::buf::Lent;
use crate::client::Client;
use crate::errors::{self, IntoPy};
use crate::meta::ShardMeta;

/// Memory the daemon fills in place: a memfd mapped by this process, page
/// aligned, sealed against shrinking, in memory (locked with `pinned`).
#[pyclass(module = "shardd._native", frozen)]
#[derive(Debug)]
pub struct Region {
    pub(crate) inner: shardd_client::Region,
}

#[pymethods]
impl Region {
    #[new]
    #[pyo3(signature = (nbytes, pinned=false))]
    fn new(py: Python<'_>, nbytes: usize, pinned: bool) -> PyResult<Region> {
        let options = shardd_client::RegionOptions { pinned };
        let inner = shardd_client::Region::with_options(nbytes, options)
            .map_err(|e| errors::bad_request(py, format!("cannot allocate a region of {nbytes} bytes: {e}")))?;
        Ok(Region { inner })
    }

    /// Address of the first byte.
    #[getter]
    fn address(&self) -> usize {
        self.inner.as_ptr() as usize
    }

    /// Bytes (a whole number of pages).
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.len()
    }

    /// Whether its pages are locked in memory.
    #[getter]
    fn pinned(&self) -> bool {
        self.inner.is_pinned()
    }
}

/// A region registered on one client's connection.
#[pyclass(module = "shardd._native", frozen)]
#[derive(Debug)]
pub struct RegisteredRegion {
    pub(crate) inner: shardd_client::RegisteredRegion,
}

#[pymethods]
impl RegisteredRegion {
    /// Whether the daemon writes into it itself (Unix socket).
    #[getter]
    fn placed_by_daemon(&self) -> bool {
        self.inner.placed_by_daemon()
    }

    /// Its id on the connection.
    #[getter]
    fn id(&self) -> u32 {
        self.inner.id()
    }
}

/// A fetch into a region kept on the daemon, run again by its id; released
/// when dropped.
#[pyclass(module = "shardd._native", frozen)]
#[derive(Debug)]
pub struct PreparedFetch {
    pub(crate) inner: shardd_client::PreparedFetch,
}

#[pymethods]
impl PreparedFetch {
    /// Its id on the connection.
    #[getter]
    fn id(&self) -> u32 {
        self.inner.id()
    }

    /// Its members.
    fn __len__(&self) -> usize {
        self.inner.len()
    }
}

/// One member: key, where it goes (offset, length) and an optional range
/// of the shard, as the Python layer passes it.
pub(crate) type Item = (String, usize, usize, Option<(u64, u64)>);

/// One put from a region: key, offset, length, element type, shape.
pub(crate) type PutItemArgs = (String, usize, usize, String, Vec<u64>);

fn wanted(namespace: &str, items: &[Item]) -> Vec<(Wanted, Range<usize>)> {
    items
        .iter()
        .map(|(key, offset, nbytes, range)| {
            let w = Wanted::new(namespace, key.as_str());
            let w = match range {
                Some((offset, len)) => w.range(ByteRange {
                    offset: *offset,
                    len: *len,
                }),
                None => w,
            };
            (w, *offset..offset.saturating_add(*nbytes))
        })
        .collect()
}

/// Each member's `ShardMeta`, or its exception (not raised).
fn outcomes(py: Python<'_>, results: Vec<Result<FetchInfo, ClientError>>) -> Vec<Py<PyAny>> {
    results
        .into_iter()
        .map(|result| match result {
            Ok(info) => match Py::new(py, ShardMeta::from(&info.meta)) {
                Ok(meta) => meta.into_any(),
                Err(e) => e.into_value(py).into_any(),
            },
            Err(e) => errors::client(py, e).into_value(py).into_any(),
        })
        .collect()
}

/// The batched calls of `Client` (its `#[pymethods]` forward to these).
impl Client {
    /// Fetches many shards of `namespace` in one request into `nbytes` at
    /// `address` (writable memory of `owner`): each item `(key, offset,
    /// nbytes, range)` goes to its own part; returns each member's
    /// `ShardMeta` or exception.
    pub(crate) fn batch_fetch_into(
        &self,
        py: Python<'_>,
        namespace: String,
        items: Vec<Item>,
        address: usize,
        nbytes: usize,
        owner: Py<PyAny>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let client = self.connection(py)?;
        // SAFETY: the Python layer passes the address of `owner`'s live,
        // contiguous, writable memory of `nbytes` bytes (shardd._buffers).
        let dest = unsafe { Lent::new(address, nbytes, owner) };
        let wanted = wanted(&namespace, &items);
        let (dest, result) = self
            .io
            .block(py, async move { client.fetch_many_into(&wanted, dest).await })?;
        drop(dest);
        Ok(outcomes(py, result.py(py)?))
    }

    /// Registers `region` on this connection.
    pub(crate) fn batch_register_region(&self, py: Python<'_>, region: &Region) -> PyResult<RegisteredRegion> {
        let client = self.connection(py)?;
        let memory = region.inner.clone();
        let inner = self
            .io
            .block(py, async move { client.register_region(&memory).await })?
            .py(py)?;
        Ok(RegisteredRegion { inner })
    }

    /// Stores many shards of `namespace` in one request, each item `(key,
    /// offset, nbytes, dtype, shape)` read from its range of `region` (by
    /// the daemon itself over a Unix socket); each member's `ShardMeta` or
    /// exception.
    pub(crate) fn batch_put_from_region(
        &self,
        py: Python<'_>,
        region: Py<RegisteredRegion>,
        namespace: String,
        items: Vec<PutItemArgs>,
        durability: &str,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let client = self.connection(py)?;
        let durability = crate::client::durability_of(durability).map_err(|e| errors::bad_request(py, e))?;
        let mut puts = Vec::with_capacity(items.len());
        for (key, offset, nbytes, dtype, shape) in items {
            let dtype = crate::meta::dtype(&dtype).map_err(|e| errors::bad_request(py, e))?;
            let options = shardd_client::PutOptions {
                version: None,
                dtype,
                shape,
                durability,
            };
            let item = shardd_client::PutItem::new(namespace.as_str(), key).options(options);
            puts.push((item, offset..offset.saturating_add(nbytes)));
        }
        let held = region.clone_ref(py);
        let result = self.io.block(
            py,
            async move { client.put_from_region(&held.get().inner, &puts).await },
        )?;
        let stored = result.py(py)?;
        Ok(stored
            .into_iter()
            .map(|r| match r {
                Ok(meta) => match Py::new(py, ShardMeta::from(&meta)) {
                    Ok(meta) => meta.into_any(),
                    Err(e) => e.into_value(py).into_any(),
                },
                Err(e) => errors::client(py, e).into_value(py).into_any(),
            })
            .collect())
    }

    /// Fetches many shards of `namespace` in one request into `region`, each
    /// item `(key, offset, nbytes, range)` at its place; returns each
    /// member's `ShardMeta` or exception.
    pub(crate) fn batch_fetch_into_region(
        &self,
        py: Python<'_>,
        region: Py<RegisteredRegion>,
        namespace: String,
        items: Vec<Item>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let client = self.connection(py)?;
        let wanted = wanted(&namespace, &items);
        let held = region.clone_ref(py);
        let result = self.io.block(
            py,
            async move { client.fetch_into_region(&held.get().inner, &wanted).await },
        )?;
        Ok(outcomes(py, result.py(py)?))
    }

    /// Keeps a fetch of `items` into `region` on the daemon.
    pub(crate) fn batch_prepare_fetch_into_region(
        &self,
        py: Python<'_>,
        region: Py<RegisteredRegion>,
        namespace: String,
        items: Vec<Item>,
    ) -> PyResult<PreparedFetch> {
        let client = self.connection(py)?;
        let wanted = wanted(&namespace, &items);
        let held = region.clone_ref(py);
        let result = self.io.block(py, async move {
            client.prepare_fetch_into_region(&held.get().inner, &wanted).await
        })?;
        Ok(PreparedFetch { inner: result.py(py)? })
    }

    /// Runs a kept fetch; each member's `ShardMeta` or exception.
    pub(crate) fn batch_fetch_prepared(&self, py: Python<'_>, prepared: Py<PreparedFetch>) -> PyResult<Vec<Py<PyAny>>> {
        let client = self.connection(py)?;
        let held = prepared.clone_ref(py);
        let result = self
            .io
            .block(py, async move { client.fetch_prepared(&held.get().inner).await })?;
        Ok(outcomes(py, result.py(py)?))
    }
}
