//! How requests answer: frames queued for the connection's writer, and the
//! one place where an error of the request path becomes a wire status.

use std::sync::Arc;

use serde::Serialize;
use shardd_protocol::{Opcode, Status};
use tokio::sync::mpsc;

use super::frame::OutFrame;
use crate::metrics::RequestMetrics;
use crate::store::StoreError;

/// What a request needs to answer: the connection's queue of frames.
/// Cheap to clone (every request task gets one).
#[derive(Clone, Debug)]
pub struct Responder {
    tx: mpsc::Sender<OutFrame>,
    metrics: Arc<RequestMetrics>,
}

impl Responder {
    /// A responder queueing into `tx`, counting payload in flight in `metrics`.
    pub fn new(tx: mpsc::Sender<OutFrame>, metrics: RequestMetrics) -> Responder {
        Responder {
            tx,
            metrics: Arc::new(metrics),
        }
    }

    /// Queues a frame; returns false if the connection is gone.
    pub async fn send(&self, mut frame: OutFrame) -> bool {
        let payload = frame.payload_len() as u64;
        if payload > 0 {
            frame.track(self.metrics.inflight(payload));
        }
        self.tx.send(frame).await.is_ok()
    }

    /// Queues frames in order until one cannot be (the connection is gone).
    pub async fn send_all(&self, frames: Vec<OutFrame>) {
        for frame in frames {
            if !self.send(frame).await {
                return;
            }
        }
    }
}

/// The final frame of a request: `ok` with its answer, or the error.
pub fn answer<T: Serialize>(op: Opcode, id: u64, result: Result<T, StoreError>) -> OutFrame {
    match result {
        Ok(message) => OutFrame::ok(op, id, &message),
        Err(e) => error_frame(op, id, &e),
    }
}

/// The one place where an error becomes a status: logged once at a level
/// that fits, and turned into the error frame (counted when it is written).
pub fn error_frame(op: Opcode, id: u64, e: &StoreError) -> OutFrame {
    log_refusal(op, id, e);
    OutFrame::error(op, id, e.status(), e.to_string(), e.current_version())
}

/// Logs an error of request `id` (or of a member of it) at a level that fits.
/// Drive errors and full drives are logged at warn at most once every
/// [`DRIVE_REFUSALS_EVERY`] (with how many more there were), the rest at
/// debug: a failed drive fails every request for its shards, and is itself
/// logged when it is found.
pub fn log_refusal(op: Opcode, id: u64, e: &StoreError) {
    let status = e.status();
    match status {
        Status::Internal => tracing::error!(%op, id, error = %e, "request failed"),
        Status::NoSpace | Status::Io => match DRIVE_REFUSALS.take() {
            Some(more) => {
                tracing::warn!(%op, id, error = %e, more, "request refused ({more} more since the last such line)")
            }
            None => tracing::debug!(%op, id, %status, error = %e, "request refused"),
        },
        // Quarantines are logged where they happen; the rest is the client's business.
        _ => tracing::debug!(%op, id, %status, error = %e, "request refused"),
    }
}

/// How often a request refused for its drive is logged at warn.
pub const DRIVE_REFUSALS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

static DRIVE_REFUSALS: Throttle = Throttle::new();

/// Lets one event through per [`DRIVE_REFUSALS_EVERY`], counting the others.
struct Throttle {
    /// Milliseconds since [`Throttle::epoch`] of the last event let through
    /// (0: none yet).
    last_ms: std::sync::atomic::AtomicU64,
    held_back: std::sync::atomic::AtomicU64,
}

impl Throttle {
    const fn new() -> Throttle {
        Throttle {
            last_ms: std::sync::atomic::AtomicU64::new(0),
            held_back: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn epoch() -> std::time::Instant {
        static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        *EPOCH.get_or_init(std::time::Instant::now)
    }

    /// `Some(events held back since the last one let through)` if this one
    /// goes through.
    fn take(&self) -> Option<u64> {
        self.take_at(Throttle::epoch().elapsed().as_millis() as u64 + 1)
    }

    /// [`Throttle::take`] at `now` (milliseconds, more than 0).
    fn take_at(&self, now: u64) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= DRIVE_REFUSALS_EVERY.as_millis() as u64;
        if due
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drive_refusals_are_logged_once_per_interval_with_a_count_of_the_rest() {
        let every = DRIVE_REFUSALS_EVERY.as_millis() as u64;
        let throttle = Throttle::new();
        assert_eq!(throttle.take_at(5), Some(0), "the first goes through");
        assert_eq!(throttle.take_at(6), None);
        assert_eq!(throttle.take_at(4 + every), None);
        assert_eq!(throttle.take_at(5 + every), Some(2), "with the two held back");
        assert_eq!(throttle.take_at(6 + every), None);
    }
}
