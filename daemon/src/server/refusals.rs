//! Refused hellos are logged at `warn` at most once a minute per peer (a
//! TCP peer's IP address, a Unix peer's uid), the rest at `debug`, so a
//! peer that retries with a wrong key, or a flood of them, cannot flood the
//! log. Each refusal is also counted in `shardd_handshake_refusals_total`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long after a peer's logged refusal the next is logged again.
pub const QUIET: Duration = Duration::from_secs(60);

/// Peers remembered at most; past this, those quiet for a minute are
/// forgotten, and if all are recent the memory starts over.
const REMEMBERED: usize = 4096;

/// When each peer's last refusal was logged.
#[derive(Debug, Default)]
pub struct RefusalLog {
    last: Mutex<HashMap<String, Instant>>,
}

impl RefusalLog {
    /// Whether a refusal of `peer` (as [`crate::access::Peer::counted_as`]
    /// names it) is logged at `warn` now.
    pub fn should_log(&self, peer: String) -> bool {
        self.should_log_at(peer, Instant::now())
    }

    fn should_log_at(&self, peer: String, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = last.get(&peer)
            && now.duration_since(*at) < QUIET
        {
            return false;
        }
        if last.len() >= REMEMBERED {
            last.retain(|_, at| now.duration_since(*at) < QUIET);
            if last.len() >= REMEMBERED {
                last.clear();
            }
        }
        last.insert(peer, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_a_minute_per_peer_in_bounded_memory() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        assert!(log.should_log_at("address 10.0.0.1".into(), t0));
        assert!(!log.should_log_at("address 10.0.0.1".into(), t0 + Duration::from_secs(59)));
        assert!(log.should_log_at("address 10.0.0.2".into(), t0 + Duration::from_secs(1)));
        assert!(log.should_log_at("address 10.0.0.1".into(), t0 + Duration::from_secs(61)));
        for i in 0..3 * REMEMBERED {
            log.should_log_at(format!("address {i}"), t0 + Duration::from_secs(2));
        }
        assert!(log.last.lock().unwrap().len() <= REMEMBERED);
    }
}
