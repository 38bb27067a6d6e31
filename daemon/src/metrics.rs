//! The daemon's Prometheus metrics, documented in `docs/METRICS.md`.
//!
//! One [`Metrics`] per daemon holds every handle, created once against its
//! own registry (tests get a fresh one with each daemon). The request path
//! uses handles resolved up front ([`RequestMetrics`]), so it does no label
//! lookups. The arena's gauges and counters are read from the cache itself
//! whenever the registry is gathered ([`tier`]), so they are counted once and
//! move as events happen. The drives' space and shard counts are brought up
//! to date when `/metrics` is scraped ([`Metrics::refresh`]).
//!
//! # Layout
//!
//! * [`tier`]: the hot tier's families, read from the cache.

pub mod tier;

use std::time::Instant;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use shardd_protocol::{NamespaceUsage, Opcode, Status, StatusResponse};

use crate::cache::Cache;
use tier::TierCollector;

/// Bucket bounds of request latency, in seconds: from a 4 KiB fetch of a
/// shard in the arena over the Unix socket (tens of microseconds) to a
/// durable put or cold fetch of a 256 MiB shard (seconds).
pub const REQUEST_SECONDS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Opcodes below this are looked up once per transport.
const OPCODES: u16 = 32;
/// Namespaces with series of their own in the per-namespace gauges (the
/// rest are summed as `other`): bounded label cardinality.
pub const NAMESPACE_SERIES: usize = 20;

/// The transports, as metric labels.
pub const TRANSPORTS: [&str; 3] = ["unix", "tcp", "tls"];

/// Every handle.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_seconds: HistogramVec,
    transport_bytes: IntCounterVec,
    connections: IntGaugeVec,
    /// Connections refused in their hello, by reason.
    pub handshake_refusals: IntCounterVec,
    inflight_bytes: IntGauge,
    /// Fetches of shards on no drive (not found): counted by the request
    /// path, gathered with the arena's counters ([`TierCollector`]).
    nvme_misses: IntCounter,
    quarantined: IntGauge,
    shards: IntGauge,
    stored_bytes: IntGauge,
    dir_capacity: IntGaugeVec,
    dir_free: IntGaugeVec,
    namespace_shards: IntGaugeVec,
    namespace_drive_bytes: IntGaugeVec,
    namespace_arena_bytes: IntGaugeVec,
    /// `shardd_io_engine_info`: its `fixed_buffers` label turns true when
    /// an arena populated after the start is registered.
    engine_info: IntGaugeVec,
    /// The `fixed_buffers` label it has now.
    engine_fixed: std::sync::atomic::AtomicBool,
}

/// The handles of one transport's connections.
#[derive(Clone, Debug)]
pub struct RequestMetrics {
    requests: IntCounterVec,
    /// `ok` answers by opcode (the common case, resolved up front).
    ok: Vec<Option<IntCounter>>,
    /// Latency by opcode.
    seconds: Vec<Option<Histogram>>,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
    connections: IntGauge,
    inflight_bytes: IntGauge,
    not_found: IntCounter,
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition")
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("valid metric definition")
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition")
}

