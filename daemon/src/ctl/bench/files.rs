//! `shardctl bench files`: moving files as `shardctl` does (`put` of a
//! file, `get` into a file, `import` and `export` of a `.safetensors`
//! file), beside the same daemon's durable put and cold fetch of shards of
//! the same sizes and concurrency, measured in the same run as
//! `bench cold` measures them. Target: at least 0.8x of those.
//!
//! Each run writes a file of `--size` bytes and a `.safetensors` file of
//! `--tensors` f32 tensors of the same total into `--dir` (before the
//! clock starts: their pages are cached, as a file just written or read
//! is), then times, interleaved with the baselines:
//!
//! * put of the file (one shard) against a put of a shard of that size;
//! * get of it, demoted from the arena first, into a new file, against a
//!   cold fetch of a shard of that size;
//! * import of the `.safetensors` file against puts of its tensors' size
//!   with as many in flight as an import runs;
//! * export of the tensors, demoted first, against cold fetches of them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use serde::Serialize;
use shardd_client::files::{self, Output};
use shardd_client::{Client, EvictMode, PutOptions};

use super::cold::{cleanup, demote, fetch_phase, put_phase};
use super::{median, pattern};
use crate::config::units::parse_size;
use crate::ctl::show;

/// Puts an import runs at once (its baseline runs as many).
const IMPORT_CONCURRENCY: usize = 4;

/// Options of `shardctl bench files`.
#[derive(Debug, Args)]
pub struct FilesArgs {
    /// Bytes of the file, and of the `.safetensors` file's tensors.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub size: u64,
    /// Tensors in the `.safetensors` file.
    #[arg(long, default_value_t = 8)]
    pub tensors: u64,
    /// Runs; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Directory for the files (default: the current directory).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Namespace for the benchmark's shards (removed afterwards).
    #[arg(long, default_value = "shardctl-bench-files")]
    pub namespace: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One operation beside its baseline, medians in bytes per second.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// What was moved.
    pub operation: String,
    /// Its rate.
    pub bytes_per_sec: f64,
    /// The baseline's.
    pub baseline_bytes_per_sec: f64,
    /// What the baseline is.
    pub baseline: String,
    /// rate / baseline.
    pub ratio: f64,
}

/// The report.
#[derive(Clone, Debug, Serialize)]
pub struct FilesReport {
    /// Daemon version.
    pub server: String,
    /// Bytes per file.
    pub size: u64,
    /// Runs.
    pub runs: usize,
    /// Per operation.
    pub rows: Vec<Row>,
}

/// Samples of one row.
#[derive(Default)]
struct Samples {
    own: Vec<f64>,
    baseline: Vec<f64>,
}

