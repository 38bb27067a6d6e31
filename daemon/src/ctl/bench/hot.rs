//! `shardctl bench hot`: fetches of shards already in the daemon's pinned
//! arena.
//!
//! * Throughput for shard sizes from 1 to 64 MiB over zero-copy Unix (the
//!   client maps the arena and makes its one copy into its own buffer),
//!   copying Unix and TCP, beside a memcpy loop over the same working set
//!   (40% of the arena) and iperf3 on loopback, measured in the same run;
//!   and copies out of zero-copy views of the working set held throughout
//!   (the client's copy without a request per fetch).
//!   Batched: the same sweep, [`BATCH`] shards per request
//!   (`fetch_many_into`, one copy out of views asked for in one request),
//!   and into registered regions (`fetch_into_region`: over Unix the daemon
//!   writes the bytes itself, over TCP the receiver writes each payload in
//!   place), beside memcpy into destinations as large as a batch's.
//! * 4 KiB fetches over the Unix socket at 1 and 16 requests in flight:
//!   p50/p99 latency and ops/s, beside redis-benchmark GETs of 4 KiB values
//!   against a throwaway local redis-server, and a bare Unix socket round
//!   trip between two threads (what one request at a time costs here before
//!   any server work); and batched, [`SMALL_BATCH`] shards per request with
//!   [`SMALL_BATCH_IN_FLIGHT`] requests in flight, beside redis-benchmark
//!   with [`REDIS_PIPELINED`] (connections, pipeline depth).
//!
//! Every case runs `runs` times, interleaved with the baselines; medians
//! are reported. The benchmark checks that the fetches were arena hits.
//!
//! # Layout
//!
//! * [`loops`]: the timed loops and the working set.
//! * [`report`]: the printed table and the arena's pages.

mod loops;
mod report;

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use shardd_client::{Client, Endpoint};

use super::baselines::{self, RedisGet, RoundTrip};
use super::median;
use crate::config::units::parse_size;
use crate::ctl::show;
use loops::{
    Destination, Sweep, batch_loop, connect, copy_loop, fetch_loop, put_set, remove_set, small_batch_loop, small_loop,
};
use report::{arena_pages, render};

/// Shards per request of the batched throughput runs.
pub const BATCH: u64 = 16;
/// 4 KiB shards per request of the batched small runs.
pub const SMALL_BATCH: usize = 64;
/// Requests in flight of the batched small runs.
pub const SMALL_BATCH_IN_FLIGHT: usize = 4;
/// redis-benchmark's pipelined GETs beside them: connections, pipeline depth.
pub const REDIS_PIPELINED: (usize, usize) = (8, 16);

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
    /// Rows to run, comma separated (zero_copy_unix,
    /// zero_copy_unix_batch, copying_unix, region_unix, tcp, region_tcp),
    /// throughput and 4 KiB rows alike (a batched 4 KiB row goes by its
    /// batched mode: zero_copy_unix_batch, copying_unix or region_unix);
    /// default: every one the daemon's endpoints allow.
    #[arg(long, value_delimiter = ',')]
    pub modes: Vec<String>,
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
    /// The same, [`BATCH`] shards per request.
    ZeroCopyUnixBatch,
    /// Unix socket, [`BATCH`] shards per request written by the daemon
    /// into a region the client registered (no payload on the socket).
    RegionUnix,
    /// Unix socket, bytes through the socket.
    CopyingUnix,
    /// TCP.
    Tcp,
    /// TCP, [`BATCH`] shards per request, each payload written by the
    /// client's receiver straight into a registered region.
    RegionTcp,
    /// TCP under TLS.
    Tls,
    /// TCP under TLS, [`BATCH`] shards per request into a region.
    RegionTls,
}

