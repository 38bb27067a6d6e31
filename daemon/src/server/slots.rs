//! Connection slots: how many connections are open, of which peer and on
//! which transport, so that no peer can take every slot. A connection is
//! admitted only if all of these hold: fewer than `server.max_connections`
//! are open; a TCP one leaves `server.unix_reserved_connections` for the
//! Unix socket; its peer (a uid on the Unix socket, an IP address on TCP)
//! has fewer than `server.max_connections_per_peer`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::access::Peer;

/// Open connections, counted three ways.
#[derive(Debug, Default)]
pub struct Slots {
    /// All open connections (read without the lock, for status).
    open: AtomicU64,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    tcp: usize,
    by_peer: HashMap<String, usize>,
}

/// The limits a connection is admitted under.
#[derive(Clone, Copy, Debug)]
pub struct SlotLimits {
    /// `server.max_connections` (reloadable).
    pub max: usize,
    /// `server.unix_reserved_connections`.
    pub unix_reserved: usize,
    /// `server.max_connections_per_peer`.
    pub per_peer: usize,
}

/// A connection's slot, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    peer: String,
    tcp: bool,
}

impl Slots {
    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// A slot for a connection of `peer`, or why there is none (naming the
    /// limit and its setting).
    pub fn admit(self: &Arc<Self>, peer: &Peer, limits: SlotLimits) -> Result<Slot, String> {
        let tcp = matches!(peer, Peer::Tcp(_));
        let key = peer.counted_as();
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let open = self.open.load(Ordering::Relaxed) as usize;
        if open >= limits.max {
            return Err(format!(
                "the daemon serves at most {} connections (server.max_connections); try again later",
                limits.max
            ));
        }
        let tcp_max = limits.max.saturating_sub(limits.unix_reserved);
        if tcp && counts.tcp >= tcp_max {
            return Err(format!(
                "TCP clients have {} connections, the most they may: {} of server.max_connections ({}) are kept \
                 for Unix-socket clients (server.unix_reserved_connections)",
                counts.tcp, limits.unix_reserved, limits.max
            ));
        }
        let of_peer = counts.by_peer.entry(key.clone()).or_default();
        if *of_peer >= limits.per_peer {
            return Err(format!(
                "{key} has {of_peer} connections open, the most one peer may (server.max_connections_per_peer)"
            ));
        }
        *of_peer += 1;
        if tcp {
            counts.tcp += 1;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            slots: self.clone(),
            peer: key,
            tcp,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.slots.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                counts.by_peer.remove(&self.peer);
            }
        }
        if self.tcp {
            counts.tcp -= 1;
        }
        self.slots.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(uid: u32) -> Peer {
        Peer::Unix { uid, gid: uid, pid: 1 }
    }

    fn tcp(ip: [u8; 4], port: u16) -> Peer {
        Peer::Tcp((ip, port).into())
    }

    #[test]
    fn tcp_leaves_the_reserved_slots_and_no_peer_takes_more_than_its_share() {
        let slots = Arc::new(Slots::default());
        let limits = SlotLimits {
            max: 6,
            unix_reserved: 2,
            per_peer: 3,
        };
        let mut held = Vec::new();
        for port in 0..3 {
            held.push(slots.admit(&tcp([10, 0, 0, 1], port), limits).unwrap());
        }
        let refused = slots.admit(&tcp([10, 0, 0, 1], 9), limits).unwrap_err();
        assert!(refused.contains("address 10.0.0.1 has 3 connections open"), "{refused}");
        assert!(refused.contains("server.max_connections_per_peer"), "{refused}");
        held.push(slots.admit(&tcp([10, 0, 0, 2], 1), limits).unwrap());
        let refused = slots.admit(&tcp([10, 0, 0, 3], 1), limits).unwrap_err();
        assert!(refused.contains("server.unix_reserved_connections"), "{refused}");
        held.push(slots.admit(&unix(1000), limits).unwrap());
        held.push(slots.admit(&unix(1001), limits).unwrap());
        let refused = slots.admit(&unix(1002), limits).unwrap_err();
        assert!(refused.contains("server.max_connections"), "{refused}");
        assert_eq!(slots.open(), 6);
        held.clear();
        assert_eq!(slots.open(), 0);
        assert!(slots.counts.lock().unwrap().by_peer.is_empty());
    }
}
