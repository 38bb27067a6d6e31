//! Cache tests that need to reach inside: a load that never finishes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shardd_protocol::{DType, EvictMode, Key, Namespace, ShardMeta, Status, VerifyOutcome};

use super::policy::ShardRef;
use super::*;
use crate::arena::{Arena, ArenaConfig};
use crate::ctl::bench::pattern;
use crate::io::{AlignedBuf, IoConfig, IoEngine};
use crate::store::{PutSpec, StoreConfig, VerifyMode};

const CHUNK: u32 = 64 * 1024;

async fn cache(dir: &std::path::Path) -> Cache {
    let arena = Arena::create(ArenaConfig {
        size: 4 << 20,
        max_block: CHUNK,
        huge_pages: Default::default(),
        kept: false,
    })
    .unwrap();
    let engine = IoEngine::start(&IoConfig::default(), Some(arena.fixed_memory())).unwrap();
    let store = Store::open(
        StoreConfig {
            data_dirs: vec![dir.to_path_buf()],
            chunk_size: CHUNK,
            chunks_in_flight: 4,
            min_free_bytes: 0,
            max_shard_bytes: 1 << 30,
            buffer_memory: 16 << 20,
            verify_on_start: VerifyMode::Metadata,
            direct_io: true,
        },
        Arc::new(engine),
    )
    .await
    .unwrap();
    let config = CacheConfig {
        policy: Default::default(),
        prefetch_memory: 4 << 20,
        write_back_memory: 4 << 20,
        flush_concurrency: 1,
        bounce_io: Default::default(),
        max_schedule_keys: 1000,
    };
    Cache::new(arena, store, config, Default::default())
}

/// A put of `len` bytes to job/`key`.
fn spec(key: &str, version: Option<u64>, len: usize) -> PutSpec {
    PutSpec {
        namespace: Namespace::new("job").unwrap(),
        key: Key::new(key).unwrap(),
        version,
        dtype: DType::U8,
        shape: vec![],
        len: len as u64,
        crc32c: None,
        newer_than: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_dropped_while_loading_leaves_no_load_behind_to_hang_on() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path()).await;
    let ns = Namespace::new("job").unwrap();
    let data = pattern(300_000, 1);

    // The fetch starts the load (one poll), then is dropped before it
    // finishes. A drive fast enough can finish the load within that poll:
    // then the case did not happen, and another shard is tried.
    let mut dropped = None;
    for attempt in 0..20 {
        let name = format!("w{attempt}");
        put_on_drive(&cache, &name, &data).await;
        let key = Key::new(&name).unwrap();
        let mut fetch = Box::pin(cache.fetch(&ns, &key));
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(fetch.as_mut().poll(cx))).await;
        drop(fetch);
        match first {
            std::task::Poll::Pending => {
                dropped = Some(key);
                break;
            }
            std::task::Poll::Ready(done) => eprintln!("attempt {attempt}: the load ended in one poll: {done:?}"),
        }
    }
    let key = dropped.expect("a load was still running when its fetch was dropped");
    // The next fetch loads the shard instead of waiting on the dropped load.
    let lookup = tokio::time::timeout(Duration::from_secs(10), cache.fetch(&ns, &key))
        .await
        .expect("no fetch hangs on an abandoned load")
        .unwrap();
    let Lookup::Resident(lease) = lookup else {
        panic!("the shard is loaded into the arena");
    };
    let bytes: Vec<u8> = lease.chunks().iter().flat_map(|c| c.as_slice().to_vec()).collect();
    assert!(bytes == data, "the arena holds the shard's bytes");
}

/// Reserves `version` as a put with that version does.
fn reserve(cache: &Cache, version: u64, len: usize) -> crate::store::versions::Reservation {
    cache.inner.store.check_put(&spec("wb", Some(version), len)).unwrap()
}