/// Runs the benchmark and prints the report.
pub async fn run(endpoint: &str, base: &shardd_client::ClientOptions, args: &FilesArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    anyhow::ensure!(
        args.tensors > 0 && args.size >= args.tensors * 4,
        "--size must hold --tensors f32 tensors"
    );
    let client = Client::connect_with(endpoint, base.clone()).await?;
    let server = client.server().server.clone();
    let ns = args.namespace.as_str();
    let tensor_bytes = args.size / args.tensors / 4 * 4;
    let dir = tempfile::Builder::new()
        .prefix(".shardctl-bench-files.")
        .tempdir_in(&args.dir)
        .with_context(|| format!("make a directory in {}", args.dir.display()))?;
    let file = dir.path().join("file.bin");
    let model = dir.path().join("model.safetensors");
    let copy = dir.path().join("copy.bin");
    let exported = dir.path().join("exported.safetensors");
    let data = Bytes::from(pattern(args.size as usize, 1));
    std::fs::write(&file, &data).with_context(|| format!("write {}", file.display()))?;
    write_safetensors(&model, args.tensors, tensor_bytes)?;

    let mut rows: Vec<Samples> = (0..4).map(|_| Samples::default()).collect();
    for run in 0..args.runs {
        // A file, one shard.
        let clients = std::slice::from_ref(&client);
        rows[0]
            .baseline
            .push(put_phase(clients, ns, args.size, 1, 1, &data).await?);
        demote(&client, ns, args.size, 1).await?;
        rows[1].baseline.push(fetch_phase(clients, ns, args.size, 1, 1).await?);
        cleanup(&client, ns, args.size, 1).await?;

        let start = Instant::now();
        files::put_file(&client, ns, "file", &file, PutOptions::default(), None).await?;
        rows[0].own.push(args.size as f64 / start.elapsed().as_secs_f64());
        client.evict(ns, &["file"], EvictMode::Demote).await?;
        let start = Instant::now();
        files::get_file(&client, ns, "file", Output::File(copy.clone()), None).await?;
        rows[1].own.push(args.size as f64 / start.elapsed().as_secs_f64());
        anyhow::ensure!(same_file(&file, &copy)?, "the file read back differs from the one put");
        client.delete(ns, "file", None).await?;

        // A .safetensors file: tensors of one size, puts in flight.
        let data = Bytes::from(pattern(tensor_bytes as usize, 2));
        rows[2]
            .baseline
            .push(put_phase(clients, ns, tensor_bytes, args.tensors, IMPORT_CONCURRENCY, &data).await?);
        demote(&client, ns, tensor_bytes, args.tensors).await?;
        rows[3]
            .baseline
            .push(fetch_phase(clients, ns, tensor_bytes, args.tensors, IMPORT_CONCURRENCY).await?);
        cleanup(&client, ns, tensor_bytes, args.tensors).await?;

        let total = (tensor_bytes * args.tensors) as f64;
        let start = Instant::now();
        files::import_safetensors(&client, &model, ns, "model/", None).await?;
        rows[2].own.push(total / start.elapsed().as_secs_f64());
        let keys: Vec<String> = (0..args.tensors).map(|i| format!("model/t{i}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        client.evict(ns, &refs, EvictMode::Demote).await?;
        let start = Instant::now();
        let written = files::export_safetensors(&client, ns, "model/", None, &exported, None).await?;
        rows[3].own.push(total / start.elapsed().as_secs_f64());
        anyhow::ensure!(
            written.original_header && same_file(&model, &exported)?,
            "the exported file differs from the one imported"
        );
        for key in keys
            .iter()
            .chain(std::iter::once(&format!("model/{}", files::HEADER_KEY)))
        {
            client.delete(ns, key, None).await?;
        }
        if !args.json {
            eprintln!(
                "run {}: put {:.2}/{:.2} GB/s, get {:.2}/{:.2}, import {:.2}/{:.2}, export {:.2}/{:.2} (file/baseline)",
                run + 1,
                rows[0].own[run] / 1e9,
                rows[0].baseline[run] / 1e9,
                rows[1].own[run] / 1e9,
                rows[1].baseline[run] / 1e9,
                rows[2].own[run] / 1e9,
                rows[2].baseline[run] / 1e9,
                rows[3].own[run] / 1e9,
                rows[3].baseline[run] / 1e9
            );
        }
    }
    let size = show::bytes(args.size);
    let tensor = show::bytes(tensor_bytes);
    let names = [
        (
            format!("put of a {size} file"),
            format!("durable put of a {size} shard"),
        ),
        (
            format!("get of a {size} shard (from the drive) into a file"),
            format!("cold fetch of a {size} shard"),
        ),
        (
            format!("import of {} tensors of {tensor}", args.tensors),
            format!("durable puts of {tensor} shards, {IMPORT_CONCURRENCY} at once"),
        ),
        (
            format!("export of {} tensors of {tensor} (from the drive)", args.tensors),
            format!("cold fetches of {tensor} shards, {IMPORT_CONCURRENCY} at once"),
        ),
    ];
    let rows = names
        .into_iter()
        .zip(rows)
        .map(|((operation, baseline), samples)| {
            let own = median(samples.own);
            let base = median(samples.baseline);
            Row {
                operation,
                bytes_per_sec: own,
                baseline_bytes_per_sec: base,
                baseline,
                ratio: own / base,
            }
        })
        .collect();
    let report = FilesReport {
        server,
        size: args.size,
        runs: args.runs,
        rows,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{}, medians of {} runs; GB/s = 10^9 bytes per second; target: 0.80x or more",
            report.server, report.runs
        );
        for row in &report.rows {
            println!(
                "{:<52} {:>6.2} GB/s   {:<48} {:>6.2} GB/s   {:.2}x",
                row.operation,
                row.bytes_per_sec / 1e9,
                row.baseline,
                row.baseline_bytes_per_sec / 1e9,
                row.ratio
            );
        }
    }
    Ok(())
}

/// Writes a `.safetensors` file of `count` f32 tensors `t0`, `t1`, ... of
/// `bytes` each, in the layout the `safetensors` crate writes.
fn write_safetensors(path: &Path, count: u64, bytes: u64) -> anyhow::Result<()> {
    let mut header = serde_json::Map::new();
    for i in 0..count {
        header.insert(
            format!("t{i}"),
            serde_json::json!({
                "dtype": "F32",
                "shape": [bytes / 4],
                "data_offsets": [i * bytes, (i + 1) * bytes],
            }),
        );
    }
    let mut json = serde_json::to_vec(&header)?;
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out =
        std::io::BufWriter::new(std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?);
    use std::io::Write;
    out.write_all(&(json.len() as u64).to_le_bytes())?;
    out.write_all(&json)?;
    for i in 0..count {
        out.write_all(&pattern(bytes as usize, 10 + i))?;
    }
    out.flush()?;
    Ok(())
}

/// Whether two files hold the same bytes.
fn same_file(a: &Path, b: &Path) -> anyhow::Result<bool> {
    use std::io::Read;
    let (mut a, mut b) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    if a.metadata()?.len() != b.metadata()?.len() {
        return Ok(false);
    }
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = a.read(&mut x)?;
        if n == 0 {
            return Ok(true);
        }
        b.read_exact(&mut y[..n])?;
        if x[..n] != y[..n] {
            return Ok(false);
        }
    }
}
