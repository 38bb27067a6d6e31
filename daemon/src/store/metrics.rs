//! The store's metrics: drive reads, writes and syncs per data dir (bytes
//! and latency), I/O errors and checksum failures. Made with the store and
//! registered by the daemon (see [`crate::metrics`]); per-dir handles are
//! resolved once, so the I/O path does no label lookups.

use std::time::Instant;

use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

/// Bucket bounds of drive operation latency, in seconds: from a 4 KiB read
/// served by an NVMe drive's cache (tens of microseconds) to a 1 MiB chunk
/// or an `fdatasync` on a drive under heavy load (hundreds of milliseconds).
pub const IO_SECONDS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// What an I/O operation was, for the error counter.
#[derive(Clone, Copy, Debug)]
pub enum IoOp {
    /// A read of a shard file.
    Read,
    /// A write of a shard file.
    Write,
    /// An `fdatasync` (or directory fsync).
    Sync,
    /// An open, create, rename or removal of a shard file.
    Metadata,
}

/// One data dir's handles.
#[derive(Clone, Debug)]
struct DirHandles {
    read_bytes: IntCounter,
    written_bytes: IntCounter,
    read_seconds: Histogram,
    write_seconds: Histogram,
    sync_seconds: Histogram,
    errors: [IntCounter; 4],
    failed: IntGauge,
}

/// The store's metric handles.
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    read_bytes: IntCounterVec,
    written_bytes: IntCounterVec,
    read_seconds: HistogramVec,
    write_seconds: HistogramVec,
    sync_seconds: HistogramVec,
    errors: IntCounterVec,
    failed: IntGaugeVec,
    checksum_failures: IntCounter,
    dirs: Vec<DirHandles>,
}

impl StoreMetrics {
    /// Handles for data dirs named `dirs` (their paths, as labels).
    pub fn new(dirs: &[String]) -> StoreMetrics {
        let counter = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &["dir"]).expect("valid metric definition")
        };
        let histogram = |name: &str, help: &str| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(IO_SECONDS_BUCKETS.to_vec()),
                &["dir"],
            )
            .expect("valid metric definition")
        };
        let read_bytes = counter(
            "shardd_nvme_read_bytes_total",
            "Bytes read from shard files, per data dir.",
        );
        let written_bytes = counter(
            "shardd_nvme_written_bytes_total",
            "Bytes written to shard files, per data dir.",
        );
        let read_seconds = histogram(
            "shardd_nvme_read_duration_seconds",
            "Time from submitting a shard-file read to its completion, per data dir.",
        );
        let write_seconds = histogram(
            "shardd_nvme_write_duration_seconds",
            "Time from submitting a shard-file write to its completion, per data dir.",
        );
        let sync_seconds = histogram(
            "shardd_nvme_sync_duration_seconds",
            "Time an fdatasync of a new shard file takes, per data dir.",
        );
        let errors = IntCounterVec::new(
            Opts::new(
                "shardd_io_errors_total",
                "Failed drive operations, per data dir and operation.",
            ),
            &["dir", "op"],
        )
        .expect("valid metric definition");
        let failed = IntGaugeVec::new(
            Opts::new(
                "shardd_data_dir_failed",
                "1 while a data dir's drive is failed (its shards cannot be read; puts go elsewhere), else 0.",
            ),
            &["dir"],
        )
        .expect("valid metric definition");
        let checksum_failures = IntCounter::new(
            "shardd_checksum_failures_total",
            "Chunks read from a drive whose CRC32C did not match (the shard is quarantined).",
        )
        .expect("valid metric definition");
        let dirs = dirs
            .iter()
            .map(|dir| DirHandles {
                read_bytes: read_bytes.with_label_values(&[dir]),
                written_bytes: written_bytes.with_label_values(&[dir]),
                read_seconds: read_seconds.with_label_values(&[dir]),
                write_seconds: write_seconds.with_label_values(&[dir]),
                sync_seconds: sync_seconds.with_label_values(&[dir]),
                errors: ["read", "write", "sync", "metadata"].map(|op| errors.with_label_values(&[dir, op])),
                failed: failed.with_label_values(&[dir]),
            })
            .collect();
        StoreMetrics {
            read_bytes,
            written_bytes,
            read_seconds,
            write_seconds,
            sync_seconds,
            errors,
            failed,
            checksum_failures,
            dirs,
        }
    }

    /// Everything to register.
    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.read_bytes.clone()),
            Box::new(self.written_bytes.clone()),
            Box::new(self.read_seconds.clone()),
            Box::new(self.write_seconds.clone()),
            Box::new(self.sync_seconds.clone()),
            Box::new(self.errors.clone()),
            Box::new(self.failed.clone()),
            Box::new(self.checksum_failures.clone()),
        ]
    }

    /// A read of `bytes` from dir `dir`, submitted at `submitted`.
    pub fn read(&self, dir: usize, bytes: usize, submitted: Instant) {
        if let Some(d) = self.dirs.get(dir) {
            d.read_bytes.inc_by(bytes as u64);
            d.read_seconds.observe(submitted.elapsed().as_secs_f64());
        }
    }

    /// A write of `bytes` to dir `dir`, submitted at `submitted`.
    pub fn written(&self, dir: usize, bytes: usize, submitted: Instant) {
        if let Some(d) = self.dirs.get(dir) {
            d.written_bytes.inc_by(bytes as u64);
            d.write_seconds.observe(submitted.elapsed().as_secs_f64());
        }
    }

    /// An `fdatasync` in dir `dir`, submitted at `submitted`.
    pub fn synced(&self, dir: usize, submitted: Instant) {
        if let Some(d) = self.dirs.get(dir) {
            d.sync_seconds.observe(submitted.elapsed().as_secs_f64());
        }
    }

    /// A failed operation in dir `dir`.
    pub fn error(&self, dir: usize, op: IoOp) {
        if let Some(d) = self.dirs.get(dir) {
            d.errors[op as usize].inc();
        }
    }

    /// Whether dir `dir` is failed now.
    pub fn set_failed(&self, dir: usize, failed: bool) {
        if let Some(d) = self.dirs.get(dir) {
            d.failed.set(i64::from(failed));
        }
    }

    /// A chunk whose checksum failed.
    pub fn checksum_failure(&self) {
        self.checksum_failures.inc();
    }
}
