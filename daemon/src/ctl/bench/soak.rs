//! `shardctl bench soak`: sustained mixed load. `--clients` clients (each
//! its own connection; half over `--tcp` when given) put (durable and
//! write-back), fetch, view, prefetch, evict and delete shards of their
//! own keys for `--duration`, and check every byte they read against what
//! they wrote. Reports operations per second and latency (p50, p99) per
//! operation, errors by kind, and the daemon's peak memory (resident, and
//! its own heap and stacks apart from the shared arena).
//!
//! Each client owns its keys, so it always knows what each holds: a fetch
//! or view of another version, other bytes or a missing shard is an error
//! of the daemon. `busy` (a view the arena cannot hold now) is counted
//! apart as a refusal the daemon is meant to make; every other error is
//! unexpected, and the run fails if there is one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use shardd_client::{Client, ClientError, ClientOptions, Durability, EvictMode, PrefetchItem, PutOptions, Status};

use super::{pattern, percentile};
use crate::config::units::{parse_duration, parse_size};
use crate::ctl::show;

/// Options of `shardctl bench soak`.
#[derive(Debug, Args)]
pub struct SoakArgs {
    /// Clients, each with its own connection.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// How long to run (`60s`, `2h`).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// A TCP endpoint of the same daemon (`tcp://HOST:PORT`): half the
    /// clients connect there.
    #[arg(long)]
    pub tcp: Option<String>,
    /// Keys each client cycles through.
    #[arg(long, default_value_t = 8)]
    pub keys_per_client: usize,
    /// Largest shard (sizes are spread from 1 byte up to this).
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub max_size: u64,
    /// The daemon's process id, for its memory (default: the peer of the
    /// Unix socket; over TCP alone, memory is not reported).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Namespace for the benchmark's shards (removed afterwards).
    #[arg(long, default_value = "shardctl-bench-soak")]
    pub namespace: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What a client does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Put,
    PutWriteBack,
    Fetch,
    View,
    Prefetch,
    Evict,
    Delete,
}

impl Op {
    const ALL: [Op; 7] = [
        Op::Put,
        Op::PutWriteBack,
        Op::Fetch,
        Op::View,
        Op::Prefetch,
        Op::Evict,
        Op::Delete,
    ];

    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::PutWriteBack => "put_write_back",
            Op::Fetch => "fetch",
            Op::View => "view",
            Op::Prefetch => "prefetch",
            Op::Evict => "evict",
            Op::Delete => "delete",
        }
    }

    /// Out of 100: reads most, as a trainer does.
    fn pick(roll: u64) -> Op {
        match roll {
            0..15 => Op::Put,
            15..25 => Op::PutWriteBack,
            25..60 => Op::Fetch,
            60..75 => Op::View,
            75..85 => Op::Prefetch,
            85..93 => Op::Evict,
            _ => Op::Delete,
        }
    }
}

/// One operation's figures.
#[derive(Clone, Debug, Serialize)]
pub struct OpRow {
    /// The operation.
    pub op: String,
    /// Completed without error.
    pub count: u64,
    /// Per second, over the run.
    pub ops_per_sec: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
}

/// The report.
#[derive(Clone, Debug, Serialize)]
pub struct SoakReport {
    /// Daemon version.
    pub server: String,
    /// Clients over the Unix socket (or the endpoint given), and over TCP.
    pub clients: usize,
    /// Of which over TCP.
    pub tcp_clients: usize,
    /// Seconds run.
    pub seconds: f64,
    /// Per operation.
    pub ops: Vec<OpRow>,
    /// Bytes read back and compared with what was written.
    pub bytes_checked: u64,
    /// `busy` answers (views the arena could not hold at that moment).
    pub busy: u64,
    /// Every other error, by kind; the run fails if there is one.
    pub errors: BTreeMap<String, u64>,
    /// Examples of the errors (the first of each kind).
    pub error_examples: BTreeMap<String, String>,
    /// The daemon's peak resident memory (VmHWM), if known.
    pub peak_rss_bytes: Option<u64>,
    /// The largest of its anonymous resident memory (heap, stacks: all
    /// but the arena and the binary) seen in samples every half second.
    pub peak_anon_bytes: Option<u64>,
}

/// What a client saw.
#[derive(Default)]
struct Tally {
    latencies: BTreeMap<Op, Vec<f64>>,
    bytes_checked: u64,
    busy: u64,
    errors: BTreeMap<String, u64>,
    examples: BTreeMap<String, String>,
}

impl Tally {
    fn error(&mut self, op: Op, kind: String, what: String) {
        *self.errors.entry(kind.clone()).or_default() += 1;
        self.examples
            .entry(kind)
            .or_insert_with(|| format!("{}: {what}", op.name()));
    }

    fn merge(&mut self, other: Tally) {
        for (op, mut values) in other.latencies {
            self.latencies.entry(op).or_default().append(&mut values);
        }
        self.bytes_checked += other.bytes_checked;
        self.busy += other.busy;
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        for (kind, example) in other.examples {
            self.examples.entry(kind).or_insert(example);
        }
    }
}

