//! `kill -9` in the middle of a stream of durable puts, again and again on
//! one data directory: after each restart every acknowledged shard is
//! present and intact, nothing half-written is visible, no temp files
//! remain, and the directory holds exactly one file per shard (no old
//! versions or interrupted puts pile up).
//!
//! 100 cycles by default, split over the I/O engines;
//! `SHARDD_CRASH_CYCLES=N` for more (1,000 for a long run).

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardd::ctl::bench::pattern;
use shardd_client::{Client, PutOptions};
use support::{Process, engines, files_under};

/// Keys each writer cycles through, so the directory stays the same size
/// however many cycles run.
const KEYS_PER_WRITER: u64 = 16;
const WRITERS: u64 = 4;

fn size_of(seed: u64) -> usize {
    // 1 KiB .. ~1 MiB, mixed.
    1024 + (seed.wrapping_mul(2_654_435_761) % (1 << 20)) as usize
}

/// What was acknowledged: key -> (version, seed of the bytes).
type Acked = Arc<Mutex<BTreeMap<String, (u64, u64)>>>;

/// Runs puts from several tasks until the daemon dies; records each
/// acknowledged one in `acked`. Seeds start at `first_seed`, and each
/// writer's keys at its `first_key`-th.
async fn put_until_killed(endpoint: String, acked: Acked, first_seed: u64, first_key: u64) {
    let client = Client::connect(&endpoint).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        let client = client.clone();
        let acked = acked.clone();
        tasks.spawn(async move {
            for n in 0.. {
                let seed = first_seed + writer * 1_000_000 + n;
                // Every third put rewrites one of a few keys all writers share,
                // with a version of its own; the rest let the daemon choose.
                let (key, version) = if n % 3 == 0 {
                    (format!("hot{}", n % 4), Some(seed))
                } else {
                    (format!("w{writer}/{}", (first_key + n) % KEYS_PER_WRITER), None)
                };
                let options = PutOptions {
                    version,
                    ..PutOptions::default()
                };
                match client.put("job", &key, pattern(size_of(seed), seed), options).await {
                    Ok(meta) => {
                        let mut acked = acked.lock().unwrap();
                        // Two writers' puts of a hot key may be answered out of order.
                        if acked.get(&key).is_none_or(|(v, _)| *v < meta.version) {
                            acked.insert(key, (meta.version, seed));
                        }
                    }
                    Err(e) if e.status() == Some(shardd_client::Status::VersionConflict) => {}
                    Err(_) => return, // the daemon is gone
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Checks a restarted daemon against what was acknowledged before it died.
async fn check(daemon: &Process, acked: &BTreeMap<String, (u64, u64)>, what: &str) {
    let leftovers = std::fs::read_dir(daemon.data.join("tmp")).unwrap().count();
    assert_eq!(leftovers, 0, "{what}: temp files of interrupted puts are removed");
    let client = Client::connect(&daemon.endpoint()).await.unwrap();
    let listed = client.list("job", "").await.unwrap();
    for (key, (version, _)) in acked {
        assert!(
            listed.iter().any(|meta| meta.key.as_str() == key),
            "{what}: acknowledged {key} v{version} is gone"
        );
    }
    // Every shard that is visible, acknowledged or not, is whole (the
    // client verifies each fetch's CRC32C end to end), and it is the only
    // file of its key.
    for meta in &listed {
        let key = meta.key.as_str();
        let shard = client
            .fetch("job", key)
            .await
            .unwrap_or_else(|e| panic!("{what}: {key} v{} is listed but unreadable: {e}", meta.version));
        let Some((version, seed)) = acked.get(key) else {
            continue;
        };
        // A newer, unacknowledged version may have landed.
        assert!(shard.meta.version >= *version, "{what}: {key} went back in time");
        if shard.meta.version == *version {
            assert!(
                shard.data == pattern(size_of(*seed), *seed),
                "{what}: {key} v{version} corrupt"
            );
        }
    }
    let shard_files = shard_files(&daemon.data);
    assert_eq!(
        shard_files,
        listed.len(),
        "{what}: {shard_files} shard files for {} shards",
        listed.len()
    );
    let status = client.status().await.unwrap();
    assert_eq!(status.quarantined, 0, "{what}: nothing half-written was found");
}

fn shard_files(data: &Path) -> usize {
    files_under(&data.join("shards"))
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "shard"))
        .count()
}

#[test]
fn acknowledged_puts_survive_kill_9() {
    let cycles: u64 = std::env::var("SHARDD_CRASH_CYCLES").map_or(100, |n| n.parse().expect("SHARDD_CRASH_CYCLES"));
    let runtime = support::runtime();
    let engines = engines();
    let per_engine = cycles.div_ceil(engines.len() as u64);
    for engine in engines {
        let dir = tempfile::tempdir().unwrap();
        let acked: Acked = Arc::default();
        let mut acknowledged = 0;
        for cycle in 0..per_engine {
            let mut daemon = Process::start(dir.path(), engine);
            let before = acked.lock().unwrap().clone();
            runtime.block_on(check(&daemon, &before, &format!("{engine} cycle {cycle}")));
            let stream = runtime.spawn(put_until_killed(
                daemon.endpoint(),
                acked.clone(),
                cycle << 32,
                cycle * 5,
            ));
            // Killed once a few more puts are acknowledged (the drive's speed
            // varies too much for a fixed time), and a little after that, at
            // a different moment in each cycle.
            let kill_after = 1 + (cycle * 7) % 24;
            let answered = |acked: &Acked| {
                let acked = acked.lock().unwrap();
                acked.iter().filter(|(k, v)| before.get(*k) != Some(v)).count() as u64
            };
            let deadline = Instant::now() + Duration::from_secs(60);
            while answered(&acked) < kill_after && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_micros(1_000 * (cycle % 11)));
            daemon.kill9();
            runtime.block_on(stream).unwrap();
            let new = answered(&acked);
            assert!(
                new >= kill_after,
                "{engine} cycle {cycle}: only {new} puts acknowledged in a minute"
            );
            acknowledged += new;
        }
        let daemon = Process::start(dir.path(), engine);
        let acked = acked.lock().unwrap().clone();
        runtime.block_on(check(&daemon, &acked, &format!("{engine} after {per_engine} kills")));
        eprintln!(
            "{engine}: {per_engine} kills, {acknowledged} new versions acknowledged between them, \
             all intact; {} shard files for {} keys",
            shard_files(&daemon.data),
            acked.len()
        );
    }
}

/// Write-back shards acknowledged right before SIGTERM reach the drive
/// before the daemon exits.
#[test]
fn sigterm_flushes_write_back_shards_before_exiting() {
    let runtime = support::runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Process::start(dir.path(), "auto");
    let endpoint = daemon.endpoint();
    // Within the write-back budget (half of the test daemons' 64 MiB arena).
    let sizes = [12 << 20, 10 << 20, 8 << 20, 1 << 20];
    runtime.block_on(async {
        let client = Client::connect(&endpoint).await.unwrap();
        for (i, size) in sizes.iter().enumerate() {
            let options = PutOptions {
                durability: shardd_client::Durability::WriteBack,
                ..PutOptions::default()
            };
            client
                .put("job", &format!("wb{i}"), pattern(*size, i as u64), options)
                .await
                .unwrap();
        }
    });
    assert!(daemon.terminate().success());
    let daemon = Process::start(dir.path(), "auto");
    runtime.block_on(async {
        let client = Client::connect(&daemon.endpoint()).await.unwrap();
        for (i, size) in sizes.iter().enumerate() {
            let shard = client
                .fetch("job", &format!("wb{i}"))
                .await
                .unwrap_or_else(|e| panic!("wb{i}: {e}"));
            assert!(shard.data == pattern(*size, i as u64), "wb{i}");
        }
    });
}
