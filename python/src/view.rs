//! `shardd._native.View`: a shard read in place in the daemon's arena, its
//! bytes laid out in one run of memory. The Python layer makes read-only
//! arrays over that memory that hold this object: the lease ends when the
//! last of them is gone, or at [`View::release`].

use std::sync::Mutex;

use pyo3::prelude::*;
use shardd_client::{ContiguousView, ShardView};

use crate::errors::{self, IntoPy};
use crate::meta::ShardMeta;

/// A zero-copy view.
#[pyclass(module = "shardd._native", frozen)]
#[derive(Debug)]
pub struct View {
    /// Kept until this object is gone, released or not, so that its memory
    /// stays mapped under arrays that outlive a release.
    view: Mutex<ContiguousView>,
    /// Where its bytes are (stays readable until this object is gone).
    address: usize,
    nbytes: u64,
    offset: u64,
    meta: ShardMeta,
}

impl View {
    pub(crate) fn new(py: Python<'_>, view: ShardView) -> PyResult<View> {
        let meta = ShardMeta::from(view.meta());
        let offset = view.offset();
        let view = view.into_contiguous().map_err(|failed| errors::client(py, failed.1))?;
        Ok(View {
            address: view.as_ptr() as usize,
            nbytes: view.len(),
            offset,
            meta,
            view: Mutex::new(view),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ContiguousView> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[pymethods]
impl View {
    /// Address of the first byte (private: arrays are made over it).
    #[getter]
    fn address(&self) -> usize {
        self.address
    }

    /// Bytes in the view.
    #[getter]
    fn nbytes(&self) -> u64 {
        self.nbytes
    }

    /// Offset in the shard of the first byte.
    #[getter]
    fn offset(&self) -> u64 {
        self.offset
    }

    /// The shard's metadata.
    #[getter]
    fn meta(&self) -> ShardMeta {
        self.meta.clone()
    }

    /// Raises `LeaseLost` unless the daemon still holds the lease (it was
    /// released, the connection has ended, or the lease ran out).
    fn check(&self, py: Python<'_>) -> PyResult<()> {
        self.lock().view().check().py(py)
    }

    /// Gives the lease back now. Arrays made from the view stay readable
    /// (no fault) but no longer hold the shard's bytes.
    fn release(&self) {
        self.lock().release();
    }
}