/// What one of a client's keys holds.
#[derive(Clone, Copy)]
struct Held {
    version: u64,
    seed: u64,
    len: usize,
}

/// A small deterministic generator (xorshift), one per client.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Runs the soak and prints its report; fails if any unexpected error came.
pub async fn run(endpoint: &str, base: &ClientOptions, args: &SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.clients > 0 && args.keys_per_client > 0,
        "--clients and --keys-per-client must be positive"
    );
    let first = Client::connect_with(endpoint, base.clone())
        .await
        .with_context(|| format!("connect to {endpoint}"))?;
    let server = first.server().server.clone();
    let pid = args.pid.or_else(|| endpoint.strip_prefix("unix://").and_then(peer_pid));
    let tcp_clients = if args.tcp.is_some() { args.clients / 2 } else { 0 };
    let mut clients = Vec::with_capacity(args.clients);
    for n in 0..args.clients {
        let target = match &args.tcp {
            Some(tcp) if n < tcp_clients => tcp.as_str(),
            _ => endpoint,
        };
        let client = Client::connect_with(target, base.clone())
            .await
            .with_context(|| format!("connect client {n} to {target}"))?;
        clients.push(client);
    }

    let started = Instant::now();
    let deadline = started + args.duration;
    let memory = tokio::spawn(sample_memory(pid, deadline));
    let mut tasks = tokio::task::JoinSet::new();
    for (n, client) in clients.into_iter().enumerate() {
        let namespace = args.namespace.clone();
        let (keys, max_size) = (args.keys_per_client, args.max_size.max(1));
        tasks.spawn(async move { soak_client(client, namespace, n, keys, max_size, deadline).await });
    }
    let mut tally = Tally::default();
    while let Some(done) = tasks.join_next().await {
        tally.merge(done.context("a soak client panicked")?);
    }
    let seconds = started.elapsed().as_secs_f64();
    let peak_anon_bytes = memory.await.unwrap_or(None);
    let peak_rss_bytes = pid.and_then(|pid| proc_status_kib(pid, "VmHWM:")).map(|kib| kib * 1024);

    let keys = (0..args.clients).flat_map(|n| (0..args.keys_per_client).map(move |k| key(n, k)));
    super::delete_keys(&first, &args.namespace, keys).await?;

    let ops = Op::ALL
        .iter()
        .map(|op| {
            let mut values = tally.latencies.remove(op).unwrap_or_default();
            values.sort_by(f64::total_cmp);
            OpRow {
                op: op.name().to_string(),
                count: values.len() as u64,
                ops_per_sec: values.len() as f64 / seconds,
                p50_us: percentile(&values, 0.5),
                p99_us: percentile(&values, 0.99),
            }
        })
        .collect();
    let report = SoakReport {
        server,
        clients: args.clients,
        tcp_clients,
        seconds,
        ops,
        bytes_checked: tally.bytes_checked,
        busy: tally.busy,
        errors: tally.errors,
        error_examples: tally.examples,
        peak_rss_bytes,
        peak_anon_bytes,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    let unexpected: u64 = report.errors.values().sum();
    anyhow::ensure!(unexpected == 0, "soak: {unexpected} unexpected errors");
    Ok(())
}

fn key(client: usize, k: usize) -> String {
    format!("c{client}/k{k}")
}

