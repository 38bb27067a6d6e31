//! `shardctl bench hot`: fetches of shards already in the daemon's pinned
//! arena.
//!
//! * Throughput for shard sizes from 1 to 64 MiB over zero-copy Unix (the
//!   client maps the arena and makes its one copy into its own buffer),
//!   copying Unix and TCP, beside a memcpy loop over the same working set
//!   (40% of the arena) and iperf3 on loopback, measured in the same run;
//!   and copies out of zero-copy views of the working set held throughout
//!   (the client's copy without a request per fetch).
//! * 4 KiB fetches over the Unix socket at 1 and 16 requests in flight:
//!   p50/p99 latency and ops/s, beside redis-benchmark GETs of 4 KiB values
//!   against a throwaway local redis-server, and a bare Unix socket round
//!   trip between two threads (what one request at a time costs here before
//!   any server work).
//!
//! Every case runs `runs` times, interleaved with the baselines; medians
//! are reported. The benchmark checks that the fetches were arena hits.

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use serde::Serialize;
use shardd_client::{Client, ClientOptions, Endpoint, PutOptions};
use tokio::task::JoinSet;

use super::baselines::{self, RedisGet, RoundTrip};
use super::{median, pattern, percentile};
use crate::config::units::parse_size;
use crate::ctl::show;

/// Options of `shardctl bench hot`.
#[derive(Debug, Args)]
pub struct HotArgs {
    /// Shard sizes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1MiB,4MiB,16MiB,64MiB", value_parser = parse_size)]
    pub sizes: Vec<u64>,
    /// Fetches in flight for the throughput runs.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Bytes fetched per case and run.
    #[arg(long, default_value = "4GiB", value_parser = parse_size)]
    pub total: u64,
    /// Runs per case; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Connections per transport.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// 4 KiB fetches per run and concurrency.
    #[arg(long, default_value_t = 50_000)]
    pub small_requests: u64,
    /// Requests in flight for the 4 KiB runs, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub small_concurrency: Vec<usize>,
    /// The daemon's TCP endpoint (default: the one it reports).
    #[arg(long)]
    pub tcp: Option<String>,
    /// Namespace for the benchmark's shards (removed afterwards).
    #[arg(long, default_value = "shardctl-bench-hot")]
    pub namespace: String,
    /// Run iperf3 and redis-benchmark: auto (if installed), on, off.
    #[arg(long, default_value = "auto")]
    pub baselines: String,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// One transport's way of fetching.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Unix socket, arena mapped: one copy, from the arena into the buffer.
    ZeroCopyUnix,
    /// Unix socket, bytes through the socket.
    CopyingUnix,
    /// TCP.
    Tcp,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::ZeroCopyUnix => "zero-copy unix",
            Mode::CopyingUnix => "copying unix",
            Mode::Tcp => "tcp",
        }
    }
}

/// Throughput of one shard size.
#[derive(Clone, Debug, Serialize)]
pub struct SizeResult {
    /// Shard size.
    pub shard_bytes: u64,
    /// Shards in the working set.
    pub shards: u64,
    /// memcpy over the same working set, bytes per second.
    pub memcpy_bytes_per_sec: f64,
    /// Per mode: bytes per second.
    pub modes: Vec<(Mode, f64)>,
    /// Zero-copy views of the whole working set taken once and then only
    /// copied from, bytes per second: the copy without the requests.
    pub views_held_bytes_per_sec: Option<f64>,
}

/// 4 KiB fetches at one concurrency and mode.
#[derive(Clone, Debug, Serialize)]
pub struct SmallResult {
    /// Requests in flight.
    pub concurrency: usize,
    /// How.
    pub mode: Mode,
    /// Requests per second.
    pub ops_per_sec: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
}

/// The pages of the arena as this process maps it: copies out of it run
/// faster with huge pages, so the figures depend on them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ArenaPages {
    /// Page size of the mapping (2 MiB for a hugetlb arena).
    pub page_bytes: u64,
    /// Bytes of the mapping in memory (touched by this process).
    pub resident_bytes: u64,
    /// Of those, bytes mapped as transparent huge pages.
    pub transparent_huge_bytes: u64,
}

