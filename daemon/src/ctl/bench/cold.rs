//! `shardctl bench cold`: durable put and cold fetch throughput through a running
//! daemon, for several shard sizes and concurrencies, beside `fio` on the
//! same data directories in the same run.
//!
//! Each case stores `total` bytes as shards of one size from `concurrency`
//! workers (durable puts), then fetches them all back into reused buffers,
//! then once more into a registered region per worker
//! (`fetch_into_region`: over the Unix socket the daemon writes the bytes
//! into the region itself).
//! Every case runs `runs` times; the medians are reported. Before the
//! fetches the shards are demoted from the daemon's arena, and the daemon
//! reads with O_DIRECT, so fetches come from the drive (where a data dir is
//! on a file system without O_DIRECT the report says so).
//!
//! The fio baseline: `fio --direct=1 --ioengine=io_uring --bs=1M
//! --iodepth=32`, a sequential write of a new file (with a final fsync)
//! then a sequential read of it, one job per data dir at once; then the
//! same with `--fixedbufs`: the daemon registers its arena with io_uring,
//! which spares the kernel pinning pages on every I/O, so fio with
//! registered buffers is the like-for-like figure. Runs are interleaved:
//! fio, then every case once, then again, so that a drive whose speed
//! drifts affects both alike; medians are reported.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use serde::Serialize;
use shardd_client::{Client, ClientOptions, EvictMode, PutOptions, Region, Wanted};
use tokio::task::JoinSet;

use super::{baselines, median, pattern};
use crate::config::units::parse_size;
use crate::ctl::show;

/// Options of `shardctl bench cold`.
#[derive(Debug, Args)]
pub struct ColdArgs {
    /// Shard sizes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1MiB,4MiB,16MiB,64MiB,256MiB", value_parser = parse_size)]
    pub sizes: Vec<u64>,
    /// Concurrent requests, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub concurrency: Vec<usize>,
    /// Bytes stored and fetched per case and run.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub total: u64,
    /// Runs per case; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Connections to the daemon (requests are spread over them).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Namespace for the benchmark's shards (removed afterwards).
    #[arg(long, default_value = "shardctl-bench")]
    pub namespace: String,
    /// Run fio on the daemon's data dirs: auto (if installed), on, off.
    #[arg(long, default_value = "auto")]
    pub fio: String,
    /// Bytes fio writes and reads per data dir.
    #[arg(long, default_value = "2GiB", value_parser = parse_size)]
    pub fio_size: u64,
    /// Skip the client's end-to-end CRC32C check of each fetched shard
    /// (the daemon verifies every chunk it reads either way).
    #[arg(long)]
    pub no_client_verify: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// fio's sequential bandwidth, bytes per second.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct FioBaseline {
    /// Sequential read.
    pub read_bytes_per_sec: f64,
    /// Sequential write (with the final fsync).
    pub write_bytes_per_sec: f64,
    /// Sequential read with registered buffers (`--fixedbufs`).
    pub fixedbufs_read_bytes_per_sec: f64,
    /// Sequential write with registered buffers (`--fixedbufs`).
    pub fixedbufs_write_bytes_per_sec: f64,
}

/// One case's medians.
#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    /// Shard size.
    pub shard_bytes: u64,
    /// Concurrent requests.
    pub concurrency: usize,
    /// Shards per run.
    pub shards: u64,
    /// Durable put throughput, bytes per second.
    pub put_bytes_per_sec: f64,
    /// Cold fetch throughput, bytes per second.
    pub fetch_bytes_per_sec: f64,
    /// Cold fetch into a registered region, bytes per second.
    pub region_fetch_bytes_per_sec: f64,
    /// put / fio write.
    pub put_vs_fio: Option<f64>,
    /// fetch / fio read.
    pub fetch_vs_fio: Option<f64>,
    /// put / fio write with registered buffers.
    pub put_vs_fio_fixedbufs: Option<f64>,
    /// fetch / fio read with registered buffers.
    pub fetch_vs_fio_fixedbufs: Option<f64>,
    /// fetch into a region / fio read.
    pub region_fetch_vs_fio: Option<f64>,
    /// The same puts over the daemon's TLS endpoint, bytes per second
    /// (when it has one and the CA was given).
    pub tls_put_bytes_per_sec: Option<f64>,
    /// The same cold fetches over TLS, bytes per second.
    pub tls_fetch_bytes_per_sec: Option<f64>,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// Daemon endpoint.
    pub endpoint: String,
    /// Daemon version.
    pub server: String,
    /// I/O engine of the daemon.
    pub io_engine: String,
    /// Data dirs and whether they use O_DIRECT.
    pub data_dirs: Vec<(String, bool)>,
    /// Runs per case.
    pub runs: usize,
    /// fio's figures, if it ran.
    pub fio: Option<FioBaseline>,
    /// Per case.
    pub cases: Vec<CaseResult>,
}

