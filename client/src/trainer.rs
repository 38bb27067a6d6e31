//! The training loop's side of a cluster: gathers layer after layer while
//! prefetch hints keep the following layers loading on every node, and
//! accounts for the time each gather waited (stall).
//!
//! The order of a step (forward, then backward) is declared
//! ([`Trainer::declare_order`]) or recorded during the first step and
//! replayed. Every gather is checked against it: when the observed order
//! departs, the trace is dropped, no more hints are sent on its word, and
//! the step is recorded as the new order. While a trusted order runs, each
//! gather sends hints for the layers after it, up to
//! [`TrainerOptions::depth`] layers and [`TrainerOptions::budget_bytes`]
//! bytes ahead (wrapping into the next step), to every node at once; the
//! order is also registered with each daemon for schedule-aware eviction.
//! Hints and demotes after use go to each node through one queue: a hint
//! of a partition whose demote is still running waits for it.
//!
//! # Layout
//!
//! * [`trace`]: the order of a step, recorded, replayed, invalidated.
//! * `metrics` (feature `prometheus`): stall and gather latency for the
//!   trainer's own Prometheus registry.

#[cfg(feature = "prometheus")]
pub mod metrics;
pub mod trace;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::cluster::{Cluster, ClusterError, GatheredTensor, Layer};
use crate::{FetchBuf, PrefetchItem};
use shardd_protocol::Key;
use trace::{Observed, StepEnd, Trace};

/// How far ahead hints go, and what else the trainer does.
#[derive(Clone, Debug)]
pub struct TrainerOptions {
    /// Send prefetch hints at all.
    pub prefetch: bool,
    /// Layers ahead of the one in use that hints cover.
    pub depth: usize,
    /// Bytes of hinted layers not yet gathered, at most (at least one layer
    /// is always hinted).
    pub budget_bytes: u64,
    /// After a gather, demote the layer's partitions from the daemons'
    /// arenas unless it is used again within the hint window (for models
    /// much larger than the arenas: room for what comes next).
    pub demote_after_use: bool,
    /// Register a trusted order with every daemon for schedule-aware
    /// eviction.
    pub register_schedule: bool,
    /// While a trusted order runs, gather the step's next layer in the
    /// background into the buffer the previous gather was given, so that
    /// the next gather finds it already there (double buffering, as
    /// ZeRO-Infinity prefetches into GPU memory). Needs a buffer lent with
    /// [`Trainer::lend`]. Never across the end of a step, where the
    /// optimizer may store new versions.
    pub gather_ahead: bool,
}

impl Default for TrainerOptions {
    fn default() -> Self {
        TrainerOptions {
            prefetch: true,
            depth: 2,
            budget_bytes: 4 << 30,
            demote_after_use: false,
            register_schedule: true,
            gather_ahead: true,
        }
    }
}

/// One gather's wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerStall {
    /// The layer.
    pub layer: String,
    /// How long the gather took: the time the trainer waited for data.
    pub stall: Duration,
    /// Bytes gathered.
    pub bytes: u64,
}

/// What one step cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepStats {
    /// The step, from 0.
    pub step: u64,
    /// From the step's first gather to [`Trainer::end_step`].
    pub elapsed: Duration,
    /// Time spent in gathers.
    pub stall: Duration,
    /// Each gather, in order.
    pub layers: Vec<LayerStall>,
    /// Whether the step ran on a trusted order from start to end (so hints
    /// were sent all along).
    pub replayed: bool,
}

impl StepStats {
    /// Stall as a share of the step's time, in percent.
    pub fn stall_pct(&self) -> f64 {
        if self.elapsed.is_zero() {
            0.0
        } else {
            100.0 * self.stall.as_secs_f64() / self.elapsed.as_secs_f64()
        }
    }
}

/// What the trainer tells a node besides gathering, in the background.
#[derive(Debug)]
enum Notice {
    /// Load these shards into the arena ahead of use.
    Prefetch(Vec<PrefetchItem>),
    /// Free the arena copies of these shards (a layer just used).
    Demote(Vec<String>),
}

