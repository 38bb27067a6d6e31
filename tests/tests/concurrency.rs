//! Many clients at once, and many requests in flight on one connection.

use std::time::Duration;

use shardd_client::PutOptions;
use shardd_tests::{TestDaemon, pattern, setups};
use tokio::task::JoinSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_each_get_their_own_bytes() {
    for setup in setups() {
        let mut daemon = TestDaemon::start(setup.engine, "").await;
        let mut tasks = JoinSet::new();
        for c in 0..8u64 {
            let client = daemon.client(setup.tcp).await;
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
        let status = daemon.client(setup.tcp).await.status().await.unwrap();
        assert_eq!(status.shards, 80, "{setup:?}");
        daemon.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_pipelined_on_one_connection() {
    for setup in setups() {
        let mut daemon = TestDaemon::start(setup.engine, "").await;
        let client = daemon.client(setup.tcp).await;
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
                assert_eq!(
                    client.stat("job", &key).await.unwrap().len,
                    data.len() as u64
                );
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
/// answered first: answers come back in the order they are ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_overtake_a_large_fetch() {
    for setup in setups() {
        let mut daemon = TestDaemon::start(setup.engine, "").await;
        let client = daemon.client(setup.tcp).await;
        client
            .put("job", "big", pattern(256 << 20, 1), PutOptions::default())
            .await
            .unwrap();
        client
            .put("job", "small", vec![7u8; 10], PutOptions::default())
            .await
            .unwrap();

        let big = {
            let client = client.clone();
            tokio::spawn(async move {
                let shard = client.fetch("job", "big").await.unwrap();
                (tokio::time::Instant::now(), shard.data.len())
            })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let small = client.fetch("job", "small").await.unwrap();
        let small_done = tokio::time::Instant::now();
        let (big_done, big_len) = big.await.unwrap();
        assert_eq!(small.data, vec![7u8; 10]);
        assert_eq!(big_len, 256 << 20);
        assert!(
            small_done < big_done,
            "{setup:?}: the small fetch waited for the large one"
        );
        daemon.stop().await;
    }
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
            client
                .put("job", "hot", data, options)
                .await
                .map(|m| m.version)
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
    assert_eq!(
        v,
        *stored.iter().max().unwrap(),
        "the newest acknowledged version wins"
    );
    assert!(
        shard.data.iter().all(|&b| b == v as u8),
        "no mix of versions"
    );
    let files = shardd_tests::files_under(&daemon.data_dir().join("shards"));
    assert_eq!(files.len(), 1, "old versions do not pile up: {files:?}");
    daemon.stop().await;
}
