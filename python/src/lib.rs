//! `shardd._native`: the native part of the `shardd` Python package, a thin
//! PyO3 layer over the `shardd-client` crate. It knows nothing of numpy
//! dtypes or torch: memory crosses as (address, length, owner) from the
//! Python layer (`shardd/_buffers.py`), answers as plain values, and whole
//! shards as uint8 arrays. Every call that waits releases the interpreter.
//!
//! # Layout
//!
//! * [`runtime`]: the I/O threads and waiting on them without the GIL.
//! * [`errors`]: client errors as `shardd.errors` exceptions.
//! * [`buf`]: Python memory lent to a request.
//! * [`meta`]: shard metadata and answers as Python values.
//! * [`client`]: `Client`, one connection.
//! * [`view`]: `View`, a shard read in place in the daemon's arena.
//! * [`batch`]: many shards in one request, and `Region`, memory the
//!   daemon fills in place.
//! * [`cluster`]: `Cluster`, `Layer`, `Trainer`: several nodes.
//! * [`files`]: `.safetensors` import and export, files as shards.
//! * [`bench`]: the Rust client's loops of `python -m shardd.bench`.

pub mod batch;
pub mod bench;
pub mod buf;
pub mod client;
pub mod cluster;
pub mod errors;
pub mod files;
pub mod meta;
pub mod runtime;
pub mod view;

use pyo3::prelude::*;

/// The module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("Error", m.py().get_type::<errors::Error>())?;
    m.add_class::<client::Client>()?;
    m.add_class::<view::View>()?;
    m.add_class::<batch::Region>()?;
    m.add_class::<batch::RegisteredRegion>()?;
    m.add_class::<batch::PreparedFetch>()?;
    m.add_class::<meta::ShardMeta>()?;
    m.add_class::<cluster::Cluster>()?;
    m.add_class::<cluster::Layer>()?;
    m.add_class::<cluster::Trainer>()?;
    m.add_function(wrap_pyfunction!(files::import_safetensors, m)?)?;
    m.add_function(wrap_pyfunction!(files::import_safetensors_partitioned, m)?)?;
    m.add_function(wrap_pyfunction!(files::export_safetensors, m)?)?;
    m.add_function(wrap_pyfunction!(files::put_file, m)?)?;
    m.add_function(wrap_pyfunction!(files::get_file, m)?)?;
    m.add_function(wrap_pyfunction!(bench::fetch_into_loop, m)?)?;
    m.add_function(wrap_pyfunction!(bench::view_loop, m)?)?;
    m.add_function(wrap_pyfunction!(bench::get_loop, m)?)?;
    Ok(())
}
