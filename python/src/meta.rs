//! What the daemon says about shards, as Python objects.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use shardd_client::{DType, ShardMeta as Meta, StatResponse};

/// Metadata of one stored shard version.
#[pyclass(name = "ShardMeta", module = "shardd", frozen, get_all)]
#[derive(Clone, Debug)]
pub struct ShardMeta {
    /// Its namespace.
    pub namespace: String,
    /// Its key.
    pub key: String,
    /// Its version (e.g. the training step).
    pub version: u64,
    /// Element type: `raw`, `bool`, `u8`, ... `f32`, `bf16`, `f8e4m3`, ...
    pub dtype: String,
    /// Tensor shape (empty for raw bytes and scalars).
    pub shape: Vec<u64>,
    /// Bytes.
    pub nbytes: u64,
    /// CRC32C of all its bytes.
    pub crc32c: u32,
    /// When the daemon stored it, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
}

#[pymethods]
impl ShardMeta {
    fn __repr__(&self) -> String {
        format!(
            "ShardMeta({}/{} v{}, {} {:?}, {} bytes)",
            self.namespace, self.key, self.version, self.dtype, self.shape, self.nbytes
        )
    }

    fn __eq__(&self, other: &ShardMeta) -> bool {
        (&self.namespace, &self.key, self.version, self.crc32c)
            == (&other.namespace, &other.key, other.version, other.crc32c)
    }
}

impl From<&Meta> for ShardMeta {
    fn from(m: &Meta) -> ShardMeta {
        ShardMeta {
            namespace: m.namespace.to_string(),
            key: m.key.to_string(),
            version: m.version,
            dtype: m.dtype.name().to_string(),
            shape: m.shape.clone(),
            nbytes: m.len,
            crc32c: m.crc32c,
            created_unix_ms: m.created_unix_ms,
        }
    }
}

/// The element type named `name`, as `shardctl put --dtype` takes it.
pub fn dtype(name: &str) -> Result<DType, String> {
    name.parse::<DType>().map_err(|e| e.to_string())
}

/// A stat answer: `{"meta": ShardMeta, "resident": bool, "dirty": bool,
/// "flush_error": str | None}`.
pub fn stat<'py>(py: Python<'py>, stat: &StatResponse) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("meta", ShardMeta::from(&stat.meta))?;
    out.set_item("resident", stat.cache.resident)?;
    out.set_item("dirty", stat.cache.dirty)?;
    out.set_item("flush_error", stat.cache.flush_error.clone())?;
    Ok(out)
}

/// Any serializable answer as plain Python values (through JSON).
pub fn plain<'py, T: serde::Serialize>(py: Python<'py>, value: &T) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(value).map_err(|e| crate::errors::Error::new_err(e.to_string()))?;
    py.import("json")?.call_method1("loads", (text,))
}