/// The report.
#[derive(Clone, Debug, Serialize)]
pub struct HotReport {
    /// Runs per case.
    pub runs: usize,
    /// Fetches in flight for the throughput runs.
    pub concurrency: usize,
    /// Connections per transport (and iperf3 streams).
    pub connections: usize,
    /// iperf3 loopback TCP, bytes per second.
    pub iperf3_bytes_per_sec: Option<f64>,
    /// Per size.
    pub sizes: Vec<SizeResult>,
    /// 4 KiB fetches.
    pub small: Vec<SmallResult>,
    /// redis-benchmark GETs of 4 KiB.
    pub redis: Vec<RedisGet>,
    /// A bare Unix socket round trip with a 4 KiB answer (median run).
    pub round_trip: RoundTrip,
    /// How this process mapped the daemon's arena (zero-copy clients).
    pub arena_pages: Option<ArenaPages>,
    /// Arena hits and misses during the benchmark.
    pub arena_hits: u64,
    /// Misses (should be none: the shards are put into the arena first).
    pub arena_misses: u64,
}

/// Runs the benchmark and prints the report.
pub async fn run(endpoint: &str, args: &HotArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.runs > 0 && args.connections > 0 && args.concurrency > 0,
        "counts must be at least 1"
    );
    let probe = Client::connect(endpoint).await?;
    let status = probe.status().await?;
    let arena = status
        .arena
        .clone()
        .context("the daemon has no pinned arena (arena.size = 0): nothing is hot")?;
    let unix = match Endpoint::parse(endpoint)? {
        Endpoint::Unix(_) => Some(endpoint.to_string()),
        Endpoint::Tcp(_) => status.listen.iter().find(|e| e.starts_with("unix://")).cloned(),
    };
    let tcp = args
        .tcp
        .clone()
        .or_else(|| status.listen.iter().find(|e| e.starts_with("tcp://")).cloned());
    let mut modes: Vec<(Mode, Vec<Client>)> = Vec::new();
    if let Some(unix) = &unix {
        for (mode, zero_copy) in [(Mode::ZeroCopyUnix, true), (Mode::CopyingUnix, false)] {
            let clients = connect(unix, zero_copy, args.connections).await?;
            if zero_copy && !clients[0].zero_copy() {
                eprintln!("shardctl bench: the daemon does not share its arena (server.zero_copy = false)");
                continue;
            }
            modes.push((mode, clients));
        }
    }
    match &tcp {
        Some(tcp) => modes.push((Mode::Tcp, connect(tcp, false, args.connections).await?)),
        None => eprintln!("shardctl bench: the daemon has no TCP endpoint; skipping TCP"),
    }
    anyhow::ensure!(!modes.is_empty(), "no way to reach the daemon");
    let baselines_on = match args.baselines.as_str() {
        "off" => false,
        "on" | "auto" => true,
        other => anyhow::bail!("--baselines {other:?}: use auto, on or off"),
    };
    let iperf3 = baselines_on && baselines::installed("iperf3");
    if baselines_on && !iperf3 {
        eprintln!("shardctl bench: iperf3 is not installed; no TCP baseline");
    }

    // The working set of each size: 40% of the arena, so that it stays
    // resident, and (with arenas of a few hundred MiB or more) larger than
    // the CPU caches, for the fetches and the memcpy baseline alike.
    let mut sets = Vec::new();
    for &size in &args.sizes {
        anyhow::ensure!(size > 0, "--sizes values must be above 0");
        let fit = arena.capacity_bytes * 2 / 5 / size;
        anyhow::ensure!(fit > 0, "a {size}-byte shard does not fit the arena's working set");
        sets.push((size, fit));
    }
    let before = probe.status().await?.arena.unwrap_or_default();
    let mut throughput: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); modes.len()]; sets.len()];
    let mut memcpy: Vec<Vec<f64>> = vec![Vec::new(); sets.len()];
    let mut views_held: Vec<Vec<f64>> = vec![Vec::new(); sets.len()];
    let mut iperf3_runs = Vec::new();
    let any = &modes[0].1[0];
    for run in 0..args.runs {
        if iperf3 {
            let streams = args.connections;
            let rate = tokio::task::spawn_blocking(move || baselines::iperf3(3, streams)).await??;
            iperf3_runs.push(rate);
        }
        for (n, &(size, shards)) in sets.iter().enumerate() {
            put_set(any, &args.namespace, size, shards).await?;
            let sweep = Sweep {
                size,
                shards,
                concurrency: args.concurrency,
                total: args.total,
            };
            let working_set = (size * shards) as usize;
            let threads = args.concurrency;
            memcpy[n].push(
                tokio::task::spawn_blocking(move || {
                    baselines::memcpy(size as usize, working_set, threads, Duration::from_millis(500))
                })
                .await?,
            );
            for (m, (mode, clients)) in modes.iter().enumerate() {
                let rate = fetch_loop(clients, &args.namespace, sweep).await?;
                if !args.json {
                    eprintln!(
                        "run {}: {} x{}: {} {:.2} GB/s",
                        run + 1,
                        show::bytes(size),
                        args.concurrency,
                        mode.label(),
                        rate / 1e9
                    );
                }
                throughput[n][m].push(rate);
                if *mode == Mode::ZeroCopyUnix {
                    let rate = copy_loop(&clients[0], &args.namespace, sweep).await?;
                    views_held[n].push(rate);
                }
            }
            remove_set(any, &args.namespace, size, shards).await?;
        }
    }
    let after = probe.status().await?.arena.unwrap_or_default();
    let arena_pages = std::fs::read_to_string("/proc/self/smaps")
        .ok()
        .and_then(|smaps| arena_pages(&smaps));

    // 4 KiB fetches.
    const SMALL: u64 = 4096;
    const SMALL_SHARDS: u64 = 1024;
    put_set(any, &args.namespace, SMALL, SMALL_SHARDS).await?;
    let mut small = Vec::new();
    for &concurrency in &args.small_concurrency {
        for (mode, clients) in modes.iter().filter(|(m, _)| *m != Mode::Tcp) {
            let mut runs = Vec::new();
            for _ in 0..args.runs {
                runs.push(small_loop(clients, &args.namespace, concurrency, args.small_requests).await?);
            }
            runs.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
            let mut result = runs.swap_remove(runs.len() / 2);
            result.mode = *mode;
            if !args.json {
                eprintln!(
                    "4 KiB x{concurrency} {}: {:.0} ops/s, p50 {:.0} us, p99 {:.0} us",
                    mode.label(),
                    result.ops_per_sec,
                    result.p50_us,
                    result.p99_us
                );
            }
            small.push(result);
        }
    }
    remove_set(any, &args.namespace, SMALL, SMALL_SHARDS).await?;
    let count = (args.small_requests / 2).clamp(1_000, 20_000) as usize;
    let mut round_trips = Vec::new();
    for _ in 0..args.runs {
        round_trips
            .push(tokio::task::spawn_blocking(move || baselines::socket_round_trip(SMALL as usize, count)).await??);
    }
    round_trips.sort_by(|a, b| a.per_sec.total_cmp(&b.per_sec));
    let round_trip = round_trips.swap_remove(round_trips.len() / 2);
    let redis = if baselines_on && baselines::installed("redis-server") && baselines::installed("redis-benchmark") {
        let dir = tempdir()?;
        let concurrency = args.small_concurrency.clone();
        let requests = args.small_requests.max(10_000);
        let path = dir.clone();
        let result =
            tokio::task::spawn_blocking(move || baselines::redis(&path, SMALL as usize, &concurrency, requests))
                .await?;
        let _ = std::fs::remove_dir_all(&dir);
        result?
    } else {
        if baselines_on {
            eprintln!("shardctl bench: redis-server or redis-benchmark is not installed; no small-request baseline");
        }
        Vec::new()
    };

    let report = HotReport {
        runs: args.runs,
        concurrency: args.concurrency,
        connections: args.connections,
        iperf3_bytes_per_sec: (!iperf3_runs.is_empty()).then(|| median(iperf3_runs)),
        sizes: sets
            .iter()
            .enumerate()
            .map(|(n, &(size, shards))| SizeResult {
                shard_bytes: size,
                shards,
                memcpy_bytes_per_sec: median(memcpy[n].clone()),
                modes: modes
                    .iter()
                    .enumerate()
                    .map(|(m, (mode, _))| (*mode, median(throughput[n][m].clone())))
                    .collect(),
                views_held_bytes_per_sec: (!views_held[n].is_empty()).then(|| median(views_held[n].clone())),
            })
            .collect(),
        small,
        redis,
        round_trip,
        arena_pages,
        arena_hits: after.hits - before.hits,
        arena_misses: after.misses - before.misses,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

fn tempdir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("shardctl-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

async fn connect(endpoint: &str, zero_copy: bool, connections: usize) -> anyhow::Result<Vec<Client>> {
    let options = ClientOptions {
        zero_copy,
        ..ClientOptions::default()
    };
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(Client::connect_with(endpoint, options.clone()).await?);
    }
    Ok(clients)
}

fn key(size: u64, i: u64) -> String {
    format!("hot/{size}/{i}")
}

/// Stores the working set; puts leave their shards in the arena.
async fn put_set(client: &Client, namespace: &str, size: u64, shards: u64) -> anyhow::Result<()> {
    let data = Bytes::from(pattern(size as usize, size));
    for i in 0..shards {
        client
            .put(namespace, &key(size, i), data.clone(), PutOptions::default())
            .await
            .with_context(|| format!("put {}", key(size, i)))?;
    }
    Ok(())
}

async fn remove_set(client: &Client, namespace: &str, size: u64, shards: u64) -> anyhow::Result<()> {
    for i in 0..shards {
        match client.delete(namespace, &key(size, i), None).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e).context("remove benchmark shards"),
        }
    }
    Ok(())
}