impl Metrics {
    /// Every handle, registered in a new registry with the store's
    /// `store` collectors, the process collector, and the constant
    /// `shardd_build_info` and `shardd_io_engine_info`.
    pub fn new(store: Vec<Box<dyn Collector>>, cache: Option<Cache>, io_engine: &str, fixed_buffers: bool) -> Metrics {
        let registry = Registry::new();
        let metrics = Metrics {
            requests: counter_vec(
                "shardd_requests_total",
                "Requests answered, by operation and status.",
                &["op", "status"],
            ),
            request_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "shardd_request_duration_seconds",
                    "Time from a request's arrival to its answer's last byte handed to the socket.",
                )
                .buckets(REQUEST_SECONDS_BUCKETS.to_vec()),
                &["op", "transport"],
            )
            .expect("valid metric definition"),
            transport_bytes: counter_vec(
                "shardd_transport_bytes_total",
                "Payload bytes received (puts) and sent (fetches), by transport.",
                &["transport", "direction"],
            ),
            connections: gauge_vec(
                "shardd_connections",
                "Open client connections, by transport.",
                &["transport"],
            ),
            handshake_refusals: counter_vec(
                "shardd_handshake_refusals_total",
                "Connections refused and closed in their hello, by transport and reason.",
                &["transport", "reason"],
            ),
            inflight_bytes: gauge(
                "shardd_inflight_bytes",
                "Payload bytes of requests in progress: puts being received and answers not yet sent.",
            ),
            nvme_misses: IntCounter::new("shardd_nvme_misses", "not registered: gathered by TierCollector")
                .expect("valid metric definition"),
            quarantined: gauge(
                "shardd_quarantined_shards",
                "Shard files moved aside as corrupt since start, at recovery or on read.",
            ),
            shards: gauge("shardd_shards", "Shards stored on the drives."),
            stored_bytes: gauge(
                "shardd_stored_bytes",
                "Payload bytes of the shards stored on the drives.",
            ),
            dir_capacity: gauge_vec(
                "shardd_data_dir_capacity_bytes",
                "Size of the filesystem holding a data dir.",
                &["dir"],
            ),
            namespace_shards: gauge_vec(
                "shardd_namespace_shards",
                "Shards of a namespace on the drives: the largest namespaces by name, the rest as \"other\".",
                &["namespace"],
            ),
            namespace_drive_bytes: gauge_vec(
                "shardd_namespace_drive_bytes",
                "Bytes of a namespace's shards on the drives (largest namespaces; the rest as \"other\").",
                &["namespace"],
            ),
            namespace_arena_bytes: gauge_vec(
                "shardd_namespace_arena_bytes",
                "Bytes of a namespace's shards in the arena (largest namespaces; the rest as \"other\").",
                &["namespace"],
            ),
            dir_free: gauge_vec(
                "shardd_data_dir_free_bytes",
                "Bytes available to the daemon on the filesystem holding a data dir.",
                &["dir"],
            ),
            engine_info: gauge_vec(
                "shardd_io_engine_info",
                "The I/O engine in use and whether the arena is registered as io_uring fixed buffers (always 1).",
                &["engine", "fixed_buffers"],
            ),
            engine_fixed: std::sync::atomic::AtomicBool::new(fixed_buffers),
            registry,
        };
        let build = gauge_vec("shardd_build_info", "The daemon's version (always 1).", &["version"]);
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        metrics
            .engine_info
            .with_label_values(&[io_engine, if fixed_buffers { "true" } else { "false" }])
            .set(1);
        let mut collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(metrics.requests.clone()),
            Box::new(metrics.request_seconds.clone()),
            Box::new(metrics.transport_bytes.clone()),
            Box::new(metrics.connections.clone()),
            Box::new(metrics.handshake_refusals.clone()),
            Box::new(metrics.inflight_bytes.clone()),
            Box::new(metrics.quarantined.clone()),
            Box::new(metrics.shards.clone()),
            Box::new(metrics.stored_bytes.clone()),
            Box::new(metrics.dir_capacity.clone()),
            Box::new(metrics.dir_free.clone()),
            Box::new(metrics.namespace_shards.clone()),
            Box::new(metrics.namespace_drive_bytes.clone()),
            Box::new(metrics.namespace_arena_bytes.clone()),
            Box::new(build),
            Box::new(metrics.engine_info.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
            Box::new(TierCollector::new(cache, metrics.nvme_misses.clone())),
        ];
        collectors.extend(store);
        for collector in collectors {
            metrics.registry.register(collector).expect("metric names are unique");
        }
        // Every series exists from the start, so rates and alerts see zeros.
        for transport in TRANSPORTS {
            metrics.connections.with_label_values(&[transport]);
            for reason in crate::server::handshake::Refusal::ALL {
                metrics
                    .handshake_refusals
                    .with_label_values(&[transport, reason.label()]);
            }
            for direction in ["in", "out"] {
                metrics.transport_bytes.with_label_values(&[transport, direction]);
            }
        }
        metrics
    }

    /// The handles of `transport`'s connections (`unix` or `tcp`).
    pub fn for_transport(&self, transport: &str) -> RequestMetrics {
        RequestMetrics {
            requests: self.requests.clone(),
            ok: (0..OPCODES)
                .map(|code| Opcode::from_code(code).map(|op| self.requests.with_label_values(&[op.name(), "ok"])))
                .collect(),
            seconds: (0..OPCODES)
                .map(|code| {
                    Opcode::from_code(code).map(|op| self.request_seconds.with_label_values(&[op.name(), transport]))
                })
                .collect(),
            bytes_in: self.transport_bytes.with_label_values(&[transport, "in"]),
            bytes_out: self.transport_bytes.with_label_values(&[transport, "out"]),
            connections: self.connections.with_label_values(&[transport]),
            inflight_bytes: self.inflight_bytes.clone(),
            not_found: self.nvme_misses.clone(),
        }
    }

    /// Brings the store's gauges up to date with `status` (the drives'
    /// space and the shard counts are read when `/metrics` is scraped).
    pub fn refresh(&self, status: &StatusResponse) {
        self.quarantined.set(status.quarantined as i64);
        self.shards.set(status.shards as i64);
        self.stored_bytes.set(status.bytes as i64);
        for dir in &status.data_dirs {
            self.dir_capacity
                .with_label_values(&[&dir.path])
                .set(dir.capacity_bytes as i64);
            self.dir_free.with_label_values(&[&dir.path]).set(dir.free_bytes as i64);
        }
        let fixed = status.arena.as_ref().is_some_and(|a| a.fixed_buffers);
        if self.engine_fixed.swap(fixed, std::sync::atomic::Ordering::Relaxed) != fixed {
            self.engine_info.reset();
            let label = if fixed { "true" } else { "false" };
            self.engine_info.with_label_values(&[&status.io_engine, label]).set(1);
        }
    }

    /// Sets the per-namespace gauges: the [`NAMESPACE_SERIES`] namespaces
    /// that hold the most bytes by name, the rest summed as `other`, so the
    /// series stay few however many namespaces a node holds.
    pub fn refresh_namespaces(&self, usage: &[NamespaceUsage]) {
        let mut by_size: Vec<&NamespaceUsage> = usage.iter().collect();
        by_size.sort_by_key(|u| std::cmp::Reverse(u.drive_bytes + u.arena_bytes));
        let (named, rest) = by_size.split_at(by_size.len().min(NAMESPACE_SERIES));
        for gauge in [
            &self.namespace_shards,
            &self.namespace_drive_bytes,
            &self.namespace_arena_bytes,
        ] {
            gauge.reset();
        }
        let set = |name: &str, shards: u64, drive: u64, arena: u64| {
            self.namespace_shards.with_label_values(&[name]).set(shards as i64);
            self.namespace_drive_bytes.with_label_values(&[name]).set(drive as i64);
            self.namespace_arena_bytes.with_label_values(&[name]).set(arena as i64);
        };
        for u in named {
            set(u.namespace.as_str(), u.shards, u.drive_bytes, u.arena_bytes);
        }
        // `other` always exists (zero when every namespace has its own
        // series), so dashboards and alerts see the metrics from the start.
        let sum = |f: fn(&NamespaceUsage) -> u64| rest.iter().map(|u| f(u)).sum::<u64>();
        set(
            "other",
            sum(|u| u.shards),
            sum(|u| u.drive_bytes),
            sum(|u| u.arena_bytes),
        );
    }

    /// Every metric in the Prometheus text format.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

