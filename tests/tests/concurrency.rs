//! Many clients at once, and many requests in flight on one connection.

use shardd_client::{EvictMode, PutOptions};
use shardd_protocol::Durability;
use shardd_protocol::{FetchRequest, Key, Namespace, Opcode, Status};
use shardd_tests::{RawClient, TestDaemon, pattern, setups};
use tokio::task::JoinSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_each_get_their_own_bytes() {
    for setup in setups() {
        let mut daemon = TestDaemon::start(setup.engine, "").await;
        let mut tasks = JoinSet::new();
        for c in 0..8u64 {
            let client = daemon.connect(setup).await;
            tasks.spawn(async move {
                for i in 0..10u64 {
                    let size = ((c * 10 + i) * 37_111 % (3 << 20)) as usize;
                    let data = pattern(size, c * 100 + i);
                    let key = format!("c{c}/s{i}");
                    client
                        .put("job", &key, data.clone(), PutOptions::default())
                        .await
                        .unwrap();
                    let back = client.fetch("job", &key).await.unwrap();
                    assert!(back.data == data, "client {c} shard {i}");
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        let status = daemon.connect(setup).await.status().await.unwrap();
        assert_eq!(status.shards, 80, "{setup:?}");
        daemon.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_pipelined_on_one_connection() {
    for setup in setups() {
        let mut daemon = TestDaemon::start(setup.engine, "").await;
        let client = daemon.connect(setup).await;
        let mut tasks = JoinSet::new();
        for i in 0..200u64 {
            let client = client.clone();
            tasks.spawn(async move {
                let data = pattern((i as usize * 4099) % 300_000, i);
                let key = format!("p{i}");
                client
                    .put("job", &key, data.clone(), PutOptions::default())
                    .await
                    .unwrap();
                assert_eq!(client.fetch("job", &key).await.unwrap().data, data);
                assert_eq!(client.stat("job", &key).await.unwrap().meta.len, data.len() as u64);
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        assert_eq!(client.list("job", "p").await.unwrap().len(), 200);
        daemon.stop().await;
    }
}

/// A small request sent after a large fetch on the same connection is
/// answered before the large answer ends: the frames of the two answers
/// interleave on the wire, in the order they are ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_overtake_a_large_fetch() {
    // A small per-connection buffer keeps few large-answer chunks queued
    // ahead of the small answer.
    let config = "[server]\nconnection_buffer_memory = \"4MiB\"";
    for setup in setups() {
        let mut daemon = TestDaemon::start(setup.engine, config).await;
        let client = daemon.connect(setup).await;
        client
            .put("job", "big", pattern(256 << 20, 1), PutOptions::default())
            .await
            .unwrap();
        client
            .put("job", "small", vec![7u8; 10], PutOptions::default())
            .await
            .unwrap();

        let mut raw = RawClient::hello(&daemon, setup.tcp, "raw", false).await;
        fetch(&mut raw, 2, "big").await;
        fetch(&mut raw, 3, "small").await;
        let mut big_bytes = 0u64;
        let mut small_done_after = None;
        loop {
            let (header, _) = raw.recv().await.expect("an answer frame");
            let payload_len = header.payload_len;
            assert_eq!(header.status, Status::Ok);
            match header.request_id {
                2 => {
                    big_bytes += payload_len;
                    if !header.has_more() {
                        break;
                    }
                }
                3 => small_done_after = Some(big_bytes),
                other => panic!("answer to unknown request {other}"),
            }
        }
        assert_eq!(big_bytes, 256 << 20);
        let before = small_done_after.expect("the small fetch was answered");
        assert!(
            before < 64 << 20,
            "{setup:?}: the small answer came after {before} bytes of the large one"
        );
        daemon.stop().await;
    }
}

/// A fetch of job/`key` as request `id`, sent by hand.
async fn fetch(raw: &mut RawClient, id: u64, key: &str) {
    let request = FetchRequest {
        namespace: Namespace::new("job").unwrap(),
        key: Key::new(key).unwrap(),
        range: None,
        max_len: None,
    };
    raw.request(Opcode::Fetch, id, &request).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_to_one_key_leave_one_whole_version() {
    let engine = shardd_tests::engines()[0];
    let mut daemon = TestDaemon::start(engine, "").await;
    let client = daemon.client(false).await;
    let mut tasks = JoinSet::new();
    for v in 1..=20u64 {
        let client = client.clone();
        tasks.spawn(async move {
            let data = vec![v as u8; 1 << 20];
            let options = PutOptions {
                version: Some(v),
                ..PutOptions::default()
            };
            client.put("job", "hot", data, options).await.map(|m| m.version)
        });
    }
    let mut stored = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(v) = done.unwrap() {
            stored.push(v);
        }
    }
    let shard = client.fetch("job", "hot").await.unwrap();
    let v = shard.meta.version;
    assert_eq!(v, *stored.iter().max().unwrap(), "the newest acknowledged version wins");
    assert!(shard.data.iter().all(|&b| b == v as u8), "no mix of versions");
    let files = shardd_tests::files_under(&daemon.data_dir().join("shards"));
    assert_eq!(files.len(), 1, "old versions do not pile up: {files:?}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_with_automatic_versions_each_get_their_own_version() {
    for engine in shardd_tests::engines() {
        let mut daemon = TestDaemon::start(engine, "").await;
        let clients = [daemon.client(false).await, daemon.client(false).await];
        let mut tasks = JoinSet::new();
        for writer in 0..24u8 {
            let client = clients[writer as usize % 2].clone();
            tasks.spawn(async move {
                // Durable and write-back puts, large and small, all overlapping.
                let data = vec![writer; [300_000, 5_000][writer as usize % 2]];
                let durability = [Durability::Durable, Durability::WriteBack][writer as usize / 2 % 2];
                let options = PutOptions {
                    durability,
                    ..PutOptions::default()
                };
                (writer, client.put("job", "auto", data, options).await)
            });
        }
        let mut acknowledged = Vec::new();
        while let Some(done) = tasks.join_next().await {
            match done.unwrap() {
                (writer, Ok(meta)) => acknowledged.push((meta.version, writer)),
                // Overlapping puts are ordered by version; one that ends after
                // a newer one is refused, never stored under a taken version.
                (_, Err(e)) => assert_eq!(e.status(), Some(Status::VersionConflict), "{e}"),
            }
        }
        acknowledged.sort();
        let versions: Vec<u64> = acknowledged.iter().map(|(v, _)| *v).collect();
        let mut distinct = versions.clone();
        distinct.dedup();
        assert_eq!(distinct, versions, "no two acknowledged puts share a version");
        let &(newest, writer) = acknowledged.last().unwrap();
        let shard = clients[0].fetch("job", "auto").await.unwrap();
        assert_eq!(shard.meta.version, newest, "the newest acknowledged version wins");
        assert!(shard.data.iter().all(|&b| b == writer), "its bytes, whole");
        // Write-back puts are flushed at a graceful stop: the same after a restart.
        daemon.restart().await;
        let shard = daemon.client(false).await.fetch("job", "auto").await.unwrap();
        assert_eq!(shard.meta.version, newest, "after a restart");
        assert!(shard.data.iter().all(|&b| b == writer), "after a restart");
        daemon.stop().await;
    }
}

/// A cold fetch racing a replace of the shard in the same data dir (whose
/// new file is renamed over the old one's path) reads one whole version:
/// never the new file checked against the old version's checksums, which
/// failed the fetch as if the shard were corrupt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_racing_a_replace_reads_one_whole_version() {
    const LEN: usize = 3 << 20;
    for setup in setups() {
        let mut daemon = TestDaemon::start(setup.engine, "[arena]\nsize = \"64MiB\"").await;
        let client = daemon.connect(setup).await;
        let versions = [pattern(LEN, 1), pattern(LEN, 2)];
        client
            .put("job", "w", versions[0].clone(), PutOptions::default())
            .await
            .unwrap();
        let writer = {
            let client = daemon.connect(setup).await;
            let versions = versions.clone();
            tokio::spawn(async move {
                for round in 0..24 {
                    let data = versions[(round + 1) % 2].clone();
                    client.put("job", "w", data, PutOptions::default()).await.unwrap();
                    client.evict("job", &["w"], EvictMode::Demote).await.unwrap();
                }
            })
        };
        let mut buf = vec![0u8; LEN];
        let mut fetches = 0;
        while !writer.is_finished() {
            let (back, info) = client.fetch_into("job", "w", None, buf).await;
            buf = back;
            let info = info.unwrap_or_else(|e| panic!("{setup:?}: {e}"));
            // Version 1 holds the first pattern; each put flips it.
            let expected = &versions[((info.meta.version + 1) % 2) as usize];
            assert!(buf == *expected, "{setup:?}: version {}", info.meta.version);
            fetches += 1;
        }
        writer.await.unwrap();
        assert!(fetches > 0);
        let status = client.status().await.unwrap();
        assert_eq!(status.quarantined, 0, "{setup:?}");
        daemon.stop().await;
    }
}