/// Arena blocks holding `data`, as a put leaves them, and its metadata.
fn shard(cache: &Cache, version: u64, data: &[u8]) -> (ShardMeta, Vec<AlignedBuf>) {
    let mut blocks = cache
        .blocks_for_put(&Namespace::new("job").unwrap(), data.len() as u64)
        .unwrap();
    for (block, piece) in blocks.iter_mut().zip(data.chunks(CHUNK as usize)) {
        block.as_mut_capacity()[..piece.len()].copy_from_slice(piece);
        block.set_len(piece.len());
        block.zero_pad();
    }
    let meta = ShardMeta {
        namespace: Namespace::new("job").unwrap(),
        key: Key::new("wb").unwrap(),
        version,
        dtype: DType::U8,
        shape: vec![],
        len: data.len() as u64,
        crc32c: crc32c::crc32c(data),
        created_unix_ms: 0,
    };
    (meta, blocks)
}

fn resident(cache: &Cache) -> (u64, Vec<u8>) {
    let (ns, key) = (Namespace::new("job").unwrap(), Key::new("wb").unwrap());
    let lease = cache.try_hit(&ns, &key, Access::Fetch).expect("resident").unwrap();
    let bytes = lease.chunks().iter().flat_map(|c| c.as_slice().to_vec()).collect();
    (lease.meta.version, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_version_never_replaces_a_newer_one_in_the_arena() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path()).await;
    let (newer, older) = (pattern(100_000, 3), pattern(100_000, 2));

    // Two overlapping write-back puts, the newer installed first. (A third
    // reserves version 3 too, for the end of the test.)
    let (last, first, second) = (
        reserve(&cache, 3, 100_000),
        reserve(&cache, 3, 100_000),
        reserve(&cache, 2, 100_000),
    );
    let (meta, blocks) = shard(&cache, 3, &newer);
    cache.install_dirty(meta, blocks, first, false).unwrap();
    let (meta, blocks) = shard(&cache, 2, &older);
    let err = cache.install_dirty(meta, blocks, second, false).unwrap_err();
    assert_eq!(err.status(), Status::VersionConflict);
    assert_eq!(err.current_version(), Some(3));
    assert!(resident(&cache) == (3, newer.clone()), "version 3 stays");

    // A durable put of an older version that ends now is not cached over it.
    let (meta, blocks) = shard(&cache, 2, &older);
    cache.install(meta, blocks);
    assert!(resident(&cache) == (3, newer.clone()), "version 3 stays");

    // Once version 3 is on the drive, a write-back put below it is refused
    // even when the arena no longer holds it.
    let (ns, key) = (Namespace::new("job").unwrap(), Key::new("wb").unwrap());
    let flushed = async {
        while cache.inner.store.stat(&ns, &key).map(|m| m.version).ok() != Some(3) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), flushed)
        .await
        .expect("version 3 is flushed");
    cache.evict(&ns, std::slice::from_ref(&key), EvictMode::Demote).await;
    let (meta, blocks) = shard(&cache, 3, &older);
    let err = cache.install_dirty(meta, blocks, last, false).unwrap_err();
    assert_eq!(err.current_version(), Some(3));
    assert!(
        cache.try_hit(&ns, &key, Access::Fetch).is_none(),
        "nothing was installed"
    );
}

/// Writes `data` to the drive as job/`key`, as a durable put does.
async fn put_on_drive(cache: &Cache, key: &str, data: &[u8]) {
    let store = cache.inner.store.clone();
    let mut writer = store.begin_put(spec(key, None, data.len())).await.unwrap();
    let mut at = 0;
    while at < data.len() {
        let n = writer.next_chunk_len();
        let mut buf = writer.next_buffer(&store.buffers().scope(16 << 20)).await.unwrap();
        buf.as_mut_capacity()[..n].copy_from_slice(&data[at..at + n]);
        buf.set_len(n);
        writer.write_chunk(buf).await.unwrap();
        at += n;
    }
    writer.commit().await.unwrap();
}