impl Mode {
    /// The name in `--modes` and in JSON.
    fn name(self) -> &'static str {
        match self {
            Mode::ZeroCopyUnix => "zero_copy_unix",
            Mode::ZeroCopyUnixBatch => "zero_copy_unix_batch",
            Mode::RegionUnix => "region_unix",
            Mode::CopyingUnix => "copying_unix",
            Mode::Tcp => "tcp",
            Mode::RegionTcp => "region_tcp",
            Mode::Tls => "tls",
            Mode::RegionTls => "region_tls",
        }
    }

    /// Whether it goes over the network stack (TCP or TLS).
    fn networked(self) -> bool {
        matches!(self, Mode::Tcp | Mode::RegionTcp | Mode::Tls | Mode::RegionTls)
    }

    /// Whether it fetches [`BATCH`] shards per request.
    fn batched(self) -> bool {
        matches!(
            self,
            Mode::ZeroCopyUnixBatch | Mode::RegionUnix | Mode::RegionTcp | Mode::RegionTls
        )
    }

    fn label(self) -> &'static str {
        match self {
            Mode::ZeroCopyUnix => "zero-copy unix",
            Mode::ZeroCopyUnixBatch => "zc unix batch",
            Mode::RegionUnix => "region unix",
            Mode::RegionTcp => "region tcp",
            Mode::CopyingUnix => "copying unix",
            Mode::Tcp => "tcp",
            Mode::Tls => "tls",
            Mode::RegionTls => "region tls",
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
    /// The same into destinations as large as a batch's ([`BATCH`] shards
    /// per thread, taken in turn), beside the batched modes.
    pub memcpy_batch_bytes_per_sec: Option<f64>,
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
    /// Shards per request (ops/s counts shards).
    pub batch: usize,
    /// How.
    pub mode: Mode,
    /// Whether each request was kept on the daemon beforehand and sent as
    /// its id (`prepare_fetch_into_region`, `fetch_prepared`).
    pub prepared: bool,
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
pub async fn run(endpoint: &str, base: &shardd_client::ClientOptions, args: &HotArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.runs > 0 && args.connections > 0 && args.concurrency > 0,
        "counts must be at least 1"
    );
    let probe = Client::connect_with(endpoint, base.clone()).await?;
    let status = probe.status().await?;
    let arena = status
        .arena
        .clone()
        .context("the daemon has no pinned arena (arena.size = 0): nothing is hot")?;
    let unix = match Endpoint::parse(endpoint)? {
        Endpoint::Unix(_) => Some(endpoint.to_string()),
        Endpoint::Tcp(_) | Endpoint::Tls(_) => status.listen.iter().find(|e| e.starts_with("unix://")).cloned(),
    };
    let tcp = args
        .tcp
        .clone()
        .or_else(|| status.listen.iter().find(|e| e.starts_with("tcp://")).cloned());
    let mut modes: Vec<(Mode, Vec<Client>)> = Vec::new();
    if let Some(unix) = &unix {
        for (mode, zero_copy) in [(Mode::ZeroCopyUnix, true), (Mode::CopyingUnix, false)] {
            let clients = connect(unix, base, zero_copy, args.connections).await?;
            if zero_copy && !clients[0].zero_copy() {
                eprintln!("shardctl bench: the daemon does not share its arena (server.zero_copy = false)");
                continue;
            }
            modes.push((mode, clients));
        }
    }
    match &tcp {
        Some(tcp) => modes.push((Mode::Tcp, connect(tcp, base, false, args.connections).await?)),
        None => eprintln!("shardctl bench: the daemon has no TCP endpoint; skipping TCP"),
    }
    let tls = status.listen.iter().find(|e| e.starts_with("tls://")).cloned();
    let trusts = base.tls.ca_file.is_some() || std::env::var_os(shardd_client::tls::TLS_CA_ENV).is_some();
    match &tls {
        Some(tls) if trusts => modes.push((Mode::Tls, connect(tls, base, false, args.connections).await?)),
        Some(tls) => eprintln!("shardctl bench: skipping TLS ({tls}): pass --tls-ca to trust the daemon's certificate"),
        None => {}
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
    // What each throughput column measures: a mode, and the clients of
    // the mode it runs on.
    let mut cases: Vec<(Mode, usize)> = Vec::new();
    for (i, (mode, _)) in modes.iter().enumerate() {
        cases.push((*mode, i));
        match mode {
            Mode::ZeroCopyUnix => cases.push((Mode::ZeroCopyUnixBatch, i)),
            Mode::CopyingUnix => cases.push((Mode::RegionUnix, i)),
            Mode::Tcp => cases.push((Mode::RegionTcp, i)),
            Mode::Tls => cases.push((Mode::RegionTls, i)),
            _ => {}
        }
    }
    if !args.modes.is_empty() {
        for name in &args.modes {
            anyhow::ensure!(
                cases.iter().any(|(mode, _)| mode.name() == name),
                "--modes {name:?}: not a row this daemon can run (rows: {})",
                cases.iter().map(|(m, _)| m.name()).collect::<Vec<_>>().join(", ")
            );
        }
    }
    let chosen = |mode: Mode| args.modes.is_empty() || args.modes.iter().any(|name| name == mode.name());
    cases.retain(|&(mode, _)| chosen(mode));
    let before = probe.status().await?.arena.unwrap_or_default();
    let mut throughput: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); cases.len()]; sets.len()];
    let mut memcpy: Vec<Vec<f64>> = vec![Vec::new(); sets.len()];
    let mut memcpy_batch: Vec<Vec<f64>> = vec![Vec::new(); sets.len()];
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
                    baselines::memcpy(size as usize, working_set, threads, 1, Duration::from_millis(500))
                })
                .await?,
            );
            if cases.iter().any(|(mode, _)| mode.batched()) {
                let batch = BATCH.min(shards) as usize;
                memcpy_batch[n].push(
                    tokio::task::spawn_blocking(move || {
                        baselines::memcpy(size as usize, working_set, threads, batch, Duration::from_millis(500))
                    })
                    .await?,
                );
            }
            for (m, &(mode, c)) in cases.iter().enumerate() {
                let clients = &modes[c].1;
                let rate = match mode {
                    Mode::ZeroCopyUnixBatch => {
                        batch_loop(clients, &args.namespace, sweep, BATCH, Destination::Buffer).await?
                    }
                    Mode::RegionUnix | Mode::RegionTcp | Mode::RegionTls => {
                        batch_loop(clients, &args.namespace, sweep, BATCH, Destination::Region).await?
                    }
                    _ => fetch_loop(clients, &args.namespace, sweep).await?,
                };
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
                if mode == Mode::ZeroCopyUnix {
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
        for (mode, clients) in modes.iter().filter(|&&(m, _)| !m.networked() && chosen(m)) {
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
    // The batched rows go by their batched modes' names.
    let batched = |mode: Mode| match mode {
        Mode::ZeroCopyUnix => Mode::ZeroCopyUnixBatch,
        other => other,
    };
    for (mode, clients) in modes.iter().filter(|&&(m, _)| !m.networked() && chosen(batched(m))) {
        let mut runs = Vec::new();
        for _ in 0..args.runs {
            let requests = args
                .small_requests
                .max((SMALL_BATCH * SMALL_BATCH_IN_FLIGHT * 16) as u64);
            runs.push(
                small_batch_loop(
                    clients,
                    &args.namespace,
                    SMALL_BATCH_IN_FLIGHT,
                    requests,
                    SMALL_BATCH,
                    Destination::Buffer,
                )
                .await?,
            );
        }
        runs.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
        let mut result = runs.swap_remove(runs.len() / 2);
        result.mode = *mode;
        if !args.json {
            eprintln!(
                "4 KiB x{SMALL_BATCH_IN_FLIGHT} batches of {SMALL_BATCH} {}: {:.0} shards/s, p50 {:.0} us per request",
                mode.label(),
                result.ops_per_sec,
                result.p50_us,
            );
        }
        small.push(result);
    }
    if let Some((_, clients)) = modes
        .iter()
        .find(|&&(m, _)| m == Mode::CopyingUnix && chosen(Mode::RegionUnix))
    {
        // Each request sent whole, then kept on the daemon and sent by id;
        // their runs alternate, so that both see the same machine.
        let mut runs = [Vec::new(), Vec::new()];
        for _ in 0..args.runs {
            let requests = args
                .small_requests
                .max((SMALL_BATCH * SMALL_BATCH_IN_FLIGHT * 16) as u64);
            for (into, runs) in [Destination::Region, Destination::Prepared].into_iter().zip(&mut runs) {
                let namespace = &args.namespace;
                runs.push(
                    small_batch_loop(clients, namespace, SMALL_BATCH_IN_FLIGHT, requests, SMALL_BATCH, into).await?,
                );
            }
        }
        for mut runs in runs {
            runs.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
            let result = runs.swap_remove(runs.len() / 2);
            if !args.json {
                eprintln!(
                    "4 KiB x{SMALL_BATCH_IN_FLIGHT} batches of {SMALL_BATCH} into regions{}: {:.0} shards/s, p50 {:.0} us per request",
                    if result.prepared { ", prepared" } else { "" },
                    result.ops_per_sec,
                    result.p50_us,
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
        // Plain GETs at each concurrency, then pipelined ones.
        let mut concurrency: Vec<(usize, usize)> = args.small_concurrency.iter().map(|&c| (c, 1)).collect();
        concurrency.push(REDIS_PIPELINED);
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
                memcpy_batch_bytes_per_sec: (!memcpy_batch[n].is_empty()).then(|| median(memcpy_batch[n].clone())),
                modes: cases
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
