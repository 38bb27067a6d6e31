//! Rust errors as Python exceptions. The classes live in `shardd.errors`
//! (Python, so that `NotFound` can also be a `KeyError`, `Timeout` a
//! `TimeoutError`, ...); all derive from [`Error`], defined here.

use pyo3::prelude::*;
use shardd_client::{ClientError, ClusterError, Status};

pyo3::create_exception!(
    _native,
    Error,
    pyo3::exceptions::PyException,
    "Base of every shardd error. `status` is the daemon's status name when the daemon answered with an error."
);

/// The `shardd.errors` class for a daemon status.
fn class_of_status(status: Status) -> &'static str {
    match status {
        Status::NotFound => "NotFound",
        Status::VersionConflict => "VersionConflict",
        Status::NoSpace => "NoSpace",
        Status::ChecksumMismatch => "ChecksumMismatch",
        Status::TooLarge => "TooLarge",
        Status::Unauthorized => "Unauthorized",
        Status::BadRequest => "BadRequest",
        Status::Busy => "Busy",
        Status::ShuttingDown => "ShuttingDown",
        Status::UnsupportedVersion => "UnsupportedVersion",
        Status::Io => "DriveError",
        Status::Internal | Status::Ok | Status::Other(_) => "Internal",
    }
}

/// The class, the daemon's status and the current version of `e`.
fn classify(e: &ClientError) -> (&'static str, Option<Status>, Option<u64>) {
    match e {
        ClientError::Remote {
            status,
            current_version,
            ..
        } => (class_of_status(*status), Some(*status), *current_version),
        ClientError::InvalidEndpoint { .. } => ("InvalidEndpoint", None, None),
        ClientError::InvalidName(_) => ("InvalidName", None, None),
        ClientError::InvalidBatch { .. } => ("BadRequest", None, None),
        ClientError::Connect { .. } => ("ConnectError", None, None),
        ClientError::Auth { .. } => ("Unauthorized", None, None),
        ClientError::Disconnected { .. } => ("Disconnected", None, None),
        ClientError::Protocol { .. } => ("ProtocolError", None, None),
        ClientError::ZeroCopyUnavailable => ("ZeroCopyUnavailable", None, None),
        ClientError::TooLarge { .. } => ("TooLarge", None, None),
        ClientError::BufferTooSmall { .. } => ("BufferTooSmall", None, None),
        ClientError::ChecksumMismatch { .. } => ("ChecksumMismatch", Some(Status::ChecksumMismatch), None),
        ClientError::LeaseLost { .. } => ("LeaseLost", None, None),
        ClientError::Timeout { .. } => ("Timeout", None, None),
    }
}

/// An instance of `shardd.errors.<class>` with `message`, or the base
/// [`Error`] where that module cannot be loaded.
pub fn raise(py: Python<'_>, class: &str, message: String, status: Option<Status>, current: Option<u64>) -> PyErr {
    let made = (|| -> PyResult<PyErr> {
        let cls = py.import("shardd.errors")?.getattr(class)?;
        let exc = cls.call1((message.clone(),))?;
        exc.setattr("status", status.map(|s| s.name()))?;
        exc.setattr("current_version", current)?;
        Ok(PyErr::from_value(exc))
    })();
    made.unwrap_or_else(|_| Error::new_err(message))
}

/// A client error as the exception that says what to do about it.
pub fn client(py: Python<'_>, e: ClientError) -> PyErr {
    let (class, status, current) = classify(&e);
    raise(py, class, e.to_string(), status, current)
}

/// A cluster error: a node's error keeps its class (a missing partition is
/// still `NotFound`), with the node named in the message.
pub fn cluster(py: Python<'_>, e: ClusterError) -> PyErr {
    let (class, status, current) = match &e {
        ClusterError::Node { source, .. } => classify(source),
        ClusterError::BufferTooSmall { .. } => ("BufferTooSmall", None, None),
        ClusterError::Invalid(_) | ClusterError::Hostfile { .. } => ("BadRequest", None, None),
        ClusterError::Tensor { .. } => ("TensorError", None, None),
    };
    raise(py, class, e.to_string(), status, current)
}

/// A `ValueError`-like `shardd.errors.BadRequest` raised before anything
/// reached a daemon.
pub fn bad_request(py: Python<'_>, message: impl Into<String>) -> PyErr {
    raise(py, "BadRequest", message.into(), None, None)
}

/// Converts `Result<T, ClientError>` into `PyResult<T>`.
pub trait IntoPy<T> {
    /// The result, its error as an exception.
    fn py(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPy<T> for Result<T, ClientError> {
    fn py(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| client(py, e))
    }
}

impl<T> IntoPy<T> for Result<T, ClusterError> {
    fn py(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| cluster(py, e))
    }
}
