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
pub fn log_refusal(op: Opcode, id: u64, e: &StoreError) {
    let status = e.status();
    match status {
        Status::Internal => tracing::error!(%op, id, error = %e, "request failed"),
        Status::NoSpace | Status::Io => tracing::warn!(%op, id, error = %e, "request refused"),
        // Quarantines are logged where they happen; the rest is the client's business.
        _ => tracing::debug!(%op, id, %status, error = %e, "request refused"),
    }
}