/// Starts the task that delivers a node's notices in the order they were
/// made. A demote runs in the background (it can take a while: a partition
/// still being read is tried again, a partition not yet on the drive is
/// flushed first); a later hint that names one of its partitions waits for
/// it, or the demote could land after the hint and evict what the hint
/// loaded. Hints of other partitions go at once.
fn courier_for(cluster: Cluster, namespace: String, node: usize) -> mpsc::UnboundedSender<Notice> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut demotes: Vec<(Vec<String>, JoinHandle<()>)> = Vec::new();
        while let Some(notice) = rx.recv().await {
            demotes.retain(|(_, task)| !task.is_finished());
            match notice {
                Notice::Prefetch(items) => {
                    let (before, others): (Vec<_>, Vec<_>) = demotes
                        .drain(..)
                        .partition(|(keys, _)| items.iter().any(|item| keys.iter().any(|k| k == item.key.as_str())));
                    demotes = others;
                    for (_, demote) in before {
                        let _ = demote.await;
                    }
                    if let Err(e) = cluster.prefetch_on(node, &namespace, items).await {
                        tracing::warn!(node, error = %e, "a prefetch hint failed");
                    }
                }
                Notice::Demote(keys) => {
                    let (cluster, namespace, task_keys) = (cluster.clone(), namespace.clone(), keys.clone());
                    let task = tokio::spawn(async move {
                        match cluster.demote_on(node, &namespace, &task_keys).await {
                            Ok(answer) if !answer.busy.is_empty() => tracing::debug!(
                                node,
                                busy = ?answer.busy,
                                "partitions of a used layer stay in the arena: still being read"
                            ),
                            Ok(_) => {}
                            Err(e) => tracing::warn!(node, error = %e, "demoting a used layer failed"),
                        }
                    });
                    demotes.push((keys, task));
                }
            }
        }
    });
    tx
}

/// A gather of the step's next layer, running in the background.
#[derive(Debug)]
struct Ahead<B> {
    /// Its position in the step.
    position: usize,
    layer: String,
    task: JoinHandle<(B, Result<Vec<GatheredTensor>, ClusterError>)>,
}

/// Gathers a job's layers step after step, prefetching ahead, into buffers
/// of type `B` that the caller lends it.
#[derive(Debug)]
pub struct Trainer<B = Vec<u8>> {
    cluster: Cluster,
    namespace: String,
    options: TrainerOptions,
    layers: HashMap<String, Layer>,
    trace: Trace,
    /// Gathers since the trusted order was adopted: the position in it,
    /// counting on across steps.
    cursor: u64,
    /// Positions below this have been hinted.
    hinted: u64,
    step: u64,
    started: Option<Instant>,
    current: Vec<LayerStall>,
    history: Vec<StepStats>,
    ahead: Option<Ahead<B>>,
    /// Buffers lent for gathers ahead.
    spares: Vec<B>,
    /// Per node, the task that delivers hints and demotes in order.
    couriers: Vec<Option<mpsc::UnboundedSender<Notice>>>,
    #[cfg(feature = "prometheus")]
    metrics: Option<metrics::TrainerMetrics>,
}

impl<B: FetchBuf> Trainer<B> {
    /// A trainer of `namespace`'s layers on `cluster`.
    pub fn new(cluster: Cluster, namespace: &str, options: TrainerOptions) -> Trainer<B> {
        Trainer {
            couriers: (0..cluster.len()).map(|_| None).collect(),
            cluster,
            namespace: namespace.to_string(),
            options,
            layers: HashMap::new(),
            trace: Trace::new(),
            cursor: 0,
            hinted: 0,
            step: 0,
            started: None,
            current: Vec::new(),
            history: Vec::new(),
            ahead: None,
            spares: Vec::new(),
            #[cfg(feature = "prometheus")]
            metrics: None,
        }
    }

    /// Reports stall, gather latency and step time to `metrics` (registered
    /// in the trainer's own registry).
    #[cfg(feature = "prometheus")]
    pub fn set_metrics(&mut self, metrics: metrics::TrainerMetrics) {
        self.metrics = Some(metrics);
    }

    /// Resolves a layer (see [`Cluster::layer`]) and adds it.
    pub async fn add_layer(&mut self, name: &str, tensors: &[&str]) -> Result<&Layer, ClusterError> {
        let layer = self.cluster.layer(&self.namespace, name, tensors).await?;
        self.layers.insert(name.to_string(), layer);
        Ok(&self.layers[name])
    }

    /// Lends a buffer for gathering ahead ([`TrainerOptions::gather_ahead`]):
    /// with one buffer lent besides the one passed to each gather, the next
    /// layer is gathered while the current one is in use. The trainer keeps
    /// it, and hands buffers back through [`Trainer::gather`].
    pub fn lend(&mut self, buf: B) {
        self.spares.push(buf);
    }

    /// A layer added before.
    pub fn layer(&self, name: &str) -> Option<&Layer> {
        self.layers.get(name)
    }

    /// The cluster.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Declares the order of a step (layer names; a layer used in the
    /// forward and the backward pass appears twice), trusted until a gather
    /// departs from it, and registers it with every daemon.
    pub async fn declare_order(&mut self, order: &[&str]) -> Result<(), ClusterError> {
        if let Some(unknown) = order.iter().find(|name| !self.layers.contains_key(**name)) {
            return Err(ClusterError::Invalid(format!(
                "layer {unknown} is in the order but was not added"
            )));
        }
        self.trace.declare(order.iter().map(|s| s.to_string()).collect());
        self.adopted();
        self.register_schedule().await
    }

