//! `shardd._native.Cluster`, `Layer` and `Trainer`: one daemon per node as
//! one store (partitioned tensors, layer gathers), and the training loop on
//! top (gathers ahead, prefetch hints, stall accounting).

use std::time::Duration;

use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use shardd_client::cluster::{ClusterOptions, GatheredTensor, TensorManifest};
use shardd_client::trainer::{StepStats, TrainerOptions};
use tokio::sync::Mutex;

use crate::buf::Lent;
use crate::errors::{self, IntoPy};
use crate::meta;
use crate::runtime::Io;

/// The daemons of a job, one per node, in rank order.
#[pyclass(module = "shardd._native", frozen)]
#[derive(Debug)]
pub struct Cluster {
    inner: shardd_client::Cluster,
    io: Io,
}

/// A resolved layer: tensors and where each goes in a gather buffer.
#[pyclass(module = "shardd._native", frozen)]
#[derive(Debug)]
pub struct Layer {
    inner: shardd_client::Layer,
}

fn manifest<'py>(py: Python<'py>, m: &TensorManifest) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("name", &m.name)?;
    out.set_item("version", m.version)?;
    out.set_item("dtype", m.dtype.name())?;
    out.set_item("shape", m.shape.clone())?;
    out.set_item("nbytes", m.partitioning.len)?;
    out.set_item("nodes", m.partitioning.nodes)?;
    let parts: Vec<(u32, u64, u64)> = m.partitioning.parts().map(|(i, r)| (i, r.start, r.end)).collect();
    out.set_item("parts", parts)?;
    Ok(out)
}

fn gathered<'py>(py: Python<'py>, tensors: &[GatheredTensor]) -> PyResult<Vec<Bound<'py, PyDict>>> {
    tensors
        .iter()
        .map(|t| {
            let out = PyDict::new(py);
            out.set_item("name", &t.name)?;
            out.set_item("offset", t.offset)?;
            out.set_item("nbytes", t.len)?;
            out.set_item("dtype", t.dtype.name())?;
            out.set_item("shape", t.shape.clone())?;
            out.set_item("version", t.version)?;
            Ok(out)
        })
        .collect()
}

fn step<'py>(py: Python<'py>, s: &StepStats) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("step", s.step)?;
    out.set_item("elapsed", s.elapsed.as_secs_f64())?;
    out.set_item("stall", s.stall.as_secs_f64())?;
    out.set_item("stall_pct", s.stall_pct())?;
    out.set_item("replayed", s.replayed)?;
    let layers: Vec<(String, f64, u64)> = s
        .layers
        .iter()
        .map(|l| (l.layer.clone(), l.stall.as_secs_f64(), l.bytes))
        .collect();
    out.set_item("layers", layers)?;
    Ok(out)
}

fn duration(seconds: f64, name: &str, py: Python<'_>) -> PyResult<Duration> {
    if seconds.is_finite() && seconds > 0.0 {
        Ok(Duration::from_secs_f64(seconds))
    } else {
        Err(errors::bad_request(
            py,
            format!("{name} must be a positive number of seconds"),
        ))
    }
}

/// Memory of `owner` lent to a request.
///
/// The Python layer passes the address of `owner`'s live, contiguous
/// memory of `nbytes` bytes (writable for gathers), see shardd._buffers.
fn lent(address: usize, nbytes: usize, owner: Py<PyAny>) -> Lent {
    // SAFETY: the contract above, kept by shardd's Python layer, the only
    // caller of this private module.
    unsafe { Lent::new(address, nbytes, owner) }
}

impl Cluster {
    /// The cluster and the runtime it runs on.
    pub(crate) fn parts(&self) -> (shardd_client::Cluster, Io) {
        (self.inner.clone(), self.io.clone())
    }
}

