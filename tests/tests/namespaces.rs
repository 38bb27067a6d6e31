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
