//! What survives a restart, and what happens to corrupt shards.

use shardd_client::{PutOptions, Status};
use shardd_tests::{TestDaemon, files_under, flip_payload_byte, pattern, setups};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_survive_a_restart() {
    for setup in setups() {
        let mut daemon = TestDaemon::start(setup.engine, "").await;
        let client = daemon.connect(setup).await;
        let shards: Vec<(String, Vec<u8>)> = (0..30)
            .map(|i| (format!("layers.{i}"), pattern(i * 50_000, i as u64)))
            .collect();
        for (key, data) in &shards {
            client
                .put("job", key, data.clone(), PutOptions::default())
                .await
                .unwrap();
        }
        client
            .put("job", "layers.0", vec![9u8; 10], PutOptions::default())
            .await
            .unwrap();
        client.delete("job", "layers.1", None).await.unwrap();
        drop(client);

        daemon.restart().await;
        let client = daemon.connect(setup).await;
        let status = client.status().await.unwrap();
        assert_eq!(status.shards, 29, "{setup:?}");
        let shard = client.fetch("job", "layers.0").await.unwrap();
        assert_eq!((shard.meta.version, shard.data), (2, vec![9u8; 10]));
        assert!(client.fetch("job", "layers.1").await.unwrap_err().is_not_found());
        for (key, data) in &shards[2..] {
            assert_eq!(&client.fetch("job", key).await.unwrap().data, data, "{setup:?} {key}");
        }
        daemon.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_payload_byte_is_detected_and_never_served() {
    for setup in setups() {
        let mut daemon = TestDaemon::start(setup.engine, "").await;
        let client = daemon.connect(setup).await;
        let data = pattern(3 << 20, 1);
        client
            .put("job", "victim", data.clone(), PutOptions::default())
            .await
            .unwrap();
        client
            .put("job", "bystander", data.clone(), PutOptions::default())
            .await
            .unwrap();
        drop(client);
        daemon.stop().await;
        flip_payload_byte(&daemon.data_dir(), "victim", (2 << 20) + 5);

        daemon.restart().await;
        let client = daemon.connect(setup).await;
        let err = client.fetch("job", "victim").await.unwrap_err();
        assert_eq!(err.status(), Some(Status::ChecksumMismatch), "{setup:?}: {err}");
        assert!(err.to_string().contains("quarantined"), "{err}");
        // A range that avoids the bad chunk is still refused: the shard is quarantined.
        let err = client.fetch_range("job", "victim", 0, 10).await.unwrap_err();
        assert_eq!(err.status(), Some(Status::ChecksumMismatch));
        let status = client.status().await.unwrap();
        assert_eq!((status.quarantined, status.shards), (1, 1));
        assert_eq!(files_under(&daemon.data_dir().join("quarantine")).len(), 1);
        assert_eq!(client.fetch("job", "bystander").await.unwrap().data, data);

        // Still quarantined after a restart; a new put replaces it.
        drop(client);
        daemon.restart().await;
        let client = daemon.connect(setup).await;
        assert_eq!(
            client.stat("job", "victim").await.unwrap_err().status(),
            Some(Status::ChecksumMismatch)
        );
        client
            .put("job", "victim", vec![1, 2, 3], PutOptions::default())
            .await
            .unwrap();
        assert_eq!(client.fetch("job", "victim").await.unwrap().data, vec![1, 2, 3]);
        daemon.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_verification_at_start_finds_corruption_before_any_fetch() {
    let engine = shardd_tests::engines()[0];
    let mut daemon = TestDaemon::start(engine, "").await;
    let client = daemon.client(false).await;
    client
        .put("job", "v", pattern(100_000, 2), PutOptions::default())
        .await
        .unwrap();
    drop(client);
    daemon.stop().await;
    flip_payload_byte(&daemon.data_dir(), "v", 99_999);
    daemon.restart_with("[storage]\nverify_on_start = \"full\"").await;
    let client = daemon.client(false).await;
    let status = client.status().await.unwrap();
    assert_eq!((status.shards, status.quarantined), (0, 1));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_spread_over_several_data_dirs_and_survive_restart() {
    use shardd::config::{Config, Listen, Overrides};
    let tmp = tempfile::tempdir().unwrap();
    let config = Config::from_toml(
        "[storage]\nmin_free = 0",
        Overrides {
            data_dirs: (0..3).map(|i| tmp.path().join(format!("nvme{i}"))).collect(),
            socket: Some(Listen::At(tmp.path().join("s.sock"))),
            tcp: Some(Listen::Off),
            http: Some(Listen::Off),
            ..Overrides::default()
        },
    )
    .unwrap();
    let daemon = shardd::Daemon::start(config.clone()).await.unwrap();
    let endpoint = format!("unix://{}", tmp.path().join("s.sock").display());
    let client = shardd_client::Client::connect(&endpoint).await.unwrap();
    for i in 0..60 {
        client
            .put(
                "job",
                &format!("k{i}"),
                pattern(1000 + i, i as u64),
                PutOptions::default(),
            )
            .await
            .unwrap();
    }
    let status = client.status().await.unwrap();
    assert_eq!(status.data_dirs.len(), 3);
    assert!(
        status.data_dirs.iter().all(|d| d.shards >= 5),
        "spread: {:?}",
        status.data_dirs
    );
    drop(client);
    daemon.stop().await.unwrap();

    let daemon = shardd::Daemon::start(config).await.unwrap();
    let client = shardd_client::Client::connect(&endpoint).await.unwrap();
    for i in 0..60 {
        assert_eq!(
            client.fetch("job", &format!("k{i}")).await.unwrap().data,
            pattern(1000 + i, i as u64)
        );
    }
    daemon.stop().await.unwrap();
}