/// One throughput case: `concurrency` workers each take every
/// `concurrency`-th shard of a working set of `shards` shards of `size`
/// bytes, in turn, until `total` bytes are fetched (or copied) altogether.
#[derive(Clone, Copy, Debug)]
struct Sweep {
    size: u64,
    shards: u64,
    concurrency: usize,
    total: u64,
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
async fn fetch_loop(clients: &[Client], namespace: &str, sweep: Sweep) -> anyhow::Result<f64> {
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
async fn copy_loop(client: &Client, namespace: &str, sweep: Sweep) -> anyhow::Result<f64> {
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
async fn small_loop(
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
        mode: Mode::ZeroCopyUnix,
        ops_per_sec: latencies.len() as f64 / elapsed,
        p50_us: percentile(&latencies, 0.5),
        p99_us: percentile(&latencies, 0.99),
    })
}

/// The arena's mappings in `smaps` (this process's `/proc/self/smaps`),
/// added up; `None` if it maps no arena.
fn arena_pages(smaps: &str) -> Option<ArenaPages> {
    let name = format!("/memfd:{}", crate::arena::memory::MEMFD_NAME);
    let mut pages: Option<ArenaPages> = None;
    let mut inside = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        // A mapping starts with its address range; its fields follow.
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            inside = line.contains(&name);
            if inside {
                pages.get_or_insert_with(ArenaPages::default);
            }
            continue;
        }
        let Some(entry) = pages.as_mut().filter(|_| inside) else {
            continue;
        };
        // Fields are in kB.
        let Some(value) = words.next().and_then(|n| n.parse::<u64>().ok()).map(|k| k * 1024) else {
            continue;
        };
        match first {
            "KernelPageSize:" => entry.page_bytes = entry.page_bytes.max(value),
            "Rss:" | "Shared_Hugetlb:" | "Private_Hugetlb:" => entry.resident_bytes += value,
            "ShmemPmdMapped:" => entry.transparent_huge_bytes += value,
            _ => {}
        }
    }
    pages
}

