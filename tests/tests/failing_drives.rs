//! A drive that fails while the daemon serves: two data directories, each
//! on its own ext4 image, and one of them cut (`EXT4_IOC_SHUTDOWN`: every
//! later I/O fails with EIO, as when a drive drops off its bus). Fetches of
//! its shards fail promptly with `io error`, the other directory's shards
//! and the arena's copies keep being served, new puts go to the other
//! directory, and `status`, `/readyz` and the metrics name the failed one;
//! write-back shards whose flush failed with it reach the other.
//!
//! Needs root (loop devices); skips, saying so, elsewhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shardd::config::{Config, Listen, Overrides};
use shardd::ctl::bench::pattern;
use shardd::io::EngineKind;
use shardd_client::{Client, EvictMode, PutOptions, Status};
use shardd_tests::ext4::Ext4Image;
use shardd_tests::{engines, files_under, http_get, sample, skipped};

const NAMESPACE: &str = "job";

fn shard_files(data: &Path) -> usize {
    files_under(&data.join("shards")).len()
}

async fn start(dir: &Path, data_dirs: Vec<PathBuf>, engine: EngineKind) -> shardd::Daemon {
    let loopback = Listen::At(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let config = Config::from_toml(
        "[storage]\nmin_free = 0\n[arena]\nsize = \"64MiB\"\n",
        Overrides {
            data_dirs,
            socket: Some(Listen::At(dir.join("shardd.sock"))),
            tcp: Some(Listen::Off),
            http: Some(loopback),
            io_engine: Some(engine),
            ..Overrides::default()
        },
    )
    .unwrap();
    shardd::Daemon::start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_drive_fails_its_shards_promptly_while_the_other_drive_and_the_arena_serve() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let (failing, healthy) = match (
            Ext4Image::create(dir.path(), "nvme0", "128M"),
            Ext4Image::create(dir.path(), "nvme1", "128M"),
        ) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                return skipped(format!("failing drive test: cannot mount an ext4 image ({e})"));
            }
        };
        let (dead, alive) = (failing.path().join("data"), healthy.path().join("data"));
        let daemon = start(dir.path(), vec![dead.clone(), alive.clone()], engine).await;
        let http = format!("http://{}", daemon.http_addr().unwrap());
        let client = Client::connect(&format!("unix://{}", dir.path().join("shardd.sock").display()))
            .await
            .unwrap();

        // Shards over both drives; which drive took each is seen by its files.
        let mut on_dead = BTreeMap::new();
        let mut on_alive = BTreeMap::new();
        for i in 0..24u64 {
            let key = format!("k{i}");
            let data = pattern(64 * 1024 + i as usize * 100, i);
            let before = shard_files(&dead);
            client
                .put(NAMESPACE, &key, data.clone(), PutOptions::default())
                .await
                .unwrap();
            if shard_files(&dead) > before {
                on_dead.insert(key, data);
            } else {
                on_alive.insert(key, data);
            }
        }
        assert!(
            on_dead.len() >= 2 && !on_alive.is_empty(),
            "{engine:?}: the shards spread over both drives"
        );
        // Only the drives hold them, but for one shard of the failing drive
        // that stays in the arena.
        let keys: Vec<&str> = on_dead.keys().chain(on_alive.keys()).map(String::as_str).collect();
        client.evict(NAMESPACE, &keys, EvictMode::Demote).await.unwrap();
        let (resident, resident_data) = on_dead.pop_first().unwrap();
        client.fetch(NAMESPACE, &resident).await.unwrap();

        failing.cut();

        for key in on_dead.keys() {
            let fetched = tokio::time::timeout(Duration::from_secs(30), client.fetch(NAMESPACE, key))
                .await
                .unwrap_or_else(|_| panic!("{engine:?}: a fetch of {key} from the failed drive hangs"));
            let e = fetched.expect_err("a shard on the failed drive cannot be read");
            assert_eq!(e.status(), Some(Status::Io), "{engine:?}: {key}: {e}");
        }
        for (key, data) in &on_alive {
            let shard = client.fetch(NAMESPACE, key).await.unwrap();
            assert!(shard.data == *data, "{engine:?}: {key} from the healthy drive");
        }
        let shard = client.fetch(NAMESPACE, &resident).await.unwrap();
        assert!(
            shard.data == resident_data,
            "{engine:?}: the arena keeps serving {resident}"
        );

        // The daemon says which drive failed, in status, /readyz and metrics
        // (once its probe of the drive has failed too).
        let mut status = client.status().await.unwrap();
        for _ in 0..100 {
            if status.data_dirs[0].failed.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            status = client.status().await.unwrap();
        }
        let failure = status.data_dirs[0]
            .failed
            .clone()
            .expect("status names the failed data dir");
        assert!(failure.contains("Input/output error"), "{failure}");
        assert_eq!(status.data_dirs[1].failed, None);
        let dead_path = status.data_dirs[0].path.clone();
        let (code, body) = http_get(&format!("{http}/readyz")).await;
        assert_eq!(code, 503, "{body}");
        assert!(body.contains(&format!("data dir {dead_path} failed")), "{body}");
        let (_, metrics) = http_get(&format!("{http}/metrics")).await;
        assert_eq!(
            sample(&metrics, &format!("shardd_data_dir_failed{{dir=\"{dead_path}\"}}")),
            Some(1.0)
        );
        assert!(
            sample(
                &metrics,
                &format!("shardd_io_errors_total{{dir=\"{dead_path}\",op=\"read\"}}")
            )
            .is_some()
        );

        // New shards, and new versions of the failed drive's, go to the other.
        let before = shard_files(&alive);
        for i in 0..8u64 {
            let data = pattern(50_000, 100 + i);
            client
                .put(NAMESPACE, &format!("new{i}"), data.clone(), PutOptions::default())
                .await
                .unwrap();
            assert!(client.fetch(NAMESPACE, &format!("new{i}")).await.unwrap().data == data);
        }
        let (key, _) = on_dead.first_key_value().unwrap();
        client
            .put(NAMESPACE, key, pattern(1000, 7), PutOptions::default())
            .await
            .unwrap();
        assert_eq!(
            shard_files(&alive),
            before + 9,
            "{engine:?}: new shards went to the healthy drive"
        );
        assert!(client.fetch(NAMESPACE, key).await.unwrap().data == pattern(1000, 7));

        daemon.stop().await.unwrap();
    }
}

