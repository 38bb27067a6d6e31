//! Cache tests that need to reach inside: a load that never finishes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shardd_protocol::{DType, Key, Namespace};

use super::*;
use crate::arena::{Arena, ArenaConfig};
use crate::ctl::bench::pattern;
use crate::io::{IoConfig, IoEngine};
use crate::store::{PutSpec, StoreConfig, VerifyMode};

const CHUNK: u32 = 64 * 1024;

async fn cache(dir: &std::path::Path) -> Cache {
    let arena = Arena::create(ArenaConfig {
        size: 4 << 20,
        max_block: CHUNK,
        huge_pages: Default::default(),
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
    };
    Cache::new(arena, store, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_dropped_while_loading_leaves_no_load_behind_to_hang_on() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path()).await;
    let (ns, key) = (Namespace::new("job").unwrap(), Key::new("w").unwrap());
    let data = pattern(300_000, 1);
    let store = cache.inner.store.clone();
    let mut writer = store
        .begin_put(PutSpec {
            namespace: ns.clone(),
            key: key.clone(),
            version: None,
            dtype: DType::U8,
            shape: vec![],
            len: data.len() as u64,
            crc32c: None,
            newer_than: None,
        })
        .await
        .unwrap();
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

    // The fetch starts the load (one poll), then is dropped before it finishes.
    let mut fetch = Box::pin(cache.fetch(&ns, &key));
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(fetch.as_mut().poll(cx))).await;
    assert!(
        first.is_pending(),
        "the load was still running when the fetch was dropped"
    );
    drop(fetch);
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
