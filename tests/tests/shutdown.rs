//! Graceful shutdown: requests in flight finish; requests that arrive
//! meanwhile are told the daemon is shutting down.

use std::time::Duration;

use shardd_client::{ClientError, PutOptions, Status};
use shardd_protocol::Opcode;
use shardd_tests::{RawClient, TestDaemon, engines, pattern};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_and_late_ones_hear_why() {
    let daemon = TestDaemon::start(engines()[0], "").await;
    let client = daemon.client(false).await;
    let data = pattern(128 << 20, 4);
    client
        .put("job", "big", data.clone(), PutOptions::default())
        .await
        .unwrap();

    // A raw connection, handshaken, to send a request at a chosen moment.
    let mut raw = RawClient::hello(&daemon, false, "late", false).await;

    let fetch = {
        let client = client.clone();
        tokio::spawn(async move { client.fetch("job", "big").await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut daemon = daemon;
    let stopping = tokio::spawn(async move {
        daemon.stop().await;
        daemon
    });
    tokio::time::sleep(Duration::from_millis(50)).await;

    raw.send(Opcode::Ping, 2, &[], &[]).await;
    let (answer, _) = raw.recv().await.expect("an answer");
    assert_eq!((answer.request_id, answer.status), (2, Status::ShuttingDown));

    let shard = fetch.await.unwrap().expect("the fetch in flight completes");
    assert!(shard.data == data);
    let _daemon = stopping.await.unwrap();
    match client.stat("job", "big").await {
        Err(ClientError::Disconnected { .. }) => {}
        Err(e) if e.status() == Some(Status::ShuttingDown) => {}
        other => panic!("after shutdown: {other:?}"),
    }
}

/// Panics in any thread of this test binary, counted by a hook installed
/// once.
fn panics() -> &'static std::sync::atomic::AtomicUsize {
    static PANICS: std::sync::OnceLock<&'static std::sync::atomic::AtomicUsize> = std::sync::OnceLock::new();
    PANICS.get_or_init(|| {
        let count: &'static _ = Box::leak(Box::new(std::sync::atomic::AtomicUsize::new(0)));
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            default(info);
        }));
        count
    })
}

/// A stop in the middle of a prefetch storm and of write-back flushes:
/// the loads and flushes under way are waited for, nothing panics, nothing
/// is left in tmp/, and every acknowledged write-back shard is on the drive
/// when the daemon comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_prefetch_storm_and_write_back_flushes_loses_nothing() {
    let panics = panics();
    for engine in engines() {
        let mut daemon = TestDaemon::start(engine, "[arena]\nsize = \"64MiB\"").await;
        let client = daemon.client(false).await;
        const SHARD: usize = 4 << 20;
        for i in 0..24 {
            let key = format!("p{i}");
            client
                .put("job", &key, pattern(SHARD, i), PutOptions::default())
                .await
                .unwrap();
        }
        drop(client);
        daemon.restart().await;
        let client = daemon.client(false).await;
        // 96 MiB of hints into a 64 MiB arena: loads evicting each other.
        let items = (0..24)
            .map(|i| shardd_client::PrefetchItem {
                key: shardd_protocol::Key::new(format!("p{i}")).unwrap(),
                order: i,
                deadline_unix_ms: None,
            })
            .collect();
        assert_eq!(client.prefetch("job", items).await.unwrap().queued, 24);
        let write_back = PutOptions {
            durability: shardd_client::Durability::WriteBack,
            ..PutOptions::default()
        };
        let mut acknowledged = Vec::new();
        for i in 0..6u64 {
            let key = format!("wb{i}");
            let meta = client
                .put("job", &key, pattern(SHARD, 100 + i), write_back.clone())
                .await
                .unwrap();
            acknowledged.push((key, meta.version, 100 + i));
        }
        let status = client.status().await.unwrap().arena.unwrap();
        eprintln!(
            "{engine:?}: stopping with {} of 24 prefetches done, {} dirty bytes",
            status.prefetch_completed, status.dirty_bytes
        );
        drop(client);
        daemon.stop().await;
        let tmp = daemon.data_dir().join("tmp");
        assert_eq!(
            shardd_tests::files_under(&tmp),
            Vec::<std::path::PathBuf>::new(),
            "{engine:?}"
        );
        daemon.restart().await;
        let client = daemon.client(false).await;
        for (key, version, seed) in &acknowledged {
            let shard = client.fetch("job", key).await.unwrap();
            assert_eq!(shard.meta.version, *version, "{engine:?} {key}");
            assert!(
                shard.data == pattern(SHARD, *seed),
                "{engine:?} {key}: bytes as written"
            );
        }
        daemon.stop().await;
    }
    assert_eq!(
        panics.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no thread panicked"
    );
}