#[pymethods]
impl Cluster {
    #[new]
    #[pyo3(signature = (endpoints, *, local=None, connections_per_node=2, connect_timeout=5.0,
        request_timeout=30.0, partition_align=4096, piece_size=16 << 20, auth_key_file=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        endpoints: Vec<String>,
        local: Option<(usize, String)>,
        connections_per_node: usize,
        connect_timeout: f64,
        request_timeout: f64,
        partition_align: u64,
        piece_size: u64,
        auth_key_file: Option<std::path::PathBuf>,
    ) -> PyResult<Cluster> {
        let auth_key = auth_key_file
            .map(|path| shardd_client::auth::load_key(&path))
            .transpose()
            .py(py)?;
        let options = ClusterOptions {
            connections_per_node,
            connect_timeout: duration(connect_timeout, "connect_timeout", py)?,
            request_timeout: duration(request_timeout, "request_timeout", py)?,
            partition_align,
            piece_size,
            local,
            client: shardd_client::ClientOptions {
                auth_key,
                ..shardd_client::ClientOptions::default()
            },
        };
        let inner = shardd_client::Cluster::new(&endpoints, options).py(py)?;
        Ok(Cluster {
            inner,
            io: Io::current()?,
        })
    }

    /// Number of nodes.
    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// Node `node`'s endpoint.
    fn endpoint(&self, node: usize) -> Option<String> {
        self.inner.endpoint(node).map(str::to_string)
    }

    /// Connects to every node once (so that a wrong address or a daemon that
    /// is down is reported now).
    fn check(&self, py: Python<'_>) -> PyResult<()> {
        let cluster = self.inner.clone();
        self.io
            .block(py, async move {
                for node in 0..cluster.len() {
                    cluster.client(node).await?;
                }
                Ok::<(), shardd_client::ClusterError>(())
            })?
            .py(py)
    }

    /// Splits `nbytes` at `address` into one partition per node and stores
    /// them, then the tensor's manifest on node 0.
    #[allow(clippy::too_many_arguments)]
    fn put_partitioned<'py>(
        &self,
        py: Python<'py>,
        namespace: String,
        tensor: String,
        address: usize,
        nbytes: usize,
        owner: Py<PyAny>,
        dtype: &str,
        shape: Vec<u64>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let dtype = meta::dtype(dtype).map_err(|e| errors::bad_request(py, e))?;
        let data = Bytes::from_owner(lent(address, nbytes, owner));
        let cluster = self.inner.clone();
        let stored = self
            .io
            .block(py, async move {
                cluster.put_partitioned(&namespace, &tensor, data, dtype, shape).await
            })?
            .py(py)?;
        manifest(py, &stored)
    }

    /// The manifest of a partitioned tensor.
    fn manifest<'py>(&self, py: Python<'py>, namespace: String, tensor: String) -> PyResult<Bound<'py, PyDict>> {
        let cluster = self.inner.clone();
        let (ns, name) = (namespace.clone(), tensor.clone());
        let found = self
            .io
            .block(py, async move { cluster.manifest(&ns, &name).await })?
            .py(py)?;
        match found {
            Some(m) => manifest(py, &m),
            None => Err(errors::raise(
                py,
                "NotFound",
                format!("tensor {namespace}/{tensor} not found (store it with put_partitioned)"),
                None,
                None,
            )),
        }
    }

    /// Resolves a layer of partitioned tensors.
    fn layer(&self, py: Python<'_>, namespace: String, name: String, tensors: Vec<String>) -> PyResult<Layer> {
        let cluster = self.inner.clone();
        let inner = self
            .io
            .block(py, async move {
                let tensors: Vec<&str> = tensors.iter().map(String::as_str).collect();
                cluster.layer(&namespace, &name, &tensors).await
            })?
            .py(py)?;
        Ok(Layer { inner })
    }

    /// Gathers every partition of `layer`'s tensors from all nodes into
    /// `nbytes` at `address` (writable memory of `owner`).
    fn gather<'py>(
        &self,
        py: Python<'py>,
        layer: &Layer,
        address: usize,
        nbytes: usize,
        owner: Py<PyAny>,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let buf = lent(address, nbytes, owner);
        let (cluster, layer) = (self.inner.clone(), layer.inner.clone());
        let (buf, result) = self.io.block(py, async move { cluster.gather(&layer, buf).await })?;
        drop(buf);
        gathered(py, &result.py(py)?)
    }

    /// Reads node `node`'s partition of `tensor` into `nbytes` at `address`.
    #[allow(clippy::too_many_arguments)]
    fn read_partition<'py>(
        &self,
        py: Python<'py>,
        namespace: String,
        tensor: String,
        node: usize,
        address: usize,
        nbytes: usize,
        owner: Py<PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let buf = lent(address, nbytes, owner);
        let cluster = self.inner.clone();
        let (buf, result) = self.io.block(py, async move {
            cluster.read_partition(&namespace, &tensor, node, buf).await
        })?;
        drop(buf);
        let read = result.py(py)?;
        let out = manifest(py, &read.manifest)?;
        out.set_item("node", read.node)?;
        out.set_item("start", read.range.start)?;
        out.set_item("end", read.range.end)?;
        Ok(out)
    }

    /// Node `node`'s daemon's status.
    fn status_of<'py>(&self, py: Python<'py>, node: usize) -> PyResult<Bound<'py, PyAny>> {
        let cluster = self.inner.clone();
        let status = self
            .io
            .block(py, async move { cluster.status_of(node).await })?
            .py(py)?;
        meta::plain(py, &status)
    }
}