/// The bytes of job/`key` a fetch gets from the arena (loading it if needed).
async fn fetched(cache: &Cache, key: &str) -> Vec<u8> {
    let (ns, key) = (Namespace::new("job").unwrap(), Key::new(key).unwrap());
    let Lookup::Resident(lease) = cache.fetch(&ns, &key).await.unwrap() else {
        panic!("the shard fits the arena");
    };
    let len = lease.meta.len as usize;
    let mut bytes: Vec<u8> = lease.chunks().iter().flat_map(|c| c.as_slice().to_vec()).collect();
    bytes.truncate(len);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_copy_that_fails_its_checksum_leaves_the_arena_and_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path()).await;
    let (ns, key) = (Namespace::new("job").unwrap(), Key::new("w").unwrap());
    let data = pattern(200_000, 4);
    put_on_drive(&cache, "w", &data).await;
    assert!(fetched(&cache, "w").await == data);
    let intact = cache.verify(&ns, &key, None).await;
    assert_eq!((intact.version, intact.outcome), (Some(1), VerifyOutcome::Intact));
    let other = cache.verify(&ns, &key, Some(7)).await;
    assert_eq!(other.outcome, VerifyOutcome::NotResident, "only the version asked for");

    assert!(cache.corrupt_for_tests(&ns, &key, 100_000));
    let checked = cache.verify(&ns, &key, Some(1)).await;
    assert_eq!((checked.version, checked.outcome), (Some(1), VerifyOutcome::Dropped));
    assert!(
        cache.try_hit(&ns, &key, Access::Fetch).is_none(),
        "the corrupt copy is not served"
    );
    let loads = cache.status().loads;
    assert!(fetched(&cache, "w").await == data, "read again from the drive");
    let status = cache.status();
    assert_eq!((status.loads, status.checksum_failures), (loads + 1, 1));
    assert_eq!(cache.verify(&ns, &key, None).await.outcome, VerifyOutcome::Intact);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_back_copy_that_fails_its_checksum_is_lost_not_served_nor_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path()).await;
    let (ns, key) = (Namespace::new("job").unwrap(), Key::new("wb").unwrap());
    // Hold the only flush slot, so the copy is corrupted before its flush.
    let slot = cache.inner.flushes.acquire().await.unwrap();
    let (meta, blocks) = shard(&cache, 1, &pattern(150_000, 5));
    cache
        .install_dirty(meta, blocks, reserve(&cache, 1, 150_000), false)
        .unwrap();
    assert!(cache.corrupt_for_tests(&ns, &key, 7));
    let checked = cache.verify(&ns, &key, None).await;
    assert_eq!(checked.outcome, VerifyOutcome::Lost);
    let err = cache
        .try_hit(&ns, &key, Access::Fetch)
        .expect("still listed")
        .unwrap_err();
    assert_eq!(err.status(), Status::ChecksumMismatch, "{err}");
    assert!(err.to_string().contains("failed its checksum"), "{err}");
    let stat = cache.stat(&ns, &key).unwrap().1;
    assert!(stat.dirty && stat.flush_error.is_some(), "{stat:?}");

    // The flush that runs now finds the bytes changed and publishes nothing.
    drop(slot);
    cache.finish_write_back(Duration::from_secs(10)).await;
    assert!(
        cache.inner.store.stat(&ns, &key).is_err(),
        "nothing corrupt reached the drive"
    );
    let status = cache.status();
    assert_eq!((status.checksum_failures, status.flush_failures), (1, 1), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_that_finds_the_copy_changed_stops_it_being_served() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path()).await;
    let (ns, key) = (Namespace::new("job").unwrap(), Key::new("wb").unwrap());
    let slot = cache.inner.flushes.acquire().await.unwrap();
    let (meta, blocks) = shard(&cache, 1, &pattern(150_000, 6));
    cache
        .install_dirty(meta, blocks, reserve(&cache, 1, 150_000), false)
        .unwrap();
    // Nobody reports it: the flush's own check finds it.
    assert!(cache.corrupt_for_tests(&ns, &key, 149_999));
    drop(slot);
    cache.finish_write_back(Duration::from_secs(10)).await;
    let err = cache
        .try_hit(&ns, &key, Access::Fetch)
        .expect("still listed")
        .unwrap_err();
    assert_eq!(err.status(), Status::ChecksumMismatch, "{err}");
    assert!(
        cache.inner.store.stat(&ns, &key).is_err(),
        "nothing corrupt reached the drive"
    );
    assert_eq!(cache.status().checksum_failures, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_back_version_replaced_before_its_flush_is_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path()).await;
    let (ns, key) = (Namespace::new("job").unwrap(), Key::new("wb").unwrap());
    // The only flush slot is taken: version 1's flush waits its turn.
    let slot = cache.inner.flushes.acquire().await.unwrap();
    let (meta, blocks) = shard(&cache, 1, &pattern(150_000, 1));
    cache
        .install_dirty(meta, blocks, reserve(&cache, 1, 150_000), false)
        .unwrap();
    let (meta, blocks) = shard(&cache, 2, &pattern(150_000, 2));
    cache
        .install_dirty(meta, blocks, reserve(&cache, 2, 150_000), false)
        .unwrap();
    drop(slot);
    cache.finish_write_back(Duration::from_secs(10)).await;
    let status = cache.status();
    assert_eq!((status.flushes_superseded, status.dirty_bytes), (1, 0), "{status:?}");
    assert_eq!(cache.inner.store.stat(&ns, &key).unwrap().version, 2);
    let written: f64 = cache
        .inner
        .store
        .metrics()
        .collectors()
        .iter()
        .flat_map(|c| c.collect())
        .filter(|family| family.name().contains("written_bytes"))
        .flat_map(|family| {
            family
                .get_metric()
                .iter()
                .map(|m| m.get_counter().get_value())
                .collect::<Vec<_>>()
        })
        .sum();
    assert!(
        (150_000.0..300_000.0).contains(&written),
        "only version 2 was written: {written} bytes"
    );
}