impl RequestMetrics {
    /// A request answered with `status`; `started` when it arrived (if the
    /// request was read far enough to know).
    pub fn answered(&self, op: Opcode, status: Status, started: Option<Instant>) {
        let code = op.code() as usize;
        match self.ok.get(code).and_then(Option::as_ref) {
            Some(ok) if status == Status::Ok => ok.inc(),
            // Errors are rare: a label lookup is fine.
            _ => self.requests.with_label_values(&[op.name(), status.name()]).inc(),
        }
        if let (Some(seconds), Some(started)) = (self.seconds.get(code).and_then(Option::as_ref), started) {
            seconds.observe(started.elapsed().as_secs_f64());
        }
        if op == Opcode::Fetch && status == Status::NotFound {
            self.not_found.inc();
        }
    }

    /// Payload bytes received.
    pub fn received(&self, bytes: u64) {
        self.bytes_in.inc_by(bytes);
    }

    /// Payload bytes sent.
    pub fn sent(&self, bytes: u64) {
        self.bytes_out.inc_by(bytes);
    }

    /// A connection opened; it counts until the guard is dropped.
    pub fn connection(&self) -> Gauged {
        Gauged::new(self.connections.clone(), 1)
    }

    /// `bytes` in flight until the guard is dropped.
    pub fn inflight(&self, bytes: u64) -> Gauged {
        Gauged::new(self.inflight_bytes.clone(), bytes as i64)
    }
}

/// Adds to a gauge while it lives.
#[derive(Debug)]
pub struct Gauged {
    gauge: IntGauge,
    by: i64,
}

impl Gauged {
    fn new(gauge: IntGauge, by: i64) -> Gauged {
        gauge.add(by);
        Gauged { gauge, by }
    }
}

impl Drop for Gauged {
    fn drop(&mut self) {
        self.gauge.sub(self.by);
    }
}