    /// The trusted order, while there is one.
    pub fn trace(&self) -> Option<&[String]> {
        self.trace.order()
    }

    /// Times the trusted order was found wrong and dropped.
    pub fn invalidations(&self) -> u64 {
        self.trace.invalidations()
    }

    /// Every finished step.
    pub fn steps(&self) -> &[StepStats] {
        &self.history
    }

    /// Gathers layer `name` (see [`Cluster::gather`]), after sending hints
    /// for the layers that follow it. The buffer that comes back holds the
    /// layer; with [`TrainerOptions::gather_ahead`] it may be another lent
    /// buffer, filled in the background, and `buf` is kept for a later
    /// layer (lend buffers of one size: the largest [`Layer::len`]).
    pub async fn gather(&mut self, name: &str, buf: B) -> (B, Result<Vec<GatheredTensor>, ClusterError>) {
        let Some(layer) = self.layers.get(name).cloned() else {
            let error = ClusterError::Invalid(format!("layer {name} was not added"));
            return (buf, Err(error));
        };
        let started = Instant::now();
        self.started.get_or_insert(started);
        let position = self.trace.position();
        match self.trace.observe(name) {
            Observed::Matches(_) => {
                self.hint_ahead();
            }
            Observed::Departed { position, expected } => {
                tracing::info!(
                    layer = name,
                    position,
                    expected = expected.as_deref().unwrap_or("the end of the step"),
                    "the layer order departed from the trace; recording it again"
                );
            }
            Observed::Recording => {}
        }
        let (buf, result) = match self.take_ahead(position, name).await {
            Some((filled, Ok(tensors))) => {
                self.spares.push(buf);
                (filled, Ok(tensors))
            }
            // Failed in the background: try again here, and report this try.
            Some((filled, Err(e))) => {
                tracing::debug!(error = %e, "a gather ahead failed; gathering again");
                self.spares.push(filled);
                self.cluster.gather(&layer, buf).await
            }
            None => self.cluster.gather(&layer, buf).await,
        };
        let stall = started.elapsed();
        #[cfg(feature = "prometheus")]
        if let Some(metrics) = &self.metrics {
            metrics.gathered(stall);
        }
        self.current.push(LayerStall {
            layer: name.to_string(),
            stall,
            bytes: layer.bytes(),
        });
        if self.trace.order().is_some() {
            self.cursor += 1;
        }
        if result.is_ok() && self.options.demote_after_use && !self.used_again_soon(name) {
            self.demote(&layer);
        }
        self.gather_next(position + 1);
        (buf, result)
    }

    /// The gather ahead of `name` at `position`, if one ran; one of another
    /// layer (the order departed) is awaited and its buffer kept as spare.
    async fn take_ahead(
        &mut self,
        position: usize,
        name: &str,
    ) -> Option<(B, Result<Vec<GatheredTensor>, ClusterError>)> {
        let ahead = self.ahead.take()?;
        let matches = ahead.position == position && ahead.layer == name;
        let outcome = match ahead.task.await {
            Ok(outcome) => outcome,
            // The task panicked or was cancelled: its buffer is gone.
            Err(e) => {
                tracing::warn!(error = %e, "a gather ahead did not finish");
                return None;
            }
        };
        if matches {
            Some(outcome)
        } else {
            self.spares.push(outcome.0);
            None
        }
    }

    /// Starts gathering the step's layer at `position` into the spare
    /// buffer, if the order is trusted that far and the buffer is large
    /// enough.
    fn gather_next(&mut self, position: usize) {
        if !self.options.gather_ahead || self.ahead.is_some() {
            return;
        }
        let Some(next) = self.trace.order().and_then(|order| order.get(position)) else {
            return;
        };
        let Some(layer) = self.layers.get(next).cloned() else {
            return;
        };
        let Some(at) = self
            .spares
            .iter_mut()
            .position(|b| b.as_mut().len() as u64 >= layer.len())
        else {
            return;
        };
        let spare = self.spares.swap_remove(at);
        let cluster = self.cluster.clone();
        let task = tokio::spawn(async move { cluster.gather(&layer, spare).await });
        self.ahead = Some(Ahead {
            position,
            layer: next.clone(),
            task,
        });
    }

