//! `shardctl bench`: benchmarks of a running daemon, each printed beside a
//! baseline measured in the same run.
//!
//! * [`cold`]: durable puts and cold fetches (data on the drive), beside fio.
//! * [`files`]: put, get, import and export of files, beside the daemon's
//!   own puts and fetches of shards of the same sizes.
//! * [`hot`]: fetches of shards in the pinned arena over zero-copy Unix,
//!   copying Unix and TCP, beside memcpy and iperf3; and 4 KiB fetches
//!   (latency and ops/s) beside redis-benchmark.
//! * [`restart`]: a daemon of its own restarted cold and with a warm arena:
//!   time to the first answer, and the first pass over the shards after it.
//! * [`soak`]: sustained mixed load from many clients over Unix and TCP,
//!   every byte read checked; ops/s, latency, errors, the daemon's memory.
//! * [`train`]: a simulated training loop over one or more daemons (one
//!   per node): stall with and without prefetch, and gather throughput.
//! * [`baselines`]: running fio, iperf3, redis-benchmark and a memcpy loop.

pub mod baselines;
pub mod cold;
pub mod files;
pub mod hot;
pub mod restart;
pub mod soak;
pub mod train;

use clap::Subcommand;
use shardd_client::ClientOptions;

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Durable put and cold fetch throughput, beside fio.
    Cold(cold::ColdArgs),
    /// Files moved as shardctl put, get, import and export move them,
    /// beside puts and fetches of shards of the same sizes.
    Files(files::FilesArgs),
    /// Hot fetch throughput and small-fetch latency, beside memcpy, iperf3
    /// and redis-benchmark.
    Hot(hot::HotArgs),
    /// Restarts of a daemon it starts itself, cold and with a warm arena:
    /// time to the first answer and to fetch every shard once after it.
    Restart(restart::RestartArgs),
    /// Sustained mixed load from many clients, every byte read checked:
    /// ops/s and latency per operation, errors, the daemon's peak memory.
    Soak(soak::SoakArgs),
    /// A simulated training loop over one or more daemons: step time and
    /// stall, with or without prefetch.
    Train(train::TrainArgs),
}

/// Runs a benchmark against the daemon at `endpoint`; every connection it
/// opens starts from `base` (the key TCP connections authenticate with).
pub async fn run(endpoint: &str, base: &ClientOptions, command: &BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Cold(args) => cold::run(endpoint, base, args).await,
        BenchCommand::Files(args) => files::run(endpoint, base, args).await,
        BenchCommand::Hot(args) => hot::run(endpoint, base, args).await,
        BenchCommand::Restart(args) => restart::run(args).await,
        BenchCommand::Soak(args) => soak::run(endpoint, base, args).await,
        BenchCommand::Train(args) => train::run(endpoint, base, args).await,
    }
}

/// Deterministic, incompressible-looking bytes: an xorshift stream from
/// `seed`. Used by the benchmark and by the tests, which regenerate the
/// bytes they expect from the seed.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Deletes the benchmark's shards `keys` of `namespace`; keys already gone
/// are fine.
pub async fn delete_keys(
    client: &shardd_client::Client,
    namespace: &str,
    keys: impl IntoIterator<Item = String>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    for key in keys {
        match client.delete(namespace, &key, None).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e).context("remove benchmark shards"),
        }
    }
    Ok(())
}

/// The median (mean of the middle two for an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The `q` quantile (0 to 1) of `sorted` values.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 0.5), 51.0);
        assert_eq!(percentile(&sorted, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn pattern_is_exact_length() {
        assert_eq!(pattern(10, 1).len(), 10);
        assert_ne!(pattern(64, 1)[..32], pattern(64, 1)[32..]);
        assert_ne!(pattern(64, 1), pattern(64, 2));
        assert_eq!(pattern(64, 3), pattern(64, 3));
    }
}