#[pymethods]
impl Layer {
    /// The layer's name.
    #[getter]
    fn name(&self) -> String {
        self.inner.name().to_string()
    }

    /// Its namespace.
    #[getter]
    fn namespace(&self) -> String {
        self.inner.namespace().to_string()
    }

    /// Bytes a gather buffer needs.
    #[getter]
    fn nbytes(&self) -> u64 {
        self.inner.len()
    }

    /// Its tensors' manifests, in order.
    fn tensors<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        self.inner.tensors().map(|m| manifest(py, m)).collect()
    }
}

/// The training loop's gathers: layer after layer, the next one gathered
/// ahead and hinted to every node, the stall of each step counted.
#[pyclass(module = "shardd._native", frozen)]
#[derive(Debug)]
pub struct Trainer {
    inner: Mutex<shardd_client::Trainer<Lent>>,
    io: Io,
}

#[pymethods]
impl Trainer {
    #[new]
    #[pyo3(signature = (cluster, namespace, *, prefetch=true, depth=2, budget_bytes=4 << 30,
        demote_after_use=false, register_schedule=true, gather_ahead=true))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        cluster: &Cluster,
        namespace: &str,
        prefetch: bool,
        depth: usize,
        budget_bytes: u64,
        demote_after_use: bool,
        register_schedule: bool,
        gather_ahead: bool,
    ) -> Trainer {
        let options = TrainerOptions {
            prefetch,
            depth,
            budget_bytes,
            demote_after_use,
            register_schedule,
            gather_ahead,
        };
        Trainer {
            inner: Mutex::new(shardd_client::Trainer::new(cluster.inner.clone(), namespace, options)),
            io: cluster.io.clone(),
        }
    }

    /// Resolves a layer and adds it; returns it.
    fn add_layer(&self, py: Python<'_>, name: String, tensors: Vec<String>) -> PyResult<Layer> {
        let layer = self
            .io
            .block(py, async {
                let tensors: Vec<&str> = tensors.iter().map(String::as_str).collect();
                let mut trainer = self.inner.lock().await;
                trainer.add_layer(&name, &tensors).await.cloned()
            })?
            .py(py)?;
        Ok(Layer { inner: layer })
    }

    /// Lends a buffer (writable memory of `owner`) for gathering ahead.
    fn lend(&self, py: Python<'_>, address: usize, nbytes: usize, owner: Py<PyAny>) -> PyResult<()> {
        let buf = lent(address, nbytes, owner);
        self.io.block(py, async { self.inner.lock().await.lend(buf) })
    }

    /// Declares the order of a step (layer names, repeated as used).
    fn declare_order(&self, py: Python<'_>, order: Vec<String>) -> PyResult<()> {
        self.io
            .block(py, async {
                let order: Vec<&str> = order.iter().map(String::as_str).collect();
                self.inner.lock().await.declare_order(&order).await
            })?
            .py(py)
    }

    /// Gathers layer `name` into the buffer lent (`owner`'s memory), or
    /// gives back another lent buffer that already holds it; returns that
    /// buffer's owner and the tensors in it.
    fn gather<'py>(
        &self,
        py: Python<'py>,
        name: String,
        address: usize,
        nbytes: usize,
        owner: Py<PyAny>,
    ) -> PyResult<(Py<PyAny>, Vec<Bound<'py, PyDict>>)> {
        let buf = lent(address, nbytes, owner);
        let (buf, result) = self
            .io
            .block(py, async { self.inner.lock().await.gather(&name, buf).await })?;
        let owner = buf.into_owner();
        Ok((owner, gathered(py, &result.py(py)?)?))
    }

    /// Ends a step; returns what it cost.
    fn end_step<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = self.io.block(py, async { self.inner.lock().await.end_step().await })?;
        step(py, &stats)
    }

    /// Every finished step.
    fn steps<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let steps = self.io.block(py, async { self.inner.lock().await.steps().to_vec() })?;
        steps.iter().map(|s| step(py, s)).collect()
    }

    /// The trusted order of a step, while there is one.
    fn trace(&self, py: Python<'_>) -> PyResult<Option<Vec<String>>> {
        self.io
            .block(py, async { self.inner.lock().await.trace().map(<[String]>::to_vec) })
    }
}