/// Installs version 1 of job/wb, `len` bytes, as a write-back put does.
fn install_write_back(cache: &Cache, len: usize, scratch: bool) {
    let (meta, blocks) = shard(cache, 1, &pattern(len, 1));
    cache
        .install_dirty(meta, blocks, reserve(cache, 1, len), scratch)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_back_put_over_the_budget_is_let_in_when_a_flush_makes_room() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path()).await;
    let len = 3 << 20;
    let slot = cache.inner.flushes.acquire().await.unwrap();
    install_write_back(&cache, len, false);
    // 3 MiB of the 4 MiB budget are not on the drive, and cannot get there yet.
    let short = Duration::from_millis(50);
    assert!(
        cache.room_for_write_back(2 << 20, short).await.is_none(),
        "no room while the flush waits"
    );
    let long = Duration::from_secs(60);
    assert!(
        cache.room_for_write_back(5 << 20, long).await.is_none(),
        "more than the budget: no wait"
    );
    let waiting = tokio::spawn({
        let cache = cache.clone();
        async move { cache.room_for_write_back(2 << 20, Duration::from_secs(30)).await }
    });
    drop(slot);
    let room = waiting.await.unwrap().expect("the flush made room");
    cache.finish_write_back(Duration::from_secs(10)).await;
    // The room admitted counts until it is given back: two puts admitted
    // at once cannot together go beyond the budget.
    assert!(cache.room_for_write_back(3 << 20, short).await.is_none());
    let other = cache.room_for_write_back(2 << 20, short).await.expect("2 + 2 MiB fit");
    drop(room);
    let third = cache.room_for_write_back(2 << 20, short).await;
    assert!(third.is_some(), "the room given back is free again");
    drop((other, third));
    assert!(
        cache.room_for_write_back(4 << 20, short).await.is_some(),
        "all of it is free"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scratch_flush_gives_its_room_back_as_it_writes_and_a_shard_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path()).await;
    let len = 3 << 20;
    let slot = cache.inner.flushes.acquire().await.unwrap();
    install_write_back(&cache, len, true);
    let (ns, key) = (Namespace::new("job").unwrap(), Key::new("wb").unwrap());
    let scratch = match cache.state().entries.get(&ShardRef(&ns, &key)) {
        Some(Slot::Ready(shard)) => shard.clone(),
        _ => panic!("installed"),
    };
    let counts = |cache: &Cache| {
        let state = cache.state();
        (state.dirty_bytes, state.unwritten_bytes)
    };
    assert_eq!(counts(&cache), (len as u64, len as u64));
    let short = Duration::from_millis(50);
    let wanted = (1 << 20) + 2 * CHUNK as u64;
    assert!(cache.room_for_write_back(wanted, short).await.is_none());
    // Two chunks written: their room is free, the shard is not flushed yet.
    cache.undirty_written(&scratch, CHUNK as u64);
    cache.undirty_written(&scratch, CHUNK as u64);
    assert_eq!(counts(&cache), (len as u64, len as u64 - 2 * CHUNK as u64));
    let room = cache.room_for_write_back(wanted, short).await;
    assert!(room.is_some(), "the written chunks made room");
    drop(room);
    // Flushed (or replaced, or forgotten): it leaves both counts, once.
    cache.undirty(&mut cache.state(), &scratch);
    assert_eq!(counts(&cache), (0, 0));
    // Bytes of other shards (stood in for here) are not taken again.
    {
        let mut state = cache.state();
        state.dirty_bytes = 7;
        state.unwritten_bytes = 7;
    }
    cache.undirty(&mut cache.state(), &scratch);
    cache.undirty_written(&scratch, CHUNK as u64);
    assert_eq!(counts(&cache), (7, 7));
    drop(slot);
    cache.finish_write_back(Duration::from_secs(10)).await;
    assert_eq!(counts(&cache), (7, 7), "the flush takes nothing more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tiers_metrics_are_the_numbers_status_shows_with_no_scrape_in_between() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path()).await;
    let metrics =
        crate::metrics::Metrics::new(cache.store().metrics().collectors(), Some(cache.clone()), "test", false);
    let ns = Namespace::new("job").unwrap();
    put_on_drive(&cache, "m", &pattern(100_000, 3)).await;
    let key = Key::new("m").unwrap();
    for _ in 0..3 {
        assert!(matches!(cache.fetch(&ns, &key).await.unwrap(), Lookup::Resident(_)));
    }
    let status = cache.status();
    assert_eq!((status.misses, status.hits, status.loads), (1, 2, 1), "{status:?}");
    // Gathered straight from the registry: nothing brought it up to date.
    let text = metrics.encode().unwrap();
    let used = format!("shardd_arena_used_bytes {}", status.used_bytes);
    for line in [
        "shardd_cache_hits_total{tier=\"arena\"} 2",
        "shardd_cache_misses_total{tier=\"arena\"} 1",
        "shardd_cache_hits_total{tier=\"nvme\"} 1",
        &used,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_taken_together_are_counted_and_leased_each_and_misses_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path()).await;
    let ns = Namespace::new("job").unwrap();
    let (a, b) = (pattern(100_000, 1), pattern(50_000, 2));
    put_on_drive(&cache, "a", &a).await;
    put_on_drive(&cache, "b", &b).await;
    put_on_drive(&cache, "cold", &pattern(10_000, 3)).await;
    assert!(fetched(&cache, "a").await == a && fetched(&cache, "b").await == b);
    let before = cache.status();
    let keys: Vec<Key> = ["b", "cold", "a", "gone", "b"]
        .into_iter()
        .map(|k| Key::new(k).unwrap())
        .collect();
    // The fourth member was refused before the lookup: not looked up.
    let ids = keys
        .iter()
        .enumerate()
        .map(|(i, key)| (i != 3).then_some(ShardRef(&ns, key)));
    let hits = cache.try_hit_many(ids);
    let found: Vec<Option<u64>> = hits
        .iter()
        .map(|hit| hit.as_ref().map(|lease| lease.as_ref().unwrap().meta.len))
        .collect();
    assert_eq!(found, [Some(50_000), None, Some(100_000), None, Some(50_000)]);
    let after = cache.status();
    assert_eq!(after.hits - before.hits, 3, "each hit counted once");
    assert_eq!(after.misses, before.misses, "a member not resident is not a miss yet");
}

