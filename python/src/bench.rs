//! The Rust client's side of `python -m shardd.bench`: the same loops the
//! Python side runs, through the same connection, timed here, so that the
//! two are measured in the same run.

use std::time::Instant;

use pyo3::prelude::*;

use crate::client::Client;
use crate::errors::IntoPy;

/// Seconds taken by `rounds` passes of `fetch_into` of every key into one
/// reused buffer of `nbytes`.
#[pyfunction]
pub fn fetch_into_loop(
    py: Python<'_>,
    client: &Client,
    namespace: String,
    keys: Vec<String>,
    rounds: usize,
    nbytes: usize,
) -> PyResult<f64> {
    let connection = client.connection(py)?;
    client
        .io
        .block(py, async move {
            let mut buf = vec![1u8; nbytes];
            let start = Instant::now();
            for _ in 0..rounds {
                for key in &keys {
                    let (back, result) = connection.fetch_into(&namespace, key, None, buf).await;
                    buf = back;
                    result?;
                }
            }
            Ok::<f64, shardd_client::ClientError>(start.elapsed().as_secs_f64())
        })?
        .py(py)
}

/// Seconds taken by `rounds` passes of a zero-copy view of every key, its
/// bytes copied into one reused buffer of `nbytes`.
#[pyfunction]
pub fn view_loop(
    py: Python<'_>,
    client: &Client,
    namespace: String,
    keys: Vec<String>,
    rounds: usize,
    nbytes: usize,
) -> PyResult<f64> {
    let connection = client.connection(py)?;
    client
        .io
        .block(py, async move {
            let mut buf = vec![1u8; nbytes];
            let start = Instant::now();
            for _ in 0..rounds {
                for key in &keys {
                    let view = connection.fetch_view(&namespace, key, None).await?;
                    view.copy_to(&mut buf, false)?;
                }
            }
            Ok::<f64, shardd_client::ClientError>(start.elapsed().as_secs_f64())
        })?
        .py(py)
}

/// Seconds taken by `count` whole fetches of `key`, one at a time.
#[pyfunction]
pub fn get_loop(py: Python<'_>, client: &Client, namespace: String, key: String, count: usize) -> PyResult<f64> {
    let connection = client.connection(py)?;
    client
        .io
        .block(py, async move {
            let start = Instant::now();
            for _ in 0..count {
                std::hint::black_box(connection.fetch(&namespace, &key).await?);
            }
            Ok::<f64, shardd_client::ClientError>(start.elapsed().as_secs_f64())
        })?
        .py(py)
}
