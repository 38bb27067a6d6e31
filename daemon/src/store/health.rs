//! Whether each data directory's drive works.
//!
//! An I/O error that means the drive (or its file system) is gone (EIO,
//! EROFS, EUCLEAN, ENODEV, ENXIO) makes the store probe the directory:
//! write, sync and remove a small file in its `tmp/`. A probe that fails
//! marks the directory failed; an error of one file only (a bad sector)
//! fails that request and nothing else. While a directory is failed:
//!
//! * reads of its shards fail at once with `io error`, without touching
//!   the drive (a dying drive can take seconds to answer);
//! * puts go to the other directories;
//! * `status` and `/readyz` name it, with the error, and
//!   `shardd_data_dir_failed{dir}` is 1.
//!
//! It is probed again every [`REPROBE_INTERVAL`]: a drive that comes back
//! (a cable, a controller reset) is used again, and says so in the log.

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often a failed data directory is probed again.
pub const REPROBE_INTERVAL: Duration = Duration::from_secs(10);

/// Name of the probe file in a data directory's `tmp/` (removed at start
/// with the rest of `tmp/`, should a probe be cut short).
pub const PROBE_FILE: &str = "probe";

/// Whether `e` says the drive or its file system failed, rather than that
/// one request was wrong (ENOENT, ENOSPC, EACCES, ...).
pub fn is_drive_failure(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EROFS | libc::EUCLEAN | libc::ENODEV | libc::ENXIO)
    )
}

/// A data directory's health.
#[derive(Debug, Default)]
pub struct DirHealth {
    failed: AtomicBool,
    /// Set while a probe runs, so that a burst of errors probes once.
    probing: AtomicBool,
    failure: Mutex<Option<Failure>>,
}

/// Why and since when a data directory is failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The error of the probe (or of the I/O that led to it).
    pub error: String,
    /// When it was found, in milliseconds since the Unix epoch.
    pub since_unix_ms: u64,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since = time::OffsetDateTime::from_unix_timestamp_nanos(self.since_unix_ms as i128 * 1_000_000)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok());
        match since {
            Some(since) => write!(f, "{} (since {since})", self.error),
            None => write!(f, "{} (since {} ms after the epoch)", self.error, self.since_unix_ms),
        }
    }
}

impl DirHealth {
    /// Whether the directory is failed now (one atomic load).
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Why it is failed, if it is.
    pub fn failure(&self) -> Option<Failure> {
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Takes the right to probe; false while another probe runs.
    pub fn begin_probe(&self) -> bool {
        !self.probing.swap(true, Ordering::AcqRel)
    }

    /// Records a probe's outcome; returns whether the state changed
    /// (working to failed, or back).
    pub fn end_probe(&self, outcome: Result<(), String>) -> bool {
        let changed = {
            let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
            match outcome {
                Ok(()) => failure.take().is_some(),
                Err(error) if failure.is_none() => {
                    *failure = Some(Failure {
                        error,
                        since_unix_ms: now_unix_ms(),
                    });
                    true
                }
                // Failed before: keep the first error and its time.
                Err(_) => false,
            }
        };
        self.failed.store(self.failure().is_some(), Ordering::Release);
        self.probing.store(false, Ordering::Release);
        changed
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drive_failures_are_told_from_errors_of_one_request() {
        for errno in [libc::EIO, libc::EROFS, libc::EUCLEAN] {
            assert!(is_drive_failure(&io::Error::from_raw_os_error(errno)), "{errno}");
        }
        for errno in [libc::ENOENT, libc::ENOSPC, libc::EACCES, libc::EEXIST] {
            assert!(!is_drive_failure(&io::Error::from_raw_os_error(errno)), "{errno}");
        }
        assert!(!is_drive_failure(&io::Error::other("no errno")));
    }

    #[test]
    fn a_failed_probe_fails_the_dir_until_one_succeeds_and_keeps_the_first_error() {
        let health = DirHealth::default();
        assert!(!health.is_failed());
        assert!(health.begin_probe());
        assert!(!health.begin_probe(), "one probe at a time");
        assert!(health.end_probe(Err("first".into())));
        assert!(health.is_failed());
        assert!(health.begin_probe());
        assert!(!health.end_probe(Err("second".into())), "still failed: no change");
        assert_eq!(health.failure().unwrap().error, "first");
        assert!(health.begin_probe());
        assert!(health.end_probe(Ok(())));
        assert!(!health.is_failed());
        assert_eq!(health.failure(), None);
    }

    #[test]
    fn a_failure_says_when_it_began_in_utc() {
        let failure = Failure {
            error: "Input/output error (os error 5)".into(),
            since_unix_ms: 1_796_317_200_500,
        };
        assert_eq!(
            failure.to_string(),
            "Input/output error (os error 5) (since 2026-12-03T17:00:00.5Z)"
        );
    }
}