/// Held hits of job/`keys` (as a kept batch's run takes them): each hit's
/// version, and whether its handle is set afterwards.
fn held(cache: &Cache, keys: &[&str], handles: &mut [Option<ResidentHandle>]) -> Vec<(Option<u64>, bool)> {
    let ns = Namespace::new("job").unwrap();
    let keys: Vec<Key> = keys.iter().map(|k| Key::new(*k).unwrap()).collect();
    let hits = cache.try_hit_held(keys.iter().map(|key| Some(ShardRef(&ns, key))), handles);
    hits.into_iter()
        .zip(handles.iter())
        .map(|(hit, handle)| (hit.map(|lease| lease.unwrap().meta.version), handle.is_some()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_hit_follows_its_key_through_replacement_eviction_and_removal() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path()).await;
    let (ns, wb) = (Namespace::new("job").unwrap(), Key::new("wb").unwrap());
    put_on_drive(&cache, "other", &pattern(10_000, 9)).await;
    let (meta, blocks) = shard(&cache, 1, &pattern(100_000, 1));
    cache.install(meta, blocks);
    assert!(fetched(&cache, "other").await == pattern(10_000, 9));
    let mut handles: Vec<Option<ResidentHandle>> = vec![None, None];
    let before = cache.status().hits;
    assert_eq!(
        held(&cache, &["wb", "other"], &mut handles),
        [(Some(1), true), (Some(1), true)]
    );
    assert_eq!(
        held(&cache, &["wb", "other"], &mut handles),
        [(Some(1), true), (Some(1), true)]
    );
    assert_eq!(cache.status().hits - before, 4, "held hits are counted as hits");

    // Through its handle, a hit is the most recently used as a looked-up one is.
    assert_eq!(held(&cache, &["wb"], &mut handles[..1]), [(Some(1), true)]);
    let victim = cache.state().policy.victim(|_| true).map(|id| id.1.to_string());
    assert_eq!(victim.as_deref(), Some("other"));
    assert_eq!(held(&cache, &["other"], &mut handles[1..]), [(Some(1), true)]);
    let victim = cache.state().policy.victim(|_| true).map(|id| id.1.to_string());
    assert_eq!(victim.as_deref(), Some("wb"));

    // A newer version replaces the shard the handle saw, while a fetch
    // still sends the old one (so the handle's shard lives on): the next
    // hit finds the new one.
    let sending = cache.try_hit(&ns, &wb, Access::Fetch).unwrap().unwrap();
    let (meta, blocks) = shard(&cache, 2, &pattern(100_000, 2));
    cache.install(meta, blocks);
    assert_eq!(
        held(&cache, &["wb", "other"], &mut handles),
        [(Some(2), true), (Some(1), true)]
    );
    assert_eq!(sending.meta.version, 1);
    drop(sending);

    // Demoted to the drive: no longer a hit, and the handle is cleared.
    cache.evict(&ns, &[Key::new("other").unwrap()], EvictMode::Demote).await;
    assert_eq!(
        held(&cache, &["wb", "other"], &mut handles),
        [(Some(2), true), (None, false)]
    );

    // Forgotten (deleted) while a lease still holds the shard alive: the
    // handle's shard lives on, and still no hit comes of it.
    let lease = cache.try_hit(&ns, &wb, Access::Fetch).unwrap().unwrap();
    assert!(cache.forget(&ns, &wb).is_some());
    assert_eq!(
        held(&cache, &["wb", "other"], &mut handles),
        [(None, false), (None, false)]
    );
    drop(lease);
    assert!(cache.try_hit(&ns, &wb, Access::Fetch).is_none());
}
