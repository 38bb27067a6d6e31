//! The store's error type: each variant maps to one wire status.

use std::io;

use shardd_protocol::{Key, Namespace, Status};

/// Why a store operation failed. Each variant maps to one wire status.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such shard.
    #[error("shard {namespace}/{key} not found")]
    NotFound {
        /// Namespace.
        namespace: Namespace,
        /// Key.
        key: Key,
    },
    /// The shard failed verification and was moved aside.
    #[error("shard {namespace}/{key} version {version} is quarantined: {reason}")]
    Quarantined {
        /// Namespace.
        namespace: Namespace,
        /// Key.
        key: Key,
        /// The version that failed.
        version: u64,
        /// What failed.
        reason: String,
    },
    /// A put's version is not newer, or a delete's expected version differs.
    #[error("{namespace}/{key}: {message}")]
    VersionConflict {
        /// Namespace.
        namespace: Namespace,
        /// Key.
        key: Key,
        /// The version stored now.
        current: u64,
        /// What is wrong.
        message: String,
    },
    /// No data dir has room.
    #[error("no space: {0}")]
    NoSpace(String),
    /// Bytes do not match their checksum.
    #[error("checksum mismatch: {0}")]
    ChecksumMismatch(String),
    /// A length beyond a limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// A request that cannot be valid.
    #[error("{0}")]
    BadRequest(String),
    /// The access table does not let the peer do this.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// A failure reported elsewhere (a load another request ran, a
    /// background flush), passed on with its status.
    #[error("{message}")]
    Other {
        /// Its status.
        status: Status,
        /// What failed.
        message: String,
    },
    /// An I/O error: `io error` on the wire, but ENOSPC and EDQUOT are
    /// `no space`, and an error the operating system did not report (a
    /// bug) is `internal`.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: io::Error,
    },
}

impl StoreError {
    /// The wire status of this error.
    pub fn status(&self) -> Status {
        match self {
            StoreError::NotFound { .. } => Status::NotFound,
            StoreError::Quarantined { .. } | StoreError::ChecksumMismatch(_) => Status::ChecksumMismatch,
            StoreError::VersionConflict { .. } => Status::VersionConflict,
            StoreError::NoSpace(_) => Status::NoSpace,
            StoreError::TooLarge(_) => Status::TooLarge,
            StoreError::BadRequest(_) => Status::BadRequest,
            StoreError::Unauthorized(_) => Status::Unauthorized,
            StoreError::Other { status, .. } => *status,
            StoreError::Io { source, .. } if is_no_space(source) => Status::NoSpace,
            // An error the operating system reported: the drive's.
            StoreError::Io { source, .. } if source.raw_os_error().is_some() => Status::Io,
            StoreError::Io { .. } => Status::Internal,
        }
    }

    /// With a version conflict: the version stored now.
    pub fn current_version(&self) -> Option<u64> {
        match self {
            StoreError::VersionConflict { current, .. } => Some(*current),
            _ => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> StoreError {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}
