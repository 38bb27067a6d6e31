//! The loops `bench hot` times: the working set put and removed, fetches
//! over the socket or as zero-copy views, copies out of views held, and
//! small fetches at a given depth.

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use shardd_client::{Client, ClientOptions, PreparedFetch, PutOptions, Region, RegisteredRegion, Wanted};
use tokio::task::JoinSet;

use super::{Mode, SmallResult};
use crate::ctl::bench::{pattern, percentile};

pub(super) async fn connect(
    endpoint: &str,
    base: &ClientOptions,
    zero_copy: bool,
    connections: usize,
) -> anyhow::Result<Vec<Client>> {
    let options = ClientOptions {
        zero_copy,
        ..base.clone()
    };
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(Client::connect_with(endpoint, options.clone()).await?);
    }
    Ok(clients)
}

pub(super) fn key(size: u64, i: u64) -> String {
    format!("hot/{size}/{i}")
}

/// Stores the working set; puts leave their shards in the arena.
pub(super) async fn put_set(client: &Client, namespace: &str, size: u64, shards: u64) -> anyhow::Result<()> {
    let data = Bytes::from(pattern(size as usize, size));
    for i in 0..shards {
        client
            .put(namespace, &key(size, i), data.clone(), PutOptions::default())
            .await
            .with_context(|| format!("put {}", key(size, i)))?;
    }
    Ok(())
}

pub(super) async fn remove_set(client: &Client, namespace: &str, size: u64, shards: u64) -> anyhow::Result<()> {
    crate::ctl::bench::delete_keys(client, namespace, (0..shards).map(|i| key(size, i))).await
}

/// One throughput case: `concurrency` workers each take every
/// `concurrency`-th shard of a working set of `shards` shards of `size`
/// bytes, in turn, until `total` bytes are fetched (or copied) altogether.
#[derive(Clone, Copy, Debug)]
pub(super) struct Sweep {
    pub(super) size: u64,
    pub(super) shards: u64,
    pub(super) concurrency: usize,
    pub(super) total: u64,
}

impl Sweep {
    /// Shards each worker takes.
    fn per_worker(&self) -> u64 {
        (self.total / self.size / self.concurrency as u64).max(1)
    }

    /// The shard worker `w` takes `n`-th.
    fn shard(&self, w: usize, n: u64) -> u64 {
        (w as u64 + n * self.concurrency as u64) % self.shards
    }

    /// One destination buffer per worker, allocated and touched before the
    /// clock starts.
    fn buffers(&self) -> Vec<Vec<u8>> {
        (0..self.concurrency).map(|_| vec![1u8; self.size as usize]).collect()
    }

    /// Bytes per second, for the whole sweep done in `elapsed`.
    fn rate(&self, elapsed: Duration) -> f64 {
        (self.per_worker() * self.concurrency as u64 * self.size) as f64 / elapsed.as_secs_f64()
    }
}

/// Fetches the sweep's bytes of the working set; returns bytes per second.
pub(super) async fn fetch_loop(clients: &[Client], namespace: &str, sweep: Sweep) -> anyhow::Result<f64> {
    let buffers = sweep.buffers();
    let start = Instant::now();
    let mut workers = JoinSet::new();
    for (w, mut buf) in buffers.into_iter().enumerate() {
        let client = clients[w % clients.len()].clone();
        let namespace = namespace.to_string();
        workers.spawn(async move {
            for n in 0..sweep.per_worker() {
                let key = key(sweep.size, sweep.shard(w, n));
                let (back, result) = client.fetch_into(&namespace, &key, None, buf).await;
                buf = back;
                result.with_context(|| format!("fetch {key}"))?;
            }
            Ok::<(), anyhow::Error>(())
        });
    }
    while let Some(result) = workers.join_next().await {
        result??;
    }
    Ok(sweep.rate(start.elapsed()))
}

/// Takes zero-copy views of the whole working set once, then copies the
/// sweep's bytes out of them from one thread per worker, as the fetch
/// workers do but without a request per fetch; returns bytes per second.
pub(super) async fn copy_loop(client: &Client, namespace: &str, sweep: Sweep) -> anyhow::Result<f64> {
    let mut views = Vec::new();
    for i in 0..sweep.shards {
        let key = key(sweep.size, i);
        let view = client
            .fetch_view(namespace, &key, None)
            .await
            .with_context(|| format!("view of {key}"))?;
        views.push(view);
    }
    let views = &views;
    let buffers = sweep.buffers();
    let start = Instant::now();
    // Threads, as the memcpy baseline uses; the runtime carries on meanwhile.
    tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            let workers: Vec<_> = buffers
                .into_iter()
                .enumerate()
                .map(|(w, mut buf)| {
                    s.spawn(move || {
                        for n in 0..sweep.per_worker() {
                            views[sweep.shard(w, n) as usize].copy_to(&mut buf, false)?;
                            std::hint::black_box(&buf);
                        }
                        Ok::<(), shardd_client::ClientError>(())
                    })
                })
                .collect();
            workers
                .into_iter()
                .try_for_each(|worker| worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
        })
    })
    .context("copy out of views held")?;
    Ok(sweep.rate(start.elapsed()))
}