/// Write-back puts acknowledged just after a drive failed, before the
/// daemon knows: the flushes that went to the dead drive fail, are reported,
/// and are tried again, which writes them to the other drive. Nothing
/// acknowledged is lost, also across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_shards_whose_flush_failed_with_their_drive_reach_the_other() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let (mut failing, healthy) = match (
            Ext4Image::create(dir.path(), "nvme0", "128M"),
            Ext4Image::create(dir.path(), "nvme1", "128M"),
        ) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                return skipped(format!("failing drive test: cannot mount an ext4 image ({e})"));
            }
        };
        let dirs = vec![failing.path().join("data"), healthy.path().join("data")];
        let daemon = start(dir.path(), dirs.clone(), engine).await;
        let http = format!("http://{}", daemon.http_addr().unwrap());
        let endpoint = format!("unix://{}", dir.path().join("shardd.sock").display());
        let client = Client::connect(&endpoint).await.unwrap();
        let write_back = PutOptions {
            durability: shardd_client::Durability::WriteBack,
            ..PutOptions::default()
        };

        failing.cut();
        // Keys spread over both drives: some of these prefer the dead one.
        let shards: Vec<(String, Vec<u8>)> = (0..16u64)
            .map(|i| (format!("wb{i}"), pattern(100_000 + i as usize, 300 + i)))
            .collect();
        for (key, data) in &shards {
            client
                .put(NAMESPACE, key, data.clone(), write_back.clone())
                .await
                .unwrap();
        }
        // Every one reaches a drive: first try or later.
        let mut pending: Vec<&str> = shards.iter().map(|(k, _)| k.as_str()).collect();
        for _ in 0..300 {
            let mut still = Vec::new();
            for key in pending {
                let stat = client.stat(NAMESPACE, key).await.unwrap();
                if stat.cache.dirty || stat.cache.flush_error.is_some() {
                    still.push(key);
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(pending.is_empty(), "{engine:?}: never flushed: {pending:?}");
        let (_, metrics) = http_get(&format!("{http}/metrics")).await;
        let failures = sample(&metrics, "shardd_write_back_flush_failures_total").unwrap_or(0.0);
        let recovered = sample(&metrics, "shardd_write_back_flushes_recovered_total").unwrap_or(0.0);
        assert!(failures >= 1.0, "{engine:?}: no flush went to the dead drive first");
        assert_eq!(
            recovered, failures,
            "{engine:?}: each failed flush was written by a later try"
        );
        assert!(sample(&metrics, "shardd_write_back_flush_retries_total").unwrap_or(0.0) >= recovered);
        for (key, data) in &shards {
            assert!(client.fetch(NAMESPACE, key).await.unwrap().data == *data, "{key}");
        }
        drop(client);
        daemon.stop().await.unwrap();

        // The drive back (its journal replayed), and the daemon started on
        // both again: every shard is read from a drive.
        failing.remount();
        let daemon = start(dir.path(), dirs.clone(), engine).await;
        let client = Client::connect(&endpoint).await.unwrap();
        for (key, data) in &shards {
            assert!(
                client.fetch(NAMESPACE, key).await.unwrap().data == *data,
                "{key} after a restart"
            );
        }
        assert_eq!(
            client.status().await.unwrap().arena.unwrap().hits,
            0,
            "read from the drives"
        );
        drop(client);
        daemon.stop().await.unwrap();
    }
}

/// A full drive: puts answer `no space` and leave nothing behind, earlier
/// shards stay readable, and puts work again once there is room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_drive_refuses_puts_clearly_and_takes_them_again_when_space_returns() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let fs = match Ext4Image::create(dir.path(), "small", "48M") {
            Ok(fs) => fs,
            Err(e) => return skipped(format!("full drive test: cannot mount an ext4 image ({e})")),
        };
        let data = fs.path().join("data");
        let mut daemon = start(dir.path(), vec![data.clone()], engine).await;
        let endpoint = format!("unix://{}", dir.path().join("shardd.sock").display());
        let mut client = Client::connect(&endpoint).await.unwrap();
        let shard = |i: u64| pattern((1 << 20) + i as usize, i);

        let mut stored = Vec::new();
        let refusal = loop {
            let i = stored.len() as u64;
            match client
                .put(NAMESPACE, &format!("k{i}"), shard(i), PutOptions::default())
                .await
            {
                Ok(_) => stored.push(i),
                Err(e) => break e,
            }
            assert!(stored.len() < 100, "{engine:?}: a 48 MiB drive took 100 MiB");
        };
        assert_eq!(refusal.status(), Some(Status::NoSpace), "{engine:?}: {refusal}");
        assert!(refusal.to_string().contains("no data dir has room"), "{refusal}");
        assert!(stored.len() >= 20, "{engine:?}: only {} shards fit", stored.len());
        // Nothing of the refused put is left behind.
        assert_eq!(std::fs::read_dir(data.join("tmp")).unwrap().count(), 0);
        // A write-back put is refused as well rather than acknowledged from
        // memory with nowhere to go.
        let options = PutOptions {
            durability: shardd_client::Durability::WriteBack,
            ..PutOptions::default()
        };
        let write_back = client.put(NAMESPACE, "wb", shard(1000), options.clone()).await;
        let e = write_back.expect_err("a write-back put with no room on any drive is refused");
        assert_eq!(e.status(), Some(Status::NoSpace), "{engine:?}: {e}");

        // Earlier shards are read from the drive, whole.
        let keys: Vec<String> = stored.iter().map(|i| format!("k{i}")).collect();
        let names: Vec<&str> = keys.iter().map(String::as_str).collect();
        client.evict(NAMESPACE, &names, EvictMode::Demote).await.unwrap();
        for i in &stored {
            assert!(client.fetch(NAMESPACE, &format!("k{i}")).await.unwrap().data == shard(*i));
        }

        // Room again: puts work.
        for i in stored.drain(..4) {
            client.delete(NAMESPACE, &format!("k{i}"), None).await.unwrap();
        }
        client
            .put(NAMESPACE, "again", shard(500), PutOptions::default())
            .await
            .unwrap();
        client.put(NAMESPACE, "wb", shard(1000), options.clone()).await.unwrap();

        // And all of it is there after a restart.
        drop(client);
        daemon.stop().await.unwrap();
        daemon = start(dir.path(), vec![data.clone()], engine).await;
        client = Client::connect(&endpoint).await.unwrap();
        let mut expected: Vec<(String, u64)> = stored.iter().map(|i| (format!("k{i}"), *i)).collect();
        expected.extend([("again".to_string(), 500), ("wb".to_string(), 1000)]);
        for (key, i) in &expected {
            assert!(client.fetch(NAMESPACE, key).await.unwrap().data == shard(*i), "{key}");
        }

        // A write-back put acknowledged just before its drive fails: its
        // flush fails, which stat and fetch say, and it is never served as
        // if it were on a drive.
        fs.cut();
        client.put(NAMESPACE, "late", shard(2000), options).await.unwrap();
        let mut stat = client.stat(NAMESPACE, "late").await.unwrap();
        for _ in 0..200 {
            if stat.cache.flush_error.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            stat = client.stat(NAMESPACE, "late").await.unwrap();
        }
        let error = stat.cache.flush_error.expect("the stat says the flush failed");
        assert!(error.contains("Input/output error"), "{engine:?}: {error}");
        let err = client.fetch(NAMESPACE, "late").await.unwrap_err();
        assert_eq!(err.status(), Some(Status::Io), "{engine:?}: {err}");
        assert!(err.to_string().contains("write-back to the drive failed"), "{err}");
        daemon.stop().await.unwrap();
    }
}
