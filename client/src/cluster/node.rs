//! The connections to one node's daemon: made when first needed, kept, and
//! made again once the daemon has gone away (a restart).

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Mutex;

use super::ClusterError;
use crate::{Client, ClientError, ClientOptions};

/// One node: its endpoint and a few connection slots.
#[derive(Debug)]
pub(crate) struct Node {
    pub index: usize,
    pub endpoint: String,
    options: ClientOptions,
    slots: Vec<Mutex<Option<Client>>>,
    next: AtomicUsize,
}

impl Node {
    pub fn new(index: usize, endpoint: String, options: ClientOptions, connections: usize) -> Node {
        Node {
            index,
            endpoint,
            options,
            slots: (0..connections.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// A slot number for the next request (round robin).
    pub fn next_slot(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// The connection of slot `slot`, connecting if it has none or its
    /// connection is down. Also says whether it is new (a request that
    /// fails on a kept connection may be retried once on a new one).
    pub async fn client(&self, slot: usize, what: &str) -> Result<(Client, bool), ClusterError> {
        let mut slot = self.slots[slot % self.slots.len()].lock().await;
        if let Some(client) = slot.as_ref().filter(|c| c.is_connected()) {
            return Ok((client.clone(), false));
        }
        *slot = None;
        let client = Client::connect_with(&self.endpoint, self.options.clone())
            .await
            .map_err(|e| self.error(what, e))?;
        *slot = Some(client.clone());
        Ok((client, true))
    }

    /// Gives back the view leases every connection to the node still holds
    /// (before an eviction, which leased shards would resist).
    pub fn flush_releases(&self) {
        for slot in &self.slots {
            if let Ok(slot) = slot.try_lock()
                && let Some(client) = slot.as_ref()
            {
                client.flush_releases();
            }
        }
    }

    /// Runs an idempotent request on a connection of this node. A request
    /// that finds a kept connection broken (the daemon restarted since) is
    /// tried once more on a new one.
    pub async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, ClusterError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let slot = self.next_slot();
        let (client, fresh) = self.client(slot, what).await?;
        match f(client).await {
            Err(e) if !fresh && connection_lost(&e) => {
                let (client, _) = self.client(slot, what).await?;
                f(client).await.map_err(|e| self.error(what, e))
            }
            result => result.map_err(|e| self.error(what, e)),
        }
    }

    /// An error of this node, for request `what`.
    pub fn error(&self, what: &str, source: ClientError) -> ClusterError {
        ClusterError::Node {
            node: self.index,
            endpoint: self.endpoint.clone(),
            what: what.to_string(),
            source: Box::new(source),
        }
    }
}

/// Whether the error means the connection broke (so a new one may work).
pub(crate) fn connection_lost(e: &ClientError) -> bool {
    matches!(e, ClientError::Disconnected { .. } | ClientError::LeaseLost { .. })
}
