//! The trainer's metrics, for the trainer's own Prometheus registry (with
//! the `prometheus` feature): time waited in gathers, gather latency, step
//! time and stall ratio, and trace invalidations. A trainer serves them with
//! its own metrics; the daemons' dashboards and alerts use these names.

use std::time::Duration;

use prometheus::{Counter, Gauge, Histogram, HistogramOpts, IntCounter, Registry};

/// Bucket bounds of a gather's latency, in seconds: from a layer gathered
/// ahead (microseconds) to a large layer read cold from several drives
/// (seconds).
pub const GATHER_SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Bucket bounds of a training step's time, in seconds.
pub const STEP_SECONDS_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The handles; register once, then give to [`super::Trainer::set_metrics`].
#[derive(Clone, Debug)]
pub struct TrainerMetrics {
    gather_seconds: Histogram,
    stall_seconds: Counter,
    step_seconds: Histogram,
    steps: IntCounter,
    stall_ratio: Gauge,
    invalidations: IntCounter,
}

impl TrainerMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<TrainerMetrics, prometheus::Error> {
        let metrics = TrainerMetrics {
            gather_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "shardd_client_gather_duration_seconds",
                    "Time a trainer's gather of a layer took (the time it waited for the layer's data).",
                )
                .buckets(GATHER_SECONDS_BUCKETS.to_vec()),
            )?,
            stall_seconds: Counter::new(
                "shardd_client_stall_seconds_total",
                "Time a trainer spent waiting in gathers; its rate is the share of time stalled.",
            )?,
            step_seconds: Histogram::with_opts(
                HistogramOpts::new("shardd_client_step_duration_seconds", "Time of a training step.")
                    .buckets(STEP_SECONDS_BUCKETS.to_vec()),
            )?,
            steps: IntCounter::new("shardd_client_steps_total", "Training steps finished.")?,
            stall_ratio: Gauge::new(
                "shardd_client_step_stall_ratio",
                "Share of the last step's time spent waiting in gathers (0 to 1).",
            )?,
            invalidations: IntCounter::new(
                "shardd_client_trace_invalidations_total",
                "Times the recorded layer order was found wrong and recorded again.",
            )?,
        };
        registry.register(Box::new(metrics.gather_seconds.clone()))?;
        registry.register(Box::new(metrics.stall_seconds.clone()))?;
        registry.register(Box::new(metrics.step_seconds.clone()))?;
        registry.register(Box::new(metrics.steps.clone()))?;
        registry.register(Box::new(metrics.stall_ratio.clone()))?;
        registry.register(Box::new(metrics.invalidations.clone()))?;
        Ok(metrics)
    }

    pub(super) fn gathered(&self, waited: Duration) {
        self.gather_seconds.observe(waited.as_secs_f64());
        self.stall_seconds.inc_by(waited.as_secs_f64());
    }

    pub(super) fn step(&self, step: &super::StepStats, invalidations: u64) {
        self.steps.inc();
        self.step_seconds.observe(step.elapsed.as_secs_f64());
        self.stall_ratio.set(step.stall_pct() / 100.0);
        let seen = self.invalidations.get();
        if invalidations > seen {
            self.invalidations.inc_by(invalidations - seen);
        }
    }
}
