//! Files in and out: `.safetensors` import and export, and files as
//! shards, streamed by the client crate in bounded memory.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use shardd_client::PutOptions;
use shardd_client::files::{self, FilesError, Output};

use crate::client::Client;
use crate::cluster::Cluster;
use crate::errors;
use crate::meta::ShardMeta;

/// A files error as the exception that says what to do.
fn to_py(py: Python<'_>, e: FilesError) -> PyErr {
    match e {
        FilesError::Io { path, source } => {
            let message = format!("{}: {source}", path.display());
            PyErr::from(std::io::Error::new(source.kind(), message))
        }
        FilesError::Client(e) => errors::client(py, e),
        FilesError::Cluster(e) => errors::cluster(py, e),
        e @ FilesError::Format { .. } => errors::raise(py, "FormatError", e.to_string(), None, None),
        e @ FilesError::Changed { .. } => errors::raise(py, "Changed", e.to_string(), None, None),
    }
}

fn counts<'py>(py: Python<'py>, tensors: usize, nbytes: u64) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("tensors", tensors)?;
    out.set_item("nbytes", nbytes)?;
    Ok(out)
}

/// Stores every tensor of a `.safetensors` file as a shard, then its header.
#[pyfunction]
pub fn import_safetensors<'py>(
    py: Python<'py>,
    client: &Client,
    path: PathBuf,
    namespace: String,
    prefix: String,
) -> PyResult<Bound<'py, PyDict>> {
    let connection = client.connection(py)?;
    let imported = client
        .io
        .block(py, async move {
            files::import_safetensors(&connection, &path, &namespace, &prefix, None).await
        })?
        .map_err(|e| to_py(py, e))?;
    counts(py, imported.tensors, imported.bytes)
}

/// Stores every tensor of a `.safetensors` file partitioned across a cluster.
#[pyfunction]
pub fn import_safetensors_partitioned<'py>(
    py: Python<'py>,
    cluster: &Cluster,
    path: PathBuf,
    namespace: String,
    prefix: String,
) -> PyResult<Bound<'py, PyDict>> {
    let (inner, io) = cluster.parts();
    let imported = io
        .block(py, async move {
            files::import_safetensors_partitioned(&inner, &path, &namespace, &prefix, None).await
        })?
        .map_err(|e| to_py(py, e))?;
    counts(py, imported.tensors, imported.bytes)
}

/// Writes shards into a `.safetensors` file.
#[pyfunction]
#[pyo3(signature = (client, namespace, path, prefix, keys=None))]
pub fn export_safetensors<'py>(
    py: Python<'py>,
    client: &Client,
    namespace: String,
    path: PathBuf,
    prefix: String,
    keys: Option<Vec<String>>,
) -> PyResult<Bound<'py, PyDict>> {
    let connection = client.connection(py)?;
    let exported = client
        .io
        .block(py, async move {
            files::export_safetensors(&connection, &namespace, &prefix, keys.as_deref(), &path, None).await
        })?
        .map_err(|e| to_py(py, e))?;
    let out = counts(py, exported.tensors, exported.bytes)?;
    out.set_item("original_header", exported.original_header)?;
    Ok(out)
}

/// Stores a file as one shard, from a mapping of it.
#[pyfunction]
#[pyo3(signature = (client, namespace, key, path, durability="durable", version=None))]
pub fn put_file(
    py: Python<'_>,
    client: &Client,
    namespace: String,
    key: String,
    path: PathBuf,
    durability: &str,
    version: Option<u64>,
) -> PyResult<ShardMeta> {
    let connection = client.connection(py)?;
    let durability = crate::client::durability_of(durability).map_err(|e| errors::bad_request(py, e))?;
    let options = PutOptions {
        version,
        durability,
        ..PutOptions::default()
    };
    let meta = client
        .io
        .block(py, async move {
            files::put_file(&connection, &namespace, &key, &path, options, None).await
        })?
        .map_err(|e| to_py(py, e))?;
    Ok(ShardMeta::from(&meta))
}

/// Writes a shard into a file (it appears once complete and checked).
#[pyfunction]
pub fn get_file(py: Python<'_>, client: &Client, namespace: String, key: String, path: PathBuf) -> PyResult<ShardMeta> {
    let connection = client.connection(py)?;
    let meta = client
        .io
        .block(py, async move {
            files::get_file(&connection, &namespace, &key, Output::File(path), None).await
        })?
        .map_err(|e| to_py(py, e))?;
    Ok(ShardMeta::from(&meta))
}