/// `requests` fetches of 4 KiB shards from `concurrency` workers; latency
/// of each and overall ops/s.
pub(super) async fn small_loop(
    clients: &[Client],
    namespace: &str,
    concurrency: usize,
    requests: u64,
) -> anyhow::Result<SmallResult> {
    let per_worker = (requests / concurrency as u64).max(1);
    let start = Instant::now();
    let mut workers = JoinSet::new();
    for w in 0..concurrency {
        let client = clients[w % clients.len()].clone();
        let namespace = namespace.to_string();
        workers.spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut latencies = Vec::with_capacity(per_worker as usize);
            for n in 0..per_worker {
                let i = (w as u64 * 7919 + n * 104_729) % 1024;
                let began = Instant::now();
                let (back, result) = client.fetch_into(&namespace, &key(4096, i), None, buf).await;
                buf = back;
                result.with_context(|| format!("fetch {}", key(4096, i)))?;
                latencies.push(began.elapsed().as_secs_f64() * 1e6);
            }
            Ok::<Vec<f64>, anyhow::Error>(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(result) = workers.join_next().await {
        latencies.extend(result??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Ok(SmallResult {
        concurrency,
        batch: 1,
        mode: Mode::ZeroCopyUnix,
        prepared: false,
        ops_per_sec: latencies.len() as f64 / elapsed,
        p50_us: percentile(&latencies, 0.5),
        p99_us: percentile(&latencies, 0.99),
    })
}

/// Where a batched loop's worker puts the shards of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Destination {
    /// A buffer of its own (`fetch_many_into`: one copy out of views asked
    /// for together when the arena is mapped).
    Buffer,
    /// A region registered on its connection (`fetch_into_region`: over a
    /// Unix socket the daemon writes the bytes there itself).
    Region,
    /// The same, each request kept on the daemon beforehand
    /// (`prepare_fetch_into_region`) and run by its id (`fetch_prepared`).
    Prepared,
}

/// A shard wanted, and where in the worker's destination it goes.
type Placed = (Wanted, std::ops::Range<usize>);

/// A worker's destination of `bytes` bytes.
enum Dest {
    Buffer(Vec<u8>),
    Region(RegisteredRegion),
}

impl Dest {
    async fn new(into: Destination, client: &Client, bytes: usize) -> anyhow::Result<Dest> {
        Ok(match into {
            // Written before the clock starts, as a trainer's buffers are.
            Destination::Buffer => Dest::Buffer(vec![1u8; bytes]),
            Destination::Region | Destination::Prepared => {
                let region = Region::new(bytes).context("allocate a region")?;
                Dest::Region(client.register_region(&region).await.context("register a region")?)
            }
        })
    }

    /// Fetches `wanted` into it; fails on the first member that failed.
    async fn fetch(self, client: &Client, wanted: &[Placed]) -> anyhow::Result<Dest> {
        let (dest, results) = match self {
            Dest::Buffer(buf) => {
                let (buf, results) = client.fetch_many_into(wanted, buf).await;
                (Dest::Buffer(buf), results)
            }
            Dest::Region(region) => {
                let results = client.fetch_into_region(&region, wanted).await;
                (Dest::Region(region), results)
            }
        };
        check_all(wanted, results)?;
        Ok(dest)
    }
}

/// Fails on the first member of a batched fetch that failed.
fn check_all<T>(wanted: &[Placed], results: shardd_client::BatchResult<T>) -> anyhow::Result<()> {
    for (result, (w, _)) in results.context("batched fetch")?.into_iter().zip(wanted) {
        result.with_context(|| format!("fetch {}", w.key))?;
    }
    Ok(())
}

/// The sweep's bytes fetched `batch` shards per request, each worker into
/// a destination of its own of `batch` shards; returns bytes per second.
pub(super) async fn batch_loop(
    clients: &[Client],
    namespace: &str,
    sweep: Sweep,
    batch: u64,
    into: Destination,
) -> anyhow::Result<f64> {
    let batch = batch.min(sweep.shards).max(1);
    let requests = sweep.per_worker().div_ceil(batch);
    let size = sweep.size as usize;
    let mut dests = Vec::new();
    for w in 0..sweep.concurrency {
        dests.push(Dest::new(into, &clients[w % clients.len()], size * batch as usize).await?);
    }
    let start = Instant::now();
    let mut workers = JoinSet::new();
    for (w, mut dest) in dests.into_iter().enumerate() {
        let client = clients[w % clients.len()].clone();
        let namespace = namespace.to_string();
        workers.spawn(async move {
            let mut n = 0;
            for _ in 0..requests {
                let wanted: Vec<Placed> = (0..batch as usize)
                    .map(|b| {
                        let key = key(sweep.size, sweep.shard(w, n + b as u64));
                        (Wanted::new(namespace.as_str(), key), b * size..(b + 1) * size)
                    })
                    .collect();
                n += batch;
                dest = dest.fetch(&client, &wanted).await?;
            }
            Ok::<u64, anyhow::Error>(n)
        });
    }
    let mut shards = 0;
    while let Some(result) = workers.join_next().await {
        shards += result??;
    }
    Ok((shards * sweep.size) as f64 / start.elapsed().as_secs_f64())
}

/// 4 KiB shards fetched `batch` per request with `in_flight` requests at
/// once, `requests` shards in all, each worker into a destination of its
/// own; shards per second, and the latency of each request.
pub(super) async fn small_batch_loop(
    clients: &[Client],
    namespace: &str,
    in_flight: usize,
    requests: u64,
    batch: usize,
    into: Destination,
) -> anyhow::Result<SmallResult> {
    let per_worker = (requests / in_flight as u64 / batch as u64).max(1);
    let mut dests = Vec::new();
    for w in 0..in_flight {
        dests.push(Dest::new(into, &clients[w % clients.len()], 4096 * batch).await?);
    }
    // The requests each worker cycles through, built before the clock
    // starts, as a trainer knows its layers' keys: after 1024 shards the
    // sequence repeats.
    let cycles: Vec<Vec<Vec<Placed>>> = (0..in_flight)
        .map(|w| {
            (0..(1024 / batch).max(1) as u64)
                .map(|n| {
                    (0..batch)
                        .map(|b| {
                            let i = (w as u64 * 7919 + (n * batch as u64 + b as u64) * 104_729) % 1024;
                            (Wanted::new(namespace, key(4096, i)), b * 4096..(b + 1) * 4096)
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    // Kept on the daemon before the clock starts too, as a trainer
    // prepares its layers' gathers once.
    let mut prepared: Vec<Vec<PreparedFetch>> = Vec::new();
    for (w, (dest, cycle)) in dests.iter().zip(&cycles).enumerate() {
        let mut kept = Vec::new();
        if let (Destination::Prepared, Dest::Region(region)) = (into, dest) {
            for wanted in cycle {
                let client = &clients[w % clients.len()];
                kept.push(
                    client
                        .prepare_fetch_into_region(region, wanted)
                        .await
                        .context("prepare a fetch")?,
                );
            }
        }
        prepared.push(kept);
    }
    let start = Instant::now();
    let mut workers = JoinSet::new();
    for (((w, mut dest), cycle), kept) in dests.into_iter().enumerate().zip(cycles).zip(prepared) {
        let client = clients[w % clients.len()].clone();
        workers.spawn(async move {
            let mut latencies = Vec::with_capacity(per_worker as usize);
            for n in 0..per_worker {
                let wanted = &cycle[n as usize % cycle.len()];
                let began = Instant::now();
                match kept.get(n as usize % cycle.len()) {
                    Some(kept) => check_all(wanted, client.fetch_prepared(kept).await)?,
                    None => dest = dest.fetch(&client, wanted).await?,
                }
                latencies.push(began.elapsed().as_secs_f64() * 1e6);
            }
            Ok::<Vec<f64>, anyhow::Error>(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(result) = workers.join_next().await {
        latencies.extend(result??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Ok(SmallResult {
        concurrency: in_flight,
        batch,
        mode: match into {
            Destination::Buffer => Mode::ZeroCopyUnix,
            Destination::Region | Destination::Prepared => Mode::RegionUnix,
        },
        prepared: into == Destination::Prepared,
        ops_per_sec: (latencies.len() * batch) as f64 / elapsed,
        p50_us: percentile(&latencies, 0.5),
        p99_us: percentile(&latencies, 0.99),
    })
}
