//! Namespaces as the unit an operator manages: listing what each holds,
//! and removing one whole, durably, on both I/O engines.

use shardd_client::{Client, Durability, PutOptions, Status};
use shardd_tests::{TestDaemon, engines, files_under, pattern};

const MIB: usize = 1 << 20;

fn write_back() -> PutOptions {
    PutOptions {
        durability: Durability::WriteBack,
        ..PutOptions::default()
    }
}

async fn usage(client: &Client, namespace: &str) -> Option<shardd_client::NamespaceUsage> {
    let all = client.namespaces("").await.unwrap();
    all.into_iter().find(|u| u.namespace.as_str() == namespace)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_listed_with_their_usage_and_a_drop_is_durable() {
    for engine in engines() {
        // The write-back shard may or may not be flushed when the drop comes:
        // either way it is counted once and removed.
        let mut daemon = TestDaemon::start(engine, "[arena]\nsize = \"64MiB\"").await;
        let client = daemon.client(false).await;
        for i in 0..5 {
            let key = format!("layers.{i}");
            client
                .put("job-a", &key, pattern(MIB, i), PutOptions::default())
                .await
                .unwrap();
            client
                .put("job-b", &key, pattern(2 * MIB, i), PutOptions::default())
                .await
                .unwrap();
        }
        client
            .put("job-a", "swap", pattern(3 * MIB, 9), write_back())
            .await
            .unwrap();

        let a = usage(&client, "job-a").await.expect("job-a is listed");
        assert!(a.shards == 5 || a.shards == 6, "{engine:?}: {a:?}");
        assert!(
            a.arena_shards >= 1,
            "{engine:?}: the write-back shard is in the arena: {a:?}"
        );
        let b = usage(&client, "job-b").await.expect("job-b is listed");
        assert_eq!((b.shards, b.drive_bytes), (5, 10 * MIB as u64), "{engine:?}");
        let only_b = client.namespaces("job-b").await.unwrap();
        assert_eq!(only_b.len(), 1);

        let dropped = client.drop_namespace("job-a").await.unwrap();
        assert_eq!(dropped.shards + dropped.unflushed, 6, "{engine:?}: {dropped:?}");
        assert!(usage(&client, "job-a").await.is_none());
        for key in ["layers.0", "swap"] {
            let err = client.fetch("job-a", key).await.unwrap_err();
            assert_eq!(err.status(), Some(Status::NotFound), "{engine:?}: {key}: {err}");
        }
        let err = client.drop_namespace("job-a").await.unwrap_err();
        assert_eq!(err.status(), Some(Status::NotFound), "{err}");
        assert!(err.to_string().contains("holds no shards"), "{err}");
        // The other namespace is untouched; new puts into the dropped one work.
        assert_eq!(
            client.fetch("job-b", "layers.4").await.unwrap().data,
            pattern(2 * MIB, 4)
        );
        client
            .put("job-a", "again", pattern(10, 1), PutOptions::default())
            .await
            .unwrap();
        client.delete("job-a", "again", None).await.unwrap();

        // After a restart nothing of it comes back, and nothing is left over.
        daemon.restart().await;
        let client = daemon.client(false).await;
        assert!(
            usage(&client, "job-a").await.is_none(),
            "{engine:?}: the drop survives a restart"
        );
        assert_eq!(usage(&client, "job-b").await.unwrap().shards, 5);
        let data = daemon.data_dir();
        assert!(files_under(&data.join("tmp")).is_empty(), "{engine:?}: tmp/ is empty");
        assert!(
            !data.join("shards").join("job-a").exists() || files_under(&data.join("shards").join("job-a")).is_empty()
        );
        daemon.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_over_its_drive_quota_is_refused_and_others_are_not() {
    let config = "[[namespaces]]\npattern = \"job-*\"\nmax_drive_bytes = \"4MiB\"";
    for engine in engines() {
        let mut daemon = TestDaemon::start(engine, config).await;
        let client = daemon.client(false).await;
        client
            .put("job-a", "w", pattern(3 * MIB, 1), PutOptions::default())
            .await
            .unwrap();
        let err = client
            .put("job-a", "x", pattern(2 * MIB, 2), PutOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(Status::NoSpace), "{engine:?}: {err}");
        let message = err.to_string();
        assert!(
            message.contains("namespace job-a would hold 5242880 bytes"),
            "{message}"
        );
        assert!(
            message.contains("quota of 4194304 bytes (namespaces[0].max_drive_bytes)"),
            "{message}"
        );
        // Also as a write-back put; and a new version of a shard counts the
        // old one out.
        let write_back = client.put("job-a", "x", pattern(2 * MIB, 2), write_back()).await;
        assert_eq!(write_back.unwrap_err().status(), Some(Status::NoSpace));
        client
            .put("job-a", "w", pattern(4 * MIB, 3), PutOptions::default())
            .await
            .unwrap();
        // Another job's quota and an unlimited namespace are unaffected.
        client
            .put("job-b", "w", pattern(4 * MIB, 4), PutOptions::default())
            .await
            .unwrap();
        client
            .put("shared", "w", pattern(9 * MIB, 5), PutOptions::default())
            .await
            .unwrap();
        assert_eq!(client.fetch("job-a", "w").await.unwrap().data, pattern(4 * MIB, 3));
        // Room comes back with deletes.
        client.delete("job-a", "w", None).await.unwrap();
        client
            .put("job-a", "x", pattern(2 * MIB, 2), PutOptions::default())
            .await
            .unwrap();
        daemon.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scratch_namespace_expires_after_its_idle_ttl_and_one_in_use_does_not() {
    let config = "[[namespaces]]\npattern = \"scratch-*\"\nidle_ttl = \"2s\"";
    let mut daemon = TestDaemon::start(engines()[0], config).await;
    let client = daemon.client(false).await;
    for ns in ["scratch-dead", "scratch-live", "kept"] {
        client.put(ns, "swap", pattern(MIB, 1), write_back()).await.unwrap();
    }
    // One job keeps using its scratch namespace; the other died.
    for _ in 0..10 {
        client.stat("scratch-live", "swap").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    }
    assert!(
        usage(&client, "scratch-dead").await.is_none(),
        "the idle scratch namespace expired"
    );
    assert!(usage(&client, "scratch-live").await.is_some(), "the one in use did not");
    assert!(
        usage(&client, "kept").await.is_some(),
        "namespaces without idle_ttl stay"
    );
    let err = client.fetch("scratch-dead", "swap").await.unwrap_err();
    assert_eq!(err.status(), Some(Status::NotFound), "{err}");
    let (_, metrics) = shardd_tests::http_get(&format!("{}/metrics", daemon.http_url())).await;
    assert_eq!(
        shardd_tests::sample(&metrics, "shardd_namespaces_expired_total"),
        Some(1.0)
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_namespace_metrics_name_the_largest_and_sum_the_rest() {
    let mut daemon = TestDaemon::start(engines()[0], "").await;
    let client = daemon.client(false).await;
    for i in 0..25u64 {
        // job-00 is the largest, job-24 the smallest.
        let len = (26 - i as usize) * 4096;
        client
            .put(&format!("job-{i:02}"), "w", pattern(len, i), PutOptions::default())
            .await
            .unwrap();
    }
    let (_, metrics) = shardd_tests::http_get(&format!("{}/metrics", daemon.http_url())).await;
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("shardd_namespace_drive_bytes{"))
        .collect();
    assert_eq!(series.len(), 21, "20 namespaces and other: {series:?}");
    assert_eq!(
        shardd_tests::sample(&metrics, "shardd_namespace_drive_bytes{namespace=\"job-00\"}"),
        Some((26 * 4096) as f64)
    );
    let rest: u64 = (20..25).map(|i| (26 - i) * 4096).sum();
    assert_eq!(
        shardd_tests::sample(&metrics, "shardd_namespace_drive_bytes{namespace=\"other\"}"),
        Some(rest as f64)
    );
    assert_eq!(
        shardd_tests::sample(&metrics, "shardd_namespace_shards{namespace=\"other\"}"),
        Some(5.0)
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_at_its_arena_share_evicts_its_own_shards_first() {
    let config = "[arena]\nsize = \"32MiB\"\n[[namespaces]]\npattern = \"job-a\"\nmax_arena_bytes = \"4MiB\"";
    for engine in engines() {
        let mut daemon = TestDaemon::start(engine, config).await;
        let client = daemon.client(false).await;
        for i in 0..6 {
            client
                .put("job-b", &format!("w{i}"), pattern(2 * MIB, i), PutOptions::default())
                .await
                .unwrap();
        }
        for i in 0..5 {
            client
                .put(
                    "job-a",
                    &format!("w{i}"),
                    pattern(2 * MIB, 10 + i),
                    PutOptions::default(),
                )
                .await
                .unwrap();
            let a = usage(&client, "job-a").await.unwrap();
            assert!(
                a.arena_bytes <= 4 * MIB as u64,
                "{engine:?}: job-a stays within its share: {a:?}"
            );
        }
        // Fetches of job-a's shards load them again, in its own share.
        for i in 0..5 {
            let key = format!("w{i}");
            assert_eq!(
                client.fetch("job-a", &key).await.unwrap().data,
                pattern(2 * MIB, 10 + i)
            );
        }
        let a = usage(&client, "job-a").await.unwrap();
        assert_eq!(a.arena_bytes, 4 * MIB as u64, "{engine:?}: {a:?}");
        // The other namespace kept all of its shards in the arena.
        let b = usage(&client, "job-b").await.unwrap();
        assert_eq!(
            (b.arena_shards, b.arena_bytes),
            (6, 12 * MIB as u64),
            "{engine:?}: {b:?}"
        );
        // With its share held by views, a fetch of another of its shards is
        // read from the drive and not kept; nothing of job-b goes.
        let mut views = Vec::new();
        for key in ["w3", "w4"] {
            views.push(client.fetch_view("job-a", key, None).await.unwrap());
        }
        assert_eq!(client.fetch("job-a", "w0").await.unwrap().data, pattern(2 * MIB, 10));
        let a = usage(&client, "job-a").await.unwrap();
        assert_eq!(a.arena_bytes, 4 * MIB as u64, "{engine:?}: {a:?}");
        assert_eq!(usage(&client, "job-b").await.unwrap().arena_shards, 6, "{engine:?}");
        drop(views);
        daemon.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_set_by_an_admin_apply_at_once_and_outlive_a_restart() {
    let config = "[[namespaces]]\npattern = \"job-*\"\nmax_drive_bytes = \"64MiB\"";
    let mut daemon = TestDaemon::start(engines()[0], config).await;
    let client = daemon.client(false).await;
    client
        .put("job-q", "w", pattern(MIB, 1), PutOptions::default())
        .await
        .unwrap();
    let set = client
        .set_quota("job-q", Some(2 * MIB as u64), Some(MIB as u64))
        .await
        .unwrap();
    assert_eq!(
        (set.max_drive_bytes, set.max_arena_bytes),
        (Some(2 * MIB as u64), Some(MIB as u64))
    );
    let err = client
        .put("job-q", "x", pattern(2 * MIB, 2), PutOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::NoSpace), "{err}");
    assert!(err.to_string().contains("set for it by an admin"), "{err}");
    let listed = usage(&client, "job-q").await.unwrap();
    assert_eq!(listed.max_drive_bytes, Some(2 * MIB as u64));
    assert!(listed.arena_bytes <= MIB as u64, "{listed:?}");

    daemon.restart().await;
    let client = daemon.client(false).await;
    let err = client
        .put("job-q", "x", pattern(2 * MIB, 2), PutOptions::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("set for it by an admin"),
        "after a restart: {err}"
    );
    // A namespace that holds nothing is listed with the quota set for it.
    client.set_quota("job-empty", Some(MIB as u64), None).await.unwrap();
    let empty = usage(&client, "job-empty").await.expect("listed by its quota");
    assert_eq!((empty.shards, empty.max_drive_bytes), (0, Some(MIB as u64)));
    // Cleared, the configured quota applies again.
    let set = client.set_quota("job-q", None, None).await.unwrap();
    assert_eq!(
        (set.max_drive_bytes, set.max_arena_bytes),
        (Some(64 * MIB as u64), None)
    );
    client
        .put("job-q", "x", pattern(2 * MIB, 2), PutOptions::default())
        .await
        .unwrap();
    daemon.stop().await;
}
