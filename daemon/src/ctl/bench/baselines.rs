//! Baselines measured beside shardd in the same run: fio (drive), a memcpy
//! loop (memory), iperf3 (loopback TCP), redis-benchmark (small requests)
//! and a bare Unix socket round trip (one request at a time, no server work).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

/// One fio round on every data dir at once: a sequential write to a new
/// file (as every put writes a new file) with a final fsync, then a
/// sequential read of it. With `fixed_buffers`, fio registers its buffers
/// with io_uring (`--fixedbufs`), as the daemon registers its arena, which
/// saves pinning pages on every I/O. Returns (write, read) aggregate bytes
/// per second.
pub fn fio(dirs: &[PathBuf], size: u64, fixed_buffers: bool) -> anyhow::Result<(f64, f64)> {
    let files: Vec<PathBuf> = dirs.iter().map(|d| d.join("shardctl-bench.fio")).collect();
    for f in &files {
        let _ = std::fs::remove_file(f);
    }
    let result = fio_job(&files, "write", size, fixed_buffers)
        .and_then(|w| Ok((w, fio_job(&files, "read", size, fixed_buffers)?)));
    for f in &files {
        let _ = std::fs::remove_file(f);
    }
    result
}

fn fio_job(files: &[PathBuf], rw: &str, size: u64, fixed_buffers: bool) -> anyhow::Result<f64> {
    let mut cmd = Command::new("fio");
    cmd.args([
        "--direct=1",
        "--ioengine=io_uring",
        "--bs=1M",
        "--iodepth=32",
        "--group_reporting",
        "--output-format=json",
        &format!("--rw={rw}"),
        &format!("--size={size}"),
    ]);
    if rw == "write" {
        cmd.arg("--end_fsync=1");
    }
    if fixed_buffers {
        cmd.arg("--fixedbufs");
    }
    for (n, file) in files.iter().enumerate() {
        cmd.arg(format!("--name=shardctl-bench-{n}"));
        cmd.arg(format!("--filename={}", file.display()));
    }
    let output = cmd.output().context("run fio")?;
    anyhow::ensure!(
        output.status.success(),
        "fio failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).context("parse fio's JSON output")?;
    json["jobs"][0][rw]["bw_bytes"]
        .as_f64()
        .filter(|bw| *bw > 0.0)
        .ok_or_else(|| anyhow::anyhow!("fio's output has no {rw} bandwidth"))
}

/// Copy bandwidth of this machine, bytes per second: `threads` threads
/// each copy every `piece`-byte block of a shared `working_set`-byte source
/// into destination blocks of their own (`dest_pieces` of them, taken in
/// turn: a batch's destination is as large as its members together),
/// round after round, for at least `min_time`; the bytes of all threads
/// are added up.
pub fn memcpy(piece: usize, working_set: usize, threads: usize, dest_pieces: usize, min_time: Duration) -> f64 {
    let blocks = (working_set / piece).max(1);
    let source = super::pattern(piece * blocks, 1);
    let threads = threads.max(1);
    let dest_pieces = dest_pieces.max(1);
    // Written once before the clock starts, as the fetch loops' buffers are.
    let dests: Vec<Vec<u8>> = (0..threads).map(|_| vec![1u8; piece * dest_pieces]).collect();
    let start = Instant::now();
    let copied: u64 = std::thread::scope(|s| {
        let workers: Vec<_> = dests
            .into_iter()
            .enumerate()
            .map(|(t, mut dest)| {
                let source = &source;
                s.spawn(move || {
                    let mut copied = 0u64;
                    while start.elapsed() < min_time {
                        // Threads start at different blocks, as fetch workers do.
                        for i in 0..blocks {
                            let b = (i + t * blocks / threads) % blocks;
                            let d = i % dest_pieces;
                            dest[d * piece..(d + 1) * piece].copy_from_slice(&source[b * piece..(b + 1) * piece]);
                            std::hint::black_box(&dest);
                            copied += piece as u64;
                        }
                    }
                    copied
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
    });
    copied as f64 / start.elapsed().as_secs_f64()
}

/// A bare round trip over a Unix socket pair between two threads.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct RoundTrip {
    /// Round trips per second, one at a time.
    pub per_sec: f64,
    /// Median round trip, microseconds.
    pub p50_us: f64,
}

/// `count` round trips, one at a time, over a Unix socket pair: a 64-byte
/// request, answered with `answer_bytes` by a thread that blocks in `read`,
/// as any server that sleeps while idle does. Each one costs two wake-ups
/// of a sleeping thread and four system calls: what a request at a time
/// costs on the machine before any server work, for shardd and redis alike.
pub fn socket_round_trip(answer_bytes: usize, count: usize) -> anyhow::Result<RoundTrip> {
    use std::io::{Read, Write};
    let (mut client, mut server) = std::os::unix::net::UnixStream::pair().context("socketpair")?;
    let echo = std::thread::spawn(move || {
        let mut request = [0u8; 64];
        let answer = vec![7u8; answer_bytes];
        while server.read_exact(&mut request).is_ok() {
            if server.write_all(&answer).is_err() {
                break;
            }
        }
    });
    let request = [1u8; 64];
    let mut answer = vec![0u8; answer_bytes];
    let mut times = Vec::with_capacity(count);
    let start = Instant::now();
    for _ in 0..count.max(1) {
        let began = Instant::now();
        client.write_all(&request).context("write to the socket pair")?;
        client.read_exact(&mut answer).context("read from the socket pair")?;
        times.push(began.elapsed().as_secs_f64() * 1e6);
    }
    let elapsed = start.elapsed().as_secs_f64();
    drop(client);
    let _ = echo.join();
    times.sort_by(f64::total_cmp);
    Ok(RoundTrip {
        per_sec: times.len() as f64 / elapsed,
        p50_us: super::percentile(&times, 0.5),
    })
}

/// Whether `program` runs here.
pub fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Kills a child process when dropped.
struct Reaper(std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Loopback TCP throughput with iperf3 (`streams` parallel streams,
/// `seconds` long), bytes per second.
pub fn iperf3(seconds: u32, streams: usize) -> anyhow::Result<f64> {
    let port = free_port()?;
    let server = Command::new("iperf3")
        .args(["-s", "-1", "-B", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start iperf3 -s")?;
    let _server = Reaper(server);
    let mut last = None;
    for _ in 0..50 {
        let output = Command::new("iperf3")
            .args([
                "-c",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                &seconds.to_string(),
                "-J",
            ])
            .args(["-P", &streams.max(1).to_string()])
            .output()
            .context("run iperf3 -c")?;
        // Until the server listens, the client reports an error (in its JSON).
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        if let Some(rate) = json["end"]["sum_received"]["bits_per_second"].as_f64() {
            return Ok(rate / 8.0);
        }
        last = json["error"].as_str().map(str::to_string);
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!("iperf3 failed: {}", last.unwrap_or_default())
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// redis-benchmark's GET figures.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct RedisGet {
    /// Concurrent clients.
    pub clients: usize,
    /// Requests each client pipelines (1: one at a time).
    pub pipeline: usize,
    /// Requests per second.
    pub ops_per_sec: f64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
}

/// Starts a throwaway redis-server on a Unix socket in `dir` and runs
/// `redis-benchmark -t set,get -d VALUE_BYTES` at each (clients, pipeline
/// depth); returns the GET lines.
pub fn redis(
    dir: &Path,
    value_bytes: usize,
    concurrency: &[(usize, usize)],
    requests: u64,
) -> anyhow::Result<Vec<RedisGet>> {
    let socket = dir.join("redis.sock");
    let server = Command::new("redis-server")
        .args(["--port", "0", "--save", "", "--appendonly", "no"])
        .arg("--unixsocket")
        .arg(&socket)
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start redis-server")?;
    let _server = Reaper(server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = Vec::new();
    for &(clients, pipeline) in concurrency {
        // Enough requests that a pipelined run lasts as long as a plain one.
        let requests = requests * pipeline as u64;
        let output = Command::new("redis-benchmark")
            .arg("-s")
            .arg(&socket)
            .args([
                "-t",
                "set,get",
                "-d",
                &value_bytes.to_string(),
                "-c",
                &clients.to_string(),
                "-P",
                &pipeline.to_string(),
            ])
            .args(["-n", &requests.to_string(), "--csv"])
            .output()
            .context("run redis-benchmark")?;
        anyhow::ensure!(output.status.success(), "redis-benchmark failed");
        let text = String::from_utf8_lossy(&output.stdout);
        let line = text
            .lines()
            .find(|l| l.starts_with("\"GET\""))
            .ok_or_else(|| anyhow::anyhow!("redis-benchmark printed no GET line"))?;
        // "GET","rps","avg","min","p50","p95","p99","max" (milliseconds)
        let fields: Vec<f64> = line
            .split(',')
            .skip(1)
            .map(|f| f.trim_matches('"').parse::<f64>().unwrap_or(0.0))
            .collect();
        anyhow::ensure!(fields.len() >= 6, "unexpected redis-benchmark line: {line}");
        out.push(RedisGet {
            clients,
            pipeline,
            ops_per_sec: fields[0],
            p50_ms: fields[3],
            p99_ms: fields[5],
        });
    }
    Ok(out)
}