/// Runs the benchmark and prints the report.
pub async fn run(endpoint: &str, base: &ClientOptions, args: &ColdArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(
        args.concurrency.iter().all(|&c| c > 0),
        "--concurrency values must be at least 1"
    );
    let options = ClientOptions {
        verify_checksums: !args.no_client_verify,
        ..base.clone()
    };
    let mut clients = Vec::new();
    for _ in 0..args.connections {
        clients.push(Client::connect_with(endpoint, options.clone()).await?);
    }
    let status = clients[0].status().await?;
    let has_arena = status.arena.is_some();
    // TLS rows beside the endpoint's, where the daemon serves TLS and the
    // CA that signs its certificate was given.
    let tls = status.listen.iter().find(|e| e.starts_with("tls://")).cloned();
    let trusts = options.tls.ca_file.is_some() || std::env::var_os(shardd_client::tls::TLS_CA_ENV).is_some();
    let mut tls_clients = Vec::new();
    match &tls {
        Some(tls) if trusts => {
            for _ in 0..args.connections {
                tls_clients.push(Client::connect_with(tls, options.clone()).await?);
            }
        }
        Some(tls) => eprintln!("shardctl bench: skipping TLS ({tls}): pass --tls-ca to trust the daemon's certificate"),
        None => {}
    }
    let data_dirs: Vec<(String, bool)> = status.data_dirs.iter().map(|d| (d.path.clone(), d.direct_io)).collect();

    let fio_dirs: Option<Vec<PathBuf>> = match args.fio.as_str() {
        "off" => None,
        "auto" if !baselines::installed("fio") => {
            eprintln!("shardctl bench: fio is not installed; no baseline (install fio, or --fio off)");
            None
        }
        "on" | "auto" => Some(data_dirs.iter().map(|(p, _)| PathBuf::from(p)).collect()),
        other => anyhow::bail!("--fio {other:?}: use auto, on or off"),
    };
    for &size in &args.sizes {
        anyhow::ensure!(size > 0, "--sizes values must be above 0");
    }

    // Runs are interleaved (fio, then every case once, then again), so that
    // a drive whose speed drifts during the benchmark affects both alike.
    let cases_of: Vec<(u64, usize)> = args
        .sizes
        .iter()
        .flat_map(|&size| args.concurrency.iter().map(move |&c| (size, c)))
        .collect();
    let mut puts = vec![Vec::new(); cases_of.len()];
    let mut fetches = vec![Vec::new(); cases_of.len()];
    let mut region_fetches = vec![Vec::new(); cases_of.len()];
    let mut tls_puts = vec![Vec::new(); cases_of.len()];
    let mut tls_fetches = vec![Vec::new(); cases_of.len()];
    let mut fio_reads = Vec::new();
    let mut fio_writes = Vec::new();
    let mut fixed_reads = Vec::new();
    let mut fixed_writes = Vec::new();
    for run in 0..args.runs {
        if let Some(dirs) = &fio_dirs {
            let (write, read) = baselines::fio(dirs, args.fio_size, false)?;
            let (fixed_write, fixed_read) = baselines::fio(dirs, args.fio_size, true)?;
            if !args.json {
                eprintln!(
                    "run {}: fio write {:.2} GB/s, read {:.2} GB/s; with --fixedbufs write {:.2} GB/s, read {:.2} GB/s",
                    run + 1,
                    write / 1e9,
                    read / 1e9,
                    fixed_write / 1e9,
                    fixed_read / 1e9
                );
            }
            fio_writes.push(write);
            fio_reads.push(read);
            fixed_writes.push(fixed_write);
            fixed_reads.push(fixed_read);
        }
        for (n, &(size, concurrency)) in cases_of.iter().enumerate() {
            let data = Bytes::from(pattern(size as usize, size));
            let shards = (args.total / size).max(concurrency as u64);
            let put = put_phase(&clients, &args.namespace, size, shards, concurrency, &data).await?;
            if has_arena {
                // Puts leave shards in the arena: demote them so that fetches read the drive.
                demote(&clients[0], &args.namespace, size, shards).await?;
            }
            let fetch = fetch_phase(&clients, &args.namespace, size, shards, concurrency).await?;
            if has_arena {
                demote(&clients[0], &args.namespace, size, shards).await?;
            }
            let region_fetch = region_fetch_phase(&clients, &args.namespace, size, shards, concurrency).await?;
            if !tls_clients.is_empty() {
                // New versions of the same shards, then the same cold reads.
                let put = put_phase(&tls_clients, &args.namespace, size, shards, concurrency, &data).await?;
                if has_arena {
                    demote(&clients[0], &args.namespace, size, shards).await?;
                }
                let fetch = fetch_phase(&tls_clients, &args.namespace, size, shards, concurrency).await?;
                if !args.json {
                    eprintln!(
                        "run {}: {} x{concurrency}: over TLS put {:.2} GB/s, fetch {:.2} GB/s",
                        run + 1,
                        show::bytes(size),
                        put / 1e9,
                        fetch / 1e9
                    );
                }
                tls_puts[n].push(put);
                tls_fetches[n].push(fetch);
            }
            cleanup(&clients[0], &args.namespace, size, shards).await?;
            if !args.json {
                eprintln!(
                    "run {}: {} x{concurrency}: put {:.2} GB/s, fetch {:.2} GB/s, into a region {:.2} GB/s",
                    run + 1,
                    show::bytes(size),
                    put / 1e9,
                    fetch / 1e9,
                    region_fetch / 1e9
                );
            }
            puts[n].push(put);
            fetches[n].push(fetch);
            region_fetches[n].push(region_fetch);
        }
    }
    let fio = (!fio_reads.is_empty()).then(|| FioBaseline {
        read_bytes_per_sec: median(fio_reads),
        write_bytes_per_sec: median(fio_writes),
        fixedbufs_read_bytes_per_sec: median(fixed_reads),
        fixedbufs_write_bytes_per_sec: median(fixed_writes),
    });
    let cases = cases_of
        .iter()
        .zip(puts.into_iter().zip(fetches).zip(region_fetches))
        .zip(tls_puts.into_iter().zip(tls_fetches))
        .map(
            |((&(size, concurrency), ((puts, fetches), region_fetches)), (tls_puts, tls_fetches))| {
                let tls_put = (!tls_puts.is_empty()).then(|| median(tls_puts));
                let tls_fetch = (!tls_fetches.is_empty()).then(|| median(tls_fetches));
                let put = median(puts);
                let fetch = median(fetches);
                let region_fetch = median(region_fetches);
                CaseResult {
                    shard_bytes: size,
                    concurrency,
                    shards: (args.total / size).max(concurrency as u64),
                    put_bytes_per_sec: put,
                    fetch_bytes_per_sec: fetch,
                    region_fetch_bytes_per_sec: region_fetch,
                    put_vs_fio: fio.map(|f| put / f.write_bytes_per_sec),
                    fetch_vs_fio: fio.map(|f| fetch / f.read_bytes_per_sec),
                    put_vs_fio_fixedbufs: fio.map(|f| put / f.fixedbufs_write_bytes_per_sec),
                    fetch_vs_fio_fixedbufs: fio.map(|f| fetch / f.fixedbufs_read_bytes_per_sec),
                    region_fetch_vs_fio: fio.map(|f| region_fetch / f.read_bytes_per_sec),
                    tls_put_bytes_per_sec: tls_put,
                    tls_fetch_bytes_per_sec: tls_fetch,
                }
            },
        )
        .collect();
    let report = BenchReport {
        endpoint: endpoint.to_string(),
        server: status.server,
        io_engine: status.io_engine,
        data_dirs,
        runs: args.runs,
        fio,
        cases,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

pub(super) fn key(size: u64, i: u64) -> String {
    format!("bench/{size}/{i}")
}

/// Splits `shards` keys over `concurrency` workers; each worker uses the
/// connection `worker % connections`. Returns bytes per second.
pub(super) async fn put_phase(
    clients: &[Client],
    namespace: &str,
    size: u64,
    shards: u64,
    concurrency: usize,
    data: &Bytes,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut workers = JoinSet::new();
    for w in 0..concurrency {
        let client = clients[w % clients.len()].clone();
        let namespace = namespace.to_string();
        let data = data.clone();
        workers.spawn(async move {
            let mut i = w as u64;
            while i < shards {
                client
                    .put(&namespace, &key(size, i), data.clone(), PutOptions::default())
                    .await
                    .with_context(|| format!("put {}", key(size, i)))?;
                i += concurrency as u64;
            }
            Ok::<(), anyhow::Error>(())
        });
    }
    while let Some(result) = workers.join_next().await {
        result??;
    }
    Ok((shards * size) as f64 / start.elapsed().as_secs_f64())
}

pub(super) async fn fetch_phase(
    clients: &[Client],
    namespace: &str,
    size: u64,
    shards: u64,
    concurrency: usize,
) -> anyhow::Result<f64> {
    // Destination buffers are allocated and touched before the clock starts,
    // as a trainer's pinned buffers would be.
    let buffers: Vec<Vec<u8>> = (0..concurrency).map(|_| vec![1u8; size as usize]).collect();
    let start = Instant::now();
    let mut workers = JoinSet::new();
    for (w, mut buf) in buffers.into_iter().enumerate() {
        let client = clients[w % clients.len()].clone();
        let namespace = namespace.to_string();
        workers.spawn(async move {
            let mut i = w as u64;
            while i < shards {
                let (back, result) = client.fetch_into(&namespace, &key(size, i), None, buf).await;
                buf = back;
                let info = result.with_context(|| format!("fetch {}", key(size, i)))?;
                anyhow::ensure!(info.len == size, "fetch {} returned {} bytes", key(size, i), info.len);
                i += concurrency as u64;
            }
            Ok::<(), anyhow::Error>(())
        });
    }
    while let Some(result) = workers.join_next().await {
        result??;
    }
    Ok((shards * size) as f64 / start.elapsed().as_secs_f64())
}

/// [`fetch_phase`] into a registered region per worker, one shard per
/// request.
pub(super) async fn region_fetch_phase(
    clients: &[Client],
    namespace: &str,
    size: u64,
    shards: u64,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let mut regions = Vec::new();
    for w in 0..concurrency {
        let region = Region::new(size as usize).context("allocate a region")?;
        let client = &clients[w % clients.len()];
        regions.push(client.register_region(&region).await.context("register a region")?);
    }
    let start = Instant::now();
    let mut workers = JoinSet::new();
    for (w, region) in regions.into_iter().enumerate() {
        let client = clients[w % clients.len()].clone();
        let namespace = namespace.to_string();
        workers.spawn(async move {
            let mut i = w as u64;
            while i < shards {
                let wanted = [(Wanted::new(namespace.as_str(), key(size, i)), 0..size as usize)];
                let mut results = client.fetch_into_region(&region, &wanted).await?;
                let info = results
                    .pop()
                    .context("an answer for the member")?
                    .with_context(|| format!("fetch {} into a region", key(size, i)))?;
                anyhow::ensure!(info.len == size, "fetch {} returned {} bytes", key(size, i), info.len);
                i += concurrency as u64;
            }
            Ok::<(), anyhow::Error>(())
        });
    }
    while let Some(result) = workers.join_next().await {
        result??;
    }
    Ok((shards * size) as f64 / start.elapsed().as_secs_f64())
}

pub(super) async fn demote(client: &Client, namespace: &str, size: u64, shards: u64) -> anyhow::Result<()> {
    let keys: Vec<String> = (0..shards).map(|i| key(size, i)).collect();
    for batch in keys.chunks(1000) {
        let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
        let answer = client.evict(namespace, &refs, EvictMode::Demote).await?;
        anyhow::ensure!(
            answer.busy.is_empty() && answer.failed.is_empty(),
            "could not demote benchmark shards: {answer:?}"
        );
    }
    Ok(())
}

pub(super) async fn cleanup(client: &Client, namespace: &str, size: u64, shards: u64) -> anyhow::Result<()> {
    super::delete_keys(client, namespace, (0..shards).map(|i| key(size, i))).await
}

fn render(report: &BenchReport) -> String {
    use std::fmt::Write;
    let dirs: Vec<String> = report
        .data_dirs
        .iter()
        .map(|(p, direct)| {
            format!(
                "{p} ({})",
                if *direct {
                    "O_DIRECT"
                } else {
                    "buffered: fetches may hit the page cache"
                }
            )
        })
        .collect();
    let mut out = format!(
        "{} at {}, engine {}, data dirs: {}\nmedians of {} runs; GB/s = 10^9 bytes per second\n",
        report.server,
        report.endpoint,
        report.io_engine,
        dirs.join(", "),
        report.runs
    );
    match report.fio {
        Some(f) => {
            let _ = writeln!(
                out,
                "fio (io_uring, O_DIRECT, bs=1M, iodepth=32) on the same dirs: read {:.2} GB/s, write {:.2} GB/s\n\
                 the same with --fixedbufs (registered buffers, as the daemon's arena): read {:.2} GB/s, write {:.2} GB/s",
                f.read_bytes_per_sec / 1e9,
                f.write_bytes_per_sec / 1e9,
                f.fixedbufs_read_bytes_per_sec / 1e9,
                f.fixedbufs_write_bytes_per_sec / 1e9
            );
        }
        None => out.push_str("fio: not run\n"),
    }
    let _ = writeln!(
        out,
        "\n{:>9} {:>5} {:>7} {:>9} {:>8} {:>10} {:>11} {:>10} {:>12} {:>12} {:>10}",
        "shard",
        "conc",
        "shards",
        "put GB/s",
        "put/fio",
        "put/fixed",
        "fetch GB/s",
        "fetch/fio",
        "fetch/fixed",
        "region GB/s",
        "region/fio"
    );
    let ratio = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}x"));
    for c in &report.cases {
        let _ = writeln!(
            out,
            "{:>9} {:>5} {:>7} {:>9.2} {:>8} {:>10} {:>11.2} {:>10} {:>12} {:>12.2} {:>10}",
            show::bytes(c.shard_bytes),
            c.concurrency,
            c.shards,
            c.put_bytes_per_sec / 1e9,
            ratio(c.put_vs_fio),
            ratio(c.put_vs_fio_fixedbufs),
            c.fetch_bytes_per_sec / 1e9,
            ratio(c.fetch_vs_fio),
            ratio(c.fetch_vs_fio_fixedbufs),
            c.region_fetch_bytes_per_sec / 1e9,
            ratio(c.region_fetch_vs_fio)
        );
    }
    if report.cases.iter().any(|c| c.tls_fetch_bytes_per_sec.is_some()) {
        let _ = writeln!(
            out,
            "\nThe same over the daemon's TLS endpoint, beside the rows above (/plain):\n{:>9} {:>5} {:>13} {:>8} {:>15} {:>8}",
            "shard", "conc", "tls put GB/s", "/plain", "tls fetch GB/s", "/plain"
        );
        for c in &report.cases {
            let (Some(put), Some(fetch)) = (c.tls_put_bytes_per_sec, c.tls_fetch_bytes_per_sec) else {
                continue;
            };
            let _ = writeln!(
                out,
                "{:>9} {:>5} {:>13.2} {:>7.2}x {:>15.2} {:>7.2}x",
                show::bytes(c.shard_bytes),
                c.concurrency,
                put / 1e9,
                put / c.put_bytes_per_sec,
                fetch / 1e9,
                fetch / c.fetch_bytes_per_sec
            );
        }
    }
    out
}
