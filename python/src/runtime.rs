//! The async runtime every object of the module runs its I/O on, and the
//! one way Python threads wait for it: with the interpreter released.

use std::future::Future;
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use tokio::runtime::Runtime;

use crate::errors;

/// The runtime of this process (a forked child gets its own).
static RUNTIME: Mutex<Option<(u32, Arc<Runtime>)>> = Mutex::new(None);

/// The runtime, started on first use.
pub fn runtime() -> PyResult<Arc<Runtime>> {
    let pid = std::process::id();
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((owner, runtime)) = slot.as_ref()
        && *owner == pid
    {
        return Ok(runtime.clone());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("shardd-io")
        .build()
        .map_err(|e| errors::Error::new_err(format!("cannot start shardd's I/O threads: {e}")))?;
    let runtime = Arc::new(runtime);
    // A runtime inherited through fork() has no threads in the child: it is
    // forgotten, never dropped (dropping would wait for threads that are
    // not there).
    if let Some((_, inherited)) = slot.replace((pid, runtime.clone())) {
        std::mem::forget(inherited);
    }
    Ok(runtime)
}

/// A handle on the runtime a connection was made with, which fails with a
/// clear error once used in a forked child (where its threads are gone).
#[derive(Clone, Debug)]
pub struct Io {
    runtime: Arc<Runtime>,
    pid: u32,
}

impl Io {
    /// The runtime of this process.
    pub fn current() -> PyResult<Io> {
        Ok(Io {
            runtime: runtime()?,
            pid: std::process::id(),
        })
    }

    /// Runs `future` to completion with the interpreter released, so other
    /// Python threads run meanwhile.
    pub fn block<F>(&self, py: Python<'_>, future: F) -> PyResult<F::Output>
    where
        F: Future + Send,
        F::Output: Send,
    {
        if std::process::id() != self.pid {
            return Err(errors::Error::new_err(
                "this shardd object was made before fork(): make a new one in the child process",
            ));
        }
        Ok(py.detach(|| self.runtime.block_on(future)))
    }

    /// The runtime, to spawn work on.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime.handle()
    }
}
