//! The pinned-memory tier through the real daemon: hits and misses, one
//! load for concurrent fetches, shards larger than the arena, write-back,
//! prefetch, eviction policies, leases and zero-copy views.

use std::time::Duration;

use shardd_client::{Client, ClientError, ClientOptions, Durability, EvictMode, PrefetchItem, PutOptions, Status};
use shardd_protocol::{ArenaStatus, Key};
use shardd_tests::{TestDaemon, engines, eventually, http_get, pattern, sample};
use tokio::task::JoinSet;

const MIB: usize = 1 << 20;

async fn arena(client: &Client) -> ArenaStatus {
    client.status().await.unwrap().arena.expect("the daemon has an arena")
}

fn write_back() -> PutOptions {
    PutOptions {
        durability: Durability::WriteBack,
        ..PutOptions::default()
    }
}

/// Waits until `check` holds for the arena's status.
async fn wait_for(client: &Client, what: &str, check: impl Fn(&ArenaStatus) -> bool) {
    for _ in 0..500 {
        if check(&arena(client).await) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}: {:?}", arena(client).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_stay_resident_and_fetches_hit() {
    for engine in engines() {
        let mut daemon = TestDaemon::start(engine, "[arena]\nsize = \"32MiB\"").await;
        let client = daemon.client(false).await;
        let data = pattern(3 * MIB + 5, 1);
        client
            .put("job", "w", data.clone(), PutOptions::default())
            .await
            .unwrap();
        assert!(
            client.stat("job", "w").await.unwrap().cache.resident,
            "a put leaves its shard in the arena"
        );
        assert_eq!(client.fetch("job", "w").await.unwrap().data, data);
        let status = arena(&client).await;
        assert_eq!((status.hits, status.misses, status.loads), (1, 0, 0), "{status:?}");

        // Demoted: gone from the arena, still on the drive; the next fetch loads it once.
        let evicted = client.evict("job", &["w"], EvictMode::Demote).await.unwrap();
        assert_eq!(evicted.evicted, [Key::new("w").unwrap()]);
        assert!(!client.stat("job", "w").await.unwrap().cache.resident);
        let copying = Client::connect_with(
            &daemon.unix_endpoint(),
            ClientOptions {
                zero_copy: false,
                ..ClientOptions::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(copying.fetch("job", "w").await.unwrap().data, data);
        assert_eq!(client.fetch("job", "w").await.unwrap().data, data);
        let status = arena(&client).await;
        assert_eq!((status.hits, status.misses, status.loads), (2, 1, 1), "{status:?}");
        assert_eq!(status.demoted, 1);
        // A new version replaces the cached one at once.
        client
            .put("job", "w", vec![7u8; 100], PutOptions::default())
            .await
            .unwrap();
        assert_eq!(client.fetch("job", "w").await.unwrap().data, vec![7u8; 100]);
        daemon.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fetches_of_a_cold_shard_share_one_read() {
    for engine in engines() {
        let mut daemon = TestDaemon::start(engine, "[arena]\nsize = \"64MiB\"").await;
        let client = daemon.client(false).await;
        let data = pattern(24 * MIB + 7, 2);
        client
            .put("job", "cold", data.clone(), PutOptions::default())
            .await
            .unwrap();
        drop(client);
        daemon.restart().await; // nothing resident
        // Zero-copy views wait for the whole load; copying fetches (Unix and
        // TCP, whole and ranges across chunks) follow it chunk by chunk.
        let mut fetches = JoinSet::new();
        for i in 0..10usize {
            let client = match i % 3 {
                0 => daemon.client(true).await,
                zero_copy => Client::connect_with(
                    &daemon.unix_endpoint(),
                    ClientOptions {
                        zero_copy: zero_copy == 1,
                        ..ClientOptions::default()
                    },
                )
                .await
                .unwrap(),
            };
            let range = (i >= 5).then(|| (MIB as u64 * i as u64 + 4093, 3 * MIB as u64 + i as u64));
            fetches.spawn(async move {
                let got = match range {
                    Some((offset, len)) => client.fetch_range("job", "cold", offset, len).await.unwrap(),
                    None => client.fetch("job", "cold").await.unwrap(),
                };
                (range, got.data)
            });
        }
        while let Some(answer) = fetches.join_next().await {
            let (range, bytes) = answer.unwrap();
            let expected = match range {
                Some((offset, len)) => &data[offset as usize..(offset + len) as usize],
                None => &data[..],
            };
            assert!(bytes == expected, "{engine:?} {range:?}");
        }
        let status = arena(&daemon.client(false).await).await;
        assert_eq!(
            status.loads, 1,
            "{engine:?}: ten fetches, one read of the drive: {status:?}"
        );
        assert_eq!(status.hits + status.misses, 10);
        daemon.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_larger_than_the_arena_is_streamed_from_the_drive() {
    for engine in engines() {
        let mut daemon = TestDaemon::start(engine, "[arena]\nsize = \"8MiB\"").await;
        let client = daemon.client(false).await;
        let data = pattern(20 * MIB + 3, 3);
        client
            .put("job", "huge", data.clone(), PutOptions::default())
            .await
            .unwrap();
        assert!(!client.stat("job", "huge").await.unwrap().cache.resident);
        // Zero copy is impossible, the client falls back to the socket.
        let err = client.fetch_view("job", "huge", None).await.unwrap_err();
        assert_eq!(err.status(), Some(Status::TooLarge), "{err}");
        assert!(err.to_string().contains("larger than the arena"), "{err}");
        assert!(client.fetch("job", "huge").await.unwrap().data == data);
        let (buf, info) = client.fetch_into("job", "huge", None, vec![0u8; 21 * MIB]).await;
        assert_eq!(info.unwrap().len, data.len() as u64);
        assert!(buf[..data.len()] == data[..]);
        assert!(arena(&client).await.bypassed >= 2);
        daemon.stop().await;
    }
}

/// Bytes the daemon sent over its Unix socket.
async fn unix_bytes_out(daemon: &TestDaemon) -> f64 {
    let (_, text) = http_get(&format!("{}/metrics", daemon.http_url())).await;
    sample(
        &text,
        r#"shardd_transport_bytes_total{direction="out",transport="unix"}"#,
    )
    .unwrap_or(0.0)
}

/// A fetch into the caller's buffer of a large shard that is not in the
/// arena copies it out of the arena while it loads (one read of the
/// drive, nothing on the socket); a small one comes over the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_fetch_into_a_buffer_is_copied_out_of_the_arena_as_it_loads() {
    for engine in engines() {
        let mut daemon = TestDaemon::start(engine, "[arena]\nsize = \"64MiB\"").await;
        let client = daemon.client(false).await;
        assert!(client.zero_copy());
        let data = pattern(24 * MIB + 7, 8);
        client
            .put("job", "big", data.clone(), PutOptions::default())
            .await
            .unwrap();
        client
            .put("job", "small", data[..MIB].to_vec(), PutOptions::default())
            .await
            .unwrap();
        client.evict("job", &["big", "small"], EvictMode::Demote).await.unwrap();

        let (buf, info) = client.fetch_into("job", "big", None, vec![0u8; 25 * MIB]).await;
        let info = info.unwrap();
        assert_eq!(
            (info.offset, info.len, info.meta.len),
            (0, data.len() as u64, data.len() as u64)
        );
        assert!(buf[..data.len()] == data[..], "{engine:?}");
        assert_eq!(
            unix_bytes_out(&daemon).await,
            0.0,
            "{engine:?}: the bytes came through the arena"
        );
        // One fetch, however many pieces it was asked for in.
        let counts = |s: &ArenaStatus| (s.loads, s.misses, s.hits);
        let status = arena(&client).await;
        assert_eq!(counts(&status), (1, 1, 0), "{engine:?}: {status:?}");

        // A range, across chunks and pieces, of the shard cold again.
        client.evict("job", &["big"], EvictMode::Demote).await.unwrap();
        let range = shardd_client::ByteRange {
            offset: 3 * MIB as u64 + 5,
            len: 17 * MIB as u64 + 3,
        };
        let (buf, info) = client.fetch_into("job", "big", Some(range), vec![0u8; 18 * MIB]).await;
        let info = info.unwrap();
        assert_eq!((info.offset, info.len), (range.offset, range.len));
        let expected = &data[range.offset as usize..(range.offset + range.len) as usize];
        assert!(buf[..expected.len()] == *expected, "{engine:?}");
        assert_eq!(unix_bytes_out(&daemon).await, 0.0, "{engine:?}");
        let status = arena(&client).await;
        assert_eq!(counts(&status), (2, 2, 0), "{engine:?}: {status:?}");

        // A buffer too small is refused with the size needed, and a small
        // cold shard comes over the socket as it loads.
        client.evict("job", &["big"], EvictMode::Demote).await.unwrap();
        let (_, info) = client.fetch_into("job", "big", None, vec![0u8; 20 * MIB]).await;
        match info {
            Err(ClientError::BufferTooSmall { needed, capacity }) => {
                assert_eq!((needed, capacity), (data.len() as u64, 20 * MIB as u64))
            }
            other => panic!("{engine:?}: {other:?}"),
        }
        let (buf, info) = client.fetch_into("job", "small", None, vec![0u8; MIB]).await;
        assert_eq!(info.unwrap().len, MIB as u64);
        assert!(buf[..] == data[..MIB]);
        assert_eq!(unix_bytes_out(&daemon).await, MIB as f64, "{engine:?}");
        daemon.stop().await;
    }
}

/// A cold fetch into a buffer that the arena cannot place now (full of
/// leased shards) comes over the socket instead, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_fetch_into_a_buffer_comes_over_the_socket_when_the_arena_is_full() {
    for engine in engines() {
        // One client may pin the arena with views here.
        let config = "[arena]\nsize = \"16MiB\"\n[server]\nmax_lease_bytes = \"16MiB\"";
        let mut daemon = TestDaemon::start(engine, config).await;
        let client = daemon.client(false).await;
        let held = pattern(12 * MIB, 9);
        let cold = pattern(6 * MIB + 1, 10);
        client
            .put("job", "held", held.clone(), PutOptions::default())
            .await
            .unwrap();
        client
            .put("job", "cold", cold.clone(), PutOptions::default())
            .await
            .unwrap();
        client.evict("job", &["cold"], EvictMode::Demote).await.unwrap();
        let view = client.fetch_view("job", "held", None).await.unwrap();
        let (buf, info) = client.fetch_into("job", "cold", None, vec![0u8; 7 * MIB]).await;
        assert_eq!(info.unwrap().len, cold.len() as u64, "{engine:?}");
        assert!(buf[..cold.len()] == cold[..], "{engine:?}");
        assert_eq!(unix_bytes_out(&daemon).await, cold.len() as f64, "{engine:?}");
        assert_eq!(view.to_vec().unwrap(), held);
        drop(view);
        daemon.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_puts_are_served_at_once_and_reach_the_drive() {
    for engine in engines() {
        let mut daemon = TestDaemon::start(engine, "[arena]\nsize = \"32MiB\"").await;
        let client = daemon.client(false).await;
        let data = pattern(5 * MIB + 77, 4);
        let meta = client.put("job", "wb", data.clone(), write_back()).await.unwrap();
        assert_eq!(meta.crc32c, crc32c::crc32c(&data));
        assert_eq!(client.fetch("job", "wb").await.unwrap().data, data);
        wait_for(&client, "the flush", |a| a.dirty_bytes == 0).await;
        let stat = client.stat("job", "wb").await.unwrap();
        assert!(
            stat.cache.resident && !stat.cache.dirty && stat.cache.flush_error.is_none(),
            "{stat:?}"
        );
        assert_eq!(arena(&client).await.write_back_puts, 1);
        drop(client);
        daemon.restart().await;
        let client = daemon.client(false).await;
        let shard = client.fetch("job", "wb").await.unwrap();
        assert_eq!((shard.meta.version, shard.data == data), (1, true), "{engine:?}");
        daemon.stop().await;
    }
}

/// fdatasyncs of shard files so far, over all data dirs.
async fn syncs(daemon: &TestDaemon) -> f64 {
    let (_, text) = shardd_tests::http_get(&format!("{}/metrics", daemon.http_url())).await;
    text.lines()
        .filter(|l| l.starts_with("shardd_nvme_sync_duration_seconds_count"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Scratch puts are write-back puts whose writing is never synced: one
/// flushed from the arena and one written through (larger than the
/// write-back budget) add no fdatasync, where a write-back put's flush
/// does; a graceful restart keeps all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch_puts_reach_the_drive_without_a_sync_and_survive_a_graceful_restart() {
    for engine in engines() {
        let config = "[arena]\nsize = \"32MiB\"\nwrite_back_memory = \"4MiB\"";
        let mut daemon = TestDaemon::start(engine, config).await;
        let client = daemon.client(false).await;
        let scratch = PutOptions {
            durability: Durability::Scratch,
            ..PutOptions::default()
        };
        let small = pattern(3 * MIB + 5, 11);
        let large = pattern(6 * MIB + 1, 12);
        client.put("job", "swap", small.clone(), scratch.clone()).await.unwrap();
        // Acknowledged from memory (counted when acknowledged, so it does
        // not race the flush, which may already have run).
        assert_eq!(
            arena(&client).await.write_back_puts,
            1,
            "{engine:?}: acknowledged from memory"
        );
        wait_for(&client, "the scratch flush", |a| a.dirty_bytes == 0).await;
        client
            .put("job", "through", large.clone(), scratch.clone())
            .await
            .unwrap();
        assert_eq!(
            arena(&client).await.write_back_puts,
            1,
            "{engine:?}: the large one was written through"
        );
        // A new version replaces the flushed one in place; the replaced
        // file is removed after the flush, from tmp/ where it was swapped.
        let small = pattern(3 * MIB + 5, 13);
        client.put("job", "swap", small.clone(), scratch).await.unwrap();
        wait_for(&client, "the second scratch flush", |a| a.dirty_bytes == 0).await;
        let tmp = daemon.data_dir().join("tmp");
        assert!(
            eventually(Duration::from_secs(10), || shardd_tests::files_under(&tmp).is_empty()).await,
            "{engine:?}: the replaced file is removed: {:?}",
            shardd_tests::files_under(&tmp)
        );
        let shards = shardd_tests::files_under(&daemon.data_dir().join("shards"));
        assert_eq!(shards.len(), 2, "{engine:?}: one file per key: {shards:?}");
        assert_eq!(syncs(&daemon).await, 0.0, "{engine:?}: scratch puts are not synced");
        client.put("job", "wb", small.clone(), write_back()).await.unwrap();
        wait_for(&client, "the write-back flush", |a| a.dirty_bytes == 0).await;
        assert_eq!(syncs(&daemon).await, 1.0, "{engine:?}: a write-back flush is synced");
        drop(client);
        daemon.restart().await;
        let client = daemon.client(false).await;
        for (key, data) in [("swap", &small), ("through", &large), ("wb", &small)] {
            let shard = client.fetch("job", key).await.unwrap();
            assert!(shard.data == *data, "{engine:?}: {key} after the restart");
        }
        daemon.stop().await;
    }
}

/// Loads and flushes either copy through the daemon's chunk buffers
/// (`bounce_io = "on"`, the default where the arena has 4 KiB pages) or do
/// O_DIRECT on the arena itself ("off"); both give back the bytes put.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_and_flushes_give_the_same_bytes_through_bounce_buffers_and_in_place() {
    for bounce in ["on", "off"] {
        for engine in engines() {
            let config = format!("[arena]\nsize = \"32MiB\"\nbounce_io = \"{bounce}\"");
            let mut daemon = TestDaemon::start(engine, &config).await;
            let client = daemon.client(false).await;
            let data = pattern(5 * MIB + 77, 9);
            client.put("job", "wb", data.clone(), write_back()).await.unwrap();
            wait_for(&client, "the flush", |a| a.dirty_bytes == 0).await;
            drop(client);
            daemon.restart().await; // flushed to the drive, nothing resident
            let client = daemon.client(false).await;
            let shard = client.fetch("job", "wb").await.unwrap();
            assert!(
                shard.data == data,
                "{engine:?} bounce_io = {bounce}: the load's bytes differ"
            );
            let status = arena(&client).await;
            assert_eq!(
                (status.loads, status.flush_failures),
                (1, 0),
                "{engine:?} {bounce}: {status:?}"
            );
            assert!(client.stat("job", "wb").await.unwrap().cache.resident);
            assert!(
                client.fetch("job", "wb").await.unwrap().data == data,
                "{engine:?} {bounce}: the hit"
            );
            daemon.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_puts_beyond_the_budget_wait_for_room_and_a_shard_larger_than_it_is_written_through() {
    for engine in engines() {
        let config = "[arena]\nsize = \"32MiB\"\nwrite_back_memory = \"8MiB\"";
        let mut daemon = TestDaemon::start(engine, config).await;
        let client = daemon.client(false).await;
        // Three times the budget, as a trainer swapping out a layer's state.
        let mut puts = JoinSet::new();
        for i in 0..6 {
            let client = client.clone();
            puts.spawn(async move {
                let data = pattern(4 * MIB + 3, i);
                client.put("job", &format!("s{i}"), data, write_back()).await
            });
        }
        while let Some(put) = puts.join_next().await {
            put.unwrap().unwrap();
        }
        let status = arena(&client).await;
        assert_eq!(
            status.write_back_puts, 6,
            "every put waited for room in memory: {status:?}"
        );
        assert!(status.dirty_bytes <= 8 * MIB as u64, "{status:?}");
        // More than the whole budget: written through at once, not waiting.
        let large = pattern(9 * MIB, 9);
        let meta = client.put("job", "large", large.clone(), write_back()).await.unwrap();
        assert_eq!(meta.crc32c, crc32c::crc32c(&large));
        assert_eq!(arena(&client).await.write_back_puts, 6);
        wait_for(&client, "the flushes", |a| a.dirty_bytes == 0).await;
        drop(client);
        daemon.restart().await;
        let client = daemon.client(false).await;
        for i in 0..6 {
            let shard = client.fetch("job", &format!("s{i}")).await.unwrap();
            assert!(shard.data == pattern(4 * MIB + 3, i), "{engine:?}: s{i}");
        }
        assert!(client.fetch("job", "large").await.unwrap().data == large);
        daemon.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_back_put_no_drive_has_room_for_is_refused_not_acknowledged() {
    // A data dir that always lacks room: durable writes fail with no space,
    // and write-back puts too, rather than being acknowledged from memory
    // with nowhere to be flushed to. (A flush that fails all the same, its
    // drive failing after the put, is tests/tests/failing_drives.rs.)
    let config = "[storage]\nmin_free = \"1000TiB\"\n[arena]\nsize = \"32MiB\"";
    let mut daemon = TestDaemon::start(engines()[0], config).await;
    let client = daemon.client(false).await;
    let err = client
        .put("job", "d", vec![1u8; 1000], PutOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::NoSpace));
    let err = client
        .put("job", "wb", vec![2u8; 1000], write_back())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::NoSpace), "{err}");
    assert!(err.to_string().contains("no data dir has room"), "{err}");
    assert_eq!(arena(&client).await.write_back_puts, 0);
    assert!(client.list("job", "").await.unwrap().is_empty());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_loads_ahead_of_fetches() {
    let mut daemon = TestDaemon::start(engines()[0], "[arena]\nsize = \"64MiB\"").await;
    let client = daemon.client(false).await;
    for i in 0..6 {
        client
            .put(
                "job",
                &format!("layers.{i}"),
                pattern(2 * MIB, i),
                PutOptions::default(),
            )
            .await
            .unwrap();
    }
    drop(client);
    daemon.restart().await;
    let client = daemon.client(false).await;
    let items = (0..6)
        .map(|i| PrefetchItem {
            key: Key::new(format!("layers.{i}")).unwrap(),
            order: i,
            deadline_unix_ms: None,
        })
        .chain([PrefetchItem {
            key: Key::new("layers.missing").unwrap(),
            order: 9,
            deadline_unix_ms: None,
        }])
        .collect();
    let answer = client.prefetch("job", items).await.unwrap();
    assert_eq!((answer.queued, answer.resident), (6, 0));
    assert_eq!(answer.not_found, [Key::new("layers.missing").unwrap()]);
    wait_for(&client, "the prefetches", |a| a.prefetch_completed == 6).await;
    // Resident before any fetch asked for them: every fetch is a hit.
    for i in 0..6 {
        assert!(client.stat("job", &format!("layers.{i}")).await.unwrap().cache.resident);
        assert_eq!(
            client.fetch("job", &format!("layers.{i}")).await.unwrap().data,
            pattern(2 * MIB, i)
        );
    }
    let status = arena(&client).await;
    assert_eq!((status.hits, status.misses, status.loads), (6, 0, 6), "{status:?}");
    // Prefetching what is resident queues nothing.
    let again = client
        .prefetch(
            "job",
            vec![PrefetchItem {
                key: Key::new("layers.0").unwrap(),
                order: 0,
                deadline_unix_ms: None,
            }],
        )
        .await
        .unwrap();
    assert_eq!((again.queued, again.resident), (0, 1));
    daemon.stop().await;
}

/// A hint never blocks a command: an evict that comes while a prefetch is
/// still loading the shard waits that load out and evicts it (or, if the
/// hint had not started, drops the hint), instead of answering "in use".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evict_right_after_a_prefetch_of_the_shard_evicts_it() {
    for engine in engines() {
        let mut daemon = TestDaemon::start(engine, "[arena]\nsize = \"64MiB\"").await;
        let client = daemon.client(false).await;
        let keys = ["s1", "s2", "s3"];
        for (i, key) in keys.iter().enumerate() {
            client
                .put("job", key, pattern(16 * MIB, i as u64), PutOptions::default())
                .await
                .unwrap();
        }
        drop(client);
        daemon.restart().await;
        let client = daemon.client(false).await;
        for attempt in 0..3 {
            let items = keys
                .iter()
                .enumerate()
                .map(|(i, key)| PrefetchItem {
                    key: Key::new(*key).unwrap(),
                    order: i as u32,
                    deadline_unix_ms: None,
                })
                .collect();
            client.prefetch("job", items).await.unwrap();
            let evicted = client.evict("job", &["s1"], EvictMode::Demote).await.unwrap();
            assert!(evicted.busy.is_empty(), "{engine:?} attempt {attempt}: {evicted:?}");
            assert!(evicted.failed.is_empty(), "{engine:?} attempt {attempt}: {evicted:?}");
            assert_eq!(
                evicted.evicted.len() + evicted.not_resident.len(),
                1,
                "{engine:?} attempt {attempt}: {evicted:?}"
            );
            // Once the other hints are done, s1 is still out of the arena.
            for key in ["s2", "s3"] {
                for _ in 0..500 {
                    if client.stat("job", key).await.unwrap().cache.resident {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            assert!(
                !client.stat("job", "s1").await.unwrap().cache.resident,
                "{engine:?} attempt {attempt}"
            );
            client.evict("job", &keys, EvictMode::Demote).await.unwrap();
        }
        assert_eq!(client.fetch("job", "s1").await.unwrap().data, pattern(16 * MIB, 0));
        daemon.stop().await;
    }
}

/// Replays `steps` passes of a cyclic layer order through a daemon whose
/// arena holds fewer shards than the order; returns the hit ratio after
/// the first pass.
async fn cyclic_hit_ratio(policy: &str) -> f64 {
    let config = format!("[arena]\nsize = \"8MiB\"\neviction = \"{policy}\"");
    let mut daemon = TestDaemon::start(engines()[0], &config).await;
    let client = daemon.client(false).await;
    let keys: Vec<String> = (0..10).map(|i| format!("layers.{i}")).collect();
    for key in &keys {
        client
            .put("job", key, vec![1u8; MIB], PutOptions::default())
            .await
            .unwrap();
    }
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    client.evict("job", &refs, EvictMode::Demote).await.unwrap();
    client.set_schedule("job", &refs).await.unwrap();
    for key in &keys {
        client.fetch("job", key).await.unwrap();
    }
    let before = arena(&client).await;
    for _ in 0..5 {
        for key in &keys {
            client.fetch("job", key).await.unwrap();
        }
    }
    let after = arena(&client).await;
    daemon.stop().await;
    let hits = after.hits - before.hits;
    let misses = after.misses - before.misses;
    hits as f64 / (hits + misses) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_policy_beats_lru_on_a_cyclic_layer_order() {
    let lru = cyclic_hit_ratio("lru").await;
    let schedule = cyclic_hit_ratio("schedule").await;
    println!("10 layers of 1 MiB cycling through an 8 MiB arena: hit ratio LRU {lru:.2}, schedule-aware {schedule:.2}");
    assert!(schedule > lru, "schedule {schedule} vs lru {lru}");
    assert_eq!(lru, 0.0, "a cyclic scan makes LRU thrash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_views_stay_put_and_a_full_arena_answers_busy() {
    // One client may pin the whole arena with views here.
    let config = "[arena]\nsize = \"4MiB\"\n[server]\nmax_lease_bytes = \"4MiB\"";
    let mut daemon = TestDaemon::start(engines()[0], config).await;
    let client = daemon.client(false).await;
    assert!(client.zero_copy());
    for i in 0..5 {
        client
            .put("job", &format!("s{i}"), pattern(MIB, 10 + i), PutOptions::default())
            .await
            .unwrap();
    }
    // Hold views of four shards: the arena is full of leased shards.
    let mut views = Vec::new();
    for i in 0..4 {
        let view = client.fetch_view("job", &format!("s{i}"), None).await.unwrap();
        assert_eq!(view.to_vec().unwrap(), pattern(MIB, 10 + i));
        views.push(view);
    }
    let err = client.fetch_view("job", "s4", None).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::Busy), "{err}");
    // A copying fetch still works (read from the drive), and nothing hangs.
    assert_eq!(client.fetch("job", "s4").await.unwrap().data, pattern(MIB, 14));
    let evict = client.evict("job", &["s0"], EvictMode::Demote).await.unwrap();
    assert_eq!(evict.busy, [Key::new("s0").unwrap()]);
    // A newer version of a viewed shard does not change the view's bytes.
    client
        .put("job", "s0", vec![0u8; MIB], PutOptions::default())
        .await
        .unwrap();
    assert_eq!(views[0].to_vec().unwrap(), pattern(MIB, 10));
    // Giving leases back makes room.
    views.clear();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let view = client.fetch_view("job", "s4", None).await.unwrap();
    assert_eq!(view.to_vec().unwrap(), pattern(MIB, 14));
    daemon.stop().await;
}

/// A short-lived process (a `shardctl get`) that read through views and
/// exits at once: the shards it read can be evicted by the next command,
/// without waiting for the daemon to retire the closed connection's leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_given_back_before_exit_do_not_keep_shards_busy() {
    let mut daemon = TestDaemon::start(engines()[0], "[arena]\nsize = \"4MiB\"").await;
    let operator = daemon.client(false).await;
    operator
        .put("job", "w", pattern(MIB, 7), PutOptions::default())
        .await
        .unwrap();
    for _ in 0..5 {
        let reader = daemon.client(false).await;
        assert!(reader.zero_copy());
        let view = reader.fetch_view("job", "w", None).await.unwrap();
        assert_eq!(view.to_vec().unwrap(), pattern(MIB, 7));
        drop(view);
        reader.return_leases().await.unwrap();
        drop(reader);
        let evicted = operator.evict("job", &["w"], EvictMode::Demote).await.unwrap();
        assert_eq!(evicted.evicted, [Key::new("w").unwrap()], "{evicted:?}");
        assert!(evicted.busy.is_empty(), "{evicted:?}");
        // The next round's view loads it again.
    }
    daemon.stop().await;
}

/// A client that takes zero-copy views and dies without releasing them
/// (here: a raw connection that is dropped) gives its leases back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_dies_gives_its_leases_back() {
    use shardd_protocol::{FetchRequest, Namespace, Opcode, ViewRequest};
    use shardd_tests::RawClient;

    // One client may pin the whole arena with views here.
    let config = "[arena]\nsize = \"2MiB\"\n[server]\nmax_lease_bytes = \"2MiB\"";
    let mut daemon = TestDaemon::start(engines()[0], config).await;
    let writer = daemon.client(true).await;
    writer
        .put("job", "a", pattern(MIB, 1), PutOptions::default())
        .await
        .unwrap();
    writer
        .put("job", "b", pattern(MIB, 2), PutOptions::default())
        .await
        .unwrap();
    writer
        .put("job", "c", pattern(MIB, 3), PutOptions::default())
        .await
        .unwrap();

    // A plain read discards the memfd that comes with the hello's answer.
    let mut raw = RawClient::hello(&daemon, false, "dies", true).await;
    let send = async |raw: &mut RawClient, op: Opcode, id: u64, view: ViewRequest| {
        raw.request(op, id, &view).await;
        raw.recv().await.expect("an answer").0.status
    };
    // Asked only for what is resident now, a cold shard is `busy` at once and
    // not loaded.
    writer.evict("job", &["a"], EvictMode::Demote).await.unwrap();
    let loads = arena(&writer).await.loads;
    let view = ViewRequest {
        fetch: FetchRequest {
            namespace: Namespace::new("job").unwrap(),
            key: Key::new("a").unwrap(),
            range: None,
            max_len: None,
        },
        release: vec![],
        if_resident: true,
        continued: false,
    };
    assert_eq!(send(&mut raw, Opcode::FetchView, 9, view).await, Status::Busy);
    assert_eq!(arena(&writer).await.loads, loads);

    for (id, key) in [(2, "a"), (3, "b")] {
        let fetch = FetchRequest {
            namespace: Namespace::new("job").unwrap(),
            key: Key::new(key).unwrap(),
            range: None,
            max_len: None,
        };
        let view = ViewRequest {
            fetch,
            release: vec![],
            if_resident: false,
            continued: false,
        };
        assert_eq!(send(&mut raw, Opcode::FetchView, id, view).await, Status::Ok);
    }
    let other = daemon.client(false).await;
    let err = other.fetch_view("job", "c", None).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::Busy), "a and b are leased: {err}");

    drop(raw); // dies holding two leases
    let mut got = None;
    for _ in 0..100 {
        match other.fetch_view("job", "c", None).await {
            Ok(view) => {
                got = Some(view.to_vec().unwrap());
                break;
            }
            Err(ClientError::Remote {
                status: Status::Busy, ..
            }) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(got.expect("the dead client's leases were released"), pattern(MIB, 3));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_copy_views_of_ranges_across_chunks() {
    let mut daemon = TestDaemon::start(
        engines()[0],
        "[storage]\nchunk_size = \"64KiB\"\n[arena]\nsize = \"8MiB\"",
    )
    .await;
    let client = daemon.client(false).await;
    let data = pattern(5 * 65536 + 10, 5);
    client
        .put("job", "r", data.clone(), PutOptions::default())
        .await
        .unwrap();
    let view = client
        .fetch_view(
            "job",
            "r",
            Some(shardd_client::ByteRange {
                offset: 65530,
                len: 3 * 65536,
            }),
        )
        .await
        .unwrap();
    // The range spans four chunks; in a fresh arena they lie one after
    // another, so the view is one piece of the arena.
    assert_eq!(view.extents().len(), 1, "{:?}", view.extents());
    assert_eq!(view.pieces().unwrap().map(<[u8]>::len).sum::<usize>(), 3 * 65536);
    assert_eq!(view.to_vec().unwrap(), &data[65530..65530 + 3 * 65536]);
    let whole = client.fetch_view("job", "r", None).await.unwrap();
    let mut copy = vec![0u8; data.len()];
    let crc = whole.copy_to(&mut copy, true).unwrap();
    assert_eq!(crc, Some(crc32c::crc32c(&data)));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_one_daemon_share_one_mapping_of_its_arena() {
    let config = "[arena]\nsize = \"8MiB\"";
    let mut one = TestDaemon::start(engines()[0], config).await;
    let mut other = TestDaemon::start(engines()[0], config).await;
    let data = pattern(MIB, 7);
    let first = one.client(false).await;
    let second = one.client(false).await;
    let elsewhere = other.client(false).await;
    assert!(first.zero_copy() && second.zero_copy() && elsewhere.zero_copy());
    first
        .put("job", "s", data.clone(), PutOptions::default())
        .await
        .unwrap();
    elsewhere
        .put("job", "s", data.clone(), PutOptions::default())
        .await
        .unwrap();

    let address = |view: &shardd_client::ShardView| view.pieces().unwrap().next().expect("one piece").as_ptr();
    let a = first.fetch_view("job", "s", None).await.unwrap();
    let b = second.fetch_view("job", "s", None).await.unwrap();
    let c = elsewhere.fetch_view("job", "s", None).await.unwrap();
    assert_eq!(address(&a), address(&b), "two connections, one mapping");
    assert_ne!(address(&a), address(&c), "another daemon's arena is mapped apart");
    assert_eq!(a.to_vec().unwrap(), data);
    assert_eq!(b.to_vec().unwrap(), data);
    assert_eq!(c.to_vec().unwrap(), data);

    // With every client and view of a daemon gone, the next client maps its
    // arena again and reads it as before.
    drop((a, b, first, second));
    let again = one.client(false).await;
    assert_eq!(
        again.fetch_view("job", "s", None).await.unwrap().to_vec().unwrap(),
        data
    );
    drop((c, elsewhere, again));
    one.stop().await;
    other.stop().await;
}

/// A view of part of a shard still being read into the arena answers once
/// that part is in, holds it in place even if the shard leaves the arena
/// afterwards, and views of every part of a cold shard read it exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_of_a_loading_shard_hold_their_chunks_in_place() {
    for engine in engines() {
        let mut daemon =
            TestDaemon::start(engine, "[storage]\nchunk_size = \"64KiB\"\n[arena]\nsize = \"16MiB\"").await;
        let client = daemon.client(false).await;
        let data = pattern(3 * MIB + 1000, 21);
        client
            .put("job", "cold", data.clone(), PutOptions::default())
            .await
            .unwrap();
        client.evict("job", &["cold"], EvictMode::Demote).await.unwrap();
        // Views of pieces, all at once, while the shard loads.
        let mut views = JoinSet::new();
        for i in 0..7u64 {
            let client = client.clone();
            views.spawn(async move {
                let offset = i * 500_000;
                let len = 500_000.min(3 * MIB as u64 + 1000 - offset);
                let range = shardd_client::ByteRange { offset, len };
                (offset, client.fetch_view("job", "cold", Some(range)).await.unwrap())
            });
        }
        let mut held = Vec::new();
        while let Some(done) = views.join_next().await {
            let (offset, view) = done.unwrap();
            let bytes = view.to_vec().unwrap();
            assert!(
                bytes[..] == data[offset as usize..offset as usize + bytes.len()],
                "{engine:?} at {offset}"
            );
            held.push((offset, view));
        }
        assert_eq!(arena(&client).await.loads, 1, "one read of the shard served every view");
        // The shard leaves the arena and a newer version takes its place;
        // the views still read the bytes they were given.
        let _ = client.evict("job", &["cold"], EvictMode::Demote).await.unwrap();
        client
            .put("job", "cold", vec![0u8; 3 * MIB], PutOptions::default())
            .await
            .unwrap();
        for (offset, view) in &held {
            let bytes = view.to_vec().unwrap();
            assert!(bytes[..] == data[*offset as usize..*offset as usize + bytes.len()]);
        }
        drop(held);
        daemon.stop().await;
    }
}

/// The bytes a shard had in the arena, where a view found them.
fn extents_of(view: &shardd_client::ShardView) -> Vec<shardd_protocol::Extent> {
    view.extents().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_dropped_shards_bytes_are_zeroed_in_the_arena_once_no_lease_holds_them() {
    for engine in engines() {
        let mut daemon = TestDaemon::start(engine, "[arena]\nsize = \"16MiB\"").await;
        let client = daemon.client(false).await;
        let readable = |extents: &[shardd_protocol::Extent]| -> Vec<u8> {
            extents
                .iter()
                .flat_map(|e| daemon.arena_bytes(e.offset, e.len as usize))
                .collect()
        };
        for (key, seed) in [("deleted", 1), ("dropped", 2)] {
            client
                .put("job", key, pattern(2 * MIB + 5, seed), PutOptions::default())
                .await
                .unwrap();
        }
        let deleted = client.fetch_view("job", "deleted", None).await.unwrap();
        let held = extents_of(&deleted);
        let dropped = client.fetch_view("job", "dropped", None).await.unwrap();
        let dropped_at = extents_of(&dropped);
        drop(dropped);
        client.ping().await.unwrap();
        assert_eq!(
            readable(&dropped_at),
            pattern(2 * MIB + 5, 2),
            "{engine:?}: resident bytes"
        );

        // Deleted while a view holds it: the view still reads its bytes.
        client.delete("job", "deleted", None).await.unwrap();
        assert_eq!(deleted.to_vec().unwrap(), pattern(2 * MIB + 5, 1), "{engine:?}");
        client.evict("job", &["dropped"], EvictMode::Drop).await.unwrap();
        assert!(
            eventually(Duration::from_secs(5), || readable(&dropped_at).iter().all(|&b| b == 0)).await,
            "{engine:?}: a dropped shard's bytes are zeroed"
        );
        drop(deleted);
        assert!(
            eventually(Duration::from_secs(5), || readable(&held).iter().all(|&b| b == 0)).await,
            "{engine:?}: a deleted shard's bytes are zeroed once its view is given back"
        );
        assert!(
            arena(&client).await.scrubbed_bytes >= 2 * (2 * MIB as u64 + 5),
            "{engine:?}"
        );
        daemon.stop().await;
    }
}

/// A shard of several chunks lies in one range of the arena when a free
/// range is long enough, even where single free blocks come first: a view
/// of it, whole or in part, is one extent, whether the shard was put or
/// loaded from the drive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_of_several_chunks_is_one_range_of_the_arena() {
    for engine in engines() {
        let mut daemon = TestDaemon::start(engine, "[arena]\nsize = \"64MiB\"").await;
        let client = daemon.client(false).await;
        // Holes of one chunk at the start of the arena.
        for i in 0..10 {
            client
                .put("job", &format!("s{i}"), pattern(MIB, i), PutOptions::default())
                .await
                .unwrap();
        }
        for i in (0..10).step_by(2) {
            client.delete("job", &format!("s{i}"), None).await.unwrap();
        }
        let data = pattern(6 * MIB, 3);
        client
            .put("job", "w", data.clone(), PutOptions::default())
            .await
            .unwrap();
        for round in ["put", "loaded"] {
            let view = client.fetch_view("job", "w", None).await.unwrap();
            assert_eq!(view.extents().len(), 1, "{engine:?} {round}: {:?}", view.extents());
            assert!(view.to_vec().unwrap() == data, "{engine:?} {round}");
            let range = shardd_client::ByteRange {
                offset: MIB as u64 - 10,
                len: 2 * MIB as u64,
            };
            let part = client.fetch_view("job", "w", Some(range)).await.unwrap();
            assert_eq!(part.extents().len(), 1, "{engine:?} {round}");
            assert!(
                part.to_vec().unwrap() == data[MIB - 10..3 * MIB - 10],
                "{engine:?} {round}"
            );
            drop((view, part));
            client.return_leases().await.unwrap();
            client.evict("job", &["w"], EvictMode::Demote).await.unwrap();
        }
        let status = arena(&client).await;
        assert_eq!(
            (status.contiguous_shards, status.scattered_shards),
            (2, 0),
            "{engine:?}"
        );
        daemon.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_arena_serves_at_once_and_is_populated_in_the_background() {
    use shardd::arena::POPULATE_AT_START;
    for engine in engines() {
        // What a small arena, resident before the daemon serves, reports.
        let small = TestDaemon::start(engine, "[arena]\nsize = \"64MiB\"").await;
        let registers = arena(&small.client(false).await).await.fixed_buffers;

        // Twice what is made resident before it serves: the rest is made
        // so in the background.
        let size = 2 * POPULATE_AT_START;
        let config = format!("[arena]\nsize = \"{}MiB\"", size >> 20);
        let mut daemon = TestDaemon::start(engine, &config).await;
        let client = daemon.client(false).await;
        let status = arena(&client).await;
        assert_eq!(status.capacity_bytes, size);
        assert!(status.populated_bytes >= POPULATE_AT_START, "{status:?}");
        // Served at once, from the part that is resident.
        let data = pattern(4 * MIB, 1);
        client
            .put("job", "early", data.clone(), PutOptions::default())
            .await
            .unwrap();
        assert!(client.fetch("job", "early").await.unwrap().data == data);
        assert_eq!(arena(&client).await.resident_shards, 1);
        wait_for(&client, "the whole arena", |a| a.populated_bytes == a.capacity_bytes).await;
        // Registered with io_uring once resident, as a small arena is at start.
        wait_for(&client, "the fixed buffers", |a| a.fixed_buffers == registers).await;
        let (code, body) = http_get(&format!("{}/readyz", daemon.http_url())).await;
        assert_eq!((code, body.as_str()), (200, "ready\n"));
        daemon.stop().await;
    }
}
