//! `kill -9` in the middle of a stream of durable puts: after a restart,
//! every acknowledged shard is present and intact, nothing half-written is
//! visible, and no temp files remain.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardd::ctl::bench::pattern;
use shardd_client::{Client, PutOptions};
use support::{Process, engines};

fn size_of(i: u64) -> usize {
    // 1 KiB .. ~3 MiB, mixed.
    1024 + (i.wrapping_mul(2_654_435_761) % (3 << 20)) as usize
}

/// Runs puts from several tasks until the daemon dies; returns what was acknowledged:
/// key -> (version, seed of the bytes).
async fn put_until_killed(endpoint: String, acked: Arc<Mutex<BTreeMap<String, (u64, u64)>>>) {
    let client = Client::connect(&endpoint).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..4u64 {
        let client = client.clone();
        let acked = acked.clone();
        tasks.spawn(async move {
            for n in 0.. {
                let i = worker * 1_000_000 + n;
                // Every third put rewrites one of a few hot keys with a new version.
                let (key, version) = if n % 3 == 0 {
                    (format!("hot{}", n % 4), Some(i + 1))
                } else {
                    (format!("w{worker}/{n}"), None)
                };
                let data = pattern(size_of(i), i);
                let options = PutOptions {
                    version,
                    ..PutOptions::default()
                };
                match client.put("job", &key, data, options).await {
                    Ok(meta) => {
                        acked.lock().unwrap().insert(key, (meta.version, i));
                    }
                    Err(e) if e.status() == Some(shardd_client::Status::VersionConflict) => {}
                    Err(_) => return, // the daemon is gone
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

#[test]
fn acknowledged_puts_survive_kill_9() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for engine in engines() {
        // Killed once this many puts are acknowledged (the drive's speed
        // varies too much for a fixed time), a little later in each round.
        for (round, kill_after) in [5usize, 20, 50].into_iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let mut daemon = Process::start(dir.path(), engine);
            let acked = Arc::new(Mutex::new(BTreeMap::new()));
            let stream = runtime.spawn(put_until_killed(daemon.endpoint(), acked.clone()));
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while acked.lock().unwrap().len() < kill_after && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            // Into the middle of the puts that follow.
            std::thread::sleep(Duration::from_millis(7 * round as u64 + 3));
            daemon.kill9();
            runtime.block_on(stream).unwrap();
            let acked = acked.lock().unwrap().clone();
            assert!(
                acked.len() >= kill_after,
                "{engine} round {round}: only {} puts acknowledged in a minute",
                acked.len()
            );
            eprintln!("{engine} round {round}: killed after {} acknowledged puts", acked.len());

            let daemon = Process::start(dir.path(), engine);
            let leftovers = std::fs::read_dir(daemon.data.join("tmp")).unwrap().count();
            assert_eq!(leftovers, 0, "{engine}: temp files of interrupted puts are removed");
            runtime.block_on(async {
                let client = Client::connect(&daemon.endpoint()).await.unwrap();
                for (key, (version, seed)) in &acked {
                    let shard = client.fetch("job", key).await.unwrap_or_else(|e| {
                        panic!("{engine} round {round}: acknowledged {key} v{version} is gone: {e}")
                    });
                    // A newer, unacknowledged version may have landed; it must be whole.
                    assert!(shard.meta.version >= *version, "{key} went back in time");
                    if shard.meta.version == *version {
                        assert!(shard.data == pattern(size_of(*seed), *seed), "{key} v{version} corrupt");
                    }
                }
                // Every shard that is visible, acknowledged or not, is whole
                // (the client verifies each fetch's CRC32C end to end).
                for meta in client.list("job", "").await.unwrap() {
                    client.fetch("job", meta.key.as_str()).await.unwrap();
                }
                let status = client.status().await.unwrap();
                assert_eq!(status.quarantined, 0, "{engine}: nothing half-written was found");
            });
        }
    }
}

/// Write-back shards acknowledged right before SIGTERM reach the drive
/// before the daemon exits.
#[test]
fn sigterm_flushes_write_back_shards_before_exiting() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
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