    /// Ends a step: checks the trace against it (adopting the step's order
    /// if there was none or it was wrong) and returns what the step cost.
    pub async fn end_step(&mut self) -> StepStats {
        // A gather ahead left over (the step ended early) is not used.
        if let Some(ahead) = self.ahead.take()
            && let Ok((buf, _)) = ahead.task.await
        {
            self.spares.push(buf);
        }
        let replayed = self.trace.order().is_some() && self.trace.position() > 0;
        let end = self.trace.end_step();
        let layers = std::mem::take(&mut self.current);
        let stats = StepStats {
            step: self.step,
            elapsed: self.started.take().map_or(Duration::ZERO, |s| s.elapsed()),
            stall: layers.iter().map(|l| l.stall).sum(),
            layers,
            replayed: replayed && end == StepEnd::Replayed,
        };
        match end {
            StepEnd::Replayed => {}
            StepEnd::Adopted | StepEnd::EndedEarly { .. } => {
                if let StepEnd::EndedEarly { observed, expected } = end {
                    tracing::info!(
                        observed,
                        expected,
                        "the step ended before its trace; recording it again"
                    );
                }
                self.adopted();
                if let Err(e) = self.register_schedule().await {
                    tracing::warn!(error = %e, "could not register the step's order for schedule-aware eviction");
                }
            }
        }
        self.step += 1;
        #[cfg(feature = "prometheus")]
        if let Some(metrics) = &self.metrics {
            metrics.step(&stats, self.trace.invalidations());
        }
        self.history.push(stats.clone());
        stats
    }

    /// A new trusted order: positions count from its start.
    fn adopted(&mut self) {
        self.cursor = 0;
        self.hinted = 0;
    }

    /// Sends hints for the layers after the current position, within the
    /// depth and the byte budget, to every node at once (in the
    /// background: the gather does not wait for them).
    fn hint_ahead(&mut self) {
        if !self.options.prefetch {
            return;
        }
        let Some(order) = self.trace.order() else {
            return;
        };
        let current = self.cursor;
        self.hinted = self.hinted.max(current + 1);
        let layer_at = |position: u64| &order[(position % order.len() as u64) as usize];
        let mut outstanding: u64 = (current + 1..self.hinted)
            .filter_map(|p| self.layers.get(layer_at(p)))
            .map(Layer::bytes)
            .sum();
        let mut items: Vec<Vec<PrefetchItem>> = vec![Vec::new(); self.cluster.len()];
        while self.hinted <= current + self.options.depth as u64 {
            let Some(layer) = self.layers.get(layer_at(self.hinted)) else {
                break;
            };
            if outstanding > 0 && outstanding + layer.bytes() > self.options.budget_bytes {
                break;
            }
            outstanding += layer.bytes();
            let urgency = (self.hinted - current) as u32;
            for (node, list) in items.iter_mut().enumerate() {
                list.extend(layer.keys_on(node).into_iter().filter_map(|key| {
                    Some(PrefetchItem {
                        key: Key::new(key).ok()?,
                        order: urgency,
                        deadline_unix_ms: None,
                    })
                }));
            }
            self.hinted += 1;
        }
        for (node, list) in items.into_iter().enumerate().filter(|(_, l)| !l.is_empty()) {
            self.notify(node, Notice::Prefetch(list));
        }
    }

    /// Whether layer `name` is used within the hint window after the
    /// current position.
    fn used_again_soon(&self, name: &str) -> bool {
        let Some(order) = self.trace.order() else {
            return false;
        };
        let current = self.cursor.saturating_sub(1);
        (1..=self.options.depth as u64).any(|ahead| order[((current + ahead) % order.len() as u64) as usize] == name)
    }

    fn demote(&mut self, layer: &Layer) {
        for node in 0..self.cluster.len() {
            let keys = layer.keys_on(node);
            if !keys.is_empty() {
                self.notify(node, Notice::Demote(keys));
            }
        }
    }

    /// Hands `notice` to node `node`'s courier, starting it if need be.
    fn notify(&mut self, node: usize, notice: Notice) {
        let courier = &mut self.couriers[node];
        let notice = match courier {
            Some(tx) => match tx.send(notice) {
                Ok(()) => return,
                // Its task is gone (the runtime that ran it shut down): start anew.
                Err(mpsc::error::SendError(notice)) => notice,
            },
            None => notice,
        };
        let tx = courier_for(self.cluster.clone(), self.namespace.clone(), node);
        // A new channel's receiver is alive until its task ends.
        let _ = tx.send(notice);
        *courier = Some(tx);
    }

    /// Registers the trusted order's keys with every daemon.
    async fn register_schedule(&self) -> Result<(), ClusterError> {
        let Some(order) = self.trace.order().filter(|_| self.options.register_schedule) else {
            return Ok(());
        };
        let order: Vec<&Layer> = order.iter().filter_map(|name| self.layers.get(name)).collect();
        let registrations = (0..self.cluster.len()).map(|node| {
            let keys: Vec<String> = order.iter().flat_map(|layer| layer.keys_on(node)).collect();
            let cluster = &self.cluster;
            let namespace = &self.namespace;
            async move { cluster.set_schedule_on(node, namespace, &keys).await }
        });
        for result in join_all(registrations).await {
            result?;
        }
        Ok(())
    }
}