fn render(report: &HotReport) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "hot fetch (shards in the arena): medians of {} runs, {} fetches in flight; GB/s = 10^9 bytes/s\n\
         memcpy: as many threads as fetches in flight, over the same working set\n\
         views held: zero-copy views of the working set taken once, then only copied from (no requests)\n",
        report.runs, report.concurrency
    );
    match report.iperf3_bytes_per_sec {
        Some(rate) => {
            let _ = writeln!(
                out,
                "iperf3 loopback TCP ({} streams, one per connection): {:.2} GB/s",
                report.connections,
                rate / 1e9
            );
        }
        None => out.push_str("iperf3: not run\n"),
    }
    if let Some(pages) = &report.arena_pages {
        let _ = write!(
            out,
            "arena pages, as this client maps them: {}",
            show::bytes(pages.page_bytes)
        );
        if pages.page_bytes <= 4096 {
            let huge = pages.transparent_huge_bytes as f64 / pages.resident_bytes.max(1) as f64;
            let _ = write!(
                out,
                ", {:.0}% of the {} touched in transparent huge pages",
                huge * 100.0,
                show::bytes(pages.resident_bytes)
            );
        }
        out.push('\n');
    }
    let modes: Vec<Mode> = report
        .sizes
        .first()
        .map(|s| s.modes.iter().map(|(m, _)| *m).collect())
        .unwrap_or_default();
    let _ = write!(out, "\n{:>9} {:>7} {:>12}", "shard", "shards", "memcpy GB/s");
    for mode in &modes {
        let _ = write!(out, " {:>15}", mode.label());
        match mode {
            Mode::ZeroCopyUnix => {
                let _ = write!(out, " {:>9} {:>12}", "/memcpy", "views held");
            }
            Mode::Tcp => {
                let _ = write!(out, " {:>9}", "/iperf3");
            }
            Mode::CopyingUnix => {}
        }
    }
    out.push('\n');
    for size in &report.sizes {
        let _ = write!(
            out,
            "{:>9} {:>7} {:>12.2}",
            show::bytes(size.shard_bytes),
            size.shards,
            size.memcpy_bytes_per_sec / 1e9
        );
        for (mode, rate) in &size.modes {
            let _ = write!(out, " {:>15.2}", rate / 1e9);
            match mode {
                Mode::ZeroCopyUnix => {
                    let _ = write!(out, " {:>8.2}x", rate / size.memcpy_bytes_per_sec);
                    match size.views_held_bytes_per_sec {
                        Some(held) => {
                            let _ = write!(out, " {:>12.2}", held / 1e9);
                        }
                        None => {
                            let _ = write!(out, " {:>12}", "-");
                        }
                    }
                }
                Mode::Tcp => match report.iperf3_bytes_per_sec {
                    Some(iperf) => {
                        let _ = write!(out, " {:>8.2}x", rate / iperf);
                    }
                    None => {
                        let _ = write!(out, " {:>9}", "-");
                    }
                },
                Mode::CopyingUnix => {}
            }
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "\n4 KiB fetches over the Unix socket (median run), redis-benchmark GET of 4 KiB values beside:"
    );
    let _ = writeln!(
        out,
        "(a bare Unix socket round trip between two threads that sleep in read, 64-byte request,\n \
         4 KiB answer, one at a time: {:.0}/s, p50 {:.0} us: what 1 in flight costs here before any server work)",
        report.round_trip.per_sec, report.round_trip.p50_us
    );
    let _ = writeln!(
        out,
        "{:>5} {:>15} {:>10} {:>8} {:>8} {:>12} {:>10} {:>9}",
        "conc", "mode", "ops/s", "p50 us", "p99 us", "redis ops/s", "redis p50", "/redis"
    );
    for s in &report.small {
        let redis = report.redis.iter().find(|r| r.clients == s.concurrency);
        let _ = writeln!(
            out,
            "{:>5} {:>15} {:>10.0} {:>8.0} {:>8.0} {:>12} {:>10} {:>9}",
            s.concurrency,
            s.mode.label(),
            s.ops_per_sec,
            s.p50_us,
            s.p99_us,
            redis.map_or("-".into(), |r| format!("{:.0}", r.ops_per_sec)),
            redis.map_or("-".into(), |r| format!("{:.0} us", r.p50_ms * 1000.0)),
            redis.map_or("-".into(), |r| format!("{:.2}x", s.ops_per_sec / r.ops_per_sec)),
        );
    }
    let lookups = report.arena_hits + report.arena_misses;
    let _ = writeln!(
        out,
        "\narena hits during the throughput runs: {} of {lookups} fetches",
        report.arena_hits
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d1c0a00000-55d1c0a21000 r--p 00000000 fd:01 1234                       /usr/bin/shardctl
Size:                132 kB
KernelPageSize:        4 kB
Rss:                 132 kB
ShmemPmdMapped:        0 kB
7f0000000000-7f0040000000 r--s 00000000 00:01 25696                      /memfd:shardd-arena (deleted)
Size:            1048576 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:              419840 kB
ShmemPmdMapped:   409600 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
VmFlags: rd sh mr mw me ms sd
7f0040000000-7f0040021000 rw-p 00000000 00:00 0
Size:                132 kB
KernelPageSize:        4 kB
Rss:                  64 kB
ShmemPmdMapped:        0 kB
";

    #[test]
    fn the_arena_mapping_is_found_among_the_others() {
        let pages = arena_pages(SMAPS).expect("an arena mapping");
        assert_eq!(
            pages,
            ArenaPages {
                page_bytes: 4096,
                resident_bytes: 419840 * 1024,
                transparent_huge_bytes: 409600 * 1024,
            }
        );
    }

    #[test]
    fn a_hugetlb_arena_counts_its_huge_pages_as_resident() {
        let smaps = "\
7f0000000000-7f0040000000 r--s 00000000 00:0f 4321                       /memfd:shardd-arena (deleted)
Size:            1048576 kB
KernelPageSize:     2048 kB
Rss:                   0 kB
ShmemPmdMapped:        0 kB
Shared_Hugetlb:   419840 kB
Private_Hugetlb:       0 kB
";
        let pages = arena_pages(smaps).expect("an arena mapping");
        assert_eq!(pages.page_bytes, 2 << 20);
        assert_eq!(pages.resident_bytes, 419840 * 1024);
    }

    #[test]
    fn no_arena_mapping_is_none() {
        assert_eq!(arena_pages(&SMAPS.replace("shardd-arena", "other")), None);
    }
}