/// One client's loop until `deadline`.
async fn soak_client(
    client: Client,
    namespace: String,
    n: usize,
    keys: usize,
    max_size: u64,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut held: Vec<Option<Held>> = vec![None; keys];
    let mut rng = Rng((n as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut seed = (n as u64) << 40;
    let zero_copy = client.zero_copy();
    while Instant::now() < deadline {
        let k = rng.below(keys as u64) as usize;
        let name = key(n, k);
        let mut op = Op::pick(rng.below(100));
        if op == Op::View && !zero_copy {
            op = Op::Fetch;
        }
        if held[k].is_none() && matches!(op, Op::Fetch | Op::View | Op::Prefetch | Op::Evict | Op::Delete) {
            op = Op::Put;
        }
        let began = Instant::now();
        let outcome = step(
            &client,
            &namespace,
            &name,
            op,
            &mut held[k],
            &mut rng,
            &mut seed,
            max_size,
        )
        .await;
        match outcome {
            Ok(checked) => {
                tally.bytes_checked += checked;
                let micros = began.elapsed().as_secs_f64() * 1e6;
                tally.latencies.entry(op).or_default().push(micros);
            }
            Err(Failure::Busy) => tally.busy += 1,
            Err(Failure::Client(e)) => {
                let kind = e
                    .status()
                    .map_or_else(|| client_error_kind(&e), |s| s.name().to_string());
                tally.error(op, kind, format!("{name}: {e}"));
            }
            Err(Failure::Wrong(what)) => tally.error(op, "wrong_data".to_string(), format!("{name}: {what}")),
        }
    }
    tally
}

enum Failure {
    Busy,
    Client(ClientError),
    Wrong(String),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        if e.status() == Some(Status::Busy) {
            Failure::Busy
        } else {
            Failure::Client(e)
        }
    }
}

/// One operation on `key`; the bytes it checked.
#[allow(clippy::too_many_arguments)]
async fn step(
    client: &Client,
    namespace: &str,
    key: &str,
    op: Op,
    held: &mut Option<Held>,
    rng: &mut Rng,
    seed: &mut u64,
    max_size: u64,
) -> Result<u64, Failure> {
    match op {
        Op::Put | Op::PutWriteBack => {
            *seed += 1;
            // Mostly small, some up to the largest.
            let len = if rng.below(4) == 0 {
                1 + rng.below(max_size) as usize
            } else {
                1 + rng.below(max_size.min(64 << 10)) as usize
            };
            let durability = if op == Op::Put {
                Durability::Durable
            } else {
                Durability::WriteBack
            };
            let options = PutOptions {
                durability,
                ..PutOptions::default()
            };
            let meta = client.put(namespace, key, pattern(len, *seed), options).await?;
            *held = Some(Held {
                version: meta.version,
                seed: *seed,
                len,
            });
            Ok(0)
        }
        Op::Fetch => {
            let expected = held.expect("fetches only held keys");
            let shard = client.fetch(namespace, key).await?;
            check(&expected, shard.meta.version, &shard.data)?;
            Ok(shard.data.len() as u64)
        }
        Op::View => {
            let expected = held.expect("views only held keys");
            let view = client.fetch_view(namespace, key, None).await?;
            let bytes = view.to_vec()?;
            check(&expected, view.meta().version, &bytes)?;
            Ok(bytes.len() as u64)
        }
        Op::Prefetch => {
            let item = PrefetchItem {
                key: shardd_client::protocol::Key::new(key).map_err(ClientError::from)?,
                order: 0,
                deadline_unix_ms: None,
            };
            client.prefetch(namespace, vec![item]).await?;
            Ok(0)
        }
        Op::Evict => {
            client.evict(namespace, &[key], EvictMode::Demote).await?;
            Ok(0)
        }
        Op::Delete => {
            client.delete(namespace, key, None).await?;
            *held = None;
            Ok(0)
        }
    }
}

fn check(expected: &Held, version: u64, bytes: &[u8]) -> Result<(), Failure> {
    if version != expected.version {
        return Err(Failure::Wrong(format!(
            "version {version}, expected {}",
            expected.version
        )));
    }
    if bytes != pattern(expected.len, expected.seed).as_slice() {
        return Err(Failure::Wrong(format!(
            "{} bytes that are not the {} bytes put as version {version}",
            bytes.len(),
            expected.len
        )));
    }
    Ok(())
}

/// A name for an error the daemon did not answer with a status.
fn client_error_kind(e: &ClientError) -> String {
    let debug = format!("{e:?}");
    let variant = debug.split(['{', '(', ' ']).next().unwrap_or("client");
    format!("client_{}", variant.to_lowercase())
}

/// The largest anonymous resident memory of `pid` seen every half second
/// until `deadline`.
async fn sample_memory(pid: Option<u32>, deadline: Instant) -> Option<u64> {
    let pid = pid?;
    let mut peak = None;
    while Instant::now() < deadline {
        if let Some(kib) = proc_status_kib(pid, "RssAnon:") {
            peak = peak.max(Some(kib * 1024));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    peak
}

/// A `kB` figure of `/proc/PID/status`.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// The process at the other end of the Unix socket at `path`.
fn peer_pid(path: &str) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let stream = std::os::unix::net::UnixStream::connect(path).ok()?;
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a `ucred` of `len` bytes, both live locals;
    // the descriptor is open for the whole call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0 && cred.pid > 0).then_some(cred.pid as u32)
}

fn table(report: &SoakReport) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "soak of {}: {} clients ({} over TCP) for {:.0} s, every byte read checked ({} checked)\n",
        report.server,
        report.clients,
        report.tcp_clients,
        report.seconds,
        show::bytes(report.bytes_checked)
    );
    let _ = writeln!(
        out,
        "{:<16} {:>10} {:>10} {:>10} {:>10}",
        "OP", "COUNT", "OPS/S", "P50 us", "P99 us"
    );
    for row in &report.ops {
        let _ = writeln!(
            out,
            "{:<16} {:>10} {:>10.0} {:>10.0} {:>10.0}",
            row.op, row.count, row.ops_per_sec, row.p50_us, row.p99_us
        );
    }
    let memory = |bytes: Option<u64>| bytes.map_or_else(|| "unknown".to_string(), show::bytes);
    let _ = writeln!(
        out,
        "daemon memory: peak resident {} (arena included), peak heap and stacks {}",
        memory(report.peak_rss_bytes),
        memory(report.peak_anon_bytes)
    );
    let _ = writeln!(out, "busy (views the arena could not hold then): {}", report.busy);
    if report.errors.is_empty() {
        out.push_str("unexpected errors: none\n");
    } else {
        for (kind, n) in &report.errors {
            let example = report.error_examples.get(kind).map_or("", String::as_str);
            let _ = writeln!(out, "unexpected errors: {n} {kind} (first: {example})");
        }
    }
    out
}
